//! The data dir's disk: how much room it has, and whether the agent can take writes there.
//!
//! A full disk must not wedge the agent nor make it lie. The persistence thread (see
//! `driver::persistence`) measures the free space of the data dir's filesystem before every
//! commit and every second, and publishes a [`DiskStatus`]:
//! - **Low**: less free space than the reserve (`--disk-reserve-mb`). The node refuses object
//!   writes before making them ([`DiskRefusal`], `507 Insufficient Storage`), so nothing a
//!   client is refused was written. What the node writes about itself (pod records, node info)
//!   and what it receives from its peers still go in, into the reserve.
//! - **Failing**: a commit failed anyway (the reserve ran out, or an I/O error). The changes
//!   stay queued in memory and are written when the disk takes them again; writes refused as
//!   for Low. A write that was made before the commit failed is answered as made but not saved
//!   on this node's disk (`202 Accepted`, with a warning), never as an error: it is in the
//!   node's memory and on its way to every peer.
//!
//! Reads and membership never touch the disk, so they go on. When space returns the queued
//! changes are written and the node takes writes again, by itself.
//!
//! # Costs
//!
//! One `statvfs` per group commit and per second (about a microsecond): O(1), on the
//! persistence thread, never on the membership task. The driver reads the published status (a
//! `watch` borrow) once per object write.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The reserve kept free by default: 64 MiB.
pub(crate) const DEFAULT_RESERVE_MB: u64 = 64;

/// Free and total bytes of the filesystem holding `dir`, as an unprivileged process may use
/// them (`statvfs`'s `f_bavail`: root's reserved blocks are not counted).
pub(crate) fn space(dir: &Path) -> io::Result<Space> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let block = stat.fragment_size();
    Ok(Space {
        free: stat.blocks_available().saturating_mul(block),
        total: stat.blocks().saturating_mul(block),
    })
}

/// A filesystem's room, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Space {
    pub(crate) free: u64,
    pub(crate) total: u64,
}

/// How the data dir's disk is doing, as the persistence thread last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DiskStatus {
    /// The data dir.
    pub(crate) dir: PathBuf,
    /// Its filesystem's room as last measured (`None`: not measured, or `statvfs` failed).
    pub(crate) space: Option<Space>,
    /// The free space below which the node refuses object writes.
    pub(crate) reserve: u64,
    /// The last commit failed, and changes wait in memory.
    pub(crate) failing: Option<Failure>,
    /// Changes (entries and meta values) waiting to be written.
    pub(crate) unsaved: usize,
    /// Since when (wall ms) the node has refused writes for its disk; `None` while it takes them.
    pub(crate) pressure_since_ms: Option<u64>,
}

/// A commit that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Failure {
    /// What failed, as the storage layer said it.
    pub(crate) error: String,
    /// The filesystem was full (`ENOSPC`, `EDQUOT`), rather than some other I/O error.
    pub(crate) no_space: bool,
}

impl DiskStatus {
    /// Less free space than the reserve.
    pub(crate) fn low(&self) -> bool {
        self.space.is_some_and(|s| s.free < self.reserve)
    }

    /// Whether the node takes object writes now: `None` if it does, else why not.
    pub(crate) fn refusal(&self) -> Option<DiskRefusal> {
        (self.low() || self.failing.is_some()).then(|| DiskRefusal(self.clone()))
    }

    /// The disk is full, as opposed to failing some other way.
    pub(crate) fn full(&self) -> bool {
        self.low() || self.failing.as_ref().is_some_and(|f| f.no_space)
    }

    /// One line for the node's condition and the logs: how the disk is doing.
    pub(crate) fn describe(&self) -> String {
        let room = match self.space {
            Some(s) => format!("{} free of {}", human_bytes(s.free), human_bytes(s.total)),
            None => "free space unknown".to_owned(),
        };
        let reserve = human_bytes(self.reserve);
        let waiting = match self.unsaved {
            1 => "1 change waits".to_owned(),
            n => format!("{n} changes wait"),
        };
        match &self.failing {
            Some(f) if f.no_space => format!(
                "disk full: {} has {room}; saving state failed ({}); {waiting} in memory, saved \
                 once space is freed",
                self.dir.display(),
                f.error,
            ),
            Some(f) => format!(
                "cannot save state in {} ({room}): {}; {waiting} in memory, saved once the disk \
                 takes writes again",
                self.dir.display(),
                f.error,
            ),
            None if self.low() => format!(
                "disk full: {} has {room}, under the {reserve} this node keeps free \
                 (--disk-reserve-mb)",
                self.dir.display()
            ),
            None => format!("{} has {room} (reserve {reserve})", self.dir.display()),
        }
    }
}

/// An object write refused because of the data dir's disk (nothing was written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskRefusal(pub(crate) DiskStatus);

impl fmt::Display for DiskRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}. This node refuses writes until its disk takes them again (reads go on): free \
             space there, or write through another node",
            self.0.describe()
        )
    }
}

impl std::error::Error for DiskRefusal {}

/// Whether an I/O error says the filesystem is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Bytes for people: `512 B`, `1.5 KiB`, `64 MiB`, `2.0 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(free: u64, reserve: u64, failing: Option<bool>) -> DiskStatus {
        DiskStatus {
            dir: PathBuf::from("/var/lib/shoal"),
            space: Some(Space {
                free,
                total: 1 << 30,
            }),
            reserve,
            failing: failing.map(|no_space| Failure {
                error: if no_space {
                    "No space left on device (os error 28)".into()
                } else {
                    "Input/output error (os error 5)".into()
                },
                no_space,
            }),
            unsaved: 3,
            pressure_since_ms: None,
        }
    }

    #[test]
    fn writes_are_refused_below_the_reserve_or_while_commits_fail() {
        let fine = status(100 << 20, 64 << 20, None);
        assert!(fine.refusal().is_none());
        assert!(!fine.full());

        let low = status(1 << 20, 64 << 20, None);
        let why = low.refusal().expect("refused").to_string();
        assert!(low.full());
        assert!(why.starts_with("disk full: /var/lib/shoal has 1 MiB free of 1 GiB"));
        assert!(
            why.contains("under the 64 MiB this node keeps free"),
            "{why}"
        );
        assert!(why.contains("write through another node"), "{why}");

        let full = status(100 << 20, 64 << 20, Some(true));
        let why = full.refusal().expect("refused").to_string();
        assert!(full.full());
        assert!(why.contains("No space left on device"), "{why}");
        assert!(why.contains("3 changes wait in memory"), "{why}");
        assert!(
            why.contains("refuses writes until its disk takes them again"),
            "{why}"
        );

        let broken = status(100 << 20, 64 << 20, Some(false));
        let why = broken.refusal().expect("refused").to_string();
        assert!(!broken.full());
        assert!(
            why.starts_with("cannot save state in /var/lib/shoal"),
            "{why}"
        );

        // No reserve: only a failed commit refuses.
        assert!(status(0, 0, None).refusal().is_none());
    }

    #[test]
    fn the_space_of_a_real_directory_is_measured() {
        let s = space(Path::new("/")).expect("statvfs /");
        assert!(s.total > 0 && s.free <= s.total);
        assert!(space(Path::new("/nonexistent/shoal")).is_err());
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 30), "3 GiB");
    }

    #[test]
    fn full_filesystems_are_told_from_other_io_errors() {
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
