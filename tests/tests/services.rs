//! Services on real agents with the process runtime: one stable cluster IP seen alike by every
//! node, endpoints that follow the ready pods (also when a node dies), kubectl's tables, and bad
//! Service manifests refused with their field paths and nothing written.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{Cluster, demo_bin};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const PROCESS: &[&str] = &["--runtime", "process"];

/// A Deployment of the demo server, listening on a container port named `http`, and a Service
/// selecting its pods by that name.
fn web(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: http
        image: shoal-demo:dev
        command: ["{bin}"]
        env:
        - {{name: PORT, value: "8080"}}
        ports:
        - {{name: http, containerPort: 8080}}
        readinessProbe:
          httpGet: {{path: /ready, port: http}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {{app: web}}
spec:
  selector: {{app: web}}
  ports:
  - name: http
    port: 80
    targetPort: http
"#,
        bin = demo_bin().display()
    )
}

fn json(cluster: &Cluster, via: usize, args: &[&str]) -> Result<Value, String> {
    let text = cluster.agents[via].cli(args)?;
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// The cluster IP of `name` as agent `via` shows it.
fn cluster_ip(cluster: &Cluster, via: usize, name: &str) -> Result<String, String> {
    let svc = json(cluster, via, &["get", "svc", name, "-o", "json"])?;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
    if svc["spec"]["clusterIPs"][0].as_str() != Some(ip.as_str()) {
        return Err(format!("clusterIPs do not match clusterIP: {svc}"));
    }
    Ok(ip)
}

/// Ready pods as (IP, node) from `get pods -o json`.
fn ready_pods(cluster: &Cluster, via: usize) -> Result<BTreeSet<(String, String)>, String> {
    let list = json(cluster, via, &["get", "pods", "-o", "json"])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            (
                p["status"]["podIP"].as_str().unwrap_or("").to_owned(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// The ready addresses of the Endpoints `name` as (IP:port, node).
fn endpoints(
    cluster: &Cluster,
    via: usize,
    name: &str,
) -> Result<BTreeSet<(String, String)>, String> {
    let ep = json(cluster, via, &["get", "endpoints", name, "-o", "json"])?;
    let mut out = BTreeSet::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let ports: Vec<u64> = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        for a in subset["addresses"].as_array().into_iter().flatten() {
            if a["targetRef"]["kind"] != "Pod" {
                return Err(format!("address without its pod: {a}"));
            }
            for port in &ports {
                out.insert((
                    format!("{}:{port}", a["ip"].as_str().unwrap_or("")),
                    a["nodeName"].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// Every agent lists exactly the ready pods (`want` of them) as the endpoints of `web`.
fn endpoints_are_the_ready_pods(
    cluster: &Cluster,
    agents: &[usize],
    want: usize,
) -> Result<(), String> {
    let pods = ready_pods(cluster, agents[0])?;
    if pods.len() != want {
        return Err(format!("{} ready pods, want {want}: {pods:?}", pods.len()));
    }
    let expected: BTreeSet<(String, String)> = pods
        .iter()
        .map(|(ip, node)| (format!("{ip}:8080"), node.clone()))
        .collect();
    for &i in agents {
        let got = endpoints(cluster, i, "web")?;
        if got != expected {
            return Err(format!("node-{i} lists {got:?}, want {expected:?}"));
        }
    }
    Ok(())
}

#[test]
fn a_service_has_one_address_everywhere_and_its_endpoints_follow_the_pods() {
    let mut cluster = Cluster::start_with("svc", 3, PROCESS);
    assert_eq!(
        cluster.apply(0, "web", &web(3)).unwrap(),
        "deployment.apps/web created\nservice/web created\n"
    );

    // One address, in the default service range, the same on every node.
    let ip = cluster_ip(&cluster, 0, "web").unwrap();
    let addr: Ipv4Addr = ip.parse().unwrap();
    let range = cluster.service_range();
    let prefix = range.trim_end_matches("0.0/16");
    assert!(ip.starts_with(prefix), "{ip} in {range}");
    assert!(addr.is_loopback(), "{ip}");
    cluster.wait_for("the same cluster IP on every node", secs(10), |c| {
        for i in 1..3 {
            let other = cluster_ip(c, i, "web")?;
            if other != ip {
                return Err(format!("node-{i} shows {other}, node-0 {ip}"));
            }
        }
        Ok(())
    });
    let table = cluster.agents[1].cli(&["get", "svc"]).unwrap();
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["web", "ClusterIP", ip.as_str(), "<none>", "80/TCP"]
    );

    // Re-applying changes nothing: the address is part of the stored object.
    assert_eq!(
        cluster.apply(2, "web", &web(3)).unwrap(),
        "deployment.apps/web unchanged\nservice/web unchanged\n"
    );

    // The endpoints are the three ready pods, on their target port, as every node sees them.
    let took = cluster.wait_for("3 endpoints on every node", secs(30), |c| {
        endpoints_are_the_ready_pods(c, &[0, 1, 2], 3)
    });
    eprintln!("apply -> 3 endpoints everywhere: {took:?}");
    let ep_table = cluster.agents[2].cli(&["get", "ep"]).unwrap();
    assert!(ep_table.starts_with("NAME"), "{ep_table}");
    assert!(ep_table.contains(":8080,"), "{ep_table}");
    let describe = cluster.agents[2].cli(&["describe", "svc", "web"]).unwrap();
    for want in [
        format!("IP:                {ip}"),
        "Port:              http  80/TCP".to_owned(),
        "TargetPort:        http/TCP".to_owned(),
        "Selector:          app=web".to_owned(),
    ] {
        assert!(describe.contains(&want), "{want:?} in\n{describe}");
    }

    // Another service gets another address.
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  type: NodePort\n  ports: [{port: 81}]\n";
    assert_eq!(
        cluster.apply(1, "other", other).unwrap(),
        "service/other created\n"
    );
    let other_ip = cluster_ip(&cluster, 1, "other").unwrap();
    assert_ne!(other_ip, ip);
    let svc = json(&cluster, 1, &["get", "svc", "other", "-o", "json"]).unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{svc}");

    // A pod started now gets Kubernetes' service links for the services of its namespace.
    let client = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  containers:\n  - name: c\n    image: shoal-demo:dev\n    command: [\"{}\"]\n    env: [{{name: PORT, value: \"9090\"}}]\n",
        demo_bin().display()
    );
    cluster.apply(0, "client", &client).unwrap();
    let environ = |c: &Cluster| -> Result<String, String> {
        for agent in &c.agents {
            for pid in agent.pod_pids() {
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let env = String::from_utf8_lossy(&env).replace('\0', "\n");
                if env.lines().any(|l| l == "POD_NAME=client") {
                    return Ok(env);
                }
            }
        }
        Err("the client pod does not run yet".into())
    };
    cluster.wait_for("the client pod runs", secs(20), |c| environ(c).map(|_| ()));
    let env = environ(&cluster).unwrap();
    for want in [
        format!("WEB_SERVICE_HOST={ip}"),
        "WEB_SERVICE_PORT=80".to_owned(),
        "WEB_SERVICE_PORT_HTTP=80".to_owned(),
        format!("OTHER_SERVICE_HOST={other_ip}"),
        "OTHER_SERVICE_PORT=81".to_owned(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in\n{env}");
    }
    cluster.agents[0].cli(&["delete", "pod", "client"]).unwrap();
    cluster.wait_for("the client pod gone", secs(20), |c| match environ(c) {
        Ok(_) => Err("the client pod still runs".into()),
        Err(_) => Ok(()),
    });

    // A node running a pod dies: its pod leaves the endpoints, the replacement joins them.
    let victim = 2;
    let victim_name = "node-2";
    cluster.wait_for("a pod on node-2", secs(5), |c| {
        let pods = ready_pods(c, 0)?;
        if pods.iter().any(|(_, n)| n == victim_name) {
            Ok(())
        } else {
            Err(format!("no ready pod on {victim_name}: {pods:?}"))
        }
    });
    cluster.agents[victim].kill_machine();
    let took = cluster.wait_for("endpoints without the dead node", secs(25), |c| {
        endpoints_are_the_ready_pods(c, &[0, 1], 3)?;
        let eps = endpoints(c, 0, "web")?;
        if eps.iter().any(|(_, n)| n == victim_name) {
            return Err(format!("endpoints still on {victim_name}: {eps:?}"));
        }
        Ok(())
    });
    eprintln!("kill -9 of a node -> endpoints on the survivors: {took:?}");
    assert_eq!(
        cluster_ip(&cluster, 1, "web").unwrap(),
        ip,
        "the address never moves"
    );

    // Deleting the service removes it and its endpoints.
    assert_eq!(
        cluster.agents[0]
            .cli(&["delete", "svc", "web"])
            .unwrap()
            .trim(),
        "service \"web\" deleted"
    );
    cluster.wait_for("the service gone", secs(10), |c| {
        let err = c.agents[1]
            .cli(&["get", "endpoints", "web"])
            .err()
            .unwrap_or_default();
        if err.contains("endpoints \"web\" not found") {
            Ok(())
        } else {
            Err(format!("get endpoints web: {err:?}"))
        }
    });
}

#[test]
fn bad_services_are_refused_by_field_and_nothing_is_written() {
    let cluster = Cluster::start_with(
        "svc-bad",
        1,
        &["--runtime", "process", "--service-range", "127.200.0.0/16"],
    );
    let agent = &cluster.agents[0];
    let bad_protocol = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: dns}}\nspec:\n  ports:\n  - port: 53\n    protocol: UDP\n",
        web(1)
    );
    let err = cluster.apply(0, "bad", &bad_protocol).unwrap_err();
    assert!(
        err.contains("bad.yaml: doc 3: spec.ports[0].protocol: UDP services are not supported yet (TCP only) (line 44)"),
        "{err}"
    );
    assert!(err.contains("nothing was applied (1 problem)"), "{err}");

    // A cluster IP outside the range is refused by the agent, naming the field; nothing of
    // the apply is written, not even the valid Deployment before it.
    let outside = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  clusterIP: 10.0.0.5\n  ports: [{{port: 80}}]\n",
        web(1)
    );
    let err = cluster.apply(0, "outside", &outside).unwrap_err();
    assert!(
        err.contains("service/api: spec.clusterIP: 10.0.0.5 is not in the cluster's service range 127.200.0.0/16"),
        "{err}"
    );
    assert_eq!(
        agent.cli(&["get", "deploy"]).unwrap(),
        "",
        "nothing was written"
    );
    assert!(
        agent
            .cli(&["get", "svc", "-o", "json"])
            .unwrap()
            .contains("\"items\": []")
    );

    // An address is held by one service only, and does not change once given.
    let svc = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
        )
    };
    assert_eq!(
        cluster.apply(0, "a", &svc("a", "127.200.9.9")).unwrap(),
        "service/a created\n"
    );
    let err = cluster.apply(0, "b", &svc("b", "127.200.9.9")).unwrap_err();
    assert!(
        err.contains(
            "service/b: spec.clusterIP: 127.200.9.9 is already allocated to service default/a"
        ),
        "{err}"
    );
    let err = cluster
        .apply(0, "a", &svc("a", "127.200.9.10"))
        .unwrap_err();
    assert!(
        err.contains(
            "spec.clusterIP: the service has cluster IP 127.200.9.9, which cannot be changed"
        ),
        "{err}"
    );
    let dry = agent.cli(&[
        "apply",
        "--dry-run",
        "-f",
        cluster.dir().join("a.yaml").to_str().unwrap(),
    ]);
    assert!(dry.is_err(), "the dry run checks the address too");
    assert_eq!(cluster_ip(&cluster, 0, "a").unwrap(), "127.200.9.9");
    let err = agent.cli(&["get", "svc", "b"]).unwrap_err();
    assert!(err.contains("services \"b\" not found"), "{err}");

    // Endpoints are derived: they cannot be deleted; a service without a selector has none.
    let err = agent.cli(&["delete", "endpoints", "a"]).unwrap_err();
    assert!(err.contains("delete the service"), "{err}");
    let eps = agent.cli(&["get", "endpoints", "-o", "json"]).unwrap();
    assert!(eps.contains("\"items\": []"), "{eps}");
}

/// `GET /` through `addr`: the answering pod's name.
fn which_pod(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .ok_or_else(|| format!("no body in {answer:?}"))?;
    let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    v["pod"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no pod in {body}"))
}

/// Connections to a service's cluster IP reach its ready pods wherever they run, through any
/// agent (all agents of this machine listen on the address; the kernel picks one), spread
/// over the pods; when the node of the only pod dies, the same address serves from the
/// replacement.
#[test]
fn connections_to_the_cluster_ip_reach_the_pods_wherever_they_run() {
    let mut cluster = Cluster::start_with("mesh", 3, PROCESS);
    cluster.apply(0, "web", &web(3)).unwrap();
    cluster.wait_for("3 endpoints everywhere", secs(30), |c| {
        endpoints_are_the_ready_pods(c, &[0, 1, 2], 3)
    });
    let ip = cluster_ip(&cluster, 0, "web").unwrap();
    let vip = format!("{ip}:80");

    // 300 connections spread over the three pods, on three nodes.
    let pods = ready_pods(&cluster, 0).unwrap();
    let nodes: BTreeSet<&String> = pods.iter().map(|(_, n)| n).collect();
    assert_eq!(nodes.len(), 3, "one pod per node: {pods:?}");
    let mut hits: std::collections::BTreeMap<String, u32> = Default::default();
    for _ in 0..300 {
        *hits.entry(which_pod(&vip).unwrap()).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    for (pod, n) in &hits {
        assert!((60..=141).contains(n), "{pod} got {n} of 300: {hits:?}");
    }
    // Every connection is in the agents' per-service metrics, some went over QUIC.
    let (mut opened, mut inbound) = (0, 0);
    for agent in &cluster.agents {
        let (code, body) = agent.http("GET", "/api/v1/stats", None);
        assert_eq!(code, 200, "{body}");
        let stats: Value = serde_json::from_str(&body).unwrap();
        let web = &stats["mesh"]["outbound"]["default/web"];
        opened += web["opened"].as_u64().unwrap_or(0);
        inbound += stats["mesh"]["inbound"]["default/web"]["opened"]
            .as_u64()
            .unwrap_or(0);
    }
    assert_eq!(opened, 300, "connections opened through the agents");
    assert!(inbound > 0, "no connection crossed the mesh");

    // A NodePort service: every node accepts it on its node port too.
    let node_port_yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web-np}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 8081, targetPort: 8080}]\n";
    cluster.apply(1, "web-np", node_port_yaml).unwrap();
    let svc = json(&cluster, 1, &["get", "svc", "web-np", "-o", "json"]).unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    cluster.wait_for("the node port serves", secs(10), |_| {
        which_pod(&format!("127.0.0.1:{node_port}")).map(|_| ())
    });
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(which_pod(&format!("127.0.0.1:{node_port}")).unwrap());
    }
    assert_eq!(
        seen.len(),
        3,
        "the node port spreads over the pods too: {seen:?}"
    );

    // Down to one pod; its node dies; the address serves again from the replacement.
    cluster.agents[0]
        .cli(&["scale", "deployment", "web", "--replicas", "1"])
        .unwrap();
    cluster.wait_for("1 endpoint", secs(30), |c| {
        endpoints_are_the_ready_pods(c, &[0, 1, 2], 1)
    });
    let before = which_pod(&vip).unwrap();
    let node = ready_pods(&cluster, 0)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .1;
    let victim: usize = node.trim_start_matches("node-").parse().unwrap();
    cluster.agents[victim].kill_machine();
    let took = cluster.wait_for("the address serves again", secs(30), |_| {
        match which_pod(&vip) {
            Ok(pod) if pod != before => Ok(()),
            Ok(pod) => Err(format!("still answered by {pod}")),
            Err(e) => Err(e),
        }
    });
    eprintln!("kill -9 of the only endpoint's node -> the cluster IP serves again: {took:?}");
    // And keeps serving, through every surviving agent.
    for _ in 0..20 {
        which_pod(&vip).unwrap();
    }
}
