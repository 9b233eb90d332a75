//! Sealing and opening of frames: ChaCha20-Poly1305 under a key derived from the cluster key for
//! one protocol and one direction of a pair of nodes. The wire format is described in the parent
//! module's docs.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use shoal_gossip::NodeId;

use super::key::ClusterKey;

/// The protocol a frame belongs to. Its label is bound into key derivation and associated
/// data, so a frame of one protocol never opens as a frame of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    /// Gossip messages (`/shoal/gossip/1`).
    Gossip,
    /// Request/response streams (`/shoal/request/1`).
    Request,
}

impl Proto {
    /// The label: the stream protocol name without the leading slash.
    pub(crate) fn label(self) -> &'static [u8] {
        match self {
            Self::Gossip => b"shoal/gossip/1",
            Self::Request => b"shoal/request/1",
        }
    }
}

/// Longest protocol label.
const MAX_LABEL: usize = 15;
/// Longest associated data: label, both node ids, clear header.
const MAX_AAD: usize = MAX_LABEL + 32 + 32 + HEADER_LEN;
/// Version byte of the frame format.
pub(crate) const VERSION: u8 = 1;
/// Bytes of the length prefix.
pub(crate) const LEN_PREFIX: usize = 4;
/// Clear header after the length prefix: version, sender's listen port, nonce.
pub(crate) const HEADER_LEN: usize = 1 + 2 + 12;
/// Poly1305 tag length.
pub(crate) const TAG_LEN: usize = 16;
/// Largest frame body (everything after the length prefix) accepted or produced.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Largest payload that fits a frame.
pub(crate) const MAX_PAYLOAD: usize = MAX_BODY - HEADER_LEN - TAG_LEN;
/// Smallest valid body: header and tag around an empty payload.
const MIN_BODY: usize = HEADER_LEN + TAG_LEN;

/// Why a frame was refused. Each has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The length prefix announces more than [`MAX_BODY`] bytes.
    Oversize,
    /// Shorter than a header and a tag.
    Truncated,
    /// Unknown version byte.
    Version,
    /// The tag does not verify: another cluster key, another sender or receiver, or tampering.
    Auth,
}

/// First payload byte of a notice a reader writes back on a gossip stream whose frame it
/// refused; the second is the [`Refusal::code`].
pub(crate) const NOTICE_REFUSED: u8 = 1;

impl Refusal {
    /// The reason's byte in a refusal notice.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Auth => 1,
            Self::Version => 2,
            Self::Truncated => 3,
            Self::Oversize => 4,
        }
    }

    /// The reason of a refusal notice's byte (`None`: a reason this version does not know).
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Auth),
            2 => Some(Self::Version),
            3 => Some(Self::Truncated),
            4 => Some(Self::Oversize),
            _ => None,
        }
    }

    /// Short name for logs, metrics and events.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Truncated => "truncated",
            Self::Version => "unknown version",
            Self::Auth => "authentication failed (wrong cluster key?)",
        }
    }
}

/// The key and associated-data prefix of one protocol and one direction (sender to receiver).
pub(crate) struct FrameKey {
    cipher: ChaCha20Poly1305,
    /// `label || sender || receiver` in the first `prefix_len` bytes; the clear header is
    /// appended per frame.
    aad: [u8; MAX_AAD],
    prefix_len: usize,
}

impl FrameKey {
    /// The key for frames of `proto` from `sender` to `receiver`. Deriving per direction means
    /// nonces only need to be unique per ordered pair, and a frame sealed for one direction
    /// cannot be opened in any other (no replay to another node, no reflection to the sender);
    /// deriving per protocol means a gossip frame cannot be replayed into a request stream or
    /// the reverse.
    pub(crate) fn derive(
        cluster: &ClusterKey,
        proto: Proto,
        sender: &NodeId,
        receiver: &NodeId,
    ) -> Self {
        let label = proto.label();
        let mut key = [0u8; 32];
        cluster.expand(
            &[label, b" frame key", sender.as_bytes(), receiver.as_bytes()],
            &mut key,
        );
        let mut aad = [0u8; MAX_AAD];
        let prefix_len = label.len() + 64;
        aad[..label.len()].copy_from_slice(label);
        aad[label.len()..label.len() + 32].copy_from_slice(sender.as_bytes());
        aad[label.len() + 32..prefix_len].copy_from_slice(receiver.as_bytes());
        Self {
            cipher: ChaCha20Poly1305::new(&key.into()),
            aad,
            prefix_len,
        }
    }

    /// Appends the whole wire frame (length prefix included) for `payload` to `out`.
    /// `payload` must be at most [`MAX_PAYLOAD`] bytes (the caller checks and counts).
    pub(crate) fn seal_into(&self, listen_port: u16, payload: &[u8], out: &mut Vec<u8>) {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        let mut nonce = [0u8; 12];
        // Random rather than counter nonces: several streams, connections and restarts of the
        // same pair share this key, and none of them would have to coordinate a counter.
        rand::fill(&mut nonce);
        let body_len = HEADER_LEN + payload.len() + TAG_LEN;
        out.reserve(LEN_PREFIX + body_len);
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        let header_at = out.len();
        out.push(VERSION);
        out.extend_from_slice(&listen_port.to_be_bytes());
        out.extend_from_slice(&nonce);
        let payload_at = out.len();
        out.extend_from_slice(payload);
        let (aad, aad_len) = self.aad_with(&out[header_at..payload_at]);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &aad[..aad_len],
                (&mut out[payload_at..]).into(),
            )
            // Only fails beyond 256 GiB of plaintext.
            .expect("frame payload within ChaCha20-Poly1305 limits");
        out.extend_from_slice(&tag);
    }

    /// Opens a frame body (what follows the length prefix): the sender's listen port and the
    /// payload.
    pub(crate) fn open(&self, body: &[u8]) -> Result<(u16, Vec<u8>), Refusal> {
        if body.len() > MAX_BODY {
            return Err(Refusal::Oversize);
        }
        if body.len() < MIN_BODY {
            return Err(Refusal::Truncated);
        }
        let (header, rest) = body.split_at(HEADER_LEN);
        if header[0] != VERSION {
            return Err(Refusal::Version);
        }
        let port = u16::from_be_bytes([header[1], header[2]]);
        let nonce: [u8; 12] = header[3..].try_into().map_err(|_| Refusal::Truncated)?;
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| Refusal::Truncated)?;
        let mut payload = ciphertext.to_vec();
        let (aad, aad_len) = self.aad_with(header);
        self.cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &aad[..aad_len],
                payload.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Refusal::Auth)?;
        Ok((port, payload))
    }

    /// The associated data of a frame with this clear `header`, and its length.
    fn aad_with(&self, header: &[u8]) -> ([u8; MAX_AAD], usize) {
        let mut aad = self.aad;
        let len = self.prefix_len + header.len();
        aad[self.prefix_len..len].copy_from_slice(header);
        (aad, len)
    }
}

/// Checks a length prefix before anything is allocated for the body.
pub(crate) fn check_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, Refusal> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_BODY {
        Err(Refusal::Oversize)
    } else if len < MIN_BODY {
        Err(Refusal::Truncated)
    } else {
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (NodeId, NodeId, NodeId) {
        (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]))
    }

    fn sealed(key: &FrameKey, port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        key.seal_into(port, payload, &mut out);
        let len = check_len(out[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, out.len() - LEN_PREFIX);
        out.split_off(LEN_PREFIX)
    }

    #[test]
    fn open_seal_round_trip() {
        let ck = ClusterKey::from_bytes([7; 32]);
        let (a, b, _) = ids();
        let tx = FrameKey::derive(&ck, Proto::Gossip, &a, &b);
        let rx = FrameKey::derive(&ck, Proto::Gossip, &a, &b);
        for payload in [vec![], vec![42], vec![0x5a; 1200], vec![1; MAX_PAYLOAD]] {
            let body = sealed(&tx, 7946, &payload);
            assert_eq!(body.len(), payload.len() + HEADER_LEN + TAG_LEN);
            assert_eq!(rx.open(&body).unwrap(), (7946, payload));
        }
        // Nonces are fresh: the same payload never seals to the same bytes.
        assert_ne!(sealed(&tx, 1, b"x"), sealed(&tx, 1, b"x"));
    }

    #[test]
    fn tampering_is_refused() {
        let ck = ClusterKey::from_bytes([7; 32]);
        let (a, b, _) = ids();
        let key = FrameKey::derive(&ck, Proto::Gossip, &a, &b);
        let body = sealed(&key, 7946, b"hello, cluster");
        // Every single bit flip anywhere in the body is caught (version flips by `Version`).
        for i in 0..body.len() {
            for bit in 0..8 {
                let mut bad = body.clone();
                bad[i] ^= 1 << bit;
                let err = key.open(&bad).unwrap_err();
                let want = if i == 0 {
                    Refusal::Version
                } else {
                    Refusal::Auth
                };
                assert_eq!(err, want, "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn wrong_direction_or_key_is_refused() {
        let ck = ClusterKey::from_bytes([7; 32]);
        let (a, b, c) = ids();
        let body = sealed(
            &FrameKey::derive(&ck, Proto::Gossip, &a, &b),
            1,
            b"for b only",
        );
        // Replayed to another receiver, reflected back to the sender, claimed by a third node.
        for (s, r) in [(a, c), (b, a), (c, b)] {
            assert_eq!(
                FrameKey::derive(&ck, Proto::Gossip, &s, &r).open(&body),
                Err(Refusal::Auth)
            );
        }
        // Another protocol between the same nodes, in either direction.
        for (s, r) in [(a, b), (b, a)] {
            assert_eq!(
                FrameKey::derive(&ck, Proto::Request, &s, &r).open(&body),
                Err(Refusal::Auth)
            );
        }
        let request = sealed(&FrameKey::derive(&ck, Proto::Request, &a, &b), 1, b"ask");
        assert_eq!(
            FrameKey::derive(&ck, Proto::Gossip, &a, &b).open(&request),
            Err(Refusal::Auth)
        );
        assert_eq!(
            FrameKey::derive(&ck, Proto::Request, &a, &b).open(&request),
            Ok((1, b"ask".to_vec()))
        );
        let other = ClusterKey::from_bytes([8; 32]);
        assert_eq!(
            FrameKey::derive(&other, Proto::Gossip, &a, &b).open(&body),
            Err(Refusal::Auth)
        );
    }

    #[test]
    fn short_long_and_garbage_bodies_are_refused() {
        let ck = ClusterKey::from_bytes([7; 32]);
        let (a, b, _) = ids();
        let key = FrameKey::derive(&ck, Proto::Gossip, &a, &b);
        let body = sealed(&key, 1, b"some payload");
        for n in 0..body.len() {
            assert!(key.open(&body[..n]).is_err(), "truncated to {n}");
        }
        assert_eq!(key.open(&[]), Err(Refusal::Truncated));
        assert_eq!(key.open(&vec![1; MAX_BODY + 1]), Err(Refusal::Oversize));
        assert_eq!(key.open(&[1; 100]), Err(Refusal::Auth));
        assert_eq!(check_len([0, 0, 0, 0]), Err(Refusal::Truncated));
        assert_eq!(check_len([0, 1, 0, 1]), Err(Refusal::Oversize));
        assert_eq!(check_len([0xff; 4]), Err(Refusal::Oversize));
        assert_eq!(check_len([0, 1, 0, 0]), Ok(MAX_BODY));
        // Pseudo-random garbage of every small length: no panic.
        let mut x = 0x9e37_79b9_u32;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert!(key.open(&junk).is_err());
        }
    }
}
