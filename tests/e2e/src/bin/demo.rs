//! `ocf-demo` (what `cargo xtask demo` runs): the first boot of a device as a user would see it,
//! on 127.0.0.1 with ports the OS picks. It starts the development cloud (`ocf-dev-cloud`) and
//! the agent on the simulated board in its secure mode (`ocf-agent --board sim`, no
//! `--insecure-dev`: a coaps+tcp endpoint, UDP for discovery only). It prints the web console's
//! address first (with a development token of the demo's user), so that a person can watch the
//! device come online there, then shows the setup PIN the agent prints once (what the label on
//! a board would carry), onboards the device with the Mediator (`ocf-mediator onboard --pin PIN
//! --cloud URL --token-file PATH --device EP`, its `[n/9]` progress lines shown as they come),
//! then shows the registration and the published links, switches the switch once through the
//! cloud, and prints the temperature and humidity read from the cloud's shadow through its API
//! (plgd hub's shape) every 2 s until Ctrl-C, which stops both processes (SIGTERM by PID) and
//! exits 0.
//!
//! ```text
//! ocf-demo [--dir DIR] [--keep] [--readings N]
//! ```
//!
//! - `--dir`: where the cloud's data (`DIR/cloud`), the agent's state (`DIR/agent`), the
//!   Mediator's identity (`DIR/mediator`) and the logs (`DIR/cloud.log`, `DIR/agent.log`) go;
//!   default `demo` beside the target directory's profile directory (`target/demo`). Emptied at
//!   start unless `--keep`.
//! - `--keep`: keep the previous run's state: the cloud listens on the same ports again (from
//!   `DIR/demo.json`), and if the device is still owned by the Mediator and registered with this
//!   cloud (its CoAPCloudConf, read as the owner), it just signs back in: no onboarding. If that
//!   cannot be, the demo says why and starts fresh.
//! - `--readings N`: stop after N readings (non-interactive use, the smoke test).
//!
//! If a step fails, it says which and why, stops both processes and exits 1. Children run in
//! their own process group (the terminal's Ctrl-C reaches only this process, which stops them
//! in order) and get SIGTERM from the kernel should this process die first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use ocf_e2e::cloud::{online, write_private, DevCloud};
use ocf_e2e::{bin_dir, log_tail, signals, Agent, Spawn, Spawned};
use serde_json::{json, Value as Json};

const USAGE: &str = "usage: ocf-demo [--dir DIR] [--keep] [--readings N]";
/// Between two readings.
const INTERVAL: Duration = Duration::from_secs(2);
/// Consecutive failed readings before the demo gives up.
const MAX_FAILED_READINGS: u32 = 5;
/// The CoAPCloudConf resource of the agent.
const CLOUD_CONF: &str = "/CoapCloudConfResURI";
/// The Mediator's `--timeout` for the onboarding (mostly: the wait for `registered`), in s.
const ONBOARD_TIMEOUT: u64 = 30;

// -------------------------------------------------------------------------------------------
// Signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP only set a flag; every wait checks it.
// -------------------------------------------------------------------------------------------

fn interrupted() -> bool {
    signals::caught().is_some()
}

// -------------------------------------------------------------------------------------------
// Outcome of a run.
// -------------------------------------------------------------------------------------------

enum Stop {
    /// Ctrl-C or SIGTERM: a clean stop.
    Interrupted,
    /// A step failed.
    Failed { step: &'static str, why: String },
}

type Step<T> = Result<T, Stop>;

/// Tags an error with the step it happened in (or, after Ctrl-C, takes it for the stop it
/// probably is). A success is passed on even after Ctrl-C, so that a child just started is
/// owned, and then stopped in order, rather than dropped.
fn step<T>(name: &'static str, r: Result<T, String>) -> Step<T> {
    r.map_err(|why| {
        if interrupted() {
            Stop::Interrupted
        } else {
            Stop::Failed { step: name, why }
        }
    })
}

fn check_interrupt() -> Step<()> {
    if interrupted() {
        Err(Stop::Interrupted)
    } else {
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// Command line.
// -------------------------------------------------------------------------------------------

struct Args {
    dir: PathBuf,
    keep: bool,
    readings: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: default_dir(),
        keep: false,
        readings: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => args.dir = it.next().ok_or("--dir needs a directory")?.into(),
            "--keep" => args.keep = true,
            "--readings" => {
                let n = it.next().ok_or("--readings needs a number")?;
                args.readings = Some(
                    n.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(format!("--readings: {n:?} is not a positive number"))?,
                );
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// `target/demo` when the binary is `target/<profile>/ocf-demo`.
fn default_dir() -> PathBuf {
    let bins = bin_dir();
    bins.parent()
        .map(|t| t.join("demo"))
        .unwrap_or_else(|| bins.join("demo"))
}

/// `path` relative to the working directory when it is below it, for shorter lines.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// A command line as one could paste it into a shell (arguments with JSON or spaces quoted).
fn command_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        if a.chars().any(|c| " {}\"'$*?;&|<>()".contains(c)) {
            line.push_str(&format!("'{}'", a.replace('\'', r"'\''")));
        } else {
            line.push_str(a);
        }
    }
    line
}

/// The last non-empty line of `lines`, trimmed.
fn last_line(lines: &[String]) -> Option<&str> {
    lines.iter().rev().map(|l| l.trim()).find(|l| !l.is_empty())
}

// -------------------------------------------------------------------------------------------
// The demo.
// -------------------------------------------------------------------------------------------

struct Demo {
    args: Args,
    cloud: Option<DevCloud>,
    agent: Option<Agent>,
    /// When the current agent process was started.
    agent_started: Instant,
}

/// The cloud's listeners, remembered in `DIR/demo.json` for `--keep`.
struct Ports {
    coaps: String,
    http: String,
}

/// One finished `ocf-mediator` run.
struct MediatorRun {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Demo {
    fn cloud_dir(&self) -> PathBuf {
        self.args.dir.join("cloud")
    }
    fn state_dir(&self) -> PathBuf {
        self.args.dir.join("agent")
    }
    fn mediator_dir(&self) -> PathBuf {
        self.args.dir.join("mediator")
    }
    fn cloud_log(&self) -> PathBuf {
        self.args.dir.join("cloud.log")
    }
    fn agent_log(&self) -> PathBuf {
        self.args.dir.join("agent.log")
    }
    fn ports_file(&self) -> PathBuf {
        self.args.dir.join("demo.json")
    }
    /// The Mediator as the user would run it (path relative to the working directory).
    fn mediator_program(&self) -> String {
        shown(&bin_dir().join("ocf-mediator"))
    }

    fn spawn(&self, log: Option<PathBuf>) -> Spawn {
        Spawn {
            bin_dir: bin_dir(),
            log_level: std::env::var("OCF_LOG").unwrap_or_else(|_| "info".into()),
            log_file: log,
            supervised: true,
        }
    }

    fn cloud(&self) -> &DevCloud {
        self.cloud.as_ref().expect("the cloud is started first")
    }
    fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .expect("the agent is started before it is used")
    }
    /// `coaps+tcp://IP:PORT` of the agent.
    fn device_ep(&self) -> String {
        format!("coaps+tcp://{}", self.agent().tls())
    }

    /// Fails if the agent or the cloud has exited on its own.
    fn check_children(&mut self, step_name: &'static str) -> Step<()> {
        let (agent_log, cloud_log) = (self.agent_log(), self.cloud_log());
        if let Some(a) = self.agent.as_mut() {
            if let Ok(Some(status)) = a.child.try_wait() {
                return Err(Stop::Failed {
                    step: step_name,
                    why: format!(
                        "ocf-agent exited unexpectedly ({status}); its log ends:\n{}",
                        log_tail(&agent_log, 15)
                    ),
                });
            }
        }
        if let Some(c) = self.cloud.as_mut() {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(Stop::Failed {
                    step: step_name,
                    why: format!(
                        "ocf-dev-cloud exited unexpectedly ({status}); its log ends:\n{}",
                        log_tail(&cloud_log, 15)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Sleeps `d` in short slices, watching for Ctrl-C and for a child that exits.
    fn pause(&mut self, d: Duration, step_name: &'static str) -> Step<()> {
        let end = Instant::now() + d;
        loop {
            check_interrupt()?;
            self.check_children(step_name)?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    /// GET through the cloud's HTTP API: the JSON representation.
    fn cloud_get(&self, path: &str) -> Result<Json, String> {
        self.cloud()
            .try_call("GET", path, None)?
            .expect_ok(&format!("GET {path}"))
    }

    /// The file with the demo user's bearer token (mode 0600), for the Mediator and curl.
    fn token_file(&self) -> PathBuf {
        self.args.dir.join("token")
    }

    fn run(&mut self) -> Step<()> {
        println!(
            "ocf-demo: the OCF device agent (sim board, secure mode), the Mediator and the development OCF cloud on 127.0.0.1"
        );
        let mut keep = self.args.keep;
        if keep {
            if let Err(why) = self.keepable() {
                println!("  (--keep: {why}: starting fresh)");
                keep = false;
            }
        }
        self.prepare(keep)?;
        let keep = self.start_cloud(keep)?;
        self.start_agent()?;
        let kept = keep && self.kept_registration()?;
        if keep && !kept {
            // The device cannot sign back in: a new device, onboarded from the start.
            self.stop_agent();
            self.wipe(&[self.state_dir(), self.mediator_dir()], &[])?;
            self.make_dirs()?;
            self.start_agent()?;
        }
        let since = if kept {
            self.agent_started
        } else {
            self.onboard()?
        };
        self.registration(since, kept)?;
        self.links()?;
        self.switch()?;
        self.hint();
        self.readings()
    }

    /// Why the last run's state cannot be kept, if it cannot.
    fn keepable(&self) -> Result<(), String> {
        if !self.state_dir().join("identity.json").exists() {
            return Err(format!("no agent state in {}", shown(&self.state_dir())));
        }
        if self.saved_ports().is_none() {
            return Err(format!("no cloud ports in {}", shown(&self.ports_file())));
        }
        Ok(())
    }

    /// Removes `dirs` and `files` (only what the demo puts in DIR).
    fn wipe(&self, dirs: &[PathBuf], files: &[PathBuf]) -> Step<()> {
        for sub in dirs {
            if sub.exists() {
                step(
                    "prepare",
                    std::fs::remove_dir_all(sub).map_err(|e| format!("{}: {e}", sub.display())),
                )?;
            }
        }
        for file in files {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }

    /// Everything of an earlier run.
    fn wipe_all(&self) -> Step<()> {
        self.wipe(
            &[self.cloud_dir(), self.state_dir(), self.mediator_dir()],
            &[self.cloud_log(), self.agent_log(), self.ports_file()],
        )
    }

    /// The cloud's and the agent's directories, private (the agent's holds identity.key); the
    /// Mediator creates its own.
    fn make_dirs(&self) -> Step<()> {
        for sub in [self.cloud_dir(), self.state_dir()] {
            let made = std::fs::create_dir_all(&sub).and_then(|()| {
                std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700))
            });
            step(
                "prepare",
                made.map_err(|e| format!("{}: {e}", sub.display())),
            )?;
        }
        Ok(())
    }

    /// Empties DIR unless the last run's state is kept.
    fn prepare(&mut self, keep: bool) -> Step<()> {
        if !keep {
            self.wipe_all()?;
        }
        self.make_dirs()?;
        println!(
            "  state   {} ({})   logs: {}, {}",
            shown(&self.args.dir),
            if keep {
                "kept from the last run"
            } else {
                "fresh"
            },
            shown(&self.cloud_log()),
            shown(&self.agent_log())
        );
        Ok(())
    }

    fn saved_ports(&self) -> Option<Ports> {
        let j: Json =
            serde_json::from_str(&std::fs::read_to_string(self.ports_file()).ok()?).ok()?;
        let get = |k: &str| j[k].as_str().map(str::to_string);
        Some(Ports {
            coaps: get("coaps")?,
            http: get("http")?,
        })
    }

    /// Starts the cloud: on the last run's ports when `keep` (the device is configured for
    /// them); if they cannot be had, everything starts fresh. Returns whether the state is
    /// still kept. No plain coap+tcp listener: the agent in its secure mode refuses one.
    fn start_cloud(&mut self, keep: bool) -> Step<bool> {
        let how = self.spawn(Some(self.cloud_log()));
        let dir = self.cloud_dir();
        let start =
            |coaps: &str, http: &str| DevCloud::spawn(&dir, coaps, "", http, Vec::new(), &how);
        let fresh = || start("127.0.0.1:0", "127.0.0.1:0");
        let mut kept = keep;
        let cloud = match self.saved_ports().filter(|_| keep) {
            Some(p) => match start(&p.coaps, &p.http) {
                Ok(c) => c,
                Err(e) => {
                    let why = e
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    println!("  (the cloud cannot listen on the last run's ports again, which the device was configured for ({why}): starting fresh)");
                    self.wipe_all()?;
                    self.make_dirs()?;
                    kept = false;
                    step("start the cloud", fresh())?
                }
            },
            None => step("start the cloud", fresh())?,
        };
        let saved = json!({"coaps": cloud.coaps.to_string(), "http": cloud.http.to_string()});
        let _ = std::fs::write(self.ports_file(), saved.to_string());
        let token = step(
            "a token for the console",
            cloud.try_token_for(&cloud.user()),
        )?;
        write_private(&self.token_file(), &token);
        println!();
        // The fragment never leaves the browser: the page keeps the token for its API calls.
        println!("console {}#token={token}", cloud.console_url());
        println!("        open it to watch the device come online (the token is a development one, also in {})", shown(&self.token_file()));
        println!();
        println!("cloud   ocf-dev-cloud, pid {}", cloud.child.id());
        println!("  sid   {}", cloud.sid);
        println!("  {:<32} devices, mutual TLS", cloud.cis());
        println!(
            "  {:<32} API in plgd hub's shape (bearer token in {})",
            format!("http://{}", cloud.http),
            shown(&self.token_file())
        );
        self.cloud = Some(cloud);
        check_interrupt()?;
        Ok(kept)
    }

    /// Starts the agent in its secure mode; a fresh one creates its setup PIN and prints it.
    fn start_agent(&mut self) -> Step<()> {
        let how = self.spawn(Some(self.agent_log()));
        let args = ocf_e2e::mediator::secure_agent_args(&self.state_dir(), None, &[]);
        let agent = step("start the agent", Agent::spawn(&args, &how))?;
        self.agent_started = Instant::now();
        let pid = agent.child.id();
        let has_tls = agent.tls.is_some();
        println!();
        println!("agent   ocf-agent --board sim (secure mode), pid {pid}");
        println!("  di    {}", agent.di);
        for e in &agent.endpoints {
            let what = if e.starts_with("coaps+tcp://") {
                "local CoAP over TLS: ownership transfer, then the owner only"
            } else if e.starts_with("coap+tcp://") {
                "local CoAP over TCP"
            } else {
                "local CoAP over UDP: discovery (/oic/res) only"
            };
            println!("  {e:<32} {what}");
        }
        match &agent.setup_pin {
            Some(pin) => println!(
                "  PIN   {pin}   the setup PIN, printed once by the agent (\"ocf-agent: setup PIN {pin}\") as the label on a board would show it"
            ),
            None => println!(
                "  PIN   not printed again: the state directory has the one of an earlier run"
            ),
        }
        self.agent = Some(agent);
        check_interrupt()?;
        if !has_tls {
            return Err(Stop::Failed {
                step: "start the agent",
                why: "ocf-agent printed no coaps+tcp endpoint".into(),
            });
        }
        Ok(())
    }

    /// Stops the agent (for a fresh start after a state that cannot be kept).
    fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            stop_child("ocf-agent", &mut a.child);
        }
    }

    /// Runs `ocf-mediator ARGS` to its end (at most `limit`), watching for Ctrl-C and for a
    /// child that exits; with `echo`, its lines are printed (indented) as they come.
    fn mediator(
        &mut self,
        args: &[String],
        echo: bool,
        step_name: &'static str,
        limit: Duration,
    ) -> Step<MediatorRun> {
        let how = self.spawn(None);
        let Spawned {
            mut child,
            stdout,
            stderr,
        } = step(step_name, how.start("ocf-mediator", args))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let show = |line: String, into: &mut Vec<String>| {
            if echo {
                println!("  {line}");
            }
            into.push(line);
        };
        let deadline = Instant::now() + limit;
        let status = loop {
            stdout.try_iter().for_each(|l| show(l, &mut out));
            stderr.try_iter().for_each(|l| show(l, &mut err));
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            let problem = if interrupted() {
                Some(Stop::Interrupted)
            } else if let Err(e) = self.check_children(step_name) {
                Some(e)
            } else if Instant::now() > deadline {
                Some(Stop::Failed {
                    step: step_name,
                    why: format!("ocf-mediator still running after {} s", limit.as_secs()),
                })
            } else {
                None
            };
            if let Some(stop) = problem {
                stop_child("ocf-mediator", &mut child);
                return Err(stop);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The rest of its output: the readers end at EOF.
        stdout.iter().for_each(|l| show(l, &mut out));
        stderr.iter().for_each(|l| show(l, &mut err));
        Ok(MediatorRun {
            status,
            stdout: out,
            stderr: err,
        })
    }

    /// With `--keep`: whether the device is still owned by this Mediator and registered with
    /// this cloud, from its CoAPCloudConf read as the owner (waiting a little while it signs
    /// in). False, with the reason printed, if not.
    fn kept_registration(&mut self) -> Step<bool> {
        const STEP: &str = "check the kept state";
        let cis = self.cloud().cis();
        let args: Vec<String> = [
            "--identity".to_string(),
            self.mediator_dir().display().to_string(),
            "get".into(),
            "--device".into(),
            self.device_ep(),
            CLOUD_CONF.into(),
        ]
        .into();
        println!();
        println!("kept from the last run: is the device still owned and registered? (its CoAPCloudConf, read as the owner)");
        let mut shown_args = args.clone();
        shown_args[1] = shown(&self.mediator_dir());
        println!(
            "  $ {}",
            command_line(&self.mediator_program(), &shown_args)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let run = self.mediator(&args, false, STEP, Duration::from_secs(20))?;
            let code = run.stdout.first().cloned().unwrap_or_default();
            if !run.status.success() {
                let why = if code.is_empty() {
                    last_line(&run.stderr).unwrap_or("no answer").to_string()
                } else {
                    run.stdout.join(" ")
                };
                println!("  no: {why}");
                println!("  so the device starts fresh: a new state, a new PIN, onboarded again");
                return Ok(false);
            }
            let conf: Json =
                serde_json::from_str(&run.stdout[1..].join("\n")).unwrap_or(Json::Null);
            let cps = conf["cps"].as_str().unwrap_or("?").to_string();
            let their_cis = conf["cis"].as_str().unwrap_or("").to_string();
            let not_kept = if their_cis != cis {
                Some(format!(
                    "it is configured for {their_cis:?}, not for this cloud"
                ))
            } else {
                match cps.as_str() {
                    "registered" => {
                        println!("  yes: {code}, cps registered, cis {cis}: no onboarding, the agent signed back in");
                        return Ok(true);
                    }
                    "readytoregister" | "registering" if Instant::now() < deadline => None,
                    _ => Some(format!("cps {cps}, clec {}", conf["clec"])),
                }
            };
            if let Some(why) = not_kept {
                println!("  no: {why}");
                println!("  so the device starts fresh: a new state, a new PIN, onboarded again");
                return Ok(false);
            }
            self.pause(Duration::from_millis(200), STEP)?;
        }
    }

    /// `ocf-mediator onboard` with the PIN the agent printed, its progress shown as it comes;
    /// returns when it started, for the registration times.
    fn onboard(&mut self) -> Step<Instant> {
        const STEP: &str = "onboarding";
        let Some(pin) = self.agent().setup_pin.clone() else {
            return Err(Stop::Failed {
                step: STEP,
                why: format!(
                    "the agent printed no setup PIN (is there an old {}?)",
                    shown(&self.state_dir().join("pin"))
                ),
            });
        };
        let token = shown(&self.token_file());
        let tail = |dir: String| -> Vec<String> {
            vec![
                "--identity".into(),
                dir,
                "onboard".into(),
                "--pin".into(),
                pin.clone(),
                "--cloud".into(),
                format!("http://{}", self.cloud().http),
                "--token-file".into(),
                token.clone(),
                "--device".into(),
                self.device_ep(),
                "--timeout".into(),
                ONBOARD_TIMEOUT.to_string(),
            ]
        };
        let args = tail(self.mediator_dir().display().to_string());
        let shown_args = tail(shown(&self.mediator_dir()));
        println!();
        println!("onboarding by the Mediator, as a phone app does it on the device's first boot");
        // Its own identity first (created on first use), so that its note does not interleave
        // with the progress lines.
        let id_args = vec![
            "--identity".to_string(),
            self.mediator_dir().display().to_string(),
            "identity".into(),
        ];
        let id = self.mediator(&id_args, false, STEP, Duration::from_secs(20))?;
        let uuid = id.stdout.iter().find_map(|l| l.strip_prefix("uuid "));
        let (Some(uuid), true) = (uuid, id.status.success()) else {
            return Err(Stop::Failed {
                step: STEP,
                why: format!(
                    "ocf-mediator identity {}: {}",
                    id.status,
                    last_line(&id.stderr).unwrap_or("no uuid")
                ),
            });
        };
        let med = shown(&self.mediator_dir());
        println!("  the Mediator is uuid:{uuid}; its certificate and key: {med}/mediator.crt, {med}/mediator.key");
        println!(
            "  $ {}",
            command_line(&self.mediator_program(), &shown_args)
        );
        let t0 = Instant::now();
        let run = self.mediator(&args, true, STEP, Duration::from_secs(ONBOARD_TIMEOUT + 30))?;
        if !run.status.success() {
            let why = last_line(&run.stderr)
                .or_else(|| last_line(&run.stdout))
                .unwrap_or("no output")
                .to_string();
            return Err(Stop::Failed {
                step: STEP,
                why: format!(
                    "ocf-mediator {}: {why}; the agent's log ends:\n{}",
                    run.status,
                    log_tail(&self.agent_log(), 10)
                ),
            });
        }
        println!(
            "  onboarded and registered in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        check_interrupt()?;
        Ok(t0)
    }

    /// Waits for the cloud to list the device online.
    fn registration(&mut self, since: Instant, kept: bool) -> Step<()> {
        const STEP: &str = "registration";
        let di = self.agent().di.clone();
        println!();
        println!("registration (the cloud's device list, GET /api/v1/devices)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let devices = step(STEP, self.cloud().try_devices())?;
            if let Some(d) = devices.iter().find(|d| d["id"] == di.as_str() && online(d)) {
                println!(
                    "  {:>5.2} s  the cloud lists the device online as {}{}",
                    since.elapsed().as_secs_f64(),
                    d["name"],
                    if kept {
                        " (signed back in after the agent started; no new sign-up)"
                    } else {
                        ""
                    }
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Stop::Failed {
                    step: STEP,
                    why: format!(
                        "the cloud does not list the device online after 20 s; see {}",
                        shown(&self.agent_log())
                    ),
                });
            }
            self.pause(Duration::from_millis(100), STEP)?;
        }
    }

    /// The links the agent published, as the cloud lists them.
    fn links(&mut self) -> Step<()> {
        const STEP: &str = "published links";
        let di = self.agent().di.clone();
        let path = format!("/api/v1/devices/{di}/resource-links");
        let deadline = Instant::now() + Duration::from_secs(15);
        let links = loop {
            let j = step(STEP, self.cloud_get(&path))?;
            let links = j["resources"].as_array().cloned().unwrap_or_default();
            if links.iter().any(|l| l["href"] == "/temperature") {
                break links;
            }
            if Instant::now() > deadline {
                return Err(Stop::Failed {
                    step: STEP,
                    why: format!("/temperature not published after 15 s: {j}"),
                });
            }
            self.pause(Duration::from_millis(100), STEP)?;
        };
        println!();
        println!("published links (GET {path})");
        for l in &links {
            let list = |k: &str| {
                l[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Json::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            println!(
                "  {:<14} rt {:<40} if {}",
                l["href"].as_str().unwrap_or("?"),
                list("resourceTypes"),
                list("interfaces")
            );
        }
        check_interrupt()
    }

    /// Switches the switch through the cloud and reads it back through the cloud.
    fn switch(&mut self) -> Step<()> {
        const STEP: &str = "switch";
        let di = self.agent().di.clone();
        let path = format!("/api/v1/devices/{di}/resources/switch");
        // Read from the device itself: the shadow follows its notifications a moment later.
        let read = format!("{path}?shadow=false");
        let on_off = |v: &Json| match v.as_bool() {
            Some(true) => "on",
            Some(false) => "off",
            None => "?",
        };
        let before = step(STEP, self.cloud_get(&read))?["data"]["content"].clone();
        let want = !before["value"].as_bool().unwrap_or(false);
        let r = step(
            STEP,
            self.cloud()
                .try_call("PUT", &path, Some(&json!({ "value": want }))),
        )?;
        step(STEP, r.expect_ok(&format!("PUT {path}")))?;
        let after = step(STEP, self.cloud_get(&read))?["data"]["content"].clone();
        if after["value"].as_bool() != Some(want) {
            return Err(Stop::Failed {
                step: STEP,
                why: format!("wrote {want}, read back {after}"),
            });
        }
        println!();
        println!("switch through the cloud ({path})");
        println!(
            "  GET → {}   PUT {{\"value\":{want}}} → CoAP {}   GET → {}",
            on_off(&before["value"]),
            r.header("x-coap-code").unwrap_or("?"),
            on_off(&after["value"])
        );
        check_interrupt()
    }

    fn hint(&self) {
        let (agent, cloud) = (self.agent(), self.cloud());
        let di = &agent.di;
        let api = format!("http://{}/api/v1", cloud.http);
        let auth = format!(
            "-H \"Authorization: Bearer $(cat {})\"",
            shown(&self.token_file())
        );
        let ep = self.device_ep();
        let med = shown(&self.mediator_dir());
        let mediator = self.mediator_program();
        println!();
        println!("try it while this runs");
        println!("  the device, locally: only its owner may, with the Mediator's certificate (mutual TLS over coaps+tcp):");
        println!("    {mediator} --identity {med} get --device {ep} /temperature");
        println!(
            "    {mediator} --identity {med} post --device {ep} /switch '{{\"value\":false}}'"
        );
        println!("    coap-client-openssl -m get -A 50 -c {med}/mediator.crt -j {med}/mediator.key '{ep}/temperature'");
        if let Some(udp) = agent.udp {
            println!("    coap-client-openssl -m get -A 50 'coap://{udp}/oic/res'    # UDP: discovery only, open to all");
        }
        println!("    (libcoap: `apt-get install libcoap3-bin`)");
        println!("  the cloud (curl; the API has plgd hub's shape):");
        println!("    curl -s {auth} {api}/devices");
        println!("    curl -s {auth} {api}/devices/{di}/resources/humidity");
        println!("    curl -s {auth} -X PUT -H 'Content-Type: application/json' -d '{{\"value\":false}}' {api}/devices/{di}/resources/switch");
        println!("    the console ({}) shows changes as they come (events over WebSocket, /api/v1/ws/events)", cloud.console_url());
    }

    /// Temperature and humidity through the cloud every 2 s, until Ctrl-C or `--readings`.
    fn readings(&mut self) -> Step<()> {
        const STEP: &str = "readings";
        let di = self.agent().di.clone();
        println!();
        println!(
            "live readings through the cloud (its shadow: GET /api/v1/devices/{{di}}/resources/temperature and /humidity every {} s; Ctrl-C stops)",
            INTERVAL.as_secs()
        );
        let (mut done, mut failed) = (0u64, 0u32);
        let mut next = Instant::now();
        loop {
            let t0 = Instant::now();
            let result = self
                .cloud_get(&format!("/api/v1/devices/{di}/resources/temperature"))
                .and_then(|t| {
                    Ok((
                        t["data"]["content"].clone(),
                        self.cloud_get(&format!("/api/v1/devices/{di}/resources/humidity"))?
                            ["data"]["content"]
                            .clone(),
                    ))
                });
            check_interrupt()?;
            match result {
                Ok((t, h)) => {
                    failed = 0;
                    done += 1;
                    let units = match t["units"].as_str().unwrap_or("C") {
                        "C" => "°C",
                        "F" => "°F",
                        "K" => "K",
                        _ => "",
                    };
                    println!(
                        "  {}  temperature {} {units}   humidity {} %   ({:.1} ms for both)",
                        clock(),
                        number(&t["temperature"]),
                        number(&h["humidity"]),
                        t0.elapsed().as_secs_f64() * 1000.0
                    );
                }
                Err(e) => {
                    failed += 1;
                    println!("  {}  reading failed: {e}", clock());
                    if failed >= MAX_FAILED_READINGS {
                        return Err(Stop::Failed {
                            step: STEP,
                            why: format!("{failed} readings in a row failed; last: {e}"),
                        });
                    }
                }
            }
            if self.args.readings.is_some_and(|n| done >= n) {
                return Ok(());
            }
            next += INTERVAL;
            let now = Instant::now();
            if next < now {
                next = now;
            }
            self.pause(next - now, STEP)?;
        }
    }

    /// Stops the agent, then the cloud: SIGTERM by PID, SIGKILL after 10 s.
    fn shutdown(&mut self) {
        let agent = self.agent.take();
        let cloud = self.cloud.take();
        if agent.is_none() && cloud.is_none() {
            return;
        }
        if let Some(mut a) = agent {
            stop_child("ocf-agent", &mut a.child);
        }
        if let Some(mut c) = cloud {
            stop_child("ocf-dev-cloud", &mut c.child);
        }
    }
}

fn stop_child(name: &str, child: &mut Child) {
    let pid = child.id();
    if let Ok(Some(status)) = child.try_wait() {
        println!("  {name} (pid {pid}) had already exited: {status}");
        return;
    }
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                println!("  stopped {name} (pid {pid}): {status}");
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                println!("  killed {name} (pid {pid}) after 10 s without exiting: {status}");
                return;
            }
        }
    }
}

/// A JSON number with at most two decimals, or `?`.
fn number(v: &Json) -> String {
    match v.as_f64() {
        Some(x) => {
            let s = format!("{x:.2}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s.contains('.') {
                s.to_string()
            } else {
                format!("{s}.0")
            }
        }
        None => "?".into(),
    }
}

/// Local wall-clock time, HH:MM:SS.
fn clock() -> String {
    // SAFETY: time(2) and localtime_r(3) with a valid output struct.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "--:--:--".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ocf-demo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    signals::install();
    let mut demo = Demo {
        args,
        cloud: None,
        agent: None,
        agent_started: Instant::now(),
    };
    let outcome = demo.run();
    let code = match &outcome {
        Ok(()) => {
            println!();
            let n = demo.args.readings.unwrap_or(0);
            println!(
                "done after {n} reading{}: stopping the agent and the cloud",
                if n == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(Stop::Interrupted) => {
            println!();
            let what = match signals::caught() {
                Some(libc::SIGINT) => "Ctrl-C",
                Some(libc::SIGTERM) => "SIGTERM",
                _ => "SIGHUP",
            };
            println!("{what}: stopping the agent and the cloud");
            ExitCode::SUCCESS
        }
        Err(Stop::Failed { step, why }) => {
            eprintln!();
            eprintln!("ocf-demo: step `{step}` failed: {why}");
            println!(
                "stopping the agent and the cloud (logs: {}, {})",
                shown(&demo.agent_log()),
                shown(&demo.cloud_log())
            );
            ExitCode::FAILURE
        }
    };
    demo.shutdown();
    code
}
