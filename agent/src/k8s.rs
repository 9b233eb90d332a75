//! Kubernetes-shaped objects, so that scripts written for kubectl's `-o json|yaml` keep working,
//! and the helpers kubectl-style output needs (ages, timestamps).

use serde_json::{Value, json};
use shoal_gossip::{Entry, MemberState, Version};

use crate::driver::{ClusterView, MemberView};

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

/// RFC 3339 UTC timestamp (second precision) of milliseconds since the Unix epoch.
pub(crate) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

/// One member as a Kubernetes `Node`.
pub(crate) fn node_object(m: &MemberView) -> Value {
    let (ready, reason, message) = ready_condition(m.state);
    let created = m.info.as_ref().map(|i| i.created_ms).unwrap_or(m.since_ms);
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": m.name,
            "uid": m.id.to_hex(),
            "creationTimestamp": rfc3339(created),
            "labels": {
                "kubernetes.io/hostname": m.name,
                "kubernetes.io/os": m.info.as_ref().map(|i| i.os.as_str()).unwrap_or(""),
                "kubernetes.io/arch": m.info.as_ref().map(|i| i.arch.as_str()).unwrap_or(""),
            },
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
            }],
            "membership": m.state.as_str(),
            "incarnation": m.incarnation,
            "gossipAddress": m.addr,
            "nodeInfo": {
                "shoalVersion": m.info.as_ref().map(|i| i.version.as_str()).unwrap_or(""),
                "operatingSystem": m.info.as_ref().map(|i| i.os.as_str()).unwrap_or(""),
                "architecture": m.info.as_ref().map(|i| i.arch.as_str()).unwrap_or(""),
                "startedAt": m.info.as_ref().map(|i| rfc3339(i.started_ms)),
            },
        },
    })
}

/// All members as a Kubernetes `List`, ordered by name.
pub(crate) fn node_list(view: &ClusterView, _now_ms: u64) -> Value {
    let mut members: Vec<&MemberView> = view.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": "" },
        "items": members.into_iter().map(node_object).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_826_096_000), "2026-11-28T00:34:56Z");
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5_000), "5s");
        assert_eq!(human_duration(119_000), "119s");
        assert_eq!(human_duration(330_000), "5m30s");
        assert_eq!(human_duration(45 * 60_000), "45m");
        assert_eq!(human_duration((5 * 60 + 30) * 60_000), "5h30m");
        assert_eq!(human_duration(36 * 3_600_000), "36h");
        assert_eq!(human_duration((3 * 24 + 5) * 3_600_000), "3d5h");
        assert_eq!(human_duration(400 * 86_400_000), "400d");
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
