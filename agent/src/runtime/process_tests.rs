//! Process runtime tests: what is particular to processes (their own 127.x addresses, process
//! groups, survival across agent restarts, log rotation, records kept in memory). The contract
//! all runtimes share is checked by the conformance suite.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::testing::demo_binary;
use super::*;

/// A data dir that kills every process it recorded and is removed when dropped (kept, with a
/// note, when the test failed).
pub(super) struct Scratch {
    dir: PathBuf,
    /// A RAM-backed directory of the test's own, for secret data ([`Scratch::with_ram`]).
    ram: Option<PathBuf>,
}

impl Scratch {
    pub(super) fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("shoal-rt-{test}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir, ram: None }
    }

    /// A scratch data dir and a RAM-backed directory of its own (under `/dev/shm` or
    /// `$XDG_RUNTIME_DIR`, whichever is tmpfs or ramfs); `None`, saying why, when the machine
    /// has none.
    pub(super) fn with_ram(test: &str) -> Option<Self> {
        let mut scratch = Scratch::new(test);
        let name = scratch.dir.file_name().unwrap().to_owned();
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .into_iter()
            .chain([PathBuf::from("/dev/shm")])
            .find(|b| volume::is_ram_backed(b).is_ok());
        let Some(base) = base else {
            eprintln!("skipping {test}: no RAM-backed directory (tmpfs or ramfs) on this machine");
            return None;
        };
        let ram = base.join(name);
        std::fs::create_dir_all(&ram).unwrap();
        scratch.ram = Some(ram);
        Some(scratch)
    }

    pub(super) fn config(&self) -> RuntimeConfig {
        let mut config = RuntimeConfig::new("cluster-1", "node-1", &self.dir);
        config.ram_dir = self.ram.clone();
        config
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Kill every group recorded in a pod.json, whatever state the test left.
        if let Ok(pods) = std::fs::read_dir(self.dir.join("pods")) {
            for pod in pods.flatten() {
                let Ok(text) = std::fs::read_to_string(pod.path().join("pod.json")) else {
                    continue;
                };
                let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                for c in json["containers"].as_array().into_iter().flatten() {
                    if let Some(pid) = c["pid"].as_i64() {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("test data kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // Secret data does not stay behind, even when the test failed.
        if let Some(ram) = &self.ram {
            let _ = std::fs::remove_dir_all(ram);
        }
    }
}

fn container(name: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: "unused".to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn pod(uid: &str, name: &str, containers: Vec<ContainerSpec>) -> PodSpec {
    PodSpec {
        uid: uid.to_string(),
        namespace: "default".to_string(),
        name: name.to_string(),
        spec_hash: format!("hash-{name}"),
        containers,
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        dns: None,
        volumes: Vec::new(),
        scratch: Vec::new(),
        host_paths: Vec::new(),
    }
}

fn demo() -> String {
    demo_binary()
        .expect("the demo binary")
        .display()
        .to_string()
}

/// A plain GET; `None` while nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

fn wait_for_http(addr: SocketAddr, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(answer) = http_get(addr, path) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "nothing answered at {addr}{path}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_until<R: Runtime>(
    rt: &R,
    what: &str,
    mut check: impl FnMut(&[PodInfo]) -> bool,
) -> Vec<PodInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pods = rt.list_pods().await.unwrap();
        if check(&pods) {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {pods:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn read_all(mut stream: LogStream) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_the_same_port_get_their_own_ips() {
    let scratch = Scratch::new("replicas");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut ips = Vec::new();
    for i in 0..2 {
        let mut c = container("web", &[&demo()]);
        c.env = vec![
            ("PORT".into(), port.to_string()),
            ("VERSION".into(), "v1".into()),
        ];
        let info = rt
            .start_pod(&pod(&format!("uid-web-{i}"), &format!("web-{i}"), vec![c]))
            .await
            .unwrap();
        let ip = info.ip.expect("a pod IP");
        assert!(
            matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 127 && v4 != std::net::Ipv4Addr::LOCALHOST)
        );
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    for (i, ip) in ips.iter().enumerate() {
        let (status, body) = wait_for_http(SocketAddr::new(*ip, port), "/");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!(
                "{{\"pod\":\"web-{i}\",\"namespace\":\"default\",\"node\":\"\",\"ip\":\"{ip}\",\"version\":\"v1\"}}\n"
            )
        );
    }
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(PodInfo::all_running), "{pods:#?}");
    assert_eq!(pods[0].spec_hash, "hash-web-0");

    // Logs captured: the start line and the request.
    let logs = read_all(rt.logs("uid-web-0", "web", false, None).await.unwrap()).await;
    assert!(
        logs.contains(&format!("listening on {}:{port}", ips[0])),
        "{logs}"
    );
    assert!(logs.contains("GET /"), "{logs}");
    let last = read_all(rt.logs("uid-web-0", "web", false, Some(1)).await.unwrap()).await;
    assert_eq!(last, "GET /\n");

    // A crash is reported with its exit code, and a restart brings it back on the same IP.
    let addr = SocketAddr::new(ips[1], port);
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "POST /exit?code=3 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    wait_until(&rt, "the crash", |pods| {
        pods.iter().any(|p| {
            p.uid == "uid-web-1"
                && matches!(&p.containers[0].state,
                    ContainerState::Exited { exit_code: Some(3), reason, .. } if reason == "Error")
        })
    })
    .await;
    rt.restart_container("uid-web-1", "web", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(wait_for_http(addr, "/healthz").0, 200);

    for uid in ["uid-web-0", "uid-web-1"] {
        rt.stop_pod(uid, Duration::from_secs(2)).await.unwrap();
        rt.remove_pod(uid).await.unwrap();
    }
    assert!(rt.list_pods().await.unwrap().is_empty());
    assert!(http_get(SocketAddr::new(ips[0], port), "/").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_terminates_then_kills_the_process_group() {
    let scratch = Scratch::new("stop");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    // The main process exits on SIGTERM; its child ignores SIGTERM and must be killed with the
    // group.
    let main = container(
        "main",
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; sh -c 'trap \"\" TERM; touch child.ready; exec sleep 1000' & \
             echo $! > child.pid; while true; do sleep 0.05; done",
        ],
    );
    rt.start_pod(&pod("uid-stop", "stopper", vec![main]))
        .await
        .unwrap();
    let dir = rt.pod_dir("uid-stop").join("containers/main");
    let child_pid = read_pid(&dir.join("child.pid"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("child.ready").exists() {
        assert!(Instant::now() < deadline, "the child never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pid_alive(child_pid));
    let started = Instant::now();
    rt.stop_pod("uid-stop", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "SIGTERM should have ended it well before the grace period"
    );
    assert!(!pid_alive(child_pid), "the child in the group survived");
    let pods = rt.list_pods().await.unwrap();
    assert!(
        matches!(
            &pods[0].containers[0].state,
            ContainerState::Exited {
                exit_code: Some(7),
                ..
            }
        ),
        "{pods:#?}"
    );

    // One that ignores SIGTERM is killed after the grace period.
    let stubborn = container(
        "stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo $$ > ready; while true; do sleep 0.05; done",
        ],
    );
    rt.start_pod(&pod("uid-stubborn", "stubborn", vec![stubborn]))
        .await
        .unwrap();
    read_pid(&rt.pod_dir("uid-stubborn").join("containers/stubborn/ready"));
    let started = Instant::now();
    rt.stop_pod("uid-stubborn", Duration::from_millis(500))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    let pods = rt.list_pods().await.unwrap();
    let p = pods.iter().find(|p| p.uid == "uid-stubborn").unwrap();
    assert!(
        matches!(
            &p.containers[0].state,
            ContainerState::Exited {
                exit_code: Some(137),
                ..
            }
        ),
        "{p:#?}"
    );
    rt.remove_pod("uid-stubborn").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_an_agent_restart() {
    let scratch = Scratch::new("restart");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let a = container("a", &["sh", "-c", "echo $$ > main.pid; exec sleep 1000"]);
    let b = container("b", &["sleep", "1000"]);
    let before = rt
        .start_pod(&pod("uid-keep", "keeper", vec![a, b]))
        .await
        .unwrap();
    let pid = read_pid(&rt.pod_dir("uid-keep").join("containers/a/main.pid"));
    drop(rt); // the agent goes away; its children stay

    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].ip, before.ip);
    assert_eq!(pods[0].name, "keeper");
    assert!(pods[0].all_running(), "{pods:#?}");

    // Another agent (other node id) on the same data dir sees nothing of it.
    let other =
        ProcessRuntime::new(RuntimeConfig::new("cluster-1", "node-2", &scratch.dir)).unwrap();
    assert!(other.list_pods().await.unwrap().is_empty());

    // A survivor that dies is not our child any more: exited, code unknown.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pods = wait_until(&rt, "the survivor's death", |pods| {
        matches!(pods[0].containers[0].state, ContainerState::Exited { .. })
    })
    .await;
    match &pods[0].containers[0].state {
        ContainerState::Exited {
            exit_code,
            reason,
            message,
            ..
        } => {
            assert_eq!(*exit_code, None);
            assert_eq!(reason, "Unknown");
            assert!(
                message
                    .as_deref()
                    .unwrap_or("")
                    .contains("exit code is unknown")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pods[0].containers[1].state,
        ContainerState::Running { .. }
    ));
    // And the new runtime stops the other survivor.
    rt.stop_pod("uid-keep", Duration::from_secs(2))
        .await
        .unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert!(
        matches!(pods[0].containers[1].state, ContainerState::Exited { .. }),
        "{pods:#?}"
    );
    rt.remove_pod("uid-keep").await.unwrap();
    assert!(!rt.pod_dir("uid-keep").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_logs_follow_and_errors() {
    let scratch = Scratch::new("exec");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let c = container(
        "app",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done; exit 4",
        ],
    );
    let mut c2 = container("sidecar", &["sleep", "1000"]);
    c2.env = vec![("GREETING".into(), "hello".into())];
    rt.start_pod(&pod("uid-exec", "exec", vec![c, c2]))
        .await
        .unwrap();

    // Follow ends when the process does, with everything it wrote.
    let followed = tokio::time::timeout(
        Duration::from_secs(10),
        read_all(rt.logs("uid-exec", "app", true, None).await.unwrap()),
    )
    .await
    .expect("follow ends when the container does");
    assert_eq!(followed, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    let tail = read_all(rt.logs("uid-exec", "app", false, Some(2)).await.unwrap()).await;
    assert_eq!(tail, "line 4\nline 5\n");

    let result = rt
        .exec(
            "uid-exec",
            "sidecar",
            &[
                "sh".into(),
                "-c".into(),
                "echo $GREETING $POD_NAME $HOSTNAME; pwd; exit 3".into(),
            ],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(result.exit_code, 3);
    let out = String::from_utf8_lossy(&result.output);
    assert!(out.starts_with("hello exec exec\n"), "{out}");
    assert!(out.trim_end().ends_with("containers/sidecar"), "{out}");

    let started = Instant::now();
    let err = rt
        .exec(
            "uid-exec",
            "sidecar",
            &["sleep".into(), "5".into()],
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::ExecTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The app container has exited (code 4): no exec there.
    wait_until(&rt, "the app's exit", |pods| {
        matches!(
            pods[0].containers[0].state,
            ContainerState::Exited {
                exit_code: Some(4),
                ..
            }
        )
    })
    .await;
    let err = rt
        .exec("uid-exec", "app", &["true".into()], Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::ContainerNotRunning { .. }),
        "{err}"
    );

    // Errors that say what is wrong.
    let err = rt
        .start_pod(&pod("uid-nocmd", "nocmd", vec![container("web", &[])]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "container \"web\": the process runtime needs a command (images are not run without Docker)"
    );
    let err = rt
        .start_pod(&pod(
            "uid-bad",
            "bad",
            vec![
                container("ok", &["sleep", "1000"]),
                container("bad", &["/no/such/program"]),
            ],
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("container \"bad\": cannot run \"/no/such/program\""),
        "{err}"
    );
    assert!(
        !rt.pod_dir("uid-bad").exists(),
        "a failed start leaves nothing behind"
    );

    rt.remove_pod("uid-exec").await.unwrap();
    assert!(rt.list_pods().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_capped_and_rotated() {
    let scratch = Scratch::new("rotate");
    let mut config = scratch.config();
    config.log_max_bytes = 4096;
    let rt = ProcessRuntime::new(config).unwrap();
    // ~20 KiB of output, then idle.
    let c = container(
        "noisy",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 400 ]; do echo \"line $i 0123456789012345678901234567890123456789\"; i=$((i+1)); done; exec sleep 1000",
        ],
    );
    rt.start_pod(&pod("uid-noisy", "noisy", vec![c]))
        .await
        .unwrap();
    let log = rt.log_path("uid-noisy", "noisy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.with_extension("log.1").exists() {
        assert!(Instant::now() < deadline, "the log was never rotated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(std::fs::metadata(&log).unwrap().len() <= 4096);
    let tail = read_all(rt.logs("uid-noisy", "noisy", false, Some(1)).await.unwrap()).await;
    assert!(tail.starts_with("line 399 "), "{tail}");
    rt.remove_pod("uid-noisy").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_the_records_kept_in_memory_and_the_files_stay_the_durable_copy() {
    let scratch = Scratch::new("memory");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    rt.start_pod(&pod(
        "uid-mem",
        "mem",
        vec![container("a", &["sleep", "1000"])],
    ))
    .await
    .unwrap();
    let file = rt.pod_dir("uid-mem").join("pod.json");
    let durable = std::fs::read(&file).unwrap();
    // The file is not read again while the runtime runs.
    std::fs::write(&file, b"not json").unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods.len(), 1);
    assert!(pods[0].all_running());
    // A change is written through: the file is whole again, and a new runtime reads it.
    rt.restart_container("uid-mem", "a", Duration::from_secs(1))
        .await
        .unwrap();
    assert_ne!(std::fs::read(&file).unwrap(), b"not json");
    assert_ne!(
        std::fs::read(&file).unwrap(),
        durable,
        "the restart is recorded"
    );
    drop(rt);
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods.len(), 1);
    assert!(pods[0].all_running(), "{pods:#?}");
    rt.remove_pod("uid-mem").await.unwrap();
    assert!(rt.list_pods().await.unwrap().is_empty());
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    assert!(rt.list_pods().await.unwrap().is_empty());
}

/// Spawns `script` as an orphan an agent from before the start gate could leave: in a
/// session of its own (`setsid`), its output in `log`, working in `workdir`; returns its pid.
fn orphan(script: &str, workdir: &Path, log: &Path) -> i32 {
    std::fs::create_dir_all(workdir).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = std::process::Command::new("setsid")
        .args(["sh", "-c", script])
        .current_dir(workdir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning an orphan");
    // Reaped in the background, as init would once its parent is gone.
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    pid
}

fn wait_dead(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_an_interrupted_start_are_killed_and_removed_when_the_agent_comes_back() {
    let scratch = Scratch::new("leftovers");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();

    // What an agent killed between starting a container and writing pod.json left: a pod
    // directory without a record, its process running on in a session of its own, with a
    // child that left the session too and writes nowhere (only its working directory ties it
    // to the pod).
    let bare = rt.pod_dir("uid-bare");
    let workdir = bare.join("containers/web");
    let bare_pid = orphan(
        "setsid sh -c 'echo $$ > grandchild.pid; exec sleep 1000' >/dev/null 2>&1 </dev/null & \
         exec sleep 1000",
        &workdir,
        &bare.join("web.log"),
    );
    let grandchild = read_pid(&workdir.join("grandchild.pid"));

    // What an agent killed between starting a pod's second container and recording it left:
    // a record with the first container only, and the second one's process unrecorded.
    let a = container("a", &["sleep", "1000"]);
    let b = container("b", &["sh", "-c", "echo $$ > b.pid; exec sleep 1000"]);
    rt.start_pod(&pod("uid-half", "half", vec![a, b]))
        .await
        .unwrap();
    let b_pid = read_pid(&rt.pod_dir("uid-half").join("containers/b/b.pid"));
    let pods = rt.list_pods().await.unwrap();
    let a_pid: i32 = pods[0].containers[0].runtime_id.parse().unwrap();
    drop(rt);
    let file = scratch.dir.join("pods/uid-half/pod.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for field in ["pid", "start_ticks", "started_at_ms"] {
        record["containers"][1][field] = serde_json::Value::Null;
    }
    std::fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();

    // A removal interrupted after its record went: a directory and nothing running.
    std::fs::create_dir_all(scratch.dir.join("pods/uid-removed/containers/x")).unwrap();
    // Not a pod of this agent: another node's record on the same data dir stays.
    let other =
        ProcessRuntime::new(RuntimeConfig::new("cluster-1", "node-2", &scratch.dir)).unwrap();
    other
        .start_pod(&pod(
            "uid-other",
            "other",
            vec![container("o", &["sleep", "1000"])],
        ))
        .await
        .unwrap();

    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let recovery = rt.recover().await.unwrap();
    assert_eq!(
        recovery.removed,
        ["uid-bare", "uid-half", "uid-removed"],
        "{recovery:?}"
    );
    for (pid, what) in [
        (bare_pid, "an orphan in its own session"),
        (grandchild, "its child in another session"),
        (a_pid, "a recorded container of an incomplete pod"),
        (b_pid, "an unrecorded container"),
    ] {
        wait_dead(pid, what);
    }
    assert!(recovery.killed >= 4, "{recovery:?}");
    for uid in ["uid-bare", "uid-half", "uid-removed"] {
        assert!(!rt.pod_dir(uid).exists(), "{uid} is left");
    }
    assert!(rt.list_pods().await.unwrap().is_empty());
    assert_eq!(other.list_pods().await.unwrap().len(), 1);
    other.remove_pod("uid-other").await.unwrap();

    // And each pod can be created again, under the same uid.
    for uid in ["uid-bare", "uid-half"] {
        rt.start_pod(&pod(uid, "again", vec![container("c", &["sleep", "1000"])]))
            .await
            .unwrap_or_else(|e| panic!("creating {uid} again: {e}"));
    }
    assert_eq!(rt.list_pods().await.unwrap().len(), 2);
    // Recovering again finds nothing to do.
    assert_eq!(rt.recover().await.unwrap(), Recovery::default());
    for uid in ["uid-bare", "uid-half"] {
        rt.remove_pod(uid).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_never_runs_before_its_pid_is_recorded() {
    let scratch = Scratch::new("gate");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let marker = scratch.dir.join("ran");
    let script = format!("touch {}; exec sleep 1000", marker.display());
    // Killed after making the process, before writing the record: the process ends at its
    // gate, the program never ran.
    rt.crash_at(CrashPoint::StartAfterCreate(0));
    assert!(
        rt.start_pod(&pod(
            "uid-gate",
            "gate",
            vec![container("c", &["sh", "-c", &script])]
        ))
        .await
        .is_err()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rt.processes_tied_to("uid-gate").is_empty() {
        assert!(Instant::now() < deadline, "the held process did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!marker.exists(), "the program ran unrecorded");
    // Released once recorded: the same pod runs.
    rt.start_pod(&pod(
        "uid-gate",
        "gate",
        vec![container("c", &["sh", "-c", &script])],
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the program never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.remove_pod("uid-gate").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_gate_leaves_the_environment_and_arguments_as_given() {
    let scratch = Scratch::new("gate-env");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let plain = container("plain", &["env"]);
    let mut with_pwd = container("pwd", &["env"]);
    with_pwd.env = vec![("PWD".into(), "/somewhere/else".into())];
    let args = container(
        "args",
        &["sh", "-c", "echo \"$0|$1|$2\"", "zero", "one two"],
    );
    rt.start_pod(&pod("uid-env", "env", vec![plain, with_pwd, args]))
        .await
        .unwrap();
    wait_until(&rt, "every container done", |pods| {
        pods[0]
            .containers
            .iter()
            .all(|c| matches!(c.state, ContainerState::Exited { .. }))
    })
    .await;
    let log = |c: &str| std::fs::read_to_string(rt.log_path("uid-env", c)).unwrap();
    let env = log("plain");
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        // What bash adds when it is /bin/sh (dash adds nothing).
        .filter(|k| !matches!(*k, "SHLVL" | "_"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "HOME",
            "HOSTNAME",
            "PATH",
            "POD_IP",
            "POD_NAME",
            "POD_NAMESPACE"
        ],
        "{env}"
    );
    assert!(
        log("pwd").lines().any(|l| l == "PWD=/somewhere/else"),
        "{}",
        log("pwd")
    );
    assert_eq!(log("args"), "zero|one two|\n");
    rt.remove_pod("uid-env").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_directories_and_files_are_the_agent_user_s_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = Scratch::new("modes");
    let mut config = scratch.config();
    config.log_max_bytes = 1024;
    // What an older agent left: a world-readable pods directory.
    std::fs::create_dir_all(scratch.dir.join("pods")).unwrap();
    std::fs::set_permissions(
        scratch.dir.join("pods"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let rt = ProcessRuntime::new(config).unwrap();
    let c = container(
        "talk",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100 ]; do echo \"line $i of something secret\"; i=$((i+1)); done; exec sleep 1000",
        ],
    );
    rt.start_pod(&pod("uid-modes", "modes", vec![c]))
        .await
        .unwrap();
    let log = rt.log_path("uid-modes", "talk");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.with_extension("log.1").exists() {
        assert!(Instant::now() < deadline, "the log was never rotated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let pod_dir = log.parent().unwrap().to_path_buf();
    assert_eq!(mode(&scratch.dir.join("pods")), 0o700, "pods/");
    assert_eq!(mode(&pod_dir), 0o700, "{}", pod_dir.display());
    assert_eq!(mode(&log), 0o600, "{}", log.display());
    assert_eq!(mode(&log.with_extension("log.1")), 0o600, "rotated log");
    assert_eq!(mode(&pod_dir.join("pod.json")), 0o600, "pod.json");
    rt.remove_pod("uid-modes").await.unwrap();
}

fn file(path: &str, data: &str, mode: u32) -> VolumeFile {
    VolumeFile {
        path: path.to_string(),
        data: data.as_bytes().to_vec(),
        mode,
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The environment of a running process, from `/proc/<pid>/environ`.
/// A process's environment, once it is the container's: between the fork and the exec the
/// child still has the test's own (without `POD_NAME`, which the runtime always sets).
fn environ_of(pid: &str) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env: BTreeMap<String, String> = raw
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        if env.contains_key("POD_NAME") || Instant::now() > deadline {
            return env;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The files under `dir` (links not followed) whose content holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if kind.is_file() {
            let data = std::fs::read(&path).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

/// Waits until the file holds `expect`.
async fn wait_for_content(path: &Path, expect: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now == expect {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {now:?}, not {expect:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_written_told_in_variables_updated_live_and_removed() {
    let Some(scratch) = Scratch::with_ram("volumes") else {
        return;
    };
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    // The main container copies what it reads through its variable, again and again.
    let mut main = container(
        "main",
        &[
            "sh",
            "-c",
            "while true; do cat \"$SHOAL_VOLUME_APP_CONFIG/app.conf\" > seen.tmp && mv seen.tmp seen; sleep 0.02; done",
        ],
    );
    main.mounts = vec![
        Mount {
            volume: "app-config".into(),
            mount_path: "/etc/app".into(),
            read_only: true,
            sub_path: None,
        },
        Mount {
            volume: "token".into(),
            mount_path: "/etc/token".into(),
            read_only: true,
            sub_path: None,
        },
    ];
    let mut side = container("side", &["sleep", "1000"]);
    side.mounts = vec![Mount {
        volume: "app-config".into(),
        mount_path: "/etc/key".into(),
        read_only: false,
        sub_path: Some("dir/key".into()),
    }];
    let mut spec = pod("uid-vol", "vol", vec![main, side]);
    spec.volumes = vec![
        VolumeSpec {
            name: "app-config".into(),
            sensitive: false,
            files: vec![file("app.conf", "v1", 0o644), file("dir/key", "k1", 0o600)],
        },
        VolumeSpec {
            name: "token".into(),
            sensitive: true,
            files: vec![file("token", "s3cr3t-volume", 0o400)],
        },
    ];
    let info = rt.start_pod(&spec).await.unwrap();

    // Where they are: on disk in the pod's directory, the secret in RAM-backed storage.
    let config_dir = PathBuf::from(&info.volume_dirs["app-config"]);
    let token_dir = PathBuf::from(&info.volume_dirs["token"]);
    assert_eq!(info.volume_dirs.len(), 2);
    assert_eq!(config_dir, rt.pod_dir("uid-vol").join("volumes/app-config"));
    let ram_pod = rt.ram_pod_dir("uid-vol").unwrap();
    assert!(ram_pod.starts_with(scratch.ram.as_ref().unwrap()));
    assert_eq!(token_dir, ram_pod.join("volumes/token"));
    volume::is_ram_backed(&token_dir).unwrap();
    assert!(files_holding(&scratch.dir, b"s3cr3t-volume").is_empty());
    // The files, with their modes; the directories above the secret are the agent's only.
    assert_eq!(
        std::fs::read_to_string(config_dir.join("app.conf")).unwrap(),
        "v1"
    );
    assert_eq!(mode_of(&config_dir.join("app.conf")), 0o644);
    assert_eq!(mode_of(&config_dir.join("dir/key")), 0o600);
    assert_eq!(
        std::fs::read_to_string(token_dir.join("token")).unwrap(),
        "s3cr3t-volume"
    );
    assert_eq!(mode_of(&token_dir.join("token")), 0o400);
    for dir in [
        ram_pod.parent().unwrap().parent().unwrap(),
        ram_pod.as_path(),
        &ram_pod.join("volumes"),
    ] {
        assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
    }
    // pod.json keeps the volumes' names, not their files.
    let record = std::fs::read_to_string(rt.pod_dir("uid-vol").join("pod.json")).unwrap();
    assert!(record.contains("app-config") && !record.contains("\"app.conf\""));

    // The variables, as the processes have them.
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods[0].volume_dirs, info.volume_dirs);
    let main_env = environ_of(&pods[0].containers[0].runtime_id);
    assert_eq!(
        main_env["SHOAL_VOLUME_APP_CONFIG"],
        config_dir.display().to_string()
    );
    assert_eq!(
        main_env["SHOAL_VOLUME_TOKEN"],
        token_dir.display().to_string()
    );
    let side_env = environ_of(&pods[0].containers[1].runtime_id);
    assert_eq!(
        side_env["SHOAL_VOLUME_APP_CONFIG"],
        config_dir.join("dir/key").display().to_string()
    );
    assert!(!side_env.contains_key("SHOAL_VOLUME_TOKEN"));
    assert_eq!(process::volume_env_name("a-b.c"), "SHOAL_VOLUME_A_B_C");
    let seen = rt.pod_dir("uid-vol").join("containers/main/seen");
    wait_for_content(&seen, "v1").await;

    // An update: the running process reads the new content.
    let mut update = spec.volumes[0].clone();
    update.files[0] = file("app.conf", "v2", 0o644);
    rt.update_volume("uid-vol", &update).await.unwrap();
    wait_for_content(&seen, "v2").await;
    assert_eq!(
        std::fs::read_to_string(config_dir.join("dir/key")).unwrap(),
        "k1"
    );
    // Unchanged: nothing written.
    let data = std::fs::read_link(config_dir.join("..data")).unwrap();
    rt.update_volume("uid-vol", &update).await.unwrap();
    assert_eq!(std::fs::read_link(config_dir.join("..data")).unwrap(), data);
    // The secret one too, in RAM-backed storage.
    let mut token = spec.volumes[1].clone();
    token.files[0] = file("token", "s3cr3t-rotated", 0o400);
    rt.update_volume("uid-vol", &token).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(token_dir.join("token")).unwrap(),
        "s3cr3t-rotated"
    );
    assert!(files_holding(&scratch.dir, b"s3cr3t-rotated").is_empty());
    // What cannot be updated.
    let mut flipped = update.clone();
    flipped.sensitive = true;
    let err = rt.update_volume("uid-vol", &flipped).await.unwrap_err();
    assert!(err.to_string().contains("is not sensitive"), "{err}");
    let mut unknown = update.clone();
    unknown.name = "other".into();
    let err = rt.update_volume("uid-vol", &unknown).await.unwrap_err();
    assert!(
        err.to_string().contains("no volume named \"other\""),
        "{err}"
    );
    let err = rt.update_volume("uid-none", &update).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let mut bad = update.clone();
    bad.files.push(file("../escape", "x", 0o644));
    let err = rt.update_volume("uid-vol", &bad).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidSpec(_)), "{err}");

    // A sub path that is not in the volume: the pod does not start, nothing is left.
    let mut missing = spec.clone();
    missing.uid = "uid-missing".into();
    missing.containers[1].mounts[0].sub_path = Some("nope".into());
    let err = rt.start_pod(&missing).await.unwrap_err();
    assert!(err.to_string().contains("not in volume"), "{err}");
    assert!(!rt.pod_dir("uid-missing").exists());
    assert!(!rt.ram_pod_dir("uid-missing").unwrap().exists());

    // A uid no pod can have names nothing to remove.
    std::fs::create_dir_all(scratch.dir.join("outside")).unwrap();
    rt.remove_pod("../outside").await.unwrap();
    assert!(scratch.dir.join("outside").exists());

    // Removal takes the volumes, on disk and in RAM.
    rt.stop_pod("uid-vol", Duration::ZERO).await.unwrap();
    rt.remove_pod("uid-vol").await.unwrap();
    assert!(!config_dir.exists());
    assert!(!ram_pod.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_variables_never_reach_the_disk_and_survive_an_agent_restart() {
    let Some(scratch) = Scratch::with_ram("secret-env") else {
        return;
    };
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let mut c = container("app", &["sleep", "1000"]);
    c.env = vec![
        // Shadowed by the later entry: never used, so not kept anywhere either.
        ("PLAIN".into(), "s3cr3t-shadowed".into()),
        ("PLAIN".into(), "visible".into()),
        ("TOKEN".into(), "s3cr3t-env-value".into()),
        ("MY_IP".into(), String::new()),
    ];
    c.sensitive_env = vec!["TOKEN".into()];
    c.pod_ip_env = vec!["MY_IP".into()];
    let spec = pod("uid-env", "env", vec![c]);
    assert!(!format!("{spec:?}").contains("s3cr3t-env-value"));
    let info = rt.start_pod(&spec).await.unwrap();
    let ip = info.ip.unwrap().to_string();
    let env = environ_of(&info.containers[0].runtime_id);
    assert_eq!(env["TOKEN"], "s3cr3t-env-value");
    assert_eq!(env["PLAIN"], "visible");
    assert_eq!(
        (env["MY_IP"].as_str(), env["POD_IP"].as_str()),
        (ip.as_str(), ip.as_str())
    );
    // An exec has it too.
    let out = rt
        .exec(
            "uid-env",
            "app",
            &["sh".into(), "-c".into(), "printf %s \"$TOKEN\"".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(out.output, b"s3cr3t-env-value");

    // Not in pod.json, nowhere under the data dir; in the pod's RAM-backed directory only.
    let record = std::fs::read_to_string(rt.pod_dir("uid-env").join("pod.json")).unwrap();
    assert!(
        record.contains("\"TOKEN\"") && record.contains("visible"),
        "{record}"
    );
    for secret in [&b"s3cr3t-env-value"[..], b"s3cr3t-shadowed"] {
        let leaks = files_holding(&scratch.dir, secret);
        assert!(leaks.is_empty(), "a secret is on disk in {leaks:?}");
    }
    let kept = rt.ram_pod_dir("uid-env").unwrap().join("env.json");
    assert_eq!(mode_of(&kept), 0o600);
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap()
            .contains("s3cr3t-env-value")
    );

    // An agent restart: the container restarts with its secret.
    drop(rt);
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    rt.recover().await.unwrap();
    rt.restart_container("uid-env", "app", Duration::ZERO)
        .await
        .unwrap();
    let pods = rt.list_pods().await.unwrap();
    let env = environ_of(&pods[0].containers[0].runtime_id);
    assert_eq!(env["TOKEN"], "s3cr3t-env-value");

    // Lost from RAM (the machine rebooted): a restart after an agent restart says why.
    drop(rt);
    std::fs::remove_file(&kept).unwrap();
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let err = rt
        .restart_container("uid-env", "app", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Secret(_)), "{err:?}");
    assert!(
        err.to_string().contains("gone from RAM-backed storage"),
        "{err}"
    );
    rt.stop_pod("uid-env", Duration::ZERO).await.unwrap();

    // The RAM-backed directory of a pod that is gone is removed when the agent starts.
    let ghost = rt.ram_pod_dir("uid-ghost").unwrap().join("volumes/x");
    std::fs::create_dir_all(&ghost).unwrap();
    rt.remove_pod("uid-env").await.unwrap();
    assert!(!rt.ram_pod_dir("uid-env").unwrap().exists());
    drop(rt);
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    rt.recover().await.unwrap();
    assert!(!rt.ram_pod_dir("uid-ghost").unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_data_never_falls_back_to_disk() {
    let scratch = Scratch::new("no-ram");
    let mut config = scratch.config();
    // A directory on disk, named as the RAM-backed one: refused.
    config.ram_dir = Some(scratch.dir.join("not-ram"));
    std::fs::create_dir_all(scratch.dir.join("not-ram")).unwrap();
    if volume::is_ram_backed(&scratch.dir).is_ok() {
        eprintln!("skipping: the temporary directory is RAM-backed");
        return;
    }
    let rt = ProcessRuntime::new(config).unwrap();
    let mut c = container("app", &["sleep", "1000"]);
    c.env = vec![("TOKEN".into(), "s3cr3t-nowhere".into())];
    c.sensitive_env = vec!["TOKEN".into()];
    let err = rt
        .start_pod(&pod("uid-env", "env", vec![c.clone()]))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Secret(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("sensitive environment variables") && text.contains("not tmpfs or ramfs"),
        "{text}"
    );
    let mut with_volume = pod("uid-vol", "vol", vec![container("app", &["sleep", "1000"])]);
    with_volume.volumes = vec![VolumeSpec {
        name: "token".into(),
        sensitive: true,
        files: vec![file("token", "s3cr3t-nowhere", 0o400)],
    }];
    let err = rt.start_pod(&with_volume).await.unwrap_err();
    assert!(err.to_string().contains("volume \"token\""), "{err}");
    assert!(rt.list_pods().await.unwrap().is_empty());
    assert!(files_holding(&scratch.dir, b"s3cr3t-nowhere").is_empty());
    assert!(!rt.pod_dir("uid-env").exists() && !rt.pod_dir("uid-vol").exists());
}

/// How many lines `path` has (0 when it is missing).
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn wait_for_lines(path: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_in(path) < n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} lines in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_volumes_are_writable_kept_across_restarts_and_removed_with_the_pod() {
    let Some(scratch) = Scratch::with_ram("scratch-vol") else {
        return;
    };
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let mut main = container(
        "main",
        &[
            "sh",
            "-c",
            "echo run >> \"$SHOAL_VOLUME_WORK/runs\"; echo fast > \"$SHOAL_VOLUME_FAST/f\"; echo sub > \"$SHOAL_VOLUME_PART/f\"; exec sleep 1000",
        ],
    );
    main.mounts = ["work", "fast"]
        .into_iter()
        .map(|name| Mount {
            volume: name.into(),
            mount_path: format!("/{name}"),
            ..Default::default()
        })
        .chain([Mount {
            volume: "part".into(),
            mount_path: "/part".into(),
            sub_path: Some("a/b".into()),
            ..Default::default()
        }])
        .collect();
    let mut spec = pod("uid-scratch", "scratch", vec![main]);
    spec.scratch = vec![
        ScratchVolume {
            name: "work".into(),
            memory: false,
            size_limit: Some(1000),
        },
        ScratchVolume {
            name: "fast".into(),
            memory: true,
            size_limit: None,
        },
        ScratchVolume {
            name: "part".into(),
            memory: false,
            size_limit: None,
        },
    ];
    let info = rt.start_pod(&spec).await.unwrap();

    // Where they are: on disk under the pod's directory; in RAM-backed storage for memory.
    let work = PathBuf::from(&info.volume_dirs["work"]);
    let fast = PathBuf::from(&info.volume_dirs["fast"]);
    let part = PathBuf::from(&info.volume_dirs["part"]);
    assert_eq!(work, rt.pod_dir("uid-scratch").join("scratch/work"));
    assert_eq!(
        fast,
        rt.ram_pod_dir("uid-scratch").unwrap().join("scratch/fast")
    );
    volume::is_ram_backed(&fast).unwrap();
    assert_eq!(mode_of(&work), 0o777);
    assert_eq!(mode_of(&fast), 0o777);
    wait_for_lines(&work.join("runs"), 1).await;
    wait_for_lines(&fast.join("f"), 1).await;
    // A sub path is made inside the scratch volume, and the variable names it.
    wait_for_lines(&part.join("a/b/f"), 1).await;
    assert_eq!(mode_of(&part.join("a/b")), 0o777);

    // Only limited scratch volumes are measured.
    assert_eq!(info.scratch_bytes.keys().collect::<Vec<_>>(), ["work"]);
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods[0].scratch_bytes["work"], 4);
    std::fs::create_dir(work.join("d")).unwrap();
    std::fs::write(work.join("d/big"), vec![0u8; 990]).unwrap();
    std::os::unix::fs::symlink("/etc", work.join("etc")).unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods[0].scratch_bytes["work"], 994);
    std::fs::write(work.join("d/more"), vec![0u8; 100]).unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods[0].scratch_bytes["work"], 1001, "capped past the limit");
    std::fs::remove_file(work.join("d/more")).unwrap();

    // Kept across a container restart: the restarted process appends.
    rt.restart_container("uid-scratch", "main", Duration::from_millis(200))
        .await
        .unwrap();
    wait_for_lines(&work.join("runs"), 2).await;
    assert_eq!(std::fs::read(work.join("d/big")).unwrap().len(), 990);

    // And across an agent restart.
    drop(rt);
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods[0].volume_dirs["work"], work.display().to_string());
    assert_eq!(lines_in(&work.join("runs")), 2);
    assert!(fast.join("f").exists());

    // Removed with the pod.
    rt.stop_pod("uid-scratch", Duration::from_millis(200))
        .await
        .unwrap();
    rt.remove_pod("uid-scratch").await.unwrap();
    assert!(!work.exists());
    assert!(!fast.exists());
    assert!(!part.exists());
}

#[test]
fn host_path_checks_make_or_require_each_kind() {
    let scratch = Scratch::new("host-checks");
    let base = scratch.dir.clone();
    let check = |path: &Path, kind: HostPathCheck| {
        volume::check_host_path(&HostPathVolume {
            name: "data".into(),
            path: path.display().to_string(),
            check: kind,
        })
    };
    let refusal = |path: &Path, kind: HostPathCheck| {
        let err = check(path, kind).unwrap_err();
        assert!(matches!(err, RuntimeError::HostPath { .. }), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("volume \"data\"") && err.contains(&path.display().to_string()),
            "{err}"
        );
        err
    };

    // DirectoryOrCreate makes it (and its parents), 0755; then takes it as it is.
    let dir = base.join("made/dir");
    check(&dir, HostPathCheck::DirectoryOrCreate).unwrap();
    assert!(dir.is_dir());
    assert_eq!(mode_of(&dir), 0o755);
    check(&dir, HostPathCheck::DirectoryOrCreate).unwrap();
    check(&dir, HostPathCheck::Directory).unwrap();

    // FileOrCreate makes an empty file 0644 in an existing directory only.
    let file = base.join("made/file");
    check(&file, HostPathCheck::FileOrCreate).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"");
    assert_eq!(mode_of(&file), 0o644);
    std::fs::write(&file, "kept").unwrap();
    check(&file, HostPathCheck::FileOrCreate).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
    check(&file, HostPathCheck::File).unwrap();
    let err = refusal(&base.join("nowhere/file"), HostPathCheck::FileOrCreate);
    assert!(err.contains("parent directory"), "{err}");
    assert!(!base.join("nowhere").exists());

    // Each kind is required, and the refusal says what was expected.
    let err = refusal(&base.join("missing"), HostPathCheck::Directory);
    assert!(
        err.contains("does not exist: expected a directory"),
        "{err}"
    );
    let err = refusal(&file, HostPathCheck::Directory);
    assert!(err.contains("is a regular file, not a directory"), "{err}");
    let err = refusal(&dir, HostPathCheck::File);
    assert!(err.contains("is a directory, not a regular file"), "{err}");
    let err = refusal(&file, HostPathCheck::DirectoryOrCreate);
    assert!(err.contains("not a directory"), "{err}");
    let err = refusal(&dir, HostPathCheck::FileOrCreate);
    assert!(err.contains("not a regular file"), "{err}");

    let socket = base.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    check(&socket, HostPathCheck::Socket).unwrap();
    let err = refusal(&file, HostPathCheck::Socket);
    assert!(err.contains("not a socket"), "{err}");

    check(Path::new("/dev/null"), HostPathCheck::CharDevice).unwrap();
    let err = refusal(Path::new("/dev/null"), HostPathCheck::BlockDevice);
    assert!(
        err.contains("is a character device, not a block device"),
        "{err}"
    );
    let err = refusal(&file, HostPathCheck::CharDevice);
    assert!(err.contains("not a character device"), "{err}");

    // None checks nothing.
    check(&base.join("missing"), HostPathCheck::None).unwrap();
    assert!(!base.join("missing").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_paths_are_told_in_variables_and_a_failed_check_refuses_the_start() {
    let scratch = Scratch::new("host-paths");
    let rt = ProcessRuntime::new(scratch.config()).unwrap();
    let host = scratch.dir.join("host/data");
    let mut main = container(
        "main",
        &[
            "sh",
            "-c",
            "echo written > \"$SHOAL_VOLUME_DATA/out\"; echo \"$SHOAL_VOLUME_LOGS\" > \"$SHOAL_VOLUME_DATA/logs\"; exec sleep 1000",
        ],
    );
    main.mounts = vec![
        Mount {
            volume: "data".into(),
            mount_path: "/data".into(),
            ..Default::default()
        },
        Mount {
            volume: "logs".into(),
            mount_path: "/logs".into(),
            sub_path: Some("app".into()),
            ..Default::default()
        },
    ];
    let mut spec = pod("uid-host", "host", vec![main]);
    spec.host_paths = vec![
        HostPathVolume {
            name: "data".into(),
            path: host.display().to_string(),
            check: HostPathCheck::DirectoryOrCreate,
        },
        HostPathVolume {
            name: "logs".into(),
            path: scratch.dir.join("host").display().to_string(),
            check: HostPathCheck::Directory,
        },
    ];

    // A failed check: nothing starts, nothing is left, and the error says why.
    let mut bad = spec.clone();
    bad.host_paths[1].path = scratch.dir.join("absent").display().to_string();
    let err = rt.start_pod(&bad).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RuntimeError::HostPath { ref volume, .. } if volume == "logs"),
        "{err:?}"
    );
    assert!(
        text.contains("absent") && text.contains("expected a directory"),
        "{text}"
    );
    assert!(rt.list_pods().await.unwrap().is_empty());
    assert!(!rt.pod_dir("uid-host").exists());

    let info = rt.start_pod(&spec).await.unwrap();
    assert_eq!(info.volume_dirs["data"], host.display().to_string());
    assert_eq!(mode_of(&host), 0o755);
    wait_for_lines(&host.join("logs"), 1).await;
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "written\n"
    );
    // The sub path is made in the host path and the variable names it.
    let app = scratch.dir.join("host/app");
    assert!(app.is_dir());
    assert_eq!(
        std::fs::read_to_string(host.join("logs")).unwrap().trim(),
        app.display().to_string()
    );
    assert!(info.scratch_bytes.is_empty());

    // The host's files stay when the pod goes.
    rt.remove_pod("uid-host").await.unwrap();
    assert!(host.join("out").exists());
}
