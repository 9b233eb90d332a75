//! The kubectl-like client commands: they talk to the local agent's HTTP API.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

use shoal_model::Timestamp;

use self::table::{format_table, human_duration};
use crate::clock::wall_ms;

pub(crate) mod apply;
pub(crate) mod create;
pub(crate) mod table;
#[cfg(test)]
mod table_tests;
pub(crate) mod workloads;

/// Where the agent's API is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub(crate) struct ApiArgs {
    /// Address of the agent's API.
    #[arg(
        long,
        env = "SHOAL_API",
        default_value = "127.0.0.1:7947",
        global = true
    )]
    api: String,
    /// File holding the API token (needed when the API listens beyond loopback). The token can
    /// also be given in SHOAL_API_TOKEN.
    #[arg(long, global = true)]
    token_file: Option<std::path::PathBuf>,
}

impl ApiArgs {
    /// The API at `api`, with no token file (the token, if any, from `SHOAL_API_TOKEN`).
    pub(crate) fn at(api: String) -> ApiArgs {
        ApiArgs {
            api,
            token_file: None,
        }
    }
}

/// kubectl's `-n`.
#[derive(Args, Debug, Clone)]
pub(crate) struct NamespaceArgs {
    /// The namespace (default: `default`).
    #[arg(short = 'n', long)]
    pub(crate) namespace: Option<String>,
}

/// Output formats, as kubectl's `-o`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// More columns.
    Wide,
    /// Kubernetes-shaped JSON.
    Json,
    /// Kubernetes-shaped YAML.
    Yaml,
    /// `kind/name` per line.
    Name,
}

/// A client of one agent's API.
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub(crate) fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = match &args.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the API token from {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("SHOAL_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        let base = if args.api.starts_with("http://") || args.api.starts_with("https://") {
            args.api.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", args.api)
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into();
        Ok(Client { base, token, agent })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response = result.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the shoal agent at {}: {e} (is `shoal agent` running? set --api or SHOAL_API)",
                self.base
            )
        })?;
        let status = response.status();
        // Warnings (`299 - "text"`), printed as kubectl prints them.
        for warning in response.headers().get_all("warning") {
            if let Ok(value) = warning.to_str() {
                eprintln!("Warning: {}", warning_text(value));
            }
        }
        let text = response
            .body_mut()
            .read_to_string()
            .context("reading the agent's answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("the agent refused ({}): {message}", status.as_u16());
        }
        Ok(value)
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.finish(request.call())
    }

    /// A GET whose 404 is an answer (`None`): whether an object exists.
    pub(crate) fn get_if_found(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        match request.call() {
            Ok(r) if r.status() == 404 => Ok(None),
            result => self.finish(result).map(Some),
        }
    }

    /// A streamed GET (logs): the body as a reader, without the overall timeout.
    pub(crate) fn stream(&self, path: &str) -> anyhow::Result<impl std::io::Read> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut request = agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.call().map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the shoal agent at {}: {e} (is `shoal agent` running? set --api or SHOAL_API)",
                self.base
            )
        })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let text = response.into_body().read_to_string().unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("the agent refused ({status}): {message}");
        }
        Ok(response.into_body().into_reader())
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = || {
            let mut request = self
                .agent
                .post(self.url(path))
                .header("Content-Type", "application/json");
            if let Some(token) = &self.token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            request
        };
        let bytes = serde_json::to_vec(body).context("encoding the request")?;
        // An agent that cannot take a write yet (it has not compared its clock with its peers
        // since it started) says when to retry: for up to 10 s, the CLI does.
        let deadline = std::time::Instant::now() + RETRY_FOR;
        let result = loop {
            let result = request().send(&bytes[..]);
            let retry_after = match &result {
                Ok(response) if response.status() == 503 => response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok()),
                _ => None,
            };
            match retry_after {
                Some(secs) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_secs(secs.clamp(1, 2)));
                }
                _ => break result,
            }
        };
        // An agent refuses a body over its limit before reading it, which a sender still
        // writing sees as a broken connection rather than as the answer.
        if let Err(ureq::Error::Io(e)) = &result
            && bytes.len() > 64 << 10
        {
            bail!(
                "the connection to the shoal agent at {} broke while sending {} to {path} ({e}): \
                 an agent refuses bodies over its limits (GET /api/v1/limits)",
                self.base,
                crate::api::limits::human_bytes(bytes.len())
            );
        }
        self.finish(result)
    }

    /// The agent's request body limits (the defaults for an agent that does not say).
    pub(crate) fn limits(&self) -> anyhow::Result<crate::api::limits::BodyLimits> {
        let mut request = self.agent.get(self.url("/api/v1/limits"));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let answer = match request.call() {
            Ok(r) if r.status() == 404 => None,
            result => Some(self.finish(result)?),
        };
        Ok(apply::limits_or_default(answer))
    }
}

/// The text of a `Warning` header (`299 - "text"`, RFC 7234), or the whole value if it is not
/// in that shape.
fn warning_text(value: &str) -> &str {
    let mut parts = value.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(code), Some(_agent), Some(text)) if code.len() == 3 => {
            let text = text.trim();
            text.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(text)
        }
        _ => value,
    }
}

/// How long a write the agent asks to retry later is retried.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// `get nodes` columns.
const NODE_COLUMNS: [&str; 4] = ["NAME", "STATUS", "ADDRESS", "AGE"];
/// `get nodes -o wide` columns.
const NODE_WIDE_COLUMNS: [&str; 8] = [
    "NAME",
    "STATUS",
    "ADDRESS",
    "AGE",
    "ID",
    "INCARNATION",
    "VERSION",
    "CLOCK",
];

/// `shoal get nodes`.
pub(crate) fn get_nodes(api: &ApiArgs, output: Option<Output>) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let list = client.get("/api/v1/nodes")?;
    // The local node's join failures: a node alone because its peers refuse it says why.
    for warning in join_warnings(&list)
        .into_iter()
        .chain(condition_warnings(&list))
        .chain(range_warning(&list))
    {
        eprintln!("warning: {warning}");
    }
    let mut out = std::io::stdout().lock();
    match output {
        Some(Output::Json) => writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?,
        Some(Output::Yaml) => write!(out, "{}", to_yaml(&list)?)?,
        Some(Output::Name) => {
            for item in items(&list) {
                writeln!(out, "node/{}", str_at(item, "/metadata/name"))?;
            }
        }
        wide => {
            let wide = wide == Some(Output::Wide);
            let now = wall_ms();
            let columns: &[&str] = if wide {
                &NODE_WIDE_COLUMNS
            } else {
                &NODE_COLUMNS
            };
            let mut rows = Vec::new();
            for item in items(&list) {
                let created = Timestamp::parse(str_at(item, "/metadata/creationTimestamp"));
                let age = created
                    .map(|c| human_duration(now.saturating_sub(c.0)))
                    .unwrap_or_else(|| "<unknown>".into());
                let mut row = vec![
                    str_at(item, "/metadata/name").to_owned(),
                    str_at(item, "/status/membership").to_owned(),
                    str_at(item, "/status/gossipAddress").to_owned(),
                    age,
                ];
                if wide {
                    let uid = str_at(item, "/metadata/uid");
                    row.push(uid.get(..16).unwrap_or(uid).to_owned());
                    row.push(
                        item.pointer("/status/incarnation")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                    );
                    let version = str_at(item, "/status/nodeInfo/shoalVersion");
                    row.push(
                        if version.is_empty() {
                            "<unknown>"
                        } else {
                            version
                        }
                        .to_owned(),
                    );
                    // The node's clock against the serving node's.
                    row.push(
                        match item
                            .pointer("/status/clockOffsetMs")
                            .and_then(Value::as_i64)
                        {
                            Some(ms) => format!(
                                "{}{}",
                                if ms < 0 { "-" } else { "+" },
                                shoal_gossip::clock::human_ms(ms.unsigned_abs())
                            ),
                            None => "<unknown>".to_owned(),
                        },
                    );
                }
                rows.push(row);
            }
            write!(out, "{}", format_table(columns, &rows))?;
        }
    }
    Ok(())
}

/// `shoal describe node NAME`: its labels, conditions, addresses, system info and events, as
/// kubectl prints a node.
pub(crate) fn describe_node(api: &ApiArgs, name: &str) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let answer = client.get(&format!("/api/v1/nodes/{name}"))?;
    print!("{}", node_text(&answer["object"], &answer["events"]));
    Ok(())
}

/// The text of `describe node`.
fn node_text(node: &Value, events: &Value) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "Name:               {}\n",
        str_at(node, "/metadata/name")
    ));
    let labels: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    text.push_str(&format!(
        "Labels:             {}\n",
        if labels.is_empty() {
            "<none>".to_owned()
        } else {
            labels.join("\n                    ")
        }
    ));
    text.push_str(&format!(
        "CreationTimestamp:  {}\n",
        str_at(node, "/metadata/creationTimestamp")
    ));
    text.push_str(&format!(
        "Membership:         {} (incarnation {})\n",
        str_at(node, "/status/membership"),
        node.pointer("/status/incarnation")
            .map(Value::to_string)
            .unwrap_or_default()
    ));
    text.push_str("Conditions:\n");
    let rows: Vec<Vec<String>> = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let since = str_at(c, "/lastTransitionTime");
            vec![
                str_at(c, "/type").to_owned(),
                str_at(c, "/status").to_owned(),
                if since.is_empty() { "-" } else { since }.to_owned(),
                str_at(c, "/reason").to_owned(),
                str_at(c, "/message").to_owned(),
            ]
        })
        .collect();
    let table = format_table(
        &["Type", "Status", "LastTransitionTime", "Reason", "Message"],
        &rows,
    );
    for line in table.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    text.push_str("Addresses:\n");
    for a in node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        text.push_str(&format!(
            "  {}:  {}\n",
            str_at(a, "/type"),
            str_at(a, "/address")
        ));
    }
    text.push_str("System Info:\n");
    for (label, pointer) in [
        ("Shoal Version", "/status/nodeInfo/shoalVersion"),
        ("Operating System", "/status/nodeInfo/operatingSystem"),
        ("Architecture", "/status/nodeInfo/architecture"),
        ("Started At", "/status/nodeInfo/startedAt"),
    ] {
        text.push_str(&format!(
            "  {:<18} {}\n",
            format!("{label}:"),
            str_at(node, pointer)
        ));
    }
    workloads::events(&mut text, events);
    text
}

/// `shoal join PEER...`.
pub(crate) fn join(api: &ApiArgs, peers: Vec<String>) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    client.post("/api/v1/join", &serde_json::json!({ "peers": peers }))?;
    println!("joining through {}", peers.join(", "));
    Ok(())
}

/// `shoal leave`.
pub(crate) fn leave(api: &ApiArgs) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    client.post("/api/v1/leave", &serde_json::json!({}))?;
    println!("the agent left the cluster and is stopping");
    Ok(())
}

/// What went wrong joining, from the local node of a `/api/v1/nodes` list.
pub(crate) fn join_warnings(list: &Value) -> Vec<String> {
    items(list)
        .flat_map(|node| {
            node.pointer("/status/joinFailures")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .map(|f| {
            let peer = str_at(f, "/peer");
            let reason = str_at(f, "/reason");
            let count = f.get("count").and_then(Value::as_u64).unwrap_or(1);
            let times = if count > 1 {
                format!(" ({count} times)")
            } else {
                String::new()
            };
            if f.get("refused").and_then(Value::as_bool) == Some(true) {
                format!("{peer} refused this node{times}: {reason}")
            } else {
                format!("this node cannot reach {peer}{times}: {reason}")
            }
        })
        .collect()
}

/// Nodes with a condition that holds and should not: the serving node refusing writes because
/// its clock is off, a member's clock far from the serving node's (`ClockSkew`), a node whose
/// disk is full or failing (`DiskPressure`).
pub(crate) fn condition_warnings(list: &Value) -> Vec<String> {
    items(list)
        .flat_map(|node| {
            node.pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| {
                    matches!(str_at(c, "/type"), "ClockSkew" | "DiskPressure")
                        && str_at(c, "/status") == "True"
                })
                .map(move |c| {
                    format!(
                        "node {}: {}",
                        str_at(node, "/metadata/name"),
                        str_at(c, "/message")
                    )
                })
        })
        .collect()
}

/// Members that serve different service ranges (each serves and hands out its own addresses,
/// so services break between them): one warning naming each range and its nodes.
pub(crate) fn range_warning(list: &Value) -> Option<String> {
    let mut ranges: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for node in items(list) {
        let range = str_at(node, "/status/serviceRange");
        if !range.is_empty() && str_at(node, "/status/membership") == "alive" {
            ranges
                .entry(range)
                .or_default()
                .push(str_at(node, "/metadata/name"));
        }
    }
    (ranges.len() > 1).then(|| {
        let each: Vec<String> = ranges
            .iter()
            .map(|(range, nodes)| format!("{range} on {}", nodes.join(", ")))
            .collect();
        format!(
            "the nodes serve different service ranges ({}); services work only between nodes \
             of one range: start every agent with the same --service-range",
            each.join("; ")
        )
    })
}

/// The items of a Kubernetes-shaped `List`.
pub(crate) fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// YAML of a JSON value.
pub(crate) fn to_yaml(value: &Value) -> anyhow::Result<String> {
    serde_saphyr::to_string(value).context("rendering YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_serving_different_service_ranges_are_warned_about() {
        let node = |name: &str, range: &str, state: &str| {
            serde_json::json!({"metadata": {"name": name},
                "status": {"serviceRange": range, "membership": state}})
        };
        let list = |nodes: Vec<Value>| serde_json::json!({ "items": nodes });
        let same = list(vec![
            node("a", "10.200.0.0/16", "alive"),
            node("b", "10.200.0.0/16", "alive"),
            node("c", "127.200.0.0/16", "dead"),
        ]);
        assert_eq!(range_warning(&same), None);
        let mixed = list(vec![
            node("a", "10.200.0.0/16", "alive"),
            node("b", "127.200.0.0/16", "alive"),
            node("c", "10.200.0.0/16", "alive"),
        ]);
        let warning = range_warning(&mixed).expect("a warning");
        assert!(
            warning.contains("10.200.0.0/16 on a, c; 127.200.0.0/16 on b"),
            "{warning}"
        );
    }

    #[test]
    fn warnings_read_as_kubectl_prints_them() {
        assert_eq!(warning_text("299 - \"not saved yet\""), "not saved yet");
        assert_eq!(warning_text("299 shoal \"a b c\""), "a b c");
        assert_eq!(warning_text("odd"), "odd");
    }

    #[test]
    fn describe_node_lists_conditions_and_events() {
        let node = serde_json::json!({
            "metadata": {"name": "n1", "labels": {"a": "1", "b": "2"}},
            "status": {
                "membership": "alive", "incarnation": 3,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "MemberAlive", "message": "ok"},
                    {"type": "DiskPressure", "status": "True", "reason": "DiskFull",
                     "message": "disk full", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                ],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            },
        });
        let events = serde_json::json!([
            {"type": "Warning", "reason": "DiskFull", "message": "disk full", "atMs": 0},
        ]);
        let text = node_text(&node, &events);
        assert!(
            text.contains("Labels:             a=1\n                    b=2\n"),
            "{text}"
        );
        let row = text.lines().find(|l| l.contains("DiskPressure")).unwrap();
        assert!(row.contains("True") && row.contains("DiskFull") && row.ends_with("disk full"));
        assert!(text.contains("InternalIP:  10.0.0.1"), "{text}");
        assert!(text.contains("Warning") && text.lines().last().unwrap().ends_with("disk full"));
    }
}
