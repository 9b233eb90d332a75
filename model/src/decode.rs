//! From a [`Node`] tree to the typed model, collecting every problem with its field path and
//! line instead of stopping at the first.
//!
//! Each struct is read by a [`Fields`] reader that remembers which keys were consumed; what is
//! left at the end is reported: a real Kubernetes field shoal does not implement is "not
//! supported yet" (unless its value is empty or Kubernetes' own default, which mean the same as
//! leaving it out, so that manifests exported from a cluster apply), anything else is an
//! "unknown field", with the closest known name as a suggestion. A value of the wrong type is
//! reported and replaced by a default, so that decoding goes on and finds the other problems.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::model::{
    ByteData, ClusterIp, ConfigMap, ConfigMapVolume, Container, ContainerPort, DEFAULT_VOLUME_MODE,
    Deployment, DeploymentSpec, DeploymentStrategy, DownwardApiFile, DownwardApiProjection,
    DownwardApiVolume, EmptyDirMedium, EmptyDirVolume, EnvFromRef, EnvFromSource, EnvVar,
    EnvVarSource, ExecAction, HostPathType, HostPathVolume, HttpGetAction, HttpHeader,
    IntOrPercent, KeyProjection, KeySelector, KeyToPath, Kind, LabelSelector, Namespace,
    ObjectFieldSelector, ObjectMeta, ObjectRef, Pod, PodSpec, PodTemplateSpec, PortRef, Probe,
    ProbeHandler, ProjectedVolume, ProjectionSource, Protocol, PullPolicy, Resource,
    ResourceFieldSelector, ResourceList, ResourceRequirements, RestartPolicy, RollingUpdate,
    Scheme, Secret, SecretVolume, Service, ServicePort, ServiceSpec, ServiceType, SessionAffinity,
    TcpSocketAction, TemplateMeta, Volume, VolumeMount, VolumeSource,
};
use crate::quantity::{Cpu, Memory};
use crate::yaml::{Key, Node, Value};

/// A problem found while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) path: String,
    pub(crate) line: Option<u32>,
    pub(crate) message: String,
}

/// Decoding state: the problems found, and the line of every field path seen (to place the
/// problems the semantic rules find later).
#[derive(Default)]
pub(crate) struct Decoder {
    pub(crate) issues: Vec<Located>,
    lines: HashMap<String, u32>,
}

/// What the supported kinds are, for messages.
pub(crate) const SUPPORTED_KINDS: &str = "v1 Namespace, v1 Pod, apps/v1 Deployment, v1 Service, v1 ConfigMap, v1 Secret, and a v1 List of them";

/// Read-only metadata kubectl round-trips; accepted and ignored.
const READ_ONLY_META: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];
const UNSUPPORTED_META: &[&str] = &["generateName", "ownerReferences", "finalizers"];

const UNSUPPORTED_POD_SPEC: &[&str] = &[
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "hostname",
    "imagePullSecrets",
    "initContainers",
    "nodeName",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "tolerations",
    "topologySpreadConstraints",
];
/// Pod fields whose Kubernetes default changes nothing here, as `kubectl get -o yaml` writes
/// them.
const DEFAULT_POD_SPEC: &[(&str, &str)] = &[
    ("dnsPolicy", "ClusterFirst"),
    ("schedulerName", "default-scheduler"),
    ("enableServiceLinks", "true"),
    ("hostNetwork", "false"),
    ("hostPID", "false"),
    ("hostIPC", "false"),
    ("shareProcessNamespace", "false"),
    ("serviceAccountName", "default"),
    ("serviceAccount", "default"),
    ("priority", "0"),
    ("preemptionPolicy", "PreemptLowerPriority"),
];
const UNSUPPORTED_CONTAINER: &[&str] = &[
    "lifecycle",
    "resizePolicy",
    "restartPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
];
const DEFAULT_CONTAINER: &[(&str, &str)] = &[
    ("terminationMessagePath", "/dev/termination-log"),
    ("terminationMessagePolicy", "File"),
    ("stdin", "false"),
    ("stdinOnce", "false"),
    ("tty", "false"),
];

const UNSUPPORTED_SERVICE_SPEC: &[&str] = &[
    "allocateLoadBalancerNodePorts",
    "externalIPs",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "internalTrafficPolicy",
    "ipFamilyPolicy",
    "loadBalancerClass",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "trafficDistribution",
];
/// Service fields whose Kubernetes default is what shoal does, as `kubectl get -o yaml` writes
/// them.
const DEFAULT_SERVICE_SPEC: &[(&str, &str)] = &[
    ("externalTrafficPolicy", "Cluster"),
    ("internalTrafficPolicy", "Cluster"),
    ("ipFamilyPolicy", "SingleStack"),
    ("publishNotReadyAddresses", "false"),
    ("allocateLoadBalancerNodePorts", "true"),
];

/// Why some unsupported fields are, or what to use instead.
fn hint(field: &str) -> Option<&'static str> {
    Some(match field {
        "nodeName" => "shoal places pods itself; steer placement with nodeSelector",
        "generateName" => "apply needs a fixed metadata.name",
        "subPathExpr" => "use subPath",
        "matchExpressions" => "use matchLabels",
        "hostIP" => "host ports bind on every address",
        "host" => "probes connect to the pod's own address",
        "externalIPs" | "loadBalancerIP" => "use type NodePort to reach a service from outside",
        "ipFamilyPolicy" => "services are single-stack IPv4",
        _ => return None,
    })
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// A mapping being read field by field.
pub(crate) struct Fields<'n> {
    path: String,
    line: u32,
    entries: &'n [(Key, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    /// The field's node (not null) and path, marking it consumed.
    fn take(&mut self, d: &mut Decoder, name: &'static str) -> Option<(&'n Node, String)> {
        self.known.push(name);
        let i = self.entries.iter().position(|(k, _)| k.name == name)?;
        self.used[i] = true;
        let (key, node) = &self.entries[i];
        let path = join(&self.path, name);
        // The key's line: where the field is, even when its value starts on the next line.
        d.record(&path, key.line);
        if matches!(node.value, Value::Null) {
            // Kubernetes treats an explicit null as absent.
            return None;
        }
        Some((node, path))
    }

    fn has(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, v)| k.name == name && !matches!(v.value, Value::Null))
    }

    /// A required field: missing (or null) is an error.
    fn req<T>(
        &mut self,
        d: &mut Decoder,
        name: &'static str,
        f: impl FnOnce(&mut Decoder, &'n Node, &str) -> Option<T>,
    ) -> Option<T> {
        match self.take(d, name) {
            Some((node, path)) => f(d, node, &path),
            None => {
                d.error(join(&self.path, name), Some(self.line), "required");
                None
            }
        }
    }

    /// An optional field.
    fn opt<T>(
        &mut self,
        d: &mut Decoder,
        name: &'static str,
        f: impl FnOnce(&mut Decoder, &'n Node, &str) -> Option<T>,
    ) -> Option<T> {
        let (node, path) = self.take(d, name)?;
        f(d, node, &path)
    }

    /// Fields accepted and ignored.
    fn ignore(&mut self, names: &[&'static str]) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if names.contains(&k.name.as_str()) {
                self.used[i] = true;
            }
        }
        self.known.extend_from_slice(names);
    }

    /// Reports the fields nobody consumed: `unsupported` are Kubernetes fields shoal does not
    /// implement (accepted when empty or equal to their default in `defaults`); anything else
    /// is unknown.
    fn finish(self, d: &mut Decoder, unsupported: &[&'static str], defaults: &[(&str, &str)]) {
        for (i, (key, node)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let path = join(&self.path, &key.name);
            if unsupported.contains(&key.name.as_str()) {
                let is_default = defaults
                    .iter()
                    .any(|(f, v)| *f == key.name && node.value.scalar_text().as_deref() == Some(v));
                if is_empty(&node.value) || is_default {
                    continue;
                }
                d.unsupported(path, key.line, &key.name);
            } else {
                let candidates = self.known.iter().chain(unsupported).copied();
                let message = match suggest(&key.name, candidates) {
                    Some(s) => format!("unknown field (did you mean {s:?}?)"),
                    None => "unknown field".to_owned(),
                };
                d.error(path, Some(key.line), message);
            }
        }
    }
}

/// Null, `{}`, `[]` and `""`: values that mean the same as an absent field.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Map(m) => m.is_empty(),
        Value::Seq(s) => s.is_empty(),
        Value::Str(s) => s.is_empty(),
        _ => false,
    }
}

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        // The length alone rules most candidates out, cheaply (a mapping may have many keys).
        .filter(|c| c.len().abs_diff(name.len()) <= 3)
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(dist, c)| *dist <= (c.len() / 3).clamp(1, 3))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, c)| c)
}

/// Levenshtein distance with adjacent transpositions counting as one edit (optimal string
/// alignment), so that `nmae` is one typo away from `name`.
fn edit_distance(a: &str, b: &str) -> usize {
    // Names longer than this are not typos of field names; skip the quadratic work.
    if a.chars().count() > 64 || b.chars().count() > 64 {
        return usize::MAX;
    }
    strsim::osa_distance(a, b)
}

impl Decoder {
    pub(crate) fn error(&mut self, path: String, line: Option<u32>, message: impl Into<String>) {
        self.issues.push(Located {
            path,
            line,
            message: message.into(),
        });
    }

    fn unsupported(&mut self, path: String, line: u32, field: &str) {
        let message = match hint(field) {
            Some(h) => format!("not supported yet ({h})"),
            None => "not supported yet".to_owned(),
        };
        self.error(path, Some(line), message);
    }

    fn record(&mut self, path: &str, line: u32) {
        self.lines.insert(path.to_owned(), line);
    }

    /// The line of `path`, or of its nearest recorded ancestor.
    pub(crate) fn line_of(&self, path: &str) -> Option<u32> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let message = format!("expected {what}, got {}", node.describe());
        self.error(path.to_owned(), Some(node.line), message);
    }

    fn fields<'n>(&mut self, node: &'n Node, path: &str) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Fields {
                path: path.to_owned(),
                // The line of the key holding this mapping, if any, for "required" errors.
                line: self.lines.get(path).copied().unwrap_or(node.line),
                entries,
                used: vec![false; entries.len()],
                known: Vec::new(),
            }),
            _ => {
                self.expected(node, path, "a mapping");
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            // Kubernetes rejects numbers and booleans where it wants text (a classic with env
            // values and label values); say how to fix it, and keep the text so that the
            // other rules see what was meant.
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let text = node.text().unwrap_or_default();
                let message = format!(
                    "expected string, got {} (quote it: \"{text}\")",
                    node.describe()
                );
                self.error(path.to_owned(), Some(node.line), message);
                Some(text)
            }
            _ => {
                self.expected(node, path, "string");
                None
            }
        }
    }

    fn int(&mut self, node: &Node, path: &str, min: i128, max: i128) -> Option<i128> {
        match &node.value {
            Value::Int(i) if (min..=max).contains(i) => Some(*i),
            Value::Int(i) => {
                let message = if *i < min && max >= i128::from(i32::MAX) {
                    format!("must be at least {min}, got {i}")
                } else if *i > max && max >= i128::from(i32::MAX) {
                    format!("must be at most {max}, got {i}")
                } else {
                    format!("must be between {min} and {max}, got {i}")
                };
                self.error(path.to_owned(), Some(node.line), message);
                None
            }
            _ => {
                self.expected(node, path, "integer");
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, path: &str, min: u32) -> Option<u32> {
        self.int(node, path, min.into(), i32::MAX.into())
            .and_then(|i| u32::try_from(i).ok())
    }

    fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        self.int(node, path, 1, 65535)
            .and_then(|i| u16::try_from(i).ok())
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.expected(node, path, "boolean (true or false)");
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, path)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        // `""` (a Kubernetes default) is shown quoted, and never suggested.
        let hint = match suggest(&text, names.iter().copied().filter(|n| !n.is_empty())) {
            Some(s) => format!(" (did you mean {s:?}?)"),
            None => String::new(),
        };
        let shown: Vec<&str> = names
            .iter()
            .map(|n| if n.is_empty() { "\"\"" } else { n })
            .collect();
        let message = format!(
            "unsupported value {text:?}{hint}: supported values are {}",
            shown.join(", ")
        );
        self.error(path.to_owned(), Some(node.line), message);
        None
    }

    /// A list; an item that does not decode is reported and replaced by a default, so that
    /// the items after it keep their index (and the rules' paths stay right).
    fn list<'n, T: Default>(
        &mut self,
        node: &'n Node,
        path: &str,
        f: impl FnMut(&mut Decoder, &'n Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.list_or(node, path, T::default, f)
    }

    /// [`Decoder::list`] for items with no `Default`: `placeholder` stands in for an item that
    /// does not decode (and must break no rule, so that only the decoding problem is reported;
    /// it is never returned, since a problem means no resource is).
    fn list_or<'n, T>(
        &mut self,
        node: &'n Node,
        path: &str,
        placeholder: impl Fn() -> T,
        mut f: impl FnMut(&mut Decoder, &'n Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Seq(items) = &node.value else {
            self.expected(node, path, "a list");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            self.record(&ipath, item.line);
            if matches!(item.value, Value::Null) {
                self.error(ipath, Some(item.line), "must not be null");
                out.push(placeholder());
                continue;
            }
            out.push(f(self, item, &ipath).unwrap_or_else(&placeholder));
        }
        Some(out)
    }

    fn string_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        self.list(node, path, |d, n, p| d.string(n, p))
    }

    fn string_map(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        let Value::Map(entries) = &node.value else {
            self.expected(node, path, "a mapping of strings");
            return None;
        };
        let mut out = BTreeMap::new();
        for (key, value) in entries {
            let vpath = format!("{path}[{}]", key.name);
            self.record(&vpath, key.line);
            // A label with a null value is an empty string in Kubernetes' conversion too.
            let text = match value.value {
                Value::Null => Some(String::new()),
                _ => self.string(value, &vpath),
            };
            if let Some(text) = text {
                out.insert(key.name.clone(), text);
            }
        }
        Some(out)
    }
}

/// Decodes one document: an object, or a `List` of them, each with its path prefix (empty, or
/// `items[3]`). Problems go to `d.issues`.
pub(crate) fn document(d: &mut Decoder, node: &Node) -> Vec<(String, Resource)> {
    let mut out = Vec::new();
    let Value::Map(_) = node.value else {
        d.error(
            String::new(),
            Some(node.line),
            format!(
                "expected an object (a mapping with apiVersion, kind, metadata and spec), got {}",
                node.value.describe()
            ),
        );
        return out;
    };
    object(d, node, "", true, &mut out);
    out
}

/// The kinds of list kubectl writes and reads.
fn list_kind(kind: &str) -> Option<Option<Kind>> {
    if kind == "List" {
        return Some(None);
    }
    let item = kind.strip_suffix("List")?;
    Kind::ALL.into_iter().find(|k| k.as_str() == item).map(Some)
}

fn object(d: &mut Decoder, node: &Node, path: &str, top: bool, out: &mut Vec<(String, Resource)>) {
    let Some(mut f) = d.fields(node, path) else {
        return;
    };
    let kind_node = f.take(d, "kind");
    let kind_given = kind_node.is_some();
    let api_node = f.take(d, "apiVersion");
    let kind_text = kind_node.and_then(|(n, p)| d.string(n, &p).map(|s| (s, n.line)));
    let api_version = api_node.and_then(|(n, p)| d.string(n, &p).map(|s| (s, n.line)));
    let Some((kind_text, kind_line)) = kind_text else {
        if !kind_given {
            d.error(
                join(path, "kind"),
                Some(node.line),
                format!("required; supported kinds: {SUPPORTED_KINDS}"),
            );
        }
        return;
    };

    if let Some(item_kind) = list_kind(&kind_text) {
        if !top {
            d.error(
                join(path, "kind"),
                Some(kind_line),
                "a List cannot hold another List",
            );
            return;
        }
        let want = item_kind.map_or("v1", Kind::api_version);
        check_api_version(d, path, node.line, api_version, want, &kind_text);
        f.ignore(&["metadata"]);
        f.req(d, "items", |d, n, p| {
            d.list(n, p, |d, item, ipath| {
                object(d, item, ipath, false, out);
                Some(())
            })
        });
        f.finish(d, &[], &[]);
        return;
    }

    let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == kind_text) else {
        let names = Kind::ALL.map(Kind::as_str);
        let message = match suggest(&kind_text, names.into_iter()) {
            Some(s) => format!(
                "unknown kind {kind_text:?} (did you mean {s:?}?); supported kinds: {SUPPORTED_KINDS}"
            ),
            None => format!(
                "kind {kind_text:?} is not supported yet; supported kinds: {SUPPORTED_KINDS}"
            ),
        };
        d.error(join(path, "kind"), Some(kind_line), message);
        return;
    };
    check_api_version(
        d,
        path,
        node.line,
        api_version,
        kind.api_version(),
        kind.as_str(),
    );
    // Status is what the cluster reports; kubectl sends it back from `get -o yaml` output.
    f.ignore(&["status"]);
    let metadata = f
        .req(d, "metadata", |d, n, p| Some(object_meta(d, n, p)))
        .unwrap_or_default();
    let resource = match kind {
        Kind::Namespace => {
            f.opt(d, "spec", |d, n, p| {
                let spec = d.fields(n, p)?;
                spec.finish(d, &["finalizers"], &[]);
                Some(())
            });
            Resource::Namespace(Namespace { metadata })
        }
        Kind::Pod => {
            let spec = f
                .req(d, "spec", |d, n, p| Some(pod_spec(d, n, p)))
                .unwrap_or_default();
            Resource::Pod(Pod { metadata, spec })
        }
        Kind::Deployment => {
            let spec = f
                .req(d, "spec", |d, n, p| Some(deployment_spec(d, n, p)))
                .unwrap_or_default();
            Resource::Deployment(Deployment { metadata, spec })
        }
        Kind::Service => {
            let spec = f
                .req(d, "spec", |d, n, p| Some(service_spec(d, n, p)))
                .unwrap_or_default();
            Resource::Service(Service { metadata, spec })
        }
        Kind::ConfigMap => Resource::ConfigMap(config_map(d, &mut f, metadata)),
        Kind::Secret => Resource::Secret(secret(d, &mut f, path, metadata)),
    };
    f.finish(d, &[], &[]);
    out.push((path.to_owned(), resource));
}

fn check_api_version(
    d: &mut Decoder,
    path: &str,
    line: u32,
    api_version: Option<(String, u32)>,
    want: &str,
    kind: &str,
) {
    match api_version {
        None => d.error(
            join(path, "apiVersion"),
            Some(line),
            format!("required ({kind} is {want})"),
        ),
        Some((got, _)) if got == want => {}
        Some((got, line)) => d.error(
            join(path, "apiVersion"),
            Some(line),
            format!("{got:?} is not supported for {kind}: use {want}"),
        ),
    }
}

fn object_meta(d: &mut Decoder, node: &Node, path: &str) -> ObjectMeta {
    let mut meta = ObjectMeta::default();
    let Some(mut f) = d.fields(node, path) else {
        return meta;
    };
    meta.name = f.req(d, "name", Decoder::string).unwrap_or_default();
    meta.namespace = f.opt(d, "namespace", Decoder::string);
    meta.labels = f.opt(d, "labels", Decoder::string_map).unwrap_or_default();
    meta.annotations = f
        .opt(d, "annotations", Decoder::string_map)
        .unwrap_or_default();
    f.ignore(READ_ONLY_META);
    f.finish(d, UNSUPPORTED_META, &[]);
    meta
}

fn template_meta(d: &mut Decoder, node: &Node, path: &str) -> TemplateMeta {
    let mut meta = TemplateMeta::default();
    let Some(mut f) = d.fields(node, path) else {
        return meta;
    };
    meta.labels = f.opt(d, "labels", Decoder::string_map).unwrap_or_default();
    meta.annotations = f
        .opt(d, "annotations", Decoder::string_map)
        .unwrap_or_default();
    // Kubernetes accepts a name and namespace in a template and does not use them; `get -o
    // yaml` writes `creationTimestamp: null` there.
    f.ignore(&["name", "namespace"]);
    f.ignore(READ_ONLY_META);
    f.finish(d, UNSUPPORTED_META, &[]);
    meta
}

fn pod_spec(d: &mut Decoder, node: &Node, path: &str) -> PodSpec {
    let mut spec = PodSpec::default();
    let Some(mut f) = d.fields(node, path) else {
        return spec;
    };
    spec.containers = f
        .req(d, "containers", |d, n, p| d.list(n, p, container))
        .unwrap_or_default();
    if let Some(policy) = f.opt(d, "restartPolicy", |d, n, p| {
        d.choice(
            n,
            p,
            &[
                ("Always", RestartPolicy::Always),
                ("OnFailure", RestartPolicy::OnFailure),
                ("Never", RestartPolicy::Never),
            ],
        )
    }) {
        spec.restart_policy = policy;
    }
    spec.node_selector = f
        .opt(d, "nodeSelector", Decoder::string_map)
        .unwrap_or_default();
    if let Some(s) = f.opt(d, "terminationGracePeriodSeconds", |d, n, p| {
        d.int(n, p, 0, i64::MAX.into())
    }) {
        spec.termination_grace_period_seconds = u64::try_from(s).unwrap_or(0);
    }
    spec.volumes = f
        .opt(d, "volumes", |d, n, p| {
            d.list_or(n, p, placeholder_volume, volume)
        })
        .unwrap_or_default();
    f.finish(d, UNSUPPORTED_POD_SPEC, DEFAULT_POD_SPEC);
    spec
}

fn container(d: &mut Decoder, node: &Node, path: &str) -> Option<Container> {
    let mut f = d.fields(node, path)?;
    let mut c = Container {
        name: f.req(d, "name", Decoder::string).unwrap_or_default(),
        image: f.req(d, "image", Decoder::string).unwrap_or_default(),
        ..Container::default()
    };
    c.command = f
        .opt(d, "command", Decoder::string_list)
        .unwrap_or_default();
    c.args = f.opt(d, "args", Decoder::string_list).unwrap_or_default();
    c.working_dir = f.opt(d, "workingDir", Decoder::string);
    c.env_from = f
        .opt(d, "envFrom", |d, n, p| {
            d.list_or(n, p, placeholder_env_from, env_from_source)
        })
        .unwrap_or_default();
    c.env = f
        .opt(d, "env", |d, n, p| d.list(n, p, env_var))
        .unwrap_or_default();
    c.ports = f
        .opt(d, "ports", |d, n, p| d.list(n, p, container_port))
        .unwrap_or_default();
    c.resources = f.opt(d, "resources", resources).unwrap_or_default();
    c.liveness_probe = f.opt(d, "livenessProbe", probe);
    c.readiness_probe = f.opt(d, "readinessProbe", probe);
    c.startup_probe = f.opt(d, "startupProbe", probe);
    c.image_pull_policy = f
        .opt(d, "imagePullPolicy", |d, n, p| {
            d.choice(
                n,
                p,
                &[
                    ("Always", PullPolicy::Always),
                    ("IfNotPresent", PullPolicy::IfNotPresent),
                    ("Never", PullPolicy::Never),
                ],
            )
        })
        .unwrap_or_else(|| PullPolicy::default_for(&c.image));
    c.volume_mounts = f
        .opt(d, "volumeMounts", |d, n, p| d.list(n, p, volume_mount))
        .unwrap_or_default();
    f.finish(d, UNSUPPORTED_CONTAINER, DEFAULT_CONTAINER);
    Some(c)
}

fn env_var(d: &mut Decoder, node: &Node, path: &str) -> Option<EnvVar> {
    let mut f = d.fields(node, path)?;
    let name = f.req(d, "name", Decoder::string).unwrap_or_default();
    let value = f.opt(d, "value", Decoder::string).unwrap_or_default();
    let value_from = f.opt(d, "valueFrom", env_var_source);
    f.finish(d, &[], &[]);
    Some(EnvVar {
        name,
        value,
        value_from,
    })
}

/// `a, b or c`.
pub(crate) fn or_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Whether exactly one of the alternatives `options` is given (`given`); reports it otherwise
/// at `path`, naming them as `what` ("source", "volume type").
fn exactly_one(
    d: &mut Decoder,
    path: &str,
    line: u32,
    given: &[&str],
    what: &str,
    options: &[&str],
) -> bool {
    match given.len() {
        1 => true,
        0 => {
            let message = format!("needs exactly one {what}: {}", or_list(options));
            d.error(path.to_owned(), Some(line), message);
            false
        }
        n => {
            let message = format!("has {n} {what}s ({}): give exactly one", given.join(", "));
            d.error(path.to_owned(), Some(line), message);
            false
        }
    }
}

const ENV_SOURCES: [&str; 4] = [
    "configMapKeyRef",
    "secretKeyRef",
    "fieldRef",
    "resourceFieldRef",
];

fn env_var_source(d: &mut Decoder, node: &Node, path: &str) -> Option<EnvVarSource> {
    let mut f = d.fields(node, path)?;
    let line = f.line;
    let mut found = Vec::new();
    if let Some(s) = f.opt(d, "configMapKeyRef", key_selector) {
        found.push(EnvVarSource::ConfigMapKeyRef(s));
    }
    if let Some(s) = f.opt(d, "secretKeyRef", key_selector) {
        found.push(EnvVarSource::SecretKeyRef(s));
    }
    if let Some(s) = f.opt(d, "fieldRef", object_field_selector) {
        found.push(EnvVarSource::FieldRef(s));
    }
    if let Some(s) = f.opt(d, "resourceFieldRef", resource_field_selector) {
        found.push(EnvVarSource::ResourceFieldRef(s));
    }
    let given: Vec<&str> = ENV_SOURCES.into_iter().filter(|s| f.has(s)).collect();
    f.finish(d, &[], &[]);
    if !exactly_one(d, path, line, &given, "source", &ENV_SOURCES) {
        return None;
    }
    // A source that failed to decode was reported.
    found.pop()
}

fn key_selector(d: &mut Decoder, node: &Node, path: &str) -> Option<KeySelector> {
    let mut f = d.fields(node, path)?;
    let selector = KeySelector {
        name: f.req(d, "name", Decoder::string).unwrap_or_default(),
        key: f.req(d, "key", Decoder::string).unwrap_or_default(),
        optional: f.opt(d, "optional", Decoder::bool).unwrap_or(false),
    };
    f.finish(d, &[], &[]);
    Some(selector)
}

fn object_field_selector(d: &mut Decoder, node: &Node, path: &str) -> Option<ObjectFieldSelector> {
    let mut f = d.fields(node, path)?;
    let field_path = f.req(d, "fieldPath", Decoder::string).unwrap_or_default();
    // The version of the pod's schema the path is in: only v1 (Kubernetes' default).
    f.opt(d, "apiVersion", |d, n, p| {
        let version = d.string(n, p)?;
        if !version.is_empty() && version != "v1" {
            let message = format!("{version:?} is not supported: use v1");
            d.error(p.to_owned(), Some(n.line), message);
        }
        Some(())
    });
    f.finish(d, &[], &[]);
    Some(ObjectFieldSelector { field_path })
}

fn resource_field_selector(
    d: &mut Decoder,
    node: &Node,
    path: &str,
) -> Option<ResourceFieldSelector> {
    let mut f = d.fields(node, path)?;
    let container_name = f
        .opt(d, "containerName", Decoder::string)
        .filter(|n| !n.is_empty());
    let resource = f.req(d, "resource", Decoder::string).unwrap_or_default();
    let divisor = f.opt(d, "divisor", |d, n, p| divisor(d, n, p, &resource));
    f.finish(d, &[], &[]);
    Some(ResourceFieldSelector {
        container_name,
        resource,
        divisor: divisor.flatten(),
    })
}

/// A resource field's divisor in its canonical text (`1m`, `1Mi`, `1k`), or `None` for the
/// default `1` (and for `0`, which `kubectl get -o yaml` writes for an unset divisor). Whether
/// the value is one Kubernetes allows is a rule (`validate`).
fn divisor(d: &mut Decoder, node: &Node, path: &str, resource: &str) -> Option<Option<String>> {
    let text = match &node.value {
        Value::Str(s) => s.clone(),
        Value::Int(_) | Value::Float(_) => node.value.scalar_text().unwrap_or_default(),
        _ => {
            d.expected(node, path, "a quantity (such as 1m or 1Mi)");
            return None;
        }
    };
    let canonical = match resource.rsplit('.').next() {
        Some("cpu") => Cpu::parse(&text).map(|q| (q.0 == 0 || q.0 == 1000, q.to_string())),
        Some("memory") => Memory::parse(&text).map(|q| (q.0 <= 1, q.to_string())),
        // The resource is reported; keep the text.
        _ => return Some(Some(text)),
    };
    match canonical {
        Ok((true, _)) => Some(None),
        Ok((false, text)) => Some(Some(text)),
        Err(e) => {
            d.error(path.to_owned(), Some(node.line), e.to_string());
            None
        }
    }
}

fn env_from_source(d: &mut Decoder, node: &Node, path: &str) -> Option<EnvFromSource> {
    let mut f = d.fields(node, path)?;
    let line = f.line;
    let prefix = f.opt(d, "prefix", Decoder::string).unwrap_or_default();
    let mut found = Vec::new();
    if let Some(r) = f.opt(d, "configMapRef", object_ref) {
        found.push(EnvFromRef::ConfigMapRef(r));
    }
    if let Some(r) = f.opt(d, "secretRef", object_ref) {
        found.push(EnvFromRef::SecretRef(r));
    }
    let options = ["configMapRef", "secretRef"];
    let given: Vec<&str> = options.into_iter().filter(|s| f.has(s)).collect();
    f.finish(d, &[], &[]);
    if !exactly_one(d, path, line, &given, "source", &options) {
        return None;
    }
    Some(EnvFromSource {
        prefix,
        source: found.pop()?,
    })
}

fn placeholder_env_from() -> EnvFromSource {
    EnvFromSource {
        prefix: String::new(),
        source: EnvFromRef::ConfigMapRef(ObjectRef {
            name: "placeholder".into(),
            optional: false,
        }),
    }
}

fn object_ref(d: &mut Decoder, node: &Node, path: &str) -> Option<ObjectRef> {
    let mut f = d.fields(node, path)?;
    let r = ObjectRef {
        name: f.req(d, "name", Decoder::string).unwrap_or_default(),
        optional: f.opt(d, "optional", Decoder::bool).unwrap_or(false),
    };
    f.finish(d, &[], &[]);
    Some(r)
}

fn volume_mount(d: &mut Decoder, node: &Node, path: &str) -> Option<VolumeMount> {
    let mut f = d.fields(node, path)?;
    let mount = VolumeMount {
        name: f.req(d, "name", Decoder::string).unwrap_or_default(),
        mount_path: f.req(d, "mountPath", Decoder::string).unwrap_or_default(),
        read_only: f.opt(d, "readOnly", Decoder::bool).unwrap_or(false),
        // Kubernetes reads "" as no subPath.
        sub_path: f
            .opt(d, "subPath", Decoder::string)
            .filter(|p| !p.is_empty()),
    };
    f.finish(
        d,
        &["subPathExpr", "mountPropagation", "recursiveReadOnly"],
        &[
            ("mountPropagation", "None"),
            ("recursiveReadOnly", "Disabled"),
        ],
    );
    Some(mount)
}

fn container_port(d: &mut Decoder, node: &Node, path: &str) -> Option<ContainerPort> {
    let mut f = d.fields(node, path)?;
    let container_port = f.req(d, "containerPort", Decoder::port).unwrap_or(0);
    let name = f.opt(d, "name", Decoder::string);
    let protocol = f
        .opt(d, "protocol", |d, n, p| {
            if matches!(&n.value, Value::Str(s) if s == "SCTP") {
                d.error(p.to_owned(), Some(n.line), "SCTP is not supported yet");
                return None;
            }
            d.choice(n, p, &[("TCP", Protocol::Tcp), ("UDP", Protocol::Udp)])
        })
        .unwrap_or_default();
    let host_port = f.opt(d, "hostPort", Decoder::port);
    f.finish(d, &["hostIP"], &[]);
    Some(ContainerPort {
        container_port,
        name,
        protocol,
        host_port,
    })
}

fn resources(d: &mut Decoder, node: &Node, path: &str) -> Option<ResourceRequirements> {
    let mut f = d.fields(node, path)?;
    let mut r = ResourceRequirements {
        requests: f.opt(d, "requests", resource_list).unwrap_or_default(),
        limits: f.opt(d, "limits", resource_list).unwrap_or_default(),
    };
    f.finish(d, &["claims"], &[]);
    // Kubernetes: a limit without a request requests the limit.
    if r.requests.cpu.is_none() {
        r.requests.cpu = r.limits.cpu;
    }
    if r.requests.memory.is_none() {
        r.requests.memory = r.limits.memory;
    }
    Some(r)
}

fn resource_list(d: &mut Decoder, node: &Node, path: &str) -> Option<ResourceList> {
    let Value::Map(entries) = &node.value else {
        d.expected(node, path, "a mapping of resource names to quantities");
        return None;
    };
    let mut list = ResourceList::default();
    for (key, value) in entries {
        let vpath = join(path, &key.name);
        d.record(&vpath, value.line);
        let text = match &value.value {
            Value::Str(s) => s.clone(),
            Value::Int(_) | Value::Float(_) => value.value.scalar_text().unwrap_or_default(),
            _ => {
                d.expected(value, &vpath, "a quantity (such as 500m or 128Mi)");
                continue;
            }
        };
        let result = match key.name.as_str() {
            "cpu" => Cpu::parse(&text).map(|q| list.cpu = Some(q)),
            "memory" => Memory::parse(&text).map(|q| list.memory = Some(q)),
            other => {
                d.error(
                    vpath,
                    Some(key.line),
                    format!(
                        "resource {other:?} is not supported yet (shoal schedules cpu and memory)"
                    ),
                );
                continue;
            }
        };
        if let Err(e) = result {
            d.error(vpath, Some(value.line), e.to_string());
        }
    }
    Some(list)
}

fn probe(d: &mut Decoder, node: &Node, path: &str) -> Option<Probe> {
    let mut f = d.fields(node, path)?;
    let line = f.line;
    let mut handlers = Vec::new();
    if let Some(h) = f.opt(d, "httpGet", http_get) {
        handlers.push(("httpGet", ProbeHandler::HttpGet(h)));
    }
    if let Some(h) = f.opt(d, "tcpSocket", tcp_socket) {
        handlers.push(("tcpSocket", ProbeHandler::TcpSocket(h)));
    }
    if let Some(h) = f.opt(d, "exec", exec) {
        handlers.push(("exec", ProbeHandler::Exec(h)));
    }
    // A handler that failed to decode still counts, so that it is not also reported missing.
    let given: Vec<&str> = ["httpGet", "tcpSocket", "exec"]
        .into_iter()
        .filter(|h| f.has(h))
        .collect();
    let mut probe = handlers
        .first()
        .map(|(_, h)| Probe::new(h.clone()))
        .unwrap_or_else(|| {
            Probe::new(ProbeHandler::Exec(ExecAction {
                command: Vec::new(),
            }))
        });
    let timings: [(&'static str, &mut u32, u32); 5] = [
        ("initialDelaySeconds", &mut probe.initial_delay_seconds, 0),
        ("periodSeconds", &mut probe.period_seconds, 1),
        ("timeoutSeconds", &mut probe.timeout_seconds, 1),
        ("successThreshold", &mut probe.success_threshold, 1),
        ("failureThreshold", &mut probe.failure_threshold, 1),
    ];
    for (name, slot, min) in timings {
        if let Some(v) = f.opt(d, name, |d, n, p| d.uint(n, p, min)) {
            *slot = v;
        }
    }
    let grpc = f.has("grpc");
    f.finish(d, &["grpc", "terminationGracePeriodSeconds"], &[]);
    match given.len() {
        0 if grpc => None, // reported as not supported
        0 => {
            d.error(
                path.to_owned(),
                Some(line),
                "needs exactly one handler: httpGet, tcpSocket or exec",
            );
            None
        }
        1 => (handlers.len() == 1).then_some(probe),
        _ => {
            d.error(
                path.to_owned(),
                Some(line),
                format!(
                    "has {} handlers ({}): give exactly one",
                    given.len(),
                    given.join(", ")
                ),
            );
            None
        }
    }
}

fn http_get(d: &mut Decoder, node: &Node, path: &str) -> Option<HttpGetAction> {
    let mut f = d.fields(node, path)?;
    let h = HttpGetAction {
        path: f
            .opt(d, "path", Decoder::string)
            .unwrap_or_else(|| "/".to_owned()),
        port: f.req(d, "port", port_ref)?,
        scheme: f
            .opt(d, "scheme", |d, n, p| {
                let scheme = d.choice(n, p, &[("HTTP", Scheme::Http), ("HTTPS", Scheme::Https)])?;
                if matches!(scheme, Scheme::Https) {
                    // Said at apply time rather than as a probe that never passes.
                    d.error(
                        p.to_owned(),
                        Some(n.line),
                        "HTTPS probes are not supported yet (use HTTP, tcpSocket or exec)",
                    );
                    return None;
                }
                Some(scheme)
            })
            .unwrap_or_default(),
        http_headers: f
            .opt(d, "httpHeaders", |d, n, p| d.list(n, p, http_header))
            .unwrap_or_default(),
    };
    f.finish(d, &["host"], &[]);
    Some(h)
}

fn http_header(d: &mut Decoder, node: &Node, path: &str) -> Option<HttpHeader> {
    let mut f = d.fields(node, path)?;
    let name = f.req(d, "name", Decoder::string);
    let value = f.opt(d, "value", Decoder::string).unwrap_or_default();
    f.finish(d, &[], &[]);
    Some(HttpHeader { name: name?, value })
}

fn tcp_socket(d: &mut Decoder, node: &Node, path: &str) -> Option<TcpSocketAction> {
    let mut f = d.fields(node, path)?;
    let port = f.req(d, "port", port_ref);
    f.finish(d, &["host"], &[]);
    Some(TcpSocketAction { port: port? })
}

fn exec(d: &mut Decoder, node: &Node, path: &str) -> Option<ExecAction> {
    let mut f = d.fields(node, path)?;
    let command = f.req(d, "command", Decoder::string_list);
    f.finish(d, &[], &[]);
    Some(ExecAction { command: command? })
}

fn port_ref(d: &mut Decoder, node: &Node, path: &str) -> Option<PortRef> {
    match &node.value {
        Value::Int(_) => d.port(node, path).map(PortRef::Number),
        Value::Str(s) => Some(PortRef::Name(s.clone())),
        _ => {
            d.expected(node, path, "a port number or a port name");
            None
        }
    }
}

fn deployment_spec(d: &mut Decoder, node: &Node, path: &str) -> DeploymentSpec {
    let mut spec = DeploymentSpec::default();
    let Some(mut f) = d.fields(node, path) else {
        return spec;
    };
    if let Some(r) = f.opt(d, "replicas", |d, n, p| d.uint(n, p, 0)) {
        spec.replicas = r;
    }
    spec.selector = f.req(d, "selector", label_selector).unwrap_or_default();
    spec.template = f.req(d, "template", pod_template).unwrap_or_default();
    if let Some(s) = f.opt(d, "strategy", strategy) {
        spec.strategy = s;
    }
    if let Some(v) = f.opt(d, "minReadySeconds", |d, n, p| d.uint(n, p, 0)) {
        spec.min_ready_seconds = v;
    }
    if let Some(v) = f.opt(d, "revisionHistoryLimit", |d, n, p| d.uint(n, p, 0)) {
        spec.revision_history_limit = v;
    }
    if let Some(v) = f.opt(d, "progressDeadlineSeconds", |d, n, p| d.uint(n, p, 1)) {
        spec.progress_deadline_seconds = v;
    }
    if let Some(v) = f.opt(d, "paused", Decoder::bool) {
        spec.paused = v;
    }
    f.finish(d, &[], &[]);
    spec
}

fn label_selector(d: &mut Decoder, node: &Node, path: &str) -> Option<LabelSelector> {
    let mut f = d.fields(node, path)?;
    let match_labels = f
        .opt(d, "matchLabels", Decoder::string_map)
        .unwrap_or_default();
    f.finish(d, &["matchExpressions"], &[]);
    Some(LabelSelector { match_labels })
}

fn pod_template(d: &mut Decoder, node: &Node, path: &str) -> Option<PodTemplateSpec> {
    let mut f = d.fields(node, path)?;
    let metadata = f
        .opt(d, "metadata", |d, n, p| Some(template_meta(d, n, p)))
        .unwrap_or_default();
    let spec = f
        .req(d, "spec", |d, n, p| Some(pod_spec(d, n, p)))
        .unwrap_or_default();
    f.finish(d, &[], &[]);
    Some(PodTemplateSpec { metadata, spec })
}

fn strategy(d: &mut Decoder, node: &Node, path: &str) -> Option<DeploymentStrategy> {
    let mut f = d.fields(node, path)?;
    #[derive(Clone, Copy, PartialEq)]
    enum Type {
        Rolling,
        Recreate,
    }
    let kind = f
        .opt(d, "type", |d, n, p| {
            d.choice(
                n,
                p,
                &[
                    ("RollingUpdate", Type::Rolling),
                    ("Recreate", Type::Recreate),
                ],
            )
        })
        .unwrap_or(Type::Rolling);
    let rolling = f.take(d, "rollingUpdate");
    f.finish(d, &[], &[]);
    match (kind, rolling) {
        (Type::Recreate, Some((n, p))) => {
            d.error(
                p,
                Some(n.line),
                "may not be given when the strategy type is Recreate",
            );
            Some(DeploymentStrategy::Recreate)
        }
        (Type::Recreate, None) => Some(DeploymentStrategy::Recreate),
        (Type::Rolling, rolling) => {
            let rolling_update = match rolling {
                Some((n, p)) => rolling_update(d, n, &p)?,
                None => RollingUpdate::default(),
            };
            Some(DeploymentStrategy::RollingUpdate { rolling_update })
        }
    }
}

fn rolling_update(d: &mut Decoder, node: &Node, path: &str) -> Option<RollingUpdate> {
    let mut f = d.fields(node, path)?;
    let mut r = RollingUpdate::default();
    if let Some(v) = f.opt(d, "maxSurge", int_or_percent) {
        r.max_surge = v;
    }
    if let Some(v) = f.opt(d, "maxUnavailable", int_or_percent) {
        r.max_unavailable = v;
    }
    f.finish(d, &[], &[]);
    Some(r)
}

fn int_or_percent(d: &mut Decoder, node: &Node, path: &str) -> Option<IntOrPercent> {
    match &node.value {
        Value::Int(_) => d.uint(node, path, 0).map(IntOrPercent::Int),
        Value::Str(s) => match IntOrPercent::parse_percent(s) {
            Some(p) => Some(p),
            None => {
                d.error(
                    path.to_owned(),
                    Some(node.line),
                    format!("expected a count or a percentage such as 25%, got string {s:?}"),
                );
                None
            }
        },
        _ => {
            d.expected(node, path, "a count or a percentage such as 25%");
            None
        }
    }
}

fn service_spec(d: &mut Decoder, node: &Node, path: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::default();
    let Some(mut f) = d.fields(node, path) else {
        return spec;
    };
    if let Some(kind) = f.opt(d, "type", |d, n, p| {
        if let Value::Str(s) = &n.value
            && matches!(s.as_str(), "LoadBalancer" | "ExternalName")
        {
            let message = format!("type {s} is not supported yet (use ClusterIP or NodePort)");
            d.error(p.to_owned(), Some(n.line), message);
            return None;
        }
        d.choice(
            n,
            p,
            &[
                ("ClusterIP", ServiceType::ClusterIp),
                ("NodePort", ServiceType::NodePort),
            ],
        )
    }) {
        spec.kind = kind;
    }
    spec.selector = f
        .opt(d, "selector", Decoder::string_map)
        .unwrap_or_default();
    spec.ports = f
        .opt(d, "ports", |d, n, p| d.list(n, p, service_port))
        .unwrap_or_default();
    let given = f.opt(d, "clusterIP", cluster_ip);
    let cluster_ips = f.opt(d, "clusterIPs", |d, n, p| {
        let ips = d.list(n, p, |d, n, p| cluster_ip(d, n, p).map(Some))?;
        Some((ips, n.line))
    });
    spec.cluster_ip = given.unwrap_or_default();
    // `kubectl get -o yaml` writes both `clusterIP` and `clusterIPs`; the list is the
    // dual-stack form of the same address.
    if let Some((ips, line)) = cluster_ips {
        let ips_path = join(path, "clusterIPs");
        match ips.as_slice() {
            [] => {}
            [Some(first)] => match given {
                None | Some(ClusterIp::Auto) => spec.cluster_ip = *first,
                Some(ip) if ip == *first => {}
                Some(ip) => d.error(
                    format!("{ips_path}[0]"),
                    Some(line),
                    format!("{first} does not match spec.clusterIP ({ip}): give the same address"),
                ),
            },
            [_] => {} // reported by the item
            _ => d.error(
                ips_path,
                Some(line),
                "dual-stack services are not supported yet (give one IPv4 address)",
            ),
        }
    }
    f.opt(d, "ipFamilies", |d, n, p| {
        let families = d.string_list(n, p)?;
        if families.len() > 1 {
            d.error(
                p.to_owned(),
                Some(n.line),
                "dual-stack services are not supported yet (services are IPv4)",
            );
        } else if let Some(family) = families.first()
            && family != "IPv4"
        {
            d.error(
                format!("{p}[0]"),
                Some(n.line),
                format!("{family:?} is not supported yet (services are IPv4)"),
            );
        }
        Some(())
    });
    if let Some(affinity) = f.opt(d, "sessionAffinity", |d, n, p| {
        if matches!(&n.value, Value::Str(s) if s == "ClientIP") {
            d.error(
                p.to_owned(),
                Some(n.line),
                "ClientIP session affinity is not supported yet (use None)",
            );
            return None;
        }
        d.choice(n, p, &[("None", SessionAffinity::None)])
    }) {
        spec.session_affinity = affinity;
    }
    f.finish(d, UNSUPPORTED_SERVICE_SPEC, DEFAULT_SERVICE_SPEC);
    spec
}

/// `spec.clusterIP`: `""` (assign one), `None` (headless) or an IPv4 address.
fn cluster_ip(d: &mut Decoder, node: &Node, path: &str) -> Option<ClusterIp> {
    let Value::Str(text) = &node.value else {
        d.expected(node, path, "an IPv4 address, \"\" or None");
        return None;
    };
    if let Some(ip) = ClusterIp::parse(text) {
        return Some(ip);
    }
    let message = if matches!(text.parse::<IpAddr>(), Ok(IpAddr::V6(_))) {
        format!("{text}: IPv6 services are not supported yet")
    } else {
        format!(
            "expected an IPv4 address, \"\" (assign one) or None (headless), got string {text:?}"
        )
    };
    d.error(path.to_owned(), Some(node.line), message);
    None
}

fn service_port(d: &mut Decoder, node: &Node, path: &str) -> Option<ServicePort> {
    let mut f = d.fields(node, path)?;
    let name = f.opt(d, "name", Decoder::string);
    let protocol = f
        .opt(d, "protocol", |d, n, p| {
            if matches!(&n.value, Value::Str(s) if s == "SCTP") {
                d.error(p.to_owned(), Some(n.line), "SCTP is not supported yet");
                return None;
            }
            d.choice(n, p, &[("TCP", Protocol::Tcp), ("UDP", Protocol::Udp)])
        })
        .unwrap_or_default();
    let port = f.req(d, "port", Decoder::port).unwrap_or(0);
    // Kubernetes reads 0 and "" as "the same as port".
    let target_port = f.opt(d, "targetPort", |d, n, p| match &n.value {
        Value::Int(0) => None,
        Value::Str(s) if s.is_empty() => None,
        _ => port_ref(d, n, p),
    });
    // And a nodePort of 0 as "assign one".
    let node_port = f
        .opt(d, "nodePort", |d, n, p| d.int(n, p, 0, 65535))
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    f.finish(d, &["appProtocol"], &[]);
    Some(ServicePort {
        name,
        protocol,
        port,
        target_port: target_port.unwrap_or(PortRef::Number(port)),
        node_port,
    })
}

/// The volume types shoal supports.
const VOLUME_SOURCES: [&str; 6] = [
    "configMap",
    "secret",
    "downwardAPI",
    "projected",
    "emptyDir",
    "hostPath",
];

/// Kubernetes' other volume types: each is "not supported yet" by name.
const UNSUPPORTED_VOLUME_SOURCES: &[&str] = &[
    "persistentVolumeClaim",
    "ephemeral",
    "image",
    "nfs",
    "csi",
    "iscsi",
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

/// Stands in for a volume whose source did not decode (the problem is reported): a valid
/// source, so that only that problem is.
fn placeholder_source() -> VolumeSource {
    VolumeSource::ConfigMap(ConfigMapVolume {
        name: "placeholder".into(),
        items: Vec::new(),
        default_mode: DEFAULT_VOLUME_MODE,
        optional: false,
    })
}

fn placeholder_volume() -> Volume {
    Volume {
        name: "placeholder".into(),
        source: placeholder_source(),
    }
}

fn volume(d: &mut Decoder, node: &Node, path: &str) -> Option<Volume> {
    let mut f = d.fields(node, path)?;
    let line = f.line;
    let name = f.req(d, "name", Decoder::string).unwrap_or_default();
    let mut found = Vec::new();
    if let Some(v) = f.opt(d, "configMap", config_map_volume) {
        found.push(VolumeSource::ConfigMap(v));
    }
    if let Some(v) = f.opt(d, "secret", secret_volume) {
        found.push(VolumeSource::Secret(v));
    }
    if let Some(v) = f.opt(d, "downwardAPI", downward_api_volume) {
        found.push(VolumeSource::DownwardApi(v));
    }
    if let Some(v) = f.opt(d, "projected", projected_volume) {
        found.push(VolumeSource::Projected(v));
    }
    if let Some(v) = f.opt(d, "emptyDir", empty_dir_volume) {
        found.push(VolumeSource::EmptyDir(v));
    }
    if let Some(v) = f.opt(d, "hostPath", host_path_volume) {
        found.push(VolumeSource::HostPath(v));
    }
    let mut given: Vec<&str> = VOLUME_SOURCES.into_iter().filter(|s| f.has(s)).collect();
    let mut unsupported = false;
    for &kind in UNSUPPORTED_VOLUME_SOURCES {
        // Not through `finish`: `emptyDir: {}` is the usual way to write one, not a default.
        if let Some((n, p)) = f.take(d, kind) {
            let message = format!(
                "{kind} volumes are not supported yet (supported volume types: {})",
                VOLUME_SOURCES.join(", ")
            );
            d.error(p, Some(n.line), message);
            given.push(kind);
            unsupported = true;
        }
    }
    f.finish(d, &[], &[]);
    // Several types, one of them unsupported: that one is reported, and is enough.
    let one = if unsupported {
        false
    } else {
        exactly_one(d, path, line, &given, "volume type", &VOLUME_SOURCES)
    };
    let source = match found.pop() {
        Some(source) if one => source,
        _ => placeholder_source(),
    };
    // Kept, even with a broken source, so that the mounts of the volume still find it.
    Some(Volume { name, source })
}

/// A file mode: 0 to 0777. YAML reads `0644` as octal (as Kubernetes does); `644` is a
/// decimal number, a common slip, which the message points out.
fn mode(d: &mut Decoder, node: &Node, path: &str) -> Option<u32> {
    match &node.value {
        Value::Int(i) if (0..=0o777).contains(i) => u32::try_from(*i).ok(),
        Value::Int(i) => {
            let digits = i.to_string();
            let written = node.text().unwrap_or_else(|| digits.clone());
            // A decimal number whose digits would make a mode if read as octal.
            let hint = if written == digits
                && (0..=777).contains(i)
                && digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
            {
                format!(" (did you mean 0{digits}? a leading 0 makes it octal)")
            } else {
                String::new()
            };
            let message = format!(
                "must be a file mode between 0 and 0777 (octal; 511 in decimal), got {written}{hint}"
            );
            d.error(path.to_owned(), Some(node.line), message);
            None
        }
        Value::Str(s) if !s.is_empty() && s.bytes().all(|b| (b'0'..=b'7').contains(&b)) => {
            let message =
                format!("expected integer, got string {s:?} (write the mode without quotes: {s})");
            d.error(path.to_owned(), Some(node.line), message);
            None
        }
        _ => {
            d.expected(node, path, "a file mode (such as 0644 or 0400)");
            None
        }
    }
}

fn items(d: &mut Decoder, f: &mut Fields<'_>) -> Vec<KeyToPath> {
    f.opt(d, "items", |d, n, p| d.list(n, p, key_to_path))
        .unwrap_or_default()
}

fn default_mode(d: &mut Decoder, f: &mut Fields<'_>) -> u32 {
    f.opt(d, "defaultMode", mode).unwrap_or(DEFAULT_VOLUME_MODE)
}

fn optional(d: &mut Decoder, f: &mut Fields<'_>) -> bool {
    f.opt(d, "optional", Decoder::bool).unwrap_or(false)
}

fn config_map_volume(d: &mut Decoder, node: &Node, path: &str) -> Option<ConfigMapVolume> {
    let mut f = d.fields(node, path)?;
    let v = ConfigMapVolume {
        name: f.req(d, "name", Decoder::string).unwrap_or_default(),
        items: items(d, &mut f),
        default_mode: default_mode(d, &mut f),
        optional: optional(d, &mut f),
    };
    f.finish(d, &[], &[]);
    Some(v)
}

fn secret_volume(d: &mut Decoder, node: &Node, path: &str) -> Option<SecretVolume> {
    let mut f = d.fields(node, path)?;
    let v = SecretVolume {
        secret_name: f.req(d, "secretName", Decoder::string).unwrap_or_default(),
        items: items(d, &mut f),
        default_mode: default_mode(d, &mut f),
        optional: optional(d, &mut f),
    };
    f.finish(d, &[], &[]);
    Some(v)
}

fn key_to_path(d: &mut Decoder, node: &Node, path: &str) -> Option<KeyToPath> {
    let mut f = d.fields(node, path)?;
    let item = KeyToPath {
        key: f.req(d, "key", Decoder::string).unwrap_or_default(),
        path: f.req(d, "path", Decoder::string).unwrap_or_default(),
        mode: f.opt(d, "mode", mode),
    };
    f.finish(d, &[], &[]);
    Some(item)
}

fn downward_api_volume(d: &mut Decoder, node: &Node, path: &str) -> Option<DownwardApiVolume> {
    let mut f = d.fields(node, path)?;
    let v = DownwardApiVolume {
        items: downward_api_items(d, &mut f),
        default_mode: default_mode(d, &mut f),
    };
    f.finish(d, &[], &[]);
    Some(v)
}

fn downward_api_items(d: &mut Decoder, f: &mut Fields<'_>) -> Vec<DownwardApiFile> {
    f.opt(d, "items", |d, n, p| d.list(n, p, downward_api_file))
        .unwrap_or_default()
}

/// One file; that it has exactly one of `fieldRef` and `resourceFieldRef` is a rule
/// (`validate`), since the type can hold both.
fn downward_api_file(d: &mut Decoder, node: &Node, path: &str) -> Option<DownwardApiFile> {
    let mut f = d.fields(node, path)?;
    let file = DownwardApiFile {
        path: f.req(d, "path", Decoder::string).unwrap_or_default(),
        field_ref: f.opt(d, "fieldRef", object_field_selector),
        resource_field_ref: f.opt(d, "resourceFieldRef", resource_field_selector),
        mode: f.opt(d, "mode", mode),
    };
    f.finish(d, &[], &[]);
    Some(file)
}

fn empty_dir_volume(d: &mut Decoder, node: &Node, path: &str) -> Option<EmptyDirVolume> {
    let mut f = d.fields(node, path)?;
    let v = EmptyDirVolume {
        medium: f.opt(d, "medium", medium).unwrap_or_default(),
        size_limit: f.opt(d, "sizeLimit", memory_quantity),
    };
    f.finish(d, &[], &[]);
    Some(v)
}

/// An `emptyDir` medium: `""` (disk) or `Memory`; huge pages are not supported yet.
fn medium(d: &mut Decoder, node: &Node, path: &str) -> Option<EmptyDirMedium> {
    const MEDIA: [(&str, EmptyDirMedium); 2] = [
        ("", EmptyDirMedium::Disk),
        ("Memory", EmptyDirMedium::Memory),
    ];
    if let Value::Str(s) = &node.value
        && (s == "HugePages" || s.starts_with("HugePages-"))
    {
        let message =
            format!("medium {s} is not supported yet (supported values are \"\", Memory)");
        d.error(path.to_owned(), Some(node.line), message);
        return None;
    }
    d.choice(node, path, &MEDIA)
}

/// A memory quantity (`128Mi`, `1G`, `1048576`), written as a string or a number.
fn memory_quantity(d: &mut Decoder, node: &Node, path: &str) -> Option<Memory> {
    let text = match &node.value {
        Value::Str(s) => s.clone(),
        Value::Int(_) | Value::Float(_) => node.value.scalar_text().unwrap_or_default(),
        _ => {
            d.expected(node, path, "a quantity (such as 128Mi or 1G)");
            return None;
        }
    };
    match Memory::parse(&text) {
        Ok(q) => Some(q),
        Err(e) => {
            d.error(path.to_owned(), Some(node.line), e.to_string());
            None
        }
    }
}

/// A `hostPath` volume; that its path is absolute and has no `..` is a rule (`validate`).
fn host_path_volume(d: &mut Decoder, node: &Node, path: &str) -> Option<HostPathVolume> {
    let mut f = d.fields(node, path)?;
    let v = HostPathVolume {
        path: f.req(d, "path", Decoder::string).unwrap_or_default(),
        path_type: f
            .opt(d, "type", |d, n, p| d.choice(n, p, &HostPathType::ALL))
            .unwrap_or_default(),
    };
    f.finish(d, &[], &[]);
    Some(v)
}

const PROJECTION_SOURCES: [&str; 3] = ["configMap", "secret", "downwardAPI"];

fn projected_volume(d: &mut Decoder, node: &Node, path: &str) -> Option<ProjectedVolume> {
    let mut f = d.fields(node, path)?;
    let v = ProjectedVolume {
        sources: f
            .opt(d, "sources", |d, n, p| {
                d.list_or(n, p, placeholder_projection, projection_source)
            })
            .unwrap_or_default(),
        default_mode: default_mode(d, &mut f),
    };
    f.finish(d, &[], &[]);
    Some(v)
}

fn placeholder_projection() -> ProjectionSource {
    ProjectionSource::ConfigMap(KeyProjection {
        name: "placeholder".into(),
        ..KeyProjection::default()
    })
}

fn projection_source(d: &mut Decoder, node: &Node, path: &str) -> Option<ProjectionSource> {
    let mut f = d.fields(node, path)?;
    let line = f.line;
    let mut found = Vec::new();
    if let Some(p) = f.opt(d, "configMap", key_projection) {
        found.push(ProjectionSource::ConfigMap(p));
    }
    if let Some(p) = f.opt(d, "secret", key_projection) {
        found.push(ProjectionSource::Secret(p));
    }
    if let Some(p) = f.opt(d, "downwardAPI", |d, n, p| {
        let mut f = d.fields(n, p)?;
        let items = downward_api_items(d, &mut f);
        f.finish(d, &[], &[]);
        Some(DownwardApiProjection { items })
    }) {
        found.push(ProjectionSource::DownwardApi(p));
    }
    let given: Vec<&str> = PROJECTION_SOURCES
        .into_iter()
        .filter(|s| f.has(s))
        .collect();
    let mut unsupported = false;
    for kind in [
        "serviceAccountToken",
        "clusterTrustBundle",
        "podCertificate",
    ] {
        // Not through `finish`, which would let an empty one pass as if absent.
        if let Some((n, p)) = f.take(d, kind) {
            let message = format!(
                "{kind} projections are not supported yet (supported sources: {})",
                PROJECTION_SOURCES.join(", ")
            );
            d.error(p, Some(n.line), message);
            unsupported = true;
        }
    }
    f.finish(d, &[], &[]);
    if unsupported || !exactly_one(d, path, line, &given, "source", &PROJECTION_SOURCES) {
        return None;
    }
    found.pop()
}

fn key_projection(d: &mut Decoder, node: &Node, path: &str) -> Option<KeyProjection> {
    let mut f = d.fields(node, path)?;
    let p = KeyProjection {
        name: f.req(d, "name", Decoder::string).unwrap_or_default(),
        items: items(d, &mut f),
        optional: optional(d, &mut f),
    };
    f.finish(d, &[], &[]);
    Some(p)
}

/// A ConfigMap's fields (it has no spec), read from the object's own mapping.
fn config_map(d: &mut Decoder, f: &mut Fields<'_>, metadata: ObjectMeta) -> ConfigMap {
    ConfigMap {
        metadata,
        data: f.opt(d, "data", Decoder::string_map).unwrap_or_default(),
        binary_data: f
            .opt(d, "binaryData", |d, n, p| {
                base64_map(d, n, p, "binaryData values are base64; give text in data")
            })
            .unwrap_or_default(),
        immutable: f.opt(d, "immutable", Decoder::bool).unwrap_or(false),
    }
}

/// The type of a Secret that names none.
pub(crate) const OPAQUE: &str = "Opaque";

/// A Secret's fields. `stringData` is merged into `data`, its keys winning, as the API server
/// does on write. No message quotes a value.
fn secret(d: &mut Decoder, f: &mut Fields<'_>, path: &str, metadata: ObjectMeta) -> Secret {
    let mut data = f
        .opt(d, "data", |d, n, p| {
            base64_map(
                d,
                n,
                p,
                "data values are base64; give plain text in stringData",
            )
        })
        .unwrap_or_default();
    let string_data = f
        .opt(d, "stringData", secret_string_map)
        .unwrap_or_default();
    let secret_type = f
        .opt(d, "type", Decoder::string)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| OPAQUE.to_owned());
    let immutable = f.opt(d, "immutable", Decoder::bool).unwrap_or(false);
    // The rules speak of `data[key]` (as Kubernetes does): place a key that came from
    // stringData on its line there, and `data` itself where the keys are given.
    let data_path = join(path, "data");
    let string_data_path = join(path, "stringData");
    for (key, value) in string_data {
        if let Some(line) = d.lines.get(&format!("{string_data_path}[{key}]")).copied() {
            d.record(&format!("{data_path}[{key}]"), line);
        }
        data.insert(key, ByteData(value.into_bytes()));
    }
    if !d.lines.contains_key(&data_path) {
        let line = [string_data_path, join(path, "type")]
            .iter()
            .find_map(|p| d.lines.get(p).copied());
        if let Some(line) = line {
            d.record(&data_path, line);
        }
    }
    Secret {
        metadata,
        data,
        secret_type,
        immutable,
    }
}

/// What a value is, without its content (for secrets).
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Int(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Str(_) => "a string",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
    }
}

/// A mapping of keys to base64 text, decoded as the API server does (standard alphabet with
/// padding; line breaks ignored). `hint` follows an error. No message quotes a value.
fn base64_map(
    d: &mut Decoder,
    node: &Node,
    path: &str,
    hint: &str,
) -> Option<BTreeMap<String, ByteData>> {
    let Value::Map(entries) = &node.value else {
        let message = format!(
            "expected a mapping of keys to base64 text, got {}",
            type_name(&node.value)
        );
        d.error(path.to_owned(), Some(node.line), message);
        return None;
    };
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        let vpath = format!("{path}[{}]", key.name);
        d.record(&vpath, key.line);
        let text = match &value.value {
            Value::Null => "",
            Value::Str(s) => s.as_str(),
            other => {
                let message = format!("expected base64 text, got {}", type_name(other));
                d.error(vpath, Some(value.line), message);
                continue;
            }
        };
        match decode_base64(text) {
            Ok(bytes) => {
                out.insert(key.name.clone(), ByteData(bytes));
            }
            Err(e) => d.error(vpath, Some(value.line), format!("{e} ({hint})")),
        }
    }
    Some(out)
}

/// Base64 as Go's `encoding/json` reads `[]byte`: the standard alphabet, padding required,
/// line breaks ignored. The error says where, never what.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let compact: String;
    let text = if text.contains(['\n', '\r']) {
        compact = text.chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
        compact.as_str()
    } else {
        text
    };
    ENGINE.decode(text).map_err(|e| match e {
        base64::DecodeError::InvalidByte(offset, _)
        | base64::DecodeError::InvalidLastSymbol(offset, _) => {
            format!("not valid base64: unexpected character at offset {offset}")
        }
        base64::DecodeError::InvalidLength(_) => {
            "not valid base64: the length is not a multiple of 4 (with = padding)".to_owned()
        }
        base64::DecodeError::InvalidPadding => {
            "not valid base64: missing or wrong = padding".to_owned()
        }
    })
}

/// `stringData`: a mapping of keys to text. Like [`Decoder::string_map`], but no message
/// quotes a value.
fn secret_string_map(d: &mut Decoder, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        let message = format!(
            "expected a mapping of keys to text, got {}",
            type_name(&node.value)
        );
        d.error(path.to_owned(), Some(node.line), message);
        return None;
    };
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        let vpath = format!("{path}[{}]", key.name);
        d.record(&vpath, key.line);
        match &value.value {
            Value::Null => {
                out.insert(key.name.clone(), String::new());
            }
            Value::Str(s) => {
                out.insert(key.name.clone(), s.clone());
            }
            other => {
                let message = format!("expected string, got {} (quote it)", type_name(other));
                d.error(vpath, Some(value.line), message);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = ["containerPort", "name", "protocol", "hostPort"];
        assert_eq!(
            suggest("contianerPort", known.into_iter()),
            Some("containerPort")
        );
        assert_eq!(
            suggest("ContainerPort", known.into_iter()),
            Some("containerPort")
        );
        assert_eq!(suggest("nmae", known.into_iter()), Some("name"));
        assert_eq!(suggest("image", known.into_iter()), None);
        assert_eq!(suggest("x", known.into_iter()), None);
    }
}
