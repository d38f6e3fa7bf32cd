//! `ocf-mediator`: what a phone Mediator does on a device's first boot, as a command-line tool.
//!
//! ```text
//! ocf-mediator [--identity DIR] discover [--wait SECS] [--port PORT]
//! ocf-mediator [--identity DIR] onboard (--pin PIN | --otm rdp | --otm mfg --mfg-ca PATH [--mfg-over-tcp])
//!              --cloud URL [--cloud-ca PATH] --token-file PATH [--auth-code-file PATH]
//!              [--device EP | --di UUID] [--name NAME] [--timeout SECS]
//! ocf-mediator [--identity DIR] offboard (--device EP | --di UUID) [--timeout SECS]
//! ocf-mediator [--identity DIR] get (--device EP | --di UUID) PATH
//! ocf-mediator [--identity DIR] post (--device EP | --di UUID) PATH JSON
//! ocf-mediator [--identity DIR] identity
//! ```
//!
//! Exit status: 0 done (onboard: `registered`; offboard: `uninitialized`); 1 a step failed or
//! the device reported `failed`; 2 bad usage; 3 (`get`, `post`) the device answered an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ocf::resource::Method;
use ocf::security::otm::Pin;
use ocf_mediator::cloud_api::CloudTrust;
use ocf_mediator::flow::{self, Net, OnboardArgs, Outcome, Target};
use ocf_mediator::identity::{default_dir, Identity};
use ocf_mediator::{discover, tls};

#[derive(Parser)]
#[command(
    name = "ocf-mediator",
    version,
    about = "OCF Mediator: discover, onboard and offboard devices"
)]
struct Cli {
    /// Directory of the Mediator's key, certificate and pinned devices
    /// (default $HOME/.ocf-mediator; created with mode 0700).
    #[arg(long, global = true, value_name = "DIR")]
    identity: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct Which {
    /// The device's secure endpoint, coaps+tcp://IP:PORT.
    #[arg(
        long,
        value_name = "EP",
        conflicts_with = "di",
        required_unless_present = "di"
    )]
    device: Option<String>,
    /// The device's di, found by multicast discovery.
    #[arg(long, value_name = "UUID")]
    di: Option<String>,
    /// UDP port of the OCF multicast groups, for --di.
    #[arg(long, default_value = "5683", value_name = "PORT")]
    discovery_port: u16,
}

#[derive(Subcommand)]
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
    /// Take ownership of a device with its setup PIN and provision it for a cloud, then wait
    /// until it is registered.
    Onboard {
        /// The device's 8-digit setup PIN (never printed), for SPAKE2.
        #[arg(
            long,
            value_name = "PIN",
            conflicts_with = "pin_file",
            required_unless_present_any = ["pin_file", "otm"]
        )]
        pin: Option<String>,
        /// The ownership transfer method: spake2 (the setup PIN over coaps+tcp; default), or
        /// OCF's rdp (Random PIN over DTLS: the device shows a fresh PIN, typed on stdin) or
        /// mfg (Manufacturer Certificate, checked against --mfg-ca).
        #[arg(long, value_name = "METHOD", value_parser = ["spake2", "rdp", "mfg"])]
        otm: Option<String>,
        /// For --otm mfg: the CA (PEM) the device's manufacturer certificate must chain to.
        #[arg(long, value_name = "PATH")]
        mfg_ca: Option<PathBuf>,
        /// For --otm mfg: run it over coaps+tcp instead of DTLS.
        #[arg(long)]
        mfg_over_tcp: bool,
        /// Read the PIN from this file instead (keeps it out of the process list).
        #[arg(long, value_name = "PATH")]
        pin_file: Option<PathBuf>,
        /// The hub's HTTP gateway, https://HOST[:PORT] or http://HOST:PORT (its
        /// /.well-known/hub-configuration names the rest).
        #[arg(long, value_name = "URL")]
        cloud: String,
        /// A PEM file of the CA certificates the hub's https:// services are checked against,
        /// and only those (default: the system's trust store,
        /// /etc/ssl/certs/ca-certificates.crt).
        #[arg(long, value_name = "PATH")]
        cloud_ca: Option<PathBuf>,
        /// A file holding the user's bearer token for the hub (also $OCF_CLOUD_TOKEN); the
        /// devices onboarded belong to that user.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// A file holding a device authorisation code obtained elsewhere (e.g. a browser login
        /// at the hub's authorisation server); without it one is asked for with the token.
        #[arg(long, value_name = "PATH")]
        auth_code_file: Option<PathBuf>,
        #[command(flatten)]
        which: Which,
        /// A name for the device (set through its oic.wk.con resource, if it has one).
        #[arg(long)]
        name: Option<String>,
        /// Seconds to wait for discovery and for the registration.
        #[arg(long, default_value = "60", value_name = "SECS")]
        timeout: u64,
        /// Resources of the cloud's access rule, comma-separated: wildcards *, +, - and hrefs;
        /// {conf} stands for CoAPCloudConf's href.
        #[arg(long, value_name = "LIST", default_value = "*,/oic/mnt,{conf}")]
        cloud_ace: String,
    },
    /// Deregister a device from its cloud ({"cis":""} as its owner) and wait for `uninitialized`.
    Offboard {
        #[command(flatten)]
        which: Which,
        /// Seconds to wait for `uninitialized`.
        #[arg(long, default_value = "60", value_name = "SECS")]
        timeout: u64,
    },
    /// GET a resource of a device over its secure endpoint with the Mediator's certificate.
    Get {
        #[command(flatten)]
        which: Which,
        /// The path, with an optional ?query.
        path: String,
        #[arg(long, default_value = "10", value_name = "SECS")]
        timeout: u64,
    },
    /// POST a JSON body (sent as CBOR) to a resource of a device, with the Mediator's certificate.
    Post {
        #[command(flatten)]
        which: Which,
        path: String,
        /// The body, JSON.
        body: String,
        #[arg(long, default_value = "10", value_name = "SECS")]
        timeout: u64,
    },
    /// Print the Mediator's uuid and the paths of its certificate and key (creating them).
    Identity,
}

/// A secret from a file (trimmed), else from the environment variable `env` (if named).
fn read_secret(file: Option<PathBuf>, env: &str) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let s = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let s = s.trim().to_string();
        if s.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        return Ok(Some(s));
    }
    if env.is_empty() {
        return Ok(None);
    }
    Ok(std::env::var(env).ok().filter(|s| !s.trim().is_empty()))
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ocf-mediator: {what}: {e}");
    ExitCode::FAILURE
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ocf-mediator: {e}");
    ExitCode::from(2)
}

fn net(which: &Which) -> Net {
    Net {
        request_timeout: Duration::from_secs(10),
        discovery_port: which.discovery_port,
    }
}

fn load_identity(dir: &Option<PathBuf>) -> Result<Identity, String> {
    let dir = dir.clone().unwrap_or_else(default_dir);
    let (id, created) = Identity::load_or_create(&dir)?;
    if created {
        eprintln!(
            "ocf-mediator: created the Mediator identity uuid:{} in {}",
            id.uuid,
            dir.display()
        );
    }
    Ok(id)
}

fn read_pin(pin: Option<String>, pin_file: Option<PathBuf>) -> Result<Pin, String> {
    let text = match (pin, pin_file) {
        (Some(p), _) => p,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| format!("--pin-file {}: {e}", path.display()))?,
        (None, None) => return Err("give the device's setup PIN with --pin or --pin-file".into()),
    };
    Pin::new(&text).map_err(|e| format!("--pin: {e}"))
}

fn print_reply(reply: &tls::Reply) {
    println!("{} {:?}", reply.code_text(), reply.code());
    match reply.body() {
        Some(v) if reply.is_success() => match ocf::model::content::cbor_to_json(&v) {
            Ok(j) => println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default()),
            // No JSON form (a map key that is not text, say): the CBOR value as it is.
            Err(_) => println!("{v:?}"),
        },
        _ if !reply.response.payload.is_empty() => println!("{}", reply.diagnostic()),
        _ => {}
    }
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
                        let from = discover::answered_from(&f)
                            .map(|a| a.to_string())
                            .unwrap_or_default();
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
                Err(e) => fail("discover", e),
            }
        }
        Cmd::Onboard {
            pin,
            pin_file,
            otm,
            mfg_ca,
            mfg_over_tcp,
            cloud,
            cloud_ca,
            token_file,
            auth_code_file,
            which,
            name,
            timeout,
            cloud_ace,
        } => {
            use ocf_mediator::flow::OtmChoice;
            use ocf_mediator::standard_otm::Method;
            let otm = match otm.as_deref() {
                None | Some("spake2") => OtmChoice::Spake2,
                Some("rdp") => OtmChoice::Standard(Method::RandomPin),
                _ => OtmChoice::Standard(Method::MfgCert { tcp: mfg_over_tcp }),
            };
            let pin = if otm == OtmChoice::Spake2 || pin.is_some() || pin_file.is_some() {
                match read_pin(pin, pin_file) {
                    Ok(p) => Some(p),
                    Err(e) => return usage(e),
                }
            } else {
                None
            };
            let mfg_ca_pem = match (&otm, mfg_ca) {
                (OtmChoice::Standard(Method::MfgCert { .. }), None) => {
                    return usage("--otm mfg needs --mfg-ca PATH (the manufacturer's CA)")
                }
                (_, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(pem) if ocf::x509::certificates_from_pem(&pem).is_ok() => Some(pem),
                    Ok(_) => return usage(format!("{}: no PEM certificate", path.display())),
                    Err(e) => return usage(format!("{}: cannot read: {e}", path.display())),
                },
                (_, None) => None,
            };
            if mfg_over_tcp && !matches!(otm, OtmChoice::Standard(Method::MfgCert { .. })) {
                return usage("--mfg-over-tcp goes with --otm mfg");
            }
            let target = match Target::from_args(which.device.as_deref(), which.di.as_deref()) {
                Ok(t) => t,
                Err(e) => return usage(e),
            };
            if let Err(e) = ocf_mediator::cloud_api::parse_cloud_url(&cloud) {
                return usage(format!("--cloud: {e}"));
            }
            let cloud_trust = match cloud_ca {
                Some(path) => {
                    let trust = CloudTrust::CaFile(path);
                    // A bad file is a usage error, found before the device is touched.
                    if let Err(e) = trust.roots() {
                        return usage(e);
                    }
                    trust
                }
                None => CloudTrust::System,
            };
            let token = match read_secret(token_file, "OCF_CLOUD_TOKEN") {
                Ok(Some(t)) => match ocf_mediator::cloud_api::Token::new(&t) {
                    Ok(t) => Some(t),
                    Err(e) => return usage(format!("--token-file: {e}")),
                },
                Ok(None) => None,
                Err(e) => return usage(e),
            };
            let auth_code = match read_secret(auth_code_file, "") {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            if token.is_none() && auth_code.is_none() {
                return usage("onboard needs the hub user's bearer token: --token-file PATH or $OCF_CLOUD_TOKEN");
            }
            let identity = match load_identity(&cli.identity) {
                Ok(i) => i,
                Err(e) => return fail("identity", e),
            };
            let args = OnboardArgs {
                pin,
                otm,
                mfg_ca_pem,
                cloud,
                cloud_trust,
                target,
                name,
                timeout: Duration::from_secs(timeout.max(1)),
                token,
                auth_code,
                cloud_ace: Some(cloud_ace),
                net: net(&which),
            };
            match flow::onboard(&identity, &args) {
                Ok(Outcome::Registered { .. }) => ExitCode::SUCCESS,
                Ok(Outcome::Failed { .. }) => ExitCode::FAILURE,
                Err(e) => fail("onboard", e),
            }
        }
        Cmd::Offboard { which, timeout } => {
            let target = match Target::from_args(which.device.as_deref(), which.di.as_deref()) {
                Ok(t) => t,
                Err(e) => return usage(e),
            };
            let identity = match load_identity(&cli.identity) {
                Ok(i) => i,
                Err(e) => return fail("identity", e),
            };
            match flow::offboard(
                &identity,
                &target,
                Duration::from_secs(timeout.max(1)),
                &net(&which),
            ) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail("offboard", e),
            }
        }
        Cmd::Get {
            which,
            path,
            timeout,
        } => one_request(&cli.identity, &which, Method::Get, &path, None, timeout),
        Cmd::Post {
            which,
            path,
            body,
            timeout,
        } => one_request(
            &cli.identity,
            &which,
            Method::Post,
            &path,
            Some(&body),
            timeout,
        ),
        Cmd::Identity => match load_identity(&cli.identity) {
            Ok(id) => {
                println!("uuid {}", id.uuid);
                println!("certificate {}", id.cert_path().display());
                println!("key {}", id.key_path().display());
                println!("key sha256 {}", id.spki_sha256);
                ExitCode::SUCCESS
            }
            Err(e) => fail("identity", e),
        },
    }
}

fn one_request(
    identity: &Option<PathBuf>,
    which: &Which,
    method: Method,
    path: &str,
    body: Option<&str>,
    timeout: u64,
) -> ExitCode {
    let target = match Target::from_args(which.device.as_deref(), which.di.as_deref()) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if !path.starts_with('/') {
        return usage(format!("the path {path:?} must start with /"));
    }
    let identity = match load_identity(identity) {
        Ok(i) => i,
        Err(e) => return fail("identity", e),
    };
    let mut n = net(which);
    n.request_timeout = Duration::from_secs(timeout.max(1));
    match flow::request(
        &identity,
        &target,
        method,
        path,
        body,
        Duration::from_secs(timeout.max(1)),
        &n,
    ) {
        Ok(reply) => {
            print_reply(&reply);
            if reply.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => fail(if method == Method::Get { "get" } else { "post" }, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ocf-mediator").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn onboard_needs_a_pin_a_cloud_and_one_device() {
        let ok = parse(&[
            "--identity",
            "/tmp/x",
            "onboard",
            "--pin",
            "12345678",
            "--cloud",
            "http://h:1",
            "--device",
            "coaps+tcp://127.0.0.1:9",
        ])
        .unwrap();
        assert_eq!(ok.identity.as_deref(), Some(std::path::Path::new("/tmp/x")));
        let Cmd::Onboard {
            timeout,
            cloud_ace,
            which,
            ..
        } = ok.command
        else {
            panic!()
        };
        assert_eq!(
            (timeout, cloud_ace.as_str(), which.discovery_port),
            (60, "*,/oic/mnt,{conf}", 5683)
        );
        // The identity directory may come after the subcommand too.
        assert!(parse(&[
            "onboard",
            "--pin-file",
            "p",
            "--cloud",
            "c",
            "--di",
            "d",
            "--identity",
            "/tmp/y"
        ])
        .is_ok());
        for bad in [
            &["onboard", "--cloud", "c", "--device", "e"][..],
            &["onboard", "--pin", "1", "--device", "e"],
            &["onboard", "--pin", "1", "--cloud", "c"],
            &[
                "onboard", "--pin", "1", "--cloud", "c", "--device", "e", "--di", "d",
            ],
            &[
                "onboard",
                "--pin",
                "1",
                "--pin-file",
                "f",
                "--cloud",
                "c",
                "--device",
                "e",
            ],
            &["offboard"],
            &["get", "--device", "e"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_about_the_pin_do_not_echo_it() {
        let e = read_pin(Some("12a45".into()), None).unwrap_err();
        assert!(!e.contains("12a45"), "{e}");
        assert!(read_pin(Some(" 12345678\n".into()), None).is_ok());
        let dir = std::env::temp_dir().join(format!("ocf-mediator-pin-{}", std::process::id()));
        std::fs::write(&dir, "87654321\n").unwrap();
        assert_eq!(
            read_pin(None, Some(dir.clone())).unwrap().expose(),
            "87654321"
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(read_pin(None, Some(dir)).is_err());
    }
}
