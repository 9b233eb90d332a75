//! Services: what is accepted, the defaults, Kubernetes' rules with their errors, the canonical
//! form, and the Kubernetes-shaped output (`get svc`, `get endpoints`).

use std::net::Ipv4Addr;

use serde_json::json;

use super::*;

/// The one Service in `text`.
fn service(text: &str) -> Service {
    match ok(text).as_slice() {
        [Resource::Service(s)] => s.clone(),
        other => panic!("expected one Service, got {other:#?}"),
    }
}

/// A Service named `web` with `spec` (indented by two spaces).
fn svc(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}")
}

#[test]
fn a_minimal_service_gets_kubernetes_defaults() {
    let s = service(&svc("  selector:\n    app: web\n  ports:\n  - port: 80\n"));
    assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(s.spec.kind, ServiceType::ClusterIp);
    assert_eq!(s.spec.cluster_ip, ClusterIp::Auto);
    assert_eq!(s.spec.session_affinity, SessionAffinity::None);
    assert_eq!(s.spec.selector["app"], "web");
    assert_eq!(
        s.spec.ports,
        [ServicePort {
            name: None,
            protocol: Protocol::Tcp,
            port: 80,
            target_port: PortRef::Number(80),
            node_port: None,
        }]
    );
    assert_eq!(
        Resource::Service(s).key().to_string(),
        "service/web",
        "apply prints service/web created"
    );
}

#[test]
fn a_node_port_service_with_named_ports() {
    let s = service(&svc("  type: NodePort
  clusterIP: 127.200.0.10
  selector: {app: web, tier: front}
  ports:
  - name: http
    port: 80
    targetPort: http
    nodePort: 30080
  - name: admin
    protocol: TCP
    port: 8081
    targetPort: 9000
"));
    assert_eq!(s.spec.kind, ServiceType::NodePort);
    assert_eq!(
        s.spec.cluster_ip,
        ClusterIp::Ip(Ipv4Addr::new(127, 200, 0, 10))
    );
    assert_eq!(s.spec.ports[0].target_port, PortRef::Name("http".into()));
    assert_eq!(s.spec.ports[0].node_port, Some(30080));
    assert_eq!(s.spec.ports[1].target_port, PortRef::Number(9000));
    assert_eq!(s.spec.ports[1].node_port, None);
}

#[test]
fn headless_services_may_have_no_ports_and_no_selector() {
    let s = service(&svc("  clusterIP: None\n"));
    assert!(s.spec.is_headless());
    assert!(s.spec.ports.is_empty() && s.spec.selector.is_empty());
    // "" means "assign one", like an absent field; 0 and "" targetPort mean "same as port".
    let s = service(&svc(
        "  clusterIP: \"\"\n  ports:\n  - {port: 53, targetPort: 0, name: a}\n  - {port: 54, targetPort: \"\", name: b}\n",
    ));
    assert_eq!(s.spec.cluster_ip, ClusterIp::Auto);
    assert_eq!(s.spec.ports[0].target_port, PortRef::Number(53));
    assert_eq!(s.spec.ports[1].target_port, PortRef::Number(54));
}

#[test]
fn what_kubectl_get_service_prints_applies() {
    let s = service(EXPORTED_SERVICE);
    assert_eq!(s.metadata.name, "web");
    assert_eq!(s.metadata.uid, None, "read-only metadata is ignored");
    assert_eq!(
        s.spec.cluster_ip,
        ClusterIp::Ip(Ipv4Addr::new(127, 200, 14, 3))
    );
    assert_eq!(s.spec.kind, ServiceType::NodePort);
    assert_eq!(s.spec.ports[0].node_port, Some(30080));
    assert_eq!(s.spec.ports[0].target_port, PortRef::Name("http".into()));
    // clusterIPs alone gives the address too.
    let s = service(&svc("  clusterIPs: [127.200.0.7]\n  ports: [{port: 80}]\n"));
    assert_eq!(
        s.spec.cluster_ip,
        ClusterIp::Ip(Ipv4Addr::new(127, 200, 0, 7))
    );
}

#[test]
fn unsupported_service_features_are_named() {
    let cases = [
        (
            "  type: LoadBalancer\n  ports: [{port: 80}]\n",
            "spec.type: type LoadBalancer is not supported yet (use ClusterIP or NodePort) (line 6)",
        ),
        (
            "  ports:\n  - port: 53\n    protocol: UDP\n",
            "spec.ports[0].protocol: UDP services are not supported yet (TCP only) (line 8)",
        ),
        (
            "  ports:\n  - port: 53\n    protocol: SCTP\n",
            "spec.ports[0].protocol: SCTP is not supported yet (line 8)",
        ),
        (
            "  sessionAffinity: ClientIP\n  ports: [{port: 80}]\n",
            "spec.sessionAffinity: ClientIP session affinity is not supported yet (use None) (line 6)",
        ),
        (
            "  externalIPs: [192.168.1.10]\n  ports: [{port: 80}]\n",
            "spec.externalIPs: not supported yet (use type NodePort to reach a service from outside) (line 6)",
        ),
        (
            "  ipFamilyPolicy: PreferDualStack\n  ports: [{port: 80}]\n",
            "spec.ipFamilyPolicy: not supported yet (services are single-stack IPv4) (line 6)",
        ),
        (
            "  ipFamilies: [IPv6]\n  ports: [{port: 80}]\n",
            "spec.ipFamilies[0]: \"IPv6\" is not supported yet (services are IPv4) (line 6)",
        ),
        (
            "  clusterIP: fd00::10\n  ports: [{port: 80}]\n",
            "spec.clusterIP: fd00::10: IPv6 services are not supported yet (line 6)",
        ),
        (
            "  clusterIPs: [127.200.0.7, 127.200.0.8]\n  ports: [{port: 80}]\n",
            "spec.clusterIPs: dual-stack services are not supported yet (give one IPv4 address) (line 6)",
        ),
        (
            "  ports:\n  - port: 80\n    appProtocol: http\n",
            "spec.ports[0].appProtocol: not supported yet (line 8)",
        ),
    ];
    for (spec, want) in cases {
        let errs = errors(&svc(spec));
        assert_eq!(errs, [format!("deploy.yaml: doc 1: {want}")], "{spec}");
    }
    let errs = errors(&svc(
        "  type: ExternalName\n  externalName: db.example.com\n",
    ));
    for want in [
        "spec.type: type ExternalName is not supported yet (use ClusterIP or NodePort) (line 6)",
        "spec.externalName: not supported yet (line 7)",
    ] {
        assert!(
            errs.contains(&format!("deploy.yaml: doc 1: {want}")),
            "{errs:#?}"
        );
    }
    // Kubernetes' defaults for what shoal does are accepted.
    service(&svc(
        "  internalTrafficPolicy: Cluster\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv4]\n  sessionAffinity: None\n  publishNotReadyAddresses: false\n  ports: [{port: 80}]\n",
    ));
}

#[test]
fn kubernetes_rules_for_services() {
    let cases = [
        (
            "  selector: {app: web}\n",
            "spec.ports: required: a service needs at least one port (only a headless service, clusterIP: None, may have none) (line 5)",
        ),
        (
            "  ports:\n  - port: 80\n  - port: 443\n",
            "spec.ports[0].name: required when the service has more than one port (line 7)",
        ),
        (
            "  ports:\n  - {name: http, port: 80}\n  - {name: http, port: 443}\n",
            "spec.ports[1].name: duplicate port name \"http\" (also ports[0]) (line 8)",
        ),
        (
            "  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n",
            "spec.ports[1].port: duplicate port 80 (also ports[0]) (line 8)",
        ),
        (
            "  ports:\n  - {name: Web, port: 80}\n",
            "spec.ports[0].name: \"Web\" must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc') (line 7)",
        ),
        (
            "  ports:\n  - port: 70000\n",
            "spec.ports[0].port: must be between 1 and 65535, got 70000 (line 7)",
        ),
        (
            "  ports:\n  - {port: 80, targetPort: \"8080\"}\n",
            "spec.ports[0].targetPort: \"8080\" is not a valid port name: 1-15 lower case letters, digits and '-', with at least one letter, no '-' at either end and no '--' (line 7)",
        ),
        (
            "  type: NodePort\n  ports:\n  - {port: 80, nodePort: 8080}\n",
            "spec.ports[0].nodePort: 8080 is outside the node port range 30000-32767 (line 8)",
        ),
        (
            "  ports:\n  - {port: 80, nodePort: 30080}\n",
            "spec.ports[0].nodePort: may only be given when spec.type is NodePort (the type is ClusterIP) (line 7)",
        ),
        (
            "  type: NodePort\n  ports:\n  - {name: a, port: 80, nodePort: 30080}\n  - {name: b, port: 81, nodePort: 30080}\n",
            "spec.ports[1].nodePort: duplicate node port 30080 (also ports[0]) (line 9)",
        ),
        (
            "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]\n",
            "spec.clusterIP: may not be None for a NodePort service (a headless service has no ports of its own to open on the nodes) (line 7)",
        ),
        (
            "  clusterIP: web.local\n  ports: [{port: 80}]\n",
            "spec.clusterIP: expected an IPv4 address, \"\" (assign one) or None (headless), got string \"web.local\" (line 6)",
        ),
        (
            "  clusterIP: 0.0.0.0\n  ports: [{port: 80}]\n",
            "spec.clusterIP: 0.0.0.0 cannot be a service address (line 6)",
        ),
        (
            "  clusterIP: 127.200.0.7\n  clusterIPs: [127.200.0.8]\n  ports: [{port: 80}]\n",
            "spec.clusterIPs[0]: 127.200.0.8 does not match spec.clusterIP (127.200.0.7): give the same address (line 7)",
        ),
        (
            "  selector: {app: \"-web\"}\n  ports: [{port: 80}]\n",
            "spec.selector[app]: label value \"-web\" must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (line 6)",
        ),
        (
            "  prots: [{port: 80}]\n",
            "spec.prots: unknown field (did you mean \"ports\"?) (line 6)",
        ),
    ];
    for (spec, want) in cases {
        let errs = errors(&svc(spec));
        assert!(
            errs.contains(&format!("deploy.yaml: doc 1: {want}")),
            "{spec}\ngot {errs:#?}"
        );
    }
    // Service names are DNS-1035 labels: they start with a letter.
    let errs = errors(&svc("  ports: [{port: 80}]\n").replace("name: web", "name: 1web"));
    assert!(
        errs[0].starts_with(
            "deploy.yaml: doc 1: metadata.name: \"1web\" must start with a lower case letter"
        ),
        "{errs:#?}"
    );
}

#[test]
fn equivalent_services_store_the_same_bytes() {
    let a = service(&svc("  ports:\n  - port: 80\n"));
    let b = service(&svc(
        "  type: ClusterIP\n  clusterIP: \"\"\n  sessionAffinity: None\n  ports:\n  - port: 80\n    targetPort: 80\n    protocol: TCP\n",
    ));
    assert_eq!(a.clone().spec, b.spec.clone());
    let (a, b) = (Resource::Service(a), Resource::Service(b));
    assert_eq!(a.to_stored(), b.to_stored());
    let stored = String::from_utf8(a.to_stored()).unwrap();
    assert_eq!(
        stored,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"ports":[{"protocol":"TCP","port":80,"targetPort":80}],"sessionAffinity":"None","type":"ClusterIP"}}"#
    );
    assert_eq!(
        apply_outcome(Some(stored.as_bytes()), &b),
        Outcome::Unchanged
    );
    assert_eq!(Resource::from_stored(stored.as_bytes()).unwrap(), a);
    // An assigned address is part of the stored form.
    let Resource::Service(mut with_ip) = a.clone() else {
        unreachable!()
    };
    with_ip.spec.cluster_ip = ClusterIp::Ip(Ipv4Addr::new(127, 200, 3, 4));
    let with_ip = Resource::Service(with_ip);
    assert!(
        String::from_utf8(with_ip.to_stored())
            .unwrap()
            .contains(r#""clusterIP":"127.200.3.4""#)
    );
    assert_eq!(
        apply_outcome(Some(stored.as_bytes()), &with_ip),
        Outcome::Configured
    );
}

#[test]
fn stored_services_are_checked() {
    for (bytes, want) in [
        (
            &br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"default"}}"#[..],
            "has no spec",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"default"},"spec":{"ports":[{"protocol":"UDP","port":53,"targetPort":53}],"sessionAffinity":"None","type":"ClusterIP"}}"#,
            "spec.ports[0].protocol",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"default"},"spec":{"clusterIP":"nope","ports":[],"sessionAffinity":"None","type":"ClusterIP"}}"#,
            "not an IPv4 address",
        ),
    ] {
        let err = Resource::from_stored(bytes).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

fn web_service(kind: ServiceType, node_port: Option<u16>) -> Service {
    let mut s = service(&svc(
        "  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n",
    ));
    s.spec.kind = kind;
    s.spec.cluster_ip = ClusterIp::Ip(Ipv4Addr::new(127, 200, 14, 3));
    s.spec.ports[0].node_port = node_port;
    s.metadata.uid = Some("u-1".into());
    s.metadata.creation_timestamp = Some(Timestamp(1_714_559_700_000));
    s
}

#[test]
fn service_json_is_kubernetes_shaped_and_applies_back() {
    let s = web_service(ServiceType::NodePort, Some(30080));
    let v = service_object(&s);
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "Service");
    assert_eq!(v["metadata"]["uid"], "u-1");
    assert_eq!(v["spec"]["clusterIP"], "127.200.14.3");
    assert_eq!(v["spec"]["clusterIPs"], json!(["127.200.14.3"]));
    assert_eq!(v["spec"]["type"], "NodePort");
    assert_eq!(v["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(v["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(
        v["spec"]["ports"],
        json!([{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080}])
    );
    assert_eq!(v["status"], json!({"loadBalancer": {}}));
    assert_eq!(service_from_object(&v).unwrap(), s);
    // `get -o yaml | apply -f -` gives back the same service.
    let yaml = serde_saphyr::to_string(&v).unwrap();
    let mut back = service(&yaml);
    back.metadata.uid = s.metadata.uid.clone();
    back.metadata.creation_timestamp = s.metadata.creation_timestamp;
    assert_eq!(back, s, "YAML was:\n{yaml}");
    let headless = service(&svc("  clusterIP: None\n"));
    assert_eq!(
        service_object(&headless)["spec"]["clusterIPs"],
        json!(["None"])
    );
}

fn address(ip: &str, pod: &str) -> EndpointAddress {
    EndpointAddress {
        ip: ip.into(),
        node_name: Some("node-1".into()),
        target_ref: Some(ObjectReference {
            kind: "Pod".into(),
            namespace: Some("default".into()),
            name: pod.into(),
            uid: None,
        }),
    }
}

fn endpoints(addresses: &[&str], not_ready: &[&str], port: u16) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: "web".into(),
            namespace: Some("default".into()),
            creation_timestamp: Some(Timestamp(1_714_559_940_000)),
            ..ObjectMeta::default()
        },
        subsets: vec![EndpointSubset {
            addresses: addresses.iter().map(|a| address(a, "p")).collect(),
            not_ready_addresses: not_ready.iter().map(|a| address(a, "q")).collect(),
            ports: vec![EndpointPort {
                name: Some("http".into()),
                port,
                protocol: Protocol::Tcp,
            }],
        }],
    }
}

#[test]
fn endpoints_json_is_kubernetes_shaped() {
    let ep = endpoints(&["127.65.1.2"], &["127.73.0.1"], 8080);
    let v = endpoints_object(&ep);
    assert_eq!(v["kind"], "Endpoints");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["subsets"][0]["addresses"][0]["ip"], "127.65.1.2");
    assert_eq!(v["subsets"][0]["addresses"][0]["nodeName"], "node-1");
    assert_eq!(v["subsets"][0]["addresses"][0]["targetRef"]["kind"], "Pod");
    assert_eq!(v["subsets"][0]["notReadyAddresses"][0]["ip"], "127.73.0.1");
    assert_eq!(
        v["subsets"][0]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(endpoints_from_object(&v).unwrap(), ep);
    let empty = Endpoints {
        subsets: Vec::new(),
        ..ep
    };
    assert!(endpoints_object(&empty).get("subsets").is_none());
}
