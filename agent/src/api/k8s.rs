//! Kubernetes-shaped answers that need the agent: members as `Node`s (so that scripts written
//! for kubectl's `-o json|yaml` keep working), and the `resourceVersion` and name rules of raw
//! objects.

use serde_json::{Value, json};
use shoal_gossip::clock::human_ms;
use shoal_gossip::{ClockRefusal, ClockVerdict, Entry, MemberState, Version};
use shoal_model::Timestamp;

use crate::driver::{ClockView, ClusterView, MemberView};
use crate::node_info::{LABEL_HOSTNAME, NodeInfo};
use crate::workload::snapshot::Snapshot;

/// The `resourceVersion` of an entry: its hybrid logical clock (`wall_ms.logical`), or the
/// owner's counter for owned entries.
pub(crate) fn resource_version(entry: &Entry) -> String {
    match entry.version {
        Version::Object { hlc, .. } => format!("{}.{}", hlc.wall_ms, hlc.logical),
        Version::Owned { version } => version.to_string(),
        Version::Member { incarnation, rank } => format!("{incarnation}.{rank}"),
    }
}

/// Whether a name is acceptable as a kind, namespace or object name: 1-253 characters of
/// lower-case ASCII letters, digits, `-` and `.`, starting and ending with a letter or digit
/// (Kubernetes' DNS subdomain rule).
pub(crate) fn is_dns_label_ish(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(ok_char)
        && edge(s.chars().next())
        && edge(s.chars().last())
}

fn rfc3339(ms: u64) -> String {
    Timestamp(ms).to_rfc3339()
}

fn ready_condition(state: MemberState) -> (&'static str, &'static str, &'static str) {
    match state {
        MemberState::Alive => ("True", "MemberAlive", "the node answers probes"),
        MemberState::Suspect => (
            "Unknown",
            "MemberSuspect",
            "the node missed a probe and has not refuted the suspicion yet",
        ),
        MemberState::Dead => ("False", "MemberDead", "the node was declared failed"),
        MemberState::Left => ("False", "MemberLeft", "the node left the cluster"),
    }
}

/// Splits `host:port` into host and port (IPv6 in brackets is handled).
fn split_host(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

/// One member as a Kubernetes `Node`, with the facts it publishes about itself (`info`).
pub(crate) fn node_object(m: &MemberView, info: Option<&NodeInfo>) -> Value {
    let (ready, reason, message) = ready_condition(m.state);
    let created = info.map(|i| i.created_ms).unwrap_or(m.since_ms);
    // Every label the node carries (what `nodeSelector` matches), the well-known ones included;
    // a node whose info has not arrived yet shows its name.
    let mut labels = serde_json::Map::new();
    labels.insert(LABEL_HOSTNAME.into(), m.name.clone().into());
    for (key, value) in info.map(|i| &i.labels).into_iter().flatten() {
        labels.insert(key.clone(), value.clone().into());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": m.name,
            "uid": m.id.to_hex(),
            "creationTimestamp": rfc3339(created),
            "labels": labels,
        },
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": split_host(&m.addr) },
                { "type": "Hostname", "address": m.name },
            ],
            "conditions": [{
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": message,
                "lastTransitionTime": rfc3339(m.since_ms),
            }, disk_condition(info)],
            "membership": m.state.as_str(),
            "serviceRange": info.and_then(|i| i.service_range.as_deref()),
            "incarnation": m.incarnation,
            "gossipAddress": m.addr,
            "nodeInfo": {
                "shoalVersion": info.map(|i| i.version.as_str()).unwrap_or(""),
                "operatingSystem": info.map(|i| i.os.as_str()).unwrap_or(""),
                "architecture": info.map(|i| i.arch.as_str()).unwrap_or(""),
                "startedAt": info.map(|i| rfc3339(i.started_ms)),
            },
        },
    })
}

/// The `DiskPressure` condition: whether the node refuses writes because its data dir's disk
/// is full or failing, as its node info says (`Unknown` before that arrives).
fn disk_condition(info: Option<&NodeInfo>) -> Value {
    match info {
        None => json!({
            "type": "DiskPressure",
            "status": "Unknown",
            "reason": "NodeInfoMissing",
            "message": "this node's info has not arrived",
        }),
        Some(NodeInfo {
            disk_pressure: Some(p),
            ..
        }) => json!({
            "type": "DiskPressure",
            "status": "True",
            "reason": p.reason,
            "message": p.message,
            "lastTransitionTime": rfc3339(p.since_ms),
        }),
        Some(_) => json!({
            "type": "DiskPressure",
            "status": "False",
            "reason": "DiskHasRoom",
            "message": "the node's disk takes writes",
        }),
    }
}

/// A node's events (from its node info), in the shape of a pod's (`describe` prints both).
pub(crate) fn node_events(info: Option<&NodeInfo>) -> Value {
    info.map(|i| serde_json::to_value(&i.events).unwrap_or_default())
        .unwrap_or_else(|| json!([]))
}

/// All members as a Kubernetes `List`, ordered by name, with the node info the workload
/// snapshot holds for each.
pub(crate) fn node_list(
    view: &ClusterView,
    clock: &ClockView,
    snapshot: &Snapshot,
    _now_ms: u64,
) -> Value {
    let mut members: Vec<&MemberView> = view.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": "" },
        "items": members
            .into_iter()
            .map(|m| {
                let mut node = node_object(m, snapshot.member(&m.id).and_then(|s| s.info.as_ref()));
                // This node's own: whether it still joins, and who refused it or could not be
                // reached (`shoal get nodes` warns of them).
                if m.local {
                    node["status"]["joining"] = json!(view.join.joining);
                    node["status"]["joinFailures"] =
                        serde_json::to_value(&view.join.failures).unwrap_or_default();
                }
                let (condition, offset) = clock_condition(m, clock);
                if let Some(conditions) = node["status"]["conditions"].as_array_mut() {
                    conditions.push(condition);
                }
                node["status"]["clockOffsetMs"] = json!(offset);
                node
            })
            .collect::<Vec<_>>(),
    })
}

/// The `ClockSkew` condition of a member as the serving node sees it, and its clock's offset
/// from the serving node's (ms, `None` if not measured; 0 for itself). The serving node's own
/// condition is its verdict: whether it refuses writes because its clock is off from most
/// members'. Another member's is whether its clock is more than the maximum offset from the
/// serving node's, whichever of the two is wrong.
fn clock_condition(m: &MemberView, clock: &ClockView) -> (Value, Option<i64>) {
    let max = human_ms(clock.max_offset_ms);
    let offset = if m.local {
        Some(0)
    } else {
        clock.offsets.get(&m.id).map(|&(offset, _)| offset)
    };
    let (status, reason, message) = match (m.local, &clock.status, offset) {
        (true, None, _) => ("Unknown", "NotCompared", "not compared yet".to_owned()),
        (true, Some(status), _) => match status.verdict {
            ClockVerdict::Agrees if status.measured == 0 => {
                ("False", "Alone", "no member to compare with".to_owned())
            }
            ClockVerdict::Agrees => (
                "False",
                "ClockInSync",
                format!(
                    "within {max} of most of the {} members measured",
                    status.measured
                ),
            ),
            ClockVerdict::NotCompared => (
                "Unknown",
                "NotCompared",
                "not compared with its peers yet".to_owned(),
            ),
            ClockVerdict::Off { .. } => {
                ("True", "ClockOff", ClockRefusal(status.clone()).to_string())
            }
        },
        (false, _, None) => (
            "Unknown",
            "NotMeasured",
            "this node has not measured its clock".to_owned(),
        ),
        (false, _, Some(offset)) => {
            let side = if offset >= 0 { "ahead of" } else { "behind" };
            let message = format!(
                "its clock is {} {side} this node's (most allowed: {max})",
                human_ms(offset.unsigned_abs())
            );
            if offset.unsigned_abs() > clock.max_offset_ms {
                ("True", "ClockOffset", message)
            } else {
                ("False", "ClockInSync", message)
            }
        }
    };
    (
        json!({
            "type": "ClockSkew",
            "status": status,
            "reason": reason,
            "message": message,
        }),
        offset,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_shows_every_label_it_carries() {
        let member = MemberView {
            id: shoal_gossip::NodeId([7; 32]),
            name: "laptop-1".into(),
            addr: "192.168.1.20:7946".into(),
            incarnation: 1,
            state: MemberState::Alive,
            since_ms: 0,
            local: false,
        };
        let mut info = NodeInfo {
            os: "linux".into(),
            arch: "amd64".into(),
            ..Default::default()
        };
        info.labels
            .extend(crate::node_info::well_known_labels("laptop-1"));
        info.labels.insert("disk".into(), "ssd".into());
        let node = node_object(&member, Some(&info));
        let labels = &node["metadata"]["labels"];
        assert_eq!(labels["kubernetes.io/hostname"], "laptop-1");
        assert_eq!(
            labels["kubernetes.io/arch"],
            crate::node_info::kubernetes_arch().as_str()
        );
        assert_eq!(labels["disk"], "ssd");
        assert_eq!(node["status"]["nodeInfo"]["architecture"], "amd64");
        // Before its info arrives, a node shows its name.
        let bare = node_object(&member, None);
        assert_eq!(
            bare["metadata"]["labels"],
            json!({"kubernetes.io/hostname": "laptop-1"})
        );
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(is_dns_label_ish("web-1.default"));
        assert!(!is_dns_label_ish("Web"));
        assert!(!is_dns_label_ish("-web"));
        assert!(!is_dns_label_ish(""));
        assert!(!is_dns_label_ish("a/b"));
    }
}
