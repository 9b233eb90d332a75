//! What a pod's containers get from config maps, secrets and the downward API: environment
//! variables (`env[].valueFrom`, `envFrom`) and the files of its volumes, resolved from the
//! objects the cluster holds, as the kubelet resolves them.
//!
//! Pure: the objects come through [`Objects`], the pod's facts (its IP is the runtime's, so
//! `status.podIP` becomes a name the runtime fills) through [`PodFacts`]. The supervisor
//! resolves a pod when it starts it and again when an object it reads changes (live volume
//! updates); the API uses [`references`] and [`config_digest`] for the
//! `shoal.io/restart-on-config-change` annotation.
//!
//! Kubernetes' rules kept here:
//! - A missing config map, secret or key that is not `optional` stops the pod from starting
//!   ([`Missing`]: `CreateContainerConfigError`); an optional one is left out.
//! - `envFrom` comes first, in order, then `env` (a later variable of the same name wins);
//!   `envFrom` keys that are not valid variable names are skipped and reported.
//! - Volume files: every key as a file of its name, or the `items` only; `defaultMode` unless
//!   an item has its `mode`. Secret values (and projected volumes with a secret) are marked
//!   sensitive: the runtime keeps them in RAM-backed storage only.
//!
//! Cost: one resolution reads the objects the pod names, once each, and copies their values;
//! nothing else of the cluster's state.

use std::collections::{BTreeMap, BTreeSet};

use shoal_gossip::ObjectKey;
use xxhash_rust::xxh3::Xxh3;

use crate::manifest::{
    ConfigMap, Container, Cpu, DownwardApiFile, EmptyDirMedium, EnvFromRef, EnvVarSource,
    HostPathType, KeyToPath, Kind, Memory, ObjectFieldSelector, Pod, PodSpec, ProjectionSource,
    ResourceFieldSelector, Secret, VolumeSource,
};
use crate::runtime::{HostPathCheck, HostPathVolume, Mount, ScratchVolume, VolumeFile, VolumeSpec};
use crate::workload::stored::object_key;

/// The annotation on a Deployment that rolls it when a config map or secret its pods use
/// changes.
pub(crate) const RESTART_ON_CONFIG_CHANGE: &str = "shoal.io/restart-on-config-change";
/// The pod template annotation that carries the digest of the config maps and secrets the
/// pods use (for Deployments with [`RESTART_ON_CONFIG_CHANGE`]): a change of it is a change of
/// the template, so the Deployment rolls following its strategy.
pub(crate) const CONFIG_HASH: &str = "shoal.io/config-hash";

/// The config maps and secrets a pod can read.
pub(crate) trait Objects {
    /// The config map, if the cluster holds it.
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    /// The secret, opened, if the cluster holds it (`Err`: it does not open on this node).
    fn secret(&self, namespace: &str, name: &str) -> Option<Result<Secret, String>>;
}

/// What a pod's resolution needs to know besides its objects.
#[derive(Clone, Debug)]
pub(crate) struct PodFacts<'a> {
    /// The pod's uid (`metadata.uid`).
    pub(crate) uid: &'a str,
    /// The node it runs on (`spec.nodeName`).
    pub(crate) node_name: &'a str,
    /// The node's address (`status.hostIP`).
    pub(crate) host_ip: &'a str,
    /// The node's CPU (millicores) and memory (bytes): a limit a container does not set is
    /// the node's, as in Kubernetes.
    pub(crate) allocatable: (u64, u64),
}

/// Why a pod cannot start yet: an object or key it needs is missing. The message is
/// Kubernetes' (`configmap "app" not found`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Missing(pub(crate) String);

/// One container's share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ContainerConfig {
    /// Variables, in order (a later one of the same name wins).
    pub(crate) env: Vec<(String, String)>,
    /// Names of `env` whose values come from secrets.
    pub(crate) sensitive_env: Vec<String>,
    /// Names to set to the pod's IP (`status.podIP`).
    pub(crate) pod_ip_env: Vec<String>,
    /// Its mounts.
    pub(crate) mounts: Vec<Mount>,
}

/// A pod's resolution.
#[derive(Clone, Debug, Default)]
pub(crate) struct PodConfig {
    /// Per container, in the spec's order.
    pub(crate) containers: Vec<ContainerConfig>,
    /// The volumes, with their files.
    pub(crate) volumes: Vec<VolumeSpec>,
    /// Scratch directories (`emptyDir`).
    pub(crate) scratch: Vec<ScratchVolume>,
    /// Paths of the host (`hostPath`).
    pub(crate) host_paths: Vec<HostPathVolume>,
    /// What to report as events (`envFrom` keys skipped).
    pub(crate) warnings: Vec<String>,
}

/// Whether `name` is a variable name Kubernetes accepts from `envFrom` (letters, digits, `_`,
/// `-`, `.`, not starting with a digit).
pub(crate) fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The config maps and secrets (by kind and name, in the pod's namespace) a pod spec reads.
pub(crate) fn references(spec: &PodSpec) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    for c in &spec.containers {
        for e in &c.env_from {
            match &e.source {
                EnvFromRef::ConfigMapRef(r) => out.insert((Kind::ConfigMap, r.name.clone())),
                EnvFromRef::SecretRef(r) => out.insert((Kind::Secret, r.name.clone())),
            };
        }
        for e in &c.env {
            match &e.value_from {
                Some(EnvVarSource::ConfigMapKeyRef(k)) => {
                    out.insert((Kind::ConfigMap, k.name.clone()));
                }
                Some(EnvVarSource::SecretKeyRef(k)) => {
                    out.insert((Kind::Secret, k.name.clone()));
                }
                _ => {}
            }
        }
    }
    for v in &spec.volumes {
        match &v.source {
            VolumeSource::ConfigMap(cm) => {
                out.insert((Kind::ConfigMap, cm.name.clone()));
            }
            VolumeSource::Secret(s) => {
                out.insert((Kind::Secret, s.secret_name.clone()));
            }
            VolumeSource::Projected(p) => {
                for source in &p.sources {
                    match source {
                        ProjectionSource::ConfigMap(k) => {
                            out.insert((Kind::ConfigMap, k.name.clone()));
                        }
                        ProjectionSource::Secret(k) => {
                            out.insert((Kind::Secret, k.name.clone()));
                        }
                        ProjectionSource::DownwardApi(_) => {}
                    }
                }
            }
            VolumeSource::DownwardApi(_)
            | VolumeSource::EmptyDir(_)
            | VolumeSource::HostPath(_) => {}
        }
    }
    out
}

/// The replicated-state keys of what a pod spec reads.
pub(crate) fn reference_keys(namespace: &str, spec: &PodSpec) -> Vec<ObjectKey> {
    references(spec)
        .into_iter()
        .map(|(kind, name)| object_key(kind, namespace, &name))
        .collect()
}

/// A digest of the objects a pod spec reads, as stored (a secret sealed: the digest says
/// nothing of its values): `stored` gives an object's stored bytes, `None` when it is absent.
pub(crate) fn config_digest(
    namespace: &str,
    spec: &PodSpec,
    stored: impl Fn(&ObjectKey) -> Option<Vec<u8>>,
) -> String {
    let mut hasher = Xxh3::new();
    for key in reference_keys(namespace, spec) {
        hasher.update(key.kind.as_bytes());
        hasher.update(b"/");
        hasher.update(key.name.as_bytes());
        match stored(&key) {
            Some(bytes) => {
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            None => hasher.update(b"absent"),
        }
    }
    format!("{:016x}", hasher.digest())
}

/// Kubernetes' words for a config map or secret (`kind`) that is not there.
fn not_found(kind: Kind, name: &str) -> Missing {
    let what = match kind {
        Kind::Secret => "secret",
        _ => "configmap",
    };
    Missing(format!("{what} \"{name}\" not found"))
}

/// Resolves a pod's variables and volumes (see the module docs).
pub(crate) fn resolve(
    pod: &Pod,
    facts: &PodFacts<'_>,
    objects: &dyn Objects,
) -> Result<PodConfig, Missing> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut cache = Cache::new(namespace, objects);
    let mut out = PodConfig::default();
    for container in &pod.spec.containers {
        let config = container_config(pod, container, facts, &mut cache, &mut out.warnings)?;
        out.containers.push(config);
    }
    for volume in &pod.spec.volumes {
        match &volume.source {
            VolumeSource::EmptyDir(e) => {
                out.scratch.push(ScratchVolume {
                    name: volume.name.clone(),
                    memory: e.medium == EmptyDirMedium::Memory,
                    size_limit: e.size_limit.map(|m| m.bytes()),
                });
                continue;
            }
            VolumeSource::HostPath(h) => {
                out.host_paths.push(HostPathVolume {
                    name: volume.name.clone(),
                    path: h.path.clone(),
                    check: host_path_check(h.path_type),
                });
                continue;
            }
            _ => {}
        }
        let (files, sensitive) = volume_files(pod, &volume.source, facts, &mut cache)?;
        out.volumes.push(VolumeSpec {
            name: volume.name.clone(),
            sensitive,
            files,
        });
    }
    Ok(out)
}

/// The keys of a config map or secret with their bytes.
type Entries = Vec<(String, Vec<u8>)>;

/// The objects of one resolution, each read once.
struct Cache<'a> {
    namespace: &'a str,
    objects: &'a dyn Objects,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
}

impl<'a> Cache<'a> {
    fn new(namespace: &'a str, objects: &'a dyn Objects) -> Self {
        Cache {
            namespace,
            objects,
            config_maps: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    fn config_map(&mut self, name: &str) -> Option<&ConfigMap> {
        let (namespace, objects) = (self.namespace, self.objects);
        self.config_maps
            .entry(name.to_owned())
            .or_insert_with(|| objects.config_map(namespace, name))
            .as_ref()
    }

    /// The secret; one that does not open on this node is missing, with the reason.
    fn secret(&mut self, name: &str) -> Result<Option<&Secret>, Missing> {
        if !self.secrets.contains_key(name) {
            let got = match self.objects.secret(self.namespace, name) {
                None => None,
                Some(Ok(secret)) => Some(secret),
                Some(Err(why)) => {
                    return Err(Missing(format!(
                        "secret \"{name}\" cannot be read on this node: {why}"
                    )));
                }
            };
            self.secrets.insert(name.to_owned(), got);
        }
        Ok(self.secrets[name].as_ref())
    }

    /// Every key of a config map or secret (`kind`) with its bytes; `None` when absent.
    fn entries(&mut self, kind: Kind, name: &str) -> Result<Option<Entries>, Missing> {
        Ok(match kind {
            Kind::Secret => self.secret(name)?.map(|secret| {
                secret
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect()
            }),
            _ => self.config_map(name).map(|cm| {
                cm.entries()
                    .map(|(k, v)| (k.to_owned(), v.to_vec()))
                    .collect()
            }),
        })
    }

    /// The value of a config map's key: `Ok(None)` when optional and missing.
    fn config_map_key(
        &mut self,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<Vec<u8>>, Missing> {
        let namespace = self.namespace;
        match self.config_map(name) {
            None if optional => Ok(None),
            None => Err(Missing(format!("configmap \"{name}\" not found"))),
            Some(cm) => match cm.entries().find(|(k, _)| *k == key) {
                Some((_, v)) => Ok(Some(v.to_vec())),
                None if optional => Ok(None),
                None => Err(Missing(format!(
                    "couldn't find key {key} in ConfigMap {namespace}/{name}"
                ))),
            },
        }
    }

    /// The value of a secret's key: `Ok(None)` when optional and missing.
    fn secret_key(
        &mut self,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<Vec<u8>>, Missing> {
        let namespace = self.namespace;
        match self.secret(name)? {
            None if optional => Ok(None),
            None => Err(Missing(format!("secret \"{name}\" not found"))),
            Some(secret) => match secret.data.get(key) {
                Some(v) => Ok(Some(v.0.clone())),
                None if optional => Ok(None),
                None => Err(Missing(format!(
                    "couldn't find key {key} in Secret {namespace}/{name}"
                ))),
            },
        }
    }
}

fn container_config(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts<'_>,
    cache: &mut Cache<'_>,
    warnings: &mut Vec<String>,
) -> Result<ContainerConfig, Missing> {
    let mut out = ContainerConfig::default();
    let mut sensitive = BTreeSet::new();
    for from in &container.env_from {
        let (kind, r) = match &from.source {
            EnvFromRef::ConfigMapRef(r) => (Kind::ConfigMap, r),
            EnvFromRef::SecretRef(r) => (Kind::Secret, r),
        };
        let entries = match cache.entries(kind, &r.name)? {
            Some(entries) => entries,
            None if r.optional => continue,
            None => return Err(not_found(kind, &r.name)),
        };
        let mut skipped = Vec::new();
        for (key, value) in entries {
            let name = format!("{}{key}", from.prefix);
            if !is_env_name(&name) {
                skipped.push(name);
                continue;
            }
            if kind == Kind::Secret {
                sensitive.insert(name.clone());
            } else {
                sensitive.remove(&name);
            }
            out.env
                .push((name, String::from_utf8_lossy(&value).into_owned()));
        }
        if !skipped.is_empty() {
            let kind = match kind {
                Kind::Secret => "secret",
                _ => "configMap",
            };
            warnings.push(format!(
                "Keys [{}] from the EnvFrom {kind} {}/{} were skipped since they are considered invalid environment variable names.",
                skipped.join(", "),
                cache.namespace,
                r.name
            ));
        }
    }
    for var in &container.env {
        // The last variable of a name wins, the pod IP's included.
        out.pod_ip_env.retain(|n| *n != var.name);
        let value = match &var.value_from {
            None => {
                sensitive.remove(&var.name);
                var.value.clone()
            }
            Some(EnvVarSource::ConfigMapKeyRef(k)) => {
                sensitive.remove(&var.name);
                match cache.config_map_key(&k.name, &k.key, k.optional)? {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None => continue,
                }
            }
            Some(EnvVarSource::SecretKeyRef(k)) => {
                match cache.secret_key(&k.name, &k.key, k.optional)? {
                    Some(v) => {
                        sensitive.insert(var.name.clone());
                        String::from_utf8_lossy(&v).into_owned()
                    }
                    None => continue,
                }
            }
            Some(EnvVarSource::FieldRef(field)) if field.field_path == "status.podIP" => {
                sensitive.remove(&var.name);
                out.env.retain(|(n, _)| *n != var.name);
                out.pod_ip_env.push(var.name.clone());
                continue;
            }
            Some(EnvVarSource::FieldRef(field)) => {
                sensitive.remove(&var.name);
                field_value(pod, field, facts)
            }
            Some(EnvVarSource::ResourceFieldRef(r)) => {
                sensitive.remove(&var.name);
                resource_value(pod, Some(container), r, facts)
            }
        };
        out.env.push((var.name.clone(), value));
    }
    out.sensitive_env = sensitive.into_iter().collect();
    out.mounts = container
        .volume_mounts
        .iter()
        .map(|m| Mount {
            volume: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only,
            sub_path: m.sub_path.clone(),
        })
        .collect();
    Ok(out)
}

/// The value of a `fieldRef` (`status.podIP` is the runtime's).
fn field_value(pod: &Pod, field: &ObjectFieldSelector, facts: &PodFacts<'_>) -> String {
    let meta = &pod.metadata;
    let path = field.field_path.as_str();
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?;
        let quote = rest.chars().next()?;
        (matches!(quote, '\'' | '"') && rest.len() >= 2 && rest.ends_with(quote))
            .then(|| rest[1..rest.len() - 1].to_owned())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => facts.uid.to_owned(),
        "spec.nodeName" => facts.node_name.to_owned(),
        "status.hostIP" => facts.host_ip.to_owned(),
        "metadata.labels" => map_lines(&meta.labels),
        "metadata.annotations" => map_lines(&meta.annotations),
        _ => {
            if let Some(k) = subscript("metadata.labels") {
                meta.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = subscript("metadata.annotations") {
                meta.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        }
    }
}

/// Labels or annotations as the downward API writes them: `key="value"` lines, sorted, the
/// value quoted with Go's escapes.
fn map_lines(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string quoted as Go's `%q` does (the downward API's format).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of a `resourceFieldRef`: the request or limit divided by the divisor, rounded
/// up; a limit not set is the node's.
fn resource_value(
    pod: &Pod,
    own: Option<&Container>,
    r: &ResourceFieldSelector,
    facts: &PodFacts<'_>,
) -> String {
    let container = match &r.container_name {
        Some(name) => pod.spec.containers.iter().find(|c| &c.name == name),
        None => own,
    };
    let Some(container) = container else {
        return String::new();
    };
    let resources = &container.resources;
    let divisor = r.divisor.as_deref().unwrap_or("1");
    let ceil_div = |value: u64, by: u64| value.div_ceil(by.max(1)).to_string();
    match r.resource.as_str() {
        "limits.cpu" | "requests.cpu" => {
            let millis = if r.resource == "limits.cpu" {
                resources
                    .limits
                    .cpu
                    .map_or(facts.allocatable.0, |c| c.millis())
            } else {
                resources.requests.cpu.map_or(0, |c| c.millis())
            };
            ceil_div(millis, Cpu::parse(divisor).map_or(1000, |d| d.millis()))
        }
        "limits.memory" | "requests.memory" => {
            let bytes = if r.resource == "limits.memory" {
                resources
                    .limits
                    .memory
                    .map_or(facts.allocatable.1, |m| m.bytes())
            } else {
                resources.requests.memory.map_or(0, |m| m.bytes())
            };
            ceil_div(bytes, Memory::parse(divisor).map_or(1, |d| d.bytes()))
        }
        _ => String::new(),
    }
}

/// The runtime's check of a host path for Kubernetes' `hostPath.type`.
fn host_path_check(t: HostPathType) -> HostPathCheck {
    match t {
        HostPathType::Unset => HostPathCheck::None,
        HostPathType::DirectoryOrCreate => HostPathCheck::DirectoryOrCreate,
        HostPathType::Directory => HostPathCheck::Directory,
        HostPathType::FileOrCreate => HostPathCheck::FileOrCreate,
        HostPathType::File => HostPathCheck::File,
        HostPathType::Socket => HostPathCheck::Socket,
        HostPathType::CharDevice => HostPathCheck::CharDevice,
        HostPathType::BlockDevice => HostPathCheck::BlockDevice,
    }
}

/// A volume's files, and whether it holds secret data.
fn volume_files(
    pod: &Pod,
    source: &VolumeSource,
    facts: &PodFacts<'_>,
    cache: &mut Cache<'_>,
) -> Result<(Vec<VolumeFile>, bool), Missing> {
    let mut files = Vec::new();
    let sensitive = match source {
        // Directories, not files: see `resolve`.
        VolumeSource::EmptyDir(_) | VolumeSource::HostPath(_) => false,
        VolumeSource::ConfigMap(v) => {
            object_files(
                cache,
                Kind::ConfigMap,
                &v.name,
                &v.items,
                v.default_mode,
                v.optional,
                &mut files,
            )?;
            false
        }
        VolumeSource::Secret(v) => {
            object_files(
                cache,
                Kind::Secret,
                &v.secret_name,
                &v.items,
                v.default_mode,
                v.optional,
                &mut files,
            )?;
            true
        }
        VolumeSource::DownwardApi(v) => {
            downward_files(pod, &v.items, v.default_mode, facts, &mut files);
            false
        }
        VolumeSource::Projected(v) => {
            let mut sensitive = false;
            for source in &v.sources {
                match source {
                    ProjectionSource::ConfigMap(k) => object_files(
                        cache,
                        Kind::ConfigMap,
                        &k.name,
                        &k.items,
                        v.default_mode,
                        k.optional,
                        &mut files,
                    )?,
                    ProjectionSource::Secret(k) => {
                        sensitive = true;
                        object_files(
                            cache,
                            Kind::Secret,
                            &k.name,
                            &k.items,
                            v.default_mode,
                            k.optional,
                            &mut files,
                        )?;
                    }
                    ProjectionSource::DownwardApi(d) => {
                        downward_files(pod, &d.items, v.default_mode, facts, &mut files)
                    }
                }
            }
            sensitive
        }
    };
    Ok((files, sensitive))
}

/// Files of `entries` (key, value): all of them as files of their names, or the `items`.
fn key_files(
    entries: &Entries,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
    missing: impl Fn(&str) -> String,
    files: &mut Vec<VolumeFile>,
) -> Result<(), Missing> {
    if items.is_empty() {
        for (key, value) in entries {
            files.push(VolumeFile {
                path: key.clone(),
                data: value.clone(),
                mode: default_mode,
            });
        }
        return Ok(());
    }
    for item in items {
        match entries.iter().find(|(k, _)| *k == item.key) {
            Some((_, value)) => files.push(VolumeFile {
                path: item.path.clone(),
                data: value.clone(),
                mode: item.mode.unwrap_or(default_mode),
            }),
            None if optional => {}
            None => return Err(Missing(missing(&item.key))),
        }
    }
    Ok(())
}

/// The files of a config map's or secret's keys (`kind`), or nothing when it is optional and
/// absent.
fn object_files(
    cache: &mut Cache<'_>,
    kind: Kind,
    name: &str,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
    files: &mut Vec<VolumeFile>,
) -> Result<(), Missing> {
    let entries = match cache.entries(kind, name)? {
        Some(entries) => entries,
        None if optional => return Ok(()),
        None => return Err(not_found(kind, name)),
    };
    key_files(
        &entries,
        items,
        default_mode,
        optional,
        |key| match kind {
            Kind::Secret => format!("references non-existent secret key: {key}"),
            _ => format!("configmap references non-existent config key: {key}"),
        },
        files,
    )
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardApiFile],
    default_mode: u32,
    facts: &PodFacts<'_>,
    files: &mut Vec<VolumeFile>,
) {
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            field_value(pod, field, facts)
        } else if let Some(r) = &item.resource_field_ref {
            resource_value(pod, None, r, facts)
        } else {
            continue;
        };
        files.push(VolumeFile {
            path: item.path.clone(),
            data: value.into_bytes(),
            mode: item.mode.unwrap_or(default_mode),
        });
    }
}
