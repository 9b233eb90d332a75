//! `shoal up`: a local cluster in one command, as a newcomer runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal_tests::{Scratch, shoal_bin};

/// `GET /` of `addr`: the body, if the answer came.
fn get(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The pod name in a sample-app answer.
fn pod_of(body: &str) -> Option<String> {
    let rest = body.split("\"pod\":\"").nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

/// Waits for a line of `shoal up`'s output that contains `text`; returns it.
fn wait_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(text) {
                    return line;
                }
            }
            Err(_) => panic!("no line with {text:?}; shoal up said:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn shoal_up_runs_a_cluster_that_serves_heals_and_stops_on_ctrl_c() {
    let scratch = Scratch::new("up");
    let dir = scratch.path().join("up");
    let started = Instant::now();
    let mut child = Command::new(shoal_bin())
        .args(["up", "--nodes", "3", "--dir"])
        .arg(&dir)
        .env_remove("SHOAL_API")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shoal up");
    let (tx, lines) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let _ = tx.send(line.unwrap_or_default());
            }
        });
    }
    let mut seen = Vec::new();
    wait_line(&lines, &mut seen, "Ctrl-C stops the cluster.");
    eprintln!("shoal up: ready in {:?}", started.elapsed());
    // The agents, as printed: name, pid, API.
    let agents: Vec<(String, u32, String)> = seen
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [name, pid, api, _] if name.starts_with("up-") => {
                    Some(((*name).to_owned(), pid.parse().ok()?, (*api).to_owned()))
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(agents.len(), 3, "{}", seen.join("\n"));
    let text = seen.join("\n");
    let cluster_ip = text
        .split("curl http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("a cluster IP to curl");

    // The service answers on its cluster IP and on the node port, from several pods.
    let mut pods = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let body = get("127.0.0.1:30080").expect("the node port answers");
        pods.insert(pod_of(&body).expect("a pod name"));
    }
    assert!(pods.len() >= 2, "one pod answered every time: {pods:?}");
    let body = get(&format!("{cluster_ip}:80")).expect("the cluster IP answers");
    assert!(body.contains("\"pod\":\"hello-"), "{body}");

    // A node dies: its replicas run elsewhere, and shoal up says how to start it again.
    let (_, victim, _) = &agents[1];
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let api = &agents[0].2;
    loop {
        let out = Command::new(shoal_bin())
            .args(["get", "pods", "-o", "wide", "--api", api])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let elsewhere = listing
            .lines()
            .filter(|l| l.contains("1/1") && l.contains("Running") && !l.contains("up-2"))
            .count();
        if elsewhere == 3 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "replicas did not move off up-2:\n{listing}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "shoal up: up-2 killed -> 3 replicas elsewhere in {:?}",
        killed.elapsed()
    );
    let said = wait_line(&lines, &mut seen, "Start it again");
    assert!(said.contains("up-2 exited"), "{said}");
    wait_line(&lines, &mut seen, "--name up-2");

    // Ctrl-C stops everything: the agents and every pod, the killed agent's included.
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    wait_line(&lines, &mut seen, "shoal up: stopped");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", seen.join("\n"));
    let left = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let pods_left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)))
        .count();
    assert_eq!(pods_left, 0, "pods still run in {}", dir.display());
}
