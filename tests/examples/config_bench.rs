//! Figures for config maps on this machine: 5 agents on loopback, process runtime.
//!
//!     cargo build --release -p shoal-agent
//!     cargo run --release -p shoal-tests --example config_bench -- [--changes 20] [--maps 1000]
//!
//! Prints:
//! - update propagation: a config map mounted by 5 pods spread over the 5 nodes is changed
//!   `--changes` times through one agent; for each change, the time from the apply returning
//!   until every pod on another node has the new file (p50, p99, max);
//! - `--maps` config maps of 1 KiB applied at once through one agent: the time until every
//!   agent holds them all;
//! - the largest object (a config map of 1 MiB): the time until all 5 agents hold it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Cluster, apply_manifest, rss_and_cpu};

const AGENTS: usize = 5;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn config_map(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: readers
spec:
  replicas: 5
  selector:
    matchLabels: {app: readers}
  template:
    metadata:
      labels: {app: readers}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: none
        command: ["/bin/sh", "-c", "exec sleep 3600"]
      volumes:
      - name: config
        configMap: {name: bench}
"#;

/// The mounted files (`pods/<uid>/volumes/config/value`) on each agent but `skip`.
fn mounted(cluster: &Cluster, skip: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (i, agent) in cluster.agents.iter().enumerate() {
        if i == skip {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(agent.dir.join("pods")) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.path().join("volumes/config/value");
            if file.exists() {
                out.push(file);
            }
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// How many config maps an agent holds.
fn held(cluster: &Cluster, agent: usize) -> usize {
    let (status, body) = cluster.agents[agent].http("GET", "/api/v1/objects/configmap", None);
    if status != 200 {
        return 0;
    }
    let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    list["items"].as_array().map_or(0, Vec::len)
}

fn main() {
    let changes = arg("--changes", 20);
    let maps = arg("--maps", 1000);
    let cluster = Cluster::start_with("config-bench", AGENTS, &["--runtime", "process"]);
    let dir = cluster.dir().to_owned();
    let via = 0;
    apply_manifest(
        &cluster.agents[via],
        &dir,
        "bench",
        &config_map("bench", "v0"),
    )
    .unwrap();
    apply_manifest(&cluster.agents[via], &dir, "readers", DEPLOYMENT).unwrap();
    // Wait for the pods' files on the other nodes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let files = loop {
        let files = mounted(&cluster, via);
        if files.len() >= 4 || Instant::now() > deadline {
            break files;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "{} pods mount the config map on the {} agents other than the one written to",
        files.len(),
        AGENTS - 1
    );
    assert!(!files.is_empty(), "no pod on another node");

    let mut took = Vec::new();
    for i in 1..=changes {
        let value = format!("v{i}");
        apply_manifest(
            &cluster.agents[via],
            &dir,
            "bench",
            &config_map("bench", &value),
        )
        .unwrap();
        let applied = Instant::now();
        loop {
            let done = files
                .iter()
                .all(|f| std::fs::read_to_string(f).is_ok_and(|t| t == value));
            if done {
                break;
            }
            assert!(
                applied.elapsed() < Duration::from_secs(30),
                "change {i} did not arrive"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        took.push(applied.elapsed());
    }
    took.sort();
    println!(
        "update propagation over {changes} changes, {} files on other nodes: p50 {:?}, p99 {:?}, max {:?}",
        files.len(),
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().unwrap()
    );

    // Many config maps at once.
    let rss = |c: &Cluster| -> Vec<u64> {
        c.agents
            .iter()
            .map(|a| a.pid().and_then(rss_and_cpu).map_or(0, |(kb, _)| kb))
            .collect()
    };
    let before = rss(&cluster);
    let kib = "x".repeat(1024);
    let many: String = (0..maps)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: many-{i}\ndata:\n  value: {kib}\n---\n"))
        .collect();
    let started = Instant::now();
    apply_manifest(&cluster.agents[via], &dir, "many", &many).unwrap();
    let applied = started.elapsed();
    loop {
        // The thousand and the bench's own config map.
        if (0..AGENTS).all(|a| held(&cluster, a) > maps) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not everywhere"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{maps} config maps of 1 KiB: apply took {applied:?}, on all {AGENTS} agents {:?} after it began",
        started.elapsed()
    );
    // Settled: what gossip queued for retransmission has gone.
    std::thread::sleep(Duration::from_secs(10));
    let grown: Vec<i64> = rss(&cluster)
        .iter()
        .zip(&before)
        .map(|(after, before)| *after as i64 - *before as i64)
        .collect();
    println!("resident memory grown with them, per agent (KiB): {grown:?}");

    // The largest object.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  value: {}\n",
        "y".repeat((1 << 20) - 64)
    );
    let started = Instant::now();
    apply_manifest(&cluster.agents[via], &dir, "big", &big).unwrap();
    let applied = started.elapsed();
    loop {
        let everywhere = (0..AGENTS).all(|a| {
            cluster.agents[a]
                .http("GET", "/api/v1/objects/configmap/default/big", None)
                .0
                == 200
        });
        if everywhere {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not everywhere"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "a 1 MiB config map: apply took {applied:?}, on all {AGENTS} agents {:?} after it began",
        started.elapsed()
    );
}
