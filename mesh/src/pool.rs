//! One QUIC connection per peer: dialed on first use, shared by every stream to that peer,
//! replaced once broken. Concurrent requests for a peer that is being dialed wait for the same
//! dial (and share its failure) instead of dialing again, and for `dial_backoff` after a failed
//! dial requests fail at once, so that retries go to other endpoints without waiting for another
//! handshake timeout on a peer that is down but not yet declared dead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use libp2p_identity::PeerId;
use quinn::{Connection, ConnectionError};

use crate::error::MeshError;
use crate::mesh::Inner;
use crate::metrics::{dec, inc};
use crate::server::CLOSE_NOT_MEMBER;
use crate::{server, tls};

/// A dial's outcome, shared by every waiter.
type DialResult = Result<Connection, DialError>;

#[derive(Clone, Debug)]
enum DialError {
    /// The peer closed the new connection because it does not count us as a member.
    Refused(Arc<str>),
    /// Timeout, handshake failure, wrong identity.
    Failed(Arc<str>),
}

impl DialError {
    fn into_mesh_error(self, peer: PeerId) -> MeshError {
        match self {
            DialError::Refused(reason) => MeshError::RefusedByPeer {
                peer,
                reason: reason.to_string(),
            },
            DialError::Failed(reason) => MeshError::Dial {
                peer,
                reason: reason.to_string(),
            },
        }
    }
}

enum Slot {
    Ready(Connection),
    Dialing {
        id: u64,
        dial: Shared<BoxFuture<'static, DialResult>>,
    },
    /// The last dial failed; requests fail at once (and try another endpoint) until `until`.
    Failed {
        until: Instant,
        error: DialError,
    },
}

/// The connections this node dialed, by peer.
#[derive(Default)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<PeerId, Slot>>,
    next_id: AtomicU64,
}

impl Pool {
    /// A live connection to `peer`, dialing `addr` if there is none.
    pub(crate) async fn get(
        &self,
        inner: &Arc<Inner>,
        peer: PeerId,
        addr: SocketAddr,
    ) -> Result<Connection, MeshError> {
        let (id, dial) = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(&peer) {
                Some(Slot::Ready(conn)) if conn.close_reason().is_none() => {
                    return Ok(conn.clone());
                }
                Some(Slot::Dialing { id, dial }) => (*id, dial.clone()),
                Some(Slot::Failed { until, error }) if Instant::now() < *until => {
                    return Err(error.clone().into_mesh_error(peer));
                }
                _ => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let dial = dial(Arc::downgrade(inner), peer, addr).boxed().shared();
                    slots.insert(
                        peer,
                        Slot::Dialing {
                            id,
                            dial: dial.clone(),
                        },
                    );
                    (id, dial)
                }
            }
        };
        let result = dial.await;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(slots.get(&peer), Some(Slot::Dialing { id: current, .. }) if *current == id) {
            match &result {
                Ok(conn) => {
                    slots.insert(peer, Slot::Ready(conn.clone()));
                }
                Err(error) => {
                    slots.insert(
                        peer,
                        Slot::Failed {
                            until: Instant::now() + inner.tuning.dial_backoff,
                            error: error.clone(),
                        },
                    );
                }
            }
        }
        result.map_err(|e| e.into_mesh_error(peer))
    }

    /// Forgets `conn` if it is still the pooled connection to `peer`.
    pub(crate) fn evict(&self, peer: &PeerId, conn: &Connection) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(slots.get(peer), Some(Slot::Ready(c)) if c.stable_id() == conn.stable_id()) {
            slots.remove(peer);
        }
    }

    /// Drops every pooled connection and pending dial (at shutdown).
    pub(crate) fn clear(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

async fn dial(inner: Weak<Inner>, peer: PeerId, addr: SocketAddr) -> DialResult {
    let inner = inner
        .upgrade()
        .ok_or_else(|| DialError::Failed(Arc::from("the mesh is shut down")))?;
    inc(&inner.metrics.dials);
    let result = async {
        let config = tls::client_config(&inner.keypair, peer, Arc::clone(&inner.client_transport))
            .map_err(|e| DialError::Failed(Arc::from(e.to_string())))?;
        let connecting = inner
            .endpoint
            .connect_with(config, addr, tls::SERVER_NAME)
            .map_err(|e| DialError::Failed(Arc::from(e.to_string())))?;
        match tokio::time::timeout(inner.tuning.handshake_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(ConnectionError::ApplicationClosed(close)))
                if close.error_code == CLOSE_NOT_MEMBER =>
            {
                Err(DialError::Refused(Arc::from(
                    String::from_utf8_lossy(&close.reason).as_ref(),
                )))
            }
            Ok(Err(e)) => Err(DialError::Failed(Arc::from(e.to_string()))),
            Err(_) => Err(DialError::Failed(Arc::from(format!(
                "no handshake within {:?}",
                inner.tuning.handshake_timeout
            )))),
        }
    }
    .await;
    match result {
        Ok(conn) => {
            inc(&inner.metrics.peer_connections);
            tokio::spawn(watch_dialed(Arc::clone(&inner), peer, conn.clone()));
            Ok(conn)
        }
        Err(e) => {
            inc(&inner.metrics.dial_failures);
            tracing::debug!(%peer, %addr, error = ?e, "mesh dial failed");
            Err(e)
        }
    }
}

/// Closes a dialed connection when its peer leaves the members, and forgets it once closed.
async fn watch_dialed(inner: Arc<Inner>, peer: PeerId, conn: Connection) {
    server::close_when_not_member(&inner, &peer, &conn).await;
    inner.pool.evict(&peer, &conn);
    dec(&inner.metrics.peer_connections);
}
