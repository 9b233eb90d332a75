//! Parsing: what is accepted, the defaults, and every error with its file, document, path and
//! line.

use std::io::Cursor;

use super::*;

const ISSUE_EXAMPLE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: prod
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: \"80\"
";

#[test]
fn the_issue_example_names_file_doc_path_and_line() {
    assert_eq!(
        errors(ISSUE_EXAMPLE),
        [
            "deploy.yaml: doc 2: spec.template.spec.containers[0].ports[0].containerPort: expected integer, got string \"80\" (line 23)"
        ]
    );
    let err = parse("deploy.yaml", ISSUE_EXAMPLE.as_bytes()).unwrap_err();
    let e = &err.0[0];
    assert_eq!(
        (e.file.as_str(), e.doc, e.line),
        ("deploy.yaml", Some(2), Some(23))
    );
    assert_eq!(
        e.path,
        "spec.template.spec.containers[0].ports[0].containerPort"
    );
}

#[test]
fn nginx_deployment() {
    let d = deployment(NGINX);
    assert_eq!(d.metadata.name, "nginx-deployment");
    assert_eq!(d.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(d.metadata.labels["app.kubernetes.io/part-of"], "web");
    let spec = &d.spec;
    assert_eq!(spec.replicas, 3);
    assert_eq!(
        spec.strategy,
        DeploymentStrategy::RollingUpdate {
            rolling_update: RollingUpdate {
                max_surge: IntOrPercent::Int(1),
                max_unavailable: IntOrPercent::Int(0),
            }
        }
    );
    let pod = &spec.template.spec;
    assert_eq!(pod.termination_grace_period_seconds, 10);
    assert_eq!(pod.restart_policy, RestartPolicy::Always);
    let c = &pod.containers[0];
    assert_eq!(c.image_pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(
        c.ports,
        [ContainerPort {
            container_port: 80,
            name: Some("http".into()),
            protocol: Protocol::Tcp,
            host_port: None,
        }]
    );
    let r = &c.resources;
    assert_eq!(r.requests.cpu, Some(Cpu(100)));
    assert_eq!(r.requests.memory, Some(Memory(128 << 20)));
    assert_eq!(r.limits.cpu, Some(Cpu(500)));
    assert_eq!(r.limits.memory, Some(Memory(256 << 20)));
    let readiness = c.readiness_probe.as_ref().unwrap();
    assert_eq!(
        readiness.handler,
        ProbeHandler::HttpGet(HttpGetAction {
            path: "/healthz".into(),
            port: PortRef::Name("http".into()),
            scheme: Scheme::Http,
            http_headers: vec![HttpHeader {
                name: "X-Probe".into(),
                value: "readiness".into()
            }],
        })
    );
    assert_eq!(
        (readiness.initial_delay_seconds, readiness.period_seconds),
        (5, 5)
    );
    // Unset timings take Kubernetes' defaults.
    assert_eq!(
        (
            readiness.timeout_seconds,
            readiness.success_threshold,
            readiness.failure_threshold
        ),
        (1, 1, 3)
    );
    let liveness = c.liveness_probe.as_ref().unwrap();
    assert_eq!(
        liveness.handler,
        ProbeHandler::TcpSocket(TcpSocketAction {
            port: PortRef::Number(80)
        })
    );
    assert_eq!(liveness.failure_threshold, 5);
    assert!(c.startup_probe.is_none());
}

#[test]
fn worker_with_env_command_and_args() {
    let d = deployment(WORKER);
    assert_eq!(d.metadata.namespace.as_deref(), Some("jobs"));
    assert_eq!(d.spec.strategy, DeploymentStrategy::Recreate);
    assert_eq!(
        (d.spec.revision_history_limit, d.spec.min_ready_seconds),
        (3, 10)
    );
    let pod = &d.spec.template.spec;
    assert_eq!(pod.node_selector["kubernetes.io/arch"], "arm64");
    let [worker, sidecar] = pod.containers.as_slice() else {
        panic!()
    };
    assert_eq!(worker.command, ["/bin/worker"]);
    assert_eq!(worker.args, ["--queue=emails", "--concurrency", "4"]);
    assert_eq!(worker.working_dir.as_deref(), Some("/srv"));
    let env: Vec<(&str, &str)> = worker
        .env
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("RUST_LOG", "info"),
            ("QUEUE_URL", "redis://queue:6379/0"),
            ("EMPTY", "")
        ]
    );
    // Limits only: the requests are the limits (Kubernetes' rule).
    assert_eq!(worker.resources.requests, worker.resources.limits);
    assert_eq!(worker.resources.limits.cpu, Some(Cpu(2000)));
    assert_eq!(worker.resources.limits.memory, Some(Memory(1 << 30)));
    // A digest pins the image: IfNotPresent.
    assert_eq!(worker.image_pull_policy, PullPolicy::IfNotPresent);
    let startup = worker.startup_probe.as_ref().unwrap();
    assert_eq!(
        startup.handler,
        ProbeHandler::Exec(ExecAction {
            command: vec!["cat".into(), "/tmp/ready".into()]
        })
    );
    assert_eq!(sidecar.image_pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(sidecar.command[2], "while true; do sleep 3600; done");
}

#[test]
fn multi_document_file() {
    let resources = ok(MULTI);
    let keys: Vec<String> = resources
        .iter()
        .map(|r| {
            let k = r.key();
            format!("{}/{}/{}", k.kind.key_kind(), k.namespace, k.name)
        })
        .collect();
    assert_eq!(
        keys,
        ["namespace//shop", "deployment/shop/api", "pod/shop/debug"]
    );
    let Resource::Namespace(ns) = &resources[0] else {
        panic!()
    };
    assert_eq!(ns.metadata.namespace, None);
    let Resource::Deployment(d) = &resources[1] else {
        panic!()
    };
    assert_eq!(d.spec.replicas, 1);
    let c = &d.spec.template.spec.containers[0];
    assert_eq!(c.ports[1].protocol, Protocol::Udp);
    let Some(Probe {
        handler: ProbeHandler::HttpGet(h),
        ..
    }) = &c.readiness_probe
    else {
        panic!()
    };
    assert_eq!((h.path.as_str(), h.scheme), ("/", Scheme::Http));
    let Resource::Pod(pod) = &resources[2] else {
        panic!()
    };
    assert_eq!(pod.spec.restart_policy, RestartPolicy::Never);
    assert_eq!(
        pod.spec.containers[0].resources.requests.memory,
        Some(Memory(64 << 20))
    );
    assert_eq!(pod.spec.containers[0].resources.limits.memory, None);
}

#[test]
fn exported_manifest_with_status_and_defaults_applies() {
    let d = deployment(EXPORTED);
    assert_eq!(d.metadata.uid, None, "read-only fields are ignored");
    assert_eq!(d.metadata.generation, None);
    assert_eq!(d.spec.template.spec.containers[0].image, "nginx");
    // The same as writing none of the defaulted fields.
    let minimal = with_container("");
    let mut expected = deployment(&minimal);
    expected.metadata.labels.insert("app".into(), "web".into());
    expected
        .metadata
        .annotations
        .insert("deployment.kubernetes.io/revision".into(), "1".into());
    expected.spec.template.spec.containers[0].name = "nginx".into();
    expected.spec.template.spec.containers[0].image = "nginx".into();
    expected.spec.template.spec.containers[0].image_pull_policy = PullPolicy::Always;
    assert_eq!(d, expected);
}

#[test]
fn defaults_are_filled() {
    let d = deployment(&with_container(""));
    let spec = &d.spec;
    assert_eq!(d.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.strategy, DeploymentStrategy::default());
    assert_eq!(
        spec.strategy,
        DeploymentStrategy::RollingUpdate {
            rolling_update: RollingUpdate {
                max_surge: IntOrPercent::Percent(25),
                max_unavailable: IntOrPercent::Percent(25),
            }
        }
    );
    assert_eq!(spec.revision_history_limit, 10);
    assert_eq!(spec.progress_deadline_seconds, 600);
    assert_eq!(spec.min_ready_seconds, 0);
    assert!(!spec.paused);
    let pod = &spec.template.spec;
    assert_eq!(pod.restart_policy, RestartPolicy::Always);
    assert_eq!(pod.termination_grace_period_seconds, 30);
    let c = &pod.containers[0];
    assert_eq!(c.image_pull_policy, PullPolicy::IfNotPresent);
    assert!(c.resources.is_empty());

    let d = deployment(&with_container(
        "ports:\n- containerPort: 53\nlivenessProbe:\n  httpGet:\n    port: 53",
    ));
    let c = &d.spec.template.spec.containers[0];
    assert_eq!(c.ports[0].protocol, Protocol::Tcp);
    let probe = c.liveness_probe.clone().unwrap();
    assert_eq!(
        probe,
        Probe::new(ProbeHandler::HttpGet(HttpGetAction {
            path: "/".into(),
            port: PortRef::Number(53),
            scheme: Scheme::Http,
            http_headers: vec![],
        }))
    );
    assert_eq!(
        (
            probe.initial_delay_seconds,
            probe.period_seconds,
            probe.timeout_seconds,
            probe.success_threshold,
            probe.failure_threshold
        ),
        (0, 10, 1, 1, 3)
    );
}

#[test]
fn one_bad_document_fails_the_whole_file_and_all_errors_are_reported() {
    let text = format!(
        "{}---\n{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n",
        NGINX,
        with_container("ports:\n- containerPort: 0")
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "deploy.yaml: doc 2: spec.template.spec.containers[0].ports[0].containerPort: must be between 1 and 65535, got 0 (line "
        ),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("deploy.yaml: doc 3: spec.containers[0].image: required (line "),
        "{errs:#?}"
    );
}

#[test]
fn syntax_errors_do_not_hide_other_documents() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: [oops\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  bogus: 1\nspec:\n  containers: []\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with("deploy.yaml: doc 1: invalid YAML: "),
        "{errs:#?}"
    );
    assert!(errs[0].ends_with("(line 3)") || errs[0].ends_with("(line 4)"));
    assert_eq!(
        errs[1],
        "deploy.yaml: doc 2: metadata.bogus: unknown field (line 9)"
    );
    assert_eq!(
        errs[2],
        "deploy.yaml: doc 2: spec.containers: must have at least one container (line 11)"
    );
}

#[test]
fn unknown_fields_are_named_with_suggestions() {
    let errs = errors(&with_container("ports:\n- contianerPort: 80\n  nmae: http"));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].ports[0].containerPort: required (line 18)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].ports[0].contianerPort: unknown field (did you mean \"containerPort\"?) (line 18)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].ports[0].nmae: unknown field (did you mean \"name\"?) (line 19)",
        ]
    );
    let errs = errors(&format!("{}specs: {{}}\n", with_container("")));
    assert_eq!(
        errs,
        ["deploy.yaml: doc 1: specs: unknown field (did you mean \"spec\"?) (line 17)"]
    );
    let errs = errors(&with_container("foo: bar"));
    assert_eq!(
        errs,
        ["deploy.yaml: doc 1: spec.template.spec.containers[0].foo: unknown field (line 17)"]
    );
}

#[test]
fn unsupported_fields_are_named() {
    let errs = errors(&with_container(
        "env:\n- name: A\n  valueFrom:\n    fieldRef: {fieldPath: spec.serviceAccountName}\nvolumeDevices:\n- {name: data, devicePath: /dev/xvda}\nlifecycle:\n  preStop:\n    exec: {command: [sleep, '5']}",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: spec.serviceAccountName is not supported yet; supported: metadata.name, metadata.namespace, metadata.uid, metadata.labels['<key>'], metadata.annotations['<key>'], spec.nodeName, status.podIP, status.hostIP (line 20)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].volumeDevices: not supported yet (line 21)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].lifecycle: not supported yet (line 23)",
        ]
    );
    let text = with_container("").replace(
        "  selector:\n    matchLabels:\n      app: web\n",
        "  selector:\n    matchExpressions:\n    - {key: app, operator: In, values: [web]}\n",
    );
    let errs = errors(&text);
    assert!(
        errs.contains(
            &"deploy.yaml: doc 1: spec.selector.matchExpressions: not supported yet (use matchLabels) (line 7)"
                .to_owned()
        ),
        "{errs:#?}"
    );
    // Pod-level fields, and a field with its default value next to one without.
    let text = with_container("").replace(
        "    spec:\n      containers:",
        "    spec:\n      dnsPolicy: ClusterFirst\n      hostNetwork: true\n      initContainers:\n      - {name: init, image: busybox}\n      nodeName: node-1\n      containers:",
    );
    let errs = errors(&text);
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.hostNetwork: not supported yet (line 15)",
            "deploy.yaml: doc 1: spec.template.spec.initContainers: not supported yet (line 16)",
            "deploy.yaml: doc 1: spec.template.spec.nodeName: not supported yet (shoal places pods itself; steer placement with nodeSelector) (line 18)",
        ]
    );
    let errs = errors(&with_container(
        "ports:\n- containerPort: 9\n  protocol: SCTP\nresources:\n  limits:\n    nvidia.com/gpu: 1",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].ports[0].protocol: SCTP is not supported yet (line 19)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].resources.limits.nvidia.com/gpu: resource \"nvidia.com/gpu\" is not supported yet (shoal schedules cpu and memory) (line 22)",
        ]
    );
    let errs = errors(&with_container(
        "readinessProbe:\n  httpGet: {port: 80, scheme: HTTPS}",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].readinessProbe.httpGet.scheme: HTTPS probes are not supported yet (use HTTP, tcpSocket or exec) (line 18)",
        ]
    );
}

#[test]
fn unsupported_kinds_and_api_versions() {
    let errs = errors("apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: web\nspec: {}\n");
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: kind: kind \"StatefulSet\" is not supported yet; supported kinds: v1 Namespace, v1 Pod, apps/v1 Deployment, v1 Service, v1 ConfigMap, v1 Secret, and a v1 List of them (line 2)"
        ]
    );
    let errs = errors("apiVersion: v1\nkind: Secrets\nmetadata:\n  name: web\n");
    assert!(
        errs[0].contains("unknown kind \"Secrets\" (did you mean \"Secret\"?)"),
        "{errs:#?}"
    );
    assert_eq!(
        errors("apiVersion: apps/v1\nkind: ConfigMap\nmetadata:\n  name: web\n"),
        [
            "deploy.yaml: doc 1: apiVersion: \"apps/v1\" is not supported for ConfigMap: use v1 (line 1)"
        ]
    );
    let errs = errors("apiVersion: apps/v1\nkind: Deploymnet\nmetadata:\n  name: web\n");
    assert!(
        errs[0].contains("unknown kind \"Deploymnet\" (did you mean \"Deployment\"?)"),
        "{errs:#?}"
    );
    let text = with_container("").replace("apps/v1", "extensions/v1beta1");
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: apiVersion: \"extensions/v1beta1\" is not supported for Deployment: use apps/v1 (line 1)"
        ]
    );
    assert_eq!(
        errors("kind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - {name: c, image: i}\n"),
        ["deploy.yaml: doc 1: apiVersion: required (Pod is v1) (line 1)"]
    );
    assert_eq!(
        errors("apiVersion: v1\nmetadata:\n  name: p\n"),
        [
            "deploy.yaml: doc 1: kind: required; supported kinds: v1 Namespace, v1 Pod, apps/v1 Deployment, v1 Service, v1 ConfigMap, v1 Secret, and a v1 List of them (line 1)"
        ]
    );
    assert_eq!(
        errors("- a\n- b\n"),
        [
            "deploy.yaml: doc 1: expected an object (a mapping with apiVersion, kind, metadata and spec), got a list (line 1)"
        ]
    );
}

#[test]
fn missing_required_fields_are_named() {
    let errs = errors(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  labels: {a: b}\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n",
    );
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: metadata.name: required (line 3)",
            "deploy.yaml: doc 1: spec.selector: required (line 5)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].image: required (line 9)",
        ]
    );
    assert_eq!(
        errors("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"),
        ["deploy.yaml: doc 1: spec: required (line 1)"]
    );
    assert_eq!(
        errors("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  restartPolicy: Never\n"),
        ["deploy.yaml: doc 1: spec.containers: required (line 5)"]
    );
}

#[test]
fn names_and_labels_are_validated() {
    let text = with_container("")
        .replace("name: web\nspec", "name: Web_1\n  namespace: my.ns\nspec")
        .replace(
            "        app: web\n    spec",
            "        app: web\n        bad key: x\n        ok: -x\n    spec",
        )
        .replace("- name: web", "- name: WEB");
    let errs = errors(&text);
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(errs[0].starts_with("deploy.yaml: doc 1: metadata.name: \"Web_1\" must consist of lower case alphanumeric characters, '-' or '.'"), "{errs:#?}");
    assert!(errs[0].ends_with("(line 4)"));
    assert!(errs[1].starts_with("deploy.yaml: doc 1: metadata.namespace: \"my.ns\" must consist of lower case alphanumeric characters or '-'"), "{errs:#?}");
    assert!(errs[2].starts_with("deploy.yaml: doc 1: spec.template.metadata.labels[bad key]: invalid key: \"bad key\": the name part must consist of"), "{errs:#?}");
    assert!(errs[2].ends_with("(line 14)"));
    assert!(errs[3].starts_with("deploy.yaml: doc 1: spec.template.metadata.labels[ok]: label value \"-x\" must be empty or consist of"), "{errs:#?}");
    assert!(
        errs[4].starts_with(
            "deploy.yaml: doc 1: spec.template.spec.containers[0].name: \"WEB\" must consist of"
        ),
        "{errs:#?}"
    );
    // Namespaces are DNS labels (no dots), pods and deployments subdomains (dots allowed).
    ok(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web.v2\nspec:\n  containers:\n  - {name: c, image: i}\n",
    );
    assert_eq!(
        errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web.v2\n").len(),
        1
    );
    assert_eq!(
        errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n  namespace: x\n"),
        [
            "deploy.yaml: doc 1: metadata.namespace: not allowed: Namespace objects are cluster-scoped (line 5)"
        ]
    );
}

#[test]
fn duplicate_container_and_port_names() {
    let text = with_container(
        "ports:\n- {containerPort: 80, name: http}\n- {containerPort: 81, name: http}\n- {containerPort: 70000}\n- {containerPort: 82, hostPort: 0}",
    ) + "      - name: web\n        image: other\n";
    let errs = errors(&text);
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].ports[1].name: duplicate port name \"http\" (also ports[0]) (line 19)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].ports[2].containerPort: must be between 1 and 65535, got 70000 (line 20)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].ports[3].hostPort: must be between 1 and 65535, got 0 (line 21)",
            "deploy.yaml: doc 1: spec.template.spec.containers[1].name: duplicate container name \"web\" (also containers[0]) (line 22)",
        ]
    );
}

#[test]
fn quantities() {
    let d = deployment(&with_container(
        "resources:\n  requests: {cpu: 0.25, memory: 1e3}\n  limits: {cpu: 1, memory: 1G}",
    ));
    let r = &d.spec.template.spec.containers[0].resources;
    assert_eq!(r.requests.cpu, Some(Cpu(250)));
    assert_eq!(r.requests.memory, Some(Memory(1000)));
    assert_eq!(r.limits.cpu, Some(Cpu(1000)));
    assert_eq!(r.limits.memory, Some(Memory(1_000_000_000)));
    let errs = errors(&with_container(
        "resources:\n  requests:\n    cpu: 12 cores\n    memory: 500m\n  limits:\n    cpu: -1\n    memory: [1]",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].resources.requests.cpu: invalid quantity \"12 cores\": expected a number with an optional suffix, such as 500m, 0.5, 2, 128Mi, 1G or 1e3 (line 19)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].resources.requests.memory: invalid quantity \"500m\": not a whole number of bytes (the suffix m means milli; did you mean Mi?) (line 20)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].resources.limits.cpu: invalid quantity \"-1\": must not be negative (line 22)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].resources.limits.memory: expected a quantity (such as 500m or 128Mi), got a list (line 23)",
        ]
    );
    let errs = errors(&with_container(
        "resources:\n  requests: {cpu: 2, memory: 2Gi}\n  limits: {cpu: 1, memory: 1Gi}",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].resources.requests.cpu: 2 is more than the limit 1 (line 18)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].resources.requests.memory: 2Gi is more than the limit 1Gi (line 18)",
        ]
    );
}

#[test]
fn probes_need_exactly_one_handler() {
    let errs = errors(&with_container(
        "livenessProbe:\n  periodSeconds: 5\nreadinessProbe:\n  exec: {command: [ls]}\n  tcpSocket: {port: 80}\nstartupProbe:\n  grpc: {port: 9000}",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].livenessProbe: needs exactly one handler: httpGet, tcpSocket or exec (line 17)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].readinessProbe: has 2 handlers (tcpSocket, exec): give exactly one (line 19)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].startupProbe.grpc: not supported yet (line 23)",
        ]
    );
    let errs = errors(&with_container(
        "livenessProbe:\n  httpGet: {port: metrics}\n  successThreshold: 2\n  periodSeconds: 0\nreadinessProbe:\n  exec: {command: []}\n  successThreshold: 3",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].livenessProbe.httpGet.port: no port named \"metrics\" in this container's ports (line 18)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].livenessProbe.successThreshold: must be 1 for a livenessProbe (line 19)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].livenessProbe.periodSeconds: must be at least 1, got 0 (line 20)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].readinessProbe.exec.command: must not be empty (line 22)",
        ]
    );
}

#[test]
fn selector_must_match_template_labels() {
    let text = with_container("").replace(
        "        app: web\n    spec",
        "        app: webapp\n    spec",
    );
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: spec.template.metadata.labels: do not match spec.selector.matchLabels: the selector wants app=web, the template has app=webapp (line 11)"
        ]
    );
    let text = with_container("").replace("    metadata:\n      labels:\n        app: web\n", "");
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: spec.template.metadata.labels: do not match spec.selector.matchLabels: the selector wants app=web, the template has none (line 9)"
        ]
    );
    let text = with_container("").replace(
        "    matchLabels:\n      app: web\n",
        "    matchLabels: {}\n",
    );
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: spec.selector.matchLabels: must not be empty: a Deployment needs a selector for its pods (line 7)"
        ]
    );
    // Extra template labels are fine.
    let text = with_container("").replace(
        "        app: web\n    spec",
        "        app: web\n        tier: x\n    spec",
    );
    ok(&text);
}

#[test]
fn strategy_rules() {
    let base = with_container("");
    let with_strategy = |s: &str| {
        base.replace(
            "spec:\n  selector",
            &format!("spec:\n  strategy:\n{s}  selector"),
        )
    };
    let d = deployment(&with_strategy("    rollingUpdate: {maxSurge: 50%}\n"));
    assert_eq!(
        d.spec.strategy,
        DeploymentStrategy::RollingUpdate {
            rolling_update: RollingUpdate {
                max_surge: IntOrPercent::Percent(50),
                max_unavailable: IntOrPercent::Percent(25)
            }
        }
    );
    assert_eq!(
        errors(&with_strategy(
            "    type: Recreate\n    rollingUpdate: {maxSurge: 1}\n"
        )),
        [
            "deploy.yaml: doc 1: spec.strategy.rollingUpdate: may not be given when the strategy type is Recreate (line 8)"
        ]
    );
    assert_eq!(
        errors(&with_strategy(
            "    rollingUpdate: {maxSurge: 0, maxUnavailable: 0%}\n"
        )),
        [
            "deploy.yaml: doc 1: spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0: the rollout could never replace a pod (line 7)"
        ]
    );
    assert_eq!(
        errors(&with_strategy(
            "    rollingUpdate: {maxSurge: \"1\", maxUnavailable: 150%}\n"
        )),
        [
            "deploy.yaml: doc 1: spec.strategy.rollingUpdate.maxSurge: expected a count or a percentage such as 25%, got string \"1\" (line 7)",
            "deploy.yaml: doc 1: spec.strategy.rollingUpdate.maxUnavailable: must not be more than 100%, got 150% (line 7)",
        ]
    );
    assert_eq!(
        errors(&with_strategy("    type: BlueGreen\n")),
        [
            "deploy.yaml: doc 1: spec.strategy.type: unsupported value \"BlueGreen\": supported values are RollingUpdate, Recreate (line 7)"
        ]
    );
    assert_eq!(
        errors(&with_strategy("    type: Rollingupdate\n")),
        [
            "deploy.yaml: doc 1: spec.strategy.type: unsupported value \"Rollingupdate\" (did you mean \"RollingUpdate\"?): supported values are RollingUpdate, Recreate (line 7)"
        ]
    );
    let text = base.replace(
        "spec:\n  selector",
        "spec:\n  replicas: -1\n  paused: yes\n  minReadySeconds: 700\n  selector",
    );
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: spec.progressDeadlineSeconds: must be greater than minReadySeconds (700) (line 5)",
            "deploy.yaml: doc 1: spec.replicas: must be at least 0, got -1 (line 6)",
            "deploy.yaml: doc 1: spec.paused: expected boolean (true or false), got string \"yes\" (line 7)",
        ]
    );
    let text = base.replace(
        "    spec:\n      containers",
        "    spec:\n      restartPolicy: OnFailure\n      containers",
    );
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: spec.template.spec.restartPolicy: must be Always in a Deployment's pod template (line 14)"
        ]
    );
}

#[test]
fn a_bad_list_item_keeps_the_others_in_place() {
    let text = with_container("").replace(
        "      - name: web\n        image: nginx:1.27\n",
        "      - nginx\n      - name: Web\n        image: nginx\n",
    );
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0]: expected a mapping, got string \"nginx\" (line 15)",
            "deploy.yaml: doc 1: spec.template.spec.containers[1].name: \"Web\" must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc') (line 16)",
        ]
    );
}

#[test]
fn strings_where_kubernetes_wants_strings() {
    let errs = errors(&with_container(
        "env:\n- name: PORT\n  value: 8080\n- name: DEBUG\n  value: true\nargs: [--port, 8080]",
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.template.spec.containers[0].env[0].value: expected string, got integer 8080 (quote it: \"8080\") (line 19)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].env[1].value: expected string, got boolean true (quote it: \"true\") (line 21)",
            "deploy.yaml: doc 1: spec.template.spec.containers[0].args[1]: expected string, got integer 8080 (quote it: \"8080\") (line 22)",
        ]
    );
    // A label value that YAML reads as a number is reported, and does not also make the
    // selector mismatch.
    let text = with_container("")
        .replace(
            "      app: web\n  template",
            "      app: web\n      version: 1.0\n  template",
        )
        .replace(
            "        app: web\n    spec",
            "        app: web\n        version: \"1.0\"\n    spec",
        );
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 1: spec.selector.matchLabels[version]: expected string, got number 1.0 (quote it: \"1.0\") (line 9)"
        ]
    );
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    assert_eq!(ok(""), []);
    assert_eq!(ok("# nothing\n---\n---\n"), []);
    let text = format!(
        "---\n---\n# comment only\n---\n{}",
        ISSUE_EXAMPLE.split("---\n").nth(1).unwrap()
    );
    let errs = errors(&text);
    assert!(
        errs[0].starts_with("deploy.yaml: doc 3: spec.template"),
        "{errs:#?}"
    );
    assert!(errs[0].ends_with("(line 22)"), "{errs:#?}");
}

#[test]
fn json_input_lists_and_streams() {
    let json = r#"{
	"apiVersion": "v1",
	"kind": "Pod",
	"metadata": {"name": "p"},
	"spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": "80"}]}]}
}"#;
    assert_eq!(
        errors(json),
        [
            "deploy.yaml: doc 1: spec.containers[0].ports[0].containerPort: expected integer, got string \"80\" (line 5)"
        ]
    );
    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "NAME"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}"#;
    let stream = format!(
        "{}\n{}\n",
        pod.replace("NAME", "a"),
        pod.replace("NAME", "b")
    );
    assert_eq!(ok(&stream).len(), 2);
    let stream = format!(
        "{}\n{}\n",
        pod.replace("NAME", "a"),
        pod.replace("NAME", "B")
    );
    let errs = errors(&stream);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("deploy.yaml: doc 2: metadata.name: \"B\""),
        "{errs:#?}"
    );
    assert!(errs[0].ends_with("(line 2)"), "{errs:#?}");

    let list = format!(
        "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- {}\n- {}\n",
        pod.replace("NAME", "a"),
        pod.replace("NAME", "b")
            .replace("busybox\"}", "busybox\", \"tty\": true}")
    );
    let errs = errors(&list);
    assert_eq!(
        errs,
        ["deploy.yaml: doc 1: items[1].spec.containers[0].tty: not supported yet (line 7)"]
    );
    let list = list.replace(", \"tty\": true", "");
    let resources = ok(&list);
    assert_eq!(resources.len(), 2);
    assert_eq!(resources[1].name(), "b");
    let nested =
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n";
    assert_eq!(
        errors(nested),
        ["deploy.yaml: doc 1: items[0].kind: a List cannot hold another List (line 5)"]
    );
}

#[test]
fn duplicates_within_an_apply_are_errors() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - {name: c, image: i}\n";
    let text = format!(
        "{pod}---\n{pod}---\n{}",
        pod.replace("name: p", "name: p\n  namespace: other")
    );
    assert_eq!(
        errors(&text),
        [
            "deploy.yaml: doc 2: metadata.name: pod/p in namespace default is already defined in deploy.yaml doc 1 (line 12)"
        ]
    );
}

#[test]
fn namespace_option() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - {name: c, image: i}\n";
    let options = ParseOptions {
        namespace: Some("team".into()),
        ..ParseOptions::default()
    };
    let r = parse_with("-", pod.as_bytes(), &options).unwrap();
    assert_eq!(r[0].key().namespace, "team");
    let other = pod.replace("name: p", "name: p\n  namespace: prod");
    let errs = parse_with("-", other.as_bytes(), &options).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "<stdin>: doc 1: metadata.namespace: the object's namespace \"prod\" does not match the namespace \"team\" given with -n (line 5)"
    );
    // The API's path gives it too.
    let from_path = ParseOptions {
        namespace_from: crate::NamespaceFrom::Path,
        ..options
    };
    let errs = parse_with("body", other.as_bytes(), &from_path).unwrap_err();
    assert!(
        errs.to_string()
            .contains("does not match the namespace \"team\" of the request's path"),
        "{errs}"
    );
}

#[test]
fn errors_are_ordered_by_line_and_yaml_features_work() {
    // Anchors, aliases and merge keys resolve; a later problem still sorts after an earlier one
    // even though fields are read in another order.
    let text = "apiVersion: v1
kind: Pod
metadata:
  name: p
  labels: &labels {app: web}
  annotations: *labels
spec:
  containers:
  - &base
    name: a
    image: busybox
    zzz: 1
  - <<: *base
    name: b
    image: 5
";
    let errs = errors(text);
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: spec.containers[0].zzz: unknown field (line 12)",
            "deploy.yaml: doc 1: spec.containers[1].zzz: unknown field (line 13)",
            "deploy.yaml: doc 1: spec.containers[1].image: expected string, got integer 5 (quote it: \"5\") (line 15)",
        ]
    );
    let errs = errors("apiVersion: v1\nkind: Pod\nkind: Pod\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("duplicate mapping key"), "{errs:#?}");
    assert!(errs[0].ends_with("(line 3)"), "{errs:#?}");
}

#[test]
fn not_utf8() {
    let errs = parse("bad.yaml", b"apiVersion: v1\nkind: \xff\n").unwrap_err();
    assert_eq!(
        errs.to_string(),
        "bad.yaml: not UTF-8 text (invalid byte at offset 21) (line 2)"
    );
}

#[test]
fn paths_directories_and_stdin() {
    let dir = std::env::temp_dir().join(format!("shoal-manifest-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("sub")).unwrap();
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - {{name: c, image: i}}\n"
        )
    };
    fs::write(dir.join("b.yaml"), pod("b")).unwrap();
    fs::write(dir.join("a.yml"), pod("a")).unwrap();
    fs::write(
        dir.join("c.json"),
        "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"c\"}}",
    )
    .unwrap();
    fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    fs::write(dir.join("sub/d.yaml"), pod("d")).unwrap();
    let names = |r: Vec<Resource>| r.iter().map(|r| r.name().to_owned()).collect::<Vec<_>>();
    let mut stdin = Cursor::new(pod("from-stdin"));
    let got = parse_paths(
        &[dir.clone(), PathBuf::from("-")],
        &ParseOptions::default(),
        &mut stdin,
    )
    .unwrap();
    assert_eq!(names(got), ["a", "b", "c", "from-stdin"]);
    let recursive = ParseOptions {
        recursive: true,
        ..ParseOptions::default()
    };
    let got = parse_paths(
        std::slice::from_ref(&dir),
        &recursive,
        &mut std::io::empty(),
    )
    .unwrap();
    assert_eq!(names(got), ["a", "b", "c", "d"]);
    // A file named explicitly is read whatever its extension; errors name the file.
    fs::write(dir.join("bad.txt"), pod("Bad")).unwrap();
    let errs = parse_paths(
        &[dir.join("bad.txt"), dir.join("missing.yaml")],
        &ParseOptions::default(),
        &mut std::io::empty(),
    )
    .unwrap_err();
    assert_eq!(errs.len(), 2);
    let bad = dir.join("bad.txt").display().to_string();
    assert!(
        errs.0[0]
            .to_string()
            .starts_with(&format!("{bad}: doc 1: metadata.name: ")),
        "{errs}"
    );
    assert_eq!(
        errs.0[1].file,
        dir.join("missing.yaml").display().to_string()
    );
    assert!(errs.0[1].to_string().contains(": cannot read: "), "{errs}");
    // The same object in two files.
    fs::write(dir.join("sub/a-again.yaml"), pod("a")).unwrap();
    let errs = parse_paths(
        std::slice::from_ref(&dir),
        &recursive,
        &mut std::io::empty(),
    )
    .unwrap_err();
    assert!(
        errs.to_string().ends_with(&format!(
            "pod/a in namespace default is already defined in {} doc 1 (line 4)",
            dir.join("a.yml").display()
        )),
        "{errs}"
    );
    let _ = fs::remove_dir_all(&dir);
}
