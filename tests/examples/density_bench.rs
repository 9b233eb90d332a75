//! Figures for many pods per node: `--nodes` agents (default 1) with the process runtime run a
//! deployment of `--pods` replicas (default 2000) of `sleep`.
//!
//!     cargo build --release -p shoal-agent
//!     cargo run --release -p shoal-tests --example density_bench -- [--nodes 1] [--pods 2000] [--measure 30]
//!
//! Prints the time until every replica is ready, then each agent's CPU (share of one core) and
//! resident memory over `--measure` seconds once converged, when nothing changes: the cost of
//! holding that many pods (listing the runtime, probes of none, gossip of unchanged records).
//! The agents leave at the end, stopping their pods.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Agent, Cluster, rss_and_cpu};

fn manifest(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: dense
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: dense}}
  template:
    metadata:
      labels: {{app: dense}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: unused
        command: ["sleep", "1000000"]
"#
    )
}

/// Ready replicas of the deployment as `via` sees them.
fn ready(via: &Agent) -> u64 {
    let (status, body) = via.http("GET", "/api/v1/deployments/default/dense", None);
    if status != 200 {
        return 0;
    }
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|d| d["object"]["status"]["readyReplicas"].as_u64())
        .unwrap_or(0)
}

fn main() {
    let (mut nodes, mut pods, mut measure) = (1usize, 2000u32, 30u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--nodes" => nodes = value().expect("--nodes N") as usize,
            "--pods" => pods = value().expect("--pods N") as u32,
            "--measure" => measure = value().expect("--measure SECONDS"),
            other => panic!("unknown argument {other}"),
        }
    }
    let mut cluster = Cluster::start_with("density", nodes, &["--runtime", "process"]);
    cluster.apply(0, "dense", &manifest(pods)).expect("apply");
    let start = Instant::now();
    let mut last = 0;
    loop {
        let now = ready(&cluster.agents[0]);
        if now != last {
            eprintln!("{:>6.1} s: {now} ready", start.elapsed().as_secs_f64());
            last = now;
        }
        if now >= u64::from(pods) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1200),
            "only {now} of {pods} ready after 20 min"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{pods} pods on {nodes} node(s) ready after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // Let the last records spread and the runtimes settle.
    std::thread::sleep(Duration::from_secs(10));
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let before: Vec<(u64, u64)> = cluster
        .agents
        .iter()
        .map(|a| rss_and_cpu(a.pid().expect("running")).expect("proc"))
        .collect();
    std::thread::sleep(Duration::from_secs(measure));
    for (agent, (_, cpu_before)) in cluster.agents.iter().zip(before) {
        let (rss, cpu_after) = rss_and_cpu(agent.pid().expect("running")).expect("proc");
        let share = (cpu_after - cpu_before) as f64 / ticks_per_s / measure as f64;
        println!(
            "{:<8} converged: {:>5.2} % of a core, {:>7} kB resident",
            agent.name,
            share * 100.0,
            rss
        );
    }
    // Process pods outlive a killed agent: leave gracefully, so each agent stops its pods.
    for agent in &mut cluster.agents {
        agent.signal("TERM");
        assert!(
            agent.wait_exit(Duration::from_secs(300)),
            "{} did not stop",
            agent.name
        );
    }
}
