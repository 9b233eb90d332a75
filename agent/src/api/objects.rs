//! The raw objects API: `GET|PUT|DELETE /api/v1/objects/{kind}/{namespace}/{name}` and
//! `GET /api/v1/objects/{kind}`.
//!
//! Reads and deletes work by key, on any value the replicated state holds, readable or not: a
//! value an older or broken agent wrote can always be found and removed. Writes are validated
//! by the agent that receives them, as `apply` validates: the body must be one object of the
//! kind the path names (a manifest in YAML or JSON, or the stored form a `GET` returns), with
//! the path's namespace and name, and it must pass every check `apply` makes (namespace exists,
//! replica limits, service addresses). A refusal names the field and stores nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use shoal_gossip::ObjectKey;

use super::limits::human_bytes;
use super::workloads::{apply_resources, invalid, present};
use super::{Api, error, gone, k8s, not_written, written};
use crate::manifest::{self, Kind, NamespaceFrom, ParseOptions, Resource};
use crate::secret_box::SecretBox;
use crate::workload::stored::{DecodeError, StoredObject};

/// Largest object accepted, in bytes: a `PUT` body, and each object of an `apply` (lower when
/// the agent takes smaller requests: [`super::limits::BodyLimits`]). Twice Kubernetes' 1 MiB
/// limit of a config map's or secret's data ([`crate::manifest::MAX_CONFIG_BYTES`], which the
/// model enforces with its own message), so that the largest one fits in its manifest form
/// (base64 takes a third more).
pub(crate) const MAX_OBJECT: usize = 2 << 20;

/// The kinds objects may have, as the store names them (`namespace, pod, ...`).
pub(crate) fn known_kinds() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.key_kind())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key a path names, or the 400 to answer. Names follow Kubernetes' DNS subdomain rule.
fn object_key(kind: String, namespace: String, name: String) -> Result<ObjectKey, Box<Response>> {
    for (field, value) in [("kind", &kind), ("namespace", &namespace), ("name", &name)] {
        if !k8s::is_dns_label_ish(value) {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "{field}: {value:?} must be 1-253 characters of lower-case letters, digits, '-' and '.'"
                ),
            )));
        }
    }
    Ok(ObjectKey {
        kind,
        namespace,
        name,
    })
}

/// The one resource a `PUT` body holds, checked against the path: `Err` holds every problem,
/// each naming its field.
///
/// The body is either the stored form (what `GET` returns: `{"format", "generation", ...,
/// "object"}`) or a manifest of one object (YAML or JSON, as `shoal apply -f` reads). A
/// manifest that names no namespace gets the path's.
pub(crate) fn resource_of_body(
    kind: Kind,
    key: &ObjectKey,
    body: &[u8],
    secret_box: &SecretBox,
) -> Result<Resource, Vec<String>> {
    let resource = match StoredObject::decode(body) {
        // A sealed secret (what `GET` returns for one) is opened first: written as it is, it
        // would lose its data.
        Ok(stored) => stored
            .unsealed(key, secret_box)
            .map_err(|e| vec![format!("sealed: {e}")])?
            .resource()
            .map_err(|e| vec![format!("object: {e}")])?,
        Err(newer @ DecodeError::Newer(_)) => return Err(vec![format!("format: {newer}")]),
        Err(DecodeError::Malformed(_)) => {
            let options = ParseOptions {
                namespace: kind.is_namespaced().then(|| key.namespace.clone()),
                namespace_from: NamespaceFrom::Path,
                ..ParseOptions::default()
            };
            let mut resources = manifest::parse_with("body", body, &options)
                .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            if resources.len() != 1 {
                return Err(vec![format!(
                    "body: holds {} objects; a PUT takes exactly one (apply several with POST /api/v1/apply)",
                    resources.len()
                )]);
            }
            resources.remove(0)
        }
    };
    let got = resource.key();
    let mut problems = Vec::new();
    if got.kind != kind {
        problems.push(format!(
            "kind: {:?} does not match the kind of the request's path ({}, a {})",
            got.kind.as_str(),
            key.kind,
            kind.as_str()
        ));
    }
    if got.name != key.name {
        problems.push(format!(
            "metadata.name: {:?} does not match the name of the request's path {:?}",
            got.name, key.name
        ));
    }
    if kind.is_namespaced() && got.kind.is_namespaced() && got.namespace != key.namespace {
        problems.push(format!(
            "metadata.namespace: {:?} does not match the namespace of the request's path {:?}",
            got.namespace, key.namespace
        ));
    }
    if problems.is_empty() {
        Ok(resource)
    } else {
        Err(problems)
    }
}

/// `PUT /api/v1/objects/{kind}/{namespace}/{name}`: writes one object, validated as `apply`
/// validates it; answered once durable.
pub(super) async fn put_object(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let key = match object_key(kind, namespace, name) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let Some(kind) = Kind::from_key_kind(&key.kind) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "kind: the server doesn't have a resource type {:?} (objects of kinds {} can be \
                 written)",
                key.kind,
                known_kinds()
            ),
        );
    };
    if !kind.is_namespaced() {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "kind: a {} is not namespaced and has no key under /api/v1/objects/{}/{{namespace}}/{{name}}: use POST /api/v1/apply",
                kind.as_str(),
                key.kind
            ),
        );
    }
    let limit = api.limits.object_bytes;
    if body.len() > limit {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!(
                "{} \"{}\": the body takes {}, over this agent's limit of {} per object",
                kind.resource_type(),
                key.name,
                human_bytes(body.len()),
                human_bytes(limit)
            ),
        );
    }
    let resource = match resource_of_body(kind, &key, &body, &api.secret_box) {
        Ok(r) => r,
        Err(problems) => {
            let problems: Vec<String> = problems
                .into_iter()
                .map(|p| format!("{} \"{}\" is invalid: {p}", kind.resource_type(), key.name))
                .collect();
            return invalid(&problems);
        }
    };
    let (applied, saved) = match apply_resources(&api, vec![resource], Vec::new(), false).await {
        Ok(done) => done,
        Err(refusal) => return refusal,
    };
    let Some(one) = applied.into_iter().next() else {
        return gone(crate::driver::Gone);
    };
    let entry = match one.entry {
        Some(entry) => Some(entry),
        // Unchanged: the version already stored.
        None => match api.driver.get(key.clone()).await {
            Ok(entry) => entry,
            Err(e) => return gone(e),
        },
    };
    let response = Json(json!({
        "outcome": one.outcome.as_str(),
        "resourceVersion": entry.as_ref().map(k8s::resource_version),
    }))
    .into_response();
    written(response, &saved)
}

/// `DELETE /api/v1/objects/{kind}/{namespace}/{name}`: deletes whatever the key holds,
/// readable or not; answered once durable.
pub(super) async fn delete_object(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Response {
    let key = match object_key(kind, namespace, name) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Err(r) = present(&api, &key, || format!("{key} not found")).await {
        return r;
    }
    match api.driver.write(key, None).await {
        Ok(made) => written(
            Json(json!({ "resourceVersion": k8s::resource_version(&made.value) })).into_response(),
            &made.saved,
        ),
        Err(e) => not_written(e),
    }
}

/// `GET /api/v1/objects/{kind}/{namespace}/{name}`: the stored bytes.
pub(super) async fn get_object(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Response {
    let key = match object_key(kind, namespace, name) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match api.driver.get(key.clone()).await {
        Ok(Some(entry)) => match &entry.value {
            Some(value) => {
                let mut headers = HeaderMap::new();
                if let Ok(v) = k8s::resource_version(&entry).parse() {
                    headers.insert("x-resource-version", v);
                }
                (headers, value.clone()).into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{key} not found"),
            ),
        },
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{key} not found"),
        ),
        Err(e) => gone(e),
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    namespace: Option<String>,
}

/// `GET /api/v1/objects/{kind}[?namespace=NS]`: every value of the kind, readable or not.
pub(super) async fn list_objects(
    State(api): State<Api>,
    Path(kind): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    match api.driver.list(kind, query.namespace).await {
        Ok(items) => {
            let items: Vec<_> = items
                .into_iter()
                .map(|(key, entry)| {
                    let value = entry.value.as_deref().unwrap_or_default();
                    json!({
                        "namespace": key.namespace,
                        "name": key.name,
                        "resourceVersion": k8s::resource_version(&entry),
                        "value": String::from_utf8_lossy(value),
                    })
                })
                .collect();
            Json(json!({ "items": items })).into_response()
        }
        Err(e) => gone(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::view::apply_one;

    const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  \
        replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: \
        {app: web}}\n    spec:\n      containers:\n      - {name: a, image: x}\n";

    fn test_box() -> SecretBox {
        SecretBox::new(&crate::net::ClusterKey::from_bytes([7; 32]))
    }

    fn key(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: "deployment".into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn refusal(body: &str, key: &ObjectKey) -> String {
        resource_of_body(Kind::Deployment, key, body.as_bytes(), &test_box())
            .expect_err("refused")
            .join("; ")
    }

    #[test]
    fn a_manifest_of_the_path_s_kind_namespace_and_name_is_taken() {
        let r = resource_of_body(
            Kind::Deployment,
            &key("prod", "web"),
            WEB.as_bytes(),
            &test_box(),
        )
        .unwrap();
        let k = r.key();
        assert_eq!(
            (k.kind, k.namespace.as_str(), k.name.as_str()),
            (Kind::Deployment, "prod", "web")
        );
        // JSON, naming the namespace itself.
        let json = serde_json::to_string(
            &serde_json::from_slice::<serde_json::Value>(&r.to_stored()).unwrap(),
        )
        .unwrap();
        assert!(
            resource_of_body(
                Kind::Deployment,
                &key("prod", "web"),
                json.as_bytes(),
                &test_box()
            )
            .is_ok()
        );
    }

    #[test]
    fn the_stored_form_a_get_returns_is_taken_back() {
        let r = manifest::parse("web.yaml", WEB.as_bytes())
            .unwrap()
            .remove(0);
        let (_, stored) = apply_one(&r, None, 1, || "uid".into());
        let bytes = stored.unwrap().encode();
        let back = resource_of_body(
            Kind::Deployment,
            &key("default", "web"),
            &bytes,
            &test_box(),
        )
        .unwrap();
        assert_eq!(back.to_stored(), r.to_stored());
        // A stored form of another name is refused like a manifest.
        let err = resource_of_body(
            Kind::Deployment,
            &key("default", "api"),
            &bytes,
            &test_box(),
        )
        .unwrap_err()
        .join("; ");
        assert!(err.starts_with("metadata.name: \"web\""), "{err}");
    }

    #[test]
    fn garbage_is_refused_naming_where() {
        let err = refusal("garbage{", &key("default", "evil"));
        assert!(err.starts_with("body: doc 1"), "{err}");
        let err = refusal("{\"kind\": \"Deployment\"}", &key("default", "evil"));
        assert!(err.contains("apiVersion"), "{err}");
        let err = refusal(
            &WEB.replace("replicas: 2", "replicas: lots"),
            &key("default", "web"),
        );
        assert!(err.contains("spec.replicas"), "{err}");
    }

    #[test]
    fn an_object_other_than_the_path_names_is_refused_by_field() {
        let err = refusal(WEB, &key("default", "evil"));
        assert_eq!(
            err,
            "metadata.name: \"web\" does not match the name of the request's path \"evil\""
        );
        let err = refusal(
            &WEB.replace("name: web\n", "name: web\n  namespace: other\n"),
            &key("prod", "web"),
        );
        assert!(
            err.contains("metadata.namespace")
                && err.contains(
                    "\"other\" does not match the namespace \"prod\" of the request's path"
                ),
            "{err}"
        );
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: a, image: x}\n";
        let err = refusal(pod, &key("default", "web"));
        assert!(err.starts_with("kind: \"Pod\" does not match"), "{err}");
        let two = format!("{WEB}---\n{WEB}");
        let err = refusal(
            &two.replacen("name: web\n", "name: api\n", 1),
            &key("default", "web"),
        );
        assert!(err.contains("holds 2 objects"), "{err}");
    }
}
