//! kubectl's tables: the columns and rows of `get`, and the one renderer every table of the CLI
//! goes through ([`format_table`]).
//!
//! The row functions are pure: same object, status and `now`, same row. They read the
//! Kubernetes-shaped objects the API returns (see `shoal_model`'s `*_from_object`).

use shoal_model::{
    ClusterIp, ConditionStatus, ContainerState, Deployment, DeploymentStatus, Endpoints, Namespace,
    NamespaceStatus, Pod, PodConditionType, PodStatus, Service, ServicePort, Timestamp,
    format_labels, protocol_name,
};

/// Columns padded to their widest cell plus three spaces (kubectl's tabwriter padding), left
/// aligned, the last column unpadded and trailing spaces trimmed: how kubectl prints tables.
/// `columns` is the header row.
pub(crate) fn format_table(columns: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let width = all.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            all.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's short human duration ("45s", "5m30s", "3h", "2d5h", "400d").
pub(crate) fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// `get pods` columns.
pub(crate) const POD_COLUMNS: [&str; 5] = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
/// `get pods -o wide` columns.
pub(crate) const POD_WIDE_COLUMNS: [&str; 7] =
    ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"];
/// `get deployments` columns.
pub(crate) const DEPLOYMENT_COLUMNS: [&str; 5] =
    ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
/// `get deployments -o wide` columns.
pub(crate) const DEPLOYMENT_WIDE_COLUMNS: [&str; 8] = [
    "NAME",
    "READY",
    "UP-TO-DATE",
    "AVAILABLE",
    "AGE",
    "CONTAINERS",
    "IMAGES",
    "SELECTOR",
];
/// `get namespaces` columns.
pub(crate) const NAMESPACE_COLUMNS: [&str; 3] = ["NAME", "STATUS", "AGE"];

/// `get services` columns.
pub(crate) const SERVICE_COLUMNS: [&str; 6] = [
    "NAME",
    "TYPE",
    "CLUSTER-IP",
    "EXTERNAL-IP",
    "PORT(S)",
    "AGE",
];
/// `get services -o wide` columns.
pub(crate) const SERVICE_WIDE_COLUMNS: [&str; 7] = [
    "NAME",
    "TYPE",
    "CLUSTER-IP",
    "EXTERNAL-IP",
    "PORT(S)",
    "AGE",
    "SELECTOR",
];
/// `get endpoints` columns.
pub(crate) const ENDPOINTS_COLUMNS: [&str; 3] = ["NAME", "ENDPOINTS", "AGE"];

/// `get configmaps`, as kubectl prints it.
pub(crate) const CONFIG_MAP_COLUMNS: [&str; 3] = ["NAME", "DATA", "AGE"];

/// `get secrets`, as kubectl prints it.
pub(crate) const SECRET_COLUMNS: [&str; 4] = ["NAME", "TYPE", "DATA", "AGE"];

/// kubectl's AGE: the time since `since`, or `<unknown>`.
fn age(since: Option<Timestamp>, now_ms: u64) -> String {
    match since {
        Some(t) => human_duration(now_ms.saturating_sub(t.0)),
        None => "<unknown>".to_owned(),
    }
}

/// What a pod's row shows: the STATUS column, the ready containers, the restarts and the last
/// restart. STATUS follows kubectl's rules: the phase, or the pod's reason, overridden by the
/// last container (in spec order) that is waiting or terminated with a reason (`CrashLoopBackOff`,
/// `ImagePullBackOff`, `ContainerCreating`, `Completed`, `Error`, `OOMKilled`), or
/// `ExitCode:N`/`Signal:N` when it terminated without one; `Running`/`NotReady` again if a
/// container still runs after others completed; `Terminating` once deletion was requested
/// (`Unknown` if the node is lost too).
struct PodSummary {
    status: String,
    ready: usize,
    restarts: u32,
    last_restart: Option<Timestamp>,
}

fn pod_summary(pod: &Pod, status: &PodStatus) -> PodSummary {
    let mut reason = status
        .reason
        .clone()
        .unwrap_or_else(|| format!("{:?}", status.phase));
    let mut ready = 0;
    let mut restarts = 0u32;
    let mut last_restart: Option<Timestamp> = None;
    let mut has_running = false;
    for c in status.container_statuses.iter().rev() {
        restarts = restarts.saturating_add(c.restart_count);
        if let Some(ContainerState::Terminated {
            finished_at: Some(t),
            ..
        }) = &c.last_state
        {
            last_restart = last_restart.max(Some(*t));
        }
        match &c.state {
            ContainerState::Waiting {
                reason: Some(r), ..
            } if !r.is_empty() => reason = r.clone(),
            ContainerState::Terminated {
                reason: Some(r), ..
            } if !r.is_empty() => reason = r.clone(),
            ContainerState::Terminated {
                signal, exit_code, ..
            } => {
                reason = match signal {
                    Some(s) if *s != 0 => format!("Signal:{s}"),
                    _ => format!("ExitCode:{exit_code}"),
                }
            }
            ContainerState::Running { .. } if c.ready => {
                has_running = true;
                ready += 1;
            }
            _ => {}
        }
    }
    if reason == "Completed" && has_running {
        let pod_ready = status
            .conditions
            .iter()
            .any(|c| c.kind == PodConditionType::Ready && c.status == ConditionStatus::True);
        reason = if pod_ready { "Running" } else { "NotReady" }.to_owned();
    }
    if pod.metadata.deletion_timestamp.is_some() {
        reason = if status.reason.as_deref() == Some("NodeLost") {
            "Unknown".to_owned()
        } else {
            "Terminating".to_owned()
        };
    }
    PodSummary {
        status: reason,
        ready,
        restarts,
        last_restart,
    }
}

/// A `get pods` row ([`POD_COLUMNS`], or [`POD_WIDE_COLUMNS`] when `wide`).
pub(crate) fn pod_row(pod: &Pod, status: &PodStatus, now_ms: u64, wide: bool) -> Vec<String> {
    let s = pod_summary(pod, status);
    let restarts = match s.last_restart {
        Some(t) if s.restarts > 0 => format!("{} ({} ago)", s.restarts, age(Some(t), now_ms)),
        _ => s.restarts.to_string(),
    };
    let mut row = vec![
        pod.metadata.name.clone(),
        format!("{}/{}", s.ready, pod.spec.containers.len()),
        s.status,
        restarts,
        age(pod.metadata.creation_timestamp, now_ms),
    ];
    if wide {
        let none = || "<none>".to_owned();
        row.push(status.pod_ip.clone().unwrap_or_else(none));
        row.push(pod.spec.node_name.clone().unwrap_or_else(none));
    }
    row
}

/// A `get deployments` row ([`DEPLOYMENT_COLUMNS`], or [`DEPLOYMENT_WIDE_COLUMNS`]).
pub(crate) fn deployment_row(
    deployment: &Deployment,
    status: &DeploymentStatus,
    now_ms: u64,
    wide: bool,
) -> Vec<String> {
    let spec = &deployment.spec;
    let mut row = vec![
        deployment.metadata.name.clone(),
        format!("{}/{}", status.ready_replicas, spec.replicas),
        status.updated_replicas.to_string(),
        status.available_replicas.to_string(),
        age(deployment.metadata.creation_timestamp, now_ms),
    ];
    if wide {
        let containers = &spec.template.spec.containers;
        row.push(join(containers.iter().map(|c| c.name.as_str())));
        row.push(join(containers.iter().map(|c| c.image.as_str())));
        row.push(format_labels(&spec.selector.match_labels));
    }
    row
}

/// A `get namespaces` row ([`NAMESPACE_COLUMNS`]).
pub(crate) fn namespace_row(
    namespace: &Namespace,
    status: &NamespaceStatus,
    now_ms: u64,
) -> Vec<String> {
    vec![
        namespace.metadata.name.clone(),
        format!("{:?}", status.phase),
        age(namespace.metadata.creation_timestamp, now_ms),
    ]
}

/// A `get services` row ([`SERVICE_COLUMNS`], or [`SERVICE_WIDE_COLUMNS`] when `wide`).
pub(crate) fn service_row(service: &Service, now_ms: u64, wide: bool) -> Vec<String> {
    let spec = &service.spec;
    let cluster_ip = match spec.cluster_ip {
        ClusterIp::Auto => "<none>".to_owned(),
        ip => ip.to_string(),
    };
    let ports = service_ports_text(&spec.ports);
    let mut row = vec![
        service.metadata.name.clone(),
        spec.kind.as_str().to_owned(),
        cluster_ip,
        "<none>".to_owned(),
        if ports.is_empty() {
            "<none>".to_owned()
        } else {
            ports
        },
        age(service.metadata.creation_timestamp, now_ms),
    ];
    if wide {
        row.push(if spec.selector.is_empty() {
            "<none>".to_owned()
        } else {
            format_labels(&spec.selector)
        });
    }
    row
}

/// kubectl's PORT(S): `80/TCP`, `80:30080/TCP` with a node port, comma-separated.
pub(crate) fn service_ports_text(ports: &[ServicePort]) -> String {
    ports
        .iter()
        .map(|p| {
            let protocol = protocol_name(p.protocol);
            match p.node_port {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p.port),
                None => format!("{}/{protocol}", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How many keys an object's `data` and `binaryData` hold (kubectl's `DATA`).
fn data_count(object: &serde_json::Value) -> usize {
    ["data", "binaryData"]
        .iter()
        .filter_map(|field| object[field].as_object())
        .map(serde_json::Map::len)
        .sum()
}

/// When an object's `metadata.creationTimestamp` says it was made.
fn created(object: &serde_json::Value) -> Option<Timestamp> {
    object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(Timestamp::parse)
}

/// A `get configmaps` row ([`CONFIG_MAP_COLUMNS`]) from the Kubernetes object.
pub(crate) fn config_map_row(object: &serde_json::Value, now_ms: u64) -> Vec<String> {
    vec![
        object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        data_count(object).to_string(),
        age(created(object), now_ms),
    ]
}

/// A `get secrets` row ([`SECRET_COLUMNS`]) from the Kubernetes object.
pub(crate) fn secret_row(object: &serde_json::Value, now_ms: u64) -> Vec<String> {
    vec![
        object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        object["type"].as_str().unwrap_or("Opaque").to_owned(),
        data_count(object).to_string(),
        age(created(object), now_ms),
    ]
}

/// A `get endpoints` row ([`ENDPOINTS_COLUMNS`]).
pub(crate) fn endpoints_row(endpoints: &Endpoints, now_ms: u64) -> Vec<String> {
    vec![
        endpoints.metadata.name.clone(),
        format_endpoints(endpoints, None),
        age(endpoints.metadata.creation_timestamp, now_ms),
    ]
}

/// kubectl's ENDPOINTS text: the ready `ip:port` pairs (of the port named `port` only, `""`
/// for an unnamed one, when given), the first three, then `+ N more...`; `<none>` without
/// subsets.
pub(crate) fn format_endpoints(endpoints: &Endpoints, port: Option<&str>) -> String {
    const MAX: usize = 3;
    if endpoints.subsets.is_empty() {
        return "<none>".to_owned();
    }
    let mut list: Vec<String> = Vec::new();
    let mut count = 0;
    for subset in &endpoints.subsets {
        if subset.ports.is_empty() {
            // A headless service without ports: addresses alone.
            count += subset.addresses.len();
            list.extend(
                subset
                    .addresses
                    .iter()
                    .take(MAX.saturating_sub(list.len()))
                    .map(|a| a.ip.clone()),
            );
            continue;
        }
        for p in &subset.ports {
            if port.is_some_and(|want| p.name.as_deref().unwrap_or("") != want) {
                continue;
            }
            count += subset.addresses.len();
            list.extend(
                subset
                    .addresses
                    .iter()
                    .take(MAX.saturating_sub(list.len()))
                    .map(|a| host_port(&a.ip, p.port)),
            );
        }
    }
    let text = list.join(",");
    if count > list.len() {
        format!("{text} + {} more...", count - list.len())
    } else {
        text
    }
}

/// `ip:port`, with an IPv6 address in brackets (Go's `net.JoinHostPort`).
fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}
