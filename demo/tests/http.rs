//! The demo server and client, as processes on loopback. Also makes `cargo test --workspace`
//! build the `shoal-demo-http` binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-demo-http");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start(envs: &[(&str, &str)]) -> (Server, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .env("LISTEN", &addr)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting shoal-demo-http");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the demo server did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, addr)
}

fn request(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .expect("reading the answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[test]
fn serves_info_health_readiness_echo_and_exit() {
    let (mut server, addr) = start(&[
        ("POD_NAME", "web-0"),
        ("POD_NAMESPACE", "default"),
        ("NODE_NAME", "n1"),
        ("VERSION", "v7"),
        ("READY_AFTER_MS", "300"),
    ]);
    let (status, body) = request(&addr, "GET", "/");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "{\"pod\":\"web-0\",\"namespace\":\"default\",\"node\":\"n1\",\"ip\":\"127.0.0.1\",\"version\":\"v7\"}\n"
    );
    assert_eq!(request(&addr, "GET", "/ready").0, 503);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(request(&addr, "GET", "/ready").0, 200);
    assert_eq!(request(&addr, "GET", "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(request(&addr, "POST", "/fail").0, 200);
    assert_eq!(request(&addr, "GET", "/healthz").0, 500);
    assert_eq!(
        request(&addr, "GET", "/echo?a=1&b=hello%20world&c=x+y"),
        (
            200,
            "{\"a\":\"1\",\"b\":\"hello world\",\"c\":\"x y\"}\n".to_string()
        )
    );
    assert_eq!(request(&addr, "GET", "/nope").0, 404);
    assert_eq!(request(&addr, "POST", "/exit?code=7").0, 200);
    let status = server.0.wait().expect("waiting for the server");
    assert_eq!(status.code(), Some(7));
}

#[test]
fn client_mode_gets_and_reports_status() {
    let (_server, addr) = start(&[("POD_NAME", "c")]);
    let port = addr.rsplit_once(':').unwrap().1;
    let out = Command::new(BIN)
        .args(["--get", &format!("http://localhost:{port}/healthz")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    let out = Command::new(BIN)
        .args(["--get", &format!("http://{addr}/missing")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Nothing listens there: gives up after --wait-ms.
    let closed = free_port();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args([
            "--get",
            &format!("http://127.0.0.1:{closed}/"),
            "--wait-ms",
            "300",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Waits for the server to exit, at most `limit`; returns its status and how long it took.
fn wait_exit(server: &mut Server, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = server.0.try_wait().expect("waiting for the server") {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "the server still runs {limit:?} after the signal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(server: &Server, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(server.0.id() as i32);
    nix::sys::signal::kill(pid, signal).expect("signalling the server");
}

#[test]
fn sigterm_closes_the_listener_finishes_requests_in_progress_and_exits() {
    let (mut server, addr) = start(&[("POD_NAME", "web-0")]);
    // A request in progress: its head is not complete yet when the signal comes.
    let mut in_progress = TcpStream::connect(&addr).expect("connecting");
    write!(in_progress, "GET /healthz HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    signal(&server, nix::sys::signal::Signal::SIGTERM);
    // The listener closes at once: new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The request in progress is answered.
    write!(in_progress, "Host: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    in_progress.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    let (status, _) = wait_exit(&mut server, Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_stops_an_idle_server_at_once() {
    let (mut server, addr) = start(&[]);
    assert_eq!(request(&addr, "GET", "/healthz").0, 200);
    signal(&server, nix::sys::signal::Signal::SIGINT);
    let (status, took) = wait_exit(&mut server, Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
