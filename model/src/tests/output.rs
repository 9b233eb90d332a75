//! Kubernetes-shaped objects.

use serde_json::json;

use super::*;

const NOW: u64 = 1_714_560_000_000; // 2024-05-01T10:40:00Z
const MINUTE: u64 = 60_000;

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

#[test]
fn pods_render_like_kubectl() {
    let pod = web_pod();
    let status = running_status();
    let v = pod_object(&pod, &status);
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "Pod");
    assert_eq!(
        v["metadata"],
        json!({
            "name": "web-7c5ddbdf54-x8k2p",
            "namespace": "default",
            "uid": "0b7d6f9c-0000-4000-8000-000000000001",
            "resourceVersion": "1714560000000.3",
            "generation": 1,
            "creationTimestamp": "2024-05-01T09:55:00Z",
            "labels": {"app": "web"},
        })
    );
    assert_eq!(v["spec"]["nodeName"], "laptop-1");
    assert_eq!(
        v["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "500m"
    );
    let s = &v["status"];
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["podIP"], "10.42.0.7");
    assert_eq!(s["hostIP"], "192.168.1.20");
    assert_eq!(s["qosClass"], "Guaranteed");
    assert_eq!(s["startTime"], "2024-05-01T09:55:00Z");
    assert_eq!(
        s["conditions"][3],
        json!({"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T10:30:00Z"})
    );
    assert_eq!(
        s["containerStatuses"][0],
        json!({
            "name": "web",
            "state": {"running": {"startedAt": "2024-05-01T10:30:00Z"}},
            "ready": true,
            "restartCount": 2,
            "image": "nginx:1.27",
            "containerID": "docker://web",
            "started": true,
        })
    );
    // It reads back, and a List wraps it as kubectl does.
    assert_eq!(pod_from_object(&v).unwrap(), (pod, status));
    let list = list_object(vec![v.clone()]);
    assert_eq!(list["kind"], "List");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["items"][0], v);
}

#[test]
fn terminated_states_render() {
    let mut status = running_status();
    status.container_statuses[0].last_state = Some(ContainerState::Terminated {
        exit_code: 137,
        signal: Some(9),
        reason: Some("OOMKilled".into()),
        message: None,
        started_at: None,
        finished_at: Some(Timestamp(NOW)),
    });
    let v = pod_object(&web_pod(), &status);
    assert_eq!(
        v["status"]["containerStatuses"][0]["lastState"],
        json!({"terminated": {"exitCode": 137, "signal": 9, "reason": "OOMKilled", "finishedAt": "2024-05-01T10:40:00Z"}})
    );
    assert_eq!(pod_from_object(&v).unwrap().1, status);
}

#[test]
fn rendered_objects_apply_again() {
    // `get -o yaml | apply -f -`: read-only fields and status are ignored, so the object is
    // unchanged. (A pod's nodeName is shoal's to choose; see the parse tests.)
    let d = deployment(NGINX);
    let mut shown = d.clone();
    shown.metadata.uid = Some("u".into());
    shown.metadata.generation = Some(2);
    shown.metadata.creation_timestamp = Some(Timestamp(NOW));
    let status = DeploymentStatus {
        observed_generation: 2,
        replicas: 3,
        updated_replicas: 3,
        ready_replicas: 3,
        available_replicas: 3,
        unavailable_replicas: 0,
        conditions: vec![DeploymentCondition {
            kind: DeploymentConditionType::Available,
            status: ConditionStatus::True,
            reason: Some("MinimumReplicasAvailable".into()),
            message: Some("Deployment has minimum availability.".into()),
            last_update_time: Some(Timestamp(NOW)),
            last_transition_time: Some(Timestamp(NOW)),
        }],
    };
    let v = deployment_object(&shown, &status);
    assert_eq!(v["status"]["observedGeneration"], 2);
    assert_eq!(
        v["status"].get("unavailableReplicas"),
        None,
        "zero counts are left out"
    );
    let yaml = serde_saphyr::to_string(&list_object(vec![v.clone()])).unwrap();
    let back = parse("get.yaml", yaml.as_bytes()).unwrap();
    assert_eq!(back, [Resource::Deployment(d.clone())]);
    assert_eq!(
        apply_outcome(Some(&Resource::Deployment(d).to_stored()), &back[0]),
        Outcome::Unchanged
    );
    assert_eq!(deployment_from_object(&v).unwrap(), (shown, status));

    let ns = ok("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n").remove(0);
    let Resource::Namespace(ns) = ns else {
        panic!()
    };
    let v = namespace_object(&ns, &NamespaceStatus::default());
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}, "status": {"phase": "Active"}})
    );
    assert_eq!(
        namespace_from_object(&v).unwrap(),
        (ns.clone(), NamespaceStatus::default())
    );
    assert_eq!(
        ok(&serde_json::to_string(&v).unwrap()),
        [Resource::Namespace(ns)]
    );
}

#[test]
fn qos_classes() {
    let pod = |resources: &str| {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: i\n{resources}"
        );
        match ok(&text).remove(0) {
            Resource::Pod(p) => qos_class(&p.spec),
            _ => panic!(),
        }
    };
    assert_eq!(pod(""), "BestEffort");
    assert_eq!(pod("    resources: {requests: {cpu: 1}}\n"), "Burstable");
    assert_eq!(
        pod("    resources: {limits: {cpu: 1, memory: 1Gi}}\n"),
        "Guaranteed"
    );
    assert_eq!(
        pod("    resources: {requests: {cpu: 500m}, limits: {cpu: 1, memory: 1Gi}}\n"),
        "Burstable"
    );
}

#[test]
fn timestamps_round_trip() {
    for ms in [0, 951_782_400_000, NOW, 4_102_444_799_000] {
        let text = serde_json::to_value(Timestamp(ms)).unwrap();
        assert_eq!(
            serde_json::from_value::<Timestamp>(text).unwrap(),
            Timestamp(ms)
        );
    }
    assert_eq!(
        Timestamp::parse("2024-05-01T10:40:00.123456Z"),
        Some(Timestamp(NOW))
    );
    for bad in [
        "",
        "2024-05-01",
        "2024-13-01T00:00:00Z",
        "2024-05-01T10:40:00+02:00",
        "2024-05-01T10:40:00.Z",
        "+024-05-01T10:40:00Z",
    ] {
        assert_eq!(Timestamp::parse(bad), None, "{bad}");
    }
}
