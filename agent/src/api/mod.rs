//! The agent's HTTP+JSON API. Every agent serves the same API: no node is special.
//!
//! Routes (all JSON unless said otherwise):
//! - `GET /healthz`: `ok` once the agent runs.
//! - `GET /api/v1/nodes`: the members as a Kubernetes-shaped `List` of `Node`s.
//! - `POST /api/v1/join` `{"peers": ["host:port", ...]}`: join through these peers.
//! - `POST /api/v1/leave`: leave the cluster gracefully; the agent then stops.
//! - `GET|PUT|DELETE /api/v1/objects/{kind}/{namespace}/{name}`: replicated objects by key. `GET`
//!   and `DELETE` take any value the key holds, readable or not; a `PUT` body is one object of
//!   the path's kind, namespace and name (a manifest, or the stored form `GET` returns),
//!   validated as `apply` validates it ([`objects`]). Writes are answered once durable here.
//! - `GET /api/v1/objects/{kind}[?namespace=NS]`: list of `{namespace, name, value}`.
//! - `GET /api/v1/limits`: the largest request bodies taken (`requestBytes`: an apply,
//!   `objectBytes`: one object); a larger body is answered 413 with the limit ([`limits`]).
//! - `GET /api/v1/configmaps[?namespace=NS]`, `GET /api/v1/secrets[?namespace=NS]`: `List`s
//!   of the objects as Kubernetes shapes them (secrets' values in base64);
//!   `GET /api/v1/configmaps/{ns}/{name}`, `GET /api/v1/secrets/{ns}/{name}`: `{"object"}`.
//!   Secret reads are authorised reads ([`config`]).
//! - `GET /api/v1/stats`: counters (gossip, network, persistence, the mesh's per service, the
//!   cluster DNS, the projector with the keys of values it cannot read) and the join status
//!   (`join`: peers, whether it still joins, who refused it or could not be reached).
//!
//! Authentication: when the API listens beyond loopback, every request but `/healthz` needs
//! `Authorization: Bearer <token>`; the agent refuses to start such a listener without a token,
//! and secrets are never served by one without a token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use shoal_gossip::ClockVerdict;

use tokio::sync::watch;

use crate::clock::wall_ms;
use crate::driver::{DriverHandle, Gone, Saved, WriteError};
use crate::net::NetHandle;
use crate::runtime::AnyRuntime;
use crate::workload::plan::Plan;
use crate::workload::projector::ProjectorCounters;
use crate::workload::snapshot::Snapshot;

mod config;
mod k8s;
pub(crate) mod limits;
pub(crate) mod logs_remote;
mod objects;
mod workloads;

/// What the API serves from: the agent's parts it reads and drives.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) driver: DriverHandle,
    /// The workload state, as the projector publishes it.
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The projector's counters.
    pub(crate) projector: Arc<ProjectorCounters>,
    /// The bearer token clients must present, if any.
    pub(crate) token: Option<Arc<str>>,
    pub(crate) plans: watch::Receiver<Arc<Plan>>,
    pub(crate) runtime: Arc<AnyRuntime>,
    pub(crate) net: NetHandle,
    pub(crate) mesh: shoal_mesh::Mesh,
    pub(crate) service_range: crate::workload::service::ServiceRange,
    pub(crate) dns: Arc<crate::dns::DnsCounters>,
    /// Seals secrets' values before they are written, opens them for authorised reads.
    pub(crate) secret_box: crate::secret_box::SecretBox,
    /// How large request bodies may be.
    pub(crate) limits: limits::BodyLimits,
}

impl Api {
    /// The latest snapshot of the workload state.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }
}

/// Builds the router.
pub(crate) fn router(state: Api) -> Router {
    let v1 = Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(node))
        .route("/api/v1/join", post(join))
        .route("/api/v1/leave", post(leave))
        .route("/api/v1/stats", get(stats))
        .route(
            "/api/v1/objects/{kind}/{namespace}/{name}",
            get(objects::get_object)
                .put(objects::put_object)
                .delete(objects::delete_object)
                .layer(DefaultBodyLimit::max(state.limits.object_bytes)),
        )
        .route("/api/v1/objects/{kind}", get(objects::list_objects))
        .route(
            "/api/v1/apply",
            post(workloads::apply).layer(DefaultBodyLimit::max(state.limits.request_bytes)),
        )
        .route("/api/v1/delete", post(workloads::delete))
        .route("/api/v1/pods", get(workloads::list_pods))
        .route("/api/v1/pods/{namespace}/{name}", get(workloads::get_pod))
        .route(
            "/api/v1/pods/{namespace}/{name}/log",
            get(workloads::pod_log),
        )
        .route("/api/v1/deployments", get(workloads::list_deployments))
        .route(
            "/api/v1/deployments/{namespace}/{name}",
            get(workloads::get_deployment),
        )
        .route(
            "/api/v1/deployments/{namespace}/{name}/scale",
            post(workloads::scale),
        )
        .route(
            "/api/v1/deployments/{namespace}/{name}/undo",
            post(workloads::undo),
        )
        .route("/api/v1/namespaces", get(workloads::list_namespaces))
        .route("/api/v1/services", get(workloads::list_services))
        .route(
            "/api/v1/services/{namespace}/{name}",
            get(workloads::get_service),
        )
        .route("/api/v1/endpoints", get(workloads::list_endpoints))
        .route("/api/v1/configmaps", get(config::list_config_maps))
        .route(
            "/api/v1/configmaps/{namespace}/{name}",
            get(config::get_config_map),
        )
        .route(
            "/api/v1/secrets",
            get(config::list_secrets).layer(middleware::from_fn_with_state(
                state.clone(),
                config::authorise_secret_reads,
            )),
        )
        .route(
            "/api/v1/secrets/{namespace}/{name}",
            get(config::get_secret).layer(middleware::from_fn_with_state(
                state.clone(),
                config::authorise_secret_reads,
            )),
        )
        .route("/api/v1/limits", get(limits::limits))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_bodies,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(v1)
        .with_state(state)
}

/// Serves the API until `shutdown` resolves. Every request carries where the API listens
/// ([`config::Listening`]: secrets are served beyond loopback only with a token).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(Extension(config::Listening(listener.local_addr()?)));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Whether an API address needs a token (anything but loopback).
pub(crate) fn needs_token(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

async fn authenticate(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(expected) = api.token.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare in constant time: the token is a secret.
    let ok = given.is_some_and(|g| {
        g.len() == expected.len()
            && g.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong API token",
        )
    }
}

/// A Kubernetes-style `Status` error body.
pub(crate) fn error(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

pub(crate) fn gone(_: Gone) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the agent is shutting down",
    )
}

/// An object write that was not made: the agent is stopping, or this node's clock disagrees
/// with its members' (503 either way: another node can take the write), or its disk is full
/// (507) or failing (503). A node that has not compared its clock yet says when to retry.
pub(crate) fn not_written(e: WriteError) -> Response {
    match e {
        WriteError::Gone(gone_) => gone(gone_),
        WriteError::Disk(refused) if refused.0.full() => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "InsufficientStorage",
            &refused.to_string(),
        ),
        WriteError::Disk(refused) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &refused.to_string(),
        ),
        WriteError::Clock(refused) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &refused.to_string(),
            );
            if refused.0.verdict == ClockVerdict::NotCompared {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            response
        }
    }
}

/// The answer to a write that was made: `response` once the write is on this node's disk. While
/// it is not yet (the disk is full or failing), `202 Accepted` with a `Warning` header that says
/// so: never an error, since the write is made and spreads to every node; this node saves it
/// once its disk takes writes again.
pub(crate) fn written(mut response: Response, saved: &Saved) -> Response {
    if let Saved::No(why) = saved {
        *response.status_mut() = StatusCode::ACCEPTED;
        // Header values are visible ASCII: anything else (a path's) becomes '?'.
        let text: String = format!("made, but not saved on this node's disk yet: {why}")
            .chars()
            .map(|c| match c {
                '"' => '\'',
                ' '..='~' => c,
                _ => '?',
            })
            .collect();
        if let Ok(value) = header::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

async fn nodes(State(api): State<Api>) -> Response {
    let view = api.driver.view();
    let clock = api.driver.clock();
    Json(k8s::node_list(&view, &clock, &api.snapshot(), wall_ms())).into_response()
}

/// `GET /api/v1/nodes/{name}`: one node and its events (for `describe node`).
async fn node(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let view = api.driver.view();
    let clock = api.driver.clock();
    let snapshot = api.snapshot();
    let list = k8s::node_list(&view, &clock, &snapshot, wall_ms());
    let found = list["items"].as_array().and_then(|items| {
        items
            .iter()
            .find(|n| n["metadata"]["name"] == name.as_str())
    });
    let Some(object) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
        );
    };
    let info = view
        .members
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| snapshot.member(&m.id))
        .and_then(|s| s.info.as_ref());
    Json(json!({ "object": object, "events": k8s::node_events(info) })).into_response()
}

#[derive(Deserialize)]
struct JoinRequest {
    peers: Vec<String>,
}

async fn join(State(api): State<Api>, body: Bytes) -> Response {
    let request: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("expected {{\"peers\": [\"host:port\", ...]}}: {e}"),
            );
        }
    };
    if request.peers.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "peers: need at least one address",
        );
    }
    for peer in &request.peers {
        if let Err(e) = crate::net::parse_dial_addr(peer) {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("peers: {peer:?} is not host:port or a multiaddr: {e}"),
            );
        }
    }
    match api.driver.join(request.peers.clone()).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "joining": request.peers })),
        )
            .into_response(),
        Err(e) => gone(e),
    }
}

async fn leave(State(api): State<Api>) -> Response {
    match api.driver.leave().await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "left": true }))).into_response(),
        Err(e) => gone(e),
    }
}

async fn stats(State(api): State<Api>) -> Response {
    match api.driver.stats().await {
        Ok(stats) => {
            let mut value = serde_json::to_value(stats).unwrap_or_default();
            // Per service: connections, bytes, errors, connect latency (both directions).
            value["mesh"] = serde_json::to_value(api.mesh.metrics()).unwrap_or_default();
            value["dns"] = api.dns.snapshot();
            // The workload snapshot: changes applied, values that failed to decode, sizes.
            value["projector"] =
                serde_json::to_value(api.projector.stats(&api.snapshot())).unwrap_or_default();
            Json(value).into_response()
        }
        Err(e) => gone(e),
    }
}
