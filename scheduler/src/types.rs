//! Input types: the replicated cluster view and the workloads to place.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Placement;

/// Identity of a node as the membership layer names it. Cheap to clone (shared text): a
/// placement holds one per replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps a node name.
    pub fn new(id: impl Into<String>) -> Self {
        Self(Arc::from(id.into()))
    }

    /// The node name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(NodeId::new)
    }
}

/// Membership status of a node, as the failure detector reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Reachable: keeps its replicas and accepts new ones.
    Alive,
    /// Possibly failed: keeps the replicas it runs (a suspicion must not make
    /// them flap) but is given no new ones.
    Suspect,
    /// Declared failed: its replicas are placed elsewhere.
    Dead,
    /// Left the cluster on purpose: its replicas are placed elsewhere.
    Left,
}

impl NodeStatus {
    /// Whether replicas already running on such a node stay there.
    pub fn holds_replicas(self) -> bool {
        matches!(self, NodeStatus::Alive | NodeStatus::Suspect)
    }

    /// Whether such a node can be given replicas it does not run yet.
    pub fn accepts_replicas(self) -> bool {
        self == NodeStatus::Alive
    }
}

/// An amount of cpu and memory: a node's allocatable capacity or a replica's
/// request.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    /// Cpu in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Resources {
    /// Builds an amount from millicores and bytes.
    pub const fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
        }
    }

    /// Whether `request` fits in `self` in both dimensions.
    pub fn covers(&self, request: &Resources) -> bool {
        self.cpu_millis >= request.cpu_millis && self.memory_bytes >= request.memory_bytes
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cpu, {} memory",
            Millicores(self.cpu_millis),
            Bytes(self.memory_bytes)
        )
    }
}

/// Displays millicores the way users write them (`2000m`).
pub(crate) struct Millicores(pub(crate) u64);

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

/// Displays bytes with the largest binary unit that divides them exactly, so
/// the figure a user reads is the figure they wrote in the manifest.
pub(crate) struct Bytes(pub(crate) u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "Ti"),
            (1 << 30, "Gi"),
            (1 << 20, "Mi"),
            (1 << 10, "Ki"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Key/value labels of a node, and the selectors matched against them.
pub type Labels = BTreeMap<String, String>;

/// One node of the cluster as every member sees it in replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's identity; unique within a view.
    pub id: NodeId,
    /// Membership status.
    pub status: NodeStatus,
    /// Resources available to replicas (capacity minus system reservations).
    pub allocatable: Resources,
    /// Labels matched by workload node selectors.
    #[serde(default)]
    pub labels: Labels,
    /// Replicas the node currently runs, which placement keeps where they
    /// are when it can (stickiness is what keeps movement minimal).
    #[serde(default)]
    pub running: BTreeSet<ReplicaId>,
}

impl Node {
    /// An alive node with the given allocatable resources, no labels and no
    /// replicas.
    pub fn new(id: impl Into<NodeId>, allocatable: Resources) -> Self {
        Self {
            id: id.into(),
            status: NodeStatus::Alive,
            allocatable,
            labels: Labels::new(),
            running: BTreeSet::new(),
        }
    }

    /// Sets the status.
    pub fn with_status(mut self, status: NodeStatus) -> Self {
        self.status = status;
        self
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Whether every key/value of `selector` is among the node's labels.
    pub fn matches(&self, selector: &Labels) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|have| have == v))
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

/// Why a [`ClusterView`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// Two nodes carry the same id.
    #[error("node {0} appears more than once in the view")]
    DuplicateNode(NodeId),
}

/// The replicated cluster state that placement reads: every member, keyed by
/// id so that the order members were learnt in cannot influence anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Node>", into = "Vec<Node>")]
pub struct ClusterView {
    nodes: BTreeMap<NodeId, Node>,
}

impl ClusterView {
    /// Builds a view, refusing duplicate node ids (which replicated state
    /// should never produce, and which would otherwise need an arbitrary
    /// winner).
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<Self, ViewError> {
        let mut view = Self::default();
        for node in nodes {
            if view.nodes.contains_key(&node.id) {
                return Err(ViewError::DuplicateNode(node.id));
            }
            view.nodes.insert(node.id.clone(), node);
        }
        Ok(view)
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> impl DoubleEndedIterator<Item = &Node> + ExactSizeIterator + '_ {
        self.nodes.values()
    }

    /// Number of nodes, whatever their status.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the view has no node at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node with this id.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Mutable access to the node with this id.
    ///
    /// Changing the node's `id` through this reference is a logic error (as
    /// mutating a map key would be): placement identifies nodes by the key
    /// they were inserted under. Use [`ClusterView::remove`] and
    /// [`ClusterView::insert`] to rename.
    pub fn node_mut(&mut self, id: &NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(id)
    }

    /// Adds or replaces a node, returning the previous one with that id.
    pub fn insert(&mut self, node: Node) -> Option<Node> {
        self.nodes.insert(node.id.clone(), node)
    }

    /// Removes a node.
    pub fn remove(&mut self, id: &NodeId) -> Option<Node> {
        self.nodes.remove(id)
    }

    /// Replaces every node's `running` set with what `placement` assigns to
    /// it: the view the cluster converges to once the placement is carried
    /// out. Simulations and benchmarks use it to measure movement.
    pub fn apply(&mut self, placement: &Placement) {
        for node in self.nodes.values_mut() {
            node.running.clear();
        }
        for (replica, node) in placement.assignments() {
            if let Some(n) = self.nodes.get_mut(node) {
                n.running.insert(replica);
            }
        }
    }
}

impl TryFrom<Vec<Node>> for ClusterView {
    type Error = ViewError;
    fn try_from(nodes: Vec<Node>) -> Result<Self, ViewError> {
        Self::new(nodes)
    }
}

impl From<ClusterView> for Vec<Node> {
    fn from(view: ClusterView) -> Self {
        view.nodes.into_values().collect()
    }
}

/// Why a [`WorkloadId`] could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A part is empty.
    #[error("workload id part `{0}` is empty")]
    EmptyPart(&'static str),
    /// A part contains `/`, which separates the parts in the text form.
    #[error("workload id part `{part}` contains '/': {value:?}")]
    Slash {
        /// Which part.
        part: &'static str,
        /// The offending value.
        value: String,
    },
    /// The text form does not have exactly three `/`-separated parts.
    #[error("workload id {0:?} is not of the form kind/namespace/name")]
    Malformed(String),
}

/// Identity of a workload: `kind/namespace/name`.
///
/// Serialized as that text so it can key JSON maps; the parts cannot contain
/// `/`, which keeps the text form unambiguous. Cheap to clone (shared parts):
/// every [`ReplicaId`] holds one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadId(Arc<WorkloadParts>);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct WorkloadParts {
    kind: String,
    namespace: String,
    name: String,
}

impl WorkloadId {
    /// Builds an id from its parts, which must be non-empty and free of `/`.
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, IdError> {
        let id = WorkloadParts {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        for (part, value) in [
            ("kind", &id.kind),
            ("namespace", &id.namespace),
            ("name", &id.name),
        ] {
            if value.is_empty() {
                return Err(IdError::EmptyPart(part));
            }
            if value.contains('/') {
                return Err(IdError::Slash {
                    part,
                    value: value.clone(),
                });
            }
        }
        Ok(Self(Arc::new(id)))
    }

    /// The kind (`deployment`, `statefulset`, ...).
    pub fn kind(&self) -> &str {
        &self.0.kind
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The identity of replica `ordinal` of this workload.
    pub fn replica(&self, ordinal: u32) -> ReplicaId {
        ReplicaId {
            workload: self.clone(),
            ordinal,
        }
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.0.kind, self.0.namespace, self.0.name)
    }
}

impl FromStr for WorkloadId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(namespace), Some(name), None) => Self::new(kind, namespace, name),
            _ => Err(IdError::Malformed(s.to_owned())),
        }
    }
}

impl Serialize for WorkloadId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WorkloadId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Stable identity of one replica: its workload and ordinal. Placement keeps
/// a replica where it runs by matching this identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    /// The workload the replica belongs to.
    pub workload: WorkloadId,
    /// Its ordinal: `0..n` for a deployment, the set's ordinals for a
    /// stateful set.
    pub ordinal: u32,
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.workload, self.ordinal)
    }
}

/// Which replicas a workload asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replicas {
    /// Interchangeable replicas with ordinals `0..n`.
    Count(u32),
    /// Stateful replicas: each ordinal with the node holding its volume, if
    /// it has one yet. A replica stays on its volume's node while that node
    /// is alive or suspect; otherwise it is placed like any other and told
    /// to start on a fresh volume.
    Stateful(BTreeMap<u32, Option<NodeId>>),
}

impl Replicas {
    /// Number of replicas asked for.
    pub fn len(&self) -> usize {
        match self {
            Replicas::Count(n) => *n as usize,
            Replicas::Stateful(ordinals) => ordinals.len(),
        }
    }

    /// Whether no replica is asked for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ordinals, ascending.
    pub fn ordinals(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            Replicas::Count(n) => Box::new(0..*n),
            Replicas::Stateful(ordinals) => Box::new(ordinals.keys().copied()),
        }
    }

    /// The node holding the volume of `ordinal`, for stateful replicas.
    pub fn volume(&self, ordinal: u32) -> Option<&NodeId> {
        match self {
            Replicas::Count(_) => None,
            Replicas::Stateful(ordinals) => ordinals.get(&ordinal).and_then(Option::as_ref),
        }
    }

    /// Whether replicas have volumes (a stateful set).
    pub fn is_stateful(&self) -> bool {
        matches!(self, Replicas::Stateful(_))
    }
}

/// Something to run: a set of identical replicas with the same requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Identity; unique among the workloads given to one placement.
    pub id: WorkloadId,
    /// The replicas wanted.
    pub replicas: Replicas,
    /// Resources each replica needs on its node.
    pub requests: Resources,
    /// Labels a node must carry to run a replica.
    #[serde(default)]
    pub node_selector: Labels,
    /// Put replicas on distinct nodes while enough eligible nodes exist;
    /// with fewer eligible nodes than replicas, at most
    /// `ceil(replicas / eligible nodes)` per node.
    #[serde(default)]
    pub spread: bool,
}

impl Workload {
    /// A deployment-like workload: `count` interchangeable replicas, spread,
    /// no selector.
    pub fn deployment(id: WorkloadId, count: u32, requests: Resources) -> Self {
        Self {
            id,
            replicas: Replicas::Count(count),
            requests,
            node_selector: Labels::new(),
            spread: true,
        }
    }

    /// A stateful workload: the given ordinals with their volume nodes,
    /// spread, no selector.
    pub fn stateful(
        id: WorkloadId,
        volumes: BTreeMap<u32, Option<NodeId>>,
        requests: Resources,
    ) -> Self {
        Self {
            id,
            replicas: Replicas::Stateful(volumes),
            requests,
            node_selector: Labels::new(),
            spread: true,
        }
    }

    /// Adds a selector label.
    pub fn with_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_selector.insert(key.into(), value.into());
        self
    }

    /// Sets whether replicas are spread.
    pub fn with_spread(mut self, spread: bool) -> Self {
        self.spread = spread;
        self
    }
}

/// Tunables of placement. Every member must use the same options (they
/// belong in replicated cluster configuration), or their placements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Options {
    /// The load bound's slack ε, in thousandths: no node holds more than
    /// `(1 + ε)` times the average replica count (rounded so the bound is
    /// always reachable). Default 100, i.e. ε = 0.1. Integer so that every
    /// member computes the same bound, bit for bit.
    pub epsilon_permille: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            epsilon_permille: 100,
        }
    }
}
