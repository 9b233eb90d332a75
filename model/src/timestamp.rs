//! Points in time as Kubernetes writes them: RFC 3339, UTC, whole seconds
//! (`2024-05-01T12:00:00Z`).

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time, in milliseconds since the Unix epoch; serialized as Kubernetes does (RFC
/// 3339, UTC, seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Parses an RFC 3339 UTC time (`2024-05-01T12:00:00Z`, fractions of a second dropped), as
    /// Kubernetes writes them. Times with another offset than `Z`, and times before the Unix
    /// epoch, are refused.
    pub fn parse(text: &str) -> Option<Timestamp> {
        if !text.ends_with(['Z', 'z']) {
            return None;
        }
        let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        let seconds = u64::try_from(time.unix_timestamp()).ok()?;
        Some(Timestamp(seconds * 1000))
    }

    /// The RFC 3339 text (`2024-05-01T12:00:00Z`), milliseconds dropped. Past the year 9999,
    /// which RFC 3339 cannot write (and no clock reaches), the last second of that year.
    pub fn to_rfc3339(self) -> String {
        let seconds = i64::try_from(self.0 / 1000).unwrap_or(i64::MAX);
        let time = OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(LATEST);
        time.format(&Rfc3339)
            .unwrap_or_else(|_| "9999-12-31T23:59:59Z".to_owned())
    }
}

/// The latest time RFC 3339 can write.
const LATEST: OffsetDateTime = match OffsetDateTime::from_unix_timestamp(253_402_300_799) {
    Ok(time) => time,
    Err(_) => OffsetDateTime::UNIX_EPOCH,
};

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text)
            .ok_or_else(|| de::Error::custom(format!("{text:?} is not an RFC 3339 UTC time")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ms: u64) -> String {
        Timestamp(ms).to_rfc3339()
    }

    #[test]
    fn writes_rfc3339_in_whole_seconds() {
        assert_eq!(text(0), "1970-01-01T00:00:00Z");
        assert_eq!(text(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(text(1_795_826_096_000), "2026-11-28T00:34:56Z");
        assert_eq!(text(1_795_826_096_999), "2026-11-28T00:34:56Z");
        assert_eq!(text(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn reads_what_it_writes() {
        for ms in [0, 951_782_400_000, 1_714_560_000_000, 1_795_826_096_000] {
            assert_eq!(Timestamp::parse(&text(ms)), Some(Timestamp(ms)));
        }
    }

    #[test]
    fn reads_kubernetes_times_only() {
        let at = |s| Timestamp::parse(s).map(|t| t.0);
        assert_eq!(at("2024-05-01T12:34:56Z"), Some(1_714_566_896_000));
        assert_eq!(at("2024-05-01t12:34:56z"), Some(1_714_566_896_000));
        assert_eq!(at("2024-05-01T12:34:56.789Z"), Some(1_714_566_896_000));
        assert_eq!(at("2024-05-01T14:34:56+02:00"), None);
        assert_eq!(at("1969-12-31T23:59:59Z"), None);
        assert_eq!(at("2024-05-01"), None);
        assert_eq!(at("2024-13-01T00:00:00Z"), None);
        assert_eq!(at("yesterday"), None);
    }
}
