//! Config maps and secrets on real agents with the process runtime: variables from both kinds
//! and from the downward API, files in volumes with their modes, live updates of mounted files
//! on other nodes, the restart-on-config-change annotation, pods waiting for what they read
//! and starting once it appears, bad objects refused with nothing written, and no secret value
//! in any agent's data dir or log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{Capture, Cluster, files_holding, running_as_root, wait_until};

const PROCESS: &[&str] = &["--runtime", "process"];

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Pods as (name, node, phase, waiting reason) from `get pods -o json`.
fn pods(cluster: &Cluster, via: usize) -> Vec<(String, String, String, String)> {
    let Ok(text) = cluster.agents[via].cli(&["get", "pods", "-o", "json"]) else {
        return Vec::new();
    };
    let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                p["status"]["phase"].as_str().unwrap_or("").to_owned(),
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

/// A volume's file, as the process runtime writes it under an agent's data dir
/// (`pods/<uid>/volumes/<volume>/<path>`), on whichever agent runs the pod.
fn volume_files(cluster: &Cluster, volume: &str, path: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for agent in &cluster.agents {
        let pods = agent.dir.join("pods");
        let Ok(entries) = std::fs::read_dir(&pods) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.path().join("volumes").join(volume).join(path);
            if file.exists() {
                found.push(file);
            }
        }
    }
    found
}

const CONFIG: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  GREETING: hello
  LOG_LEVEL: debug
  1bad: skipped
  app.conf: |
    color=blue
"#;

const SECRET: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: app-secret
type: Opaque
stringData:
  password: s3cr3t-UNIQUE-7f1c
data:
  token: dG9rZW4tdmFsdWU=
"#;

fn app(name: &str, replicas: u32, annotations: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations: {{{annotations}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}, tier: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: ["/bin/sh", "-c", "env | grep -v ^DB_PASSWORD= | sort; printf 'DB_PASSWORD_BASE64=%s\\n' $(printf %s \"$DB_PASSWORD\" | base64); echo READY; exec sleep 3600"]
        resources:
          limits: {{memory: 64Mi}}
        envFrom:
        - prefix: CFG_
          configMapRef: {{name: app-config}}
        - configMapRef: {{name: app-config}}
        env:
        - name: DB_PASSWORD
          valueFrom:
            secretKeyRef: {{name: app-secret, key: password}}
        - name: OPTIONAL_MISSING
          valueFrom:
            secretKeyRef: {{name: app-secret, key: nope, optional: true}}
        - name: LEVEL
          valueFrom:
            configMapKeyRef: {{name: app-config, key: LOG_LEVEL}}
        - name: MY_POD
          valueFrom:
            fieldRef: {{fieldPath: metadata.name}}
        - name: MY_NS
          valueFrom:
            fieldRef: {{fieldPath: metadata.namespace}}
        - name: MY_NODE
          valueFrom:
            fieldRef: {{fieldPath: spec.nodeName}}
        - name: MY_IP
          valueFrom:
            fieldRef: {{fieldPath: status.podIP}}
        - name: MY_TIER
          valueFrom:
            fieldRef: {{fieldPath: "metadata.labels['tier']"}}
        - name: MEM_MI
          valueFrom:
            resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}
        volumeMounts:
        - {{name: config, mountPath: /etc/app}}
        - {{name: secret, mountPath: /etc/secret, readOnly: true}}
        - {{name: info, mountPath: /etc/info}}
      volumes:
      - name: config
        configMap:
          name: app-config
          items:
          - {{key: app.conf, path: app.conf, mode: 0600}}
      - name: secret
        secret:
          secretName: app-secret
          defaultMode: 0400
      - name: info
        downwardAPI:
          items:
          - path: labels
            fieldRef: {{fieldPath: metadata.labels}}
"#
    )
}

/// The `KEY=value` lines a pod printed (its environment, sorted), once it printed READY.
fn printed_env(cluster: &Cluster, pod: &str) -> Result<Vec<String>, String> {
    let logs = cluster.agents[0].cli(&["logs", pod])?;
    if !logs.contains("READY") {
        return Err(format!("not printed yet: {logs}"));
    }
    Ok(logs.lines().map(str::to_owned).collect())
}

#[test]
fn pods_read_config_maps_secrets_and_the_downward_api_and_follow_changes() {
    let cluster = Cluster::start_with("config", 2, PROCESS);
    // Every packet on the machine's interfaces while the secret exists: gossip, mesh and API.
    let capture = running_as_root(
        "pods_read_config_maps_secrets_and_the_downward_api_and_follow_changes",
        "capturing traffic with a packet socket",
    )
    .then(|| Capture::start(vec![b"s3cr3t-UNIQUE-7f1c".to_vec(), b"color=blue".to_vec()]))
    .transpose()
    .unwrap();
    // A pod that reads what does not exist yet waits, and says what it waits for.
    cluster.apply(0, "app", &app("app", 1, "")).unwrap();
    cluster.wait_for("CreateContainerConfigError", secs(30), |c| {
        let p = pods(c, 0);
        match p.first() {
            Some((_, _, _, reason)) if reason == "CreateContainerConfigError" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let pod = pods(&cluster, 0)[0].0.clone();
    let describe = cluster.agents[0].cli(&["describe", "pod", &pod]).unwrap();
    assert!(
        describe.contains("configmap \"app-config\" not found")
            || describe.contains("secret \"app-secret\" not found"),
        "{describe}"
    );
    // It starts by itself once they appear (through the other agent).
    cluster.apply(1, "config", CONFIG).unwrap();
    cluster.apply(1, "secret", SECRET).unwrap();
    let started = Instant::now();
    let env = {
        let mut env = Vec::new();
        cluster.wait_for("the pod prints its environment", secs(30), |c| {
            let p = pods(c, 0);
            let Some(pod) = p.first() else {
                return Err("no pod".into());
            };
            env = printed_env(c, &pod.0)?;
            Ok(())
        });
        env
    };
    println!(
        "a waiting pod started {:?} after what it reads appeared",
        started.elapsed()
    );
    let (pod, node, _, _) = pods(&cluster, 0)[0].clone();
    for want in [
        "CFG_GREETING=hello".to_owned(),
        "CFG_LOG_LEVEL=debug".to_owned(),
        // base64 of the value: the pod does not print the value itself, which would put it
        // in its log.
        "DB_PASSWORD_BASE64=czNjcjN0LVVOSVFVRS03ZjFj".to_owned(),
        "LEVEL=debug".to_owned(),
        format!("MY_POD={pod}"),
        "MY_NS=default".to_owned(),
        format!("MY_NODE={node}"),
        "MY_TIER=web".to_owned(),
        "MEM_MI=64".to_owned(),
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    assert!(
        env.iter().any(|l| l.starts_with("MY_IP=127.")),
        "the pod IP: {env:?}"
    );
    assert!(!env.iter().any(|l| l.starts_with("OPTIONAL_MISSING=")));
    assert!(env.contains(&"CFG_1bad=skipped".to_owned()));
    assert!(env.contains(&"GREETING=hello".to_owned()));
    assert!(
        !env.iter().any(|l| l.starts_with("1bad=")),
        "invalid names are skipped"
    );
    assert!(env.iter().any(|l| l.starts_with("SHOAL_VOLUME_CONFIG=")));
    let describe = cluster.agents[0].cli(&["describe", "pod", &pod]).unwrap();
    assert!(
        describe.contains("were skipped since they are considered invalid"),
        "{describe}"
    );
    // The process runtime does not mount: the pod says where the files are instead.
    assert!(
        describe.contains("($SHOAL_VOLUME_CONFIG), not at /etc/app"),
        "{describe}"
    );

    // Files, with their modes.
    use std::os::unix::fs::PermissionsExt as _;
    let conf = volume_files(&cluster, "config", "app.conf");
    assert_eq!(conf.len(), 1, "{conf:?}");
    assert_eq!(std::fs::read_to_string(&conf[0]).unwrap(), "color=blue\n");
    let mode = std::fs::metadata(&conf[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let labels = volume_files(&cluster, "info", "labels");
    assert_eq!(labels.len(), 1);
    let labels = std::fs::read_to_string(&labels[0]).unwrap();
    assert!(labels.contains("tier=\"web\""), "{labels}");
    // The secret's files are not on any agent's disk: the variable says where they are.
    assert!(volume_files(&cluster, "secret", "password").is_empty());
    let secret_dir = env
        .iter()
        .find_map(|l| l.strip_prefix("SHOAL_VOLUME_SECRET="))
        .expect("the secret volume's variable")
        .to_owned();
    let password = Path::new(&secret_dir).join("password");
    assert_eq!(
        std::fs::read_to_string(&password).unwrap(),
        "s3cr3t-UNIQUE-7f1c"
    );
    let mode = std::fs::metadata(&password).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);

    // A change applied through the node that does not run the pod reaches its files.
    let via = if cluster.agents[0].name == node { 1 } else { 0 };
    let changed = CONFIG.replace("color=blue", "color=green");
    let applied = Instant::now();
    cluster.apply(via, "config", &changed).unwrap();
    let took = wait_until(
        "the mounted file follows",
        secs(10),
        &cluster.agents,
        || {
            let text = std::fs::read_to_string(&conf[0]).map_err(|e| e.to_string())?;
            if text == "color=green\n" {
                Ok(())
            } else {
                Err(text)
            }
        },
    );
    println!(
        "mounted file updated {:?} after the apply returned ({:?} after it began)",
        took,
        applied.elapsed()
    );

    // No packet held the secret's value; the capture saw the config map's (in the API request
    // that applied it: config maps are not secret), so it was looking.
    if let Some(capture) = capture {
        let report = capture.finish();
        println!(
            "captured {} packets ({} bytes): the secret's value in {}, the config map's in {}",
            report.packets, report.bytes, report.found[0], report.found[1]
        );
        assert_eq!(report.found[0], 0, "a packet held the secret's value");
        assert!(report.found[1] > 0, "the capture saw nothing: {report:?}");
    }
    // No secret value in any agent's data dir or log.
    for agent in &cluster.agents {
        for dir in [&agent.dir, &agent.log_dir] {
            let found = files_holding(dir, b"s3cr3t-UNIQUE-7f1c");
            assert!(found.is_empty(), "plaintext in {found:?}");
        }
    }
    let yaml = cluster.agents[0]
        .cli(&["get", "secret", "app-secret", "-o", "yaml"])
        .unwrap();
    // base64 of "s3cr3t-UNIQUE-7f1c"
    assert!(yaml.contains("czNjcjN0LVVOSVFVRS03ZjFj"), "{yaml}");
    let describe = cluster.agents[0]
        .cli(&["describe", "secret", "app-secret"])
        .unwrap();
    assert!(!describe.contains("s3cr3t"), "{describe}");
    assert!(describe.contains("password:  18 bytes"), "{describe}");
}

#[test]
fn restart_on_config_change_rolls_the_deployment() {
    let cluster = Cluster::start_with("config-roll", 2, PROCESS);
    cluster.apply(0, "config", CONFIG).unwrap();
    cluster.apply(0, "secret", SECRET).unwrap();
    let annotated = app(
        "rolling",
        2,
        "\"shoal.io/restart-on-config-change\": \"true\"",
    );
    cluster.apply(0, "app", &annotated).unwrap();
    let running = |c: &Cluster| -> Result<Vec<String>, String> {
        let p = pods(c, 0);
        let names: Vec<String> = p
            .iter()
            .filter(|p| p.2 == "Running")
            .map(|p| p.0.clone())
            .collect();
        if names.len() == 2 && p.len() == 2 {
            Ok(names)
        } else {
            Err(format!("{p:?}"))
        }
    };
    let mut before = Vec::new();
    cluster.wait_for("2 running", secs(30), |c| {
        before = running(c)?;
        Ok(())
    });
    // Applying the same manifest again changes nothing.
    let out = cluster.apply(1, "app", &annotated).unwrap();
    assert!(out.contains("unchanged"), "{out}");
    // A change of what the pods read rolls them.
    let out = cluster
        .apply(1, "config", &CONFIG.replace("hello", "bonjour"))
        .unwrap();
    assert!(out.contains("configmap/app-config configured"), "{out}");
    cluster.wait_for("new pods", secs(40), |c| {
        let now = running(c)?;
        if now.iter().any(|n| before.contains(n)) {
            return Err(format!("old pods still there: {now:?}"));
        }
        for pod in &now {
            let env = printed_env(c, pod)?;
            if !env.contains(&"CFG_GREETING=bonjour".to_owned()) {
                return Err(format!("{pod} has the old value"));
            }
        }
        Ok(())
    });
}

#[test]
fn bad_config_objects_are_refused_with_nothing_written() {
    let cluster = Cluster::start_with("config-bad", 1, PROCESS);
    let bad = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: fine
data:
  a: b
---
apiVersion: v1
kind: Secret
metadata:
  name: broken
data:
  key: "not base64!"
"#;
    let err = cluster.apply(0, "bad", bad).unwrap_err();
    assert!(err.contains("data[key]: not valid base64"), "{err}");
    let list = cluster.agents[0].cli(&["get", "configmaps"]).unwrap();
    assert!(
        !list.contains("fine"),
        "nothing of the apply is written: {list}"
    );
    // An immutable object refuses changes, and says so.
    let immutable = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fixed\nimmutable: true\ndata:\n  a: b\n";
    cluster.apply(0, "fixed", immutable).unwrap();
    let err = cluster
        .apply(0, "fixed", &immutable.replace("a: b", "a: c"))
        .unwrap_err();
    assert!(err.contains("immutable"), "{err}");
    // A typical tutorial application (a namespace, a config map, a secret with stringData and
    // data, two deployments with probes, variables from both, a config map volume with
    // items, a ClusterIP and a NodePort service) applies unchanged. (Its images cannot be
    // pulled here: the other tests run the same shapes with local programs and images.)
    let tutorial = include_str!("../../model/src/testdata/tutorial.yaml");
    let out = cluster.apply(0, "tutorial", tutorial).unwrap();
    for want in [
        "namespace/guestbook created",
        "configmap/web-config created",
        "secret/db-credentials created",
        "deployment.apps/db created",
        "deployment.apps/web created",
    ] {
        assert!(out.contains(want), "{want} not in {out}");
    }
    // Over 1 MiB: refused with the size and the limit.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  blob: {}\n",
        "x".repeat((1 << 20) + 10)
    );
    let err = cluster.apply(0, "big", &big).unwrap_err();
    assert!(err.contains("1048576"), "{err}");
}
