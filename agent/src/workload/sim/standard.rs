//! The run `shoal sim --workloads` makes, and what it reports.
//!
//! Deployments are applied at the start (one manifest, on one node), the run waits for the
//! initial convergence (every replica serving once, nothing else running), then kills nodes
//! spread over the rest of the run, and waits for the cluster to settle again.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use shoal_gossip::Instant;
use shoal_gossip::sim::Percentiles;

use super::scenario::Cond;
use super::{ClusterConfig, ClusterSim};

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct Standard {
    pub(crate) cluster: ClusterConfig,
    /// Deployments, `d0` ... in the default namespace.
    pub(crate) deployments: usize,
    /// Replicas in total, spread evenly over the deployments.
    pub(crate) replicas: u64,
    /// Nodes to kill after the initial convergence.
    pub(crate) kill: usize,
    /// Time between kills.
    pub(crate) kill_every: Duration,
    /// The initial convergence must happen within this.
    pub(crate) converge_timeout: Duration,
    /// After the last kill, how long the cluster may take to settle.
    pub(crate) settle_timeout: Duration,
    /// A partition into two halves at the first time, healed at the second (from the start).
    pub(crate) partition: Option<(Duration, Duration)>,
}

/// What a run measured. Times are milliseconds of simulated time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct WorkloadReport {
    pub(crate) nodes: usize,
    pub(crate) deployments: usize,
    pub(crate) replicas_desired: u64,
    pub(crate) seed: u64,
    /// Simulated seconds.
    pub(crate) seconds: f64,
    /// From the apply until every replica served once, with nothing else running.
    pub(crate) converge_ms: Option<f64>,
    pub(crate) kills: usize,
    /// Per killed node: from its death until every replica it ran serves elsewhere.
    pub(crate) reschedule_ms: Percentiles,
    /// Killed nodes whose replicas did not all serve again by the end.
    pub(crate) not_rescheduled: usize,
    /// Replicas the killed nodes ran.
    pub(crate) replicas_lost: u64,
    /// Starts of replicas that had been started before (elsewhere, or again).
    pub(crate) replicas_moved: u64,
    /// Pod starts in all.
    pub(crate) starts: u64,
    /// Starts beyond the minimum (every replica once, plus once per replica lost).
    pub(crate) extra_starts: i64,
    /// Of those, the starts beyond the minimum until the initial convergence.
    pub(crate) extra_starts_initial: i64,
    /// Fewest and most serving (ready, not terminating) pods at once after the initial
    /// convergence.
    pub(crate) replicas_min: u64,
    pub(crate) replicas_max: u64,
    /// Whether the cluster settled again (exactly the desired replicas) by the end.
    pub(crate) settled: bool,
    /// Healthy nodes some node declared dead.
    pub(crate) false_deaths: usize,
    pub(crate) msgs_per_node_per_s: f64,
    pub(crate) bytes_per_node_per_s: f64,
    /// Plans computed, and plans nodes got from another node's identical inputs.
    pub(crate) plans_computed: u64,
    pub(crate) plans_shared: u64,
    /// Distinct member views and board versions among the plans computed.
    pub(crate) plan_member_views: usize,
    pub(crate) plan_board_versions: usize,
    /// Plans handed to supervisors.
    pub(crate) node_plans: u64,
    /// Pod records published.
    pub(crate) record_writes: u64,
    /// Wall-clock time spent computing plans (not part of the deterministic result).
    pub(crate) plan_wall_ms: f64,
    /// Wall-clock time of the whole run (filled in by the caller).
    pub(crate) wall_ms: f64,
}

/// The YAML of deployment `name` with `replicas` replicas.
pub(crate) fn deployment_yaml(name: &str, replicas: u64) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  \
         replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    \
         metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: \
         app\n        image: sim\n        command: [/bin/app]\n"
    )
}

/// Runs it.
pub(crate) fn run(standard: &Standard) -> Result<WorkloadReport, String> {
    run_sim(standard).map(|(report, _)| report)
}

/// Runs it; returns the report and the simulation at its end.
pub(super) fn run_sim(standard: &Standard) -> Result<(WorkloadReport, ClusterSim), String> {
    let seed = standard.cluster.network.seed;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0fc1_u64);
    let mut sim = ClusterSim::new(standard.cluster.clone());
    let n = sim.len();
    // One manifest of every Deployment, applied on one node (one write, as `shoal apply -f`).
    let d = standard.deployments.max(1) as u64;
    let manifest: Vec<String> = (0..d)
        .map(|k| {
            let replicas = standard.replicas / d + u64::from(k < standard.replicas % d);
            deployment_yaml(&format!("d{k}"), replicas)
        })
        .collect();
    sim.apply(0, &manifest.join("---\n"))?;
    let mut partition = standard.partition.map(|(p, h)| {
        (
            Instant(p.as_micros() as u64),
            Instant(h.as_micros() as u64),
            false,
            false,
        )
    });
    // Initial convergence.
    let start = sim.now();
    let limit = start + standard.converge_timeout;
    let mut converge_ms = None;
    while sim.now() < limit {
        step_partition(&mut sim, &mut partition);
        if converged(&sim, standard.replicas) {
            converge_ms = Some(ms(sim.now().saturating_since(start)));
            break;
        }
        sim.run_for(Duration::from_millis(50));
    }
    sim.truth.tracking = true;
    sim.truth.track_now();
    let initial_extra = sim.truth.starts as i64 - sim.truth.minimum_starts() as i64;
    // Kills, spread over the rest of the run.
    let mut victims: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        victims.swap(i, rng.random_range(0..=i));
    }
    victims.truncate(standard.kill.min(n.saturating_sub(1)));
    for v in victims {
        sim.kill(v);
        let until = sim.now() + standard.kill_every;
        while sim.now() < until {
            step_partition(&mut sim, &mut partition);
            sim.run_for(Duration::from_millis(100).min(until.saturating_since(sim.now())));
        }
    }
    // Settle.
    let limit = sim.now() + standard.settle_timeout;
    let mut settled = false;
    while sim.now() < limit {
        step_partition(&mut sim, &mut partition);
        let rescheduled = sim.truth.kills.iter().all(|k| k.done.is_some());
        if rescheduled && partition.is_none_or(|p| p.3) && Cond::Settled.check(&sim).is_ok() {
            settled = true;
            break;
        }
        sim.run_for(Duration::from_millis(100));
    }
    // A little more, to see that nothing moves once settled.
    sim.run_for(Duration::from_secs(2));
    settled &= Cond::Settled.check(&sim).is_ok();
    let mut report = report(&sim, standard, converge_ms, settled);
    report.extra_starts_initial = initial_extra;
    Ok((report, sim))
}

/// Splits or heals the network when its time has come.
fn step_partition(sim: &mut ClusterSim, partition: &mut Option<(Instant, Instant, bool, bool)>) {
    let Some((at, heal, split, healed)) = partition.as_mut() else {
        return;
    };
    if !*split && sim.now() >= *at {
        let half: Vec<usize> = (0..sim.len()).filter(|i| i % 2 == 0).collect();
        sim.partition(&[half]);
        *split = true;
    }
    if *split && !*healed && sim.now() >= *heal {
        sim.heal();
        *healed = true;
    }
}

/// Every replica serves once and nothing else runs.
fn converged(sim: &ClusterSim, desired: u64) -> bool {
    sim.truth.serving_pods == desired && sim.truth.pods_total == desired
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(
    sim: &ClusterSim,
    standard: &Standard,
    converge_ms: Option<f64>,
    settled: bool,
) -> WorkloadReport {
    let truth = &sim.truth;
    let mut reschedule: Vec<f64> = truth
        .kills
        .iter()
        .filter_map(|k| k.done.map(|d| ms(d.saturating_since(k.at))))
        .collect();
    let lost: u64 = truth.kills.iter().map(|k| k.lost as u64).sum();
    let started_once = truth.minimum_starts() - lost;
    let seconds = sim.now().as_micros() as f64 / 1e6;
    let (msgs, bytes) = sim.gossip.traffic();
    let per_node_s = (sim.len() as f64 * seconds).max(1e-9);
    WorkloadReport {
        nodes: sim.len(),
        deployments: standard.deployments,
        replicas_desired: standard.replicas,
        seed: standard.cluster.network.seed,
        seconds,
        converge_ms,
        kills: truth.kills.len(),
        reschedule_ms: Percentiles::of(&mut reschedule),
        not_rescheduled: truth.kills.iter().filter(|k| k.done.is_none()).count(),
        replicas_lost: lost,
        replicas_moved: truth.starts - started_once,
        starts: truth.starts,
        extra_starts: truth.starts as i64 - truth.minimum_starts() as i64,
        extra_starts_initial: 0,
        replicas_min: truth.serving_min.unwrap_or(0),
        replicas_max: truth.serving_max.unwrap_or(0),
        settled,
        false_deaths: sim.gossip.false_positives(),
        msgs_per_node_per_s: msgs as f64 / per_node_s,
        bytes_per_node_per_s: bytes as f64 / per_node_s,
        plans_computed: sim.plans.computed,
        plans_shared: sim.plans.shared,
        plan_member_views: sim.plans.member_views.len(),
        plan_board_versions: sim.plans.board_versions.len(),
        node_plans: sim.node_plans,
        record_writes: sim.record_writes,
        plan_wall_ms: sim.plans.seconds * 1000.0,
        wall_ms: 0.0,
    }
}
