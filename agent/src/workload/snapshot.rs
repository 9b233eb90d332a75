//! The workload snapshot: the part of the replicated state that workloads depend on (members
//! with their node info, applied objects, the pods nodes report), **decoded once per change**.
//!
//! The projector task ([`super::projector`]) keeps one up to date from the store's changes and
//! publishes it as an immutable value (`watch<Arc<Snapshot>>`). Its maps are persistent
//! (`imbl`'s B-trees with structural sharing), so publishing a new snapshot after a change
//! copies O(log n) nodes, not the state, and readers can hold old snapshots for as long as they
//! like. Indexes (a deployment's pods) are maintained with the same changes, so a reader looks
//! at a workload's pods without scanning every pod of the cluster.
//!
//! Invariant: a snapshot's content is a function of the entries applied to it, whatever their
//! order; iteration is in key order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use imbl::{OrdMap, OrdSet};
use shoal_gossip::{MemberState, NodeId, ObjectKey};

use super::stored::{PodRecord, StoredObject, object_key};
use crate::manifest::{Kind, Resource, StoredError};
use crate::node_info::NodeInfo;

/// A member as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MemberSnap {
    pub(crate) id: NodeId,
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) state: MemberState,
    pub(crate) info: Option<NodeInfo>,
}

/// An applied object: as stored, and its resource decoded.
#[derive(Clone, Debug)]
pub(crate) struct Object {
    pub(crate) stored: StoredObject,
    /// The resource, with its read-only metadata (uid, generation, creation time) set.
    pub(crate) resource: Resource,
    /// A Deployment's pod-template-hash (computed once, at decoding).
    template_hash: Option<String>,
}

impl Object {
    /// Decodes a stored object's resource.
    pub(crate) fn new(stored: StoredObject) -> Result<Object, StoredError> {
        let resource = stored.resource()?;
        let template_hash = match &resource {
            Resource::Deployment(d) => Some(d.pod_template_hash()),
            _ => None,
        };
        Ok(Object {
            stored,
            resource,
            template_hash,
        })
    }

    /// The Deployment and its pod-template-hash, if the object is one.
    pub(crate) fn deployment(&self) -> Option<(&crate::manifest::Deployment, &str)> {
        match (&self.resource, &self.template_hash) {
            (Resource::Deployment(d), Some(hash)) => Some((d, hash)),
            _ => None,
        }
    }
}

/// A pod record's place: the reporting node and the record's owned-entry name.
pub(crate) type RecordKey = (NodeId, String);

/// Revisions of parts of a snapshot, for readers that derive values from it and want to know
/// what changed since they last looked ([`super::plan::Planner`]).
///
/// Every change takes a fresh number from one counter of the whole process, so equal
/// revisions mean the same change: two snapshots with an equal revision of a part hold the
/// same content in that part, even if they were built apart (0 is the empty part).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Revisions {
    /// Members and their node info.
    pub(crate) members: u64,
    /// Objects.
    pub(crate) objects: u64,
    /// Which replicas nodes report running (records added or removed, finished or not): a
    /// status change of a running pod leaves it alone.
    pub(crate) running: u64,
}

/// A fresh revision number.
fn next_revision() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The part of the replicated state that workloads depend on.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Raised by every change published (0 for a snapshot built by hand).
    pub(crate) version: u64,
    revisions: Revisions,
    members: OrdMap<NodeId, MemberSnap>,
    /// Applied objects of the workload kinds, tombstones excluded.
    objects: OrdMap<ObjectKey, Arc<Object>>,
    /// Pods nodes report, by (node, record name).
    records: OrdMap<RecordKey, Arc<PodRecord>>,
    /// The records of each Deployment's pods, by (namespace, deployment name), and the
    /// revision of the last change to any of them.
    /// The revision of the last change to each node's running replicas.
    running_revisions: OrdMap<NodeId, u64>,
    /// The key is the Deployment's object key.
    by_deployment: OrdMap<ObjectKey, (u64, OrdMap<RecordKey, Arc<PodRecord>>)>,
    /// Members this agent has not heard from since it started: all it knows of them (their
    /// state, their records) was restored from before the restart. Empty in snapshots built
    /// by hand. Not part of any revision: the planner does not look at it.
    unheard: OrdSet<NodeId>,
}

/// Which pod records count as pods that run, for what the API shows (`get pods`, a
/// Deployment's ready counts). A record counts when its node is live (alive or suspect), this
/// agent has heard from the node since it started (or it is this node), and the record was
/// written by the node's current run: the highest run its node info or any of its records
/// carries. So a node's records from before its agent restarted are superseded by anything of
/// the new run, and what a restarted agent restored of its peers counts only once they speak.
/// The planner reads every live record (a restored record still says where a replica was
/// placed); only what is shown as running is held to this rule.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counted {
    /// The current run of each node that says one.
    runs: std::collections::BTreeMap<NodeId, u64>,
}

impl Counted {
    /// Whether `node`'s record counts as a pod that runs (see [`Counted`]).
    pub(crate) fn counts(&self, snapshot: &Snapshot, node: &NodeId, record: &PodRecord) -> bool {
        snapshot.is_live(node)
            && !snapshot.unheard.contains(node)
            && record.run >= self.runs.get(node).copied().unwrap_or(0)
    }
}

impl Snapshot {
    /// A snapshot of these members, objects and records (for tests, and views built from a
    /// fresh read of the store). Objects whose resource does not decode are left out.
    #[cfg(test)]
    pub(crate) fn new(
        members: Vec<MemberSnap>,
        objects: Vec<(ObjectKey, StoredObject)>,
        records: Vec<(NodeId, PodRecord)>,
    ) -> Snapshot {
        let mut out = Snapshot::default();
        out.set_members(members);
        for (key, stored) in objects {
            out.set_object(key, Object::new(stored).ok());
        }
        for (node, record) in records {
            let name = super::stored::record_name(
                record
                    .pod
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or("default"),
                &record.pod.metadata.name,
            );
            out.set_record(node, name, Some(record));
        }
        out
    }

    // --- members ---

    /// Members (this node included), by id.
    pub(crate) fn members(&self) -> impl Iterator<Item = &MemberSnap> {
        self.members.values()
    }

    /// How many members the snapshot knows (dead and departed ones included).
    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The member with this id.
    pub(crate) fn member(&self, id: &NodeId) -> Option<&MemberSnap> {
        self.members.get(id)
    }

    /// Whether a node is alive or suspect (it keeps running its pods).
    pub(crate) fn is_live(&self, id: &NodeId) -> bool {
        self.member(id).is_some_and(|m| m.state.is_live())
    }

    /// Replaces the members.
    pub(crate) fn set_members(&mut self, members: impl IntoIterator<Item = MemberSnap>) {
        self.members = members.into_iter().map(|m| (m.id, m)).collect();
        self.revisions.members = next_revision();
    }

    /// Sets one member's node info.
    pub(crate) fn set_info(&mut self, id: &NodeId, info: Option<NodeInfo>) {
        if let Some(member) = self.members.get_mut(id) {
            member.info = info;
            self.revisions.members = next_revision();
        }
    }

    /// The revisions of the snapshot's parts.
    pub(crate) fn revisions(&self) -> Revisions {
        self.revisions
    }

    // --- objects ---

    /// Every applied object, in key order.
    pub(crate) fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Object)> {
        self.objects.iter().map(|(k, o)| (k, &**o))
    }

    /// Every applied object as shared, in key order (a reader may keep one to tell later
    /// whether it is still the same value: [`Arc::ptr_eq`]).
    pub(crate) fn shared_objects(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<Object>)> {
        self.objects.iter()
    }

    /// The applied object at `key`, if any.
    pub(crate) fn object(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.objects.get(key)
    }

    /// The applied objects of one kind (its store name: `deployment`, `service` ...), in key
    /// order.
    pub(crate) fn objects_of<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Object)> + 'a {
        let start = ObjectKey {
            kind: kind.to_owned(),
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(k, o)| (k, &**o))
    }

    /// Sets (or with `None` removes) an object.
    pub(crate) fn set_object(&mut self, key: ObjectKey, object: Option<Object>) {
        self.revisions.objects = next_revision();
        match object {
            Some(object) => {
                self.objects.insert(key, Arc::new(object));
            }
            None => {
                self.objects.remove(&key);
            }
        }
    }

    /// Sets (or with `None` removes) an object already decoded and shared (its identity lets
    /// readers tell it is the same value).
    pub(crate) fn set_shared_object(&mut self, key: ObjectKey, object: Option<Arc<Object>>) {
        self.revisions.objects = next_revision();
        match object {
            Some(object) => {
                self.objects.insert(key, object);
            }
            None => {
                self.objects.remove(&key);
            }
        }
    }

    /// Takes the members of `other`, with their revision (a snapshot assembled from parts
    /// kept apart, as a simulation does).
    pub(crate) fn share_members(&mut self, other: &Snapshot) {
        self.members = other.members.clone();
        self.revisions.members = other.revisions.members;
    }

    /// Takes the objects of `other`, with their revision.
    pub(crate) fn share_objects(&mut self, other: &Snapshot) {
        self.objects = other.objects.clone();
        self.revisions.objects = other.revisions.objects;
    }

    /// Replaces every object of `kind` with `listed` (a fresh read of the store).
    pub(crate) fn with_objects(
        &self,
        kind: &str,
        listed: Vec<(ObjectKey, StoredObject)>,
    ) -> Snapshot {
        let mut out = self.clone();
        out.revisions.objects = next_revision();
        let keys: Vec<ObjectKey> = out.objects_of(kind).map(|(k, _)| k.clone()).collect();
        for key in keys {
            out.objects.remove(&key);
        }
        for (key, stored) in listed.into_iter().filter(|(k, _)| k.kind == kind) {
            out.set_object(key, Object::new(stored).ok());
        }
        out
    }

    // --- pod records ---

    /// Every pod record, with its reporting node, in (node, name) order.
    pub(crate) fn records(&self) -> impl Iterator<Item = (&NodeId, &PodRecord)> {
        self.records.iter().map(|((n, _), r)| (n, &**r))
    }

    /// How many pod records the snapshot holds.
    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    /// What counts of the records now ([`Counted`]): one pass over the records.
    pub(crate) fn counted(&self) -> Counted {
        let mut runs = std::collections::BTreeMap::new();
        for m in self.members.values() {
            if let Some(info) = &m.info {
                runs.insert(m.id, info.run);
            }
        }
        for ((node, _), record) in self.records.iter() {
            let run = runs.entry(*node).or_insert(0);
            *run = (*run).max(record.run);
        }
        Counted { runs }
    }

    /// The records that count as pods that run ([`Counted`]), in (node, name) order.
    pub(crate) fn counted_records<'a>(
        &'a self,
        counted: &'a Counted,
    ) -> impl Iterator<Item = (&'a NodeId, &'a PodRecord)> + 'a {
        self.records()
            .filter(move |(n, r)| counted.counts(self, n, r))
    }

    /// Marks the members this agent has not heard from since it started ([`Counted`]).
    pub(crate) fn set_unheard(&mut self, ids: impl IntoIterator<Item = NodeId>) {
        self.unheard = ids.into_iter().collect();
    }

    /// This agent heard from `id`.
    pub(crate) fn set_heard(&mut self, id: &NodeId) {
        self.unheard.remove(id);
    }

    /// Records of live nodes only: what a dead or departed node reported no longer runs.
    pub(crate) fn live_records(&self) -> impl Iterator<Item = (&NodeId, &PodRecord)> {
        self.records().filter(|(n, _)| self.is_live(n))
    }

    /// The records one node reports, by record name.
    pub(crate) fn records_of<'a>(
        &'a self,
        node: &'a NodeId,
    ) -> impl Iterator<Item = (&'a str, &'a PodRecord)> + 'a {
        self.records
            .range((*node, String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|((_, name), r)| (name.as_str(), &**r))
    }

    /// The revision of the last change to the replicas a node reports running (0: it never
    /// reported any).
    pub(crate) fn running_revision(&self, node: &NodeId) -> u64 {
        self.running_revisions.get(node).copied().unwrap_or(0)
    }

    /// The record a node reports under this name.
    pub(crate) fn record(&self, node: &NodeId, name: &str) -> Option<&PodRecord> {
        self.records.get(&(*node, name.to_owned())).map(|r| &**r)
    }

    /// The records of a Deployment's pods on live nodes.
    pub(crate) fn deployment_records<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = (&'a NodeId, &'a PodRecord)> + 'a {
        self.by_deployment
            .get(&object_key(Kind::Deployment, namespace, name))
            .into_iter()
            .flat_map(|(_, records)| records.iter())
            .filter(|((n, _), _)| self.is_live(n))
            .map(|((n, _), r)| (n, &**r))
    }

    /// The revision of the last change to a Deployment's records (0: it has none), by the
    /// Deployment's object key.
    pub(crate) fn deployment_revision(&self, key: &ObjectKey) -> u64 {
        self.by_deployment
            .get(key)
            .map_or(0, |(revision, _)| *revision)
    }

    /// Sets (or with `None` removes) a record.
    pub(crate) fn set_record(&mut self, node: NodeId, name: String, record: Option<PodRecord>) {
        let key = (node, name);
        let revision = next_revision();
        let old = self.records.remove(&key);
        if let Some(d) = old.as_deref().and_then(deployment_of) {
            if let Some((rev, set)) = self.by_deployment.get_mut(&d) {
                set.remove(&key);
                *rev = revision;
                if set.is_empty() {
                    self.by_deployment.remove(&d);
                }
            }
        }
        fn running(r: Option<&PodRecord>) -> Option<&super::stored::ReplicaRef> {
            r.filter(|r| !r.is_finished()).map(|r| &r.replica)
        }
        if running(old.as_deref()) != running(record.as_ref()) {
            self.revisions.running = revision;
            self.running_revisions.insert(key.0, revision);
        }
        if let Some(record) = record {
            let record = Arc::new(record);
            if let Some(d) = deployment_of(&record) {
                let (rev, records) = self.by_deployment.entry(d).or_default();
                *rev = revision;
                records.insert(key.clone(), record.clone());
            }
            self.records.insert(key, record);
        }
    }
}

/// The object key of the Deployment a record's pod belongs to.
fn deployment_of(record: &PodRecord) -> Option<ObjectKey> {
    let name = record.deployment.as_deref()?;
    let namespace = record
        .pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(crate::manifest::DEFAULT_NAMESPACE);
    Some(object_key(Kind::Deployment, namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::stored::{FORMAT, ReplicaRef, record_name};

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    fn member(i: u8, state: MemberState, run: Option<u64>) -> MemberSnap {
        MemberSnap {
            id: node(i),
            name: format!("node-{i}"),
            addr: String::new(),
            state,
            info: run.map(|run| NodeInfo {
                run,
                ..NodeInfo::default()
            }),
        }
    }

    fn record(pod: &str, run: u64) -> PodRecord {
        let mut p = crate::manifest::Pod::default();
        p.metadata.name = pod.into();
        p.metadata.namespace = Some("default".into());
        PodRecord {
            format: FORMAT,
            pod: p,
            status: Default::default(),
            replica: ReplicaRef {
                workload: "pod/default/x".into(),
                ordinal: 0,
            },
            deployment: None,
            template_hash: None,
            ready_since_ms: None,
            events: Vec::new(),
            run,
        }
    }

    fn counted_names(s: &Snapshot) -> Vec<String> {
        let counted = s.counted();
        s.counted_records(&counted)
            .map(|(_, r)| r.pod.metadata.name.clone())
            .collect()
    }

    fn set(s: &mut Snapshot, n: u8, pod: &str, run: u64) {
        s.set_record(node(n), record_name("default", pod), Some(record(pod, run)));
    }

    #[test]
    fn records_of_an_earlier_run_do_not_count_once_anything_of_a_later_one_is_known() {
        let mut s = Snapshot::default();
        s.set_members([
            member(1, MemberState::Alive, Some(2)),
            member(2, MemberState::Alive, Some(1)),
            member(3, MemberState::Alive, None),
            member(4, MemberState::Dead, Some(1)),
        ]);
        // Node 1 restarted (run 2): its record of run 1 is from its past life.
        set(&mut s, 1, "one-old", 1);
        set(&mut s, 1, "one-new", 2);
        // Node 2's info still says run 1; an agent that numbers no runs writes 0.
        set(&mut s, 2, "two-a", 1);
        set(&mut s, 3, "three", 0);
        set(&mut s, 4, "four", 1);
        assert_eq!(counted_names(&s), ["one-new", "two-a", "three"]);
        // A record of node 2's next run arrives before its new info: the old run is over.
        set(&mut s, 2, "two-b", 2);
        assert_eq!(counted_names(&s), ["one-new", "two-b", "three"]);
        // The planner still reads every live record.
        assert_eq!(s.live_records().count(), 5);
    }

    #[test]
    fn restored_records_of_a_node_not_heard_from_since_the_start_do_not_count() {
        let mut s = Snapshot::default();
        s.set_members([
            member(1, MemberState::Alive, Some(1)),
            member(2, MemberState::Alive, Some(1)),
        ]);
        set(&mut s, 1, "mine", 1);
        set(&mut s, 2, "theirs", 1);
        s.set_unheard([node(2)]);
        assert_eq!(counted_names(&s), ["mine"]);
        s.set_heard(&node(2));
        assert_eq!(counted_names(&s), ["mine", "theirs"]);
    }
}
