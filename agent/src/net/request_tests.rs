//! End-to-end tests of request/response streams over loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use super::frame::{FrameKey, Proto};
use super::request::{MAX_CHUNK, MAX_REQUEST, RefuseReason};
use super::tests::{addr_of, no_message, node_with, wait_for};
use super::transport::{PROTOCOL as GOSSIP, STREAM_WINDOW};
use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// Byte `i` of a test response.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// Serves requests with `handler`, one task per request.
fn serve<F, Fut>(h: &NetHandle, handler: F) -> JoinHandle<()>
where
    F: Fn(IncomingRequest) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut requests = h.requests().expect("requests not taken yet");
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            tokio::spawn(handler(request));
        }
    })
}

async fn pair(
    quic: bool,
    tweak: impl Fn(&mut NetConfig) + Copy,
) -> (
    (NetHandle, Receiver<NetEvent>),
    (NetHandle, Receiver<NetEvent>),
) {
    let key = ClusterKey::generate().unwrap();
    let a = node_with(&key, |c| {
        c.quic = quic;
        tweak(c);
    })
    .await;
    let b = node_with(&key, |c| {
        c.quic = quic;
        tweak(c);
    })
    .await;
    (a, b)
}

/// Everything until the end; panics on an error.
async fn collect(mut response: ResponseStream) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    loop {
        match timeout(WAIT, response.recv()).await {
            Ok(Some(Ok(chunk))) => chunks.push(chunk),
            Ok(Some(Err(e))) => panic!("response failed: {e}"),
            Ok(None) => return chunks,
            Err(_) => panic!("response stalled"),
        }
    }
}

#[tokio::test]
async fn round_trip_with_chunks_errors_and_limits() {
    let ((a, _a_rx), (b, _b_rx)) = pair(true, |_| {}).await;
    serve(&b, |mut req| async move {
        match req.request.as_slice() {
            b"echo" => {
                let from = req.from.as_bytes().to_vec();
                req.send(from).await.unwrap();
                for word in ["one", "two", "three"] {
                    req.send(word.as_bytes().to_vec()).await.unwrap();
                }
                req.send(Vec::new()).await.unwrap();
                req.finish();
            }
            b"fail" => {
                req.send(b"partial".to_vec()).await.unwrap();
                req.fail("no such pod");
            }
            b"drop" => drop(req),
            big => {
                // A 64 KiB request comes back as its length and its last byte.
                let answer = format!("{} {}", big.len(), big.last().copied().unwrap_or(0));
                req.send(answer.into_bytes()).await.unwrap();
                req.finish();
            }
        }
    });
    let (b_id, b_addr) = (b.local_node_id(), addr_of(&b));

    let chunks = collect(a.request(b_id, &b_addr, b"echo".to_vec()).await.unwrap()).await;
    assert_eq!(
        chunks[0],
        a.local_node_id().as_bytes(),
        "the responder sees who asks"
    );
    assert_eq!(
        chunks[1..],
        [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );

    // An error after some data: the data, then the error, then the end.
    let mut response = a.request(b_id, &b_addr, b"fail".to_vec()).await.unwrap();
    assert_eq!(response.recv().await, Some(Ok(b"partial".to_vec())));
    assert_eq!(
        response.recv().await,
        Some(Err(RequestError::Failed("no such pod".into())))
    );
    assert_eq!(response.recv().await, None);

    // Dropped without finish: an error, not a response that looks complete.
    let mut response = a.request(b_id, &b_addr, b"drop".to_vec()).await.unwrap();
    assert!(
        matches!(response.recv().await, Some(Err(RequestError::Failed(_)))),
        "an abandoned response is an error"
    );

    // The largest request (two frames on the wire), and one byte more.
    let big: Vec<u8> = (0..MAX_REQUEST).map(pattern).collect();
    let chunks = collect(a.request(b_id, &b_addr, big.clone()).await.unwrap()).await;
    assert_eq!(
        chunks,
        [format!("{MAX_REQUEST} {}", pattern(MAX_REQUEST - 1)).into_bytes()]
    );
    let mut too_big = big;
    too_big.push(0);
    assert_eq!(
        a.request(b_id, &b_addr, too_big).await.unwrap_err(),
        RequestError::TooLarge(MAX_REQUEST + 1)
    );
    assert!(matches!(
        a.request(a.local_node_id(), &addr_of(&a), b"me".to_vec())
            .await
            .unwrap_err(),
        RequestError::Unreachable(_)
    ));

    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!((ma.requests_sent, ma.requests_failed), (4, 4), "{ma:?}");
    assert_eq!(
        (mb.requests_received, mb.requests_refused),
        (4, 0),
        "{mb:?}"
    );
    assert_eq!(ma.response_bytes_received, mb.response_bytes_sent);
    assert_eq!(ma.refused_auth + mb.refused_auth, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn large_response_is_streamed_with_back_pressure() {
    const TOTAL: usize = 5_000_000;
    const PIECE: usize = 100_000;
    let ((a, _a_rx), (b, _b_rx)) = pair(true, |_| {}).await;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    serve(&b, move |mut req| {
        let sent = counter.clone();
        async move {
            let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
            for piece in data.chunks(PIECE) {
                req.send(piece.to_vec()).await.unwrap();
                sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
            req.finish();
        }
    });
    let started = Instant::now();
    let mut response = a
        .request(b.local_node_id(), &addr_of(&b), b"big".to_vec())
        .await
        .unwrap();
    // What the responder may be ahead of the reader: the stream window, the chunks the pump
    // reads ahead, the responder's queue, a chunk in flight on each side, a piece in `send`.
    let bound = STREAM_WINDOW as u64 + 10 * MAX_CHUNK as u64;
    // Not reading: the responder stalls.
    sleep(Duration::from_millis(300)).await;
    let stalled = sent.load(Ordering::SeqCst);
    assert!(
        stalled <= bound,
        "{stalled} bytes sent to a reader that reads nothing"
    );
    let mut received = Vec::with_capacity(TOTAL);
    let mut max_ahead = 0;
    while let Some(chunk) = timeout(WAIT, response.recv()).await.expect("stalled") {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= MAX_CHUNK);
        received.extend_from_slice(&chunk);
        let ahead = sent.load(Ordering::SeqCst) - received.len() as u64;
        max_ahead = max_ahead.max(ahead);
        assert!(
            ahead <= bound,
            "responder {ahead} bytes ahead (bound {bound})"
        );
        if received.len() < TOTAL / 5 {
            // A slow reader for the first megabyte.
            sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(received.len(), TOTAL);
    assert!(received.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    eprintln!(
        "5 MB in {:?}; responder at most {max_ahead} bytes ahead (stalled at {stalled}, bound {bound})",
        started.elapsed()
    );
    assert_eq!(a.metrics().response_bytes_received, TOTAL as u64);
    a.shutdown().await;
    b.shutdown().await;
}

/// Dropping the response stream, and either side going away, stop the other side promptly:
/// over QUIC and over TCP (yamux).
#[tokio::test]
async fn dropping_or_leaving_stops_the_other_side() {
    for quic in [true, false] {
        let ((a, _a_rx), (b, _b_rx)) = pair(quic, |_| {}).await;
        let (tx, mut ended) = tokio::sync::mpsc::channel::<(&'static str, Duration)>(8);
        serve(&b, move |mut req| {
            let tx = tx.clone();
            async move {
                if req.request == b"endless" {
                    let mut i = 0u64;
                    let err = loop {
                        if let Err(e) = req.send(vec![i as u8; 1000]).await {
                            break e;
                        }
                        i += 1;
                        if i % 16 == 0 {
                            sleep(Duration::from_millis(1)).await;
                        }
                    };
                    assert_eq!(err, RequestError::Closed);
                    let _ = tx.send(("send failed", Duration::ZERO)).await;
                } else {
                    // Quiet, like `logs -f` with no new lines.
                    let t = Instant::now();
                    req.closed().await;
                    assert!(req.is_closed());
                    let _ = tx.send(("closed", t.elapsed())).await;
                }
            }
        });
        let (b_id, b_addr) = (b.local_node_id(), addr_of(&b));

        let mut response = a.request(b_id, &b_addr, b"endless".to_vec()).await.unwrap();
        for _ in 0..3 {
            response.recv().await.unwrap().unwrap();
        }
        let dropped = Instant::now();
        drop(response);
        let (what, _) = timeout(WAIT, ended.recv()).await.unwrap().unwrap();
        assert_eq!(what, "send failed");
        assert!(dropped.elapsed() < Duration::from_secs(1), "quic {quic}");

        // A quiet responder notices too.
        let response = a.request(b_id, &b_addr, b"quiet".to_vec()).await.unwrap();
        sleep(Duration::from_millis(200)).await;
        drop(response);
        let (what, waited) = timeout(WAIT, ended.recv()).await.unwrap().unwrap();
        assert_eq!(what, "closed");
        assert!(
            waited < Duration::from_millis(1200),
            "quic {quic}: {waited:?}"
        );

        // The requester leaves: the responder's stream closes.
        let _response = a.request(b_id, &b_addr, b"quiet".to_vec()).await.unwrap();
        sleep(Duration::from_millis(100)).await;
        let left = Instant::now();
        a.shutdown().await;
        let (what, _) = timeout(WAIT, ended.recv()).await.unwrap().unwrap();
        assert_eq!(what, "closed");
        assert!(left.elapsed() < Duration::from_secs(2), "quic {quic}");
        b.shutdown().await;
    }
}

#[tokio::test]
async fn responder_leaving_ends_the_response_with_an_error() {
    for quic in [true, false] {
        let ((a, _a_rx), (b, _b_rx)) = pair(quic, |_| {}).await;
        serve(&b, |req| async move {
            req.closed().await;
        });
        let mut response = a
            .request(b.local_node_id(), &addr_of(&b), b"quiet".to_vec())
            .await
            .unwrap();
        sleep(Duration::from_millis(100)).await;
        let left = Instant::now();
        b.shutdown().await;
        match timeout(WAIT, response.recv()).await.unwrap() {
            Some(Err(RequestError::Reset(_))) => {}
            other => panic!("quic {quic}: {other:?}"),
        }
        assert!(left.elapsed() < Duration::from_secs(2), "quic {quic}");
        assert_eq!(timeout(WAIT, response.recv()).await.unwrap(), None);
        assert_eq!(a.metrics().requests_failed, 1);
        a.shutdown().await;
    }
}

#[tokio::test]
async fn quiet_stream_stays_open_with_keepalives() {
    let ((a, _a_rx), (b, _b_rx)) = pair(true, |c| {
        c.tuning.request_keepalive = Duration::from_millis(50);
    })
    .await;
    serve(&b, |mut req| async move {
        // Quiet for 20 keep-alive intervals (the give-up time is 3), then answer.
        sleep(Duration::from_millis(1000)).await;
        req.send(b"late news".to_vec()).await.unwrap();
        req.finish();
    });
    let response = a
        .request(b.local_node_id(), &addr_of(&b), b"wait".to_vec())
        .await
        .unwrap();
    assert_eq!(collect(response).await, [b"late news".to_vec()]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn wrong_cluster_key_can_neither_ask_nor_answer() {
    let (a, mut a_rx) = node_with(&ClusterKey::generate().unwrap(), |c| {
        c.tuning.refuse_after = 3;
    })
    .await;
    let (x, _x_rx) = node_with(&ClusterKey::generate().unwrap(), |c| {
        c.tuning.refuse_after = 10;
    })
    .await;
    let served = Arc::new(AtomicU64::new(0));
    for h in [&a, &x] {
        let served = served.clone();
        serve(h, move |req| {
            served.fetch_add(1, Ordering::SeqCst);
            async move { req.finish() }
        });
    }
    // X asks A: A cannot open the request; X cannot open A's refusal.
    let err = x
        .request(a.local_node_id(), &addr_of(&a), b"secrets?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::Refused(RefuseReason::ClusterKey));
    let (ma, mx) = (a.metrics(), x.metrics());
    assert_eq!((ma.refused_auth, ma.requests_refused), (1, 1), "{ma:?}");
    assert_eq!((mx.refused_auth, mx.requests_failed), (1, 1), "{mx:?}");

    // A asks X: the same the other way (A's second refused frame from X: X's refusal).
    let err = a
        .request(x.local_node_id(), &addr_of(&x), b"hello?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::Refused(RefuseReason::ClusterKey));
    assert_eq!(x.metrics().refused_auth, 2);

    // A third refused frame from X at A: X is disconnected and banned, like for gossip (the
    // refusal or the disconnection reaches X first).
    let err = x
        .request(a.local_node_id(), &addr_of(&a), b"again".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RequestError::Refused(RefuseReason::ClusterKey) | RequestError::Reset(_)
        ),
        "{err}"
    );
    let events = no_message(&mut a_rx, Duration::from_millis(300)).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, NetEvent::PeerRefused { peer, .. } if *peer == x.local_peer_id())),
        "{events:?}"
    );
    assert_eq!(a.metrics().peers_refused, 1);
    let err = a
        .request(x.local_node_id(), &addr_of(&x), b"and you?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::Refused(RefuseReason::Banned));
    assert!(
        x.request(a.local_node_id(), &addr_of(&a), b"let me in".to_vec())
            .await
            .is_err()
    );
    assert_eq!(served.load(Ordering::SeqCst), 0, "no request was served");
    assert_eq!(
        a.metrics().requests_received + x.metrics().requests_received,
        0
    );
    a.shutdown().await;
    x.shutdown().await;
}

/// Reads one frame from a raw stream and opens it.
async fn read_raw(stream: &mut libp2p::Stream, key: &FrameKey) -> Vec<u8> {
    let mut prefix = [0u8; 4];
    timeout(WAIT, stream.read_exact(&mut prefix))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut body).await.unwrap();
    key.open(&body).unwrap().1
}

#[tokio::test]
async fn frames_of_one_protocol_do_not_open_in_the_other() {
    let key = ClusterKey::generate().unwrap();
    let (a, mut a_rx) = node_with(&key, |c| c.tuning.refuse_after = 10).await;
    let (b, _b_rx) = node_with(&key, |_| {}).await;
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    serve(&a, move |req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { req.finish() }
    });
    let (a_id, b_id) = (a.local_node_id(), b.local_node_id());
    // Connect, and check that a well-formed request works.
    collect(b.request(a_id, &addr_of(&a), Vec::new()).await.unwrap()).await;
    assert_eq!(served.load(Ordering::SeqCst), 1);
    let mut control = b.shared.control.clone();

    // A gossip frame B could legitimately send A, written into a request stream: the last
    // part of a request, were it sealed for requests.
    let mut wire = Vec::new();
    FrameKey::derive(&key, Proto::Gossip, &b_id, &a_id).seal_into(1, &[0x02, b'x'], &mut wire);
    let mut stream = control
        .open_stream(a.local_peer_id(), request::PROTOCOL)
        .await
        .unwrap();
    stream.write_all(&wire).await.unwrap();
    stream.flush().await.unwrap();
    // A refuses; its refusal (sealed for requests, A to B) says why.
    let refusal = read_raw(
        &mut stream,
        &FrameKey::derive(&key, Proto::Request, &a_id, &b_id),
    )
    .await;
    assert_eq!(refusal, [0x13, 1], "refused: no shared cluster key");
    wait_for("the refusal counted", || a.metrics().refused_auth == 1).await;

    // A request frame written into a gossip stream.
    let mut wire = Vec::new();
    FrameKey::derive(&key, Proto::Request, &b_id, &a_id).seal_into(1, &[0x02, b'x'], &mut wire);
    let mut stream = control
        .open_stream(a.local_peer_id(), GOSSIP)
        .await
        .unwrap();
    stream.write_all(&wire).await.unwrap();
    stream.flush().await.unwrap();
    wait_for("the second refusal", || a.metrics().refused_auth == 2).await;
    no_message(&mut a_rx, Duration::from_millis(100)).await;
    let m = a.metrics();
    assert_eq!(
        (m.requests_received, m.requests_refused, m.frames_received),
        (1, 1, 0),
        "{m:?}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1, "nothing more was served");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn over_the_limits_requests_are_refused_as_busy() {
    let key = ClusterKey::generate().unwrap();
    let (a, _a_rx) = node_with(&key, |c| {
        c.tuning.max_requests_per_peer = 2;
        c.tuning.max_requests = 3;
    })
    .await;
    let (b, _b_rx) = node_with(&key, |_| {}).await;
    let (c, _c_rx) = node_with(&key, |_| {}).await;
    // A holds every request open until the requester goes away.
    serve(&a, |req| async move { req.closed().await });
    let (a_id, a_addr) = (a.local_node_id(), addr_of(&a));

    let b1 = b.request(a_id, &a_addr, b"1".to_vec()).await.unwrap();
    let _b2 = b.request(a_id, &a_addr, b"2".to_vec()).await.unwrap();
    let t = Instant::now();
    assert_eq!(
        b.request(a_id, &a_addr, b"3".to_vec()).await.unwrap_err(),
        RequestError::Refused(RefuseReason::Busy),
        "over the per-peer limit"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "refused, not queued");
    let _c1 = c.request(a_id, &a_addr, b"1".to_vec()).await.unwrap();
    assert_eq!(
        c.request(a_id, &a_addr, b"2".to_vec()).await.unwrap_err(),
        RequestError::Refused(RefuseReason::Busy),
        "over the overall limit"
    );
    assert_eq!(a.metrics().requests_refused, 2);

    // A slot comes back when a request ends.
    drop(b1);
    let deadline = Instant::now() + WAIT;
    loop {
        match c.request(a_id, &a_addr, b"2".to_vec()).await {
            Ok(_) => break,
            Err(RequestError::Refused(RefuseReason::Busy)) if Instant::now() < deadline => {
                sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn unanswered_requests_time_out_or_are_refused() {
    let key = ClusterKey::generate().unwrap();
    let (a, _a_rx) = node_with(&key, |c| {
        c.tuning.request_timeout = Duration::from_millis(300);
    })
    .await;
    // B takes its requests but never reads them.
    let (b, _b_rx) = node_with(&key, |_| {}).await;
    let mut unread = b.requests().unwrap();
    let t = Instant::now();
    assert_eq!(
        a.request(b.local_node_id(), &addr_of(&b), b"hello?".to_vec())
            .await
            .unwrap_err(),
        RequestError::Timeout(Duration::from_millis(300))
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    // C does not serve requests: refused at once.
    let (c, _c_rx) = node_with(&key, |_| {}).await;
    let t = Instant::now();
    assert_eq!(
        a.request(c.local_node_id(), &addr_of(&c), b"hello?".to_vec())
            .await
            .unwrap_err(),
        RequestError::Refused(RefuseReason::NotServed)
    );
    assert!(t.elapsed() < Duration::from_millis(300));

    // D reads its requests too late: refused after its accept timeout, then skipped.
    let (d, _d_rx) = node_with(&key, |c| {
        c.tuning.request_accept_timeout = Duration::from_millis(100);
    })
    .await;
    let mut late = d.requests().unwrap();
    let (e, _e_rx) = node_with(&key, |_| {}).await;
    assert_eq!(
        e.request(d.local_node_id(), &addr_of(&d), b"hello?".to_vec())
            .await
            .unwrap_err(),
        RequestError::Refused(RefuseReason::NotServed)
    );
    assert!(
        timeout(Duration::from_millis(100), late.recv())
            .await
            .is_err()
    );
    assert_eq!(d.metrics().requests_refused, 1);
    assert_eq!(e.metrics().requests_failed, 1);

    // Nobody listening at all.
    let nobody = node_id_of(
        &libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id(),
    )
    .unwrap();
    assert!(matches!(
        e.request(nobody, "127.0.0.1:9", b"x".to_vec()).await,
        Err(RequestError::Unreachable(_) | RequestError::Timeout(_))
    ));
    assert!(b.requests().is_none(), "taken once");
    for h in [a, b, c, d, e] {
        h.shutdown().await;
    }
    // Stopped: the expired request is skipped, and the receiver ends.
    assert!(matches!(timeout(WAIT, unread.recv()).await, Ok(None)));
}
