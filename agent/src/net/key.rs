//! The cluster key: the 32-byte secret every member of one cluster shares.
//!
//! Text form (what operators copy between machines): `shoal-key-v1:` followed by 64 hex digits.
//! The key itself is never logged: [`fmt::Debug`] prints only a [`ClusterKey::fingerprint`], a
//! one-way value that lets two operators check that their nodes hold the same key.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use rand::TryRng as _;
use sha2::Sha256;

/// Prefix of the text form; the version lets a later format coexist with this one.
pub(crate) const KEY_PREFIX: &str = "shoal-key-v1:";
/// Salt of the HKDF extraction from the cluster key; fixed, it separates shoal's use of the
/// key from any other.
pub(super) const KDF_SALT: &[u8] = b"shoal cluster key v1";

/// The shared secret of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClusterKey([u8; 32]);

/// Why a key text or key file was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The text does not start with the expected prefix. What was given is not echoed: it may
    /// be a key pasted without its prefix.
    #[error("a cluster key starts with `{KEY_PREFIX}`")]
    MissingPrefix,
    /// The text has a shoal key prefix of another version.
    #[error("unsupported cluster key version `{0}` (this build reads `{KEY_PREFIX}`)")]
    UnsupportedVersion(String),
    /// Wrong number of hex digits after the prefix.
    #[error("a cluster key has 64 hex digits after `{KEY_PREFIX}`, got {0}")]
    BadLength(usize),
    /// A character that is not a hex digit.
    #[error("invalid character {ch:?} at position {pos} of the cluster key (hex digits only)")]
    BadChar {
        /// The character.
        ch: char,
        /// Its position, counted in characters from the start of the hex digits.
        pos: usize,
    },
    /// Reading or writing the key file failed.
    #[error("cluster key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a valid key.
    #[error("cluster key file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<KeyError>,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate a cluster key: the system random number generator failed: {0}")]
    Rng(String),
}

impl ClusterKey {
    /// A fresh random key from the operating system's generator.
    pub(crate) fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| KeyError::Rng(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// A key from raw bytes (tests, or a key obtained through another channel).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the text form; surrounding whitespace is ignored, hex digits may be upper case.
    pub(crate) fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let Some(digits) = text.strip_prefix(KEY_PREFIX) else {
            if let Some(rest) = text.strip_prefix("shoal-key-")
                && let Some((version, _)) = rest.split_once(':')
            {
                return Err(KeyError::UnsupportedVersion(format!("shoal-key-{version}")));
            }
            return Err(KeyError::MissingPrefix);
        };
        let count = digits.chars().count();
        if count != 64 {
            return Err(KeyError::BadLength(count));
        }
        // Found first, so that the error names the character and counts in characters.
        let bad = digits
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_hexdigit());
        if let Some((pos, ch)) = bad {
            return Err(KeyError::BadChar { ch, pos });
        }
        let mut bytes = [0u8; 32];
        // 64 ASCII hex digits: decoding cannot fail.
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| KeyError::BadLength(count))?;
        Ok(Self(bytes))
    }

    /// Reads the key in `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        crate::secret_file::warn_if_readable_by_others(path, "cluster key file");
        Self::parse(&text).map_err(|e| KeyError::File {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Reads the key in `path`, or creates the file (mode 0600, parent directories included)
    /// with a fresh key if it does not exist. Returns the key and whether it was created.
    pub(crate) fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match Self::load(path) {
            Ok(key) => return Ok((key, false)),
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let key = Self::generate()?;
        let mut options = std::fs::OpenOptions::new();
        // `create_new` so that two agents starting at once cannot both write a different key:
        // the loser reads the winner's.
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Self::load(path).map(|key| (key, false));
            }
            Err(e) => return Err(io_err(e)),
        };
        file.write_all(format!("{key}\n").as_bytes())
            .map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok((key, true))
    }

    /// A short one-way digest of the key, safe to log and to compare between nodes.
    pub(crate) fn fingerprint(&self) -> String {
        let mut out = [0u8; 6];
        self.expand(&[b"shoal key fingerprint"], &mut out);
        hex::encode(out)
    }

    /// HKDF-SHA256 expansion of the key: `info` parts concatenated, `out.len()` bytes.
    pub(crate) fn expand(&self, info: &[&[u8]], out: &mut [u8]) {
        let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), &self.0);
        // Only fails for outputs longer than 255 hash lengths; callers ask for at most 32 bytes.
        hk.expand_multi_info(info, out)
            .expect("HKDF output of at most 32 bytes");
    }
}

impl fmt::Display for ClusterKey {
    /// The secret text form, for writing key files and printing a generated key once.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(fingerprint {})", self.fingerprint())
    }
}

impl std::str::FromStr for ClusterKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let key = ClusterKey::generate().unwrap();
        let text = key.to_string();
        assert!(text.starts_with(KEY_PREFIX));
        assert_eq!(text.len(), KEY_PREFIX.len() + 64);
        assert_eq!(ClusterKey::parse(&text).unwrap(), key);
        let upper = format!(
            "  {KEY_PREFIX}{}\n",
            text[KEY_PREFIX.len()..].to_uppercase()
        );
        assert_eq!(ClusterKey::parse(&upper).unwrap(), key);
        assert_ne!(ClusterKey::generate().unwrap(), key);
    }

    #[test]
    fn debug_does_not_leak() {
        let key = ClusterKey::from_bytes([0xab; 32]);
        let debug = format!("{key:?}");
        assert!(!debug.contains("abab"), "{debug}");
        assert!(debug.contains(&key.fingerprint()));
        assert_ne!(
            key.fingerprint(),
            ClusterKey::from_bytes([0xac; 32]).fingerprint()
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let hex64 = "00".repeat(32);
        let cases: Vec<(String, &str)> = vec![
            (hex64.clone(), "starts with `shoal-key-v1:`"),
            (
                "shoal-key-v2:abcd".into(),
                "unsupported cluster key version `shoal-key-v2`",
            ),
            (
                format!("{KEY_PREFIX}{}", "00".repeat(31)),
                "64 hex digits after `shoal-key-v1:`, got 62",
            ),
            (format!("{KEY_PREFIX}{hex64}00"), "got 66"),
            (
                format!("{KEY_PREFIX}{}", "0".repeat(63) + "g"),
                "invalid character 'g' at position 63",
            ),
            (
                format!("{KEY_PREFIX}{}", "é".repeat(64)),
                "invalid character 'é' at position 0",
            ),
            (String::new(), "starts with"),
        ];
        for (text, want) in cases {
            let err = ClusterKey::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn load_or_create_persists() {
        let dir = std::env::temp_dir().join(format!("shoal-key-test-{}", std::process::id()));
        let path = dir.join("sub").join("cluster.key");
        let _ = std::fs::remove_dir_all(&dir);
        let (key, created) = ClusterKey::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = ClusterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        let err = ClusterKey::load_or_create(&path).unwrap_err().to_string();
        assert!(
            err.contains("cluster.key") && err.contains("starts with"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
