//! The `shoal` binary's command line: usage errors are clear, `keygen` and `sim` work. (Also
//! makes cargo build the binary for the workspace's multi-process tests in `tests/`.)

use std::process::Command;

fn shoal(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env_remove("SHOAL_API")
        .output()
        .expect("running shoal");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keygen_prints_a_parseable_key_each_time_different() {
    let (ok, a, _) = shoal(&["keygen"]);
    assert!(ok);
    let (_, b, _) = shoal(&["keygen"]);
    assert_ne!(a, b);
    assert!(a.trim().starts_with("shoal-key-v1:"), "{a}");
}

#[test]
fn sim_reports_json_with_the_documented_fields() {
    let (ok, out, err) = shoal(&[
        "sim",
        "--nodes",
        "20",
        "--seconds",
        "20",
        "--kill",
        "1",
        "--seed",
        "5",
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    for field in [
        "nodes",
        "converge_ms",
        "detect_ms",
        "false_positives",
        "bytes_per_node_per_s",
        "msgs_per_node_per_s",
        "wall_ms",
    ] {
        assert!(report.get(field).is_some(), "missing {field}: {report}");
    }
    for p in ["p50", "p99", "max"] {
        assert!(report["converge_ms"][p].is_number());
        assert!(report["detect_ms"][p].is_number());
    }
    assert_eq!(report["nodes"], 20);
    assert_eq!(report["detect_ms"]["count"], 1);
}

#[test]
fn sim_rejects_bad_arguments_by_name() {
    let (ok, _, err) = shoal(&["sim", "--nodes", "10", "--loss", "1.5"]);
    assert!(!ok);
    assert!(err.contains("--loss"), "{err}");
    let (ok, _, err) = shoal(&["sim", "--nodes", "3", "--kill", "3"]);
    assert!(!ok);
    assert!(err.contains("--kill"), "{err}");
    let (ok, _, err) = shoal(&["sim", "--latency-ms", "9-1"]);
    assert!(!ok);
    assert!(err.contains("--latency-ms"), "{err}");
}

#[test]
fn cli_without_an_agent_says_how_to_reach_one() {
    let (ok, _, err) = shoal(&["get", "nodes", "--api", "127.0.0.1:9"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the shoal agent"), "{err}");
    let (ok, _, err) = shoal(&["get", "pods-of-the-future"]);
    assert!(!ok);
    assert!(
        err.contains("doesn't have a resource type \"pods-of-the-future\""),
        "{err}"
    );
}

#[test]
fn agent_refuses_a_public_api_without_a_token() {
    let dir = std::env::temp_dir().join(format!("shoal-cli-token-{}", std::process::id()));
    let (ok, _, err) = shoal(&[
        "agent",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "0.0.0.0:0",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(err.contains("--api-token-file"), "{err}");
}

#[test]
fn joining_without_the_cluster_key_is_refused_with_advice() {
    let dir = std::env::temp_dir().join(format!("shoal-cli-nokey-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "agent",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--join",
            "127.0.0.1:9",
        ])
        .env_remove("SHOAL_CLUSTER_KEY")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("SHOAL_CLUSTER_KEY"), "{err}");
}
