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
