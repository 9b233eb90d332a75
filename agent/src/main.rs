//! The `shoal` binary: the agent daemon and the kubectl-like CLI.

use std::process::ExitCode;

fn main() -> ExitCode {
    match shoal_agent::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the chain of causes on one line, as a user wants to read it; no
            // backtrace even when RUST_BACKTRACE is set in the environment.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
