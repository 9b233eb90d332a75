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
//! readers (`#[serde(default)]`). Every value carries a `format` number (absent means 1): a
//! change older readers would misread raises it, and a reader refuses formats newer than its
//! own ([`DecodeError::Newer`]) instead of misreading them. A value that fails to decode is
//! counted and logged by whoever reads it (the projector, see [`super::projector`]), never
//! dropped silently.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_gossip::ObjectKey;

use base64::Engine as _;

use crate::manifest::{Kind, Pod, PodStatus, Resource, StoredError};
use crate::secret_box::{OpenError, SecretBox};

/// The newest value format this build reads and writes.
pub(crate) const FORMAT: u32 = 1;

/// Serde default of `format` fields: values from before formats were numbered.
pub(crate) fn format_one() -> u32 {
    1
}

/// Why a stored value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The bytes are not a value of this type.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A newer shoal wrote it, in a format this one does not know.
    #[error("written in format {0}, newer than this agent's {FORMAT}: upgrade this agent")]
    Newer(u32),
}

/// Decodes a JSON value.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Refuses formats newer than this build's.
pub(crate) fn check_format(format: u32) -> Result<(), DecodeError> {
    if format > FORMAT {
        Err(DecodeError::Newer(format))
    } else {
        Ok(())
    }
}

/// Prefix of the owned entries where nodes report their pods.
pub(crate) const POD_RECORD_PREFIX: &str = "pod/";

/// An applied object as stored in the replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredObject {
    /// The value's format ([`FORMAT`]).
    #[serde(default = "format_one")]
    pub(crate) format: u32,
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
    /// The objects written together with this version of it, when a request wrote several
    /// (see [`super::batch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<super::batch::Batch>,
    /// A Secret's `data`, sealed with the cluster's secret box ([`SecretBox`]), in base64:
    /// `object` then has no `data`, so neither the replicated state nor any disk holds the
    /// values. Opened only by [`StoredObject::unsealed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sealed: Option<String>,
}

/// Why a sealed secret could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnsealError {
    /// The sealed text is not base64.
    #[error("sealed data is not base64")]
    Base64,
    /// It did not open.
    #[error("sealed data {0}")]
    Open(#[from] OpenError),
    /// It opened to something that is not a map of base64 values.
    #[error("sealed data is not a secret's data: {0}")]
    Malformed(String),
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
    pub(crate) fn decode(bytes: &[u8]) -> Result<StoredObject, DecodeError> {
        let object: StoredObject = decode_json(bytes)?;
        check_format(object.format)?;
        Ok(object)
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

    /// What a Secret's sealed data is bound to: its key, so that it opens nowhere else.
    fn seal_context(key: &ObjectKey) -> Vec<u8> {
        format!("secret/{}/{}", key.namespace, key.name).into_bytes()
    }

    /// Seals a Secret's `data` (nothing to do for other kinds, or a secret sealed already).
    /// Deterministic: the same data seals to the same bytes ([`SecretBox`]).
    pub(crate) fn seal(&mut self, key: &ObjectKey, secret_box: &SecretBox) {
        if key.kind != Kind::Secret.key_kind() || self.sealed.is_some() {
            return;
        }
        let data = self
            .object
            .as_object_mut()
            .and_then(|o| o.remove("data"))
            .unwrap_or(Value::Object(serde_json::Map::new()));
        let plain = serde_json::to_vec(&data).unwrap_or_default();
        let sealed = secret_box.seal(&Self::seal_context(key), &plain);
        self.sealed = Some(base64::engine::general_purpose::STANDARD.encode(sealed));
    }

    /// A copy with a Secret's `data` opened and back in `object` (itself when not sealed).
    pub(crate) fn unsealed(
        &self,
        key: &ObjectKey,
        secret_box: &SecretBox,
    ) -> Result<StoredObject, UnsealError> {
        let Some(sealed) = &self.sealed else {
            return Ok(self.clone());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| UnsealError::Base64)?;
        let plain = secret_box.open(&Self::seal_context(key), &bytes)?;
        let data: serde_json::Map<String, Value> =
            serde_json::from_slice(&plain).map_err(|e| UnsealError::Malformed(e.to_string()))?;
        let mut open = self.clone();
        open.sealed = None;
        if !data.is_empty() {
            if let Some(object) = open.object.as_object_mut() {
                object.insert("data".into(), Value::Object(data));
            }
        }
        Ok(open)
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
    /// The value's format ([`FORMAT`]).
    #[serde(default = "format_one")]
    pub(crate) format: u32,
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
    /// The run of the node's agent that wrote it (its node info's `run`; 0 from an agent that
    /// does not number its runs). A record of an earlier run than the node's current one
    /// speaks of a past life: the API does not count it (see [`super::snapshot::Counted`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) run: u64,
}

/// Serde's `skip_serializing_if` for numbers whose 0 means "not given".
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PodRecord {
    /// Decodes an owned entry's value.
    pub(crate) fn decode(bytes: &[u8]) -> Result<PodRecord, DecodeError> {
        let record: PodRecord = decode_json(bytes)?;
        check_format(record.format)?;
        Ok(record)
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

    /// Whether the pod is available: ready for at least `min_ready_ms` (a Deployment's
    /// `minReadySeconds`) at `now_ms`. The one definition rollouts and statuses use.
    pub(crate) fn is_available(&self, min_ready_ms: u64, now_ms: u64) -> bool {
        self.is_ready()
            && (min_ready_ms == 0
                || self
                    .ready_since_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= min_ready_ms))
    }

    /// When a ready pod that is not available yet becomes available (`None` when it is not
    /// ready, or already available).
    pub(crate) fn available_at(&self, min_ready_ms: u64, now_ms: u64) -> Option<u64> {
        let at = self.ready_since_ms?.saturating_add(min_ready_ms);
        (self.is_ready() && at > now_ms).then_some(at)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ClusterKey;
    use crate::workload::view::apply_one;

    const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: hunter2-unique}\n";

    #[test]
    fn a_sealed_secret_holds_no_value_opens_to_itself_and_seals_the_same_again() {
        let secret_box = SecretBox::new(&ClusterKey::from_bytes([3; 32]));
        let resource = crate::manifest::parse("s.yaml", SECRET.as_bytes())
            .unwrap()
            .remove(0);
        let key = object_key(Kind::Secret, "default", "db");
        let (_, new) = apply_one(&resource, None, 1, || "uid".into());
        let plain = new.unwrap();
        let mut sealed = plain.clone();
        sealed.seal(&key, &secret_box);
        let bytes = sealed.encode();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("hunter2-unique"), "{text}");
        // base64 of the value, as `data` holds it
        assert!(!text.contains("aHVudGVyMi11bmlxdWU"), "{text}");
        let decoded = StoredObject::decode(&bytes).unwrap();
        assert_eq!(decoded.unsealed(&key, &secret_box).unwrap(), plain);
        // Deterministic: the same data seals to the same bytes.
        let mut again = plain.clone();
        again.seal(&key, &secret_box);
        assert_eq!(again.encode(), bytes);
        // Sealing twice changes nothing; other keys and other secrets do not open it.
        sealed.seal(&key, &secret_box);
        assert_eq!(sealed.encode(), bytes);
        let other = SecretBox::new(&ClusterKey::from_bytes([4; 32]));
        assert!(decoded.unsealed(&key, &other).is_err());
        let elsewhere = object_key(Kind::Secret, "default", "other");
        assert!(decoded.unsealed(&elsewhere, &secret_box).is_err());
        // A sealed secret still decodes (its data is empty until opened).
        assert!(matches!(decoded.resource(), Ok(Resource::Secret(s)) if s.data.is_empty()));
    }
}
