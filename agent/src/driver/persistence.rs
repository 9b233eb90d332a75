//! The persistence thread: writes the driver's changes to the database in group commits and
//! answers the writes waiting on them, and keeps going when the disk fills up or fails.
//!
//! Batches arrive over a channel. Whatever queued up while a commit ran goes into the next one
//! (one fsync for many writes). Before each commit, and every second, the thread measures the
//! data dir's free space and publishes a [`DiskStatus`] (see [`crate::disk`]); the driver reads
//! it to refuse object writes while the disk is low or failing.
//!
//! # When a commit fails
//!
//! - The changes stay queued (per key, the newest), with the meta values; later batches join
//!   them. The queue holds at most one change per key of the store, so it is bounded by the
//!   store's size however long the disk stays full.
//! - The writes waiting on them are answered at once as made but not saved
//!   ([`Saved::No`]): they are in the store and spreading to the peers, so an error would be a
//!   lie. Writes arriving while the disk fails are answered the same way at once, so nothing
//!   waits on the disk (the reconciler keeps running its pods).
//! - redb latches an I/O error (every later call fails with "Previous I/O error"), so the
//!   database is closed and reopened for the next attempt, which comes after a back-off of
//!   250 ms doubling to 5 s, or as soon as a second's measure finds 1 MiB more free: no
//!   spinning, and a log line when it starts failing, at most one a
//!   minute while it goes on, and one when it recovers.
//! - The first commit that succeeds writes everything queued; the node takes writes again.
//!
//! On shutdown the thread makes one last attempt; what it cannot write is logged with its count
//! (it lives on in the peers' copies).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use shoal_gossip::{Entry, Key};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::clock::wall_ms;
use crate::disk::{self, DiskStatus, Failure};
use crate::persist::{Db, PersistError};

use super::WriteError;

/// A batch for the persistence thread: changes to write, then acks to send once durable.
pub(super) struct Batch {
    pub(super) changes: Vec<(Key, Option<Entry>)>,
    pub(super) meta: Vec<(&'static str, Vec<u8>)>,
    pub(super) acks: Vec<Ack>,
}

/// Whether a write that was made is on this node's disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    /// Committed: it survives a crash of this node.
    Yes,
    /// Made (in memory, spreading to the peers) but not on this node's disk yet, and why; it is
    /// written once the disk takes writes again.
    No(String),
}

/// A reply to send once a write is durable (or known not to be yet).
pub(super) enum Ack {
    Object(oneshot::Sender<Result<(Entry, Saved), WriteError>>, Entry),
    Objects(
        oneshot::Sender<Result<(Vec<Entry>, Saved), WriteError>>,
        Vec<Entry>,
    ),
    Owned(oneshot::Sender<Entry>, Entry),
}

impl Ack {
    fn send(self, saved: Saved) {
        match self {
            Ack::Object(reply, entry) => {
                let _ = reply.send(Ok((entry, saved)));
            }
            Ack::Objects(reply, entries) => {
                let _ = reply.send(Ok((entries, saved)));
            }
            Ack::Owned(reply, entry) => {
                let _ = reply.send(entry);
            }
        }
    }
}

/// How often the free space is measured when no commit does it.
const SPACE_CHECK: Duration = Duration::from_secs(1);
/// First wait before a failed commit is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Free space gained since a commit failed for a full disk that makes the next attempt come at
/// once.
const ROOM_BACK: u64 = 1 << 20;
/// Least time between two logs saying the disk still fails.
const FAILING_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The running thread's ends.
pub(super) struct Persistence {
    pub(super) batches: mpsc::Sender<Batch>,
    pub(super) status: watch::Receiver<Arc<DiskStatus>>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

/// Starts the thread, with `meta` queued (values the agent could not write at start). It ends
/// when every sender is dropped, after one last attempt to write what is queued.
pub(super) fn start(db: Db, reserve: u64, meta: Vec<(&'static str, Vec<u8>)>) -> Persistence {
    let (tx, rx) = mpsc::channel::<Batch>();
    let dir = db.dir().to_path_buf();
    let initial = DiskStatus {
        dir: dir.clone(),
        space: disk::space(&dir).ok(),
        reserve,
        ..DiskStatus::default()
    };
    let (status_tx, status_rx) = watch::channel(Arc::new(initial.clone()));
    let mut writer = Writer {
        db,
        reopen: false,
        dir,
        changes: BTreeMap::new(),
        meta: meta.into_iter().collect(),
        acks: Vec::new(),
        status: initial,
        status_tx,
        retry: None,
        free_at_failure: None,
        last_space_check: Instant::now(),
        failing_logged: None,
    };
    let thread = std::thread::Builder::new()
        .name("shoal-persist".into())
        .spawn(move || writer.run(&rx))
        .expect("spawning the persistence thread");
    Persistence {
        batches: tx,
        status: status_rx,
        thread,
    }
}

struct Writer {
    db: Db,
    /// A commit failed: the database must be reopened before the next one.
    reopen: bool,
    dir: PathBuf,
    /// Queued changes, the newest per key.
    changes: BTreeMap<Key, Option<Entry>>,
    meta: BTreeMap<&'static str, Vec<u8>>,
    acks: Vec<Ack>,
    status: DiskStatus,
    status_tx: watch::Sender<Arc<DiskStatus>>,
    /// After a failure: when to try again, and the wait after that.
    retry: Option<(Instant, Duration)>,
    /// The free space measured when the last commit failed.
    free_at_failure: Option<u64>,
    last_space_check: Instant,
    /// When the failing disk was last logged.
    failing_logged: Option<Instant>,
}

impl Writer {
    fn run(&mut self, rx: &mpsc::Receiver<Batch>) {
        loop {
            let wait = match self.retry {
                Some((at, _)) => at.saturating_duration_since(Instant::now()),
                None => SPACE_CHECK,
            }
            .min(SPACE_CHECK);
            let closing = match rx.recv_timeout(wait) {
                Ok(first) => {
                    self.take(first);
                    while let Ok(more) = rx.try_recv() {
                        self.take(more);
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            let queued = !self.changes.is_empty() || !self.meta.is_empty();
            if queued || self.last_space_check.elapsed() >= SPACE_CHECK {
                self.measure();
            }
            let due =
                self.retry.is_none_or(|(at, _)| Instant::now() >= at) || self.room_came_back();
            if queued && (due || closing) {
                self.commit();
            }
            self.publish();
            if closing {
                if self.status.unsaved > 0 {
                    error!(
                        unsaved = self.status.unsaved,
                        dir = %self.dir.display(),
                        "stopping with changes this node could not save; its peers hold them"
                    );
                }
                return;
            }
        }
    }

    /// Queues a batch. While commits fail, its writes are answered at once (made, not saved).
    fn take(&mut self, batch: Batch) {
        self.changes.extend(batch.changes);
        self.meta.extend(batch.meta);
        match &self.status.failing {
            Some(_) => {
                let saved = Saved::No(self.status.describe());
                for ack in batch.acks {
                    ack.send(saved.clone());
                }
            }
            None => self.acks.extend(batch.acks),
        }
    }

    /// After a failure for a full disk: whether space was freed since (then the next attempt
    /// need not wait out its back-off).
    fn room_came_back(&self) -> bool {
        match (
            &self.status.failing,
            self.status.space,
            self.free_at_failure,
        ) {
            (Some(f), Some(space), Some(before)) if f.no_space => space.free >= before + ROOM_BACK,
            _ => false,
        }
    }

    fn measure(&mut self) {
        self.last_space_check = Instant::now();
        self.status.space = disk::space(&self.dir).ok();
    }

    /// Writes everything queued in one transaction; on failure keeps it queued (see the
    /// module docs).
    fn commit(&mut self) {
        let reopened = match self.reopen {
            true => self.db.reopen(),
            false => Ok(()),
        };
        let result = reopened.and_then(|()| {
            self.reopen = false;
            self.db.apply_with_meta(
                self.changes.iter().map(|(k, e)| (k, e.as_ref())),
                self.meta.iter().map(|(k, v)| (*k, v.as_slice())),
            )
        });
        match result {
            Ok(()) => {
                let waited = self.changes.len() + self.meta.len();
                self.changes.clear();
                self.meta.clear();
                for ack in self.acks.drain(..) {
                    ack.send(Saved::Yes);
                }
                if self.status.failing.take().is_some() {
                    info!(
                        saved = waited,
                        dir = %self.dir.display(),
                        "state saved again; this node takes writes again"
                    );
                }
                self.retry = None;
                self.free_at_failure = None;
                self.failing_logged = None;
                self.status.unsaved = 0;
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &PersistError) {
        // redb fails every later call after an I/O error: reopen before the next attempt.
        self.reopen = true;
        self.status.unsaved = self.changes.len() + self.meta.len();
        let first = self.status.failing.is_none();
        self.status.failing = Some(Failure {
            error: e.to_string(),
            no_space: e.io_error().is_some_and(disk::is_no_space)
                || self.status.space.is_some_and(|s| s.free == 0),
        });
        let wait = match self.retry {
            Some((_, wait)) => wait,
            None => RETRY_FIRST,
        };
        self.retry = Some((Instant::now() + wait, (wait * 2).min(RETRY_MAX)));
        self.free_at_failure = self.status.space.map(|s| s.free);
        let saved = Saved::No(self.status.describe());
        for ack in self.acks.drain(..) {
            ack.send(saved.clone());
        }
        let now = Instant::now();
        if first {
            error!(
                error = %e,
                unsaved = self.status.unsaved,
                dir = %self.dir.display(),
                "cannot save state; object writes are refused until it can (reads and \
                 membership go on)"
            );
            self.failing_logged = Some(now);
        } else if self
            .failing_logged
            .is_none_or(|t| now.duration_since(t) >= FAILING_LOG_INTERVAL)
        {
            warn!(
                error = %e,
                unsaved = self.status.unsaved,
                dir = %self.dir.display(),
                "still cannot save state"
            );
            self.failing_logged = Some(now);
        }
    }

    /// Publishes the status when what it says changed (the free space alone moves all the
    /// time, so it is published only when it crosses the reserve, or once a second).
    fn publish(&mut self) {
        let refused = self.status.refusal().is_some();
        match (refused, self.status.pressure_since_ms) {
            (true, None) => {
                self.status.pressure_since_ms = Some(wall_ms());
                if self.status.failing.is_none() {
                    warn!(
                        status = %self.status.describe(),
                        "disk low; object writes are refused until space is freed"
                    );
                }
            }
            (false, Some(_)) => {
                self.status.pressure_since_ms = None;
                info!(status = %self.status.describe(), "disk has room again");
            }
            _ => {}
        }
        let changed = {
            let old = self.status_tx.borrow();
            old.refusal().is_some() != refused
                || old.failing != self.status.failing
                || old.unsaved != self.status.unsaved
                || old.space != self.status.space
        };
        if changed {
            self.status_tx.send_replace(Arc::new(self.status.clone()));
        }
    }
}
