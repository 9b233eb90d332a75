//! The service proxy: where a service's stable address meets the mesh.
//!
//! Every agent listens on every service's cluster IP and port (and on `0.0.0.0:<nodePort>` for
//! NodePort services). A connection accepted there goes to one of the service's ready
//! endpoints, wherever it runs, through [`shoal_mesh::Mesh::proxy`] (power of two choices,
//! retries on another endpoint while establishing, QUIC to the endpoint's node, a direct TCP
//! connection when the endpoint runs here). The routes are a pure function of the replicated
//! state ([`table_of`]); one task follows the state and keeps the listeners, the mesh's
//! membership and the destinations this node serves to other members in step with it.
//!
//! Addresses: the cluster's service range defaults to loopback (`127.200.0.0/16`): on Linux all
//! of 127.0.0.0/8 is local, so binding a cluster IP needs no privileges and host processes and
//! process-runtime pods reach it directly. Several agents on one machine (tests, demos) all
//! bind the same addresses with `SO_REUSEPORT`, and the kernel spreads connections over them;
//! each proxies the same way, since they share the state.
//!
//! Invariants:
//! - A listener exists exactly for each (cluster IP, port) and node port of the current state;
//!   a connection is routed with the endpoints of the moment it is accepted.
//! - With no ready endpoint a connection is refused at once (reset), as kube-proxy rejects it,
//!   rather than accepted and left hanging.
//! - Only members reach this node's mesh, and only to the addresses of pods this node runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use shoal_gossip::NodeId;
use shoal_mesh::{Endpoint, Members, Mesh, ServiceKey};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};
use tracing::{debug, info, warn};

use crate::dns::Zone;
use crate::manifest::ServiceType;
use crate::net::peer_id_of;
use crate::workload::service::{self, ServiceRange};
use crate::workload::snapshot::Snapshot;

/// How long after a failed bind a service address is tried again.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// Where connections to one listening address go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// `namespace/name`, for metrics and logs.
    pub(crate) service: String,
    /// The service port (for logs).
    pub(crate) port: u16,
    /// Ready endpoints serving it.
    pub(crate) candidates: Vec<Endpoint>,
}

/// What the proxy should do for a given state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Table {
    /// Listening address -> route.
    pub(crate) routes: BTreeMap<SocketAddr, Route>,
    /// Members the mesh accepts, with their mesh addresses.
    pub(crate) members: BTreeMap<NodeId, SocketAddr>,
    /// Pod IPs this node runs: what other members may reach through this node.
    pub(crate) local_pods: BTreeSet<IpAddr>,
    /// What the cluster DNS answers.
    pub(crate) zone: Zone,
}

/// The routes, mesh members and local pod addresses for `snapshot`, as node `me` sees them.
pub(crate) fn table_of(snapshot: &Snapshot, range: ServiceRange, me: &NodeId) -> Table {
    let mut table = Table::default();
    for m in snapshot.members() {
        if !m.state.is_live() {
            continue;
        }
        let mesh = m.info.as_ref().and_then(|i| i.mesh.as_deref());
        if let Some(addr) = mesh.and_then(|a| a.parse::<SocketAddr>().ok()) {
            table.members.insert(m.id, addr);
        }
    }
    for (node, record) in snapshot.live_records() {
        if node != me {
            continue;
        }
        if let Some(ip) = record.status.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
            table.local_pods.insert(ip);
        }
    }
    let entries = service::services(snapshot);
    let allocation = service::allocate(range, &entries);
    for entry in &entries {
        let effective = allocation.effective(entry);
        let spec = &effective.spec;
        let ip = allocation.ips.get(&entry.key()).copied();
        let endpoints = service::endpoints_of(snapshot, entry);
        // DNS: the cluster IP, or a headless service's ready pods.
        let names: Vec<Ipv4Addr> = match ip {
            Some(ip) => vec![ip],
            None if spec.is_headless() => endpoints
                .ready
                .iter()
                .filter_map(|a| match a.ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            None => Vec::new(),
        };
        table
            .zone
            .services
            .insert((entry.namespace.clone(), entry.name.clone()), names);
        for (index, port) in spec.ports.iter().enumerate() {
            let candidates: Vec<Endpoint> = endpoints
                .ready_for_port(index)
                .filter_map(|(addr, target)| {
                    Some(Endpoint {
                        node: peer_id_of(addr.node)?,
                        addr: SocketAddr::new(addr.ip, target),
                    })
                })
                .collect();
            let route = Route {
                service: format!("{}/{}", entry.namespace, entry.name),
                port: port.port,
                candidates,
            };
            if let Some(ip) = ip {
                table
                    .routes
                    .insert(SocketAddr::new(IpAddr::V4(ip), port.port), route.clone());
            }
            if spec.kind == ServiceType::NodePort {
                if let Some(node_port) = port.node_port {
                    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), node_port);
                    table.routes.insert(any, route);
                }
            }
        }
    }
    table
}

/// Shortest time between two computations of the routing table.
const TABLE_GAP: Duration = Duration::from_millis(50);

/// Follows the state: keeps listeners, mesh members and served destinations in step. Returns
/// the task; aborting it closes every listener.
pub(crate) fn start(
    mesh: Mesh,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    range: ServiceRange,
    me: NodeId,
    members_tx: watch::Sender<Arc<Members>>,
    local_pods_tx: watch::Sender<Arc<BTreeSet<IpAddr>>>,
    zone_tx: watch::Sender<Arc<Zone>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
        let mut listeners: BTreeMap<SocketAddr, JoinHandle<()>> = BTreeMap::new();
        // Addresses that could not be bound, and when: tried again after `BIND_RETRY` (a
        // port another program held may be free by then); warned about once.
        let mut failed: BTreeMap<SocketAddr, Instant> = BTreeMap::new();
        let mut warned: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut disagreeing: BTreeSet<NodeId> = BTreeSet::new();
        let mut last = Instant::now();
        loop {
            // The table costs O(pods + services x pods): under a stream of changes it is
            // computed at most once per `TABLE_GAP`, from the latest snapshot.
            let since = last.elapsed();
            if since < TABLE_GAP {
                tokio::time::sleep(TABLE_GAP - since).await;
            }
            last = Instant::now();
            let snapshot = snapshots.borrow_and_update().clone();
            // The range is per cluster: a member started with another one would give and
            // serve other addresses. Said once per member.
            for m in snapshot.members() {
                let theirs = m.info.as_ref().and_then(|i| i.service_range.as_deref());
                if let Some(theirs) = theirs.filter(|t| *t != range.to_string()) {
                    if m.state.is_live() && disagreeing.insert(m.id) {
                        warn!(node = %m.name, theirs, ours = %range,
                            "a member runs with another --service-range; give every agent of \
                             the cluster the same one");
                    }
                }
            }
            let table = table_of(&snapshot, range, &me);
            let members: Members = table
                .members
                .iter()
                .filter_map(|(id, addr)| Some((peer_id_of(*id)?, *addr)))
                .collect();
            members_tx.send_if_modified(|old| {
                let changed = !same_members(old, &members);
                if changed {
                    *old = Arc::new(members);
                }
                changed
            });
            zone_tx.send_if_modified(|old| {
                let changed = **old != table.zone;
                if changed {
                    *old = Arc::new(table.zone.clone());
                }
                changed
            });
            local_pods_tx.send_if_modified(|old| {
                let changed = **old != table.local_pods;
                if changed {
                    *old = Arc::new(table.local_pods.clone());
                }
                changed
            });
            // Listeners: close the ones no longer wanted, open the new ones.
            listeners.retain(|addr, task| {
                let keep = table.routes.contains_key(addr);
                if !keep {
                    info!(%addr, "service address removed; closing its listener");
                    task.abort();
                }
                keep
            });
            failed.retain(|addr, at| table.routes.contains_key(addr) && at.elapsed() < BIND_RETRY);
            warned.retain(|addr| table.routes.contains_key(addr));
            table_tx.send_if_modified(|old| {
                let changed = **old != table;
                if changed {
                    *old = Arc::new(table.clone());
                }
                changed
            });
            for (addr, route) in &table.routes {
                if listeners.contains_key(addr) || failed.contains_key(addr) {
                    continue;
                }
                match bind(*addr) {
                    Ok(listener) => {
                        info!(%addr, service = %route.service, "serving a service address");
                        warned.remove(addr);
                        let task =
                            tokio::spawn(serve(listener, *addr, mesh.clone(), table_rx.clone()));
                        listeners.insert(*addr, task);
                    }
                    Err(e) => {
                        if warned.insert(*addr) {
                            warn!(%addr, service = %route.service, error = %e,
                                "cannot listen on a service address; trying again every {}s",
                                BIND_RETRY.as_secs());
                        }
                        failed.insert(*addr, Instant::now());
                    }
                }
            }
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep(BIND_RETRY), if !failed.is_empty() => {}
            }
        }
        for (_, task) in listeners {
            task.abort();
        }
    })
}

fn same_members(a: &Members, b: &Members) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(peer, addr)| b.mesh_addr(peer) == Some(*addr))
}

/// A listener on `addr` shared with the other agents of this machine (`SO_REUSEPORT`).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    mesh: Mesh,
    table: watch::Receiver<Arc<Table>>,
) {
    loop {
        let (client, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%addr, error = %e, "accepting a service connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let route = table.borrow().routes.get(&addr).cloned();
        let Some(route) = route else {
            continue;
        };
        if route.candidates.is_empty() {
            debug!(%addr, service = %route.service, %from, "no ready endpoint; refusing");
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let Some(key) = ServiceKey::new(route.service.as_str()) else {
            continue;
        };
        let mesh = mesh.clone();
        tokio::spawn(async move {
            if let Err(e) = mesh.proxy(client, &key, &route.candidates).await {
                debug!(service = %route.service, port = route.port, %from, error = %e,
                    "proxied connection failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_gossip::MemberState;

    use super::*;
    use crate::manifest::parse;
    use crate::node_info::NodeInfo;
    use crate::workload::service::DEFAULT_SERVICE_RANGE;
    use crate::workload::snapshot::MemberSnap;
    use crate::workload::stored::object_key;
    use crate::workload::view::apply_one;

    fn member(i: u8, state: MemberState, mesh: Option<&str>) -> MemberSnap {
        MemberSnap {
            id: NodeId([i; 32]),
            name: format!("node-{i}"),
            addr: format!("127.0.0.1:{}", 7000 + u16::from(i)),
            state,
            info: Some(NodeInfo {
                mesh: mesh.map(str::to_owned),
                labels: BTreeMap::new(),
                ..NodeInfo::default()
            }),
        }
    }

    fn service(
        yaml: &str,
    ) -> (
        shoal_gossip::ObjectKey,
        crate::workload::stored::StoredObject,
    ) {
        let mut resource = parse("svc.yaml", yaml.as_bytes()).unwrap().remove(0);
        if let crate::manifest::Resource::Service(svc) = &mut resource {
            *svc = service::prepare(DEFAULT_SERVICE_RANGE, &[], svc).unwrap();
        }
        let (_, stored) = apply_one(&resource, None, 1_000, || "uid".into());
        let key = resource.key();
        (
            object_key(key.kind, &key.namespace, &key.name),
            stored.unwrap(),
        )
    }

    #[test]
    fn routes_members_and_names_follow_the_state() {
        let snapshot = Snapshot::new(
            vec![
                member(1, MemberState::Alive, Some("127.0.0.1:7948")),
                member(2, MemberState::Suspect, Some("127.0.0.2:7948")),
                member(3, MemberState::Dead, Some("127.0.0.3:7948")),
                member(4, MemberState::Alive, None),
            ],
            vec![
                service(
                    "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n",
                ),
                service(
                    "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec:\n  clusterIP: None\n  selector: {app: db}\n",
                ),
            ],
            Vec::new(),
        );
        let table = table_of(&snapshot, DEFAULT_SERVICE_RANGE, &NodeId([1; 32]));
        // Live members with a mesh address: alive and suspect ones, not the dead one.
        assert_eq!(
            table.members.keys().copied().collect::<Vec<_>>(),
            [NodeId([1; 32]), NodeId([2; 32])]
        );
        // The cluster IP and the node port, no endpoint yet (no pod runs).
        let ips = service::service_ips(DEFAULT_SERVICE_RANGE, &snapshot);
        let ip = ips[&("default".to_owned(), "web".to_owned())];
        let vip = SocketAddr::new(IpAddr::V4(ip), 80);
        let node_port = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 30080);
        assert_eq!(
            table.routes.keys().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([vip, node_port])
        );
        assert!(table.routes[&vip].candidates.is_empty());
        assert_eq!(table.routes[&vip].service, "default/web");
        // DNS: the cluster IP; the headless service has no ready pods, so no address.
        assert_eq!(
            table.zone.services[&("default".to_owned(), "web".to_owned())],
            [ip]
        );
        assert!(table.zone.services[&("shop".to_owned(), "db".to_owned())].is_empty());
        assert!(table.local_pods.is_empty());
        // Pure: the same state gives the same table.
        assert_eq!(
            table,
            table_of(&snapshot, DEFAULT_SERVICE_RANGE, &NodeId([1; 32]))
        );
    }
}
