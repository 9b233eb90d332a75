//! The wire format of the gossip protocol.
//!
//! Every message is one byte of protocol version followed by a postcard-encoded [`Envelope`].
//! postcard is compact (varints, no field names) and its format is stable across releases.
//! Decoding never panics: unknown versions, truncated input, trailing bytes and
//! out-of-range values all give a [`DecodeError`]. The version byte is checked before anything
//! else so that a future version can change everything after it.
//!
//! Ordinary messages (probes, gossip, anti-entropy) are built to fit `max_message_size`
//! (1,200 bytes by default, the minimum QUIC datagram). Anything larger (a big object, a bulk
//! chunk holding one big entry) is split into [`Body::Fragment`]s and reassembled.

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::store::{Entry, Key};

/// The protocol version this build speaks. Messages with another version are rejected.
pub const PROTOCOL_VERSION: u8 = 2;

/// One replicated state change: a key and its new entry.
pub type Update = (Key, Entry);

/// A message as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender. A transport that authenticates peers checks this against the peer's key.
    pub from: NodeId,
    /// What the message says.
    pub body: Body,
}

/// A 16-bit-aligned digest of one anti-entropy leaf: `(key hash, item hash)` pairs.
pub type LeafDigest = Vec<(u64, u64)>;

/// The messages of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// SWIM probe. `target` guards against a reused address reaching the wrong node.
    Ping {
        /// Probe sequence number, echoed in the ack.
        seq: u32,
        /// Who the sender meant to reach.
        target: NodeId,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// Answer to a [`Body::Ping`], or an indirect probe's answer relayed to its requester.
    Ack {
        /// The sequence number of the ping (or ping request) being answered.
        seq: u32,
        /// The sender's wall clock when it answered, in milliseconds since the Unix epoch:
        /// the prober measures the sender's clock offset from it.
        wall_ms: u64,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// Ask the receiver to probe `target` on the sender's behalf (SWIM indirect probe).
    PingReq {
        /// Sequence number the eventual ack or nack carries.
        seq: u32,
        /// Member to probe.
        target: NodeId,
        /// Its address.
        target_addr: String,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// The indirect prober got no answer from the target in time (Lifeguard): tells the
    /// requester that its own links work, so the missing ack is likely the target's fault.
    Nack {
        /// The sequence number of the ping request.
        seq: u32,
    },
    /// Eager push and periodic gossip of updates.
    Gossip {
        /// The updates.
        updates: Vec<Update>,
    },
    /// Newer versions of entries the receiver sent stale: merged, not spread further.
    Correction {
        /// Our newer entries.
        updates: Vec<Update>,
    },
    /// A node asks to join. Carries its own membership record.
    Join {
        /// The joiner's membership record (a `Key::Member` update).
        me: Update,
        /// The joiner's wall clock when it sent this, in milliseconds since the Unix epoch.
        wall_ms: u64,
    },
    /// The join was accepted; the joiner now pulls the state in bulk from the sender.
    JoinAck {
        /// The sender's wall clock when it answered, in milliseconds since the Unix epoch.
        wall_ms: u64,
    },
    /// Bulk catch-up: send me entries in key order after `after` (from the start if `None`).
    BulkRequest {
        /// Request id, echoed in the chunk.
        id: u32,
        /// The last key already received.
        after: Option<Key>,
    },
    /// One chunk of a bulk catch-up.
    BulkChunk {
        /// Echo of the request id.
        id: u32,
        /// Entries in key order.
        entries: Vec<Update>,
        /// `true` when `entries` reach the end of the sender's state.
        done: bool,
    },
    /// Anti-entropy, step 1: the sender's 64 top-level fingerprints.
    SyncRoot {
        /// XOR fingerprints of the 64 top buckets.
        fingerprints: Vec<u64>,
    },
    /// Anti-entropy, step 2: the answerer's sub-bucket fingerprints of the top buckets that differ.
    SyncTops {
        /// `(top bucket, its 64 sub-bucket fingerprints)`.
        tops: Vec<(u8, Vec<u64>)>,
    },
    /// Anti-entropy, step 3: the sender's item digests of the leaves that differ.
    SyncLeaves {
        /// `((top, sub), digest)` for each leaf that differs.
        leaves: Vec<((u8, u8), LeafDigest)>,
    },
    /// Anti-entropy, step 4: the answerer asks for the entries with these key hashes.
    SyncWant {
        /// `(leaf, key hash)` of each wanted entry.
        keys: Vec<((u8, u8), u64)>,
    },
    /// Anti-entropy entries (answers to `SyncLeaves` and `SyncWant`).
    SyncEntries {
        /// The entries.
        entries: Vec<Update>,
    },
    /// One fragment of a message larger than `max_message_size`.
    Fragment {
        /// Identifies the fragmented message among the sender's.
        id: u32,
        /// Index of this fragment.
        index: u16,
        /// Number of fragments.
        count: u16,
        /// A slice of the encoded inner message (version byte included).
        data: Vec<u8>,
    },
}

impl Body {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Ping { .. } => "ping",
            Body::Ack { .. } => "ack",
            Body::PingReq { .. } => "ping-req",
            Body::Nack { .. } => "nack",
            Body::Gossip { .. } => "gossip",
            Body::Correction { .. } => "correction",
            Body::Join { .. } => "join",
            Body::JoinAck { .. } => "join-ack",
            Body::BulkRequest { .. } => "bulk-request",
            Body::BulkChunk { .. } => "bulk-chunk",
            Body::SyncRoot { .. } => "sync-root",
            Body::SyncTops { .. } => "sync-tops",
            Body::SyncLeaves { .. } => "sync-leaves",
            Body::SyncWant { .. } => "sync-want",
            Body::SyncEntries { .. } => "sync-entries",
            Body::Fragment { .. } => "fragment",
        }
    }
}

/// Why bytes could not be decoded into a message. The message is dropped and counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// A version this build does not speak (a newer or older peer).
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The bytes are not a valid message of this version.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A valid message followed by extra bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes an envelope: version byte, then postcard.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    // Serialising plain data into a Vec cannot fail: no maps with non-string keys, no
    // unsized sequences.
    postcard::to_io(envelope, &mut out).expect("encoding into a Vec cannot fail");
    out
}

/// Whether encoded bytes are a failure-detector message (ping, ack, ping request, nack), judged
/// from the envelope's head alone. Drivers handle these before a backlog of other messages, so
/// that a busy node still answers probes in time. Never panics; `false` for anything that is
/// not a well-formed head.
pub fn is_probe(bytes: &[u8]) -> bool {
    let Some((&PROTOCOL_VERSION, rest)) = bytes.split_first() else {
        return false;
    };
    // Postcard writes the envelope's fields in order and an enum's variant index as a varint
    // u32, so the head decodes as a (sender, variant index) pair.
    match postcard::take_from_bytes::<(NodeId, u32)>(rest) {
        Ok(((_, variant), _)) => variant <= PROBE_VARIANTS,
        Err(_) => false,
    }
}

/// The highest variant index of a failure-detector message ([`Body::Nack`]).
const PROBE_VARIANTS: u32 = 3;

/// Decodes bytes from the network. Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (envelope, trailing) = postcard::take_from_bytes::<Envelope>(rest)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(DecodeError::TrailingBytes(trailing.len()));
    }
    Ok(envelope)
}

/// Encoded size of a value, in bytes (postcard).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).unwrap_or(usize::MAX)
}

/// Bytes an envelope costs beyond its body's variable parts: version, sender id, variant tag and
/// a few varints. Used to budget piggybacked updates.
pub const ENVELOPE_OVERHEAD: usize = 1 + 32 + 1 + 16;

#[cfg(test)]
mod tests {

    #[test]
    fn is_probe_reads_the_variant_from_the_head() {
        let from = NodeId([7; 32]);
        let probes = [
            Body::Ping {
                seq: 1,
                target: from,
                updates: Vec::new(),
            },
            Body::Ack {
                seq: 1,
                wall_ms: 1_800_000_000_000,
                updates: Vec::new(),
            },
            Body::PingReq {
                seq: 2,
                target: from,
                target_addr: "a".into(),
                updates: Vec::new(),
            },
            Body::Nack { seq: 3 },
        ];
        for body in probes {
            let kind = body.kind();
            assert!(is_probe(&encode(&Envelope { from, body })), "{kind}");
        }
        for body in [
            Body::Gossip {
                updates: Vec::new(),
            },
            Body::JoinAck {
                wall_ms: 1_800_000_000_000,
            },
            Body::SyncRoot {
                fingerprints: vec![1, 2],
            },
        ] {
            let kind = body.kind();
            assert!(!is_probe(&encode(&Envelope { from, body })), "{kind}");
        }
        assert!(!is_probe(&[]));
        assert!(!is_probe(&[PROTOCOL_VERSION, 1, 2]));
        assert!(!is_probe(&[PROTOCOL_VERSION + 1; 40]));
    }
    use proptest::prelude::*;

    use super::*;
    use crate::hlc::Hlc;
    use crate::store::{ObjectKey, Version};

    fn node_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId)
    }

    fn key() -> impl Strategy<Value = Key> {
        prop_oneof![
            node_id().prop_map(Key::Member),
            (node_id(), "[a-z/]{0,12}").prop_map(|(owner, name)| Key::Owned { owner, name }),
            ("[a-z]{1,8}", "[a-z]{1,8}", "[a-z0-9-]{1,16}").prop_map(|(kind, namespace, name)| {
                Key::Object(ObjectKey {
                    kind,
                    namespace,
                    name,
                })
            }),
        ]
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            prop_oneof![
                (any::<u64>(), 0u8..4)
                    .prop_map(|(incarnation, rank)| Version::Member { incarnation, rank }),
                any::<u64>().prop_map(|version| Version::Owned { version }),
                (any::<u64>(), any::<u32>(), node_id()).prop_map(|(w, l, writer)| {
                    Version::Object {
                        hlc: Hlc {
                            wall_ms: w,
                            logical: l,
                        },
                        writer,
                    }
                }),
            ],
            any::<u64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        )
            .prop_map(|(version, wall_ms, value)| Entry {
                version,
                written_at: Hlc {
                    wall_ms,
                    logical: 0,
                },
                value,
            })
    }

    fn updates() -> impl Strategy<Value = Vec<Update>> {
        proptest::collection::vec((key(), entry()), 0..4)
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (any::<u32>(), node_id(), updates()).prop_map(|(seq, target, updates)| Body::Ping {
                seq,
                target,
                updates
            }),
            (any::<u32>(), any::<u64>(), updates()).prop_map(|(seq, wall_ms, updates)| {
                Body::Ack {
                    seq,
                    wall_ms,
                    updates,
                }
            }),
            (any::<u32>(), node_id(), ".{0,20}", updates()).prop_map(
                |(seq, target, target_addr, updates)| Body::PingReq {
                    seq,
                    target,
                    target_addr,
                    updates
                }
            ),
            any::<u32>().prop_map(|seq| Body::Nack { seq }),
            updates().prop_map(|updates| Body::Gossip { updates }),
            updates().prop_map(|updates| Body::Correction { updates }),
            (key(), entry(), any::<u64>()).prop_map(|(k, e, wall_ms)| Body::Join {
                me: (k, e),
                wall_ms
            }),
            any::<u64>().prop_map(|wall_ms| Body::JoinAck { wall_ms }),
            (any::<u32>(), proptest::option::of(key()))
                .prop_map(|(id, after)| Body::BulkRequest { id, after }),
            (any::<u32>(), updates(), any::<bool>())
                .prop_map(|(id, entries, done)| { Body::BulkChunk { id, entries, done } }),
            proptest::collection::vec(any::<u64>(), 0..70)
                .prop_map(|fingerprints| Body::SyncRoot { fingerprints }),
            proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u64>(), 0..3)),
                0..3
            )
            .prop_map(|tops| Body::SyncTops { tops }),
            proptest::collection::vec(
                (
                    (any::<u8>(), any::<u8>()),
                    proptest::collection::vec((any::<u64>(), any::<u64>()), 0..3)
                ),
                0..3
            )
            .prop_map(|leaves| Body::SyncLeaves { leaves }),
            proptest::collection::vec(((any::<u8>(), any::<u8>()), any::<u64>()), 0..4)
                .prop_map(|keys| Body::SyncWant { keys }),
            updates().prop_map(|entries| Body::SyncEntries { entries }),
            (
                any::<u32>(),
                any::<u16>(),
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(id, index, count, data)| Body::Fragment {
                    id,
                    index,
                    count,
                    data
                }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(from in node_id(), body in body()) {
            let envelope = Envelope { from, body };
            let bytes = encode(&envelope);
            prop_assert_eq!(bytes[0], PROTOCOL_VERSION);
            prop_assert_eq!(decode(&bytes), Ok(envelope));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn corrupted_messages_never_panic(
            from in node_id(),
            body in body(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut bytes = encode(&Envelope { from, body });
            for (at, value) in flips {
                let i = at % bytes.len();
                bytes[i] ^= value;
            }
            let _ = decode(&bytes);
            let len = cut % (bytes.len() + 1);
            let _ = decode(&bytes[..len]);
        }
    }

    #[test]
    fn other_versions_and_trailing_bytes_are_rejected() {
        let mut bytes = encode(&Envelope {
            from: NodeId([3; 32]),
            body: Body::JoinAck { wall_ms: 0 },
        });
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes(1)));
        bytes.pop();
        bytes[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion(PROTOCOL_VERSION + 1))
        );
    }
}
