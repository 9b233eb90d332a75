//! The `shoal` binary's code: the agent daemon and the kubectl-like CLI. `main.rs` only calls
//! [`run`].

use clap::{Parser, Subcommand};

mod agent;
mod api;
mod cli;
mod clock;
mod disk;
mod dns;
mod driver;
pub mod memory;
mod net;
mod node_info;
mod persist;
mod proxy;
pub mod runtime;
mod secret_box;
mod secret_file;
mod sim;
mod up;
mod workload;

/// The Kubernetes object model (the `shoal-model` crate), under the name the agent's code uses
/// for it.
use shoal_model as manifest;

/// shoal: a masterless container orchestrator.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent daemon on this machine.
    Agent(agent::AgentArgs),
    /// Apply manifests (Kubernetes YAML or JSON): create or update what they describe.
    Apply {
        /// Files, directories (their *.yaml, *.yml, *.json) or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<std::path::PathBuf>,
        /// Read directories recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Validate and report what would change, without writing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        ns: cli::NamespaceArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Create a config map or a secret from literal values, files or env files, a TLS secret
    /// or a registry's credentials (kubectl's `create configmap|secret`).
    Create {
        #[command(subcommand)]
        what: cli::create::CreateCommand,
    },
    /// List resources: nodes, pods, deployments, services, endpoints, config maps, secrets,
    /// namespaces.
    Get {
        /// What to list: nodes, pods (po), deployments (deploy), services (svc), endpoints
        /// (ep), configmaps (cm), secrets, namespaces (ns).
        resource: String,
        /// Names to show (all when none).
        names: Vec<String>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<cli::Output>,
        /// After listing, watch for changes.
        #[arg(short = 'w', long)]
        watch: bool,
        /// List across all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        ns: cli::NamespaceArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Show a node, pod, deployment, service, config map or secret in detail (a secret's
    /// keys and sizes, never its values), with recent events.
    Describe {
        /// node, pod, deployment, service, configmap (cm) or secret.
        resource: String,
        /// Its name.
        name: String,
        #[command(flatten)]
        ns: cli::NamespaceArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Delete what manifests describe (-f), or KIND NAME...
    Delete {
        /// Files, directories or - for stdin.
        #[arg(short = 'f', long = "filename")]
        files: Vec<std::path::PathBuf>,
        /// KIND NAME..., or KIND/NAME.
        target: Vec<String>,
        #[command(flatten)]
        ns: cli::NamespaceArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Set a deployment's replica count.
    Scale {
        /// deployment NAME, or deployment/NAME.
        target: Vec<String>,
        /// The new count.
        #[arg(long)]
        replicas: u32,
        #[command(flatten)]
        ns: cli::NamespaceArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Print a container's logs, from whichever node runs the pod.
    Logs {
        /// The pod.
        pod: String,
        /// The container (needed when the pod has several).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Keep streaming new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        ns: cli::NamespaceArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Follow or undo a deployment's rollout: `rollout status|undo deployment NAME`.
    Rollout {
        /// status or undo.
        action: String,
        /// deployment NAME, or deployment/NAME.
        target: Vec<String>,
        /// With undo: the revision to go back to (default: the previous one).
        #[arg(long)]
        to_revision: Option<u64>,
        /// With status: give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        ns: cli::NamespaceArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Ask the local agent to join a cluster through a member (host:port or multiaddr).
    Join {
        /// Members to join through; any one live member is enough.
        #[arg(required = true)]
        peers: Vec<String>,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Ask the local agent to leave the cluster gracefully and stop.
    Leave {
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Print a new random cluster key.
    Keygen,
    /// Start a local cluster of agents on this machine (process runtime: no privileges, no
    /// Docker), run a sample application on it, and print what to try; Ctrl-C stops it.
    Up(up::UpArgs),
    /// A tiny HTTP server (what the sample application runs), or with --get URL a client.
    #[command(name = "demo-http", disable_help_flag = true)]
    DemoHttp {
        /// Nothing to serve on $LISTEN or $POD_IP:$PORT (8080); --get URL [--wait-ms N].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Simulate a cluster running the real gossip protocol, deterministically, and report
    /// convergence, failure detection, false positives and traffic; with --workloads, the
    /// whole cluster running deployments, and how it reschedules them when nodes die.
    Sim(sim::SimArgs),
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SHOAL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,libp2p=warn,libp2p_quic=warn,quinn=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => {
            // A daemon that runs for months keeps only the code it runs resident, and its
            // threads share two allocator arenas.
            memory::map_own_code_sparsely();
            memory::limit_arenas();
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("shoal-worker")
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(args))
        }
        Command::Apply {
            files,
            recursive,
            dry_run,
            ns,
            api,
        } => cli::apply::apply(&api, &files, ns.namespace, recursive, dry_run),
        Command::Create { what } => cli::create::create(what),
        Command::Get {
            resource,
            names,
            output,
            watch,
            all_namespaces,
            ns,
            api,
        } => match resource.as_str() {
            "nodes" | "node" | "no" => cli::get_nodes(&api, output),
            other => {
                let kind = cli::workloads::resource_kind(other)?;
                cli::workloads::get(
                    &api,
                    kind,
                    &names,
                    ns.namespace,
                    all_namespaces,
                    output,
                    watch,
                )
            }
        },
        Command::Describe {
            resource,
            name,
            ns,
            api,
        } => match resource.as_str() {
            "nodes" | "node" | "no" => cli::describe_node(&api, &name),
            other => {
                let kind = cli::workloads::resource_kind(other)?;
                cli::workloads::describe(&api, kind, &name, ns.namespace)
            }
        },
        Command::Delete {
            files,
            target,
            ns,
            api,
        } => cli::workloads::delete(&api, &files, &target, ns.namespace),
        Command::Scale {
            target,
            replicas,
            ns,
            api,
        } => cli::workloads::scale(&api, &target, replicas, ns.namespace),
        Command::Logs {
            pod,
            container,
            follow,
            tail,
            ns,
            api,
        } => cli::workloads::logs(&api, &pod, container, follow, tail, ns.namespace),
        Command::Rollout {
            action,
            target,
            to_revision,
            timeout,
            ns,
            api,
        } => cli::workloads::rollout(
            &api,
            &action,
            &target,
            ns.namespace,
            to_revision,
            std::time::Duration::from_secs(timeout),
        ),
        Command::Join { peers, api } => cli::join(&api, peers),
        Command::Leave { api } => cli::leave(&api),
        Command::Keygen => agent::keygen(),
        Command::Up(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(up::up(args)),
        Command::DemoHttp { args } => shoal_demo::run(args),
        Command::Sim(args) => sim::run(args),
    }
}
