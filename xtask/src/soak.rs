//! `cargo xtask soak [--minutes N] [ocf-soak options]`: builds the agent, the dev cloud, the
//! Mediator and `ocf-soak` with the `bench-release` profile (optimised, as on a device), then
//! runs `ocf-soak`, which prints the agent's RSS, heap and descriptors every minute and a summary
//! with the RSS slope, the sign-up count and the reconnect times (the README's soak figures).

use std::env;
use std::process::Command;

use crate::{run, workspace_root};

pub fn soak(extra: &[String]) -> Result<(), String> {
    let root = workspace_root();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--profile",
        "bench-release",
        "--package",
        "ocf-agent",
        "--package",
        "ocf-dev-cloud",
        "--package",
        "ocf-mediator",
        "--package",
        "ocf-e2e",
        "--bins",
    ]))?;
    run(Command::new(&cargo)
        .current_dir(&root)
        .args([
            "run",
            "--profile",
            "bench-release",
            "--package",
            "ocf-e2e",
            "--bin",
            "ocf-soak",
            "--",
        ])
        .args(extra))
}
