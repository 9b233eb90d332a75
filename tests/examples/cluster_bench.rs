//! Figures for real clusters on this machine: 5 `shoal agent` processes on loopback.
//!
//!     cargo build --release -p shoal-agent
//!     cargo run --release -p shoal-tests --example cluster_bench -- [--runs 10] [--json]
//!
//! Prints, over `--runs` runs each:
//! - join: time from starting `shoal agent --join` until the new node is listed `alive` by all 5;
//! - kill: time from kill -9 of one node until every survivor lists it `dead`;
//! - idle: resident memory and CPU of each agent of an idle 5-node cluster over 30 s.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Agent, Cluster, rss_and_cpu};

fn membership(agent: &Agent, name: &str) -> Option<String> {
    let (status, body) = agent.http("GET", "/api/v1/nodes", None);
    if status != 200 {
        return None;
    }
    let list: Value = serde_json::from_str(&body).ok()?;
    list["items"].as_array()?.iter().find_map(|item| {
        (item["metadata"]["name"] == name).then(|| {
            item["status"]["membership"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
    })
}

fn wait_all(agents: &[&Agent], name: &str, state: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if agents
            .iter()
            .all(|a| membership(a, name).as_deref() == Some(state))
        {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn main() {
    let mut runs = 10;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--json" => json = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let mut cluster = Cluster::start("bench", 4);
    let names: Vec<String> = cluster.names();
    for name in &names {
        let refs: Vec<&Agent> = cluster.agents.iter().collect();
        wait_all(&refs, name, "alive", Duration::from_secs(30)).expect("cluster forms");
    }

    // Join: a fresh fifth node, ten times.
    let mut join_ms = Vec::new();
    for run in 0..runs {
        let seed = cluster.agents[run % 4].gossip.clone().expect("started");
        let name = format!("joiner-{run}");
        let mut agent = Agent::new(cluster.dir(), &name, &cluster.key_file);
        let start = Instant::now();
        agent.start(&[seed]);
        let mut all: Vec<&Agent> = cluster.agents.iter().collect();
        all.push(&agent);
        wait_all(&all, &name, "alive", Duration::from_secs(30)).expect("joiner alive");
        join_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        agent.signal("TERM");
        agent.wait_exit(Duration::from_secs(5));
    }

    // Kill: a fresh fifth node joins, then kill -9, ten times.
    let mut kill_ms = Vec::new();
    for run in 0..runs {
        let seed = cluster.agents[0].gossip.clone().expect("started");
        let name = format!("victim-{run}");
        let mut agent = Agent::new(cluster.dir(), &name, &cluster.key_file);
        agent.start(&[seed]);
        let mut all: Vec<&Agent> = cluster.agents.iter().collect();
        all.push(&agent);
        wait_all(&all, &name, "alive", Duration::from_secs(30)).expect("victim alive");
        // Let it settle into normal probing.
        std::thread::sleep(Duration::from_secs(2));
        let survivors: Vec<&Agent> = cluster.agents.iter().collect();
        let start = Instant::now();
        agent.kill9();
        wait_all(&survivors, &name, "dead", Duration::from_secs(30)).expect("victim dead");
        kill_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }

    // Idle: five agents, 30 s.
    cluster.add();
    std::thread::sleep(Duration::from_secs(5));
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let before: Vec<(u64, u64)> = cluster
        .agents
        .iter()
        .map(|a| rss_and_cpu(a.pid().expect("running")).expect("proc"))
        .collect();
    let idle = Duration::from_secs(30);
    std::thread::sleep(idle);
    let after: Vec<(u64, u64)> = cluster
        .agents
        .iter()
        .map(|a| rss_and_cpu(a.pid().expect("running")).expect("proc"))
        .collect();
    let rss_mb: Vec<f64> = after.iter().map(|(rss, _)| *rss as f64 / 1024.0).collect();
    let cpu_pct: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|((_, c0), (_, c1))| (c1 - c0) as f64 / ticks_per_s / idle.as_secs_f64() * 100.0)
        .collect();

    let join_median = median(&mut join_ms.clone());
    let kill_median = median(&mut kill_ms.clone());
    let max_rss = rss_mb.iter().cloned().fold(0.0, f64::max);
    let max_cpu = cpu_pct.iter().cloned().fold(0.0, f64::max);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "runs": runs,
                "join_ms": join_ms, "join_median_ms": join_median,
                "kill_ms": kill_ms, "kill_median_ms": kill_median,
                "idle_rss_mb": rss_mb, "idle_cpu_percent": cpu_pct,
            })
        );
    } else {
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("5 agents on loopback, {runs} runs each");
        println!(
            "join -> alive on all 5:        median {join_median:.0} ms  ({} ms)",
            fmt(&join_ms)
        );
        println!(
            "kill -9 -> dead on survivors:  median {kill_median:.0} ms  ({} ms)",
            fmt(&kill_ms)
        );
        println!(
            "idle, 30 s: RSS {} MB (max {max_rss:.1}); CPU {} % of a core (max {max_cpu:.2})",
            rss_mb
                .iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" "),
            cpu_pct
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}
