//! Proxying through meshes on loopback: reaching endpoints, half-close, resets, balancing,
//! retries, membership changes, local endpoints.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use shoal_mesh::{Ended, MeshError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reaches_echo_behind_another_node() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    let (addr, mut results) =
        proxy_listener(&a.mesh, service("default/echo"), vec![c.endpoint(echo)]).await;

    assert_eq!(echo_round_trip(addr, b"hello mesh").await, b"hello mesh");
    let stats = results.recv().await.unwrap().unwrap();
    assert_eq!(stats.endpoint, c.endpoint(echo));
    assert_eq!(stats.attempts, 1);
    assert_eq!(stats.bytes_to_service, 10);
    assert_eq!(stats.bytes_from_service, 10);
    assert_eq!(stats.ended, Ended::Closed);

    let m = a.mesh.metrics();
    let out = &m.outbound["default/echo"];
    assert_eq!((out.opened, out.failed, out.active), (1, 0, 0));
    assert_eq!((out.bytes_to_service, out.bytes_from_service), (10, 10));
    assert_eq!(out.connects, 1);
    assert!(out.connect_p50_us > 0);
    assert!(
        eventually(Duration::from_secs(2), || {
            let inbound = c.mesh.metrics().inbound;
            inbound
                .get("default/echo")
                .is_some_and(|s| s.opened == 1 && s.active == 0 && s.bytes_from_service == 10)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_reach_echo_on_the_third_over_one_pooled_connection_each() {
    let nodes = cluster(3).await;
    let c = &nodes[2];
    let echo = echo_server().await;
    c.allow(echo);
    for requester in &nodes[..2] {
        let (addr, _results) =
            proxy_listener(&requester.mesh, service("s"), vec![c.endpoint(echo)]).await;
        for i in 0..10 {
            let payload = format!("request {i}");
            assert_eq!(
                echo_round_trip(addr, payload.as_bytes()).await,
                payload.as_bytes()
            );
        }
        assert_eq!(
            requester.mesh.metrics().dials,
            1,
            "one pooled connection, reused"
        );
    }
    assert_eq!(c.mesh.metrics().peer_connections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_client_writes_then_shuts_down_and_reads_the_full_echo() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(echo)]).await;

    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let back = echo_round_trip(addr, &payload).await;
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo differs");
    let stats = results.recv().await.unwrap().unwrap();
    assert_eq!(stats.ended, Ended::Closed);
    assert_eq!(stats.bytes_to_service, payload.len() as u64);
    assert_eq!(stats.bytes_from_service, payload.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_server_side_lets_the_client_keep_sending() {
    // The server finishes its side first (sends a greeting and shuts down writing), then keeps
    // reading; the client must see EOF and still be able to send.
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    c.allow(server);
    let server_task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(b"greeting").await.unwrap();
        socket.shutdown().await.unwrap();
        let mut got = Vec::new();
        socket.read_to_end(&mut got).await.unwrap();
        got
    });
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(server)]).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut greeting = Vec::new();
    client.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(greeting, b"greeting");
    client.write_all(b"still talking").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(server_task.await.unwrap(), b"still talking");
    assert_eq!(results.recv().await.unwrap().unwrap().ended, Ended::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reset_reaches_the_client_as_a_reset() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let server = resetting_server(5).await;
    c.allow(server);
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(server)]).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"12345").await.unwrap();
    let mut buf = [0u8; 16];
    let outcome = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf))
        .await
        .expect("the reset arrives promptly");
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a reset, not an end of stream"
    );
    assert_eq!(results.recv().await.unwrap().unwrap().ended, Ended::Reset);
    assert_eq!(a.mesh.metrics().outbound["s"].resets, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_reaches_the_server_as_a_reset() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let (server, mut seen) = recording_server().await;
    c.allow(server);
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(server)]).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"some bytes").await.unwrap();
    // Let the bytes cross before the reset, so the server has them.
    assert!(
        eventually(Duration::from_secs(2), || a
            .mesh
            .metrics()
            .outbound
            .get("s")
            .is_some_and(|s| s.bytes_to_service == 10))
        .await
    );
    client.set_zero_linger().unwrap();
    drop(client);
    let seen = tokio::time::timeout(Duration::from_secs(2), seen.recv())
        .await
        .expect("server sees the end promptly")
        .unwrap();
    assert_eq!(seen.error, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(results.recv().await.unwrap().unwrap().ended, Ended::Reset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spreads_over_three_endpoints_on_different_nodes() {
    let nodes = cluster(4).await;
    let mut candidates = Vec::new();
    for node in &nodes[1..] {
        let echo = echo_server().await;
        node.allow(echo);
        candidates.push(node.endpoint(echo));
    }
    let (addr, mut results) =
        proxy_listener(&nodes[0].mesh, service("spread"), candidates.clone()).await;
    // 300 connections, 15 at a time, each held briefly.
    let mut tasks = tokio::task::JoinSet::new();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(15));
    for i in 0..300u32 {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let payload = i.to_be_bytes();
            let back = echo_round_trip(addr, &payload).await;
            drop(permit);
            back == payload
        });
    }
    while let Some(ok) = tasks.join_next().await {
        assert!(ok.unwrap());
    }
    let mut per_endpoint: HashMap<_, u32> = HashMap::new();
    for _ in 0..300 {
        let stats = results.recv().await.unwrap().unwrap();
        *per_endpoint.entry(stats.endpoint).or_default() += 1;
    }
    for endpoint in &candidates {
        let n = per_endpoint.get(endpoint).copied().unwrap_or(0);
        assert!(
            (60..=141).contains(&n),
            "{endpoint}: {n} of 300 ({per_endpoint:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_serves_the_client_when_a_candidate_node_is_down() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    // A member whose mesh address answers nothing (crashed, not yet declared dead).
    let (_hole, hole_addr) = black_hole();
    let dead = shoal_mesh::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    a.members_tx.send_modify(|m| {
        let mut next = (**m).clone();
        next.insert(dead, hole_addr);
        *m = std::sync::Arc::new(next);
    });
    let dead_endpoint = shoal_mesh::Endpoint {
        node: dead,
        addr: echo,
    };
    let candidates = vec![dead_endpoint, c.endpoint(echo)];
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), candidates).await;
    let mut retried = 0;
    for i in 0..8u8 {
        assert_eq!(echo_round_trip(addr, &[i; 3]).await, [i; 3]);
        let stats = results.recv().await.unwrap().unwrap();
        assert_eq!(stats.endpoint, c.endpoint(echo));
        if stats.attempts == 2 {
            retried += 1;
        }
    }
    let m = a.mesh.metrics();
    assert!(retried >= 1, "the dead node was tried at least once");
    assert_eq!(m.outbound["s"].retries, retried);
    assert!(m.dial_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_serves_the_client_when_a_candidate_port_is_closed() {
    let nodes = cluster(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let echo = echo_server().await;
    c.allow(echo);
    let closed = closed_port().await;
    b.allow(closed);
    let candidates = vec![b.endpoint(closed), c.endpoint(echo)];
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), candidates).await;
    for i in 0..12u8 {
        assert_eq!(echo_round_trip(addr, &[i]).await, [i]);
        assert_eq!(
            results.recv().await.unwrap().unwrap().endpoint,
            c.endpoint(echo)
        );
    }
    assert!(a.mesh.metrics().outbound["s"].retries >= 1);
    assert!(b.mesh.metrics().connect_failures >= 1);

    // With no good candidate, the client is refused (reset) and the error names the cause.
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![b.endpoint(closed)]).await;
    expect_refused(addr).await;
    let error = results.recv().await.unwrap().unwrap_err();
    assert!(error.contains("connection refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_has_its_streams_reset_promptly_and_gets_no_new_ones() {
    let nodes = cluster(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let echo_b = echo_server().await;
    let echo_c = echo_server().await;
    b.allow(echo_b);
    c.allow(echo_c);
    let (addr_c, mut results) =
        proxy_listener(&a.mesh, service("s"), vec![c.endpoint(echo_c)]).await;
    let mut held = TcpStream::connect(addr_c).await.unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();

    // C is declared dead in A's view.
    let removed_at = Instant::now();
    a.remove_member(&c.peer());
    let mut rest = [0u8; 1];
    let outcome = tokio::time::timeout(Duration::from_secs(1), held.read(&mut rest))
        .await
        .expect("the held stream ends within a second");
    let elapsed = removed_at.elapsed();
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert!(
        elapsed < Duration::from_millis(500),
        "reset after {elapsed:?}"
    );
    assert_eq!(results.recv().await.unwrap().unwrap().ended, Ended::Reset);
    assert_eq!(a.mesh.metrics().closed_for_membership, 1);

    // New connections avoid the removed node.
    let candidates = vec![c.endpoint(echo_c), b.endpoint(echo_b)];
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), candidates).await;
    for i in 0..10u8 {
        assert_eq!(echo_round_trip(addr, &[i]).await, [i]);
        let stats = results.recv().await.unwrap().unwrap();
        assert_eq!(stats.endpoint, b.endpoint(echo_b));
        assert_eq!(stats.attempts, 1);
    }
    // And an explicit open to it is refused without touching the network.
    let error = a
        .mesh
        .open(&service("s"), &c.endpoint(echo_c))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, MeshError::NotMember(p) if p == c.peer()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_removed_by_the_server_has_its_streams_reset() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    let (addr, _results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(echo)]).await;
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();

    c.remove_member(&a.peer());
    let mut rest = [0u8; 1];
    let outcome = tokio::time::timeout(Duration::from_secs(1), held.read(&mut rest))
        .await
        .expect("the held stream ends within a second");
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    // A redials and is refused as a non-member.
    let error = a
        .mesh
        .open(&service("s"), &c.endpoint(echo))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, MeshError::RefusedByPeer { .. }), "{error}");
    assert!(c.mesh.metrics().refused_non_members >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_endpoint_is_connected_directly_with_the_same_semantics() {
    let nodes = cluster(1).await;
    let a = &nodes[0];
    let echo = echo_server().await;
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![a.endpoint(echo)]).await;
    let payload = vec![7u8; 500_000];
    assert_eq!(echo_round_trip(addr, &payload).await, payload);
    let stats = results.recv().await.unwrap().unwrap();
    assert_eq!(stats.ended, Ended::Closed);
    let m = a.mesh.metrics();
    assert_eq!(m.outbound["s"].local, 1);
    assert_eq!(m.dials, 0, "no QUIC hop");

    let server = resetting_server(3).await;
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![a.endpoint(server)]).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"abc").await.unwrap();
    let mut buf = [0u8; 1];
    let outcome = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(results.recv().await.unwrap().unwrap().ended, Ended::Reset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_endpoint_is_preferred_when_not_more_loaded() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let local_echo = echo_server().await;
    let remote_echo = echo_server().await;
    c.allow(remote_echo);
    let candidates = vec![c.endpoint(remote_echo), a.endpoint(local_echo)];
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), candidates).await;
    for i in 0..20u8 {
        assert_eq!(echo_round_trip(addr, &[i]).await, [i]);
        assert_eq!(
            results.recv().await.unwrap().unwrap().endpoint,
            a.endpoint(local_echo)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_gives_a_stream_with_half_close() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    let mut stream = a.mesh.open(&service("s"), &c.endpoint(echo)).await.unwrap();
    assert!(!stream.is_local());
    assert_eq!(a.mesh.active_streams(&c.endpoint(echo)), 1);
    stream.write_all(b"over quic").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"over quic");
    drop(stream);
    assert_eq!(a.mesh.active_streams(&c.endpoint(echo)), 0);
    let out = &a.mesh.metrics().outbound["s"];
    assert_eq!(
        (
            out.opened,
            out.active,
            out.bytes_to_service,
            out.bytes_from_service
        ),
        (1, 0, 9, 9)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_dial() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mesh = a.mesh.clone();
        let endpoint = c.endpoint(echo);
        tasks.spawn(async move {
            let mut s = mesh.open(&service("s"), &endpoint).await.unwrap();
            s.write_all(b"x").await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            back
        });
    }
    while let Some(back) = tasks.join_next().await {
        assert_eq!(back.unwrap(), b"x");
    }
    assert_eq!(a.mesh.metrics().dials, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connection_is_replaced() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    let (addr, _results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(echo)]).await;
    assert_eq!(echo_round_trip(addr, b"1").await, b"1");
    // C drops A and takes it back: A's pooled connection is closed under it.
    c.remove_member(&a.peer());
    assert!(
        eventually(Duration::from_secs(2), || c.mesh.metrics().peer_connections
            == 0)
        .await
    );
    c.set_members(&nodes.iter().map(Node::member_entry).collect());
    assert!(
        eventually(Duration::from_secs(2), || a.mesh.metrics().peer_connections
            == 0)
        .await
    );
    assert_eq!(echo_round_trip(addr, b"2").await, b"2");
    assert_eq!(a.mesh.metrics().dials, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_resets_proxied_connections_and_refuses_new_ones() {
    let nodes = cluster(2).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let echo = echo_server().await;
    c.allow(echo);
    let (addr, _results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(echo)]).await;
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();
    c.mesh.shutdown().await;
    let outcome = tokio::time::timeout(Duration::from_secs(1), held.read(&mut buf))
        .await
        .expect("ends promptly");
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    a.mesh.shutdown().await;
    let error = a
        .mesh
        .open(&service("s"), &c.endpoint(echo))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, MeshError::ShutDown), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_noticed_by_the_idle_timeout_without_membership_news() {
    let tuning = shoal_mesh::Tuning {
        keep_alive_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(1_000),
        ..test_tuning()
    };
    let a = Node::start(tuning.clone()).await;
    let c = Node::start(tuning).await;
    let echo = echo_server().await;
    c.allow(echo);
    // A reaches C through a relay that can swallow everything.
    let (relay, cut) = udp_relay(c.mesh.local_addr()).await;
    let members: shoal_mesh::Members = [(a.peer(), a.mesh.local_addr()), (c.peer(), relay)]
        .into_iter()
        .collect();
    a.set_members(&members);
    c.set_members(&[a.member_entry(), c.member_entry()].into_iter().collect());
    let (addr, mut results) = proxy_listener(&a.mesh, service("s"), vec![c.endpoint(echo)]).await;
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();
    // Idle but alive: keep-alives hold the connection open past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    held.write_all(b"pong").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    cut.store(true, std::sync::atomic::Ordering::Relaxed);
    let cut_at = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
        .await
        .expect("the dead peer is noticed");
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let elapsed = cut_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(results.recv().await.unwrap().unwrap().ended, Ended::Reset);
    assert!(
        eventually(Duration::from_secs(1), || a.mesh.metrics().peer_connections
            == 0)
        .await
    );
}
