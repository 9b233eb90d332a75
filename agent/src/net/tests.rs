//! End-to-end tests of the network layer over loopback.

use std::time::Duration;

use futures::AsyncWriteExt as _;
use libp2p::identity::Keypair;
use shoal_gossip::NodeId;
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

use super::transport::PROTOCOL;
use super::*;

/// How long a test waits for what must happen: generous, as a loaded machine can take seconds
/// for a handshake that takes milliseconds alone (only a failing test waits it out).
const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub(super) async fn node_with(
    key: &ClusterKey,
    tweak: impl FnOnce(&mut NetConfig),
) -> (NetHandle, Receiver<NetEvent>) {
    init_tracing();
    let mut config = NetConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Keypair::generate_ed25519(),
        key.clone(),
    );
    config.tuning.handshake_timeout = Duration::from_millis(400);
    tweak(&mut config);
    start(config).await.expect("start")
}

async fn node(key: &ClusterKey) -> (NetHandle, Receiver<NetEvent>) {
    node_with(key, |_| {}).await
}

pub(super) fn addr_of(h: &NetHandle) -> String {
    h.local_addr().to_string()
}

/// The next message, skipping other events.
async fn next_message(rx: &mut Receiver<NetEvent>) -> (NodeId, String, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(NetEvent::Message { from, addr, bytes })) => return (from, addr, bytes),
            Ok(Some(_)) => {}
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }
}

/// Asserts that no message arrives for `d` (other events are returned).
pub(super) async fn no_message(rx: &mut Receiver<NetEvent>, d: Duration) -> Vec<NetEvent> {
    let deadline = Instant::now() + d;
    let mut others = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        assert!(
            !matches!(event, NetEvent::Message { .. }),
            "unexpected {event:?}"
        );
        others.push(event);
    }
    others
}

pub(super) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_nodes_exchange_messages_both_ways() {
    let key = ClusterKey::generate().unwrap();
    let (a, mut a_rx) = node(&key).await;
    let (b, mut b_rx) = node(&key).await;
    assert_ne!(a.local_addr().port(), 0);
    assert!(a.listen_addrs().len() >= 2, "{:?}", a.listen_addrs());
    assert!(
        a.listen_addrs()
            .iter()
            .all(|m| m.to_string().contains(&a.local_addr().port().to_string()))
    );

    // A knows B's id and address.
    a.send(Some(b.local_node_id()), &addr_of(&b), b"hello b".to_vec());
    let (from, reply_addr, bytes) = next_message(&mut b_rx).await;
    assert_eq!(from, a.local_node_id());
    assert_eq!(bytes, b"hello b");
    assert_eq!(
        reply_addr,
        addr_of(&a),
        "reported address is A's listen address"
    );

    // B knows only what the message told it.
    let big: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
    b.send(Some(from), &reply_addr, big.clone());
    b.send(Some(from), &reply_addr, b"second".to_vec());
    let (from_b, b_addr, bytes) = next_message(&mut a_rx).await;
    assert_eq!(
        (from_b, b_addr.as_str()),
        (b.local_node_id(), addr_of(&b).as_str())
    );
    assert_eq!(bytes, big);
    assert_eq!(next_message(&mut a_rx).await.2, b"second");

    // A join: a third node knows only A's address; A answers by id.
    let (c, mut c_rx) = node(&key).await;
    c.send(None, &addr_of(&a), b"join".to_vec());
    let (from_c, c_addr, bytes) = next_message(&mut a_rx).await;
    assert_eq!(
        (from_c, bytes.as_slice()),
        (c.local_node_id(), &b"join"[..])
    );
    a.send(Some(from_c), &c_addr, b"welcome".to_vec());
    assert_eq!(next_message(&mut c_rx).await.2, b"welcome");
    // A second message by address reuses the connection instead of dialing again.
    c.send(None, &addr_of(&a), b"again".to_vec());
    assert_eq!(next_message(&mut a_rx).await.2, b"again");
    // The multiaddr form of an address works too.
    c.send(
        None,
        &format!("/ip4/127.0.0.1/udp/{}/quic-v1", b.local_addr().port()),
        b"by multiaddr".to_vec(),
    );
    assert_eq!(next_message(&mut b_rx).await.2, b"by multiaddr");

    let m = c.metrics();
    assert_eq!(m.frames_sent, 3);
    assert_eq!(m.dial_failures, 0);
    assert_eq!(m.connections_open, 2, "{m:?}");
    let m = a.metrics();
    assert_eq!((m.frames_sent, m.frames_received), (2, 4), "{m:?}");
    assert_eq!(m.bytes_received, 1200 + 6 + 4 + 5);
    assert_eq!(m.refused_auth + m.refused_truncated + m.refused_oversize, 0);

    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_refused_for_its_key_hears_why_at_once_and_one_with_the_key_does_not() {
    let key = ClusterKey::generate().unwrap();
    let (a, mut a_rx) = node(&key).await;
    let (x, mut x_rx) = node(&ClusterKey::generate().unwrap()).await;
    // A join: X knows only A's address.
    x.send(None, &addr_of(&a), b"let me in".to_vec());
    let event = tokio::time::timeout(WAIT, x_rx.recv())
        .await
        .expect("a refusal heard in time")
        .expect("the event channel open");
    let NetEvent::RefusedBy { peer, addr, reason } = event else {
        panic!("unexpected {event:?}");
    };
    assert_eq!(
        (peer, addr.as_str()),
        (a.local_peer_id(), addr_of(&a).as_str())
    );
    assert!(reason.starts_with("cluster key mismatch"), "{reason}");
    assert_eq!(x.metrics().refused_by_peers, 1);
    assert_eq!(a.metrics().refused_auth, 1);

    // The same key: the message arrives, and nobody hears of a refusal.
    let (b, mut b_rx) = node(&key).await;
    b.send(None, &addr_of(&a), b"hello".to_vec());
    assert_eq!(next_message(&mut a_rx).await.2, b"hello");
    let events = no_message(&mut b_rx, Duration::from_millis(300)).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(b.metrics().refused_by_peers, 0);
    for h in [a, b, x] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn wrong_key_is_refused_both_ways() {
    let (a, mut a_rx) = node_with(&ClusterKey::generate().unwrap(), |c| {
        c.tuning.refuse_after = 3;
    })
    .await;
    let (x, mut x_rx) = node(&ClusterKey::generate().unwrap()).await;

    // Two frames each way, below the refusal threshold, so both directions are exercised.
    for i in 0..2u8 {
        x.send(Some(a.local_node_id()), &addr_of(&a), vec![i; 10]);
        a.send(Some(x.local_node_id()), &addr_of(&x), vec![i; 10]);
    }
    wait_for("refusals on both sides", || {
        a.metrics().refused_auth == 2 && x.metrics().refused_auth == 2
    })
    .await;
    // A third one from X crosses the threshold: A disconnects and bans it.
    x.send(Some(a.local_node_id()), &addr_of(&a), b"let me in".to_vec());
    let events = no_message(&mut a_rx, Duration::from_millis(500)).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, NetEvent::PeerRefused { peer, .. } if *peer == x.local_peer_id())),
        "{events:?}"
    );
    no_message(&mut x_rx, Duration::from_millis(100)).await;
    let m = a.metrics();
    assert_eq!(
        (m.refused_auth, m.frames_received, m.peers_refused),
        (3, 0, 1),
        "{m:?}"
    );
    assert_eq!(x.metrics().frames_received, 0);

    // Banned: X cannot reconnect for a while, and A does not talk to it.
    wait_for("disconnect", || a.metrics().connections_open == 0).await;
    x.send(Some(a.local_node_id()), &addr_of(&a), b"again".to_vec());
    wait_for("denied reconnection", || {
        a.metrics().connections_denied >= 1 || x.metrics().dropped_unreachable >= 1
    })
    .await;
    a.send(Some(x.local_node_id()), &addr_of(&x), b"nope".to_vec());
    wait_for("dropped", || a.metrics().dropped_unreachable >= 1).await;
    no_message(&mut a_rx, Duration::from_millis(100)).await;
    no_message(&mut x_rx, Duration::from_millis(100)).await;

    a.shutdown().await;
    x.shutdown().await;
}

#[tokio::test]
async fn garbage_does_not_break_anything() {
    use std::io::Write as _;

    let key = ClusterKey::generate().unwrap();
    // Three bad frames below follow each other; they must not get B banned.
    let (a, mut a_rx) = node_with(&key, |c| c.tuning.refuse_after = 10).await;
    let (b, mut b_rx) = node(&key).await;
    let target = a.local_addr();

    // UDP garbage at the QUIC socket: random, QUIC-looking long headers, empty, large.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x = 0x1234_5678_u32;
    let mut junk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    for n in [0, 1, 20, 1200, 1500, 65_000] {
        let _ = udp.send_to(&junk(n), target);
    }
    let mut initial = junk(1200);
    initial[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
    let _ = udp.send_to(&initial, target);

    // TCP garbage: random bytes, and a valid multistream-select greeting followed by junk.
    for payload in [
        junk(4096),
        [b"\x13/multistream/1.0.0\n".as_slice(), &junk(100)].concat(),
    ] {
        let mut tcp = std::net::TcpStream::connect(target).unwrap();
        let _ = tcp.write_all(&payload);
        drop(tcp);
    }

    // A real peer with the right key, sending bytes that are not frames on a gossip stream.
    let mut control = b.shared.control.clone();
    a.send(Some(b.local_node_id()), &addr_of(&b), b"warm up".to_vec());
    next_message(&mut b_rx).await;
    let mut stream = control
        .open_stream(a.local_peer_id(), PROTOCOL)
        .await
        .unwrap();
    stream.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    stream.flush().await.unwrap();
    let mut stream = control
        .open_stream(a.local_peer_id(), PROTOCOL)
        .await
        .unwrap();
    stream.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.unwrap();
    stream.flush().await.unwrap();
    let mut stream = control
        .open_stream(a.local_peer_id(), PROTOCOL)
        .await
        .unwrap();
    let mut forged = junk(40);
    forged[0] = 1; // the right version byte, so that only the tag is wrong
    stream.write_all(&[0, 0, 0, 40]).await.unwrap();
    stream.write_all(&forged).await.unwrap();
    stream.flush().await.unwrap();
    wait_for("refusals", || {
        let m = a.metrics();
        m.refused_oversize == 1 && m.refused_truncated == 1 && m.refused_auth == 1
    })
    .await;
    wait_for("the TCP handshake failures", || {
        a.metrics().incoming_errors >= 2
    })
    .await;

    // Still works both ways.
    b.send(
        Some(a.local_node_id()),
        &addr_of(&a),
        b"still there?".to_vec(),
    );
    assert_eq!(next_message(&mut a_rx).await.2, b"still there?");
    a.send(Some(b.local_node_id()), &addr_of(&b), b"yes".to_vec());
    assert_eq!(next_message(&mut b_rx).await.2, b"yes");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn tcp_fallback_when_quic_fails() {
    let key = ClusterKey::generate().unwrap();
    let (a, mut a_rx) = node(&key).await;
    // B has no UDP socket at all: every QUIC dial to it times out.
    let (b, mut b_rx) = node_with(&key, |c| c.quic = false).await;
    assert!(
        b.listen_addrs()
            .iter()
            .all(|m| !m.to_string().contains("quic"))
    );

    a.send(Some(b.local_node_id()), &addr_of(&b), b"over tcp".to_vec());
    let (from, reply_addr, bytes) = next_message(&mut b_rx).await;
    assert_eq!(
        (from, bytes.as_slice()),
        (a.local_node_id(), &b"over tcp"[..])
    );
    // The source port of a TCP connection is not A's listen port; the frame says which is.
    assert_eq!(reply_addr, addr_of(&a));
    let m = a.metrics();
    assert_eq!((m.dial_fallbacks, m.dial_failures), (1, 0), "{m:?}");

    // A remembers that QUIC does not work to B: a new dial (here by address, as a join
    // would) goes to TCP first and does not wait for a QUIC handshake again.
    let quic_form = format!("/ip4/127.0.0.1/udp/{}/quic-v1", b.local_addr().port());
    a.send(None, &quic_form, b"again".to_vec());
    assert_eq!(next_message(&mut b_rx).await.2, b"again");
    let m = a.metrics();
    assert_eq!((m.dial_fallbacks, m.dial_failures), (1, 0), "{m:?}");
    assert_eq!(m.connections_established, 2, "{m:?}");

    // B answers through the TCP connection, and B (TCP only) dials A over TCP by address.
    b.send(Some(from), &reply_addr, b"tcp reply".to_vec());
    assert_eq!(next_message(&mut a_rx).await.2, b"tcp reply");
    let (c, _c_rx) = node_with(&key, |c| c.quic = false).await;
    c.send(None, &addr_of(&a), b"tcp join".to_vec());
    let (from_c, _, bytes) = next_message(&mut a_rx).await;
    assert_eq!(
        (from_c, bytes.as_slice()),
        (c.local_node_id(), &b"tcp join"[..])
    );
    assert_eq!(
        c.metrics().dial_fallbacks,
        0,
        "a TCP-only node does not try QUIC"
    );

    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn shutdown_flushes_queued_messages() {
    let key = ClusterKey::generate().unwrap();
    let (a, _a_rx) = node(&key).await;
    let (b, mut b_rx) = node(&key).await;
    // Not gossip messages (their first byte is no protocol version), so none takes the
    // failure detector's lane: they arrive in order.
    let message = |i: u8| {
        let mut m = vec![i; 100];
        m[0] = 0xee;
        m
    };
    for i in 0..50u8 {
        a.send(Some(b.local_node_id()), &addr_of(&b), message(i));
    }
    // Nothing is connected yet: shutdown has to dial, write and close.
    a.shutdown().await;
    for i in 0..50u8 {
        assert_eq!(next_message(&mut b_rx).await.2, message(i));
    }
    b.shutdown().await;
}

#[tokio::test]
async fn a_peer_queue_holds_at_most_its_bytes() {
    let key = ClusterKey::generate().unwrap();
    let (a, _a_rx) = node_with(&key, |c| {
        c.tuning.peer_queue = 10_000;
        c.tuning.peer_queue_bytes = 64 * 1024;
    })
    .await;
    // Nothing listens on the discard port: the writer never takes anything off the queue
    // before its dial fails, so what is queued stays queued meanwhile.
    let nobody = Keypair::generate_ed25519().public().to_peer_id();
    let nobody = node_id_of(&nobody).unwrap();
    for _ in 0..100 {
        a.send(Some(nobody), "127.0.0.1:9", vec![0; 4096]);
    }
    // 16 messages of 4 KiB fill 64 KiB (the first is taken by the writer at once, at most).
    let m = a.metrics();
    assert!(
        (83..=84).contains(&m.dropped_queue_full),
        "64 KiB of 4 KiB messages queued, the rest dropped: {m:?}"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn overload_and_bad_input_are_dropped_and_counted() {
    let key = ClusterKey::generate().unwrap();
    let (a, _a_rx) = node_with(&key, |c| {
        c.tuning.peer_queue = 4;
        c.tuning.max_peers = 2;
    })
    .await;
    let started = Instant::now();
    // Port 9 (discard) on loopback: nothing listens, dials fail.
    let nobody = Keypair::generate_ed25519().public().to_peer_id();
    let nobody = node_id_of(&nobody).unwrap();
    for _ in 0..1000 {
        a.send(Some(nobody), "127.0.0.1:9", vec![0; 10]);
    }
    a.send(None, "no port here", vec![1]);
    a.send(None, "/ip4/127.0.0.1/udp/9", vec![1]);
    a.send(Some(nobody), "127.0.0.1:9", vec![0; MAX_PAYLOAD + 1]);
    a.send(None, "127.0.0.1:10", vec![1]);
    a.send(None, "127.0.0.1:11", vec![1]);
    a.send(Some(a.local_node_id()), &addr_of(&a), vec![1]);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "send blocked"
    );
    wait_for("failed dials", || a.metrics().dropped_unreachable >= 5).await;
    let m = a.metrics();
    assert!(m.dropped_queue_full >= 990, "{m:?}");
    assert_eq!(m.dropped_bad_addr, 3, "{m:?}");
    assert_eq!(m.dropped_oversize, 1, "{m:?}");
    assert_eq!(m.dropped_too_many_peers, 1, "{m:?}");
    assert_eq!(
        m.dropped_queue_full + m.dropped_unreachable + m.dropped_too_many_peers,
        1002,
        "every message to a dead destination is accounted for: {m:?}"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn mdns_flag_never_fails_start() {
    let key = ClusterKey::generate().unwrap();
    let (a, _rx) = node_with(&key, |c| c.mdns = true).await;
    assert_ne!(a.local_addr().port(), 0);
    a.shutdown().await;
}

#[tokio::test]
async fn busy_port_is_an_error() {
    let key = ClusterKey::generate().unwrap();
    let (a, _rx) = node(&key).await;
    let mut config = NetConfig::new(a.local_addr(), Keypair::generate_ed25519(), key);
    config.tuning.handshake_timeout = Duration::from_millis(400);
    match start(config).await {
        Err(NetError::Listen { addr, what, reason }) => {
            assert!(addr.starts_with("UDP "), "{addr}");
            assert!(what.contains("QUIC"), "{what}");
            assert!(reason.contains("--listen"), "{reason}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bound a port that is in use"),
    }
    a.shutdown().await;
}
