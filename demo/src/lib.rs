//! `shoal-demo-http` (also `shoal demo-http`): a tiny HTTP/1.1 server, and client, that shoal's
//! tests and demos deploy.
//!
//! The standard library and `nix` (for signals) only, so it links statically for a
//! `FROM scratch` image (see `demo/build-image.sh`):
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/demo-static \
//!     cargo build --release -p shoal-demo --bin shoal-demo-http
//! ```
//!
//! **Server** (no arguments): binds `$LISTEN`, else `$POD_IP:$PORT` (`POD_IP` defaults to
//! `0.0.0.0`, `PORT` to 8080), and answers, one thread per connection (at most 64 at once),
//! `Connection: close`:
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | `{"pod","namespace","node","ip","version"}` from `POD_NAME` (else `HOSTNAME`), `POD_NAMESPACE`, `NODE_NAME`, `POD_IP` (else the address the request came in on) and `VERSION` (else the crate version) |
//! | `GET /healthz` | 200 `ok`, or 500 once `POST /fail` was received (to test liveness probes) |
//! | `POST /fail` | makes `/healthz` fail from now on |
//! | `GET /ready` | 503 until `READY_AFTER_MS` (default 0) have passed since start, then 200 |
//! | `POST /exit?code=N` | answers, then exits with code N (default 1), to test crashes |
//! | `GET /echo?k=v&...` | the query parameters as a JSON object |
//!
//! Every request is logged on stdout, so log capture can be tested.
//!
//! **Stopping**: SIGTERM or SIGINT closes the listener (new connections are refused), lets the
//! requests in progress finish for at most [`DRAIN`], and exits with code 0. It closes at once,
//! or after `STOP_DELAY_MS` (default 0) of serving on, as a server draining slowly would (to
//! test grace periods running out). As PID 1
//! of a container a process gets no default action for these signals (the kernel protects a
//! namespace's init), so a server that did not handle them would be killed only when
//! `docker stop` or a pod's grace period runs out. They are blocked in every thread and taken
//! with `sigwait` by one thread of their own: no handler runs in an arbitrary thread, and a
//! blocked signal is never discarded, even for PID 1.
//!
//! **Client**: `shoal-demo-http --get http://HOST:PORT/PATH [--wait-ms N]` prints the body and
//! exits 0 on a 2xx answer, 1 otherwise; it retries connecting for up to `--wait-ms` (default
//! 5000) ms. HOST is an IP address, `localhost`, or a name resolved with `/etc/resolv.conf`
//! by a small resolver of its own ([`resolve`]: a static binary in an empty image has no
//! working `getaddrinfo`).

mod resolve;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

const MAX_CONNECTIONS: usize = 64;
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long requests in progress may take to finish once a stop signal came.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs the server (no arguments) or the client (`--get URL`) with `args` (the command line
/// without the program name), and exits the process with its status: what `shoal-demo-http`
/// and `shoal demo-http` run.
pub fn run(args: Vec<String>) -> ! {
    match args.first().map(String::as_str) {
        None => serve(),
        Some("--get") => std::process::exit(client(&args[1..])),
        Some("--help" | "-h") => {
            println!(
                "usage: shoal-demo-http                      serve HTTP on $LISTEN or $POD_IP:$PORT\n       \
                 shoal-demo-http --get URL [--wait-ms N]  GET URL, print the body, exit 0 on 2xx"
            );
        }
        Some(other) => {
            eprintln!("shoal-demo-http: unknown argument {other:?} (try --help)");
            std::process::exit(2);
        }
    }
    std::process::exit(0)
}

struct State {
    failing: AtomicBool,
    connections: AtomicUsize,
    started: Instant,
    ready_after: Duration,
    /// A stop signal came: the accept loop ends at its next wake-up.
    stopping: AtomicBool,
}

fn listen_addr() -> String {
    if let Ok(listen) = std::env::var("LISTEN") {
        if !listen.is_empty() {
            return listen;
        }
    }
    let ip = std::env::var("POD_IP")
        .ok()
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| "0.0.0.0".to_string());
    let port = std::env::var("PORT")
        .ok()
        .filter(|port| !port.is_empty())
        .unwrap_or_else(|| "8080".to_string());
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{ip}]:{port}"),
        _ => format!("{ip}:{port}"),
    }
}

/// The signals that stop the server, blocked in the calling thread and every thread it
/// starts from now on (so that only [`wait_for_stop`] takes them).
fn block_stop_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(err) = signals.thread_block() {
        eprintln!("shoal-demo-http: cannot block SIGTERM and SIGINT: {err}");
    }
    signals
}

/// Waits for a stop signal, then ends the accept loop: it sets `stopping` and connects to the
/// listener to wake the loop from `accept`.
fn wait_for_stop(signals: SigSet, state: Arc<State>, wake: SocketAddr) {
    let signal = loop {
        match signals.wait() {
            Ok(signal) => break signal,
            // Interrupted: wait again.
            Err(_) => continue,
        }
    };
    let delay = std::env::var("STOP_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    if !delay.is_zero() {
        println!(
            "{signal} received: closing the listener in {} ms",
            delay.as_millis()
        );
        let _ = std::io::stdout().flush();
        std::thread::sleep(delay);
    }
    println!("{signal} received: closing the listener");
    let _ = std::io::stdout().flush();
    state.stopping.store(true, Ordering::SeqCst);
    if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_err() {
        // The loop cannot be woken (nothing reaches the address it listens on): stop here.
        std::process::exit(0);
    }
}

/// The address that reaches a listener bound to `local` (its wildcard as loopback).
fn wake_addr(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), local.port())
        }
        _ => local,
    }
}

fn serve() {
    let signals = block_stop_signals();
    let addr = listen_addr();
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("shoal-demo-http: cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    let ready_after = std::env::var("READY_AFTER_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    let state = Arc::new(State {
        failing: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        started: Instant::now(),
        ready_after,
        stopping: AtomicBool::new(false),
    });
    let local = listener.local_addr();
    println!(
        "shoal-demo-http {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        local.as_ref().map(|a| a.to_string()).unwrap_or(addr)
    );
    let _ = std::io::stdout().flush();
    match local {
        Ok(local) => {
            let state = Arc::clone(&state);
            std::thread::spawn(move || wait_for_stop(signals, state, wake_addr(local)));
        }
        Err(err) => eprintln!("shoal-demo-http: no local address, stop signals kill: {err}"),
    }
    for stream in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = stream else { continue };
        if state.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            state.connections.fetch_sub(1, Ordering::SeqCst);
            let _ = respond(&mut stream, 503, "text/plain", "busy\n");
            continue;
        }
        let state = Arc::clone(&state);
        let spawned = std::thread::Builder::new().spawn({
            let state = Arc::clone(&state);
            move || {
                handle(stream, &state);
                state.connections.fetch_sub(1, Ordering::SeqCst);
            }
        });
        if spawned.is_err() {
            state.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
    // Closed: connections are refused from now on. Those in progress get a moment to finish.
    drop(listener);
    let deadline = Instant::now() + DRAIN;
    while state.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("stopped");
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

fn handle(mut stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Some((method, target, content_length)) = read_head(&stream) else {
        let _ = respond(&mut stream, 400, "text/plain", "bad request\n");
        return;
    };
    // Drain a small body so the client does not see a reset; ignore its content.
    if content_length > 0 && content_length <= 64 * 1024 {
        let mut body = vec![0; content_length];
        let _ = (&stream).read_exact(&mut body);
    }
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    println!("{method} {target}");
    let (status, kind, body) = match (method.as_str(), path) {
        ("GET", "/") => (200, "application/json", info_json(&stream)),
        ("GET", "/healthz") if state.failing.load(Ordering::SeqCst) => {
            (500, "text/plain", "failing\n".to_string())
        }
        ("GET", "/healthz") => (200, "text/plain", "ok\n".to_string()),
        ("POST", "/fail") => {
            state.failing.store(true, Ordering::SeqCst);
            (
                200,
                "text/plain",
                "/healthz fails from now on\n".to_string(),
            )
        }
        ("GET", "/ready") if state.started.elapsed() < state.ready_after => {
            (503, "text/plain", "not ready\n".to_string())
        }
        ("GET", "/ready") => (200, "text/plain", "ready\n".to_string()),
        ("POST", "/exit") => {
            let code = query_params(query)
                .into_iter()
                .find(|(k, _)| k == "code")
                .and_then(|(_, v)| v.parse::<i32>().ok())
                .unwrap_or(1);
            let _ = respond(&mut stream, 200, "text/plain", &format!("exiting {code}\n"));
            let _ = stream.flush();
            println!("exiting with code {code}");
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        ("GET", "/echo") => {
            let fields: Vec<String> = query_params(query)
                .iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
                .collect();
            (
                200,
                "application/json",
                format!("{{{}}}\n", fields.join(",")),
            )
        }
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    let _ = respond(&mut stream, status, kind, &body);
}

/// Reads the request line and headers; returns (method, target, content length).
fn read_head(stream: &TcpStream) -> Option<(String, String, usize)> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD_BYTES as u64));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut content_length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    Some((method, target, content_length))
}

fn respond(stream: &mut TcpStream, status: u16, kind: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn info_json(stream: &TcpStream) -> String {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let pod = env("POD_NAME")
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_default();
    let ip = env("POD_IP").unwrap_or_else(|| {
        stream
            .local_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    });
    let version = env("VERSION").unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    format!(
        "{{\"pod\":{},\"namespace\":{},\"node\":{},\"ip\":{},\"version\":{}}}\n",
        json_string(&pod),
        json_string(&env("POD_NAMESPACE").unwrap_or_default()),
        json_string(&env("NODE_NAME").unwrap_or_default()),
        json_string(&ip),
        json_string(&version)
    )
}

fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `--get URL [--wait-ms N]`: returns the process exit code.
fn client(args: &[String]) -> i32 {
    let Some(url) = args.first() else {
        eprintln!("shoal-demo-http: --get needs a URL");
        return 2;
    };
    let mut wait = Duration::from_millis(5000);
    if let (Some(flag), Some(ms)) = (args.get(1), args.get(2)) {
        if flag == "--wait-ms" {
            match ms.parse() {
                Ok(ms) => wait = Duration::from_millis(ms),
                Err(_) => {
                    eprintln!("shoal-demo-http: --wait-ms needs a number of milliseconds");
                    return 2;
                }
            }
        }
    }
    let Some((addr, host, path)) = parse_url(url) else {
        eprintln!(
            "shoal-demo-http: cannot use {url:?}: expected http://HOST[:PORT]/PATH with HOST an IP, localhost or a name that resolves"
        );
        return 2;
    };
    let deadline = Instant::now() + wait;
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(err) if Instant::now() >= deadline => {
                eprintln!("shoal-demo-http: cannot connect to {addr}: {err}");
                return 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if let Err(err) = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ) {
        eprintln!("shoal-demo-http: sending to {addr}: {err}");
        return 1;
    }
    let mut response = Vec::new();
    if let Err(err) = stream.take(1 << 20).read_to_end(&mut response) {
        eprintln!("shoal-demo-http: reading from {addr}: {err}");
        return 1;
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    print!("{body}");
    let _ = std::io::stdout().flush();
    if (200..300).contains(&status) {
        0
    } else {
        eprintln!("shoal-demo-http: {url} answered {status}");
        1
    }
}

/// `http://HOST[:PORT][/PATH]` with an IP or `localhost` as HOST.
fn parse_url(url: &str) -> Option<(SocketAddr, String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6.split_once(']')?;
        (ip, after.strip_prefix(':').unwrap_or("80"))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, "80"),
        }
    };
    let port: u16 = port.parse().ok()?;
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if let Ok(ip) = host.parse() {
        ip
    } else {
        match resolve::resolve(host) {
            Ok(ip) => ip,
            Err(err) => {
                eprintln!("shoal-demo-http: {err}");
                return None;
            }
        }
    };
    Some((SocketAddr::new(ip, port), authority.to_string(), path))
}
