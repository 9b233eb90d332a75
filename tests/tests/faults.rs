//! Faults of the machine under an agent: its data dir's disk filling up.
//!
//! These tests mount small tmpfs filesystems and need root; they skip with a printed reason
//! otherwise, unless `SHOAL_REQUIRE_ROOT=1` (CI sets it).

use std::time::{Duration, Instant};

use shoal_tests::{Agent, Cluster, Tmpfs, rss_and_cpu, running_as_root};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A Deployment that runs nothing (replicas 0): a write to replicate.
fn manifest(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 0\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: \
         {name}}}}}\n    spec:\n      containers:\n      - {{name: a, image: x, command: [/bin/true]}}\n"
    )
}

/// The deployments `agent` lists.
fn deployments(agent: &Agent) -> Result<String, String> {
    agent.cli(&["get", "deploy"])
}

/// CPU seconds the agent used so far (user + system).
fn cpu_seconds(agent: &Agent) -> f64 {
    let (_, ticks) = rss_and_cpu(agent.pid().expect("running")).expect("/proc");
    ticks as f64 / 100.0
}

/// A condition of `node` as `describe node` run through `via` shows it: its row's text.
fn condition(via: &Agent, node: &str, kind: &str) -> Result<String, String> {
    let text = via.cli(&["describe", "node", node])?;
    text.lines()
        .find(|l| l.trim_start().starts_with(kind))
        .map(|l| l.trim().to_owned())
        .ok_or(text)
}

#[test]
fn a_full_disk_refuses_writes_truthfully_and_recovers_by_itself() {
    const TEST: &str = "a_full_disk_refuses_writes_truthfully_and_recovers_by_itself";
    if !running_as_root(TEST, "it mounts small tmpfs filesystems as data dirs") {
        return;
    }
    let mut cluster = Cluster::start("diskfull", 2);
    let join = vec![cluster.agents[0].gossip.clone().unwrap()];
    let range = cluster.service_range();
    // Two agents whose data dirs are 8 MiB filesystems: `low` keeps 2 MiB in reserve, `tight`
    // none, so that its writes run into the full disk itself.
    let mut disks = Vec::new();
    for (name, reserve) in [("low", "2"), ("tight", "0")] {
        let mut agent = Agent::new(cluster.dir(), name, &cluster.key_file);
        let disk = Tmpfs::mount(&cluster.dir().join(format!("{name}-disk")), 8 << 20)
            .expect("mounting a tmpfs");
        agent.dir = disk.path().join("data");
        agent.start_with(
            &join,
            &["--disk-reserve-mb", reserve, "--service-range", &range],
        );
        cluster.agents.push(agent);
        disks.push(disk);
    }
    let everyone: Vec<usize> = (0..4).collect();
    let names = ["node-0", "node-1", "low", "tight"];
    cluster.wait_for("all four alive", secs(30), |c| {
        c.all_see(&everyone, &names, "alive")
    });

    // Below the reserve (measured every second): every object write is refused before it is
    // made, with 507 and why.
    disks[0].fill(1 << 20);
    cluster.wait_for("low to see its disk low", secs(10), |c| {
        let row = condition(&c.agents[2], "low", "DiskPressure")?;
        match row.contains("True") {
            true => Ok(()),
            false => Err(row),
        }
    });
    let refused = cluster
        .apply(2, "refused", &manifest("refused"))
        .expect_err("refused for the disk");
    assert!(
        refused.contains("(507)")
            && refused.contains("disk full")
            && refused.contains("under the 2 MiB this node keeps free")
            && refused.contains("write through another node"),
        "{refused}"
    );
    // Nothing was made. It reads, it stays a healthy member, and every node shows its
    // condition and event.
    cluster
        .apply(0, "before", &manifest("before"))
        .expect("a node with room writes");
    cluster.wait_for("every node to hold before, none refused", secs(10), |c| {
        for agent in &c.agents {
            let listed = deployments(agent)?;
            if !listed.contains("before") || listed.contains("refused") {
                return Err(format!("{} lists {listed}", agent.name));
            }
        }
        Ok(())
    });
    cluster.wait_for("low's DiskPressure on node-1", secs(10), |c| {
        let row = condition(&c.agents[1], "low", "DiskPressure")?;
        match row.contains("True") && row.contains("DiskFull") {
            true => Ok(()),
            false => Err(row),
        }
    });
    let described = cluster.agents[1]
        .cli(&["describe", "node", "low"])
        .expect("describe node");
    assert!(
        described.contains("Warning") && described.contains("DiskFull"),
        "{described}"
    );
    let (_, _, warnings) = cluster.agents[0].cli_full(&["get", "nodes"]);
    assert!(warnings.contains("node low: disk full"), "{warnings}");

    // No room at all on `tight`: writes are made until a commit fails. Each is answered
    // truthfully: made (and saved, or with a warning that it is not saved yet), or refused
    // with nothing made. Nothing answered as refused appears anywhere; everything answered as
    // made appears everywhere.
    disks[1].fill(0);
    let mut made = Vec::new();
    let mut refused = Vec::new();
    let mut warned = false;
    for i in 0..30 {
        let name = format!("tight-{i}");
        let (ok, out, err) = {
            let path = cluster.dir().join(format!("{name}.yaml"));
            std::fs::write(&path, manifest(&name)).unwrap();
            cluster.agents[3].cli_full(&["apply", "-f", path.to_str().unwrap()])
        };
        if ok {
            assert!(out.contains("created"), "{out}{err}");
            if err.contains("Warning: made, but not saved on this node's disk yet") {
                warned = true;
            }
            made.push(name);
        } else {
            assert!(err.contains("(507)") && err.contains("disk full"), "{err}");
            refused.push(name);
            if refused.len() >= 3 {
                break;
            }
        }
    }
    assert!(
        warned,
        "no write was answered as made but not saved: made {made:?}, refused {refused:?}"
    );
    assert!(!refused.is_empty(), "nothing was refused: made {made:?}");
    cluster.wait_for("every node to hold exactly what was made", secs(15), |c| {
        for agent in &c.agents {
            let listed = deployments(agent)?;
            if let Some(missing) = made.iter().find(|n| !listed.contains(n.as_str())) {
                return Err(format!("{} lacks {missing}", agent.name));
            }
            if let Some(extra) = refused.iter().find(|n| listed.contains(n.as_str())) {
                return Err(format!("{} holds {extra}, which was refused", agent.name));
            }
        }
        Ok(())
    });
    // While its disk stays full the agent neither spins nor floods its log, and its peers
    // keep it alive.
    let log_path = cluster.agents[3].log_dir.join("agent.log");
    let log_before = std::fs::metadata(&log_path).unwrap().len();
    let cpu_before = cpu_seconds(&cluster.agents[3]);
    let started = Instant::now();
    std::thread::sleep(secs(5));
    let cpu = cpu_seconds(&cluster.agents[3]) - cpu_before;
    let logged = std::fs::metadata(&log_path).unwrap().len() - log_before;
    let share = cpu / started.elapsed().as_secs_f64();
    eprintln!(
        "full disk: {:.1}% of a core, {logged} bytes of log in 5 s",
        share * 100.0
    );
    assert!(
        share < 0.2,
        "the agent uses {:.0}% of a core",
        share * 100.0
    );
    assert!(logged < 20_000, "{logged} bytes logged in 5 s");
    cluster
        .all_see(&[0, 1], &["low", "tight"], "alive")
        .expect("both stay alive");
    let (_, stats) = cluster.agents[3].http("GET", "/api/v1/stats", None);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["writes_refused_disk"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
    assert!(stats["disk"]["failing"]["noSpace"] == true, "{stats}");

    // Restarted while its disk is still full, the agent starts: it serves reads, rejoins, and
    // still refuses writes.
    cluster.agents[3].kill9();
    cluster.agents[3].start_with(&[], &["--disk-reserve-mb", "0", "--service-range", &range]);
    cluster.wait_for("tight back, on its full disk", secs(15), |c| {
        let listed = deployments(&c.agents[3])?;
        if !made.iter().all(|n| listed.contains(n.as_str())) {
            return Err(format!("tight lists {listed}"));
        }
        c.all_see(&[0, 1, 3], &["tight"], "alive")
    });
    let refused_again = cluster
        .apply(3, "after-restart", &manifest("after-restart"))
        .expect_err("still full");
    assert!(refused_again.contains("disk full"), "{refused_again}");

    // Space comes back: both take writes again by themselves, and say so.
    let freed = Instant::now();
    disks[0].free();
    disks[1].free();
    for (i, name) in [(2, "low"), (3, "tight")] {
        cluster.wait_for(&format!("{name} to take writes again"), secs(15), |c| {
            let after = format!("{name}-after");
            c.apply(i, &after, &manifest(&after)).map(|_| ())
        });
        cluster.wait_for(&format!("{name}'s pressure gone"), secs(10), |c| {
            let row = condition(&c.agents[0], name, "DiskPressure")?;
            match row.contains("False") {
                true => Ok(()),
                false => Err(row),
            }
        });
    }
    eprintln!(
        "writes taken again {:?} after space came back",
        freed.elapsed()
    );
    let described = cluster.agents[0]
        .cli(&["describe", "node", "tight"])
        .expect("describe node");
    assert!(described.contains("DiskHasRoom"), "{described}");

    // What `tight` made while its disk was full is on its disk now: alone, restarted after a
    // kill -9 with every peer gone, it still holds it.
    for i in [0, 1, 2] {
        cluster.agents[i].kill9();
    }
    cluster.agents[3].kill9();
    cluster.agents[3].start_with(&[], &["--disk-reserve-mb", "0", "--service-range", &range]);
    let listed = deployments(&cluster.agents[3]).expect("get deploy");
    for name in made.iter().chain(["tight-after".to_owned()].iter()) {
        assert!(listed.contains(name.as_str()), "{name} lost: {listed}");
    }
    cluster.agents[3].kill9();
}
