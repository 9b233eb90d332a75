//! What should run where: a pure function of the replicated state.
//!
//! Every node computes [`plan`] from its own [`Snapshot`] of the replicated state and gets the
//! same answer as every other node with the same state, so no leader decides. The steps:
//!
//! 1. **Limits**: workloads are taken in creation order; one whose replicas would go over the
//!    per-workload or the cluster's replica limit is set aside ([`SetAside`], with the reason)
//!    instead of planned ([`super::limits`]).
//! 2. **Rollouts**: for each Deployment, how many pods of its current template and of each older
//!    template should exist, from the pods nodes report ([`rollout`]): RollingUpdate surges the
//!    new template by `maxSurge` and removes old pods only while `replicas - maxUnavailable` stay
//!    ready; Recreate removes every old pod before creating new ones. The step is a function of
//!    observed readiness, so it advances as pods become ready, on every node alike.
//! 3. **Workloads**: each template with its count becomes a scheduler workload
//!    (`deployment/<ns>/<name>-<pod-template-hash>`); a bare Pod is a workload of one
//!    (`pod/<ns>/<name>`).
//! 4. **Placement**: [`shoal_scheduler::place`] over the live members (their allocatable
//!    resources and labels from `node/info`) and the replicas they report running (so replicas
//!    stay where they run).
//! 5. **Pods**: each placed replica becomes a [`DesiredPod`] with a name that depends on the
//!    replica and its node (`web-<hash>-<5 chars>`, like a Kubernetes pod name): a replica that
//!    moves is a new pod. Pods are built when asked for ([`Plan::pods_on`]); the plan itself
//!    keeps, per replica, its ordinal and node (36 bytes), and each template once.
//!
//! Cost: linear in the workloads and the pods reported (a Deployment's pods come from the
//! snapshot's index, never from a scan of every pod), plus the scheduler's placement.
//!
//! Invariant: the result depends only on the snapshot's content, never on iteration order or
//! time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_gossip::{MemberState, NodeId, ObjectKey};
use shoal_scheduler::{
    ClusterView, Decision, Node as SchedNode, NodeId as SchedNodeId, NodeStatus, ReplicaId,
    Resources, Workload, WorkloadId,
};
use xxhash_rust::xxh3::{Xxh3, Xxh3DefaultBuilder, xxh3_64};

use super::limits::Limits;
use super::snapshot::{Object, Snapshot};
use super::stored::{PodRecord, ReplicaRef};
use crate::manifest::{
    Deployment, DeploymentStrategy, ObjectMeta, Pod, PodSpec, PodTemplateSpec, Resource, safe_chars,
};

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

/// Replicas of one template that no node can run, and why.
#[derive(Clone, Debug)]
pub(crate) struct Unschedulable {
    template: Arc<Template>,
    /// The replicas' ordinals.
    pub(crate) ordinals: Vec<u32>,
    /// Why (the scheduler's account of every node).
    pub(crate) reason: String,
}

impl Unschedulable {
    /// The Deployment of these replicas, if any.
    pub(crate) fn deployment(&self) -> Option<&str> {
        self.template.deployment.as_deref()
    }

    /// The pods these replicas would be (not placed: no node, no uid).
    pub(crate) fn pods(&self) -> impl Iterator<Item = Pod> + '_ {
        self.ordinals.iter().map(|&ordinal| {
            let replica = self.template.replica(ordinal);
            self.template.pod(&replica, 0, None, None).0
        })
    }
}

/// A workload the planner does not plan, and why (over a replica limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetAside {
    /// The object.
    pub(crate) key: ObjectKey,
    /// Why, for the object's status and events.
    pub(crate) reason: String,
}

/// A template's placed replicas.
#[derive(Clone, Debug)]
struct Placed {
    template: Arc<Template>,
    /// (ordinal, node), by ordinal.
    replicas: Vec<(u32, NodeId)>,
    /// The replicas whose name would be another's of this template, with the salt that makes
    /// it unique (almost always empty: see [`Template::name_hash`]).
    salts: BTreeMap<u32, u32>,
}

/// Where every replica goes: the scheduler's part of a plan, shared between plans while its
/// inputs stay the same.
#[derive(Debug, Default)]
struct Assignment {
    placed: Vec<Placed>,
    /// Index into `placed` by workload id.
    by_workload: BTreeMap<String, usize>,
    /// Each node's replicas: (index into `placed`, ordinal).
    by_node: BTreeMap<NodeId, Vec<(usize, u32)>>,
    /// Node names, for pods' `spec.nodeName`.
    node_names: BTreeMap<NodeId, String>,
    /// Replicas no node can run.
    unschedulable: Vec<Unschedulable>,
}

/// The plan for the whole cluster.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    assignment: Arc<Assignment>,
    /// Workloads not planned at all.
    pub(crate) set_aside: Vec<SetAside>,
    /// When the plan may change with no change to the state (a pod becomes available after
    /// `minReadySeconds`): plan again then.
    pub(crate) next_change_ms: Option<u64>,
}

impl Plan {
    /// The pods `node` should run, in (workload, ordinal) order.
    pub(crate) fn pods_on<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = DesiredPod> + 'a {
        let node = *node;
        self.assignment
            .by_node
            .get(&node)
            .into_iter()
            .flatten()
            .map(move |&(i, ordinal)| self.desired(i, ordinal, node))
    }

    /// Every placed pod, in (workload, ordinal) order.
    pub(crate) fn pods(&self) -> impl Iterator<Item = DesiredPod> + '_ {
        self.assignment
            .placed
            .iter()
            .enumerate()
            .flat_map(move |(i, p)| {
                p.replicas
                    .iter()
                    .map(move |&(ordinal, node)| self.desired(i, ordinal, node))
            })
    }

    /// Whether two plans place every replica alike (the second reuses the first's
    /// assignment).
    pub(crate) fn same_assignment(&self, other: &Plan) -> bool {
        Arc::ptr_eq(&self.assignment, &other.assignment)
    }

    /// Replicas no node can run.
    pub(crate) fn unschedulable(&self) -> &[Unschedulable] {
        &self.assignment.unschedulable
    }

    /// The node a replica is placed on.
    pub(crate) fn node_of(&self, replica: &ReplicaRef) -> Option<&NodeId> {
        let a = &self.assignment;
        let placed = &a.placed[*a.by_workload.get(&replica.workload)?];
        let i = placed
            .replicas
            .binary_search_by_key(&replica.ordinal, |(o, _)| *o)
            .ok()?;
        Some(&placed.replicas[i].1)
    }

    /// Why an object is not planned, if it is set aside.
    pub(crate) fn set_aside_reason(&self, key: &ObjectKey) -> Option<&str> {
        self.set_aside
            .iter()
            .find(|s| s.key == *key)
            .map(|s| s.reason.as_str())
    }

    fn desired(&self, i: usize, ordinal: u32, node: NodeId) -> DesiredPod {
        let placed = &self.assignment.placed[i];
        placed.template.desired(
            ordinal,
            placed.salts.get(&ordinal).copied().unwrap_or(0),
            node,
            self.assignment.node_names.get(&node).cloned(),
        )
    }
}

/// The scheduler's name for a node.
pub(crate) fn sched_id(id: &NodeId) -> SchedNodeId {
    SchedNodeId::new(id.to_hex())
}

/// A template of a Deployment, or a bare Pod, as one scheduler workload.
#[derive(Debug)]
struct Template {
    id: WorkloadId,
    /// `id` as text (what [`ReplicaRef::workload`] holds).
    workload: String,
    namespace: String,
    deployment: Option<String>,
    template_hash: Option<String>,
    meta: ObjectMeta,
    spec: PodSpec,
    /// `spec` as JSON, serialised once for every pod's spec hash.
    spec_json: Vec<u8>,
    /// For a bare Pod: its own name (no suffix).
    bare: bool,
}

impl Template {
    fn new(
        id: WorkloadId,
        namespace: String,
        deployment: Option<(String, String)>,
        meta: ObjectMeta,
        spec: PodSpec,
    ) -> Template {
        let spec_json = serde_json::to_vec(&spec).unwrap_or_default();
        let bare = deployment.is_none();
        let (deployment, template_hash) = deployment.unzip();
        Template {
            workload: id.to_string(),
            id,
            namespace,
            deployment,
            template_hash,
            meta,
            spec,
            spec_json,
            bare,
        }
    }

    fn replica(&self, ordinal: u32) -> ReplicaRef {
        ReplicaRef {
            workload: self.workload.clone(),
            ordinal,
        }
    }

    /// The hash a replica's name suffix is made of: of the replica and its node, and of a
    /// salt when that name is taken by another replica of the template (5 characters of a
    /// 27-letter alphabet: two replicas of a 2,000-replica template share one about once in
    /// seven, so the planner salts the later one; salt 0 adds nothing).
    fn name_hash(&self, ordinal: u32, node: Option<&NodeId>, salt: u32) -> u64 {
        // Streamed: the same hash as of the parts put end to end, with nothing allocated.
        let mut hasher = Xxh3::new();
        hasher.update(self.workload.as_bytes());
        hasher.update(&ordinal.to_le_bytes());
        if let Some(node) = node {
            hasher.update(node.as_bytes());
        }
        if salt > 0 {
            hasher.update(&salt.to_le_bytes());
        }
        hasher.digest()
    }

    /// The pod for a replica on a node (`node: None` for a pod that is not placed), and its
    /// spec hash.
    fn pod(
        &self,
        replica: &ReplicaRef,
        salt: u32,
        node: Option<NodeId>,
        node_name: Option<String>,
    ) -> (Pod, String) {
        let name = if self.bare {
            self.id.name().to_owned()
        } else {
            format!(
                "{}-{}-{}",
                self.deployment.as_deref().unwrap_or_default(),
                self.template_hash.as_deref().unwrap_or_default(),
                safe_chars(self.name_hash(replica.ordinal, node.as_ref(), salt), 5)
            )
        };
        let mut meta = self.meta.clone();
        meta.name = name;
        meta.namespace = Some(self.namespace.clone());
        // The hash of the JSON of `(meta, spec)`, with the spec serialised once per template.
        let mut hasher = Xxh3::new();
        hasher.update(b"[");
        hasher.update(&serde_json::to_vec(&meta).unwrap_or_default());
        hasher.update(b",");
        hasher.update(&self.spec_json);
        hasher.update(b"]");
        let spec_hash = format!("{:016x}", hasher.digest());
        let mut spec = self.spec.clone();
        spec.node_name = node_name;
        (
            Pod {
                metadata: meta,
                spec,
            },
            spec_hash,
        )
    }

    fn desired(
        &self,
        ordinal: u32,
        salt: u32,
        node: NodeId,
        node_name: Option<String>,
    ) -> DesiredPod {
        let replica = self.replica(ordinal);
        let (mut pod, spec_hash) = self.pod(&replica, salt, Some(node), node_name);
        let mut seed =
            format!("{}/{}/{spec_hash}/", self.namespace, pod.metadata.name).into_bytes();
        seed.extend_from_slice(node.as_bytes());
        let uid = format!("{:016x}", xxh3_64(&seed));
        pod.metadata.uid = Some(uid.clone());
        DesiredPod {
            node,
            pod,
            replica,
            deployment: self.deployment.clone(),
            template_hash: self.template_hash.clone(),
            uid,
            spec_hash,
        }
    }
}

/// The limits the cluster plans with: the lowest any live member announces (defaults when none
/// does), so that members started with different limits plan alike.
pub(crate) fn cluster_limits(snapshot: &Snapshot) -> Limits {
    snapshot
        .members()
        .filter(|m| m.state.is_live())
        .filter_map(|m| m.info.as_ref()?.limits)
        .reduce(Limits::min)
        .unwrap_or_default()
}

/// How many replicas an object asks for (0 for kinds that run nothing).
pub(crate) fn asked_replicas(resource: &Resource) -> u32 {
    match resource {
        Resource::Deployment(d) => d.spec.replicas,
        Resource::Pod(_) => 1,
        Resource::Namespace(_)
        | Resource::Service(_)
        | Resource::ConfigMap(_)
        | Resource::Secret(_) => 0,
    }
}

/// Computes the plan from scratch. `forfeit`: a node whose running pods do not count as
/// running (a node that just came back, so that replicas already replaced elsewhere stay
/// there). `now_ms` decides which ready pods are available yet (`minReadySeconds`); the plan
/// says when that next changes ([`Plan::next_change_ms`]).
#[cfg(test)]
pub(crate) fn plan(snapshot: &Snapshot, forfeit: Option<&NodeId>, now_ms: u64) -> Arc<Plan> {
    Planner::default().plan(snapshot, forfeit, now_ms)
}

/// Plans from successive snapshots, redoing only what their changes concern; the result is
/// always the plan [`plan`] computes from scratch (a law the tests check).
///
/// What it keeps, per workload: the object it was derived from (compared by identity), the
/// rollout step with the revision of the Deployment's pods and of the members it was computed
/// from, and the templates (each built once, its spec serialised once). A change to one
/// Deployment's pods recomputes that Deployment's step only. Placement (the scheduler, the
/// part that grows with every replica of the cluster) runs again only when its inputs changed:
/// the members, which replicas nodes report running ([`super::snapshot::Revisions::running`]: not a pod's
/// readiness or restarts), or a workload's replicas (a new step, a new template, an object
/// added, changed or removed). Otherwise the last assignment is kept as it is (shared, not
/// copied). What it keeps per workload is dropped with the workload.
#[derive(Default)]
pub(crate) struct Planner {
    /// The workloads in creation order, at an objects' revision.
    order: Option<(u64, Workloads)>,
    derived: BTreeMap<ObjectKey, Derived>,
    running: RunningSets,
    /// The scheduler, keeping its hash ring while the members stay the same.
    placer: shoal_scheduler::Placer,
    /// The placement with nothing running, kept while the members and templates stay.
    fresh: Fresh,
    last: Option<Last>,
    /// How many plans, and how many of them ran the scheduler.
    pub(crate) plans: u64,
    pub(crate) placements: u64,
}

/// Workload objects in creation order.
type Workloads = Vec<(ObjectKey, Arc<Object>)>;

/// Ordinals of a template's replicas to place (shared: plans that keep a template keep them).
type Ordinals = Arc<[u32]>;

/// What the planner derived from one workload object.
struct Derived {
    object: Arc<Object>,
    /// A Deployment's records' and the members' revisions the step was computed from, and
    /// when it changes by itself (a pod becoming available).
    records_revision: u64,
    members_revision: u64,
    next_change_ms: Option<u64>,
    /// Templates with the ordinals to place (the rollout step).
    templates: Vec<(Arc<Template>, Ordinals)>,
    /// The plan that last saw its workload (what no plan saw any more is dropped).
    seen: u64,
}

/// The placement of the templates on the members with nothing running: where replicas that
/// run nowhere yet count as running (see [`assign`]). Placed again only when the members or
/// the templates change, not when pods start and stop.
#[derive(Default)]
struct Fresh {
    members_revision: u64,
    templates: Vec<(Arc<Template>, Ordinals)>,
    placement: Option<Option<shoal_scheduler::Placement>>,
}

impl Fresh {
    fn get_or_place(
        &mut self,
        members_revision: u64,
        templates: &[(Arc<Template>, Ordinals)],
        place: impl FnOnce() -> Option<shoal_scheduler::Placement>,
    ) -> Option<&shoal_scheduler::Placement> {
        let same = self.placement.is_some()
            && self.members_revision == members_revision
            && same_templates(&self.templates, templates);
        if !same {
            self.placement = Some(place());
            self.members_revision = members_revision;
            self.templates = templates.to_vec();
        }
        self.placement.as_ref().and_then(Option::as_ref)
    }
}

/// Whether two lists of templates are the same templates with the same ordinals.
fn same_templates(a: &[(Arc<Template>, Ordinals)], b: &[(Arc<Template>, Ordinals)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((a, x), (b, y))| Arc::ptr_eq(a, b) && x == y)
}

/// The inputs of the last placement, and its result.
struct Last {
    members_revision: u64,
    running_revision: u64,
    forfeit: Option<NodeId>,
    templates: Vec<(Arc<Template>, Ordinals)>,
    assignment: Arc<Assignment>,
}

impl Planner {
    /// The plan for `snapshot` (see [`plan`]).
    pub(crate) fn plan(
        &mut self,
        snapshot: &Snapshot,
        forfeit: Option<&NodeId>,
        now_ms: u64,
    ) -> Arc<Plan> {
        self.plans += 1;
        let revisions = snapshot.revisions();
        let limits = cluster_limits(snapshot);
        let mut out = Plan::default();

        // Workloads in creation order (sorted again only when objects changed), within the
        // limits.
        if self
            .order
            .as_ref()
            .is_none_or(|(r, _)| *r != revisions.objects)
        {
            let mut workloads: Vec<(ObjectKey, Arc<Object>)> = snapshot
                .shared_objects()
                .filter(|(_, o)| asked_replicas(&o.resource) > 0)
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            workloads
                .sort_by(|a, b| (a.1.stored.created_ms, &a.0).cmp(&(b.1.stored.created_ms, &b.0)));
            self.order = Some((revisions.objects, workloads));
        }
        let order = self.order.take().unwrap_or_default();
        let mut asked: u64 = 0;
        let mut templates: Vec<(Arc<Template>, Ordinals)> = Vec::new();
        for (key, object) in &order.1 {
            let replicas = asked_replicas(&object.resource);
            if let Some(reason) = limits.refusal(replicas, asked) {
                out.set_aside.push(SetAside {
                    key: key.clone(),
                    reason,
                });
                continue;
            }
            asked += u64::from(replicas);
            let fresh = derive(
                self.derived.get(key),
                key,
                object,
                snapshot,
                revisions.members,
                now_ms,
            );
            let d = match (fresh, self.derived.get_mut(key)) {
                (Some(fresh), Some(slot)) => {
                    *slot = fresh;
                    slot
                }
                (None, Some(slot)) => slot,
                (Some(fresh), None) => self.derived.entry(key.clone()).or_insert(fresh),
                (None, None) => continue,
            };
            d.seen = self.plans;
            if let Some(at) = d.next_change_ms {
                out.next_change_ms = Some(out.next_change_ms.map_or(at, |t| t.min(at)));
            }
            templates.extend(d.templates.iter().cloned());
        }
        self.order = Some(order);
        // Whatever was derived from workloads that went is dropped here.
        let plans = self.plans;
        self.derived.retain(|_, d| d.seen == plans);

        let forfeit = forfeit.copied();
        let unchanged = self.last.as_ref().is_some_and(|last| {
            last.members_revision == revisions.members
                && last.running_revision == revisions.running
                && last.forfeit == forfeit
                && same_templates(&last.templates, &templates)
        });
        out.assignment = match &self.last {
            Some(last) if unchanged => last.assignment.clone(),
            _ => {
                self.placements += 1;
                let assignment = Arc::new(assign(
                    snapshot,
                    forfeit.as_ref(),
                    &templates,
                    &mut self.running,
                    &mut self.placer,
                    (revisions.members, &mut self.fresh),
                ));
                self.last = Some(Last {
                    members_revision: revisions.members,
                    running_revision: revisions.running,
                    forfeit,
                    templates,
                    assignment: assignment.clone(),
                });
                assignment
            }
        };
        Arc::new(out)
    }
}

/// What to plan of one workload object, or `None` when `old` still holds.
fn derive(
    old: Option<&Derived>,
    key: &ObjectKey,
    object: &Arc<Object>,
    snapshot: &Snapshot,
    members_revision: u64,
    now_ms: u64,
) -> Option<Derived> {
    let same_object = old.is_some_and(|o| Arc::ptr_eq(&o.object, object));
    if let Some((d, hash)) = object.deployment() {
        let records_revision = snapshot.deployment_revision(key);
        let holds = old.is_some_and(|o| {
            same_object
                && o.records_revision == records_revision
                && o.members_revision == members_revision
                && o.next_change_ms.is_none_or(|at| now_ms < at)
        });
        if holds {
            return None;
        }
        let mut next_change_ms = None;
        let step = rollout_with(d, hash, snapshot, now_ms, &mut next_change_ms);
        // Templates already built are kept (a template is its hash: the same spec).
        let mut built: BTreeMap<String, Arc<Template>> = BTreeMap::new();
        if let Some(old) = old {
            for (template, _) in &old.templates {
                if let Some(h) = &template.template_hash {
                    if same_object || h != hash {
                        built.insert(h.clone(), template.clone());
                    }
                }
            }
        }
        let mut template_of = |h: &str, make: &dyn Fn() -> Option<PodTemplateSpec>| {
            if let Some(t) = built.remove(h) {
                return Some(t);
            }
            make()
                .and_then(|spec| deployment_template(d, h, &spec))
                .map(Arc::new)
        };
        let mut templates = Vec::new();
        if let Some(t) = template_of(hash, &|| Some(d.spec.template.clone())) {
            templates.push((t, (0..step.new_count).collect()));
        }
        for (old_hash, ordinals) in &step.old {
            if let Some(t) = template_of(old_hash, &|| old_template(d, old_hash, snapshot)) {
                templates.push((t, ordinals.as_slice().into()));
            }
        }
        // The same step as before keeps its ordinals (and the assignment that used them).
        if let Some(old) = old {
            for ((t, ordinals), (old_t, old_ordinals)) in templates.iter_mut().zip(&old.templates) {
                if Arc::ptr_eq(t, old_t) && ordinals == old_ordinals {
                    *ordinals = old_ordinals.clone();
                }
            }
        }
        return Some(Derived {
            object: object.clone(),
            records_revision,
            members_revision,
            next_change_ms,
            templates,
            seen: 0,
        });
    }
    if same_object {
        return None;
    }
    let mut templates = Vec::new();
    if let Resource::Pod(p) = &object.resource {
        let namespace = p.metadata.namespace.as_deref().unwrap_or("default");
        if let Ok(id) = WorkloadId::new("pod", namespace, &p.metadata.name) {
            let template = Template::new(
                id,
                namespace.to_owned(),
                None,
                p.metadata.clone(),
                p.spec.clone(),
            );
            templates.push((Arc::new(template), Arc::from([0u32])));
        }
    }
    Some(Derived {
        object: object.clone(),
        records_revision: 0,
        members_revision,
        next_change_ms: None,
        templates,
        seen: 0,
    })
}

/// Places the templates' replicas on the live members: the scheduler's part of the plan.
/// The replicas each node reports running, as the scheduler names them, with the revision of
/// that node's running set they were read at ([`Snapshot::running_revision`]).
type RunningSets = BTreeMap<NodeId, (u64, BTreeSet<ReplicaId>)>;

fn assign(
    snapshot: &Snapshot,
    forfeit: Option<&NodeId>,
    templates: &[(Arc<Template>, Ordinals)],
    running: &mut RunningSets,
    placer: &mut shoal_scheduler::Placer,
    (members_revision, ideal): (u64, &mut Fresh),
) -> Assignment {
    let mut out = Assignment::default();
    // The cluster as the scheduler sees it. Ids are made once (per member, per template) and
    // shared, not made again for every replica; a node's running set is read again only when
    // it changed.
    let sched_ids: BTreeMap<NodeId, SchedNodeId> = snapshot
        .members()
        .map(|m| (m.id, sched_id(&m.id)))
        .collect();
    let workload_ids: BTreeMap<&str, &WorkloadId> = templates
        .iter()
        .map(|(t, _)| (t.workload.as_str(), &t.id))
        .collect();
    running.retain(|id, _| snapshot.member(id).is_some());
    for m in snapshot.members() {
        let revision = snapshot.running_revision(&m.id);
        if running.get(&m.id).is_some_and(|(r, _)| *r == revision) {
            continue;
        }
        let mut set = BTreeSet::new();
        for (_, record) in snapshot.records_of(&m.id) {
            if record.is_finished() {
                continue;
            }
            let replica = match workload_ids.get(record.replica.workload.as_str()) {
                Some(id) => id.replica(record.replica.ordinal),
                None => match replica_id(&record.replica) {
                    Some(replica) => replica,
                    None => continue,
                },
            };
            set.insert(replica);
        }
        running.insert(m.id, (revision, set));
    }
    let mut running_on: Vec<Option<&BTreeSet<ReplicaId>>> = Vec::new();
    let nodes: Vec<SchedNode> = snapshot
        .members()
        .filter_map(|m| {
            let info = m.info.as_ref()?;
            let status = match m.state {
                MemberState::Alive => NodeStatus::Alive,
                MemberState::Suspect => NodeStatus::Suspect,
                MemberState::Dead => NodeStatus::Dead,
                MemberState::Left => NodeStatus::Left,
            };
            let id = sched_ids.get(&m.id)?.clone();
            let mut node = SchedNode::new(
                id,
                Resources {
                    cpu_millis: info.cpu_millis,
                    memory_bytes: info.memory_bytes,
                },
            )
            .with_status(status);
            for (k, v) in &info.labels {
                node = node.with_label(k.clone(), v.clone());
            }
            // What a dead or departed node reported no longer runs; a node that forfeits its
            // pods has none running.
            running_on.push(
                (m.state.is_live() && Some(&m.id) != forfeit)
                    .then(|| running.get(&m.id).map(|(_, set)| set))
                    .flatten(),
            );
            Some(node)
        })
        .collect();
    let scheduled: Vec<Workload> = templates
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
    // While everything that runs is where the placement from nothing running puts it,
    // replicas that run nowhere yet count as running there too. Without this, replicas placed
    // while others of the same plan are still starting land elsewhere than the plan from
    // scratch put them (the bound on each node's load is met in another order), and pods
    // start on one node only to move to another: a placement made while a cluster comes up,
    // or from part of the pods' records, would not be the one made once they all run. With
    // it, a cluster that starts what one plan gave it keeps that plan while the starts are
    // reported. Once something runs elsewhere (after a failure), the placement from scratch
    // is no longer what runs, and replicas are placed around what does.
    let fresh = ideal.get_or_place(members_revision, templates, || {
        let empty = ClusterView::new(nodes.clone()).ok()?;
        Some(placer.place(&empty, &scheduled, shoal_scheduler::Options::default()))
    });
    let runs_somewhere: std::collections::HashSet<&ReplicaId> = running_on
        .iter()
        .flatten()
        .flat_map(|set| set.iter())
        .collect();
    let mut seeded: std::collections::HashMap<&str, Vec<ReplicaId>> =
        std::collections::HashMap::new();
    let fresh = fresh.filter(|fresh| {
        nodes.iter().zip(&running_on).all(|(node, running)| {
            running
                .iter()
                .flat_map(|set| set.iter())
                .all(|replica| fresh.node_of(replica) == Some(&node.id))
        })
    });
    if let Some(fresh) = fresh {
        for (template, ordinals) in templates {
            let Some(decisions) = fresh.workload(&template.id) else {
                continue;
            };
            for &ordinal in ordinals.iter() {
                if let Some(Decision::Run { node, .. }) = decisions.get(&ordinal) {
                    let replica = template.id.replica(ordinal);
                    if !runs_somewhere.contains(&replica) {
                        seeded.entry(node.as_str()).or_default().push(replica);
                    }
                }
            }
        }
    }
    let nodes: Vec<SchedNode> = nodes
        .into_iter()
        .zip(&running_on)
        .map(|(mut node, running)| {
            let mut set = running.cloned().unwrap_or_default();
            if let Some(extra) = seeded.remove(node.id.as_str()) {
                set.extend(extra);
            }
            node.running = set;
            node
        })
        .collect();
    drop(runs_somewhere);
    let Ok(view) = ClusterView::new(nodes) else {
        return out;
    };
    let placement = placer.place(&view, &scheduled, shoal_scheduler::Options::default());
    drop(scheduled);
    let by_sched_id: std::collections::HashMap<&str, NodeId, Xxh3DefaultBuilder> = sched_ids
        .iter()
        .map(|(id, sched)| (sched.as_str(), *id))
        .collect();
    out.node_names = snapshot.members().map(|m| (m.id, m.name.clone())).collect();
    let mut by_node: std::collections::HashMap<NodeId, Vec<(usize, u32)>, Xxh3DefaultBuilder> =
        std::collections::HashMap::default();
    for (template, ordinals) in templates {
        let mut replicas = Vec::new();
        let mut unschedulable: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let decisions = placement.workload(&template.id);
        let mut last_reason: Option<(&shoal_scheduler::Reason, String)> = None;
        for &ordinal in ordinals.iter() {
            match decisions.and_then(|d| d.get(&ordinal)) {
                Some(Decision::Run { node, .. }) => {
                    if let Some(node) = by_sched_id.get(node.as_str()) {
                        replicas.push((ordinal, *node));
                    }
                }
                Some(Decision::Unschedulable(reason)) => {
                    // Replicas of one template mostly share one reason: it is written out
                    // once, not once per replica.
                    let text = match last_reason {
                        Some((last, ref text)) if last == reason => text,
                        _ => &last_reason.insert((reason, reason.to_string())).1,
                    };
                    match unschedulable.get_mut(text) {
                        Some(ordinals) => ordinals.push(ordinal),
                        None => {
                            unschedulable.insert(text.clone(), vec![ordinal]);
                        }
                    }
                }
                None => {}
            }
        }
        for (reason, ordinals) in unschedulable {
            out.unschedulable.push(Unschedulable {
                template: template.clone(),
                ordinals,
                reason,
            });
        }
        if replicas.is_empty() {
            continue;
        }
        replicas.sort_unstable();
        // Names unique within the template: a replica whose suffix another one (of a lower
        // ordinal) has is salted until it is free.
        let mut salts = BTreeMap::new();
        if !template.bare {
            const SUFFIXES: u64 = 27u64.pow(5);
            let mut taken = std::collections::HashSet::with_capacity_and_hasher(
                replicas.len(),
                Xxh3DefaultBuilder,
            );
            for &(ordinal, node) in &replicas {
                let mut salt = 0;
                while !taken.insert(template.name_hash(ordinal, Some(&node), salt) % SUFFIXES) {
                    salt += 1;
                }
                if salt > 0 {
                    salts.insert(ordinal, salt);
                }
            }
        }
        let i = out.placed.len();
        for &(ordinal, node) in &replicas {
            by_node.entry(node).or_default().push((i, ordinal));
        }
        out.by_workload.insert(template.workload.clone(), i);
        out.placed.push(Placed {
            template: template.clone(),
            replicas,
            salts,
        });
    }
    // Each node's replicas were pushed in (template, ordinal) order.
    out.by_node = by_node.into_iter().collect();
    out
}

/// The scheduler's replica id of a record's replica.
fn replica_id(replica: &ReplicaRef) -> Option<ReplicaId> {
    let id: WorkloadId = replica.workload.parse().ok()?;
    Some(id.replica(replica.ordinal))
}

/// A Deployment's template as a scheduler workload (`None` for names no workload id can
/// carry, which validation keeps out of the stored state).
fn deployment_template(d: &Deployment, hash: &str, template: &PodTemplateSpec) -> Option<Template> {
    let namespace = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| crate::manifest::DEFAULT_NAMESPACE.into());
    let name = &d.metadata.name;
    let id = WorkloadId::new("deployment", &namespace, format!("{name}-{hash}")).ok()?;
    let mut meta = ObjectMeta {
        name: String::new(),
        namespace: Some(namespace.clone()),
        labels: template.metadata.labels.clone(),
        annotations: template.metadata.annotations.clone(),
        ..ObjectMeta::default()
    };
    meta.labels
        .insert("pod-template-hash".into(), hash.to_owned());
    Some(Template::new(
        id,
        namespace,
        Some((name.clone(), hash.to_owned())),
        meta,
        template.spec.clone(),
    ))
}

/// The template of an older revision still running, from the pods that run it.
fn old_template(d: &Deployment, hash: &str, snapshot: &Snapshot) -> Option<PodTemplateSpec> {
    deployment_records(d, snapshot)
        .filter(|(_, h, _)| *h == hash)
        .map(|(_, _, r)| r)
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

/// A Deployment's pods as the live nodes report them, finished ones left out: (node,
/// pod-template-hash, record).
fn deployment_records<'a>(
    d: &'a Deployment,
    snapshot: &'a Snapshot,
) -> impl Iterator<Item = (&'a NodeId, &'a str, &'a PodRecord)> {
    let namespace = d.metadata.namespace.as_deref().unwrap_or("default");
    snapshot
        .deployment_records(namespace, &d.metadata.name)
        .filter_map(|(node, record)| {
            if record.is_finished() {
                return None;
            }
            let hash = record.template_hash.as_deref()?;
            Some((node, hash, record))
        })
}

/// The node of each (pod-template-hash, ordinal).
type ReplicaNodes<'a> = BTreeMap<(&'a str, u32), NodeId>;
/// How many pods each node runs.
type NodeLoads = BTreeMap<NodeId, u32>;

/// Where each of a Deployment's replicas runs, by (pod-template-hash, ordinal), and how many
/// of its pods each node runs.
fn replica_nodes<'a>(d: &'a Deployment, snapshot: &'a Snapshot) -> (ReplicaNodes<'a>, NodeLoads) {
    let mut nodes = BTreeMap::new();
    let mut load: BTreeMap<NodeId, u32> = BTreeMap::new();
    for (node, hash, record) in deployment_records(d, snapshot) {
        // A replica reported by two nodes (a hand-off): the lower node id, as everywhere.
        nodes
            .entry((hash, record.replica.ordinal))
            .and_modify(|n: &mut NodeId| *n = (*n).min(*node))
            .or_insert(*node);
        *load.entry(*node).or_default() += 1;
    }
    (nodes, load)
}

/// A Deployment's pods, as the live nodes report them, by template hash: each replica
/// (ordinal; a replica running twice during a handoff counts once) and whether it is ready.
fn replicas_by_template<'a>(
    d: &'a Deployment,
    snapshot: &'a Snapshot,
    now_ms: u64,
    next_change_ms: &mut Option<u64>,
) -> BTreeMap<&'a str, BTreeMap<u32, bool>> {
    let min_ready_ms = u64::from(d.spec.min_ready_seconds) * 1000;
    let mut replicas: BTreeMap<&str, BTreeMap<u32, bool>> = BTreeMap::new();
    for (_, hash, record) in deployment_records(d, snapshot) {
        // A pod being stopped is on its way out: it counts neither toward the pods a rollout
        // keeps nor toward its surge (as in Kubernetes).
        if record.pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let available = replicas
            .entry(hash)
            .or_default()
            .entry(record.replica.ordinal)
            .or_insert(false);
        *available |= record.is_available(min_ready_ms, now_ms);
        if let Some(at) = record.available_at(min_ready_ms, now_ms) {
            *next_change_ms = Some(next_change_ms.map_or(at, |t| t.min(at)));
        }
    }
    replicas
}

/// How many pods of each template a Deployment should have now.
///
/// - No old pods: `replicas` of the current template.
/// - RollingUpdate with `(surge, unavailable)` resolved from the spec: new pods up to
///   `replicas + surge - old pods`; of the old pods, only available ones are kept (ready for
///   `minReadySeconds`, [`PodRecord::is_available`]), and only as many as are needed to keep
///   `replicas - unavailable` available given the new pods already available
///   (lowest ordinals first, templates with most ready pods first, ties by hash, so every node
///   keeps the same ones).
/// - Recreate: no new pods until every old pod is gone.
/// - Paused: nothing moves (new pods as they are, every old pod kept).
pub(crate) fn rollout(d: &Deployment, snapshot: &Snapshot, now_ms: u64) -> RolloutStep {
    rollout_with(d, &d.pod_template_hash(), snapshot, now_ms, &mut None)
}

/// [`rollout`], with the Deployment's current pod-template-hash already computed; lowers
/// `next_change_ms` to when a pod that counts becomes available.
fn rollout_with(
    d: &Deployment,
    current: &str,
    snapshot: &Snapshot,
    now_ms: u64,
    next_change_ms: &mut Option<u64>,
) -> RolloutStep {
    let replicas = d.spec.replicas;
    let by_template = replicas_by_template(d, snapshot, now_ms, next_change_ms);
    let count = |ordinals: &BTreeMap<u32, bool>| ordinals.len() as u32;
    let ready = |ordinals: &BTreeMap<u32, bool>| ordinals.values().filter(|r| **r).count() as u32;
    let (new_existing, new_ready) = by_template
        .get(current)
        .map(|o| (count(o), ready(o)))
        .unwrap_or((0, 0));
    let old: Vec<(&str, &BTreeMap<u32, bool>)> = by_template
        .iter()
        .filter(|(h, _)| **h != current)
        .map(|(h, o)| (*h, o))
        .collect();
    let old_total: u32 = old.iter().map(|(_, o)| count(o)).sum();
    // Recreate waits until every old pod is gone, those being stopped included.
    if !d.spec.paused
        && matches!(d.spec.strategy, DeploymentStrategy::Recreate)
        && deployment_records(d, snapshot).any(|(_, hash, _)| hash != current)
    {
        return RolloutStep {
            new_count: 0,
            old: BTreeMap::new(),
        };
    }
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
                .map(|(h, o)| (h.to_owned(), o.keys().copied().collect()))
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
            // The ready old pods by node (`None`: not found on any node), each node's sorted
            // so that the last is the one to retire first.
            let mut by_node: BTreeMap<Option<NodeId>, Vec<(&str, u32)>> = BTreeMap::new();
            for (hash, ordinals) in &old {
                for (ordinal, ready) in ordinals.iter() {
                    let node = nodes.get(&(*hash, *ordinal)).copied();
                    if *ready {
                        by_node.entry(node).or_default().push((hash, *ordinal));
                    } else if let Some(n) = node.and_then(|n| load.get_mut(&n)) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            let candidates: usize = by_node.values().map(Vec::len).sum();
            let retire = candidates.saturating_sub(keep as usize);
            // Each time, the pod with the highest (load of its node, hash, ordinal) retires;
            // a heap holds each node's next one, with its node's load.
            let load_of = |node: &Option<NodeId>, load: &BTreeMap<NodeId, u32>| {
                node.and_then(|n| load.get(&n).copied()).unwrap_or(0)
            };
            let mut heap = std::collections::BinaryHeap::new();
            for (node, pods) in by_node.iter_mut() {
                pods.sort_unstable();
                if let Some((hash, ordinal)) = pods.last() {
                    heap.push((load_of(node, &load), *hash, *ordinal, *node));
                }
            }
            for _ in 0..retire {
                let Some((_, _, _, node)) = heap.pop() else {
                    break;
                };
                let Some(pods) = by_node.get_mut(&node) else {
                    break;
                };
                pods.pop();
                if let Some(n) = node.and_then(|n| load.get_mut(&n)) {
                    *n = n.saturating_sub(1);
                }
                if let Some((hash, ordinal)) = pods.last() {
                    heap.push((load_of(&node, &load), *hash, *ordinal, node));
                }
            }
            let mut step: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for (hash, ordinal) in by_node.into_values().flatten() {
                step.entry(hash.to_owned()).or_default().push(ordinal);
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
