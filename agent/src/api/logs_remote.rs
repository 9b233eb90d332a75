//! Logs of pods that run on another node: fetched from that node's agent over the cluster's
//! authenticated network (the request streams of [`crate::net`]), so `shoal logs` works against
//! any agent, as `kubectl logs` works against any API server.
//!
//! The request is a small JSON object ([`LogRequest`]). The answer's first chunk is a JSON
//! status ([`LogStatus`]): either the logs follow, as raw bytes, or an HTTP status and message
//! say why not (so "no such pod on that node" reaches the user as a 404, not as a broken
//! stream). With `follow`, the responder streams until the container's log ends or the
//! requester goes away (its HTTP client hung up: the request stream is reset).

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use shoal_gossip::NodeId;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Api, error};
use crate::net::{IncomingRequest, Requests};
use crate::runtime::{AnyRuntime, Runtime as _};
use crate::workload::snapshot::{MemberSnap, Snapshot};
use crate::workload::view;

/// What a node asks of another: the logs of one of its pods.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
enum RemoteRequest {
    Logs(LogRequest),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogRequest {
    namespace: String,
    name: String,
    container: String,
    follow: bool,
    tail: Option<usize>,
}

/// The first chunk of an answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogStatus {
    /// An HTTP status code: 200 when the logs follow.
    code: u16,
    reason: String,
    message: String,
}

impl LogStatus {
    fn ok() -> Self {
        Self {
            code: 200,
            reason: String::new(),
            message: String::new(),
        }
    }

    fn failure(code: StatusCode, reason: &str, message: String) -> Self {
        Self {
            code: code.as_u16(),
            reason: reason.to_owned(),
            message,
        }
    }
}

/// Streams the logs of a pod that runs on the member `owner`.
pub(super) async fn forward(
    api: &Api,
    owner: &MemberSnap,
    namespace: &str,
    name: &str,
    container: &str,
    follow: bool,
    tail: Option<usize>,
) -> Response {
    let (addr, owner_name) = (owner.addr.as_str(), owner.name.as_str());
    let request = RemoteRequest::Logs(LogRequest {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        container: container.to_owned(),
        follow,
        tail,
    });
    let bytes = serde_json::to_vec(&request).expect("a log request serialises");
    let unavailable = |e: &dyn std::fmt::Display| {
        error(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            &format!(
                "pod {name} runs on node {owner_name} ({addr}); fetching its logs failed: {e}"
            ),
        )
    };
    let mut answer = match api.net.request(owner.id, addr, bytes).await {
        Ok(answer) => answer,
        Err(e) => return unavailable(&e),
    };
    let status: LogStatus = match answer.recv().await {
        Some(Ok(first)) => match serde_json::from_slice(&first) {
            Ok(status) => status,
            Err(e) => return unavailable(&format!("malformed answer: {e}")),
        },
        Some(Err(e)) => return unavailable(&e),
        None => return unavailable(&"the answer ended before it began"),
    };
    if status.code != 200 {
        let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY);
        return error(code, &status.reason, &status.message);
    }
    debug!(pod = name, %namespace, node = owner_name, follow, "streaming logs from another node");
    let body = Body::from_stream(answer.map(|chunk| chunk.map_err(std::io::Error::other)));
    (StatusCode::OK, body).into_response()
}

/// Serves other nodes' requests until the network layer stops.
pub(crate) fn serve(
    mut requests: Requests,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    runtime: Arc<AnyRuntime>,
    me: NodeId,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let snapshot = snapshots.borrow().clone();
            let runtime = runtime.clone();
            tokio::spawn(answer(request, snapshot, runtime, me));
        }
    })
}

async fn answer(
    mut incoming: IncomingRequest,
    snapshot: Arc<Snapshot>,
    runtime: Arc<AnyRuntime>,
    me: NodeId,
) {
    let from = incoming.from;
    let request: RemoteRequest = match serde_json::from_slice(&incoming.request) {
        Ok(request) => request,
        Err(e) => {
            // A newer peer may ask for something this version does not know.
            warn!(%from, error = %e, "dropping a request this agent does not understand");
            incoming.fail(&format!("this agent does not understand the request: {e}"));
            return;
        }
    };
    let RemoteRequest::Logs(request) = request;
    let stream = match open_logs(&snapshot, &runtime, me, &request).await {
        Ok(stream) => stream,
        Err(status) => {
            let first = serde_json::to_vec(&status).expect("a status serialises");
            if incoming.send(first).await.is_ok() {
                incoming.finish();
            }
            return;
        }
    };
    info!(%from, pod = %request.name, namespace = %request.namespace, follow = request.follow,
        "serving logs to another node");
    let first = serde_json::to_vec(&LogStatus::ok()).expect("a status serialises");
    if incoming.send(first).await.is_err() {
        return;
    }
    let mut stream = stream;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = incoming.closed() => {
                debug!(%from, pod = %request.name, "log reader went away");
                return;
            }
        };
        match next {
            Some(Ok(chunk)) => {
                if incoming.send(chunk.to_vec()).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                incoming.fail(&e.to_string());
                return;
            }
            None => break,
        }
    }
    incoming.finish();
}

/// The logs of a pod this node runs.
async fn open_logs(
    snapshot: &Snapshot,
    runtime: &AnyRuntime,
    me: NodeId,
    request: &LogRequest,
) -> Result<crate::runtime::LogStream, LogStatus> {
    let record = snapshot
        .records_of(&me)
        .find(|(_, r)| view::is_pod(r, &request.namespace, &request.name))
        .map(|(_, r)| r);
    let not_found =
        |message: String| LogStatus::failure(StatusCode::NOT_FOUND, "NotFound", message);
    let Some(record) = record else {
        return Err(not_found(format!(
            "pods \"{}\" not found in namespace {} on this node (it may have moved)",
            request.name, request.namespace
        )));
    };
    if !record
        .pod
        .spec
        .containers
        .iter()
        .any(|c| c.name == request.container)
    {
        return Err(LogStatus::failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "container {} is not valid for pod {}",
                request.container, request.name
            ),
        ));
    }
    let Some(uid) = record.pod.metadata.uid.as_deref() else {
        return Err(not_found("the pod has no runtime id yet".into()));
    };
    runtime
        .logs(uid, &request.container, request.follow, request.tail)
        .await
        .map_err(|e| not_found(e.to_string()))
}
