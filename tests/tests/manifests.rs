//! The manifests the README shows (`demo/manifests/`) do what the README says they do.
//! (`hello.yaml` is applied by the `shoal up` test, `web.yaml` and `web-svc.yaml` by the Docker
//! tests.)

use std::path::PathBuf;

use shoal_tests::Cluster;

fn manifest(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "demo", "manifests", name]
        .iter()
        .collect();
    path.to_str().expect("UTF-8 path").to_owned()
}

#[test]
fn the_readmes_bad_manifests_are_refused_as_it_shows() {
    let cluster = Cluster::start_with("readme-bad", 1, &["--runtime", "process"]);
    let agent = &cluster.agents[0];
    let bad = agent
        .cli(&["apply", "-f", &manifest("bad.yaml")])
        .expect_err("bad.yaml is refused");
    assert!(
        bad.contains(
            "doc 1: spec.template.spec.containers[0].ports[0].containerPort: expected integer, \
             got string \"80\" (line 14)"
        ) && bad.contains("error: nothing was applied (1 problem)"),
        "{bad}"
    );
    let huge = agent
        .cli(&["apply", "-f", &manifest("huge.yaml")])
        .expect_err("huge.yaml is refused");
    assert!(
        huge.contains(
            "the agent refused (422): nothing was applied: deployment.apps/huge: spec.replicas: \
             1000000 replicas is over the limit of 10000 replicas per workload \
             (--max-replicas-per-workload)"
        ),
        "{huge}"
    );
    let listed = agent.cli(&["get", "deploy"]).unwrap();
    assert!(
        !listed.contains("bad") && !listed.contains("huge"),
        "{listed}"
    );
}
