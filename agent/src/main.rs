//! The `shoal` binary: the agent daemon and the kubectl-like CLI.

use clap::{Parser, Subcommand};

mod net;
mod persist;
mod sim;

/// shoal: a masterless container orchestrator.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate a cluster running the real gossip protocol, deterministically, and report
    /// convergence, failure detection, false positives and traffic.
    Sim(sim::SimArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim::run(args),
    }
}
