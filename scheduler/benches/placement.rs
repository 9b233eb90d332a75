//! Regression benchmarks: placement of 100 replicas per node from scratch,
//! and the recomputation every member does on a state change (the previous
//! placement running, one node added).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shoal_scheduler::{ClusterView, Node, Resources, Workload, WorkloadId, place};

fn node(i: usize) -> Node {
    Node::new(format!("node-{i:05}"), Resources::new(64_000, 256 << 30))
        .with_label("zone", ["a", "b", "c"][i % 3])
}

fn workloads(replicas: u32) -> Vec<Workload> {
    const SIZES: [u32; 8] = [1, 3, 5, 10, 20, 50, 100, 200];
    let mut out = Vec::new();
    let (mut left, mut i) = (replicas, 0usize);
    while left > 0 {
        let size = SIZES[i % SIZES.len()].min(left);
        left -= size;
        let id = WorkloadId::new("deployment", "bench", format!("w{i}")).expect("valid id");
        let mut w = Workload::deployment(id, size, Resources::new(100, 256 << 20));
        if i % 10 == 3 {
            w = w.with_selector("zone", "a");
        }
        out.push(w);
        i += 1;
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("place");
    group.sample_size(10);
    for n in [10usize, 100, 1000] {
        let replicas = 100 * n as u32;
        let view = ClusterView::new((0..n).map(node)).expect("unique ids");
        let ws = workloads(replicas);
        group.bench_with_input(BenchmarkId::new("from_scratch", n), &n, |b, _| {
            b.iter(|| place(black_box(&view), black_box(&ws)))
        });
        let mut running = view.clone();
        running.apply(&place(&view, &ws));
        running.insert(node(n));
        group.bench_with_input(BenchmarkId::new("node_added", n), &n, |b, _| {
            b.iter(|| place(black_box(&running), black_box(&ws)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
