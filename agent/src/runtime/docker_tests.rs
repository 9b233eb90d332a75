//! Docker runtime tests against the real engine, with the locally built `shoal-demo:dev`: what
//! is particular to Docker (networks, shared localhost, labels, pulls); the contract all
//! runtimes share is checked by the conformance suite.
//! Skipped (with the reason printed) when no engine is reachable, unless
//! `SHOAL_REQUIRE_DOCKER=1`. Each test has its own cluster id, so its own network, removed with
//! its containers even when the test fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::testing::{
    DEMO_IMAGE, DockerCleanup, build_demo_image, docker_or_skip, unique_cluster_id,
};
use super::*;

async fn setup(test: &str) -> Option<(DockerRuntime, DockerCleanup, String)> {
    if !docker_or_skip(test).await {
        return None;
    }
    let image_build = tokio::task::spawn_blocking(build_demo_image).await.unwrap();
    image_build.expect("building the demo image");
    let cluster = unique_cluster_id(test);
    let rt = DockerRuntime::new(RuntimeConfig::new(&cluster, "node-1", "/nonexistent"))
        .await
        .expect("connecting to Docker");
    let cleanup = DockerCleanup::new(&rt, &cluster);
    Some((rt, cleanup, cluster))
}

fn demo_container(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: DEMO_IMAGE.to_string(),
        ports: vec![(8080, Protocol::Tcp)],
        env: vec![("VERSION".into(), "v1".into())],
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

fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

fn wait_for_http(addr: SocketAddr, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(answer) = http(addr, "GET", path) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "nothing answered at {addr}{path}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_until(
    rt: &DockerRuntime,
    what: &str,
    mut check: impl FnMut(&[PodInfo]) -> bool,
) -> Vec<PodInfo> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pods = rt.list_pods().await.unwrap();
        if check(&pods) {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {pods:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_all(mut stream: LogStream) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pods_run_restart_stop_and_are_found_again() {
    let Some((rt, _cleanup, cluster)) = setup("docker_lifecycle").await else {
        return;
    };
    let mut progress = Vec::new();
    rt.ensure_image(DEMO_IMAGE, &mut |line| progress.push(line))
        .await
        .unwrap();
    assert!(
        progress.is_empty(),
        "a present image is not pulled: {progress:?}"
    );

    // Two replicas, same port, each on its own IP on the shoal network.
    let mut ips = Vec::new();
    for i in 0..2 {
        let info = rt
            .start_pod(&pod(
                &format!("uid-web-{i}"),
                &format!("web-{i}"),
                vec![demo_container("web")],
            ))
            .await
            .unwrap();
        ips.push(info.ip.expect("a pod IP"));
        assert!(info.all_running(), "{info:#?}");
    }
    assert_ne!(ips[0], ips[1]);
    for (i, ip) in ips.iter().enumerate() {
        let (status, body) = wait_for_http(SocketAddr::new(*ip, 8080), "/");
        assert_eq!(status, 200);
        assert!(
            body.starts_with(&format!("{{\"pod\":\"web-{i}\",\"namespace\":\"default\"")),
            "{body}"
        );
        assert!(body.contains(&format!("\"ip\":\"{ip}\"")), "{body}");
    }

    // Logs and exec. The server logs a request once it has answered it, and the engine
    // collects container output asynchronously: wait for the line.
    let started = Instant::now();
    let logs = loop {
        let logs = read_all(rt.logs("uid-web-0", "web", false, None).await.unwrap()).await;
        if logs.contains("GET /") || started.elapsed() > Duration::from_secs(10) {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(logs.contains("listening on 0.0.0.0:8080"), "{logs}");
    assert!(logs.contains("GET /"), "{logs}");
    let tail = read_all(rt.logs("uid-web-0", "web", false, Some(1)).await.unwrap()).await;
    assert_eq!(tail, "GET /\n");
    let result = rt
        .exec(
            "uid-web-0",
            "web",
            &[
                "/shoal-demo-http".into(),
                "--get".into(),
                "http://localhost:8080/healthz".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        (result.exit_code, result.output.as_slice()),
        (0, b"ok\n".as_slice())
    );
    let failed = rt
        .exec(
            "uid-web-0",
            "web",
            &["/shoal-demo-http".into(), "--bogus".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(failed.exit_code, 2);

    // A crash reports its exit code; restart_container brings it back.
    let addr1 = SocketAddr::new(ips[1], 8080);
    http(addr1, "POST", "/exit?code=3");
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
    let pods = wait_until(&rt, "the restart", |pods| {
        pods.iter()
            .any(|p| p.uid == "uid-web-1" && p.all_running() && p.ip.is_some())
    })
    .await;
    let ip1 = pods
        .iter()
        .find(|p| p.uid == "uid-web-1")
        .unwrap()
        .ip
        .unwrap();
    assert_eq!(wait_for_http(SocketAddr::new(ip1, 8080), "/healthz").0, 200);

    // Stop (docker stop) with Kubernetes' default grace period: the demo, PID 1 of its
    // container, handles SIGTERM and exits at once, so the stop does not wait the grace out.
    let started = Instant::now();
    rt.stop_pod("uid-web-0", Duration::from_secs(30))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the container took {took:?} to stop: SIGTERM was not handled"
    );
    // One that drains for longer than its grace period is killed when the period ends.
    let mut slow = demo_container("web");
    slow.env.push(("STOP_DELAY_MS".into(), "60000".into()));
    rt.start_pod(&pod("uid-slow", "slow", vec![slow]))
        .await
        .unwrap();
    let started = Instant::now();
    rt.stop_pod("uid-slow", Duration::from_secs(1))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(15),
        "{took:?}"
    );

    // An agent restart: a new runtime finds the pods by their labels; another node does not.
    drop(rt);
    let rt = DockerRuntime::new(RuntimeConfig::new(&cluster, "node-1", "/nonexistent"))
        .await
        .unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(pods.len(), 3, "{pods:#?}");
    let [slow, web0, web1] = &pods[..] else {
        unreachable!()
    };
    assert_eq!(
        (web0.uid.as_str(), web0.name.as_str()),
        ("uid-web-0", "web-0")
    );
    assert_eq!(web0.spec_hash, "hash-web-0");
    assert_eq!(web0.ip, None, "a stopped pod has no IP");
    match &web0.containers[0].state {
        ContainerState::Exited {
            exit_code: Some(0),
            finished_at_ms: Some(_),
            reason,
            ..
        } if reason == "Completed" => {}
        other => panic!("expected a container that ended by itself, got {other:?}"),
    }
    match &slow.containers[0].state {
        ContainerState::Exited {
            exit_code: Some(137),
            finished_at_ms: Some(_),
            ..
        } => {}
        other => panic!("expected a SIGKILLed container, got {other:?}"),
    }
    assert_eq!(web0.containers[0].image, DEMO_IMAGE);
    assert!(web1.all_running());
    let other = DockerRuntime::new(RuntimeConfig::new(&cluster, "node-2", "/nonexistent"))
        .await
        .unwrap();
    assert!(other.list_pods().await.unwrap().is_empty());

    for uid in ["uid-web-0", "uid-web-1", "uid-slow"] {
        rt.remove_pod(uid).await.unwrap();
    }
    rt.remove_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_of_a_pod_share_localhost() {
    let Some((rt, _cleanup, _)) = setup("docker_localhost").await else {
        return;
    };
    let mut client = demo_container("client");
    client.command = vec!["/shoal-demo-http".into()];
    client.args = vec![
        "--get".into(),
        "http://localhost:8080/".into(),
        "--wait-ms".into(),
        "10000".into(),
    ];
    let info = rt
        .start_pod(&pod(
            "uid-pair",
            "pair",
            vec![demo_container("server"), client],
        ))
        .await
        .unwrap();
    assert!(info.ip.is_some());
    let pods = wait_until(&rt, "the client's exit", |pods| {
        matches!(pods[0].containers[1].state, ContainerState::Exited { .. })
    })
    .await;
    let logs = read_all(rt.logs("uid-pair", "client", false, None).await.unwrap()).await;
    assert!(
        matches!(
            pods[0].containers[1].state,
            ContainerState::Exited {
                exit_code: Some(0),
                ..
            }
        ),
        "{pods:#?}\nclient logs: {logs}"
    );
    assert!(logs.starts_with("{\"pod\":\"pair\""), "{logs}");
    assert!(matches!(
        pods[0].containers[0].state,
        ContainerState::Running { .. }
    ));
    assert_eq!(pods[0].containers[0].name, "server");

    // Restarting the first container restarts the other, which reaches the server again in
    // the new network namespace.
    let restarted_at = crate::clock::wall_ms();
    rt.restart_container("uid-pair", "server", Duration::ZERO)
        .await
        .unwrap();
    let pods = wait_until(&rt, "the client's second run", |pods| {
        matches!(pods[0].containers[1].state,
            ContainerState::Exited { finished_at_ms: Some(f), .. } if f >= restarted_at)
    })
    .await;
    assert!(
        matches!(
            pods[0].containers[1].state,
            ContainerState::Exited {
                exit_code: Some(0),
                ..
            }
        ),
        "{pods:#?}"
    );
    assert!(matches!(
        pods[0].containers[0].state,
        ContainerState::Running { .. }
    ));
    rt.stop_pod("uid-pair", Duration::ZERO).await.unwrap();
    rt.remove_pod("uid-pair").await.unwrap();
    rt.remove_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pull_of_an_unreachable_image_fails_clearly() {
    let Some((rt, _cleanup, _)) = setup("docker_pull").await else {
        return;
    };
    let started = Instant::now();
    let mut progress = Vec::new();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        rt.ensure_image("registry.invalid/nope:1", &mut |line| progress.push(line)),
    )
    .await
    .expect("the pull fails in time")
    .unwrap_err();
    eprintln!("pull failed after {:?}: {err}", started.elapsed());
    match &err {
        RuntimeError::ImagePull { image, reason } => {
            assert_eq!(image, "registry.invalid/nope:1");
            assert!(!reason.is_empty());
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("pulling image \"registry.invalid/nope:1\" failed: ")
    );
    assert_eq!(
        progress.first().map(String::as_str),
        Some("pulling image registry.invalid/nope:1")
    );

    // Starting a pod whose image is missing says so.
    let mut c = demo_container("web");
    c.image = "registry.invalid/nope:1".into();
    let err = rt
        .start_pod(&pod("uid-missing", "missing", vec![c]))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::ImageNotPresent { .. }), "{err}");
    assert!(rt.list_pods().await.unwrap().is_empty());
    rt.remove_network().await.unwrap();
}

/// Runs `script` with `sh -c` in the container; (exit code, output).
async fn sh(rt: &DockerRuntime, uid: &str, container: &str, script: &str) -> (i32, String) {
    let result = rt
        .exec(
            uid,
            container,
            &["sh".into(), "-c".into(), script.into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    (
        result.exit_code,
        String::from_utf8_lossy(&result.output).into_owned(),
    )
}

/// Polls `script` in the container until it prints `expect`.
async fn wait_for_output(
    rt: &DockerRuntime,
    uid: &str,
    container: &str,
    script: &str,
    expect: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = sh(rt, uid, container, script).await;
        if out == expect {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{script:?} printed {out:?}, not {expect:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The files under `dir` (links not followed) whose content holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(files_holding(&entry.path(), needle));
        } else if kind.is_file()
            && std::fs::read(entry.path())
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        {
            found.push(entry.path());
        }
    }
    found
}

/// A mount of `volume` at `path`.
fn mount(volume: &str, path: &str, read_only: bool, sub_path: Option<&str>) -> Mount {
    Mount {
        volume: volume.into(),
        mount_path: path.into(),
        read_only,
        sub_path: sub_path.map(Into::into),
    }
}

/// Directories removed when dropped.
struct RemoveDirs(Vec<std::path::PathBuf>);

impl Drop for RemoveDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What a Docker volume test runs on: a runtime of a cluster of its own, with a data dir and a
/// RAM-backed dir (under `/dev/shm`) removed when `dirs` drops, and the shell image built.
struct VolumeBed {
    cluster: String,
    data_dir: std::path::PathBuf,
    ram_dir: std::path::PathBuf,
    dirs: RemoveDirs,
    rt: DockerRuntime,
}

/// A [`VolumeBed`] for `test`; `None` (the test is skipped, and says why) without an engine
/// or a RAM-backed `/dev/shm`.
async fn volume_bed(test: &str) -> Option<VolumeBed> {
    if !docker_or_skip(test).await {
        return None;
    }
    tokio::task::spawn_blocking(super::testing::build_shell_image)
        .await
        .unwrap()
        .expect("building the shell image");
    let ram_base = std::path::PathBuf::from("/dev/shm");
    if volume::is_ram_backed(&ram_base).is_err() {
        eprintln!("skipping {test}: /dev/shm is not RAM-backed");
        return None;
    }
    let cluster = unique_cluster_id(test);
    let data_dir = std::env::temp_dir().join(format!("shoal-{cluster}"));
    let ram_dir = ram_base.join(format!("shoal-test-{cluster}"));
    std::fs::create_dir_all(&ram_dir).unwrap();
    let dirs = RemoveDirs(vec![data_dir.clone(), ram_dir.clone()]);
    let mut config = RuntimeConfig::new(&cluster, "node-1", &data_dir);
    config.ram_dir = Some(ram_dir.clone());
    let rt = DockerRuntime::new(config)
        .await
        .expect("connecting to Docker");
    Some(VolumeBed {
        cluster,
        data_dir,
        ram_dir,
        dirs,
        rt,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_volumes_are_mounted_updated_live_and_secrets_stay_in_ram() {
    let Some(VolumeBed {
        cluster,
        data_dir,
        ram_dir,
        dirs: _remove,
        rt,
    }) = volume_bed("docker_volumes").await
    else {
        return;
    };
    let _cleanup = DockerCleanup::new(&rt, &cluster);

    let file = |path: &str, data: &str, mode: u32| VolumeFile {
        path: path.into(),
        data: data.as_bytes().to_vec(),
        mode,
    };
    let main = ContainerSpec {
        name: "main".into(),
        image: super::testing::SHELL_IMAGE.into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; while true; do sleep 0.2; done".into(),
        ],
        env: vec![
            ("TOKEN".into(), "s3cr3t-docker-env".into()),
            ("MY_IP".into(), String::new()),
        ],
        sensitive_env: vec!["TOKEN".into()],
        pod_ip_env: vec!["MY_IP".into()],
        mounts: vec![
            mount("config", "/etc/config", true, None),
            mount("config", "/etc/app.conf", true, Some("app.conf")),
            mount("token", "/var/run/token", false, None),
        ],
        ..Default::default()
    };
    let mut spec = pod("uid-vol", "vol", vec![main]);
    spec.volumes = vec![
        VolumeSpec {
            name: "config".into(),
            sensitive: false,
            files: vec![file("app.conf", "v1", 0o644), file("dir/key", "k1", 0o600)],
        },
        VolumeSpec {
            name: "token".into(),
            sensitive: true,
            files: vec![file("token", "s3cr3t-docker-volume", 0o400)],
        },
    ];
    let info = rt.start_pod(&spec).await.unwrap();
    let ip = info.ip.expect("a pod IP").to_string();

    // The files at their mount paths, with their modes; a sub path; read-only.
    assert_eq!(
        sh(&rt, "uid-vol", "main", "cat /etc/config/app.conf").await,
        (0, "v1".into())
    );
    assert_eq!(
        sh(&rt, "uid-vol", "main", "cat /etc/config/dir/key").await,
        (0, "k1".into())
    );
    assert_eq!(
        sh(&rt, "uid-vol", "main", "cat /etc/app.conf").await,
        (0, "v1".into())
    );
    assert_eq!(
        sh(
            &rt,
            "uid-vol",
            "main",
            "stat -L -c %a /etc/config/dir/key /var/run/token/token"
        )
        .await,
        (0, "600\n400\n".into())
    );
    // Read-only, even where the mount did not ask for it (as Kubernetes mounts such volumes).
    for path in ["/etc/config/new", "/var/run/token/new", "/etc/app.conf"] {
        let (code, _) = sh(&rt, "uid-vol", "main", &format!("echo x > {path}")).await;
        assert_ne!(code, 0, "a volume's mount took a write at {path}");
    }
    assert_eq!(
        sh(&rt, "uid-vol", "main", "cat /var/run/token/token").await,
        (0, "s3cr3t-docker-volume".into())
    );
    // The environment: the pod's IP where asked for (`POD_IP` is not set unasked), and the
    // secret.
    assert_eq!(
        sh(
            &rt,
            "uid-vol",
            "main",
            "printf '%s/%s/%s' \"$POD_IP\" \"$MY_IP\" \"$TOKEN\""
        )
        .await,
        (0, format!("/{ip}/s3cr3t-docker-env"))
    );

    // Where the files are on the host: the secret on tmpfs, nothing secret under the data dir.
    let config_dir = std::path::PathBuf::from(&info.volume_dirs["config"]);
    let token_dir = std::path::PathBuf::from(&info.volume_dirs["token"]);
    assert!(
        config_dir.starts_with(&data_dir),
        "{}",
        config_dir.display()
    );
    assert!(token_dir.starts_with(&ram_dir), "{}", token_dir.display());
    volume::is_ram_backed(&token_dir).unwrap();
    assert_eq!(rt.volume_dir("uid-vol", "token", true).unwrap(), token_dir);
    for secret in [&b"s3cr3t-docker-volume"[..], b"s3cr3t-docker-env"] {
        let leaks = files_holding(&data_dir, secret);
        assert!(leaks.is_empty(), "a secret is on disk in {leaks:?}");
    }
    let listed = rt.list_pods().await.unwrap();
    assert_eq!(listed[0].volume_dirs, info.volume_dirs);

    // An update is seen inside at once; the sub path keeps what it had (as in Kubernetes).
    let mut update = spec.volumes[0].clone();
    update.files[0] = file("app.conf", "v2", 0o644);
    rt.update_volume("uid-vol", &update).await.unwrap();
    wait_for_output(&rt, "uid-vol", "main", "cat /etc/config/app.conf", "v2").await;
    assert_eq!(
        sh(&rt, "uid-vol", "main", "cat /etc/app.conf").await,
        (0, "v1".into())
    );
    let err = rt.update_volume("uid-none", &update).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // A restart mounts everything again (the sub path's copy outlived the old data) and the
    // pod keeps its IP.
    rt.restart_container("uid-vol", "main", Duration::from_secs(2))
        .await
        .unwrap();
    wait_until(&rt, "the restart", |pods| {
        pods[0].all_running() && pods[0].ip.is_some()
    })
    .await;
    assert_eq!(
        sh(&rt, "uid-vol", "main", "cat /etc/config/app.conf").await,
        (0, "v2".into())
    );
    assert_eq!(
        sh(&rt, "uid-vol", "main", "cat /etc/app.conf").await,
        (0, "v1".into())
    );
    assert_eq!(
        sh(&rt, "uid-vol", "main", "printf %s \"$MY_IP\"").await,
        (0, ip.clone())
    );
    assert_eq!(rt.list_pods().await.unwrap()[0].ip, info.ip);

    // Another pod gets another IP, under the names it asks for.
    let mut other = ContainerSpec {
        name: "other".into(),
        image: super::testing::SHELL_IMAGE.into(),
        command: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    other.pod_ip_env = vec!["POD_IP".into(), "ADDR".into()];
    let info2 = rt
        .start_pod(&pod("uid-other", "other", vec![other]))
        .await
        .unwrap();
    let ip2 = info2.ip.unwrap().to_string();
    assert_ne!(ip2, ip);
    assert_eq!(
        sh(
            &rt,
            "uid-other",
            "other",
            "printf '%s %s' \"$POD_IP\" \"$ADDR\""
        )
        .await,
        (0, format!("{ip2} {ip2}"))
    );

    // Removal takes the volumes with the pod, on disk and in RAM.
    rt.remove_pod("uid-vol").await.unwrap();
    rt.remove_pod("uid-other").await.unwrap();
    assert!(!config_dir.exists());
    assert!(!token_dir.exists());

    // Volumes of pods that are gone (say, an interrupted start that made no container) are
    // removed by the recovery when the agent starts.
    let ghosts = [
        rt.volume_dir("uid-ghost", "x", false).unwrap(),
        rt.volume_dir("uid-ghost", "x", true).unwrap(),
    ];
    for ghost in &ghosts {
        std::fs::create_dir_all(ghost).unwrap();
    }
    rt.recover().await.unwrap();
    for ghost in &ghosts {
        assert!(!ghost.exists(), "{}", ghost.display());
    }
    rt.remove_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_scratch_and_host_path_volumes() {
    let Some(VolumeBed {
        cluster,
        data_dir,
        ram_dir,
        dirs: mut remove,
        rt,
    }) = volume_bed("docker_scratch").await
    else {
        return;
    };
    let host_dir = std::env::temp_dir().join(format!("shoal-{cluster}-host"));
    remove.0.push(host_dir.clone());
    let _cleanup = DockerCleanup::new(&rt, &cluster);

    let shell = |name: &str, script: &str, mounts: Vec<Mount>| ContainerSpec {
        name: name.into(),
        image: super::testing::SHELL_IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        mounts,
        ..Default::default()
    };
    let main = shell(
        "main",
        "echo run >> /work/runs; trap 'exit 0' TERM; while true; do sleep 0.2; done",
        vec![
            mount("work", "/work", false, None),
            mount("fast", "/fast", false, None),
            mount("data", "/data", false, None),
            mount("data", "/data-sub", false, Some("sub")),
        ],
    );
    let side = shell(
        "side",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
        vec![
            mount("work", "/shared", true, None),
            mount("data", "/data", true, None),
        ],
    );
    let mut spec = pod("uid-scratch", "scratch", vec![main, side]);
    spec.scratch = vec![
        ScratchVolume {
            name: "work".into(),
            memory: false,
            size_limit: Some(1_000_000),
        },
        ScratchVolume {
            name: "fast".into(),
            memory: true,
            size_limit: None,
        },
    ];
    spec.host_paths = vec![HostPathVolume {
        name: "data".into(),
        path: host_dir.join("data").display().to_string(),
        check: HostPathCheck::DirectoryOrCreate,
    }];

    // A failed check refuses the start, and nothing is left.
    let mut bad = spec.clone();
    bad.host_paths[0].path = host_dir.join("absent").display().to_string();
    bad.host_paths[0].check = HostPathCheck::Directory;
    let err = rt.start_pod(&bad).await.unwrap_err();
    assert!(matches!(err, RuntimeError::HostPath { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("\"data\"")
            && text.contains("absent")
            && text.contains("expected a directory"),
        "{text}"
    );
    assert!(rt.list_pods().await.unwrap().is_empty());

    let info = rt.start_pod(&spec).await.unwrap();
    let work = std::path::PathBuf::from(&info.volume_dirs["work"]);
    let fast = std::path::PathBuf::from(&info.volume_dirs["fast"]);
    assert!(work.starts_with(&data_dir), "{}", work.display());
    assert!(fast.starts_with(&ram_dir), "{}", fast.display());
    assert_eq!(
        info.volume_dirs["data"],
        host_dir.join("data").display().to_string()
    );

    // The scratch volume is writable, shared, and read-only where the mount says so.
    wait_for_output(&rt, "uid-scratch", "side", "cat /shared/runs", "run\n").await;
    let (code, _) = sh(&rt, "uid-scratch", "side", "echo x > /shared/no").await;
    assert_ne!(
        code, 0,
        "a read-only mount of a scratch volume is read-only"
    );
    // The memory one is tmpfs inside the container.
    let (code, out) = sh(&rt, "uid-scratch", "main", "cat /proc/mounts").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/fast")
                && l.split_whitespace().nth(2) == Some("tmpfs")),
        "{out}"
    );
    let (code, out) = sh(
        &rt,
        "uid-scratch",
        "main",
        "echo hot > /fast/f && cat /fast/f",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "hot\n"));
    assert_eq!(std::fs::read_to_string(fast.join("f")).unwrap(), "hot\n");

    // The host path: made, mounted read-write, its sub path made and mounted.
    let (code, out) = sh(
        &rt,
        "uid-scratch",
        "main",
        "echo host > /data/out && echo deep > /data-sub/f",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("data/out")).unwrap(),
        "host\n"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("data/sub/f")).unwrap(),
        "deep\n"
    );
    let (code, _) = sh(&rt, "uid-scratch", "side", "echo x > /data/no").await;
    assert_ne!(code, 0, "a read-only mount of a host path is read-only");

    // Usage of the limited scratch volume is reported.
    std::fs::write(work.join("big"), vec![0u8; 5000]).unwrap();
    let pods = rt.list_pods().await.unwrap();
    assert_eq!(
        pods[0].scratch_bytes,
        BTreeMap::from([("work".into(), 5004)])
    );
    assert_eq!(pods[0].volume_dirs["fast"], fast.display().to_string());

    // Kept across a container restart: the restarted container appends.
    rt.restart_container("uid-scratch", "main", Duration::from_secs(2))
        .await
        .unwrap();
    wait_for_output(&rt, "uid-scratch", "main", "cat /work/runs", "run\nrun\n").await;
    wait_for_output(&rt, "uid-scratch", "main", "cat /fast/f", "hot\n").await;

    // Removed with the pod; the host's files stay.
    rt.stop_pod("uid-scratch", Duration::from_secs(2))
        .await
        .unwrap();
    rt.remove_pod("uid-scratch").await.unwrap();
    assert!(!work.exists());
    assert!(!fast.exists());
    assert!(host_dir.join("data/out").exists());
}
