//! What each node publishes about itself: the owned entry [`NODE_INFO`] (JSON, versioned like
//! every value shoal keeps in the replicated state, see [`crate::workload::stored`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
