//! Semantic rules on the typed model, Kubernetes' where Kubernetes has one: names (DNS-1123
//! labels and subdomains, DNS-1035 labels for services), label keys and values, unique container
//! and port names, port ranges, probes, requests within limits, the Deployment's selector
//! against its template, a Service's ports, node ports and type, the keys and size of a
//! ConfigMap or Secret and a Secret's type, and a pod's env sources (the object names and keys
//! they refer to, the pod fields and resources they read), volumes (names, file paths and
//! modes, a hostPath's path) and mounts (of a volume of the pod, at distinct absolute paths).
//!
//! Rules that need the cluster's state (a cluster IP inside the cluster's service range and not
//! held by another service, node ports not held by another service) are checked when the
//! service is applied (`workload::service::prepare`).
//!
//! The rules run on a [`Resource`], not on YAML, so that the same checks guard the stored form
//! (`from_stored`) and user input. Each problem is an [`Issue`] with a field path; the parser
//! adds the file, document and line.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    ClusterIp, ConfigMap, Container, Deployment, DeploymentStrategy, DownwardApiFile, EnvFromRef,
    EnvVarSource, IntOrPercent, KeySelector, KeyToPath, Kind, MAX_CONFIG_BYTES, ObjectMeta,
    PodSpec, PortRef, Probe, ProbeHandler, ProjectionSource, Protocol, Resource,
    ResourceFieldSelector, RestartPolicy, Secret, Service, ServiceType, VolumeSource,
};

/// The node ports a NodePort service may use (Kubernetes' default `--service-node-port-range`).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// One problem, at a field path such as `spec.template.spec.containers[0].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) path: String,
    pub(crate) message: String,
}

/// Every rule violation of `resource`.
pub(crate) fn validate(resource: &Resource) -> Vec<Issue> {
    validate_with(resource, false)
}

/// Every rule violation of a stored `resource`. A stored Secret may hold no data: its values
/// are sealed beside the object (the agent keeps them so), so the keys its type requires are
/// checked when it is applied, not when it is read back.
pub(crate) fn validate_stored(resource: &Resource) -> Vec<Issue> {
    validate_with(resource, true)
}

fn validate_with(resource: &Resource, stored: bool) -> Vec<Issue> {
    let mut v = Validator {
        stored,
        ..Validator::default()
    };
    let kind = resource.kind();
    v.meta(resource.metadata(), kind);
    match resource {
        Resource::Namespace(_) => {}
        Resource::Pod(pod) => v.pod_spec(&pod.spec, "spec", false),
        Resource::Deployment(d) => v.deployment(d),
        Resource::Service(svc) => v.service(svc),
        Resource::ConfigMap(cm) => v.config_map(cm),
        Resource::Secret(secret) => v.secret(secret),
    }
    v.issues
}

#[derive(Default)]
struct Validator {
    issues: Vec<Issue>,
    /// Checking a stored object (see [`validate_stored`]).
    stored: bool,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn meta(&mut self, meta: &ObjectMeta, kind: Kind) {
        // Kubernetes: namespace names are DNS-1123 labels, pod and deployment names subdomains,
        // service names DNS-1035 labels (they become DNS names and environment variables).
        let name_rule = match kind {
            Kind::Namespace => dns1123_label(&meta.name),
            Kind::Service => dns1035_label(&meta.name),
            Kind::Pod | Kind::Deployment | Kind::ConfigMap | Kind::Secret => {
                dns1123_subdomain(&meta.name)
            }
        };
        if let Err(e) = name_rule {
            self.push("metadata.name", e);
        }
        match (&meta.namespace, kind.is_namespaced()) {
            (Some(ns), true) => {
                if let Err(e) = dns1123_label(ns) {
                    self.push("metadata.namespace", e);
                }
            }
            (Some(_), false) => self.push(
                "metadata.namespace",
                format!("not allowed: {kind} objects are cluster-scoped"),
            ),
            (None, _) => {}
        }
        self.labels(&meta.labels, "metadata.labels");
        self.annotations(&meta.annotations, "metadata.annotations");
    }

    fn labels(&mut self, labels: &BTreeMap<String, String>, path: &str) {
        for (k, v) in labels {
            if let Err(e) = label_key(k) {
                self.push(format!("{path}[{k}]"), format!("invalid key: {e}"));
            }
            if let Err(e) = label_value(v) {
                self.push(format!("{path}[{k}]"), e);
            }
        }
    }

    fn annotations(&mut self, annotations: &BTreeMap<String, String>, path: &str) {
        let mut total = 0;
        for (k, v) in annotations {
            if let Err(e) = label_key(k) {
                self.push(format!("{path}[{k}]"), format!("invalid key: {e}"));
            }
            total += k.len() + v.len();
        }
        // Kubernetes' limit, so that what applies here applies there too.
        const MAX: usize = 256 * 1024;
        if total > MAX {
            self.push(
                path,
                format!("annotations total {total} bytes, more than the limit of {MAX}"),
            );
        }
    }

    fn deployment(&mut self, d: &Deployment) {
        let spec = &d.spec;
        if spec.replicas > i32::MAX as u32 {
            self.push("spec.replicas", "must be at most 2147483647");
        }
        let selector = &spec.selector.match_labels;
        if selector.is_empty() {
            self.push(
                "spec.selector.matchLabels",
                "must not be empty: a Deployment needs a selector for its pods",
            );
        }
        self.labels(selector, "spec.selector.matchLabels");
        let template = &spec.template;
        self.labels(&template.metadata.labels, "spec.template.metadata.labels");
        self.annotations(
            &template.metadata.annotations,
            "spec.template.metadata.annotations",
        );
        if !selector.is_empty() && !spec.selector.matches(&template.metadata.labels) {
            let want = format_labels(selector);
            let have = format_labels(&template.metadata.labels);
            let have = if have.is_empty() {
                "none".to_owned()
            } else {
                have
            };
            self.push(
                "spec.template.metadata.labels",
                format!(
                    "do not match spec.selector.matchLabels: the selector wants {want}, the template has {have}"
                ),
            );
        }
        self.pod_spec(&template.spec, "spec.template.spec", true);
        if let DeploymentStrategy::RollingUpdate { rolling_update } = &spec.strategy {
            let path = "spec.strategy.rollingUpdate";
            if let IntOrPercent::Percent(p) = rolling_update.max_unavailable
                && p > 100
            {
                self.push(
                    format!("{path}.maxUnavailable"),
                    format!("must not be more than 100%, got {p}%"),
                );
            }
            if rolling_update.max_surge.is_zero() && rolling_update.max_unavailable.is_zero() {
                self.push(
                    format!("{path}.maxUnavailable"),
                    "may not be 0 when maxSurge is 0: the rollout could never replace a pod",
                );
            }
        }
        if spec.progress_deadline_seconds <= spec.min_ready_seconds {
            self.push(
                "spec.progressDeadlineSeconds",
                format!(
                    "must be greater than minReadySeconds ({})",
                    spec.min_ready_seconds
                ),
            );
        }
    }

    fn service(&mut self, svc: &Service) {
        let spec = &svc.spec;
        self.labels(&spec.selector, "spec.selector");
        if spec.ports.is_empty() && !spec.is_headless() {
            self.push(
                "spec.ports",
                "required: a service needs at least one port (only a headless service, clusterIP: None, may have none)",
            );
        }
        let many = spec.ports.len() > 1;
        let mut names = BTreeMap::new();
        let mut numbers = BTreeMap::new();
        let mut node_ports = BTreeMap::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            match &port.name {
                None if many => self.push(
                    format!("{path}.name"),
                    "required when the service has more than one port",
                ),
                None => {}
                Some(name) => {
                    if let Err(e) = dns1123_label(name) {
                        self.push(format!("{path}.name"), e);
                    }
                    if let Some(first) = names.insert(name.as_str(), i) {
                        self.push(
                            format!("{path}.name"),
                            format!("duplicate port name {name:?} (also ports[{first}])"),
                        );
                    }
                }
            }
            if port.port == 0 {
                self.push(format!("{path}.port"), "must be between 1 and 65535");
            } else if let Some(first) = numbers.insert((port.port, port.protocol), i) {
                self.push(
                    format!("{path}.port"),
                    format!("duplicate port {} (also ports[{first}])", port.port),
                );
            }
            if port.protocol != Protocol::Tcp {
                self.push(
                    format!("{path}.protocol"),
                    "UDP services are not supported yet (TCP only)",
                );
            }
            let target = format!("{path}.targetPort");
            match &port.target_port {
                PortRef::Number(0) => self.push(target, "must be between 1 and 65535"),
                PortRef::Number(_) => {}
                PortRef::Name(name) => {
                    if let Err(e) = port_name(name) {
                        self.push(target, e);
                    }
                }
            }
            let Some(node_port) = port.node_port else {
                continue;
            };
            let np_path = format!("{path}.nodePort");
            if spec.kind != ServiceType::NodePort {
                self.push(
                    np_path,
                    format!(
                        "may only be given when spec.type is NodePort (the type is {})",
                        spec.kind.as_str()
                    ),
                );
            } else if !NODE_PORT_RANGE.contains(&node_port) {
                self.push(
                    np_path,
                    format!(
                        "{node_port} is outside the node port range {}-{}",
                        NODE_PORT_RANGE.start(),
                        NODE_PORT_RANGE.end()
                    ),
                );
            } else if let Some(first) = node_ports.insert(node_port, i) {
                self.push(
                    np_path,
                    format!("duplicate node port {node_port} (also ports[{first}])"),
                );
            }
        }
        match spec.cluster_ip {
            ClusterIp::Headless if spec.kind == ServiceType::NodePort => self.push(
                "spec.clusterIP",
                "may not be None for a NodePort service (a headless service has no ports of its own to open on the nodes)",
            ),
            ClusterIp::Ip(ip)
                if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() =>
            {
                self.push(
                    "spec.clusterIP",
                    format!("{ip} cannot be a service address"),
                );
            }
            _ => {}
        }
    }

    fn pod_spec(&mut self, spec: &PodSpec, path: &str, in_deployment: bool) {
        if spec.containers.is_empty() {
            self.push(
                format!("{path}.containers"),
                "must have at least one container",
            );
        }
        if in_deployment && spec.restart_policy != RestartPolicy::Always {
            self.push(
                format!("{path}.restartPolicy"),
                "must be Always in a Deployment's pod template",
            );
        }
        self.labels(&spec.node_selector, &format!("{path}.nodeSelector"));
        let mut names = BTreeMap::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let cpath = format!("{path}.containers[{i}]");
            if let Some(first) = names.insert(c.name.as_str(), i) {
                self.push(
                    format!("{cpath}.name"),
                    format!(
                        "duplicate container name {:?} (also containers[{first}])",
                        c.name
                    ),
                );
            }
        }
        let pod = PodNames {
            containers: names.into_keys().collect(),
            volumes: self.volumes(spec, path),
        };
        for (i, c) in spec.containers.iter().enumerate() {
            self.container(c, &format!("{path}.containers[{i}]"), &pod);
        }
    }

    /// The volumes' rules; returns their names.
    fn volumes<'s>(&mut self, spec: &'s PodSpec, path: &str) -> BTreeSet<&'s str> {
        let containers: BTreeSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        let mut names = BTreeMap::new();
        for (i, volume) in spec.volumes.iter().enumerate() {
            let vpath = format!("{path}.volumes[{i}]");
            if let Err(e) = dns1123_label(&volume.name) {
                self.push(format!("{vpath}.name"), e);
            }
            if let Some(first) = names.insert(volume.name.as_str(), i) {
                self.push(
                    format!("{vpath}.name"),
                    format!(
                        "duplicate volume name {:?} (also volumes[{first}])",
                        volume.name
                    ),
                );
            }
            let mut files = Files::default();
            match &volume.source {
                VolumeSource::ConfigMap(v) => {
                    let p = format!("{vpath}.configMap");
                    self.object_name(&v.name, &format!("{p}.name"));
                    self.key_items(&v.items, &p, "", &mut files);
                    self.mode(v.default_mode, &format!("{p}.defaultMode"));
                }
                VolumeSource::Secret(v) => {
                    let p = format!("{vpath}.secret");
                    self.object_name(&v.secret_name, &format!("{p}.secretName"));
                    self.key_items(&v.items, &p, "", &mut files);
                    self.mode(v.default_mode, &format!("{p}.defaultMode"));
                }
                VolumeSource::DownwardApi(v) => {
                    let p = format!("{vpath}.downwardAPI");
                    self.downward_items(&v.items, &p, "", &mut files, &containers);
                    self.mode(v.default_mode, &format!("{p}.defaultMode"));
                }
                VolumeSource::Projected(v) => {
                    let p = format!("{vpath}.projected");
                    for (j, source) in v.sources.iter().enumerate() {
                        let field = match source {
                            ProjectionSource::ConfigMap(_) => "configMap",
                            ProjectionSource::Secret(_) => "secret",
                            ProjectionSource::DownwardApi(_) => "downwardAPI",
                        };
                        let within = format!("sources[{j}].{field}.");
                        let sp = format!("{p}.sources[{j}].{field}");
                        match source {
                            ProjectionSource::ConfigMap(k) | ProjectionSource::Secret(k) => {
                                self.object_name(&k.name, &format!("{sp}.name"));
                                self.key_items(&k.items, &sp, &within, &mut files);
                            }
                            ProjectionSource::DownwardApi(dp) => {
                                self.downward_items(
                                    &dp.items,
                                    &sp,
                                    &within,
                                    &mut files,
                                    &containers,
                                );
                            }
                        }
                    }
                    self.mode(v.default_mode, &format!("{p}.defaultMode"));
                }
                // Any medium and size (a memory quantity is never negative) will do.
                VolumeSource::EmptyDir(_) => {}
                VolumeSource::HostPath(v) => {
                    if let Err(e) = host_path(&v.path) {
                        self.push(format!("{vpath}.hostPath.path"), e);
                    }
                }
            }
        }
        names.into_keys().collect()
    }

    /// A config map's or secret's name, where a pod refers to one.
    fn object_name(&mut self, name: &str, path: &str) {
        if let Err(e) = dns1123_subdomain(name) {
            self.push(path, e);
        }
    }

    fn mode(&mut self, mode: u32, path: &str) {
        if mode > 0o777 {
            self.push(
                path,
                format!("must be a file mode between 0 and 0777 (octal), got 0{mode:o}"),
            );
        }
    }

    /// Items of a config map or secret volume (or projection) at `path`; `within` is their
    /// place in the volume (`sources[1].secret.`), for the messages about paths taken twice.
    fn key_items(&mut self, items: &[KeyToPath], path: &str, within: &str, files: &mut Files) {
        for (j, item) in items.iter().enumerate() {
            let ipath = format!("{path}.items[{j}]");
            if let Err(e) = config_key(&item.key) {
                self.push(format!("{ipath}.key"), e);
            }
            let at = format!("{ipath}.path");
            self.file(&item.path, &at, &format!("{within}items[{j}]"), files);
            if let Some(mode) = item.mode {
                self.mode(mode, &format!("{ipath}.mode"));
            }
        }
    }

    fn downward_items(
        &mut self,
        items: &[DownwardApiFile],
        path: &str,
        within: &str,
        files: &mut Files,
        containers: &BTreeSet<&str>,
    ) {
        for (j, item) in items.iter().enumerate() {
            let ipath = format!("{path}.items[{j}]");
            let at = format!("{ipath}.path");
            self.file(&item.path, &at, &format!("{within}items[{j}]"), files);
            match (&item.field_ref, &item.resource_field_ref) {
                (Some(f), None) => {
                    if let Err(e) = field_path(&f.field_path, true) {
                        self.push(format!("{ipath}.fieldRef.fieldPath"), e);
                    }
                }
                (None, Some(r)) => {
                    let rpath = format!("{ipath}.resourceFieldRef");
                    self.resource_field(r, &rpath, true, containers);
                }
                (None, None) => {
                    self.push(&ipath, "needs exactly one of fieldRef or resourceFieldRef");
                }
                (Some(_), Some(_)) => self.push(
                    &ipath,
                    "has both fieldRef and resourceFieldRef: give exactly one",
                ),
            }
            if let Some(mode) = item.mode {
                self.mode(mode, &format!("{ipath}.mode"));
            }
        }
    }

    /// A file of a volume: a relative path below the volume, not taken by another file.
    fn file(&mut self, file: &str, path: &str, item: &str, files: &mut Files) {
        if let Err(e) = volume_file_path(file) {
            self.push(path, e);
            return;
        }
        if let Some(message) = files.add(file, item) {
            self.push(path, message);
        }
    }

    /// `resourceFieldRef` in env (`in_volume` false) or in a downward API file.
    fn resource_field(
        &mut self,
        r: &ResourceFieldSelector,
        path: &str,
        in_volume: bool,
        containers: &BTreeSet<&str>,
    ) {
        match &r.container_name {
            None if in_volume => self.push(
                format!("{path}.containerName"),
                "required in a downwardAPI volume (the container whose resource to give)",
            ),
            Some(name) if !containers.contains(name.as_str()) => self.push(
                format!("{path}.containerName"),
                format!("no container named {name:?} in this pod"),
            ),
            _ => {}
        }
        const SUPPORTED: &str = "requests.cpu, limits.cpu, requests.memory, limits.memory";
        let resource = r.resource.as_str();
        let divisors: &[&str] = match resource {
            "requests.cpu" | "limits.cpu" => &["1m", "1"],
            "requests.memory" | "limits.memory" => &[
                "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
            ],
            "" => {
                self.push(format!("{path}.resource"), "must not be empty");
                return;
            }
            _ => {
                let name = resource
                    .strip_prefix("requests.")
                    .or_else(|| resource.strip_prefix("limits."));
                let message = match name {
                    Some(name) if name == "ephemeral-storage" || name.starts_with("hugepages-") => {
                        format!("{name} is not supported yet (supported values: {SUPPORTED})")
                    }
                    _ => {
                        format!("unsupported value {resource:?}: supported values are {SUPPORTED}")
                    }
                };
                self.push(format!("{path}.resource"), message);
                return;
            }
        };
        if let Some(divisor) = &r.divisor
            && !divisors.contains(&divisor.as_str())
        {
            let unit = resource.rsplit('.').next().unwrap_or_default();
            self.push(
                format!("{path}.divisor"),
                format!(
                    "{divisor} is not supported for {unit}: use {} (Kubernetes' rule)",
                    crate::decode::or_list(divisors)
                ),
            );
        }
    }

    fn key_selector(&mut self, k: &KeySelector, path: &str) {
        self.object_name(&k.name, &format!("{path}.name"));
        if let Err(e) = config_key(&k.key) {
            self.push(format!("{path}.key"), e);
        }
    }

    fn config_map(&mut self, cm: &ConfigMap) {
        for key in cm.data.keys() {
            let path = format!("data[{key}]");
            if let Err(e) = config_key(key) {
                self.push(&path, format!("invalid key: {e}"));
            }
            if cm.binary_data.contains_key(key) {
                self.push(
                    path,
                    "also a key of binaryData: a key may be in data or in binaryData, not both",
                );
            }
        }
        for key in cm.binary_data.keys() {
            if let Err(e) = config_key(key) {
                self.push(format!("binaryData[{key}]"), format!("invalid key: {e}"));
            }
        }
        let size: usize = cm.entries().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_CONFIG_BYTES {
            let path = if cm.data.is_empty() {
                "binaryData"
            } else {
                "data"
            };
            self.push(path, too_large("config map", size));
        }
    }

    fn secret(&mut self, secret: &Secret) {
        for key in secret.data.keys() {
            if let Err(e) = config_key(key) {
                self.push(format!("data[{key}]"), format!("invalid key: {e}"));
            }
        }
        let size: usize = secret.data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
        if size > MAX_CONFIG_BYTES {
            self.push("data", too_large("secret", size));
        }
        let kind = secret.secret_type.as_str();
        let has = |key: &str| secret.data.contains_key(key);
        let sealed = self.stored && secret.data.is_empty();
        match kind {
            "Opaque" => {}
            "kubernetes.io/tls"
            | "kubernetes.io/basic-auth"
            | "kubernetes.io/ssh-auth"
            | "kubernetes.io/dockerconfigjson"
                if sealed => {}
            "kubernetes.io/tls" => {
                for key in ["tls.crt", "tls.key"] {
                    if !has(key) {
                        self.push(format!("data[{key}]"), format!("required for type {kind}"));
                    }
                }
            }
            "kubernetes.io/basic-auth" => {
                if !has("username") && !has("password") {
                    self.push(
                        "data",
                        format!("needs a username or a password key (or both) for type {kind}"),
                    );
                }
            }
            "kubernetes.io/ssh-auth" => {
                if secret
                    .data
                    .get("ssh-privatekey")
                    .is_none_or(|v| v.0.is_empty())
                {
                    self.push(
                        "data[ssh-privatekey]",
                        format!("required, and not empty, for type {kind}"),
                    );
                }
            }
            "kubernetes.io/dockerconfigjson" => {
                const KEY: &str = "data[.dockerconfigjson]";
                const WHAT: &str = "must be a JSON object (the content of a Docker config.json)";
                match secret.data.get(".dockerconfigjson") {
                    None => self.push(KEY, format!("required for type {kind}")),
                    // Never the content in the message: parse errors say where, not what.
                    Some(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes.0) {
                        Ok(serde_json::Value::Object(_)) => {}
                        Ok(_) => self.push(KEY, WHAT),
                        Err(e) => self.push(KEY, format!("{WHAT}: {e}")),
                    },
                }
            }
            "" => self.push("type", "must not be empty"),
            _ => {
                if let Err(e) = secret_type(kind) {
                    self.push("type", e);
                }
            }
        }
    }

    fn container(&mut self, c: &Container, path: &str, pod: &PodNames<'_>) {
        if let Err(e) = dns1123_label(&c.name) {
            self.push(format!("{path}.name"), e);
        }
        if c.image.trim().is_empty() {
            self.push(format!("{path}.image"), "must not be empty");
        } else if c.image.trim() != c.image {
            self.push(
                format!("{path}.image"),
                "must not have leading or trailing whitespace",
            );
        }
        for (i, e) in c.env.iter().enumerate() {
            let epath = format!("{path}.env[{i}]");
            if let Err(msg) = env_name(&e.name) {
                self.push(format!("{epath}.name"), msg);
            }
            let Some(source) = &e.value_from else {
                continue;
            };
            let spath = format!("{epath}.valueFrom");
            if !e.value.is_empty() {
                self.push(&spath, "may not be given when value is not empty");
            }
            match source {
                EnvVarSource::ConfigMapKeyRef(k) => {
                    self.key_selector(k, &format!("{spath}.configMapKeyRef"));
                }
                EnvVarSource::SecretKeyRef(k) => {
                    self.key_selector(k, &format!("{spath}.secretKeyRef"));
                }
                EnvVarSource::FieldRef(f) => {
                    if let Err(e) = field_path(&f.field_path, false) {
                        self.push(format!("{spath}.fieldRef.fieldPath"), e);
                    }
                }
                EnvVarSource::ResourceFieldRef(r) => {
                    let rpath = format!("{spath}.resourceFieldRef");
                    self.resource_field(r, &rpath, false, &pod.containers);
                }
            }
        }
        for (i, e) in c.env_from.iter().enumerate() {
            let epath = format!("{path}.envFrom[{i}]");
            if !e.prefix.is_empty()
                && let Err(msg) = env_name(&e.prefix)
            {
                self.push(format!("{epath}.prefix"), msg);
            }
            match &e.source {
                EnvFromRef::ConfigMapRef(r) => {
                    self.object_name(&r.name, &format!("{epath}.configMapRef.name"));
                }
                EnvFromRef::SecretRef(r) => {
                    self.object_name(&r.name, &format!("{epath}.secretRef.name"));
                }
            }
        }
        let mut mount_paths = BTreeMap::new();
        for (i, m) in c.volume_mounts.iter().enumerate() {
            let mpath = format!("{path}.volumeMounts[{i}]");
            if m.name.is_empty() {
                self.push(format!("{mpath}.name"), "must not be empty");
            } else if !pod.volumes.contains(m.name.as_str()) {
                self.push(
                    format!("{mpath}.name"),
                    format!("no volume named {:?} in this pod's volumes", m.name),
                );
            }
            let mount_path = m.mount_path.as_str();
            let at = format!("{mpath}.mountPath");
            if mount_path.is_empty() {
                self.push(at, "must not be empty");
            } else if !mount_path.starts_with('/') {
                self.push(at, format!("{mount_path:?} must be an absolute path"));
            } else if mount_path.contains(':') {
                self.push(at, format!("{mount_path:?} must not contain ':'"));
            } else if let Some(first) = mount_paths.insert(mount_path, i) {
                self.push(
                    at,
                    format!("duplicate mount path {mount_path:?} (also volumeMounts[{first}])"),
                );
            }
            if let Some(sub_path) = &m.sub_path
                && let Err(e) = descending_path(sub_path)
            {
                self.push(format!("{mpath}.subPath"), e);
            }
        }

        let mut port_names = BTreeMap::new();
        for (i, p) in c.ports.iter().enumerate() {
            let ppath = format!("{path}.ports[{i}]");
            if p.container_port == 0 {
                self.push(
                    format!("{ppath}.containerPort"),
                    "must be between 1 and 65535",
                );
            }
            if p.host_port == Some(0) {
                self.push(format!("{ppath}.hostPort"), "must be between 1 and 65535");
            }
            if let Some(name) = &p.name {
                if let Err(e) = port_name(name) {
                    self.push(format!("{ppath}.name"), e);
                }
                if let Some(first) = port_names.insert(name.as_str(), i) {
                    self.push(
                        format!("{ppath}.name"),
                        format!("duplicate port name {name:?} (also ports[{first}])"),
                    );
                }
            }
        }
        let (requests, limits) = (&c.resources.requests, &c.resources.limits);
        if let (Some(r), Some(l)) = (requests.cpu, limits.cpu)
            && r > l
        {
            self.push(
                format!("{path}.resources.requests.cpu"),
                format!("{r} is more than the limit {l}"),
            );
        }
        if let (Some(r), Some(l)) = (requests.memory, limits.memory)
            && r > l
        {
            self.push(
                format!("{path}.resources.requests.memory"),
                format!("{r} is more than the limit {l}"),
            );
        }
        let port_names: BTreeSet<&str> = port_names.into_keys().collect();
        for (field, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(probe) = probe {
                self.probe(probe, &format!("{path}.{field}"), field, &port_names);
            }
        }
    }

    fn probe(&mut self, probe: &Probe, path: &str, field: &str, port_names: &BTreeSet<&str>) {
        for (name, value) in [
            ("periodSeconds", probe.period_seconds),
            ("timeoutSeconds", probe.timeout_seconds),
            ("successThreshold", probe.success_threshold),
            ("failureThreshold", probe.failure_threshold),
        ] {
            if value < 1 {
                self.push(format!("{path}.{name}"), "must be at least 1");
            }
        }
        if field != "readinessProbe" && probe.success_threshold > 1 {
            self.push(
                format!("{path}.successThreshold"),
                format!("must be 1 for a {field}"),
            );
        }
        let (port, port_path) = match &probe.handler {
            ProbeHandler::HttpGet(h) => {
                for (i, header) in h.http_headers.iter().enumerate() {
                    if !is_http_token(&header.name) {
                        self.push(
                            format!("{path}.httpGet.httpHeaders[{i}].name"),
                            format!("{:?} is not a valid HTTP header name", header.name),
                        );
                    }
                }
                (&h.port, format!("{path}.httpGet.port"))
            }
            ProbeHandler::TcpSocket(t) => (&t.port, format!("{path}.tcpSocket.port")),
            ProbeHandler::Exec(e) => {
                if e.command.is_empty() {
                    self.push(format!("{path}.exec.command"), "must not be empty");
                }
                return;
            }
        };
        match port {
            PortRef::Number(0) => self.push(port_path, "must be between 1 and 65535"),
            PortRef::Number(_) => {}
            PortRef::Name(name) => {
                if let Err(e) = port_name(name) {
                    self.push(port_path, e);
                } else if !port_names.contains(name.as_str()) {
                    self.push(
                        port_path,
                        format!("no port named {name:?} in this container's ports"),
                    );
                }
            }
        }
    }
}

/// The names in a pod that its containers refer to.
struct PodNames<'s> {
    containers: BTreeSet<&'s str>,
    volumes: BTreeSet<&'s str>,
}

/// The files of one volume, to find a path given twice (or a file where another wants a
/// directory), across the sources of a projected volume too.
#[derive(Default)]
struct Files(Vec<(String, String)>);

impl Files {
    /// Adds the file `path` of item `item`; a message if it clashes with an earlier one.
    fn add(&mut self, path: &str, item: &str) -> Option<String> {
        let clash = self.0.iter().find_map(|(other, other_item)| {
            if other == path {
                Some(format!("duplicate path {path:?} (also {other_item})"))
            } else if is_below(path, other) || is_below(other, path) {
                Some(format!(
                    "{path:?} and {other:?} ({other_item}) cannot both be files: one is in the other's directory"
                ))
            } else {
                None
            }
        });
        self.0.push((path.to_owned(), item.to_owned()));
        clash
    }
}

/// Whether path `a` is inside directory `b`.
fn is_below(a: &str, b: &str) -> bool {
    a.strip_prefix(b).is_some_and(|rest| rest.starts_with('/'))
}

/// `the config map is 1048700 bytes ...`.
fn too_large(what: &str, size: usize) -> String {
    format!(
        "the {what} is {size} bytes (keys and values), over the limit of {MAX_CONFIG_BYTES} bytes (1 MiB)"
    )
}

/// A key of a config map or secret (Kubernetes' `IsConfigMapKey`): 1-253 of `[-._a-zA-Z0-9]`,
/// not `.` or `..`, not starting with `..` (the names the kubelet uses in volumes).
pub(crate) fn config_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (it has {})",
            key.len()
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{key:?} must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', 'KEY_NAME' or 'key-name')"
        ));
    }
    match key {
        "." | ".." => Err(format!("{key:?} is not a valid key")),
        _ if key.starts_with("..") => Err(format!("{key:?} must not start with '..'")),
        _ => Ok(()),
    }
}

/// A relative path that stays below its directory: not absolute, no `..` element.
fn descending_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!("{path:?} must be a relative path"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

/// The path of a `hostPath` volume on the node: not empty, absolute, no `..` element
/// (Kubernetes refuses `..`; shoal also wants it absolute, since there is no directory a
/// relative one could be taken from).
fn host_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

/// The path of a file in a volume: not empty, relative, no `..` element, not starting with
/// `..` (the kubelet's own names in the volume's directory).
fn volume_file_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    descending_path(path)?;
    if path.starts_with("..") {
        return Err(format!("{path:?} must not start with '..'"));
    }
    Ok(())
}

/// A pod field path of `fieldRef`, in env (`in_volume` false) or in a downward API volume:
/// Kubernetes' rules, less what shoal does not provide yet.
pub(crate) fn field_path(path: &str, in_volume: bool) -> Result<(), String> {
    const BOTH: [&str; 3] = ["metadata.name", "metadata.namespace", "metadata.uid"];
    const ENV_ONLY: [&str; 3] = ["spec.nodeName", "status.podIP", "status.hostIP"];
    const VOLUME_ONLY: [&str; 2] = ["metadata.labels", "metadata.annotations"];
    const NOT_YET: [&str; 3] = ["spec.serviceAccountName", "status.podIPs", "status.hostIPs"];
    for map in VOLUME_ONLY {
        if let Some(rest) = path.strip_prefix(map)
            && rest.starts_with('[')
        {
            let Some(key) = rest.strip_prefix("['").and_then(|k| k.strip_suffix("']")) else {
                return Err(format!(
                    "{path:?} is not a valid subscript: write {map}['<key>'] (in single quotes)"
                ));
            };
            // Kubernetes checks the key lower-cased.
            return label_key(&key.to_ascii_lowercase()).map_err(|e| format!("invalid key: {e}"));
        }
    }
    let own = if in_volume {
        &VOLUME_ONLY[..]
    } else {
        &ENV_ONLY[..]
    };
    if BOTH.contains(&path) || own.contains(&path) {
        return Ok(());
    }
    let supported = if in_volume {
        format!(
            "{}, {}, metadata.labels['<key>'] or metadata.annotations['<key>']",
            BOTH.join(", "),
            VOLUME_ONLY.join(", ")
        )
    } else {
        format!(
            "{}, metadata.labels['<key>'], metadata.annotations['<key>'], {}",
            BOTH.join(", "),
            ENV_ONLY.join(", ")
        )
    };
    Err(if path.is_empty() {
        "must not be empty".to_owned()
    } else if in_volume && ENV_ONLY.contains(&path) {
        format!(
            "{path} is not available in a downwardAPI volume (Kubernetes' rule; give it in an environment variable); supported here: {supported}"
        )
    } else if !in_volume && VOLUME_ONLY.contains(&path) {
        format!(
            "{path} as a whole is only available in a downwardAPI volume; in env, name one key: {path}['<key>']"
        )
    } else if NOT_YET.contains(&path) {
        format!("{path} is not supported yet; supported: {supported}")
    } else {
        format!("unsupported field path {path:?}: supported values are {supported}")
    })
}

/// The Secret types whose rules shoal checks, as Kubernetes does.
pub(crate) const SECRET_TYPES: [&str; 5] = [
    "Opaque",
    "kubernetes.io/tls",
    "kubernetes.io/basic-auth",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/ssh-auth",
];

/// A Secret type other than those: a type of the user's own with a domain
/// (`example.com/token`), not one of Kubernetes' (of the domain `kubernetes.io` or `k8s.io`,
/// or a subdomain of them).
fn secret_type(kind: &str) -> Result<(), String> {
    let supported = format!(
        "supported types: {}, or a type of your own with a domain (example.com/token)",
        SECRET_TYPES.join(", ")
    );
    let Some((domain, _)) = kind.split_once('/') else {
        let hint = match crate::decode::suggest(kind, SECRET_TYPES.into_iter()) {
            Some(s) => format!(" (did you mean {s:?}?)"),
            None => String::new(),
        };
        return Err(format!("unsupported type {kind:?}{hint}; {supported}"));
    };
    let reserved = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")));
    if reserved {
        return Err(format!("type {kind:?} is not supported yet; {supported}"));
    }
    label_key(kind).map_err(|e| format!("{kind:?} is not a valid type of your own: {e}"))
}

/// `a=1,b=2`, as kubectl prints selectors.
pub fn format_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

const DNS1123_LABEL_HELP: &str = "must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc')";

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends (Kubernetes' namespace and
/// container names).
pub(crate) fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "{s:?} must be no more than 63 characters (it has {})",
            s.len()
        ));
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && alnum_lower_edges(s);
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} {DNS1123_LABEL_HELP}"))
    }
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter (Kubernetes' service names).
pub(crate) fn dns1035_label(s: &str) -> Result<(), String> {
    dns1123_label(s)?;
    if s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must start with a lower case letter (a service name is a DNS-1035 label: lower case alphanumeric characters or '-', starting with a letter and ending with an alphanumeric character, e.g. 'my-name' or 'abc-123')"
        ))
    }
}

fn alnum_lower_edges(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    edge(s.as_bytes().first()) && edge(s.as_bytes().last())
}

/// A DNS-1123 subdomain: 1-253 characters, dot-separated DNS-1123 labels (Kubernetes' pod and
/// deployment names).
pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (it has {})",
            s.len()
        ));
    }
    let ok = s.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && alnum_lower_edges(part)
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
        ))
    }
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of 1-63
/// characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|e| format!("prefix {e}"))?;
    }
    qualified_name_part(name).map_err(|e| format!("{key:?}: {e}"))
}

fn qualified_name_part(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    if name.len() > 63 {
        return Err("the name part must be no more than 63 characters".into());
    }
    if !name_chars_ok(name) {
        return Err("the name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc')".into());
    }
    Ok(())
}

fn name_chars_ok(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
}

/// A label value: empty, or up to 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both
/// ends.
pub(crate) fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > 63 {
        return Err(format!(
            "label value {v:?} must be no more than 63 characters"
        ));
    }
    if !name_chars_ok(v) {
        return Err(format!(
            "label value {v:?} must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// An IANA service name, Kubernetes' rule for port names: 1-15 of `[a-z0-9-]`, at least one
/// letter, no `-` at either end and no `--`.
pub(crate) fn port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid port name: 1-15 lower case letters, digits and '-', with at least one letter, no '-' at either end and no '--'"
        ))
    }
}

/// An environment variable name: Kubernetes (since 1.30) allows any printable ASCII except `=`.
pub(crate) fn env_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=') {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must consist of printable ASCII characters other than '='"
        ))
    }
}

/// An HTTP header name (RFC 9110 token).
fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label("a").is_ok());
        for bad in ["", "Web", "-web", "web-", "web.1", "web_1", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        assert!(dns1035_label("web-1").is_ok());
        for bad in ["1web", "-web", "Web", "web.1", ""] {
            assert!(dns1035_label(bad).is_err(), "{bad}");
        }
        assert!(dns1123_subdomain("web.example-1.com").is_ok());
        for bad in ["", "web..com", ".web", "web.", "Web.com", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        for good in ["app", "app.kubernetes.io/name", "example.com/My_Key.1", "a"] {
            assert!(label_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/app",
            "Example.com/app",
            "app/",
            "a/b/c",
            "-app",
            &"a".repeat(64),
        ] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        for good in ["", "web", "v1.2.3", "My_Value-1"] {
            assert!(label_value(good).is_ok(), "{good}");
        }
        for bad in ["-web", "web.", "a b", "a/b", &"a".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_and_env_names() {
        for good in ["http", "web-8080", "h2c", "a1"] {
            assert!(port_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "8080",
            "HTTP",
            "-http",
            "http-",
            "ht--tp",
            "a-very-long-port-name",
        ] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
        assert!(env_name("PATH").is_ok());
        assert!(env_name("my.var-1").is_ok());
        assert!(env_name("A=B").is_err());
        assert!(env_name("").is_err());
        assert!(env_name("tab\there").is_err());
    }
}
