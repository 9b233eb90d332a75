//! The agent's persistent state: one embedded [redb] database, `<data-dir>/state.redb`.
//!
//! # Role
//!
//! A restarted agent must come back as the same node (same key, hence same [`NodeId`]), with
//! the replicated state it had (so it does not serve an empty view or resurrect what it already
//! saw deleted), and with somewhere to rejoin. This module keeps exactly that, and nothing the
//! agent can recompute:
//! - the node's **identity**: its Ed25519 keypair, created on the first start and never changed,
//!   and the node name it was first started with ([`Identity`]);
//! - every `(Key, Entry)` of the gossip [`Store`](shoal_gossip::Store), written as the driver sees
//!   [`Event::EntryChanged`](shoal_gossip::Event::EntryChanged) and read back once at start for
//!   [`Node::restore`](shoal_gossip::Node::restore);
//! - **known peers** (addresses with the wall time they were last heard from);
//! - **meta**: whether the node completed a first sync, the last time it was in contact with
//!   the cluster, and small free-form values.
//!
//! # Tables and encodings
//!
//! Every table maps `&[u8] -> &[u8]` and this module decodes the bytes itself: redb's typed
//! `&str`/`u64` values unwrap on bytes of the wrong shape, and a bad row must be skipped, not
//! crash the agent. Integers are little-endian.
//!
//! | table      | key                                   | value |
//! |------------|---------------------------------------|-------|
//! | `meta`     | `format_version`                      | `u32` ([`FORMAT_VERSION`]) |
//! |            | `synced`                              | one byte, `0` or `1` |
//! |            | `last_contact_wall_ms`                | `u64`, ms since the Unix epoch |
//! | `identity` | `keypair`                             | libp2p protobuf encoding of the Ed25519 keypair |
//! |            | `name`                                | UTF-8, the name given at the first start |
//! | `entries`  | postcard of [`Key`]                   | postcard of [`Entry`] |
//! | `peers`    | address, UTF-8 (`host:port`, as given) | `u64` last-seen wall ms (`0`: never answered) |
//! | `values`   | free-form name, UTF-8                 | free-form bytes ([`Db::value`]) |
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
//! - The identity is written in the transaction that creates the database and never rewritten
//!   (except the name, by [`Db::rename`]); an undecodable keypair is an error, never replaced,
//!   since a new key would silently make this a different node.
//! - The database is open at most once: redb locks the file (open-file-description byte-range
//!   locks on Linux, which belong to the open file rather than the process), so a second agent on
//!   the same data dir, or a second [`Db::open`] in this process, gets [`PersistError::InUse`].
//!   The lock goes with the process, `kill -9` included.
//! - Nothing in a row can panic the agent: undecodable `entries` rows are skipped, counted in
//!   [`LoadReport::skipped`] and logged with their key; odd `meta` values fall back to the safe
//!   default (not synced, no contact time) with a warning. The file itself is integrity-checked on
//!   every open (page checksums), so a file damaged outside redb is reported as
//!   [`PersistError::Corrupt`] rather than trusted.
//!
//! # Costs
//!
//! Measured on the 2-core dev VM (virtio disk, ext4), release build, 300-byte values, 20 k
//! entries already stored (`commit_latency` in the tests): a 1-entry [`Db::apply`] p50 0.4 ms,
//! p99 0.8-0.9 ms; a 1,000-entry batch p50 5 ms, p99 7-8 ms; 1,000 concurrent 1-entry
//! [`Persister::apply`] calls 7 ms in 3 commits; [`Db::load`] of 50 k entries 110-120 ms; reopen
//! (integrity check) of the same file 25 ms. One `fdatasync` per commit (checked with strace).
//!
//! # Blocking
//!
//! redb is synchronous and a commit waits for the disk (a few ms). [`Db`] is the synchronous API;
//! on tokio, use [`Persister`]: a dedicated thread owning the `Db`, which runs commands in the
//! order they were issued and commits consecutive [`Persister::apply`] batches together (group
//! commit), so concurrent API writes share one fsync. Calling [`Db`] through `spawn_blocking`
//! also works, but two batches in flight at once could then commit out of order (an older entry
//! overwriting a newer one on disk), which the single ordered thread rules out.

#![allow(dead_code)]

use std::borrow::Borrow;
use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use libp2p::identity::Keypair;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError,
    TableDefinition, WriteTransaction,
};
use shoal_gossip::{Entry, Key, NodeId, Version};
use thiserror::Error;
use tokio::sync::oneshot;

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
const VALUES: Table = TableDefinition::new("values");
const ALL_TABLES: [Table; 5] = [META, IDENTITY, ENTRIES, PEERS, VALUES];

const META_FORMAT_VERSION: &[u8] = b"format_version";
const META_SYNCED: &[u8] = b"synced";
const META_LAST_CONTACT: &[u8] = b"last_contact_wall_ms";
const IDENTITY_KEYPAIR: &[u8] = b"keypair";
const IDENTITY_NAME: &[u8] = b"name";

/// redb's page cache. The state is read once at start and then only written, so the cache
/// only needs the B-tree paths that writes touch; redb's default (1 GiB) would keep the whole
/// state in memory a second time after `load`.
const CACHE_BYTES: usize = 32 << 20;

/// Most changes [`Persister`] commits in one group: bounds the latency a large backlog adds to
/// the first write waiting in it.
const GROUP_MAX_CHANGES: usize = 16_384;

/// One change to persist: the entry now held for the key, or `None` when the key left the store
/// (collected by `Store::gc`).
pub(crate) type Change = (Key, Option<Entry>);

/// What failed, with the database file it concerns.
#[derive(Debug, Error)]
pub(crate) enum PersistError {
    /// The data dir could not be created or secured.
    #[error("cannot create data dir {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    /// Another process (or another `Db` in this one) has the database open.
    #[error(
        "data dir {} is in use by another shoal agent ({} is locked); stop that agent or use \
         another --data-dir",
        dir.display(),
        path.display()
    )]
    InUse { dir: PathBuf, path: PathBuf },
    /// redb refused to open the file for another reason.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: Box<DatabaseError>,
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
    #[error("{} is corrupt: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// A transaction failed (I/O error, disk full, ...).
    #[error("{}: {op} failed: {source}", path.display())]
    Storage {
        path: PathBuf,
        op: &'static str,
        // Boxed, like the other large sources: redb's errors are over 100 bytes and every
        // `Result` of this module would carry them.
        source: Box<redb::Error>,
    },
    /// A filesystem operation around the database failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// A value could not be encoded (does not happen for the store's types; kept as an error
    /// rather than a panic).
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    /// The [`Persister`] thread is gone (its handles were closed, or it panicked).
    #[error("the persistence thread has stopped")]
    Closed,
}

/// The node's identity, as persisted.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    /// The node's Ed25519 keypair (libp2p); its public key is the [`NodeId`] and the `PeerId`.
    pub(crate) keypair: Keypair,
    /// The public key as a gossip node id.
    pub(crate) node_id: NodeId,
    /// The name the node was first started with (or last [`Db::rename`]d to). A restart with a
    /// different `--name` shows as `name != args.name`; the caller decides whether that is an
    /// error, a warning, or a rename.
    pub(crate) name: String,
    /// `true` if this open created the identity (first start with this data dir).
    pub(crate) created: bool,
}

/// A known peer address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The address as given or learnt (`host:port`).
    pub(crate) addr: String,
    /// Wall time it was last heard from, ms since the Unix epoch; `0` if never (an address
    /// given with `--join` that has not answered yet).
    pub(crate) last_seen_wall_ms: u64,
}

/// What [`Db::load`] read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LoadReport {
    /// Every decodable entry, tombstones included, in store key order.
    pub(crate) entries: Vec<(Key, Entry)>,
    /// Rows skipped because they did not decode or were inconsistent (a version of the wrong
    /// kind for the key, an object whose `written_at` is not its version's clock); each was
    /// logged with its key.
    pub(crate) skipped: usize,
}

/// The open database. See the module docs.
pub(crate) struct Db {
    db: Database,
    /// The data dir.
    dir: PathBuf,
    /// `dir/state.redb`, for error messages.
    path: PathBuf,
    identity: Identity,
    /// Write transactions committed by this handle (including the one of `open`).
    commits: u64,
}

impl Db {
    /// Opens (creating it if needed) the database in `dir`, creating `dir` itself (mode 0700 on
    /// unix) if it does not exist. On the first start, creates the identity with `name`; later,
    /// returns the stored one (see [`Identity::name`] for a different `name`).
    ///
    /// Runs redb's integrity check (every page's checksum) on every open, and its repair after
    /// an unclean shutdown; both read the whole file (see the module docs for costs).
    ///
    /// # Errors
    ///
    /// [`PersistError::InUse`] if another agent has the database open,
    /// [`PersistError::NewerFormat`] for a file from a newer shoal, [`PersistError::Corrupt`]
    /// for a damaged file or identity, others for I/O failures.
    pub(crate) fn open(dir: impl AsRef<Path>, name: &str) -> Result<Db, PersistError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(DB_FILE);
        create_dir(&dir)?;
        let created_file = create_private_file(&path)?;
        if created_file {
            // The file's directory entry must be durable too, or a power loss right after
            // the first start could lose the identity along with the file.
            sync_dir(&dir).map_err(|source| PersistError::Io {
                path: dir.clone(),
                op: "fsync the data dir",
                source,
            })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| open_error(&dir, &path, e))?;
        let identity = init(&db, &path, name)?;
        if identity.created {
            tracing::info!(node = %identity.node_id, path = %path.display(), "created node identity");
        }
        Ok(Db {
            db,
            dir,
            path,
            identity,
            commits: 1,
        })
    }

    /// The node's identity (see [`Identity`]).
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The data dir.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write transactions committed through this handle (for metrics and tests).
    pub(crate) fn commits(&self) -> u64 {
        self.commits
    }

    /// Records `name` as the node's name (the caller accepted a rename).
    pub(crate) fn rename(&mut self, name: &str) -> Result<(), PersistError> {
        self.put(IDENTITY, IDENTITY_NAME, name.as_bytes())?;
        self.identity.name = name.to_owned();
        Ok(())
    }

    /// Writes `changes` in one transaction and returns once it is durable (see the module
    /// docs): `Some(entry)` stores the entry for its key, `None` removes the key. Later changes
    /// of the same key in the batch win. Returns the number of changes written; an empty batch
    /// commits nothing.
    pub(crate) fn apply(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<usize, PersistError> {
        self.write_changes(changes)
    }

    /// [`Db::apply`] over borrowed or owned keys and entries.
    fn write_changes<K, E>(
        &mut self,
        changes: impl IntoIterator<Item = (K, Option<E>)>,
    ) -> Result<usize, PersistError>
    where
        K: Borrow<Key>,
        E: Borrow<Entry>,
    {
        let mut changes = changes.into_iter().peekable();
        if changes.peek().is_none() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(self.storage("begin apply"))?;
        let mut written = 0;
        {
            let mut table = txn
                .open_table(ENTRIES)
                .map_err(self.storage("open entries"))?;
            let mut key_buf = Vec::new();
            let mut entry_buf = Vec::new();
            for (key, entry) in changes {
                key_buf.clear();
                key_buf = postcard::to_extend(key.borrow(), key_buf).map_err(|source| {
                    PersistError::Encode {
                        what: "a key",
                        source,
                    }
                })?;
                match entry {
                    Some(entry) => {
                        entry_buf.clear();
                        entry_buf =
                            postcard::to_extend(entry.borrow(), entry_buf).map_err(|source| {
                                PersistError::Encode {
                                    what: "an entry",
                                    source,
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
                written += 1;
            }
        }
        self.commit(txn, "commit apply")?;
        Ok(written)
    }

    /// Reads every entry. Rows that do not decode, or whose entry cannot belong to the key, are
    /// skipped, counted and logged (with the key when it decodes, else its bytes in hex); they
    /// stay in the file (a later write of the same key replaces them, a
    /// [`Db::wipe_replicated_state`] drops them).
    pub(crate) fn load(&self) -> Result<LoadReport, PersistError> {
        let txn = self.db.begin_read().map_err(self.storage("begin load"))?;
        let table = txn
            .open_table(ENTRIES)
            .map_err(self.storage("open entries"))?;
        let mut report = LoadReport::default();
        for row in table.iter().map_err(self.storage("read entries"))? {
            let (key, value) = row.map_err(self.storage("read entries"))?;
            match decode_row(key.value(), value.value()) {
                Ok(pair) => report.entries.push(pair),
                Err(why) => {
                    report.skipped += 1;
                    let key = match decode_exact::<Key>(key.value()) {
                        Some(key) => key.to_string(),
                        None => hex(key.value()),
                    };
                    tracing::warn!(%key, why, path = %self.path.display(), "skipping a stored entry");
                }
            }
        }
        report.entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(report)
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
            meta.insert(META_SYNCED, &[0u8][..])
                .map_err(self.storage("clear synced"))?;
            before - after
        };
        self.commit(txn, "commit wipe")?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Known peers, most recently seen first (then by address).
    pub(crate) fn peers(&self) -> Result<Vec<Peer>, PersistError> {
        let txn = self
            .db
            .begin_read()
            .map_err(self.storage("begin read peers"))?;
        let table = txn.open_table(PEERS).map_err(self.storage("open peers"))?;
        let mut peers = Vec::new();
        for row in table.iter().map_err(self.storage("read peers"))? {
            let (addr, seen) = row.map_err(self.storage("read peers"))?;
            match (std::str::from_utf8(addr.value()), decode_u64(seen.value())) {
                (Ok(addr), Some(seen)) => peers.push(Peer {
                    addr: addr.to_owned(),
                    last_seen_wall_ms: seen,
                }),
                _ => tracing::warn!(addr = %hex(addr.value()), "skipping an undecodable peer"),
            }
        }
        peers.sort_by(|a, b| {
            b.last_seen_wall_ms
                .cmp(&a.last_seen_wall_ms)
                .then_with(|| a.addr.cmp(&b.addr))
        });
        Ok(peers)
    }

    /// Records that `addr` was heard from at `wall_ms` (`0` to record an address not yet heard
    /// from). Never moves a peer's last-seen time back (wall clocks step).
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
    pub(crate) fn forget_peer(&mut self, addr: &str) -> Result<bool, PersistError> {
        let txn = self
            .db
            .begin_write()
            .map_err(self.storage("begin write peers"))?;
        let removed = {
            let mut table = txn.open_table(PEERS).map_err(self.storage("open peers"))?;
            table
                .remove(addr.as_bytes())
                .map_err(self.storage("remove a peer"))?
                .is_some()
        };
        self.commit(txn, "commit peers")?;
        Ok(removed)
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
        Ok(match self.get(META, META_SYNCED)? {
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
    pub(crate) fn set_synced(&mut self, synced: bool) -> Result<(), PersistError> {
        self.put(META, META_SYNCED, &[u8::from(synced)])
    }

    /// The last time the node was in contact with the cluster (wall ms since the Unix epoch),
    /// as last recorded; `None` if never recorded or unreadable (logged). The precision is
    /// however often the caller records it.
    pub(crate) fn last_contact_wall_ms(&self) -> Result<Option<u64>, PersistError> {
        let Some(v) = self.get(META, META_LAST_CONTACT)? else {
            return Ok(None);
        };
        let decoded = decode_u64(&v);
        if decoded.is_none() {
            tracing::warn!(value = %hex(&v), "unreadable meta.last_contact_wall_ms, ignoring it");
        }
        Ok(decoded)
    }

    /// Records the last time the node was in contact with the cluster.
    pub(crate) fn set_last_contact_wall_ms(&mut self, wall_ms: u64) -> Result<(), PersistError> {
        self.put(META, META_LAST_CONTACT, &wall_ms.to_le_bytes())
    }

    /// A free-form value (`values` table); for small values, each write is one transaction.
    pub(crate) fn value(&self, name: &str) -> Result<Option<Vec<u8>>, PersistError> {
        self.get(VALUES, name.as_bytes())
    }

    /// Sets a free-form value.
    pub(crate) fn set_value(&mut self, name: &str, value: &[u8]) -> Result<(), PersistError> {
        self.put(VALUES, name.as_bytes(), value)
    }

    /// Removes a free-form value; `false` if it was not set.
    pub(crate) fn remove_value(&mut self, name: &str) -> Result<bool, PersistError> {
        let txn = self
            .db
            .begin_write()
            .map_err(self.storage("begin write value"))?;
        let removed = {
            let mut table = txn
                .open_table(VALUES)
                .map_err(self.storage("open values"))?;
            table
                .remove(name.as_bytes())
                .map_err(self.storage("remove a value"))?
                .is_some()
        };
        self.commit(txn, "commit value")?;
        Ok(removed)
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
/// identity, in one transaction.
fn init(db: &Database, path: &Path, name: &str) -> Result<Identity, PersistError> {
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
            .get(META_FORMAT_VERSION)
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
        meta.insert(META_FORMAT_VERSION, &FORMAT_VERSION.to_le_bytes()[..])
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
        let name = match stored_name {
            Some(stored) => stored,
            None => {
                ids.insert(IDENTITY_NAME, name.as_bytes())
                    .map_err(storage(path, "write the identity"))?;
                name.to_owned()
            }
        };
        let node_id = node_id_of(&keypair)
            .ok_or_else(|| corrupt("the stored keypair is not Ed25519".into()))?;
        Identity {
            keypair,
            node_id,
            name,
            created,
        }
    };
    // Durability::Immediate (redb's default): the identity is on disk before it is used.
    txn.commit().map_err(storage(path, "commit init"))?;
    Ok(identity)
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
/// [`PersistError::Corrupt`]. Borrows `path`, so that the success path (a `map_err` per row) allocates nothing.
fn storage<E: Into<redb::Error>>(path: &Path, op: &'static str) -> impl FnOnce(E) -> PersistError {
    move |e| match e.into() {
        redb::Error::Corrupted(what) => PersistError::Corrupt {
            path: path.to_path_buf(),
            what,
        },
        source => PersistError::Storage {
            path: path.to_path_buf(),
            op,
            source: Box::new(source),
        },
    }
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
        source => PersistError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
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
        .map_err(|source| PersistError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Creates the database file with mode 0600 if it does not exist (redb would create it with the
/// umask's mode, typically world-readable, and it holds the private key). Tightens the mode of an
/// existing file that others can read. Returns `true` if it created the file.
fn create_private_file(path: &Path) -> Result<bool, PersistError> {
    let io_err = |op| {
        move |source| PersistError::Io {
            path: path.to_path_buf(),
            op,
            source,
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
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "database readable by others, setting mode 0600");
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
    use std::fmt::Write;
    let mut s = String::new();
    for b in bytes.iter().take(64) {
        let _ = write!(s, "{b:02x}");
    }
    if bytes.len() > 64 {
        s.push_str("...");
    }
    s
}

/// A command for the [`Persister`] thread.
enum Cmd {
    Apply {
        changes: Vec<Change>,
        done: oneshot::Sender<Result<usize, PersistError>>,
    },
    Run(Box<dyn FnOnce(&mut Db) + Send>),
}

/// An async handle to a [`Db`] owned by a dedicated thread (`shoal-persist`).
///
/// Commands run in the order they were issued (the order of the calls, not of awaiting the
/// returned futures: each call enqueues at once). Consecutive `apply` batches waiting in the
/// queue are committed in one transaction (group commit): one fsync for all of them. The returned
/// futures can be dropped without cancelling the work; they are `'static`, so the driver can
/// hand one to the API task that waits to acknowledge a write.
///
/// The thread stops once every handle is dropped and the queue is drained, closing the database
/// cleanly; join the `JoinHandle` from [`Persister::spawn`] (blocking) to wait for it.
#[derive(Clone)]
pub(crate) struct Persister {
    tx: mpsc::Sender<Cmd>,
}

impl Persister {
    /// Moves `db` to a new thread and returns the handle to it.
    pub(crate) fn spawn(db: Db) -> io::Result<(Persister, thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("shoal-persist".into())
            .spawn(move || serve(db, &rx))?;
        Ok((Persister { tx }, thread))
    }

    /// [`Db::apply`] on the thread: the future resolves once the batch is durable.
    pub(crate) fn apply(
        &self,
        changes: Vec<Change>,
    ) -> impl Future<Output = Result<usize, PersistError>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        // A failed send drops the command, hence `done`, and `rx` reports it as Closed.
        let _ = self.tx.send(Cmd::Apply { changes, done });
        async move { rx.await.unwrap_or(Err(PersistError::Closed)) }
    }

    /// Runs `f` on the thread, after every command issued before it.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, PersistError>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Run(Box::new(move |db| {
            let _ = done.send(f(db));
        })));
        async move { rx.await.map_err(|_| PersistError::Closed) }
    }
}

/// The [`Persister`] thread's loop.
fn serve(mut db: Db, rx: &mpsc::Receiver<Cmd>) {
    let mut next = None;
    loop {
        let cmd = match next.take() {
            Some(cmd) => cmd,
            None => match rx.recv() {
                Ok(cmd) => cmd,
                Err(mpsc::RecvError) => break,
            },
        };
        match cmd {
            Cmd::Run(f) => f(&mut db),
            Cmd::Apply { changes, done } => {
                let mut total = changes.len();
                let mut group = vec![(changes, done)];
                while total < GROUP_MAX_CHANGES {
                    match rx.try_recv() {
                        Ok(Cmd::Apply { changes, done }) => {
                            total += changes.len();
                            group.push((changes, done));
                        }
                        Ok(other) => {
                            // Runs after the group, keeping the issue order.
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut db, group);
            }
        }
    }
}

/// A batch waiting in the [`Persister`] queue, with where to answer.
type Waiting = (Vec<Change>, oneshot::Sender<Result<usize, PersistError>>);

/// Commits a group of batches in one transaction and answers each. If the transaction fails,
/// retries the batches one by one, so each gets its own result and one bad batch does not fail
/// the others.
fn commit_group(db: &mut Db, group: Vec<Waiting>) {
    if group.len() > 1 {
        let all = group
            .iter()
            .flat_map(|(changes, _)| changes.iter().map(|(k, e)| (k, e.as_ref())));
        match db.write_changes(all) {
            Ok(_) => {
                for (changes, done) in group {
                    let _ = done.send(Ok(changes.len()));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, batches = group.len(), "group commit failed, retrying batch by batch");
            }
        }
    }
    for (changes, done) in group {
        let _ = done.send(db.apply(changes));
    }
}
