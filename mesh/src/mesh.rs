//! The mesh handle: starting the endpoint, choosing and reaching endpoints, proxying.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p_identity::{Keypair, PeerId};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, TransportConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::balance::{self, Load};
use crate::config::{Endpoint, Members, MeshConfig, ServiceKey, Tuning};
use crate::error::MeshError;
use crate::metrics::{MeshMetrics, Metrics, ServiceCounters, dec, inc};
use crate::pool::Pool;
use crate::server::{self, CLOSE_NOT_MEMBER, CLOSE_SHUTDOWN};
use crate::splice::{self, Ended, RESET_ABORTED};
use crate::tls;
use crate::wire::{Header, Status};

/// Decides whether this node serves a destination (a local endpoint's ip:port).
pub type AllowFn = dyn Fn(SocketAddr) -> bool + Send + Sync;

pub(crate) struct Inner {
    pub(crate) local_peer: PeerId,
    pub(crate) keypair: Keypair,
    pub(crate) endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    pub(crate) tuning: Tuning,
    pub(crate) client_transport: Arc<TransportConfig>,
    pub(crate) members: watch::Receiver<Arc<Members>>,
    pub(crate) allowed: Box<AllowFn>,
    pub(crate) pool: Pool,
    /// Streams open or being established per endpoint, as this node's balancer sees them.
    active: Mutex<HashMap<Endpoint, u32>>,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown_tx: watch::Sender<bool>,
}

/// The service mesh of one agent: one QUIC endpoint serving other members' streams, and the
/// requester side that proxies local clients to endpoints anywhere in the cluster. Cheap to
/// clone. Runs until [`Mesh::shutdown`].
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

/// What one proxied connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyStats {
    /// The endpoint that served it.
    pub endpoint: Endpoint,
    /// Establishment attempts (1 when the first choice worked).
    pub attempts: u32,
    /// From accepting the job to the endpoint's OK (or local connect).
    pub connect_time: Duration,
    /// Bytes from the client to the endpoint.
    pub bytes_to_service: u64,
    /// Bytes from the endpoint to the client.
    pub bytes_from_service: u64,
    /// Whether both sides closed cleanly or the connection was reset.
    pub ended: Ended,
}

/// A connection established through the mesh (the status was OK), as a byte stream.
/// Shutting down its write side finishes the stream (half-close); dropping it without that
/// ends the stream as well. [`MeshStream::abort`] resets it.
pub struct MeshStream {
    io: StreamIo,
    endpoint: Endpoint,
    active: ActiveGuard,
}

enum StreamIo {
    Local(TcpStream),
    Remote { send: SendStream, recv: RecvStream },
}

/// Counts a stream towards its endpoint's and its service's load while it lives.
struct ActiveGuard {
    inner: Arc<Inner>,
    endpoint: Endpoint,
    counters: Arc<ServiceCounters>,
    opened: bool,
}

impl ActiveGuard {
    fn new(inner: &Arc<Inner>, endpoint: Endpoint, counters: &Arc<ServiceCounters>) -> Self {
        *inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint)
            .or_default() += 1;
        ActiveGuard {
            inner: Arc::clone(inner),
            endpoint,
            counters: Arc::clone(counters),
            opened: false,
        }
    }

    fn opened(&mut self) {
        self.opened = true;
        inc(&self.counters.opened);
        inc(&self.counters.active);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = active.get_mut(&self.endpoint) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(&self.endpoint);
            }
        }
        if self.opened {
            dec(&self.counters.active);
        }
    }
}

enum Established {
    Local(TcpStream),
    Remote { send: SendStream, recv: RecvStream },
}

fn bind_udp(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Larger buffers absorb bursts at multi-gigabit rates; the kernel caps them, which is fine.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// HMAC key for stateless resets, derived from the node identity: after a restart this node
/// can still reset connections of its previous life, so peers replace them at once instead of
/// waiting for their idle timeout.
struct ResetKey(ring::hmac::Key);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        signature_out.copy_from_slice(ring::hmac::sign(&self.0, data).as_ref());
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        ring::hmac::verify(&self.0, data, signature).map_err(|_| quinn::crypto::CryptoError)
    }
}

fn endpoint_config(keypair: &Keypair, tuning: &Tuning) -> Result<quinn::EndpointConfig, MeshError> {
    let mut config = match keypair.derive_secret(b"shoal mesh stateless reset key") {
        Some(secret) => quinn::EndpointConfig::new(Arc::new(ResetKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &secret,
        )))),
        None => quinn::EndpointConfig::default(),
    };
    config
        .max_udp_payload_size(tuning.mtu_upper_bound.max(1472))
        .map_err(|e| MeshError::Config(format!("mtu_upper_bound: {e}")))?;
    Ok(config)
}

fn connection_error(peer: PeerId, e: &ConnectionError) -> MeshError {
    match e {
        ConnectionError::ApplicationClosed(close) if close.error_code == CLOSE_NOT_MEMBER => {
            MeshError::RefusedByPeer {
                peer,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        other => MeshError::ConnectionLost {
            peer,
            reason: other.to_string(),
        },
    }
}

fn write_error(peer: PeerId, e: &quinn::WriteError) -> MeshError {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_error(peer, c),
        other => MeshError::ConnectionLost {
            peer,
            reason: other.to_string(),
        },
    }
}

fn read_error(peer: PeerId, e: &quinn::ReadExactError) -> MeshError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            connection_error(peer, c)
        }
        other => MeshError::ConnectionLost {
            peer,
            reason: other.to_string(),
        },
    }
}

impl Mesh {
    /// Binds the QUIC endpoint on `config.listen` and starts serving members' streams.
    ///
    /// `members` is the current cluster membership: only members may connect, and a peer that
    /// leaves it has its connections closed (streams reset) at once. `allowed` tells which
    /// destinations this node serves to other members (its own ready endpoints); anything else
    /// is answered [`Status::NotAllowed`], so a member cannot reach arbitrary host ports.
    pub async fn start(
        config: MeshConfig,
        members: watch::Receiver<Arc<Members>>,
        allowed: impl Fn(SocketAddr) -> bool + Send + Sync + 'static,
    ) -> Result<Mesh, MeshError> {
        let MeshConfig {
            keypair,
            listen,
            tuning,
        } = config;
        tuning.validate().map_err(MeshError::Config)?;
        let server_config = tls::server_config(&keypair, &tuning)?;
        let client_transport = Arc::new(tls::transport(&tuning, 0)?);
        // Build one client config now so that a keypair that cannot sign certificates fails
        // here, not on the first dial.
        tls::client_config(
            &keypair,
            keypair.public().to_peer_id(),
            Arc::clone(&client_transport),
        )?;
        let socket =
            bind_udp(listen, tuning.udp_buffer_bytes).map_err(|source| MeshError::Bind {
                addr: listen,
                source,
            })?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(&keypair, &tuning)?,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| MeshError::Bind {
            addr: listen,
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| MeshError::Bind {
            addr: listen,
            source,
        })?;
        let (shutdown_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            local_peer: keypair.public().to_peer_id(),
            keypair,
            endpoint,
            local_addr,
            tuning,
            client_transport,
            members,
            allowed: Box::new(allowed),
            pool: Pool::default(),
            active: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            shutdown_tx,
        });
        tokio::spawn(server::accept_loop(Arc::clone(&inner)));
        Ok(Mesh { inner })
    }

    /// The UDP address the mesh listens on (other members dial it).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.inner.local_peer
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> MeshMetrics {
        self.inner.metrics.snapshot()
    }

    /// Streams open or being established to `endpoint` from this node (the balancer's load).
    pub fn active_streams(&self, endpoint: &Endpoint) -> u32 {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Closes every connection (their streams are reset, proxied TCP connections see a
    /// reset), stops accepting, and waits up to a second for the close to reach peers.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        self.inner.endpoint.close(CLOSE_SHUTDOWN, b"shutting down");
        self.inner.pool.clear();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    fn is_shut_down(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }

    /// Opens one connection to `endpoint` (no retry, no balancing): directly by TCP when it is on
    /// this node, else a mesh stream whose status was OK.
    pub async fn open(
        &self,
        service: &ServiceKey,
        endpoint: &Endpoint,
    ) -> Result<MeshStream, MeshError> {
        if self.is_shut_down() {
            return Err(MeshError::ShutDown);
        }
        let counters = self.inner.metrics.outbound(service.as_str());
        let started = Instant::now();
        let mut guard = ActiveGuard::new(&self.inner, *endpoint, &counters);
        let attempt = tokio::time::timeout(
            self.inner.tuning.establish_timeout,
            self.attempt(service, endpoint),
        )
        .await;
        let established = match attempt {
            Ok(Ok(established)) => established,
            Ok(Err(e)) => {
                inc(&counters.failed);
                return Err(e);
            }
            Err(_) => {
                inc(&counters.failed);
                return Err(MeshError::StatusTimeout {
                    endpoint: Box::new(*endpoint),
                    timeout: self.inner.tuning.establish_timeout,
                });
            }
        };
        counters.connect.record(started.elapsed());
        guard.opened();
        let io = match established {
            Established::Local(tcp) => {
                inc(&counters.local);
                StreamIo::Local(tcp)
            }
            Established::Remote { send, recv } => StreamIo::Remote { send, recv },
        };
        Ok(MeshStream {
            io,
            endpoint: *endpoint,
            active: guard,
        })
    }

    /// Proxies `client` to one of `candidates` (the service's ready endpoints) until both
    /// sides have closed: chooses by power of two choices (see [`crate::balance`]), retries
    /// establishment on other candidates (never once payload has moved), then splices bytes
    /// both ways with half-close and resets carried across. On error the client connection is
    /// reset.
    pub async fn proxy(
        &self,
        client: TcpStream,
        service: &ServiceKey,
        candidates: &[Endpoint],
    ) -> Result<ProxyStats, MeshError> {
        let counters = self.inner.metrics.outbound(service.as_str());
        let _ = client.set_nodelay(true);
        let started = Instant::now();
        // Boxed, like the splices' transient states: an idle connection's task keeps only the
        // state of the splice.
        let (endpoint, established, mut guard, attempts) =
            match Box::pin(self.establish(service, candidates, &counters)).await {
                Ok(ok) => ok,
                Err(e) => {
                    inc(&counters.failed);
                    splice::abort_tcp(client);
                    return Err(e);
                }
            };
        let connect_time = started.elapsed();
        counters.connect.record(connect_time);
        guard.opened();
        let shutdown = self.inner.shutdown_tx.subscribe();
        let spliced = match established {
            Established::Local(tcp) => {
                inc(&counters.local);
                splice::tcp_tcp(
                    client,
                    tcp,
                    &counters.bytes_to_service,
                    &counters.bytes_from_service,
                    shutdown,
                )
                .await
            }
            Established::Remote { send, recv } => {
                splice::quic_tcp(
                    send,
                    recv,
                    client,
                    &counters.bytes_to_service,
                    &counters.bytes_from_service,
                    shutdown,
                )
                .await
            }
        };
        if spliced.ended == Ended::Reset {
            inc(&counters.resets);
        }
        drop(guard);
        Ok(ProxyStats {
            endpoint,
            attempts,
            connect_time,
            bytes_to_service: spliced.from_tcp,
            bytes_from_service: spliced.to_tcp,
            ended: spliced.ended,
        })
    }

    /// Chooses endpoints and tries them until one is established, within the attempt and
    /// time budgets.
    async fn establish(
        &self,
        service: &ServiceKey,
        candidates: &[Endpoint],
        counters: &Arc<ServiceCounters>,
    ) -> Result<(Endpoint, Established, ActiveGuard, u32), MeshError> {
        if self.is_shut_down() {
            return Err(MeshError::ShutDown);
        }
        let tuning = &self.inner.tuning;
        let started = Instant::now();
        let local = self.inner.local_peer;
        let mut left: Vec<Endpoint> = {
            let members = self.inner.members.borrow();
            candidates
                .iter()
                .filter(|e| e.node == local || members.contains(&e.node))
                .copied()
                .collect()
        };
        left.sort_unstable();
        left.dedup();
        if left.is_empty() {
            return Err(MeshError::NoCandidates);
        }
        let mut attempts = 0;
        let mut last = None;
        while attempts < tuning.max_attempts.get() {
            let Some(budget) = tuning.establish_timeout.checked_sub(started.elapsed()) else {
                break;
            };
            let choice = {
                let active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
                let loads: Vec<Load> = left
                    .iter()
                    .map(|e| Load {
                        active: active.get(e).copied().unwrap_or(0),
                        local: e.node == local,
                    })
                    .collect();
                balance::choose(&loads, &mut rand::rng())
            };
            let Some(index) = choice else { break };
            let endpoint = left.swap_remove(index);
            let guard = ActiveGuard::new(&self.inner, endpoint, counters);
            attempts += 1;
            let error = match tokio::time::timeout(budget, self.attempt(service, &endpoint)).await {
                Ok(Ok(established)) => return Ok((endpoint, established, guard, attempts)),
                Ok(Err(e)) => e,
                Err(_) => MeshError::StatusTimeout {
                    endpoint: Box::new(endpoint),
                    timeout: budget,
                },
            };
            tracing::debug!(%endpoint, error = %error, "mesh attempt failed");
            let retry = error.is_retryable();
            last = Some(error);
            if !retry || left.is_empty() || self.is_shut_down() {
                break;
            }
            inc(&counters.retries);
        }
        Err(MeshError::Exhausted {
            attempts,
            elapsed: started.elapsed(),
            last: Box::new(last.unwrap_or(MeshError::NoCandidates)),
        })
    }

    /// One establishment attempt to one endpoint.
    async fn attempt(
        &self,
        service: &ServiceKey,
        endpoint: &Endpoint,
    ) -> Result<Established, MeshError> {
        let tuning = &self.inner.tuning;
        if endpoint.node == self.inner.local_peer {
            let tcp = match tokio::time::timeout(
                tuning.connect_timeout,
                TcpStream::connect(endpoint.addr),
            )
            .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(source)) => {
                    return Err(MeshError::LocalConnect {
                        endpoint: Box::new(*endpoint),
                        source,
                    });
                }
                Err(_) => {
                    return Err(MeshError::LocalConnect {
                        endpoint: Box::new(*endpoint),
                        source: io::ErrorKind::TimedOut.into(),
                    });
                }
            };
            let _ = tcp.set_nodelay(true);
            return Ok(Established::Local(tcp));
        }
        let addr = self
            .inner
            .members
            .borrow()
            .mesh_addr(&endpoint.node)
            .ok_or(MeshError::NotMember(endpoint.node))?;
        let conn = self
            .inner
            .pool
            .get(&self.inner, endpoint.node, addr)
            .await?;
        let result = self.request(&conn, service, endpoint).await;
        if result.is_err() && conn.close_reason().is_some() {
            self.inner.pool.evict(&endpoint.node, &conn);
        }
        result
    }

    /// Opens a stream on `conn`, sends the header and reads the status.
    async fn request(
        &self,
        conn: &Connection,
        service: &ServiceKey,
        endpoint: &Endpoint,
    ) -> Result<Established, MeshError> {
        let peer = endpoint.node;
        let header = Header {
            dest: endpoint.addr,
            service: service.as_str().to_owned(),
        }
        .encode()
        .map_err(|e| MeshError::Config(e.to_string()))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| connection_error(peer, &e))?;
        let timeout = self.inner.tuning.status_timeout;
        let exchange = async {
            send.write_all(&header)
                .await
                .map_err(|e| write_error(peer, &e))?;
            let mut status = [0u8; 1];
            recv.read_exact(&mut status)
                .await
                .map_err(|e| read_error(peer, &e))?;
            Ok::<u8, MeshError>(status[0])
        };
        let answer = tokio::time::timeout(timeout, exchange).await;
        let failure = match answer {
            Ok(Ok(byte)) => match Status::from_byte(byte) {
                Some(Status::Ok) => return Ok(Established::Remote { send, recv }),
                Some(Status::Refused) => MeshError::Refused(Box::new(*endpoint)),
                Some(Status::ConnectFailed) => MeshError::ConnectFailed(Box::new(*endpoint)),
                Some(Status::NotAllowed) => MeshError::NotAllowed(Box::new(*endpoint)),
                Some(Status::UnsupportedVersion) => {
                    MeshError::UnsupportedVersion(Box::new(*endpoint))
                }
                None => MeshError::BadStatus {
                    endpoint: Box::new(*endpoint),
                    byte,
                },
            },
            Ok(Err(e)) => e,
            Err(_) => MeshError::StatusTimeout {
                endpoint: Box::new(*endpoint),
                timeout,
            },
        };
        let _ = send.reset(RESET_ABORTED);
        let _ = recv.stop(RESET_ABORTED);
        Err(failure)
    }
}

impl MeshStream {
    /// The endpoint this stream reaches.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether the endpoint is on this node (a direct TCP connection).
    pub fn is_local(&self) -> bool {
        matches!(self.io, StreamIo::Local(_))
    }

    /// Ends the stream abortively: the far side sees a reset, not an end of stream.
    pub fn abort(self) {
        match self.io {
            StreamIo::Local(tcp) => splice::abort_tcp(tcp),
            StreamIo::Remote { mut send, mut recv } => {
                let _ = send.reset(RESET_ABORTED);
                let _ = recv.stop(RESET_ABORTED);
            }
        }
    }

    fn counters(&self) -> &ServiceCounters {
        &self.active.counters
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = match &mut this.io {
            StreamIo::Local(tcp) => Pin::new(tcp).poll_read(cx, buf),
            StreamIo::Remote { recv, .. } => Pin::new(recv).poll_read(cx, buf),
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            this.counters()
                .bytes_from_service
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = match &mut this.io {
            StreamIo::Local(tcp) => Pin::new(tcp).poll_write(cx, buf),
            StreamIo::Remote { send, .. } => AsyncWrite::poll_write(Pin::new(send), cx, buf),
        };
        if let Poll::Ready(Ok(n)) = &poll {
            this.counters()
                .bytes_to_service
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamIo::Local(tcp) => Pin::new(tcp).poll_flush(cx),
            StreamIo::Remote { send, .. } => AsyncWrite::poll_flush(Pin::new(send), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamIo::Local(tcp) => Pin::new(tcp).poll_shutdown(cx),
            StreamIo::Remote { send, .. } => AsyncWrite::poll_shutdown(Pin::new(send), cx),
        }
    }
}
