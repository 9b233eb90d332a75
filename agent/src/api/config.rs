//! API routes for config maps and secrets: list and get, each object as Kubernetes shapes it
//! (`kubectl get configmap|secret -o json`). They are written by `apply` and the objects API,
//! like every kind.
//!
//! A Secret's values are sealed in the replicated state ([`StoredObject::sealed`]); these
//! routes open them for each read. They read secrets from the store, not from the workload
//! snapshot: a secret is opened from its stored form anyway, and the store holds every one as
//! written (the snapshot follows it a moment later, and holds what it could decode), with its
//! `resourceVersion`. A secret read is an authorised read:
//! whenever the agent has an API token every route needs it (the API's middleware), and an API
//! that listens beyond loopback without a token (which the agent refuses to start, but these
//! routes do not count on it) answers secret reads 403. A secret that does not open is a 500
//! that names it, never its bytes.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_gossip::{Entry, ObjectKey};

use super::{Api, error, gone, k8s, needs_token};
use crate::manifest::{Kind, Resource, configmap_object, list_object, secret_object};
use crate::workload::snapshot::Object;
use crate::workload::stored::{DecodeError, StoredObject, UnsealError, object_key};

/// Where the API listens: put in every request's extensions by [`super::serve`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listening(pub(crate) SocketAddr);

#[derive(Deserialize)]
pub(super) struct NamespaceQuery {
    namespace: Option<String>,
}

/// Why secrets are not read by this request, if they are not: an API without a token serves
/// them only on loopback (the rule by which the agent requires a token, [`needs_token`]).
/// With a token, the API's middleware has checked it already.
fn secret_reads_refused(has_token: bool, listening: Option<SocketAddr>) -> Option<String> {
    if has_token {
        return None;
    }
    match listening {
        Some(addr) if !needs_token(&addr) => None,
        Some(addr) => Some(format!(
            "secrets are not served without an API token by an API that listens beyond \
             loopback ({addr}): configure the API token (shoal agent --api-token-file)"
        )),
        None => Some(
            "secrets are not served without an API token by an API that may listen beyond \
             loopback: configure the API token (shoal agent --api-token-file)"
                .to_owned(),
        ),
    }
}

/// Middleware of the secret routes: refuses the read with 403 when [`secret_reads_refused`]
/// says so.
pub(super) async fn authorise_secret_reads(
    State(api): State<Api>,
    request: Request,
    next: Next,
) -> Response {
    let listening = request.extensions().get::<Listening>().map(|l| l.0);
    match secret_reads_refused(api.token.is_some(), listening) {
        Some(message) => error(StatusCode::FORBIDDEN, "Forbidden", &message),
        None => next.run(request).await,
    }
}

/// A config map as `kubectl get configmap -o json` prints it (no `generation`: Kubernetes
/// gives config maps none).
fn config_map_json(object: &Object) -> Option<Value> {
    let Resource::ConfigMap(cm) = &object.resource else {
        return None;
    };
    let mut cm = cm.clone();
    cm.metadata.generation = None;
    Some(configmap_object(&cm))
}

/// What a secret that does not open is: never its bytes.
fn unseal_problem(e: &UnsealError) -> String {
    match e {
        UnsealError::Base64 => "its sealed data is not base64".to_owned(),
        UnsealError::Open(open) => format!("its sealed data {open}"),
        // The opened bytes may be values: not even the parser's message.
        UnsealError::Malformed(_) => {
            "its sealed data opened to something that is not a secret's data".to_owned()
        }
    }
}

/// The 500 of a secret that cannot be read: named, with why (never its bytes).
fn unreadable(key: &ObjectKey, why: &str) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        &format!(
            "secrets \"{}\" in namespace {} cannot be read: {why}",
            key.name, key.namespace
        ),
    )
}

/// A secret as the store holds it (an entry's value), its values opened, as `kubectl get
/// secret -o json` prints it (data in base64, the entry's `resourceVersion`); or why it cannot
/// be read.
fn secret_json(api: &Api, key: &ObjectKey, entry: &Entry) -> Result<Value, String> {
    let bytes = entry.value.as_deref().unwrap_or_default();
    // The parser's words may quote what it read: not for a secret.
    let stored = StoredObject::decode(bytes).map_err(|e| match e {
        DecodeError::Newer(_) => format!("it is {e}"),
        DecodeError::Malformed(_) => "its stored form is malformed".to_owned(),
    })?;
    let open = stored
        .unsealed(key, &api.secret_box)
        .map_err(|e| unseal_problem(&e))?;
    match open.resource() {
        Ok(Resource::Secret(mut secret)) => {
            secret.metadata.generation = None;
            secret.metadata.resource_version = Some(k8s::resource_version(entry));
            Ok(secret_object(&secret))
        }
        Ok(other) => Err(format!("it holds a {}", other.kind())),
        Err(e) => Err(e.to_string()),
    }
}

fn not_found(kind: Kind, name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{}s \"{name}\" not found", kind.resource_type()),
    )
}

/// `GET /api/v1/configmaps[?namespace=NS]`: a `List`, by namespace and name.
pub(super) async fn list_config_maps(
    State(api): State<Api>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    let snapshot = api.snapshot();
    let items = snapshot
        .objects_of(Kind::ConfigMap.key_kind())
        .filter(|(k, _)| q.namespace.as_deref().is_none_or(|ns| k.namespace == ns))
        .filter_map(|(_, o)| config_map_json(o))
        .collect();
    Json(list_object(items)).into_response()
}

/// `GET /api/v1/configmaps/{ns}/{name}`: `{"object": ...}`.
pub(super) async fn get_config_map(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let snapshot = api.snapshot();
    let key = object_key(Kind::ConfigMap, &namespace, &name);
    match snapshot.object(&key).and_then(|o| config_map_json(o)) {
        Some(object) => Json(json!({ "object": object })).into_response(),
        None => not_found(Kind::ConfigMap, &name),
    }
}

/// `GET /api/v1/secrets[?namespace=NS]`: a `List` with every secret's values (base64), by
/// namespace and name. One that cannot be read fails the list (500, naming it).
pub(super) async fn list_secrets(
    State(api): State<Api>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    let listed = match api
        .driver
        .list(Kind::Secret.key_kind().to_owned(), q.namespace)
        .await
    {
        Ok(listed) => listed,
        Err(e) => return gone(e),
    };
    let mut items = Vec::with_capacity(listed.len());
    for (key, entry) in &listed {
        match secret_json(&api, key, entry) {
            Ok(item) => items.push(item),
            Err(why) => return unreadable(key, &why),
        }
    }
    Json(list_object(items)).into_response()
}

/// `GET /api/v1/secrets/{ns}/{name}`: `{"object": ...}`, its values in base64.
pub(super) async fn get_secret(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = object_key(Kind::Secret, &namespace, &name);
    let entry = match api.driver.get(key.clone()).await {
        Ok(Some(entry)) if entry.value.is_some() => entry,
        Ok(_) => return not_found(Kind::Secret, &name),
        Err(e) => return gone(e),
    };
    match secret_json(&api, &key, &entry) {
        Ok(object) => Json(json!({ "object": object })).into_response(),
        Err(why) => unreadable(&key, &why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_need_a_token_beyond_loopback() {
        let loopback: SocketAddr = "127.0.0.1:7947".parse().unwrap();
        let loopback6: SocketAddr = "[::1]:7947".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:7947".parse().unwrap();
        let lan: SocketAddr = "192.168.1.5:7947".parse().unwrap();
        // With a token (checked by the API's middleware), wherever it listens.
        for addr in [loopback, everywhere, lan] {
            assert_eq!(secret_reads_refused(true, Some(addr)), None);
        }
        assert_eq!(secret_reads_refused(true, None), None);
        // Without one, on loopback only.
        assert_eq!(secret_reads_refused(false, Some(loopback)), None);
        assert_eq!(secret_reads_refused(false, Some(loopback6)), None);
        for addr in [everywhere, lan] {
            let why = secret_reads_refused(false, Some(addr)).expect("refused");
            assert!(why.contains("configure the API token"), "{why}");
            assert!(why.contains(&addr.to_string()), "{why}");
        }
        let why = secret_reads_refused(false, None).expect("refused when unknown");
        assert!(why.contains("configure the API token"), "{why}");
    }

    #[test]
    fn a_secret_that_does_not_open_is_named_never_shown() {
        let value = "hunter2-is-the-password";
        let why = unseal_problem(&UnsealError::Malformed(format!(
            "invalid type: string \"{value}\", expected a map"
        )));
        assert!(!why.contains(value), "{why}");
        let why = unseal_problem(&UnsealError::Open(crate::secret_box::OpenError::Forged));
        assert!(why.contains("does not open"), "{why}");
    }
}
