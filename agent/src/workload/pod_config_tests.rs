//! Tests of `pod_config`: what a pod reads from config maps, secrets and the downward API.

use std::collections::BTreeMap;

use super::pod_config::{Missing, Objects, PodFacts, config_digest, is_env_name, resolve};
use crate::manifest::{self, ConfigMap, Pod, Resource, Secret};

/// Objects from a manifest.
#[derive(Default)]
struct Held {
    config_maps: BTreeMap<String, ConfigMap>,
    secrets: BTreeMap<String, Secret>,
}

impl Objects for Held {
    fn config_map(&self, _namespace: &str, name: &str) -> Option<ConfigMap> {
        self.config_maps.get(name).cloned()
    }
    fn secret(&self, _namespace: &str, name: &str) -> Option<Result<Secret, String>> {
        self.secrets.get(name).cloned().map(Ok)
    }
}

fn parse(yaml: &str) -> (Held, Option<Pod>) {
    let mut held = Held::default();
    let mut pod = None;
    for r in manifest::parse("test.yaml", yaml.as_bytes()).expect("valid manifest") {
        match r {
            Resource::ConfigMap(cm) => {
                held.config_maps.insert(cm.metadata.name.clone(), cm);
            }
            Resource::Secret(s) => {
                held.secrets.insert(s.metadata.name.clone(), s);
            }
            Resource::Pod(p) => pod = Some(p),
            _ => {}
        }
    }
    (held, pod)
}

const FACTS: PodFacts<'static> = PodFacts {
    uid: "uid-1",
    node_name: "node-a",
    host_ip: "10.0.0.7",
    allocatable: (4000, 8 << 30),
};

const OBJECTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {a: "1", b: "2", 9x: "skipped", app.conf: "k=v\n"}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {password: hunter2, user: admin}
"#;

fn pod(spec: &str) -> String {
    format!(
        "{OBJECTS}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {{app: web}}\n  annotations: {{note: 'say \"hi\"'}}\nspec:\n{spec}"
    )
}

#[test]
fn env_comes_from_env_from_then_env_with_secrets_marked() {
    let (held, pod) = parse(&pod(r#"
  containers:
  - name: c
    image: x
    resources: {limits: {cpu: 500m}, requests: {memory: 64Mi}}
    envFrom:
    - configMapRef: {name: cm}
    - prefix: S_
      secretRef: {name: sec}
    env:
    - {name: a, value: overridden}
    - name: PASS
      valueFrom: {secretKeyRef: {name: sec, key: password}}
    - name: NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: APP
      valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}
    - name: NODE
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    - name: HOST
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
    - name: IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: CPU
      valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}
    - name: CPU_CORES
      valueFrom: {resourceFieldRef: {resource: limits.cpu}}
    - name: MEM
      valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Gi}}
    - name: MEM_REQ
      valueFrom: {resourceFieldRef: {resource: requests.memory, divisor: 1Mi}}
"#));
    let config = resolve(&pod.unwrap(), &FACTS, &held).unwrap();
    let c = &config.containers[0];
    let last = |name: &str| {
        c.env
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(last("a"), Some("overridden"));
    assert_eq!(last("b"), Some("2"));
    assert_eq!(last("app.conf"), Some("k=v\n"));
    assert_eq!(last("9x"), None, "not a variable name: skipped");
    assert_eq!(last("S_password"), Some("hunter2"));
    assert_eq!(last("PASS"), Some("hunter2"));
    assert_eq!(last("NAME"), Some("p"));
    assert_eq!(last("APP"), Some("web"));
    assert_eq!(last("NODE"), Some("node-a"));
    assert_eq!(last("HOST"), Some("10.0.0.7"));
    assert_eq!(last("IP"), None, "the runtime sets it");
    assert_eq!(c.pod_ip_env, vec!["IP".to_owned()]);
    assert_eq!(last("CPU"), Some("500"));
    assert_eq!(last("CPU_CORES"), Some("1"), "rounded up");
    assert_eq!(last("MEM"), Some("8"), "no limit: the node's");
    assert_eq!(last("MEM_REQ"), Some("64"));
    assert_eq!(
        c.sensitive_env,
        vec![
            "PASS".to_owned(),
            "S_password".to_owned(),
            "S_user".to_owned()
        ]
    );
    assert_eq!(config.warnings.len(), 1);
    assert!(
        config.warnings[0].contains("Keys [9x]"),
        "{:?}",
        config.warnings
    );
}

#[test]
fn missing_objects_and_keys_stop_the_pod_unless_optional() {
    let spec = |env: &str| {
        pod(&format!(
            "  containers:\n  - name: c\n    image: x\n    env:\n    - name: V\n      valueFrom: {env}\n"
        ))
    };
    let cases = [
        (
            "{configMapKeyRef: {name: nope, key: a}}",
            Some("configmap \"nope\" not found"),
        ),
        (
            "{configMapKeyRef: {name: cm, key: zz}}",
            Some("couldn't find key zz in ConfigMap default/cm"),
        ),
        (
            "{secretKeyRef: {name: nope, key: a}}",
            Some("secret \"nope\" not found"),
        ),
        ("{secretKeyRef: {name: nope, key: a, optional: true}}", None),
        (
            "{configMapKeyRef: {name: cm, key: zz, optional: true}}",
            None,
        ),
    ];
    for (env, want) in cases {
        let (held, pod) = parse(&spec(env));
        let got = resolve(&pod.unwrap(), &FACTS, &held);
        match want {
            Some(message) => assert_eq!(got.unwrap_err(), Missing(message.into()), "{env}"),
            None => {
                let config = got.unwrap();
                assert!(
                    !config.containers[0].env.iter().any(|(n, _)| n == "V"),
                    "{env}"
                );
            }
        }
    }
}

#[test]
fn volumes_hold_the_keys_as_files_with_their_modes() {
    let (held, pod) = parse(&pod(r#"
  containers:
  - name: c
    image: x
    volumeMounts:
    - {name: all, mountPath: /all}
    - {name: some, mountPath: /some, subPath: conf}
    - {name: sec, mountPath: /sec}
    - {name: info, mountPath: /info}
    - {name: mix, mountPath: /mix}
  volumes:
  - name: all
    configMap: {name: cm}
  - name: some
    configMap:
      name: cm
      defaultMode: 0600
      items: [{key: app.conf, path: conf/app.conf}, {key: a, path: a, mode: 0400}]
  - name: sec
    secret: {secretName: sec, defaultMode: 0400}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: annotations, fieldRef: {fieldPath: metadata.annotations}}
  - name: mix
    projected:
      sources:
      - configMap: {name: cm, items: [{key: b, path: b}]}
      - secret: {name: sec, items: [{key: user, path: user}]}
      - configMap: {name: absent, optional: true}
"#));
    let config = resolve(&pod.unwrap(), &FACTS, &held).unwrap();
    let files = |volume: &str| -> Vec<(String, String, u32)> {
        let v = config.volumes.iter().find(|v| v.name == volume).unwrap();
        v.files
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    String::from_utf8_lossy(&f.data).into_owned(),
                    f.mode,
                )
            })
            .collect()
    };
    let sensitive = |volume: &str| {
        config
            .volumes
            .iter()
            .find(|v| v.name == volume)
            .unwrap()
            .sensitive
    };
    assert_eq!(files("all").len(), 4);
    assert!(files("all").iter().all(|f| f.2 == 0o644));
    assert_eq!(
        files("some"),
        vec![
            ("conf/app.conf".into(), "k=v\n".into(), 0o600),
            ("a".into(), "1".into(), 0o400)
        ]
    );
    assert_eq!(
        files("sec"),
        vec![
            ("password".into(), "hunter2".into(), 0o400),
            ("user".into(), "admin".into(), 0o400)
        ]
    );
    assert!(sensitive("sec") && sensitive("mix") && !sensitive("all"));
    assert_eq!(
        files("info"),
        vec![
            ("labels".into(), "app=\"web\"".into(), 0o644),
            (
                "annotations".into(),
                "note=\"say \\\"hi\\\"\"".into(),
                0o644
            )
        ]
    );
    assert_eq!(
        files("mix"),
        vec![
            ("b".into(), "2".into(), 0o644),
            ("user".into(), "admin".into(), 0o644)
        ]
    );
    let mounts = &config.containers[0].mounts;
    assert_eq!(mounts[1].sub_path.as_deref(), Some("conf"));
    assert_eq!(mounts.len(), 5);
}

#[test]
fn the_config_digest_follows_what_the_pod_reads_only() {
    let (_, pod) = parse(&pod(
        "  containers:\n  - name: c\n    image: x\n    envFrom:\n    - configMapRef: {name: cm}\n",
    ));
    let spec = pod.unwrap().spec;
    let digest = |cm: Option<&[u8]>, other: Option<&[u8]>| {
        config_digest("default", &spec, |key| match key.name.as_str() {
            "cm" => cm.map(<[u8]>::to_vec),
            _ => other.map(<[u8]>::to_vec),
        })
    };
    let base = digest(Some(b"v1"), None);
    assert_eq!(base, digest(Some(b"v1"), Some(b"anything")), "not read");
    assert_ne!(base, digest(Some(b"v2"), None));
    assert_ne!(base, digest(None, None));
}

#[test]
fn variable_names_follow_kubernetes() {
    for ok in ["A", "a_b", "a.b", "a-b", "_x", "X9"] {
        assert!(is_env_name(ok), "{ok}");
    }
    for bad in ["", "9a", "a b", "a=b", "ü"] {
        assert!(!is_env_name(bad), "{bad}");
    }
}

#[test]
fn scratch_and_host_path_volumes_pass_to_the_runtime_as_directories() {
    use crate::runtime::HostPathCheck;
    let (held, pod) = parse(&pod(r#"
  containers:
  - name: c
    image: x
    volumeMounts:
    - {name: cache, mountPath: /cache}
    - {name: fast, mountPath: /fast}
    - {name: host, mountPath: /host, readOnly: true}
  volumes:
  - name: cache
    emptyDir: {sizeLimit: 1Mi}
  - name: fast
    emptyDir: {medium: Memory}
  - name: host
    hostPath: {path: /var/data, type: DirectoryOrCreate}
"#));
    let config = resolve(&pod.unwrap(), &FACTS, &held).unwrap();
    assert!(config.volumes.is_empty(), "no files to write");
    let scratch: Vec<(&str, bool, Option<u64>)> = config
        .scratch
        .iter()
        .map(|s| (s.name.as_str(), s.memory, s.size_limit))
        .collect();
    assert_eq!(
        scratch,
        vec![("cache", false, Some(1 << 20)), ("fast", true, None)]
    );
    assert_eq!(config.host_paths.len(), 1);
    assert_eq!(config.host_paths[0].path, "/var/data");
    assert_eq!(config.host_paths[0].check, HostPathCheck::DirectoryOrCreate);
    assert!(config.containers[0].mounts[2].read_only);
}
