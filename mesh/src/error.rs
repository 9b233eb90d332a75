//! Errors of the mesh API.

use std::io;
use std::time::Duration;

use libp2p_identity::PeerId;

use crate::config::Endpoint;

/// What went wrong, and what it did: every establishment error leaves nothing open (the
/// stream, if any, is reset); [`MeshError::Exhausted`] means the client's connection was
/// refused after the last attempt.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The UDP socket could not be set up; nothing was started.
    #[error("binding the mesh endpoint on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The TLS configuration could not be built from the keypair; nothing was started.
    #[error("building the mesh TLS configuration: {0}")]
    Tls(String),
    /// A tuning value is out of range (named in the message); nothing was started.
    #[error("invalid mesh configuration: {0}")]
    Config(String),
    /// No candidate endpoint is on a current member (or the list was empty).
    #[error("no candidate endpoint on a current cluster member")]
    NoCandidates,
    /// The endpoint's node is not a current member: no stream is opened to it.
    #[error("node {0} is not a current cluster member")]
    NotMember(PeerId),
    /// The QUIC connection to the node could not be established (timeout, handshake failure,
    /// the node presented another identity).
    #[error("dialing {peer}: {reason}")]
    Dial {
        /// The node dialed.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
    /// The node closed our connection because it does not count us as a cluster member.
    #[error("{peer} refused us: {reason}")]
    RefusedByPeer {
        /// The node that refused.
        peer: PeerId,
        /// The reason it gave.
        reason: String,
    },
    /// The connection to the node broke while the stream was being set up.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost {
        /// The node.
        peer: PeerId,
        /// What the QUIC layer reported.
        reason: String,
    },
    /// The serving node found nothing listening at the endpoint.
    #[error("{0}: connection refused")]
    Refused(Box<Endpoint>),
    /// The serving node could not connect to the endpoint (timeout, unreachable).
    #[error("{0}: connect failed")]
    ConnectFailed(Box<Endpoint>),
    /// The serving node does not serve this endpoint.
    #[error("{0}: not an endpoint of that node")]
    NotAllowed(Box<Endpoint>),
    /// The serving node does not speak this header version.
    #[error("{0}: the serving agent does not speak this mesh protocol version")]
    UnsupportedVersion(Box<Endpoint>),
    /// No status byte arrived in time; the stream was reset.
    #[error("{endpoint}: no answer within {timeout:?}")]
    StatusTimeout {
        /// The endpoint asked for.
        endpoint: Box<Endpoint>,
        /// How long we waited.
        timeout: Duration,
    },
    /// The serving node answered a status byte this version does not know.
    #[error("{endpoint}: unknown status byte {byte:#04x}")]
    BadStatus {
        /// The endpoint asked for.
        endpoint: Box<Endpoint>,
        /// The byte received.
        byte: u8,
    },
    /// Connecting directly to a local endpoint failed.
    #[error("{endpoint}: {source}")]
    LocalConnect {
        /// The local endpoint.
        endpoint: Box<Endpoint>,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Every attempt failed, or the time budget ran out; the last error is kept.
    #[error("no endpoint reached after {attempts} attempts in {elapsed:?}: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last attempt's error.
        last: Box<MeshError>,
    },
    /// The mesh was shut down.
    #[error("the mesh is shut down")]
    ShutDown,
}

impl MeshError {
    /// Whether another endpoint may succeed where this one failed (establishment errors), as
    /// opposed to errors of the request itself.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            MeshError::Bind { .. }
                | MeshError::Tls(_)
                | MeshError::Config(_)
                | MeshError::NoCandidates
                | MeshError::Exhausted { .. }
                | MeshError::ShutDown
        )
    }
}
