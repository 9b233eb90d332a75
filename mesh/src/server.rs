//! The serving side: accepting peer connections (members only), and serving each stream by
//! connecting to the endpoint its header names, if this node serves it.

use std::sync::Arc;
use std::time::Instant;

use libp2p_identity::PeerId;
use quinn::{Connection, ReadExactError, RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;

use crate::mesh::Inner;
use crate::metrics::{ServiceCounters, dec, inc};
use crate::splice::{self, RESET_ABORTED, RESET_BAD_HEADER, shutdown_signal};
use crate::tls;
use crate::wire::{Header, PREFIX_LEN, Status, WireError};

/// Connection close code: the mesh is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Connection close code: the peer is not (or no longer) a cluster member.
pub const CLOSE_NOT_MEMBER: VarInt = VarInt::from_u32(1);
/// Connection close code: the peer's certificate carries no readable identity.
pub const CLOSE_NO_IDENTITY: VarInt = VarInt::from_u32(2);

pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown_tx.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => incoming,
            () = shutdown_signal(&mut shutdown) => return,
        };
        let Some(incoming) = incoming else { return };
        tokio::spawn(handle_incoming(Arc::clone(&inner), incoming));
    }
}

async fn handle_incoming(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let handshake = async {
        let connecting = incoming.accept().map_err(|e| e.to_string())?;
        match tokio::time::timeout(inner.tuning.handshake_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".to_owned()),
        }
    };
    let conn = match handshake.await {
        Ok(conn) => conn,
        Err(reason) => {
            inc(&inner.metrics.handshake_failures);
            tracing::debug!(%reason, "mesh handshake failed");
            return;
        }
    };
    let Some(peer) = tls::peer_id(&conn) else {
        // The verifier accepted the certificate, so this does not happen; refuse anyway.
        inc(&inner.metrics.handshake_failures);
        conn.close(CLOSE_NO_IDENTITY, b"no peer identity");
        return;
    };
    // Checked before any stream is accepted: a non-member gets nothing but the close.
    if !inner.members.borrow().contains(&peer) {
        inc(&inner.metrics.refused_non_members);
        tracing::debug!(%peer, remote = %conn.remote_address(), "refused a non-member");
        conn.close(CLOSE_NOT_MEMBER, b"not a cluster member");
        return;
    }
    inc(&inner.metrics.peer_connections);
    let accept_streams = async {
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(serve_stream(Arc::clone(&inner), send, recv));
        }
    };
    tokio::select! {
        () = accept_streams => {}
        () = close_when_not_member(&inner, &peer, &conn) => {}
    }
    dec(&inner.metrics.peer_connections);
}

/// Returns once `conn` is closed, closing it first if `peer` leaves the members.
pub(crate) async fn close_when_not_member(inner: &Inner, peer: &PeerId, conn: &Connection) {
    let mut members = inner.members.clone();
    loop {
        if !members.borrow_and_update().contains(peer) {
            inc(&inner.metrics.closed_for_membership);
            tracing::debug!(%peer, "closing the connection of a departed member");
            conn.close(CLOSE_NOT_MEMBER, b"no longer a cluster member");
            return;
        }
        tokio::select! {
            _ = conn.closed() => return,
            changed = members.changed() => if changed.is_err() {
                // Nobody publishes membership any more: keep what we have.
                conn.closed().await;
                return;
            },
        }
    }
}

enum HeaderError {
    Wire(WireError),
    /// The stream failed (reset by the peer, connection lost) before a header was complete.
    Stream,
}

async fn read_header(recv: &mut RecvStream) -> Result<Header, HeaderError> {
    let map = |e: ReadExactError| match e {
        ReadExactError::FinishedEarly(_) => HeaderError::Wire(WireError::Truncated),
        ReadExactError::ReadError(_) => HeaderError::Stream,
    };
    let mut prefix = [0u8; PREFIX_LEN];
    recv.read_exact(&mut prefix).await.map_err(map)?;
    let len = Header::decode_prefix(prefix).map_err(HeaderError::Wire)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(map)?;
    Header::decode_body(&body).map_err(HeaderError::Wire)
}

/// Answers a status that ends the stream.
async fn refuse(mut send: SendStream, mut recv: RecvStream, status: Status) {
    let _ = recv.stop(VarInt::from_u32(0));
    if send.write_all(&[status.to_byte()]).await.is_ok() {
        let _ = send.finish();
    }
}

async fn serve_stream(inner: Arc<Inner>, send: SendStream, recv: RecvStream) {
    // Boxed: the header and connect phase is over before the splice starts, and an idle
    // connection's task then keeps only the splice's state.
    let Some((send, recv, tcp, counters)) = Box::pin(accept_stream(&inner, send, recv)).await
    else {
        return;
    };
    inc(&counters.opened);
    inc(&counters.active);
    let spliced = splice::quic_tcp(
        send,
        recv,
        tcp,
        &counters.bytes_from_service,
        &counters.bytes_to_service,
        inner.shutdown_tx.subscribe(),
    )
    .await;
    dec(&counters.active);
    if spliced.ended == splice::Ended::Reset {
        inc(&counters.resets);
    }
}

/// Reads the header, checks the destination, connects and answers the status. Returns the
/// stream and the connected socket once OK was sent; `None` when the stream was refused.
async fn accept_stream(
    inner: &Inner,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Option<(SendStream, RecvStream, TcpStream, Arc<ServiceCounters>)> {
    let header = tokio::time::timeout(inner.tuning.header_timeout, read_header(&mut recv)).await;
    let header = match header {
        Ok(Ok(header)) => header,
        Ok(Err(HeaderError::Wire(WireError::UnsupportedVersion(version)))) => {
            inc(&inner.metrics.unsupported_versions);
            tracing::debug!(version, "mesh stream with an unsupported header version");
            refuse(send, recv, Status::UnsupportedVersion).await;
            return None;
        }
        Ok(Err(HeaderError::Stream)) => {
            let _ = send.reset(RESET_ABORTED);
            return None;
        }
        Ok(Err(HeaderError::Wire(_))) | Err(_) => {
            inc(&inner.metrics.bad_headers);
            let _ = send.reset(RESET_BAD_HEADER);
            let _ = recv.stop(RESET_BAD_HEADER);
            return None;
        }
    };
    let counters = inner.metrics.inbound(&header.service);
    if !(inner.allowed)(header.dest) {
        inc(&inner.metrics.not_allowed);
        inc(&counters.failed);
        tracing::debug!(dest = %header.dest, service = %header.service, "mesh destination not allowed");
        refuse(send, recv, Status::NotAllowed).await;
        return None;
    }
    let started = Instant::now();
    let connected = tokio::time::timeout(
        inner.tuning.connect_timeout,
        TcpStream::connect(header.dest),
    )
    .await;
    let status = match &connected {
        Ok(Ok(_)) => Status::Ok,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Status::Refused,
        Ok(Err(_)) | Err(_) => Status::ConnectFailed,
    };
    let Ok(Ok(tcp)) = connected else {
        inc(&inner.metrics.connect_failures);
        inc(&counters.failed);
        refuse(send, recv, status).await;
        return None;
    };
    counters.connect.record(started.elapsed());
    let _ = tcp.set_nodelay(true);
    if send.write_all(&[Status::Ok.to_byte()]).await.is_err() {
        let _ = recv.stop(RESET_ABORTED);
        splice::abort_tcp(tcp);
        return None;
    }
    Some((send, recv, tcp, counters))
}
