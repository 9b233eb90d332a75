//! Workloads on real agents with the process runtime: deployments of `shoal-demo-http`,
//! healing after a node dies, crashes with back-off, scaling, rolling updates, hand-offs when a
//! node joins, and bad manifests.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Cluster, demo_bin};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const PROCESS: &[&str] = &["--runtime", "process"];

fn deployment(name: &str, replicas: u32, version: &str, strategy: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
{strategy}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: http
        image: shoal-demo:dev
        command: ["{bin}"]
        env:
        - {{name: PORT, value: "8080"}}
        - {{name: VERSION, value: "{version}"}}
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet: {{path: /ready, port: 8080}}
          periodSeconds: 1
"#,
        bin = demo_bin().display()
    )
}

/// Pods as (name, node, ready, restarts, status text) from `get pods -o json`.
fn pods(cluster: &Cluster, via: usize) -> Vec<(String, String, bool, u64, Value)> {
    let Ok(text) = cluster.agents[via].cli(&["get", "pods", "-o", "json"]) else {
        return Vec::new();
    };
    let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let restarts = p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0);
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                ready,
                restarts,
                p.clone(),
            )
        })
        .collect()
}

/// Ready count and total of a deployment.
fn deployment_counts(cluster: &Cluster, via: usize, name: &str) -> Option<(u64, u64, u64)> {
    let text = cluster.agents[via]
        .cli(&["get", "deployment", name, "-o", "json"])
        .ok()?;
    let d: Value = serde_json::from_str(&text).ok()?;
    Some((
        d["status"]["readyReplicas"].as_u64().unwrap_or(0),
        d["status"]["replicas"].as_u64().unwrap_or(0),
        d["status"]["updatedReplicas"].as_u64().unwrap_or(0),
    ))
}

fn ready_everywhere(cluster: &Cluster, via: usize, want: usize) -> Result<(), String> {
    let pods = pods(cluster, via);
    let ready = pods.iter().filter(|p| p.2).count();
    if pods.len() == want && ready == want {
        Ok(())
    } else {
        Err(format!(
            "{ready} ready of {} pods, want {want}: {:?}",
            pods.len(),
            pods.iter().map(|p| (&p.0, &p.1, p.2)).collect::<Vec<_>>()
        ))
    }
}

#[test]
fn deployment_heals_after_a_node_dies_and_settles_at_exactly_the_replicas() {
    let mut cluster = Cluster::start_with("heal", 4, PROCESS);
    let yaml = deployment("web", 6, "v1", "");
    assert_eq!(
        cluster.apply(0, "web", &yaml).unwrap().trim(),
        "deployment.apps/web created"
    );
    cluster.wait_for("6 ready pods", secs(30), |c| ready_everywhere(c, 1, 6));
    // Kill the machine running the most pods (agent and its pods).
    let before = pods(&cluster, 0);
    let victim = (1..4)
        .max_by_key(|&i| before.iter().filter(|p| p.1 == format!("node-{i}")).count())
        .unwrap();
    let victim_name = format!("node-{victim}");
    let lost = before.iter().filter(|p| p.1 == victim_name).count();
    assert!(lost > 0);
    cluster.agents[victim].kill_machine();
    let took = cluster.wait_for("replacements ready elsewhere", secs(20), |c| {
        ready_everywhere(c, 0, 6)?;
        if pods(c, 0).iter().any(|p| p.1 == victim_name) {
            return Err(format!("pods still listed on {victim_name}"));
        }
        Ok(())
    });
    eprintln!("kill -9 of a node with {lost} pods -> all 6 ready: {took:?}");
    // It stays at exactly 6, on the survivors (as another survivor sees it).
    std::thread::sleep(secs(3));
    let observer = if victim == 1 { 2 } else { 1 };
    let after = pods(&cluster, observer);
    assert_eq!(after.len(), 6, "{after:?}");
    let names: BTreeSet<&String> = after.iter().map(|p| &p.0).collect();
    assert_eq!(names.len(), 6);
}

#[test]
fn crashed_container_restarts_with_back_off() {
    let cluster = Cluster::start_with("crash", 2, PROCESS);
    cluster
        .apply(0, "web", &deployment("web", 1, "v1", ""))
        .unwrap();
    cluster.wait_for("1 ready pod", secs(30), |c| ready_everywhere(c, 0, 1));
    let crash = |c: &Cluster| {
        // The running copy (a hand-off to the other node may list a second, pending one).
        let pod = pods(c, 0)
            .into_iter()
            .find(|p| p.2 && p.4["status"]["podIP"].is_string())
            .expect("a ready pod with an IP");
        let ip = pod.4["status"]["podIP"].as_str().unwrap().to_owned();
        let _ = std::net::TcpStream::connect((ip.as_str(), 8080)).map(|mut s| {
            use std::io::Write;
            let _ = s.write_all(b"POST /exit?code=3 HTTP/1.0\r\n\r\n");
        });
    };
    crash(&cluster);
    cluster.wait_for("restarted once", secs(10), |c| {
        let p = pods(c, 0);
        match p.first() {
            Some(p) if p.3 == 1 && p.2 => Ok(()),
            other => Err(format!("{:?}", other.map(|p| (p.3, p.2)))),
        }
    });
    // A second crash waits out the back-off (10 s): CrashLoopBackOff meanwhile.
    crash(&cluster);
    cluster.wait_for("CrashLoopBackOff shown", secs(5), |c| {
        let table = c.agents[1].cli(&["get", "pods"])?;
        if table.contains("CrashLoopBackOff") {
            Ok(())
        } else {
            Err(table)
        }
    });
    let start = Instant::now();
    cluster.wait_for("restarted twice", secs(20), |c| match pods(c, 0).first() {
        Some(p) if p.3 == 2 && p.2 => Ok(()),
        other => Err(format!("{:?}", other.map(|p| (p.3, p.2)))),
    });
    assert!(
        start.elapsed() >= secs(7),
        "the second restart waited for its back-off"
    );
}

#[test]
fn scale_up_and_down() {
    let cluster = Cluster::start_with("scale", 3, PROCESS);
    cluster
        .apply(0, "web", &deployment("web", 2, "v1", ""))
        .unwrap();
    cluster.wait_for("2 ready", secs(30), |c| ready_everywhere(c, 0, 2));
    // `get deploy -w`: the table, then a line whenever the deployment changes.
    let (mut watch, rx) = cluster.agents[0].cli_stream(&["get", "deploy", "-w"]);
    let header = rx.recv_timeout(secs(10)).unwrap();
    assert!(header.starts_with("NAME"), "{header}");
    assert!(rx.recv_timeout(secs(10)).unwrap().starts_with("web "));
    let out = cluster.agents[1]
        .cli(&["scale", "deployment", "web", "--replicas", "5"])
        .unwrap();
    assert_eq!(out.trim(), "deployment.apps/web scaled");
    cluster.wait_for("5 ready", secs(30), |c| ready_everywhere(c, 2, 5));
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(secs(3)) {
        seen.push(line);
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("web ") && l.contains("5/5")),
        "{seen:?}"
    );
    // Only changes are printed, not a line each time the age (the last column) ticks.
    let without_age: Vec<Vec<&str>> = seen
        .iter()
        .map(|l| {
            let mut f: Vec<&str> = l.split_whitespace().collect();
            f.pop();
            f
        })
        .collect();
    assert!(
        without_age.windows(2).all(|w| w[0] != w[1]),
        "a line repeated with only its age changed: {seen:?}"
    );
    cluster.agents[2]
        .cli(&["scale", "deployment/web", "--replicas", "1"])
        .unwrap();
    cluster.wait_for("1 left", secs(30), |c| ready_everywhere(c, 0, 1));
}

#[test]
fn rolling_update_with_max_unavailable_zero_never_dips_below_replicas() {
    let cluster = Cluster::start_with("rolling", 3, PROCESS);
    let strategy =
        "  strategy:\n    type: RollingUpdate\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}";
    cluster
        .apply(0, "web", &deployment("web", 4, "v1", strategy))
        .unwrap();
    cluster.wait_for("4 ready", secs(30), |c| ready_everywhere(c, 0, 4));
    let out = cluster
        .apply(1, "web", &deployment("web", 4, "v2", strategy))
        .unwrap();
    assert_eq!(out.trim(), "deployment.apps/web configured");
    let start = Instant::now();
    let mut lowest = u64::MAX;
    loop {
        // A failed read (an overloaded machine) says nothing about readiness: skip it.
        let Some((ready, total, updated)) = deployment_counts(&cluster, 2, "web") else {
            assert!(start.elapsed() < secs(60), "the deployment cannot be read");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        // Ready pods of either revision, counted once per replica.
        lowest = lowest.min(ready);
        if updated == 4 && total == 4 && ready == 4 {
            break;
        }
        assert!(
            start.elapsed() < secs(60),
            "rollout did not finish: {ready}/{total}/{updated}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lowest >= 4, "ready dipped to {lowest} during the rollout");
    // Every pod runs v2 now; undo goes back to v1.
    let out = cluster.agents[0]
        .cli(&["rollout", "undo", "deployment", "web"])
        .unwrap();
    assert_eq!(out.trim(), "deployment.apps/web rolled back");
    let status = cluster.agents[0]
        .cli(&["rollout", "status", "deployment", "web", "--timeout", "60"])
        .unwrap();
    assert!(status.contains("successfully rolled out"), "{status}");
    // Another node lists the v2 pods until their stops reach it (as kubectl lists
    // Terminating pods): soon it lists exactly the four v1 pods.
    cluster.wait_for("node-1 lists the 4 v1 pods", secs(30), |c| {
        let pods = pods(c, 1);
        let envs: Vec<String> = pods
            .iter()
            .map(|p| p.4["spec"]["containers"][0]["env"].to_string())
            .collect();
        if pods.len() == 4 && envs.iter().all(|e| e.contains("v1")) {
            Ok(())
        } else {
            Err(format!("{} pods: {envs:?}", pods.len()))
        }
    });
}

#[test]
fn apply_is_idempotent_and_bad_manifests_change_nothing() {
    let cluster = Cluster::start_with("manifests", 2, PROCESS);
    let yaml = deployment("web", 1, "v1", "");
    assert_eq!(
        cluster.apply(0, "web", &yaml).unwrap().trim(),
        "deployment.apps/web created"
    );
    // Any node accepts writes; once the first one's has reached it, the second says unchanged.
    cluster.wait_for("the deployment reaches node-1", secs(5), |c| {
        c.agents[1].cli(&["get", "deployment", "web"]).map(|_| ())
    });
    assert_eq!(
        cluster.apply(1, "web", &yaml).unwrap().trim(),
        "deployment.apps/web unchanged"
    );
    let changed = deployment("web", 2, "v1", "");
    assert_eq!(
        cluster.apply(1, "web", &changed).unwrap().trim(),
        "deployment.apps/web configured"
    );
    let bad = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: staging\n---\n{}",
        deployment("api", 1, "v1", "").replace("containerPort: 8080", "containerPort: \"80\"")
    );
    let err = cluster.apply(0, "bad", &bad).unwrap_err();
    assert!(
        err.contains("bad.yaml: doc 2: spec.template.spec.containers[0].ports[0].containerPort: expected integer"),
        "{err}"
    );
    assert!(err.contains("(line "), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    // Nothing of it was written: no namespace, no deployment.
    let ns = cluster.agents[1].cli(&["get", "namespaces"]).unwrap();
    assert!(!ns.contains("staging"), "{ns}");
    let deployments = cluster.agents[1]
        .cli(&["get", "deployments", "-A"])
        .unwrap();
    assert!(!deployments.contains("api"), "{deployments}");
    let unknown = cluster
        .apply(
            0,
            "unknown",
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: x\n",
        )
        .unwrap_err();
    assert!(unknown.contains("CronJob"), "{unknown}");
}

#[test]
fn a_joining_node_takes_replicas_without_the_ready_count_dipping() {
    let mut cluster = Cluster::start_with("handoff", 2, PROCESS);
    cluster
        .apply(0, "web", &deployment("web", 6, "v1", ""))
        .unwrap();
    cluster.wait_for("6 ready", secs(30), |c| ready_everywhere(c, 0, 6));
    let new = cluster.add();
    let new_name = format!("node-{new}");
    let start = Instant::now();
    let mut lowest = u64::MAX;
    loop {
        // A failed read (an overloaded machine) says nothing about readiness: skip it.
        if let Some((ready, _, _)) = deployment_counts(&cluster, 0, "web") {
            lowest = lowest.min(ready);
        }
        let p = pods(&cluster, 0);
        if p.iter().any(|p| p.1 == new_name && p.2) && p.len() == 6 && p.iter().all(|p| p.2) {
            break;
        }
        assert!(
            start.elapsed() < secs(40),
            "no hand-off to {new_name}: {:?}",
            p.iter().map(|p| (&p.0, &p.1, p.2)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lowest >= 6, "ready dipped to {lowest} during the hand-off");
    // The transient duplicates are gone: exactly 6 pods, and 6 processes in all.
    std::thread::sleep(secs(3));
    assert_eq!(pods(&cluster, 1).len(), 6);
    let processes: usize = cluster
        .agents
        .iter()
        .map(|a| {
            a.pod_pids()
                .into_iter()
                .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
                .count()
        })
        .sum();
    assert_eq!(processes, 6, "exactly 6 processes run");
}

#[test]
fn a_node_that_comes_back_removes_what_it_no_longer_owns() {
    let mut cluster = Cluster::start_with("comeback", 3, PROCESS);
    cluster
        .apply(0, "web", &deployment("web", 3, "v1", ""))
        .unwrap();
    cluster.wait_for("3 ready", secs(30), |c| ready_everywhere(c, 0, 3));
    // Kill only the agent of node-2: its pod processes keep running, as after a crash of the
    // agent alone.
    let orphans_before = cluster.agents[2].pod_pids();
    cluster.agents[2].kill9();
    cluster.wait_for("replaced on the survivors", secs(20), |c| {
        ready_everywhere(c, 0, 3)?;
        if pods(c, 0).iter().any(|p| p.1 == "node-2") {
            return Err("still on node-2".into());
        }
        Ok(())
    });
    cluster.agents[2].start_with(&[], PROCESS);
    // Whatever node-2 kept (a replica placed back on it is adopted) or removed, the cluster
    // settles at exactly 3 pods and 3 processes.
    cluster.wait_for("exactly 3 pods and 3 processes", secs(30), |c| {
        ready_everywhere(c, 1, 3)?;
        let running: usize = c
            .agents
            .iter()
            .map(|a| {
                a.pod_pids()
                    .into_iter()
                    .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
                    .count()
            })
            .sum();
        if running == 3 {
            Ok(())
        } else {
            Err(format!("{running} pod processes run"))
        }
    });
    let adopted_or_gone = orphans_before
        .iter()
        .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        || pods(&cluster, 0).iter().any(|p| p.1 == "node-2");
    assert!(adopted_or_gone, "node-2 kept pods it does not own");
}

#[test]
fn logs_describe_and_delete() {
    let cluster = Cluster::start_with("logs", 1, PROCESS);
    cluster
        .apply(0, "web", &deployment("web", 1, "v1", ""))
        .unwrap();
    cluster.wait_for("1 ready", secs(30), |c| ready_everywhere(c, 0, 1));
    let pod = pods(&cluster, 0).pop().unwrap().0;
    let logs = cluster.agents[0].cli(&["logs", &pod]).unwrap();
    assert!(logs.contains("listening on"), "{logs}");
    let describe = cluster.agents[0].cli(&["describe", "pod", &pod]).unwrap();
    assert!(describe.contains("Started container http"), "{describe}");
    let describe = cluster.agents[0]
        .cli(&["describe", "deployment", "web"])
        .unwrap();
    assert!(describe.contains("1 desired | 1 updated"), "{describe}");
    let out = cluster.agents[0]
        .cli(&["delete", "deployment", "web"])
        .unwrap();
    assert_eq!(out.trim(), "deployment.apps \"web\" deleted");
    cluster.wait_for("no pods", secs(20), |c| {
        let p = pods(c, 0);
        if p.is_empty() {
            Ok(())
        } else {
            Err(format!("{} pods", p.len()))
        }
    });
    let err = cluster.agents[0]
        .cli(&["delete", "deployment", "web"])
        .unwrap_err();
    assert!(err.contains("not found"), "{err}");
}

/// `shoal logs` works through any agent: the logs of a pod on another node come over the
/// cluster's network, also with `-f` (streamed as they are written, until the reader quits).
#[test]
fn logs_of_pods_on_other_nodes() {
    let cluster = Cluster::start_with("remote-logs", 2, PROCESS);
    cluster
        .apply(0, "web", &deployment("web", 2, "v1", ""))
        .unwrap();
    cluster.wait_for("2 ready", secs(30), |c| ready_everywhere(c, 0, 2));
    let mut remote = 0;
    for (pod, node, ..) in pods(&cluster, 0) {
        for agent in &cluster.agents {
            let logs = agent.cli(&["logs", &pod, "--tail", "5"]).unwrap();
            assert!(
                logs.contains("listening on"),
                "{pod} via {}: {logs}",
                agent.name
            );
            if agent.name != node {
                remote += 1;
                let err = agent.cli(&["logs", &pod, "-c", "nope"]).unwrap_err();
                assert!(err.contains("container nope is not valid"), "{err}");
                // Followed: the first line arrives while the stream stays open.
                let (mut child, rx) = agent.cli_stream(&["logs", "-f", &pod]);
                let line = rx.recv_timeout(secs(10)).expect("a followed log line");
                assert!(line.contains("listening on"), "{line}");
                assert!(child.try_wait().unwrap().is_none(), "logs -f ended early");
                child.kill().unwrap();
                child.wait().unwrap();
            }
        }
    }
    assert!(remote >= 1, "no pod ran on another node than the one asked");
    // Asking a node that holds no such pod is a clear 404, wherever it is asked.
    let err = cluster.agents[1].cli(&["logs", "web-nope"]).unwrap_err();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn replicas_over_the_limits_are_refused_by_apply_and_scale() {
    let cluster = Cluster::start_with(
        "limits",
        1,
        &["--runtime", "process", "--max-replicas", "50"],
    );
    // A million replicas: refused with the limit named, nothing written.
    let huge = cluster
        .apply(0, "huge", &deployment("huge", 1_000_000, "v1", ""))
        .expect_err("a million replicas must be refused");
    assert!(
        huge.contains(
            "spec.replicas: 1000000 replicas is over the limit of 10000 replicas per workload"
        ),
        "{huge}"
    );
    assert!(huge.contains("nothing was applied"), "{huge}");
    let listed = cluster.agents[0].cli(&["get", "deployments"]).unwrap();
    assert!(!listed.contains("huge"), "{listed}");
    // Within the limits, then a scale past the cluster's.
    cluster
        .apply(0, "web", &deployment("web", 2, "v1", ""))
        .unwrap();
    let scaled = cluster.agents[0]
        .cli(&["scale", "deployment", "web", "--replicas", "51"])
        .expect_err("51 replicas is over the cluster's 50");
    assert!(scaled.contains("over its limit of 50"), "{scaled}");
    cluster.wait_for("2 ready", secs(30), |c| ready_everywhere(c, 0, 2));
    assert_eq!(deployment_counts(&cluster, 0, "web").map(|c| c.1), Some(2));
}

#[test]
fn after_a_full_restart_pods_show_ready_only_once_their_node_runs_them_again() {
    let mut cluster = Cluster::start_with("fullrestart", 3, PROCESS);
    cluster
        .apply(0, "web", &deployment("web", 6, "v1", ""))
        .unwrap();
    cluster.wait_for("6 ready pods", secs(30), |c| ready_everywhere(c, 0, 6));
    // Every machine dies, agents and pods; then the first comes back alone.
    for i in (0..3).rev() {
        cluster.agents[i].kill_machine();
    }
    let range = cluster.service_range();
    let args = ["--runtime", "process", "--service-range", range.as_str()];
    cluster.agents[0].start_with(&[], &args);
    // What it restored says 6 pods were ready on 3 nodes; none runs. Pods of the other nodes
    // (down, not heard from) never show ready, and the deployment counts no more than what
    // node-0 itself reports in its new run.
    let until = Instant::now() + secs(3);
    let mut polls = 0;
    while Instant::now() < until {
        if cluster.agents[0].cli(&["get", "pods"]).is_err() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // The deployment first: node-0's own pods may become ready in between, not the reverse.
        let deployment = deployment_counts(&cluster, 0, "web");
        let listed = pods(&cluster, 0);
        let ready_here: Vec<&String> = listed
            .iter()
            .filter(|p| p.2 && p.1 == "node-0")
            .map(|p| &p.0)
            .collect();
        let ready_elsewhere: Vec<(&String, &String)> = listed
            .iter()
            .filter(|p| p.2 && p.1 != "node-0")
            .map(|p| (&p.0, &p.1))
            .collect();
        assert!(
            ready_elsewhere.is_empty(),
            "ready on nodes that are down: {ready_elsewhere:?}"
        );
        if let Some((ready, _, _)) = deployment {
            assert!(
                ready as usize <= ready_here.len(),
                "deployment says {ready} ready, node-0 runs {ready_here:?}"
            );
            polls += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(polls > 5, "the agent answered {polls} times");
    // The others come back: exactly 6 again.
    cluster.agents[1].start_with(&[], &args);
    cluster.agents[2].start_with(&[], &args);
    cluster.wait_for("6 ready pods again", secs(40), |c| {
        ready_everywhere(c, 1, 6)
    });
}
