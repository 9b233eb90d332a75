//! The `shoal` binary's code: the agent daemon and the kubectl-like CLI. `main.rs` only calls
//! [`run`].

use clap::{Parser, Subcommand};

mod agent;
mod api;
mod cli;
mod driver;
mod k8s;
pub mod manifest;
mod net;
mod persist;
pub mod runtime;
mod sim;
mod workload;

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
    /// List resources (today: nodes).
    Get {
        /// What to list: nodes (also: node, no).
        resource: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<cli::Output>,
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
    /// Simulate a cluster running the real gossip protocol, deterministically, and report
    /// convergence, failure detection, false positives and traffic.
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
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(args))
        }
        Command::Get {
            resource,
            output,
            api,
        } => match resource.as_str() {
            "nodes" | "node" | "no" => cli::get_nodes(&api, output),
            other => {
                anyhow::bail!("unknown resource type {other:?}: this version of shoal lists: nodes")
            }
        },
        Command::Join { peers, api } => cli::join(&api, peers),
        Command::Leave { api } => cli::leave(&api),
        Command::Keygen => agent::keygen(),
        Command::Sim(args) => sim::run(args),
    }
}
