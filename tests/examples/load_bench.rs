//! Holding load: many small Deployments and one big one on a few agents (process runtime,
//! `sleep` pods).
//!
//!     cargo build --release -p shoal-agent -p shoal-demo
//!     cargo run --release -p shoal-tests --example load_bench -- \
//!         [--nodes 3] [--deployments 2000] [--each 1] [--big 2000] [--settle-s 30] [--nowhere] [--delete]
//!
//! `--delete` deletes everything at the end and prints what the agents' memory comes back to.
//!
//! `--nowhere` gives every pod a node selector no node matches: nothing runs, and the figures
//! are what unschedulable replicas cost the agents (memory, CPU).
//!
//! Applies `--deployments` Deployments of `--each` replicas (one by default) and one Deployment
//! of `--big` replicas in one `shoal apply`, then prints:
//! - the time from the apply until every pod runs exactly once (each pod's process found
//!   once, none extra), and the most pod processes seen at once on the way;
//! - deaths declared and suspicions raised by the agents (there must be no death: every node
//!   stays up);
//! - each agent's CPU (percent of one core) over `--settle-s` seconds once converged, and its
//!   resident memory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Agent, Cluster};

/// The marker every pod's command carries, to find pod processes.
const MARK: &str = "86400.4242";

fn manifest(deployments: usize, each: u32, big: u32, nowhere: bool) -> String {
    let mut out = String::new();
    let selector = if nowhere {
        "      nodeSelector: {shoal.io/nowhere: \"true\"}\n"
    } else {
        ""
    };
    let doc = |name: &str, replicas: u32| {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  \
             replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {name}}}}}\n    spec:\n{selector}      \
             terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        \
             image: sleep\n        command: [sleep, \"{MARK}\"]\n"
        )
    };
    for i in 0..deployments {
        out.push_str(&doc(&format!("small-{i:05}"), each));
    }
    if big > 0 {
        out.push_str(&doc("big", big));
    }
    out
}

/// Pod processes now: (pod name from the environment, count).
fn pod_processes() -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        if !cmdline.ends_with(format!("{MARK}\0").as_bytes()) {
            continue;
        }
        let env = std::fs::read(path.join("environ")).unwrap_or_default();
        let name = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"HOSTNAME="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| format!("pid-{}", entry.file_name().to_string_lossy()));
        *out.entry(name).or_default() += 1;
    }
    out
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// utime + stime from the text of a `stat` file (a process's or a thread's).
fn stat_ticks(stat: &str) -> u64 {
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields after the command: state is 0, utime 11, stime 12.
    get(11) + get(12)
}

/// CPU ticks of each thread of a process, summed by thread name.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(n, _)| n.to_owned())
            .unwrap_or_default();
        *out.entry(name).or_default() += stat_ticks(&stat);
    }
    out
}

/// Kills pod processes left by an earlier run (process pods outlive their agent by design).
fn kill_leftovers() {
    let _ = std::process::Command::new("pkill")
        .args(["-f", &format!("sleep {MARK}")])
        .status();
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn counter(agent: &Agent, path: &[&str]) -> u64 {
    let (_, body) = agent.http("GET", "/api/v1/stats", None);
    let mut value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    for p in path {
        value = value[*p].take();
    }
    value.as_u64().unwrap_or(0)
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| panic!("{flag} takes a number, not {value:?}"))
}

fn main() {
    let mut nodes: usize = 3;
    let mut deployments: usize = 2000;
    let mut each: u32 = 1;
    let mut big: u32 = 2000;
    let mut settle: u64 = 30;
    let mut nowhere = false;
    let mut delete = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--nowhere" {
            nowhere = true;
            continue;
        }
        if a == "--delete" {
            delete = true;
            continue;
        }
        let value = args.next().unwrap_or_default();
        match a.as_str() {
            "--nodes" => nodes = number(&a, &value),
            "--deployments" => deployments = number(&a, &value),
            "--each" => each = number(&a, &value),
            "--big" => big = number(&a, &value),
            "--settle-s" => settle = number(&a, &value),
            other => panic!("unknown argument {other}"),
        }
    }
    let wanted = deployments * each as usize + big as usize;
    kill_leftovers();
    let cluster = Cluster::start_with("lbench", nodes, &["--runtime", "process"]);
    let path = cluster.dir().join("load.yaml");
    std::fs::write(&path, manifest(deployments, each, big, nowhere)).expect("writing the manifest");

    let pids: Vec<u32> = cluster.agents.iter().filter_map(Agent::pid).collect();
    let rss_before: Vec<f64> = pids.iter().map(|&p| rss_mb(p)).collect();
    let start = Instant::now();
    let out = cluster.agents[0]
        .cli(&["apply", "-f", path.to_str().expect("utf-8 path")])
        .expect("apply");
    let applied_ms = start.elapsed().as_millis();
    eprintln!(
        "apply of {} objects answered in {applied_ms} ms",
        out.lines().count()
    );

    // Until every pod runs exactly once (with --nowhere: a while, as nothing will run).
    let mut most = 0;
    let converged = loop {
        if nowhere {
            std::thread::sleep(Duration::from_secs(10));
            break None;
        }
        let procs = pod_processes();
        let total: u32 = procs.values().sum();
        most = most.max(total);
        if procs.len() == wanted && procs.values().all(|&n| n == 1) {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(300) {
            eprintln!(
                "not converged after 300 s: {} pods, {total} processes",
                procs.len()
            );
            break None;
        }
        if start.elapsed().as_secs() % 10 == 0 {
            eprintln!(
                "{:>4} s: {} pods running, {total} processes",
                start.elapsed().as_secs(),
                procs.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    // Once converged: CPU over the settle window.
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(settle));
    let secs = t0.elapsed().as_secs_f64();
    let ticks_per_s = 100.0;
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, &b)| (cpu_ticks(p) - b) as f64 / ticks_per_s / secs * 100.0)
        .collect();
    let rss: Vec<f64> = pids.iter().map(|&p| rss_mb(p)).collect();
    let procs = pod_processes();
    let deaths: u64 = cluster
        .agents
        .iter()
        .map(|a| counter(a, &["gossip", "deaths_declared"]))
        .sum();
    let suspicions: u64 = cluster
        .agents
        .iter()
        .map(|a| counter(a, &["gossip", "suspicions_raised"]))
        .sum();

    println!(
        "{nodes} agents, {deployments} deployments of {each} replica(s) + one of {big} replicas \
         ({wanted} pods), process runtime"
    );
    match converged {
        None if nowhere => println!("no node matches the pods' selector: {wanted} replicas wait"),
        Some(t) => println!(
            "every pod running exactly once: {:.1} s after the apply",
            t.as_secs_f64()
        ),
        None => println!("NOT converged within 300 s"),
    }
    println!("apply answered in {applied_ms} ms; most pod processes at once: {most}");
    println!(
        "after {settle} s more: {} pods, {} processes",
        procs.len(),
        procs.values().sum::<u32>()
    );
    println!("deaths declared: {deaths}; suspicions raised: {suspicions}");
    for (i, (c, r)) in cpu.iter().zip(&rss).enumerate() {
        println!(
            "node-{i}: {c:.1}% of a core over {secs:.0} s, RSS {r:.0} MB ({:.0} MB before the \
             apply: {:.1} KB more per replica)",
            rss_before[i],
            (r - rss_before[i]) * 1024.0 / wanted.max(1) as f64
        );
    }
    // Where each agent's CPU went since it started, by thread.
    for (i, &pid) in pids.iter().enumerate() {
        let threads = thread_ticks(pid);
        let mut parts: Vec<(String, u64)> = threads.into_iter().collect();
        parts.sort_by_key(|(_, ticks)| std::cmp::Reverse(*ticks));
        let text: Vec<String> = parts
            .iter()
            .take(6)
            .map(|(n, t)| format!("{n} {:.1} s", *t as f64 / ticks_per_s))
            .collect();
        println!("node-{i} CPU by thread since start: {}", text.join(", "));
    }
    let gossip_mb: Vec<String> = cluster
        .agents
        .iter()
        .map(|a| {
            format!(
                "{:.1}",
                counter(a, &["gossip", "bytes_sent"]) as f64 / (1 << 20) as f64
            )
        })
        .collect();
    println!("gossip sent per agent (MiB): {}", gossip_mb.join(", "));
    if delete {
        // Everything deleted: what the agents give back.
        let start = Instant::now();
        cluster.agents[0]
            .cli(&["delete", "-f", path.to_str().expect("utf-8 path")])
            .expect("delete");
        while !pod_processes().is_empty() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(500));
        }
        let gone = start.elapsed();
        std::thread::sleep(Duration::from_secs(settle));
        let rss: Vec<String> = pids.iter().map(|&p| format!("{:.0}", rss_mb(p))).collect();
        println!(
            "deleted: every pod process gone {:.1} s after the delete ({} left); RSS {settle} s \
             later (MB): {}",
            gone.as_secs_f64(),
            pod_processes().len(),
            rss.join(", ")
        );
    }
    drop(cluster);
    kill_leftovers();
}
