use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_gossip::Hlc;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "shoal-persist-{name}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn id(b: u8) -> NodeId {
    NodeId([b; 32])
}

fn object(name: &str, wall_ms: u64, value: &[u8]) -> (Key, Entry) {
    let hlc = Hlc::new(wall_ms, 0);
    (
        Key::object("deployment", "default", name),
        Entry {
            version: Version::Object { hlc, writer: id(9) },
            written_at: hlc,
            value: Some(value.to_vec()),
        },
    )
}

fn owned(owner: NodeId, name: &str, version: u64) -> (Key, Entry) {
    (
        Key::owned(owner, name),
        Entry::owned(version, Hlc::new(version, 0), Some(vec![1, 2, 3])),
    )
}

fn member(node: NodeId, incarnation: u64) -> (Key, Entry) {
    (
        Key::Member(node),
        Entry::member(incarnation, Version::ALIVE, Hlc::new(7, 0), Some(vec![4])),
    )
}

fn upsert(pairs: impl IntoIterator<Item = (Key, Entry)>) -> Vec<Change> {
    pairs.into_iter().map(|(k, e)| (k, Some(e))).collect()
}

/// Writes a raw row into `table`, bypassing the encoders.
fn put_raw(db: &Db, table: Table, key: &[u8], value: &[u8]) {
    let txn = db.db.begin_write().unwrap();
    txn.open_table(table).unwrap().insert(key, value).unwrap();
    txn.commit().unwrap();
}

#[test]
fn identity_is_created_once() {
    let data = |dir: &TempDir| dir.path().join("nested/data");
    let dir = TempDir::new("identity");
    let (key, node) = {
        let mut db = Db::open(data(&dir)).unwrap();
        assert!(db.created_now());
        assert_eq!(
            db.node_id().0,
            db.identity()
                .public()
                .try_into_ed25519()
                .unwrap()
                .to_bytes()
        );
        assert_eq!(db.first_name("alpha").unwrap(), "alpha");
        (db.identity().to_protobuf_encoding().unwrap(), db.node_id())
    };
    // Reopened and started with another name: same key, the first name, so the caller can tell.
    let mut db = Db::open(data(&dir)).unwrap();
    assert!(!db.created_now());
    assert_eq!(db.node_id(), node);
    assert_eq!(db.identity().to_protobuf_encoding().unwrap(), key);
    assert_eq!(db.first_name("beta").unwrap(), "alpha");
    db.set_name("beta").unwrap();
    drop(db);
    let mut db = Db::open(data(&dir)).unwrap();
    assert_eq!(db.first_name("gamma").unwrap(), "beta");
    assert_eq!(db.node_id(), node);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data(&dir)), 0o700);
        assert_eq!(mode(&data(&dir).join(DB_FILE)), 0o600);
    }
}

#[test]
fn a_reopened_database_is_the_same_node_with_the_same_state() {
    let dir = TempDir::new("reopen");
    let mut db = Db::open(dir.path()).unwrap();
    let node = db.node_id();
    db.apply(upsert([object("web", 10, b"v1")])).unwrap();
    db.reopen().unwrap();
    assert_eq!(db.node_id(), node);
    assert_eq!(db.load().unwrap().0.len(), 1);
    // It writes as before, and another handle is still refused while it is open.
    db.apply(upsert([object("db", 11, b"v1")])).unwrap();
    assert!(matches!(
        Db::open(dir.path()),
        Err(PersistError::InUse { .. })
    ));
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.node_id(), node);
    assert_eq!(db.load().unwrap().0.len(), 2);
}

#[test]
fn apply_and_load_round_trip() {
    let dir = TempDir::new("roundtrip");
    let me = id(1);
    let pairs = vec![
        object("web", 10, b"v1"),
        object("db", 11, b"v1"),
        owned(me, "addr", 1),
        member(id(2), 3),
        // A tombstone is an entry like any other.
        (
            Key::object("service", "default", "gone"),
            Entry {
                version: Version::Object {
                    hlc: Hlc::new(12, 1),
                    writer: me,
                },
                written_at: Hlc::new(12, 1),
                value: None,
            },
        ),
    ];
    {
        let mut db = Db::open(dir.path()).unwrap();
        db.apply(upsert(pairs.clone())).unwrap();
        // Empty batches commit nothing.
        let commits = db.commits();
        db.apply(Vec::new()).unwrap();
        db.apply_with_meta([], []).unwrap();
        assert_eq!(db.commits(), commits);
        // A newer web, db collected, in one batch; the later change of a key wins.
        let (web, web2) = object("web", 20, b"v2");
        let (_, web3) = object("web", 21, b"v3");
        db.apply(vec![
            (web.clone(), Some(web2)),
            (pairs[1].0.clone(), None),
            (web, Some(web3)),
        ])
        .unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    let (entries, report) = db.load().unwrap();
    assert_eq!(
        report,
        LoadReport {
            entries: 4,
            skipped: 0
        }
    );
    let mut expected: Vec<(Key, Entry)> = pairs
        .into_iter()
        .filter(|(k, _)| *k != Key::object("deployment", "default", "db"))
        .map(|(k, e)| {
            if k == Key::object("deployment", "default", "web") {
                object("web", 21, b"v3")
            } else {
                (k, e)
            }
        })
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(entries, expected, "in store key order");
}

#[test]
fn meta_and_peers() {
    let dir = TempDir::new("meta");
    {
        let mut db = Db::open(dir.path()).unwrap();
        assert!(!db.synced().unwrap());
        assert_eq!(db.last_contact_wall_ms().unwrap(), None);
        db.set_synced(true).unwrap();
        db.set_meta("cluster", b"prod").unwrap();
        // Entries and meta in one transaction.
        let commits = db.commits();
        let batch = upsert([object("web", 10, b"v1")]);
        db.apply_with_meta(
            batch.iter().map(|(k, e)| (k, e.as_ref())),
            [
                (META_LAST_CONTACT, &1_700_000_000_000u64.to_le_bytes()[..]),
                ("other", &b"x"[..]),
            ],
        )
        .unwrap();
        assert_eq!(db.commits(), commits + 1);
        db.remember_peer("10.0.0.1:7946", 0).unwrap();
        db.remember_peers([("10.0.0.2:7946", 500), ("10.0.0.3:7946", 300)])
            .unwrap();
        // Never moves back.
        db.remember_peer("10.0.0.2:7946", 100).unwrap();
        db.remember_peer("10.0.0.3:7946", 900).unwrap();
        assert!(!db.forget_peer("10.0.0.9:7946").unwrap());
    }
    let mut db = Db::open(dir.path()).unwrap();
    assert!(db.synced().unwrap());
    assert_eq!(db.get_meta(META_SYNCED).unwrap(), Some(vec![1]));
    assert_eq!(db.last_contact_wall_ms().unwrap(), Some(1_700_000_000_000));
    assert_eq!(db.get_meta("cluster").unwrap(), Some(b"prod".to_vec()));
    assert_eq!(db.get_meta("other").unwrap(), Some(b"x".to_vec()));
    assert_eq!(db.get_meta("unset").unwrap(), None);
    assert_eq!(db.load().unwrap().0.len(), 1);
    assert_eq!(
        db.peers().unwrap(),
        [
            ("10.0.0.3:7946".to_owned(), 900),
            ("10.0.0.2:7946".to_owned(), 500),
            ("10.0.0.1:7946".to_owned(), 0)
        ]
    );
    assert!(db.forget_peer("10.0.0.3:7946").unwrap());
    assert_eq!(db.forget_peers_before(1).unwrap(), 1);
    assert_eq!(db.peers().unwrap().len(), 1);
    assert!(db.remove_meta("cluster").unwrap());
    assert_eq!(db.get_meta("cluster").unwrap(), None);

    // The format version is not the caller's to write, alone or with a batch.
    assert!(matches!(
        db.set_meta("format_version", b"x"),
        Err(PersistError::ReservedMeta(_))
    ));
    let batch = upsert([object("db", 10, b"v1")]);
    assert!(matches!(
        db.apply_with_meta(
            batch.iter().map(|(k, e)| (k, e.as_ref())),
            [("format_version", &b"x"[..])]
        ),
        Err(PersistError::ReservedMeta(_))
    ));
    assert_eq!(
        db.load().unwrap().0.len(),
        1,
        "the refused batch wrote nothing"
    );

    // Odd meta values read as the safe default instead of failing.
    db.set_meta(META_SYNCED, b"yes").unwrap();
    db.set_meta(META_LAST_CONTACT, b"x").unwrap();
    assert!(!db.synced().unwrap());
    assert_eq!(db.last_contact_wall_ms().unwrap(), None);
}

#[test]
fn newer_format_is_refused() {
    let dir = TempDir::new("format");
    {
        let db = Db::open(dir.path()).unwrap();
        put_raw(
            &db,
            META,
            META_FORMAT_VERSION.as_bytes(),
            &(FORMAT_VERSION + 1).to_le_bytes(),
        );
    }
    let err = Db::open(dir.path()).err().expect("a newer format opens");
    assert!(
        matches!(err, PersistError::NewerFormat { found, supported, .. }
            if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("newer shoal"), "{msg}");
    // The refused open did not rewrite the version.
    let err = Db::open(dir.path()).err().expect("still newer");
    assert!(matches!(err, PersistError::NewerFormat { .. }));
}

#[test]
fn unknown_older_format_is_an_error() {
    let dir = TempDir::new("oldformat");
    {
        let db = Db::open(dir.path()).unwrap();
        put_raw(
            &db,
            META,
            META_FORMAT_VERSION.as_bytes(),
            &0u32.to_le_bytes(),
        );
    }
    let err = Db::open(dir.path()).err().expect("format 0 opens");
    assert!(
        matches!(&err, PersistError::Corrupt { what, .. }
            if what.contains("unknown state format 0")),
        "{err:?}"
    );
}

#[test]
fn second_open_is_in_use() {
    let dir = TempDir::new("inuse");
    let db = Db::open(dir.path()).unwrap();
    let err = Db::open(dir.path()).err().expect("opened twice");
    assert!(matches!(err, PersistError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("is in use by another shoal agent"),
        "{err}"
    );
    drop(db);
    Db::open(dir.path()).unwrap();
}

#[test]
fn garbage_file_is_corrupt_not_a_panic() {
    let dir = TempDir::new("garbage");
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join(DB_FILE), vec![0xAB; 10_000]).unwrap();
    let err = Db::open(dir.path()).err().expect("garbage opens");
    assert!(matches!(err, PersistError::Corrupt { .. }), "{err:?}");
}

#[test]
fn corrupt_rows_are_skipped_and_counted() {
    let dir = TempDir::new("corrupt");
    let mut db = Db::open(dir.path()).unwrap();
    let good = vec![object("web", 10, b"v1"), owned(id(1), "addr", 1)];
    db.apply(upsert(good.clone())).unwrap();
    let key_bytes = postcard::to_allocvec(&Key::object("deployment", "default", "bad")).unwrap();
    let entry_bytes = postcard::to_allocvec(&object("x", 1, b"x").1).unwrap();
    // A valid key with a garbage entry.
    put_raw(&db, ENTRIES, &key_bytes, &[0xFF, 0xFF, 0xFF]);
    // A garbage key with a valid entry.
    put_raw(&db, ENTRIES, &[0x07, 0x01], &entry_bytes);
    // A valid entry with trailing bytes.
    let mut trailing = entry_bytes.clone();
    trailing.push(0);
    let key2 = postcard::to_allocvec(&Key::object("deployment", "default", "trailing")).unwrap();
    put_raw(&db, ENTRIES, &key2, &trailing);
    // A version of the wrong kind for the key.
    let member_key = postcard::to_allocvec(&Key::Member(id(3))).unwrap();
    put_raw(&db, ENTRIES, &member_key, &entry_bytes);
    let (entries, report) = db.load().unwrap();
    assert_eq!(
        report,
        LoadReport {
            entries: 2,
            skipped: 4
        }
    );
    assert_eq!(entries, {
        let mut good = good;
        good.sort_by(|a, b| a.0.cmp(&b.0));
        good
    });
    // A write of the key replaces its bad row.
    let (_, fixed) = object("bad", 20, b"ok");
    db.apply([(Key::object("deployment", "default", "bad"), Some(fixed))])
        .unwrap();
    assert_eq!(db.load().unwrap().1.skipped, 3);
}

#[test]
fn wipe_keeps_only_own_entries() {
    let dir = TempDir::new("wipe");
    let (me, other) = (id(1), id(2));
    let mut db = Db::open(dir.path()).unwrap();
    db.set_synced(true).unwrap();
    db.apply(upsert([
        member(me, 4),
        member(other, 1),
        owned(me, "addr", 3),
        owned(me, "pods", 9),
        owned(other, "addr", 1),
        object("web", 10, b"v1"),
    ]))
    .unwrap();
    put_raw(&db, ENTRIES, &[0x07, 0x01], b"junk");
    assert_eq!(db.wipe_replicated_state(me).unwrap(), 4);
    assert!(!db.synced().unwrap(), "a wiped node must sync again");
    let (entries, report) = db.load().unwrap();
    assert_eq!(report.skipped, 0);
    let keys: Vec<Key> = entries.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            Key::Member(me),
            Key::owned(me, "addr"),
            Key::owned(me, "pods")
        ]
    );
}

/// Env var that turns [`kill9_child`] into the child process of [`kill9_keeps_committed_writes`];
/// its value is the data dir.
const CHILD_ENV: &str = "SHOAL_PERSIST_KILL9_CHILD_DIR";

/// Child mode of [`kill9_keeps_committed_writes`] (a no-op in a normal test run): applies
/// batches forever, printing `committed N` after batch `N` is durable.
#[test]
fn kill9_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut db = Db::open(PathBuf::from(dir)).unwrap();
    db.first_name("child").unwrap();
    for n in 0u64.. {
        // Batch n: a single-key write and a 9-entry batch, alternating, so both shapes are
        // interrupted at some point.
        let size = if n % 2 == 0 { 1 } else { 9 };
        let batch = (0..size).map(|i| object(&format!("{n}-{i}"), n + 1, &n.to_le_bytes()));
        db.apply(upsert(batch)).unwrap();
        println!("committed {n}");
    }
}

#[test]
fn kill9_keeps_committed_writes() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = TempDir::new("kill9");
    // The test's name in the harness: the module path without the crate name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{module}::kill9_child"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut last = None;
    let start = Instant::now();
    // Kill at a moment that depends on timing, well inside the write loop.
    while last.is_none_or(|n| n < 150) && start.elapsed() < Duration::from_secs(60) {
        let Some(line) = lines.next() else { break };
        if let Some(n) = line.unwrap().strip_prefix("committed ") {
            last = Some(n.parse::<u64>().unwrap());
        }
    }
    let last = last.expect("the child committed nothing");
    // While the child runs, a second process cannot open the data dir.
    let err = Db::open(dir.path())
        .err()
        .expect("opened while the child runs");
    assert!(matches!(err, PersistError::InUse { .. }), "{err:?}");
    child.kill().unwrap(); // SIGKILL on unix
    child.wait().unwrap();
    // Any line the child printed before dying was committed too.
    let last = lines
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("committed ")?.parse::<u64>().ok())
        .fold(last, u64::max);

    let mut db = Db::open(dir.path()).unwrap();
    assert_eq!(db.first_name("parent").unwrap(), "child");
    let (entries, report) = db.load().unwrap();
    assert_eq!(report.skipped, 0);
    let held: std::collections::BTreeMap<Key, Entry> = entries.into_iter().collect();
    for n in 0..=last {
        let size = if n % 2 == 0 { 1 } else { 9 };
        for i in 0..size {
            let (key, entry) = object(&format!("{n}-{i}"), n + 1, &n.to_le_bytes());
            assert_eq!(
                held.get(&key),
                Some(&entry),
                "batch {n} was reported committed"
            );
        }
    }
    // Batches are atomic: the one the kill may have interrupted is whole or absent.
    let n = last + 1;
    let present = (0..9)
        .filter(|i| held.contains_key(&object(&format!("{n}-{i}"), n + 1, &[]).0))
        .count();
    assert!(present == 0 || present == if n % 2 == 0 { 1 } else { 9 });
    println!(
        "killed after batch {last} was reported; batch {n} {}",
        if present == 0 {
            "absent"
        } else {
            "present (committed, not yet reported)"
        }
    );
}

/// Commit latencies on this machine's disk. Run with
/// `cargo test --release -p shoal-agent persist::tests::commit_latency -- --ignored --nocapture`;
/// `SHOAL_PERSIST_BENCH_DIR` picks the filesystem (default: the system temp dir).
#[test]
#[ignore = "benchmark; run explicitly"]
fn commit_latency() {
    let dir = match std::env::var_os("SHOAL_PERSIST_BENCH_DIR") {
        Some(base) => {
            TempDir(PathBuf::from(base).join(format!("shoal-persist-bench-{}", std::process::id())))
        }
        None => TempDir::new("bench"),
    };
    let mut db = Db::open(dir.path()).unwrap();
    let value = vec![0x5A; 300];
    let summary = |name: &str, mut samples: Vec<Duration>| {
        samples.sort();
        let pct = |p: usize| samples[(samples.len() - 1) * p / 100];
        println!(
            "{name}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
            samples.len(),
            pct(50),
            pct(90),
            pct(99),
            samples[samples.len() - 1]
        );
    };
    // Pre-fill so the tree is not trivially small.
    for chunk in 0..20u64 {
        db.apply(upsert(
            (0..1000).map(|i| object(&format!("fill-{chunk}-{i}"), 1, &value)),
        ))
        .unwrap();
    }
    let single: Vec<Duration> = (0..300u64)
        .map(|n| {
            let t = Instant::now();
            db.apply(upsert([object(&format!("single-{n}"), n + 2, &value)]))
                .unwrap();
            t.elapsed()
        })
        .collect();
    summary("1-entry commit", single);
    let batch: Vec<Duration> = (0..30u64)
        .map(|n| {
            let t = Instant::now();
            db.apply(upsert(
                (0..1000).map(|i| object(&format!("batch-{n}-{i}"), n + 2, &value)),
            ))
            .unwrap();
            t.elapsed()
        })
        .collect();
    summary("1000-entry commit", batch);
    let t = Instant::now();
    let (entries, _) = db.load().unwrap();
    println!("load of {} entries: {:?}", entries.len(), t.elapsed());
    drop(db);
    let t = Instant::now();
    let db = Db::open(dir.path()).unwrap();
    println!(
        "reopen (integrity check) of {} entries: {:?}",
        entries.len(),
        t.elapsed()
    );
    drop(db);
}
