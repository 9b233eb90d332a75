//! Properties: the stored form round-trips, the YAML rendering of any valid object parses back
//! to it, and no input panics the parser.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

use super::*;

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn label_key() -> impl Strategy<Value = String> {
    (
        option::of("[a-z]{1,6}\\.(io|com)"),
        "[A-Za-z0-9]([A-Za-z0-9_.-]{0,8}[A-Za-z0-9])?",
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        })
}

fn label_value() -> impl Strategy<Value = String> {
    // Includes values YAML would read as other types if unquoted: the renderer must quote them.
    prop_oneof![
        "([A-Za-z0-9]([A-Za-z0-9_.-]{0,8}[A-Za-z0-9])?)?",
        Just("true".to_owned()),
        Just("1.0".to_owned()),
        Just("null".to_owned()),
        Just("0x1F".to_owned()),
        Just("yes".to_owned()),
    ]
}

fn labels(max: usize) -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(label_key(), label_value(), 0..max)
}

/// Any text, including what YAML treats specially.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,20}",
        Just(String::new()),
        Just("- item".to_owned()),
        Just("key: value".to_owned()),
        Just("# comment".to_owned()),
        Just("--- ".to_owned()),
        Just("multi\nline\n".to_owned()),
        Just(" leading space".to_owned()),
        Just("~".to_owned()),
        Just("'quoted'".to_owned()),
        Just("\"dq\"".to_owned()),
        Just("@at".to_owned()),
        Just("*alias".to_owned()),
        Just("&anchor".to_owned()),
        Just("!tag".to_owned()),
        Just("%".to_owned()),
    ]
}

fn timing(min: u32) -> impl Strategy<Value = u32> {
    prop_oneof![min..=min + 5, min..=i32::MAX as u32]
}

fn probe(liveness: bool, port_names: Vec<String>) -> impl Strategy<Value = Probe> {
    let port = {
        let names = port_names.clone();
        prop_oneof![
            (1u16..=65535).prop_map(PortRef::Number),
            (0..names.len().max(1)).prop_map(move |i| match names.get(i) {
                Some(n) => PortRef::Name(n.clone()),
                None => PortRef::Number(8080),
            }),
        ]
    };
    let handler = prop_oneof![
        (
            "/[a-z0-9/._-]{0,12}",
            port.clone(),
            vec(("[A-Za-z][A-Za-z0-9-]{0,8}", text()), 0..2)
        )
            .prop_map(|(path, port, headers)| {
                ProbeHandler::HttpGet(HttpGetAction {
                    path,
                    port,
                    // HTTPS is refused at apply time (not supported yet).
                    scheme: Scheme::Http,
                    http_headers: headers
                        .into_iter()
                        .map(|(name, value)| HttpHeader { name, value })
                        .collect(),
                })
            }),
        port.prop_map(|port| ProbeHandler::TcpSocket(TcpSocketAction { port })),
        vec(text(), 1..3).prop_map(|command| ProbeHandler::Exec(ExecAction { command })),
    ];
    (
        handler,
        timing(0),
        timing(1),
        timing(1),
        if liveness {
            (1u32..=1).boxed()
        } else {
            timing(1).boxed()
        },
        timing(1),
    )
        .prop_map(
            |(handler, initial, period, timeout, success, failure)| Probe {
                handler,
                initial_delay_seconds: initial,
                period_seconds: period,
                timeout_seconds: timeout,
                success_threshold: success,
                failure_threshold: failure,
            },
        )
}

fn resource_list() -> impl Strategy<Value = ResourceList> {
    (
        option::of(prop_oneof![0u64..4000, any::<u64>()]),
        option::of(prop_oneof![
            (0u64..4096).prop_map(|m| m << 20),
            0u64..10_000,
            any::<u64>()
        ]),
    )
        .prop_map(|(cpu, memory)| ResourceList {
            cpu: cpu.map(Cpu),
            memory: memory.map(Memory),
        })
}

/// Requests within limits, and requests filled from limits, as the parser leaves them.
fn resources() -> impl Strategy<Value = ResourceRequirements> {
    (resource_list(), resource_list()).prop_map(|(a, b)| {
        let mut r = ResourceRequirements {
            requests: a,
            limits: b,
        };
        let (req, lim) = (&mut r.requests, &r.limits);
        req.cpu = match (req.cpu, lim.cpu) {
            (None, l) => l,
            (Some(q), Some(l)) => Some(q.min(l)),
            (q, None) => q,
        };
        req.memory = match (req.memory, lim.memory) {
            (None, l) => l,
            (Some(q), Some(l)) => Some(q.min(l)),
            (q, None) => q,
        };
        r
    })
}

fn ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    vec(
        (
            1u16..=65535,
            option::of("[a-z]{1,6}"),
            any::<bool>(),
            option::of(1u16..=65535),
        ),
        0..3,
    )
    .prop_map(|ports| {
        ports
            .into_iter()
            .enumerate()
            .map(|(i, (port, name, udp, host_port))| ContainerPort {
                container_port: port,
                // Unique in the container.
                name: name.map(|n| format!("{n}{i}")),
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                host_port,
            })
            .collect()
    })
}

/// A config map or secret key.
fn config_key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][-._A-Za-z0-9]{0,10}"
}

fn key_selector() -> impl Strategy<Value = KeySelector> {
    (dns_label(), config_key(), any::<bool>()).prop_map(|(name, key, optional)| KeySelector {
        name,
        key,
        optional,
    })
}

/// Stands for the name of the pod's first container, filled in by [`name_containers`].
const FIRST_CONTAINER: &str = "@first";

/// A resource field; in a volume, of a container of the pod.
fn resource_field(in_volume: bool) -> impl Strategy<Value = ResourceFieldSelector> {
    let divisors = prop_oneof![
        Just(None),
        Just(Some("1m")),
        Just(Some("1Mi")),
        Just(Some("1k")),
        Just(Some("1Gi")),
    ];
    (
        prop_oneof![
            Just("requests.cpu"),
            Just("limits.cpu"),
            Just("requests.memory"),
            Just("limits.memory"),
        ],
        divisors,
        any::<bool>(),
    )
        .prop_map(move |(resource, divisor, named)| {
            let cpu = resource.ends_with("cpu");
            // A divisor of the resource's kind.
            let divisor = divisor.filter(|d| (*d == "1m") == cpu);
            ResourceFieldSelector {
                container_name: (in_volume || named).then(|| FIRST_CONTAINER.to_owned()),
                resource: resource.to_owned(),
                divisor: divisor.map(str::to_owned),
            }
        })
}

/// A pod field, as env (`in_volume` false) or a downward API file allows.
fn field_ref(in_volume: bool) -> impl Strategy<Value = ObjectFieldSelector> {
    let plain: Vec<&str> = if in_volume {
        vec![
            "metadata.name",
            "metadata.namespace",
            "metadata.uid",
            "metadata.labels",
            "metadata.annotations",
        ]
    } else {
        vec![
            "metadata.name",
            "metadata.namespace",
            "metadata.uid",
            "spec.nodeName",
            "status.podIP",
            "status.hostIP",
        ]
    };
    prop_oneof![
        proptest::sample::select(plain).prop_map(str::to_owned),
        (
            prop_oneof![Just("labels"), Just("annotations")],
            label_key()
        )
            .prop_map(|(map, key)| format!("metadata.{map}['{key}']")),
    ]
    .prop_map(|field_path| ObjectFieldSelector { field_path })
}

fn env_source() -> impl Strategy<Value = EnvVarSource> {
    prop_oneof![
        key_selector().prop_map(EnvVarSource::ConfigMapKeyRef),
        key_selector().prop_map(EnvVarSource::SecretKeyRef),
        field_ref(false).prop_map(EnvVarSource::FieldRef),
        resource_field(false).prop_map(EnvVarSource::ResourceFieldRef),
    ]
}

fn env_from() -> impl Strategy<Value = EnvFromSource> {
    (
        prop_oneof![Just(String::new()), "[A-Z_]{1,5}"],
        any::<bool>(),
        dns_label(),
        any::<bool>(),
    )
        .prop_map(|(prefix, secret, name, optional)| {
            let r = ObjectRef { name, optional };
            EnvFromSource {
                prefix,
                source: if secret {
                    EnvFromRef::SecretRef(r)
                } else {
                    EnvFromRef::ConfigMapRef(r)
                },
            }
        })
}

/// A file path in a volume; `dir/` prefixes all of a source's files.
fn file_path() -> impl Strategy<Value = String> {
    "[a-z]{1,6}(/[a-z]{1,6})?"
}

fn file_mode() -> impl Strategy<Value = u32> {
    prop_oneof![Just(DEFAULT_VOLUME_MODE), Just(0o400), 0u32..=0o777]
}

/// Items with unique paths (every path ends with `-<index>`, which no directory name has).
fn key_items(dir: String) -> impl Strategy<Value = Vec<KeyToPath>> {
    vec((config_key(), file_path(), option::of(file_mode())), 0..3).prop_map(move |items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (key, path, mode))| KeyToPath {
                key,
                path: format!("{dir}{path}-{i}"),
                mode,
            })
            .collect()
    })
}

fn downward_items(dir: String) -> impl Strategy<Value = Vec<DownwardApiFile>> {
    vec(
        (
            file_path(),
            prop_oneof![
                field_ref(true).prop_map(|f| (Some(f), None)),
                resource_field(true).prop_map(|r| (None, Some(r))),
            ],
            option::of(file_mode()),
        ),
        0..3,
    )
    .prop_map(move |items| {
        items
            .into_iter()
            .enumerate()
            .map(
                |(i, (path, (field_ref, resource_field_ref), mode))| DownwardApiFile {
                    path: format!("{dir}{path}-{i}"),
                    field_ref,
                    resource_field_ref,
                    mode,
                },
            )
            .collect()
    })
}

fn projection(index: usize) -> impl Strategy<Value = ProjectionSource> {
    // Each source in its own directory, so that no two write the same file.
    let dir = format!("s{index}/");
    let keys = |dir: String| {
        (dns_label(), key_items(dir), any::<bool>()).prop_map(|(name, items, optional)| {
            KeyProjection {
                name,
                items,
                optional,
            }
        })
    };
    prop_oneof![
        keys(dir.clone()).prop_map(ProjectionSource::ConfigMap),
        keys(dir.clone()).prop_map(ProjectionSource::Secret),
        downward_items(dir)
            .prop_map(|items| ProjectionSource::DownwardApi(DownwardApiProjection { items })),
    ]
}

fn volume_source() -> impl Strategy<Value = VolumeSource> {
    prop_oneof![
        (
            dns_label(),
            key_items(String::new()),
            file_mode(),
            any::<bool>()
        )
            .prop_map(|(name, items, default_mode, optional)| {
                VolumeSource::ConfigMap(ConfigMapVolume {
                    name,
                    items,
                    default_mode,
                    optional,
                })
            }),
        (
            dns_label(),
            key_items(String::new()),
            file_mode(),
            any::<bool>()
        )
            .prop_map(|(secret_name, items, default_mode, optional)| {
                VolumeSource::Secret(SecretVolume {
                    secret_name,
                    items,
                    default_mode,
                    optional,
                })
            }),
        (downward_items(String::new()), file_mode()).prop_map(|(items, default_mode)| {
            VolumeSource::DownwardApi(DownwardApiVolume {
                items,
                default_mode,
            })
        }),
        (
            (0usize..3).prop_flat_map(|n| (0..n).map(projection).collect::<Vec<_>>()),
            file_mode()
        )
            .prop_map(|(sources, default_mode)| {
                VolumeSource::Projected(ProjectedVolume {
                    sources,
                    default_mode,
                })
            }),
        (
            prop_oneof![Just(EmptyDirMedium::Disk), Just(EmptyDirMedium::Memory)],
            option::of(prop_oneof![
                (0u64..4096).prop_map(|m| m << 20),
                0u64..10_000,
                any::<u64>()
            ]),
        )
            .prop_map(|(medium, size_limit)| {
                VolumeSource::EmptyDir(EmptyDirVolume {
                    medium,
                    size_limit: size_limit.map(Memory),
                })
            }),
        (
            "(/[a-z.][a-z0-9._-]{0,6}){0,3}/?",
            proptest::sample::select(HostPathType::ALL.map(|(_, t)| t).to_vec()),
        )
            .prop_map(|(path, path_type)| {
                // The root when empty; `..` is not an element, `...` and `.x` are.
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                let path = path
                    .split('/')
                    .map(|p| if p == ".." { "..." } else { p })
                    .collect::<Vec<_>>()
                    .join("/");
                VolumeSource::HostPath(HostPathVolume { path, path_type })
            }),
    ]
}

/// A mount: which volume (of those the pod has), where, read-only, sub path.
fn mount() -> impl Strategy<Value = (proptest::sample::Index, String, bool, Option<String>)> {
    (
        any::<proptest::sample::Index>(),
        "/[a-z]{1,8}(/[a-z]{1,4})?",
        any::<bool>(),
        option::of("[a-z]{1,5}(/[a-z][a-z.]{0,4})?"),
    )
}

/// Points the resource fields that name [`FIRST_CONTAINER`] to the pod's first container.
fn name_containers(spec: &mut PodSpec) {
    let first = spec.containers[0].name.clone();
    let fix = |r: &mut ResourceFieldSelector| {
        if r.container_name.as_deref() == Some(FIRST_CONTAINER) {
            r.container_name = Some(first.clone());
        }
    };
    let fix_files = |items: &mut Vec<DownwardApiFile>| {
        for item in items {
            if let Some(r) = &mut item.resource_field_ref {
                fix(r);
            }
        }
    };
    for c in &mut spec.containers {
        for e in &mut c.env {
            if let Some(EnvVarSource::ResourceFieldRef(r)) = &mut e.value_from {
                fix(r);
            }
        }
    }
    for v in &mut spec.volumes {
        match &mut v.source {
            VolumeSource::DownwardApi(d) => fix_files(&mut d.items),
            VolumeSource::Projected(p) => {
                for s in &mut p.sources {
                    if let ProjectionSource::DownwardApi(d) = s {
                        fix_files(&mut d.items);
                    }
                }
            }
            _ => {}
        }
    }
}

fn container(index: usize) -> impl Strategy<Value = Container> {
    (
        (
            dns_label(),
            "[a-z]{1,8}(/[a-z]{1,8})?(:[a-z0-9.]{1,6})?",
            vec(text(), 0..3),
            vec(text(), 0..3),
            option::of("/[a-z/]{0,10}"),
            vec(
                (
                    "[A-Za-z_][A-Za-z0-9_.-]{0,10}",
                    text(),
                    option::of(env_source()),
                ),
                0..3,
            ),
        ),
        ports(),
        resources(),
        option::of(prop_oneof![
            Just(PullPolicy::Always),
            Just(PullPolicy::IfNotPresent),
            Just(PullPolicy::Never)
        ]),
        vec(env_from(), 0..3),
    )
        .prop_flat_map(
            move |(
                (name, image, command, args, working_dir, env),
                ports,
                resources,
                pull,
                env_from,
            )| {
                let names: Vec<String> = ports.iter().filter_map(|p| p.name.clone()).collect();
                let pull = pull.unwrap_or_else(|| PullPolicy::default_for(&image));
                let base = Container {
                    // Unique in the pod.
                    name: format!("{name}-{index}"),
                    image,
                    command,
                    args,
                    working_dir,
                    env_from,
                    env: env
                        .into_iter()
                        .map(|(name, value, value_from)| EnvVar {
                            name,
                            // Never both.
                            value: if value_from.is_some() {
                                String::new()
                            } else {
                                value
                            },
                            value_from,
                        })
                        .collect(),
                    ports,
                    resources,
                    liveness_probe: None,
                    readiness_probe: None,
                    startup_probe: None,
                    image_pull_policy: pull,
                    volume_mounts: Vec::new(),
                };
                (
                    Just(base),
                    option::of(probe(true, names.clone())),
                    option::of(probe(false, names.clone())),
                    option::of(probe(true, names)),
                )
                    .prop_map(|(mut c, l, r, s)| {
                        c.liveness_probe = l;
                        c.readiness_probe = r;
                        c.startup_probe = s;
                        c
                    })
            },
        )
}

fn pod_spec(deployment: bool) -> impl Strategy<Value = PodSpec> {
    (
        (1usize..=3).prop_flat_map(|n| (0..n).map(container).collect::<Vec<_>>()),
        prop_oneof![
            Just(RestartPolicy::Always),
            Just(RestartPolicy::OnFailure),
            Just(RestartPolicy::Never)
        ],
        labels(3),
        prop_oneof![0u64..100, any::<i64>().prop_map(|v| v.unsigned_abs() >> 1)],
        vec((dns_label(), volume_source()), 0..3),
        vec(vec(mount(), 0..3), 3),
    )
        .prop_map(
            move |(mut containers, restart, node_selector, grace, volumes, mounts)| {
                let volumes: Vec<Volume> = volumes
                    .into_iter()
                    .enumerate()
                    // Unique names.
                    .map(|(i, (name, source))| Volume {
                        name: format!("{name}-{i}"),
                        source,
                    })
                    .collect();
                if !volumes.is_empty() {
                    for (c, mounts) in containers.iter_mut().zip(mounts) {
                        c.volume_mounts = mounts
                            .into_iter()
                            .enumerate()
                            .map(|(j, (volume, path, read_only, sub_path))| VolumeMount {
                                name: volumes[volume.index(volumes.len())].name.clone(),
                                // Unique in the container.
                                mount_path: format!("{path}{j}"),
                                read_only,
                                sub_path,
                            })
                            .collect();
                    }
                }
                let mut spec = PodSpec {
                    containers,
                    restart_policy: if deployment {
                        RestartPolicy::Always
                    } else {
                        restart
                    },
                    node_selector,
                    termination_grace_period_seconds: grace,
                    volumes,
                    node_name: None,
                };
                name_containers(&mut spec);
                spec
            },
        )
}

fn meta(namespaced: bool) -> impl Strategy<Value = ObjectMeta> {
    (
        dns_label(),
        dns_label(),
        labels(4),
        btree_map(label_key(), text(), 0..3),
    )
        .prop_map(move |(name, namespace, labels, annotations)| ObjectMeta {
            name,
            namespace: namespaced.then_some(namespace),
            labels,
            annotations,
            ..ObjectMeta::default()
        })
}

fn int_or_percent() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        (0u32..=10).prop_map(IntOrPercent::Int),
        (0u32..=100).prop_map(IntOrPercent::Percent),
    ]
}

fn deployment_spec() -> impl Strategy<Value = DeploymentSpec> {
    (
        (
            0u32..=20,
            labels(3),
            labels(3),
            btree_map(label_key(), text(), 0..2),
        ),
        pod_spec(true),
        prop_oneof![
            Just(DeploymentStrategy::Recreate),
            (int_or_percent(), int_or_percent())
                .prop_filter("not both zero", |(s, u)| !(s.is_zero() && u.is_zero()))
                .prop_map(
                    |(max_surge, max_unavailable)| DeploymentStrategy::RollingUpdate {
                        rolling_update: RollingUpdate {
                            max_surge,
                            max_unavailable
                        }
                    }
                ),
        ],
        (0u32..=100, 0u32..=20, 101u32..=1000, any::<bool>()),
    )
        .prop_map(
            |(
                (replicas, selector, extra, annotations),
                spec,
                strategy,
                (min_ready, history, deadline, paused),
            )| {
                let mut selector = selector;
                if selector.is_empty() {
                    selector.insert("app".into(), "web".into());
                }
                // Template labels: the selector's and maybe more.
                let mut template_labels = extra;
                template_labels.extend(selector.clone());
                DeploymentSpec {
                    replicas,
                    selector: LabelSelector {
                        match_labels: selector,
                    },
                    template: PodTemplateSpec {
                        metadata: TemplateMeta {
                            labels: template_labels,
                            annotations,
                        },
                        spec,
                    },
                    strategy,
                    min_ready_seconds: min_ready,
                    revision_history_limit: history,
                    progress_deadline_seconds: deadline,
                    paused,
                }
            },
        )
}

fn service_spec() -> impl Strategy<Value = ServiceSpec> {
    let port = (
        1u16..=65535,
        option::of(dns_label()),
        prop_oneof![
            Just(None),
            (1u16..=65535).prop_map(|p| Some(PortRef::Number(p))),
            "[a-z]{1,10}".prop_map(|n| Some(PortRef::Name(n))),
        ],
        option::of(NODE_PORT_RANGE),
    );
    (
        labels(3),
        prop_oneof![
            Just(ClusterIp::Auto),
            Just(ClusterIp::Headless),
            any::<[u8; 2]>()
                .prop_map(|[a, b]| ClusterIp::Ip(std::net::Ipv4Addr::new(127, 200, a, b))),
        ],
        any::<bool>(),
        vec(port, 0..4),
    )
        .prop_map(|(selector, cluster_ip, node_port_type, ports)| {
            let headless = cluster_ip == ClusterIp::Headless;
            let kind = if node_port_type && !headless {
                ServiceType::NodePort
            } else {
                ServiceType::ClusterIp
            };
            let many = ports.len() > 1;
            let mut numbers = std::collections::BTreeSet::new();
            let mut node_ports = std::collections::BTreeSet::new();
            let mut ports: Vec<ServicePort> = ports
                .into_iter()
                .enumerate()
                // Unique port numbers.
                .filter(|(_, (port, ..))| numbers.insert(*port))
                .map(|(i, (port, name, target, node_port))| ServicePort {
                    // Unique, and given when there are several.
                    name: match name {
                        Some(n) => Some(format!("{n}-{i}")),
                        None if many => Some(format!("p{i}")),
                        None => None,
                    },
                    protocol: Protocol::Tcp,
                    port,
                    target_port: target.unwrap_or(PortRef::Number(port)),
                    node_port: node_port
                        .filter(|np| kind == ServiceType::NodePort && node_ports.insert(*np)),
                })
                .collect();
            if ports.is_empty() && !headless {
                ports.push(ServicePort::new(80));
            }
            ServiceSpec {
                cluster_ip,
                ports,
                selector,
                session_affinity: SessionAffinity::None,
                kind,
            }
        })
}

fn config_map() -> impl Strategy<Value = ConfigMap> {
    (
        meta(true),
        btree_map(config_key(), text(), 0..4),
        btree_map(config_key(), vec(any::<u8>(), 0..24), 0..3),
        any::<bool>(),
    )
        .prop_map(|(metadata, data, mut binary, immutable)| {
            // No key in both.
            binary.retain(|k, _| !data.contains_key(k));
            ConfigMap {
                metadata,
                data,
                binary_data: binary.into_iter().map(|(k, v)| (k, ByteData(v))).collect(),
                immutable,
            }
        })
}

fn secret() -> impl Strategy<Value = Secret> {
    (
        meta(true),
        btree_map(config_key(), vec(any::<u8>(), 0..24), 0..4),
        prop_oneof![
            Just("Opaque"),
            Just("kubernetes.io/tls"),
            Just("kubernetes.io/basic-auth"),
            Just("kubernetes.io/ssh-auth"),
            Just("kubernetes.io/dockerconfigjson"),
            Just("example.com/token"),
        ],
        any::<bool>(),
    )
        .prop_map(|(metadata, data, kind, immutable)| {
            let mut data: BTreeMap<String, ByteData> =
                data.into_iter().map(|(k, v)| (k, ByteData(v))).collect();
            // The keys the type requires.
            let required: &[(&str, &[u8])] = match kind {
                "kubernetes.io/tls" => &[("tls.crt", b"cert"), ("tls.key", b"key")],
                "kubernetes.io/basic-auth" => &[("username", b"admin")],
                "kubernetes.io/ssh-auth" => &[("ssh-privatekey", b"key")],
                "kubernetes.io/dockerconfigjson" => &[(".dockerconfigjson", b"{\"auths\": {}}")],
                _ => &[],
            };
            for (k, v) in required {
                data.insert((*k).to_owned(), ByteData(v.to_vec()));
            }
            Secret {
                metadata,
                data,
                secret_type: kind.to_owned(),
                immutable,
            }
        })
}

fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![
        config_map().prop_map(Resource::ConfigMap),
        secret().prop_map(Resource::Secret),
        meta(false).prop_map(|metadata| Resource::Namespace(Namespace { metadata })),
        (meta(true), pod_spec(false))
            .prop_map(|(metadata, spec)| Resource::Pod(Pod { metadata, spec })),
        (meta(true), deployment_spec())
            .prop_map(|(metadata, spec)| Resource::Deployment(Deployment { metadata, spec })),
        (meta(true), service_spec())
            .prop_map(|(metadata, spec)| Resource::Service(Service { metadata, spec })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn generated_resources_are_valid(r in resource()) {
        let issues = validate::validate(&r);
        prop_assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn stored_form_round_trips(r in resource()) {
        let stored = r.to_stored();
        prop_assert_eq!(Resource::from_stored(&stored).unwrap(), r.clone());
        prop_assert_eq!(apply_outcome(Some(&stored), &r), Outcome::Unchanged);
        // The stored JSON is itself a manifest that parses to the same object.
        prop_assert_eq!(parse("stored.json", &stored).unwrap(), vec![r]);
    }

    #[test]
    fn yaml_rendering_parses_back(r in resource()) {
        let yaml = serde_saphyr::to_string(&r).unwrap();
        let parsed = parse("rendered.yaml", yaml.as_bytes());
        prop_assert_eq!(parsed, Ok(vec![r]), "YAML was:\n{}", yaml);
    }

    #[test]
    fn several_documents_parse_back_in_order(rs in vec(resource(), 1..4)) {
        // Different names, so that they are not duplicates.
        let rs: Vec<Resource> = rs.into_iter().enumerate().map(|(i, mut r)| {
            let name = format!("{}-{i}", r.name());
            r.metadata_mut().name = name;
            r
        }).collect();
        let yaml: Vec<String> = rs.iter().map(|r| serde_saphyr::to_string(r).unwrap()).collect();
        let text = format!("---\n{}", yaml.join("---\n"));
        prop_assert_eq!(parse("all.yaml", text.as_bytes()).unwrap(), rs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = parse("fuzz.yaml", &bytes);
        let _ = Resource::from_stored(&bytes);
    }

    #[test]
    fn mangled_manifests_never_panic(
        cut in 0usize..2000,
        insert in prop_oneof![Just("\n---\n"), Just(": "), Just("- "), Just("{"), Just("]"), Just("&a "), Just("*a"), Just("<<: "), Just("\t"), Just("'"), Just("\"")],
        doc in prop_oneof![Just(NGINX), Just(WORKER), Just(MULTI), Just(EXPORTED), Just(EXPORTED_SERVICE), Just(TUTORIAL)],
    ) {
        let at = doc.char_indices().map(|(i, _)| i).nth(cut % doc.chars().count()).unwrap_or(0);
        let mangled = format!("{}{}{}", &doc[..at], insert, &doc[at..]);
        if let Err(errors) = parse("mangled.yaml", mangled.as_bytes()) {
            // Every error says where.
            prop_assert!(errors.iter().all(|e| e.doc.is_some() && e.file == "mangled.yaml"));
            prop_assert!(!errors.is_empty());
        }
    }
}
