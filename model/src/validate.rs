//! Semantic rules on the typed model, Kubernetes' where Kubernetes has one: names (DNS-1123
//! labels and subdomains, DNS-1035 labels for services), label keys and values, unique container
//! and port names, port ranges, probes, requests within limits, the Deployment's selector
//! against its template, a Service's ports, node ports and type.
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
    ClusterIp, Container, Deployment, DeploymentStrategy, IntOrPercent, Kind, ObjectMeta, PodSpec,
    PortRef, Probe, ProbeHandler, Protocol, Resource, RestartPolicy, Service, ServiceType,
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
    let mut v = Validator::default();
    let kind = resource.kind();
    v.meta(resource.metadata(), kind);
    match resource {
        Resource::Namespace(_) => {}
        Resource::Pod(pod) => v.pod_spec(&pod.spec, "spec", false),
        Resource::Deployment(d) => v.deployment(d),
        Resource::Service(svc) => v.service(svc),
    }
    v.issues
}

#[derive(Default)]
struct Validator {
    issues: Vec<Issue>,
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
            Kind::Pod | Kind::Deployment => dns1123_subdomain(&meta.name),
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
            self.container(c, &cpath);
        }
    }

    fn container(&mut self, c: &Container, path: &str) {
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
            if let Err(msg) = env_name(&e.name) {
                self.push(format!("{path}.env[{i}].name"), msg);
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
