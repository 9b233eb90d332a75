//! The Kubernetes object model shoal runs: parsing, validating and canonicalising the manifests
//! `shoal apply -f` reads, and the Kubernetes-shaped objects and statuses `shoal get` prints, so
//! that users bring the YAML they already have and keep the scripts they wrote for kubectl.
//!
//! This crate knows nothing of shoal's cluster: no gossip, no stored state, no I/O beyond
//! reading manifest files. What the cluster adds to an object (uid, generation, assigned
//! addresses, statuses) is set by the caller.
//!
//! # Supported
//!
//! - `v1 Namespace`; `v1 Pod`; `apps/v1 Deployment`; `v1 Service`; `v1 ConfigMap`; `v1
//!   Secret`; a `v1 List` (or `PodList` ...) of them.
//! - Pods: containers (name, image, command, args, workingDir, env with `value` or
//!   `valueFrom` (configMapKeyRef, secretKeyRef, fieldRef of metadata.name|namespace|uid,
//!   metadata.labels['k'], metadata.annotations['k'], spec.nodeName, status.podIP|hostIP,
//!   resourceFieldRef of requests|limits.cpu|memory with a divisor), envFrom (configMapRef or
//!   secretRef, with a prefix), volumeMounts (mountPath, readOnly, subPath), ports with
//!   containerPort/name/protocol TCP|UDP/hostPort, resources requests/limits of cpu and memory,
//!   liveness/readiness/startup probes with httpGet, tcpSocket or exec, imagePullPolicy),
//!   restartPolicy, nodeSelector, terminationGracePeriodSeconds, volumes of type configMap,
//!   secret (items, defaultMode, optional), downwardAPI, projected (configMap, secret and
//!   downwardAPI sources), emptyDir (medium `""` (disk, the default) or `Memory`, sizeLimit a
//!   memory quantity) and hostPath (path, type `""` (no check, the default),
//!   DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice or BlockDevice).
//!   Kubernetes' rules: one source per variable and per volume, volume names unique, every
//!   mount names a volume of the pod, no mount path twice in a container, file paths relative
//!   and without `..`, no file path twice in a volume, modes 0-0777, a hostPath's path
//!   absolute and without `..`.
//! - ConfigMaps: data, binaryData (base64), immutable. Secrets: data (base64), stringData
//!   (merged into data, as the API server does), immutable, and type: Opaque (the default),
//!   kubernetes.io/tls, kubernetes.io/basic-auth, kubernetes.io/dockerconfigjson and
//!   kubernetes.io/ssh-auth with Kubernetes' rules (their keys), or a type of the user's own
//!   with a domain (`example.com/token`). Keys are Kubernetes' (`[-._a-zA-Z0-9]+`, not `.`, `..`
//!   or starting with `..`); keys and values together are at most 1 MiB
//!   ([`MAX_CONFIG_BYTES`]). No message and no `Debug` output shows a secret's value. The data
//!   of an immutable one cannot change, nor a secret's type ([`immutable_change`], which
//!   `apply` asks).
//! - Deployments: replicas, selector.matchLabels, template, strategy RollingUpdate
//!   (maxSurge/maxUnavailable, counts or percentages) or Recreate, minReadySeconds,
//!   revisionHistoryLimit, progressDeadlineSeconds, paused.
//! - Services: type ClusterIP (default) or NodePort; selector (a map; none means no
//!   endpoints); ports with name, port, targetPort (a number or a container port's name;
//!   default: port), protocol TCP, nodePort (30000-32767, NodePort only); clusterIP absent or
//!   `""` (the cluster assigns one), `None` (headless) or an address of the cluster's service
//!   range; sessionAffinity None. Kubernetes' rules: a DNS-1035 name, at least one port unless
//!   headless, port names unique and required when there are several, no port twice, no
//!   headless NodePort. What needs the cluster's state (the address is in the service range and
//!   not held by another service, node ports free) is checked when the service is applied
//!   (`workload::service`), which also assigns the cluster IP and node ports and stores them in
//!   the object, so that they never change; `clusterIPs`, `ipFamilies: [IPv4]`,
//!   `ipFamilyPolicy: SingleStack` and the traffic policies `Cluster` (what `kubectl get -o
//!   yaml` adds) are accepted.
//! - Input: multi-document YAML 1.2 (`---`), JSON, concatenated JSON objects; files,
//!   directories (`*.yaml`, `*.yml`, `*.json`, sorted; recursive on request, like kubectl's
//!   `-R`) and stdin (`-`). As in the YAML 1.1 Kubernetes reads, an integer with a leading zero
//!   is octal: `defaultMode: 0644` is 420 (rw-r--r--), as in Kubernetes' examples.
//!
//! Everything else is an error that names it: unknown fields ("unknown field", with the closest
//! known name), Kubernetes fields shoal does not implement ("not supported yet":
//! persistentVolumeClaim and the other volume types, emptyDir's HugePages media,
//! serviceAccountToken projections, subPathExpr, matchExpressions, initContainers, affinity, LoadBalancer and
//! ExternalName services, UDP and SCTP service ports, ClientIP session affinity, externalIPs
//! ...), other kinds and apiVersions. A
//! not-supported field given an empty value or its Kubernetes default (`dnsPolicy:
//! ClusterFirst`, `terminationMessagePolicy: File`) is accepted, since it means the same as
//! leaving it out, so manifests exported with `kubectl get -o yaml` apply. Read-only metadata
//! (`uid`, `resourceVersion`, `creationTimestamp` ...) and `status` are accepted and ignored.
//!
//! # Errors
//!
//! [`parse`] checks every document and reports every problem, each with file, document, field
//! path and line ([`ManifestError`]):
//!
//! ```text
//! deploy.yaml: doc 2: spec.template.spec.containers[0].ports[0].containerPort: expected integer, got string "80" (line 17)
//! ```
//!
//! If there is any, no resource is returned, so nothing of that apply is written.
//!
//! # Invariants
//!
//! - A parsed [`Resource`] has every default filled in (namespace `default`, replicas 1,
//!   RollingUpdate 25%/25%, probe timings, imagePullPolicy, a service port's targetPort, a
//!   volume's defaultMode 0644, a secret's type Opaque ...)
//!   and satisfies every rule (names, labels, unique container and port names, selector
//!   matching the template ...). A Service's cluster IP and node ports may still be unassigned
//!   (the applying agent assigns them).
//! - [`Resource::to_stored`] is canonical: objects that mean the same store the same bytes,
//!   and `from_stored(to_stored(r)) == r` (without the read-only fields). `apply` compares
//!   stored bytes ([`apply_outcome`]), so applying the same manifest twice is `unchanged`.
//! - No input makes the parser panic (proptest, and the cargo-fuzz target `manifest`: `cd
//!   model/fuzz && ./seed_corpus.sh && RUSTC_BOOTSTRAP=1 cargo fuzz run -O manifest
//!   corpus/manifest`); nesting is bounded (32 levels) and so are files (16 MiB).
//!
//! # Use in `apply` and `get`
//!
//! ```text
//! resources = parse_paths(files, &options, &mut stdin)?      // all or nothing
//! for r in resources (Namespaces first):
//!     key = r.key(); old = store.get(key)
//!     if let Some(why) = immutable_change(&old, &r): refuse r    // an immutable ConfigMap ...
//!     if r is a Service: r = service::prepare(range, services, r)  // assign or keep its IP
//!     outcome = apply_outcome(old.bytes, &r)                   // created | configured | unchanged
//!     if outcome != Unchanged:
//!         generation = next_generation(old.(bytes, generation), &r)
//!         store.put(key, r.to_stored(), generation)
//!     println!("{} {outcome}", key)                            // deployment.apps/web created
//!
//! get: r = Resource::from_stored(bytes)?; set r's read-only metadata (uid, resourceVersion,
//!      generation, creationTimestamp) and a pod's spec.node_name (a service's effective
//!      cluster IP and node ports); then pod_object(&pod, &status) / service_object(&svc) /
//!      configmap_object(&cm) / secret_object(&s) / endpoints_object(&ep) /
//!      list_object(items) for -o json|yaml (the CLI reads them back with pod_from_object ...
//!      and prints kubectl's tables)
//! ```

#![warn(missing_docs)]

mod canonical;
mod decode;
mod error;
mod model;
mod quantity;
mod status;
mod timestamp;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use canonical::{
    Outcome, StoredError, apply_outcome, immutable_change, next_generation, safe_chars,
};
pub use error::{ManifestError, ManifestErrors};
pub use model::{
    ByteData, ClusterIp, ConfigMap, ConfigMapVolume, Container, ContainerPort, DEFAULT_NAMESPACE,
    DEFAULT_VOLUME_MODE, Deployment, DeploymentSpec, DeploymentStrategy, DownwardApiFile,
    DownwardApiProjection, DownwardApiVolume, EmptyDirMedium, EmptyDirVolume, EnvFromRef,
    EnvFromSource, EnvVar, EnvVarSource, ExecAction, HostPathType, HostPathVolume, HttpGetAction,
    HttpHeader, IntOrPercent, KeyProjection, KeySelector, KeyToPath, Kind, LabelSelector,
    MAX_CONFIG_BYTES, Namespace, ObjectFieldSelector, ObjectMeta, ObjectRef, Pod, PodSpec,
    PodTemplateSpec, PortRef, Probe, ProbeHandler, ProbeKind, ProjectedVolume, ProjectionSource,
    Protocol, PullPolicy, Resource, ResourceFieldSelector, ResourceKey, ResourceList,
    ResourceRequirements, RestartPolicy, RollingUpdate, Scheme, Secret, SecretVolume, Service,
    ServicePort, ServiceSpec, ServiceType, SessionAffinity, TcpSocketAction, TemplateMeta, Volume,
    VolumeMount, VolumeSource,
};
pub use quantity::{Cpu, Memory, QuantityError};
pub use status::{
    ConditionStatus, ContainerState, ContainerStatus, DeploymentCondition, DeploymentConditionType,
    DeploymentStatus, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, NamespacePhase,
    NamespaceStatus, ObjectReference, PodCondition, PodConditionType, PodPhase, PodStatus,
    configmap_from_object, configmap_object, deployment_from_object, deployment_object,
    endpoints_from_object, endpoints_object, list_object, namespace_from_object, namespace_object,
    pod_from_object, pod_object, protocol_name, qos_class, secret_from_object, secret_object,
    service_from_object, service_object,
};
pub use timestamp::Timestamp;
pub use validate::{NODE_PORT_RANGE, format_labels};

use decode::{Decoder, Located};

/// The largest manifest file read (objects are limited to 1 MiB each by the API anyway).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// How to read manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// kubectl's `-n`: the namespace of objects that name none (else `default`). An object
    /// that names another namespace is an error, as with kubectl.
    pub namespace: Option<String>,
    /// kubectl's `-R`: read directories' subdirectories too.
    pub recursive: bool,
    /// Where `namespace` comes from, for the error that names it.
    pub namespace_from: NamespaceFrom,
}

/// Where [`ParseOptions::namespace`] comes from: what an error about a different namespace
/// names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NamespaceFrom {
    /// kubectl's `-n` flag.
    #[default]
    Flag,
    /// The path of an API request (`/api/v1/objects/{kind}/{namespace}/{name}`).
    Path,
}

impl NamespaceFrom {
    fn describe(self) -> &'static str {
        match self {
            NamespaceFrom::Flag => "given with -n",
            NamespaceFrom::Path => "of the request's path",
        }
    }
}

/// Parses one file's bytes (`source` is its name, or `-` for stdin) with the default options.
/// Returns every object, or every problem.
pub fn parse(source: &str, bytes: &[u8]) -> Result<Vec<Resource>, ManifestErrors> {
    parse_with(source, bytes, &ParseOptions::default())
}

/// [`parse`] with options.
pub fn parse_with(
    source: &str,
    bytes: &[u8],
    options: &ParseOptions,
) -> Result<Vec<Resource>, ManifestErrors> {
    let mut parser = Parser::new(options);
    parser.add(display_name(source), bytes);
    parser.finish()
}

/// Parses files, directories (their `*.yaml`, `*.yml` and `*.json` files, sorted by name;
/// subdirectories too when `options.recursive`) and `-` (read from `stdin`), in the order
/// given. Returns every object, or every problem of every file.
pub fn parse_paths(
    paths: &[PathBuf],
    options: &ParseOptions,
    stdin: &mut dyn Read,
) -> Result<Vec<Resource>, ManifestErrors> {
    let mut parser = Parser::new(options);
    for path in paths {
        if path.as_os_str() == "-" {
            let name = display_name("-");
            match read_limited(stdin) {
                Ok(bytes) => parser.add(name, &bytes),
                Err(e) => parser.file_error(name, e),
            }
            continue;
        }
        match fs::metadata(path) {
            Err(e) => parser.file_error(&path.display().to_string(), format!("cannot read: {e}")),
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                collect_dir(path, options.recursive, &mut files, &mut parser);
                for file in files {
                    parser.add_file(&file);
                }
            }
            Ok(_) => parser.add_file(path),
        }
    }
    parser.finish()
}

fn display_name(source: &str) -> &str {
    if source == "-" { "<stdin>" } else { source }
}

fn read_limited(reader: &mut dyn Read) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {} MiB; that is not a manifest",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(bytes)
}

fn is_manifest_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The manifest files of `dir` in name order, descending into subdirectories (in the same
/// order, as kubectl's `-R` walks) when `recursive`. Symbolic links to directories are not
/// followed, so that a link cycle cannot loop.
fn collect_dir(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>, parser: &mut Parser<'_>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            parser.file_error(&dir.display().to_string(), format!("cannot read: {e}"));
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if recursive {
                collect_dir(&path, recursive, out, parser);
            }
        } else if is_manifest_name(&path) && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(path);
        }
    }
}

/// Collects objects and problems across files.
struct Parser<'o> {
    options: &'o ParseOptions,
    resources: Vec<Resource>,
    errors: Vec<ManifestError>,
    /// Where each object was first defined, to report duplicates.
    seen: HashMap<ResourceKey, (String, usize)>,
}

impl<'o> Parser<'o> {
    fn new(options: &'o ParseOptions) -> Self {
        Parser {
            options,
            resources: Vec::new(),
            errors: Vec::new(),
            seen: HashMap::new(),
        }
    }

    fn file_error(&mut self, file: &str, message: String) {
        self.errors.push(ManifestError {
            file: file.to_owned(),
            doc: None,
            path: String::new(),
            line: None,
            message,
        });
    }

    fn add_file(&mut self, path: &Path) {
        let name = path.display().to_string();
        let bytes = fs::File::open(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|mut f| read_limited(&mut f));
        match bytes {
            Ok(bytes) => self.add(&name, &bytes),
            Err(e) => self.file_error(&name, e),
        }
    }

    fn add(&mut self, file: &str, bytes: &[u8]) {
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = &bytes[..e.valid_up_to()];
                let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
                self.errors.push(ManifestError {
                    file: file.to_owned(),
                    doc: None,
                    path: String::new(),
                    line: u32::try_from(line).ok(),
                    message: format!(
                        "not UTF-8 text (invalid byte at offset {})",
                        e.valid_up_to()
                    ),
                });
                return;
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for doc in yaml::split_documents(text) {
            self.add_document(file, &doc);
        }
    }

    fn add_document(&mut self, file: &str, doc: &yaml::Document<'_>) {
        let node = match yaml::parse_document(doc) {
            Ok(Some(node)) => node,
            Ok(None) => return,
            Err(e) => {
                self.errors.push(ManifestError {
                    file: file.to_owned(),
                    doc: Some(doc.number),
                    path: String::new(),
                    line: e.line,
                    message: e.message,
                });
                return;
            }
        };
        let mut d = Decoder::default();
        let mut resources = decode::document(&mut d, &node);
        let decode_errors = d.issues.clone();
        let mut issues = std::mem::take(&mut d.issues);
        for (prefix, resource) in &mut resources {
            let at = |field: &str| {
                if prefix.is_empty() {
                    field.to_owned()
                } else {
                    format!("{prefix}.{field}")
                }
            };
            self.fill_namespace(resource, &at("metadata.namespace"), &d, &mut issues);
            for issue in validate::validate(resource) {
                let path = at(&issue.path);
                // A value that did not decode was replaced by a default; the rules would only
                // complain about that default.
                if decode_errors.iter().any(|e| is_within(&path, &e.path)) {
                    continue;
                }
                issues.push(Located {
                    line: d.line_of(&path),
                    path,
                    message: issue.message,
                });
            }
        }
        if issues.is_empty() {
            for (prefix, resource) in resources {
                self.keep(file, doc.number, &prefix, &d, resource);
            }
            return;
        }
        // Lines first, then the ones without; the order found within a line.
        issues.sort_by_key(|i| i.line.unwrap_or(u32::MAX));
        self.errors
            .extend(issues.into_iter().map(|i| ManifestError {
                file: file.to_owned(),
                doc: Some(doc.number),
                path: i.path,
                line: i.line,
                message: i.message,
            }));
    }

    /// Namespaced objects get the `-n` namespace or `default`; a different one is an error.
    fn fill_namespace(
        &self,
        resource: &mut Resource,
        path: &str,
        d: &Decoder,
        issues: &mut Vec<Located>,
    ) {
        if !resource.kind().is_namespaced() {
            return;
        }
        let wanted = self.options.namespace.as_deref();
        let meta = resource.metadata_mut();
        match (&meta.namespace, wanted) {
            (None, _) => {
                meta.namespace = Some(wanted.unwrap_or(DEFAULT_NAMESPACE).to_owned());
            }
            (Some(ns), Some(wanted)) if ns != wanted => issues.push(Located {
                path: path.to_owned(),
                line: d.line_of(path),
                message: format!(
                    "the object's namespace {ns:?} does not match the namespace {wanted:?} {}",
                    self.options.namespace_from.describe()
                ),
            }),
            (Some(_), _) => {}
        }
    }

    fn keep(&mut self, file: &str, doc: usize, prefix: &str, d: &Decoder, resource: Resource) {
        let key = resource.key();
        if let Some((first_file, first_doc)) = self.seen.get(&key) {
            let path = if prefix.is_empty() {
                "metadata.name".to_owned()
            } else {
                format!("{prefix}.metadata.name")
            };
            let namespace = if key.namespace.is_empty() {
                String::new()
            } else {
                format!(" in namespace {}", key.namespace)
            };
            self.errors.push(ManifestError {
                file: file.to_owned(),
                doc: Some(doc),
                line: d.line_of(&path),
                path,
                message: format!(
                    "{key}{namespace} is already defined in {first_file} doc {first_doc}"
                ),
            });
            return;
        }
        self.seen.insert(key, (file.to_owned(), doc));
        self.resources.push(resource);
    }

    fn finish(self) -> Result<Vec<Resource>, ManifestErrors> {
        if self.errors.is_empty() {
            Ok(self.resources)
        } else {
            Err(ManifestErrors(self.errors))
        }
    }
}

/// Whether field path `path` is `ancestor` or below it.
fn is_within(path: &str, ancestor: &str) -> bool {
    match path.strip_prefix(ancestor) {
        Some(rest) => ancestor.is_empty() || rest.is_empty() || rest.starts_with(['.', '[']),
        None => false,
    }
}
