//! The projector: keeps the workload [`Snapshot`] up to date from the store's changes, on a
//! task of its own, so the gossip driver (which answers the failure detector) never decodes a
//! workload object.
//!
//! The driver sends what changed, as it changed: the new bytes of each changed workload entry
//! (objects of the workload kinds, pod records, node info) and the member list when membership
//! changed ([`Change`]). The projector takes everything that is waiting, decodes each changed
//! value once, applies it to its snapshot and publishes the result once. Cost per change: one
//! decode of that value and O(log n) map updates; nothing is proportional to the whole state.
//!
//! A value that fails to decode is left out of the snapshot, counted in [`ProjectorStats`] and
//! logged once per key; until it decodes again or is deleted, its key is listed in the stats
//! (`unreadable`), so that a user can find it and delete it by key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use shoal_gossip::NodeId;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::batch::BatchGate;
use super::snapshot::{MemberSnap, Object, Snapshot};
use super::stored::{DecodeError, POD_RECORD_PREFIX, PodRecord, StoredObject};
use crate::clock::wall_ms;
use crate::driver::{Change, MemberFacts};
use crate::node_info::{NODE_INFO, NodeInfo};

/// Object kinds the workload snapshot carries (config maps and secrets are what pods read;
/// a secret's values stay sealed in it).
pub(crate) const WORKLOAD_KINDS: [&str; 6] = [
    "namespace",
    "pod",
    "deployment",
    "service",
    "configmap",
    "secret",
];

/// Whether the projector wants changes of an owned entry with this name.
pub(crate) fn wants_owned(name: &str) -> bool {
    name == NODE_INFO || name.starts_with(POD_RECORD_PREFIX)
}

/// Whether the projector wants changes of objects of this kind.
pub(crate) fn wants_object(kind: &str) -> bool {
    WORKLOAD_KINDS.contains(&kind)
}

/// The projector's counters (in `/api/v1/stats` as `projector`).
#[derive(Debug, Default)]
pub(crate) struct ProjectorCounters {
    changes: AtomicU64,
    publishes: AtomicU64,
    undecodable_objects: AtomicU64,
    undecodable_records: AtomicU64,
    undecodable_node_info: AtomicU64,
    newer_format: AtomicU64,
    batches_whole: AtomicU64,
    batches_late: AtomicU64,
    objects_held: AtomicU64,
    /// Keys whose current value cannot be read (logged once until they decode again or go).
    unreadable: Mutex<BTreeSet<String>>,
}

/// Most unreadable keys the stats list by name (all are counted).
const MAX_LISTED: usize = 100;

/// The counters, serialisable.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ProjectorStats {
    /// Changes applied to the snapshot.
    pub(crate) changes: u64,
    /// Snapshots published.
    pub(crate) publishes: u64,
    /// Object values that failed to decode (each time one arrived).
    pub(crate) undecodable_objects: u64,
    /// Pod records that failed to decode.
    pub(crate) undecodable_records: u64,
    /// Node info values that failed to decode.
    pub(crate) undecodable_node_info: u64,
    /// Of those, values written in a format newer than this agent's.
    pub(crate) newer_format: u64,
    /// Applies of several objects taken whole, and taken in part because the rest had not
    /// come after 5 s (see `workload::batch`).
    pub(crate) batches_whole: u64,
    pub(crate) batches_late: u64,
    /// Objects held back now, waiting for the rest of their apply.
    pub(crate) objects_held: u64,
    /// Objects and pod records in the current snapshot.
    pub(crate) objects: usize,
    pub(crate) records: usize,
    /// Values in the replicated state that cannot be read now (left out of the snapshot).
    pub(crate) unreadable_now: usize,
    /// Their keys (the first 100): `kind/namespace/name` for objects (delete them with
    /// `shoal delete KIND NAME -n NAMESPACE` or `DELETE /api/v1/objects/...`),
    /// `<node id>/<entry>` for what a node reports about itself.
    pub(crate) unreadable: Vec<String>,
}

impl ProjectorCounters {
    /// The counters now, with the sizes of `snapshot`.
    pub(crate) fn stats(&self, snapshot: &Snapshot) -> ProjectorStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let unreadable = self
            .unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ProjectorStats {
            changes: get(&self.changes),
            publishes: get(&self.publishes),
            undecodable_objects: get(&self.undecodable_objects),
            undecodable_records: get(&self.undecodable_records),
            undecodable_node_info: get(&self.undecodable_node_info),
            newer_format: get(&self.newer_format),
            batches_whole: get(&self.batches_whole),
            batches_late: get(&self.batches_late),
            objects_held: get(&self.objects_held),
            objects: snapshot.objects().count(),
            records: snapshot.record_count(),
            unreadable_now: unreadable.len(),
            unreadable: unreadable.iter().take(MAX_LISTED).cloned().collect(),
        }
    }
}

/// The projection itself, without the task: [`Projection::apply`] then
/// [`Projection::snapshot`].
#[derive(Default)]
pub(crate) struct Projection {
    snapshot: Snapshot,
    members: Vec<MemberFacts>,
    infos: BTreeMap<NodeId, NodeInfo>,
    /// New object versions waiting for the rest of the apply they came in.
    gate: BatchGate<Object>,
    counters: Arc<ProjectorCounters>,
}

impl Projection {
    pub(crate) fn new(counters: Arc<ProjectorCounters>) -> Projection {
        Projection {
            counters,
            ..Projection::default()
        }
    }

    /// The snapshot as of the changes applied so far.
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Applies one change, now.
    #[cfg(test)]
    pub(crate) fn apply(&mut self, change: Change) {
        self.apply_at(change, crate::clock::wall_ms());
    }

    /// Takes the objects whose apply did not come whole in time (see [`BatchGate`]).
    pub(crate) fn expire(&mut self, now_ms: u64) {
        for (key, object) in self.gate.expire(now_ms) {
            self.snapshot.set_object(key, object);
        }
        self.count_gate();
    }

    /// When [`Projection::expire`] has something to do next.
    pub(crate) fn next_deadline_ms(&self) -> Option<u64> {
        self.gate.next_deadline_ms()
    }

    fn count_gate(&self) {
        let c = &self.counters;
        c.batches_whole
            .store(self.gate.released_whole, Ordering::Relaxed);
        c.batches_late
            .store(self.gate.released_late, Ordering::Relaxed);
        c.objects_held
            .store(self.gate.held() as u64, Ordering::Relaxed);
    }

    /// Applies one change that arrived at `now_ms` (ms since the Unix epoch).
    pub(crate) fn apply_at(&mut self, change: Change, now_ms: u64) {
        self.counters.changes.fetch_add(1, Ordering::Relaxed);
        match change {
            Change::Members(members) => {
                self.members = members;
                self.rebuild_members();
                self.snapshot
                    .set_unheard(self.members.iter().filter(|m| !m.heard).map(|m| m.id));
            }
            Change::Heard(id) => {
                if let Some(member) = self.members.iter_mut().find(|m| m.id == id) {
                    member.heard = true;
                }
                self.snapshot.set_heard(&id);
            }
            Change::Object { key, value } => {
                let object = match value {
                    None => {
                        self.gone(&key.to_string());
                        None
                    }
                    Some(bytes) => {
                        let id = key.to_string();
                        let decoded = StoredObject::decode(&bytes).and_then(|stored| {
                            Object::new(stored).map_err(|e| DecodeError::Malformed(e.to_string()))
                        });
                        self.decoded(id, decoded, |c| &c.undecodable_objects)
                    }
                };
                let batch = object.as_ref().and_then(|o| o.stored.batch);
                for (key, object) in self.gate.offer(key, batch, object, now_ms) {
                    self.snapshot.set_object(key, object);
                }
                self.count_gate();
            }
            Change::Owned { owner, name, value } if name == NODE_INFO => {
                let info = match value {
                    None => {
                        self.gone(&format!("{owner}/{name}"));
                        None
                    }
                    Some(bytes) => {
                        self.decoded(format!("{owner}/{name}"), NodeInfo::decode(&bytes), |c| {
                            &c.undecodable_node_info
                        })
                    }
                };
                match &info {
                    Some(info) => self.infos.insert(owner, info.clone()),
                    None => self.infos.remove(&owner),
                };
                self.snapshot.set_info(&owner, info);
            }
            Change::Owned { owner, name, value } => {
                let record = match value {
                    None => {
                        self.gone(&format!("{owner}/{name}"));
                        None
                    }
                    Some(bytes) => {
                        self.decoded(format!("{owner}/{name}"), PodRecord::decode(&bytes), |c| {
                            &c.undecodable_records
                        })
                    }
                };
                self.snapshot.set_record(owner, name, record);
            }
        }
    }

    /// The entry `id` was deleted: it is no longer unreadable.
    fn gone(&mut self, id: &str) {
        self.unreadable().remove(id);
    }

    fn unreadable(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.counters
            .unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The value if it decoded; otherwise counts it and logs it once per key.
    fn decoded<T>(
        &mut self,
        id: String,
        result: Result<T, DecodeError>,
        counter: fn(&ProjectorCounters) -> &AtomicU64,
    ) -> Option<T> {
        match result {
            Ok(value) => {
                self.unreadable().remove(&id);
                Some(value)
            }
            Err(error) => {
                counter(&self.counters).fetch_add(1, Ordering::Relaxed);
                if matches!(error, DecodeError::Newer(_)) {
                    self.counters.newer_format.fetch_add(1, Ordering::Relaxed);
                }
                if self.unreadable().insert(id.clone()) {
                    warn!(entry = %id, %error,
                        "a replicated value cannot be read; it is ignored (delete it by key to \
                         remove it from the cluster)");
                }
                None
            }
        }
    }

    fn rebuild_members(&mut self) {
        let members = self.members.iter().map(|m| MemberSnap {
            id: m.id,
            name: m.name.clone(),
            addr: m.addr.clone(),
            state: m.state,
            info: self.infos.get(&m.id).cloned(),
        });
        self.snapshot.set_members(members.collect::<Vec<_>>());
    }
}

/// Starts the projector task: it applies what arrives on `changes` and publishes a snapshot
/// after each group of changes. It ends when the sender is dropped.
pub(crate) fn start(
    mut changes: mpsc::UnboundedReceiver<Vec<Change>>,
    counters: Arc<ProjectorCounters>,
) -> (watch::Receiver<Arc<Snapshot>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(async move {
        let mut projection = Projection::new(counters.clone());
        let mut version = 0;
        loop {
            // Changes, or the time up of an apply that has not come whole.
            let wait = projection
                .next_deadline_ms()
                .map(|at| Duration::from_millis(at.saturating_sub(wall_ms())));
            let first = match wait {
                Some(wait) => match tokio::time::timeout(wait, changes.recv()).await {
                    Ok(first) => first,
                    Err(_) => Some(Vec::new()),
                },
                None => changes.recv().await,
            };
            let Some(first) = first else {
                break;
            };
            let now = wall_ms();
            for change in first {
                projection.apply_at(change, now);
            }
            while let Ok(more) = changes.try_recv() {
                for change in more {
                    projection.apply_at(change, now);
                }
            }
            projection.expire(now);
            version += 1;
            let mut snapshot = projection.snapshot().clone();
            snapshot.version = version;
            tx.send_replace(Arc::new(snapshot));
            counters.publishes.fetch_add(1, Ordering::Relaxed);
            // Let readers run between groups of changes.
            tokio::task::yield_now().await;
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use shoal_gossip::{MemberState, ObjectKey};

    use super::*;
    use crate::manifest::parse;
    use crate::workload::stored::{FORMAT, ReplicaRef, record_name};
    use crate::workload::view::apply_one;

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    fn deployment(name: &str, replicas: u32) -> (ObjectKey, Vec<u8>) {
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  \
             replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - \
             {{name: a, image: x, command: [/bin/x]}}\n"
        );
        let resource = parse("d.yaml", yaml.as_bytes()).unwrap().remove(0);
        let (_, stored) = apply_one(&resource, None, 1, || "uid".into());
        (
            crate::workload::view::key_of(&resource),
            stored.unwrap().encode(),
        )
    }

    fn record(deployment: &str, pod: &str) -> Vec<u8> {
        let mut pod_value = crate::manifest::Pod::default();
        pod_value.metadata.name = pod.into();
        pod_value.metadata.namespace = Some("default".into());
        PodRecord {
            format: FORMAT,
            pod: pod_value,
            status: Default::default(),
            replica: ReplicaRef {
                workload: format!("deployment/default/{deployment}-h"),
                ordinal: 0,
            },
            deployment: Some(deployment.into()),
            template_hash: Some("h".into()),
            ready_since_ms: None,
            events: Vec::new(),
            run: 0,
        }
        .encode()
    }

    fn members(ids: &[u8]) -> Change {
        Change::Members(
            ids.iter()
                .map(|&i| MemberFacts {
                    id: node(i),
                    name: format!("node-{i}"),
                    addr: String::new(),
                    state: MemberState::Alive,
                    heard: true,
                })
                .collect(),
        )
    }

    #[test]
    fn the_objects_of_one_apply_are_seen_together_or_after_the_hold() {
        let counters = Arc::new(ProjectorCounters::default());
        let mut p = Projection::new(counters.clone());
        p.apply_at(members(&[1, 2]), 10_000);
        let batch = |id| crate::workload::batch::Batch {
            id,
            size: 2,
            at_ms: 10_000,
        };
        let batched = |name: &str, id| {
            let (key, bytes) = deployment(name, 1);
            let mut stored = StoredObject::decode(&bytes).unwrap();
            stored.batch = Some(batch(id));
            Change::Object {
                key,
                value: Some(stored.encode()),
            }
        };
        p.apply_at(batched("a", 1), 10_010);
        assert_eq!(
            p.snapshot().objects().count(),
            0,
            "half an apply is not seen"
        );
        assert_eq!(counters.stats(p.snapshot()).objects_held, 1);
        p.apply_at(batched("b", 1), 10_020);
        assert_eq!(p.snapshot().objects().count(), 2, "the whole apply is");
        // One whose other half never comes is seen once its time is up.
        p.apply_at(batched("c", 2), 10_030);
        assert_eq!(
            p.next_deadline_ms(),
            Some(10_030 + crate::workload::batch::HOLD_MS)
        );
        p.expire(10_029 + crate::workload::batch::HOLD_MS);
        assert_eq!(p.snapshot().objects().count(), 2);
        p.expire(10_030 + crate::workload::batch::HOLD_MS);
        assert_eq!(p.snapshot().objects().count(), 3);
        let stats = counters.stats(p.snapshot());
        assert_eq!(
            (stats.batches_whole, stats.batches_late, stats.objects_held),
            (1, 1, 0)
        );
    }

    #[test]
    fn changes_update_objects_records_and_the_deployment_index() {
        let counters = Arc::new(ProjectorCounters::default());
        let mut p = Projection::new(counters.clone());
        p.apply(members(&[1, 2]));
        let (key, bytes) = deployment("web", 2);
        p.apply(Change::Object {
            key: key.clone(),
            value: Some(bytes),
        });
        for (n, pod) in [(1, "web-a"), (2, "web-b")] {
            p.apply(Change::Owned {
                owner: node(n),
                name: record_name("default", pod),
                value: Some(record("web", pod)),
            });
        }
        let s = p.snapshot();
        assert_eq!(s.objects_of("deployment").count(), 1);
        assert_eq!(s.deployment_records("default", "web").count(), 2);
        assert_eq!(s.records_of(&node(1)).count(), 1);

        // A record replaced, one removed, the object deleted.
        p.apply(Change::Owned {
            owner: node(2),
            name: record_name("default", "web-b"),
            value: None,
        });
        assert_eq!(p.snapshot().deployment_records("default", "web").count(), 1);
        p.apply(Change::Object { key, value: None });
        assert_eq!(p.snapshot().objects().count(), 0);
        let stats = counters.stats(p.snapshot());
        assert_eq!((stats.changes, stats.records), (6, 1));
    }

    #[test]
    fn values_that_do_not_decode_are_counted_and_left_out() {
        let counters = Arc::new(ProjectorCounters::default());
        let mut p = Projection::new(counters.clone());
        p.apply(members(&[1]));
        let key = ObjectKey {
            kind: "deployment".into(),
            namespace: "default".into(),
            name: "evil".into(),
        };
        p.apply(Change::Object {
            key: key.clone(),
            value: Some(b"garbage{".to_vec()),
        });
        // A newer format than this build knows.
        let (_, good) = deployment("next", 1);
        let mut newer: serde_json::Value = serde_json::from_slice(&good).unwrap();
        newer["format"] = serde_json::json!(FORMAT + 1);
        p.apply(Change::Object {
            key: key.clone(),
            value: Some(serde_json::to_vec(&newer).unwrap()),
        });
        p.apply(Change::Owned {
            owner: node(1),
            name: record_name("default", "x"),
            value: Some(vec![0xff, 0x00]),
        });
        p.apply(Change::Owned {
            owner: node(1),
            name: NODE_INFO.into(),
            value: Some(br#"{"cpuMillis": "lots"}"#.to_vec()),
        });
        let stats = counters.stats(p.snapshot());
        assert_eq!(stats.undecodable_objects, 2);
        assert_eq!(stats.newer_format, 1);
        assert_eq!(stats.undecodable_records, 1);
        assert_eq!(stats.undecodable_node_info, 1);
        assert_eq!((stats.objects, stats.records), (0, 0));
        assert!(p.snapshot().member(&node(1)).unwrap().info.is_none());
        // Listed by key until they decode or go.
        let record_id = format!("{}/{}", node(1), record_name("default", "x"));
        assert_eq!(stats.unreadable_now, 3);
        assert!(
            stats
                .unreadable
                .contains(&"deployment/default/evil".to_owned())
                && stats.unreadable.contains(&record_id),
            "{:?}",
            stats.unreadable
        );
        // Once it decodes, it is there.
        let (_, good) = deployment("evil", 1);
        p.apply(Change::Object {
            key,
            value: Some(good),
        });
        assert_eq!(p.snapshot().objects().count(), 1);
        // A deleted value is no longer unreadable.
        p.apply(Change::Owned {
            owner: node(1),
            name: record_name("default", "x"),
            value: None,
        });
        let stats = counters.stats(p.snapshot());
        assert_eq!(stats.unreadable_now, 1, "{:?}", stats.unreadable);
        assert_eq!(stats.unreadable, [format!("{}/{NODE_INFO}", node(1))]);
        assert_eq!(stats.undecodable_objects, 2, "counters only grow");
    }

    #[test]
    fn records_of_members_not_heard_from_since_the_start_count_once_they_speak() {
        let mut p = Projection::new(Arc::default());
        let mut restored = members(&[1, 2]);
        if let Change::Members(list) = &mut restored {
            list[1].heard = false;
        }
        p.apply(restored);
        for (n, pod) in [(1, "web-a"), (2, "web-b")] {
            p.apply(Change::Owned {
                owner: node(n),
                name: record_name("default", pod),
                value: Some(record("web", pod)),
            });
        }
        let counted = |p: &Projection| {
            let s = p.snapshot();
            let c = s.counted();
            s.counted_records(&c).count()
        };
        assert_eq!(counted(&p), 1);
        p.apply(Change::Heard(node(2)));
        assert_eq!(counted(&p), 2);
        // A later member list keeps it heard.
        p.apply(Change::Members(match members(&[1, 2]) {
            Change::Members(list) => list,
            _ => unreachable!(),
        }));
        assert_eq!(counted(&p), 2);
    }

    #[test]
    fn node_info_survives_member_list_changes() {
        let mut p = Projection::new(Arc::default());
        let info = NodeInfo {
            format: FORMAT,
            cpu_millis: 1234,
            ..NodeInfo::default()
        };
        // Info may arrive before the member does.
        p.apply(Change::Owned {
            owner: node(3),
            name: NODE_INFO.into(),
            value: Some(info.encode()),
        });
        p.apply(members(&[1, 3]));
        let cpu = |p: &Projection| {
            p.snapshot()
                .member(&node(3))
                .and_then(|m| m.info.as_ref())
                .map(|i| i.cpu_millis)
        };
        assert_eq!(cpu(&p), Some(1234));
        p.apply(members(&[3]));
        assert_eq!(cpu(&p), Some(1234));
    }
}
