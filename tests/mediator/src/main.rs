//! `ocf-mediator`: what a phone Mediator does on a device's first boot, as a command-line tool.
//!
//! Implemented so far: `discover`. Onboarding (ownership transfer, credentials, cloud
//! configuration) and offboarding come with the device-security work (issue 4); until then
//! those commands say so and exit with status 2 rather than pretend.

mod discover;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ocf-mediator", version, about = "OCF Mediator: discover, onboard and offboard devices")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Find OCF devices by multicast discovery of /oic/res and list them with their endpoints.
    Discover {
        /// How long to wait for answers, in seconds.
        #[arg(long, default_value = "2")]
        wait: f64,
        /// UDP port of the OCF groups.
        #[arg(long, default_value = "5683")]
        port: u16,
    },
    /// Take ownership of a device and provision it for a cloud (not implemented yet).
    Onboard {
        #[arg(long)]
        pin: Option<String>,
        #[arg(long)]
        cloud: Option<String>,
    },
    /// Remove a device from its cloud (not implemented yet).
    Offboard,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Discover { wait, port } => {
            let wait = Duration::from_secs_f64(wait.clamp(0.1, 60.0));
            match discover::discover(wait, port) {
                Ok(found) => {
                    if found.is_empty() {
                        println!("no OCF devices answered within {:.1} s", wait.as_secs_f64());
                    }
                    for f in found {
                        let from = discover::answered_from(&f).map(|a| a.to_string()).unwrap_or_default();
                        println!("device {} (answered from {from})", f.di);
                        for ep in &f.eps {
                            println!("  ep {ep}");
                        }
                        for (href, types) in &f.resources {
                            println!("  {href} {}", types.join(" "));
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ocf-mediator: discover: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Onboard { .. } | Cmd::Offboard => {
            eprintln!("ocf-mediator: onboarding and offboarding are not implemented yet (issue 4)");
            ExitCode::from(2)
        }
    }
}
