//! Membership records and the local view of members.

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::store::Version;
use crate::time::Instant;

/// A member's state as SWIM sees it. At the same incarnation, later states override earlier
/// ones (`Alive < Suspect < Dead < Left`); a higher incarnation, which only the member itself
/// can issue, overrides everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes, or not yet suspected.
    Alive,
    /// Missed a probe; will be declared dead unless it refutes in time.
    Suspect,
    /// Declared failed. Still probed at a low rate so it can come back by itself.
    Dead,
    /// Left the cluster on purpose.
    Left,
}

impl MemberState {
    /// The rank used in [`Version::Member`].
    pub fn rank(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
            MemberState::Left => 3,
        }
    }

    /// The state for a rank; `None` for ranks no version of this protocol defines.
    pub fn from_rank(rank: u8) -> Option<Self> {
        Some(match rank {
            0 => MemberState::Alive,
            1 => MemberState::Suspect,
            2 => MemberState::Dead,
            3 => MemberState::Left,
            _ => return None,
        })
    }

    /// Lower-case name, as shown by `shoal get nodes`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }

    /// Alive or suspect: still takes part in probing and gossip.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// The value stored under `Key::Member(id)` (postcard-encoded). Incarnation and state live in
/// the entry's [`Version::Member`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Human-readable node name (unique by convention, not enforced).
    pub name: String,
    /// Where the node listens for gossip (`host:port` or a multiaddr).
    pub addr: String,
    /// Who declared a suspect or dead state; `None` for the member's own records.
    pub by: Option<NodeId>,
}

impl MemberRecord {
    /// Encodes the record as an entry value.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Decodes an entry value; `None` if the bytes are not a record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A member as this node currently sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its identity.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its gossip address.
    pub addr: String,
    /// Its incarnation number (only the member itself raises it, to refute suspicion).
    pub incarnation: u64,
    /// Its state.
    pub state: MemberState,
    /// When this node last saw the state or incarnation change (local monotonic time).
    pub since: Instant,
}

impl Member {
    /// The store version matching this member's incarnation and state.
    pub fn version(&self) -> Version {
        Version::Member {
            incarnation: self.incarnation,
            rank: self.state.rank(),
        }
    }
}
