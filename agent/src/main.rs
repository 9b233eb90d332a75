//! The `shoal` binary: the agent daemon and the kubectl-like CLI.

fn main() -> anyhow::Result<()> {
    shoal_agent::run()
}
