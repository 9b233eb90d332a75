//! What the API shows and does for workloads: Kubernetes-shaped pods, deployments, services and
//! endpoints built from the replicated state (pods as their nodes report them, plus the ones the
//! plan places but no node reports yet; services with their effective cluster IPs), and
//! `apply`, `delete`, `scale` and `rollout undo` as writes of stored objects.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use shoal_gossip::ObjectKey;

use super::plan::{Plan, rollout};
use super::service::{Allocation, ServiceEndpoints, ServiceEntry, endpoints_resource};
use super::snapshot::{Counted, Snapshot};
use super::stored::{PodRecord, Revision, StoredObject, object_key};
use crate::manifest::{
    ConditionStatus, ContainerState, ContainerStatus, Deployment, DeploymentCondition,
    DeploymentConditionType, DeploymentStatus, Kind, NamespaceStatus, Outcome, Pod, PodCondition,
    PodConditionType, PodPhase, PodStatus, PodTemplateSpec, Resource, Timestamp, apply_outcome,
    deployment_object, endpoints_object, list_object, namespace_object, next_generation,
    pod_object, service_object,
};

/// A pod to show: from a node's record, or from the plan when no node reports it yet.
pub(crate) struct PodView {
    pub(crate) pod: Pod,
    pub(crate) status: PodStatus,
    pub(crate) events: Vec<super::stored::PodEvent>,
    pub(crate) deployment: Option<String>,
}

fn in_namespace(pod: &Pod, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| pod.metadata.namespace.as_deref() == Some(ns))
}

/// Every pod of the cluster (optionally of one namespace), sorted by namespace and name.
pub(crate) fn pods(snapshot: &Snapshot, plan: &Plan, namespace: Option<&str>) -> Vec<PodView> {
    let mut out: BTreeMap<(String, String), PodView> = BTreeMap::new();
    let key = |p: &Pod| {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone(),
        )
    };
    let counted = snapshot.counted();
    for (node, record) in snapshot.counted_records(&counted) {
        if !in_namespace(&record.pod, namespace) {
            continue;
        }
        let mut pod = record.pod.clone();
        if pod.spec.node_name.is_none() {
            pod.spec.node_name = snapshot.member(node).map(|m| m.name.clone());
        }
        out.insert(
            key(&pod),
            PodView {
                pod,
                status: record.status.clone(),
                events: record.events.clone(),
                deployment: record.deployment.clone(),
            },
        );
    }
    // Placed, but not reported yet by its node.
    for desired in plan.pods() {
        if !in_namespace(&desired.pod, namespace) || out.contains_key(&key(&desired.pod)) {
            continue;
        }
        let status = PodStatus {
            phase: PodPhase::Pending,
            conditions: vec![PodCondition {
                kind: PodConditionType::PodScheduled,
                status: ConditionStatus::True,
                reason: None,
                message: None,
                last_transition_time: None,
            }],
            container_statuses: desired
                .pod
                .spec
                .containers
                .iter()
                .map(|c| waiting(c.name.clone(), c.image.clone(), "ContainerCreating", None))
                .collect(),
            ..PodStatus::default()
        };
        out.insert(
            key(&desired.pod),
            PodView {
                pod: desired.pod,
                status,
                events: Vec::new(),
                deployment: desired.deployment,
            },
        );
    }
    // Not placeable.
    for u in plan.unschedulable() {
        let message = format!(
            "0/{} nodes are available: {}",
            snapshot.member_count(),
            u.reason
        );
        for pod in u.pods() {
            if !in_namespace(&pod, namespace) || out.contains_key(&key(&pod)) {
                continue;
            }
            let status = PodStatus {
                phase: PodPhase::Pending,
                conditions: vec![PodCondition {
                    kind: PodConditionType::PodScheduled,
                    status: ConditionStatus::False,
                    reason: Some("Unschedulable".into()),
                    message: Some(message.clone()),
                    last_transition_time: None,
                }],
                message: Some(message.clone()),
                reason: Some("Unschedulable".into()),
                ..PodStatus::default()
            };
            out.insert(
                key(&pod),
                PodView {
                    pod,
                    status,
                    events: Vec::new(),
                    deployment: u.deployment().map(str::to_owned),
                },
            );
        }
    }
    out.into_values().collect()
}

fn waiting(name: String, image: String, reason: &str, message: Option<String>) -> ContainerStatus {
    ContainerStatus {
        name,
        state: ContainerState::Waiting {
            reason: Some(reason.into()),
            message,
        },
        last_state: None,
        ready: false,
        restart_count: 0,
        image,
        image_id: None,
        container_id: None,
        started: Some(false),
    }
}

/// A pod as JSON (`kubectl get pod -o json`).
pub(crate) fn pod_json(view: &PodView) -> Value {
    pod_object(&view.pod, &view.status)
}

/// The stored Deployments (optionally of one namespace), decoded.
pub(crate) fn deployments<'a>(
    snapshot: &'a Snapshot,
    namespace: Option<&'a str>,
) -> impl Iterator<Item = (&'a Deployment, &'a StoredObject)> + 'a {
    snapshot
        .objects_of(Kind::Deployment.key_kind())
        .filter(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
        .filter_map(|(_, object)| Some((object.deployment()?.0, &object.stored)))
}

/// A Deployment's status from the pods the live nodes report, of the records that count
/// (`counted`: [`Snapshot::counted`]).
pub(crate) fn deployment_status(
    d: &Deployment,
    snapshot: &Snapshot,
    counted: &Counted,
    now_ms: u64,
) -> DeploymentStatus {
    let namespace = d.metadata.namespace.as_deref().unwrap_or("default");
    let current = d.pod_template_hash();
    let min_ready_ms = u64::from(d.spec.min_ready_seconds) * 1000;
    // Distinct replicas: (template, ordinal) -> (ready, available).
    let mut replicas: BTreeMap<(String, u32), (bool, bool)> = BTreeMap::new();
    for (node, record) in snapshot.deployment_records(namespace, &d.metadata.name) {
        if !counted.counts(snapshot, node, record) {
            continue;
        }
        if record.is_finished() || record.pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let hash = record.template_hash.clone().unwrap_or_default();
        let ready = record.is_ready();
        let available = record.is_available(min_ready_ms, now_ms);
        let slot = replicas
            .entry((hash, record.replica.ordinal))
            .or_insert((false, false));
        slot.0 |= ready;
        slot.1 |= available;
    }
    let total = replicas.len() as u32;
    let updated = replicas.keys().filter(|(h, _)| *h == current).count() as u32;
    let ready = replicas.values().filter(|(r, _)| *r).count() as u32;
    let available = replicas.values().filter(|(_, a)| *a).count() as u32;
    let old = total - updated;
    let (min_available, _) = match &d.spec.strategy {
        crate::manifest::DeploymentStrategy::RollingUpdate { rolling_update } => {
            let (_, unavailable) = rolling_update.resolve(d.spec.replicas);
            (d.spec.replicas.saturating_sub(unavailable), ())
        }
        crate::manifest::DeploymentStrategy::Recreate => (d.spec.replicas, ()),
    };
    let now = Some(Timestamp(now_ms));
    let available_ok = available >= min_available;
    let complete = updated == d.spec.replicas && available == d.spec.replicas && old == 0;
    let updated_available = replicas
        .iter()
        .filter(|((h, _), (_, a))| *h == current && *a)
        .count() as u32;
    DeploymentStatus {
        observed_generation: d.metadata.generation.unwrap_or(1),
        replicas: total,
        updated_replicas: updated,
        ready_replicas: ready,
        available_replicas: available,
        unavailable_replicas: d.spec.replicas.saturating_sub(available),
        conditions: vec![
            DeploymentCondition {
                kind: DeploymentConditionType::Available,
                status: ConditionStatus::from(available_ok),
                reason: Some(
                    if available_ok {
                        "MinimumReplicasAvailable"
                    } else {
                        "MinimumReplicasUnavailable"
                    }
                    .into(),
                ),
                message: Some(if available_ok {
                    "Deployment has minimum availability.".into()
                } else {
                    "Deployment does not have minimum availability.".into()
                }),
                last_update_time: now,
                last_transition_time: now,
            },
            DeploymentCondition {
                kind: DeploymentConditionType::Progressing,
                status: ConditionStatus::True,
                reason: Some(
                    if complete {
                        "NewReplicaSetAvailable"
                    } else {
                        "ReplicaSetUpdated"
                    }
                    .into(),
                ),
                message: Some(format!(
                    "{updated_available} of {} updated replicas are available, {old} old replicas remain",
                    d.spec.replicas
                )),
                last_update_time: now,
                last_transition_time: now,
            },
        ],
    }
}

/// A Deployment as JSON with its status (and its revision as Kubernetes' annotation).
/// `set_aside`: why the plan does not run it, if it does not (a `ReplicaFailure` condition).
pub(crate) fn deployment_json(
    d: &Deployment,
    stored: &StoredObject,
    snapshot: &Snapshot,
    counted: &Counted,
    now_ms: u64,
    set_aside: Option<&str>,
) -> Value {
    let mut d = d.clone();
    d.metadata.annotations.insert(
        "deployment.kubernetes.io/revision".into(),
        stored.revision.max(1).to_string(),
    );
    let mut status = deployment_status(&d, snapshot, counted, now_ms);
    if let Some(reason) = set_aside {
        status.conditions.push(DeploymentCondition {
            kind: DeploymentConditionType::ReplicaFailure,
            status: ConditionStatus::True,
            reason: Some("FailedCreate".into()),
            message: Some(format!("no pods are created: {reason}")),
            last_update_time: Some(Timestamp(now_ms)),
            last_transition_time: Some(Timestamp(now_ms)),
        });
    }
    deployment_object(&d, &status)
}

/// Namespaces as JSON: the stored ones plus `default`.
pub(crate) fn namespaces_json(snapshot: &Snapshot) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut items = Vec::new();
    for (_, object) in snapshot.objects_of(Kind::Namespace.key_kind()) {
        if let Resource::Namespace(ns) = &object.resource {
            seen.insert(ns.metadata.name.clone());
            items.push(namespace_object(ns, &NamespaceStatus::default()));
        }
    }
    if !seen.contains("default") {
        let ns = crate::manifest::Namespace {
            metadata: crate::manifest::ObjectMeta {
                name: "default".into(),
                ..Default::default()
            },
        };
        items.insert(0, namespace_object(&ns, &NamespaceStatus::default()));
    }
    items
}

/// A Service as JSON (`kubectl get service -o json`), with its effective cluster IP and node
/// ports.
pub(crate) fn service_json(entry: &ServiceEntry, allocation: &Allocation) -> Value {
    service_object(&allocation.effective(entry))
}

/// A service's endpoints as JSON (`kubectl get endpoints -o json`).
pub(crate) fn endpoints_json(entry: &ServiceEntry, endpoints: &ServiceEndpoints) -> Value {
    endpoints_object(&endpoints_resource(entry, endpoints))
}

/// Events for `describe service`: a warning for each address or node port the service's
/// object holds but an earlier service (or the range) took from it.
pub(crate) fn service_events(entry: &ServiceEntry, allocation: &Allocation) -> Vec<Value> {
    let key = entry.key();
    allocation
        .conflicts_of(&key)
        .map(|c| {
            let why = match &c.holder {
                Some((ns, name)) => format!("held by service {ns}/{name}, created earlier"),
                None => "not usable in the cluster's service range".to_owned(),
            };
            let got = match &c.got {
                Some(got) => format!("this service uses {got} instead"),
                None => "nothing is left to use instead".to_owned(),
            };
            json!({
                "atMs": c.since_ms,
                "type": "Warning",
                "reason": if c.field == "spec.clusterIP" { "ClusterIPConflict" } else { "NodePortConflict" },
                "message": format!("{} {} is {why}; {got}", c.field, c.wanted),
                "count": 1,
            })
        })
        .collect()
}

/// A list of JSON objects as a Kubernetes `List`.
pub(crate) fn list(items: Vec<Value>) -> Value {
    list_object(items)
}

/// What applying one resource writes: the new stored object (or `None` when unchanged).
pub(crate) fn apply_one(
    resource: &Resource,
    old: Option<&StoredObject>,
    now_ms: u64,
    new_uid: impl FnOnce() -> String,
) -> (Outcome, Option<StoredObject>) {
    let outcome = apply_outcome(old.map(|o| o.stored_bytes()).as_deref(), resource);
    if outcome == Outcome::Unchanged {
        return (outcome, None);
    }
    let stored = resource.to_stored();
    let object: Value = serde_json::from_slice(&stored).unwrap_or(Value::Null);
    let generation = next_generation(
        old.map(|o| (o.stored_bytes(), o.generation))
            .as_ref()
            .map(|(b, g)| (b.as_slice(), *g)),
        resource,
    );
    let mut new = StoredObject {
        format: super::stored::FORMAT,
        generation,
        created_ms: old.map(|o| o.created_ms).unwrap_or(now_ms),
        uid: old.map(|o| o.uid.clone()).unwrap_or_else(new_uid),
        revision: old.map(|o| o.revision).unwrap_or(0),
        history: old.map(|o| o.history.clone()).unwrap_or_default(),
        object,
        batch: None,
        sealed: None,
    };
    if let Resource::Deployment(d) = resource {
        let old_template = old.and_then(|o| o.resource().ok()).and_then(|r| match r {
            Resource::Deployment(d) => Some(d.spec.template),
            _ => None,
        });
        match old_template {
            None => new.revision = 1,
            Some(t) if t != d.spec.template => {
                new.history.push(Revision {
                    revision: new.revision.max(1),
                    template: serde_json::to_value(&t).unwrap_or(Value::Null),
                });
                let limit = d.spec.revision_history_limit as usize;
                if new.history.len() > limit {
                    let excess = new.history.len() - limit;
                    new.history.drain(..excess);
                }
                new.revision = new.revision.max(1) + 1;
            }
            Some(_) => {}
        }
    }
    (outcome, Some(new))
}

/// `rollout undo`: the Deployment with its previous template (or revision `to`), as a new stored
/// object. Errors say why not.
pub(crate) fn undo(stored: &StoredObject, to: Option<u64>) -> Result<StoredObject, String> {
    let Ok(Resource::Deployment(mut d)) = stored.resource() else {
        return Err("not a deployment".into());
    };
    let target = match to {
        Some(rev) => stored
            .history
            .iter()
            .find(|r| r.revision == rev)
            .ok_or_else(|| format!("unable to find specified revision {rev} in history"))?,
        None => stored
            .history
            .last()
            .ok_or("no rollout history found: there is no previous revision to roll back to")?,
    };
    let template: PodTemplateSpec = serde_json::from_value(target.template.clone())
        .map_err(|e| format!("the stored revision {} is unreadable: {e}", target.revision))?;
    d.spec.template = template;
    d.metadata.clear_read_only();
    let resource = Resource::Deployment(d);
    let (_, new) = apply_one(&resource, Some(stored), crate::clock::wall_ms(), || {
        stored.uid.clone()
    });
    let mut new = new.ok_or("the previous revision is the current one")?;
    // The revision rolled back to leaves the history (Kubernetes renumbers it as the newest).
    let rolled = target.revision;
    new.history.retain(|r| r.revision != rolled);
    Ok(new)
}

/// `scale`: the stored Deployment with `replicas` changed.
pub(crate) fn scale(stored: &StoredObject, replicas: u32) -> Result<StoredObject, String> {
    let Ok(Resource::Deployment(mut d)) = stored.resource() else {
        return Err("not a deployment".into());
    };
    d.spec.replicas = replicas;
    d.metadata.clear_read_only();
    let resource = Resource::Deployment(d);
    let (_, new) = apply_one(&resource, Some(stored), crate::clock::wall_ms(), || {
        stored.uid.clone()
    });
    Ok(new.unwrap_or_else(|| stored.clone()))
}

/// The key of a resource in the replicated state.
pub(crate) fn key_of(resource: &Resource) -> shoal_gossip::ObjectKey {
    let k = resource.key();
    object_key(k.kind, &k.namespace, &k.name)
}

/// The key of a stored Deployment.
pub(crate) fn deployment_key(d: &Deployment) -> shoal_gossip::ObjectKey {
    object_key(
        Kind::Deployment,
        d.metadata.namespace.as_deref().unwrap_or("default"),
        &d.metadata.name,
    )
}

/// The rollout step the plan took for a Deployment, for `describe`.
pub(crate) fn rollout_of(
    d: &Deployment,
    snapshot: &Snapshot,
    now_ms: u64,
) -> super::plan::RolloutStep {
    rollout(d, snapshot, now_ms)
}

/// Pods of a Deployment.
pub(crate) fn pods_of<'a>(
    views: &'a [PodView],
    d: &'a Deployment,
) -> impl Iterator<Item = &'a PodView> {
    views
        .iter()
        .filter(move |v| v.deployment.as_deref() == Some(d.metadata.name.as_str()))
}

/// Whether a record is this pod's (namespace and name).
pub(crate) fn is_pod(record: &PodRecord, namespace: &str, name: &str) -> bool {
    record.pod.metadata.name == name && record.pod.metadata.namespace.as_deref() == Some(namespace)
}

/// What a config map's or secret's stored form contributes to a config digest: its object and
/// its sealed data (never plaintext).
fn digest_bytes(stored: &StoredObject) -> Vec<u8> {
    let mut bytes = stored.stored_bytes();
    if let Some(sealed) = &stored.sealed {
        bytes.extend_from_slice(sealed.as_bytes());
    }
    bytes
}

/// `shoal.io/restart-on-config-change`: stamps the pod template of each Deployment with that
/// annotation with the digest of the config maps and secrets its pods read
/// ([`pod_config::CONFIG_HASH`]), so that a change of one rolls the Deployment, following its
/// strategy, in the same write as the change.
///
/// `resources` is an apply (parsed and checked); Deployments of the apply are stamped, and
/// stored Deployments that read a config map or secret the apply changes are added to it,
/// stamped. `snapshot` holds the stored objects; `seal` gives the stored form of a new
/// config map or secret (sealed, as it will be written). Cost: the Deployments of the
/// namespaces the apply changes config in, and the objects their pods read.
pub(crate) fn stamp_config_digests(
    resources: &mut Vec<Resource>,
    snapshot: &Snapshot,
    seal: impl Fn(&ObjectKey, &Resource) -> StoredObject,
) {
    use crate::workload::pod_config::{self, CONFIG_HASH, RESTART_ON_CONFIG_CHANGE};
    let wants = |d: &Deployment| {
        d.metadata
            .annotations
            .get(RESTART_ON_CONFIG_CHANGE)
            .is_some_and(|v| v == "true")
    };
    // The config maps and secrets of this apply.
    let config_keys: BTreeSet<ObjectKey> = resources
        .iter()
        .filter(|r| matches!(r, Resource::ConfigMap(_) | Resource::Secret(_)))
        .map(key_of)
        .collect();
    let in_apply: BTreeSet<ObjectKey> = resources.iter().map(key_of).collect();
    // Stored Deployments that read what this apply changes.
    let namespaces: BTreeSet<&str> = config_keys.iter().map(|k| k.namespace.as_str()).collect();
    let mut added = Vec::new();
    for (key, object) in snapshot.objects_of(Kind::Deployment.key_kind()) {
        if !namespaces.contains(key.namespace.as_str()) || in_apply.contains(key) {
            continue;
        }
        let Some((d, _)) = object.deployment() else {
            continue;
        };
        if !wants(d) {
            continue;
        }
        let reads = pod_config::reference_keys(&key.namespace, &d.spec.template.spec);
        if reads.iter().any(|k| config_keys.contains(k)) {
            added.push(Resource::Deployment(d.clone()));
        }
    }
    resources.extend(added);
    // The stored form (sealed, for a secret) of each object of this apply that a Deployment
    // to stamp reads: made only for those, and only when there is one.
    let mut read = BTreeSet::new();
    for r in resources.iter() {
        if let Resource::Deployment(d) = r {
            if wants(d) {
                let namespace = d.metadata.namespace.as_deref().unwrap_or("default");
                read.extend(pod_config::reference_keys(namespace, &d.spec.template.spec));
            }
        }
    }
    let applied: BTreeMap<ObjectKey, Vec<u8>> = resources
        .iter()
        .filter(|r| matches!(r, Resource::ConfigMap(_) | Resource::Secret(_)))
        .filter_map(|r| {
            let key = key_of(r);
            read.contains(&key).then(|| {
                let bytes = digest_bytes(&seal(&key, r));
                (key, bytes)
            })
        })
        .collect();
    let stored = |key: &ObjectKey| -> Option<Vec<u8>> {
        if let Some(bytes) = applied.get(key) {
            return Some(bytes.clone());
        }
        snapshot.object(key).map(|o| digest_bytes(&o.stored))
    };
    for r in resources.iter_mut() {
        let Resource::Deployment(d) = r else {
            continue;
        };
        if !wants(d) {
            continue;
        }
        let namespace = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let digest = pod_config::config_digest(&namespace, &d.spec.template.spec, stored);
        d.spec
            .template
            .metadata
            .annotations
            .insert(CONFIG_HASH.to_owned(), digest);
    }
}
