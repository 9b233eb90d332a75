//! API routes for workloads: apply, delete, get/describe pods, deployments and services, the
//! endpoints of services, scale, rollout undo, logs. Any agent accepts any of them
//! (masterless): writes go into the replicated state of the node that received them and gossip
//! from there.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::limits::human_bytes;
use super::{Api, error, gone, not_written, written};
use crate::clock::wall_ms;
use crate::driver::Saved;
use crate::manifest::{Kind, Resource};
use crate::runtime::Runtime;
use crate::workload::batch::Batch;
use crate::workload::plan;
use crate::workload::service::{self, ServiceEntry};
use crate::workload::snapshot::Snapshot;
use crate::workload::stored::{StoredObject, object_key};
use crate::workload::view;

/// The workload snapshot with every stored Service, read from the store: services must be
/// complete and current for addresses to be assigned without collisions.
async fn snapshot_with_services(api: &Api) -> Result<Snapshot, Response> {
    let snapshot = api.snapshot();
    let listed = api
        .driver
        .list(Kind::Service.key_kind().to_owned(), None)
        .await
        .map_err(gone)?;
    let listed = listed
        .into_iter()
        .filter_map(|(key, entry)| {
            let stored = StoredObject::decode(entry.value.as_deref()?).ok()?;
            Some((key, stored))
        })
        .collect();
    Ok(snapshot.with_objects(Kind::Service.key_kind(), listed))
}

/// The replicas the workloads of `snapshot` other than `except` ask for.
fn asked_elsewhere(
    snapshot: &Snapshot,
    except: &std::collections::BTreeSet<shoal_gossip::ObjectKey>,
) -> u64 {
    snapshot
        .objects()
        .filter(|(k, _)| !except.contains(*k))
        .map(|(_, o)| u64::from(plan::asked_replicas(&o.resource)))
        .sum()
}

#[derive(Deserialize)]
pub(super) struct NamespaceQuery {
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ApplyRequest {
    /// Objects in the manifest layer's stored form.
    objects: Vec<Value>,
    #[serde(default)]
    dry_run: bool,
}

async fn stored(api: &Api, key: shoal_gossip::ObjectKey) -> Result<Option<StoredObject>, Response> {
    match api.driver.get(key).await {
        Ok(entry) => Ok(entry
            .and_then(|e| e.value)
            .and_then(|v| StoredObject::decode(&v).ok())),
        Err(e) => Err(gone(e)),
    }
}

/// A stored Deployment and its key, or the 404 (or 503) to answer.
async fn stored_deployment(
    api: &Api,
    namespace: &str,
    name: &str,
) -> Result<(shoal_gossip::ObjectKey, StoredObject), Response> {
    let key = object_key(Kind::Deployment, namespace, name);
    match stored(api, key.clone()).await? {
        Some(old) => Ok((key, old)),
        None => Err(error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("deployments.apps \"{name}\" not found"),
        )),
    }
}

/// A new object's uid: a random (version 4) UUID, as Kubernetes gives.
fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// `POST /api/v1/apply`: all objects are validated first; if any is invalid, nothing is
/// written. Namespaces are written first; an object in a namespace that does not exist (other
/// than `default`, or one created by the same apply) is refused, as Kubernetes does.
pub(super) async fn apply(State(api): State<Api>, body: Bytes) -> Response {
    let request: ApplyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("expected {{\"objects\": [...]}}: {e}"),
            );
        }
    };
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    let limit = api.limits.object_bytes;
    for (i, object) in request.objects.iter().enumerate() {
        let bytes = serde_json::to_vec(object).unwrap_or_default();
        match Resource::from_stored(&bytes) {
            Ok(r) if bytes.len() > limit => problems.push(format!(
                "{}: the object takes {}, over this agent's limit of {} per object",
                r.key(),
                human_bytes(bytes.len()),
                human_bytes(limit)
            )),
            Ok(r) => resources.push(r),
            Err(e) => problems.push(format!("object {}: {e}", i + 1)),
        }
    }
    match apply_resources(&api, resources, problems, request.dry_run).await {
        Ok((applied, saved)) => {
            let results: Vec<Value> = applied.iter().map(Applied::json).collect();
            written(Json(json!({ "results": results })).into_response(), &saved)
        }
        Err(refusal) => refusal,
    }
}

/// What applying one resource did.
pub(super) struct Applied {
    pub(super) key: crate::manifest::ResourceKey,
    pub(super) outcome: crate::manifest::Outcome,
    /// The entry written (`None`: unchanged, or a dry run).
    pub(super) entry: Option<shoal_gossip::Entry>,
}

impl Applied {
    fn json(&self) -> Value {
        json!({
            "kind": self.key.kind.as_str(),
            "resource": self.key.kind.resource_type(),
            "namespace": self.key.namespace,
            "name": self.key.name,
            "outcome": self.outcome.as_str(),
        })
    }
}

/// The answer to a write refused for `problems`: 422 `Invalid`, every problem in the message.
pub(super) fn invalid(problems: &[String]) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": "Invalid", "code": 422,
            "message": format!("nothing was applied: {}", problems.join("; ")),
            "details": problems,
        })),
    )
        .into_response()
}

/// Checks parsed resources against the cluster's state as `apply` does (their namespaces
/// exist, replica limits, services' addresses) and, unless `dry_run`, writes them all at once
/// (one durable commit), Namespaces first. `problems` are refusals found before (parsing):
/// with any problem, nothing is written and the error is the answer to send. Every write of
/// an object through the API goes through here, whatever route it came by. Also says whether
/// what it wrote is on this node's disk yet (see [`written`]).
pub(super) async fn apply_resources(
    api: &Api,
    mut resources: Vec<Resource>,
    mut problems: Vec<String>,
    dry_run: bool,
) -> Result<(Vec<Applied>, Saved), Response> {
    let snapshot = snapshot_with_services(api).await?;
    let mut namespaces: std::collections::BTreeSet<String> = snapshot
        .objects_of(Kind::Namespace.key_kind())
        .map(|(k, _)| k.name.clone())
        .collect();
    namespaces.insert("default".into());
    for r in &resources {
        if let Resource::Namespace(ns) = r {
            namespaces.insert(ns.metadata.name.clone());
        }
    }
    for r in &resources {
        let key = r.key();
        if key.kind.is_namespaced() && !namespaces.contains(&key.namespace) {
            problems.push(format!(
                "{}/{}: namespaces \"{}\" not found",
                key.kind.resource_type(),
                key.name,
                key.namespace
            ));
        }
    }
    // Replica limits: what the rest of the cluster asks, then each workload of this apply.
    let limits = plan::cluster_limits(&snapshot);
    let applying: std::collections::BTreeSet<_> = resources.iter().map(view::key_of).collect();
    let mut asked = asked_elsewhere(&snapshot, &applying);
    for r in &resources {
        let replicas = plan::asked_replicas(r);
        if replicas == 0 {
            continue;
        }
        if let Some(reason) = limits.refusal(replicas, asked) {
            let k = r.key();
            let field = if k.kind == Kind::Deployment {
                "spec.replicas: "
            } else {
                ""
            };
            problems.push(format!(
                "{}/{}: {field}{reason}",
                k.kind.resource_type(),
                k.name
            ));
        }
        asked += u64::from(replicas);
    }
    // Services get their cluster IP and node ports now, each seeing the ones before it.
    let mut services = service::services(&snapshot);
    let now = wall_ms();
    for r in &mut resources {
        let Resource::Service(svc) = r else {
            continue;
        };
        match service::prepare(api.service_range, &services, svc) {
            Ok(prepared) => {
                let k = Resource::Service(prepared.clone()).key();
                let (created_ms, uid) = services
                    .iter()
                    .find(|e| e.namespace == k.namespace && e.name == k.name)
                    .map_or((now, String::new()), |e| (e.created_ms, e.uid.clone()));
                services.retain(|e| !(e.namespace == k.namespace && e.name == k.name));
                services.push(ServiceEntry {
                    namespace: k.namespace,
                    name: k.name,
                    created_ms,
                    uid,
                    service: prepared.clone(),
                });
                *svc = prepared;
            }
            Err(errors) => {
                for e in errors {
                    problems.push(format!("service/{}: {e}", svc.metadata.name));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(invalid(&problems));
    }
    // Deployments that roll when the config they read changes carry its digest.
    let secret_box = api.secret_box.clone();
    view::stamp_config_digests(&mut resources, &snapshot, |key, r| {
        let (_, new) = view::apply_one(r, None, now, String::new);
        let mut new = new.expect("a new object is created");
        new.seal(key, &secret_box);
        new
    });
    resources.sort_by_key(|r| r.kind() != Kind::Namespace);
    let mut applied = Vec::new();
    let mut changed = Vec::new();
    for r in &resources {
        let key = view::key_of(r);
        // A secret is compared with what it holds, opened here only.
        let old = match stored(api, key.clone()).await? {
            Some(old) if old.sealed.is_some() => {
                Some(old.unsealed(&key, &api.secret_box).unwrap_or(old))
            }
            old => old,
        };
        if let Some(why) = old
            .as_ref()
            .and_then(|o| o.resource().ok())
            .and_then(|o| crate::manifest::immutable_change(&o, r))
        {
            problems.push(format!("{} {:?} is invalid: {why}", r.kind(), r.name()));
            continue;
        }
        let (outcome, new) = view::apply_one(r, old.as_ref(), now, new_uid);
        if let Some(mut new) = new {
            new.seal(&key, &api.secret_box);
            changed.push((key, new));
        }
        applied.push(Applied {
            key: r.key(),
            outcome,
            entry: None,
        });
    }
    if !problems.is_empty() {
        return Err(invalid(&problems));
    }
    // Objects written together are taken together by every node's view (see
    // `workload::batch`): no node plans from part of an apply.
    let batch = (changed.len() > 1).then(|| Batch {
        id: rand::random(),
        size: changed.len() as u32,
        at_ms: now,
    });
    let writes: Vec<_> = changed
        .into_iter()
        .map(|(key, mut new)| {
            new.batch = batch;
            (key, Some(new.encode()))
        })
        .collect();
    // Everything at once: one durable commit, so an apply is never half written.
    let mut saved = Saved::Yes;
    if !dry_run && !writes.is_empty() {
        let made = api.driver.write_many(writes).await.map_err(not_written)?;
        saved = made.saved;
        let mut entries = made.value.into_iter();
        for a in applied
            .iter_mut()
            .filter(|a| a.outcome != crate::manifest::Outcome::Unchanged)
        {
            a.entry = entries.next();
        }
    }
    Ok((applied, saved))
}

#[derive(Deserialize)]
pub(super) struct DeleteRequest {
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
}

/// Answers 404 with `not_found` unless `key` holds a value. Present is enough: a value that
/// does not decode (written by an older or broken agent) must be deletable like any other.
pub(super) async fn present(
    api: &Api,
    key: &shoal_gossip::ObjectKey,
    not_found: impl FnOnce() -> String,
) -> Result<(), Response> {
    match api.driver.get(key.clone()).await {
        Ok(Some(entry)) if entry.value.is_some() => Ok(()),
        Ok(_) => Err(error(StatusCode::NOT_FOUND, "NotFound", &not_found())),
        Err(e) => Err(gone(e)),
    }
}

/// `POST /api/v1/delete` `{kind, namespace, name}`: deletes an object (a namespace with every
/// object in it).
pub(super) async fn delete(State(api): State<Api>, Json(request): Json<DeleteRequest>) -> Response {
    if request.kind == "endpoints" {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "endpoints follow their service's pods and cannot be deleted: delete the service, or change its selector",
        );
    }
    let Some(kind) = Kind::from_key_kind(&request.kind) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "the server doesn't have a resource type {:?} (known: {})",
                request.kind,
                super::objects::known_kinds()
            ),
        );
    };
    let namespace = if kind.is_namespaced() {
        request
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    let key = object_key(kind, &namespace, &request.name);
    if let Err(r) = present(&api, &key, || {
        format!("{} \"{}\" not found", kind.resource_type(), request.name)
    })
    .await
    {
        return r;
    }
    let mut deleted = vec![format!("{}/{}", kind.resource_type(), request.name)];
    let mut deletes = Vec::new();
    if kind == Kind::Namespace {
        // Every object in it as the store holds it, readable or not.
        for inner in Kind::ALL.into_iter().filter(|k| k.is_namespaced()) {
            let listed = match api
                .driver
                .list(inner.key_kind().to_owned(), Some(request.name.clone()))
                .await
            {
                Ok(listed) => listed,
                Err(e) => return gone(e),
            };
            for (k, _) in listed {
                deleted.push(format!("{}/{}", inner.resource_type(), k.name));
                deletes.push((k, None));
            }
        }
    }
    deletes.push((key, None));
    // All at once: a namespace and what it holds go together, or nothing does.
    match api.driver.write_many(deletes).await {
        Ok(made) => written(
            Json(json!({ "deleted": deleted })).into_response(),
            &made.saved,
        ),
        Err(e) => not_written(e),
    }
}

/// `GET /api/v1/pods[?namespace=NS]`: every pod of the cluster, as a `List`.
pub(super) async fn list_pods(State(api): State<Api>, Query(q): Query<NamespaceQuery>) -> Response {
    let snapshot = api.snapshot();
    let plan = api.plans.borrow().clone();
    let items = view::pods(&snapshot, &plan, q.namespace.as_deref())
        .iter()
        .map(view::pod_json)
        .collect();
    Json(view::list(items)).into_response()
}

/// `GET /api/v1/pods/{ns}/{name}`: one pod and its events (for `describe`).
pub(super) async fn get_pod(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let snapshot = api.snapshot();
    let plan = api.plans.borrow().clone();
    let pods = view::pods(&snapshot, &plan, Some(&namespace));
    match pods.iter().find(|p| p.pod.metadata.name == name) {
        Some(p) => Json(json!({ "object": view::pod_json(p), "events": p.events })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found in namespace {namespace}"),
        ),
    }
}

/// `GET /api/v1/deployments[?namespace=NS]`.
pub(super) async fn list_deployments(
    State(api): State<Api>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    let snapshot = api.snapshot();
    let plan = api.plans.borrow().clone();
    let now = wall_ms();
    let counted = snapshot.counted();
    let items = view::deployments(&snapshot, q.namespace.as_deref())
        .map(|(d, stored)| {
            let set_aside = plan.set_aside_reason(&view::deployment_key(d));
            view::deployment_json(d, stored, &snapshot, &counted, now, set_aside)
        })
        .collect();
    Json(view::list(items)).into_response()
}

/// `GET /api/v1/deployments/{ns}/{name}`: one Deployment, its pods and the rollout step.
pub(super) async fn get_deployment(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let snapshot = api.snapshot();
    let plan = api.plans.borrow().clone();
    let now = wall_ms();
    let found =
        view::deployments(&snapshot, Some(&namespace)).find(|(d, _)| d.metadata.name == name);
    let Some((d, stored)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("deployments.apps \"{name}\" not found in namespace {namespace}"),
        );
    };
    let pods = view::pods(&snapshot, &plan, Some(&namespace));
    let pod_names: Vec<Value> = view::pods_of(&pods, d)
        .map(|p| json!({ "name": p.pod.metadata.name, "node": p.pod.spec.node_name, "events": p.events }))
        .collect();
    Json(json!({
        "object": view::deployment_json(
            d,
            stored,
            &snapshot,
            &snapshot.counted(),
            now,
            plan.set_aside_reason(&view::deployment_key(d)),
        ),
        "rollout": view::rollout_of(d, &snapshot, now),
        "revisions": stored.history.iter().map(|r| r.revision).collect::<Vec<_>>(),
        "pods": pod_names,
    }))
    .into_response()
}

/// `GET /api/v1/namespaces`.
pub(super) async fn list_namespaces(State(api): State<Api>) -> Response {
    let snapshot = api.snapshot();
    Json(view::list(view::namespaces_json(&snapshot))).into_response()
}

/// `GET /api/v1/services[?namespace=NS]`: Services with their effective cluster IPs and node
/// ports, as a `List`.
pub(super) async fn list_services(
    State(api): State<Api>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    let snapshot = match snapshot_with_services(&api).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let all = service::services(&snapshot);
    // Addresses are settled over every namespace.
    let allocation = service::allocate(api.service_range, &all);
    let items = all
        .iter()
        .filter(|e| q.namespace.as_deref().is_none_or(|ns| e.namespace == ns))
        .map(|e| view::service_json(e, &allocation))
        .collect();
    Json(view::list(items)).into_response()
}

/// `GET /api/v1/services/{ns}/{name}`: one Service, its endpoints and its events (for
/// `describe`).
pub(super) async fn get_service(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let snapshot = match snapshot_with_services(&api).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let all = service::services(&snapshot);
    let Some(entry) = all
        .iter()
        .find(|e| e.namespace == namespace && e.name == name)
    else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("services \"{name}\" not found in namespace {namespace}"),
        );
    };
    let allocation = service::allocate(api.service_range, &all);
    let endpoints = service::endpoints_of(&snapshot, entry);
    Json(json!({
        "object": view::service_json(entry, &allocation),
        "endpoints": view::endpoints_json(entry, &endpoints),
        "events": view::service_events(entry, &allocation),
    }))
    .into_response()
}

/// `GET /api/v1/endpoints[?namespace=NS]`: the Endpoints of every service with a selector, as
/// a `List`.
pub(super) async fn list_endpoints(
    State(api): State<Api>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    let snapshot = match snapshot_with_services(&api).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let endpoints = service::endpoints(&snapshot);
    let items = service::services(&snapshot)
        .iter()
        .filter(|e| q.namespace.as_deref().is_none_or(|ns| e.namespace == ns))
        .filter_map(|e| Some(view::endpoints_json(e, endpoints.get(&e.key())?)))
        .collect();
    Json(view::list(items)).into_response()
}

#[derive(Deserialize)]
pub(super) struct ScaleRequest {
    replicas: u32,
}

/// `POST /api/v1/deployments/{ns}/{name}/scale` `{replicas}`.
pub(super) async fn scale(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
    Json(request): Json<ScaleRequest>,
) -> Response {
    let (key, old) = match stored_deployment(&api, &namespace, &name).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let snapshot = api.snapshot();
    let others = asked_elsewhere(&snapshot, &std::collections::BTreeSet::from([key.clone()]));
    if let Some(reason) = plan::cluster_limits(&snapshot).refusal(request.replicas, others) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("deployments.apps \"{name}\" not scaled: spec.replicas: {reason}"),
        );
    }
    match view::scale(&old, request.replicas) {
        Ok(new) => match api.driver.write(key, Some(new.encode())).await {
            Ok(made) => written(Json(json!({ "scaled": true })).into_response(), &made.saved),
            Err(e) => not_written(e),
        },
        Err(message) => error(StatusCode::BAD_REQUEST, "BadRequest", &message),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UndoRequest {
    #[serde(default)]
    to_revision: Option<u64>,
}

/// `POST /api/v1/deployments/{ns}/{name}/undo` `{toRevision?}`.
pub(super) async fn undo(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
    Json(request): Json<UndoRequest>,
) -> Response {
    let (key, old) = match stored_deployment(&api, &namespace, &name).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    match view::undo(&old, request.to_revision) {
        Ok(new) => {
            let revision = new.revision;
            match api.driver.write(key, Some(new.encode())).await {
                Ok(made) => written(
                    Json(json!({ "rolledBack": true, "revision": revision })).into_response(),
                    &made.saved,
                ),
                Err(e) => not_written(e),
            }
        }
        Err(message) => error(StatusCode::BAD_REQUEST, "BadRequest", &message),
    }
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    container: Option<String>,
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

/// `GET /api/v1/pods/{ns}/{name}/log`: the container's output (streamed with `follow`).
pub(super) async fn pod_log(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let snapshot = api.snapshot();
    let me = api
        .driver
        .view()
        .members
        .iter()
        .find(|m| m.local)
        .map(|m| m.id);
    let Some((node, record)) = snapshot
        .live_records()
        .find(|(_, r)| view::is_pod(r, &namespace, &name))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "pods \"{name}\" not found in namespace {namespace} (or it is not running yet)"
            ),
        );
    };
    let containers: Vec<&str> = record
        .pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let container = match (&q.container, containers.as_slice()) {
        (Some(c), _) if containers.contains(&c.as_str()) => c.clone(),
        (Some(c), _) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "container {c} is not valid for pod {name}; choose one of: [{}]",
                    containers.join(" ")
                ),
            );
        }
        (None, [one]) => (*one).to_owned(),
        (None, _) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                ),
            );
        }
    };
    if Some(*node) != me {
        // A live record's node is a member (`live_records`).
        let Some(owner) = snapshot.member(node) else {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pod {name} runs on a node that is no longer a member"),
            );
        };
        return crate::api::logs_remote::forward(
            &api, owner, &namespace, &name, &container, q.follow, q.tail,
        )
        .await;
    }
    let Some(uid) = record.pod.metadata.uid.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the pod has no runtime id yet",
        );
    };
    match api.runtime.logs(&uid, &container, q.follow, q.tail).await {
        Ok(stream) => {
            let body = Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other)));
            (StatusCode::OK, body).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, "NotFound", &e.to_string()),
    }
}
