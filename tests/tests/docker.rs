//! Workloads with the Docker runtime against the real engine, with an image built locally
//! (`shoal-demo:dev`, FROM scratch). Skipped with a printed reason when no engine is reachable,
//! unless `SHOAL_REQUIRE_DOCKER=1` (CI sets it): then they fail instead.

use std::time::Duration;

use serde_json::Value;
use shoal_tests::Cluster;

const DOCKER: &[&str] = &["--runtime", "docker"];

fn docker_ready(test: &str) -> bool {
    if shoal_tests::docker_engine_answers() {
        shoal_agent::runtime::testing::build_demo_image().expect("building shoal-demo:dev");
        return true;
    }
    if shoal_agent::runtime::testing::docker_required() {
        panic!("{test}: no Docker engine is reachable, and SHOAL_REQUIRE_DOCKER=1");
    }
    eprintln!(
        "{test}: skipped: no Docker engine is reachable (set SHOAL_REQUIRE_DOCKER=1 to fail instead)"
    );
    false
}

fn pod_list(cluster: &Cluster) -> Vec<Value> {
    let Ok(text) = cluster.agents[0].cli(&["get", "pods", "-o", "json"]) else {
        return Vec::new();
    };
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[test]
fn docker_deployment_runs_heals_and_reports_pull_failures() {
    if !docker_ready("docker_deployment_runs_heals_and_reports_pull_failures") {
        return;
    }
    let mut cluster = Cluster::start_with("docker", 3, DOCKER);
    let yaml = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: http
        image: shoal-demo:dev
        imagePullPolicy: IfNotPresent
        env:
        - {name: PORT, value: "8080"}
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
          periodSeconds: 1
"#;
    assert_eq!(
        cluster.apply(0, "web", yaml).unwrap().trim(),
        "deployment.apps/web created"
    );
    cluster.wait_for("3 ready containers", Duration::from_secs(60), |c| {
        let pods = pod_list(c);
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        if pods.len() == 3 && ready == 3 {
            Ok(())
        } else {
            Err(format!("{ready}/{}", pods.len()))
        }
    });
    // Each pod answers on its own IP on the shoal network.
    for pod in pod_list(&cluster) {
        let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
        let mut s = std::net::TcpStream::connect((ip.as_str(), 8080)).expect("pod reachable");
        use std::io::{Read, Write};
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "{answer}"
        );
    }
    // A machine dies: its containers are replaced on the others.
    let victim = (1..3)
        .find(|&i| {
            let name = format!("node-{i}");
            pod_list(&cluster)
                .iter()
                .any(|p| p["spec"]["nodeName"] == name.as_str())
        })
        .expect("a pod outside node-0");
    let victim_name = format!("node-{victim}");
    cluster.agents[victim].kill_machine();
    cluster.wait_for("replaced", Duration::from_secs(60), |c| {
        let pods = pod_list(c);
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        let stale = pods
            .iter()
            .any(|p| p["spec"]["nodeName"] == victim_name.as_str());
        if pods.len() == 3 && ready == 3 && !stale {
            Ok(())
        } else {
            Err(format!("{ready}/{} stale={stale}", pods.len()))
        }
    });

    // An image that cannot be had: a clear status, not a silent hang.
    let bad = r#"apiVersion: v1
kind: Pod
metadata:
  name: nope
spec:
  containers:
  - name: app
    image: registry.invalid/nope:1
"#;
    cluster.apply(0, "nope", bad).unwrap();
    cluster.wait_for("pull failure shown", Duration::from_secs(30), |c| {
        let table = c.agents[0].cli(&["get", "pods"])?;
        let line = table
            .lines()
            .find(|l| l.starts_with("nope"))
            .unwrap_or("")
            .to_owned();
        if line.contains("ErrImagePull") || line.contains("ImagePullBackOff") {
            Ok(())
        } else {
            Err(table)
        }
    });
    let describe = cluster.agents[0].cli(&["describe", "pod", "nope"]).unwrap();
    assert!(describe.contains("registry.invalid/nope:1"), "{describe}");
    assert!(describe.to_lowercase().contains("pull"), "{describe}");
}

#[test]
fn docker_pod_containers_share_localhost() {
    if !docker_ready("docker_pod_containers_share_localhost") {
        return;
    }
    let cluster = Cluster::start_with("dockerpod", 1, DOCKER);
    let yaml = r#"apiVersion: v1
kind: Pod
metadata:
  name: pair
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: shoal-demo:dev
    env:
    - {name: PORT, value: "8080"}
  - name: client
    image: shoal-demo:dev
    args: ["--get", "http://localhost:8080/", "--wait-ms", "10000"]
"#;
    cluster.apply(0, "pair", yaml).unwrap();
    cluster.wait_for(
        "the client got an answer from localhost",
        Duration::from_secs(60),
        |c| {
            let pods = pod_list(c);
            let Some(pod) = pods.first() else {
                return Err("no pod".into());
            };
            let client = pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "client")
                .cloned()
                .unwrap_or(Value::Null);
            match client["state"]["terminated"]["exitCode"].as_i64() {
                Some(0) => Ok(()),
                Some(code) => panic!("the client failed with {code}: {pod}"),
                None => Err(format!("{}", client["state"])),
            }
        },
    );
    let logs = cluster.agents[0]
        .cli(&["logs", "pair", "-c", "client"])
        .unwrap();
    assert!(logs.contains("\"pod\""), "the server's JSON: {logs}");
}

/// Removes a host route when dropped (the agents leave theirs: other agents may use it).
struct RouteGuard(&'static str);

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["-4", "route", "del", "local", self.0, "dev", "lo"])
            .output();
    }
}

/// Tests that use the Docker runtime's default service range (10.200.0.0/16) and its route,
/// one at a time.
static DEFAULT_RANGE: std::sync::Mutex<()> = std::sync::Mutex::new(());
const DEFAULT_RANGE_CIDR: &str = "10.200.0.0/16";

/// With default flags (the Docker runtime, its default service range), a Docker pod on one
/// node reaches a service whose pod runs on another node by its DNS name: the agents route the
/// range to the host (this needs CAP_NET_ADMIN, as CI has), the cluster DNS answers the name
/// with the cluster IP, and the mesh carries the connection.
#[test]
fn docker_pod_reaches_a_service_by_name_across_nodes_with_default_flags() {
    if !docker_ready("docker_pod_reaches_a_service_by_name_across_nodes_with_default_flags") {
        return;
    }
    let _one_at_a_time = DEFAULT_RANGE.lock().unwrap_or_else(|e| e.into_inner());
    let _route = RouteGuard(DEFAULT_RANGE_CIDR);
    let cluster = Cluster::start_with_default_range("dockerdns", 2, &[]);
    let web = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers:
      - name: http
        image: shoal-demo:dev
        env:
        - {name: PORT, value: "8080"}
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080}
"#;
    cluster.apply(0, "web", web).unwrap();
    cluster.wait_for("the web pod ready", Duration::from_secs(60), |c| {
        let pods = pod_list(c);
        if pods
            .iter()
            .any(|p| is_ready(p) && p["spec"]["nodeName"] == "node-1")
        {
            Ok(())
        } else {
            Err(format!("{} pods", pods.len()))
        }
    });
    let client = r#"apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: node-0}
  containers:
  - name: get
    image: shoal-demo:dev
    args: ["--get", "http://web/", "--wait-ms", "20000"]
"#;
    cluster.apply(0, "client", client).unwrap();
    cluster.wait_for(
        "the client got an answer from web by name",
        Duration::from_secs(60),
        |c| {
            let pods = pod_list(c);
            let Some(pod) = pods.iter().find(|p| p["metadata"]["name"] == "client") else {
                return Err("no client pod yet".into());
            };
            match pod["status"]["phase"].as_str() {
                Some("Succeeded") => Ok(()),
                other => Err(format!("client {other:?}: {}", pod["status"])),
            }
        },
    );
    let logs = cluster.agents[0].cli(&["logs", "client"]).unwrap();
    assert!(
        logs.contains("\"pod\":\"web-"),
        "the web pod's JSON: {logs}"
    );
    // The service got its address from the default range.
    let svc = cluster.agents[1].cli(&["get", "svc", "web"]).unwrap();
    assert!(svc.contains("10.200."), "{svc}");
}

/// An agent whose pods run in Docker that cannot route its service range (no CAP_NET_ADMIN)
/// refuses to start, and says every way out, rather than run pods that cannot reach services.
#[test]
fn an_agent_that_cannot_route_its_service_range_refuses_to_start_and_says_why() {
    const TEST: &str = "an_agent_that_cannot_route_its_service_range_refuses_to_start_and_says_why";
    if !shoal_tests::running_as_root(TEST, "it drops CAP_NET_ADMIN with setpriv") {
        return;
    }
    let _one_at_a_time = DEFAULT_RANGE.lock().unwrap_or_else(|e| e.into_inner());
    // Not routed yet (an earlier test's agents leave their route).
    let _ = std::process::Command::new("ip")
        .args([
            "-4",
            "route",
            "del",
            "local",
            DEFAULT_RANGE_CIDR,
            "dev",
            "lo",
        ])
        .output();
    let scratch = shoal_tests::Scratch::new("noroute");
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-net_admin",
            "--",
        ])
        .arg(shoal_tests::shoal_bin())
        .args(["agent", "--runtime", "docker", "--listen", "127.0.0.1:0"])
        .args(["--api", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.path().join("data"))
        .env_remove("SHOAL_CLUSTER_KEY")
        .output()
        .expect("running setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    for says in [
        "cannot route the service range 10.200.0.0/16 to this host",
        "Operation not permitted",
        "CAP_NET_ADMIN",
        "sudo ip route add local 10.200.0.0/16 dev lo",
        "--service-range 127.200.0.0/16",
        "--runtime process",
    ] {
        assert!(stderr.contains(says), "does not say {says:?}: {stderr}");
    }
}

/// The README's Docker example: `demo/manifests/web.yaml` and `web-svc.yaml` run three pods of
/// the locally built image and a service that answers on its cluster IP.
#[test]
fn the_readmes_docker_manifests_run_and_answer() {
    if !docker_ready("the_readmes_docker_manifests_run_and_answer") {
        return;
    }
    let cluster = Cluster::start_with("readme-web", 2, DOCKER);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/manifests");
    for file in ["web.yaml", "web-svc.yaml"] {
        let path = dir.join(file);
        cluster.agents[0]
            .cli(&["apply", "-f", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("applying {file}: {e}"));
    }
    cluster.wait_for("3 ready web pods", Duration::from_secs(60), |c| {
        let ready = pod_list(c)
            .iter()
            .filter(|p| {
                is_ready(p)
                    && p["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("web-")
            })
            .count();
        if ready == 3 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    });
    let svc: Value = serde_json::from_str(
        &cluster.agents[1]
            .cli(&["get", "svc", "web", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("a cluster IP")
        .to_owned();
    cluster.wait_for("the service to answer", Duration::from_secs(20), |_| {
        let mut stream =
            std::net::TcpStream::connect((ip.as_str(), 80)).map_err(|e| e.to_string())?;
        use std::io::{Read, Write};
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        if text.contains("\"pod\":\"web-") {
            Ok(())
        } else {
            Err(text)
        }
    });
}

/// Config maps, secrets and the downward API inside a container: variables, files at their
/// mount paths with their modes, the secret's files on tmpfs on the host and nowhere in the
/// agent's data dir, and a change of the config map seen inside the running container.
#[test]
fn docker_pods_read_config_maps_and_secrets_as_env_and_mounted_files() {
    if !docker_ready("docker_pods_read_config_maps_and_secrets_as_env_and_mounted_files") {
        return;
    }
    shoal_agent::runtime::testing::build_shell_image().expect("building shoal-shell:dev");
    let cluster = Cluster::start_with("docker-config", 1, DOCKER);
    let objects = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data:
  GREETING: hello
  app.conf: "color=blue"
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: d0cker-UNIQUE-93ab}
"#;
    cluster.apply(0, "objects", objects).unwrap();
    let app = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: reader}
spec:
  replicas: 1
  selector: {matchLabels: {app: reader}}
  template:
    metadata: {labels: {app: reader}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: shoal-shell:dev
        command:
        - /bin/sh
        - -c
        - |
          echo "GREETING=$GREETING"
          [ "$PASS" = "$(cat /etc/secret/password)" ] && echo PASS_MATCHES_FILE
          [ -n "$MY_IP" ] && echo "HAS_IP $MY_IP"
          stat -L -c 'MODE %a' /etc/secret/password
          echo READY
          while true; do cat /etc/app/app.conf; echo; sleep 0.2; done
        envFrom:
        - configMapRef: {name: app}
        env:
        - name: PASS
          valueFrom: {secretKeyRef: {name: creds, key: password}}
        - name: MY_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        volumeMounts:
        - {name: config, mountPath: /etc/app}
        - {name: secret, mountPath: /etc/secret}
      volumes:
      - name: config
        configMap: {name: app}
      - name: secret
        secret: {secretName: creds, defaultMode: 0400}
"#;
    cluster.apply(0, "app", app).unwrap();
    let logs = |c: &Cluster| -> Result<String, String> {
        let pods = pod_list(c);
        let name = pods
            .first()
            .and_then(|p| p["metadata"]["name"].as_str())
            .ok_or("no pod")?
            .to_owned();
        c.agents[0].cli(&["logs", &name])
    };
    cluster.wait_for(
        "the container reads its config",
        Duration::from_secs(90),
        |c| {
            let text = logs(c)?;
            for want in [
                "GREETING=hello",
                "PASS_MATCHES_FILE",
                "HAS_IP ",
                "MODE 400",
                "color=blue",
            ] {
                if !text.contains(want) {
                    return Err(format!("{want} not in {text}"));
                }
            }
            Ok(())
        },
    );
    // The secret's files are on tmpfs on the host, and its value nowhere in the data dir.
    let mut on_tmpfs = false;
    for entry in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        let pods = entry.path().join("pods");
        for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            let file = pod.path().join("volumes/secret/password");
            if std::fs::read_to_string(&file).is_ok_and(|v| v == "d0cker-UNIQUE-93ab") {
                on_tmpfs = true;
            }
        }
    }
    assert!(on_tmpfs, "the secret volume is in /dev/shm");
    let agent = &cluster.agents[0];
    for dir in [&agent.dir, &agent.log_dir] {
        let found = shoal_tests::files_holding(dir, b"d0cker-UNIQUE-93ab");
        assert!(found.is_empty(), "plaintext in {found:?}");
    }
    // A change reaches the running container's file.
    cluster
        .apply(0, "objects", &objects.replace("color=blue", "color=green"))
        .unwrap();
    cluster.wait_for(
        "the container sees the change",
        Duration::from_secs(20),
        |c| {
            let text = logs(c)?;
            if text.contains("color=green") {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
}
