//! The command line, parsed by hand: clap's derive cost about 100 KB of code, and on the board
//! RSS follows binary size (README.md, "Performance"). The behaviour follows what clap did:
//! `--flag VALUE` and `--flag=VALUE`, `-h`/`--help`, `-V`/`--version`, a `help [COMMAND]`
//! subcommand, errors that name the offending argument followed by a hint, exit status 2 for a
//! usage error.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

const NAME: &str = "ocf-agent";
const DEFAULT_STATE_DIR: &str = "/var/lib/ocf-agent";

const USAGE: &str = "Usage: ocf-agent [OPTIONS] [COMMAND]";
const CSR_USAGE: &str = "Usage: ocf-agent csr [OPTIONS]";
const RESET_USAGE: &str = "Usage: ocf-agent factory-reset [OPTIONS]";
const DEFAULT_REBOOT_COMMAND: &str = "systemctl reboot";
const DEFAULT_REBOOT_TIMEOUT_SECS: u64 = 120;

const HELP: &str = concat!(
    env!("CARGO_PKG_DESCRIPTION"),
    "\n\nUsage: ocf-agent [OPTIONS] [COMMAND]

Commands:
  csr            Print a PKCS#10 CSR (PEM, CN uuid:<di>) for the identity key, creating it if needed
  factory-reset  Factory-reset the device (the console's way; the owner and the cloud use /oic/mnt)
  help           Print this message or the help of the given subcommand(s)

Options:
      --board <BOARD>          Board description: a built-in name (sim, rpi4, rpi5, qemu-raspi3b) or a TOML file [default: sim]
      --state-dir <STATE_DIR>  Directory for identity, credentials and configuration [default: /var/lib/ocf-agent]
      --udp <ADDR:PORT>        CoAP over UDP unicast address; may be given more than once
      --tls <ADDR:PORT>        The secure local endpoint: CoAP over TLS over TCP (coaps+tcp) [default: 0.0.0.0:5684]
      --dtls <ADDR:PORT>       CoAP over DTLS (coaps), for OCF's standard ownership transfer and PSK sessions, or \"off\" [default: 0.0.0.0:5684]
      --standard-otm <LIST>    OCF's ownership transfer methods offered besides SPAKE2 (always offered): rdp (Random PIN, needs the DTLS endpoint), mfg (Manufacturer Certificate, needs one), comma-separated, or \"none\" [default: rdp,mfg]
      --tcp <ADDR:PORT>        CoAP over TCP without TLS: only opened with --insecure-dev [default: 0.0.0.0:5683]
      --insecure-dev           Development mode, like iotivity-lite built without security: also opens the plain coap+tcp listener, serves everything on it and on UDP without access control, and runs the cloud link without onboarding (with the interim files identity.crt, cloud-ca.pem). Never in production
      --pin-file <PATH>        Setup PIN (factory data): the first line of this file, 8 digits. Default: STATE/pin, made with a random PIN (printed once) if missing
      --mfg-cert <PATH>        Manufacturer certificate chain (PEM) for the secure endpoint [default: STATE/mfg.crt]
      --mfg-key <PATH>         The manufacturer certificate's private key (PEM) [default: STATE/mfg.key]
      --multicast <MULTICAST>  Port of the OCF multicast groups (224.0.1.187, ff02::158), or \"off\" [default: 5683]
      --reboot-command <CMD>   What /oic/mnt rb runs (through /bin/sh -c, with OCF_AGENT_PID set) after signing out of the cloud [default: systemctl reboot]
      --reboot-timeout <SECS>  How long to wait to be stopped after the reboot command succeeded; then the reboot counts as failed and the agent signs in again [default: 120]
      --reboot-exit-status <STATUS>
                               Instead of a reboot command, /oic/mnt rb signs out of the cloud, syncs, tells systemd STOPPING=1 and exits with STATUS (1-255), for a service manager that reboots on it (an unprivileged service cannot reboot itself). Not with --reboot-command
  -h, --help                   Print help
  -V, --version                Print version
"
);

const CSR_HELP: &str = "\
Print a PKCS#10 CSR (PEM, CN uuid:<di>) for the identity key, creating it if needed

Usage: ocf-agent csr [OPTIONS]

Options:
      --state-dir <STATE_DIR>  Directory for identity, credentials and configuration [default: /var/lib/ocf-agent]
  -h, --help                   Print help
";

const RESET_HELP: &str = "\
Factory-reset the device: deregister from the cloud, wipe the cloud configuration, credentials, \
access control and ownership, make a new identity key and di, and come back unowned (RFOTM). With \
the agent running, the agent does it (through STATE/control.sock) and the cloud is told; with the \
agent stopped, the state directory is reset here and the cloud is not told.

Usage: ocf-agent factory-reset [OPTIONS]

Options:
      --state-dir <STATE_DIR>  Directory for identity, credentials and configuration [default: /var/lib/ocf-agent]
  -h, --help                   Print help
";

/// The agent's options (see `HELP` for their meaning).
#[derive(Debug)]
pub struct Cli {
    pub board: String,
    pub state_dir: PathBuf,
    pub udp: Vec<SocketAddr>,
    pub tls: SocketAddr,
    pub tcp: Option<SocketAddr>,
    /// `--dtls`; `None` is "off".
    pub dtls: Option<SocketAddr>,
    /// `--standard-otm`: Random PIN, Manufacturer Certificate.
    pub standard_otm: StandardOtm,
    pub insecure_dev: bool,
    pub pin_file: Option<PathBuf>,
    pub mfg_cert: Option<PathBuf>,
    pub mfg_key: Option<PathBuf>,
    pub multicast: String,
    pub reboot_command: String,
    pub reboot_timeout: std::time::Duration,
    /// `--reboot-exit-status`: on `rb`, exit with this status instead of running
    /// `reboot_command` (never 0: that would read as a clean stop).
    pub reboot_exit_status: Option<u8>,
    /// Cloud link timers for tests, `KEY=VALUE,...` (see cloud::parse_timing); not in the help.
    pub cloud_timing: Option<String>,
    pub command: Option<Command>,
}

/// OCF's standard ownership transfer methods the device may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardOtm {
    pub random_pin: bool,
    pub mfg_cert: bool,
}

impl std::str::FromStr for StandardOtm {
    type Err = String;

    fn from_str(s: &str) -> Result<StandardOtm, String> {
        let mut m = StandardOtm {
            random_pin: false,
            mfg_cert: false,
        };
        if s == "none" {
            return Ok(m);
        }
        for part in s.split(',') {
            match part.trim() {
                "rdp" => m.random_pin = true,
                "mfg" => m.mfg_cert = true,
                other => {
                    return Err(format!(
                        "{other:?} is not a method: use rdp, mfg or none (spake2 is always offered)"
                    ))
                }
            }
        }
        Ok(m)
    }
}

#[derive(Debug)]
pub enum Command {
    /// Print a CSR for the identity key (`csr --state-dir DIR`).
    Csr { state_dir: PathBuf },
    /// Factory-reset the device (`factory-reset --state-dir DIR`).
    FactoryReset { state_dir: PathBuf },
}

impl Cli {
    /// Parses the process's arguments; prints help, the version or a usage error and exits
    /// (status 0, 0 and 2) where clap did.
    pub fn parse() -> Cli {
        match Self::parse_from(std::env::args_os().skip(1).collect()) {
            Ok(cli) => cli,
            Err(Exit::Print(text)) => {
                print!("{text}");
                std::process::exit(0)
            }
            Err(Exit::Usage { message, usage }) => {
                eprint!("error: {message}\n\n");
                if let Some(usage) = usage {
                    eprint!("{usage}\n\n");
                }
                eprintln!("For more information, try '--help'.");
                std::process::exit(2)
            }
        }
    }

    fn parse_from(args: Vec<OsString>) -> Result<Cli, Exit> {
        let mut cli = Cli {
            board: "sim".into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            udp: Vec::new(),
            tls: SocketAddr::from(([0, 0, 0, 0], 5684)),
            tcp: None,
            dtls: Some(SocketAddr::from(([0, 0, 0, 0], 5684))),
            standard_otm: StandardOtm {
                random_pin: true,
                mfg_cert: true,
            },
            insecure_dev: false,
            pin_file: None,
            mfg_cert: None,
            mfg_key: None,
            multicast: "5683".into(),
            reboot_command: DEFAULT_REBOOT_COMMAND.into(),
            reboot_timeout: std::time::Duration::from_secs(DEFAULT_REBOOT_TIMEOUT_SECS),
            reboot_exit_status: None,
            cloud_timing: None,
            command: None,
        };
        let mut reboot_command_given = false;
        let mut args = Args::new(args);
        while let Some(arg) = args.next_arg(USAGE)? {
            match arg {
                Arg::Flag(flag) => match flag.as_str() {
                    "--board" => cli.board = args.value(&flag, "BOARD")?,
                    "--state-dir" => cli.state_dir = args.value(&flag, "STATE_DIR")?.into(),
                    "--udp" => cli.udp.push(args.parsed(&flag, "ADDR:PORT")?),
                    "--tls" => cli.tls = args.parsed(&flag, "ADDR:PORT")?,
                    "--tcp" => cli.tcp = Some(args.parsed(&flag, "ADDR:PORT")?),
                    "--dtls" => {
                        cli.dtls = match args.value(&flag, "ADDR:PORT")?.as_str() {
                            "off" => None,
                            v => Some(v.parse().map_err(|e| Exit::Usage {
                                message: format!(
                                    "invalid value '{v}' for '{flag} <ADDR:PORT>': {e}"
                                ),
                                usage: None,
                            })?),
                        }
                    }
                    "--standard-otm" => {
                        let v = args.value(&flag, "LIST")?;
                        cli.standard_otm = v.parse().map_err(|e| Exit::Usage {
                            message: format!("invalid value '{v}' for '{flag} <LIST>': {e}"),
                            usage: None,
                        })?;
                    }
                    "--insecure-dev" => {
                        args.no_value(&flag)?;
                        cli.insecure_dev = true;
                    }
                    "--pin-file" => cli.pin_file = Some(args.value(&flag, "PATH")?.into()),
                    "--mfg-cert" => cli.mfg_cert = Some(args.value(&flag, "PATH")?.into()),
                    "--mfg-key" => cli.mfg_key = Some(args.value(&flag, "PATH")?.into()),
                    "--multicast" => cli.multicast = args.value(&flag, "MULTICAST")?,
                    "--reboot-command" => {
                        let cmd = args.value(&flag, "CMD")?;
                        if cmd.trim().is_empty() {
                            return Err(Exit::Usage {
                                message: format!(
                                    "invalid value '' for '{flag} <CMD>': empty command"
                                ),
                                usage: None,
                            });
                        }
                        cli.reboot_command = cmd;
                        reboot_command_given = true;
                    }
                    "--reboot-exit-status" => {
                        let status: u8 = args.parsed(&flag, "STATUS")?;
                        if status == 0 {
                            return Err(Exit::Usage {
                                message: format!(
                                    "invalid value '0' for '{flag} <STATUS>': 0 means a clean \
                                     stop, not a reboot; use 1-255"
                                ),
                                usage: None,
                            });
                        }
                        cli.reboot_exit_status = Some(status);
                    }
                    "--reboot-timeout" => {
                        let secs: u64 = args.parsed(&flag, "SECS")?;
                        cli.reboot_timeout = std::time::Duration::from_secs(secs);
                    }
                    "--cloud-timing" => {
                        cli.cloud_timing = Some(args.value(&flag, "KEY=VALUE,...")?)
                    }
                    "-h" | "--help" => return Err(Exit::Print(HELP.into())),
                    "-V" | "--version" => {
                        return Err(Exit::Print(format!(
                            "{NAME} {}\n",
                            env!("CARGO_PKG_VERSION")
                        )));
                    }
                    _ => return Err(Exit::unexpected(&flag, USAGE)),
                },
                Arg::Word(word) => {
                    match word.as_str() {
                        "csr" => cli.command = Some(parse_csr(&mut args)?),
                        "factory-reset" => cli.command = Some(parse_reset(&mut args)?),
                        "help" => return Err(Exit::Print(help_for(&mut args)?)),
                        _ => {
                            return Err(Exit::Usage {
                                message: format!("unrecognized subcommand '{word}'"),
                                usage: Some(USAGE.into()),
                            });
                        }
                    }
                    // Nothing may follow a subcommand's own arguments.
                    break;
                }
            }
        }
        if reboot_command_given && cli.reboot_exit_status.is_some() {
            return Err(Exit::Usage {
                message: "the argument '--reboot-exit-status <STATUS>' cannot be used with \
                          '--reboot-command <CMD>': the reboot is either the command's or the \
                          service manager's"
                    .into(),
                usage: Some("Usage: ocf-agent --reboot-exit-status <STATUS>".into()),
            });
        }
        match (&cli.mfg_cert, &cli.mfg_key) {
            (Some(_), None) => Err(Exit::missing("--mfg-key <PATH>")),
            (None, Some(_)) => Err(Exit::missing("--mfg-cert <PATH>")),
            _ => Ok(cli),
        }
    }
}

/// `csr [--state-dir DIR]`.
fn parse_csr(args: &mut Args) -> Result<Command, Exit> {
    let mut state_dir = PathBuf::from(DEFAULT_STATE_DIR);
    while let Some(arg) = args.next_arg(CSR_USAGE)? {
        match arg {
            Arg::Flag(flag) => match flag.as_str() {
                "--state-dir" => state_dir = args.value(&flag, "STATE_DIR")?.into(),
                "-h" | "--help" => return Err(Exit::Print(CSR_HELP.into())),
                _ => return Err(Exit::unexpected(&flag, CSR_USAGE)),
            },
            Arg::Word(word) => return Err(Exit::unexpected(&word, CSR_USAGE)),
        }
    }
    Ok(Command::Csr { state_dir })
}

/// `factory-reset [--state-dir DIR]`.
fn parse_reset(args: &mut Args) -> Result<Command, Exit> {
    let mut state_dir = PathBuf::from(DEFAULT_STATE_DIR);
    while let Some(arg) = args.next_arg(RESET_USAGE)? {
        match arg {
            Arg::Flag(flag) => match flag.as_str() {
                "--state-dir" => state_dir = args.value(&flag, "STATE_DIR")?.into(),
                "-h" | "--help" => return Err(Exit::Print(RESET_HELP.into())),
                _ => return Err(Exit::unexpected(&flag, RESET_USAGE)),
            },
            Arg::Word(word) => return Err(Exit::unexpected(&word, RESET_USAGE)),
        }
    }
    Ok(Command::FactoryReset { state_dir })
}

/// `help [COMMAND]`.
fn help_for(args: &mut Args) -> Result<String, Exit> {
    let usage = "Usage: ocf-agent help [COMMAND]...";
    let text = match args.next_arg(usage)? {
        None => HELP,
        Some(Arg::Word(w)) if w == "csr" => CSR_HELP,
        Some(Arg::Word(w)) if w == "factory-reset" => RESET_HELP,
        Some(Arg::Word(w)) if w == "help" => HELP,
        Some(Arg::Word(w)) => {
            return Err(Exit::Usage {
                message: format!("unrecognized subcommand '{w}'"),
                usage: Some(usage.into()),
            });
        }
        Some(Arg::Flag(f)) => return Err(Exit::unexpected(&f, usage)),
    };
    Ok(text.into())
}

/// How parsing ends when the agent is not to run.
enum Exit {
    /// Help or version text, to stdout with status 0.
    Print(String),
    /// A usage error, to stderr with status 2.
    Usage {
        message: String,
        usage: Option<String>,
    },
}

impl Exit {
    fn unexpected(arg: &str, usage: &str) -> Exit {
        Exit::Usage {
            message: format!("unexpected argument '{arg}' found"),
            usage: Some(usage.into()),
        }
    }

    fn missing(arg: &str) -> Exit {
        Exit::Usage {
            message: format!("the following required arguments were not provided:\n  {arg}"),
            usage: Some("Usage: ocf-agent --mfg-cert <PATH> --mfg-key <PATH>".into()),
        }
    }
}

/// One command-line item: a flag (`--name`, `-x`; a `--name=value` keeps its value aside) or a
/// plain word.
enum Arg {
    Flag(String),
    Word(String),
}

/// The argument stream, with the inline value of the last `--flag=value` if any.
struct Args {
    rest: std::iter::Peekable<std::vec::IntoIter<OsString>>,
    inline: Option<String>,
    /// After `--`, everything is a plain word.
    words_only: bool,
}

impl Args {
    fn new(args: Vec<OsString>) -> Self {
        Args {
            rest: args.into_iter().peekable(),
            inline: None,
            words_only: false,
        }
    }

    fn next_arg(&mut self, usage: &str) -> Result<Option<Arg>, Exit> {
        // A `--flag=value` whose flag took no value has been reported by `no_value`.
        self.inline = None;
        loop {
            let Some(raw) = self.rest.next() else {
                return Ok(None);
            };
            let arg = utf8(raw)?;
            if self.words_only {
                return Ok(Some(Arg::Word(arg)));
            }
            if arg == "--" {
                self.words_only = true;
                continue;
            }
            if let Some(body) = arg.strip_prefix("--") {
                return Ok(Some(match body.split_once('=') {
                    Some((name, value)) => {
                        self.inline = Some(value.to_string());
                        Arg::Flag(format!("--{name}"))
                    }
                    None => Arg::Flag(arg),
                }));
            }
            if arg.len() > 1 && arg.starts_with('-') {
                return match arg.as_str() {
                    "-h" | "-V" => Ok(Some(Arg::Flag(arg))),
                    _ => Err(Exit::unexpected(&arg, usage)),
                };
            }
            return Ok(Some(Arg::Word(arg)));
        }
    }

    /// The value of `flag`: inline (`--flag=value`) or the next argument, which must not look
    /// like a flag.
    fn value(&mut self, flag: &str, name: &str) -> Result<String, Exit> {
        if let Some(value) = self.inline.take() {
            return Ok(value);
        }
        let looks_like_flag = |a: &OsString| a.len() > 1 && a.as_encoded_bytes().starts_with(b"-");
        match self.rest.next_if(|a| !looks_like_flag(a)) {
            Some(raw) => utf8(raw),
            None => Err(Exit::Usage {
                message: format!("a value is required for '{flag} <{name}>' but none was supplied"),
                usage: None,
            }),
        }
    }

    /// The value of `flag`, parsed (socket addresses).
    fn parsed<T: std::str::FromStr>(&mut self, flag: &str, name: &str) -> Result<T, Exit>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.value(flag, name)?;
        value.parse().map_err(|e| Exit::Usage {
            message: format!("invalid value '{value}' for '{flag} <{name}>': {e}"),
            usage: None,
        })
    }

    /// For a switch: refuses `--switch=value`.
    fn no_value(&mut self, flag: &str) -> Result<(), Exit> {
        match self.inline.take() {
            None => Ok(()),
            Some(value) => Err(Exit::Usage {
                message: format!(
                    "unexpected value '{value}' for '{flag}' found; no more were expected"
                ),
                usage: Some(format!("Usage: ocf-agent {flag}")),
            }),
        }
    }
}

fn utf8(arg: OsString) -> Result<String, Exit> {
    arg.into_string().map_err(|a| Exit::Usage {
        message: format!(
            "invalid UTF-8 was detected in one or more arguments: {}",
            a.to_string_lossy()
        ),
        usage: None,
    })
}

/// Runs `Cli::parse`'s logic on a list of strings, for the tests.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Cli, Exit> {
    Cli::parse_from(args.iter().map(OsString::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_error(args: &[&str]) -> String {
        match parse(args) {
            Err(Exit::Usage { message, .. }) => message,
            Err(Exit::Print(_)) => panic!("{args:?}: printed help"),
            Ok(cli) => panic!("{args:?}: accepted as {cli:?}"),
        }
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]).ok().unwrap();
        assert_eq!(cli.board, "sim");
        assert_eq!(cli.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(cli.tls, "0.0.0.0:5684".parse().unwrap());
        assert_eq!(cli.multicast, "5683");
        assert_eq!(cli.reboot_command, "systemctl reboot");
        assert_eq!(cli.reboot_timeout, std::time::Duration::from_secs(120));
        assert_eq!(cli.reboot_exit_status, None);
        assert_eq!(cli.dtls, Some("0.0.0.0:5684".parse().unwrap()));
        assert_eq!(
            cli.standard_otm,
            StandardOtm {
                random_pin: true,
                mfg_cert: true
            }
        );
        assert!(
            cli.udp.is_empty() && cli.tcp.is_none() && !cli.insecure_dev && cli.command.is_none()
        );
    }

    #[test]
    fn every_flag() {
        let cli = parse(&[
            "--board=rpi4",
            "--state-dir",
            "/tmp/s",
            "--udp",
            "127.0.0.1:1",
            "--udp=[::1]:2",
            "--tls",
            "127.0.0.1:3",
            "--tcp",
            "127.0.0.1:4",
            "--insecure-dev",
            "--pin-file",
            "/p",
            "--mfg-cert",
            "/c",
            "--mfg-key",
            "/k",
            "--multicast",
            "off",
            "--cloud-timing",
            "a=1",
            "--reboot-command",
            "kill -TERM $OCF_AGENT_PID",
            "--reboot-timeout=5",
            "--dtls",
            "127.0.0.1:5",
            "--standard-otm=mfg",
        ])
        .ok()
        .unwrap();
        assert_eq!(cli.dtls, Some("127.0.0.1:5".parse().unwrap()));
        assert!(cli.standard_otm.mfg_cert && !cli.standard_otm.random_pin);
        let off = parse(&["--dtls", "off", "--standard-otm", "none"])
            .ok()
            .unwrap();
        assert_eq!(off.dtls, None);
        assert!(!off.standard_otm.mfg_cert && !off.standard_otm.random_pin);
        assert!(usage_error(&["--standard-otm", "rdp,jw"]).contains("\"jw\" is not a method"));
        assert!(usage_error(&["--dtls", "nowhere"]).contains("'--dtls <ADDR:PORT>'"));
        assert_eq!(cli.reboot_command, "kill -TERM $OCF_AGENT_PID");
        assert_eq!(cli.reboot_timeout, std::time::Duration::from_secs(5));
        assert_eq!(cli.board, "rpi4");
        assert_eq!(cli.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(cli.udp.len(), 2);
        assert_eq!(cli.tcp, Some("127.0.0.1:4".parse().unwrap()));
        assert!(cli.insecure_dev);
        assert_eq!(cli.mfg_key, Some(PathBuf::from("/k")));
        assert_eq!(cli.multicast, "off");
        assert_eq!(cli.cloud_timing.as_deref(), Some("a=1"));
    }

    #[test]
    fn csr() {
        let cli = parse(&["csr", "--state-dir", "/x"]).ok().unwrap();
        assert!(
            matches!(cli.command, Some(Command::Csr { state_dir }) if state_dir == std::path::Path::new("/x"))
        );
        assert!(matches!(parse(&["csr", "--help"]), Err(Exit::Print(t)) if t == CSR_HELP));
        assert_eq!(
            usage_error(&["csr", "--board", "sim"]),
            "unexpected argument '--board' found"
        );
    }

    #[test]
    fn factory_reset() {
        let cli = parse(&["factory-reset", "--state-dir=/x"]).ok().unwrap();
        assert!(
            matches!(cli.command, Some(Command::FactoryReset { state_dir }) if state_dir == std::path::Path::new("/x"))
        );
        assert!(
            matches!(parse(&["help", "factory-reset"]), Err(Exit::Print(t)) if t == RESET_HELP)
        );
        assert_eq!(
            usage_error(&["factory-reset", "now"]),
            "unexpected argument 'now' found"
        );
        assert!(usage_error(&["--reboot-command", " "]).contains("empty command"));
        assert!(usage_error(&["--reboot-timeout", "soon"]).contains("--reboot-timeout <SECS>"));
    }

    #[test]
    fn reboot_exit_status() {
        for (arg, status) in [("1", 1), ("85", 85), ("255", 255)] {
            let cli = parse(&["--reboot-exit-status", arg]).ok().unwrap();
            assert_eq!(cli.reboot_exit_status, Some(status));
            // The default command stays, unused.
            assert_eq!(cli.reboot_command, DEFAULT_REBOOT_COMMAND);
        }
        let cli = parse(&["--reboot-exit-status=85", "--reboot-timeout", "5"])
            .ok()
            .unwrap();
        assert_eq!(cli.reboot_exit_status, Some(85));
        assert!(usage_error(&["--reboot-exit-status", "0"]).contains("1-255"));
        for bad in ["256", "-1", "x", ""] {
            let e = usage_error(&["--reboot-exit-status", bad]);
            assert!(e.contains("'--reboot-exit-status <STATUS>'"), "{bad}: {e}");
        }
        assert!(usage_error(&["--reboot-exit-status"]).contains("a value is required"));
        // Either the command's reboot or the service manager's, in either order.
        for args in [
            &["--reboot-exit-status", "85", "--reboot-command", "reboot"][..],
            &["--reboot-command=reboot", "--reboot-exit-status=85"],
        ] {
            assert_eq!(
                usage_error(args),
                "the argument '--reboot-exit-status <STATUS>' cannot be used with \
                 '--reboot-command <CMD>': the reboot is either the command's or the service \
                 manager's"
            );
        }
        assert!(HELP.contains("--reboot-exit-status <STATUS>"));
    }

    #[test]
    fn errors_name_the_argument() {
        assert_eq!(
            usage_error(&["--bogus"]),
            "unexpected argument '--bogus' found"
        );
        assert_eq!(
            usage_error(&["--tls", "foo"]),
            "invalid value 'foo' for '--tls <ADDR:PORT>': invalid socket address syntax"
        );
        assert_eq!(
            usage_error(&["--board"]),
            "a value is required for '--board <BOARD>' but none was supplied"
        );
        assert_eq!(
            usage_error(&["--board", "--insecure-dev"]),
            "a value is required for '--board <BOARD>' but none was supplied"
        );
        assert!(usage_error(&["--mfg-cert", "x"]).contains("--mfg-key <PATH>"));
        assert_eq!(
            usage_error(&["--insecure-dev=1"]),
            "unexpected value '1' for '--insecure-dev' found; no more were expected"
        );
        assert_eq!(usage_error(&["foo"]), "unrecognized subcommand 'foo'");
    }

    #[test]
    fn help_and_version() {
        for args in [&["--help"][..], &["-h"], &["help"]] {
            assert!(matches!(parse(args), Err(Exit::Print(t)) if t == HELP));
        }
        assert!(matches!(parse(&["help", "csr"]), Err(Exit::Print(t)) if t == CSR_HELP));
        assert!(matches!(parse(&["-V"]), Err(Exit::Print(t)) if t.starts_with("ocf-agent ")));
    }
}
