//! Services: stable virtual IPs, node ports, endpoints and service-link environment variables,
//! each a pure function of the replicated state (no I/O, clock or randomness), so that every
//! node computes the same answer from the same snapshot.
//!
//! # Virtual IPs without a leader
//!
//! Kubernetes' API server hands out cluster IPs from one allocator. shoal has no such server,
//! so an address is picked, and conflicts are settled, by rules every node applies alike:
//!
//! 1. **At apply time** the applying node picks the address ([`prepare`]): the one the manifest
//!    gives (it must lie in the service range and not be held by another service), or the one
//!    the service already has, or the first free address of the range probing linearly from
//!    `xxh3(namespace/name)`, skipping the addresses other services hold and the range's
//!    network address, first address and broadcast address. The address is **stored in the
//!    object** (`spec.clusterIP`), so it never changes when other services come and go, and
//!    re-applying a manifest without `clusterIP` keeps it.
//! 2. **Everywhere, always**, the effective table ([`allocate`], [`service_ips`]) is computed
//!    from all stored services: in order of (creation time, uid), each service claims the
//!    address its object holds. Two nodes may have assigned the same address to two services
//!    concurrently (two applies racing, or a partition): the earlier service keeps it, and the
//!    later one gets an address by the same probing, skipping every address a claim won. Every
//!    node, with the same objects, computes the same table.
//!
//! Claims are settled before any probing, so a service whose stored address nobody else claims
//! keeps it whatever else happens: only the loser of a conflict (or a service whose object has
//! no address, which `apply` never writes) gets a derived address. Deleting other services never
//! moves a winner. The same rules give NodePort services their node ports (30000-32767).
//!
//! # Endpoints
//!
//! [`endpoints_of`]: the pods of the service's namespace whose labels match its selector, as
//! the live nodes report them (a dead node's pods are gone), with an IP, not finished and not
//! terminating; ready ones serve, the others are listed as not ready. A named `targetPort` is
//! looked up in the pod's container ports (same name and protocol); a pod without it is not an
//! endpoint of that port, as in Kubernetes. A service without a selector has no endpoints.
//!
//! # Environment
//!
//! [`service_env`]: Kubernetes' service links, `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT` and
//! `NAME_SERVICE_PORT_<PORT NAME>` for the services of a pod's namespace that have a cluster IP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::Ipv4Net;
use shoal_gossip::NodeId;
use xxhash_rust::xxh3::xxh3_64;

use super::snapshot::Snapshot;
use super::stored::PodRecord;
use crate::manifest::{
    ClusterIp, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, EnvVar, Kind,
    NODE_PORT_RANGE, ObjectMeta, ObjectReference, PortRef, Protocol, Resource, Service,
    ServiceType, Timestamp,
};
use crate::runtime::process::POD_RANGE;

/// The default service range of agents whose pods run as processes, `127.200.0.0/16`.
///
/// Why there: on Linux all of 127.0.0.0/8 is local to every host without privileges, so host
/// processes and process-runtime pods reach a virtual IP with no root and no routes to set up,
/// and an agent can listen on it like on any loopback address. It lies outside 127.64.0.0/10,
/// where the process runtime gives pods their own addresses, and outside 127.0.0.0/16, where
/// `localhost` and what users run on it live. A /16 holds 65,533 services.
pub(crate) const DEFAULT_SERVICE_RANGE: ServiceRange =
    ServiceRange(Ipv4Net::new_assert(Ipv4Addr::new(127, 200, 0, 0), 16));

/// The default service range of agents whose pods run in Docker: containers have loopbacks of
/// their own, so they reach the host's service listeners only through an address that leaves
/// the container (through its bridge's gateway). The agent routes the range to the host
/// (`ip route add local RANGE dev lo`), which needs CAP_NET_ADMIN, as kube-proxy does. Inside
/// the private 10.0.0.0/8, away from Docker's own default pools (172.17.0.0/16 and up,
/// 192.168.0.0/16) and from Kubernetes' default service range (10.96.0.0/12).
pub(crate) const DOCKER_SERVICE_RANGE: ServiceRange =
    ServiceRange(Ipv4Net::new_assert(Ipv4Addr::new(10, 200, 0, 0), 16));

/// The addresses a cluster gives services: an IPv4 network, `base/prefix`, with a prefix length
/// of 12 to 28 (a million to 13 usable addresses), outside the process runtime's pod
/// addresses. The network address, the first address and the broadcast address are never
/// given out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ServiceRange(Ipv4Net);

/// Why a service range is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ServiceRangeError {
    /// Not `a.b.c.d/n`.
    #[error("{0:?} is not an IPv4 range such as 127.200.0.0/16")]
    Syntax(String),
    /// The prefix length is out of bounds.
    #[error(
        "a service range needs a prefix length of /12 to /28 (a million to 13 addresses), got /{0}"
    )]
    Prefix(u8),
    /// Bits set below the prefix.
    #[error("{given}/{prefix} is not the start of a range: did you mean {base}/{prefix}?")]
    NotNetwork {
        /// The address given.
        given: Ipv4Addr,
        /// The network address of that range.
        base: Ipv4Addr,
        /// The prefix length.
        prefix: u8,
    },
    /// Overlaps the process runtime's pod addresses.
    #[error(
        "{0} overlaps 127.64.0.0/10, where the process runtime gives pods their addresses; pick a range outside it (the default is 127.200.0.0/16)"
    )]
    OverlapsPods(ServiceRange),
}

impl ServiceRange {
    /// The range `base/prefix`.
    pub(crate) fn new(base: Ipv4Addr, prefix: u8) -> Result<ServiceRange, ServiceRangeError> {
        if !(12..=28).contains(&prefix) {
            return Err(ServiceRangeError::Prefix(prefix));
        }
        let net = Ipv4Net::new_assert(base, prefix);
        if net.network() != base {
            return Err(ServiceRangeError::NotNetwork {
                given: base,
                base: net.network(),
                prefix,
            });
        }
        // Two networks overlap when one holds the other's first address.
        if net.contains(&POD_RANGE.network()) || POD_RANGE.contains(&base) {
            return Err(ServiceRangeError::OverlapsPods(ServiceRange(net)));
        }
        Ok(ServiceRange(net))
    }

    /// The cluster DNS's address: the range's first address, which no service gets.
    pub(crate) fn dns_address(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// Whether the range is in 127.0.0.0/8 (local to every host without privileges, but not
    /// reachable from inside containers, whose loopback is their own).
    pub(crate) fn is_loopback(&self) -> bool {
        self.0.network().is_loopback()
    }

    /// How many addresses the range spans (network and broadcast included).
    pub(crate) fn size(&self) -> u32 {
        1 << (32 - u32::from(self.0.prefix_len()))
    }

    /// How many addresses services can get.
    pub(crate) fn usable(&self) -> u32 {
        self.size() - 3
    }

    /// Whether `ip` lies in the range.
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }

    /// The offset of `ip` from the network address, if in the range.
    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip)
            .then(|| ip.to_bits() - self.0.network().to_bits())
    }

    /// The address at `offset`.
    fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.0.network().to_bits() + offset)
    }

    /// Offsets never given out: the network address, the first address (Kubernetes gives it
    /// to its own API service; kept free here too, so that it can mean something later) and
    /// the broadcast address.
    fn is_reserved(&self, offset: u32) -> bool {
        offset <= 1 || offset == self.size() - 1
    }

    /// Why `ip` cannot be a service's address in this range, if it cannot.
    pub(crate) fn check(&self, ip: Ipv4Addr) -> Result<(), String> {
        match self.offset(ip) {
            None => Err(format!("{ip} is not in the cluster's service range {self}")),
            Some(0) => Err(format!(
                "{ip} is the network address of the service range {self}"
            )),
            Some(1) => Err(format!(
                "{ip} is the first address of the service range {self}, which is reserved"
            )),
            Some(o) if o == self.size() - 1 => Err(format!(
                "{ip} is the broadcast address of the service range {self}"
            )),
            Some(_) => Ok(()),
        }
    }
}

impl fmt::Display for ServiceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ServiceRange {
    type Err = ServiceRangeError;

    fn from_str(text: &str) -> Result<ServiceRange, ServiceRangeError> {
        let syntax = || ServiceRangeError::Syntax(text.to_owned());
        let (ip, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        ServiceRange::new(ip, prefix)
    }
}

/// A service's `(namespace, name)`.
pub(crate) type ServiceName = (String, String);

/// A stored Service with what the cluster added to it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceEntry {
    /// Its namespace.
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) name: String,
    /// When it was created, ms since the Unix epoch: the first half of its priority in
    /// conflicts.
    pub(crate) created_ms: u64,
    /// Its uid: the second half.
    pub(crate) uid: String,
    /// The service, with its read-only metadata set.
    pub(crate) service: Service,
}

impl ServiceEntry {
    /// `(namespace, name)`.
    pub(crate) fn key(&self) -> ServiceName {
        (self.namespace.clone(), self.name.clone())
    }

    /// Earlier services win conflicts; the namespace and name break ties of equal (time, uid),
    /// which only a corrupted or hand-written object could have.
    fn rank(&self) -> (u64, &str, &str, &str) {
        (self.created_ms, &self.uid, &self.namespace, &self.name)
    }
}

/// The stored Services of the snapshot, sorted by namespace and name. Objects that do not
/// decode are left out (as everywhere else).
pub(crate) fn services(snapshot: &Snapshot) -> Vec<ServiceEntry> {
    let mut out: Vec<ServiceEntry> = snapshot
        .objects_of(Kind::Service.key_kind())
        .filter_map(|(key, object)| match &object.resource {
            Resource::Service(service) => Some(ServiceEntry {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                created_ms: object.stored.created_ms,
                uid: object.stored.uid.clone(),
                service: service.clone(),
            }),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    out
}

/// A service that did not get what its object holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Conflict {
    /// The service.
    pub(crate) service: ServiceName,
    /// The field: `spec.clusterIP` or `spec.ports[i].nodePort`.
    pub(crate) field: String,
    /// What the object holds.
    pub(crate) wanted: String,
    /// The earlier service that holds it (none: the value is outside the pool, for example
    /// after the cluster's service range changed).
    pub(crate) holder: Option<ServiceName>,
    /// What the service got instead (none: the pool is full).
    pub(crate) got: Option<String>,
    /// When the conflict arose: the later creation time of the two services.
    pub(crate) since_ms: u64,
}

/// The effective addresses and node ports of every service: the same on every node with the
/// same services (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Allocation {
    /// Each service's cluster IP (none for headless services, nor when the range is full).
    pub(crate) ips: BTreeMap<ServiceName, Ipv4Addr>,
    /// Each NodePort service's node ports, by index in `spec.ports` (none when all node ports
    /// are taken).
    pub(crate) node_ports: BTreeMap<ServiceName, Vec<Option<u16>>>,
    /// Services that did not get what their object holds.
    pub(crate) conflicts: Vec<Conflict>,
}

impl Allocation {
    /// The service with its effective cluster IP and node ports: what `get` shows and what the
    /// data plane serves.
    pub(crate) fn effective(&self, entry: &ServiceEntry) -> Service {
        let key = entry.key();
        let mut service = entry.service.clone();
        let spec = &mut service.spec;
        if !spec.is_headless() {
            spec.cluster_ip = self
                .ips
                .get(&key)
                .map_or(ClusterIp::Auto, |ip| ClusterIp::Ip(*ip));
        }
        if spec.kind == ServiceType::NodePort {
            let assigned = self.node_ports.get(&key);
            for (i, port) in spec.ports.iter_mut().enumerate() {
                port.node_port = assigned.and_then(|a| a.get(i).copied().flatten());
            }
        }
        service
    }

    /// The conflicts of one service.
    pub(crate) fn conflicts_of<'a>(
        &'a self,
        key: &'a ServiceName,
    ) -> impl Iterator<Item = &'a Conflict> {
        self.conflicts.iter().filter(move |c| c.service == *key)
    }
}

/// One claim on a pool of values `0..size`.
struct Claim<K> {
    key: K,
    /// The value the object holds, if it holds one in the pool.
    wanted: Option<u32>,
    /// Where probing starts when it gets no value of its own.
    seed: u64,
}

/// Settles claims, given in priority order: first every claim takes the value it wants unless
/// an earlier claim took it; then the others, in order, probe from their seed for the first
/// value neither reserved nor taken. Returns what each key got, and each lost claim with the
/// key that holds its value.
fn settle<K: Ord + Clone>(
    size: u32,
    reserved: impl Fn(u32) -> bool,
    claims: &[Claim<K>],
) -> (BTreeMap<K, u32>, Vec<(usize, K)>) {
    let mut holders: BTreeMap<u32, usize> = BTreeMap::new();
    let mut got = BTreeMap::new();
    let mut lost = Vec::new();
    let mut waiting = Vec::new();
    for (i, claim) in claims.iter().enumerate() {
        match claim.wanted.filter(|w| *w < size && !reserved(*w)) {
            Some(w) => match holders.get(&w) {
                None => {
                    holders.insert(w, i);
                    got.insert(claim.key.clone(), w);
                }
                Some(&holder) => {
                    lost.push((i, claims[holder].key.clone()));
                    waiting.push(i);
                }
            },
            None => waiting.push(i),
        }
    }
    for i in waiting {
        let claim = &claims[i];
        if let Some(v) = probe(size, claim.seed, |v| {
            reserved(v) || holders.contains_key(&v)
        }) {
            holders.insert(v, i);
            got.insert(claim.key.clone(), v);
        }
    }
    (got, lost)
}

/// The first value of `0..size`, going up from `seed % size` and wrapping around, that is not
/// `taken`.
fn probe(size: u32, seed: u64, taken: impl Fn(u32) -> bool) -> Option<u32> {
    let start = (seed % u64::from(size)) as u32;
    (0..size)
        .map(|i| ((u64::from(start) + u64::from(i)) % u64::from(size)) as u32)
        .find(|v| !taken(*v))
}

fn ip_seed(namespace: &str, name: &str) -> u64 {
    xxh3_64(format!("{namespace}/{name}").as_bytes())
}

fn node_port_seed(namespace: &str, name: &str, port: u16, protocol: Protocol) -> u64 {
    xxh3_64(
        format!(
            "{namespace}/{name}/{port}/{}",
            crate::manifest::protocol_name(protocol)
        )
        .as_bytes(),
    )
}

fn node_port_pool() -> (u16, u32) {
    let start = *NODE_PORT_RANGE.start();
    (start, u32::from(*NODE_PORT_RANGE.end() - start) + 1)
}

/// The effective cluster IPs and node ports of `services` (any order) in `range`.
pub(crate) fn allocate(range: ServiceRange, services: &[ServiceEntry]) -> Allocation {
    let mut ordered: Vec<&ServiceEntry> = services.iter().collect();
    ordered.sort_by(|a, b| a.rank().cmp(&b.rank()));
    let created: BTreeMap<ServiceName, u64> =
        ordered.iter().map(|e| (e.key(), e.created_ms)).collect();
    let since = |a: &ServiceName, b: Option<&ServiceName>| {
        let at = |k: &ServiceName| created.get(k).copied().unwrap_or(0);
        b.map_or(at(a), |b| at(a).max(at(b)))
    };
    let mut out = Allocation::default();

    // Cluster IPs.
    let mut outside = Vec::new();
    let claims: Vec<Claim<ServiceName>> = ordered
        .iter()
        .filter(|e| !e.service.spec.is_headless())
        .map(|e| {
            let stored = e.service.spec.cluster_ip.ip();
            let wanted = stored.and_then(|ip| range.offset(ip));
            if let Some(ip) = stored
                && range.check(ip).is_err()
            {
                outside.push((e.key(), ip));
            }
            Claim {
                key: e.key(),
                wanted,
                seed: ip_seed(&e.namespace, &e.name),
            }
        })
        .collect();
    let (got, lost) = settle(range.size(), |o| range.is_reserved(o), &claims);
    out.ips = got
        .into_iter()
        .map(|(k, offset)| (k, range.addr(offset)))
        .collect();
    for (i, holder) in lost {
        let key = claims[i].key.clone();
        out.conflicts.push(Conflict {
            field: "spec.clusterIP".into(),
            wanted: claims[i]
                .wanted
                .map(|o| range.addr(o).to_string())
                .unwrap_or_default(),
            since_ms: since(&key, Some(&holder)),
            got: out.ips.get(&key).map(ToString::to_string),
            holder: Some(holder),
            service: key,
        });
    }
    for (key, ip) in outside {
        out.conflicts.push(Conflict {
            field: "spec.clusterIP".into(),
            wanted: ip.to_string(),
            since_ms: since(&key, None),
            got: out.ips.get(&key).map(ToString::to_string),
            holder: None,
            service: key,
        });
    }

    // Node ports.
    let (first_port, pool) = node_port_pool();
    let mut claims: Vec<Claim<(ServiceName, usize)>> = Vec::new();
    for e in ordered
        .iter()
        .filter(|e| e.service.spec.kind == ServiceType::NodePort)
    {
        out.node_ports
            .insert(e.key(), vec![None; e.service.spec.ports.len()]);
        for (i, port) in e.service.spec.ports.iter().enumerate() {
            claims.push(Claim {
                key: (e.key(), i),
                wanted: port
                    .node_port
                    .filter(|p| NODE_PORT_RANGE.contains(p))
                    .map(|p| u32::from(p - first_port)),
                seed: node_port_seed(&e.namespace, &e.name, port.port, port.protocol),
            });
        }
    }
    let (got, lost) = settle(pool, |_| false, &claims);
    for ((key, i), offset) in got {
        if let Some(slot) = out.node_ports.get_mut(&key).and_then(|v| v.get_mut(i)) {
            *slot = u16::try_from(offset).ok().map(|o| first_port + o);
        }
    }
    for (c, (holder, _)) in lost {
        let (key, i) = claims[c].key.clone();
        let got = out
            .node_ports
            .get(&key)
            .and_then(|v| v.get(i).copied().flatten());
        out.conflicts.push(Conflict {
            field: format!("spec.ports[{i}].nodePort"),
            wanted: claims[c]
                .wanted
                .map(|o| (u32::from(first_port) + o).to_string())
                .unwrap_or_default(),
            since_ms: since(&key, Some(&holder)),
            got: got.map(|p| p.to_string()),
            holder: Some(holder),
            service: key,
        });
    }
    out.conflicts
        .sort_by(|a, b| (&a.service, &a.field).cmp(&(&b.service, &b.field)));
    out
}

/// Each non-headless service's effective cluster IP: [`allocate`] over the snapshot's
/// services.
#[allow(
    dead_code,
    reason = "for the agent's DNS and proxy, which are not wired in yet"
)]
pub(crate) fn service_ips(
    range: ServiceRange,
    snapshot: &Snapshot,
) -> BTreeMap<ServiceName, Ipv4Addr> {
    allocate(range, &services(snapshot)).ips
}

/// Why a Service cannot be applied as given: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrepareError {
    /// The field path (`spec.clusterIP`, `spec.ports[1].nodePort`).
    pub(crate) path: String,
    /// What is wrong.
    pub(crate) message: String,
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Completes a Service that is being applied, against the services the applying node knows
/// (`existing`, which holds the service's current version if it has one): its cluster IP and
/// node ports are kept, checked or assigned (see the module docs). The result is what gets
/// stored. Errors name the field:
///
/// - an explicit `clusterIP` outside `range`, on a reserved address, or held by another
///   service;
/// - a change of cluster IP, or between headless and not (immutable, as in Kubernetes: delete
///   the service and apply it again);
/// - an explicit `nodePort` held by another service;
/// - no address, or no node port, left.
pub(crate) fn prepare(
    range: ServiceRange,
    existing: &[ServiceEntry],
    new: &Service,
) -> Result<Service, Vec<PrepareError>> {
    let namespace = new
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| crate::manifest::DEFAULT_NAMESPACE.to_owned());
    let key: ServiceName = (namespace.clone(), new.metadata.name.clone());
    let allocation = allocate(range, existing);
    let old = existing.iter().find(|e| e.key() == key);
    let mut out = new.clone();
    let mut errors = Vec::new();
    let mut fail = |path: String, message: String| errors.push(PrepareError { path, message });
    let show = |k: &ServiceName| format!("{}/{}", k.0, k.1);

    // The cluster IP.
    let taken: BTreeMap<Ipv4Addr, &ServiceName> = allocation
        .ips
        .iter()
        .filter(|(k, _)| **k != key)
        .map(|(k, ip)| (*ip, k))
        .collect();
    let old_headless = old.map(|o| o.service.spec.is_headless());
    let old_ip = allocation.ips.get(&key).copied();
    let path = "spec.clusterIP".to_owned();
    match new.spec.cluster_ip {
        ClusterIp::Headless => {
            if old_headless == Some(false) {
                fail(
                    path,
                    format!(
                        "the service has cluster IP {}, which cannot be removed (the field is immutable): delete the service and apply it again to make it headless",
                        old_ip.map_or_else(|| "<none>".to_owned(), |ip| ip.to_string())
                    ),
                );
            }
        }
        ClusterIp::Auto if old_headless == Some(true) => fail(
            path,
            "the service is headless (clusterIP: None) and a cluster IP cannot be added to it (the field is immutable): keep clusterIP: None, or delete the service and apply it again".to_owned(),
        ),
        ClusterIp::Auto => match old_ip {
            Some(ip) => out.spec.cluster_ip = ClusterIp::Ip(ip),
            None => {
                let free = probe(range.size(), ip_seed(&key.0, &key.1), |o| {
                    range.is_reserved(o) || taken.contains_key(&range.addr(o))
                });
                match free {
                    Some(o) => out.spec.cluster_ip = ClusterIp::Ip(range.addr(o)),
                    None => fail(
                        path,
                        format!(
                            "no address left in the cluster's service range {range}: all {} are taken",
                            range.usable()
                        ),
                    ),
                }
            }
        },
        ClusterIp::Ip(ip) => {
            if let Err(e) = range.check(ip) {
                fail(path, e);
            } else if let Some(holder) = taken.get(&ip) {
                fail(
                    path,
                    format!("{ip} is already allocated to service {}", show(holder)),
                );
            } else if old_headless == Some(true) {
                fail(
                    path,
                    "the service is headless (clusterIP: None) and a cluster IP cannot be added to it (the field is immutable): delete the service and apply it again".to_owned(),
                );
            } else if let Some(current) = old_ip
                && current != ip
            {
                fail(
                    path,
                    format!(
                        "the service has cluster IP {current}, which cannot be changed (the field is immutable): delete the service and apply it again to change it"
                    ),
                );
            }
        }
    }

    // Node ports.
    if new.spec.kind == ServiceType::NodePort {
        let (first_port, pool) = node_port_pool();
        let mut held: BTreeMap<u16, &ServiceName> = BTreeMap::new();
        for (k, ports) in &allocation.node_ports {
            if *k != key {
                for p in ports.iter().flatten() {
                    held.insert(*p, k);
                }
            }
        }
        // What the service's current version has, by (port, protocol).
        let mut current: BTreeMap<(u16, Protocol), u16> = BTreeMap::new();
        if let (Some(old), Some(ports)) = (old, allocation.node_ports.get(&key)) {
            for (port, np) in old.service.spec.ports.iter().zip(ports) {
                if let Some(np) = np {
                    current.insert((port.port, port.protocol), *np);
                }
            }
        }
        let mut used: BTreeSet<u16> = BTreeSet::new();
        for (i, port) in new.spec.ports.iter().enumerate() {
            if let Some(np) = port.node_port {
                if let Some(holder) = held.get(&np) {
                    fail(
                        format!("spec.ports[{i}].nodePort"),
                        format!("{np} is already allocated to service {}", show(holder)),
                    );
                }
                used.insert(np);
            }
        }
        for (i, port) in new.spec.ports.iter().enumerate() {
            if port.node_port.is_some() {
                continue;
            }
            let free = |p: u16| !used.contains(&p) && !held.contains_key(&p);
            let keep = current
                .get(&(port.port, port.protocol))
                .copied()
                .filter(|p| free(*p));
            let assigned = keep.or_else(|| {
                probe(
                    pool,
                    node_port_seed(&key.0, &key.1, port.port, port.protocol),
                    |o| {
                        u16::try_from(o)
                            .ok()
                            .and_then(|o| first_port.checked_add(o))
                            .is_none_or(|p| !free(p))
                    },
                )
                .and_then(|o| u16::try_from(o).ok())
                .map(|o| first_port + o)
            });
            match assigned {
                Some(p) => {
                    used.insert(p);
                    out.spec.ports[i].node_port = Some(p);
                }
                None => fail(
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "no node port left: all of {}-{} are taken",
                        NODE_PORT_RANGE.start(),
                        NODE_PORT_RANGE.end()
                    ),
                ),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A pod behind a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndpointAddr {
    /// The node running it.
    pub(crate) node: NodeId,
    /// That node's name.
    pub(crate) node_name: String,
    /// The pod's name.
    pub(crate) pod: String,
    /// The pod's uid.
    pub(crate) pod_uid: Option<String>,
    /// The pod's IP.
    pub(crate) ip: IpAddr,
    /// The pod's port for each of the service's ports, in `spec.ports` order: `None` where the
    /// port's `targetPort` names a port the pod does not have.
    pub(crate) ports: Vec<Option<u16>>,
}

/// The pods behind a service, each list sorted by IP then pod name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceEndpoints {
    /// Ready pods: where traffic goes.
    pub(crate) ready: Vec<EndpointAddr>,
    /// Matching pods that are not ready (`notReadyAddresses`).
    pub(crate) not_ready: Vec<EndpointAddr>,
}

impl ServiceEndpoints {
    /// The ready pods serving the service's port `index` (in `spec.ports`), with their port.
    #[allow(dead_code, reason = "for the agent's proxy, which is not wired in yet")]
    pub(crate) fn ready_for_port(
        &self,
        index: usize,
    ) -> impl Iterator<Item = (&EndpointAddr, u16)> {
        self.ready
            .iter()
            .filter_map(move |a| a.ports.get(index).copied().flatten().map(|p| (a, p)))
    }
}

/// The pod's port for a service port: a number as it is, a name looked up in the pod's
/// containers' ports (same name and protocol).
fn resolve_target(record: &PodRecord, target: &PortRef, protocol: Protocol) -> Option<u16> {
    match target {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => record
            .pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
            .map(|p| p.container_port),
    }
}

/// The endpoints of one service (see the module docs). Deterministic: the same snapshot gives
/// the same lists in the same order.
pub(crate) fn endpoints_of(snapshot: &Snapshot, entry: &ServiceEntry) -> ServiceEndpoints {
    let spec = &entry.service.spec;
    let mut out = ServiceEndpoints::default();
    if spec.selector.is_empty() {
        return out;
    }
    // One address per pod: should two live nodes report the same pod, a ready report wins,
    // then the lower node id.
    let mut pods: BTreeMap<&str, (bool, &NodeId, &PodRecord, IpAddr)> = BTreeMap::new();
    for (node, record) in snapshot.live_records() {
        let meta = &record.pod.metadata;
        if meta.namespace.as_deref() != Some(entry.namespace.as_str())
            || meta.deletion_timestamp.is_some()
            || record.is_finished()
            || !spec
                .selector
                .iter()
                .all(|(k, v)| meta.labels.get(k) == Some(v))
        {
            continue;
        }
        let Some(ip) = record
            .status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let ready = record.is_ready();
        let better = pods
            .get(meta.name.as_str())
            .is_none_or(|(r, n, _, _)| (!ready, node) < (!*r, *n));
        if better {
            pods.insert(meta.name.as_str(), (ready, node, record, ip));
        }
    }
    for (name, (ready, node, record, ip)) in pods {
        let ports: Vec<Option<u16>> = spec
            .ports
            .iter()
            .map(|p| resolve_target(record, &p.target_port, p.protocol))
            .collect();
        if !spec.ports.is_empty() && ports.iter().all(Option::is_none) {
            continue;
        }
        let addr = EndpointAddr {
            node: *node,
            node_name: snapshot
                .member(node)
                .map(|m| m.name.clone())
                .or_else(|| record.pod.spec.node_name.clone())
                .unwrap_or_default(),
            pod: name.to_owned(),
            pod_uid: record.pod.metadata.uid.clone(),
            ip,
            ports,
        };
        if ready {
            out.ready.push(addr);
        } else {
            out.not_ready.push(addr);
        }
    }
    let order = |a: &EndpointAddr, b: &EndpointAddr| (a.ip, &a.pod).cmp(&(b.ip, &b.pod));
    out.ready.sort_by(order);
    out.not_ready.sort_by(order);
    out
}

/// The endpoints of every service with a selector, by `(namespace, name)`.
pub(crate) fn endpoints(snapshot: &Snapshot) -> BTreeMap<ServiceName, ServiceEndpoints> {
    services(snapshot)
        .iter()
        .filter(|e| !e.service.spec.selector.is_empty())
        .map(|e| (e.key(), endpoints_of(snapshot, e)))
        .collect()
}

/// A service's endpoints as a Kubernetes `Endpoints` object: addresses grouped into subsets
/// that share the same ports (as Kubernetes repacks them), subsets in port order, addresses in
/// IP order.
pub(crate) fn endpoints_resource(entry: &ServiceEntry, endpoints: &ServiceEndpoints) -> Endpoints {
    let spec = &entry.service.spec;
    let address = |a: &EndpointAddr| EndpointAddress {
        ip: a.ip.to_string(),
        node_name: Some(a.node_name.clone()).filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: "Pod".into(),
            namespace: Some(entry.namespace.clone()),
            name: a.pod.clone(),
            uid: a.pod_uid.clone(),
        }),
    };
    let ports_of = |a: &EndpointAddr| -> Vec<EndpointPort> {
        let set: BTreeSet<EndpointPort> = spec
            .ports
            .iter()
            .zip(&a.ports)
            .filter_map(|(sp, target)| {
                target.map(|port| EndpointPort {
                    name: sp.name.clone(),
                    port,
                    protocol: sp.protocol,
                })
            })
            .collect();
        set.into_iter().collect()
    };
    let mut subsets: BTreeMap<Vec<EndpointPort>, EndpointSubset> = BTreeMap::new();
    for a in &endpoints.ready {
        let ports = ports_of(a);
        subsets
            .entry(ports.clone())
            .or_insert_with(|| EndpointSubset {
                ports,
                ..EndpointSubset::default()
            })
            .addresses
            .push(address(a));
    }
    for a in &endpoints.not_ready {
        let ports = ports_of(a);
        subsets
            .entry(ports.clone())
            .or_insert_with(|| EndpointSubset {
                ports,
                ..EndpointSubset::default()
            })
            .not_ready_addresses
            .push(address(a));
    }
    let meta = &entry.service.metadata;
    Endpoints {
        metadata: ObjectMeta {
            name: entry.name.clone(),
            namespace: Some(entry.namespace.clone()),
            labels: meta.labels.clone(),
            creation_timestamp: Some(Timestamp(entry.created_ms)),
            ..ObjectMeta::default()
        },
        subsets: subsets.into_values().collect(),
    }
}

/// Kubernetes' environment variable form of a name: upper case, `-` as `_`.
fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Kubernetes' service links for a pod in `namespace`: for each service of the namespace with a
/// cluster IP (in `ips`), by service name, `NAME_SERVICE_HOST` (the IP), `NAME_SERVICE_PORT`
/// (the first port) and `NAME_SERVICE_PORT_<PORT NAME>` for each named port. Headless services
/// have none.
pub(crate) fn service_env(
    services: &[ServiceEntry],
    ips: &BTreeMap<ServiceName, Ipv4Addr>,
    namespace: &str,
) -> Vec<EnvVar> {
    let mut ordered: Vec<&ServiceEntry> = services
        .iter()
        .filter(|e| e.namespace == namespace)
        .collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for entry in ordered {
        let (Some(ip), Some(first)) = (ips.get(&entry.key()), entry.service.spec.ports.first())
        else {
            continue;
        };
        let prefix = env_name(&entry.name);
        let var = |name: String, value: String| EnvVar {
            name,
            value,
            value_from: None,
        };
        out.push(var(format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push(var(
            format!("{prefix}_SERVICE_PORT"),
            first.port.to_string(),
        ));
        for port in &entry.service.spec.ports {
            if let Some(name) = &port.name {
                out.push(var(
                    format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                    port.port.to_string(),
                ));
            }
        }
    }
    out
}

/// [`service_env`] straight from the snapshot: the variables a pod of `namespace` gets.
pub(crate) fn service_env_vars(
    range: ServiceRange,
    snapshot: &Snapshot,
    namespace: &str,
) -> Vec<EnvVar> {
    let services = services(snapshot);
    let ips = allocate(range, &services).ips;
    service_env(&services, &ips, namespace)
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
