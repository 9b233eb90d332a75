//! What the supervisor is told about the cluster: the plan for this node, distilled from the
//! cluster [`Plan`] and the [`Snapshot`] it was computed from by [`NodePlan::new`].
//!
//! The supervisor never sees the snapshot itself: everything it acts on is here, so tests and
//! simulators can hand it a plan built any way they like.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shoal_gossip::{NodeId, ObjectKey};

use crate::manifest::{ConfigMap, EnvVar, Kind, Resource, Secret};
use crate::secret_box::SecretBox;
use crate::workload::plan::{DesiredPod, Plan};
use crate::workload::pod_config;
use crate::workload::service::{self, ServiceRange};
use crate::workload::snapshot::{Object, Snapshot};
use crate::workload::stored::{PodRecord, ReplicaRef, object_key};

/// Where a replica is placed when it is not on this node, as hand-off needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The node the plan puts it on.
    pub(crate) node: NodeId,
    /// Whether that node is alive or suspect.
    pub(crate) live: bool,
    /// Whether that node reports its copy of the replica ready.
    pub(crate) ready: bool,
}

/// The plan for one node.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodePlan {
    /// The cluster plan this one was distilled from.
    from: Arc<Plan>,
    /// The objects' revision `service_env` was computed at.
    objects_revision: u64,
    /// The pods this node should run, by uid (shared with the previous node plan when the
    /// assignment did not change).
    pub(crate) pods: Arc<BTreeMap<String, DesiredPod>>,
    /// Replicas this node reports that the plan places on other nodes.
    pub(crate) elsewhere: BTreeMap<ReplicaRef, Placement>,
    /// The records the replicated state holds as reported by this node, by record name: after
    /// an agent restart, what it reported before (adoption reads them, and those that no pod
    /// matches any more are removed).
    pub(crate) own_records: OwnRecords,
    /// Service-link variables for pods of each namespace that has pods here (they are read
    /// when a pod starts, as Kubernetes does: a new service does not restart pods).
    pub(crate) service_env: Arc<BTreeMap<String, Vec<EnvVar>>>,
    /// The config maps and secrets pods read, and this node's facts (the downward API).
    pub(crate) configs: ConfigObjects,
    /// New pods of this plan whose replica the previous plan put on another live node that
    /// does not report it: that node may be starting it, its report not here yet. Such a pod
    /// waits a moment before it starts ([`HOLD`]): placement keeps a replica where it is
    /// reported, so if the other node reports it meanwhile, the next plan takes it back from
    /// here and nothing was started twice.
    pub(crate) held: BTreeSet<String>,
}

/// How long a held pod waits before it starts: long enough for another node's report of the
/// same replica to arrive (gossip spreads it in tens of milliseconds on a LAN).
pub(crate) const HOLD: std::time::Duration = std::time::Duration::from_millis(500);

/// The config maps and secrets of the snapshot a plan was made from (nothing is copied; a
/// secret is opened only when a pod asks for it).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfigObjects {
    snapshot: Arc<Snapshot>,
    me: Option<NodeId>,
}

impl ConfigObjects {
    /// The objects of `snapshot`, for pods of node `me`.
    pub(crate) fn new(snapshot: Arc<Snapshot>, me: NodeId) -> Self {
        ConfigObjects {
            snapshot,
            me: Some(me),
        }
    }

    /// The object at `key`, shared (its identity changes when it changes).
    pub(crate) fn object(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.snapshot.object(key)
    }

    /// This node's CPU (millicores) and memory (bytes), from its node info.
    pub(crate) fn allocatable(&self) -> (u64, u64) {
        self.me
            .and_then(|me| self.snapshot.member(&me))
            .and_then(|m| m.info.as_ref())
            .map_or((0, 0), |i| (i.cpu_millis, i.memory_bytes))
    }

    /// The objects, with secrets opened by `secret_box` (`None`: they do not open).
    pub(crate) fn with_box<'a>(&'a self, secret_box: Option<&'a SecretBox>) -> OpenObjects<'a> {
        OpenObjects {
            objects: self,
            secret_box,
        }
    }
}

/// [`ConfigObjects`] with the key that opens secrets: what [`pod_config::resolve`] reads.
pub(crate) struct OpenObjects<'a> {
    objects: &'a ConfigObjects,
    secret_box: Option<&'a SecretBox>,
}

impl pod_config::Objects for OpenObjects<'_> {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        let key = object_key(Kind::ConfigMap, namespace, name);
        match &self.objects.object(&key)?.resource {
            Resource::ConfigMap(cm) => Some(cm.clone()),
            _ => None,
        }
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Result<Secret, String>> {
        let key = object_key(Kind::Secret, namespace, name);
        let object = self.objects.object(&key)?;
        let Some(secret_box) = self.secret_box else {
            return Some(Err("this node has no key to open secrets".into()));
        };
        let opened = object
            .stored
            .unsealed(&key, secret_box)
            .map_err(|e| e.to_string())
            .and_then(|stored| stored.resource().map_err(|e| e.to_string()));
        Some(match opened {
            Ok(Resource::Secret(secret)) => Ok(secret),
            Ok(_) => Err("not a secret".into()),
            Err(e) => Err(e),
        })
    }
}

/// The records a node reports, read from the snapshot they are in (nothing is copied).
#[derive(Clone, Debug)]
pub(crate) struct OwnRecords {
    snapshot: Arc<Snapshot>,
    me: NodeId,
}

impl Default for OwnRecords {
    fn default() -> Self {
        OwnRecords {
            snapshot: Arc::default(),
            me: NodeId([0; 32]),
        }
    }
}

impl OwnRecords {
    /// The record of this name.
    pub(crate) fn get(&self, name: &str) -> Option<&PodRecord> {
        self.snapshot.record(&self.me, name)
    }

    /// Whether there is a record of this name.
    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The records, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &PodRecord)> {
        self.snapshot.records_of(&self.me)
    }
}

impl NodePlan {
    /// The objects' revision of the snapshot this plan was made from.
    pub(crate) fn objects_revision(&self) -> u64 {
        self.objects_revision
    }

    /// The plan for `me` from the cluster plan and the snapshot it was computed from.
    /// `previous` (the node plan before this one) lends what did not change: this node's pods
    /// when the plan's assignment is the same, the service variables when no object changed.
    pub(crate) fn new(
        snapshot: &Arc<Snapshot>,
        plan: &Arc<Plan>,
        me: &NodeId,
        range: ServiceRange,
        previous: Option<&NodePlan>,
    ) -> Self {
        let pods = match previous {
            Some(p) if p.from.same_assignment(plan) => p.pods.clone(),
            _ => Arc::new(plan.pods_on(me).map(|p| (p.uid.clone(), p)).collect()),
        };
        let own_records = OwnRecords {
            snapshot: snapshot.clone(),
            me: *me,
        };
        // Hand-off concerns the replicas this node reports and the plan puts elsewhere: where
        // they went, and whether their new copy is ready there. Only those nodes' records are
        // read, never every pod of the cluster.
        let mut moved: BTreeMap<ReplicaRef, NodeId> = BTreeMap::new();
        for (_, record) in own_records.iter() {
            if let Some(node) = plan.node_of(&record.replica).filter(|n| *n != me) {
                moved.insert(record.replica.clone(), *node);
            }
        }
        let targets: BTreeSet<NodeId> = moved.values().copied().collect();
        let mut ready: BTreeSet<(NodeId, &ReplicaRef)> = BTreeSet::new();
        for target in &targets {
            for (_, record) in snapshot.records_of(target) {
                if record.is_ready() {
                    ready.insert((*target, &record.replica));
                }
            }
        }
        let elsewhere = moved
            .iter()
            .map(|(replica, node)| {
                let placement = Placement {
                    node: *node,
                    live: snapshot.is_live(node),
                    ready: ready.contains(&(*node, replica)),
                };
                (replica.clone(), placement)
            })
            .collect();
        let objects_revision = snapshot.revisions().objects;
        let service_env = match previous {
            Some(p) if Arc::ptr_eq(&p.pods, &pods) && p.objects_revision == objects_revision => {
                p.service_env.clone()
            }
            _ => {
                let namespaces: BTreeSet<&str> = pods
                    .values()
                    .map(|p| p.pod.metadata.namespace.as_deref().unwrap_or("default"))
                    .collect();
                Arc::new(
                    namespaces
                        .into_iter()
                        .map(|ns| {
                            (
                                ns.to_owned(),
                                service::service_env_vars(range, snapshot, ns),
                            )
                        })
                        .collect(),
                )
            }
        };
        // Pods new in this plan whose replica the previous plan put on another node that is
        // live and does not report it (only new pods are looked at).
        let mut held = BTreeSet::new();
        if let Some(previous) = previous.filter(|p| !Arc::ptr_eq(&p.pods, &pods)) {
            for (uid, pod) in pods.iter() {
                if previous.pods.contains_key(uid) {
                    continue;
                }
                let Some(other) = previous.from.node_of(&pod.replica).filter(|n| *n != me) else {
                    continue;
                };
                let reported = snapshot
                    .records_of(other)
                    .any(|(_, r)| r.replica == pod.replica);
                if snapshot.is_live(other) && !reported {
                    held.insert(uid.clone());
                }
            }
        }
        NodePlan {
            from: plan.clone(),
            configs: ConfigObjects::new(snapshot.clone(), *me),
            objects_revision,
            pods,
            elsewhere,
            own_records,
            service_env,
            held,
        }
    }
}

/// Whether this node's state can be trusted to plan from: it holds this node's own state (an
/// agent that just started has not published its restored state yet: planning from nothing
/// would stop every pod), and it hears from another live member with node info, or it knows
/// no other member at all (a new cluster of one, which has nobody to catch up with; a node that
/// has not joined yet holds no objects, so it would start nothing).
pub(crate) fn snapshot_synced(snapshot: &Snapshot, me: &NodeId) -> bool {
    snapshot.members().any(|m| m.id == *me)
        && (snapshot.members().all(|m| m.id == *me)
            || snapshot
                .members()
                .any(|m| m.id != *me && m.state.is_live() && m.info.is_some()))
}

#[cfg(test)]
mod tests {
    use shoal_gossip::MemberState;

    use super::*;
    use crate::workload::testbed::{member, node_id};

    #[test]
    fn a_snapshot_is_synced_once_it_holds_this_node_and_a_live_peer_or_no_peer() {
        let me = node_id(0);
        let with = |members| Snapshot::new(members, Vec::new(), Vec::new());
        assert!(
            !snapshot_synced(&Snapshot::default(), &me),
            "nothing published yet"
        );
        assert!(snapshot_synced(
            &with(vec![member(0, MemberState::Alive)]),
            &me
        ));
        assert!(!snapshot_synced(
            &with(vec![member(1, MemberState::Alive)]),
            &me
        ));
        let dead_peer = vec![member(0, MemberState::Alive), member(1, MemberState::Dead)];
        assert!(!snapshot_synced(&with(dead_peer), &me));
        let mut peer = member(1, MemberState::Alive);
        peer.info = None;
        assert!(!snapshot_synced(
            &with(vec![member(0, MemberState::Alive), peer]),
            &me
        ));
        let live_peer = vec![
            member(0, MemberState::Alive),
            member(1, MemberState::Suspect),
        ];
        assert!(snapshot_synced(&with(live_peer), &me));
    }
}
