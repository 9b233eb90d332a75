//! What each node publishes about itself: the owned entry [`NODE_INFO`] (JSON, versioned like
//! every value shoal keeps in the replicated state, see [`crate::workload::stored`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::wall_ms;
use crate::disk::DiskStatus;
use crate::driver::DriverHandle;
use crate::workload::stored::{self, DecodeError};

/// Name of the owned entry where each node publishes facts about itself.
pub(crate) const NODE_INFO: &str = "node/info";

/// Facts a node publishes about itself (owned entry [`NODE_INFO`], JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NodeInfo {
    /// The value's format ([`stored::FORMAT`]; absent in values written before formats were
    /// numbered, which are format 1).
    #[serde(default = "stored::format_one")]
    pub(crate) format: u32,
    /// The shoal version the node runs.
    pub(crate) version: String,
    /// Operating system and architecture.
    pub(crate) os: String,
    pub(crate) arch: String,
    /// When the node was first started (its identity created), ms since the Unix epoch.
    pub(crate) created_ms: u64,
    /// When the node's agent last started, ms since the Unix epoch.
    pub(crate) started_ms: u64,
    /// Which start of the node's agent this is: 1 at its first start, one more at each
    /// (counted in its data dir, so clocks do not matter). Its pod records carry it too; 0
    /// from an agent that does not number its runs.
    #[serde(default, skip_serializing_if = "stored::is_zero")]
    pub(crate) run: u64,
    /// CPU the node offers to pods, in millicores.
    pub(crate) cpu_millis: u64,
    /// Memory the node offers to pods, in bytes.
    pub(crate) memory_bytes: u64,
    /// The node's labels (for `nodeSelector`).
    pub(crate) labels: BTreeMap<String, String>,
    /// The runtime running its pods (`docker` or `process`).
    pub(crate) runtime: String,
    /// Where its service mesh listens (`ip:port`, QUIC); absent on agents without a mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mesh: Option<String>,
    /// The service range it was started with (all members must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) service_range: Option<String>,
    /// The replica limits it plans with (all members must agree; placement uses the lowest a
    /// live member announces, so that every member plans alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) limits: Option<crate::workload::limits::Limits>,
    /// While the node refuses writes for its disk (full, or failing): since when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) disk_pressure: Option<DiskPressure>,
    /// What happened to the node lately (its disk filling up, space coming back), oldest
    /// first, at most [`MAX_EVENTS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) events: Vec<NodeEvent>,
}

/// Most events a node keeps on itself.
pub(crate) const MAX_EVENTS: usize = 10;

/// A node refusing writes for its disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DiskPressure {
    /// Since when (wall ms).
    pub(crate) since_ms: u64,
    /// `DiskFull`, or `DiskFailing` for other I/O errors.
    pub(crate) reason: String,
    pub(crate) message: String,
}

/// Something that happened to a node, as `describe node` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NodeEvent {
    /// When (wall ms).
    pub(crate) at_ms: u64,
    /// `Normal` or `Warning`, as Kubernetes types events.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) reason: String,
    pub(crate) message: String,
}

impl NodeInfo {
    /// Records the disk's state: its pressure and, when that changes, an event. Returns
    /// whether anything changed.
    pub(crate) fn note_disk(&mut self, status: &DiskStatus, now_ms: u64) -> bool {
        let pressure = status.refusal().map(|_| DiskPressure {
            since_ms: status.pressure_since_ms.unwrap_or(now_ms),
            reason: if status.full() {
                "DiskFull"
            } else {
                "DiskFailing"
            }
            .to_owned(),
            message: status.describe(),
        });
        let event = match (&self.disk_pressure, &pressure) {
            (None, None) => return false,
            (Some(old), Some(new)) if old.reason == new.reason => return false,
            (_, Some(new)) => NodeEvent {
                at_ms: now_ms,
                kind: "Warning".into(),
                reason: new.reason.clone(),
                message: format!("{}; object writes are refused", new.message),
            },
            (Some(_), None) => NodeEvent {
                at_ms: now_ms,
                kind: "Normal".into(),
                reason: "DiskHasRoom".into(),
                message: format!("{}; writes are taken again", status.describe()),
            },
        };
        self.disk_pressure = pressure;
        self.events.push(event);
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
        true
    }
}

/// Keeps the node's info (its owned entry) saying how its disk is: rewritten when the node
/// starts or stops refusing writes for its disk, never more often (a change of free space
/// alone is not news). The persistence thread logs the same transitions. Runs until the driver
/// stops.
pub(crate) async fn report_disk(driver: DriverHandle, mut info: NodeInfo) {
    let mut disk = driver.disk();
    loop {
        let status = disk.borrow_and_update().clone();
        if info.note_disk(&status, wall_ms()) {
            // Made in memory and sent to the peers at once, even while the disk refuses it.
            if driver
                .write_owned(NODE_INFO.to_owned(), Some(info.encode()))
                .await
                .is_err()
            {
                return;
            }
        }
        if disk.changed().await.is_err() {
            return;
        }
    }
}

impl NodeInfo {
    /// Decodes an owned entry's value.
    pub(crate) fn decode(bytes: &[u8]) -> Result<NodeInfo, DecodeError> {
        let info: NodeInfo = stored::decode_json(bytes)?;
        stored::check_format(info.format)?;
        Ok(info)
    }

    /// Encodes for the owned entry.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("node info serialises")
    }
}

/// The label Kubernetes puts the node's name under.
pub(crate) const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// The label of the node's operating system, as Go names it (`GOOS`).
pub(crate) const LABEL_OS: &str = "kubernetes.io/os";
/// The label of the node's architecture, as Go names it (`GOARCH`).
pub(crate) const LABEL_ARCH: &str = "kubernetes.io/arch";

/// The labels every node carries, as a kubelet sets them: its name, and this machine's
/// operating system and architecture under Go's names, which are what manifests select on
/// (`kubernetes.io/arch: amd64`, never `x86_64`).
pub(crate) fn well_known_labels(node_name: &str) -> [(String, String); 3] {
    [
        (LABEL_HOSTNAME.to_owned(), node_name.to_owned()),
        (LABEL_OS.to_owned(), kubernetes_os()),
        (LABEL_ARCH.to_owned(), kubernetes_arch()),
    ]
}

/// This machine's operating system as Kubernetes names it ([`goos`]).
pub(crate) fn kubernetes_os() -> String {
    goos(std::env::consts::OS)
}

/// This machine's architecture as Kubernetes names it ([`goarch`]).
pub(crate) fn kubernetes_arch() -> String {
    goarch(std::env::consts::ARCH, cfg!(target_endian = "little"))
}

/// Go's `GOOS` for Rust's `std::env::consts::OS`: they differ only for macOS (`darwin`);
/// anything else is passed through.
pub(crate) fn goos(rust_os: &str) -> String {
    match rust_os {
        "macos" => "darwin",
        other => other,
    }
    .to_owned()
}

/// Go's `GOARCH` for Rust's `std::env::consts::ARCH` (`x86_64` is `amd64`, `aarch64` is
/// `arm64`, `x86` is `386` ...). Rust names MIPS and 64-bit PowerPC the same in either byte
/// order and Go does not, hence `little_endian`. An architecture Go does not know is passed
/// through.
pub(crate) fn goarch(rust_arch: &str, little_endian: bool) -> String {
    let le = |big: &'static str, little: &'static str| if little_endian { little } else { big };
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => le("ppc64", "ppc64le"),
        "mips" => le("mips", "mipsle"),
        "mips64" => le("mips64", "mips64le"),
        "loongarch64" => "loong64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "sparc64" => "sparc64",
        "wasm32" => "wasm",
        other => other,
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{Failure, Space};

    fn disk(free: u64, failing: bool) -> DiskStatus {
        DiskStatus {
            dir: "/data".into(),
            space: Some(Space {
                free,
                total: 100 << 20,
            }),
            reserve: 10 << 20,
            failing: failing.then(|| Failure {
                error: "Input/output error (os error 5)".into(),
                no_space: false,
            }),
            unsaved: 0,
            pressure_since_ms: Some(1_000),
        }
    }

    #[test]
    fn the_disk_is_reported_when_its_pressure_starts_changes_or_ends() {
        let mut info = NodeInfo::default();
        assert!(!info.note_disk(&disk(50 << 20, false), 0), "no news");
        assert!(info.note_disk(&disk(1 << 20, false), 5_000));
        let pressure = info.disk_pressure.clone().expect("pressure");
        assert_eq!(
            (pressure.reason.as_str(), pressure.since_ms),
            ("DiskFull", 1_000)
        );
        assert_eq!(info.events.last().map(|e| e.kind.as_str()), Some("Warning"));
        // Less room still, same reason: not news (the node info is not rewritten).
        assert!(!info.note_disk(&disk(1 << 10, false), 6_000));
        // Another reason is.
        assert!(info.note_disk(&disk(50 << 20, true), 7_000));
        assert_eq!(info.disk_pressure.as_ref().unwrap().reason, "DiskFailing");
        assert!(info.note_disk(&disk(50 << 20, false), 8_000));
        assert_eq!(info.disk_pressure, None);
        let last = info.events.last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.reason.as_str()),
            ("Normal", "DiskHasRoom")
        );
        // A flapping disk keeps the newest events only.
        for i in 0..30 {
            info.note_disk(
                &disk(if i % 2 == 0 { 1 } else { 50 << 20 }, false),
                9_000 + i,
            );
        }
        assert_eq!(info.events.len(), MAX_EVENTS);
        assert_eq!(info.events.last().unwrap().at_ms, 9_029);
        // Old agents' info (without the fields) still decodes, and the fields round-trip.
        let decoded = NodeInfo::decode(&info.encode()).unwrap();
        assert_eq!(decoded, info);
    }

    #[test]
    fn architectures_have_their_go_names() {
        for (rust, little_endian, go) in [
            ("x86_64", true, "amd64"),
            ("x86", true, "386"),
            ("aarch64", true, "arm64"),
            ("arm", true, "arm"),
            ("powerpc64", true, "ppc64le"),
            ("powerpc64", false, "ppc64"),
            ("s390x", false, "s390x"),
            ("riscv64", true, "riscv64"),
            ("loongarch64", true, "loong64"),
            ("mips", true, "mipsle"),
            ("mips", false, "mips"),
            ("mips64", true, "mips64le"),
            ("mips64", false, "mips64"),
            ("sparc64", false, "sparc64"),
            ("wasm32", true, "wasm"),
            ("csky", true, "csky"),
        ] {
            assert_eq!(
                goarch(rust, little_endian),
                go,
                "{rust} (little endian: {little_endian})"
            );
        }
    }

    #[test]
    fn operating_systems_have_their_go_names() {
        for (rust, go) in [
            ("linux", "linux"),
            ("macos", "darwin"),
            ("windows", "windows"),
            ("freebsd", "freebsd"),
            ("illumos", "illumos"),
        ] {
            assert_eq!(goos(rust), go);
        }
    }

    #[test]
    fn this_node_is_labelled_with_go_names() {
        let labels: BTreeMap<String, String> = well_known_labels("laptop-1").into_iter().collect();
        assert_eq!(labels[LABEL_HOSTNAME], "laptop-1");
        let known = [
            "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "loong64",
        ];
        assert!(
            known.contains(&labels[LABEL_ARCH].as_str()),
            "{} is not a GOARCH name",
            labels[LABEL_ARCH]
        );
        #[cfg(target_os = "linux")]
        assert_eq!(labels[LABEL_OS], "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(labels[LABEL_ARCH], "amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(labels[LABEL_ARCH], "arm64");
    }
}
