//! Services on hand-built state: the service range, addresses and node ports that never
//! collide and never move (with proptest laws), apply-time checks naming the field, endpoints
//! and service links.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use shoal_gossip::{MemberState, NodeId, ObjectKey};

use super::*;
use crate::manifest::{
    ConditionStatus, Container, ContainerPort, Pod, PodCondition, PodConditionType, PodPhase,
    PodSpec, PodStatus, ServicePort, ServiceSpec, parse,
};
use crate::workload::snapshot::MemberSnap;
use crate::workload::stored::{ReplicaRef, StoredObject, object_key};
use crate::workload::view::apply_one;

fn range(text: &str) -> ServiceRange {
    text.parse().expect("valid range")
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("valid address")
}

fn name(ns: &str, n: &str) -> ServiceName {
    (ns.to_owned(), n.to_owned())
}

/// A service as parsed from YAML (`spec` indented by two spaces, in namespace `default`).
fn parsed(service_name: &str, spec: &str) -> Service {
    let yaml =
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {service_name}}}\nspec:\n{spec}");
    match parse("svc.yaml", yaml.as_bytes()) {
        Ok(mut r) => match r.remove(0) {
            Resource::Service(s) => s,
            other => panic!("not a service: {other:?}"),
        },
        Err(e) => panic!("invalid service:\n{e}"),
    }
}

fn entry(
    ns: &str,
    service_name: &str,
    created_ms: u64,
    uid: &str,
    spec: ServiceSpec,
) -> ServiceEntry {
    let mut service = Service {
        metadata: ObjectMeta {
            name: service_name.into(),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        spec,
    };
    service.metadata.uid = Some(uid.into());
    ServiceEntry {
        namespace: ns.into(),
        name: service_name.into(),
        created_ms,
        uid: uid.into(),
        service,
    }
}

/// A ClusterIP service on port 80 holding `cluster_ip`.
fn with_ip(cluster_ip: ClusterIp) -> ServiceSpec {
    ServiceSpec {
        cluster_ip,
        ports: vec![ServicePort::new(80)],
        ..ServiceSpec::default()
    }
}

fn messages(result: Result<Service, Vec<PrepareError>>) -> Vec<String> {
    match result {
        Ok(s) => panic!("expected errors, got {s:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// Applies services one after the other as the API does: prepare against what exists, then
/// store (creation time = the step).
fn apply_all(range: ServiceRange, services: &[(&str, Service)]) -> Vec<ServiceEntry> {
    let mut existing: Vec<ServiceEntry> = Vec::new();
    for (step, (ns, svc)) in services.iter().enumerate() {
        let mut svc = svc.clone();
        svc.metadata.namespace = Some((*ns).to_owned());
        let prepared = prepare(range, &existing, &svc).expect("applies");
        let at = existing
            .iter()
            .position(|e| e.namespace == *ns && e.name == svc.metadata.name);
        let (created, uid) = at.map_or((step as u64, format!("uid-{step}")), |i| {
            (existing[i].created_ms, existing[i].uid.clone())
        });
        let new = entry(ns, &svc.metadata.name, created, &uid, prepared.spec);
        match at {
            Some(i) => existing[i] = new,
            None => existing.push(new),
        }
    }
    existing
}

#[test]
fn the_default_range_is_valid_and_outside_pod_and_localhost_addresses() {
    let d = DEFAULT_SERVICE_RANGE;
    assert_eq!(ServiceRange::new(Ipv4Addr::new(127, 200, 0, 0), 16), Ok(d));
    assert_eq!(d.to_string(), "127.200.0.0/16");
    assert_eq!(range("127.200.0.0/16"), d);
    assert!(d.contains(ip("127.200.255.254")));
    for outside in [
        "127.0.0.1",
        "127.64.0.1",
        "127.127.255.255",
        "127.201.0.1",
        "10.0.0.1",
    ] {
        assert!(!d.contains(ip(outside)), "{outside}");
    }
    assert_eq!(d.usable(), 65_533);
}

#[test]
fn service_ranges_are_validated() {
    let err = |text: &str| text.parse::<ServiceRange>().unwrap_err().to_string();
    assert_eq!(
        err("127.200.0.0/8"),
        "a service range needs a prefix length of /12 to /28 (a million to 13 addresses), got /8"
    );
    assert!(err("127.200.0.0/29").contains("got /29"));
    assert_eq!(
        err("127.200.0.1/16"),
        "127.200.0.1/16 is not the start of a range: did you mean 127.200.0.0/16?"
    );
    assert!(err("127.96.0.0/12").contains("overlaps 127.64.0.0/10"));
    assert!(err("127.64.0.0/16").contains("overlaps 127.64.0.0/10"));
    for bad in [
        "127.200.0.0",
        "127.200.0.0/",
        "127.200.0.0/x",
        "300.0.0.0/16",
        "::1/64",
    ] {
        assert!(err(bad).contains("is not an IPv4 range"), "{bad}");
    }
    assert_eq!(range("10.96.0.0/12").usable(), (1 << 20) - 3);
    assert_eq!(range("192.168.5.0/28").usable(), 13);
}

#[test]
fn reserved_and_outside_addresses_are_refused_by_name() {
    let r = range("10.96.0.0/24");
    assert_eq!(r.check(ip("10.96.0.7")), Ok(()));
    assert!(
        r.check(ip("10.96.0.0"))
            .unwrap_err()
            .contains("network address")
    );
    assert!(
        r.check(ip("10.96.0.1"))
            .unwrap_err()
            .contains("first address")
    );
    assert!(
        r.check(ip("10.96.0.255"))
            .unwrap_err()
            .contains("broadcast address")
    );
    assert_eq!(
        r.check(ip("10.97.0.5")),
        Err("10.97.0.5 is not in the cluster's service range 10.96.0.0/24".into())
    );
}

#[test]
fn stored_addresses_are_kept_and_missing_ones_derived_without_collisions() {
    let r = range("10.96.0.0/24");
    let services = vec![
        entry(
            "default",
            "a",
            1,
            "u1",
            with_ip(ClusterIp::Ip(ip("10.96.0.10"))),
        ),
        entry("default", "b", 2, "u2", with_ip(ClusterIp::Auto)),
        entry(
            "other",
            "c",
            3,
            "u3",
            with_ip(ClusterIp::Ip(ip("10.96.0.11"))),
        ),
        entry("default", "headless", 4, "u4", with_ip(ClusterIp::Headless)),
    ];
    let a = allocate(r, &services);
    assert_eq!(a.ips[&name("default", "a")], ip("10.96.0.10"));
    assert_eq!(a.ips[&name("other", "c")], ip("10.96.0.11"));
    let b = a.ips[&name("default", "b")];
    assert!(r.check(b).is_ok() && b != ip("10.96.0.10") && b != ip("10.96.0.11"));
    assert!(!a.ips.contains_key(&name("default", "headless")));
    assert!(a.conflicts.is_empty(), "{:?}", a.conflicts);
}

#[test]
fn of_two_services_holding_one_address_the_earlier_keeps_it_on_every_node() {
    let r = range("10.96.0.0/24");
    let same = ClusterIp::Ip(ip("10.96.0.42"));
    let early = entry("default", "early", 100, "zzz", with_ip(same));
    let late = entry("default", "late", 200, "aaa", with_ip(same));
    let one = allocate(r, &[early.clone(), late.clone()]);
    let other = allocate(r, &[late.clone(), early.clone()]);
    assert_eq!(one, other);
    assert_eq!(one.ips[&name("default", "early")], ip("10.96.0.42"));
    let moved = one.ips[&name("default", "late")];
    assert_ne!(moved, ip("10.96.0.42"));
    assert_eq!(
        one.conflicts,
        [Conflict {
            service: name("default", "late"),
            field: "spec.clusterIP".into(),
            wanted: "10.96.0.42".into(),
            holder: Some(name("default", "early")),
            got: Some(moved.to_string()),
            since_ms: 200,
        }]
    );
    // At equal creation times the uid decides.
    let tie_a = entry("default", "x", 100, "b-uid", with_ip(same));
    let tie_b = entry("default", "y", 100, "a-uid", with_ip(same));
    let tie = allocate(r, &[tie_a, tie_b]);
    assert_eq!(tie.ips[&name("default", "y")], ip("10.96.0.42"));
    // The effective service shows what it got.
    assert_eq!(one.effective(&late).spec.cluster_ip, ClusterIp::Ip(moved));
}

#[test]
fn describe_explains_a_lost_address_as_a_warning_event() {
    let r = range("10.96.0.0/24");
    let same = ClusterIp::Ip(ip("10.96.0.42"));
    let early = entry("default", "early", 100, "u1", with_ip(same));
    let late = entry("default", "late", 200, "u2", with_ip(same));
    let a = allocate(r, &[early.clone(), late.clone()]);
    assert!(crate::workload::view::service_events(&early, &a).is_empty());
    let events = crate::workload::view::service_events(&late, &a);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["reason"], "ClusterIPConflict");
    assert_eq!(events[0]["atMs"], 200);
    assert_eq!(
        events[0]["message"],
        format!(
            "spec.clusterIP 10.96.0.42 is held by service default/early, created earlier; this service uses {} instead",
            a.ips[&name("default", "late")]
        )
    );
}

#[test]
fn a_loser_never_takes_the_address_of_a_later_winner() {
    // `late` loses 10.96.0.5 and probes; whatever it probes, addresses that later services'
    // objects hold are skipped, so no winner is pushed off its address.
    let r = range("10.96.0.0/28");
    let mut services = vec![
        entry(
            "default",
            "first",
            1,
            "u1",
            with_ip(ClusterIp::Ip(ip("10.96.0.5"))),
        ),
        entry(
            "default",
            "late",
            2,
            "u2",
            with_ip(ClusterIp::Ip(ip("10.96.0.5"))),
        ),
    ];
    for (i, last) in (2..15).filter(|o| *o != 5).enumerate() {
        let addr = Ipv4Addr::from(u32::from(ip("10.96.0.0")) + last);
        services.push(entry(
            "default",
            &format!("s{i}"),
            10 + i as u64,
            "u",
            with_ip(ClusterIp::Ip(addr)),
        ));
    }
    let a = allocate(r, &services);
    for e in &services[2..] {
        assert_eq!(a.ips.get(&e.key()).copied(), e.service.spec.cluster_ip.ip());
    }
    // The range is full: the loser has nothing left, and says so.
    assert!(!a.ips.contains_key(&name("default", "late")));
    assert_eq!(a.conflicts.len(), 1);
    assert_eq!(a.conflicts[0].got, None);
}

#[test]
fn prepare_assigns_once_and_keeps_the_address_on_reapply() {
    let r = range("10.96.0.0/24");
    let svc = parsed("web", "  selector: {app: web}\n  ports: [{port: 80}]\n");
    let first = prepare(r, &[], &svc).unwrap();
    let assigned = first.spec.cluster_ip.ip().expect("an address");
    assert!(r.check(assigned).is_ok());
    // The address only depends on the name where nothing is taken.
    assert_eq!(prepare(r, &[], &svc).unwrap(), first);
    let existing = vec![entry("default", "web", 1, "u1", first.spec.clone())];
    // Re-applying the manifest (no clusterIP) keeps it, and the stored form is the same.
    let again = prepare(r, &existing, &svc).unwrap();
    assert_eq!(again.spec.cluster_ip, ClusterIp::Ip(assigned));
    assert_eq!(again, first);
    // Giving it explicitly is fine too.
    let mut explicit = svc.clone();
    explicit.spec.cluster_ip = ClusterIp::Ip(assigned);
    assert_eq!(prepare(r, &existing, &explicit).unwrap(), first);
}

#[test]
fn prepare_reapply_through_the_api_path_is_unchanged() {
    let r = range("10.96.0.0/24");
    let svc = parsed("web", "  ports: [{port: 80, targetPort: 8080}]\n");
    let prepared = prepare(r, &[], &svc).unwrap();
    let resource = Resource::Service(prepared.clone());
    let (outcome, stored) = apply_one(&resource, None, 5, || "uid-1".into());
    assert_eq!(outcome.as_str(), "created");
    let stored = stored.unwrap();
    let snapshot = Snapshot::new(
        Vec::new(),
        vec![(object_key(Kind::Service, "default", "web"), stored.clone())],
        Vec::new(),
    );
    let existing = services(&snapshot);
    assert_eq!(existing.len(), 1);
    assert_eq!(
        (existing[0].created_ms, existing[0].uid.as_str()),
        (5, "uid-1")
    );
    let again = prepare(r, &existing, &svc).unwrap();
    let (outcome, _) = apply_one(&Resource::Service(again), Some(&stored), 9, || "x".into());
    assert_eq!(outcome.as_str(), "unchanged");
    assert_eq!(
        service_ips(r, &snapshot),
        BTreeMap::from([(
            name("default", "web"),
            prepared.spec.cluster_ip.ip().unwrap()
        )])
    );
}

#[test]
fn prepare_refuses_bad_cluster_ips_naming_the_field() {
    let r = range("10.96.0.0/24");
    let other = entry(
        "default",
        "other",
        1,
        "u1",
        with_ip(ClusterIp::Ip(ip("10.96.0.9"))),
    );
    let existing = vec![other];
    let with = |cluster_ip: &str| {
        parsed(
            "web",
            &format!("  clusterIP: {cluster_ip}\n  ports: [{{port: 80}}]\n"),
        )
    };
    assert_eq!(
        messages(prepare(r, &existing, &with("10.0.0.9"))),
        ["spec.clusterIP: 10.0.0.9 is not in the cluster's service range 10.96.0.0/24"]
    );
    assert_eq!(
        messages(prepare(r, &existing, &with("10.96.0.9"))),
        ["spec.clusterIP: 10.96.0.9 is already allocated to service default/other"]
    );
    assert!(messages(prepare(r, &existing, &with("10.96.0.1")))[0].contains("reserved"));
    // The same address in another namespace is still taken: addresses are cluster-wide.
    let mut elsewhere = with("10.96.0.9");
    elsewhere.metadata.namespace = Some("prod".into());
    assert_eq!(messages(prepare(r, &existing, &elsewhere)).len(), 1);
}

#[test]
fn cluster_ips_are_immutable_as_in_kubernetes() {
    let r = range("10.96.0.0/24");
    let existing = vec![
        entry(
            "default",
            "web",
            1,
            "u1",
            with_ip(ClusterIp::Ip(ip("10.96.0.20"))),
        ),
        entry("default", "db", 2, "u2", with_ip(ClusterIp::Headless)),
    ];
    let change = parsed("web", "  clusterIP: 10.96.0.21\n  ports: [{port: 80}]\n");
    assert_eq!(
        messages(prepare(r, &existing, &change)),
        [
            "spec.clusterIP: the service has cluster IP 10.96.0.20, which cannot be changed (the field is immutable): delete the service and apply it again to change it"
        ]
    );
    let to_headless = parsed("web", "  clusterIP: None\n  ports: [{port: 80}]\n");
    assert!(messages(prepare(r, &existing, &to_headless))[0].contains("cannot be removed"));
    let from_headless = parsed("db", "  ports: [{port: 5432}]\n");
    assert!(messages(prepare(r, &existing, &from_headless))[0].contains("headless"));
    let still_headless = parsed("db", "  clusterIP: None\n  ports: [{port: 5432}]\n");
    assert_eq!(
        prepare(r, &existing, &still_headless)
            .unwrap()
            .spec
            .cluster_ip,
        ClusterIp::Headless
    );
}

#[test]
fn a_full_range_is_an_error_naming_the_field() {
    let r = range("10.96.0.0/28");
    let specs: Vec<(&str, Service)> = (0..13)
        .map(|i| {
            (
                "default",
                parsed(&format!("s{i}"), "  ports: [{port: 80}]\n"),
            )
        })
        .collect();
    let existing = apply_all(r, &specs);
    let ips: BTreeSet<Ipv4Addr> = existing
        .iter()
        .filter_map(|e| e.service.spec.cluster_ip.ip())
        .collect();
    assert_eq!(ips.len(), 13);
    assert_eq!(
        messages(prepare(
            r,
            &existing,
            &parsed("one-more", "  ports: [{port: 80}]\n")
        )),
        [
            "spec.clusterIP: no address left in the cluster's service range 10.96.0.0/28: all 13 are taken"
        ]
    );
    // A headless service needs no address.
    assert!(prepare(r, &existing, &parsed("h", "  clusterIP: None\n")).is_ok());
}

#[test]
fn node_ports_are_assigned_kept_and_checked() {
    let r = range("10.96.0.0/24");
    let svc = parsed(
        "web",
        "  type: NodePort\n  ports:\n  - {name: http, port: 80}\n  - {name: https, port: 443, nodePort: 30443}\n",
    );
    let first = prepare(r, &[], &svc).unwrap();
    let http = first.spec.ports[0].node_port.expect("assigned");
    assert!(NODE_PORT_RANGE.contains(&http) && http != 30443);
    assert_eq!(first.spec.ports[1].node_port, Some(30443));
    let existing = vec![entry("default", "web", 1, "u1", first.spec.clone())];
    assert_eq!(prepare(r, &existing, &svc).unwrap(), first);
    // Another service cannot take them.
    let clash = parsed(
        "api",
        &format!("  type: NodePort\n  ports: [{{port: 8080, nodePort: {http}}}]\n"),
    );
    assert_eq!(
        messages(prepare(r, &existing, &clash)),
        [format!(
            "spec.ports[0].nodePort: {http} is already allocated to service default/web"
        )]
    );
    // Its own assigned ports never collide with what it or others hold.
    let api = prepare(
        r,
        &existing,
        &parsed("api", "  type: NodePort\n  ports: [{port: 80}]\n"),
    )
    .unwrap();
    let api_port = api.spec.ports[0].node_port.unwrap();
    assert!(api_port != http && api_port != 30443);
    let a = allocate(
        r,
        &[
            existing[0].clone(),
            entry("default", "api", 2, "u2", api.spec),
        ],
    );
    assert!(a.conflicts.is_empty());
    assert_eq!(
        a.node_ports[&name("default", "web")],
        [Some(http), Some(30443)]
    );
}

#[test]
fn concurrent_node_port_claims_resolve_to_the_earlier_service() {
    let r = range("10.96.0.0/24");
    let spec = |ip_text: &str| ServiceSpec {
        kind: ServiceType::NodePort,
        cluster_ip: ClusterIp::Ip(ip(ip_text)),
        ports: vec![ServicePort {
            node_port: Some(31000),
            ..ServicePort::new(80)
        }],
        ..ServiceSpec::default()
    };
    let a = entry("default", "a", 1, "u1", spec("10.96.0.10"));
    let b = entry("default", "b", 2, "u2", spec("10.96.0.11"));
    let alloc = allocate(r, &[b.clone(), a.clone()]);
    assert_eq!(alloc.node_ports[&name("default", "a")], [Some(31000)]);
    let moved = alloc.node_ports[&name("default", "b")][0].unwrap();
    assert_ne!(moved, 31000);
    assert_eq!(alloc.conflicts.len(), 1);
    assert_eq!(alloc.conflicts[0].field, "spec.ports[0].nodePort");
    assert_eq!(alloc.effective(&b).spec.ports[0].node_port, Some(moved));
}

// --- Endpoints ------------------------------------------------------------------------------

fn node(i: u8) -> NodeId {
    NodeId([i; 32])
}

fn member(i: u8, state: MemberState) -> MemberSnap {
    MemberSnap {
        id: node(i),
        name: format!("node-{i}"),
        addr: format!("127.0.0.1:{}", 7000 + u16::from(i)),
        state,
        info: None,
    }
}

/// A pod report: `labels` like `app=web`, a container port named `http` on `http_port` if
/// given.
fn pod(
    on: u8,
    pod_name: &str,
    ns: &str,
    labels: &[(&str, &str)],
    pod_ip: &str,
    ready: bool,
    http_port: Option<u16>,
) -> (NodeId, PodRecord) {
    let ports = http_port
        .map(|p| ContainerPort {
            container_port: p,
            name: Some("http".into()),
            ..ContainerPort::default()
        })
        .into_iter()
        .collect();
    (
        node(on),
        PodRecord {
            format: crate::workload::stored::FORMAT,
            pod: Pod {
                metadata: ObjectMeta {
                    name: pod_name.into(),
                    namespace: Some(ns.into()),
                    uid: Some(format!("uid-{pod_name}")),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..ObjectMeta::default()
                },
                spec: PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        image: "demo".into(),
                        ports,
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                },
            },
            status: PodStatus {
                phase: PodPhase::Running,
                pod_ip: Some(pod_ip.into()),
                conditions: vec![PodCondition {
                    kind: PodConditionType::Ready,
                    status: ConditionStatus::from(ready),
                    reason: None,
                    message: None,
                    last_transition_time: None,
                }],
                ..PodStatus::default()
            },
            replica: ReplicaRef {
                workload: format!("pod/{ns}/{pod_name}"),
                ordinal: 0,
            },
            deployment: None,
            template_hash: None,
            ready_since_ms: None,
            events: Vec::new(),
            run: 0,
        },
    )
}

fn cluster(records: Vec<(NodeId, PodRecord)>) -> Snapshot {
    cluster_with(records, Vec::new())
}

fn cluster_with(
    records: Vec<(NodeId, PodRecord)>,
    objects: Vec<(ObjectKey, StoredObject)>,
) -> Snapshot {
    Snapshot::new(
        vec![
            member(1, MemberState::Alive),
            member(2, MemberState::Suspect),
            member(3, MemberState::Dead),
        ],
        objects,
        records,
    )
}

fn addrs(list: &[EndpointAddr]) -> Vec<(String, String, Vec<Option<u16>>)> {
    list.iter()
        .map(|a| (a.pod.clone(), a.ip.to_string(), a.ports.clone()))
        .collect()
}

#[test]
fn endpoints_are_the_matching_pods_of_live_nodes_ready_ones_apart() {
    let web = [("app", "web")];
    let records = vec![
        pod(1, "web-b", "default", &web, "127.70.0.2", true, None),
        pod(2, "web-a", "default", &web, "127.65.0.9", true, None),
        pod(1, "web-c", "default", &web, "127.66.0.1", false, None),
        pod(3, "web-dead", "default", &web, "127.67.0.1", true, None),
        pod(1, "web-prod", "prod", &web, "127.68.0.1", true, None),
        pod(
            1,
            "api",
            "default",
            &[("app", "api")],
            "127.69.0.1",
            true,
            None,
        ),
    ];
    let snapshot = cluster(records.clone());
    let svc = parsed(
        "web",
        "  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let e = entry("default", "web", 1, "u", svc.spec);
    let eps = endpoints_of(&snapshot, &e);
    assert_eq!(
        addrs(&eps.ready),
        [
            ("web-a".into(), "127.65.0.9".into(), vec![Some(8080)]),
            ("web-b".into(), "127.70.0.2".into(), vec![Some(8080)]),
        ]
    );
    assert_eq!(eps.ready[0].node, node(2));
    assert_eq!(eps.ready[0].node_name, "node-2");
    assert_eq!(
        addrs(&eps.not_ready),
        [("web-c".into(), "127.66.0.1".into(), vec![Some(8080)])]
    );
    let for_port: Vec<(String, u16)> = eps
        .ready_for_port(0)
        .map(|(a, p)| (a.ip.to_string(), p))
        .collect();
    assert_eq!(
        for_port,
        [("127.65.0.9".into(), 8080), ("127.70.0.2".into(), 8080)]
    );
    // The same records in another order give the same endpoints.
    let mut records = records;
    records.reverse();
    assert_eq!(endpoints_of(&cluster(records), &e), eps);
}

#[test]
fn finished_terminating_and_addressless_pods_are_not_endpoints() {
    let web = [("app", "web")];
    let mut finished = pod(1, "done", "default", &web, "127.65.0.1", false, None);
    finished.1.status.phase = PodPhase::Succeeded;
    let mut terminating = pod(1, "going", "default", &web, "127.65.0.2", true, None);
    terminating.1.pod.metadata.deletion_timestamp = Some(crate::manifest::Timestamp(1));
    let mut no_ip = pod(1, "new", "default", &web, "", false, None);
    no_ip.1.status.pod_ip = None;
    let snapshot = cluster(vec![finished, terminating, no_ip]);
    let svc = parsed("web", "  selector: {app: web}\n  ports: [{port: 80}]\n");
    let eps = endpoints_of(&snapshot, &entry("default", "web", 1, "u", svc.spec));
    assert_eq!(eps, ServiceEndpoints::default());
}

#[test]
fn a_named_target_port_resolves_per_pod_and_pods_without_it_are_left_out() {
    let web = [("app", "web")];
    let snapshot = cluster(vec![
        pod(1, "v1", "default", &web, "127.65.0.1", true, Some(8080)),
        pod(1, "v2", "default", &web, "127.65.0.2", true, Some(9090)),
        pod(1, "bare", "default", &web, "127.65.0.3", true, None),
    ]);
    let svc = parsed(
        "web",
        "  selector: {app: web}\n  ports:\n  - {name: web, port: 80, targetPort: http}\n",
    );
    let e = entry("default", "web", 7, "u", svc.spec.clone());
    let eps = endpoints_of(&snapshot, &e);
    assert_eq!(
        addrs(&eps.ready),
        [
            ("v1".into(), "127.65.0.1".into(), vec![Some(8080)]),
            ("v2".into(), "127.65.0.2".into(), vec![Some(9090)]),
        ]
    );
    // As a Kubernetes object: one subset per port set.
    let object = endpoints_resource(&e, &eps);
    assert_eq!(object.metadata.name, "web");
    assert_eq!(object.metadata.creation_timestamp, Some(Timestamp(7)));
    assert_eq!(object.subsets.len(), 2);
    assert_eq!(object.subsets[0].ports[0].port, 8080);
    assert_eq!(object.subsets[0].ports[0].name.as_deref(), Some("web"));
    assert_eq!(object.subsets[0].addresses[0].ip, "127.65.0.1");
    let target = object.subsets[0].addresses[0].target_ref.as_ref().unwrap();
    assert_eq!((target.kind.as_str(), target.name.as_str()), ("Pod", "v1"));
    assert_eq!(
        object.subsets[0].addresses[0].node_name.as_deref(),
        Some("node-1")
    );
    // With a second, numeric port, the bare pod serves that one only.
    let two = parsed(
        "web",
        "  selector: {app: web}\n  ports:\n  - {name: web, port: 80, targetPort: http}\n  - {name: admin, port: 81, targetPort: 9000}\n",
    );
    let eps = endpoints_of(&snapshot, &entry("default", "web", 7, "u", two.spec));
    assert_eq!(
        addrs(&eps.ready),
        [
            (
                "v1".into(),
                "127.65.0.1".into(),
                vec![Some(8080), Some(9000)]
            ),
            (
                "v2".into(),
                "127.65.0.2".into(),
                vec![Some(9090), Some(9000)]
            ),
            ("bare".into(), "127.65.0.3".into(), vec![None, Some(9000)]),
        ]
    );
    assert_eq!(eps.ready_for_port(0).count(), 2);
    assert_eq!(eps.ready_for_port(1).count(), 3);
}

#[test]
fn a_service_without_selector_has_no_endpoints_and_headless_ones_list_addresses() {
    let web = [("app", "web")];
    let snapshot = cluster(vec![pod(1, "w", "default", &web, "127.65.0.1", true, None)]);
    let plain = parsed("ext", "  ports: [{port: 80}]\n");
    assert_eq!(
        endpoints_of(&snapshot, &entry("default", "ext", 1, "u", plain.spec)),
        ServiceEndpoints::default()
    );
    let headless = parsed("w", "  clusterIP: None\n  selector: {app: web}\n");
    let e = entry("default", "w", 1, "u", headless.spec);
    let eps = endpoints_of(&snapshot, &e);
    assert_eq!(
        addrs(&eps.ready),
        [("w".into(), "127.65.0.1".into(), vec![])]
    );
    let object = endpoints_resource(&e, &eps);
    assert_eq!(object.subsets.len(), 1);
    assert!(object.subsets[0].ports.is_empty());
    let ips: Vec<&str> = object.subsets[0]
        .addresses
        .iter()
        .map(|a| a.ip.as_str())
        .collect();
    assert_eq!(ips, ["127.65.0.1"]);
}

#[test]
fn endpoints_of_the_snapshot_cover_services_with_selectors() {
    let web = [("app", "web")];
    let mut objects = Vec::new();
    for (svc_name, spec) in [
        ("web", "  selector: {app: web}\n  ports: [{port: 80}]\n"),
        ("ext", "  ports: [{port: 80}]\n"),
    ] {
        let svc = prepare(DEFAULT_SERVICE_RANGE, &[], &parsed(svc_name, spec)).unwrap();
        let (_, stored) = apply_one(&Resource::Service(svc), None, 1, || "u".into());
        objects.push((
            object_key(Kind::Service, "default", svc_name),
            stored.unwrap(),
        ));
    }
    let snapshot = cluster_with(
        vec![pod(1, "w", "default", &web, "127.65.0.1", true, None)],
        objects,
    );
    let all = endpoints(&snapshot);
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        [name("default", "web")]
    );
    assert_eq!(all[&name("default", "web")].ready.len(), 1);
    assert_eq!(
        all[&name("default", "web")].ready[0].ip,
        IpAddr::V4(ip("127.65.0.1"))
    );
}

// --- Environment ----------------------------------------------------------------------------

#[test]
fn service_links_follow_kubernetes_naming() {
    let services = vec![
        entry(
            "default",
            "redis-primary",
            1,
            "u1",
            parsed(
                "redis-primary",
                "  clusterIP: 10.96.0.10\n  ports:\n  - {name: redis, port: 6379}\n  - {name: metrics-http, port: 9121}\n",
            )
            .spec,
        ),
        entry("default", "api", 2, "u2", parsed("api", "  clusterIP: 10.96.0.11\n  ports: [{port: 80}]\n").spec),
        entry("default", "db", 3, "u3", parsed("db", "  clusterIP: None\n  ports: [{port: 5432}]\n").spec),
        entry("prod", "other", 4, "u4", parsed("other", "  clusterIP: 10.96.0.12\n  ports: [{port: 80}]\n").spec),
    ];
    let ips = allocate(range("10.96.0.0/24"), &services).ips;
    let env: Vec<(String, String)> = service_env(&services, &ips, "default")
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    let want: Vec<(String, String)> = [
        ("API_SERVICE_HOST", "10.96.0.11"),
        ("API_SERVICE_PORT", "80"),
        ("REDIS_PRIMARY_SERVICE_HOST", "10.96.0.10"),
        ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
        ("REDIS_PRIMARY_SERVICE_PORT_REDIS", "6379"),
        ("REDIS_PRIMARY_SERVICE_PORT_METRICS_HTTP", "9121"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(env, want);
    assert!(service_env(&services, &ips, "empty").is_empty());
}

#[test]
fn service_env_vars_read_the_snapshot() {
    let svc = prepare(
        DEFAULT_SERVICE_RANGE,
        &[],
        &parsed("web", "  ports: [{port: 80}]\n"),
    )
    .unwrap();
    let ip = svc.spec.cluster_ip.ip().unwrap();
    let (_, stored) = apply_one(&Resource::Service(svc), None, 1, || "u".into());
    let snapshot = Snapshot::new(
        Vec::new(),
        vec![(object_key(Kind::Service, "default", "web"), stored.unwrap())],
        Vec::new(),
    );
    let env = service_env_vars(DEFAULT_SERVICE_RANGE, &snapshot, "default");
    assert_eq!(env[0].name, "WEB_SERVICE_HOST");
    assert_eq!(env[0].value, ip.to_string());
    assert_eq!(env.len(), 2);
}

// --- Laws -----------------------------------------------------------------------------------

/// Services in a small range (/27: 29 addresses) so that stored addresses collide often; some
/// headless, some without an address; distinct names.
fn arbitrary_services() -> impl Strategy<Value = (ServiceRange, Vec<ServiceEntry>)> {
    let one = (
        0u8..3,       // namespace
        0u64..6,      // creation time: ties are common
        "[a-c]{1,2}", // uid
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(u32::MAX)), // headless
            6 => (0u32..34).prop_map(Some), // an offset; 32 and beyond lie outside
        ],
        proptest::option::of(30000u16..30006),
    );
    proptest::collection::vec(one, 0..40).prop_map(|items| {
        let r = range("10.96.0.0/27");
        let services = items
            .into_iter()
            .enumerate()
            .map(|(i, (ns, created, uid, offset, node_port))| {
                let cluster_ip = match offset {
                    None => ClusterIp::Auto,
                    Some(u32::MAX) => ClusterIp::Headless,
                    Some(o) => ClusterIp::Ip(r.addr(o)),
                };
                let mut spec = with_ip(cluster_ip);
                if node_port.is_some() && cluster_ip != ClusterIp::Headless {
                    spec.kind = ServiceType::NodePort;
                    spec.ports[0].node_port = node_port;
                }
                entry(&format!("ns{ns}"), &format!("s{i}"), created, &uid, spec)
            })
            .collect();
        (r, services)
    })
}

fn check_distinct(
    r: ServiceRange,
    services: &[ServiceEntry],
    a: &Allocation,
) -> Result<(), TestCaseError> {
    let ips: BTreeSet<Ipv4Addr> = a.ips.values().copied().collect();
    prop_assert_eq!(
        ips.len(),
        a.ips.len(),
        "two services share an address: {:?}",
        a.ips
    );
    for ip in &ips {
        prop_assert!(r.check(*ip).is_ok(), "{} is not a usable address", ip);
    }
    let wanting = services
        .iter()
        .filter(|e| !e.service.spec.is_headless())
        .count();
    prop_assert_eq!(a.ips.len(), wanting.min(r.usable() as usize));
    let ports: Vec<u16> = a.node_ports.values().flatten().flatten().copied().collect();
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    prop_assert_eq!(
        distinct.len(),
        ports.len(),
        "two services share a node port"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn addresses_and_node_ports_never_collide((r, services) in arbitrary_services()) {
        let a = allocate(r, &services);
        check_distinct(r, &services, &a)?;
        // Every conflict is a real one: the holder is earlier and got the value.
        for c in &a.conflicts {
            if let (Some(holder), "spec.clusterIP") = (&c.holder, c.field.as_str()) {
                prop_assert_eq!(a.ips[holder].to_string(), c.wanted.clone());
            }
        }
    }

    #[test]
    fn the_table_does_not_depend_on_input_order(
        (r, services) in arbitrary_services(),
        seed in any::<u64>(),
    ) {
        let mut shuffled = services.clone();
        // A deterministic shuffle from the seed.
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) >> 33) as usize % (i + 1);
            shuffled.swap(i, j);
        }
        prop_assert_eq!(allocate(r, &services), allocate(r, &shuffled));
    }

    #[test]
    fn a_service_holding_its_stored_address_keeps_it_when_others_go(
        (r, services) in arbitrary_services(),
        removed in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let before = allocate(r, &services);
        let kept: Vec<ServiceEntry> = services
            .iter()
            .zip(&removed)
            .filter(|(_, gone)| !**gone)
            .map(|(e, _)| e.clone())
            .collect();
        let after = allocate(r, &kept);
        for e in &kept {
            let key = e.key();
            if let Some(stored) = e.service.spec.cluster_ip.ip()
                && before.ips.get(&key) == Some(&stored)
            {
                prop_assert_eq!(after.ips.get(&key), Some(&stored), "{:?} moved", key);
            }
            if let Some(np) = e.service.spec.ports[0].node_port
                && e.service.spec.kind == ServiceType::NodePort
                && before.node_ports[&key][0] == Some(np)
            {
                prop_assert_eq!(after.node_ports[&key][0], Some(np));
            }
        }
    }

    #[test]
    fn services_applied_one_by_one_get_what_they_store(count in 1usize..40, headless in any::<u64>()) {
        let r = range("10.96.0.0/26");
        let services: Vec<(&str, Service)> = (0..count)
            .map(|i| {
                let spec = if headless >> (i % 64) & 1 == 1 {
                    "  clusterIP: None\n"
                } else {
                    "  type: NodePort\n  ports: [{port: 80}]\n"
                };
                ("default", parsed(&format!("s{i}"), spec))
            })
            .collect();
        let existing = apply_all(r, &services);
        let a = allocate(r, &existing);
        prop_assert!(a.conflicts.is_empty(), "{:?}", a.conflicts);
        for e in &existing {
            prop_assert_eq!(a.effective(e).spec, e.service.spec.clone());
        }
        check_distinct(r, &existing, &a)?;
    }

    #[test]
    fn two_nodes_assigning_concurrently_converge(
        names in proptest::collection::btree_set("[a-z]{1,3}", 2..6),
        t1 in 0u64..3,
        t2 in 0u64..3,
    ) {
        // Two nodes apply a different service each, from the same starting state, without
        // seeing each other's; then both see both.
        let r = range("10.96.0.0/28");
        let names: Vec<String> = names.into_iter().collect();
        let base: Vec<(&str, Service)> = names[2..]
            .iter()
            .map(|n| ("default", parsed(n, "  ports: [{port: 80}]\n")))
            .collect();
        let existing = apply_all(r, &base);
        let one = prepare(r, &existing, &parsed(&names[0], "  ports: [{port: 80}]\n")).unwrap();
        let two = prepare(r, &existing, &parsed(&names[1], "  ports: [{port: 80}]\n")).unwrap();
        let mut merged = existing.clone();
        merged.push(entry("default", &names[0], 10 + t1, "uid-a", one.spec.clone()));
        merged.push(entry("default", &names[1], 10 + t2, "uid-b", two.spec.clone()));
        let a = allocate(r, &merged);
        let mut reversed = merged.clone();
        reversed.reverse();
        prop_assert_eq!(&a, &allocate(r, &reversed));
        check_distinct(r, &merged, &a)?;
        // The services that existed before keep their addresses, and so does the earlier of
        // the two new ones.
        for e in &existing {
            prop_assert_eq!(a.ips.get(&e.key()).copied(), e.service.spec.cluster_ip.ip());
        }
        let (first, first_spec) = if (10 + t1, "uid-a") <= (10 + t2, "uid-b") {
            (&names[0], &one)
        } else {
            (&names[1], &two)
        };
        prop_assert_eq!(
            a.ips.get(&name("default", first)).copied(),
            first_spec.spec.cluster_ip.ip()
        );
    }
}

#[test]
fn stored_objects_read_back_as_entries() {
    let svc = prepare(
        DEFAULT_SERVICE_RANGE,
        &[],
        &parsed("web", "  ports: [{port: 80}]\n"),
    )
    .unwrap();
    let object: serde_json::Value =
        serde_json::from_slice(&Resource::Service(svc.clone()).to_stored()).unwrap();
    let stored = StoredObject {
        format: crate::workload::stored::FORMAT,
        generation: 1,
        created_ms: 42,
        uid: "the-uid".into(),
        revision: 0,
        history: Vec::new(),
        object,
        batch: None,
        sealed: None,
    };
    let snapshot = Snapshot::new(
        Vec::new(),
        vec![(object_key(Kind::Service, "default", "web"), stored)],
        Vec::new(),
    );
    let entries = services(&snapshot);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key(), name("default", "web"));
    assert_eq!(
        (entries[0].created_ms, entries[0].uid.as_str()),
        (42, "the-uid")
    );
    assert_eq!(entries[0].service.spec, svc.spec);
}
