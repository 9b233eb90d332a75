//! shoal's service mesh data plane: TCP connections to a service's endpoints, proxied between
//! agents over QUIC.
//!
//! # Role
//!
//! Every agent runs one [`Mesh`]: one QUIC endpoint (quinn) for data, separate from gossip.
//! A client connection accepted by the agent (a service VIP listener, wired up by the agent) is
//! handed to [`Mesh::proxy`] with the service's ready endpoints. The mesh picks one
//! ([`balance`]: power of two choices on active streams, local endpoints preferred when not
//! more loaded), connects to it directly when it runs on this node, or else opens one
//! bidirectional stream on its pooled connection to the node that runs it, and splices bytes
//! both ways until both sides have closed.
//!
//! # Authentication
//!
//! Agents present libp2p TLS certificates (the node's Ed25519 identity, as the libp2p TLS spec
//! describes; made and checked by `libp2p-tls`) over TLS 1.3 with AES-128-GCM preferred, under
//! the ALPN [`ALPN`] (`shoal-mesh/1`), and both sides verify them: a dialer
//! accepts only the peer id it dialed; a server reads the client's peer id from its certificate
//! and accepts only current members (the `watch` of [`Members`] given to [`Mesh::start`]). A
//! non-member is closed with [`CLOSE_NOT_MEMBER`] before any stream is accepted, and counted.
//! When a peer leaves the members (left or declared dead) every connection with it is closed
//! at once, so its streams are reset promptly, and no new stream goes to its endpoints.
//!
//! # Wire protocol (version 1)
//!
//! Each proxied TCP connection is one QUIC bidirectional stream, opened by the requester:
//!
//! ```text
//! requester -> server: 0xD5 | version 1 | body_len u16 BE (<= 512)
//!                      | family 4|6 | ip | port u16 BE | service_len u8 | service (utf-8)
//! server -> requester: status u8: 0 OK, 1 refused, 2 connect failed, 3 not allowed,
//!                      4 unsupported version
//! then, after OK only: payload bytes both ways
//! ```
//!
//! The server checks the destination with the `allowed` callback (its own ready endpoints: a
//! member cannot use the mesh to reach arbitrary host ports), connects with a timeout, and
//! answers the status **before** any payload flows. A garbage header resets the stream
//! ([`RESET_BAD_HEADER`]); an unknown version is answered `4` (see [`wire`]).
//!
//! # Invariants
//!
//! - Bytes are never replayed: retries on another endpoint happen only before the status OK,
//!   when the client's bytes are still unread in its socket.
//! - Half-close and resets cross the mesh: TCP EOF finishes the QUIC stream and a finished
//!   stream shuts the TCP write side; a TCP reset resets the stream and a reset stream closes
//!   the TCP socket with `SO_LINGER` 0, so the client sees a reset, never a truncated stream
//!   passed off as complete.
//! - Nothing from the network can panic: undecodable headers and unknown peers are dropped and
//!   counted ([`MeshMetrics`]).
//! - Everything is bounded: streams per connection (`max_concurrent_streams`), handshakes in
//!   progress, flow-control windows, header length, copy buffers (64 KiB, held only while data
//!   moves), tracked services.

#![warn(missing_docs)]

pub mod balance;
mod config;
mod error;
mod mesh;
mod metrics;
mod pool;
mod server;
mod splice;
mod tls;
pub mod wire;

pub use config::{Endpoint, Members, MeshConfig, ServiceKey, Tuning};
pub use error::MeshError;
pub use libp2p_identity::{Keypair, PeerId};
pub use mesh::{AllowFn, Mesh, MeshStream, ProxyStats};
pub use metrics::{MAX_SERVICES, MeshMetrics, OTHER_SERVICE, ServiceMetrics};
pub use server::{CLOSE_NO_IDENTITY, CLOSE_NOT_MEMBER, CLOSE_SHUTDOWN};
pub use splice::{Ended, RESET_ABORTED, RESET_BAD_HEADER, RESET_SHUTDOWN};
pub use tls::ALPN;
