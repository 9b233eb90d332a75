//! Mesh benchmark: two agents' meshes on loopback in one process.
//!
//! ```text
//! client ──TCP──> agent A listener ──mesh.proxy──> QUIC ──> agent B ──TCP──> echo / sink
//! client ──TCP──────────────────────────────────────────────────────────────> echo / sink (direct)
//! ```
//!
//! Measures single-stream and 64-stream upload throughput (to a sink), request/response latency
//! at a fixed 1,000 requests/s (64-byte requests to an echo server) and the resident memory of
//! 1,000 idle proxied connections, each against a direct TCP connection in the same run.
//!
//! `cargo run --release -p shoal-mesh --example mesh_bench -- [--json] [--seconds S]`
//!
//! Needs about 7,000 file descriptors (`ulimit -n`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_mesh::{Endpoint, Keypair, Members, Mesh, MeshConfig, ServiceKey, Tuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const WRITE_CHUNK: usize = 256 * 1024;

struct Options {
    json: bool,
    seconds: f64,
    /// Only the single-stream mesh upload (for profiling).
    single_only: bool,
}

fn parse_args() -> Options {
    let mut options = Options {
        json: false,
        seconds: 3.0,
        single_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => options.json = true,
            "--seconds" => {
                options.seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .unwrap_or_else(|| usage("--seconds needs a positive number"));
            }
            "--single-only" => options.single_only = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    options
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("mesh_bench: {problem}");
    }
    eprintln!("usage: mesh_bench [--json] [--seconds S] [--single-only]");
    std::process::exit(2)
}

/// Echo server that holds no buffer while a connection is idle.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let mut socket = socket;
                loop {
                    if socket.readable().await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 16 * 1024];
                    match socket.try_read(&mut buf) {
                        Ok(0) => {
                            let _ = socket.shutdown().await;
                            return;
                        }
                        Ok(n) => {
                            if socket.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

/// Sink server: reads until EOF, then answers the byte count (u64 BE).
async fn sink_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; WRITE_CHUNK];
                let mut total = 0u64;
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = socket.write_all(&total.to_be_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP listener on agent A that proxies every connection to `endpoint` through the mesh.
async fn proxy_listener(mesh: Mesh, service: ServiceKey, endpoint: Endpoint) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (mesh, service) = (mesh.clone(), service.clone());
            tokio::spawn(async move {
                if let Err(e) = mesh.proxy(client, &service, &[endpoint]).await {
                    eprintln!("proxy: {e}");
                }
            });
        }
    });
    addr
}

/// Uploads for `seconds` on one connection; returns bytes acknowledged by the sink.
async fn upload(addr: SocketAddr, seconds: f64) -> u64 {
    let mut socket = TcpStream::connect(addr).await.expect("connect for upload");
    let data = vec![0x5au8; WRITE_CHUNK];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        socket.write_all(&data).await.expect("upload write");
        sent += data.len() as u64;
    }
    socket.shutdown().await.expect("upload shutdown");
    let mut count = [0u8; 8];
    socket.read_exact(&mut count).await.expect("sink count");
    let received = u64::from_be_bytes(count);
    assert_eq!(received, sent, "the sink got every byte");
    received
}

/// Aggregate upload throughput of `streams` connections, in Gbit/s.
async fn throughput(addr: SocketAddr, streams: usize, seconds: f64) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        tasks.spawn(upload(addr, seconds));
    }
    let mut bytes = 0u64;
    while let Some(n) = tasks.join_next().await {
        bytes += n.expect("upload task");
    }
    bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9
}

/// Round-trip times (µs, sorted) of 64-byte requests sent at `rate` per second over
/// `connections` connections for `seconds`.
async fn latency(addr: SocketAddr, rate: u32, seconds: f64, connections: usize) -> Vec<u64> {
    let mut tasks = tokio::task::JoinSet::new();
    let per_connection = f64::from(rate) / connections as f64;
    for _ in 0..connections {
        tasks.spawn(async move {
            let mut socket = TcpStream::connect(addr).await.expect("connect for latency");
            socket.set_nodelay(true).expect("nodelay");
            let request = [7u8; 64];
            let mut reply = [0u8; 64];
            // Warm up.
            for _ in 0..50 {
                socket.write_all(&request).await.expect("write");
                socket.read_exact(&mut reply).await.expect("read");
            }
            let interval = Duration::from_secs_f64(1.0 / per_connection);
            let count = (seconds * per_connection) as usize;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut samples = Vec::with_capacity(count);
            for _ in 0..count {
                ticker.tick().await;
                let sent = Instant::now();
                socket.write_all(&request).await.expect("write");
                socket.read_exact(&mut reply).await.expect("read");
                samples.push(sent.elapsed().as_micros() as u64);
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(samples) = tasks.join_next().await {
        all.extend(samples.expect("latency task"));
    }
    all.sort_unstable();
    all
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Opens `n` connections to `addr`, each doing one small round trip, then lets them sit idle;
/// returns the RSS growth in MiB and the connections (kept open by the caller).
async fn idle_connections(addr: SocketAddr, n: usize) -> (f64, Vec<TcpStream>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut socket = TcpStream::connect(addr).await.expect("connect idle");
        socket.write_all(b"ping").await.expect("write idle");
        let mut reply = [0u8; 4];
        socket.read_exact(&mut reply).await.expect("read idle");
        held.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    (
        after.saturating_sub(before) as f64 / (1024.0 * 1024.0),
        held,
    )
}

async fn start_mesh(
    keypair: Keypair,
    members: watch::Receiver<Arc<Members>>,
    allowed: Arc<HashSet<SocketAddr>>,
) -> Mesh {
    let config = MeshConfig {
        keypair,
        listen: "127.0.0.1:0".parse().expect("addr"),
        tuning: Tuning::default(),
    };
    Mesh::start(config, members, move |dest| allowed.contains(&dest))
        .await
        .expect("mesh starts")
}

fn main() {
    let options = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    let echo = echo_server().await;
    let sink = sink_server().await;
    let allowed = Arc::new(HashSet::from([echo, sink]));
    let (members_tx, members_rx) = watch::channel(Arc::new(Members::new()));
    let a = start_mesh(
        Keypair::generate_ed25519(),
        members_rx.clone(),
        Arc::new(HashSet::new()),
    )
    .await;
    let b = start_mesh(Keypair::generate_ed25519(), members_rx, allowed).await;
    members_tx.send_replace(Arc::new(
        [
            (a.local_peer_id(), a.local_addr()),
            (b.local_peer_id(), b.local_addr()),
        ]
        .into_iter()
        .collect(),
    ));
    let on_b = |addr| Endpoint {
        node: b.local_peer_id(),
        addr,
    };
    let echo_via_mesh = proxy_listener(
        a.clone(),
        ServiceKey::new("bench/echo").expect("key"),
        on_b(echo),
    )
    .await;
    let sink_via_mesh = proxy_listener(
        a.clone(),
        ServiceKey::new("bench/sink").expect("key"),
        on_b(sink),
    )
    .await;

    if options.single_only {
        let gbps = throughput(sink_via_mesh, 1, options.seconds).await;
        println!("single stream {gbps:.2} Gbit/s");
        return;
    }
    // Memory first, while the heap has not yet been grown (and freed) by the other runs. The
    // mesh's connection to B is dialed by a first round trip. 1,000 direct connections are
    // opened and kept, then 1,000 proxied ones: each delta is new memory only.
    drop(idle_connections(echo_via_mesh, 1).await);
    let (direct_idle_mb, direct_held) = idle_connections(echo, 1_000).await;
    let (idle_mb, held) = idle_connections(echo_via_mesh, 1_000).await;
    let active_after_idle = a.metrics().outbound["bench/echo"].active;
    drop(held);
    drop(direct_held);

    let seconds = options.seconds;
    let direct_gbps = throughput(sink, 1, seconds).await;
    let single_stream_gbps = throughput(sink_via_mesh, 1, seconds).await;
    let direct64_gbps = throughput(sink, 64, seconds).await;
    let parallel64_gbps = throughput(sink_via_mesh, 64, seconds).await;

    let lat_seconds = seconds.max(2.0);
    let direct_lat = latency(echo, 1_000, lat_seconds, 4).await;
    let mesh_lat = latency(echo_via_mesh, 1_000, lat_seconds, 4).await;
    let (direct_p50, direct_p99) = (percentile(&direct_lat, 0.5), percentile(&direct_lat, 0.99));
    let (mesh_p50, mesh_p99) = (percentile(&mesh_lat, 0.5), percentile(&mesh_lat, 0.99));

    let added_p50 = mesh_p50 as i64 - direct_p50 as i64;
    let added_p99 = mesh_p99 as i64 - direct_p99 as i64;
    if options.json {
        let report = serde_json::json!({
            "single_stream_gbps": round2(single_stream_gbps),
            "direct_gbps": round2(direct_gbps),
            "single_stream_ratio": round2(single_stream_gbps / direct_gbps),
            "parallel64_gbps": round2(parallel64_gbps),
            "direct64_gbps": round2(direct64_gbps),
            "mesh_p50_us": mesh_p50,
            "mesh_p99_us": mesh_p99,
            "direct_p50_us": direct_p50,
            "direct_p99_us": direct_p99,
            "added_p50_us": added_p50,
            "added_p99_us": added_p99,
            "idle_1000_conn_mb": round2(idle_mb),
            "idle_1000_direct_mb": round2(direct_idle_mb),
            "idle_active_streams": active_after_idle,
        });
        println!("{report}");
    } else {
        println!("mesh_bench: 2 meshes on loopback, one process ({seconds} s per throughput run)");
        println!(
            "single stream      {single_stream_gbps:6.2} Gbit/s   direct {direct_gbps:6.2} Gbit/s   ratio {:.2}",
            single_stream_gbps / direct_gbps
        );
        println!(
            "64 parallel        {parallel64_gbps:6.2} Gbit/s   direct {direct64_gbps:6.2} Gbit/s"
        );
        println!(
            "latency @1000/s    p50 {mesh_p50} us  p99 {mesh_p99} us   direct p50 {direct_p50} us  p99 {direct_p99} us   added p50 {added_p50} us  p99 {added_p99} us"
        );
        println!(
            "1000 idle conns    {idle_mb:.2} MiB RSS (direct {direct_idle_mb:.2} MiB), {active_after_idle} streams active"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
