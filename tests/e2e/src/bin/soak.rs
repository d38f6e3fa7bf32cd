//! `ocf-soak` (what `cargo xtask soak` runs): the agent and the dev cloud on loopback under a
//! long mixed load with the cloud cut every 15–30 s; prints the agent's memory and descriptors
//! every minute and a summary at the end (see `ocf_e2e::soak`). Exits 1 if the device signed
//! up more than once, did not come back after a cut, or died.
//!
//! ```text
//! ocf-soak [--minutes N] [--dir DIR] [--seed S]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ocf_e2e::bin_dir;
use ocf_e2e::soak::{run, SoakOptions};

const USAGE: &str = "usage: ocf-soak [--minutes N] [--dir DIR] [--seed S]";

fn main() -> ExitCode {
    let mut opts = SoakOptions {
        duration: Duration::from_secs(10 * 60),
        dir: bin_dir().join("soak"),
        seed: 1,
        bin_dir: bin_dir(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        let parsed = match (a.as_str(), value) {
            ("--minutes", Some(v)) => v
                .parse::<f64>()
                .ok()
                .filter(|m| *m > 0.0 && m.is_finite())
                .map(|m| opts.duration = Duration::from_secs_f64(m * 60.0)),
            ("--dir", Some(v)) => {
                opts.dir = PathBuf::from(v);
                Some(())
            }
            ("--seed", Some(v)) => v.parse().ok().map(|s| opts.seed = s),
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    let report = match run(&opts, &mut |line| println!("ocf-soak: {line}")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ocf-soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ocf-soak: summary\n{}", report.summary());
    let secs: Vec<String> = report
        .reconnects
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .collect();
    println!("ocf-soak: reconnect times (s): {}", secs.join(" "));
    if report.sign_ups != 1 || report.lost > 0 || !report.agent_alive {
        eprintln!(
            "ocf-soak: FAILED (sign-ups must be 1, every cut must come back, the agent must live)"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
