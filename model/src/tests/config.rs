//! ConfigMaps, Secrets, and what pods take from them: env sources and volumes.

use super::*;

/// A Deployment whose container gets `container` (from line 17) and whose pod gets `pod`
/// (after it), each indented to fit.
fn with_pod(container: &str, pod: &str) -> String {
    let pod: String = pod.lines().map(|l| format!("      {l}\n")).collect();
    with_container(container) + &pod
}

/// The pod spec of the one Deployment in `text`.
fn pod_of(text: &str) -> PodSpec {
    deployment(text).spec.template.spec
}

fn config_map(text: &str) -> ConfigMap {
    match ok(text).as_slice() {
        [Resource::ConfigMap(cm)] => cm.clone(),
        other => panic!("expected one ConfigMap, got {other:#?}"),
    }
}

fn secret(text: &str) -> Secret {
    match ok(text).as_slice() {
        [Resource::Secret(s)] => s.clone(),
        other => panic!("expected one Secret, got {other:#?}"),
    }
}

/// The stored form round-trips, and applying the same object again is `unchanged`.
fn assert_round_trips(r: &Resource) {
    let stored = r.to_stored();
    assert_eq!(&Resource::from_stored(&stored).unwrap(), r);
    assert_eq!(apply_outcome(Some(&stored), r), Outcome::Unchanged);
    assert_eq!(
        parse("stored.json", &stored).unwrap(),
        std::slice::from_ref(r)
    );
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n";

#[test]
fn config_maps() {
    let cm = config_map(&format!(
        "{CM}data:\n  LOG_LEVEL: info\n  app.properties: |\n    a=1\n    b=2\n  empty:\nbinaryData:\n  logo.png: iVBORw0KGgo=\nimmutable: true\n"
    ));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(cm.data["LOG_LEVEL"], "info");
    assert_eq!(cm.data["app.properties"], "a=1\nb=2\n");
    assert_eq!(cm.data["empty"], "");
    assert_eq!(cm.binary_data["logo.png"].0, b"\x89PNG\r\n\x1a\n".to_vec());
    assert!(cm.immutable);
    let entries: Vec<(&str, usize)> = cm.entries().map(|(k, v)| (k, v.len())).collect();
    assert_eq!(
        entries,
        [
            ("LOG_LEVEL", 4),
            ("app.properties", 8),
            ("empty", 0),
            ("logo.png", 8)
        ]
    );
    let r = Resource::ConfigMap(cm);
    assert_round_trips(&r);
    assert_eq!(r.key().to_string(), "configmap/web");
    // No data at all is a valid (empty) config map.
    let empty = config_map(CM);
    assert!(empty.data.is_empty() && empty.binary_data.is_empty() && !empty.immutable);
    assert_round_trips(&Resource::ConfigMap(empty));
}

#[test]
fn config_map_rules() {
    let errs = errors(&format!(
        "{CM}data:\n  a b: x\n  .: x\n  ..: x\n  ..data: x\n  ok: 5\n  both: x\n  {}: x\nbinaryData:\n  both: eA==\n  bad: not base64!\n  short: eA\nspec: {{}}\n",
        "k".repeat(254)
    ));
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: data[a b]: invalid key: \"a b\" must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', 'KEY_NAME' or 'key-name') (line 6)",
            "deploy.yaml: doc 1: data[.]: invalid key: \".\" is not a valid key (line 7)",
            "deploy.yaml: doc 1: data[..]: invalid key: \"..\" is not a valid key (line 8)",
            "deploy.yaml: doc 1: data[..data]: invalid key: \"..data\" must not start with '..' (line 9)",
            "deploy.yaml: doc 1: data[ok]: expected string, got integer 5 (quote it: \"5\") (line 10)",
            "deploy.yaml: doc 1: data[both]: also a key of binaryData: a key may be in data or in binaryData, not both (line 11)",
            &format!(
                "deploy.yaml: doc 1: data[{}]: invalid key: must be no more than 253 characters (it has 254) (line 12)",
                "k".repeat(254)
            ),
            "deploy.yaml: doc 1: binaryData[bad]: not valid base64: unexpected character at offset 3 (binaryData values are base64; give text in data) (line 15)",
            "deploy.yaml: doc 1: binaryData[short]: not valid base64: missing or wrong = padding (binaryData values are base64; give text in data) (line 16)",
            "deploy.yaml: doc 1: spec: unknown field (line 17)",
        ]
    );
    // Numbers YAML reads into something else are quoted back as written.
    assert_eq!(
        errors(&format!("{CM}data:\n  zip: 01234\n  version: 1.10\n")),
        [
            "deploy.yaml: doc 1: data[zip]: expected string, got integer 01234 (quote it: \"01234\") (line 6)",
            "deploy.yaml: doc 1: data[version]: expected string, got number 1.10 (quote it: \"1.10\") (line 7)",
        ]
    );
    // A config map's name is a DNS subdomain.
    ok("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web.config-1\n");
    let errs = errors("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Web\n");
    assert!(
        errs[0].starts_with("deploy.yaml: doc 1: metadata.name: \"Web\" must consist of"),
        "{errs:#?}"
    );
}

#[test]
fn config_maps_and_secrets_are_at_most_one_mebibyte() {
    // Keys and values count: 3 + (1 MiB - 3) is the limit exactly.
    let at_limit = format!("{CM}data:\n  big: {}\n", "x".repeat((1 << 20) - 3));
    assert_eq!(config_map(&at_limit).data["big"].len(), (1 << 20) - 3);
    let over = format!("{CM}data:\n  big: {}\n", "x".repeat(1 << 20));
    assert_eq!(
        errors(&over),
        [
            "deploy.yaml: doc 1: data: the config map is 1048579 bytes (keys and values), over the limit of 1048576 bytes (1 MiB) (line 5)"
        ]
    );
    // Binary data counts as its bytes, not its base64.
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 1 << 20]);
    assert_eq!(
        errors(&format!("{CM}binaryData:\n  blob: {encoded}\n")),
        [
            "deploy.yaml: doc 1: binaryData: the config map is 1048580 bytes (keys and values), over the limit of 1048576 bytes (1 MiB) (line 5)"
        ]
    );
    assert_eq!(
        errors(&format!("{SECRET}data:\n  blob: {encoded}\n")),
        [
            "deploy.yaml: doc 1: data: the secret is 1048580 bytes (keys and values), over the limit of 1048576 bytes (1 MiB) (line 5)"
        ]
    );
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n";

#[test]
fn secrets() {
    let s = secret(&format!(
        "{SECRET}data:\n  username: YWRtaW4=\n  password: b2xk\n  wrapped: |\n    aGVs\n    bG8=\nstringData:\n  password: s3cr3t\n  config.yaml: |\n    token: abc\n"
    ));
    assert_eq!(s.secret_type, "Opaque");
    assert_eq!(s.data["username"].0, b"admin");
    // stringData wins over data for the same key, as the API server merges them.
    assert_eq!(s.data["password"].0, b"s3cr3t");
    assert_eq!(s.data["config.yaml"].0, b"token: abc\n");
    // Line breaks in base64 are ignored, as Kubernetes does.
    assert_eq!(s.data["wrapped"].0, b"hello");
    assert!(!s.immutable);
    // Debug shows keys and sizes, never a value.
    let debug = format!("{s:?}");
    assert!(debug.contains("\"password\": <6 bytes>"), "{debug}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("admin"),
        "{debug}"
    );
    let r = Resource::Secret(s);
    assert!(!format!("{r:?}").contains("s3cr3t"));
    // The stored form holds data only, in base64.
    let stored = String::from_utf8(r.to_stored()).unwrap();
    assert!(stored.contains(r#""password":"czNjcjN0""#), "{stored}");
    assert!(
        !stored.contains("stringData") && !stored.contains("s3cr3t"),
        "{stored}"
    );
    assert!(stored.contains(r#""type":"Opaque""#), "{stored}");
    assert_round_trips(&r);
    assert_eq!(r.key().to_string(), "secret/creds");
    // `type: ""` is Opaque too; an empty secret is valid.
    let empty = secret(&format!("{SECRET}type: \"\"\nimmutable: true\n"));
    assert_eq!(
        (empty.secret_type.as_str(), empty.immutable),
        ("Opaque", true)
    );
}

#[test]
fn what_kubectl_create_writes_applies() {
    // `kubectl create secret generic ... --dry-run=client -o yaml` and the config map
    // equivalent.
    let resources = ok("apiVersion: v1
data:
  password: cGFzcw==
kind: Secret
metadata:
  creationTimestamp: null
  name: creds
---
apiVersion: v1
data:
  app.properties: |
    color=blue
kind: ConfigMap
metadata:
  creationTimestamp: null
  name: app
");
    let [Resource::Secret(s), Resource::ConfigMap(cm)] = resources.as_slice() else {
        panic!("{resources:#?}")
    };
    assert_eq!(
        (s.secret_type.as_str(), &s.data["password"].0[..]),
        ("Opaque", &b"pass"[..])
    );
    assert_eq!(cm.data["app.properties"], "color=blue\n");
}

#[test]
fn secret_values_never_appear_in_errors() {
    let text = format!(
        "{SECRET}data:\n  a: c2VjcmV0LXZhbHVl!\n  b: 12345\nstringData:\n  c: 67890\n  d: [hunter2]\n"
    );
    let errs = errors(&text);
    assert_eq!(
        errs,
        [
            "deploy.yaml: doc 1: data[a]: not valid base64: unexpected character at offset 16 (data values are base64; give plain text in stringData) (line 6)",
            "deploy.yaml: doc 1: data[b]: expected base64 text, got an integer (line 7)",
            "deploy.yaml: doc 1: stringData[c]: expected string, got an integer (quote it) (line 9)",
            "deploy.yaml: doc 1: stringData[d]: expected string, got a list (quote it) (line 10)",
        ]
    );
    for secret_text in ["c2VjcmV0", "12345", "67890", "hunter2"] {
        assert!(!errs.iter().any(|e| e.contains(secret_text)), "{errs:#?}");
    }
    assert_eq!(
        errors(&format!("{SECRET}data: c2VjcmV0\nstringData: hunter2\n")),
        [
            "deploy.yaml: doc 1: data: expected a mapping of keys to base64 text, got a string (line 5)",
            "deploy.yaml: doc 1: stringData: expected a mapping of keys to text, got a string (line 6)",
        ]
    );
}

#[test]
fn secret_types() {
    let tls = secret(&format!(
        "{SECRET}type: kubernetes.io/tls\ndata:\n  tls.crt: Y2VydA==\n  tls.key: a2V5\n"
    ));
    assert_eq!(tls.secret_type, "kubernetes.io/tls");
    secret(&format!(
        "{SECRET}type: kubernetes.io/basic-auth\nstringData:\n  password: p\n"
    ));
    secret(&format!(
        "{SECRET}type: kubernetes.io/ssh-auth\nstringData:\n  ssh-privatekey: key\n"
    ));
    let docker = secret(&format!(
        "{SECRET}type: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{{\"auths\": {{\"registry.example.com\": {{\"auth\": \"dTpw\"}}}}}}'\n"
    ));
    assert_round_trips(&Resource::Secret(docker));
    // Types of the user's own, with a domain, hold anything.
    for kind in ["example.com/token", "helm.sh/release.v1"] {
        let s = secret(&format!(
            "{SECRET}type: {kind}\nstringData:\n  anything: x\n"
        ));
        assert_eq!(s.secret_type, kind);
    }

    assert_eq!(
        errors(&format!(
            "{SECRET}type: kubernetes.io/tls\nstringData:\n  tls.crt: x\n"
        )),
        ["deploy.yaml: doc 1: data[tls.key]: required for type kubernetes.io/tls (line 6)"]
    );
    assert_eq!(
        errors(&format!("{SECRET}type: kubernetes.io/tls\n")),
        [
            "deploy.yaml: doc 1: data[tls.crt]: required for type kubernetes.io/tls (line 5)",
            "deploy.yaml: doc 1: data[tls.key]: required for type kubernetes.io/tls (line 5)",
        ]
    );
    assert_eq!(
        errors(&format!(
            "{SECRET}type: kubernetes.io/basic-auth\ndata:\n  user: YQ==\n"
        )),
        [
            "deploy.yaml: doc 1: data: needs a username or a password key (or both) for type kubernetes.io/basic-auth (line 6)"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{SECRET}type: kubernetes.io/ssh-auth\nstringData:\n  ssh-privatekey: \"\"\n"
        )),
        [
            "deploy.yaml: doc 1: data[ssh-privatekey]: required, and not empty, for type kubernetes.io/ssh-auth (line 7)"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{SECRET}type: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{{\"auths\": secret}}'\n"
        )),
        [
            "deploy.yaml: doc 1: data[.dockerconfigjson]: must be a JSON object (the content of a Docker config.json): expected value at line 1 column 11 (line 7)"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{SECRET}type: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '\"secret\"'\n"
        )),
        [
            "deploy.yaml: doc 1: data[.dockerconfigjson]: must be a JSON object (the content of a Docker config.json) (line 7)"
        ]
    );
    assert_eq!(
        errors(&format!("{SECRET}type: kubernetes.io/dockerconfigjson\n")),
        [
            "deploy.yaml: doc 1: data[.dockerconfigjson]: required for type kubernetes.io/dockerconfigjson (line 5)"
        ]
    );
    let supported = "supported types: Opaque, kubernetes.io/tls, kubernetes.io/basic-auth, kubernetes.io/dockerconfigjson, kubernetes.io/ssh-auth, or a type of your own with a domain (example.com/token)";
    assert_eq!(
        errors(&format!(
            "{SECRET}type: kubernetes.io/service-account-token\n"
        )),
        [format!(
            "deploy.yaml: doc 1: type: type \"kubernetes.io/service-account-token\" is not supported yet; {supported} (line 5)"
        )]
    );
    assert_eq!(
        errors(&format!("{SECRET}type: bootstrap.kubernetes.io/token\n")),
        [format!(
            "deploy.yaml: doc 1: type: type \"bootstrap.kubernetes.io/token\" is not supported yet; {supported} (line 5)"
        )]
    );
    assert_eq!(
        errors(&format!("{SECRET}type: opaque\n")),
        [format!(
            "deploy.yaml: doc 1: type: unsupported type \"opaque\" (did you mean \"Opaque\"?); {supported} (line 5)"
        )]
    );
    assert_eq!(
        errors(&format!("{SECRET}type: generic\n")),
        [format!(
            "deploy.yaml: doc 1: type: unsupported type \"generic\"; {supported} (line 5)"
        )]
    );
    let errs = errors(&format!("{SECRET}type: Example.com/token\n"));
    assert!(
        errs[0].starts_with("deploy.yaml: doc 1: type: \"Example.com/token\" is not a valid type of your own: prefix \"Example.com\" must consist of lower case"),
        "{errs:#?}"
    );
}

#[test]
fn config_map_and_secret_objects() {
    let cm = config_map(&format!(
        "{CM}  labels: {{app: web}}\ndata:\n  a: \"1\"\nbinaryData:\n  b: AAE=\nimmutable: true\n"
    ));
    let value = configmap_object(&cm);
    assert_eq!(
        value,
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "data": {"a": "1"},
            "binaryData": {"b": "AAE="},
            "immutable": true,
        })
    );
    assert_eq!(configmap_from_object(&value).unwrap(), cm);
    let bare = config_map(CM);
    assert_eq!(
        configmap_object(&bare),
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "default"},
        })
    );
    assert_eq!(
        configmap_from_object(&configmap_object(&bare)).unwrap(),
        bare
    );

    let s = secret(&format!("{SECRET}stringData:\n  password: s3cr3t\n"));
    let value = secret_object(&s);
    assert_eq!(
        value,
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "default"},
            "data": {"password": "czNjcjN0"},
            "type": "Opaque",
        })
    );
    assert_eq!(secret_from_object(&value).unwrap(), s);
    // What `get -o yaml` prints applies back unchanged.
    let yaml = serde_saphyr::to_string(&value).unwrap();
    assert_eq!(ok(&yaml), [Resource::Secret(s.clone())]);
    let yaml = serde_saphyr::to_string(&configmap_object(&cm)).unwrap();
    assert_eq!(ok(&yaml), [Resource::ConfigMap(cm)]);
    // A type left out reads as Opaque.
    let mut untyped = value;
    untyped.as_object_mut().unwrap().remove("type");
    assert_eq!(secret_from_object(&untyped).unwrap().secret_type, "Opaque");
}

#[test]
fn immutable_config_maps_and_secrets() {
    let cm = |extra: &str| Resource::ConfigMap(config_map(&format!("{CM}{extra}")));
    let frozen = cm("data: {a: \"1\"}\nimmutable: true\n");
    // Labels may change; data may not, nor may the flag be cleared.
    let mut relabeled = frozen.clone();
    relabeled
        .metadata_mut()
        .labels
        .insert("app".into(), "web".into());
    assert_eq!(immutable_change(&frozen, &relabeled), None);
    assert_eq!(immutable_change(&frozen, &frozen), None);
    assert_eq!(
        immutable_change(&frozen, &cm("data: {a: \"2\"}\nimmutable: true\n")).as_deref(),
        Some("data: field is immutable when `immutable` is set")
    );
    assert_eq!(
        immutable_change(&frozen, &cm("data: {a: \"1\"}\n")).as_deref(),
        Some("immutable: field is immutable when `immutable` is set")
    );
    assert_eq!(
        immutable_change(&frozen, &cm("binaryData: {a: AA==}\n")).as_deref(),
        Some(
            "immutable: field is immutable when `immutable` is set; data: field is immutable when `immutable` is set; binaryData: field is immutable when `immutable` is set"
        )
    );
    // A mutable one changes freely, and may become immutable.
    let open = cm("data: {a: \"1\"}\n");
    assert_eq!(immutable_change(&open, &cm("data: {a: \"2\"}\n")), None);
    assert_eq!(immutable_change(&open, &frozen), None);

    let secret = |extra: &str| Resource::Secret(super::config::secret(&format!("{SECRET}{extra}")));
    let frozen = secret("stringData: {a: \"1\"}\nimmutable: true\n");
    assert_eq!(
        immutable_change(
            &frozen,
            &secret("stringData: {a: \"2\"}\nimmutable: true\n")
        )
        .as_deref(),
        Some("data: field is immutable when `immutable` is set")
    );
    // A secret's type never changes, immutable or not.
    assert_eq!(
        immutable_change(
            &secret("stringData: {a: \"1\"}\n"),
            &secret("type: example.com/x\nstringData: {a: \"1\"}\n")
        )
        .as_deref(),
        Some("type: field is immutable (it is \"Opaque\"; delete the secret to change it)")
    );
    // Other kinds, or different kinds, have nothing immutable here.
    let pod = ok("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - {name: c, image: i}\n").remove(0);
    assert_eq!(immutable_change(&pod, &pod), None);
    assert_eq!(immutable_change(&frozen, &pod), None);
}

#[test]
fn env_from_config_maps_secrets_and_the_pod() {
    let pod = pod_of(&with_container(
        "env:
- name: LEVEL
  valueFrom:
    configMapKeyRef: {name: web-config, key: LOG_LEVEL}
- name: PASSWORD
  valueFrom:
    secretKeyRef: {name: creds, key: password, optional: true}
- name: POD
  valueFrom:
    fieldRef: {apiVersion: v1, fieldPath: metadata.name}
- name: TEAM
  valueFrom:
    fieldRef: {fieldPath: \"metadata.labels['app.kubernetes.io/team']\"}
- name: CPU
  valueFrom:
    resourceFieldRef: {resource: limits.cpu, divisor: 1m}
- name: MEMORY
  valueFrom:
    resourceFieldRef: {containerName: web, resource: requests.memory, divisor: 1Mi}
- name: PLAIN
  value: x
  valueFrom: null
envFrom:
- configMapRef: {name: web-config}
- prefix: DB_
  secretRef: {name: creds, optional: true}",
    ));
    let c = &pod.containers[0];
    let sources: Vec<Option<EnvVarSource>> = c.env.iter().map(|e| e.value_from.clone()).collect();
    assert_eq!(
        sources,
        [
            Some(EnvVarSource::ConfigMapKeyRef(KeySelector {
                name: "web-config".into(),
                key: "LOG_LEVEL".into(),
                optional: false,
            })),
            Some(EnvVarSource::SecretKeyRef(KeySelector {
                name: "creds".into(),
                key: "password".into(),
                optional: true,
            })),
            Some(EnvVarSource::FieldRef(ObjectFieldSelector {
                field_path: "metadata.name".into()
            })),
            Some(EnvVarSource::FieldRef(ObjectFieldSelector {
                field_path: "metadata.labels['app.kubernetes.io/team']".into()
            })),
            Some(EnvVarSource::ResourceFieldRef(ResourceFieldSelector {
                container_name: None,
                resource: "limits.cpu".into(),
                divisor: Some("1m".into()),
            })),
            Some(EnvVarSource::ResourceFieldRef(ResourceFieldSelector {
                container_name: Some("web".into()),
                resource: "requests.memory".into(),
                divisor: Some("1Mi".into()),
            })),
            None,
        ]
    );
    assert_eq!(c.env[6].value, "x");
    assert_eq!(
        c.env_from,
        [
            EnvFromSource {
                prefix: String::new(),
                source: EnvFromRef::ConfigMapRef(ObjectRef {
                    name: "web-config".into(),
                    optional: false
                }),
            },
            EnvFromSource {
                prefix: "DB_".into(),
                source: EnvFromRef::SecretRef(ObjectRef {
                    name: "creds".into(),
                    optional: true
                }),
            },
        ]
    );
    assert_round_trips(&Resource::Deployment(deployment(&with_container(
        "envFrom:\n- configMapRef: {name: c}\nenv:\n- name: A\n  valueFrom:\n    fieldRef: {fieldPath: status.hostIP}",
    ))));
}

#[test]
fn divisors_are_canonical() {
    let divisor = |resource: &str, divisor: &str| {
        let pod = pod_of(&with_container(&format!(
            "env:\n- name: X\n  valueFrom:\n    resourceFieldRef: {{resource: {resource}, divisor: {divisor}}}"
        )));
        match &pod.containers[0].env[0].value_from {
            Some(EnvVarSource::ResourceFieldRef(r)) => r.divisor.clone(),
            other => panic!("{other:?}"),
        }
    };
    // 1 is the default, and 0 is what `kubectl get -o yaml` writes for none.
    assert_eq!(divisor("limits.cpu", "1"), None);
    assert_eq!(divisor("limits.cpu", "\"0\""), None);
    assert_eq!(divisor("limits.cpu", "1000m"), None);
    assert_eq!(divisor("limits.cpu", "0.001"), Some("1m".into()));
    assert_eq!(divisor("limits.memory", "1"), None);
    assert_eq!(divisor("limits.memory", "1024"), Some("1Ki".into()));
    assert_eq!(divisor("limits.memory", "1M"), Some("1M".into()));
    assert_eq!(divisor("requests.memory", "1e3"), Some("1k".into()));
    assert_eq!(divisor("requests.memory", "1Gi"), Some("1Gi".into()));
}

#[test]
fn env_source_rules() {
    let errs = errors(&with_container(
        "env:
- name: NONE
  valueFrom: {}
- name: TWO
  valueFrom:
    configMapKeyRef: {name: c, key: k}
    secretKeyRef: {name: s, key: k}
- name: BOTH
  value: x
  valueFrom:
    fieldRef: {fieldPath: metadata.uid}
- name: KEY
  valueFrom:
    configMapKeyRef: {name: Bad_Name, key: 'a b'}
- name: MISSING
  valueFrom:
    secretKeyRef: {name: s}
- name: VERSION
  valueFrom:
    fieldRef: {apiVersion: v2, fieldPath: metadata.name}",
    ));
    let c = "deploy.yaml: doc 1: spec.template.spec.containers[0]";
    assert_eq!(
        errs,
        [
            format!(
                "{c}.env[0].valueFrom: needs exactly one source: configMapKeyRef, secretKeyRef, fieldRef or resourceFieldRef (line 19)"
            ),
            format!(
                "{c}.env[1].valueFrom: has 2 sources (configMapKeyRef, secretKeyRef): give exactly one (line 21)"
            ),
            format!("{c}.env[2].valueFrom: may not be given when value is not empty (line 26)"),
            format!(
                "{c}.env[3].valueFrom.configMapKeyRef.name: \"Bad_Name\" must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com') (line 30)"
            ),
            format!(
                "{c}.env[3].valueFrom.configMapKeyRef.key: \"a b\" must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', 'KEY_NAME' or 'key-name') (line 30)"
            ),
            format!("{c}.env[4].valueFrom.secretKeyRef.key: required (line 33)"),
            format!(
                "{c}.env[5].valueFrom.fieldRef.apiVersion: \"v2\" is not supported: use v1 (line 36)"
            ),
        ]
    );
}

#[test]
fn field_paths() {
    let env = |path: &str| {
        errors(&with_container(&format!(
            "env:\n- name: X\n  valueFrom:\n    fieldRef:\n      fieldPath: \"{path}\""
        )))
    };
    let at =
        "deploy.yaml: doc 1: spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath";
    let supported = "metadata.name, metadata.namespace, metadata.uid, metadata.labels['<key>'], metadata.annotations['<key>'], spec.nodeName, status.podIP, status.hostIP";
    assert_eq!(
        env("metadata.labels"),
        [format!(
            "{at}: metadata.labels as a whole is only available in a downwardAPI volume; in env, name one key: metadata.labels['<key>'] (line 21)"
        )]
    );
    assert_eq!(
        env("metadata.annotations[\\\"team\\\"]"),
        [format!(
            "{at}: \"metadata.annotations[\\\"team\\\"]\" is not a valid subscript: write metadata.annotations['<key>'] (in single quotes) (line 21)"
        )]
    );
    assert_eq!(
        env("metadata.labels['bad key']"),
        [format!(
            "{at}: invalid key: \"bad key\": the name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc') (line 21)"
        )]
    );
    assert_eq!(
        env("status.podIPs"),
        [format!(
            "{at}: status.podIPs is not supported yet; supported: {supported} (line 21)"
        )]
    );
    assert_eq!(
        env("spec.hostname"),
        [format!(
            "{at}: unsupported field path \"spec.hostname\": supported values are {supported} (line 21)"
        )]
    );
    // Upper case in a label key's name part is fine, as in Kubernetes.
    pod_of(&with_container(
        "env:\n- name: X\n  valueFrom:\n    fieldRef: {fieldPath: \"metadata.annotations['example.com/Team']\"}",
    ));
}

#[test]
fn resource_field_rules() {
    let errs = errors(&with_container(
        "env:
- name: A
  valueFrom:
    resourceFieldRef: {resource: limits.ephemeral-storage}
- name: B
  valueFrom:
    resourceFieldRef: {resource: limits.gpu}
- name: C
  valueFrom:
    resourceFieldRef: {resource: limits.cpu, divisor: 2m}
- name: D
  valueFrom:
    resourceFieldRef: {resource: requests.memory, divisor: 1m}
- name: E
  valueFrom:
    resourceFieldRef: {resource: requests.memory, divisor: 2Mi}
- name: F
  valueFrom:
    resourceFieldRef: {containerName: sidecar, resource: limits.cpu}",
    ));
    let c = "deploy.yaml: doc 1: spec.template.spec.containers[0].env";
    assert_eq!(
        errs,
        [
            format!(
                "{c}[0].valueFrom.resourceFieldRef.resource: ephemeral-storage is not supported yet (supported values: requests.cpu, limits.cpu, requests.memory, limits.memory) (line 20)"
            ),
            format!(
                "{c}[1].valueFrom.resourceFieldRef.resource: unsupported value \"limits.gpu\": supported values are requests.cpu, limits.cpu, requests.memory, limits.memory (line 23)"
            ),
            format!(
                "{c}[2].valueFrom.resourceFieldRef.divisor: 2m is not supported for cpu: use 1m or 1 (Kubernetes' rule) (line 26)"
            ),
            format!(
                "{c}[3].valueFrom.resourceFieldRef.divisor: invalid quantity \"1m\": not a whole number of bytes (the suffix m means milli; did you mean Mi?) (line 29)"
            ),
            format!(
                "{c}[4].valueFrom.resourceFieldRef.divisor: 2Mi is not supported for memory: use 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi or 1Ei (Kubernetes' rule) (line 32)"
            ),
            format!(
                "{c}[5].valueFrom.resourceFieldRef.containerName: no container named \"sidecar\" in this pod (line 35)"
            ),
        ]
    );
}

#[test]
fn env_from_rules() {
    let errs = errors(&with_container(
        "envFrom:
- prefix: A=
  configMapRef: {name: c}
- {}
- configMapRef: {name: c}
  secretRef: {name: s}
- secretRef: {optional: true}
- configMapRef: {name: c, extra: 1}",
    ));
    let c = "deploy.yaml: doc 1: spec.template.spec.containers[0].envFrom";
    assert_eq!(
        errs,
        [
            format!(
                "{c}[0].prefix: \"A=\" must consist of printable ASCII characters other than '=' (line 18)"
            ),
            format!("{c}[1]: needs exactly one source: configMapRef or secretRef (line 20)"),
            format!("{c}[2]: has 2 sources (configMapRef, secretRef): give exactly one (line 21)"),
            format!("{c}[3].secretRef.name: required (line 23)"),
            format!("{c}[4].configMapRef.extra: unknown field (line 24)"),
        ]
    );
}

/// Volumes of every supported type, mounted.
const VOLUMES: &str = "volumes:
- name: config
  configMap:
    name: web-config
    items:
    - {key: nginx.conf, path: conf.d/default.conf}
    - {key: mime.types, path: mime.types, mode: 0600}
- name: tls
  secret:
    secretName: web-tls
    defaultMode: 0400
    optional: true
- name: info
  downwardAPI:
    items:
    - path: labels
      fieldRef: {fieldPath: metadata.labels}
    - path: name
      fieldRef: {fieldPath: metadata.name}
    - path: cpu
      resourceFieldRef: {containerName: web, resource: limits.cpu, divisor: 1m}
- name: all
  projected:
    defaultMode: 420
    sources:
    - configMap:
        name: web-config
        items: [{key: a, path: a}]
    - secret: {name: web-tls, optional: true}
    - downwardAPI:
        items:
        - {path: annotations, fieldRef: {fieldPath: metadata.annotations}}
- name: unused
  configMap: {name: other}";

#[test]
fn volumes_and_mounts() {
    let pod = pod_of(&with_pod(
        "volumeMounts:
- {name: config, mountPath: /etc/nginx, readOnly: true}
- {name: tls, mountPath: /etc/tls, subPath: certs, mountPropagation: None}
- {name: info, mountPath: /etc/podinfo}
- {name: all, mountPath: /etc/all, subPath: \"\"}",
        VOLUMES,
    ));
    assert_eq!(
        pod.containers[0].volume_mounts,
        [
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/nginx".into(),
                read_only: true,
                sub_path: None,
            },
            VolumeMount {
                name: "tls".into(),
                mount_path: "/etc/tls".into(),
                read_only: false,
                sub_path: Some("certs".into()),
            },
            VolumeMount {
                name: "info".into(),
                mount_path: "/etc/podinfo".into(),
                read_only: false,
                sub_path: None,
            },
            VolumeMount {
                name: "all".into(),
                mount_path: "/etc/all".into(),
                read_only: false,
                sub_path: None,
            },
        ]
    );
    let names: Vec<&str> = pod.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["config", "tls", "info", "all", "unused"]);
    assert_eq!(
        pod.volumes[0].source,
        VolumeSource::ConfigMap(ConfigMapVolume {
            name: "web-config".into(),
            items: vec![
                KeyToPath {
                    key: "nginx.conf".into(),
                    path: "conf.d/default.conf".into(),
                    mode: None,
                },
                KeyToPath {
                    key: "mime.types".into(),
                    path: "mime.types".into(),
                    mode: Some(0o600),
                },
            ],
            default_mode: DEFAULT_VOLUME_MODE,
            optional: false,
        })
    );
    assert_eq!(
        pod.volumes[1].source,
        VolumeSource::Secret(SecretVolume {
            secret_name: "web-tls".into(),
            items: vec![],
            default_mode: 0o400,
            optional: true,
        })
    );
    let VolumeSource::DownwardApi(info) = &pod.volumes[2].source else {
        panic!("{:?}", pod.volumes[2])
    };
    assert_eq!(info.default_mode, 0o644);
    assert_eq!(
        info.items[2].resource_field_ref,
        Some(ResourceFieldSelector {
            container_name: Some("web".into()),
            resource: "limits.cpu".into(),
            divisor: Some("1m".into()),
        })
    );
    let VolumeSource::Projected(all) = &pod.volumes[3].source else {
        panic!("{:?}", pod.volumes[3])
    };
    assert_eq!(all.default_mode, 0o644);
    assert_eq!(all.sources.len(), 3);
    assert!(
        matches!(&all.sources[1], ProjectionSource::Secret(k) if k.name == "web-tls" && k.optional)
    );
    // Defaults are filled, so the stored form says `defaultMode: 420` wherever it was left out,
    // and applying the same manifest again is unchanged.
    let d = Resource::Deployment(deployment(&with_pod("", VOLUMES)));
    let stored = String::from_utf8(d.to_stored()).unwrap();
    assert!(
        stored.contains(r#"{"name":"unused","configMap":{"name":"other","defaultMode":420}}"#),
        "{stored}"
    );
    assert_round_trips(&d);
    // A bare Pod takes volumes too.
    let pod = ok(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: i\n    volumeMounts: [{name: v, mountPath: /v}]\n  volumes:\n  - {name: v, secret: {secretName: s}}\n",
    );
    assert_round_trips(&pod[0]);
}

#[test]
fn file_modes_mean_what_they_mean_in_kubernetes() {
    // YAML as Kubernetes reads it: a leading 0 is octal. 420 and 256 are the decimal
    // spellings `kubectl get -o yaml` prints.
    for (written, mode) in [
        ("0644", 0o644),
        ("0400", 0o400),
        ("0o644", 0o644),
        ("420", 0o644),
        ("256", 0o400),
        ("0777", 0o777),
        ("0", 0),
    ] {
        let pod = pod_of(&with_pod(
            "",
            &format!("volumes:\n- name: v\n  secret: {{secretName: s, defaultMode: {written}}}"),
        ));
        let VolumeSource::Secret(s) = &pod.volumes[0].source else {
            panic!()
        };
        assert_eq!(s.default_mode, mode, "{written}");
    }
    let errs = errors(&with_pod(
        "",
        "volumes:
- name: a
  configMap: {name: c, defaultMode: 644}
- name: b
  secret: {secretName: s, defaultMode: '0644'}
- name: c
  secret: {secretName: s, defaultMode: 0999}
- name: d
  secret:
    secretName: s
    defaultMode: 01000
    items: [{key: k, path: p, mode: -1}]",
    ));
    let v = "deploy.yaml: doc 1: spec.template.spec.volumes";
    assert_eq!(
        errs,
        [
            format!(
                "{v}[0].configMap.defaultMode: must be a file mode between 0 and 0777 (octal; 511 in decimal), got 644 (did you mean 0644? a leading 0 makes it octal) (line 19)"
            ),
            format!(
                "{v}[1].secret.defaultMode: expected integer, got string \"0644\" (write the mode without quotes: 0644) (line 21)"
            ),
            format!(
                "{v}[2].secret.defaultMode: expected a file mode (such as 0644 or 0400), got number 0999 (line 23)"
            ),
            format!(
                "{v}[3].secret.defaultMode: must be a file mode between 0 and 0777 (octal; 511 in decimal), got 01000 (line 27)"
            ),
            format!(
                "{v}[3].secret.items[0].mode: must be a file mode between 0 and 0777 (octal; 511 in decimal), got -1 (line 28)"
            ),
        ]
    );
}

#[test]
fn volume_rules() {
    let errs = errors(&with_pod(
        "volumeMounts:
- {name: data, mountPath: /data}
- {name: missing, mountPath: relative}
- {name: config, mountPath: '/a:b'}
- {name: config, mountPath: /data, subPath: ../up}
- {name: config, mountPath: /sub, subPath: /abs, subPathExpr: $(POD)}
- {name: config, mountPath: /p, mountPropagation: Bidirectional}",
        "volumes:
- name: data
  emptyDir: {}
- name: Config
  configMap: {name: c}
- name: config
  hostPath: {path: /srv}
- name: config
- name: two
  configMap: {name: c}
  secret: {secretName: s}
- name: claim
  persistentVolumeClaim: {claimName: data}",
    ));
    let c = "deploy.yaml: doc 1: spec.template.spec.containers[0].volumeMounts";
    let v = "deploy.yaml: doc 1: spec.template.spec.volumes";
    let supported =
        "(supported volume types: configMap, secret, downwardAPI, projected, emptyDir, hostPath)";
    assert_eq!(
        errs,
        [
            format!("{c}[1].name: no volume named \"missing\" in this pod's volumes (line 19)"),
            format!("{c}[1].mountPath: \"relative\" must be an absolute path (line 19)"),
            format!("{c}[2].mountPath: \"/a:b\" must not contain ':' (line 20)"),
            format!(
                "{c}[3].mountPath: duplicate mount path \"/data\" (also volumeMounts[0]) (line 21)"
            ),
            format!("{c}[3].subPath: \"../up\" must not contain '..' (line 21)"),
            format!("{c}[4].subPathExpr: not supported yet (use subPath) (line 22)"),
            format!("{c}[4].subPath: \"/abs\" must be a relative path (line 22)"),
            format!("{c}[5].mountPropagation: not supported yet (line 23)"),
            format!(
                "{v}[1].name: \"Config\" must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc') (line 27)"
            ),
            format!(
                "{v}[3]: needs exactly one volume type: configMap, secret, downwardAPI, projected, emptyDir or hostPath (line 31)"
            ),
            format!("{v}[4]: has 2 volume types (configMap, secret): give exactly one (line 32)"),
            format!(
                "{v}[5].persistentVolumeClaim: persistentVolumeClaim volumes are not supported yet {supported} (line 36)"
            ),
        ]
    );
    assert_eq!(
        errors(&with_pod(
            "",
            "volumes:\n- {name: v, configMap: {name: a}}\n- {name: v, secret: {secretName: b}}"
        )),
        [format!(
            "{v}[1].name: duplicate volume name \"v\" (also volumes[0]) (line 19)"
        )]
    );
}

#[test]
fn empty_dir_and_host_path_volumes() {
    let text = with_pod(
        "volumeMounts:
- {name: scratch, mountPath: /scratch}
- {name: ram, mountPath: /ram, subPath: part}
- {name: logs, mountPath: /var/log/host, readOnly: true}
- {name: sock, mountPath: /run/docker.sock, subPath: ''}",
        "volumes:
- name: scratch
  emptyDir: {}
- name: ram
  emptyDir: {medium: Memory, sizeLimit: 64Mi}
- name: disk
  emptyDir: {medium: '', sizeLimit: 1048576}
- name: logs
  hostPath: {path: /var/log}
- name: sock
  hostPath: {path: /run/docker.sock, type: Socket}
- name: made
  hostPath: {path: /srv/data/, type: DirectoryOrCreate}
- name: unset
  hostPath: {path: /, type: ''}",
    );
    let pod = pod_of(&text);
    let sources: Vec<&VolumeSource> = pod.volumes.iter().map(|v| &v.source).collect();
    assert_eq!(
        sources,
        [
            &VolumeSource::EmptyDir(EmptyDirVolume {
                medium: EmptyDirMedium::Disk,
                size_limit: None,
            }),
            &VolumeSource::EmptyDir(EmptyDirVolume {
                medium: EmptyDirMedium::Memory,
                size_limit: Some(Memory(64 << 20)),
            }),
            &VolumeSource::EmptyDir(EmptyDirVolume {
                medium: EmptyDirMedium::Disk,
                size_limit: Some(Memory(1 << 20)),
            }),
            &VolumeSource::HostPath(HostPathVolume {
                path: "/var/log".into(),
                path_type: HostPathType::Unset,
            }),
            &VolumeSource::HostPath(HostPathVolume {
                path: "/run/docker.sock".into(),
                path_type: HostPathType::Socket,
            }),
            &VolumeSource::HostPath(HostPathVolume {
                path: "/srv/data/".into(),
                path_type: HostPathType::DirectoryOrCreate,
            }),
            &VolumeSource::HostPath(HostPathVolume {
                path: "/".into(),
                path_type: HostPathType::Unset,
            }),
        ]
    );
    assert_eq!(
        pod.containers[0].volume_mounts[1].sub_path.as_deref(),
        Some("part")
    );
    // Stored as Kubernetes writes them: defaults left out, the size a quantity.
    let d = Resource::Deployment(deployment(&text));
    let stored = String::from_utf8(d.to_stored()).unwrap();
    for part in [
        r#"{"name":"scratch","emptyDir":{}}"#,
        r#"{"name":"ram","emptyDir":{"medium":"Memory","sizeLimit":"64Mi"}}"#,
        r#"{"name":"disk","emptyDir":{"sizeLimit":"1Mi"}}"#,
        r#"{"name":"logs","hostPath":{"path":"/var/log"}}"#,
        r#"{"name":"sock","hostPath":{"path":"/run/docker.sock","type":"Socket"}}"#,
        r#"{"name":"unset","hostPath":{"path":"/"}}"#,
    ] {
        assert!(stored.contains(part), "{part} not in {stored}");
    }
    assert_round_trips(&d);
    // Every type Kubernetes has, and what `kubectl get -o yaml` writes for the defaults.
    for (name, t) in HostPathType::ALL {
        let pod = pod_of(&with_pod(
            "",
            &format!("volumes:\n- name: h\n  hostPath: {{path: /h, type: {name:?}}}"),
        ));
        assert_eq!(
            pod.volumes[0].source,
            VolumeSource::HostPath(HostPathVolume {
                path: "/h".into(),
                path_type: t,
            })
        );
        assert_eq!(t.as_str(), name);
        assert_round_trips(&Resource::Deployment(deployment(&with_pod(
            "",
            &format!("volumes:\n- name: h\n  hostPath: {{path: /h, type: {name:?}}}"),
        ))));
    }
    // A bare Pod takes them too.
    let pod = ok(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: i\n    volumeMounts: [{name: v, mountPath: /v}, {name: h, mountPath: /h}]\n  volumes:\n  - {name: v, emptyDir: {medium: Memory}}\n  - {name: h, hostPath: {path: /tmp, type: Directory}}\n",
    );
    assert_round_trips(&pod[0]);
}

#[test]
fn empty_dir_and_host_path_rules() {
    let errs = errors(&with_pod(
        "",
        "volumes:
- name: a
  emptyDir: {medium: HugePages}
- name: b
  emptyDir: {medium: HugePages-2Mi}
- name: c
  emptyDir: {medium: memory}
- name: d
  emptyDir: {sizeLimit: 500m}
- name: e
  emptyDir: {sizeLimit: -1Gi}
- name: f
  emptyDir: {sizeLimit: lots}
- name: g
  emptyDir: {sizeLimit: [1Gi], sizeLimt: 1Gi}
- name: h
  hostPath: {type: Directory}
- name: i
  hostPath: {path: var/log}
- name: j
  hostPath: {path: /var/../etc}
- name: k
  hostPath: {path: ''}
- name: l
  hostPath: {path: /x, type: Directry}
- name: m
  hostPath: {path: /x, type: Pipe}
- name: n
  hostPath: /var/log
- name: o
  emptyDir: {}
  hostPath: {path: /x}",
    ));
    let v = "deploy.yaml: doc 1: spec.template.spec.volumes";
    let types =
        "\"\", DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice";
    assert_eq!(
        errs,
        [
            format!(
                "{v}[0].emptyDir.medium: medium HugePages is not supported yet (supported values are \"\", Memory) (line 19)"
            ),
            format!(
                "{v}[1].emptyDir.medium: medium HugePages-2Mi is not supported yet (supported values are \"\", Memory) (line 21)"
            ),
            format!(
                "{v}[2].emptyDir.medium: unsupported value \"memory\" (did you mean \"Memory\"?): supported values are \"\", Memory (line 23)"
            ),
            format!(
                "{v}[3].emptyDir.sizeLimit: invalid quantity \"500m\": not a whole number of bytes (the suffix m means milli; did you mean Mi?) (line 25)"
            ),
            format!(
                "{v}[4].emptyDir.sizeLimit: invalid quantity \"-1Gi\": must not be negative (line 27)"
            ),
            format!(
                "{v}[5].emptyDir.sizeLimit: invalid quantity \"lots\": expected a number with an optional suffix, such as 500m, 0.5, 2, 128Mi, 1G or 1e3 (line 29)"
            ),
            format!(
                "{v}[6].emptyDir.sizeLimit: expected a quantity (such as 128Mi or 1G), got a list (line 31)"
            ),
            format!(
                "{v}[6].emptyDir.sizeLimt: unknown field (did you mean \"sizeLimit\"?) (line 31)"
            ),
            format!("{v}[7].hostPath.path: required (line 33)"),
            format!("{v}[8].hostPath.path: \"var/log\" must be an absolute path (line 35)"),
            format!("{v}[9].hostPath.path: \"/var/../etc\" must not contain '..' (line 37)"),
            format!("{v}[10].hostPath.path: must not be empty (line 39)"),
            format!(
                "{v}[11].hostPath.type: unsupported value \"Directry\" (did you mean \"Directory\"?): supported values are {types} (line 41)"
            ),
            format!(
                "{v}[12].hostPath.type: unsupported value \"Pipe\": supported values are {types} (line 43)"
            ),
            format!("{v}[13].hostPath: expected a mapping, got string \"/var/log\" (line 45)"),
            format!("{v}[14]: has 2 volume types (emptyDir, hostPath): give exactly one (line 46)"),
        ]
    );
    // Other volume types are still refused by name, emptyDir and hostPath now among the
    // supported ones.
    assert_eq!(
        errors(&with_pod(
            "",
            "volumes:\n- {name: c, persistentVolumeClaim: {claimName: data}}\n- {name: n, nfs: {server: s, path: /}}"
        )),
        [
            format!(
                "{v}[0].persistentVolumeClaim: persistentVolumeClaim volumes are not supported yet (supported volume types: configMap, secret, downwardAPI, projected, emptyDir, hostPath) (line 18)"
            ),
            format!(
                "{v}[1].nfs: nfs volumes are not supported yet (supported volume types: configMap, secret, downwardAPI, projected, emptyDir, hostPath) (line 19)"
            ),
        ]
    );
}

#[test]
fn volume_file_rules() {
    let errs = errors(&with_pod(
        "",
        "volumes:
- name: a
  configMap:
    name: c
    items:
    - {key: k, path: /etc/x}
    - {key: k, path: ../x}
    - {key: k, path: a/../../x}
    - {key: k, path: ..data}
    - {key: k, path: ''}
    - {key: '..k', path: ok}
    - {key: k, path: ok}
    - {key: k, path: ok/inner}
- name: b
  downwardAPI:
    items:
    - {path: ip, fieldRef: {fieldPath: status.podIP}}
    - {path: cpu, resourceFieldRef: {resource: limits.cpu}}
    - {path: none}
    - path: both
      fieldRef: {fieldPath: metadata.name}
      resourceFieldRef: {containerName: web, resource: limits.cpu}
- name: c
  projected:
    sources:
    - configMap: {name: c, items: [{key: k, path: same}]}
    - secret: {name: s, items: [{key: k, path: same}]}
    - serviceAccountToken: {path: token}
    - {}",
    ));
    let v = "deploy.yaml: doc 1: spec.template.spec.volumes";
    assert_eq!(
        errs,
        [
            format!("{v}[0].configMap.items[0].path: \"/etc/x\" must be a relative path (line 22)"),
            format!("{v}[0].configMap.items[1].path: \"../x\" must not contain '..' (line 23)"),
            format!(
                "{v}[0].configMap.items[2].path: \"a/../../x\" must not contain '..' (line 24)"
            ),
            format!(
                "{v}[0].configMap.items[3].path: \"..data\" must not start with '..' (line 25)"
            ),
            format!("{v}[0].configMap.items[4].path: must not be empty (line 26)"),
            format!("{v}[0].configMap.items[5].key: \"..k\" must not start with '..' (line 27)"),
            format!(
                "{v}[0].configMap.items[6].path: duplicate path \"ok\" (also items[5]) (line 28)"
            ),
            format!(
                "{v}[0].configMap.items[7].path: \"ok/inner\" and \"ok\" (items[5]) cannot both be files: one is in the other's directory (line 29)"
            ),
            format!(
                "{v}[1].downwardAPI.items[0].fieldRef.fieldPath: status.podIP is not available in a downwardAPI volume (Kubernetes' rule; give it in an environment variable); supported here: metadata.name, metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, metadata.labels['<key>'] or metadata.annotations['<key>'] (line 33)"
            ),
            format!(
                "{v}[1].downwardAPI.items[1].resourceFieldRef.containerName: required in a downwardAPI volume (the container whose resource to give) (line 34)"
            ),
            format!(
                "{v}[1].downwardAPI.items[2]: needs exactly one of fieldRef or resourceFieldRef (line 35)"
            ),
            format!(
                "{v}[1].downwardAPI.items[3]: has both fieldRef and resourceFieldRef: give exactly one (line 36)"
            ),
            format!(
                "{v}[2].projected.sources[1].secret.items[0].path: duplicate path \"same\" (also sources[0].configMap.items[0]) (line 43)"
            ),
            format!(
                "{v}[2].projected.sources[2].serviceAccountToken: serviceAccountToken projections are not supported yet (supported sources: configMap, secret, downwardAPI) (line 44)"
            ),
            format!(
                "{v}[2].projected.sources[3]: needs exactly one source: configMap, secret or downwardAPI (line 45)"
            ),
        ]
    );
}

#[test]
fn a_tutorial_app_applies() {
    let resources = ok(TUTORIAL);
    let keys: Vec<String> = resources.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "namespace/guestbook",
            "configmap/web-config",
            "secret/db-credentials",
            "deployment.apps/db",
            "deployment.apps/web",
            "service/db",
            "service/web",
        ]
    );
    let Resource::Secret(s) = &resources[2] else {
        panic!()
    };
    assert_eq!(s.data["username"].0, b"guestbook");
    assert_eq!(s.data["password"].0, b"s3cr3t-passw0rd");
    let Resource::Deployment(web) = &resources[4] else {
        panic!()
    };
    let pod = &web.spec.template.spec;
    assert_eq!(
        pod.volumes[0].source,
        VolumeSource::ConfigMap(ConfigMapVolume {
            name: "web-config".into(),
            items: vec![KeyToPath {
                key: "nginx.conf".into(),
                path: "default.conf".into(),
                mode: None,
            }],
            default_mode: 0o644,
            optional: false,
        })
    );
    assert_eq!(pod.containers[1].env_from.len(), 1);
    assert_eq!(pod.containers[1].env.len(), 4);
    for r in &resources {
        assert_round_trips(r);
    }
}
