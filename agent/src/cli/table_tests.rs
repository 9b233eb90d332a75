//! kubectl's tables: rows, columns and the renderer, byte for byte as kubectl prints them.

use std::net::Ipv4Addr;

use shoal_model::{
    ClusterIp, ContainerState, ContainerStatus, Deployment, DeploymentStatus, EndpointAddress,
    EndpointPort, EndpointSubset, Endpoints, NamespacePhase, NamespaceStatus, ObjectMeta,
    ObjectReference, Pod, PodCondition, PodConditionType, PodPhase, PodStatus, Protocol, Resource,
    Service, ServiceType, Timestamp, parse,
};

use super::table::*;

const NOW: u64 = 1_714_560_000_000; // 2024-05-01T10:40:00Z
const MINUTE: u64 = 60_000;

/// Parses `text`, expecting success.
fn ok(text: &str) -> Vec<Resource> {
    match parse("test.yaml", text.as_bytes()) {
        Ok(r) => r,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

/// The one Deployment in `text`.
fn deployment(text: &str) -> Deployment {
    match ok(text).as_slice() {
        [Resource::Deployment(d)] => d.clone(),
        other => panic!("expected one Deployment, got {other:#?}"),
    }
}

const NGINX: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
        - name: nginx
          image: nginx:1.27.0
";

/// A Service named `web` with `spec` (indented by two spaces).
fn service(spec: &str) -> Service {
    let text = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}");
    match ok(&text).as_slice() {
        [Resource::Service(s)] => s.clone(),
        other => panic!("expected one Service, got {other:#?}"),
    }
}

fn running(name: &str, ready: bool, restarts: u32) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        state: ContainerState::Running {
            started_at: Some(Timestamp(NOW - 10 * MINUTE)),
        },
        last_state: None,
        ready,
        restart_count: restarts,
        image: "nginx:1.27".into(),
        image_id: None,
        container_id: Some(format!("docker://{name}")),
        started: Some(true),
    }
}

fn waiting(name: &str, reason: &str) -> ContainerStatus {
    ContainerStatus {
        state: ContainerState::Waiting {
            reason: Some(reason.into()),
            message: None,
        },
        ready: false,
        ..running(name, false, 0)
    }
}

fn terminated(name: &str, exit_code: i32, reason: Option<&str>) -> ContainerStatus {
    ContainerStatus {
        state: ContainerState::Terminated {
            exit_code,
            signal: None,
            reason: reason.map(Into::into),
            message: None,
            started_at: Some(Timestamp(NOW - 3 * MINUTE)),
            finished_at: Some(Timestamp(NOW - 2 * MINUTE)),
        },
        ready: false,
        ..running(name, false, 0)
    }
}

fn condition(kind: PodConditionType, ok: bool) -> PodCondition {
    PodCondition {
        kind,
        status: ok.into(),
        reason: None,
        message: None,
        last_transition_time: Some(Timestamp(NOW - 10 * MINUTE)),
    }
}

fn web_pod() -> Pod {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-7c5ddbdf54-x8k2p\n  labels: {app: web}\nspec:\n  containers:\n  - name: web\n    image: nginx:1.27\n    resources:\n      limits: {cpu: 500m, memory: 128Mi}\n";
    let Resource::Pod(mut pod) = ok(text).remove(0) else {
        panic!()
    };
    let m = &mut pod.metadata;
    m.uid = Some("0b7d6f9c-0000-4000-8000-000000000001".into());
    m.resource_version = Some("1714560000000.3".into());
    m.generation = Some(1);
    m.creation_timestamp = Some(Timestamp(NOW - 45 * MINUTE));
    pod.spec.node_name = Some("laptop-1".into());
    pod
}

fn running_status() -> PodStatus {
    PodStatus {
        phase: PodPhase::Running,
        conditions: vec![
            condition(PodConditionType::PodScheduled, true),
            condition(PodConditionType::Initialized, true),
            condition(PodConditionType::ContainersReady, true),
            condition(PodConditionType::Ready, true),
        ],
        host_ip: Some("192.168.1.20".into()),
        pod_ip: Some("10.42.0.7".into()),
        start_time: Some(Timestamp(NOW - 45 * MINUTE)),
        container_statuses: vec![running("web", true, 2)],
        reason: None,
        message: None,
    }
}

fn web_service(kind: ServiceType, node_port: Option<u16>) -> Service {
    let mut s =
        service("  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n");
    s.spec.kind = kind;
    s.spec.cluster_ip = ClusterIp::Ip(Ipv4Addr::new(127, 200, 14, 3));
    s.spec.ports[0].node_port = node_port;
    s.metadata.uid = Some("u-1".into());
    s.metadata.creation_timestamp = Some(Timestamp(1_714_559_700_000));
    s
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
fn tables_align_like_kubectl() {
    let rows = vec![vec!["node-long".to_owned(), "alive".to_owned()]];
    assert_eq!(
        format_table(&["NAME", "STATUS"], &rows),
        "NAME        STATUS\nnode-long   alive\n"
    );
}

#[test]
fn durations_read_like_kubectl() {
    assert_eq!(human_duration(5_000), "5s");
    assert_eq!(human_duration(119_000), "119s");
    assert_eq!(human_duration(330_000), "5m30s");
    assert_eq!(human_duration(45 * 60_000), "45m");
    assert_eq!(human_duration((5 * 60 + 30) * 60_000), "5h30m");
    assert_eq!(human_duration(36 * 3_600_000), "36h");
    assert_eq!(human_duration((3 * 24 + 5) * 3_600_000), "3d5h");
    assert_eq!(human_duration(400 * 86_400_000), "400d");
}

#[test]
fn pod_status_column_follows_kubectl() {
    let pod = web_pod();
    let with = |containers: Vec<ContainerStatus>, phase: PodPhase| PodStatus {
        phase,
        container_statuses: containers,
        ..running_status()
    };
    let cases = [
        (
            with(vec![running("web", true, 0)], PodPhase::Running),
            "Running",
            "1/1",
        ),
        (
            with(vec![running("web", false, 0)], PodPhase::Running),
            "Running",
            "0/1",
        ),
        (with(vec![], PodPhase::Pending), "Pending", "0/1"),
        (
            with(vec![waiting("web", "ContainerCreating")], PodPhase::Pending),
            "ContainerCreating",
            "0/1",
        ),
        (
            with(vec![waiting("web", "ImagePullBackOff")], PodPhase::Pending),
            "ImagePullBackOff",
            "0/1",
        ),
        (
            with(vec![waiting("web", "CrashLoopBackOff")], PodPhase::Running),
            "CrashLoopBackOff",
            "0/1",
        ),
        (
            with(
                vec![terminated("web", 0, Some("Completed"))],
                PodPhase::Succeeded,
            ),
            "Completed",
            "0/1",
        ),
        (
            with(vec![terminated("web", 1, Some("Error"))], PodPhase::Failed),
            "Error",
            "0/1",
        ),
        (
            with(vec![terminated("web", 3, None)], PodPhase::Failed),
            "ExitCode:3",
            "0/1",
        ),
        // The first container in spec order that is not running wins, as in kubectl.
        (
            with(
                vec![
                    waiting("a", "CrashLoopBackOff"),
                    waiting("b", "ErrImagePull"),
                ],
                PodPhase::Pending,
            ),
            "CrashLoopBackOff",
            "0/1",
        ),
        // Completed next to a running container: Running again (the pod is Ready).
        (
            with(
                vec![terminated("a", 0, Some("Completed")), running("b", true, 0)],
                PodPhase::Running,
            ),
            "Running",
            "1/1",
        ),
    ];
    for (status, want, ready) in cases {
        let row = pod_row(&pod, &status, NOW, false);
        assert_eq!(
            (row[2].as_str(), row[1].as_str()),
            (want, ready),
            "{status:#?}"
        );
        assert_eq!(pod_row(&pod, &status, NOW, false)[2], want);
    }
    let evicted = PodStatus {
        reason: Some("Evicted".into()),
        phase: PodPhase::Failed,
        container_statuses: vec![],
        ..running_status()
    };
    assert_eq!(pod_row(&pod, &evicted, NOW, false)[2], "Evicted");
    let mut deleting = pod.clone();
    deleting.metadata.deletion_timestamp = Some(Timestamp(NOW));
    assert_eq!(
        pod_row(&deleting, &running_status(), NOW, false)[2],
        "Terminating"
    );
    let lost = PodStatus {
        reason: Some("NodeLost".into()),
        ..running_status()
    };
    assert_eq!(pod_row(&deleting, &lost, NOW, false)[2], "Unknown");
}

#[test]
fn pod_rows_and_table() {
    let pod = web_pod();
    let mut status = running_status();
    assert_eq!(
        pod_row(&pod, &status, NOW, true),
        [
            "web-7c5ddbdf54-x8k2p",
            "1/1",
            "Running",
            "2",
            "45m",
            "10.42.0.7",
            "laptop-1"
        ]
    );
    status.container_statuses[0].last_state = Some(ContainerState::Terminated {
        exit_code: 1,
        signal: None,
        reason: Some("Error".into()),
        message: None,
        started_at: None,
        finished_at: Some(Timestamp(NOW - 5 * MINUTE)),
    });
    let mut pending = pod.clone();
    pending.metadata.name = "db-0".into();
    pending.metadata.creation_timestamp = None;
    pending.spec.node_name = None;
    let pending_status = PodStatus::default();
    let rows = vec![
        pod_row(&pod, &status, NOW, true),
        pod_row(&pending, &pending_status, NOW, true),
    ];
    assert_eq!(
        format_table(&POD_WIDE_COLUMNS, &rows),
        "NAME                   READY   STATUS    RESTARTS     AGE         IP          NODE\n\
         web-7c5ddbdf54-x8k2p   1/1     Running   2 (5m ago)   45m         10.42.0.7   laptop-1\n\
         db-0                   0/1     Pending   0            <unknown>   <none>      <none>\n"
    );
    assert_eq!(pod_row(&pod, &status, NOW, false).len(), POD_COLUMNS.len());
}

#[test]
fn deployment_and_namespace_rows() {
    let mut d = deployment(NGINX);
    d.metadata.creation_timestamp = Some(Timestamp(NOW - 3 * 86_400_000));
    let status = DeploymentStatus {
        observed_generation: 1,
        replicas: 3,
        updated_replicas: 2,
        ready_replicas: 2,
        available_replicas: 1,
        unavailable_replicas: 2,
        conditions: vec![],
    };
    assert_eq!(
        deployment_row(&d, &status, NOW, false),
        ["nginx-deployment", "2/3", "2", "1", "3d"]
    );
    assert_eq!(
        deployment_row(&d, &status, NOW, true)[5..],
        ["nginx", "nginx:1.27.0", "app=nginx"]
    );
    assert_eq!(DEPLOYMENT_WIDE_COLUMNS.len(), 8);
    assert_eq!(DEPLOYMENT_COLUMNS[2], "UP-TO-DATE");
    let Resource::Namespace(mut ns) =
        ok("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n").remove(0)
    else {
        panic!()
    };
    ns.metadata.creation_timestamp = Some(Timestamp(NOW - 90_000));
    let status = NamespaceStatus {
        phase: NamespacePhase::Terminating,
    };
    assert_eq!(
        namespace_row(&ns, &status, NOW),
        ["prod", "Terminating", "90s"]
    );
    assert_eq!(NAMESPACE_COLUMNS, ["NAME", "STATUS", "AGE"]);
}

#[test]
fn services_print_as_kubectl_prints_them() {
    let now = 1_714_560_000_000; // five minutes later
    let s = web_service(ServiceType::ClusterIp, None);
    assert_eq!(
        service_row(&s, now, false),
        ["web", "ClusterIP", "127.200.14.3", "<none>", "80/TCP", "5m"]
    );
    let np = web_service(ServiceType::NodePort, Some(30080));
    assert_eq!(
        service_row(&np, now, true),
        [
            "web",
            "NodePort",
            "127.200.14.3",
            "<none>",
            "80:30080/TCP",
            "5m",
            "app=web"
        ]
    );
    let mut headless = service("  clusterIP: None\n");
    headless.metadata.creation_timestamp = Some(Timestamp(now));
    assert_eq!(
        service_row(&headless, now, true),
        [
            "web",
            "ClusterIP",
            "None",
            "<none>",
            "<none>",
            "0s",
            "<none>"
        ]
    );
    let table = format_table(&SERVICE_COLUMNS, &[service_row(&s, now, false)]);
    assert_eq!(
        table,
        "NAME   TYPE        CLUSTER-IP     EXTERNAL-IP   PORT(S)   AGE\n\
         web    ClusterIP   127.200.14.3   <none>        80/TCP    5m\n"
    );
}

#[test]
fn endpoints_print_as_kubectl_prints_them() {
    let now = 1_714_560_000_000;
    let ep = endpoints(
        &["127.65.1.2", "127.70.3.4", "127.71.0.1", "127.72.0.1"],
        &["127.73.0.1"],
        8080,
    );
    assert_eq!(
        endpoints_row(&ep, now),
        [
            "web",
            "127.65.1.2:8080,127.70.3.4:8080,127.71.0.1:8080 + 1 more...",
            "60s"
        ]
    );
    let two = endpoints(&["127.65.1.2", "127.70.3.4"], &[], 8080);
    assert_eq!(
        format_endpoints(&two, None),
        "127.65.1.2:8080,127.70.3.4:8080"
    );
    assert_eq!(
        format_endpoints(&two, Some("http")),
        "127.65.1.2:8080,127.70.3.4:8080"
    );
    assert_eq!(format_endpoints(&two, Some("admin")), "");
    let none = Endpoints {
        subsets: Vec::new(),
        ..two.clone()
    };
    assert_eq!(format_endpoints(&none, None), "<none>");
    // Only not-ready pods: kubectl prints nothing.
    assert_eq!(
        format_endpoints(&endpoints(&[], &["127.73.0.1"], 80), None),
        ""
    );
}
