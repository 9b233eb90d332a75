//! A harness that runs real `shoal agent` processes on loopback, for the integration tests in
//! `tests/tests/`.
//!
//! Each agent gets its own data dir under a per-test temporary directory, listens on
//! 127.0.0.1 with ports chosen by the OS on first start (kept across restarts), and logs to
//! `agent.log` in its data dir; a failing test prints the tail of every agent's log.
//!
//! The `shoal` binary is `target/<profile>/shoal` next to the test executable (cargo builds it
//! because the agent crate has integration tests), or `$SHOAL_BIN`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod nemesis;

/// Path of the `shoal` binary under test.
pub fn shoal_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/shoal
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("shoal");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p shoal-agent` or set SHOAL_BIN",
        bin.display()
    );
    bin
}

/// Path of the `shoal-demo-http` test server (built by cargo for the demo crate's tests), or
/// `$SHOAL_DEMO_BIN`.
pub fn demo_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SHOAL_DEMO_BIN") {
        return PathBuf::from(bin);
    }
    let bin = shoal_bin().with_file_name("shoal-demo-http");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p shoal-demo` or set SHOAL_DEMO_BIN",
        bin.display()
    );
    bin
}

/// `shoal apply -f` of `yaml`, written to `<dir>/<name>.yaml`, through `agent`: its output, or
/// its error output.
pub fn apply_manifest(agent: &Agent, dir: &Path, name: &str, yaml: &str) -> Result<String, String> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
    agent.cli(&["apply", "-f", path.to_str().expect("UTF-8 path")])
}

/// Resident memory (kB) and cumulative CPU time (clock ticks, 100 a second on Linux) of a
/// process, from `/proc`.
pub fn rss_and_cpu(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss, utime + stime))
}

/// A new cluster key (`shoal keygen`) in `dir/cluster.key`, mode 0600; its path.
pub fn new_key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let key = Command::new(shoal_bin())
        .arg("keygen")
        .output()
        .expect("shoal keygen");
    assert!(key.status.success(), "shoal keygen failed");
    let path = dir.join("cluster.key");
    std::fs::write(&path, &key.stdout).expect("writing the key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("securing the key");
    path
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` with the last
/// error and the tails of `agents`' logs. Returns the time it took.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    agents: &[Agent],
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return start.elapsed(),
            Err(e) if start.elapsed() > timeout => {
                let logs: Vec<String> = agents
                    .iter()
                    .map(|a| format!("--- {} ---\n{}", a.name, a.log_tail(25)))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}: {e}\n{}",
                    logs.join("\n")
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A command that runs `program` in network namespace `netns` (`ip netns exec`, which execs
/// it: the child's pid is the program's), or in the test's own.
pub fn in_netns(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// An HTTP request made with curl in network namespace `ns`: the status (0 if none came) and
/// the body.
fn curl_in(
    ns: &str,
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> (u16, String) {
    use std::io::Write;
    let mut command = in_netns(Some(ns), "curl");
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    command
        .args(["-s", "-m", "10", "-X", method, "-w", "\n%{http_code}"])
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if body.is_some() {
        command.args(["--data-binary", "@-"]);
    }
    let Ok(mut child) = command.spawn() else {
        return (0, "cannot run curl".into());
    };
    if let (Some(mut stdin), Some(body)) = (child.stdin.take(), body) {
        let _ = stdin.write_all(body);
    }
    let out = child
        .wait_with_output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A tmpfs of a given size mounted for a test (a disk that fills up), unmounted when dropped.
/// Mounting needs root (CAP_SYS_ADMIN).
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created if needed).
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the filesystem: writes `filler` until the disk is full, then gives back `leave`
    /// bytes of it. Returns the filler's size.
    pub fn fill(&self, leave: u64) -> u64 {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).expect("creating the filler");
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = file.sync_all();
        let size = written.saturating_sub(leave);
        file.set_len(size).expect("shrinking the filler");
        size
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process still using it (an agent being killed) must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Whether the docker CLI reaches an engine (`docker info`).
pub fn docker_engine_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether a test that needs root may run: `true` as root; otherwise it prints why it is
/// skipped and returns `false`, or panics when `SHOAL_REQUIRE_ROOT=1` (CI sets it).
pub fn running_as_root(test: &str, why: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        return true;
    }
    if std::env::var("SHOAL_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
        panic!("{test}: needs root ({why}), and SHOAL_REQUIRE_ROOT=1");
    }
    eprintln!("{test}: skipped: needs root ({why}); set SHOAL_REQUIRE_ROOT=1 to fail instead");
    false
}

/// A per-test scratch directory, removed when dropped unless the test failed.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh directory named after the test.
    pub fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("shoal-test-{test}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("creating the scratch dir");
        Scratch { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One agent process.
pub struct Agent {
    /// Its node name.
    pub name: String,
    /// Its data dir.
    pub dir: PathBuf,
    /// Where its `agent.log` goes: the data dir, unless a test moves the data dir onto a
    /// filesystem of its own (see [`Tmpfs`]).
    pub log_dir: PathBuf,
    /// Gossip address (`127.0.0.1:port`), known once started.
    pub gossip: Option<String>,
    /// API address, known once started.
    pub api: Option<String>,
    /// The network namespace the agent runs in (`None`: the test's own).
    pub netns: Option<String>,
    /// The network namespace CLI commands and requests to its API run in.
    pub client_netns: Option<String>,
    /// The API token CLI commands and requests send (an API beyond loopback requires one).
    pub api_token: Option<String>,
    key_file: PathBuf,
    child: Option<Child>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (gossip {:?}, api {:?})",
            self.name, self.gossip, self.api
        )
    }
}

impl Agent {
    /// An agent that is not started yet.
    pub fn new(root: &Path, name: &str, key_file: &Path) -> Self {
        Agent {
            name: name.to_owned(),
            dir: root.join(name),
            log_dir: root.join(name),
            netns: None,
            client_netns: None,
            api_token: None,
            gossip: None,
            api: None,
            key_file: key_file.to_owned(),
            child: None,
        }
    }

    /// Starts the agent, joining `join` (if any), and waits until it reports its addresses.
    pub fn start(&mut self, join: &[String]) {
        self.start_with(join, &[]);
    }

    /// Like [`Agent::start`] with extra command-line arguments.
    pub fn start_with(&mut self, join: &[String], extra: &[&str]) {
        if let Err(e) = self.try_start_with(join, extra) {
            panic!("{e}");
        }
    }

    /// Like [`Agent::start_with`], returning what went wrong instead of panicking: an agent
    /// that exits at start, with what it said.
    pub fn try_start_with(&mut self, join: &[String], extra: &[&str]) -> Result<(), String> {
        assert!(self.child.is_none(), "{} already runs", self.name);
        std::fs::create_dir_all(&self.dir).expect("data dir");
        std::fs::create_dir_all(&self.log_dir).expect("log dir");
        let log_path = self.log_dir.join("agent.log");
        // Keep earlier runs' logs: restarts append.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("agent log");
        let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let listen = self.gossip.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let api = self.api.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let mut command = in_netns(self.netns.as_deref(), shoal_bin());
        command
            .arg("agent")
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(&listen)
            .arg("--api")
            .arg(&api)
            .arg("--cluster-key-file")
            .arg(&self.key_file)
            .args(extra)
            .env("SHOAL_LOG", "info,shoal=debug")
            .env_remove("SHOAL_CLUSTER_KEY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for peer in join {
            command.arg("--join").arg(peer);
        }
        self.child = Some(command.spawn().expect("starting shoal agent"));
        // Wait for the start-up line with the bound addresses.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let text = text.get(start_offset as usize..).unwrap_or("");
            if let Some(line) = text.lines().find(|l| l.contains("shoal agent starting")) {
                self.gossip = field(line, "listen");
                self.api = field(line, "api");
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("{} exited at start ({status}):\n{text}", self.name));
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start in 30 s:\n{text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A handle on the same agent for CLI commands and requests only (it cannot start or
    /// stop it): for threads that talk to it while the test controls it.
    pub fn client_of(&self) -> Agent {
        Agent {
            name: self.name.clone(),
            dir: self.dir.clone(),
            log_dir: self.log_dir.clone(),
            gossip: self.gossip.clone(),
            api: self.api.clone(),
            netns: self.netns.clone(),
            client_netns: self.client_netns.clone(),
            api_token: self.api_token.clone(),
            key_file: self.key_file.clone(),
            child: None,
        }
    }

    /// The process id, when running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The machine dies: kill -9 of the agent and of every pod process it started (a process
    /// runtime's pods otherwise survive their agent).
    pub fn kill_machine(&mut self) {
        let id = self.node_id();
        self.kill9();
        for pid in self.pod_pids() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        // Docker pods of this node, if any.
        if let Some(id) = id {
            let ids = docker_ids(&["ps", "-aq"], &format!("label=io.shoal.node={id}"));
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["kill", "--signal", "KILL"])
                    .args(&ids)
                    .output();
            }
        }
    }

    /// This agent's node id (hex), from its own API.
    pub fn node_id(&self) -> Option<String> {
        self.nodes()
            .ok()?
            .into_iter()
            .find(|(n, _, _)| *n == self.name)
            .map(|(_, _, uid)| uid)
    }

    /// Pids of the process runtime's pods, from their `pod.json` files.
    pub fn pod_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.dir.join("pods")) else {
            return pids;
        };
        for dir in dirs.flatten() {
            let Ok(text) = std::fs::read_to_string(dir.path().join("pod.json")) else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            collect_pids(&value, &mut pids);
        }
        pids
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM` ...).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits for the process to exit (after SIGTERM or `shoal leave`); returns whether it exited
    /// successfully within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return status.success();
                }
            } else {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A `shoal` command for CLI use against this agent: in its client namespace, with its
    /// token.
    fn client(&self) -> Command {
        let mut command = in_netns(self.client_netns.as_deref(), shoal_bin());
        match &self.api_token {
            Some(token) => command.env("SHOAL_API_TOKEN", token),
            None => command.env_remove("SHOAL_API_TOKEN"),
        };
        command
    }

    /// Runs a `shoal` CLI command against this agent's API.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let api = self.api.as_deref().expect("started");
        let out = self
            .client()
            .args(args)
            .arg("--api")
            .arg(api)
            .output()
            .expect("running shoal");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs a `shoal` CLI command against this agent's API: whether it succeeded, its
    /// standard output and its standard error.
    pub fn cli_full(&self, args: &[&str]) -> (bool, String, String) {
        let api = self.api.as_deref().expect("started");
        let out = self
            .client()
            .args(args)
            .arg("--api")
            .arg(api)
            .output()
            .expect("running shoal");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts a long-running `shoal` CLI command against this agent's API (`logs -f`,
    /// `get -w`): the child, and its standard output line by line as it comes.
    pub fn cli_stream(&self, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
        let api = self.api.as_deref().expect("started");
        let mut child = Command::new(shoal_bin())
            .args(args)
            .arg("--api")
            .arg(api)
            .stdout(Stdio::piped())
            .spawn()
            .expect("running shoal");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let _ = tx.send(line.unwrap_or_default());
            }
        });
        (child, rx)
    }

    /// `shoal get nodes -o json` as (name, membership, uid) triples.
    pub fn nodes(&self) -> Result<Vec<(String, String, String)>, String> {
        let text = self.cli(&["get", "nodes", "-o", "json"])?;
        let list: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok(list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| {
                        (
                            i["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                            i["status"]["membership"].as_str().unwrap_or("").to_owned(),
                            i["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The membership state this agent sees for `name`.
    pub fn sees(&self, name: &str) -> Option<String> {
        self.nodes()
            .ok()?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, state, _)| state)
    }

    /// HTTP request to this agent's API; returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        let url = format!("http://{}{path}", self.api.as_deref().expect("started"));
        if let Some(ns) = &self.client_netns {
            return curl_in(ns, method, &url, body, self.api_token.as_deref());
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let result = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            ("PUT", Some(b)) => agent.put(&url).send(b),
            ("POST", Some(b)) => agent.post(&url).send(b),
            _ => panic!("unsupported request {method} {path}"),
        };
        match result {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Writes `value` under object key `kind/namespace/name` into the saved state of this
    /// stopped agent, as an agent of another version (or a broken one) might have written it:
    /// the agent restores it at its next start and gossips it to the others. The entry is
    /// stamped now, by a writer id of all ones, so it wins over what the key held.
    pub fn plant_object(&self, kind: &str, namespace: &str, name: &str, value: &[u8]) {
        use shoal_gossip::{Entry, Hlc, Key, NodeId, ObjectKey, Version};
        assert!(self.child.is_none(), "{} must be stopped", self.name);
        let key = Key::Object(ObjectKey {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let hlc = Hlc {
            wall_ms,
            logical: 0,
        };
        let entry = Entry {
            version: Version::Object {
                hlc,
                writer: NodeId([0xff; 32]),
            },
            written_at: hlc,
            value: Some(value.to_vec()),
        };
        // The agent's `entries` table: postcard of the key to postcard of the entry.
        let table: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("entries");
        let db = redb::Database::open(self.dir.join("state.redb")).expect("opening state.redb");
        let tx = db.begin_write().expect("write transaction");
        {
            let mut entries = tx.open_table(table).expect("entries table");
            let k = postcard::to_stdvec(&key).expect("key encodes");
            let e = postcard::to_stdvec(&entry).expect("entry encodes");
            entries.insert(k.as_slice(), e.as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
    }

    /// The tail of this agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_dir.join("agent.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn collect_pids(value: &Value, out: &mut Vec<u32>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "pid" {
                    if let Some(pid) = v.as_u64() {
                        out.push(pid as u32);
                    }
                } else {
                    collect_pids(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_pids(v, out)),
        _ => {}
    }
}

/// Extracts `key=value` from a tracing line (values end at a space).
fn field(line: &str, key: &str) -> Option<String> {
    let pattern = format!("{key}=");
    let start = line.find(&pattern)? + pattern.len();
    let rest = &line[start..];
    let value = rest.split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

/// Ids that `docker <list...> --filter <filter>` prints (none when Docker is not there).
fn docker_ids(list: &[&str], filter: &str) -> Vec<String> {
    Command::new("docker")
        .args(list)
        .args(["--filter", filter])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A loopback service range of its own for each cluster of this process: `127.X.0.0/16`
/// with X in 128..=255 (clear of process pods' 127.64.0.0/10), never the default's 200.
fn unique_service_range() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut x = 128 + (std::process::id().wrapping_mul(37).wrapping_add(n * 11) % 128);
    if x == 200 {
        x = 201;
    }
    format!("127.{x}.0.0/16")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Docker runs the pods unless the agents were told otherwise (it is the default where
        // an engine answers).
        let docker = !self
            .extra
            .windows(2)
            .any(|w| w[0] == "--runtime" && w[1] != "docker");
        // Agents are killed (kill -9) as they drop, with their pods: process pods and Docker
        // containers would outlive them.
        for agent in &mut self.agents {
            agent.kill9();
            for pid in agent.pod_pids() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        if docker {
            self.docker_cleanup();
        }
        // Secret data the agents' pods had in RAM-backed storage, which their killed agents
        // cannot remove.
        let dirs: Vec<&Path> = self.agents.iter().map(|a| a.dir.as_path()).collect();
        remove_ram_dirs_of(&dirs);
    }
}

/// Removes the RAM-backed directories (`shoal-<id>` under `/dev/shm`, `/run` or
/// `$XDG_RUNTIME_DIR`, each naming its agent's data dir in its file `data-dir`) of the agents
/// with these data dirs.
pub fn remove_ram_dirs_of(data_dirs: &[&Path]) {
    let mut bases = vec![PathBuf::from("/dev/shm"), PathBuf::from("/run")];
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        bases.push(PathBuf::from(dir));
    }
    for base in bases {
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with("shoal-") {
                continue;
            }
            let Ok(owner) = std::fs::read_to_string(entry.path().join("data-dir")) else {
                continue;
            };
            if data_dirs.iter().any(|d| Path::new(owner.trim()) == *d) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Several agents forming a cluster.
pub struct Cluster {
    /// The agents, by index.
    pub agents: Vec<Agent>,
    /// The cluster key file they share.
    pub key_file: PathBuf,
    scratch: Scratch,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` agents: the first alone, the others joining it.
    pub fn start(test: &str, n: usize) -> Self {
        Self::start_with(test, n, &[])
    }

    /// Like [`Cluster::start`], every agent with extra arguments (kept for [`Cluster::add`]).
    /// Unless they name one, the cluster gets a service range of its own.
    pub fn start_with(test: &str, n: usize, extra: &[&str]) -> Self {
        Self::start_inner(test, n, extra, true)
    }

    /// Like [`Cluster::start_with`], leaving the service range to the agents' default (only
    /// one such cluster may run at a time on a machine).
    pub fn start_with_default_range(test: &str, n: usize, extra: &[&str]) -> Self {
        Self::start_inner(test, n, extra, false)
    }

    fn start_inner(test: &str, n: usize, extra: &[&str], own_range: bool) -> Self {
        let scratch = Scratch::new(test);
        let key_file = new_key_file(scratch.path());
        let mut extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        if own_range && !extra.iter().any(|a| a == "--service-range") {
            // Agents of one machine share service addresses (SO_REUSEPORT): clusters of tests
            // running at once would take each other's connections in one range.
            extra.push("--service-range".into());
            extra.push(unique_service_range());
        }
        let mut cluster = Cluster {
            agents: Vec::new(),
            key_file,
            scratch,
            extra,
        };
        for _ in 0..n {
            cluster.add();
        }
        // Formed: every agent lists every agent alive (so what a test applies next is placed
        // over all of them, not over whoever had heard of whom).
        let names = cluster.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let observers: Vec<usize> = (0..n).collect();
        cluster.wait_for("the cluster to form", Duration::from_secs(30), |c| {
            c.all_see(&observers, &names, "alive")
        });
        cluster
    }

    /// Starts one more agent joining the first; returns its index.
    pub fn add(&mut self) -> usize {
        let i = self.agents.len();
        let mut agent = Agent::new(self.scratch.path(), &format!("node-{i}"), &self.key_file);
        let join: Vec<String> = self
            .agents
            .first()
            .and_then(|a| a.gossip.clone())
            .into_iter()
            .collect();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        agent.start_with(&join, &extra);
        self.agents.push(agent);
        i
    }

    /// The cluster key's fingerprint (what the runtimes label pods and name networks with).
    pub fn key_fingerprint(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.agents.first()?.log_dir.join("agent.log")).ok()?;
        let line = log.lines().find(|l| l.contains("shoal agent starting"))?;
        field(line, "cluster_key")
    }

    /// Removes the Docker containers and network of this cluster's pods, if any.
    pub fn docker_cleanup(&self) {
        let Some(fp) = self.key_fingerprint() else {
            return;
        };
        let filter = format!("label=io.shoal.cluster={fp}");
        let containers = docker_ids(&["ps", "-aq"], &filter);
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&containers)
                .output();
        }
        // Every network of the cluster, duplicates included (removed by id).
        for id in docker_ids(&["network", "ls", "-q"], &filter) {
            let _ = Command::new("docker").args(["network", "rm", &id]).output();
        }
    }

    /// `shoal apply -f` of `yaml` (written to `<name>.yaml` in the scratch directory) through
    /// agent `via`: its output, or its error output.
    pub fn apply(&self, via: usize, name: &str, yaml: &str) -> Result<String, String> {
        apply_manifest(&self.agents[via], self.dir(), name, yaml)
    }

    /// The cluster's service range (`--service-range`).
    pub fn service_range(&self) -> String {
        self.extra
            .windows(2)
            .find(|w| w[0] == "--service-range")
            .map(|w| w[1].clone())
            .unwrap_or_default()
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` with the last
    /// error and the agents' logs. Returns the time it took.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Cluster) -> Result<(), String>,
    ) -> Duration {
        wait_until(what, timeout, &self.agents, || check(self))
    }

    /// Checks that every agent in `observers` sees every name in `names` in `state`.
    pub fn all_see(&self, observers: &[usize], names: &[&str], state: &str) -> Result<(), String> {
        for &o in observers {
            let nodes = self.agents[o].nodes()?;
            for name in names {
                match nodes.iter().find(|(n, _, _)| n == name) {
                    Some((_, s, _)) if s == state => {}
                    Some((_, s, _)) => {
                        return Err(format!(
                            "{} sees {name} as {s}, not {state}",
                            self.agents[o].name
                        ));
                    }
                    None => return Err(format!("{} does not list {name}", self.agents[o].name)),
                }
            }
        }
        Ok(())
    }

    /// Names of all agents.
    pub fn names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.clone()).collect()
    }
}

/// Every packet of every interface of the test's network namespace (loopback, where the
/// agents talk), read with a raw packet socket while it runs, searched for byte strings.
/// Needs root (`CAP_NET_RAW`).
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<CaptureReport>>,
}

/// What a [`Capture`] saw.
#[derive(Debug, Default, Clone)]
pub struct CaptureReport {
    /// Packets read.
    pub packets: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Packets holding one of the needles, by needle index.
    pub found: Vec<u64>,
}

impl Capture {
    /// Starts capturing, looking for each of `needles`.
    pub fn start(needles: Vec<Vec<u8>>) -> Result<Capture, String> {
        use std::io::Read as _;
        use std::sync::atomic::Ordering;
        const ETH_P_ALL: u16 = 0x0003;
        let socket = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(i32::from(ETH_P_ALL.to_be()))),
        )
        .map_err(|e| format!("opening a packet socket (root needed): {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let _ = socket.set_recv_buffer_size(16 << 20);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = CaptureReport {
                found: vec![0; needles.len()],
                ..CaptureReport::default()
            };
            let mut buf = vec![0u8; 1 << 16];
            let mut reader = &socket;
            while !stopping.load(Ordering::Relaxed) {
                let Ok(n) = reader.read(&mut buf) else {
                    continue;
                };
                report.packets += 1;
                report.bytes += n as u64;
                for (i, needle) in needles.iter().enumerate() {
                    if buf[..n]
                        .windows(needle.len())
                        .any(|w| w == needle.as_slice())
                    {
                        report.found[i] += 1;
                    }
                }
            }
            report
        });
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and says what it saw.
    pub fn finish(mut self) -> CaptureReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every file under `dir` (recursively; symbolic links are not followed).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

/// The files under `dir` (recursively, links not followed) whose bytes contain `needle`: to
/// look for a value that must not be written anywhere.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}
