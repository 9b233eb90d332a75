//! `shoal create configmap|secret`: kubectl's imperative commands for config maps and secrets.
//!
//! The values come from `--from-literal=KEY=VALUE`, `--from-file=[KEY=]PATH` (a directory:
//! each regular file in it, named by its file name) and `--from-env-file=PATH` (`KEY=VALUE`
//! lines), or for `secret tls` from a PEM certificate and key, for `secret docker-registry`
//! from the registry's credentials. Keys follow Kubernetes' rule; a config map keeps UTF-8
//! values in `data` and others in `binaryData`; a secret's values are base64 in `data`. The
//! manifest is the one kubectl makes: `--dry-run=client -o yaml` prints it, and it applies
//! back unchanged. Otherwise it is created through `apply`, unless the object exists (an
//! error, as with kubectl: `create` never changes an object).
//!
//! Nothing here prints or puts in an error a secret's value.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{ApiArgs, Client, NamespaceArgs, to_yaml};
use crate::manifest::{self, Kind, MAX_CONFIG_BYTES};

/// kubectl's default registry of `create secret docker-registry`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// The largest env file read (its comments may make it larger than the data it holds).
const MAX_ENV_FILE: u64 = manifest::MAX_FILE_BYTES;

/// `shoal create ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum CreateCommand {
    /// Create a config map from literal values, files, directories or env files.
    #[command(name = "configmap", visible_alias = "cm")]
    ConfigMap {
        /// Its name.
        name: String,
        #[command(flatten)]
        sources: Sources,
        #[command(flatten)]
        options: CreateOptions,
    },
    /// Create a secret: `generic`, `tls` or `docker-registry`.
    Secret {
        #[command(subcommand)]
        secret: SecretCommand,
    },
}

/// `shoal create secret ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum SecretCommand {
    /// A secret from literal values, files, directories or env files (type Opaque unless
    /// --type says).
    Generic {
        /// Its name.
        name: String,
        #[command(flatten)]
        sources: Sources,
        /// The secret's type (default: Opaque).
        #[arg(long = "type")]
        secret_type: Option<String>,
        #[command(flatten)]
        options: CreateOptions,
    },
    /// A TLS secret (type kubernetes.io/tls): keys tls.crt and tls.key from PEM files.
    Tls {
        /// Its name.
        name: String,
        /// The PEM certificate (chain).
        #[arg(long, value_name = "PATH")]
        cert: PathBuf,
        /// The PEM private key of the certificate.
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        #[command(flatten)]
        options: CreateOptions,
    },
    /// A secret to pull images with (type kubernetes.io/dockerconfigjson).
    #[command(name = "docker-registry")]
    DockerRegistry {
        /// Its name.
        name: String,
        /// The registry.
        #[arg(long, default_value = DOCKER_HUB)]
        docker_server: String,
        /// The user name.
        #[arg(long)]
        docker_username: String,
        /// The password.
        #[arg(long)]
        docker_password: String,
        /// The e-mail address (optional).
        #[arg(long)]
        docker_email: Option<String>,
        #[command(flatten)]
        options: CreateOptions,
    },
}

/// Where the values of a config map or generic secret come from.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct Sources {
    /// A key and its value (repeatable).
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    literals: Vec<String>,
    /// A file (its name is the key unless KEY= is given), or a directory: each regular file
    /// in it (repeatable).
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    files: Vec<String>,
    /// A file of KEY=VALUE lines; blank lines and lines starting with # are skipped
    /// (repeatable).
    #[arg(long = "from-env-file", value_name = "PATH")]
    env_files: Vec<PathBuf>,
}

/// kubectl's `--dry-run`.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum DryRun {
    /// Create it.
    #[default]
    None,
    /// Print what would be created; send nothing.
    Client,
    /// Let the agent check it; write nothing.
    Server,
}

/// What `create -o` prints.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CreateOutput {
    /// The object as JSON.
    Json,
    /// The object as YAML.
    Yaml,
    /// `kind/name`.
    Name,
}

/// The options every `create` takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct CreateOptions {
    /// `client`: print the object, send nothing; `server`: have the agent check it, write
    /// nothing.
    #[arg(
        long,
        value_enum,
        default_value = "none",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "client"
    )]
    dry_run: DryRun,
    /// Print the object (json, yaml) or its kind/name instead of what was done.
    #[arg(short = 'o', long = "output", value_enum)]
    output: Option<CreateOutput>,
    #[command(flatten)]
    ns: NamespaceArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs `shoal create ...`.
pub(crate) fn create(command: CreateCommand) -> anyhow::Result<()> {
    match command {
        CreateCommand::ConfigMap {
            name,
            sources,
            options,
        } => {
            let entries = entries(&sources, &Target::ConfigMap(&name))?;
            let manifest = config_map_manifest(&name, options.ns.namespace.as_deref(), &entries);
            finish(Kind::ConfigMap, &name, manifest, &options)
        }
        CreateCommand::Secret { secret } => {
            let (name, secret_type, entries, options) = match secret {
                SecretCommand::Generic {
                    name,
                    sources,
                    secret_type,
                    options,
                } => {
                    let entries = entries(&sources, &Target::Secret)?;
                    (name, secret_type, entries, options)
                }
                SecretCommand::Tls {
                    name,
                    cert,
                    key,
                    options,
                } => {
                    let entries = tls_entries(&cert, &key)?;
                    (name, Some(TLS.to_owned()), entries, options)
                }
                SecretCommand::DockerRegistry {
                    name,
                    docker_server,
                    docker_username,
                    docker_password,
                    docker_email,
                    options,
                } => {
                    let config = docker_config_json(
                        &docker_server,
                        &docker_username,
                        &docker_password,
                        docker_email.as_deref().unwrap_or(""),
                    );
                    let entries = BTreeMap::from([(DOCKER_CONFIG_KEY.to_owned(), config)]);
                    (name, Some(DOCKER_CONFIG.to_owned()), entries, options)
                }
            };
            let manifest = secret_manifest(
                &name,
                options.ns.namespace.as_deref(),
                secret_type.as_deref(),
                &entries,
            );
            finish(Kind::Secret, &name, manifest, &options)
        }
    }
}

/// What the values are for: the errors name it as kubectl does.
enum Target<'a> {
    /// A config map of this name.
    ConfigMap(&'a str),
    /// A secret.
    Secret,
}

impl Target<'_> {
    fn kind(&self) -> Kind {
        match self {
            Target::ConfigMap(_) => Kind::ConfigMap,
            Target::Secret => Kind::Secret,
        }
    }
}

/// Kubernetes' rule for a config map's or secret's key (`IsConfigMapKey`), with kubectl's
/// messages.
fn key_problems(key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if key.len() > 253 {
        problems.push("must be no more than 253 characters".to_owned());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        problems.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. \
             'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
             '[-._a-zA-Z0-9]+')"
                .to_owned(),
        );
    }
    match key {
        "." => problems.push("must not be '.'".to_owned()),
        ".." => problems.push("must not be '..'".to_owned()),
        _ if key.starts_with("..") => problems.push("must not start with '..'".to_owned()),
        _ => {}
    }
    problems
}

/// Adds one value, as kubectl does: a valid key, not there yet.
fn add(
    entries: &mut BTreeMap<String, Vec<u8>>,
    target: &Target<'_>,
    key: &str,
    value: Vec<u8>,
) -> anyhow::Result<()> {
    let problems = key_problems(key);
    if !problems.is_empty() {
        bail!(
            "{key:?} is not a valid key name for a {}: {}",
            target.kind(),
            problems.join(", ")
        );
    }
    if let Some(there) = entries.get(key) {
        match target {
            Target::ConfigMap(name) => {
                let field = if std::str::from_utf8(there).is_ok() {
                    "Data"
                } else {
                    "BinaryData"
                };
                bail!(
                    "cannot add key {key:?}, another key by that name already exists in {field} \
                     for ConfigMap {name:?}"
                );
            }
            Target::Secret => {
                bail!("cannot add key {key}, another key by that name already exists")
            }
        }
    }
    entries.insert(key.to_owned(), value);
    Ok(())
}

/// `--from-literal=KEY=VALUE`.
fn literal(source: &str, target: &Target<'_>) -> anyhow::Result<(String, String)> {
    match source.split_once('=') {
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        // A secret's source may be a value given without its key: not shown.
        None if matches!(target, Target::Secret) => {
            bail!("invalid literal source (a --from-literal without '='), expected key=value")
        }
        None => bail!("invalid literal source {source}, expected key=value"),
    }
}

/// `--from-file=[KEY=]PATH`: the key, if given, and the path (kubectl's rules).
fn file_source(source: &str) -> anyhow::Result<(Option<String>, PathBuf)> {
    match source.matches('=').count() {
        0 => Ok((None, PathBuf::from(source))),
        1 if source.starts_with('=') => {
            bail!("key name for file path {} missing", &source[1..])
        }
        1 if source.ends_with('=') => {
            bail!(
                "file path for key name {} missing",
                &source[..source.len() - 1]
            )
        }
        1 => {
            let (key, path) = source.split_once('=').expect("one '='");
            Ok((Some(key.to_owned()), PathBuf::from(path)))
        }
        _ => bail!("key names or file paths cannot contain '='"),
    }
}

/// Where a value comes from: bytes at hand, or a file read once the size is known to fit.
enum Origin {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Kubernetes' rule for a variable name (`IsEnvVarName`), which env files' keys follow.
fn env_name_problem(key: &str) -> Option<String> {
    let ok = crate::workload::pod_config::is_env_name(key);
    (!ok).then(|| {
        format!(
            "{key:?} is not a valid key name: a valid environment variable name must consist of \
             alphabetic characters, digits, '_', '-', or '.', and must not start with a digit \
             (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation \
             is '[-._a-zA-Z][-._a-zA-Z0-9]*')"
        )
    })
}

/// The `KEY=VALUE` pairs of an env file: blank lines and `#` comments skipped, leading
/// whitespace trimmed, the value as written (kubectl's rules, except that a line without `=`
/// is an error rather than a value taken from this shell's environment).
fn env_pairs(path: &Path, text: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let Ok(text) = std::str::from_utf8(text) else {
        bail!("env file {} is not UTF-8 text", path.display());
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut pairs = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!(
                "env file {}, line {}: no '=' (expected KEY=VALUE)",
                path.display(),
                i + 1
            );
        };
        if let Some(problem) = env_name_problem(key) {
            bail!("env file {}, line {}: {problem}", path.display(), i + 1);
        }
        pairs.push((key.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

/// Reads at most `limit` bytes of a file, and whether there was more.
fn read_up_to(path: &Path, limit: u64) -> anyhow::Result<(Vec<u8>, bool)> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    let more = bytes.len() as u64 > limit;
    bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok((bytes, more))
}

/// `the configmap "x" is N bytes ...`: the model's words for the same limit.
fn too_large(target: &Target<'_>, size: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "the {} is {size} bytes (keys and values), over the limit of {MAX_CONFIG_BYTES} bytes \
         (1 MiB)",
        match target {
            Target::ConfigMap(_) => "config map",
            Target::Secret => "secret",
        }
    )
}

/// The values of a config map or generic secret, by key: files first, then literals, then
/// env files, as kubectl adds them. The size (keys and values) is checked before any file is
/// read, from the files' sizes.
fn entries(sources: &Sources, target: &Target<'_>) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let others = !sources.files.is_empty() || !sources.literals.is_empty();
    if !sources.env_files.is_empty() && others {
        bail!("from-env-file cannot be combined with from-file or from-literal");
    }
    // Keys and where their values come from (checked as they come: keys, duplicates).
    let mut planned: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut origins: Vec<(String, Origin)> = Vec::new();
    let mut plan = |key: &str, origin: Origin| -> anyhow::Result<()> {
        // A file's bytes are not known yet: its key is checked against the others with an
        // empty (UTF-8) placeholder.
        let value = match &origin {
            Origin::Bytes(b) => b.clone(),
            Origin::File(_) => Vec::new(),
        };
        add(&mut planned, target, key, value)?;
        origins.push((key.to_owned(), origin));
        Ok(())
    };
    for source in &sources.files {
        let (key, path) = file_source(source)?;
        let meta =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            if key.is_some() {
                bail!("cannot give a key name for a directory path");
            }
            let mut files = Vec::new();
            for entry in
                std::fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?
            {
                let entry = entry.with_context(|| format!("reading {}", path.display()))?;
                // Regular files only, as kubectl (not subdirectories, links or devices).
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(entry);
                }
            }
            files.sort_by_key(std::fs::DirEntry::file_name);
            for entry in files {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    bail!(
                        "{:?} is not a valid key name for a {}: not UTF-8",
                        entry.path(),
                        target.kind()
                    );
                };
                plan(name, Origin::File(entry.path()))?;
            }
        } else {
            let key = match key {
                Some(key) => key,
                None => path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .with_context(|| {
                        format!("{}: no file name to take a key from", path.display())
                    })?,
            };
            plan(&key, Origin::File(path))?;
        }
    }
    for source in &sources.literals {
        let (key, value) = literal(source, target)?;
        plan(&key, Origin::Bytes(value.into_bytes()))?;
    }
    for path in &sources.env_files {
        let (text, more) = read_up_to(path, MAX_ENV_FILE)?;
        if more {
            bail!(
                "env file {} is larger than {MAX_ENV_FILE} bytes",
                path.display()
            );
        }
        for (key, value) in env_pairs(path, &text)? {
            plan(&key, Origin::Bytes(value.into_bytes()))?;
        }
    }
    // The size, before reading: files by their length.
    let limit = MAX_CONFIG_BYTES as u64;
    let mut size: u64 = 0;
    for (key, origin) in &origins {
        size += key.len() as u64;
        size += match origin {
            Origin::Bytes(b) => b.len() as u64,
            Origin::File(path) => std::fs::metadata(path).map_or(0, |m| m.len()),
        };
    }
    if size > limit {
        return Err(too_large(target, size));
    }
    // Read, each file within what is left (a file that is not a regular one, or grew).
    let mut out = BTreeMap::new();
    let mut size: u64 = 0;
    for (key, origin) in origins {
        let value = match origin {
            Origin::Bytes(b) => b,
            Origin::File(path) => {
                let room = limit.saturating_sub(size + key.len() as u64);
                let (bytes, more) = read_up_to(&path, room)?;
                if more {
                    return Err(too_large(target, size + key.len() as u64 + room + 1));
                }
                bytes
            }
        };
        size += (key.len() + value.len()) as u64;
        if size > limit {
            return Err(too_large(target, size));
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// The type and keys of TLS secrets.
const TLS: &str = "kubernetes.io/tls";
/// The type of registry credentials.
const DOCKER_CONFIG: &str = "kubernetes.io/dockerconfigjson";
/// Their key.
const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";

/// Whether `text` holds a PEM block whose label ends with `label` (`CERTIFICATE`, `PRIVATE
/// KEY`): the labels of its `BEGIN` lines.
fn pem_labels(text: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")?
                .strip_suffix("-----")
                .map(str::to_owned)
        })
        .collect()
}

/// `secret tls`: `tls.crt` and `tls.key` from PEM files, checked to be a certificate and an
/// unencrypted private key (never showing the key).
fn tls_entries(cert: &Path, key: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let limit = MAX_CONFIG_BYTES as u64;
    let (cert_bytes, more) = read_up_to(cert, limit)?;
    if more {
        return Err(too_large(&Target::Secret, limit + 1));
    }
    let (key_bytes, more) = read_up_to(key, limit)?;
    if more {
        return Err(too_large(&Target::Secret, limit + 1));
    }
    if !pem_labels(&cert_bytes).iter().any(|l| l == "CERTIFICATE") {
        bail!(
            "--cert {}: no PEM certificate in it (a -----BEGIN CERTIFICATE----- block)",
            cert.display()
        );
    }
    let labels = pem_labels(&key_bytes);
    if labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
        bail!(
            "--key {}: the private key is encrypted; give it decrypted (openssl pkey -in KEY -out PLAIN)",
            key.display()
        );
    }
    if !labels.iter().any(|l| l.ends_with("PRIVATE KEY")) {
        bail!(
            "--key {}: no PEM private key in it (a -----BEGIN PRIVATE KEY----- block, or RSA or EC PRIVATE KEY)",
            key.display()
        );
    }
    let size = (cert_bytes.len() + key_bytes.len() + "tls.crt".len() + "tls.key".len()) as u64;
    if size > limit {
        return Err(too_large(&Target::Secret, size));
    }
    Ok(BTreeMap::from([
        ("tls.crt".to_owned(), cert_bytes),
        ("tls.key".to_owned(), key_bytes),
    ]))
}

/// One registry's credentials in a Docker config, fields in kubectl's order.
#[derive(Serialize)]
struct DockerAuth<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    username: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    password: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    email: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    auth: String,
}

/// A Docker config: credentials by registry.
#[derive(Serialize)]
struct DockerConfig<'a> {
    auths: BTreeMap<&'a str, DockerAuth<'a>>,
}

/// `secret docker-registry`'s `.dockerconfigjson`, byte for byte as kubectl writes it (Go's
/// JSON: compact, `<`, `>` and `&` escaped).
fn docker_config_json(server: &str, username: &str, password: &str, email: &str) -> Vec<u8> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let entry = DockerAuth {
        username,
        password,
        email,
        auth,
    };
    let config = DockerConfig {
        auths: BTreeMap::from([(server, entry)]),
    };
    let text = serde_json::to_string(&config).expect("JSON of strings");
    text.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .into_bytes()
}

/// `metadata` as kubectl's `create` writes it.
fn metadata(name: &str, namespace: Option<&str>) -> Value {
    let mut meta = json!({ "creationTimestamp": null, "name": name });
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    meta
}

fn base64_of(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The config map kubectl makes: UTF-8 values in `data`, others (base64) in `binaryData`,
/// each left out when empty.
fn config_map_manifest(
    name: &str,
    namespace: Option<&str>,
    entries: &BTreeMap<String, Vec<u8>>,
) -> Value {
    let mut data = Map::new();
    let mut binary = Map::new();
    for (key, value) in entries {
        match std::str::from_utf8(value) {
            Ok(text) => data.insert(key.clone(), json!(text)),
            Err(_) => binary.insert(key.clone(), base64_of(value)),
        };
    }
    let mut manifest = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(name, namespace),
    });
    if !data.is_empty() {
        manifest["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        manifest["binaryData"] = Value::Object(binary);
    }
    manifest
}

/// The secret kubectl makes: values in base64, `type` only when given.
fn secret_manifest(
    name: &str,
    namespace: Option<&str>,
    secret_type: Option<&str>,
    entries: &BTreeMap<String, Vec<u8>>,
) -> Value {
    let mut manifest = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(name, namespace),
    });
    if !entries.is_empty() {
        let data: Map<String, Value> = entries
            .iter()
            .map(|(k, v)| (k.clone(), base64_of(v)))
            .collect();
        manifest["data"] = Value::Object(data);
    }
    if let Some(t) = secret_type.filter(|t| !t.is_empty()) {
        manifest["type"] = json!(t);
    }
    manifest
}

/// The manifest as a resource, checked by the model as `apply` checks it (its messages
/// never show a secret's value).
fn resource_of(kind: Kind, name: &str, manifest: &Value) -> anyhow::Result<manifest::Resource> {
    let bytes = serde_json::to_vec(manifest).context("encoding the manifest")?;
    let source = format!("{}/{name}", kind.resource_type());
    match manifest::parse(&source, &bytes) {
        Ok(mut resources) if resources.len() == 1 => Ok(resources.remove(0)),
        Ok(_) => bail!("{source}: expected one object"),
        Err(errors) => {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            bail!("{}", all.join("; "))
        }
    }
}

/// Prints what `-o` asks for, or `kind/name VERB`.
fn print(
    kind: Kind,
    name: &str,
    object: &Value,
    output: Option<CreateOutput>,
    done: &str,
) -> anyhow::Result<()> {
    match output {
        Some(CreateOutput::Yaml) => print!("{}", to_yaml(object)?),
        Some(CreateOutput::Json) => println!("{}", serde_json::to_string_pretty(object)?),
        Some(CreateOutput::Name) => println!("{}/{name}", kind.resource_type()),
        None => println!("{}/{name} {done}", kind.resource_type()),
    }
    Ok(())
}

/// Checks the manifest, then prints it (`--dry-run=client`) or creates the object.
fn finish(kind: Kind, name: &str, manifest: Value, options: &CreateOptions) -> anyhow::Result<()> {
    let resource = resource_of(kind, name, &manifest)?;
    if options.dry_run == DryRun::Client {
        return print(kind, name, &manifest, options.output, "created (dry run)");
    }
    let what = kind.resource_type();
    let namespace = resource.key().namespace;
    let client = Client::new(&options.api)?;
    // `create` never changes an object: one that exists is an error, as with kubectl. The
    // store answers (not a view that may lag behind it).
    let stored_path = format!("/api/v1/objects/{}/{namespace}/{name}", kind.key_kind());
    if client.get_if_found(&stored_path)?.is_some() {
        bail!("failed to create {what}: {what}s {name:?} already exists");
    }
    let dry_run = options.dry_run == DryRun::Server;
    let stored: Value =
        serde_json::from_slice(&resource.to_stored()).context("encoding the object")?;
    let answer = client
        .post(
            "/api/v1/apply",
            &json!({ "objects": [stored], "dryRun": dry_run }),
        )
        .with_context(|| format!("failed to create {what}"))?;
    let outcome = answer["results"][0]["outcome"]
        .as_str()
        .unwrap_or("created");
    if dry_run {
        return print(
            kind,
            name,
            &manifest,
            options.output,
            &format!("{outcome} (server dry run)"),
        );
    }
    // What the cluster holds, when asked for it (the manifest if not readable yet).
    let object = match options.output {
        Some(CreateOutput::Json | CreateOutput::Yaml) => {
            let read = format!("/api/v1/{what}s/{namespace}/{name}");
            match client.get_if_found(&read)? {
                Some(answer) => answer["object"].clone(),
                None => manifest,
            }
        }
        _ => manifest,
    };
    print(kind, name, &object, options.output, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of its own per test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-create-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sources(literals: &[&str], files: &[&str], env_files: &[&Path]) -> Sources {
        Sources {
            literals: literals.iter().map(|s| (*s).to_owned()).collect(),
            files: files.iter().map(|s| (*s).to_owned()).collect(),
            env_files: env_files.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    fn err(result: anyhow::Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn a_config_map_from_literals_files_and_a_directory() {
        let dir = scratch("cm");
        std::fs::write(dir.join("app.properties"), "a=1\nb=2\n").unwrap();
        let conf = dir.join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("x.txt"), "x").unwrap();
        std::fs::write(conf.join("blob.bin"), [0xff, 0xfe, 0x00]).unwrap();
        std::fs::create_dir(conf.join("sub")).unwrap();
        std::fs::write(conf.join("sub").join("skipped"), "no").unwrap();
        std::os::unix::fs::symlink(conf.join("x.txt"), conf.join("link")).unwrap();
        let app = dir.join("app.properties");
        let renamed = format!("settings={}", app.display());
        let sources = sources(
            &["mode=fast", "empty="],
            &[app.to_str().unwrap(), &renamed, conf.to_str().unwrap()],
            &[],
        );
        let got = entries(&sources, &Target::ConfigMap("web")).unwrap();
        let keys: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "app.properties",
                "blob.bin",
                "empty",
                "mode",
                "settings",
                "x.txt"
            ]
        );
        let manifest = config_map_manifest("web", None, &got);
        assert_eq!(
            manifest,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"creationTimestamp": null, "name": "web"},
                "data": {
                    "app.properties": "a=1\nb=2\n", "empty": "", "mode": "fast",
                    "settings": "a=1\nb=2\n", "x.txt": "x",
                },
                "binaryData": {"blob.bin": "//4A"},
            })
        );
        // kubectl's YAML: keys in order, multi-line values as literal blocks.
        let yaml = to_yaml(&config_map_manifest("web", Some("prod"), &got)).unwrap();
        assert!(
            yaml.starts_with("apiVersion: v1\nbinaryData:\n  blob.bin: //4A\ndata:\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("kind: ConfigMap\nmetadata:\n  creationTimestamp: null\n  name: web\n  namespace: prod\n"),
            "{yaml}"
        );
        // It parses back as the model reads manifests.
        let r = resource_of(Kind::ConfigMap, "web", &manifest).unwrap();
        assert_eq!(r.key().namespace, "default");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_keys_duplicates_and_sources_are_refused_as_kubectl_words_them() {
        let cm = Target::ConfigMap("web");
        let e = err(entries(&sources(&["a=1", "a=2"], &[], &[]), &cm));
        assert_eq!(
            e,
            "cannot add key \"a\", another key by that name already exists in Data for ConfigMap \"web\""
        );
        let e = err(entries(
            &sources(&["a=1", "a=2"], &[], &[]),
            &Target::Secret,
        ));
        assert_eq!(
            e,
            "cannot add key a, another key by that name already exists"
        );
        let e = err(entries(&sources(&["bad key=1"], &[], &[]), &cm));
        assert!(
            e.starts_with("\"bad key\" is not a valid key name for a ConfigMap: a valid config key must consist of alphanumeric characters"),
            "{e}"
        );
        for key in [".", "..", "..x", ""] {
            let e = err(entries(&sources(&[&format!("{key}=v")], &[], &[]), &cm));
            assert!(e.contains("is not a valid key name"), "{key}: {e}");
        }
        let long = "k".repeat(254);
        let e = err(entries(&sources(&[&format!("{long}=v")], &[], &[]), &cm));
        assert!(e.contains("must be no more than 253 characters"), "{e}");
        assert!(key_problems(&"k".repeat(253)).is_empty());
        assert!(key_problems("a-b_c.D9").is_empty());
        let e = err(entries(&sources(&["novalue"], &[], &[]), &cm));
        assert_eq!(e, "invalid literal source novalue, expected key=value");
        // A secret's source without '=' may be a value: not shown.
        let e = err(entries(&sources(&["hunter2"], &[], &[]), &Target::Secret));
        assert!(
            !e.contains("hunter2") && e.contains("expected key=value"),
            "{e}"
        );
        assert_eq!(err(file_source("=x")), "key name for file path x missing");
        assert_eq!(err(file_source("k=")), "file path for key name k missing");
        assert_eq!(
            err(file_source("a=b=c")),
            "key names or file paths cannot contain '='"
        );
        let dir = scratch("badsources");
        let e = err(entries(
            &sources(&[], &[&format!("k={}", dir.display())], &[]),
            &cm,
        ));
        assert_eq!(e, "cannot give a key name for a directory path");
        let env = dir.join("a.env");
        std::fs::write(&env, "A=1\n").unwrap();
        let e = err(entries(&sources(&["b=2"], &[], &[&env]), &cm));
        assert_eq!(
            e,
            "from-env-file cannot be combined with from-file or from-literal"
        );
        let e = err(entries(
            &sources(&[], &[dir.join("missing").to_str().unwrap()], &[]),
            &cm,
        ));
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_files_as_kubectl_reads_them() {
        let dir = scratch("env");
        let env = dir.join("app.env");
        std::fs::write(
            &env,
            "\u{feff}# settings\n\nMODE=fast\n  LEVEL=debug \r\nURL=http://x/?a=b\nEMPTY=\n",
        )
        .unwrap();
        let got = entries(&sources(&[], &[], &[&env]), &Target::ConfigMap("c")).unwrap();
        let text: BTreeMap<&str, &str> = got
            .iter()
            .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            text,
            BTreeMap::from([
                ("EMPTY", ""),
                ("LEVEL", "debug "),
                ("MODE", "fast"),
                ("URL", "http://x/?a=b"),
            ])
        );
        std::fs::write(&env, "A=1\n# fine\nJUSTAKEY\n").unwrap();
        let e = err(entries(&sources(&[], &[], &[&env]), &Target::Secret));
        assert_eq!(
            e,
            format!(
                "env file {}, line 3: no '=' (expected KEY=VALUE)",
                env.display()
            )
        );
        std::fs::write(&env, "1A=x\n").unwrap();
        let e = err(entries(&sources(&[], &[], &[&env]), &Target::Secret));
        assert!(e.contains("line 1: \"1A\" is not a valid key name"), "{e}");
        std::fs::write(&env, "A=1\nA=2\n").unwrap();
        let e = err(entries(&sources(&[], &[], &[&env]), &Target::Secret));
        assert_eq!(
            e,
            "cannot add key A, another key by that name already exists"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn over_one_mebibyte_is_refused_before_reading() {
        let dir = scratch("size");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; MAX_CONFIG_BYTES]).unwrap();
        let e = err(entries(
            &sources(&[], &[big.to_str().unwrap()], &[]),
            &Target::ConfigMap("c"),
        ));
        assert_eq!(
            e,
            format!(
                "the config map is {} bytes (keys and values), over the limit of 1048576 bytes (1 MiB)",
                MAX_CONFIG_BYTES + 3
            )
        );
        // Exactly the limit fits.
        std::fs::write(&big, vec![b'x'; MAX_CONFIG_BYTES - 3]).unwrap();
        let got = entries(
            &sources(&[], &[big.to_str().unwrap()], &[]),
            &Target::Secret,
        )
        .unwrap();
        assert_eq!(got["big"].len(), MAX_CONFIG_BYTES - 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n";

    #[test]
    fn tls_secrets_take_a_pem_certificate_and_key() {
        let dir = scratch("tls");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, CERT).unwrap();
        std::fs::write(&key, KEY).unwrap();
        let got = tls_entries(&cert, &key).unwrap();
        let manifest = secret_manifest("web-tls", None, Some(TLS), &got);
        assert_eq!(manifest["type"], "kubernetes.io/tls");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(manifest["data"]["tls.crt"], b64(CERT));
        assert_eq!(manifest["data"]["tls.key"], b64(KEY));
        resource_of(Kind::Secret, "web-tls", &manifest).unwrap();
        // The wrong file, an encrypted key: named, never shown.
        let e = err(tls_entries(&key, &key));
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = err(tls_entries(&cert, &cert));
        assert!(
            e.contains("no PEM private key") && !e.contains("MIIB"),
            "{e}"
        );
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nsecretbytes\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = err(tls_entries(&cert, &key));
        assert!(e.contains("encrypted") && !e.contains("secretbytes"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn registry_credentials_as_kubectl_writes_them() {
        let config = docker_config_json(DOCKER_HUB, "me", "p<&>w", "me@example.com");
        assert_eq!(
            std::str::from_utf8(&config).unwrap(),
            "{\"auths\":{\"https://index.docker.io/v1/\":{\"username\":\"me\",\"password\":\"p\\u003c\\u0026\\u003ew\",\"email\":\"me@example.com\",\"auth\":\"bWU6cDwmPnc=\"}}}"
        );
        let config = docker_config_json("registry.example.com:5000", "u", "p", "");
        assert_eq!(
            std::str::from_utf8(&config).unwrap(),
            "{\"auths\":{\"registry.example.com:5000\":{\"username\":\"u\",\"password\":\"p\",\"auth\":\"dTpw\"}}}"
        );
        let entries = BTreeMap::from([(DOCKER_CONFIG_KEY.to_owned(), config)]);
        let manifest = secret_manifest("pull", Some("prod"), Some(DOCKER_CONFIG), &entries);
        let r = resource_of(Kind::Secret, "pull", &manifest).unwrap();
        assert_eq!(r.key().namespace, "prod");
    }

    #[test]
    fn generic_secrets_print_as_kubectl_prints_them() {
        let got = entries(
            &sources(&["password=s3cr3t", "user=admin"], &[], &[]),
            &Target::Secret,
        )
        .unwrap();
        let yaml = to_yaml(&secret_manifest("db", None, None, &got)).unwrap();
        assert_eq!(
            yaml,
            "apiVersion: v1\ndata:\n  password: czNjcjN0\n  user: YWRtaW4=\nkind: Secret\nmetadata:\n  creationTimestamp: null\n  name: db\n"
        );
        let typed = secret_manifest("db", None, Some("example.com/token"), &got);
        assert_eq!(typed["type"], "example.com/token");
        resource_of(Kind::Secret, "db", &typed).unwrap();
        // An empty secret has no data, as kubectl's.
        let empty = secret_manifest("none", None, None, &BTreeMap::new());
        assert!(empty.get("data").is_none());
        // A bad name is the model's refusal.
        let e = err(resource_of(
            Kind::Secret,
            "Bad_Name",
            &secret_manifest("Bad_Name", None, None, &got),
        ));
        assert!(e.contains("metadata.name"), "{e}");
    }

    #[test]
    fn the_command_line_parses_as_kubectl_s() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(subcommand)]
            create: CreateCommand,
        }
        let cli = Cli::try_parse_from([
            "create",
            "cm",
            "web",
            "--from-literal=a=1",
            "--from-file=k=x.txt",
            "--dry-run=client",
            "-o",
            "yaml",
            "-n",
            "prod",
        ])
        .unwrap();
        let CreateCommand::ConfigMap {
            name,
            sources,
            options,
        } = cli.create
        else {
            panic!("{:?}", cli.create);
        };
        assert_eq!(name, "web");
        assert_eq!(sources.literals, ["a=1"]);
        assert_eq!(sources.files, ["k=x.txt"]);
        assert_eq!(options.dry_run, DryRun::Client);
        assert_eq!(options.output, Some(CreateOutput::Yaml));
        assert_eq!(options.ns.namespace.as_deref(), Some("prod"));
        let cli = Cli::try_parse_from([
            "create",
            "secret",
            "docker-registry",
            "r",
            "--docker-username=u",
            "--docker-password=p",
        ])
        .unwrap();
        match cli.create {
            CreateCommand::Secret {
                secret:
                    SecretCommand::DockerRegistry {
                        docker_server,
                        options,
                        ..
                    },
            } => {
                assert_eq!(docker_server, DOCKER_HUB);
                assert_eq!(options.dry_run, DryRun::None);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "create",
            "secret",
            "tls",
            "t",
            "--cert=c",
            "--key=k",
            "--dry-run",
        ])
        .unwrap();
        match cli.create {
            CreateCommand::Secret {
                secret: SecretCommand::Tls { options, .. },
            } => assert_eq!(options.dry_run, DryRun::Client),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["create", "secret", "tls", "t", "--cert=c"]).is_err());
    }
}
