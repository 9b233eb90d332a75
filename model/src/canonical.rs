//! The canonical stored form, hashes, and what `apply` reports.
//!
//! The stored form of a [`Resource`] is its Kubernetes JSON with every default filled in, the
//! read-only fields left out (`uid`, `resourceVersion`, `generation`, timestamps, a pod's
//! `nodeName`), fields in declaration order and maps sorted. Two manifests that mean the same
//! (`cpu: 0.5` and `cpu: 500m`; `replicas: 1` and no `replicas`; `args: []` and no `args`)
//! store the same bytes, which is what makes `apply` idempotent: `unchanged` is byte equality.
//!
//! A Service's `spec.clusterIP` and `nodePort`s are not read-only: once the cluster assigns
//! them (at the first apply), they are part of the stored form, so that they never change
//! afterwards. A manifest that leaves them out is completed from the stored object before the
//! comparison (`workload::service::prepare`), so re-applying it is `unchanged`.
//!
//! Invariant: the encoding is part of the cluster state and of the hashes. Changing it (a new
//! field written when it has its default, a renamed field, another quantity spelling) changes
//! stored bytes and template hashes, which reports every object `configured` and rolls every
//! Deployment once after an upgrade. New fields must therefore be left out when they hold
//! their default.

use xxhash_rust::xxh3::xxh3_64;

use crate::model::{
    ConfigMap, Deployment, Kind, Namespace, ObjectMeta, Pod, Resource, Secret, Service,
};
use crate::validate::validate_stored;

/// Why stored bytes are not a valid object.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    /// Not JSON of the expected shape.
    #[error("stored object does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// An `apiVersion`/`kind` this version does not know.
    #[error("stored object has unsupported apiVersion/kind {api_version}/{kind}")]
    UnknownKind {
        /// The stored `apiVersion`.
        api_version: String,
        /// The stored `kind`.
        kind: String,
    },
    /// A kind that needs a spec was stored without one.
    #[error("stored {0} has no spec")]
    MissingSpec(Kind),
    /// Decodes but breaks a rule (a peer running other code, or a corrupted write).
    #[error("stored object is invalid: {0}")]
    Invalid(String),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<serde_json::Value>,
    // A ConfigMap's and a Secret's fields, which have no spec.
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    binary_data: Option<serde_json::Value>,
    #[serde(default)]
    immutable: bool,
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
}

impl Resource {
    /// The canonical JSON stored in the replicated state (see the module docs).
    pub fn to_stored(&self) -> Vec<u8> {
        let mut canonical = self.clone();
        canonical.clear_read_only();
        // Serializing plain structs of strings, integers and maps cannot fail.
        serde_json::to_vec(&canonical).unwrap_or_default()
    }

    /// Decodes and checks a stored object.
    pub fn from_stored(bytes: &[u8]) -> Result<Resource, StoredError> {
        let stored: Stored = serde_json::from_slice(bytes)?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == stored.kind && k.api_version() == stored.api_version)
            .ok_or_else(|| StoredError::UnknownKind {
                api_version: stored.api_version.clone(),
                kind: stored.kind.clone(),
            })?;
        let metadata = stored.metadata;
        if !matches!(kind, Kind::ConfigMap | Kind::Secret)
            && (stored.data.is_some()
                || stored.binary_data.is_some()
                || stored.immutable
                || stored.secret_type.is_some())
        {
            return Err(StoredError::Invalid(format!(
                "a {kind} has no data, binaryData, immutable or type"
            )));
        }
        let mut resource = match kind {
            Kind::Namespace => {
                if stored.spec.is_some() {
                    return Err(StoredError::Invalid("a Namespace has no spec".into()));
                }
                Resource::Namespace(Namespace { metadata })
            }
            Kind::Pod => {
                let spec = stored.spec.ok_or(StoredError::MissingSpec(kind))?;
                Resource::Pod(Pod {
                    metadata,
                    spec: serde_json::from_value(spec)?,
                })
            }
            Kind::Deployment => {
                let spec = stored.spec.ok_or(StoredError::MissingSpec(kind))?;
                Resource::Deployment(Deployment {
                    metadata,
                    spec: serde_json::from_value(spec)?,
                })
            }
            Kind::Service => {
                let spec = stored.spec.ok_or(StoredError::MissingSpec(kind))?;
                Resource::Service(Service {
                    metadata,
                    spec: serde_json::from_value(spec)?,
                })
            }
            Kind::ConfigMap | Kind::Secret if stored.spec.is_some() => {
                return Err(StoredError::Invalid(format!("a {kind} has no spec")));
            }
            Kind::ConfigMap => {
                if stored.secret_type.is_some() {
                    return Err(StoredError::Invalid("a ConfigMap has no type".into()));
                }
                Resource::ConfigMap(ConfigMap {
                    metadata,
                    data: optional_value(stored.data)?,
                    binary_data: optional_value(stored.binary_data)?,
                    immutable: stored.immutable,
                })
            }
            Kind::Secret => {
                if stored.binary_data.is_some() {
                    return Err(StoredError::Invalid("a Secret has no binaryData".into()));
                }
                Resource::Secret(Secret {
                    metadata,
                    data: optional_value(stored.data)?,
                    secret_type: stored
                        .secret_type
                        .ok_or_else(|| StoredError::Invalid("a Secret needs a type".into()))?,
                    immutable: stored.immutable,
                })
            }
        };
        // Read-only fields do not belong in the stored form; whoever wrote them, they are not
        // part of the object.
        resource.clear_read_only();
        if kind.is_namespaced() && resource.metadata().namespace.is_none() {
            return Err(StoredError::Invalid("metadata.namespace: missing".into()));
        }
        if let Some(issue) = validate_stored(&resource).into_iter().next() {
            return Err(StoredError::Invalid(format!(
                "{}: {}",
                issue.path, issue.message
            )));
        }
        Ok(resource)
    }

    /// Clears what the stored form leaves out: read-only metadata and a pod's `nodeName`.
    pub fn clear_read_only(&mut self) {
        self.metadata_mut().clear_read_only();
        if let Resource::Pod(p) = self {
            p.spec.node_name = None;
        }
    }

    /// xxh3 of the canonical JSON of the spec: what `metadata.generation` follows. A Namespace
    /// has no spec; its hash is that of `{}`.
    pub fn spec_hash(&self) -> u64 {
        let bytes = match self {
            Resource::Namespace(_) => b"{}".to_vec(),
            Resource::Pod(p) => {
                let mut spec = p.spec.clone();
                spec.node_name = None;
                serde_json::to_vec(&spec).unwrap_or_default()
            }
            Resource::Deployment(d) => serde_json::to_vec(&d.spec).unwrap_or_default(),
            Resource::Service(svc) => serde_json::to_vec(&svc.spec).unwrap_or_default(),
            // Their content is what they are: every change of it counts, as a spec's would.
            Resource::ConfigMap(_) | Resource::Secret(_) => {
                let mut canonical = self.clone();
                *canonical.metadata_mut() = ObjectMeta::default();
                serde_json::to_vec(&canonical).unwrap_or_default()
            }
        };
        xxh3_64(&bytes)
    }
}

/// A map field that may be absent (an empty map).
fn optional_value<T: serde::de::DeserializeOwned + Default>(
    value: Option<serde_json::Value>,
) -> Result<T, StoredError> {
    Ok(match value {
        Some(v) => serde_json::from_value(v)?,
        None => T::default(),
    })
}

/// Characters of a pod-template-hash: Kubernetes' "safe" alphabet, without vowels (no words)
/// and without look-alikes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

impl Deployment {
    /// xxh3 of the canonical JSON of the pod template (labels, annotations and pod spec).
    /// Replicas, strategy and the other rollout settings do not count: changing them scales
    /// or paces a rollout but does not start one.
    pub fn template_hash(&self) -> u64 {
        xxh3_64(&serde_json::to_vec(&self.spec.template).unwrap_or_default())
    }

    /// The template hash as Kubernetes writes its `pod-template-hash` label: 10 characters of
    /// a vowel-free alphabet. Pods of a revision are named
    /// `<deployment>-<pod-template-hash>-<5 random characters of the same alphabet>` and carry
    /// the label `pod-template-hash=<this>`.
    pub fn pod_template_hash(&self) -> String {
        safe_chars(self.template_hash(), 10)
    }
}

/// `len` characters of Kubernetes' safe alphabet (no vowels, no look-alikes) from a hash, as in
/// pod-template-hashes and the random suffixes of pod names.
pub fn safe_chars(mut hash: u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            let c = SAFE_ALPHABET[(hash % SAFE_ALPHABET.len() as u64) as usize];
            hash /= SAFE_ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

/// What `apply` did to an object, as kubectl prints it (`deployment.apps/web configured`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// There was no such object.
    Created,
    /// The object differs from the stored one.
    Configured,
    /// The object is the stored one.
    Unchanged,
}

impl Outcome {
    /// `created`, `configured` or `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What applying `new` over the stored bytes `old` (`None`: absent) does. The caller writes
/// `new.to_stored()` unless the outcome is [`Outcome::Unchanged`].
///
/// Besides byte equality, an old form that decodes to the same object is also `unchanged`, so
/// that stored bytes written by an older encoding do not make every re-apply a change.
pub fn apply_outcome(old: Option<&[u8]>, new: &Resource) -> Outcome {
    let Some(old) = old else {
        return Outcome::Created;
    };
    if old == new.to_stored().as_slice() {
        return Outcome::Unchanged;
    }
    let mut new = new.clone();
    new.clear_read_only();
    match Resource::from_stored(old) {
        Ok(stored) if stored == new => Outcome::Unchanged,
        _ => Outcome::Configured,
    }
}

/// Why applying `new` over the stored `old` is refused, as the API server refuses it: the data
/// of an immutable ConfigMap or Secret, and its `immutable` flag, cannot change (only deleting
/// and creating it again can), and a Secret's `type` never changes. `None` when the change is
/// allowed (and for every other kind). The message names the fields, Kubernetes' way:
/// ``data: field is immutable when `immutable` is set``.
pub fn immutable_change(old: &Resource, new: &Resource) -> Option<String> {
    const FROZEN: &str = "field is immutable when `immutable` is set";
    let mut problems = Vec::new();
    match (old, new) {
        (Resource::ConfigMap(old), Resource::ConfigMap(new)) if old.immutable => {
            if !new.immutable {
                problems.push(format!("immutable: {FROZEN}"));
            }
            if old.data != new.data {
                problems.push(format!("data: {FROZEN}"));
            }
            if old.binary_data != new.binary_data {
                problems.push(format!("binaryData: {FROZEN}"));
            }
        }
        (Resource::Secret(old), Resource::Secret(new)) => {
            if old.secret_type != new.secret_type {
                problems.push(format!(
                    "type: field is immutable (it is {:?}; delete the secret to change it)",
                    old.secret_type
                ));
            }
            if old.immutable {
                if !new.immutable {
                    problems.push(format!("immutable: {FROZEN}"));
                }
                if old.data != new.data {
                    problems.push(format!("data: {FROZEN}"));
                }
            }
        }
        _ => {}
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// The `metadata.generation` to store with `new`, Kubernetes' rule: 1 on creation, +1 when the
/// spec changes, unchanged when only metadata (labels, annotations) changes.
///
/// `old` is the stored bytes and the generation stored with them. The stored form has no
/// generation, so the caller keeps it next to the bytes (for example in the entry's envelope)
/// and, on `get`, sets `metadata.generation` from it. A Deployment's status reports the
/// generation it has acted on as `observedGeneration`; a rollout is complete when that equals
/// `generation` and the replica counts agree.
pub fn next_generation(old: Option<(&[u8], u64)>, new: &Resource) -> u64 {
    match old {
        None => 1,
        Some((bytes, generation)) => match Resource::from_stored(bytes) {
            Ok(stored) if stored.spec_hash() == new.spec_hash() => generation.max(1),
            _ => generation.saturating_add(1),
        },
    }
}
