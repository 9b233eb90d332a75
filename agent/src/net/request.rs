//! Request/response streams between agents (`/shoal/request/1`): one libp2p stream per request,
//! on the same connections as gossip, every frame sealed under a key of its own protocol. The
//! wire protocol is described in the parent module's docs.
//!
//! Requester side: [`request`] opens a stream, writes the request and spawns a *pump* task that
//! reads the answer into a bounded channel (the [`ResponseStream`]) and sends keep-alives.
//! Dropping the `ResponseStream` ends the pump, which drops the stream: QUIC sends
//! `STOP_SENDING`, yamux a reset, so the responder's next write fails.
//!
//! Responder side: [`accept_requests`] gives every inbound stream a slot (per peer and
//! overall) or refuses it as busy; [`serve`] reads and opens the request, queues it for the
//! application ([`Requests::recv`]) and, once taken, writes what the application sends through
//! its [`IncomingRequest`] while watching the requester (keep-alives, end of stream).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};
use shoal_gossip::NodeId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tracing::debug;

use super::addr::{node_id_of, peer_id_of};
use super::frame::{self, FrameKey, LEN_PREFIX, MAX_PAYLOAD, Proto, Refusal};
use super::transport::{OpenFail, Shared, open_stream};
use super::{Tuning, lock};

/// The stream protocol of requests.
pub(super) const PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/request/1");

/// Largest request.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;
/// Largest chunk of a response on the wire: [`IncomingRequest::send`] splits larger ones.
pub(crate) const MAX_CHUNK: usize = MAX_PAYLOAD - 1;
/// Chunks the pump reads ahead of the requesting application.
const RESPONSE_QUEUE: usize = 4;
/// Chunks the responding application may queue ahead of the writer.
const SEND_QUEUE: usize = 2;
/// Longest the rest of a frame may take once its length prefix has arrived.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refusal is given to reach the requester before the stream is dropped.
const REFUSE_LINGER: Duration = Duration::from_secs(2);
/// Refusals of over-limit streams being written at once; beyond, such streams are just dropped.
const MAX_REFUSALS: usize = 64;
/// Longest message of a [`IncomingRequest::fail`].
const MAX_FAIL_MESSAGE: usize = 1024;

/// The first byte of every request frame's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Requester: a part of the request; more follow.
    RequestPart = 0x01,
    /// Requester: the last part of the request (possibly empty).
    RequestEnd = 0x02,
    /// Either side: keep-alive, no content.
    Ping = 0x03,
    /// Responder: the application took the request; data follows.
    Accept = 0x10,
    /// Responder: a chunk of the response.
    Data = 0x11,
    /// Responder: the response is complete.
    End = 0x12,
    /// Responder: the request is refused; one byte of reason ([`RefuseReason`]).
    Refuse = 0x13,
    /// Responder: the response ended with an error; UTF-8 message.
    Fail = 0x14,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => Self::RequestPart,
            0x02 => Self::RequestEnd,
            0x03 => Self::Ping,
            0x10 => Self::Accept,
            0x11 => Self::Data,
            0x12 => Self::End,
            0x13 => Self::Refuse,
            0x14 => Self::Fail,
            _ => return None,
        })
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefuseReason {
    /// The two nodes do not share the cluster key: a frame did not open, on either side.
    ClusterKey,
    /// The peer is banned here after refused frames.
    Banned,
    /// The peer has too many requests open, from this node or in all.
    Busy,
    /// The peer does not serve requests, or its application did not take this one in time.
    NotServed,
    /// The peer found the request malformed (too large, unexpected frames).
    Malformed,
    /// A reason this version does not know.
    Other(u8),
}

impl RefuseReason {
    fn code(self) -> u8 {
        match self {
            Self::ClusterKey => 1,
            Self::Busy => 2,
            Self::NotServed => 3,
            Self::Malformed => 4,
            Self::Banned => 5,
            Self::Other(code) => code,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::ClusterKey,
            2 => Self::Busy,
            3 => Self::NotServed,
            4 => Self::Malformed,
            5 => Self::Banned,
            other => Self::Other(other),
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClusterKey => f.write_str("the nodes do not share the cluster key"),
            Self::Banned => f.write_str("the peer is banned after refused frames"),
            Self::Busy => f.write_str("the peer has too many requests open"),
            Self::NotServed => {
                f.write_str("the peer does not serve requests, or did not take this one in time")
            }
            Self::Malformed => f.write_str("the peer found the request malformed"),
            Self::Other(code) => write!(f, "refused (reason {code})"),
        }
    }
}

/// Why a request failed, or a response stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// The request is larger than [`MAX_REQUEST`].
    #[error("request of {0} bytes is too large (at most {MAX_REQUEST})")]
    TooLarge(usize),
    /// No connection, or no stream, could be had.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer refused the request (or this node refused the peer).
    #[error("request refused: {0}")]
    Refused(RefuseReason),
    /// The answer did not begin within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The stream broke: reset by the peer, connection lost, peer silent for too long, or a
    /// protocol error.
    #[error("request stream broken: {0}")]
    Reset(String),
    /// The responder ended the response with an error.
    #[error("the responder failed: {0}")]
    Failed(String),
    /// Responder side: the requester went away (it dropped the response, or disconnected).
    #[error("the requester went away")]
    Closed,
}

/// The answer to a request: chunks in order, ending (`None`) when the responder finishes. An
/// error is the last item. Bounded: the pump reads at most a few chunks ahead, and the
/// transport's flow control stops the responder beyond that. Dropping it resets the stream, so
/// the responder's next [`IncomingRequest::send`] fails.
#[derive(Debug)]
pub(crate) struct ResponseStream {
    rx: mpsc::Receiver<Result<Vec<u8>, RequestError>>,
}

impl ResponseStream {
    /// The next chunk; `None` at the end.
    pub(crate) async fn recv(&mut self) -> Option<Result<Vec<u8>, RequestError>> {
        self.rx.recv().await
    }
}

impl futures::Stream for ResponseStream {
    type Item = Result<Vec<u8>, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// How the responding application ended a response.
#[derive(Debug)]
enum Ending {
    Finish,
    Fail(String),
}

/// A request from another member, taken from [`Requests::recv`]. Answer with
/// [`send`](Self::send), then [`finish`](Self::finish) (or [`fail`](Self::fail)). Dropped
/// without either, the requester gets an error rather than a response that looks complete.
#[derive(Debug)]
pub(crate) struct IncomingRequest {
    /// The requester, as authenticated by the transport and the cluster key.
    pub(crate) from: NodeId,
    /// The request.
    pub(crate) request: Vec<u8>,
    chunks: mpsc::Sender<Vec<u8>>,
    ending: Option<oneshot::Sender<Ending>>,
}

impl IncomingRequest {
    /// Sends a chunk of the response (split into chunks of at most [`MAX_CHUNK`] bytes; empty
    /// chunks are skipped). Waits while the requester does not read (back-pressure). Fails with
    /// [`RequestError::Closed`] once the requester has gone away.
    pub(crate) async fn send(&mut self, chunk: Vec<u8>) -> Result<(), RequestError> {
        if self.chunks.is_closed() {
            return Err(RequestError::Closed);
        }
        if chunk.len() <= MAX_CHUNK {
            if chunk.is_empty() {
                return Ok(());
            }
            return self
                .chunks
                .send(chunk)
                .await
                .map_err(|_| RequestError::Closed);
        }
        for piece in chunk.chunks(MAX_CHUNK) {
            self.chunks
                .send(piece.to_vec())
                .await
                .map_err(|_| RequestError::Closed)?;
        }
        Ok(())
    }

    /// Ends the response successfully, after what was sent.
    pub(crate) fn finish(mut self) {
        if let Some(ending) = self.ending.take() {
            let _ = ending.send(Ending::Finish);
        }
    }

    /// Ends the response with an error (the message is cut at 1 KiB), after what was sent.
    pub(crate) fn fail(mut self, message: &str) {
        let mut end = message.len().min(MAX_FAIL_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        if let Some(ending) = self.ending.take() {
            let _ = ending.send(Ending::Fail(message[..end].to_owned()));
        }
    }

    /// Resolves when the requester has gone away (dropped the response, disconnected, or fell
    /// silent): lets a quiet responder, such as a `logs -f` without new lines, stop.
    pub(crate) async fn closed(&self) {
        self.chunks.closed().await;
    }

    /// Whether the requester has gone away.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.chunks.is_closed()
    }
}

/// A request waiting for the application.
struct Pending {
    request: IncomingRequest,
    /// Taken by [`Requests::recv`]; a failed send means the server gave up waiting.
    accept: oneshot::Sender<()>,
}

/// The receiving end of incoming requests ([`super::NetHandle::requests`]).
pub(crate) struct Requests {
    rx: mpsc::Receiver<Pending>,
}

impl Requests {
    /// The next incoming request; `None` once the network layer has stopped. Requests waiting
    /// here longer than [`Tuning::request_accept_timeout`] are refused and skipped.
    pub(crate) async fn recv(&mut self) -> Option<IncomingRequest> {
        loop {
            let pending = self.rx.recv().await?;
            if pending.accept.send(()).is_ok() {
                return Some(pending.request);
            }
        }
    }
}

/// Limits of incoming requests, and the queue to the application.
pub(super) struct Inbox {
    /// `None` once the network layer has stopped.
    tx: Mutex<Option<mpsc::Sender<Pending>>>,
    /// `None` once taken by the application.
    rx: Mutex<Option<mpsc::Receiver<Pending>>>,
    overall: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
    max_per_peer: usize,
    refusals: Arc<Semaphore>,
}

/// A taken request slot; given back when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    peer: PeerId,
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = lock(&self.per_peer);
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl Inbox {
    pub(super) fn new(tuning: &Tuning) -> Self {
        let max = tuning.max_requests.max(1);
        let (tx, rx) = mpsc::channel(max);
        Self {
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            overall: Arc::new(Semaphore::new(max)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            max_per_peer: tuning.max_requests_per_peer,
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        }
    }

    /// Hands the receiving end to the application, once.
    pub(super) fn take(&self) -> Option<Requests> {
        lock(&self.rx).take().map(|rx| Requests { rx })
    }

    /// A slot for a request of `peer`, if it is under its limit and the total under its own.
    fn admit(&self, peer: PeerId) -> Option<Slot> {
        let permit = self.overall.clone().try_acquire_owned().ok()?;
        let mut map = lock(&self.per_peer);
        let n = map.get(&peer).copied().unwrap_or(0);
        if n >= self.max_per_peer {
            return None;
        }
        map.insert(peer, n + 1);
        Some(Slot {
            _permit: permit,
            peer,
            per_peer: self.per_peer.clone(),
        })
    }

    /// Queues a request for the application.
    fn offer(&self, pending: Pending) -> Result<(), RefuseReason> {
        if lock(&self.rx).is_some() {
            // Nobody took the receiver: this node does not serve requests.
            return Err(RefuseReason::NotServed);
        }
        let tx = lock(&self.tx);
        let Some(tx) = tx.as_ref() else {
            return Err(RefuseReason::NotServed);
        };
        tx.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RefuseReason::Busy,
            mpsc::error::TrySendError::Closed(_) => RefuseReason::NotServed,
        })
    }

    /// Stops queueing requests: [`Requests::recv`] returns `None` once the queue is empty.
    pub(super) fn close(&self) {
        lock(&self.tx).take();
    }
}

/// The keys of one request stream.
struct Keys {
    /// Responder to requester on the requester's side, the other way round on the responder's.
    inbound: FrameKey,
    outbound: FrameKey,
}

impl Keys {
    fn new(shared: &Shared, remote: &NodeId) -> Self {
        let key = &shared.cluster_key;
        let local = &shared.local_id;
        Self {
            inbound: FrameKey::derive(key, Proto::Request, remote, local),
            outbound: FrameKey::derive(key, Proto::Request, local, remote),
        }
    }
}

/// Why no frame could be read.
enum ReadFail {
    /// The stream ended or broke.
    Closed(String),
    /// Nothing arrived in time.
    Idle,
    /// The frame did not open.
    Refused(Refusal),
    /// It opened but its kind is missing or unknown.
    Unknown,
}

/// Reads and opens one frame; the length prefix must start arriving within `idle`.
async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    key: &FrameKey,
    idle: Duration,
) -> Result<(Kind, Vec<u8>), ReadFail> {
    let mut prefix = [0u8; LEN_PREFIX];
    match timeout(idle, io.read_exact(&mut prefix)).await {
        Err(_) => return Err(ReadFail::Idle),
        Ok(Err(e)) => return Err(ReadFail::Closed(e.to_string())),
        Ok(Ok(())) => {}
    }
    let len = frame::check_len(prefix).map_err(ReadFail::Refused)?;
    let mut body = vec![0; len];
    match timeout(FRAME_TIMEOUT, io.read_exact(&mut body)).await {
        Err(_) => return Err(ReadFail::Closed("frame timed out".into())),
        Ok(Err(e)) => return Err(ReadFail::Closed(e.to_string())),
        Ok(Ok(())) => {}
    }
    let (_port, mut payload) = key.open(&body).map_err(ReadFail::Refused)?;
    let kind = payload
        .first()
        .and_then(|b| Kind::from_byte(*b))
        .ok_or(ReadFail::Unknown)?;
    payload.remove(0);
    Ok((kind, payload))
}

/// Seals and writes one frame (`body` at most [`MAX_CHUNK`] bytes).
async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    key: &FrameKey,
    port: u16,
    kind: Kind,
    body: &[u8],
) -> std::io::Result<()> {
    debug_assert!(body.len() <= MAX_CHUNK);
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(kind as u8);
    payload.extend_from_slice(body);
    let mut wire = Vec::with_capacity(LEN_PREFIX + frame::HEADER_LEN + payload.len() + 16);
    key.seal_into(port, &payload, &mut wire);
    io.write_all(&wire).await?;
    io.flush().await
}

/// Requester side of [`super::NetHandle::request`].
pub(super) async fn request(
    shared: &Arc<Shared>,
    to: NodeId,
    addr: &str,
    request: Vec<u8>,
) -> Result<ResponseStream, RequestError> {
    let result = start_request(shared, to, addr, request).await;
    if let Err(e) = &result {
        shared.count(&shared.counters.requests_failed, 1);
        debug!(node = %to, addr, error = %e, "request failed");
    }
    result
}

async fn start_request(
    shared: &Arc<Shared>,
    to: NodeId,
    addr: &str,
    request: Vec<u8>,
) -> Result<ResponseStream, RequestError> {
    if request.len() > MAX_REQUEST {
        return Err(RequestError::TooLarge(request.len()));
    }
    let peer = peer_id_of(to)
        .ok_or_else(|| RequestError::Unreachable("the node id is not an Ed25519 key".into()))?;
    if peer == shared.local_peer {
        return Err(RequestError::Unreachable("this node itself".into()));
    }
    let limit = shared.tuning.request_timeout;
    let deadline = Instant::now() + limit;
    let mut control = shared.control.clone();
    let opened = timeout_at(
        deadline,
        open_stream(shared, &mut control, peer, addr.trim(), PROTOCOL),
    )
    .await;
    let stream = match opened {
        Err(_) => return Err(RequestError::Timeout(limit)),
        Ok(Err(OpenFail::BadAddr)) => {
            return Err(RequestError::Unreachable(format!(
                "not connected, and `{addr}` is not a usable address"
            )));
        }
        Ok(Err(OpenFail::Banned)) => return Err(RequestError::Refused(RefuseReason::Banned)),
        Ok(Err(OpenFail::Unreachable(reason))) => return Err(RequestError::Unreachable(reason)),
        Ok(Ok(stream)) => stream,
    };
    let keys = Keys::new(shared, &to);
    let port = shared.listen_port();
    let (rd, mut wr) = stream.split();
    let written = timeout_at(deadline, async {
        let mut parts = request.chunks(MAX_CHUNK).peekable();
        if parts.peek().is_none() {
            return write_frame(&mut wr, &keys.outbound, port, Kind::RequestEnd, &[]).await;
        }
        while let Some(part) = parts.next() {
            let kind = if parts.peek().is_some() {
                Kind::RequestPart
            } else {
                Kind::RequestEnd
            };
            write_frame(&mut wr, &keys.outbound, port, kind, part).await?;
        }
        Ok(())
    })
    .await;
    match written {
        Err(_) => return Err(RequestError::Timeout(limit)),
        Ok(Ok(())) => shared.count(&shared.counters.requests_sent, 1),
        // A responder that refuses stops reading; its refusal is still there to read.
        Ok(Err(e)) => debug!(%peer, error = %e, "writing the request failed"),
    }
    let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
    let (first_tx, first_rx) = oneshot::channel();
    tokio::spawn(pump(shared.clone(), peer, rd, wr, keys, tx, first_tx));
    match timeout_at(deadline, first_rx).await {
        Ok(Ok(Ok(()))) => Ok(ResponseStream { rx }),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(RequestError::Reset("closed without answering".into())),
        // Dropping `rx` ends the pump, which drops the stream.
        Err(_) => Err(RequestError::Timeout(limit)),
    }
}

/// The requester's task: reads the answer into `tx`, sends keep-alives, and drops the stream
/// when the answer ends or `tx`'s receiver is dropped.
async fn pump<R, W>(
    shared: Arc<Shared>,
    peer: PeerId,
    mut rd: R,
    mut wr: W,
    keys: Keys,
    tx: mpsc::Sender<Result<Vec<u8>, RequestError>>,
    first: oneshot::Sender<Result<(), RequestError>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let c = &shared.counters;
    let keepalive = shared.tuning.request_keepalive;
    let idle = keepalive.saturating_mul(3);
    let port = shared.listen_port();
    let reader = async {
        let limit = shared.tuning.request_timeout;
        let answer = match read_frame(&mut rd, &keys.inbound, limit).await {
            Ok((Kind::Accept, _)) => Ok(()),
            Ok((Kind::Refuse, body)) => Err(RequestError::Refused(RefuseReason::from_code(
                body.first().copied().unwrap_or(0),
            ))),
            Ok((Kind::Fail, body)) => Err(RequestError::Failed(
                String::from_utf8_lossy(&body).into_owned(),
            )),
            Ok(_) | Err(ReadFail::Unknown) => Err(RequestError::Reset(
                "protocol error: the answer did not start with an acceptance".into(),
            )),
            Err(ReadFail::Refused(refusal)) => {
                shared.refused(peer, refusal);
                Err(match refusal {
                    Refusal::Auth => RequestError::Refused(RefuseReason::ClusterKey),
                    other => RequestError::Reset(format!("bad frame: {}", other.reason())),
                })
            }
            Err(ReadFail::Idle) => Err(RequestError::Timeout(limit)),
            Err(ReadFail::Closed(e)) => Err(RequestError::Reset(format!(
                "closed without answering: {e}"
            ))),
        };
        let accepted = answer.is_ok();
        if first.send(answer).is_err() || !accepted {
            return;
        }
        lock(&shared.peers).reset_failures(&peer);
        loop {
            // Room first, then read: while the application does not read, neither does this
            // task, and the transport's flow control stops the responder.
            let Ok(permit) = tx.reserve().await else {
                return;
            };
            let item = match read_frame(&mut rd, &keys.inbound, idle).await {
                Ok((Kind::Data, chunk)) => {
                    shared.count(&c.response_bytes_received, chunk.len() as u64);
                    Ok(chunk)
                }
                Ok((Kind::Ping, _)) => continue,
                Ok((Kind::End, _)) => return,
                Ok((Kind::Fail, body)) => Err(RequestError::Failed(
                    String::from_utf8_lossy(&body).into_owned(),
                )),
                Ok(_) | Err(ReadFail::Unknown) => Err(RequestError::Reset(
                    "protocol error: unexpected frame".into(),
                )),
                Err(ReadFail::Refused(refusal)) => {
                    shared.refused(peer, refusal);
                    Err(RequestError::Reset(format!(
                        "refused a frame: {}",
                        refusal.reason()
                    )))
                }
                Err(ReadFail::Idle) => Err(RequestError::Reset(format!(
                    "nothing from the peer for {idle:?}"
                ))),
                Err(ReadFail::Closed(e)) => Err(RequestError::Reset(e)),
            };
            let failed = item.is_err();
            if failed {
                shared.count(&c.requests_failed, 1);
            }
            permit.send(item);
            if failed {
                return;
            }
        }
    };
    let pinger = async {
        loop {
            sleep(keepalive).await;
            if write_frame(&mut wr, &keys.outbound, port, Kind::Ping, &[])
                .await
                .is_err()
            {
                // The reader sees the broken stream.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = pinger => {}
        () = tx.closed() => {}
    }
}

/// Gives each inbound request stream a slot and a task, or refuses it as busy.
pub(super) async fn accept_requests(
    shared: Arc<Shared>,
    mut incoming: libp2p_stream::IncomingStreams,
) {
    while let Some((peer, stream)) = incoming.next().await {
        // The gate denies peers without a node id.
        let Some(from) = node_id_of(&peer) else {
            continue;
        };
        if let Some(slot) = shared.inbox.admit(peer) {
            tokio::spawn(serve(shared.clone(), peer, from, stream, slot));
            continue;
        }
        shared.count(&shared.counters.requests_refused, 1);
        debug!(%peer, "too many requests open, refused one");
        if let Ok(permit) = shared.inbox.refusals.clone().try_acquire_owned() {
            tokio::spawn(refuse_stream(shared.clone(), from, stream, permit));
        }
    }
}

/// Tells the requester of an over-limit stream that this node is busy.
async fn refuse_stream(
    shared: Arc<Shared>,
    from: NodeId,
    stream: Stream,
    _permit: OwnedSemaphorePermit,
) {
    let keys = Keys::new(&shared, &from);
    let (mut rd, mut wr) = stream.split();
    let port = shared.listen_port();
    if send_refusal(&mut wr, &keys.outbound, port, RefuseReason::Busy).await {
        let _ = timeout(REFUSE_LINGER, drain(&mut rd)).await;
    }
}

/// Writes a refusal and closes the writing side; false if that failed.
async fn send_refusal<W: AsyncWrite + Unpin>(
    wr: &mut W,
    key: &FrameKey,
    port: u16,
    reason: RefuseReason,
) -> bool {
    let sent = timeout(REFUSE_LINGER, async {
        write_frame(wr, key, port, Kind::Refuse, &[reason.code()]).await?;
        wr.close().await
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

/// Reads and discards until the peer closes: leaves a refusal time to arrive before the
/// stream is dropped (dropping it may reset it, discarding what was not yet delivered).
async fn drain<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut buf = [0u8; 4096];
    while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// The responder's task for one request.
async fn serve(shared: Arc<Shared>, peer: PeerId, from: NodeId, stream: Stream, _slot: Slot) {
    let c = &shared.counters;
    let keys = Keys::new(&shared, &from);
    let port = shared.listen_port();
    let (mut rd, mut wr) = stream.split();
    let refuse_early = match read_request(&shared, peer, &mut rd, &keys.inbound).await {
        Ok(request) => {
            lock(&shared.peers).reset_failures(&peer);
            let (chunks, chunks_rx) = mpsc::channel(SEND_QUEUE);
            let (ending, ending_rx) = oneshot::channel();
            let (accept, accept_rx) = oneshot::channel();
            let pending = Pending {
                request: IncomingRequest {
                    from,
                    request,
                    chunks,
                    ending: Some(ending),
                },
                accept,
            };
            match shared.inbox.offer(pending) {
                Ok(()) => {
                    let parts = (chunks_rx, ending_rx, accept_rx);
                    serve_taken(&shared, peer, rd, wr, &keys, parts).await;
                    return;
                }
                Err(reason) => reason,
            }
        }
        // The requester went away.
        Err(None) => return,
        Err(Some(reason)) => reason,
    };
    shared.count(&c.requests_refused, 1);
    debug!(%peer, reason = %refuse_early, "refused a request");
    if send_refusal(&mut wr, &keys.outbound, port, refuse_early).await {
        let _ = timeout(REFUSE_LINGER, drain(&mut rd)).await;
    }
}

/// Reads the request's frames; `Err(Some(reason))` to refuse it, `Err(None)` if the requester
/// went away or took too long.
async fn read_request<R: AsyncRead + Unpin>(
    shared: &Shared,
    peer: PeerId,
    rd: &mut R,
    key: &FrameKey,
) -> Result<Vec<u8>, Option<RefuseReason>> {
    let deadline = Instant::now() + shared.tuning.request_timeout;
    let mut request = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match read_frame(rd, key, left).await {
            Ok((kind @ (Kind::RequestPart | Kind::RequestEnd), part)) => {
                if request.len() + part.len() > MAX_REQUEST {
                    return Err(Some(RefuseReason::Malformed));
                }
                request.extend_from_slice(&part);
                if kind == Kind::RequestEnd {
                    return Ok(request);
                }
            }
            Ok((Kind::Ping, _)) => {}
            Ok(_) | Err(ReadFail::Unknown) => return Err(Some(RefuseReason::Malformed)),
            Err(ReadFail::Refused(refusal)) => {
                shared.refused(peer, refusal);
                return Err(Some(match refusal {
                    Refusal::Auth => RefuseReason::ClusterKey,
                    _ => RefuseReason::Malformed,
                }));
            }
            Err(ReadFail::Idle | ReadFail::Closed(_)) => return Err(None),
        }
    }
}

/// Waits for the application to take a queued request, then streams its answer, until the
/// answer ends or the requester goes away.
async fn serve_taken<R, W>(
    shared: &Shared,
    peer: PeerId,
    mut rd: R,
    mut wr: W,
    keys: &Keys,
    (chunks, ending, mut accept): (
        mpsc::Receiver<Vec<u8>>,
        oneshot::Receiver<Ending>,
        oneshot::Receiver<()>,
    ),
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let c = &shared.counters;
    let port = shared.listen_port();
    let idle = shared.tuning.request_keepalive.saturating_mul(3);
    let watch = watch_requester(shared, peer, &mut rd, &keys.inbound, idle);
    tokio::pin!(watch);
    let accepted = tokio::select! {
        taken = timeout(shared.tuning.request_accept_timeout, &mut accept) => match taken {
            Ok(taken) => taken.is_ok(),
            // Taken just as the time ran out: serve it.
            Err(_) => accept.try_recv().is_ok(),
        },
        why = &mut watch => {
            debug!(%peer, why, "requester went away before its request was taken");
            return;
        }
    };
    // A late `Requests::recv` now skips the request.
    drop(accept);
    if !accepted {
        shared.count(&c.requests_refused, 1);
        debug!(%peer, "request not taken in time, refused");
        if send_refusal(&mut wr, &keys.outbound, port, RefuseReason::NotServed).await {
            let _ = timeout(REFUSE_LINGER, &mut watch).await;
        }
        return;
    }
    shared.count(&c.requests_received, 1);
    tokio::select! {
        () = respond(shared, &mut wr, &keys.outbound, chunks, ending) => {}
        why = &mut watch => debug!(%peer, why, "requester went away, response stopped"),
    }
}

/// Reads the requester's keep-alives; returns why it is considered gone.
async fn watch_requester<R: AsyncRead + Unpin>(
    shared: &Shared,
    peer: PeerId,
    rd: &mut R,
    key: &FrameKey,
    idle: Duration,
) -> &'static str {
    loop {
        match read_frame(rd, key, idle).await {
            Ok((Kind::Ping, _)) => {}
            Ok(_) | Err(ReadFail::Unknown) => return "unexpected frame",
            Err(ReadFail::Refused(refusal)) => {
                shared.refused(peer, refusal);
                return "refused a frame";
            }
            Err(ReadFail::Idle) => return "silent for too long",
            Err(ReadFail::Closed(_)) => return "stream closed",
        }
    }
}

/// Writes the acceptance, the application's chunks (keep-alives when it is quiet) and the end.
async fn respond<W: AsyncWrite + Unpin>(
    shared: &Shared,
    wr: &mut W,
    key: &FrameKey,
    mut chunks: mpsc::Receiver<Vec<u8>>,
    mut ending: oneshot::Receiver<Ending>,
) {
    let c = &shared.counters;
    let port = shared.listen_port();
    let keepalive = shared.tuning.request_keepalive;
    if write_frame(wr, key, port, Kind::Accept, &[]).await.is_err() {
        return;
    }
    loop {
        let chunk = tokio::select! {
            chunk = chunks.recv() => chunk,
            () = sleep(keepalive) => {
                if write_frame(wr, key, port, Kind::Ping, &[]).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        if write_frame(wr, key, port, Kind::Data, &chunk)
            .await
            .is_err()
        {
            return;
        }
        shared.count(&c.response_bytes_sent, chunk.len() as u64);
    }
    let (kind, body) = match ending.try_recv() {
        Ok(Ending::Finish) => (Kind::End, Vec::new()),
        Ok(Ending::Fail(message)) => (Kind::Fail, message.into_bytes()),
        Err(_) => (
            Kind::Fail,
            b"the responder dropped the request without finishing it".to_vec(),
        ),
    };
    if write_frame(wr, key, port, kind, &body).await.is_ok() {
        let _ = wr.close().await;
    }
}
