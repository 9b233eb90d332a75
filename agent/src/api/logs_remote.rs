//! Logs of pods that run on another node: fetched from that node's agent over the cluster's
//! authenticated network.

use axum::http::StatusCode;
use axum::response::Response;
use shoal_gossip::NodeId;

use super::{Api, error};

/// Streams the logs of a pod that runs on `node`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    _api: &Api,
    _node: NodeId,
    owner: &str,
    _namespace: &str,
    name: &str,
    _container: &str,
    _follow: bool,
    _tail: Option<usize>,
) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "NotImplemented",
        &format!("pod {name} runs on node {owner}; fetching logs from another node is being built"),
    )
}
