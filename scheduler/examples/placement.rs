//! Placement benchmark: time to place a synthetic cluster from scratch, the
//! load balance reached (and how many nodes the bound could not hold, which
//! happens only where replicas had nowhere under it to go), and how many
//! replicas move when a node is added or removed, measured the way the
//! cluster lives it: the first placement is fed back as what nodes run (and
//! stateful replicas' volumes are recorded where they landed), then the
//! membership changes and placement reruns.
//!
//! `cargo run --release -p shoal-scheduler --example placement -- --nodes 1000 --replicas 100000 [--overflow 50000] [--json]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Parser;
use shoal_scheduler::{
    ClusterView, Node, NodeId, Options, Placement, Replicas, Resources, Workload, WorkloadId,
    place_with,
};

#[derive(Parser)]
#[command(about = "Benchmark shoal's leader-free placement")]
struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Replicas to place, over many workloads of mixed sizes.
    #[arg(long, default_value_t = 100_000)]
    replicas: u32,
    /// Load bound slack ε in thousandths.
    #[arg(long, default_value_t = 100)]
    epsilon_permille: u32,
    /// Timed runs of each placement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Print the reasons of up to this many unschedulable replicas.
    #[arg(long, default_value_t = 0)]
    explain: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Add a workload of this many more replicas that select `zone=a` (a
    /// third of the nodes), unspread: more than those nodes' share of the
    /// bound, so that they overflow and displace other replicas.
    #[arg(long, default_value_t = 0)]
    overflow: u32,
}

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

fn node(i: u32) -> Node {
    let mut n = Node::new(format!("node-{i:05}"), Resources::new(64_000, 256 * GI))
        .with_label("zone", ["a", "b", "c"][i as usize % 3]);
    if i % 4 == 0 {
        n = n.with_label("disk", "ssd");
    }
    n
}

/// Workloads of mixed sizes, requests and kinds adding up to `replicas`:
/// every 7th is a stateful set, every 10th selects zone a, every 13th
/// selects ssd nodes.
fn workloads(replicas: u32) -> anyhow::Result<Vec<Workload>> {
    const SIZES: [u32; 10] = [1, 2, 3, 5, 8, 10, 20, 50, 100, 200];
    const CPU: [u64; 4] = [50, 100, 250, 500];
    const MEM: [u64; 4] = [64 * MI, 128 * MI, 256 * MI, 512 * MI];
    let mut out = Vec::new();
    let mut left = replicas;
    let mut i = 0usize;
    while left > 0 {
        let size = SIZES[i % SIZES.len()].min(left);
        left -= size;
        let requests = Resources::new(CPU[i % CPU.len()], MEM[(i / 3) % MEM.len()]);
        let mut w = if i % 7 == 0 {
            let id = WorkloadId::new("statefulset", format!("ns-{}", i % 50), format!("db-{i}"))?;
            Workload::stateful(id, (0..size).map(|o| (o, None)).collect(), requests)
        } else {
            let id = WorkloadId::new("deployment", format!("ns-{}", i % 50), format!("app-{i}"))?;
            Workload::deployment(id, size, requests)
        };
        if i % 10 == 3 {
            w = w.with_selector("zone", "a");
        } else if i % 13 == 5 {
            w = w.with_selector("disk", "ssd");
        }
        out.push(w);
        i += 1;
    }
    Ok(out)
}

/// Records each stateful replica's volume on the node it was placed on, as
/// the runtime would once it started there.
fn record_volumes(workloads: &mut [Workload], placement: &Placement) {
    for w in workloads {
        if let Replicas::Stateful(volumes) = &mut w.replicas {
            for (ordinal, volume) in volumes.iter_mut() {
                *volume = placement.node_of(&w.id.replica(*ordinal)).cloned();
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `f` `runs` times; returns its result and the median duration (the
/// machine is shared, so a single run says little).
fn timed(runs: u32, f: impl Fn() -> Placement) -> (Placement, Duration) {
    let mut times = Vec::new();
    let mut result = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        result = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (result.expect("ran at least once"), times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.nodes >= 2, "need at least 2 nodes");
    let options = Options {
        epsilon_permille: args.epsilon_permille,
    };
    let view = ClusterView::new((0..args.nodes).map(node))?;
    let mut workloads = workloads(args.replicas)?;
    if args.overflow > 0 {
        let id = WorkloadId::new("deployment", "overflow", "zone-a")?;
        workloads.push(
            Workload::deployment(id, args.overflow, Resources::new(10, MI))
                .with_selector("zone", "a")
                .with_spread(false),
        );
    }

    // From scratch: nothing runs yet.
    let (scratch, scratch_t) = timed(args.runs, || place_with(&view, &workloads, options));
    let place_ms = ms(scratch_t);
    scratch.check(&view, &workloads)?;
    let loads = scratch.loads();
    let placed: u32 = loads.values().sum();
    let max_load = loads.values().copied().max().unwrap_or(0);
    let mean = f64::from(placed) / f64::from(args.nodes);
    let max_over_mean = f64::from(max_load) / mean;
    let over_bound = loads.values().filter(|&&l| l > scratch.load_bound).count();

    // Steady state: the placement is running and volumes exist.
    record_volumes(&mut workloads, &scratch);
    let mut running = view.clone();
    running.apply(&scratch);
    let (steady, steady_t) = timed(args.runs, || place_with(&running, &workloads, options));
    steady.check(&running, &workloads)?;
    let moved_steady = steady.moved_since(&scratch);

    // One node joins.
    let mut added = running.clone();
    added.insert(node(args.nodes));
    let (after_add, add_t) = timed(args.runs, || place_with(&added, &workloads, options));
    after_add.check(&added, &workloads)?;
    let moved_on_add = after_add.moved_since(&steady);
    let new_id = node(args.nodes).id;
    let on_new_node = after_add.loads().get(&new_id).copied().unwrap_or(0);
    let ideal_on_add = f64::from(placed) / f64::from(args.nodes + 1);

    // One node leaves: the middle one by id.
    let gone = NodeId::new(format!("node-{:05}", args.nodes / 2));
    let held_by_removed = steady.loads().get(&gone).copied().unwrap_or(0);
    let mut removed = running.clone();
    removed.remove(&gone);
    let (after_remove, remove_t) = timed(args.runs, || place_with(&removed, &workloads, options));
    after_remove.check(&removed, &workloads)?;
    let moved_on_remove = after_remove.moved_since(&steady);
    let unschedulable_after_remove = after_remove.unschedulable().count();

    let unschedulable = scratch.unschedulable().count();
    for (replica, reason) in scratch.unschedulable().take(args.explain) {
        eprintln!("{replica}: {reason}");
    }
    let stateful = workloads
        .iter()
        .filter(|w| w.replicas.is_stateful())
        .count();
    if args.json {
        let out = serde_json::json!({
            "nodes": args.nodes,
            "replicas": args.replicas,
            "overflow": args.overflow,
            "workloads": workloads.len(),
            "stateful_workloads": stateful,
            "epsilon_permille": args.epsilon_permille,
            "place_ms": place_ms,
            "place_steady_ms": ms(steady_t),
            "place_add_ms": ms(add_t),
            "place_remove_ms": ms(remove_t),
            "load_bound": scratch.load_bound,
            "max_load": max_load,
            "mean_load": mean,
            "max_over_mean": max_over_mean,
            "nodes_over_bound": over_bound,
            "unschedulable": unschedulable,
            "moved_steady": moved_steady,
            "moved_on_add": moved_on_add,
            "ideal_on_add": ideal_on_add,
            "on_new_node": on_new_node,
            "moved_on_remove": moved_on_remove,
            "held_by_removed": held_by_removed,
            "unschedulable_after_remove": unschedulable_after_remove,
        });
        println!("{out}");
    } else {
        let counts: BTreeMap<&str, usize> = [
            ("workloads", workloads.len()),
            ("stateful", stateful),
            ("unschedulable", unschedulable),
        ]
        .into_iter()
        .collect();
        println!(
            "{} replicas over {} nodes, ε = {}‰ ({counts:?})",
            args.replicas + args.overflow,
            args.nodes,
            args.epsilon_permille
        );
        println!(
            "place from scratch:   {place_ms:.1} ms (median of {} runs, as all times)",
            args.runs.max(1)
        );
        println!(
            "place, steady state: {:.1} ms, {moved_steady} moved",
            ms(steady_t)
        );
        println!(
            "load: bound {}, max {max_load}, mean {mean:.2}, max/mean {max_over_mean:.3}, \
             {over_bound} node(s) over the bound",
            scratch.load_bound
        );
        println!(
            "add one node:    {moved_on_add} moved ({on_new_node} onto it), ideal {ideal_on_add:.1}, ratio {:.3} ({:.1} ms)",
            moved_on_add as f64 / ideal_on_add,
            ms(add_t)
        );
        println!(
            "remove one node: {moved_on_remove} moved, it held {held_by_removed}, ratio {:.3}, \
             {unschedulable_after_remove} unschedulable ({:.1} ms)",
            moved_on_remove as f64 / f64::from(held_by_removed.max(1)),
            ms(remove_t)
        );
    }
    Ok(())
}
