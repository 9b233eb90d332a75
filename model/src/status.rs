//! Kubernetes-shaped output: the status types the caller fills, and objects as `kubectl get -o
//! json|yaml` prints them.
//!
//! An object for `get` is the stored [`Resource`](crate::Resource) with its read-only fields set
//! by the caller (`metadata.uid`, `resourceVersion`, `generation`, `creationTimestamp`,
//! `deletionTimestamp`; a pod's `spec.nodeName`) plus a status. The JSON shapes and field names
//! are Kubernetes', so `jq '.items[].status.podIP'` and `-o jsonpath` scripts keep working; the
//! same JSON reads back with [`pod_from_object`] and friends (for a CLI that gets objects from
//! the API and prints a table). ConfigMaps and Secrets have no status; their objects are their
//! stored form ([`configmap_object`], [`secret_object`]).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::collections::BTreeMap;

use crate::model::{
    ByteData, ClusterIp, ConfigMap, Deployment, Kind, Namespace, ObjectMeta, Pod, PodSpec,
    Protocol, Secret, Service, ServiceSpec, ServiceType,
};
use crate::timestamp::Timestamp;

/// `True`, `False` or `Unknown`, as in every Kubernetes condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// Nobody knows (the node is not answering).
    #[default]
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// A pod's lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PodPhase {
    /// Accepted, but not all containers are running yet (placing, pulling, creating).
    #[default]
    Pending,
    /// Placed, and at least one container is running or restarting.
    Running,
    /// Every container exited 0 and will not restart.
    Succeeded,
    /// Every container exited, at least one in failure, and none will restart.
    Failed,
    /// The pod's node is not answering.
    Unknown,
}

/// The kinds of pod condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PodConditionType {
    /// The pod has a node.
    PodScheduled,
    /// Init containers have completed (always true here: there are none).
    Initialized,
    /// Every container is ready.
    ContainersReady,
    /// The pod can serve traffic.
    Ready,
}

/// A pod condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    /// Which condition.
    #[serde(rename = "type")]
    pub kind: PodConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// A CamelCase reason (`ContainersNotReady`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Timestamp>,
}

/// What a pod is doing, as the node running it reports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// The phase.
    pub phase: PodPhase,
    /// PodScheduled, Initialized, ContainersReady, Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PodCondition>,
    /// The address of the node running the pod.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// The pod's address.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// When the node accepted the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
    /// One per container of the spec, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    /// A CamelCase reason for the phase (`Evicted`, `NodeLost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One container's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    pub name: String,
    /// What it is doing now.
    pub state: ContainerState,
    /// How its previous run ended (after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
    /// Whether its readiness probe passes (or it runs and has none).
    pub ready: bool,
    /// How many times it was restarted.
    pub restart_count: u32,
    /// The image it runs.
    pub image: String,
    /// The image's resolved id (digest).
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The runtime's id, `docker://...` or `containerd://...`.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// Whether it has started (its startup probe passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
}

/// A container's state: exactly one of waiting, running, terminated (Kubernetes writes it as
/// an object with one of those keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ContainerState {
    /// Not running yet, or between restarts.
    Waiting {
        /// `ContainerCreating`, `ErrImagePull`, `ImagePullBackOff`, `CrashLoopBackOff`,
        /// `CreateContainerConfigError` ...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A human explanation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Running.
    Running {
        /// Since when.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at: Option<Timestamp>,
    },
    /// Exited.
    Terminated {
        /// The exit code.
        exit_code: i32,
        /// The signal that killed it, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// `Completed`, `Error`, `OOMKilled` ...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A human explanation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// When it started.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at: Option<Timestamp>,
        /// When it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finished_at: Option<Timestamp>,
    },
}

/// The kinds of deployment condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeploymentConditionType {
    /// At least `replicas - maxUnavailable` pods are available.
    Available,
    /// The rollout is making progress, or has finished (`NewReplicaSetAvailable`).
    Progressing,
    /// Pods cannot be created (no node can run them, for example).
    ReplicaFailure,
}

/// A deployment condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCondition {
    /// Which condition.
    #[serde(rename = "type")]
    pub kind: DeploymentConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// A CamelCase reason (`MinimumReplicasAvailable`, `ProgressDeadlineExceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Timestamp>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Timestamp>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a Deployment's pods are doing. Zero counts are left out, as Kubernetes does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// The `metadata.generation` this status reflects.
    #[serde(default)]
    pub observed_generation: u64,
    /// Pods of the Deployment, of any revision.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas: u32,
    /// Pods of the current template.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub updated_replicas: u32,
    /// Pods that are ready.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ready_replicas: u32,
    /// Pods ready for at least `minReadySeconds`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_replicas: u32,
    /// Desired pods not available (missing or not ready).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unavailable_replicas: u32,
    /// Available and Progressing (and ReplicaFailure when it applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<DeploymentCondition>,
}

/// A namespace's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum NamespacePhase {
    /// In use.
    #[default]
    Active,
    /// Being deleted with its objects.
    Terminating,
}

/// A namespace's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NamespaceStatus {
    /// The phase.
    pub phase: NamespacePhase,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Shaped<'a, Spec: Serialize, Status: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<&'a Spec>,
    status: Status,
}

fn shaped<Spec: Serialize, Status: Serialize>(
    kind: Kind,
    metadata: &ObjectMeta,
    spec: Option<&Spec>,
    status: Status,
) -> Value {
    serde_json::to_value(Shaped {
        api_version: kind.api_version(),
        kind: kind.as_str(),
        metadata,
        spec,
        status,
    })
    .unwrap_or(Value::Null)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodStatusOut<'a> {
    #[serde(flatten)]
    status: &'a PodStatus,
    qos_class: &'static str,
}

/// A pod as `kubectl get pod -o json` prints it (with `status.qosClass` derived from the
/// spec).
pub fn pod_object(pod: &Pod, status: &PodStatus) -> Value {
    let status = PodStatusOut {
        status,
        qos_class: qos_class(&pod.spec),
    };
    shaped(Kind::Pod, &pod.metadata, Some(&pod.spec), status)
}

/// A Deployment as `kubectl get deployment -o json` prints it.
pub fn deployment_object(deployment: &Deployment, status: &DeploymentStatus) -> Value {
    shaped(
        Kind::Deployment,
        &deployment.metadata,
        Some(&deployment.spec),
        status,
    )
}

/// A Namespace as `kubectl get namespace -o json` prints it.
pub fn namespace_object(namespace: &Namespace, status: &NamespaceStatus) -> Value {
    shaped::<(), _>(Kind::Namespace, &namespace.metadata, None, status)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpecOut<'a> {
    #[serde(flatten)]
    spec: &'a ServiceSpec,
    #[serde(rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    cluster_ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_traffic_policy: Option<&'static str>,
    internal_traffic_policy: &'static str,
    ip_families: [&'static str; 1],
    ip_family_policy: &'static str,
}

/// Fields of a Service's spec that [`service_object`] derives (Kubernetes' defaults for what
/// shoal does) and [`service_from_object`] drops again.
const DERIVED_SERVICE_FIELDS: [&str; 5] = [
    "clusterIPs",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "ipFamilies",
    "ipFamilyPolicy",
];

/// A Service as `kubectl get service -o json` prints it: the spec with `clusterIPs`, the IP
/// family and traffic policy fields Kubernetes fills in, and an empty `status.loadBalancer`.
/// The caller sets the service's effective cluster IP and node ports first. The output applies
/// back (`get -o yaml | apply -f -`) unchanged.
pub fn service_object(service: &Service) -> Value {
    let spec = &service.spec;
    let cluster_ips = match spec.cluster_ip {
        ClusterIp::Auto => Vec::new(),
        ip => vec![ip.to_string()],
    };
    let out = ServiceSpecOut {
        spec,
        cluster_ips,
        external_traffic_policy: (spec.kind == ServiceType::NodePort).then_some("Cluster"),
        internal_traffic_policy: "Cluster",
        ip_families: ["IPv4"],
        ip_family_policy: "SingleStack",
    };
    shaped(
        Kind::Service,
        &service.metadata,
        Some(&out),
        json!({ "loadBalancer": {} }),
    )
}

/// A Service back from [`service_object`]'s JSON.
pub fn service_from_object(value: &Value) -> Result<Service, serde_json::Error> {
    #[derive(Deserialize)]
    struct Svc {
        metadata: ObjectMeta,
        spec: serde_json::Map<String, Value>,
    }
    let mut svc: Svc = serde_json::from_value(value.clone())?;
    for field in DERIVED_SERVICE_FIELDS {
        svc.spec.remove(field);
    }
    Ok(Service {
        metadata: svc.metadata,
        spec: serde_json::from_value(Value::Object(svc.spec))?,
    })
}

/// A `v1 Endpoints`: the addresses of the pods behind a Service, grouped in subsets of
/// addresses that share the same ports. shoal computes them from the pods nodes report; they
/// are never stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The service's name, namespace, labels and creation time.
    pub metadata: ObjectMeta,
    /// Addresses and their ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<EndpointSubset>,
}

/// Addresses that all serve the same ports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    /// Ready pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<EndpointAddress>,
    /// Pods that match but are not ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    /// The ports (the pods' target ports, named as the service's ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// One pod's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    /// The pod's IP.
    pub ip: String,
    /// The node running the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

/// A reference to an object (an endpoint's pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// `Pod`.
    pub kind: String,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A port of an endpoint subset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointPort {
    /// The service port's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The pods' port.
    pub port: u16,
    /// TCP.
    pub protocol: Protocol,
}

/// Endpoints as `kubectl get endpoints -o json` prints them.
pub fn endpoints_object(endpoints: &Endpoints) -> Value {
    let mut value = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": endpoints.metadata,
    });
    if !endpoints.subsets.is_empty() {
        value["subsets"] = serde_json::to_value(&endpoints.subsets).unwrap_or(Value::Null);
    }
    value
}

/// Endpoints back from [`endpoints_object`]'s JSON.
pub fn endpoints_from_object(value: &Value) -> Result<Endpoints, serde_json::Error> {
    #[derive(Deserialize)]
    struct Ep {
        metadata: ObjectMeta,
        #[serde(default)]
        subsets: Vec<EndpointSubset>,
    }
    let ep: Ep = serde_json::from_value(value.clone())?;
    Ok(Endpoints {
        metadata: ep.metadata,
        subsets: ep.subsets,
    })
}

/// A `v1 List` of objects, what `kubectl get ... -o json` prints for several.
pub fn list_object(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": "" },
        "items": items,
    })
}

#[derive(Deserialize)]
struct Unshaped<Spec, Status> {
    metadata: ObjectMeta,
    spec: Spec,
    #[serde(default)]
    status: Status,
}

/// A pod and its status back from [`pod_object`]'s JSON.
pub fn pod_from_object(value: &Value) -> Result<(Pod, PodStatus), serde_json::Error> {
    // `status.qosClass` is derived on output and ignored here.
    let u: Unshaped<PodSpec, PodStatus> = serde_json::from_value(value.clone())?;
    Ok((
        Pod {
            metadata: u.metadata,
            spec: u.spec,
        },
        u.status,
    ))
}

/// A Deployment and its status back from [`deployment_object`]'s JSON.
pub fn deployment_from_object(
    value: &Value,
) -> Result<(Deployment, DeploymentStatus), serde_json::Error> {
    let u: Unshaped<_, DeploymentStatus> = serde_json::from_value(value.clone())?;
    Ok((
        Deployment {
            metadata: u.metadata,
            spec: u.spec,
        },
        u.status,
    ))
}

/// A Namespace and its status back from [`namespace_object`]'s JSON.
pub fn namespace_from_object(
    value: &Value,
) -> Result<(Namespace, NamespaceStatus), serde_json::Error> {
    #[derive(Deserialize)]
    struct Ns {
        metadata: ObjectMeta,
        #[serde(default)]
        status: NamespaceStatus,
    }
    let ns: Ns = serde_json::from_value(value.clone())?;
    Ok((
        Namespace {
            metadata: ns.metadata,
        },
        ns.status,
    ))
}

/// A ConfigMap as `kubectl get configmap -o json` prints it: `data`, `binaryData` (base64) and
/// `immutable`, each left out when empty or false, as Kubernetes does.
pub fn configmap_object(config_map: &ConfigMap) -> Value {
    let mut value = json!({
        "apiVersion": Kind::ConfigMap.api_version(),
        "kind": Kind::ConfigMap.as_str(),
        "metadata": config_map.metadata,
    });
    if config_map.immutable {
        value["immutable"] = Value::Bool(true);
    }
    if !config_map.data.is_empty() {
        value["data"] = json!(config_map.data);
    }
    if !config_map.binary_data.is_empty() {
        value["binaryData"] = json!(config_map.binary_data);
    }
    value
}

/// A ConfigMap back from [`configmap_object`]'s JSON.
pub fn configmap_from_object(value: &Value) -> Result<ConfigMap, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Cm {
        metadata: ObjectMeta,
        #[serde(default)]
        data: BTreeMap<String, String>,
        #[serde(default)]
        binary_data: BTreeMap<String, ByteData>,
        #[serde(default)]
        immutable: bool,
    }
    let cm: Cm = serde_json::from_value(value.clone())?;
    Ok(ConfigMap {
        metadata: cm.metadata,
        data: cm.data,
        binary_data: cm.binary_data,
        immutable: cm.immutable,
    })
}

/// A Secret as `kubectl get secret -o json` prints it: `data` in base64 (never decoded),
/// `type`, and `immutable` when set.
pub fn secret_object(secret: &Secret) -> Value {
    let mut value = json!({
        "apiVersion": Kind::Secret.api_version(),
        "kind": Kind::Secret.as_str(),
        "metadata": secret.metadata,
        "type": secret.secret_type,
    });
    if secret.immutable {
        value["immutable"] = Value::Bool(true);
    }
    if !secret.data.is_empty() {
        value["data"] = json!(secret.data);
    }
    value
}

/// A Secret back from [`secret_object`]'s JSON (`type` `Opaque` when absent).
pub fn secret_from_object(value: &Value) -> Result<Secret, serde_json::Error> {
    #[derive(Deserialize)]
    struct S {
        metadata: ObjectMeta,
        #[serde(default)]
        data: BTreeMap<String, ByteData>,
        #[serde(default, rename = "type")]
        secret_type: Option<String>,
        #[serde(default)]
        immutable: bool,
    }
    let s: S = serde_json::from_value(value.clone())?;
    Ok(Secret {
        metadata: s.metadata,
        data: s.data,
        secret_type: s
            .secret_type
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| crate::decode::OPAQUE.to_owned()),
        immutable: s.immutable,
    })
}

/// Kubernetes' quality-of-service class: `Guaranteed` when every container has CPU and memory
/// limits equal to its requests, `BestEffort` when none has any, `Burstable` otherwise.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let resources = spec.containers.iter().map(|c| &c.resources);
    if resources.clone().all(|r| r.is_empty()) {
        return "BestEffort";
    }
    let guaranteed = resources.clone().all(|r| {
        r.limits.cpu.is_some()
            && r.limits.memory.is_some()
            && r.requests.cpu == r.limits.cpu
            && r.requests.memory == r.limits.memory
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// `TCP` or `UDP`.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}
