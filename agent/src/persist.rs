//! The agent's persistent state: one embedded [redb] database, `<data-dir>/state.redb`.
//!
//! # Role
//!
//! A restarted agent must come back as the same node (same key, hence same [`NodeId`]), with
//! the replicated state it had (so it does not serve an empty view or resurrect what it already
//! saw deleted), and with somewhere to rejoin. This module keeps exactly that, and nothing the
//! agent can recompute:
//! - the node's **identity**: its Ed25519 keypair, created on the first start and never changed,
//!   and the node name it was first started with ([`Db::first_name`]);
//! - every `(Key, Entry)` of the gossip [`Store`](shoal_gossip::Store), written as the driver sees
//!   [`Event::EntryChanged`](shoal_gossip::Event::EntryChanged) and read back once at start for
//!   [`Node::restore`](shoal_gossip::Node::restore);
//! - **known peers** (addresses with the wall time they were last heard from);
//! - **meta**: whether the node completed a first sync ([`META_SYNCED`]), the last time it was in
//!   contact with the cluster ([`META_LAST_CONTACT`]), and small free-form values.
//!
//! # Tables and encodings
//!
//! Every table maps `&[u8] -> &[u8]` and this module decodes the bytes itself: redb's typed
//! `&str`/`u64` values unwrap on bytes of the wrong shape, and a bad row must be skipped, not
//! crash the agent. Integers are little-endian.
//!
//! | table      | key                          | value                                        |
//! |------------|------------------------------|----------------------------------------------|
//! | `meta`     | `format_version` (reserved)  | `u32` ([`FORMAT_VERSION`])                   |
//! |            | [`META_SYNCED`]              | one byte, `0` or `1`                         |
//! |            | [`META_LAST_CONTACT`]        | `u64`, wall ms since the Unix epoch          |
//! |            | any other name (UTF-8)       | free-form bytes ([`Db::get_meta`])           |
//! | `identity` | `keypair`                    | libp2p protobuf encoding (Ed25519)           |
//! |            | `name`                       | UTF-8, recorded at the first start           |
//! | `entries`  | postcard of [`Key`]          | postcard of [`Entry`]                        |
//! | `peers`    | address (UTF-8, as given)    | `u64` last-seen wall ms (`0`: never heard)   |
//!
//! postcard of [`Key`] and [`Entry`] is stable for as long as the gossip wire format is (variant
//! and field order are part of that contract; see `gossip/src/store/key.rs`); a change of either
//! must bump [`FORMAT_VERSION`] with a migration. postcard does not preserve order (varint
//! lengths), so the `entries` table is not in store key order; [`Db::load`] sorts.
//!
//! # Format versions
//!
//! `meta.format_version` is written with the first transaction. Opening a file whose version is
//! newer than this build's fails with [`PersistError::NewerFormat`] (an older build must not
//! misread, or worse rewrite, a newer layout); an older version runs the steps of `MIGRATIONS`
//! in the same transaction as the version bump, so a crash mid-migration leaves the old format
//! intact.
//!
//! # Durability
//!
//! Every mutating call is one redb write transaction committed with redb's default durability
//! (`Durability::Immediate`: the commit `fdatasync`s the file before it returns, with
//! checksummed commit slots, so a crash leaves the last committed transaction or the one before,
//! never a torn one). So when [`Db::apply`] returns `Ok`, the batch survives `kill -9` and power
//! loss (given a disk that honours flushes); the driver calls it before acknowledging an API
//! write. A batch is all-or-nothing. When the file is created, the data dir is fsynced too, so
//! the file's directory entry is durable as well.
//!
//! # Invariants
//!
//! - The keypair is written in the transaction that creates the database and never rewritten;
//!   an undecodable keypair is an error, never replaced, since a new key would silently make this
//!   a different node. The name is written once by [`Db::first_name`] and after that only by an
//!   explicit [`Db::set_name`].
//! - The database is open at most once: redb locks the file (open-file-description byte-range
//!   locks on Linux, which belong to the open file rather than the process), so a second agent on
//!   the same data dir, or a second [`Db::open`] in this process, gets [`PersistError::InUse`].
//!   The lock goes with the process, `kill -9` included.
//! - Nothing in a row can panic the agent: undecodable `entries` rows are skipped, counted in
//!   [`LoadReport::skipped`] and logged with their key; odd `meta` values read through the typed
//!   getters fall back to the safe default (not synced, no contact time) with a warning. The
//!   file itself is integrity-checked on every open (page checksums), so a file damaged outside
//!   redb is reported as [`PersistError::Corrupt`] rather than trusted.
//!
//! # Costs
//!
//! Measured on the 2-core dev VM (virtio disk, ext4), release build, 300-byte values, 20 k
//! entries already stored (`commit_latency` in the tests). The disk's flush latency dominates
//! and varies with other I/O on the host:
//!
//! | operation                   | quiet machine          | during parallel cargo builds |
//! |-----------------------------|------------------------|------------------------------|
//! | 1-entry [`Db::apply`]       | p50 0.4 ms, p99 0.9 ms | p50 3-4 ms, p99 6 ms         |
//! | 1,000-entry [`Db::apply`]   | p50 5 ms, p99 8 ms     | p50 4-8 ms, p99 12 ms        |
//! | [`Db::load`], 50 k entries  | 110-120 ms             | 85-120 ms                    |
//! | [`Db::open`], 50 k entries (integrity check) | 25 ms | 20-50 ms                   |
//!
//! One `fdatasync` per commit (checked with strace), so batching is what buys throughput.

//! # Blocking
//!
//! redb is synchronous and a commit waits for the disk. The API is synchronous; on tokio, give
//! the `Db` to one dedicated thread that receives batches over a channel, merges whatever is
//! queued into one [`Db::apply_with_meta`] (group commit: one fsync for many API writes) and
//! acknowledges the writes after it returns (the driver's persistence thread does exactly this).
//! Keep it to one thread, or otherwise one batch in flight at a time: two concurrent
//! `spawn_blocking(apply)` calls could commit out of order, an older entry overwriting a newer
//! one on disk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError,
    TableDefinition, WriteTransaction,
};
use shoal_gossip::{Entry, Key, NodeId, Version};
use thiserror::Error;

#[cfg(test)]
mod tests;

/// The current layout of the database (see the module docs). Bump it, and add a step to
/// `MIGRATIONS`, whenever a table's encoding changes.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The database file inside the data dir.
pub(crate) const DB_FILE: &str = "state.redb";

/// Upgrade steps: `MIGRATIONS[i]` takes a database from format `i + 1` to `i + 2`, inside the
/// transaction that then records the new version.
const MIGRATIONS: &[Migration] = &[];
type Migration = fn(&WriteTransaction) -> Result<(), redb::Error>;
const _: () = assert!(MIGRATIONS.len() + 1 == FORMAT_VERSION as usize);

/// Bytes to bytes; see the table of the module docs.
type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;
const META: Table = TableDefinition::new("meta");
const IDENTITY: Table = TableDefinition::new("identity");
const ENTRIES: Table = TableDefinition::new("entries");
const PEERS: Table = TableDefinition::new("peers");
const ALL_TABLES: [Table; 4] = [META, IDENTITY, ENTRIES, PEERS];

/// Meta name of the format version; [`Db::set_meta`] refuses it.
const META_FORMAT_VERSION: &str = "format_version";
/// Meta name: the node completed a first full sync (one byte, `1`; `0` or absent: not synced).
/// Read and written by [`Db::synced`] and [`Db::set_synced`], or raw through [`Db::get_meta`].
pub(crate) const META_SYNCED: &str = "synced";
/// Meta name: the last wall time (ms since the Unix epoch, `u64` little-endian) the node was in
/// contact with the cluster. See [`Db::last_contact_wall_ms`].
pub(crate) const META_LAST_CONTACT: &str = "last_contact_ms";
const IDENTITY_KEYPAIR: &[u8] = b"keypair";
const IDENTITY_NAME: &[u8] = b"name";

/// redb's page cache. The state is read once at start and then only written, so the cache
/// only needs the B-tree paths that writes touch; redb's default (1 GiB) would keep the whole
/// state in memory a second time after `load`.
const CACHE_BYTES: usize = 32 << 20;

/// One change to persist: the entry now held for the key, or `None` when the key left the store
/// (collected by `Store::gc`).
#[cfg(test)]
pub(crate) type Change = (Key, Option<Entry>);

/// What failed, with the database file it concerns.
#[derive(Debug, Error)]
pub(crate) enum PersistError {
    /// The data dir could not be created or secured.
    #[error("cannot create data dir {}: {cause}", path.display())]
    CreateDir { path: PathBuf, cause: io::Error },
    /// Another process (or another `Db` in this one) has the database open.
    #[error(
        "data dir {} is in use by another shoal agent ({} is locked); stop that agent or use \
         another --data-dir",
        dir.display(),
        path.display()
    )]
    InUse { dir: PathBuf, path: PathBuf },
    /// redb refused to open the file for another reason.
    #[error("cannot open {}: {cause}", path.display())]
    Open {
        path: PathBuf,
        cause: Box<DatabaseError>,
    },
    /// The file was written by a newer shoal.
    #[error(
        "{} was written by a newer shoal (state format {found}, this build reads up to \
         {supported}): run a newer shoal, or move the data dir aside to start as a new node",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The file, or a value the agent cannot do without (identity, format version), is damaged.
    #[error(
        "{} is corrupt: {what}. The agent does not serve damaged state: restore the data dir \
         from a backup, or move it aside to start as a new node (which takes its state from \
         its peers; give it --join)",
        path.display()
    )]
    Corrupt { path: PathBuf, what: String },
    /// A transaction failed (I/O error, disk full, ...).
    #[error("{}: {op} failed: {cause}", path.display())]
    Storage {
        path: PathBuf,
        op: &'static str,
        // Boxed, like the other large sources: redb's errors are over 100 bytes and every
        // `Result` of this module would carry them.
        cause: Box<redb::Error>,
    },
    /// A filesystem operation around the database failed.
    #[error("{}: {op} failed: {cause}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        cause: io::Error,
    },
    /// A value could not be encoded (does not happen for the store's types; kept as an error
    /// rather than a panic).
    #[error("cannot encode {what}: {cause}")]
    Encode {
        what: &'static str,
        cause: postcard::Error,
    },
    /// A caller tried to write a meta name this module owns (`format_version`).
    #[error("meta {0:?} is reserved")]
    ReservedMeta(String),
}

impl PersistError {
    /// The operating system's error under this one, if an I/O call failed (a full disk, ...).
    pub(crate) fn io_error(&self) -> Option<&io::Error> {
        match self {
            PersistError::CreateDir { cause, .. } | PersistError::Io { cause, .. } => Some(cause),
            PersistError::Storage { cause, .. } => match cause.as_ref() {
                redb::Error::Io(e) => Some(e),
                _ => None,
            },
            PersistError::Open { cause, .. } => match cause.as_ref() {
                DatabaseError::Storage(StorageError::Io(e)) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What [`Db::load`] skipped, beside the entries it returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LoadReport {
    /// Entries returned.
    pub(crate) entries: usize,
    /// Rows skipped because they did not decode or were inconsistent (a version of the wrong
    /// kind for the key, an object whose `written_at` is not its version's clock); each was
    /// logged with its key.
    pub(crate) skipped: usize,
}

/// The identity as stored.
struct Identity {
    keypair: Keypair,
    node_id: NodeId,
    /// `None` until [`Db::first_name`] or [`Db::set_name`] records one.
    name: Option<String>,
    /// This open created the keypair.
    created: bool,
}

/// The open database. See the module docs.
pub(crate) struct Db {
    db: Database,
    /// `<data dir>/state.redb`, for error messages.
    path: PathBuf,
    identity: Identity,
    /// Write transactions committed by this handle (including the one of `open`).
    commits: u64,
}

impl Db {
    /// Opens (creating it if needed) the database in `dir`, creating `dir` itself (mode 0700 on
    /// unix) if it does not exist. On the first start, creates the node's keypair
    /// ([`Db::created_now`] tells); later, reads it back.
    ///
    /// Runs redb's integrity check (every page's checksum) on every open, and its repair after
    /// an unclean shutdown; both read the whole file (see the module docs for costs).
    ///
    /// # Errors
    ///
    /// [`PersistError::InUse`] if another agent has the database open,
    /// [`PersistError::NewerFormat`] for a file from a newer shoal, [`PersistError::Corrupt`]
    /// for a damaged file or identity, others for I/O failures.
    pub(crate) fn open(dir: impl AsRef<Path>) -> Result<Db, PersistError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(DB_FILE);
        create_dir(&dir)?;
        let created_file = create_private_file(&path)?;
        if created_file {
            // The file's directory entry must be durable too, or a power loss right after
            // the first start could lose the identity along with the file.
            sync_dir(&dir).map_err(|cause| PersistError::Io {
                path: dir.clone(),
                op: "fsync the data dir",
                cause,
            })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| open_error(&dir, &path, e))?;
        let identity = init(&db, &path)?;
        if identity.created {
            tracing::info!(
                node = %identity.node_id,
                path = %path.display(),
                "created node identity"
            );
        }
        Ok(Db {
            db,
            path,
            identity,
            commits: 1,
        })
    }

    /// Closes and opens the file again: what redb needs after an I/O error (it fails every
    /// later call with "Previous I/O error" until then). The file must still hold this node's
    /// identity.
    pub(crate) fn reopen(&mut self) -> Result<(), PersistError> {
        let dir = self.dir().to_path_buf();
        // redb locks the file: the old handle must be gone before the new one opens it. An
        // empty in-memory database holds the place meanwhile.
        let placeholder = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| open_error(&dir, &self.path, e))?;
        drop(std::mem::replace(&mut self.db, placeholder));
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&self.path)
            .map_err(|e| open_error(&dir, &self.path, e))?;
        let identity = init(&db, &self.path)?;
        if identity.node_id != self.identity.node_id {
            return Err(PersistError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "reopened as node {}, not {}: the file was replaced while the agent ran",
                    identity.node_id, self.identity.node_id
                ),
            });
        }
        self.db = db;
        Ok(())
    }

    /// The node's Ed25519 keypair (libp2p); its public key is the node's [`NodeId`] and `PeerId`.
    pub(crate) fn identity(&self) -> &Keypair {
        &self.identity.keypair
    }

    /// The node id: the keypair's public key.
    #[cfg(test)]
    pub(crate) fn node_id(&self) -> NodeId {
        self.identity.node_id
    }

    /// The data dir the database lives in.
    pub(crate) fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// `true` if this open created the keypair (the first start with this data dir).
    pub(crate) fn created_now(&self) -> bool {
        self.identity.created
    }

    /// The node's name as stored: on the first call, records `name` and returns it; later,
    /// returns the name recorded then, whatever `name` is. A restart with a different `--name`
    /// therefore shows as `db.first_name(&name)? != name`, and the caller decides: refuse, warn,
    /// or accept the rename with [`Db::set_name`].
    pub(crate) fn first_name(&mut self, name: &str) -> Result<String, PersistError> {
        match &self.identity.name {
            Some(stored) => Ok(stored.clone()),
            None => {
                self.set_name(name)?;
                Ok(name.to_owned())
            }
        }
    }

    /// Records `name` as the node's name (first start, or an accepted rename).
    pub(crate) fn set_name(&mut self, name: &str) -> Result<(), PersistError> {
        self.put(IDENTITY, IDENTITY_NAME, name.as_bytes())?;
        self.identity.name = Some(name.to_owned());
        Ok(())
    }

    /// Write transactions committed through this handle (for metrics and tests).
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits
    }

    /// Writes `changes` in one transaction and returns once it is durable (see the module
    /// docs): `Some(entry)` stores the entry for its key, `None` removes the key. Later changes
    /// of the same key in the batch win. An empty batch commits nothing.
    #[cfg(test)]
    pub(crate) fn apply(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<(), PersistError> {
        let changes: Vec<Change> = changes.into_iter().collect();
        self.apply_with_meta(changes.iter().map(|(k, e)| (k, e.as_ref())), [])
    }

    /// [`Db::apply`] and [`Db::set_meta`] of each `(name, value)` in `meta`, in one transaction
    /// (one fsync): what a persistence thread commits for a group of batches. Borrows what it
    /// writes, so that a caller keeps it when the commit fails. Nothing is written if a meta
    /// name is reserved.
    pub(crate) fn apply_with_meta<'c, 'm>(
        &mut self,
        changes: impl IntoIterator<Item = (&'c Key, Option<&'c Entry>)>,
        meta: impl IntoIterator<Item = (&'m str, &'m [u8])>,
    ) -> Result<(), PersistError> {
        let mut changes = changes.into_iter().peekable();
        let mut meta = meta.into_iter().peekable();
        if changes.peek().is_none() && meta.peek().is_none() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(self.storage("begin apply"))?;
        {
            let mut table = txn
                .open_table(ENTRIES)
                .map_err(self.storage("open entries"))?;
            let mut key_buf = Vec::new();
            let mut entry_buf = Vec::new();
            for (key, entry) in changes {
                key_buf.clear();
                key_buf =
                    postcard::to_extend(key, key_buf).map_err(|cause| PersistError::Encode {
                        what: "a key",
                        cause,
                    })?;
                match entry {
                    Some(entry) => {
                        entry_buf.clear();
                        entry_buf = postcard::to_extend(entry, entry_buf).map_err(|cause| {
                            PersistError::Encode {
                                what: "an entry",
                                cause,
                            }
                        })?;
                        table
                            .insert(&key_buf[..], &entry_buf[..])
                            .map_err(self.storage("write an entry"))?;
                    }
                    None => {
                        table
                            .remove(&key_buf[..])
                            .map_err(self.storage("remove an entry"))?;
                    }
                }
            }
            let mut meta_table = txn.open_table(META).map_err(self.storage("open meta"))?;
            for (name, value) in meta {
                check_meta_name(name)?;
                meta_table
                    .insert(name.as_bytes(), value)
                    .map_err(self.storage("write meta"))?;
            }
        }
        // An early `?` above drops `txn` uncommitted: redb aborts it, nothing is written.
        self.commit(txn, "commit apply")
    }

    /// Reads every entry, tombstones included, in store key order (ready for `Node::restore`).
    /// Rows that do not decode, or whose entry cannot belong to the key, are skipped, counted
    /// and logged (with the key when it decodes, else its bytes in hex); they stay in the file
    /// (a later write of the same key replaces them, [`Db::wipe_replicated_state`] drops them).
    pub(crate) fn load(&self) -> Result<(Vec<(Key, Entry)>, LoadReport), PersistError> {
        let txn = self.db.begin_read().map_err(self.storage("begin load"))?;
        let table = txn
            .open_table(ENTRIES)
            .map_err(self.storage("open entries"))?;
        let mut entries = Vec::new();
        let mut report = LoadReport::default();
        for row in table.iter().map_err(self.storage("read entries"))? {
            let (key, value) = row.map_err(self.storage("read entries"))?;
            match decode_row(key.value(), value.value()) {
                Ok(pair) => entries.push(pair),
                Err(why) => {
                    report.skipped += 1;
                    let key = match decode_exact::<Key>(key.value()) {
                        Some(key) => key.to_string(),
                        None => hex(key.value()),
                    };
                    tracing::warn!(
                        %key,
                        why,
                        path = %self.path.display(),
                        "skipping a stored entry"
                    );
                }
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        report.entries = entries.len();
        Ok((entries, report))
    }

    /// Drops every entry except this node's own (`Member(keep_owner)` and the
    /// `Owned { owner: keep_owner, .. }` entries; undecodable rows go too) and clears `synced`,
    /// in one transaction: what the agent does when it was away longer than the tombstone grace
    /// period and must resynchronise from empty. Keeping its own entries keeps its owner
    /// counters and incarnation growing. Returns the number of rows removed.
    pub(crate) fn wipe_replicated_state(
        &mut self,
        keep_owner: NodeId,
    ) -> Result<usize, PersistError> {
        let txn = self.db.begin_write().map_err(self.storage("begin wipe"))?;
        let removed = {
            let mut table = txn
                .open_table(ENTRIES)
                .map_err(self.storage("open entries"))?;
            let before = table.len().map_err(self.storage("count entries"))?;
            table
                .retain(|key, _| match decode_exact::<Key>(key) {
                    Some(Key::Member(id)) => id == keep_owner,
                    Some(Key::Owned { owner, .. }) => owner == keep_owner,
                    Some(Key::Object(_)) | None => false,
                })
                .map_err(self.storage("wipe entries"))?;
            let after = table.len().map_err(self.storage("count entries"))?;
            let mut meta = txn.open_table(META).map_err(self.storage("open meta"))?;
            meta.insert(META_SYNCED.as_bytes(), &[0u8][..])
                .map_err(self.storage("clear synced"))?;
            before - after
        };
        self.commit(txn, "commit wipe")?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Known peers as `(address, last-seen wall ms)`, most recently seen first (then by
    /// address); `0` for an address never heard from. Undecodable rows are skipped and logged.
    pub(crate) fn peers(&self) -> Result<Vec<(String, u64)>, PersistError> {
        let txn = self
            .db
            .begin_read()
            .map_err(self.storage("begin read peers"))?;
        let table = txn.open_table(PEERS).map_err(self.storage("open peers"))?;
        let mut peers = Vec::new();
        for row in table.iter().map_err(self.storage("read peers"))? {
            let (addr, seen) = row.map_err(self.storage("read peers"))?;
            match (std::str::from_utf8(addr.value()), decode_u64(seen.value())) {
                (Ok(addr), Some(seen)) => peers.push((addr.to_owned(), seen)),
                _ => tracing::warn!(addr = %hex(addr.value()), "skipping an undecodable peer"),
            }
        }
        peers.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(peers)
    }

    /// Records that `addr` was heard from at `wall_ms` (`0` to record an address not yet heard
    /// from). Never moves a peer's last-seen time back (wall clocks step).
    #[cfg(test)]
    pub(crate) fn remember_peer(&mut self, addr: &str, wall_ms: u64) -> Result<(), PersistError> {
        self.remember_peers([(addr, wall_ms)])
    }

    /// [`Db::remember_peer`] for many peers in one transaction.
    pub(crate) fn remember_peers<'a>(
        &mut self,
        peers: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<(), PersistError> {
        let mut peers = peers.into_iter().peekable();
        if peers.peek().is_none() {
            return Ok(());
        }
        let txn = self
            .db
            .begin_write()
            .map_err(self.storage("begin write peers"))?;
        {
            let mut table = txn.open_table(PEERS).map_err(self.storage("open peers"))?;
            for (addr, wall_ms) in peers {
                let known = table
                    .get(addr.as_bytes())
                    .map_err(self.storage("read peers"))?
                    .and_then(|v| decode_u64(v.value()));
                let seen = known.map_or(wall_ms, |k| k.max(wall_ms));
                table
                    .insert(addr.as_bytes(), &seen.to_le_bytes()[..])
                    .map_err(self.storage("write peers"))?;
            }
        }
        self.commit(txn, "commit peers")
    }

    /// Forgets `addr`; `false` if it was not known.
    #[cfg(test)]
    pub(crate) fn forget_peer(&mut self, addr: &str) -> Result<bool, PersistError> {
        self.remove_row(PEERS, addr.as_bytes())
    }

    /// Forgets every peer last seen before `wall_ms` (including those never seen, at `0`), and
    /// undecodable rows. Returns how many were removed.
    pub(crate) fn forget_peers_before(&mut self, wall_ms: u64) -> Result<usize, PersistError> {
        let txn = self
            .db
            .begin_write()
            .map_err(self.storage("begin write peers"))?;
        let removed = {
            let mut table = txn.open_table(PEERS).map_err(self.storage("open peers"))?;
            let before = table.len().map_err(self.storage("count peers"))?;
            table
                .retain(|_, seen| decode_u64(seen).is_some_and(|s| s >= wall_ms))
                .map_err(self.storage("prune peers"))?;
            before - table.len().map_err(self.storage("count peers"))?
        };
        self.commit(txn, "commit peers")?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Whether the node completed a first full sync before it last stopped. An unreadable value
    /// reads as `false`, the safe side (no resurrection guard until the node syncs again).
    pub(crate) fn synced(&self) -> Result<bool, PersistError> {
        Ok(match self.get_meta(META_SYNCED)? {
            None => false,
            Some(v) if v == [1] => true,
            Some(v) if v == [0] => false,
            Some(v) => {
                tracing::warn!(value = %hex(&v), "unreadable meta.synced, reading it as false");
                false
            }
        })
    }

    /// Records whether the node completed a first full sync.
    #[cfg(test)]
    pub(crate) fn set_synced(&mut self, synced: bool) -> Result<(), PersistError> {
        self.set_meta(META_SYNCED, &[u8::from(synced)])
    }

    /// The last time the node was in contact with the cluster (wall ms since the Unix epoch),
    /// as last recorded; `None` if never recorded or unreadable (logged). The precision is
    /// however often the caller records it.
    pub(crate) fn last_contact_wall_ms(&self) -> Result<Option<u64>, PersistError> {
        let Some(v) = self.get_meta(META_LAST_CONTACT)? else {
            return Ok(None);
        };
        let decoded = decode_u64(&v);
        if decoded.is_none() {
            tracing::warn!(value = %hex(&v), "unreadable meta.last_contact_ms, ignoring it");
        }
        Ok(decoded)
    }

    /// A meta value (the typed getters above, or a free-form name); for small values.
    pub(crate) fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, PersistError> {
        self.get(META, name.as_bytes())
    }

    /// Sets a meta value durably (one transaction; batch several with
    /// [`Db::apply_with_meta`]). `format_version` is reserved.
    pub(crate) fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<(), PersistError> {
        check_meta_name(name)?;
        self.put(META, name.as_bytes(), value)
    }

    /// Removes a meta value; `false` if it was not set. `format_version` is reserved.
    #[cfg(test)]
    pub(crate) fn remove_meta(&mut self, name: &str) -> Result<bool, PersistError> {
        check_meta_name(name)?;
        self.remove_row(META, name.as_bytes())
    }

    /// One row of `table`, copied out.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, PersistError> {
        let txn = self.db.begin_read().map_err(self.storage("begin read"))?;
        let table = txn
            .open_table(table)
            .map_err(self.storage("open a table"))?;
        let value = table.get(key).map_err(self.storage("read"))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Writes one row of `table` durably.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), PersistError> {
        let txn = self.db.begin_write().map_err(self.storage("begin write"))?;
        {
            let mut table = txn
                .open_table(table)
                .map_err(self.storage("open a table"))?;
            table.insert(key, value).map_err(self.storage("write"))?;
        }
        self.commit(txn, "commit")
    }

    /// Removes one row of `table` durably; `false` if it was not there.
    #[cfg(test)]
    fn remove_row(&mut self, table: Table, key: &[u8]) -> Result<bool, PersistError> {
        let txn = self.db.begin_write().map_err(self.storage("begin write"))?;
        let removed = {
            let mut table = txn
                .open_table(table)
                .map_err(self.storage("open a table"))?;
            table.remove(key).map_err(self.storage("remove"))?.is_some()
        };
        self.commit(txn, "commit")?;
        Ok(removed)
    }

    fn commit(&mut self, txn: WriteTransaction, op: &'static str) -> Result<(), PersistError> {
        // Durability::Immediate is redb's default for write transactions: commit fsyncs.
        txn.commit().map_err(self.storage(op))?;
        self.commits += 1;
        Ok(())
    }

    /// Wraps a redb error with the file and the operation.
    fn storage<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> PersistError {
        storage(&self.path, op)
    }
}

/// Checks or writes the format version, migrates, creates every table and reads or creates the
/// keypair, in one transaction.
fn init(db: &Database, path: &Path) -> Result<Identity, PersistError> {
    // A database already at this format, with its identity, needs no write: it opens even on
    // a full disk.
    if let Some(identity) = read_identity(db, path)? {
        return Ok(identity);
    }
    let corrupt = |what: String| PersistError::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let txn = db.begin_write().map_err(storage(path, "begin init"))?;
    for table in ALL_TABLES {
        // Opening a table in a write transaction creates it, so read transactions later never
        // meet a missing table.
        txn.open_table(table)
            .map_err(storage(path, "create tables"))?;
    }
    let identity = {
        let mut meta = txn.open_table(META).map_err(storage(path, "open meta"))?;
        let found = meta
            .get(META_FORMAT_VERSION.as_bytes())
            .map_err(storage(path, "read the format version"))?
            .map(|v| decode_u32(v.value()));
        let mut ids = txn
            .open_table(IDENTITY)
            .map_err(storage(path, "open identity"))?;
        let keypair = ids
            .get(IDENTITY_KEYPAIR)
            .map_err(storage(path, "read the identity"))?
            .map(|v| v.value().to_vec());
        let stored_name = ids
            .get(IDENTITY_NAME)
            .map_err(storage(path, "read the identity"))?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        match found {
            // An identity without a version: the file was not written by this module.
            None if keypair.is_some() => {
                return Err(corrupt("the format version is missing".into()));
            }
            None => {}
            Some(None) => return Err(corrupt("the format version is not a u32".into())),
            Some(Some(v)) if v > FORMAT_VERSION => {
                return Err(PersistError::NewerFormat {
                    path: path.to_path_buf(),
                    found: v,
                    supported: FORMAT_VERSION,
                });
            }
            Some(Some(v)) => migrate(&txn, path, v)?,
        }
        meta.insert(
            META_FORMAT_VERSION.as_bytes(),
            &FORMAT_VERSION.to_le_bytes()[..],
        )
        .map_err(storage(path, "write the format version"))?;
        let (keypair, created) = match keypair {
            Some(bytes) => (
                Keypair::from_protobuf_encoding(&bytes)
                    .map_err(|e| corrupt(format!("the stored keypair does not decode: {e}")))?,
                false,
            ),
            None => {
                let keypair = Keypair::generate_ed25519();
                let bytes = keypair
                    .to_protobuf_encoding()
                    .map_err(|e| corrupt(format!("cannot encode the new keypair: {e}")))?;
                ids.insert(IDENTITY_KEYPAIR, &bytes[..])
                    .map_err(storage(path, "write the identity"))?;
                (keypair, true)
            }
        };
        let node_id = node_id_of(&keypair)
            .ok_or_else(|| corrupt("the stored keypair is not Ed25519".into()))?;
        Identity {
            keypair,
            node_id,
            name: stored_name,
            created,
        }
    };
    // Durability::Immediate (redb's default): the identity is on disk before it is used.
    txn.commit().map_err(storage(path, "commit init"))?;
    Ok(identity)
}

/// The identity of a database that needs nothing from [`init`]: every table there, this
/// format, a keypair that decodes. `None` otherwise ([`init`] then writes what is missing, or
/// says what is wrong).
fn read_identity(db: &Database, path: &Path) -> Result<Option<Identity>, PersistError> {
    let txn = db.begin_read().map_err(storage(path, "begin init"))?;
    for table in ALL_TABLES {
        match txn.open_table(table) {
            Ok(_) => {}
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(path, "open a table")(e)),
        }
    }
    let meta = txn.open_table(META).map_err(storage(path, "open meta"))?;
    let version = meta
        .get(META_FORMAT_VERSION.as_bytes())
        .map_err(storage(path, "read the format version"))?
        .and_then(|v| decode_u32(v.value()));
    if version != Some(FORMAT_VERSION) {
        return Ok(None);
    }
    let ids = txn
        .open_table(IDENTITY)
        .map_err(storage(path, "open identity"))?;
    let Some(keypair) = ids
        .get(IDENTITY_KEYPAIR)
        .map_err(storage(path, "read the identity"))?
        .and_then(|v| Keypair::from_protobuf_encoding(v.value()).ok())
    else {
        return Ok(None);
    };
    let Some(node_id) = node_id_of(&keypair) else {
        return Ok(None);
    };
    let name = ids
        .get(IDENTITY_NAME)
        .map_err(storage(path, "read the identity"))?
        .map(|v| String::from_utf8_lossy(v.value()).into_owned());
    Ok(Some(Identity {
        keypair,
        node_id,
        name,
        created: false,
    }))
}

/// Runs the migrations from format `from` to [`FORMAT_VERSION`] in `txn`.
fn migrate(txn: &WriteTransaction, path: &Path, from: u32) -> Result<(), PersistError> {
    for version in from..FORMAT_VERSION {
        let step = usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| MIGRATIONS.get(i))
            .ok_or_else(|| PersistError::Corrupt {
                path: path.to_path_buf(),
                what: format!("unknown state format {version}"),
            })?;
        tracing::info!(
            from = version,
            to = version + 1,
            "migrating the state database"
        );
        step(txn).map_err(storage(path, "migrate"))?;
    }
    Ok(())
}

/// Wraps a redb error with the file and the operation; redb's "corrupted" becomes
/// [`PersistError::Corrupt`]. Borrows `path`, so that the success path (a `map_err` per row)
/// allocates nothing.
fn storage<E: Into<redb::Error>>(path: &Path, op: &'static str) -> impl FnOnce(E) -> PersistError {
    move |e| match e.into() {
        redb::Error::Corrupted(what) => PersistError::Corrupt {
            path: path.to_path_buf(),
            what,
        },
        cause => PersistError::Storage {
            path: path.to_path_buf(),
            op,
            cause: Box::new(cause),
        },
    }
}

/// Refuses the meta names this module owns.
fn check_meta_name(name: &str) -> Result<(), PersistError> {
    if name == META_FORMAT_VERSION {
        return Err(PersistError::ReservedMeta(name.to_owned()));
    }
    Ok(())
}

/// Maps redb's open errors to ours; the lock errors become [`PersistError::InUse`].
fn open_error(dir: &Path, path: &Path, e: DatabaseError) -> PersistError {
    match e {
        // LockProtocolMismatch: a process using another redb locking generation (an agent of
        // another shoal version) holds the file, which is still "in use".
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            PersistError::InUse {
                dir: dir.to_path_buf(),
                path: path.to_path_buf(),
            }
        }
        DatabaseError::Storage(StorageError::Corrupted(what)) => PersistError::Corrupt {
            path: path.to_path_buf(),
            what,
        },
        // redb reports a file that is not a redb database at all as InvalidData.
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            PersistError::Corrupt {
                path: path.to_path_buf(),
                what: format!("not a shoal state database ({io})"),
            }
        }
        cause => PersistError::Open {
            path: path.to_path_buf(),
            cause: Box::new(cause),
        },
    }
}

/// Creates `dir` (and missing parents) with mode 0700 on unix: it holds the node's private key.
/// An existing dir is left as it is.
fn create_dir(dir: &Path) -> Result<(), PersistError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|cause| PersistError::CreateDir {
            path: dir.to_path_buf(),
            cause,
        })
}

/// Creates the database file with mode 0600 if it does not exist (redb would create it with the
/// umask's mode, typically world-readable, and it holds the private key). Tightens the mode of an
/// existing file that others can read. Returns `true` if it created the file.
fn create_private_file(path: &Path) -> Result<bool, PersistError> {
    let io_err = |op| {
        move |cause| PersistError::Io {
            path: path.to_path_buf(),
            op,
            cause,
        }
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(path)
                    .map_err(io_err("stat the database"))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{mode:o}"),
                        "database readable by others, setting mode 0600"
                    );
                    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                        .map_err(io_err("chmod the database"))?;
                }
            }
            Ok(false)
        }
        Err(e) => Err(io_err("create the database")(e)),
    }
}

/// fsyncs a directory, so entries created in it are durable. A no-op where directories cannot
/// be opened as files.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The node id of an Ed25519 keypair: its public key.
fn node_id_of(keypair: &Keypair) -> Option<NodeId> {
    Some(NodeId(keypair.public().try_into_ed25519().ok()?.to_bytes()))
}

/// Decodes `bytes` as exactly one `T` (trailing bytes are an error: a row is one value).
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

/// Decodes an `entries` row, checking what `Store::merge` would refuse anyway.
fn decode_row(key: &[u8], value: &[u8]) -> Result<(Key, Entry), &'static str> {
    let key: Key = decode_exact(key).ok_or("the key does not decode")?;
    let entry: Entry = decode_exact(value).ok_or("the entry does not decode")?;
    if key.kind() != entry.version.kind() {
        return Err("the entry's version is of another kind than its key");
    }
    match entry.version {
        Version::Object { hlc, .. } if hlc != entry.written_at => {
            Err("the object's written_at differs from its version")
        }
        _ => Ok((key, entry)),
    }
}

fn decode_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Lower-case hex of at most the first 64 bytes, for logs.
fn hex(bytes: &[u8]) -> String {
    let mut s = hex::encode(&bytes[..bytes.len().min(64)]);
    if bytes.len() > 64 {
        s.push_str("...");
    }
    s
}
