//! shoal's gossip core: membership, failure detection and replicated state, sans-IO.
//!
//! - [`Node`] is one node's protocol: SWIM with Lifeguard's refinements for membership and
//!   failure detection, a CRDT [`Store`] for cluster state, eager push + gossip + delta
//!   anti-entropy for dissemination. It does no I/O, reads no clock and owns its randomness
//!   generator: the caller feeds it bytes and time and sends what it outputs.
//! - [`message`] is the versioned wire format; decoding never panics.
//! - [`sim`] runs many nodes in one process, deterministically, on a simulated network;
//!   [`scenario`] scripts it for tests.
#![warn(missing_docs)]

mod broadcast;
pub mod clock;
pub mod config;
pub mod hlc;
pub mod id;
pub mod member;
pub mod message;
pub mod node;
pub mod scenario;
pub mod sim;
pub mod store;
pub mod time;

pub use clock::{ClockRefusal, ClockStatus, ClockVerdict};
pub use config::Config;
pub use hlc::{Hlc, HlcClock};
pub use id::NodeId;
pub use member::{Member, MemberRecord, MemberState};
pub use node::{Event, Identity, Node, Stats, Transmit};
pub use store::{Entry, Key, ObjectKey, Store, Version};
pub use time::{Instant, Now};
