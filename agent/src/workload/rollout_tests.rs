//! Rollouts across a few nodes in virtual time: the real planner on every node and one
//! supervisor per node on a fake runtime ([`super::testbed`]). New pods become ready a few
//! seconds after they start (their readiness probe passes then), so the rollout has to wait
//! for readiness as it would on real machines.

use std::collections::BTreeMap;
use std::time::Duration;

use super::supervisor::Action;
use super::testbed::{Happened, Testbed};
use crate::manifest::ProbeKind;
use crate::runtime::fake::ProbeAnswer;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn deployment(replicas: u32, version: &str, spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n{spec}  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: http\n        image: demo:1\n        command: [/bin/demo]\n        env: [{{name: VERSION, value: \"{version}\"}}]\n        readinessProbe: {{httpGet: {{path: /ready, port: 8080}}, periodSeconds: 1}}\n"
    )
}

/// `nodes` nodes whose new pods get ready 3 s after they start, running v1 of `web`, settled.
fn cluster(nodes: usize, replicas: u32, spec: &str) -> Testbed {
    let mut bed = Testbed::new(nodes);
    for rig in &bed.rigs {
        rig.rt
            .set_default_probe(ProbeKind::Readiness, ProbeAnswer::PassAfter(secs(3)));
    }
    bed.apply(&deployment(replicas, "v1", spec));
    let settled = |b: &Testbed| {
        let pods = b.pods();
        pods.len() == replicas as usize && pods.iter().all(|p| p.2)
    };
    bed.run_until(secs(30), "v1 ready", settled);
    bed.run_for(secs(5), |_| {});
    assert!(settled(&bed), "{:#?}", bed.pods());
    bed
}

/// Rolls `web` to v2 and returns the lowest ready count seen and the highest number of pods.
fn roll(bed: &mut Testbed, replicas: u32, spec: &str) -> (u32, usize) {
    bed.apply(&deployment(replicas, "v2", spec));
    let (mut lowest, mut highest) = (u32::MAX, 0);
    bed.run_until(secs(120), "the rollout", |b| {
        let s = b.deployment_status("web");
        lowest = lowest.min(s.ready_replicas);
        highest = highest.max(b.pods().len());
        s.updated_replicas == replicas && s.replicas == replicas && s.ready_replicas == replicas
    });
    // Settled: exactly the replicas, all of the new template.
    bed.run_for(secs(5), |_| {});
    let pods = bed.pods();
    assert_eq!(pods.len(), replicas as usize, "{pods:#?}");
    let hashes: std::collections::BTreeSet<_> = pods.iter().map(|p| p.3.clone()).collect();
    assert_eq!(hashes.len(), 1, "{pods:#?}");
    (lowest, highest)
}

#[test]
fn a_rolling_update_keeps_replicas_minus_max_unavailable_ready() {
    let spec =
        "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}\n";
    let mut bed = cluster(3, 4, spec);
    let (lowest, highest) = roll(&mut bed, 4, spec);
    assert!(lowest >= 3, "ready dipped to {lowest}");
    assert!(highest <= 4 + 1 + 4, "{highest} pods at once");
}

#[test]
fn a_rolling_update_without_unavailability_never_dips() {
    let spec =
        "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n";
    let mut bed = cluster(3, 4, spec);
    let (lowest, _) = roll(&mut bed, 4, spec);
    assert!(lowest >= 4, "ready dipped to {lowest}");
}

#[test]
fn min_ready_seconds_delays_availability_after_readiness() {
    let spec = "  minReadySeconds: 10\n";
    let mut bed = Testbed::new(2);
    for rig in &bed.rigs {
        rig.rt
            .set_default_probe(ProbeKind::Readiness, ProbeAnswer::PassAfter(secs(3)));
    }
    bed.apply(&deployment(2, "v1", spec));
    let ready = bed.run_until(secs(30), "ready", |b| {
        b.deployment_status("web").ready_replicas == 2
    });
    assert_eq!(bed.deployment_status("web").available_replicas, 0);
    let available = bed.run_until(secs(30), "available", |b| {
        b.deployment_status("web").available_replicas == 2
    });
    // Ready at `ready`, available ten seconds after the last one became ready.
    assert!(ready >= secs(3), "{ready:?}");
    assert!(
        available >= secs(9) && available <= secs(11),
        "available {available:?} after ready"
    );
}

#[test]
fn recreate_stops_every_old_pod_before_a_new_one_starts() {
    let spec = "  strategy: {type: Recreate}\n";
    let mut bed = cluster(3, 3, spec);
    let from: Vec<usize> = bed.rigs.iter().map(|r| r.history.len()).collect();
    let old_uids: Vec<String> = bed
        .rigs
        .iter()
        .flat_map(|r| {
            r.published
                .values()
                .filter_map(|p| p.pod.metadata.uid.clone())
        })
        .collect();
    assert_eq!(old_uids.len(), 3);
    roll(&mut bed, 3, spec);
    // Across the cluster: when each old pod's stop completed, when each new pod was started.
    let mut stopped = BTreeMap::new();
    let mut started = Vec::new();
    for (rig, from) in bed.rigs.iter().zip(from) {
        for h in &rig.history[from..] {
            match h {
                Happened::StopDelivered(t, uid) => {
                    stopped.insert(uid.clone(), *t);
                }
                Happened::Issued(t, Action::StartPod { uid, .. }) if !old_uids.contains(uid) => {
                    started.push(*t)
                }
                _ => {}
            }
        }
    }
    assert_eq!(stopped.len(), 3, "{stopped:?}");
    assert!(old_uids.iter().all(|u| stopped.contains_key(u)));
    let last_stop = stopped.values().max().unwrap();
    let first_start = started.iter().min().expect("new pods started");
    assert!(last_stop <= first_start, "{stopped:?} {started:?}");
}

#[test]
fn the_replicas_of_a_dead_node_start_on_the_others() {
    let mut bed = cluster(2, 4, "");
    assert_eq!(bed.pods().iter().filter(|p| p.0 == 1).count(), 2);
    bed.kill(1);
    bed.run_until(secs(30), "4 ready on node 0", |b| {
        let pods = b.pods();
        pods.len() == 4 && pods.iter().all(|p| p.0 == 0 && p.2)
    });
}

/// The pods of `bed` not of template `hash`, and how many of them are ready.
fn others_ready(bed: &Testbed, hash: &Option<String>) -> (usize, usize) {
    let pods: Vec<_> = bed.pods().into_iter().filter(|p| p.3 != *hash).collect();
    (pods.len(), pods.iter().filter(|p| p.2).count())
}

#[test]
fn a_rolling_update_does_not_wait_for_old_pods_to_finish_stopping() {
    // The default strategy (25% / 25%: a surge of 1, none unavailable for 3 replicas) over
    // containers that ignore SIGTERM, so each old pod takes its whole 30 s grace period to
    // stop. Terminating pods count neither toward the surge nor toward availability (as in
    // Kubernetes), so the rollout takes about (replicas / maxSurge) x start-to-ready (3 s
    // here), not replicas x grace.
    let mut bed = cluster(3, 3, "");
    for rig in &mut bed.rigs {
        rig.ignore_sigterm = true;
    }
    let old = bed.pods()[0].3.clone();
    bed.apply(&deployment(3, "v2", ""));
    let mut lowest_ready = u32::MAX;
    let took = bed.run_until(secs(300), "3 new pods ready", |b| {
        lowest_ready = lowest_ready.min(b.deployment_status("web").ready_replicas);
        others_ready(b, &old).1 == 3
    });
    assert!(
        took <= secs(20),
        "the rollout took {took:?}: it waited for old pods to stop"
    );
    assert!(lowest_ready >= 3, "ready dipped to {lowest_ready}");
    // The old pods finish stopping within their grace period, and nothing else is left.
    bed.run_until(secs(31), "only the new pods", |b| b.pods().len() == 3);
    assert_eq!(others_ready(&bed, &old), (3, 3), "{:#?}", bed.pods());
}

#[test]
fn deleting_a_deployment_stops_all_its_pods_at_once() {
    // Two pods per node, each taking its whole 30 s grace period to stop: they stop in
    // parallel, so the deployment is gone after one grace period, not six.
    let mut bed = cluster(3, 6, "");
    for rig in &mut bed.rigs {
        rig.ignore_sigterm = true;
    }
    assert!(bed.rigs.iter().all(|r| r.published.len() == 2));
    bed.delete("deployment", "web");
    let took = bed.run_until(secs(400), "every pod gone", |b| b.pods().is_empty());
    assert!(
        took >= secs(30) && took <= secs(32),
        "deleting 6 pods took {took:?}, not one 30 s grace period"
    );
}
