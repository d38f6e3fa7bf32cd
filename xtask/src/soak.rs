//! `cargo xtask soak [--minutes N] [ocf-soak options]`: builds the agent, the dev cloud, the
//! Mediator and `ocf-soak` with the `bench-release` profile (optimised, as on a device), then
//! runs `ocf-soak`, which prints the agent's RSS, heap and descriptors every minute and a summary
//! with the RSS slope, the sign-up count and the reconnect times (the README's soak figures).

use crate::{build_bench_release, run_bench_release};

pub fn soak(extra: &[String]) -> Result<(), String> {
    build_bench_release(&["ocf-agent", "ocf-dev-cloud", "ocf-mediator", "ocf-e2e"])?;
    run_bench_release("ocf-soak", extra)
}
