//! The Docker Compose demo end to end: `demo/tour.sh` against the real engine and Compose,
//! with the shoal binary under test in the node image. Skipped with a printed reason when no
//! engine or Compose is there, unless `SHOAL_REQUIRE_DOCKER=1` (CI sets it).

use std::net::TcpListener;
use std::process::Command;

use shoal_tests::shoal_bin;

fn compose_ready() -> bool {
    let docker = shoal_tests::docker_engine_answers();
    let compose = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if docker && compose {
        return true;
    }
    if shoal_agent::runtime::testing::docker_required() {
        panic!("the Compose demo needs a Docker engine and Compose, and SHOAL_REQUIRE_DOCKER=1");
    }
    eprintln!(
        "compose demo: skipped: no Docker engine or Compose (SHOAL_REQUIRE_DOCKER=1 fails instead)"
    );
    false
}

#[test]
fn the_compose_demo_tour_runs_end_to_end() {
    if !compose_ready() {
        return;
    }
    let tour = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/tour.sh");
    // A port and a network of this run's own.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let id = std::process::id();
    let out = Command::new("bash")
        .arg(&tour)
        .env("SHOAL_BIN", shoal_bin())
        .env("SHOAL_DEMO_PROJECT", format!("shoaltest{id}"))
        .env("SHOAL_DEMO_PORT", port.to_string())
        .env("SHOAL_DEMO_SUBNET", format!("10.232.{}.0/24", id % 250))
        .env("SHOAL_DEMO_DOWN", "1")
        .env_remove("SHOAL_CLUSTER_KEY")
        .output()
        .expect("running demo/tour.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let timings = stdout.split("== Timings").nth(1).unwrap_or_default();
    eprintln!("compose tour timings:{timings}");
    assert!(timings.contains("node container killed"), "{stdout}");
}
