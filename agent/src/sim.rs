//! `shoal sim`: a capacity-planning simulator running the real protocol; with `--workloads`,
//! the whole cluster (gossip, planner, supervisors on fake runtimes) in virtual time.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use shoal_gossip::sim::{Percentiles, Plan, Report, Sim, SimConfig};

/// Options of `shoal sim`.
#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Simulated seconds to run.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Probability that a message is lost (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Nodes to crash during the run (spread over its first 60%).
    #[arg(long, default_value_t = 0)]
    kill: usize,
    /// Nodes that handle every message late (see --slow-delay).
    #[arg(long, default_value_t = 0)]
    slow: usize,
    /// How late slow nodes handle messages, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    slow_delay: u64,
    /// Split the cluster into two halves at this simulated second.
    #[arg(long, requires = "heal_at")]
    partition_at: Option<f64>,
    /// Heal the partition at this simulated second.
    #[arg(long, requires = "partition_at")]
    heal_at: Option<f64>,
    /// One-way latency range in milliseconds, MIN-MAX (uniform).
    #[arg(long, default_value = "1-10")]
    latency_ms: String,
    /// Objects written per second, each by a random live node.
    #[arg(long, default_value_t = 1.0)]
    writes_per_s: f64,
    /// Size of each written value in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Each node's wall clock is skewed by up to this many milliseconds (HLC input). Nodes
    /// whose clocks disagree with most members' by more than 500 ms refuse writes: the report
    /// counts them as `writes_refused`.
    #[arg(long, default_value_t = 0)]
    clock_skew_ms: u64,
    /// Protocol period up to 100 nodes: how often each node probes one member, in
    /// milliseconds; larger clusters probe faster in proportion to 2 / log10(nodes)
    /// (default: the agent's, 400).
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Direct probe timeout in milliseconds (default: the agent's, 200).
    #[arg(long)]
    probe_timeout_ms: Option<u64>,
    /// Minimum suspicion timeout in protocol periods per log10(nodes) (default: the agent's).
    #[arg(long)]
    suspicion_mult: Option<f64>,
    /// The suspicion timeout starts this many times above its minimum (default: the agent's).
    #[arg(long)]
    suspicion_max_mult: Option<u32>,
    /// Seed of the run; the same seed gives the same run. Random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Simulate the workloads too: deployments placed by the real planner and run by one
    /// supervisor per node on an in-memory runtime; kills after the initial convergence.
    #[arg(long)]
    workloads: bool,
    /// With --workloads: Deployments to apply.
    #[arg(long, default_value_t = 100, requires = "workloads")]
    deployments: usize,
    /// With --workloads: replicas in total, spread evenly over the deployments.
    #[arg(long, default_value_t = 10_000, requires = "workloads")]
    replicas: u64,
    /// With --workloads: how long a pod takes from its start to ready, in milliseconds.
    #[arg(long, default_value_t = 1000, requires = "workloads")]
    start_to_ready_ms: u64,
    /// With --workloads: time between kills, in milliseconds.
    #[arg(long, default_value_t = 4000, requires = "workloads")]
    kill_every_ms: u64,
    /// With --workloads: how long a pod record takes to reach the other nodes, in
    /// milliseconds (records travel on a shared board, see ARCHITECTURE.md).
    #[arg(long, default_value_t = 50, requires = "workloads")]
    record_delay_ms: u64,
    /// With --workloads: a node plans at most this often, in milliseconds.
    #[arg(long, default_value_t = 100, requires = "workloads")]
    plan_interval_ms: u64,
    /// With --workloads: a node plans this long after the first change it has not planned
    /// from (a burst of changes is planned from at once), in milliseconds.
    #[arg(long, default_value_t = 0, requires = "workloads")]
    plan_delay_ms: u64,
}

fn parse_latency(s: &str) -> anyhow::Result<(Duration, Duration)> {
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let min: f64 = min
        .parse()
        .with_context(|| format!("--latency-ms: bad minimum {min:?}"))?;
    let max: f64 = max
        .parse()
        .with_context(|| format!("--latency-ms: bad maximum {max:?}"))?;
    if !(min >= 0.0 && max >= min) {
        bail!("--latency-ms: need 0 <= MIN <= MAX, got {s:?}");
    }
    Ok((
        Duration::from_secs_f64(min / 1000.0),
        Duration::from_secs_f64(max / 1000.0),
    ))
}

pub(crate) fn run(args: SimArgs) -> anyhow::Result<()> {
    if args.nodes < 1 {
        bail!("--nodes must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.loss) {
        bail!("--loss must be between 0.0 and 1.0, got {}", args.loss);
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be positive, got {}", args.seconds);
    }
    if args.kill + args.slow >= args.nodes {
        bail!(
            "--kill ({}) + --slow ({}) must leave at least one healthy node of --nodes ({})",
            args.kill,
            args.slow,
            args.nodes
        );
    }
    if args.writes_per_s < 0.0 || !args.writes_per_s.is_finite() {
        bail!("--writes-per-s must be zero or positive");
    }
    let partition = match (args.partition_at, args.heal_at) {
        (Some(p), Some(h)) => {
            if !(0.0 <= p && p < h && h <= args.seconds) {
                bail!("need 0 <= --partition-at < --heal-at <= --seconds");
            }
            Some((Duration::from_secs_f64(p), Duration::from_secs_f64(h)))
        }
        _ => None,
    };
    let (latency_min, latency_max) = parse_latency(&args.latency_ms)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut config = SimConfig::lan(args.nodes, seed);
    config.loss = args.loss;
    config.latency_min = latency_min;
    config.latency_max = latency_max;
    config.slow_delay = Duration::from_millis(args.slow_delay);
    config.clock_skew = Duration::from_millis(args.clock_skew_ms);
    if let Some(ms) = args.probe_interval_ms {
        if ms == 0 {
            bail!("--probe-interval-ms must be positive");
        }
        config.gossip.probe_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.probe_timeout_ms {
        if ms == 0 {
            bail!("--probe-timeout-ms must be positive");
        }
        config.gossip.probe_timeout = Duration::from_millis(ms);
    }
    if let Some(m) = args.suspicion_mult {
        if !(m > 0.0 && m.is_finite()) {
            bail!("--suspicion-mult must be positive");
        }
        config.gossip.suspicion_mult = m;
    }
    if let Some(m) = args.suspicion_max_mult {
        if m == 0 {
            bail!("--suspicion-max-mult must be positive");
        }
        config.gossip.suspicion_max_mult = m;
    }
    if args.workloads {
        return run_workloads(&args, config, partition);
    }
    let plan = Plan {
        seconds: Duration::from_secs_f64(args.seconds),
        writes_per_s: args.writes_per_s,
        value_bytes: args.value_bytes,
        kill: args.kill,
        slow: args.slow,
        partition,
    };
    let started = std::time::Instant::now();
    let mut report = Sim::run_standard(config, &plan);
    report.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn run_workloads(
    args: &SimArgs,
    network: SimConfig,
    partition: Option<(Duration, Duration)>,
) -> anyhow::Result<()> {
    use crate::workload::sim::{ClusterConfig, standard};
    if args.slow > 0 || args.writes_per_s != 1.0 || args.clock_skew_ms > 0 {
        bail!("--slow, --writes-per-s and --clock-skew-ms do not apply with --workloads");
    }
    if args.deployments == 0 || args.replicas < args.deployments as u64 {
        bail!("--workloads needs at least one deployment and one replica per deployment");
    }
    if args.plan_interval_ms == 0 {
        bail!("--plan-interval-ms must be positive");
    }
    let mut cluster = ClusterConfig::lan(args.nodes, network.seed);
    cluster.network = network;
    cluster.start_to_ready = Duration::from_millis(args.start_to_ready_ms);
    cluster.record_delay = Duration::from_millis(args.record_delay_ms);
    cluster.plan_interval = Duration::from_millis(args.plan_interval_ms);
    cluster.plan_delay = Duration::from_millis(args.plan_delay_ms);
    let run = standard::Standard {
        cluster,
        deployments: args.deployments,
        replicas: args.replicas,
        kill: args.kill,
        kill_every: Duration::from_millis(args.kill_every_ms),
        converge_timeout: Duration::from_secs(120),
        settle_timeout: Duration::from_secs(60),
        partition,
    };
    let started = std::time::Instant::now();
    let mut report = standard::run(&run).map_err(|e| anyhow::anyhow!(e))?;
    report.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_workloads(&report);
    }
    Ok(())
}

fn print_workloads(r: &crate::workload::sim::standard::WorkloadReport) {
    println!(
        "shoal sim --workloads: {} nodes, {} deployments, {} replicas, {:.1} s simulated, seed {}",
        r.nodes, r.deployments, r.replicas_desired, r.seconds, r.seed
    );
    match r.converge_ms {
        Some(ms) => println!("initial convergence: every replica ready after {ms:.0} ms"),
        None => println!("initial convergence: not reached"),
    }
    println!("{} nodes killed (ms of simulated time):", r.kills);
    row("death -> its replicas ready elsewhere", &r.reschedule_ms);
    if r.not_rescheduled > 0 {
        println!(
            "  kills whose replicas never all came back: {}",
            r.not_rescheduled
        );
    }
    println!(
        "replicas: {} lost, {} moved, {} starts, {} beyond the minimum ({} of them before the initial convergence)",
        r.replicas_lost, r.replicas_moved, r.starts, r.extra_starts, r.extra_starts_initial
    );
    println!(
        "ready replicas after convergence: min {}, max {} (desired {}); settled at the end: {}",
        r.replicas_min, r.replicas_max, r.replicas_desired, r.settled
    );
    println!(
        "false deaths: {}; traffic: {:.1} msgs/s and {:.0} bytes/s sent per node",
        r.false_deaths, r.msgs_per_node_per_s, r.bytes_per_node_per_s
    );
    println!(
        "plans: {} computed ({} member views, {} board versions), {} shared, {} handed to supervisors ({:.0} ms of planning); {} pod records written",
        r.plans_computed,
        r.plan_member_views,
        r.plan_board_versions,
        r.plans_shared,
        r.node_plans,
        r.plan_wall_ms,
        r.record_writes
    );
    println!("wall-clock time: {:.0} ms", r.wall_ms);
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn row(name: &str, p: &Percentiles) {
    if p.count == 0 {
        println!("  {name:<34} -");
    } else {
        println!(
            "  {name:<34} p50 {:>8.1}  p99 {:>8.1}  max {:>8.1}  (n={})",
            p.p50, p.p99, p.max, p.count
        );
    }
}

fn print_table(r: &Report) {
    println!(
        "shoal sim: {} nodes, {:.0} s simulated, loss {:.1}%, seed {}",
        r.nodes,
        r.seconds,
        r.loss * 100.0,
        r.seed
    );
    println!("convergence of {} writes (ms of simulated time):", r.writes);
    if r.writes_refused > 0 {
        println!(
            "  refused by their node, its clock off from most members': {}",
            r.writes_refused
        );
    }
    row("delivery to a live node", &r.converge_ms);
    row("write reaches 50% of live nodes", &r.converge_to_50_ms);
    row("write reaches 99% of live nodes", &r.converge_to_99_ms);
    row("write reaches 100% of live nodes", &r.converge_to_all_ms);
    if r.undelivered > 0 {
        println!("  undelivered (write, node) pairs: {}", r.undelivered);
    }
    println!("failure detection of {} crashes:", r.kills);
    row("crash -> dead on every live node", &r.detect_ms);
    if r.undetected > 0 {
        println!(
            "  crashes not detected by every live node: {}",
            r.undetected
        );
    }
    println!(
        "false positives: {} healthy nodes marked dead; {} suspicions of healthy nodes (refuted)",
        r.false_positives, r.healthy_suspicions
    );
    if r.slow_nodes > 0 {
        println!(
            "slow nodes: {}: suspected {} times, marked dead {} times, raised {} suspicions themselves",
            r.slow_nodes, r.slow_suspicions, r.slow_marked_dead, r.suspicions_raised_by_slow
        );
    }
    if r.partition_dead_marks > 0 || r.heal_ms.is_some() {
        println!(
            "partition: {} dead marks across the split; healed (all alive everywhere) after {}",
            r.partition_dead_marks,
            r.heal_ms
                .map(|h| format!("{h:.0} ms"))
                .unwrap_or_else(|| "never (within the run)".into())
        );
    }
    println!(
        "traffic: {:.1} msgs/s and {:.0} bytes/s sent per node; {} messages dropped",
        r.msgs_per_node_per_s, r.bytes_per_node_per_s, r.dropped_msgs
    );
    println!("wall-clock time: {:.0} ms", r.wall_ms);
}
