//! The HTTP API of real agents: every write is validated by the agent that receives it,
//! whatever the route; values already in the replicated state that cannot be read are counted,
//! listed and deletable by key.

use std::time::Duration;

use serde_json::Value;
use shoal_tests::Cluster;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const PROCESS: &[&str] = &["--runtime", "process"];

/// A Deployment that runs nothing (replicas 0), with a note to recognise it by.
fn idle_deployment(name: &str, note: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  annotations: {{note: \
         {note:?}}}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
         metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - {{name: a, \
         image: x, command: [/bin/true]}}\n"
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn message(text: &str) -> String {
    json(text)["message"].as_str().unwrap_or(text).to_owned()
}

#[test]
fn writes_through_the_objects_api_are_validated_and_nothing_invalid_is_stored() {
    let cluster = Cluster::start_with("apiwrites", 2, PROCESS);
    let a = &cluster.agents[0];
    let path = "/api/v1/objects/deployment/default/evil";

    // Not a Deployment at all.
    let (status, body) = a.http("PUT", path, Some(b"garbage{"));
    assert_eq!(status, 422, "{body}");
    let m = message(&body);
    assert!(
        m.contains("deployment.apps \"evil\" is invalid: body: doc 1"),
        "{m}"
    );
    // A Deployment, but of another name, or in another namespace, or another kind.
    let web = idle_deployment("web", "v1");
    let (status, body) = a.http("PUT", path, Some(web.as_bytes()));
    assert_eq!(status, 422, "{body}");
    assert!(
        message(&body).contains(
            "metadata.name: \"web\" does not match the name of the request's path \"evil\""
        ),
        "{body}"
    );
    let elsewhere = web.replace("name: web\n", "name: web\n  namespace: kube-system\n");
    let (status, body) = a.http(
        "PUT",
        "/api/v1/objects/deployment/default/web",
        Some(elsewhere.as_bytes()),
    );
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("metadata.namespace"), "{body}");
    let (status, body) = a.http(
        "PUT",
        "/api/v1/objects/pod/default/web",
        Some(web.as_bytes()),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        message(&body).contains("kind: \"Deployment\" does not match"),
        "{body}"
    );
    // Kinds the agent does not run are not stored either.
    let (status, body) = a.http(
        "PUT",
        "/api/v1/objects/persistentvolumeclaim/default/x",
        Some(b"anything"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("doesn't have a resource type \"persistentvolumeclaim\""),
        "{body}"
    );
    // What apply checks, PUT checks: the namespace must exist.
    let (status, body) = a.http(
        "PUT",
        "/api/v1/objects/deployment/nowhere/web",
        Some(web.as_bytes()),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        message(&body).contains("namespaces \"nowhere\" not found"),
        "{body}"
    );

    // Nothing of it was stored, here or on the other node.
    for agent in &cluster.agents {
        let (_, list) = agent.http("GET", "/api/v1/objects/deployment", None);
        assert_eq!(json(&list)["items"], Value::Array(Vec::new()), "{list}");
    }

    // A valid one is taken, as apply takes it, and reaches the other node.
    let (status, body) = a.http(
        "PUT",
        "/api/v1/objects/deployment/default/web",
        Some(web.as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["outcome"], "created");
    let (status, body) = a.http(
        "PUT",
        "/api/v1/objects/deployment/default/web",
        Some(web.as_bytes()),
    );
    assert_eq!(
        (status, json(&body)["outcome"].clone()),
        (200, "unchanged".into())
    );
    cluster.wait_for("the deployment on node-1", secs(10), |c| {
        let out = c.agents[1].cli(&["get", "deploy", "web"])?;
        if out.contains("web") {
            Ok(())
        } else {
            Err(out)
        }
    });
    // The stored form a GET returns can be put back.
    let (status, stored) = a.http("GET", "/api/v1/objects/deployment/default/web", None);
    assert_eq!(status, 200);
    let (status, body) = a.http(
        "PUT",
        "/api/v1/objects/deployment/default/web",
        Some(stored.as_bytes()),
    );
    assert_eq!(
        (status, json(&body)["outcome"].clone()),
        (200, "unchanged".into()),
        "{body}"
    );
}

#[test]
fn an_unreadable_value_already_stored_is_counted_listed_and_deleted_by_key() {
    let mut cluster = Cluster::start_with("unreadable", 2, PROCESS);
    // An agent of another version wrote what this one cannot read.
    cluster.agents[1].kill9();
    cluster.agents[1].plant_object("deployment", "default", "evil", b"garbage{");
    cluster.agents[1].start(&[]);
    let unreadable = |c: &Cluster, i: usize| -> (u64, Vec<String>) {
        let (_, stats) = c.agents[i].http("GET", "/api/v1/stats", None);
        let p = &json(&stats)["projector"];
        (
            p["unreadable_now"].as_u64().unwrap_or(0),
            p["unreadable"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
        )
    };
    // Restored on node-1, gossiped to node-0: counted and listed by key on both.
    cluster.wait_for("the value counted as unreadable on both", secs(20), |c| {
        for i in 0..2 {
            let (now, keys) = unreadable(c, i);
            if now != 1 || keys != ["deployment/default/evil"] {
                return Err(format!("node-{i}: {now} {keys:?}"));
            }
        }
        Ok(())
    });
    let (_, list) = cluster.agents[0].http("GET", "/api/v1/objects/deployment", None);
    assert_eq!(json(&list)["items"][0]["value"], "garbage{", "{list}");
    let shown = cluster.agents[0]
        .cli(&["get", "deploy"])
        .unwrap_or_default();
    assert!(!shown.contains("evil"), "{shown}");

    // `shoal delete` takes it away by its key, everywhere.
    let out = cluster.agents[0].cli(&["delete", "deployment", "evil"]);
    assert_eq!(
        out.as_deref().map(str::trim),
        Ok("deployment.apps \"evil\" deleted"),
        "{out:?}"
    );
    cluster.wait_for("nothing unreadable left", secs(10), |c| {
        for i in 0..2 {
            let (now, keys) = unreadable(c, i);
            if now != 0 {
                return Err(format!("node-{i}: {now} {keys:?}"));
            }
            let (status, _) =
                c.agents[i].http("GET", "/api/v1/objects/deployment/default/evil", None);
            if status != 404 {
                return Err(format!("node-{i} still holds it ({status})"));
            }
        }
        Ok(())
    });
    // Counted when it arrived; the counter stays.
    let (_, stats) = cluster.agents[0].http("GET", "/api/v1/stats", None);
    assert!(
        json(&stats)["projector"]["undecodable_objects"].as_u64() >= Some(1),
        "{stats}"
    );
}

#[test]
fn a_set_over_the_request_limit_is_applied_in_parts_and_an_object_over_it_is_refused_by_name() {
    let cluster = Cluster::start_with(
        "bigapply",
        1,
        &["--runtime", "process", "--max-request-bytes", "262144"],
    );
    let a = &cluster.agents[0];
    let (status, limits) = a.http("GET", "/api/v1/limits", None);
    assert_eq!(status, 200);
    assert_eq!(json(&limits)["requestBytes"], 262_144, "{limits}");
    let object_limit = json(&limits)["objectBytes"].as_u64().unwrap();

    // ~900 KiB in three files: 300 namespaces of 3 KiB, and an idle deployment in the last.
    let dir = cluster.dir().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let pad = "x".repeat(3000);
    for file in 0..3 {
        let docs: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{}\n  annotations: {{pad: {pad}}}\n",
                    file * 100 + i
                )
            })
            .collect();
        std::fs::write(dir.join(format!("{file}.yaml")), docs.join("---\n")).unwrap();
    }
    std::fs::write(
        dir.join("3-web.yaml"),
        idle_deployment("web", "in the last namespace")
            .replace("name: web\n", "name: web\n  namespace: ns-299\n"),
    )
    .unwrap();
    let out = a
        .cli(&["apply", "-f", dir.to_str().unwrap()])
        .expect("a big valid set just works");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 301, "each object once:\n{out}");
    assert!(lines.contains(&"namespace/ns-0 created"), "{out}");
    assert!(lines.contains(&"deployment.apps/web created"), "{out}");
    let namespaces = a.cli(&["get", "namespaces"]).unwrap();
    assert_eq!(
        namespaces.lines().count(),
        1 + 301,
        "header, default and 300:\n{namespaces}"
    );
    // Applied again: every object unchanged, each said once.
    let again = a.cli(&["apply", "-f", dir.to_str().unwrap()]).unwrap();
    assert_eq!(again.lines().count(), 301);
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");

    // One object over the limit: refused by name with the limit, nothing applied.
    let env: Vec<String> = (0..400)
        .map(|i| format!("        - {{name: V{i}, value: {}}}", "v".repeat(700)))
        .collect();
    let huge = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: fresh}}\n---\napiVersion: apps/v1\n\
         kind: Deployment\nmetadata: {{name: huge, namespace: fresh}}\nspec:\n  replicas: 0\n  \
         selector: {{matchLabels: {{app: huge}}}}\n  template:\n    metadata: {{labels: {{app: \
         huge}}}}\n    spec:\n      containers:\n      - name: a\n        image: x\n        \
         command: [/bin/true]\n        env:\n{}\n",
        env.join("\n")
    );
    let err = cluster.apply(0, "huge", &huge).expect_err("refused");
    assert!(
        err.contains("deployment.apps/huge: the object takes")
            && err.contains(&format!("({object_limit} bytes) per object"))
            && err.contains("nothing was applied"),
        "{err}"
    );
    assert!(
        a.cli(&["get", "namespace", "fresh"]).is_err(),
        "nothing applied"
    );

    // The API itself answers 413 with the limit, as JSON, for any route.
    let body = vec![b' '; 300_000];
    let (status, answer) = a.http("POST", "/api/v1/apply", Some(&body));
    assert_eq!(status, 413, "{answer}");
    assert!(
        message(&answer)
            .contains("over this agent's limit of 256.0 KiB (262144 bytes) for POST /api/v1/apply"),
        "{answer}"
    );
    assert_eq!(json(&answer)["details"]["limitBytes"], 262_144);
    let (status, answer) = a.http("PUT", "/api/v1/objects/deployment/default/x", Some(&body));
    assert_eq!(status, 413, "{answer}");
    assert!(
        message(&answer).contains(&format!("({object_limit} bytes)")),
        "{answer}"
    );
}
