//! Real clusters: `shoal agent` processes on loopback, with kill -9, SIGSTOP, restarts, a wrong
//! cluster key and garbage on the wire.

use std::net::UdpSocket;
use std::time::Duration;

use shoal_tests::{Agent, Cluster, Scratch, shoal_bin};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn all(cluster: &Cluster) -> Vec<usize> {
    (0..cluster.agents.len()).collect()
}

/// A Deployment that runs nothing (replicas 0), carrying `note`: a write to replicate.
fn note(name: &str, note: &str) -> Vec<u8> {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  annotations: {{note: \
         {note:?}}}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: {name}}}}}\n  \
         template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      \
         - {{name: a, image: x, command: [/bin/true]}}\n"
    )
    .into_bytes()
}

#[test]
fn five_agents_form_one_cluster_and_detect_a_kill() {
    let mut cluster = Cluster::start("five", 5);
    let names = cluster.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let everyone = all(&cluster);
    cluster.wait_for("all 5 alive everywhere", secs(20), |c| {
        c.all_see(&everyone, &names, "alive")
    });
    // Every node lists the same ids.
    let ids: Vec<Vec<(String, String, String)>> = cluster
        .agents
        .iter()
        .map(|a| {
            let mut n = a.nodes().expect("get nodes");
            n.iter_mut().for_each(|(_, s, _)| s.clear());
            n
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");

    cluster.agents[3].kill9();
    let survivors = [0, 1, 2, 4];
    let took = cluster.wait_for("node-3 dead on every survivor", secs(5), |c| {
        c.all_see(&survivors, &["node-3"], "dead")
    });
    eprintln!("kill -9 -> dead on all survivors: {took:?}");
}

#[test]
fn paused_agent_comes_back_by_itself_and_gets_writes_made_meanwhile() {
    let cluster = Cluster::start("pause", 4);
    let names = cluster.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let everyone = all(&cluster);
    cluster.wait_for("all alive", secs(20), |c| {
        c.all_see(&everyone, &names, "alive")
    });

    cluster.agents[2].signal("STOP");
    let stopped_at = std::time::Instant::now();
    let others = [0, 1, 3];
    cluster.wait_for("node-2 dead while stopped", secs(15), |c| {
        c.all_see(&others, &["node-2"], "dead")
    });
    let (status, body) = cluster.agents[0].http(
        "PUT",
        "/api/v1/objects/deployment/default/during-pause",
        Some(&note("during-pause", "written while node-2 was stopped")),
    );
    assert_eq!(status, 200, "{body}");
    // Stay stopped for 30 s in all, well past the suspicion timeout.
    std::thread::sleep(secs(30).saturating_sub(stopped_at.elapsed()));
    cluster.agents[2].signal("CONT");
    cluster.wait_for("node-2 alive everywhere again", secs(15), |c| {
        c.all_see(&everyone, &["node-2"], "alive")
    });
    cluster.wait_for("the write reached node-2", secs(10), |c| {
        let (status, body) = c.agents[2].http(
            "GET",
            "/api/v1/objects/deployment/default/during-pause",
            None,
        );
        if status == 200 && body.contains("written while node-2 was stopped") {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    });
}

#[test]
fn restarted_agent_keeps_identity_and_rejoins_without_join() {
    let mut cluster = Cluster::start("restart", 3);
    let names = cluster.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let everyone = all(&cluster);
    cluster.wait_for("all alive", secs(20), |c| {
        c.all_see(&everyone, &names, "alive")
    });
    let id_before = cluster.agents[0]
        .nodes()
        .unwrap()
        .into_iter()
        .find(|(n, _, _)| n == "node-2")
        .map(|(_, _, uid)| uid)
        .unwrap();
    // An acknowledged write on node-2 survives its kill -9.
    let (status, body) = cluster.agents[2].http(
        "PUT",
        "/api/v1/objects/deployment/default/acked",
        Some(&note("acked", "durable")),
    );
    assert_eq!(status, 200, "{body}");
    cluster.agents[2].kill9();
    cluster.wait_for("node-2 dead", secs(10), |c| {
        c.all_see(&[0, 1], &["node-2"], "dead")
    });

    cluster.agents[2].start(&[]);
    cluster.wait_for(
        "node-2 back alive everywhere, no --join given",
        secs(15),
        |c| c.all_see(&everyone, &names, "alive"),
    );
    let nodes = cluster.agents[0].nodes().unwrap();
    let (_, _, id_after) = nodes.iter().find(|(n, _, _)| n == "node-2").unwrap();
    assert_eq!(*id_after, id_before, "same identity after restart");
    let (status, body) =
        cluster.agents[2].http("GET", "/api/v1/objects/deployment/default/acked", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"note\":\"durable\""), "{body}");
}

/// `gossip.deaths_declared` of `agent`'s `/api/v1/stats`.
fn deaths_declared(agent: &Agent) -> Result<u64, String> {
    let (status, body) = agent.http("GET", "/api/v1/stats", None);
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    let stats: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    stats["gossip"]["deaths_declared"]
        .as_u64()
        .ok_or_else(|| format!("no gossip.deaths_declared in {body}"))
}

#[test]
fn agent_restarted_after_kill_stays_alive_once_back() {
    let mut cluster = Cluster::start("rejoin", 3);
    let names = cluster.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let everyone = all(&cluster);
    let (status, body) = cluster.agents[2].http(
        "PUT",
        "/api/v1/objects/deployment/default/last-acked",
        Some(&note("last-acked", "acknowledged just before the kill")),
    );
    assert_eq!(status, 200, "{body}");
    cluster.agents[2].kill9();
    cluster.wait_for("node-2 dead", secs(10), |c| {
        c.all_see(&[0, 1], &["node-2"], "dead")
    });
    std::thread::sleep(secs(4));

    cluster.agents[2].start(&[]);
    cluster.wait_for("node-2 back alive everywhere", secs(15), |c| {
        c.all_see(&everyone, &names, "alive")
    });
    // Once back, nobody suspects it again: every node sees every node alive throughout, and
    // no node declares anyone dead.
    let deaths_before: Vec<u64> = cluster
        .agents
        .iter()
        .map(|a| deaths_declared(a).expect("stats"))
        .collect();
    let watch_until = std::time::Instant::now() + secs(10);
    while std::time::Instant::now() < watch_until {
        if let Err(e) = cluster.all_see(&everyone, &names, "alive") {
            let logs: Vec<String> = cluster
                .agents
                .iter()
                .map(|a| format!("--- {} ---\n{}", a.name, a.log_tail(40)))
                .collect();
            panic!("after node-2 came back: {e}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (agent, before) in cluster.agents.iter().zip(&deaths_before) {
        let after = deaths_declared(agent).expect("stats");
        assert_eq!(
            after, *before,
            "{} declared a death after node-2 came back",
            agent.name
        );
    }
    for agent in &cluster.agents {
        let (status, body) =
            agent.http("GET", "/api/v1/objects/deployment/default/last-acked", None);
        assert_eq!(status, 200, "{}: {body}", agent.name);
        assert!(
            body.contains("acknowledged just before the kill"),
            "{}: {body}",
            agent.name
        );
    }
}

#[test]
fn agent_with_wrong_key_is_refused_and_appears_nowhere() {
    let cluster = Cluster::start("wrongkey", 2);
    let everyone = all(&cluster);
    cluster.wait_for("both alive", secs(20), |c| {
        c.all_see(&everyone, &["node-0", "node-1"], "alive")
    });
    let bad_key = cluster.dir().join("other.key");
    let key = std::process::Command::new(shoal_bin())
        .arg("keygen")
        .output()
        .unwrap();
    std::fs::write(&bad_key, key.stdout).unwrap();
    let mut intruder = Agent::new(cluster.dir(), "intruder", &bad_key);
    intruder.start(&[cluster.agents[0].gossip.clone().unwrap()]);
    std::thread::sleep(secs(4));
    for agent in &cluster.agents {
        let nodes = agent.nodes().unwrap();
        assert!(
            nodes.iter().all(|(n, _, _)| n != "intruder"),
            "{} lists the intruder: {nodes:?}",
            agent.name
        );
    }
    // The intruder learned nothing either.
    let seen = intruder.nodes().unwrap();
    assert_eq!(seen.len(), 1, "intruder knows only itself: {seen:?}");
    // The refusal was counted.
    let (status, stats) = cluster.agents[0].http("GET", "/api/v1/stats", None);
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["net"]["refused_auth"].as_u64().unwrap_or(0) > 0,
        "refusals counted: {stats}"
    );
}

#[test]
fn garbage_on_the_gossip_port_changes_nothing() {
    let cluster = Cluster::start("garbage", 2);
    let everyone = all(&cluster);
    cluster.wait_for("both alive", secs(20), |c| {
        c.all_see(&everyone, &["node-0", "node-1"], "alive")
    });
    let target = cluster.agents[0].gossip.clone().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000 {
        let len = 1 + (i * 37) % 1400;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = socket.send_to(&bytes, &target);
    }
    // TCP garbage too.
    if let Ok(mut stream) = std::net::TcpStream::connect(&target) {
        use std::io::Write;
        let _ = stream.write_all(&[0xAB; 4096]);
    }
    std::thread::sleep(secs(2));
    cluster.wait_for("cluster unaffected", secs(5), |c| {
        c.all_see(&everyone, &["node-0", "node-1"], "alive")
    });
    assert_eq!(cluster.agents[0].nodes().unwrap().len(), 2);
}

#[test]
fn sigterm_leaves_and_others_see_left_within_a_second() {
    let mut cluster = Cluster::start("leave", 3);
    let everyone = all(&cluster);
    cluster.wait_for("all alive", secs(20), |c| {
        c.all_see(&everyone, &["node-0", "node-1", "node-2"], "alive")
    });
    cluster.agents[1].signal("TERM");
    cluster.wait_for("node-1 left on the others", secs(1), |c| {
        c.all_see(&[0, 2], &["node-1"], "left")
    });
    assert!(
        cluster.agents[1].wait_exit(secs(5)),
        "agent exits cleanly after leaving"
    );
}

#[test]
fn get_nodes_prints_kubernetes_shaped_json_and_yaml() {
    let cluster = Cluster::start("formats", 2);
    let everyone = all(&cluster);
    cluster.wait_for("both alive", secs(20), |c| {
        c.all_see(&everyone, &["node-0", "node-1"], "alive")
    });
    let json = cluster.agents[0]
        .cli(&["get", "nodes", "-o", "json"])
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    let item = &list["items"][1];
    assert_eq!(item["kind"], "Node");
    assert_eq!(item["metadata"]["name"], "node-1");
    assert_eq!(item["metadata"]["uid"].as_str().unwrap().len(), 64);
    assert_eq!(item["status"]["addresses"][0]["type"], "InternalIP");
    assert_eq!(item["status"]["addresses"][0]["address"], "127.0.0.1");
    assert_eq!(item["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(item["status"]["conditions"][0]["status"], "True");
    assert_eq!(item["status"]["membership"], "alive");
    let yaml = cluster.agents[0]
        .cli(&["get", "nodes", "-o", "yaml"])
        .unwrap();
    assert!(yaml.contains("kind: List"), "{yaml}");
    assert!(yaml.contains("membership: alive"), "{yaml}");
    let table = cluster.agents[0].cli(&["get", "nodes"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "ADDRESS", "AGE"]);
    let wide = cluster.agents[0]
        .cli(&["get", "nodes", "-o", "wide"])
        .unwrap();
    assert!(
        wide.lines().next().unwrap().contains("INCARNATION"),
        "{wide}"
    );
    let names = cluster.agents[0]
        .cli(&["get", "nodes", "-o", "name"])
        .unwrap();
    assert_eq!(names, "node/node-0\nnode/node-1\n");
}

#[test]
fn secret_files_other_users_can_read_are_warned_about_alike() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = Scratch::new("secretmodes");
    let key = std::process::Command::new(shoal_bin())
        .arg("keygen")
        .output()
        .unwrap();
    let mut warned = Vec::new();
    for (name, mode) in [("open", 0o644), ("closed", 0o600)] {
        let key_file = scratch.path().join(format!("{name}.key"));
        let token_file = scratch.path().join(format!("{name}.token"));
        std::fs::write(&key_file, &key.stdout).unwrap();
        std::fs::write(&token_file, "a-token-of-at-least-16-characters\n").unwrap();
        for file in [&key_file, &token_file] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut agent = Agent::new(scratch.path(), name, &key_file);
        agent.start_with(&[], &["--api-token-file", token_file.to_str().unwrap()]);
        let log = agent.log_tail(200);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("is readable by other users; chmod 600 it"))
            .collect();
        warned.push((name, lines.len(), log.clone()));
        agent.kill9();
    }
    let (_, open, log) = &warned[0];
    assert_eq!(*open, 2, "the key file and the token file, alike:\n{log}");
    assert!(
        log.contains("API token file is readable by other users")
            && log.contains("cluster key file is readable by other users")
            && log.contains("mode=644"),
        "{log}"
    );
    let (_, closed, log) = &warned[1];
    assert_eq!(*closed, 0, "{log}");
}

#[test]
fn a_joiner_with_another_key_says_at_once_and_every_time_that_the_peer_refused_it() {
    let mut cluster = Cluster::start("refusedjoin", 1);
    let seed = cluster.agents[0].gossip.clone().unwrap();
    let other_key = cluster.dir().join("other.key");
    let key = std::process::Command::new(shoal_bin())
        .arg("keygen")
        .output()
        .unwrap();
    std::fs::write(&other_key, key.stdout).unwrap();
    let mut intruder = Agent::new(cluster.dir(), "intruder", &other_key);
    intruder.start(std::slice::from_ref(&seed));
    let refusals = |agent: &Agent| -> Vec<String> {
        agent
            .log_tail(1000)
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("cluster key mismatch"))
            .map(str::to_owned)
            .collect()
    };
    // At once: the refusal, naming the peer, and that the node cannot join.
    cluster.wait_for("the intruder to say it was refused", secs(3), |_| {
        let lines = refusals(&intruder);
        let named = lines
            .iter()
            .any(|l| l.contains(&format!("cannot join through {seed}: cluster key mismatch")));
        let summary = lines.iter().any(|l| {
            l.contains(&format!(
                "cannot join the cluster: {seed} refused it: cluster key mismatch"
            ))
        });
        if named && summary {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
    // Every time: the next attempts (the peer now denies its connections) say so again.
    cluster.wait_for("the refusal said again", secs(8), |_| {
        let lines = refusals(&intruder);
        if lines
            .iter()
            .filter(|l| l.contains("cannot join through"))
            .count()
            >= 3
        {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
    // Its status says so too.
    let (status, stats) = intruder.http("GET", "/api/v1/stats", None);
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let join = &stats["join"];
    assert_eq!(join["joining"], true, "{join}");
    assert_eq!(join["peers"], serde_json::json!([seed]), "{join}");
    let failure = &join["failures"][0];
    assert_eq!(
        (&failure["peer"], &failure["refused"]),
        (&serde_json::json!(seed), &serde_json::json!(true)),
        "{join}"
    );
    assert!(failure["count"].as_u64() >= Some(3), "{join}");
    assert!(
        failure["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("cluster key mismatch"),
        "{join}"
    );
    assert!(
        stats["net"]["refused_by_peers"].as_u64() >= Some(3),
        "{stats}"
    );
    let (ok, table, warnings) = intruder.cli_full(&["get", "nodes"]);
    assert!(ok && table.contains("intruder"), "{table}");
    assert!(
        warnings.contains(&format!("warning: {seed} refused this node"))
            && warnings.contains("cluster key mismatch"),
        "{warnings}"
    );
    let nodes = intruder.cli(&["get", "nodes", "-o", "json"]).unwrap();
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    assert_eq!(
        nodes["items"][0]["status"]["joinFailures"][0]["peer"],
        seed.as_str()
    );

    // With the right key: nothing of the kind.
    let friend = cluster.add();
    cluster.wait_for("the friend joined", secs(20), |c| {
        c.all_see(&[0, friend], &["node-0", "node-1"], "alive")
    });
    let friend = &cluster.agents[friend];
    let log = friend.log_tail(1000);
    assert!(
        !log.contains("cluster key mismatch")
            && !log.contains("refused this node")
            && !log.contains("cannot join"),
        "{log}"
    );
    let (_, stats) = friend.http("GET", "/api/v1/stats", None);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["join"]["joining"], false, "{stats}");
    assert_eq!(stats["join"]["failures"], serde_json::json!([]), "{stats}");
    assert_eq!(stats["net"]["refused_by_peers"], 0, "{stats}");
    let (ok, _, warnings) = friend.cli_full(&["get", "nodes"]);
    assert!(ok && !warnings.contains("warning"), "{warnings}");
}

#[test]
fn agents_whose_clocks_are_off_refuse_writes_and_say_why() {
    // Writes are ordered by hybrid logical clocks: a node 5 minutes ahead would stamp writes
    // that beat every write made after them elsewhere for 5 minutes, and a node 26 hours
    // behind stamps new objects its peers take for resurrections of deleted ones.
    let mut cluster = Cluster::start("clock", 3);
    let join = vec![cluster.agents[0].gossip.clone().unwrap()];
    let range = cluster.service_range();
    for (name, offset) in [("ahead", "300000"), ("behind", "-93600000")] {
        let mut agent = Agent::new(cluster.dir(), name, &cluster.key_file);
        agent.start_with(
            &join,
            &["--clock-offset-ms", offset, "--service-range", &range],
        );
        cluster.agents.push(agent);
    }
    let everyone = all(&cluster);
    let names = ["node-0", "node-1", "node-2", "ahead", "behind"];
    cluster.wait_for("all five alive", secs(30), |c| {
        c.all_see(&everyone, &names, "alive")
    });
    let manifest = |name: &str| String::from_utf8(note(name, "x")).unwrap();
    // Both refuse, and say by how much and what to do.
    cluster.wait_for("the clocks measured", secs(20), |c| {
        match c.apply(3, "from-ahead", &manifest("from-ahead")) {
            Err(e) if e.contains("5m0s ahead of the cluster's") => Ok(()),
            other => Err(format!("apply through ahead: {other:?}")),
        }
    });
    let refused = cluster
        .apply(4, "from-behind", &manifest("from-behind"))
        .expect_err("the node 26 hours behind refuses");
    assert!(
        refused.contains("26h0m behind the cluster's") && refused.contains("NTP"),
        "{refused}"
    );
    // Nothing of either was written.
    for agent in &cluster.agents {
        let listed = agent.cli(&["get", "deploy"]).unwrap_or_default();
        assert!(!listed.contains("from-"), "{}: {listed}", agent.name);
    }
    // A node whose clock agrees writes, and every node sees it, the skewed ones included.
    cluster
        .apply(1, "on-time", &manifest("on-time"))
        .expect("a node in sync writes");
    cluster.wait_for("every node sees on-time", secs(20), |c| {
        for agent in &c.agents {
            let listed = agent.cli(&["get", "deploy"])?;
            if !listed.contains("on-time") {
                return Err(format!("{} lists {listed}", agent.name));
            }
        }
        Ok(())
    });
    // `get nodes` says so: the skewed node of itself, a node in sync of the skewed ones (the
    // clock view is refreshed every second).
    cluster.wait_for("ahead to warn of itself", secs(10), |c| {
        let (ok, _, warnings) = c.agents[3].cli_full(&["get", "nodes"]);
        match ok && warnings.contains("node ahead: this node's clock is 5m0s ahead") {
            true => Ok(()),
            false => Err(warnings),
        }
    });
    cluster.wait_for("node-0 to show the clocks", secs(10), |c| {
        let (ok, wide, warnings) = c.agents[0].cli_full(&["get", "nodes", "-o", "wide"]);
        let row = |name: &str| {
            wide.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .trim_end()
                .to_owned()
        };
        if ok
            && warnings.contains("node behind: its clock is 26h0m behind")
            && row("ahead").ends_with("+5m0s")
            && row("behind").ends_with("-26h0m")
            && row("node-1").ends_with("ms")
        {
            Ok(())
        } else {
            Err(format!("{wide}{warnings}"))
        }
    });
    // The refusals are counted.
    let (_, stats) = cluster.agents[3].http("GET", "/api/v1/stats", None);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["gossip"]["writes_refused_clock"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{stats}"
    );
}
