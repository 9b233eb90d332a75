//! `shoal create configmap|secret`, `get`, `describe` and `delete` of config maps and secrets
//! against a real agent (process runtime): values from literals, files, a directory and env
//! files; TLS and registry secrets; kubectl's `--dry-run=client -o yaml` applying back
//! unchanged; an existing object not overwritten; a secret's values never in `describe`; and
//! secret reads that need the API token when the agent has one.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{Agent, Cluster, Scratch, new_key_file, wait_until};

const PROCESS: &[&str] = &["--runtime", "process"];

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Standard base64, as Kubernetes writes `data`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `shoal get KIND NAME -o json`, once the agent lists it.
fn object(agent: &Agent, kind: &str, name: &str) -> Value {
    let mut found = Value::Null;
    wait_until(
        &format!("{kind} {name} to be listed"),
        secs(10),
        std::slice::from_ref(agent),
        || {
            let text = agent.cli(&["get", kind, name, "-o", "json"])?;
            found = json(&text);
            Ok(())
        },
    );
    found
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49UHJpdmF0ZUtleQ==\n-----END PRIVATE KEY-----\n";

#[test]
fn config_maps_and_secrets_are_created_shown_and_deleted_from_the_command_line() {
    let cluster = Cluster::start_with("configcli", 1, PROCESS);
    let a = &cluster.agents[0];
    let dir = cluster.dir();
    std::fs::write(dir.join("app.properties"), "color=blue\nsize=10\n").unwrap();
    std::fs::write(dir.join("blob.bin"), [0xff, 0xfe, 0x00, 0x01]).unwrap();
    let conf = dir.join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("a.conf"), "a").unwrap();
    std::fs::write(conf.join("b.conf"), "b").unwrap();
    std::fs::write(dir.join("app.env"), "# the app\n\nMODE=fast\nLEVEL=debug\n").unwrap();

    // A config map from a literal and files: text in data, binary in binaryData.
    let out = a
        .cli(&[
            "create",
            "configmap",
            "web",
            "--from-literal=greeting=hello",
            &format!("--from-file={}", path(&dir.join("app.properties"))),
            &format!("--from-file=raw={}", path(&dir.join("blob.bin"))),
        ])
        .unwrap();
    assert_eq!(out, "configmap/web created\n");
    let cm = object(a, "cm", "web");
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "default");
    assert!(cm["metadata"]["uid"].is_string(), "{cm}");
    assert!(cm["metadata"]["creationTimestamp"].is_string(), "{cm}");
    assert_eq!(cm["data"]["greeting"], "hello");
    assert_eq!(cm["data"]["app.properties"], "color=blue\nsize=10\n");
    assert_eq!(cm["binaryData"]["raw"], base64(&[0xff, 0xfe, 0x00, 0x01]));
    // From a directory (each file), and from an env file.
    a.cli(&[
        "create",
        "cm",
        "conf",
        &format!("--from-file={}", path(&conf)),
    ])
    .unwrap();
    let cm = object(a, "configmaps", "conf");
    assert_eq!(
        cm["data"],
        serde_json::json!({"a.conf": "a", "b.conf": "b"})
    );
    a.cli(&[
        "create",
        "configmap",
        "envs",
        &format!("--from-env-file={}", path(&dir.join("app.env"))),
    ])
    .unwrap();
    let cm = object(a, "cm", "envs");
    assert_eq!(
        cm["data"],
        serde_json::json!({"MODE": "fast", "LEVEL": "debug"})
    );
    // kubectl's table and describe.
    let table = a.cli(&["get", "configmaps"]).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "DATA", "AGE"], "{table}");
    assert_eq!(&rows[1][..2], ["conf", "2"], "{table}");
    assert_eq!(&rows[2][..2], ["envs", "2"], "{table}");
    assert_eq!(&rows[3][..2], ["web", "3"], "{table}");
    let text = a.cli(&["describe", "cm", "web"]).unwrap();
    assert!(text.contains("greeting:\n----\nhello\n"), "{text}");
    assert!(text.contains("BinaryData\n====\nraw: 4 bytes\n"), "{text}");

    // An object that exists is not overwritten.
    let (ok, _, err) = a.cli_full(&["create", "configmap", "web", "--from-literal=x=y"]);
    assert!(!ok);
    assert_eq!(
        err,
        "error: failed to create configmap: configmaps \"web\" already exists\n"
    );
    assert_eq!(object(a, "cm", "web")["data"]["greeting"], "hello");
    // A duplicate key is refused before anything is sent.
    let (ok, _, err) = a.cli_full(&[
        "create",
        "secret",
        "generic",
        "dup",
        "--from-literal=k=1",
        "--from-literal=k=2",
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot add key k, another key by that name already exists"),
        "{err}"
    );

    // --dry-run=client -o yaml: kubectl's manifest, nothing sent; it applies back unchanged.
    let yaml = a
        .cli(&[
            "create",
            "cm",
            "web",
            "--from-literal=greeting=hello",
            &format!("--from-file={}", path(&dir.join("app.properties"))),
            &format!("--from-file=raw={}", path(&dir.join("blob.bin"))),
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .unwrap();
    assert_eq!(
        yaml,
        "apiVersion: v1\nbinaryData:\n  raw: //4AAQ==\ndata:\n  app.properties: |\n    \
         color=blue\n    size=10\n  greeting: hello\nkind: ConfigMap\nmetadata:\n  \
         creationTimestamp: null\n  name: web\n"
    );
    std::fs::write(dir.join("web.yaml"), &yaml).unwrap();
    let out = a
        .cli(&["apply", "-f", path(&dir.join("web.yaml"))])
        .unwrap();
    assert_eq!(out, "configmap/web unchanged\n");
    let yaml = a
        .cli(&[
            "create",
            "secret",
            "generic",
            "fresh",
            "--from-literal=token=abc",
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .unwrap();
    assert_eq!(
        yaml,
        "apiVersion: v1\ndata:\n  token: YWJj\nkind: Secret\nmetadata:\n  creationTimestamp: null\n  name: fresh\n"
    );
    assert!(
        a.cli(&["get", "secret", "fresh"]).is_err(),
        "dry run sent nothing"
    );
    std::fs::write(dir.join("fresh.yaml"), &yaml).unwrap();
    let out = a
        .cli(&["apply", "-f", path(&dir.join("fresh.yaml"))])
        .unwrap();
    assert_eq!(out, "secret/fresh created\n");
    let out = a
        .cli(&["apply", "-f", path(&dir.join("fresh.yaml"))])
        .unwrap();
    assert_eq!(out, "secret/fresh unchanged\n");

    // Secrets: generic, tls, docker-registry.
    let value = "s3cr3t-Pa55w0rd";
    let out = a
        .cli(&[
            "create",
            "secret",
            "generic",
            "db",
            &format!("--from-literal=password={value}"),
            "--from-literal=user=admin",
        ])
        .unwrap();
    assert_eq!(out, "secret/db created\n");
    let secret = object(a, "secret", "db");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "Opaque");
    assert!(
        secret["metadata"]["resourceVersion"].is_string(),
        "{secret}"
    );
    assert!(secret["metadata"]["uid"].is_string(), "{secret}");
    assert_eq!(secret["data"]["password"], base64(value.as_bytes()));
    assert_eq!(secret["data"]["user"], base64(b"admin"));
    let yaml = a.cli(&["get", "secret", "db", "-o", "yaml"]).unwrap();
    assert!(
        yaml.contains(&format!("  password: {}\n", base64(value.as_bytes()))),
        "{yaml}"
    );
    let text = a.cli(&["describe", "secret", "db"]).unwrap();
    assert!(
        text.contains("Type:  Opaque\n\nData\n====\npassword:  15 bytes\nuser:      5 bytes\n"),
        "{text}"
    );
    assert!(
        !text.contains(value) && !text.contains(&base64(value.as_bytes())),
        "{text}"
    );

    std::fs::write(dir.join("tls.crt"), CERT).unwrap();
    std::fs::write(dir.join("tls.key"), KEY).unwrap();
    let out = a
        .cli(&[
            "create",
            "secret",
            "tls",
            "web-tls",
            &format!("--cert={}", path(&dir.join("tls.crt"))),
            &format!("--key={}", path(&dir.join("tls.key"))),
        ])
        .unwrap();
    assert_eq!(out, "secret/web-tls created\n");
    // The key file given as the certificate: refused, without its content.
    let (ok, _, err) = a.cli_full(&[
        "create",
        "secret",
        "tls",
        "wrong",
        &format!("--cert={}", path(&dir.join("tls.key"))),
        &format!("--key={}", path(&dir.join("tls.key"))),
    ]);
    assert!(
        !ok && err.contains("no PEM certificate") && !err.contains("MIGH"),
        "{err}"
    );
    let out = a
        .cli(&[
            "create",
            "secret",
            "docker-registry",
            "pull",
            "--docker-server=registry.example.com:5000",
            "--docker-username=me",
            "--docker-password=pw",
            "--docker-email=me@example.com",
        ])
        .unwrap();
    assert_eq!(out, "secret/pull created\n");
    let tls = object(a, "secret", "web-tls");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(tls["data"]["tls.crt"], base64(CERT.as_bytes()));
    assert_eq!(tls["data"]["tls.key"], base64(KEY.as_bytes()));
    let pull = object(a, "secret", "pull");
    assert_eq!(pull["type"], "kubernetes.io/dockerconfigjson");
    let config = r#"{"auths":{"registry.example.com:5000":{"username":"me","password":"pw","email":"me@example.com","auth":"bWU6cHc="}}}"#;
    assert_eq!(pull["data"][".dockerconfigjson"], base64(config.as_bytes()));
    let text = a.cli(&["describe", "secret", "web-tls"]).unwrap();
    assert!(
        text.contains(&format!(
            "Type:  kubernetes.io/tls\n\nData\n====\ntls.crt:  {} bytes\ntls.key:  {} bytes\n",
            CERT.len(),
            KEY.len()
        )),
        "{text}"
    );
    assert!(!text.contains("MIGH"), "{text}");
    let table = a.cli(&["get", "secrets"]).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "TYPE", "DATA", "AGE"], "{table}");
    let names: Vec<&[&str]> = rows[1..].iter().map(|r| &r[..3]).collect();
    assert_eq!(
        names,
        [
            &["db", "Opaque", "2"][..],
            &["fresh", "Opaque", "1"],
            &["pull", "kubernetes.io/dockerconfigjson", "1"],
            &["web-tls", "kubernetes.io/tls", "2"],
        ],
        "{table}"
    );

    // Deleted, and gone.
    assert_eq!(
        a.cli(&["delete", "configmap", "web"]).unwrap(),
        "configmap \"web\" deleted\n"
    );
    assert_eq!(
        a.cli(&["delete", "secret", "db"]).unwrap(),
        "secret \"db\" deleted\n"
    );
    wait_until(
        "the deletions to be seen",
        secs(10),
        &cluster.agents,
        || {
            for (kind, name) in [("cm", "web"), ("secret", "db")] {
                if a.cli(&["get", kind, name]).is_ok() {
                    return Err(format!("{kind} {name} is still listed"));
                }
            }
            Ok(())
        },
    );
    let err = a.cli(&["describe", "secret", "db"]).unwrap_err();
    assert!(err.contains("secrets \"db\" not found"), "{err}");
}

/// `GET path` of `agent`'s API, with `token` if any: the status and the body.
fn get_with(agent: &Agent, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("http://{}{path}", agent.api.as_deref().expect("started"));
    let client: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(secs(10)))
        .build()
        .into();
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    match request.call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

#[test]
fn secret_reads_need_the_api_token_when_the_agent_has_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = Scratch::new("configtoken");
    let token = "a-token-of-at-least-16-characters";
    let token_file = scratch.path().join("api.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = new_key_file(scratch.path());
    let mut agent = Agent::new(scratch.path(), "node-0", &key);
    agent.api_token = Some(token.to_owned());
    // A service range apart from the default's (which other tests' lone agents take).
    let range = format!("127.{}.0.0/16", 129 + 2 * (std::process::id() % 35));
    agent.start_with(
        &[],
        &[
            "--runtime",
            "process",
            "--service-range",
            &range,
            "--api-token-file",
            path(&token_file),
        ],
    );
    agent
        .cli(&[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=pw",
        ])
        .unwrap();
    wait_until(
        "the secret to be listed",
        secs(10),
        std::slice::from_ref(&agent),
        || match get_with(&agent, "/api/v1/secrets/default/db", Some(token)) {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        },
    );
    let (status, body) = get_with(&agent, "/api/v1/secrets", Some(token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["items"][0]["data"]["password"], base64(b"pw"));
    // Without the token, or with another: refused, the list and the one alike.
    for route in ["/api/v1/secrets", "/api/v1/secrets/default/db"] {
        for given in [None, Some("not-the-token-of-this-agent")] {
            let (status, body) = get_with(&agent, route, given);
            assert_eq!(status, 401, "{route}: {body}");
            assert!(!body.contains(&base64(b"pw")), "{body}");
        }
    }
    let mut stranger = agent.client_of();
    stranger.api_token = None;
    let err = stranger.cli(&["get", "secrets"]).unwrap_err();
    assert!(err.contains("401"), "{err}");
    // With it, the CLI reads them.
    let table = agent.cli(&["get", "secrets"]).unwrap();
    assert!(table.contains("db ") && table.contains("Opaque"), "{table}");
}
