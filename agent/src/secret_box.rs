//! Sealing secrets' values with a key derived from the cluster key, so that no data dir, no
//! state file and no gossip or mesh packet ever holds a Secret's plaintext.
//!
//! **Algorithm.** XChaCha20-Poly1305 (an AEAD: confidentiality and integrity) with a
//! *synthetic* nonce: the nonce is HMAC-SHA256(nonce key, context, plaintext) cut to 24 bytes,
//! the SIV construction. So sealing is deterministic: the same value of the same secret seals
//! to the same bytes on every node. That is what the replicated state needs: applying an
//! unchanged secret is `unchanged` without opening anything, two nodes writing the same value
//! write the same entry, and fingerprints agree. The price is that equal values of one secret
//! are seen to be equal, which its version history shows anyway. The `context` (the secret's
//! namespace and name) is both hashed into the nonce and authenticated as associated data, so
//! a sealed value copied into another secret does not open.
//!
//! Why this AEAD: the wire frames already use ChaCha20-Poly1305 (constant-time in software,
//! fast without AES instructions on small machines); XChaCha's 192-bit nonce makes a nonce
//! taken from a hash safe to collide only by chance of 2^-96 per pair. Keys come from HKDF-SHA256
//! of the cluster key with their own labels, separate from the wire keys.
//!
//! Format: `1` (version) ‖ nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes).

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::net::ClusterKey;

/// Version byte of sealed values.
const VERSION: u8 = 1;
/// Nonce length of XChaCha20-Poly1305.
const NONCE: usize = 24;
/// Tag length.
const TAG: usize = 16;

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    /// Too short, or of another version.
    #[error("not a sealed value of this version")]
    Malformed,
    /// The tag did not verify: another cluster key, another secret, or altered bytes.
    #[error("does not open with this cluster's key (sealed by another cluster, or altered)")]
    Forged,
}

/// Seals and opens secrets' values. Cheap to clone (two keys).
#[derive(Clone)]
pub(crate) struct SecretBox {
    cipher: XChaCha20Poly1305,
    nonce_key: [u8; 32],
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The box of a cluster: its keys derived from the cluster key.
    pub(crate) fn new(key: &ClusterKey) -> Self {
        let mut cipher_key = [0u8; 32];
        key.expand(&[b"shoal secrets v1 aead key"], &mut cipher_key);
        let mut nonce_key = [0u8; 32];
        key.expand(&[b"shoal secrets v1 nonce key"], &mut nonce_key);
        let cipher = XChaCha20Poly1305::new(&cipher_key.into());
        cipher_key.fill(0);
        SecretBox { cipher, nonce_key }
    }

    /// Seals `plaintext` for `context` (what it belongs to, e.g. `secret/ns/name`).
    pub(crate) fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.nonce_key)
            .expect("HMAC takes any key length");
        mac.update(&(context.len() as u64).to_le_bytes());
        mac.update(context);
        mac.update(plaintext);
        let digest = mac.finalize().into_bytes();
        let nonce = XNonce::try_from(&digest[..NONCE]).expect("24 bytes");
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a secret can have");
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`SecretBox::seal`] sealed for the same `context`.
    pub(crate) fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 1 + NONCE + TAG || sealed[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let nonce = XNonce::try_from(&sealed[1..1 + NONCE]).map_err(|_| OpenError::Malformed)?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[1 + NONCE..],
                    aad: context,
                },
            )
            .map_err(|_| OpenError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(byte: u8) -> SecretBox {
        SecretBox::new(&ClusterKey::from_bytes([byte; 32]))
    }

    #[test]
    fn sealing_is_deterministic_opens_and_hides_the_value() {
        let b = boxed(1);
        let value = b"hunter2-a-unique-value";
        let sealed = b.seal(b"secret/default/db", value);
        assert_eq!(sealed, b.seal(b"secret/default/db", value));
        assert!(
            !sealed.windows(6).any(|w| w == b"hunter"),
            "no plaintext in the sealed bytes"
        );
        assert_eq!(b.open(b"secret/default/db", &sealed).unwrap(), value);
        assert_ne!(
            sealed,
            b.seal(b"secret/default/db", b"hunter3-a-unique-value")
        );
    }

    #[test]
    fn another_key_another_context_or_altered_bytes_do_not_open() {
        let sealed = boxed(1).seal(b"secret/default/db", b"value");
        assert_eq!(
            boxed(2).open(b"secret/default/db", &sealed),
            Err(OpenError::Forged)
        );
        assert_eq!(
            boxed(1).open(b"secret/default/other", &sealed),
            Err(OpenError::Forged)
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(
            boxed(1).open(b"secret/default/db", &altered),
            Err(OpenError::Forged)
        );
        assert_eq!(boxed(1).open(b"x", b"short"), Err(OpenError::Malformed));
        let mut other_version = sealed;
        other_version[0] = 9;
        assert_eq!(
            boxed(1).open(b"secret/default/db", &other_version),
            Err(OpenError::Malformed)
        );
        // The empty value seals and opens too.
        let empty = boxed(1).seal(b"c", b"");
        assert_eq!(boxed(1).open(b"c", &empty).unwrap(), b"");
    }
}
