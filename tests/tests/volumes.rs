//! `emptyDir` and `hostPath` volumes on real agents with the process runtime: a scratch
//! directory kept across container restarts and evicted when it outgrows its `sizeLimit`, and
//! a host directory created and shared.

use std::time::Duration;

use serde_json::Value;
use shoal_tests::Cluster;

const PROCESS: &[&str] = &["--runtime", "process"];

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The one pod's name, restart count and events' reasons, from `get pods -o json` and
/// `describe`.
fn the_pod(cluster: &Cluster) -> Result<(String, u64), String> {
    let text = cluster.agents[0].cli(&["get", "pods", "-o", "json"])?;
    let list: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let pod = list["items"].get(0).ok_or("no pod")?;
    Ok((
        pod["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        pod["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0),
    ))
}

#[test]
fn scratch_directories_survive_restarts_and_are_evicted_over_their_limit() {
    let cluster = Cluster::start_with("volumes", 1, PROCESS);
    let host_dir = cluster.dir().join("shared");
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: scratch}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: scratch}}}}
  template:
    metadata: {{labels: {{app: scratch}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: none
        command:
        - /bin/sh
        - -c
        - |
          if [ -f "$SHOAL_VOLUME_CACHE/seen" ]; then echo SECOND_RUN; else echo FIRST_RUN; fi
          echo kept > "$SHOAL_VOLUME_CACHE/seen"
          echo from-the-pod > "$SHOAL_VOLUME_SHARED/hello"
          if [ ! -f "$SHOAL_VOLUME_CACHE/exited" ]; then touch "$SHOAL_VOLUME_CACHE/exited"; exit 3; fi
          exec sleep 3600
        volumeMounts:
        - {{name: cache, mountPath: /cache}}
        - {{name: shared, mountPath: /shared}}
      volumes:
      - name: cache
        emptyDir: {{sizeLimit: 1Mi}}
      - name: shared
        hostPath: {{path: {host}, type: DirectoryOrCreate}}
"#,
        host = host_dir.display()
    );
    cluster.apply(0, "scratch", &manifest).unwrap();
    // The first run exits; the restarted container finds what the first wrote.
    cluster.wait_for("a restart that keeps the scratch dir", secs(30), |c| {
        let (name, restarts) = the_pod(c)?;
        let logs = c.agents[0].cli(&["logs", &name])?;
        if restarts >= 1 && logs.contains("SECOND_RUN") {
            Ok(())
        } else {
            Err(format!("restarts {restarts}: {logs}"))
        }
    });
    assert_eq!(
        std::fs::read_to_string(host_dir.join("hello")).unwrap(),
        "from-the-pod\n",
        "the host path was created and shared"
    );
    // Over its limit (as if the pod wrote 2 MiB), the pod is evicted and starts again with an
    // empty scratch dir.
    let (name, _) = the_pod(&cluster).unwrap();
    let describe = cluster.agents[0].cli(&["describe", "pod", &name]).unwrap();
    let scratch = describe
        .lines()
        .find_map(|l| l.split("volume \"cache\" of container main is at ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .expect("describe says where the scratch dir is")
        .to_owned();
    std::fs::write(
        std::path::Path::new(&scratch).join("big"),
        vec![0u8; 2 << 20],
    )
    .unwrap();
    cluster.wait_for("evicted and started over", secs(30), |c| {
        let (name, _) = the_pod(c)?;
        let describe = c.agents[0].cli(&["describe", "pod", &name])?;
        let logs = c.agents[0].cli(&["logs", &name])?;
        if describe.contains("Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\"")
            && logs.contains("FIRST_RUN")
        {
            Ok(())
        } else {
            Err(format!("{describe}\n{logs}"))
        }
    });
}
