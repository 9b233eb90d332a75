//! What should run where: a pure function of the replicated state.
//!
//! Every node computes [`plan`] from its own [`Snapshot`] of the replicated state and gets the
//! same answer as every other node with the same state, so no leader decides. The steps:
//!
//! 1. **Rollouts**: for each Deployment, how many pods of its current template and of each older
//!    template should exist, from the pods nodes report ([`rollout`]): RollingUpdate surges the
//!    new template by `maxSurge` and removes old pods only while `replicas - maxUnavailable` stay
//!    ready; Recreate removes every old pod before creating new ones. The step is a function of
//!    observed readiness, so it advances as pods become ready, on every node alike.
//! 2. **Workloads**: each template with its count becomes a scheduler workload
//!    (`deployment/<ns>/<name>-<pod-template-hash>`); a bare Pod is a workload of one
//!    (`pod/<ns>/<name>`).
//! 3. **Placement**: [`shoal_scheduler::place`] over the live members (their allocatable
//!    resources and labels from `node/info`) and the replicas they report running (so replicas
//!    stay where they run).
//! 4. **Pods**: each placed replica becomes a [`DesiredPod`] with a name that depends on the
//!    replica and its node (`web-<hash>-<5 chars>`, like a Kubernetes pod name): a replica that
//!    moves is a new pod.
//!
//! Invariant: the result depends only on the snapshot's content, never on iteration order or
//! time.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_gossip::{MemberState, NodeId, ObjectKey};
use shoal_scheduler::{
    ClusterView, Decision, Node as SchedNode, NodeId as SchedNodeId, NodeStatus, Placement,
    ReplicaId, Resources, Workload, WorkloadId,
};
use xxhash_rust::xxh3::xxh3_64;

use super::stored::{PodRecord, ReplicaRef, StoredObject};
use crate::driver::NodeInfo;
use crate::manifest::{
    Deployment, DeploymentStrategy, ObjectMeta, Pod, PodSpec, PodTemplateSpec, Resource,
};

/// A member as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MemberSnap {
    pub(crate) id: NodeId,
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) state: MemberState,
    pub(crate) info: Option<NodeInfo>,
}

/// The part of the replicated state that workloads depend on.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Members (this node included).
    pub(crate) members: Vec<MemberSnap>,
    /// Applied objects of the workload kinds, tombstones excluded.
    pub(crate) objects: Vec<(ObjectKey, StoredObject)>,
    /// Pods nodes report, with the reporting node.
    pub(crate) records: Vec<(NodeId, PodRecord)>,
}

impl Snapshot {
    /// The member with this id.
    pub(crate) fn member(&self, id: &NodeId) -> Option<&MemberSnap> {
        self.members.iter().find(|m| m.id == *id)
    }

    /// Whether a node is alive or suspect (it keeps running its pods).
    pub(crate) fn is_live(&self, id: &NodeId) -> bool {
        self.member(id).is_some_and(|m| m.state.is_live())
    }

    /// Records of live nodes only: what a dead or departed node reported no longer runs.
    pub(crate) fn live_records(&self) -> impl Iterator<Item = &(NodeId, PodRecord)> {
        self.records.iter().filter(|(n, _)| self.is_live(n))
    }
}

/// A pod that should run on a node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DesiredPod {
    /// Where.
    pub(crate) node: NodeId,
    /// The pod: metadata (name, namespace, labels) and spec (with `nodeName` set).
    pub(crate) pod: Pod,
    /// The replica it is.
    pub(crate) replica: ReplicaRef,
    /// Its Deployment, if any.
    pub(crate) deployment: Option<String>,
    /// The Deployment's pod-template-hash, if any.
    pub(crate) template_hash: Option<String>,
    /// Runtime id of this pod incarnation: stable for the same pod, spec and node.
    pub(crate) uid: String,
    /// Hash of the pod spec.
    pub(crate) spec_hash: String,
}

/// How a Deployment's pods are divided between its templates right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RolloutStep {
    /// Pods of the current template.
    pub(crate) new_count: u32,
    /// Pods to keep of each older template (by pod-template-hash): their ordinals.
    pub(crate) old: BTreeMap<String, Vec<u32>>,
}

/// A replica no node can run, and why.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Unschedulable {
    pub(crate) pod: Pod,
    pub(crate) replica: ReplicaRef,
    pub(crate) deployment: Option<String>,
    pub(crate) reason: String,
}

/// The plan for the whole cluster.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Every placed pod.
    pub(crate) pods: Vec<DesiredPod>,
    /// Replicas no node can run.
    pub(crate) unschedulable: Vec<Unschedulable>,
    /// Each Deployment's rollout step, by (namespace, name).
    pub(crate) rollouts: BTreeMap<(String, String), RolloutStep>,
}

impl Plan {
    /// The pods `node` should run.
    pub(crate) fn pods_on<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a DesiredPod> {
        self.pods.iter().filter(move |p| p.node == *node)
    }
}

// Read access for the supervisor's node plan (kept apart so the fields can change shape).
impl Snapshot {
    /// Every member, this node included.
    pub(crate) fn members(&self) -> impl Iterator<Item = &MemberSnap> {
        self.members.iter()
    }

    /// The pod records `node` reports.
    pub(crate) fn records_of<'a>(
        &'a self,
        node: &'a NodeId,
    ) -> impl Iterator<Item = &'a PodRecord> {
        self.records
            .iter()
            .filter(move |(n, _)| n == node)
            .map(|(_, r)| r)
    }
}

impl Plan {
    /// Every placed pod, on any node.
    pub(crate) fn placed(&self) -> impl Iterator<Item = &DesiredPod> {
        self.pods.iter()
    }
}

/// The scheduler's name for a node.
pub(crate) fn sched_id(id: &NodeId) -> SchedNodeId {
    SchedNodeId::new(id.to_hex())
}

/// A template of a Deployment, or a bare Pod, as one scheduler workload.
struct Template {
    id: WorkloadId,
    namespace: String,
    /// Name prefix of its pods (`web-<hash>` or the pod name).
    deployment: Option<String>,
    template_hash: Option<String>,
    meta: ObjectMeta,
    spec: PodSpec,
    /// For a bare Pod: its own name (no suffix).
    bare: bool,
}

/// Computes the plan. `forfeit`: a node whose running pods do not count as running (a node
/// that just came back, so that replicas already replaced elsewhere stay there).
pub(crate) fn plan(snapshot: &Snapshot, forfeit: Option<&NodeId>) -> Plan {
    let mut out = Plan::default();
    let mut templates: Vec<(Template, Vec<u32>)> = Vec::new();
    for (key, stored) in &snapshot.objects {
        let Ok(resource) = stored.resource() else {
            continue;
        };
        match resource {
            Resource::Deployment(d) => {
                let step = rollout(&d, snapshot);
                let hash = d.pod_template_hash();
                templates.push((
                    deployment_template(&d, &hash, &d.spec.template),
                    (0..step.new_count).collect(),
                ));
                for (old_hash, ordinals) in &step.old {
                    if let Some(template) = old_template(&d, old_hash, snapshot) {
                        templates.push((
                            deployment_template(&d, old_hash, &template),
                            ordinals.clone(),
                        ));
                    }
                }
                out.rollouts
                    .insert((key.namespace.clone(), key.name.clone()), step);
            }
            Resource::Pod(p) => {
                let Ok(id) = WorkloadId::new("pod", &key.namespace, &key.name) else {
                    continue;
                };
                templates.push((
                    Template {
                        id,
                        namespace: key.namespace.clone(),
                        deployment: None,
                        template_hash: None,
                        meta: p.metadata.clone(),
                        spec: p.spec.clone(),
                        bare: true,
                    },
                    vec![0],
                ));
            }
            Resource::Namespace(_) | Resource::Service(_) => {}
        }
    }

    // The cluster as the scheduler sees it.
    let mut running: BTreeMap<SchedNodeId, BTreeSet<ReplicaId>> = BTreeMap::new();
    for (node, record) in snapshot.live_records() {
        if Some(node) == forfeit || record.is_finished() {
            continue;
        }
        if let Some(replica) = replica_id(&record.replica) {
            running.entry(sched_id(node)).or_default().insert(replica);
        }
    }
    let nodes = snapshot.members.iter().filter_map(|m| {
        let info = m.info.as_ref()?;
        let status = match m.state {
            MemberState::Alive => NodeStatus::Alive,
            MemberState::Suspect => NodeStatus::Suspect,
            MemberState::Dead => NodeStatus::Dead,
            MemberState::Left => NodeStatus::Left,
        };
        let id = sched_id(&m.id);
        let mut node = SchedNode::new(
            id.clone(),
            Resources {
                cpu_millis: info.cpu_millis,
                memory_bytes: info.memory_bytes,
            },
        )
        .with_status(status);
        for (k, v) in &info.labels {
            node = node.with_label(k.clone(), v.clone());
        }
        node.running = running.remove(&id).unwrap_or_default();
        Some(node)
    });
    let Ok(view) = ClusterView::new(nodes) else {
        return out;
    };
    let workloads: Vec<Workload> = templates
        .iter()
        .map(|(t, ordinals)| {
            // Explicit ordinals (as a stateful set's, with no volumes): an older template
            // keeps exactly the replicas the rollout keeps, not the first k.
            let mut w = if ordinals.iter().copied().eq(0..ordinals.len() as u32) {
                Workload::deployment(t.id.clone(), ordinals.len() as u32, requests(&t.spec))
            } else {
                Workload::stateful(
                    t.id.clone(),
                    ordinals.iter().map(|o| (*o, None)).collect(),
                    requests(&t.spec),
                )
            };
            for (k, v) in &t.spec.node_selector {
                w = w.with_selector(k.clone(), v.clone());
            }
            w
        })
        .collect();
    let placement: Placement = shoal_scheduler::place(&view, &workloads);
    let by_hex: BTreeMap<String, NodeId> = snapshot
        .members
        .iter()
        .map(|m| (m.id.to_hex(), m.id))
        .collect();
    for (template, ordinals) in &templates {
        for &ordinal in ordinals {
            let replica = ReplicaRef {
                workload: template.id.to_string(),
                ordinal,
            };
            match placement.decision(&template.id.replica(ordinal)) {
                Some(Decision::Run { node, .. }) => {
                    let Some(node) = by_hex.get(node.as_str()) else {
                        continue;
                    };
                    out.pods
                        .push(desired_pod(template, replica, *node, snapshot));
                }
                Some(Decision::Unschedulable(reason)) => {
                    let (pod, _) = pod_for(template, &replica, None, snapshot);
                    out.unschedulable.push(Unschedulable {
                        pod,
                        replica,
                        deployment: template.deployment.clone(),
                        reason: reason.to_string(),
                    });
                }
                None => {}
            }
        }
    }
    out
}

/// The scheduler's replica id of a record's replica.
fn replica_id(replica: &ReplicaRef) -> Option<ReplicaId> {
    let id: WorkloadId = replica.workload.parse().ok()?;
    Some(id.replica(replica.ordinal))
}

fn deployment_template(d: &Deployment, hash: &str, template: &PodTemplateSpec) -> Template {
    let namespace = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| crate::manifest::DEFAULT_NAMESPACE.into());
    let name = &d.metadata.name;
    let id = WorkloadId::new("deployment", &namespace, format!("{name}-{hash}"))
        .expect("names are validated");
    let mut meta = ObjectMeta {
        name: String::new(),
        namespace: Some(namespace.clone()),
        labels: template.metadata.labels.clone(),
        annotations: template.metadata.annotations.clone(),
        ..ObjectMeta::default()
    };
    meta.labels
        .insert("pod-template-hash".into(), hash.to_owned());
    Template {
        id,
        namespace,
        deployment: Some(name.clone()),
        template_hash: Some(hash.to_owned()),
        meta,
        spec: template.spec.clone(),
        bare: false,
    }
}

/// The template of an older revision still running, from the pods that run it.
fn old_template(d: &Deployment, hash: &str, snapshot: &Snapshot) -> Option<PodTemplateSpec> {
    let namespace = d.metadata.namespace.as_deref().unwrap_or("default");
    snapshot
        .live_records()
        .map(|(_, r)| r)
        .filter(|r| {
            r.deployment.as_deref() == Some(d.metadata.name.as_str())
                && r.pod.metadata.namespace.as_deref() == Some(namespace)
                && r.template_hash.as_deref() == Some(hash)
        })
        .min_by(|a, b| a.pod.metadata.name.cmp(&b.pod.metadata.name))
        .map(|r| {
            let mut labels = r.pod.metadata.labels.clone();
            labels.remove("pod-template-hash");
            let mut spec = r.pod.spec.clone();
            spec.node_name = None;
            PodTemplateSpec {
                metadata: crate::manifest::TemplateMeta {
                    labels,
                    annotations: r.pod.metadata.annotations.clone(),
                },
                spec,
            }
        })
}

/// CPU and memory a pod asks for: the sum of its containers' requests (requests default to
/// limits, as in Kubernetes).
pub(crate) fn requests(spec: &PodSpec) -> Resources {
    let mut total = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
    };
    for c in &spec.containers {
        let cpu = c.resources.requests.cpu.or(c.resources.limits.cpu);
        let memory = c.resources.requests.memory.or(c.resources.limits.memory);
        total.cpu_millis += cpu.map(|q| q.millis()).unwrap_or(0);
        total.memory_bytes += memory.map(|q| q.bytes()).unwrap_or(0);
    }
    total
}

const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Five characters of the safe alphabet from a hash, for pod name suffixes.
fn suffix(mut h: u64) -> String {
    (0..5)
        .map(|_| {
            let c = SAFE_ALPHABET[(h % SAFE_ALPHABET.len() as u64) as usize];
            h /= SAFE_ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

/// The pod for a replica on a node (`node: None` for a pod that is not placed).
fn pod_for(
    template: &Template,
    replica: &ReplicaRef,
    node: Option<NodeId>,
    snapshot: &Snapshot,
) -> (Pod, String) {
    let name = if template.bare {
        template.id.name().to_owned()
    } else {
        let mut seed = replica.workload.clone().into_bytes();
        seed.extend_from_slice(&replica.ordinal.to_le_bytes());
        if let Some(node) = node {
            seed.extend_from_slice(node.as_bytes());
        }
        format!(
            "{}-{}-{}",
            template.deployment.as_deref().unwrap_or_default(),
            template.template_hash.as_deref().unwrap_or_default(),
            suffix(xxh3_64(&seed))
        )
    };
    let mut meta = template.meta.clone();
    meta.name = name;
    meta.namespace = Some(template.namespace.clone());
    let mut spec = template.spec.clone();
    spec.node_name = node.and_then(|n| snapshot.member(&n).map(|m| m.name.clone()));
    let spec_hash = format!(
        "{:016x}",
        xxh3_64(&serde_json::to_vec(&(&meta, &template.spec)).unwrap_or_default())
    );
    (
        Pod {
            metadata: meta,
            spec,
        },
        spec_hash,
    )
}

fn desired_pod(
    template: &Template,
    replica: ReplicaRef,
    node: NodeId,
    snapshot: &Snapshot,
) -> DesiredPod {
    let (mut pod, spec_hash) = pod_for(template, &replica, Some(node), snapshot);
    let mut seed =
        format!("{}/{}/{spec_hash}/", template.namespace, pod.metadata.name).into_bytes();
    seed.extend_from_slice(node.as_bytes());
    let uid = format!("{:016x}", xxh3_64(&seed));
    pod.metadata.uid = Some(uid.clone());
    DesiredPod {
        node,
        pod,
        replica,
        deployment: template.deployment.clone(),
        template_hash: template.template_hash.clone(),
        uid,
        spec_hash,
    }
}

/// A Deployment's pods as the live nodes report them, finished ones left out: (node,
/// pod-template-hash, record).
fn deployment_records<'a>(
    d: &'a Deployment,
    snapshot: &'a Snapshot,
) -> impl Iterator<Item = (&'a NodeId, &'a str, &'a PodRecord)> {
    let namespace = d.metadata.namespace.as_deref().unwrap_or("default");
    snapshot.live_records().filter_map(move |(node, record)| {
        if record.deployment.as_deref() != Some(d.metadata.name.as_str())
            || record.pod.metadata.namespace.as_deref() != Some(namespace)
            || record.is_finished()
        {
            return None;
        }
        let hash = record.template_hash.as_deref()?;
        Some((node, hash, record))
    })
}

/// Where each of a Deployment's replicas runs, by (pod-template-hash, ordinal), and how many
/// of its pods each node runs.
fn replica_nodes(
    d: &Deployment,
    snapshot: &Snapshot,
) -> (BTreeMap<(String, u32), NodeId>, BTreeMap<NodeId, u32>) {
    let mut nodes = BTreeMap::new();
    let mut load: BTreeMap<NodeId, u32> = BTreeMap::new();
    for (node, hash, record) in deployment_records(d, snapshot) {
        // A replica reported by two nodes (a hand-off): the lower node id, as everywhere.
        nodes
            .entry((hash.to_owned(), record.replica.ordinal))
            .and_modify(|n: &mut NodeId| *n = (*n).min(*node))
            .or_insert(*node);
        *load.entry(*node).or_default() += 1;
    }
    (nodes, load)
}

/// A Deployment's pods, as the live nodes report them, by template hash: each replica
/// (ordinal; a replica running twice during a handoff counts once) and whether it is ready.
fn replicas_by_template(
    d: &Deployment,
    snapshot: &Snapshot,
) -> BTreeMap<String, BTreeMap<u32, bool>> {
    let mut replicas: BTreeMap<String, BTreeMap<u32, bool>> = BTreeMap::new();
    for (_, hash, record) in deployment_records(d, snapshot) {
        let ready = replicas
            .entry(hash.to_owned())
            .or_default()
            .entry(record.replica.ordinal)
            .or_insert(false);
        *ready |= record.is_ready();
    }
    replicas
}

/// How many pods of each template a Deployment should have now.
///
/// - No old pods: `replicas` of the current template.
/// - RollingUpdate with `(surge, unavailable)` resolved from the spec: new pods up to
///   `replicas + surge - old pods`; of the old pods, only ready ones are kept, and only as many
///   as are needed to keep `replicas - unavailable` ready given the new pods already ready
///   (lowest ordinals first, templates with most ready pods first, ties by hash, so every node
///   keeps the same ones).
/// - Recreate: no new pods until every old pod is gone.
/// - Paused: nothing moves (new pods as they are, every old pod kept).
pub(crate) fn rollout(d: &Deployment, snapshot: &Snapshot) -> RolloutStep {
    let replicas = d.spec.replicas;
    let current = d.pod_template_hash();
    let by_template = replicas_by_template(d, snapshot);
    let count = |ordinals: &BTreeMap<u32, bool>| ordinals.len() as u32;
    let ready = |ordinals: &BTreeMap<u32, bool>| ordinals.values().filter(|r| **r).count() as u32;
    let (new_existing, new_ready) = by_template
        .get(&current)
        .map(|o| (count(o), ready(o)))
        .unwrap_or((0, 0));
    let old: Vec<(&String, &BTreeMap<u32, bool>)> =
        by_template.iter().filter(|(h, _)| **h != current).collect();
    let old_total: u32 = old.iter().map(|(_, o)| count(o)).sum();
    if old_total == 0 {
        return RolloutStep {
            new_count: replicas,
            old: BTreeMap::new(),
        };
    }
    if d.spec.paused {
        return RolloutStep {
            new_count: new_existing.min(replicas),
            old: old
                .into_iter()
                .map(|(h, o)| (h.clone(), o.keys().copied().collect()))
                .collect(),
        };
    }
    match &d.spec.strategy {
        DeploymentStrategy::Recreate => RolloutStep {
            new_count: 0,
            old: BTreeMap::new(),
        },
        DeploymentStrategy::RollingUpdate { rolling_update } => {
            let (surge, unavailable) = rolling_update.resolve(replicas);
            let new_count = replicas.min((replicas + surge).saturating_sub(old_total));
            let min_ready = replicas.saturating_sub(unavailable);
            let keep = min_ready.saturating_sub(new_ready);
            // Old pods that are not ready go at once; of the ready ones, those on the nodes
            // running most of this deployment go first, so that what stays is balanced and
            // placement has no reason to move a kept pod (a move would start one more pod).
            let (nodes, mut load) = replica_nodes(d, snapshot);
            let mut candidates: Vec<(String, u32, Option<NodeId>)> = Vec::new();
            for (hash, ordinals) in &old {
                for (ordinal, ready) in ordinals.iter() {
                    let node = nodes.get(&((*hash).clone(), *ordinal)).copied();
                    if *ready {
                        candidates.push(((*hash).clone(), *ordinal, node));
                    } else if let Some(n) = node.and_then(|n| load.get_mut(&n)) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            let retire = candidates.len().saturating_sub(keep as usize);
            for _ in 0..retire {
                let worst = candidates
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, (hash, ordinal, node))| {
                        let l = node.and_then(|n| load.get(&n).copied()).unwrap_or(0);
                        (l, hash.clone(), *ordinal)
                    })
                    .map(|(i, _)| i);
                let Some(i) = worst else { break };
                let (_, _, node) = candidates.swap_remove(i);
                if let Some(n) = node.and_then(|n| load.get_mut(&n)) {
                    *n = n.saturating_sub(1);
                }
            }
            let mut step: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for (hash, ordinal, _) in candidates {
                step.entry(hash).or_default().push(ordinal);
            }
            for ordinals in step.values_mut() {
                ordinals.sort_unstable();
            }
            RolloutStep {
                new_count,
                old: step,
            }
        }
    }
}
