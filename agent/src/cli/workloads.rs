//! kubectl-like verbs for workloads: apply, get, describe, delete, scale, logs, rollout; for pods,
//! deployments, namespaces, services and the endpoints of services, config maps and secrets.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::table::{
    CONFIG_MAP_COLUMNS, DEPLOYMENT_COLUMNS, DEPLOYMENT_WIDE_COLUMNS, ENDPOINTS_COLUMNS,
    NAMESPACE_COLUMNS, POD_COLUMNS, POD_WIDE_COLUMNS, SECRET_COLUMNS, SERVICE_COLUMNS,
    SERVICE_WIDE_COLUMNS, config_map_row, deployment_row, endpoints_row, format_endpoints,
    format_table, human_duration, namespace_row, pod_row, secret_row, service_row,
};
use super::{ApiArgs, Client, Output, to_yaml};
use crate::clock::wall_ms;
use crate::manifest::{
    self, Kind, ParseOptions, deployment_from_object, endpoints_from_object, namespace_from_object,
    pod_from_object, protocol_name, service_from_object,
};

/// What `get` and `describe` show: objects of a kind, or the endpoints of services (which the
/// cluster derives from the pods, and which cannot be applied or deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResourceType {
    /// Applied objects of a kind.
    Object(Kind),
    /// `v1 Endpoints`.
    Endpoints,
}

impl ResourceType {
    /// kubectl's type before `/name` (`deployment.apps`, `endpoints`).
    fn resource_type(self) -> &'static str {
        match self {
            ResourceType::Object(kind) => kind.resource_type(),
            ResourceType::Endpoints => "endpoints",
        }
    }

    /// The plural kubectl names in "not found" errors (`deployments`, `endpoints`).
    fn plural(self) -> String {
        match self {
            ResourceType::Object(kind) => {
                format!("{}s", kind.resource_type().split('.').next().unwrap_or(""))
            }
            ResourceType::Endpoints => "endpoints".into(),
        }
    }

    fn is_namespaced(self) -> bool {
        match self {
            ResourceType::Object(kind) => kind.is_namespaced(),
            ResourceType::Endpoints => true,
        }
    }
}

/// A resource type as users type it (`pods`, `po`, `deploy`, `deployment.apps`, `svc`, `ep`
/// ...).
pub(crate) fn resource_kind(text: &str) -> anyhow::Result<ResourceType> {
    let lower = text.to_ascii_lowercase();
    Ok(ResourceType::Object(match lower.as_str() {
        "pod" | "pods" | "po" => Kind::Pod,
        "deployment" | "deployments" | "deploy" | "deployment.apps" | "deployments.apps" => {
            Kind::Deployment
        }
        "namespace" | "namespaces" | "ns" => Kind::Namespace,
        "service" | "services" | "svc" => Kind::Service,
        "configmap" | "configmaps" | "cm" => Kind::ConfigMap,
        "secret" | "secrets" => Kind::Secret,
        "endpoints" | "endpoint" | "ep" => return Ok(ResourceType::Endpoints),
        _ => bail!(
            "the server doesn't have a resource type {text:?} (this version knows: pods, deployments, services, endpoints, configmaps, secrets, namespaces, nodes)"
        ),
    }))
}

/// A kind of object that can be deleted, scaled ... (not endpoints).
fn object_kind(text: &str) -> anyhow::Result<Kind> {
    match resource_kind(text)? {
        ResourceType::Object(kind) => Ok(kind),
        ResourceType::Endpoints => bail!(
            "endpoints follow their service's pods and cannot be changed directly: change or delete the service"
        ),
    }
}

/// Splits `kind/name` into its parts.
pub(crate) fn split_kind_name(text: &str) -> Option<(&str, &str)> {
    text.split_once('/')
}

/// `shoal delete -f FILE` or `shoal delete KIND NAME`.
pub(crate) fn delete(
    api: &ApiArgs,
    files: &[PathBuf],
    target: &[String],
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let mut targets: Vec<(Kind, Option<String>, String)> = Vec::new();
    if !files.is_empty() {
        let options = ParseOptions {
            namespace: namespace.clone(),
            ..ParseOptions::default()
        };
        let resources =
            manifest::parse_paths(files, &options, &mut std::io::stdin()).map_err(|errors| {
                for e in errors.iter() {
                    eprintln!("error: {e}");
                }
                anyhow::anyhow!("nothing was deleted ({})", problems(errors.len()))
            })?;
        for r in &resources {
            let k = r.key();
            targets.push((k.kind, Some(k.namespace), k.name));
        }
    } else {
        match target {
            [kind_name] => {
                let (kind, name) =
                    split_kind_name(kind_name).context("give KIND NAME, KIND/NAME, or -f FILE")?;
                targets.push((object_kind(kind)?, namespace.clone(), name.to_owned()));
            }
            [kind, names @ ..] if !names.is_empty() => {
                let kind = object_kind(kind)?;
                for name in names {
                    targets.push((kind, namespace.clone(), name.clone()));
                }
            }
            _ => bail!("give KIND NAME, KIND/NAME, or -f FILE"),
        }
    }
    let client = Client::new(api)?;
    let mut failed = false;
    for (kind, ns, name) in targets {
        let body = json!({ "kind": kind.key_kind(), "namespace": ns, "name": name });
        match client.post("/api/v1/delete", &body) {
            Ok(_) => println!("{} \"{name}\" deleted", kind.resource_type()),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some objects were not deleted");
    }
    Ok(())
}

fn list_path(kind: ResourceType, namespace: Option<&str>) -> String {
    let base = match kind {
        ResourceType::Object(Kind::Pod) => "/api/v1/pods",
        ResourceType::Object(Kind::Deployment) => "/api/v1/deployments",
        ResourceType::Object(Kind::Namespace) => "/api/v1/namespaces",
        ResourceType::Object(Kind::Service) => "/api/v1/services",
        ResourceType::Object(Kind::ConfigMap) => "/api/v1/configmaps",
        ResourceType::Object(Kind::Secret) => "/api/v1/secrets",
        ResourceType::Endpoints => "/api/v1/endpoints",
    };
    match namespace {
        Some(ns) if kind.is_namespaced() => format!("{base}?namespace={ns}"),
        _ => base.to_owned(),
    }
}

/// Rows for a list, by object name.
fn rows(
    kind: ResourceType,
    list: &Value,
    wide: bool,
    all_namespaces: bool,
) -> Vec<(String, Vec<String>)> {
    let now = wall_ms();
    let mut out = Vec::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let ns = item["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = item["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let mut row = match kind {
            ResourceType::Object(Kind::Pod) => match pod_from_object(item) {
                Ok((pod, status)) => pod_row(&pod, &status, now, wide),
                Err(_) => continue,
            },
            ResourceType::Object(Kind::Deployment) => match deployment_from_object(item) {
                Ok((d, status)) => deployment_row(&d, &status, now, wide),
                Err(_) => continue,
            },
            ResourceType::Object(Kind::Namespace) => match namespace_from_object(item) {
                Ok((ns, status)) => namespace_row(&ns, &status, now),
                Err(_) => continue,
            },
            ResourceType::Object(Kind::Service) => match service_from_object(item) {
                Ok(svc) => service_row(&svc, now, wide),
                Err(_) => continue,
            },
            ResourceType::Endpoints => match endpoints_from_object(item) {
                Ok(ep) => endpoints_row(&ep, now),
                Err(_) => continue,
            },
            ResourceType::Object(Kind::ConfigMap) => config_map_row(item, now),
            ResourceType::Object(Kind::Secret) => secret_row(item, now),
        };
        if all_namespaces && kind.is_namespaced() {
            row.insert(0, ns.clone());
        }
        out.push((format!("{ns}/{name}"), row));
    }
    out
}

fn columns(kind: ResourceType, wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut c: Vec<&'static str> = match (kind, wide) {
        (ResourceType::Object(Kind::Pod), false) => POD_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::Pod), true) => POD_WIDE_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::Deployment), false) => DEPLOYMENT_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::Deployment), true) => DEPLOYMENT_WIDE_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::Namespace), _) => NAMESPACE_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::Service), false) => SERVICE_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::Service), true) => SERVICE_WIDE_COLUMNS.to_vec(),
        (ResourceType::Endpoints, _) => ENDPOINTS_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::ConfigMap), _) => CONFIG_MAP_COLUMNS.to_vec(),
        (ResourceType::Object(Kind::Secret), _) => SECRET_COLUMNS.to_vec(),
    };
    if all_namespaces && kind.is_namespaced() {
        c.insert(0, "NAMESPACE");
    }
    c
}

/// `shoal get pods|deployments|services|endpoints|namespaces [NAME]`.
pub(crate) fn get(
    api: &ApiArgs,
    kind: ResourceType,
    names: &[String],
    namespace: Option<String>,
    all_namespaces: bool,
    output: Option<Output>,
    watch: bool,
) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let namespace = if all_namespaces {
        None
    } else {
        Some(namespace.unwrap_or_else(|| "default".into()))
    };
    let fetch = || -> anyhow::Result<Value> {
        let mut list = client.get(&list_path(kind, namespace.as_deref()))?;
        if !names.is_empty() {
            let items: Vec<Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| {
                    names
                        .iter()
                        .any(|n| i["metadata"]["name"].as_str() == Some(n.as_str()))
                })
                .cloned()
                .collect();
            for n in names {
                if !items
                    .iter()
                    .any(|i| i["metadata"]["name"].as_str() == Some(n.as_str()))
                {
                    bail!(
                        "{} \"{n}\" not found{}",
                        kind.plural(),
                        namespace
                            .as_deref()
                            .map(|ns| format!(" in namespace {ns}"))
                            .unwrap_or_default()
                    );
                }
            }
            list["items"] = Value::Array(items);
        }
        Ok(list)
    };
    let list = fetch()?;
    let single = names.len() == 1;
    let mut out = std::io::stdout().lock();
    match output {
        Some(Output::Json) => {
            let value = if single {
                list["items"][0].clone()
            } else {
                list.clone()
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        Some(Output::Yaml) => {
            let value = if single {
                list["items"][0].clone()
            } else {
                list.clone()
            };
            write!(out, "{}", to_yaml(&value)?)?;
        }
        Some(Output::Name) => {
            for item in list["items"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}/{}",
                    kind.resource_type(),
                    item["metadata"]["name"].as_str().unwrap_or("")
                )?;
            }
        }
        wide => {
            let wide = wide == Some(Output::Wide);
            let rows = rows(kind, &list, wide, all_namespaces);
            if rows.is_empty() && !watch {
                eprintln!(
                    "No resources found{}.",
                    namespace
                        .as_deref()
                        .map(|ns| format!(" in {ns} namespace"))
                        .unwrap_or_default()
                );
            } else {
                let just_rows: Vec<Vec<String>> = rows.iter().map(|(_, r)| r.clone()).collect();
                write!(
                    out,
                    "{}",
                    format_table(&columns(kind, wide, all_namespaces), &just_rows)
                )?;
            }
            if watch {
                drop(out);
                // A row is printed again when it changed, not when only its age did.
                let age = columns(kind, wide, all_namespaces)
                    .iter()
                    .position(|c| *c == "AGE");
                let same = |a: &[String], b: &[String]| {
                    a.len() == b.len()
                        && a.iter()
                            .zip(b)
                            .enumerate()
                            .all(|(i, (x, y))| Some(i) == age || x == y)
                };
                let mut last: BTreeMap<String, Vec<String>> = rows.into_iter().collect();
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let list = fetch()?;
                    let now: BTreeMap<String, Vec<String>> =
                        self::rows(kind, &list, wide, all_namespaces)
                            .into_iter()
                            .collect();
                    let changed: Vec<Vec<String>> = now
                        .iter()
                        .filter(|(k, r)| !last.get(*k).is_some_and(|l| same(l, r)))
                        .map(|(_, r)| r.clone())
                        .collect();
                    if !changed.is_empty() {
                        // Same columns as the header, without it (as kubectl -w does).
                        let table = format_table(&columns(kind, wide, all_namespaces), &changed);
                        let body: String =
                            table.lines().skip(1).map(|l| format!("{l}\n")).collect();
                        print!("{body}");
                        std::io::stdout().flush()?;
                    }
                    last = now;
                }
            }
        }
    }
    Ok(())
}

fn when(ms: u64) -> String {
    human_duration(wall_ms().saturating_sub(ms))
}

/// `shoal describe pod|deployment|service NAME`.
pub(crate) fn describe(
    api: &ApiArgs,
    kind: ResourceType,
    name: &str,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let ns = namespace.unwrap_or_else(|| "default".into());
    let mut text = String::new();
    let kind = match kind {
        ResourceType::Object(kind) => kind,
        ResourceType::Endpoints => bail!("describe supports pods, deployments and services"),
    };
    match kind {
        Kind::Pod => {
            let answer = client.get(&format!("/api/v1/pods/{ns}/{name}"))?;
            let (pod, status) = pod_from_object(&answer["object"]).context("reading the pod")?;
            text.push_str(&format!("Name:         {}\n", pod.metadata.name));
            text.push_str(&format!("Namespace:    {ns}\n"));
            text.push_str(&format!(
                "Node:         {}\n",
                pod.spec.node_name.as_deref().unwrap_or("<none>")
            ));
            text.push_str(&format!("Labels:       {}\n", labels(&pod.metadata.labels)));
            text.push_str(&format!("Status:       {:?}\n", status.phase));
            if let Some(reason) = &status.reason {
                text.push_str(&format!("Reason:       {reason}\n"));
            }
            if let Some(message) = &status.message {
                text.push_str(&format!("Message:      {message}\n"));
            }
            text.push_str(&format!(
                "IP:           {}\n",
                status.pod_ip.as_deref().unwrap_or("<none>")
            ));
            text.push_str("Containers:\n");
            for c in &pod.spec.containers {
                let cs = status.container_statuses.iter().find(|s| s.name == c.name);
                text.push_str(&format!("  {}:\n", c.name));
                text.push_str(&format!("    Image:          {}\n", c.image));
                if !c.command.is_empty() {
                    text.push_str(&format!("    Command:        {}\n", c.command.join(" ")));
                }
                if !c.args.is_empty() {
                    text.push_str(&format!("    Args:           {}\n", c.args.join(" ")));
                }
                if let Some(cs) = cs {
                    text.push_str(&format!("    State:          {}\n", state_text(&cs.state)));
                    if let Some(last) = &cs.last_state {
                        text.push_str(&format!("    Last State:     {}\n", state_text(last)));
                    }
                    text.push_str(&format!("    Ready:          {}\n", cs.ready));
                    text.push_str(&format!("    Restart Count:  {}\n", cs.restart_count));
                }
            }
            text.push_str("Conditions:\n  Type              Status\n");
            for c in &status.conditions {
                text.push_str(&format!(
                    "  {:<17} {:?}\n",
                    format!("{:?}", c.kind),
                    c.status
                ));
            }
            events(&mut text, &answer["events"]);
        }
        Kind::Deployment => {
            let answer = client.get(&format!("/api/v1/deployments/{ns}/{name}"))?;
            let (d, status) =
                deployment_from_object(&answer["object"]).context("reading the deployment")?;
            let spec = &d.spec;
            text.push_str(&format!("Name:                   {}\n", d.metadata.name));
            text.push_str(&format!("Namespace:              {ns}\n"));
            text.push_str(&format!(
                "Selector:               {}\n",
                labels(&spec.selector.match_labels)
            ));
            text.push_str(&format!(
                "Replicas:               {} desired | {} updated | {} total | {} available | {} unavailable\n",
                spec.replicas,
                status.updated_replicas,
                status.replicas,
                status.available_replicas,
                status.unavailable_replicas
            ));
            let strategy = match &spec.strategy {
                manifest::DeploymentStrategy::Recreate => "Recreate".to_owned(),
                manifest::DeploymentStrategy::RollingUpdate { rolling_update } => {
                    let (surge, unavailable) = rolling_update.resolve(spec.replicas);
                    format!("RollingUpdate ({unavailable} max unavailable, {surge} max surge)")
                }
            };
            text.push_str(&format!("StrategyType:           {strategy}\n"));
            text.push_str(&format!(
                "Revision:               {}\n",
                d.metadata
                    .annotations
                    .get("deployment.kubernetes.io/revision")
                    .map(String::as_str)
                    .unwrap_or("1")
            ));
            text.push_str("Pod Template:\n");
            for c in &spec.template.spec.containers {
                text.push_str(&format!("  {}: {}\n", c.name, c.image));
            }
            text.push_str("Conditions:\n  Type           Status  Reason\n");
            for c in &status.conditions {
                text.push_str(&format!(
                    "  {:<14} {:<7} {}\n",
                    format!("{:?}", c.kind),
                    format!("{:?}", c.status),
                    c.reason.as_deref().unwrap_or("")
                ));
            }
            text.push_str("Pods:\n");
            for p in answer["pods"].as_array().into_iter().flatten() {
                text.push_str(&format!(
                    "  {} on {}\n",
                    p["name"].as_str().unwrap_or(""),
                    p["node"].as_str().unwrap_or("<none>")
                ));
            }
            let all: Vec<Value> = answer["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| {
                    let pod = p["name"].as_str().unwrap_or("").to_owned();
                    p["events"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |mut e| {
                            let message = format!("{pod}: {}", e["message"].as_str().unwrap_or(""));
                            e["message"] = Value::String(message);
                            e
                        })
                })
                .collect();
            let mut all = all;
            all.sort_by_key(|e| e["atMs"].as_u64().unwrap_or(0));
            let recent: Vec<Value> = all.into_iter().rev().take(20).rev().collect();
            events(&mut text, &Value::Array(recent));
        }
        Kind::Service => {
            let answer = client.get(&format!("/api/v1/services/{ns}/{name}"))?;
            let svc = service_from_object(&answer["object"]).context("reading the service")?;
            let endpoints =
                endpoints_from_object(&answer["endpoints"]).context("reading the endpoints")?;
            text.push_str(&describe_service(&svc, &endpoints));
            events(&mut text, &answer["events"]);
        }
        Kind::ConfigMap => {
            let answer = client.get(&format!("/api/v1/configmaps/{ns}/{name}"))?;
            text.push_str(&describe_config_map(&answer["object"]));
        }
        Kind::Secret => {
            let answer = client.get(&format!("/api/v1/secrets/{ns}/{name}"))?;
            text.push_str(&describe_secret(&answer["object"]));
        }
        Kind::Namespace => {
            bail!("describe supports pods, deployments, services, configmaps, secrets and nodes")
        }
    }
    print!("{text}");
    Ok(())
}

/// The metadata lines `describe configmap|secret` start with, as kubectl prints them: a
/// label per line (`k=v`), an annotation per line (`k: v`; a long or multi-line value under
/// its key, each line cut at 140 characters).
fn describe_meta(object: &Value) -> String {
    const INDENT: &str = "              ";
    const MAX_ANNOTATION: usize = 140;
    let meta = &object["metadata"];
    let map = |field: &str| -> BTreeMap<String, String> {
        serde_json::from_value(meta[field].clone()).unwrap_or_default()
    };
    let mut text = format!(
        "Name:         {}\nNamespace:    {}\n",
        meta["name"].as_str().unwrap_or(""),
        meta["namespace"].as_str().unwrap_or(""),
    );
    let block = |text: &mut String, title: &str, lines: Vec<String>| {
        text.push_str(&format!("{:<14}", format!("{title}:")));
        if lines.is_empty() {
            text.push_str("<none>\n");
        }
        for (i, line) in lines.iter().enumerate() {
            if i > 0 && !line.starts_with(INDENT) {
                text.push_str(INDENT);
            }
            text.push_str(line);
            text.push('\n');
        }
    };
    let labels_lines = map("labels")
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    block(&mut text, "Labels", labels_lines);
    let mut annotation_lines = Vec::new();
    for (key, value) in map("annotations") {
        let value = value.strip_suffix('\n').unwrap_or(&value);
        if key.len() + value.len() + 2 > MAX_ANNOTATION || value.contains('\n') {
            annotation_lines.push(format!("{key}:"));
            for line in value.split('\n') {
                let cut = match line.char_indices().nth(MAX_ANNOTATION - 2) {
                    Some((at, _)) => format!("{}...", &line[..at]),
                    None => line.to_owned(),
                };
                annotation_lines.push(format!("{INDENT}  {cut}"));
            }
        } else {
            annotation_lines.push(format!("{key}: {value}"));
        }
    }
    block(&mut text, "Annotations", annotation_lines);
    text
}

/// `describe configmap`, as kubectl prints it: every value in full (they are not secret).
fn describe_config_map(object: &Value) -> String {
    let mut text = describe_meta(object);
    text.push_str("\nData\n====\n");
    for (key, value) in object["data"].as_object().into_iter().flatten() {
        text.push_str(&format!(
            "{key}:\n----\n{}\n\n",
            value.as_str().unwrap_or("")
        ));
    }
    text.push_str("\nBinaryData\n====\n");
    for (key, value) in object["binaryData"].as_object().into_iter().flatten() {
        let size = base64_len(value.as_str().unwrap_or(""));
        text.push_str(&format!("{key}: {size} bytes\n"));
    }
    text.push_str("\nEvents:  <none>\n");
    text
}

/// `describe secret`, as kubectl prints it: keys and sizes, never a value (the keys aligned
/// as kubectl's tab writer aligns them).
fn describe_secret(object: &Value) -> String {
    let mut text = describe_meta(object);
    text.push_str(&format!(
        "\nType:  {}\n\nData\n====\n",
        object["type"].as_str().unwrap_or("Opaque")
    ));
    let data: Vec<(&String, &Value)> = object["data"].as_object().into_iter().flatten().collect();
    let width = data.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0) + 2;
    for (key, value) in data {
        let size = base64_len(value.as_str().unwrap_or(""));
        text.push_str(&format!("{:<width$}{size} bytes\n", format!("{key}:")));
    }
    text
}

/// The length of what base64 text decodes to.
fn base64_len(text: &str) -> usize {
    let padding = text.bytes().rev().take_while(|b| *b == b'=').count();
    (text.len() / 4 * 3).saturating_sub(padding)
}

/// `describe service` up to the events, as kubectl prints it: one block per port.
fn describe_service(svc: &manifest::Service, endpoints: &manifest::Endpoints) -> String {
    let spec = &svc.spec;
    let ip = match spec.cluster_ip {
        manifest::ClusterIp::Auto => "<none>".to_owned(),
        ip => ip.to_string(),
    };
    let mut lines: Vec<(String, String)> = vec![
        ("Name".into(), svc.metadata.name.clone()),
        (
            "Namespace".into(),
            svc.metadata.namespace.clone().unwrap_or_default(),
        ),
        ("Labels".into(), labels(&svc.metadata.labels)),
        ("Annotations".into(), labels(&svc.metadata.annotations)),
        ("Selector".into(), labels(&spec.selector)),
        ("Type".into(), spec.kind.as_str().to_owned()),
        ("IP Family Policy".into(), "SingleStack".into()),
        ("IP Families".into(), "IPv4".into()),
        ("IP".into(), ip.clone()),
        ("IPs".into(), ip),
    ];
    for port in &spec.ports {
        let name = port.name.as_deref().unwrap_or("<unset>");
        let protocol = protocol_name(port.protocol);
        lines.push(("Port".into(), format!("{name}  {}/{protocol}", port.port)));
        lines.push((
            "TargetPort".into(),
            format!("{}/{protocol}", port.target_port),
        ));
        if let Some(node_port) = port.node_port {
            lines.push(("NodePort".into(), format!("{name}  {node_port}/{protocol}")));
        }
        lines.push((
            "Endpoints".into(),
            format_endpoints(endpoints, Some(port.name.as_deref().unwrap_or(""))),
        ));
    }
    if spec.ports.is_empty() {
        lines.push(("Endpoints".into(), format_endpoints(endpoints, None)));
    }
    lines.push(("Session Affinity".into(), "None".into()));
    if spec.kind == manifest::ServiceType::NodePort {
        lines.push(("External Traffic Policy".into(), "Cluster".into()));
    }
    // The label, its colon, two spaces (kubectl's tabwriter padding).
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 3;
    lines
        .iter()
        .map(|(label, value)| format!("{:<width$}{value}\n", format!("{label}:")))
        .collect()
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    manifest::format_labels(labels)
}

fn state_text(state: &manifest::ContainerState) -> String {
    match state {
        manifest::ContainerState::Waiting { reason, message } => format!(
            "Waiting ({}){}",
            reason.as_deref().unwrap_or(""),
            message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        manifest::ContainerState::Running { .. } => "Running".into(),
        manifest::ContainerState::Terminated {
            exit_code, reason, ..
        } => format!(
            "Terminated ({}, exit code {exit_code})",
            reason.as_deref().unwrap_or("")
        ),
    }
}

pub(crate) fn events(text: &mut String, events: &Value) {
    let list = events.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        text.push_str("Events:       <none>\n");
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let count = e["count"].as_u64().unwrap_or(1);
            let age = when(e["atMs"].as_u64().unwrap_or(0));
            let age = if count > 1 {
                format!("{age} (x{count})")
            } else {
                age
            };
            vec![
                e["type"].as_str().unwrap_or("").to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
                age,
                e["message"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    text.push_str("Events:\n");
    for line in format_table(&["Type", "Reason", "Age", "Message"], &rows).lines() {
        text.push_str(&format!("  {line}\n"));
    }
}

/// `shoal scale deployment NAME --replicas N`.
pub(crate) fn scale(
    api: &ApiArgs,
    target: &[String],
    replicas: u32,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let (kind, name) = match target {
        [one] => split_kind_name(one).context("give deployment NAME or deployment/NAME")?,
        [kind, name] => (kind.as_str(), name.as_str()),
        _ => bail!("give deployment NAME or deployment/NAME"),
    };
    if object_kind(kind)? != Kind::Deployment {
        bail!("only deployments can be scaled");
    }
    let ns = namespace.unwrap_or_else(|| "default".into());
    let client = Client::new(api)?;
    client.post(
        &format!("/api/v1/deployments/{ns}/{name}/scale"),
        &json!({ "replicas": replicas }),
    )?;
    println!("deployment.apps/{name} scaled");
    Ok(())
}

/// `shoal rollout status|undo deployment NAME`.
pub(crate) fn rollout(
    api: &ApiArgs,
    action: &str,
    target: &[String],
    namespace: Option<String>,
    to_revision: Option<u64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (kind, name) = match target {
        [one] => split_kind_name(one).context("give deployment NAME or deployment/NAME")?,
        [kind, name] => (kind.as_str(), name.as_str()),
        _ => bail!("give deployment NAME or deployment/NAME"),
    };
    if object_kind(kind)? != Kind::Deployment {
        bail!("rollout supports deployments");
    }
    let ns = namespace.unwrap_or_else(|| "default".into());
    let client = Client::new(api)?;
    match action {
        "undo" => {
            client.post(
                &format!("/api/v1/deployments/{ns}/{name}/undo"),
                &json!({ "toRevision": to_revision }),
            )?;
            println!("deployment.apps/{name} rolled back");
            Ok(())
        }
        "status" => {
            let start = Instant::now();
            let mut last = String::new();
            loop {
                let answer = client.get(&format!("/api/v1/deployments/{ns}/{name}"))?;
                let (d, status) = deployment_from_object(&answer["object"])?;
                let want = d.spec.replicas;
                let old = status.replicas.saturating_sub(status.updated_replicas);
                let message = if status.updated_replicas < want {
                    format!(
                        "Waiting for deployment \"{name}\" rollout to finish: {} out of {want} new replicas have been updated...",
                        status.updated_replicas
                    )
                } else if old > 0 {
                    format!(
                        "Waiting for deployment \"{name}\" rollout to finish: {old} old replicas are pending termination..."
                    )
                } else if status.available_replicas < want {
                    format!(
                        "Waiting for deployment \"{name}\" rollout to finish: {} of {want} updated replicas are available...",
                        status.available_replicas
                    )
                } else {
                    println!("deployment \"{name}\" successfully rolled out");
                    return Ok(());
                };
                if message != last {
                    println!("{message}");
                    last = message;
                }
                if start.elapsed() > timeout {
                    bail!("timed out waiting for the rollout of deployment \"{name}\"");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        other => bail!("unknown rollout action {other:?}: use status or undo"),
    }
}

/// `shoal logs POD [-c CONTAINER] [-f] [--tail N]`.
pub(crate) fn logs(
    api: &ApiArgs,
    pod: &str,
    container: Option<String>,
    follow: bool,
    tail: Option<usize>,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let pod = pod.strip_prefix("pod/").unwrap_or(pod);
    let ns = namespace.unwrap_or_else(|| "default".into());
    let client = Client::new(api)?;
    let mut query = vec![format!("follow={follow}")];
    if let Some(c) = container {
        query.push(format!("container={c}"));
    }
    if let Some(t) = tail {
        query.push(format!("tail={t}"));
    }
    let path = format!("/api/v1/pods/{ns}/{pod}/log?{}", query.join("&"));
    let mut reader = client.stream(&path)?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut reader, &mut out)?;
    Ok(())
}

/// "1 problem", "3 problems".
pub(crate) fn problems(n: usize) -> String {
    if n == 1 {
        "1 problem".to_owned()
    } else {
        format!("{n} problems")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_as_kubectl_spells_them() {
        for (text, want) in [
            ("svc", ResourceType::Object(Kind::Service)),
            ("services", ResourceType::Object(Kind::Service)),
            ("Service", ResourceType::Object(Kind::Service)),
            ("ep", ResourceType::Endpoints),
            ("endpoints", ResourceType::Endpoints),
            ("deploy", ResourceType::Object(Kind::Deployment)),
            ("po", ResourceType::Object(Kind::Pod)),
        ] {
            assert_eq!(resource_kind(text).unwrap(), want, "{text}");
        }
        assert_eq!(
            resource_kind("cm").unwrap(),
            ResourceType::Object(Kind::ConfigMap)
        );
        assert_eq!(
            resource_kind("secrets").unwrap(),
            ResourceType::Object(Kind::Secret)
        );
        assert!(resource_kind("persistentvolumeclaims").is_err());
        assert_eq!(object_kind("svc").unwrap(), Kind::Service);
        let err = object_kind("ep").unwrap_err().to_string();
        assert!(err.contains("delete the service"), "{err}");
        assert_eq!(ResourceType::Endpoints.plural(), "endpoints");
        assert_eq!(ResourceType::Object(Kind::Service).plural(), "services");
        assert_eq!(
            list_path(ResourceType::Endpoints, Some("prod")),
            "/api/v1/endpoints?namespace=prod"
        );
        assert_eq!(
            list_path(ResourceType::Object(Kind::Service), None),
            "/api/v1/services"
        );
    }

    #[test]
    fn describe_config_maps_and_secrets_as_kubectl_prints_them() {
        let secret = json!({
            "metadata": {"name": "db", "namespace": "default", "labels": {"a": "1", "b": "2"}},
            "type": "Opaque",
            "data": {"password": "czNjcjN0", "u": "YWRtaW4="},
        });
        let text = describe_secret(&secret);
        assert_eq!(
            text,
            "Name:         db\nNamespace:    default\nLabels:       a=1\n              b=2\n\
             Annotations:  <none>\n\nType:  Opaque\n\nData\n====\n\
             password:  6 bytes\nu:         5 bytes\n"
        );
        assert!(
            !text.contains("s3cr3t") && !text.contains("czNjcjN0"),
            "{text}"
        );
        let long = "x".repeat(200);
        let cm = json!({
            "metadata": {"name": "web", "namespace": "prod",
                "annotations": {"note": "hi", "long": long, "multi": "one\ntwo\n"}},
            "data": {"mode": "fast"},
            "binaryData": {"blob": "//4A"},
        });
        let text = describe_config_map(&cm);
        let want = format!(
            "Name:         web\nNamespace:    prod\nLabels:       <none>\n\
             Annotations:  long:\n                {}...\n\
             \x20             multi:\n                one\n                two\n\
             \x20             note: hi\n\n\
             Data\n====\nmode:\n----\nfast\n\n\nBinaryData\n====\nblob: 3 bytes\n\n\
             Events:  <none>\n",
            "x".repeat(138)
        );
        assert_eq!(text, want);
    }

    #[test]
    fn describe_service_shows_each_port_with_its_endpoints() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: {app: web}}\nspec:\n  type: NodePort\n  clusterIP: 127.200.0.10\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http, nodePort: 30080}\n  - {name: admin, port: 81, targetPort: 9000, nodePort: 30081}\n";
        let svc = match manifest::parse("svc.yaml", yaml.as_bytes())
            .unwrap()
            .remove(0)
        {
            manifest::Resource::Service(s) => s,
            other => panic!("{other:?}"),
        };
        let address = |ip: &str| manifest::EndpointAddress {
            ip: ip.into(),
            node_name: None,
            target_ref: None,
        };
        let endpoints = manifest::Endpoints {
            metadata: manifest::ObjectMeta::default(),
            subsets: vec![manifest::EndpointSubset {
                addresses: vec![address("127.65.0.1"), address("127.65.0.2")],
                not_ready_addresses: Vec::new(),
                ports: vec![
                    manifest::EndpointPort {
                        name: Some("http".into()),
                        port: 8080,
                        protocol: manifest::Protocol::Tcp,
                    },
                    manifest::EndpointPort {
                        name: Some("admin".into()),
                        port: 9000,
                        protocol: manifest::Protocol::Tcp,
                    },
                ],
            }],
        };
        let text = describe_service(&svc, &endpoints);
        let want = "\
Name:                     web
Namespace:                default
Labels:                   app=web
Annotations:              <none>
Selector:                 app=web
Type:                     NodePort
IP Family Policy:         SingleStack
IP Families:              IPv4
IP:                       127.200.0.10
IPs:                      127.200.0.10
Port:                     http  80/TCP
TargetPort:               http/TCP
NodePort:                 http  30080/TCP
Endpoints:                127.65.0.1:8080,127.65.0.2:8080
Port:                     admin  81/TCP
TargetPort:               9000/TCP
NodePort:                 admin  30081/TCP
Endpoints:                127.65.0.1:9000,127.65.0.2:9000
Session Affinity:         None
External Traffic Policy:  Cluster
";
        assert_eq!(text, want);
    }
}
