//! Scenarios of the whole cluster, as data.

use std::time::Duration;

use super::scenario::{Cond, Op, Scenario};
use super::standard::deployment_yaml;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_deployment_converges_to_its_replicas() {
    let scenario = Scenario::lan(
        5,
        1,
        vec![
            Op::Apply {
                node: 0,
                yaml: deployment_yaml("web", 7),
            },
            Op::Expect(Cond::Settled, secs(10)),
        ],
    );
    if let Err(e) = scenario.run() {
        panic!("{e}");
    }
}
