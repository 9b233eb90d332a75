//! How workload objects and pod records are kept in the replicated state.
//!
//! - An applied object (`Key::Object(kind, namespace, name)`, kinds `namespace`, `pod`,
//!   `deployment`) holds a [`StoredObject`]: the manifest's canonical stored form plus what the
//!   cluster adds: generation, creation time, uid, and for a Deployment its revision history
//!   (for `rollout undo`).
//! - A pod a node runs is reported by that node as an owned entry `pod/<namespace>/<name>`
//!   holding a [`PodRecord`]: the pod (metadata and spec), its status, which replica of which
//!   workload it is, and recent events.
//!
//! Both are JSON: readable when debugging, and new fields can be added without breaking older
//! readers (`#[serde(default)]`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_gossip::ObjectKey;

use crate::manifest::{Kind, Pod, PodStatus, Resource, StoredError};

/// Prefix of the owned entries where nodes report their pods.
pub(crate) const POD_RECORD_PREFIX: &str = "pod/";

/// An applied object as stored in the replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredObject {
    /// `metadata.generation`: 1 on creation, +1 on every spec change.
    pub(crate) generation: u64,
    /// When the object was first created, ms since the Unix epoch.
    pub(crate) created_ms: u64,
    /// The object's uid (stable across updates).
    pub(crate) uid: String,
    /// A Deployment's current revision (1 on creation, +1 on every template change).
    #[serde(default)]
    pub(crate) revision: u64,
    /// Earlier templates of a Deployment, newest last, at most `revisionHistoryLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) history: Vec<Revision>,
    /// The manifest's canonical stored form ([`Resource::to_stored`]), as JSON.
    pub(crate) object: Value,
}

/// A Deployment template that ran before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Revision {
    /// Its revision number.
    pub(crate) revision: u64,
    /// The pod template (`spec.template`), as JSON.
    pub(crate) template: Value,
}

impl StoredObject {
    /// Decodes stored bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<StoredObject> {
        serde_json::from_slice(bytes).ok()
    }

    /// Encodes for storage.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("stored objects serialise")
    }

    /// The resource, with its read-only metadata (uid, generation, creation time) set.
    pub(crate) fn resource(&self) -> Result<Resource, StoredError> {
        let bytes = serde_json::to_vec(&self.object).unwrap_or_default();
        let mut resource = Resource::from_stored(&bytes)?;
        let meta = resource.metadata_mut();
        meta.uid = Some(self.uid.clone());
        meta.generation = Some(self.generation);
        meta.creation_timestamp = Some(crate::manifest::Timestamp(self.created_ms));
        Ok(resource)
    }

    /// The canonical stored bytes of the resource (what `apply` compares).
    pub(crate) fn stored_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.object).unwrap_or_default()
    }
}

/// The replicated-state key of a resource.
pub(crate) fn object_key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: kind.key_kind().to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// Which replica of which workload a pod is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReplicaRef {
    /// The scheduler workload: `deployment/<ns>/<name>-<pod-template-hash>` or
    /// `pod/<ns>/<name>`.
    pub(crate) workload: String,
    /// The ordinal within the workload.
    pub(crate) ordinal: u32,
}

/// A pod event, for `describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodEvent {
    /// When, ms since the Unix epoch.
    pub(crate) at_ms: u64,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// CamelCase reason (`Pulling`, `Started`, `BackOff`, `Unhealthy` ...).
    pub(crate) reason: String,
    /// What happened.
    pub(crate) message: String,
    /// How many times in a row (repeats are folded).
    #[serde(default = "one")]
    pub(crate) count: u32,
}

fn one() -> u32 {
    1
}

/// What a node reports about a pod it runs (owned entry `pod/<ns>/<name>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodRecord {
    /// The pod: metadata (name, namespace, labels, uid, owner) and spec (with `nodeName`).
    pub(crate) pod: Pod,
    /// Its status.
    pub(crate) status: PodStatus,
    /// The replica it is.
    pub(crate) replica: ReplicaRef,
    /// The Deployment it belongs to, if any (by name, in the pod's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deployment: Option<String>,
    /// The Deployment's pod-template-hash it runs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) template_hash: Option<String>,
    /// When the pod became ready, ms since the Unix epoch (for minReadySeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ready_since_ms: Option<u64>,
    /// Recent events, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) events: Vec<PodEvent>,
}

impl PodRecord {
    /// Decodes an owned entry's value.
    pub(crate) fn decode(bytes: &[u8]) -> Option<PodRecord> {
        serde_json::from_slice(bytes).ok()
    }

    /// Encodes for the owned entry.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("pod records serialise")
    }

    /// Whether the pod counts as ready (its `Ready` condition is true).
    pub(crate) fn is_ready(&self) -> bool {
        self.status.conditions.iter().any(|c| {
            c.kind == crate::manifest::PodConditionType::Ready
                && c.status == crate::manifest::ConditionStatus::True
        })
    }

    /// Whether the pod is finished and will not run again.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(
            self.status.phase,
            crate::manifest::PodPhase::Succeeded | crate::manifest::PodPhase::Failed
        )
    }
}

/// The owned-entry name of a pod's record.
pub(crate) fn record_name(namespace: &str, name: &str) -> String {
    format!("{POD_RECORD_PREFIX}{namespace}/{name}")
}
