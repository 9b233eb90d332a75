//! The planner's laws on hand-built snapshots: the same state gives the same plan whatever the
//! order, pods spread and are named like Kubernetes', a dead node's replicas go elsewhere, and
//! a rolling update moves only as fast as readiness allows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shoal_gossip::{MemberState, NodeId, ObjectKey};

use super::plan::{DesiredPod, Plan, plan};
use super::snapshot::{MemberSnap, Snapshot};
use super::stored::{FORMAT, PodRecord, StoredObject, object_key};
use super::view::apply_one;
use crate::manifest::{
    ConditionStatus, PodCondition, PodConditionType, PodPhase, PodStatus, parse,
};
use crate::node_info::NodeInfo;

fn node(i: u8) -> NodeId {
    NodeId([i; 32])
}

fn member(i: u8, state: MemberState) -> MemberSnap {
    MemberSnap {
        id: node(i),
        name: format!("node-{i}"),
        addr: format!("127.0.0.1:{}", 7000 + u16::from(i)),
        state,
        info: Some(NodeInfo {
            format: FORMAT,
            version: "test".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            created_ms: 0,
            started_ms: 0,
            run: 0,
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            labels: BTreeMap::new(),
            runtime: "process".into(),
            mesh: None,
            service_range: None,
            limits: None,
            ..NodeInfo::default()
        }),
    }
}

fn deployment(replicas: u32, version: &str, strategy: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n\
         {strategy}  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    \
         spec:\n      containers:\n      - name: http\n        image: demo\n        command: [/bin/demo]\n        \
         env: [{{name: VERSION, value: \"{version}\"}}]\n"
    )
}

/// Applies `yaml` over `old` as the API would.
fn stored(yaml: &str, old: Option<&StoredObject>) -> (ObjectKey, StoredObject) {
    let resource = parse("test.yaml", yaml.as_bytes())
        .expect("valid manifest")
        .remove(0);
    let (_, new) = apply_one(&resource, old, 1_000, || "uid-1".into());
    let new = new.unwrap_or_else(|| old.expect("unchanged needs an old object").clone());
    let key = resource.key();
    (object_key(key.kind, &key.namespace, &key.name), new)
}

/// The state a test changes step by step, made into a snapshot for each plan.
#[derive(Clone)]
struct State {
    members: Vec<MemberSnap>,
    objects: Vec<(ObjectKey, StoredObject)>,
    records: Vec<(NodeId, PodRecord)>,
}

impl State {
    fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.members.clone(),
            self.objects.clone(),
            self.records.clone(),
        )
    }

    fn plan(&self) -> Arc<Plan> {
        plan(&self.snapshot(), None, 1_000_000)
    }
}

fn snapshot(members: Vec<MemberSnap>, objects: Vec<(ObjectKey, StoredObject)>) -> State {
    State {
        members,
        objects,
        records: Vec::new(),
    }
}

/// What a node reports for a pod the plan gave it.
fn record(pod: &DesiredPod, ready: bool) -> (NodeId, PodRecord) {
    let status = if ready {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    (
        pod.node,
        PodRecord {
            format: FORMAT,
            pod: pod.pod.clone(),
            status: PodStatus {
                phase: PodPhase::Running,
                conditions: vec![PodCondition {
                    kind: PodConditionType::Ready,
                    status,
                    reason: None,
                    message: None,
                    last_transition_time: None,
                }],
                ..PodStatus::default()
            },
            replica: pod.replica.clone(),
            deployment: pod.deployment.clone(),
            template_hash: pod.template_hash.clone(),
            ready_since_ms: ready.then_some(1_000),
            events: Vec::new(),
            run: 0,
        },
    )
}

fn placed(state: &State) -> BTreeSet<(String, NodeId, String)> {
    state
        .plan()
        .pods()
        .map(|p| (p.pod.metadata.name.clone(), p.node, p.uid.clone()))
        .collect()
}

#[test]
fn the_same_state_in_any_order_gives_the_same_plan() {
    let members: Vec<MemberSnap> = (1..=4).map(|i| member(i, MemberState::Alive)).collect();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\nspec:\n  containers:\n  - {name: a, image: x, command: [/bin/x]}\n";
    let objects = vec![stored(&deployment(7, "v1", ""), None), stored(pod, None)];
    let one = snapshot(members.clone(), objects.clone());
    let mut reversed_members = members;
    reversed_members.reverse();
    let mut reversed_objects = objects;
    reversed_objects.reverse();
    let other = snapshot(reversed_members, reversed_objects);
    let a = placed(&one);
    assert_eq!(a.len(), 8, "{a:?}");
    assert_eq!(a, placed(&other));
    // The bare pod keeps its own name; deployment pods are `web-<template hash>-<5 chars>`.
    assert!(a.iter().any(|(name, _, _)| name == "solo"));
    for (name, _, _) in a.iter().filter(|(n, _, _)| n != "solo") {
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[0], "web");
        assert_eq!(parts[2].len(), 5, "{name}");
    }
}

#[test]
fn replicas_spread_over_the_nodes() {
    let members: Vec<MemberSnap> = (1..=3).map(|i| member(i, MemberState::Alive)).collect();
    let s = snapshot(members, vec![stored(&deployment(6, "v1", ""), None)]);
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for p in s.plan().pods() {
        *per_node.entry(p.node).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
}

#[test]
fn a_dead_nodes_replicas_are_placed_on_the_others_and_the_rest_stay() {
    let members: Vec<MemberSnap> = (1..=3).map(|i| member(i, MemberState::Alive)).collect();
    let mut s = snapshot(members, vec![stored(&deployment(6, "v1", ""), None)]);
    let first: Vec<DesiredPod> = s.plan().pods().collect();
    s.records = first.iter().map(|p| record(p, true)).collect();
    // Stable: planning again with every pod reported running changes nothing.
    assert_eq!(
        placed(&s),
        first
            .iter()
            .map(|p| (p.pod.metadata.name.clone(), p.node, p.uid.clone()))
            .collect()
    );
    s.members[1].state = MemberState::Dead;
    let dead = node(2);
    let after: Vec<DesiredPod> = s.plan().pods().collect();
    assert_eq!(after.len(), 6);
    assert!(after.iter().all(|p| p.node != dead));
    // Pods on the survivors keep their names and places.
    for p in first.iter().filter(|p| p.node != dead) {
        assert!(
            after
                .iter()
                .any(|q| q.pod.metadata.name == p.pod.metadata.name && q.node == p.node),
            "{} moved",
            p.pod.metadata.name
        );
    }
}

#[test]
fn a_rolling_update_without_unavailability_surges_and_retires_only_ready_replaced_pods() {
    let members: Vec<MemberSnap> = (1..=3).map(|i| member(i, MemberState::Alive)).collect();
    let strategy =
        "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n";
    let (key, v1) = stored(&deployment(4, "v1", strategy), None);
    let mut s = snapshot(members, vec![(key, v1.clone())]);
    let first: Vec<DesiredPod> = s.plan().pods().collect();
    s.records = first.iter().map(|p| record(p, true)).collect();
    let old_hash = first[0].template_hash.clone().unwrap();

    // The template changes: one new pod (the surge); all 4 old ones stay.
    let (key, v2) = stored(&deployment(4, "v2", strategy), Some(&v1));
    assert_eq!(v2.revision, 2);
    s.objects = vec![(key, v2)];
    let step: Vec<DesiredPod> = s.plan().pods().collect();
    let new: Vec<&DesiredPod> = step
        .iter()
        .filter(|p| p.template_hash.as_deref() != Some(old_hash.as_str()))
        .collect();
    let old = step.len() - new.len();
    assert_eq!((new.len(), old), (1, 4));

    // While the new pod is not ready, nothing more happens.
    s.records.push(record(new[0], false));
    let waiting = s.plan();
    assert_eq!(waiting.pods().count(), 5);

    // Once it is ready, one old pod is retired; the next new one comes only once that pod is
    // gone (its node stopped reporting it), so there are never more than 5.
    let ready = record(new[0], true);
    *s.records.last_mut().unwrap() = ready;
    let count = |plan: &Plan| {
        let new = plan
            .pods()
            .filter(|p| p.template_hash.as_deref() != Some(old_hash.as_str()))
            .count();
        (new, plan.pods().count() - new)
    };
    let next = s.plan();
    assert_eq!(count(&next), (1, 3));
    let kept: BTreeSet<String> = next.pods().map(|p| p.pod.metadata.name.clone()).collect();
    s.records
        .retain(|(_, r)| kept.contains(&r.pod.metadata.name));
    // The retired pod is the only one gone: no kept pod moved to another node.
    assert_eq!(s.records.len(), 4, "{kept:?}");
    let after = s.plan();
    assert_eq!(count(&after), (2, 3));
}

fn named(name: &str, replicas: u32, created_ms: u64) -> (ObjectKey, StoredObject) {
    let yaml = deployment(replicas, "v1", "").replace("name: web}", &format!("name: {name}}}"));
    let (key, mut stored) = stored(&yaml, None);
    stored.created_ms = created_ms;
    (key, stored)
}

#[test]
fn workloads_over_the_replica_limits_are_set_aside_in_creation_order() {
    use super::limits::Limits;
    let mut members: Vec<MemberSnap> = (1..=2).map(|i| member(i, MemberState::Alive)).collect();
    for (i, m) in members.iter_mut().enumerate() {
        // The members disagree: the lowest of each limit wins.
        m.info.as_mut().unwrap().limits = Some(Limits {
            per_workload: 10 + i as u32 * 100,
            cluster: 30 - i as u32 * 5,
        });
    }
    let s = snapshot(
        members,
        vec![
            named("late", 8, 3_000),
            named("first", 10, 1_000),
            named("huge", 1_000_000, 500),
            named("second", 10, 2_000),
        ],
    );
    let plan = s.plan();
    let per_deployment = |name: &str| {
        plan.pods()
            .filter(|p| p.deployment.as_deref() == Some(name))
            .count()
    };
    assert_eq!(per_deployment("first"), 10);
    assert_eq!(per_deployment("second"), 10);
    // 20 asked before it, 8 more would make 28, over the cluster's 25.
    assert_eq!(per_deployment("late"), 0);
    assert_eq!(per_deployment("huge"), 0);
    let reasons: BTreeMap<String, String> = plan
        .set_aside
        .iter()
        .map(|s| (s.key.name.clone(), s.reason.clone()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons["huge"].contains("over the limit of 10 replicas per workload"),
        "{reasons:?}"
    );
    assert!(
        reasons["late"].contains("28 replicas, over its limit of 25"),
        "{reasons:?}"
    );
    // A workload set aside costs nothing: no pods, nothing unschedulable.
    assert!(plan.unschedulable().is_empty());
}

#[test]
fn unschedulable_replicas_are_kept_once_per_template_and_reason() {
    let members: Vec<MemberSnap> = (1..=2).map(|i| member(i, MemberState::Alive)).collect();
    let yaml = deployment(500, "v1", "").replace(
        "      containers:",
        "      nodeSelector: {disk: ssd}\n      containers:",
    );
    let s = snapshot(members, vec![stored(&yaml, None)]);
    let plan = s.plan();
    assert_eq!(plan.pods().count(), 0);
    assert_eq!(plan.unschedulable().len(), 1);
    let u = &plan.unschedulable()[0];
    assert_eq!(u.ordinals.len(), 500);
    assert!(u.reason.contains("disk=ssd"), "{}", u.reason);
    let names: BTreeSet<String> = u.pods().map(|p| p.metadata.name).collect();
    assert_eq!(names.len(), 500);
}

/// What a plan says, to compare two plans.
type Summary = (
    Vec<(String, NodeId, String)>,
    Vec<(Option<String>, Vec<u32>, String)>,
    Vec<(String, String)>,
    Option<u64>,
);

fn summary(plan: &Plan) -> Summary {
    (
        plan.pods()
            .map(|p| (p.pod.metadata.name.clone(), p.node, p.uid.clone()))
            .collect(),
        plan.unschedulable()
            .iter()
            .map(|u| {
                (
                    u.deployment().map(str::to_owned),
                    u.ordinals.clone(),
                    u.reason.clone(),
                )
            })
            .collect(),
        plan.set_aside
            .iter()
            .map(|s| (s.key.name.clone(), s.reason.clone()))
            .collect(),
        plan.next_change_ms,
    )
}

/// A change of the state, for the planner's law.
#[derive(Clone, Debug)]
enum Step {
    /// Deployment `d` (of 3) applied with these replicas, template version, and
    /// minReadySeconds.
    Apply(u8, u32, u8, u8),
    Delete(u8),
    /// Member `m` (of 4) becomes alive, suspect or dead.
    Member(u8, u8),
    /// The `i`th pod of the current plan reported: ready or not, finished or not.
    Report(usize, bool, bool),
    /// The `i`th record removed.
    Unreport(usize),
    /// Time passes (seconds).
    Wait(u8),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0..3u8, 0..6u32, 0..3u8, 0..3u8).prop_map(|(d, r, v, m)| Step::Apply(d, r, v, m)),
        (0..3u8).prop_map(Step::Delete),
        (0..4u8, 0..3u8).prop_map(|(m, s)| Step::Member(m, s)),
        (0..40usize, any::<bool>(), proptest::bool::weighted(0.1))
            .prop_map(|(i, r, f)| Step::Report(i, r, f)),
        (0..40usize).prop_map(Step::Unreport),
        (0..20u8).prop_map(Step::Wait),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// The planner, which keeps what it derived and redoes only what changes concern, always
    /// gives the plan computed from scratch.
    #[test]
    fn the_planner_always_gives_the_plan_from_scratch(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        use super::plan::Planner;
        let mut snap = Snapshot::new(
            (1..=4).map(|i| member(i, MemberState::Alive)).collect(),
            Vec::new(),
            Vec::new(),
        );
        let mut planner = Planner::default();
        let mut objects: BTreeMap<u8, (ObjectKey, StoredObject)> = BTreeMap::new();
        let mut states = [MemberState::Alive; 4];
        let mut now_ms = 1_000_000u64;
        for step in steps {
            let current = plan(&snap, None, now_ms);
            match step {
                Step::Apply(d, replicas, version, min_ready) => {
                    let yaml = deployment(replicas, &format!("v{version}"), "")
                        .replace("name: web", &format!("name: web{d}"))
                        .replace("app: web", &format!("app: web{d}"))
                        .replace(
                            "  selector:",
                            &format!("  minReadySeconds: {}\n  selector:", u32::from(min_ready) * 5),
                        );
                    let (key, object) = stored(&yaml, objects.get(&d).map(|(_, o)| o));
                    objects.insert(d, (key.clone(), object.clone()));
                    snap.set_object(key, super::snapshot::Object::new(object).ok());
                }
                Step::Delete(d) => {
                    if let Some((key, _)) = objects.remove(&d) {
                        snap.set_object(key, None);
                    }
                }
                Step::Member(m, state) => {
                    states[m as usize] = [MemberState::Alive, MemberState::Suspect, MemberState::Dead]
                        [state as usize];
                    snap.set_members(
                        (1..=4u8).map(|i| member(i, states[i as usize - 1])),
                    );
                }
                Step::Report(i, ready, finished) => {
                    let pods: Vec<DesiredPod> = current.pods().collect();
                    if !pods.is_empty() {
                        let pod = &pods[i % pods.len()];
                        let (node, mut r) = record(pod, ready);
                        r.ready_since_ms = ready.then_some(now_ms);
                        if finished {
                            r.status.phase = PodPhase::Failed;
                        }
                        let name = super::stored::record_name("default", &r.pod.metadata.name);
                        snap.set_record(node, name, Some(r));
                    }
                }
                Step::Unreport(i) => {
                    let keys: Vec<(NodeId, String)> = snap
                        .records()
                        .map(|(n, r)| (*n, super::stored::record_name("default", &r.pod.metadata.name)))
                        .collect();
                    if !keys.is_empty() {
                        let (node, name) = keys[i % keys.len()].clone();
                        snap.set_record(node, name, None);
                    }
                }
                Step::Wait(s) => now_ms += u64::from(s) * 1000,
            }
            let scratch = plan(&snap, None, now_ms);
            let incremental = planner.plan(&snap, None, now_ms);
            proptest::prop_assert_eq!(summary(&incremental), summary(&scratch));
        }
    }
}

/// What planning costs at scale: `cargo test --release -p shoal-agent --lib plan_cost --
/// --ignored --nocapture`. Prints, for a few cluster sizes, the time of a plan from scratch,
/// of a plan after one pod record changed, and of this node's share of it.
#[test]
#[ignore = "benchmark; run explicitly"]
fn plan_cost_at_scale() {
    use std::time::Instant;

    use crate::workload::service::DEFAULT_SERVICE_RANGE;
    use crate::workload::supervisor::NodePlan;

    fn doc(name: &str, replicas: u32) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  \
             selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
             spec:\n      containers:\n      - name: main\n        image: sleep\n        command: [sleep, \"86400\"]\n"
        )
    }
    // (nodes, deployments, replicas of each, one more deployment of this many)
    for (nodes, deployments, each, big) in [
        (3u32, 2000u32, 1u32, 2000u32),
        (100, 100, 100, 0),
        (1000, 100, 100, 0),
        (1000, 100, 1000, 0),
    ] {
        let members: Vec<MemberSnap> = (0..nodes)
            .map(|i| {
                let mut m = member(0, MemberState::Alive);
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&(i + 1).to_be_bytes());
                m.id = NodeId(id);
                m.name = format!("node-{i}");
                m
            })
            .collect();
        let mut objects: Vec<_> = (0..deployments)
            .map(|i| stored(&doc(&format!("d-{i:05}"), each), None))
            .collect();
        if big > 0 {
            objects.push(stored(&doc("big", big), None));
        }
        let replicas = (deployments * each + big) as usize;
        let mut state = snapshot(members, objects);
        let started = Instant::now();
        let first = state.plan();
        let scratch_empty = started.elapsed();
        state.records = first.pods().map(|p| record(&p, true)).collect();
        let mut snap = state.snapshot();
        let mut planner = super::plan::Planner::default();
        let started = Instant::now();
        let full = planner.plan(&snap, None, 1_000_000);
        let scratch = started.elapsed();
        let me = state.members[0].id;
        let started = Instant::now();
        let shared = Arc::new(snap.clone());
        let node_plan = NodePlan::new(&shared, &full, &me, DEFAULT_SERVICE_RANGE, None);
        let node_share = started.elapsed();
        // One record changes at a time (ready, not ready), as status reports would: the mean
        // of 100 plans.
        let mut one_change = std::time::Duration::ZERO;
        let mut again = full.clone();
        for i in 0..100 {
            let (node, mut changed) = state.records[i % state.records.len()].clone();
            changed.ready_since_ms = None;
            changed.status.conditions[0].status = ConditionStatus::False;
            let name = super::stored::record_name("default", &changed.pod.metadata.name);
            snap.set_record(node, name, Some(changed));
            let started = Instant::now();
            again = planner.plan(&snap, None, 1_000_000);
            one_change += started.elapsed() / 100;
        }
        let shared = Arc::new(snap.clone());
        let started = Instant::now();
        let node_plan_again = NodePlan::new(
            &shared,
            &again,
            &me,
            DEFAULT_SERVICE_RANGE,
            Some(&node_plan),
        );
        let node_share_again = started.elapsed();
        assert!(Arc::ptr_eq(&node_plan.pods, &node_plan_again.pods));
        let started = Instant::now();
        let scratch_again = plan(&snap, None, 1_000_000);
        let one_change_scratch = started.elapsed();
        // One Deployment scaled up by one.
        let (key, object) = stored(&doc("d-00000", each - 1), Some(&state.objects[0].1));
        snap.set_object(key, super::snapshot::Object::new(object).ok());
        let started = Instant::now();
        let scaled = planner.plan(&snap, None, 1_000_000);
        let one_scale = started.elapsed();
        println!(
            "nodes {nodes} deployments {} replicas {replicas}: plan without records \
             {scratch_empty:?}, with every pod reported {scratch:?}; after one record changed: \
             {one_change:?} (from scratch {one_change_scratch:?}); after one deployment scaled down by one: \
             {one_scale:?}; one node's share ({} pods) {node_share:?}, again after one record \
             changed {node_share_again:?}",
            deployments + u32::from(big > 0),
            node_plan.pods.len(),
        );
        assert_eq!(full.pods().count(), replicas);
        assert_eq!(summary(&again), summary(&scratch_again));
        let scaled_scratch = plan(&snap, None, 1_000_000);
        assert_eq!(summary(&scaled), summary(&scaled_scratch));
        assert_eq!(scaled.pods().count(), replicas - 1);
    }
}

#[test]
fn pods_of_a_big_deployment_all_have_names_of_their_own() {
    // 10,000 replicas with 5-character suffixes: several would share one by chance.
    let members: Vec<MemberSnap> = (1..=3).map(|i| member(i, MemberState::Alive)).collect();
    let s = snapshot(members, vec![stored(&deployment(10_000, "v1", ""), None)]);
    let plan = s.plan();
    let names: BTreeSet<String> = plan.pods().map(|p| p.pod.metadata.name).collect();
    assert_eq!(names.len(), 10_000);
    let uids: BTreeSet<String> = plan.pods().map(|p| p.uid).collect();
    assert_eq!(uids.len(), 10_000);
}

#[test]
fn a_cluster_starting_what_the_plan_gave_it_keeps_that_plan() {
    // Nodes learn of an apply and start their pods at different moments; each plans again as
    // the others' records arrive. Every one of those plans must be the plan from scratch, or
    // pods start on one node and move to another before the cluster has converged.
    let members: Vec<MemberSnap> = (1..=30).map(|i| member(i, MemberState::Alive)).collect();
    let objects: Vec<(ObjectKey, StoredObject)> = (0..12)
        .map(|i| named(&format!("d{i}"), 3 + 7 * i, 1_000 + u64::from(i)))
        .collect();
    let mut state = snapshot(members, objects);
    let from_scratch = state.plan();
    let pods: Vec<DesiredPod> = from_scratch.pods().collect();
    let where_ = |plan: &Plan| -> BTreeSet<(String, NodeId)> {
        plan.pods()
            .map(|p| (p.pod.metadata.name.clone(), p.node))
            .collect()
    };
    let expected = where_(&from_scratch);
    // Some nodes report their pods (started, not ready yet), the others have not started.
    for reporting in [1u8, 2, 3, 5, 7, 11] {
        state.records = pods
            .iter()
            .filter(|p| p.node.0[0] % reporting == 0)
            .map(|p| record(p, false))
            .collect();
        assert_eq!(
            where_(&state.plan()),
            expected,
            "with the records of the nodes whose number divides by {reporting}"
        );
    }
}
