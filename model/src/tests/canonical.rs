//! The stored form, hashes, apply outcomes and generations.

use super::*;

#[test]
fn equivalent_manifests_store_the_same_bytes() {
    let plain = with_container("resources:\n  limits: {cpu: 500m, memory: 128Mi}");
    let spelled = with_container(
        "args: []\nenv: []\nimagePullPolicy: IfNotPresent\nresources:\n  requests: {cpu: 0.5, memory: 134217728}\n  limits: {memory: 0.125Gi, cpu: \"0.5\"}",
    )
    .replace(
        "spec:\n  selector",
        "spec:\n  replicas: 1\n  revisionHistoryLimit: 10\n  strategy: {type: RollingUpdate}\n  selector",
    )
    .replace("name: web\nspec", "name: web\n  namespace: default\n  labels: {}\nspec");
    let a = ok(&plain).remove(0);
    let b = ok(&spelled).remove(0);
    assert_eq!(a, b);
    assert_eq!(a.to_stored(), b.to_stored());
    assert_eq!(apply_outcome(Some(&a.to_stored()), &b), Outcome::Unchanged);
}

#[test]
fn stored_form_is_kubernetes_json_with_defaults_and_no_read_only_fields() {
    let mut r = ok(&with_container("ports:\n- containerPort: 80")).remove(0);
    let m = r.metadata_mut();
    m.uid = Some("u-1".into());
    m.resource_version = Some("7".into());
    m.generation = Some(3);
    m.creation_timestamp = Some(Timestamp(1_700_000_000_000));
    let stored = String::from_utf8(r.to_stored()).unwrap();
    assert_eq!(
        stored,
        concat!(
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"default"},"#,
            r#""spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"#,
            r#""spec":{"containers":[{"name":"web","image":"nginx:1.27","ports":[{"containerPort":80,"protocol":"TCP"}],"imagePullPolicy":"IfNotPresent"}],"#,
            r#""restartPolicy":"Always","terminationGracePeriodSeconds":30}},"#,
            r#""strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%","maxUnavailable":"25%"}},"#,
            r#""minReadySeconds":0,"revisionHistoryLimit":10,"progressDeadlineSeconds":600,"paused":false}}"#
        )
    );
    let back = Resource::from_stored(stored.as_bytes()).unwrap();
    let mut expected = r.clone();
    expected.clear_read_only();
    assert_eq!(back, expected);
    // Namespaces have no spec and no namespace.
    let ns = ok("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n").remove(0);
    assert_eq!(
        ns.to_stored(),
        br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"prod"}}"#
    );
    assert_eq!(
        ns.key(),
        ResourceKey {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: "prod".into()
        }
    );
    assert_eq!(ns.key().to_string(), "namespace/prod");
    assert_eq!(r.key().to_string(), "deployment.apps/web");
}

#[test]
fn from_stored_rejects_what_is_not_a_valid_object() {
    for (bytes, want) in [
        (&b"not json"[..], "does not decode"),
        (
            br#"{"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"s"}}"#,
            "unsupported apiVersion/kind v1/Endpoints",
        ),
        (
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"default"},"data":{"a b":"x"}}"#,
            "data[a b]: invalid key",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","namespace":"default"},"data":{"k":"not base64!"},"type":"Opaque"}"#,
            "does not decode",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","namespace":"default"},"data":{"tls.crt":"eA=="},"type":"kubernetes.io/tls"}"#,
            "data[tls.key]: required",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","namespace":"default"},"data":{}}"#,
            "a Secret needs a type",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"},"data":{}}"#,
            "a Pod has no data",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"}}"#,
            "has no spec",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"BAD"}}"#,
            "metadata.name",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"n","extra":1}}"#,
            "unknown field",
        ),
    ] {
        let err = Resource::from_stored(bytes).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should mention {want}");
    }
    // A secret stored without data (its values sealed beside it) reads back, whatever its type
    // requires: the keys were checked when it was applied.
    let sealed = br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","namespace":"default"},"type":"kubernetes.io/tls"}"#;
    assert!(Resource::from_stored(sealed).is_ok());
    // A pod stored without a namespace is not canonical.
    let pod = ok("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - {name: c, image: i}\n").remove(0);
    let stored = String::from_utf8(pod.to_stored()).unwrap();
    let no_ns = stored.replace(r#","namespace":"default""#, "");
    assert!(Resource::from_stored(no_ns.as_bytes()).is_err());
    assert_eq!(Resource::from_stored(stored.as_bytes()).unwrap(), pod);
}

#[test]
fn apply_outcomes() {
    let v1 = deployment(NGINX);
    let r1 = Resource::Deployment(v1.clone());
    assert_eq!(apply_outcome(None, &r1), Outcome::Created);
    let stored = r1.to_stored();
    assert_eq!(apply_outcome(Some(&stored), &r1), Outcome::Unchanged);
    let mut v2 = v1.clone();
    v2.spec.replicas = 5;
    let r2 = Resource::Deployment(v2);
    assert_eq!(apply_outcome(Some(&stored), &r2), Outcome::Configured);
    assert_eq!(apply_outcome(Some(b"garbage"), &r1), Outcome::Configured);
    // Re-ordered JSON with the same meaning (an older encoder) is still unchanged.
    let value: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let reordered = serde_json::to_vec(&value).unwrap();
    assert_ne!(reordered, stored);
    assert_eq!(apply_outcome(Some(&reordered), &r1), Outcome::Unchanged);
    assert_eq!(
        format!("{} {}", r1.key(), Outcome::Created),
        "deployment.apps/nginx-deployment created"
    );
}

#[test]
fn hashes_and_generations() {
    let base = deployment(NGINX);
    let r = Resource::Deployment(base.clone());
    let stored = r.to_stored();

    // Labels on the Deployment: same spec, same generation.
    let mut relabeled = base.clone();
    relabeled
        .metadata
        .labels
        .insert("owner".into(), "me".into());
    let relabeled = Resource::Deployment(relabeled);
    assert_eq!(relabeled.spec_hash(), r.spec_hash());
    assert_eq!(
        apply_outcome(Some(&stored), &relabeled),
        Outcome::Configured
    );
    assert_eq!(next_generation(Some((&stored, 4)), &relabeled), 4);

    // Scaling changes the spec (new generation) but not the template (no rollout).
    let mut scaled = base.clone();
    scaled.spec.replicas = 10;
    assert_eq!(scaled.template_hash(), base.template_hash());
    assert_eq!(scaled.pod_template_hash(), base.pod_template_hash());
    let scaled = Resource::Deployment(scaled);
    assert_ne!(scaled.spec_hash(), r.spec_hash());
    assert_eq!(next_generation(Some((&stored, 4)), &scaled), 5);

    // A new image changes the template: a rollout, with another pod-template-hash.
    let mut updated = base.clone();
    updated.spec.template.spec.containers[0].image = "nginx:1.28.0".into();
    assert_ne!(updated.template_hash(), base.template_hash());
    assert_ne!(updated.pod_template_hash(), base.pod_template_hash());

    assert_eq!(next_generation(None, &r), 1);
    assert_eq!(next_generation(Some((b"garbage", 2)), &r), 3);

    // The pod-template-hash looks like Kubernetes' and is stable across runs and versions:
    // a change here would roll every Deployment after an upgrade.
    let hash = base.pod_template_hash();
    assert_eq!(hash.len(), 10);
    assert!(
        hash.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    );
    assert_eq!(base.template_hash(), base.clone().template_hash());
    assert_eq!(hash, "gjnbbjdfk6");
}
