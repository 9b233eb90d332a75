//! Figures for workloads on this machine: 5 agents on loopback.
//!
//!     cargo build --release -p shoal-agent -p shoal-demo
//!     cargo run --release -p shoal-tests --example workload_bench -- [--runs 10] [--runtime process|docker]
//!
//! Over `--runs` runs each, prints the median and every run of:
//! - apply: `shoal apply` of a 10-replica deployment until all 10 are ready;
//! - kill: kill -9 of the node holding most replicas (its agent and pods) until every replica is
//!   ready again on the others;
//! - leave: `shoal leave` of the node holding most replicas until every replica is ready
//!   elsewhere.
//!
//! After each kill or leave a fresh node joins, so the cluster stays at 5 nodes.
//!
//! With `--runtime docker` the pods are containers of the locally built `shoal-demo:dev` image.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Agent, Cluster, demo_bin};

fn manifest(runtime: &str, replicas: u32) -> String {
    let command = if runtime == "docker" {
        String::new()
    } else {
        format!("        command: [\"{}\"]\n", demo_bin().display())
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: bench}}
  template:
    metadata:
      labels: {{app: bench}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: http
        image: shoal-demo:dev
        imagePullPolicy: Never
{command}        env:
        - {{name: PORT, value: "8080"}}
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
"#
    )
}

/// (ready replicas, pods per node name) as `via` sees them.
fn state(via: &Agent) -> (u64, Vec<(String, bool)>) {
    let (_, body) = via.http("GET", "/api/v1/deployments/default/bench", None);
    let d: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let ready = d["object"]["status"]["readyReplicas"].as_u64().unwrap_or(0);
    let (_, body) = via.http("GET", "/api/v1/pods?namespace=default", None);
    let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let pods = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                ready,
            )
        })
        .collect();
    (ready, pods)
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn all_ready_without(via: &Agent, replicas: u64, gone: &str) -> bool {
    let (ready, pods) = state(via);
    ready >= replicas
        && pods.iter().filter(|(_, r)| *r).count() as u64 >= replicas
        && pods.iter().all(|(n, _)| n != gone)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn print(what: &str, v: &[f64]) {
    let runs: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
    println!(
        "{what:<44} median {:>6.0} ms  ({} ms)",
        median(v),
        runs.join(" ")
    );
}

fn main() {
    let mut runs = 10;
    let mut runtime = "process".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--runtime" => runtime = args.next().expect("--runtime process|docker"),
            other => panic!("unknown argument {other}"),
        }
    }
    if runtime == "docker" {
        shoal_agent::runtime::testing::build_demo_image().expect("building shoal-demo:dev");
    }
    let extra = ["--runtime", runtime.as_str()];
    let mut cluster = Cluster::start_with("wbench", 5, &extra);
    let manifest_path = cluster.dir().join("bench.yaml");
    let replicas = 10;
    std::fs::write(&manifest_path, manifest(&runtime, replicas)).unwrap();
    let path = manifest_path.to_str().unwrap().to_owned();

    // apply -> 10 ready.
    let mut apply_ms = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        cluster.agents[0]
            .cli(&["apply", "-f", &path])
            .expect("apply");
        wait("10 ready", Duration::from_secs(60), || {
            state(&cluster.agents[0]).0 >= u64::from(replicas)
        });
        apply_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        cluster.agents[0]
            .cli(&["delete", "deployment", "bench"])
            .expect("delete");
        wait("pods gone", Duration::from_secs(60), || {
            state(&cluster.agents[0]).1.is_empty()
        });
    }
    cluster.agents[0]
        .cli(&["apply", "-f", &path])
        .expect("apply");
    wait("10 ready", Duration::from_secs(60), || {
        state(&cluster.agents[0]).0 >= u64::from(replicas)
    });

    // kill -9 of a node holding replicas, then leave of one.
    let mut kill_ms = Vec::new();
    let mut leave_ms = Vec::new();
    for run in 0..runs * 2 {
        // The victim: the node (not node-0, which the bench talks to) with most ready replicas.
        wait("10 ready", Duration::from_secs(60), || {
            state(&cluster.agents[0]).0 >= u64::from(replicas)
        });
        std::thread::sleep(Duration::from_secs(1));
        let (_, pods) = state(&cluster.agents[0]);
        let running: Vec<usize> = (1..cluster.agents.len())
            .filter(|&i| cluster.agents[i].is_running())
            .collect();
        let i = running
            .into_iter()
            .max_by_key(|&i| {
                let name = &cluster.agents[i].name;
                pods.iter().filter(|(n, r)| n == name && *r).count()
            })
            .expect("a running node besides node-0");
        let name = cluster.agents[i].name.clone();
        let held = pods.iter().filter(|(n, r)| *n == name && *r).count();
        assert!(held > 0, "no node besides node-0 holds a replica");
        let took = if run % 2 == 0 {
            let start = Instant::now();
            cluster.agents[i].kill_machine();
            wait(
                "ready elsewhere after kill",
                Duration::from_secs(60),
                || all_ready_without(&cluster.agents[0], u64::from(replicas), &name),
            );
            start.elapsed()
        } else {
            let start = Instant::now();
            cluster.agents[i].cli(&["leave"]).expect("leave");
            wait(
                "ready elsewhere after leave",
                Duration::from_secs(60),
                || all_ready_without(&cluster.agents[0], u64::from(replicas), &name),
            );
            let took = start.elapsed();
            cluster.agents[i].wait_exit(Duration::from_secs(30));
            took
        };
        let ms = took.as_secs_f64() * 1000.0;
        eprintln!(
            "{} of {name} ({held} replicas): {ms:.0} ms",
            if run % 2 == 0 { "kill -9" } else { "leave" }
        );
        if run % 2 == 0 {
            kill_ms.push(ms);
        } else {
            leave_ms.push(ms);
        }
        // A fresh machine takes the victim's place: the cluster stays at 5 nodes.
        cluster.add();
    }
    println!("5 agents on loopback, {runtime} runtime, {runs} runs each");
    print("apply 10 replicas -> all ready", &apply_ms);
    print(
        "kill -9 of a node -> its replicas ready elsewhere",
        &kill_ms,
    );
    print("shoal leave -> its replicas ready elsewhere", &leave_ms);
}
