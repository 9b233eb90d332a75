//! How large a request body the API takes, per route, and the answer when one is larger: 413
//! with a Kubernetes-style `Status` that states the limit (`details.limitBytes`), whether the
//! body announced its length (refused before it is kept: it is read and dropped, so that the
//! client gets to read the answer) or not (refused once the limit is crossed while reading). `GET /api/v1/limits` tells clients the limits, so that the CLI
//! never sends what would be refused and splits a large `apply` into parts under them.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::json;

use super::Api;
use super::objects::MAX_OBJECT;

/// Default of the largest `apply` request (`shoal agent --max-request-bytes`).
pub(crate) const DEFAULT_MAX_REQUEST: usize = 64 << 20;
/// Smallest `--max-request-bytes` accepted.
pub(crate) const MIN_MAX_REQUEST: usize = 64 << 10;
/// Largest body of the other routes (join, delete, scale, undo: a few small fields).
const SMALL_REQUEST: usize = 64 << 10;
/// Largest refused body read (and dropped) before the answer, so that its sender gets to read
/// the answer; a larger one is answered at once and its connection closed.
const MAX_DRAINED: usize = 256 << 20;
/// Longest a refused body may take to arrive before the answer goes anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Room an `apply` request needs around its objects (`{"objects":[...],"dryRun":false}`),
/// kept free so that any object under the object limit fits a request alone.
pub(crate) const REQUEST_OVERHEAD: usize = 4 << 10;

/// The agent's body limits, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BodyLimits {
    /// Largest `apply` request: the objects of one `apply` written at once.
    pub(crate) request_bytes: usize,
    /// Largest object: a `PUT` body, and each object of an `apply` (at most 1 MiB, and small
    /// enough to fit a request alone).
    pub(crate) object_bytes: usize,
}

impl BodyLimits {
    /// The limits for a largest request of `request_bytes` (at least [`MIN_MAX_REQUEST`]).
    pub(crate) fn new(request_bytes: usize) -> BodyLimits {
        let request_bytes = request_bytes.max(MIN_MAX_REQUEST);
        BodyLimits {
            request_bytes,
            object_bytes: MAX_OBJECT.min(request_bytes - REQUEST_OVERHEAD),
        }
    }

    /// The largest body `method path` takes.
    pub(crate) fn of_route(&self, method: &Method, path: &str) -> usize {
        if path == "/api/v1/apply" {
            self.request_bytes
        } else if *method == Method::PUT && path.starts_with("/api/v1/objects/") {
            self.object_bytes
        } else {
            SMALL_REQUEST
        }
    }
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits::new(DEFAULT_MAX_REQUEST)
    }
}

/// A byte count for people: `1.5 MiB (1572864 bytes)`.
pub(crate) fn human_bytes(n: usize) -> String {
    let (value, unit) = if n >= 1 << 20 {
        (n as f64 / (1 << 20) as f64, "MiB")
    } else {
        (n as f64 / (1 << 10) as f64, "KiB")
    };
    format!("{value:.1} {unit} ({n} bytes)")
}

/// The 413 for a body over `limit` (`size`: its length, when known).
fn too_large(method: &Method, path: &str, size: Option<usize>, limit: usize) -> Response {
    let size = size.map_or_else(String::new, |n| format!(" of {}", human_bytes(n)));
    let hint = if path == "/api/v1/apply" {
        " (shoal agent --max-request-bytes; `shoal apply` sends larger sets in parts)"
    } else if path.starts_with("/api/v1/objects/") {
        " (one object)"
    } else {
        ""
    };
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "reason": "RequestEntityTooLarge",
            "code": 413,
            "message": format!(
                "the request body{size} is over this agent's limit of {} for {method} {path}{hint}",
                human_bytes(limit)
            ),
            "details": { "limitBytes": limit },
        })),
    )
        .into_response()
}

/// Refuses a body over its route's limit before it is read, when it announces its length;
/// a body that did not, and crossed the limit while being read, gets the same answer.
pub(super) async fn limit_bodies(State(api): State<Api>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let limit = api.limits.of_route(&method, &path);
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = announced.filter(|&n| n > limit) {
        tracing::debug!(%method, %path, size, limit, "request body over the limit");
        // A client that sends its whole body before it reads the answer (most do, without
        // `Expect: 100-continue`) would see the connection break under it instead of this
        // answer: the body is read and dropped first, unless it is huge.
        if size <= MAX_DRAINED {
            let mut chunks = request.into_body().into_data_stream();
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(Ok(_)) = chunks.next().await {}
            })
            .await;
            if drained.is_err() {
                tracing::debug!(%method, %path, "a refused body took too long to arrive");
            }
        }
        let mut answer = too_large(&method, &path, announced, limit);
        answer.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return answer;
    }
    let response = next.run(request).await;
    // The extractor's own refusal (plain text) once an unannounced body crossed the limit.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return too_large(&method, &path, None, limit);
    }
    response
}

/// `GET /api/v1/limits`: the body limits, in bytes.
pub(super) async fn limits(State(api): State<Api>) -> Response {
    Json(api.limits).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_object_under_the_object_limit_fits_a_request_alone() {
        for request in [0, MIN_MAX_REQUEST, 256 << 10, 1 << 20, DEFAULT_MAX_REQUEST] {
            let l = BodyLimits::new(request);
            assert!(l.request_bytes >= MIN_MAX_REQUEST);
            assert!(
                l.object_bytes + REQUEST_OVERHEAD <= l.request_bytes,
                "{l:?}"
            );
            assert!(l.object_bytes <= MAX_OBJECT);
        }
        let l = BodyLimits::default();
        assert_eq!((l.request_bytes, l.object_bytes), (64 << 20, 2 << 20));
        assert_eq!(l.of_route(&Method::POST, "/api/v1/apply"), 64 << 20);
        assert_eq!(
            l.of_route(&Method::PUT, "/api/v1/objects/pod/default/x"),
            2 << 20
        );
        assert_eq!(l.of_route(&Method::POST, "/api/v1/join"), SMALL_REQUEST);
    }

    #[test]
    fn sizes_read_for_people_with_the_exact_count() {
        assert_eq!(human_bytes(1 << 20), "1.0 MiB (1048576 bytes)");
        assert_eq!(human_bytes(262_144), "256.0 KiB (262144 bytes)");
    }
}
