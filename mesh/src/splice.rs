//! Moving bytes both ways between a TCP connection and a QUIC stream (or a second TCP
//! connection, for local endpoints), with half-close and resets carried across.
//!
//! - TCP read EOF: the QUIC send side is finished (or the other socket's write side shut down).
//! - QUIC stream finished: the TCP write side is shut down (FIN); the other direction goes on.
//! - TCP error (RST) on either side, QUIC reset or stop, lost connection, shutdown: the QUIC
//!   stream is reset and stopped, and the TCP socket is closed with `SO_LINGER` 0, so its peer
//!   sees a reset, not a clean end of stream that would pass truncated data off as complete.
//!
//! Bytes go out in the order they came in and are never sent twice. Idle connections hold no
//! copy buffer: the TCP side waits for readiness before a buffer is allocated, and the QUIC side
//! hands out quinn's own chunks.

use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::watch;

/// Stream error code: the TCP connection on the other side was reset or failed, or the stream
/// was torn down (lost connection, shutdown) mid-way.
pub const RESET_ABORTED: VarInt = VarInt::from_u32(1);
/// Stream error code: the header could not be decoded.
pub const RESET_BAD_HEADER: VarInt = VarInt::from_u32(2);
/// Stream error code: the agent is shutting down.
pub const RESET_SHUTDOWN: VarInt = VarInt::from_u32(3);

/// Largest read from a TCP socket, and largest batch of QUIC chunks written at once.
const COPY_BUF: usize = 64 * 1024;
/// A TCP read buffer with less room than this is replaced rather than reused.
const MIN_READ: usize = 8 * 1024;
/// Most QUIC chunks gathered into one `writev`.
const MAX_IOV: usize = 64;

/// How a splice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both directions reached end of stream; everything was delivered to the sockets.
    Closed,
    /// A side reset or failed; the other side was reset.
    Reset,
}

/// Bytes moved by a splice and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spliced {
    /// Bytes read from the TCP socket (the first one, for TCP to TCP) and passed on.
    pub(crate) from_tcp: u64,
    /// Bytes written to the TCP socket (the first one, for TCP to TCP).
    pub(crate) to_tcp: u64,
    pub(crate) ended: Ended,
}

/// Why a splice was torn down.
#[derive(Debug)]
enum Failure {
    /// A TCP socket failed (reset by its peer, or a write to a closed peer).
    Tcp,
    /// The QUIC stream was reset or stopped by the other agent, or its connection was lost.
    Quic,
    /// The mesh is shutting down.
    Shutdown,
}

impl Failure {
    fn code(&self) -> VarInt {
        match self {
            Failure::Shutdown => RESET_SHUTDOWN,
            Failure::Tcp | Failure::Quic => RESET_ABORTED,
        }
    }
}

/// Waits until the shutdown flag is raised; never returns if its sender is gone.
pub(crate) async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs both directions until both end cleanly, one fails, or shutdown. The directions are
/// pinned by the caller: taking them by value would keep a second copy of each in this
/// future's state, and every idle connection holds one.
async fn both(
    mut a: Pin<&mut impl Future<Output = Result<(), Failure>>>,
    mut b: Pin<&mut impl Future<Output = Result<(), Failure>>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Failure> {
    let (mut a_done, mut b_done) = (false, false);
    loop {
        tokio::select! {
            r = a.as_mut(), if !a_done => match r {
                Ok(()) => a_done = true,
                Err(f) => return Some(f),
            },
            r = b.as_mut(), if !b_done => match r {
                Ok(()) => b_done = true,
                Err(f) => return Some(f),
            },
            () = shutdown_signal(shutdown) => return Some(Failure::Shutdown),
        }
        if a_done && b_done {
            return None;
        }
    }
}

/// Splices a TCP connection and a QUIC stream until both directions are done or one fails.
/// `from_tcp_counter` and `to_tcp_counter` are advanced as bytes move (live metrics).
pub(crate) async fn quic_tcp(
    mut send: SendStream,
    mut recv: RecvStream,
    mut tcp: TcpStream,
    from_tcp_counter: &AtomicU64,
    to_tcp_counter: &AtomicU64,
    mut shutdown: watch::Receiver<bool>,
) -> Spliced {
    let (mut from_tcp, mut to_tcp) = (0, 0);
    let failure = {
        let (tcp_r, mut tcp_w) = tcp.split();
        let up = pin!(tcp_to_quic(
            &tcp_r,
            &mut send,
            from_tcp_counter,
            &mut from_tcp
        ));
        let down = pin!(quic_to_tcp(
            &mut recv,
            &mut tcp_w,
            to_tcp_counter,
            &mut to_tcp
        ));
        both(up, down, &mut shutdown).await
    };
    let ended = match failure {
        None => Ended::Closed,
        Some(f) => {
            let code = f.code();
            // Either may already be closed by the peer; nothing more to tell it then.
            let _ = send.reset(code);
            let _ = recv.stop(code);
            abort_tcp(tcp);
            Ended::Reset
        }
    };
    Spliced {
        from_tcp,
        to_tcp,
        ended,
    }
}

/// Splices two TCP connections (a local endpoint): `client` is the first one.
pub(crate) async fn tcp_tcp(
    mut client: TcpStream,
    mut server: TcpStream,
    from_client_counter: &AtomicU64,
    to_client_counter: &AtomicU64,
    mut shutdown: watch::Receiver<bool>,
) -> Spliced {
    let (mut from_tcp, mut to_tcp) = (0, 0);
    let failure = {
        let (client_r, mut client_w) = client.split();
        let (server_r, mut server_w) = server.split();
        let up = pin!(tcp_to_tcp(
            &client_r,
            &mut server_w,
            from_client_counter,
            &mut from_tcp
        ));
        let down = pin!(tcp_to_tcp(
            &server_r,
            &mut client_w,
            to_client_counter,
            &mut to_tcp
        ));
        both(up, down, &mut shutdown).await
    };
    let ended = match failure {
        None => Ended::Closed,
        Some(_) => {
            abort_tcp(client);
            abort_tcp(server);
            Ended::Reset
        }
    };
    Spliced {
        from_tcp,
        to_tcp,
        ended,
    }
}

/// Closes a TCP socket with a reset (`SO_LINGER` 0), dropping unsent data.
pub(crate) fn abort_tcp(tcp: TcpStream) {
    // Failing to set the option leaves an ordinary close, still better than keeping it open.
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

fn read_buffer(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ {
        *buf = BytesMut::with_capacity(COPY_BUF);
    }
}

async fn tcp_to_quic(
    tcp: &ReadHalf<'_>,
    send: &mut SendStream,
    counter: &AtomicU64,
    total: &mut u64,
) -> Result<(), Failure> {
    loop {
        tcp.readable().await.map_err(|_| Failure::Tcp)?;
        // Allocated only once data is there, dropped when the socket runs dry.
        let mut buf = BytesMut::new();
        loop {
            read_buffer(&mut buf);
            match tcp.try_read_buf(&mut buf) {
                Ok(0) => {
                    send.finish().map_err(|_| Failure::Quic)?;
                    return Ok(());
                }
                Ok(n) => {
                    // Boxed: the write's state exists only while data moves, so it does not
                    // enlarge the future every idle connection keeps.
                    Box::pin(send.write_chunk(buf.split().freeze()))
                        .await
                        .map_err(|_| Failure::Quic)?;
                    *total += n as u64;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Failure::Tcp),
            }
        }
    }
}

async fn quic_to_tcp(
    recv: &mut RecvStream,
    tcp: &mut WriteHalf<'_>,
    counter: &AtomicU64,
    total: &mut u64,
) -> Result<(), Failure> {
    loop {
        let first = match recv.read_chunk(COPY_BUF, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                tcp.shutdown().await.map_err(|_| Failure::Tcp)?;
                return Ok(());
            }
            Err(_) => return Err(Failure::Quic),
        };
        // Take whatever else quinn already holds, so one writev carries many packets.
        let mut batch = first.len();
        let mut chunks = Vec::with_capacity(16);
        chunks.push(first);
        let mut finished = false;
        while chunks.len() < MAX_IOV && batch < COPY_BUF {
            match recv.read_chunk(COPY_BUF, true).now_or_never() {
                None => break,
                Some(Ok(Some(chunk))) => {
                    batch += chunk.bytes.len();
                    chunks.push(chunk.bytes);
                }
                Some(Ok(None)) => {
                    finished = true;
                    break;
                }
                Some(Err(_)) => return Err(Failure::Quic),
            }
        }
        Box::pin(write_all_chunks(tcp, &mut chunks))
            .await
            .map_err(|_| Failure::Tcp)?;
        *total += batch as u64;
        counter.fetch_add(batch as u64, Ordering::Relaxed);
        if finished {
            tcp.shutdown().await.map_err(|_| Failure::Tcp)?;
            return Ok(());
        }
    }
}

async fn write_all_chunks(tcp: &mut WriteHalf<'_>, chunks: &mut [Bytes]) -> io::Result<()> {
    let mut first = 0;
    loop {
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(());
        }
        let iov: Vec<IoSlice<'_>> = chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
        let mut written = tcp.write_vectored(&iov).await?;
        drop(iov);
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut chunks[first];
            let n = written.min(chunk.len());
            chunk.advance(n);
            written -= n;
            if chunk.is_empty() {
                first += 1;
            }
        }
    }
}

async fn tcp_to_tcp(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    counter: &AtomicU64,
    total: &mut u64,
) -> Result<(), Failure> {
    loop {
        from.readable().await.map_err(|_| Failure::Tcp)?;
        let mut buf: Vec<u8> = Vec::with_capacity(COPY_BUF);
        loop {
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    to.shutdown().await.map_err(|_| Failure::Tcp)?;
                    return Ok(());
                }
                Ok(n) => {
                    to.write_all(&buf).await.map_err(|_| Failure::Tcp)?;
                    *total += n as u64;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Failure::Tcp),
            }
        }
    }
}
