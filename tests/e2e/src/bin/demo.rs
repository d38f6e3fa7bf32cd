//! `ocf-demo` (what `cargo xtask demo` runs): starts the development cloud (`ocf-dev-cloud`)
//! and the agent on the simulated board (`ocf-agent --board sim`) on 127.0.0.1 with ports the
//! OS picks, provisions the agent the interim way the e2e tests do until the Mediator (issue 4)
//! exists, shows its registration (`cps`) and published links, switches the switch once through
//! the cloud, then prints the temperature and humidity read through the cloud's HTTP API every
//! 2 s until Ctrl-C, which stops both processes (SIGTERM by PID) and exits 0.
//!
//! ```text
//! ocf-demo [--dir DIR] [--keep] [--readings N]
//! ```
//!
//! - `--dir`: where the cloud's data (`DIR/cloud`), the agent's state (`DIR/agent`) and both
//!   logs (`DIR/cloud.log`, `DIR/agent.log`) go; default `demo` beside the target directory's
//!   profile directory (`target/demo`). Emptied at start unless `--keep`.
//! - `--keep`: keep the previous run's state: the cloud listens on the same ports again (from
//!   `DIR/demo.json`) and the agent signs in without a second sign-up.
//! - `--readings N`: stop after N readings (non-interactive use, the smoke test).
//!
//! If a step fails, it says which and why, stops both processes and exits 1. Children run in
//! their own process group (the terminal's Ctrl-C reaches only this process, which stops them
//! in order) and get SIGTERM from the kernel should this process die first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use ocf_e2e::cloud::{try_http, DevCloud};
use ocf_e2e::provision::{
    agent_csr, clec_meaning, clec_of, install_identity, read_cloud_conf, text_of, write_cloud_conf,
    CLOUD_CONF,
};
use ocf_e2e::{bin_dir, log_tail, Agent, Spawn};
use serde_json::{json, Value as Json};

const USAGE: &str = "usage: ocf-demo [--dir DIR] [--keep] [--readings N]";
/// Between two readings.
const INTERVAL: Duration = Duration::from_secs(2);
/// Consecutive failed readings before the demo gives up.
const MAX_FAILED_READINGS: u32 = 5;
/// The account the authorisation code is issued for.
const USER: &str = "demo";

// -------------------------------------------------------------------------------------------
// Signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP only set a flag; every wait checks it.
// -------------------------------------------------------------------------------------------

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn interrupted() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
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

// -------------------------------------------------------------------------------------------
// The demo.
// -------------------------------------------------------------------------------------------

struct Demo {
    args: Args,
    cloud: Option<DevCloud>,
    agent: Option<Agent>,
}

/// The cloud's listeners, remembered in `DIR/demo.json` for `--keep`.
struct Ports {
    coaps: String,
    plain: String,
    http: String,
}

impl Demo {
    fn cloud_dir(&self) -> PathBuf {
        self.args.dir.join("cloud")
    }
    fn state_dir(&self) -> PathBuf {
        self.args.dir.join("agent")
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

    fn spawn(&self, log: PathBuf) -> Spawn {
        Spawn {
            bin_dir: bin_dir(),
            log_level: std::env::var("OCF_LOG").unwrap_or_else(|_| "info".into()),
            log_file: Some(log),
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
        try_http(self.cloud().http, "GET", path, None)?.expect_ok(&format!("GET {path}"))
    }

    fn run(&mut self) -> Step<()> {
        println!(
            "ocf-demo: the OCF device agent (sim board) and the development OCF cloud on 127.0.0.1"
        );
        self.prepare()?;
        self.start_cloud()?;
        self.start_agent()?;
        let since = self.provision()?;
        self.registration(since)?;
        self.links()?;
        self.switch()?;
        self.hint();
        self.readings()
    }

    /// Empties DIR (only what the demo puts there) unless `--keep`.
    fn prepare(&mut self) -> Step<()> {
        let dir = self.args.dir.clone();
        let keep = self.args.keep && self.state_dir().exists();
        if !keep {
            for sub in [self.cloud_dir(), self.state_dir()] {
                if sub.exists() {
                    step(
                        "prepare",
                        std::fs::remove_dir_all(&sub)
                            .map_err(|e| format!("{}: {e}", sub.display())),
                    )?;
                }
            }
            for file in [self.cloud_log(), self.agent_log(), self.ports_file()] {
                let _ = std::fs::remove_file(file);
            }
        }
        for sub in [self.cloud_dir(), self.state_dir()] {
            // Private, as the agent's state directory is meant to be (it holds identity.key).
            let made = std::fs::create_dir_all(&sub).and_then(|()| {
                std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700))
            });
            step(
                "prepare",
                made.map_err(|e| format!("{}: {e}", sub.display())),
            )?;
        }
        println!(
            "  state   {} ({})   logs: {}, {}",
            shown(&dir),
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
            plain: get("coap_plain")?,
            http: get("http")?,
        })
    }

    fn start_cloud(&mut self) -> Step<()> {
        let how = self.spawn(self.cloud_log());
        let any = || Ports {
            coaps: "127.0.0.1:0".into(),
            plain: "127.0.0.1:0".into(),
            http: "127.0.0.1:0".into(),
        };
        let wanted = if self.args.keep {
            self.saved_ports()
        } else {
            None
        };
        let start = |p: &Ports| {
            DevCloud::spawn(
                &self.cloud_dir(),
                &p.coaps,
                &p.plain,
                &p.http,
                Vec::new(),
                &how,
            )
        };
        let cloud = match wanted {
            Some(p) => match start(&p) {
                Ok(c) => c,
                Err(e) => {
                    let why = e
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim();
                    println!("  (the cloud cannot listen on the last run's ports again, so on new ones: {why})");
                    step("start the cloud", start(&any()))?
                }
            },
            None => step("start the cloud", start(&any()))?,
        };
        let plain = cloud.coap_plain.map(|a| a.to_string()).unwrap_or_default();
        let saved = json!({"coaps": cloud.coaps.to_string(), "coap_plain": plain, "http": cloud.http.to_string()});
        let _ = std::fs::write(self.ports_file(), saved.to_string());
        println!();
        println!("cloud   ocf-dev-cloud, pid {}", cloud.child.id());
        println!("  sid   {}", cloud.sid);
        println!("  {:<32} devices, mutual TLS", cloud.cis());
        if cloud.coap_plain.is_some() {
            println!(
                "  {:<32} devices, plain (development only)",
                cloud.cis_plain()
            );
        }
        println!("  {:<32} HTTP/JSON API", format!("http://{}", cloud.http));
        self.cloud = Some(cloud);
        check_interrupt()
    }

    fn start_agent(&mut self) -> Step<()> {
        let how = self.spawn(self.agent_log());
        let args: Vec<String> = [
            "--board",
            "sim",
            "--state-dir",
            &self.state_dir().display().to_string(),
            "--udp",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--multicast",
            "off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let agent = step("start the agent", Agent::spawn(&args, &how))?;
        println!();
        println!("agent   ocf-agent --board sim, pid {}", agent.child.id());
        println!("  di    {}", agent.di);
        for e in &agent.endpoints {
            let what = if e.starts_with("coap+tcp://") {
                "local CoAP over TCP"
            } else {
                "local CoAP over UDP"
            };
            println!("  {e:<32} {what}");
        }
        self.agent = Some(agent);
        check_interrupt()
    }

    /// Provisions the agent (or keeps a configuration for this very cloud with `--keep`);
    /// returns when the configuration was written, for the registration times.
    fn provision(&mut self) -> Step<Instant> {
        let (tcp, cis, sid) = (
            self.agent().tcp,
            self.cloud().cis(),
            self.cloud().sid.clone(),
        );
        let state = self.state_dir();
        println!();
        println!("provisioning (the interim installer path, until the Mediator of issue 4 exists)");
        let conf = step("read CoAPCloudConf", read_cloud_conf(tcp))?;
        let cps = text_of(&conf, "cps").unwrap_or_default();
        let configured = ["readytoregister", "registering", "registered"].contains(&cps.as_str());
        if self.args.keep && configured && text_of(&conf, "cis").as_deref() == Some(cis.as_str()) {
            println!("  kept       configured for this cloud in the last run (cps {cps}): no new sign-up");
            return Ok(Instant::now());
        }
        if configured || cps == "deregistering" {
            let old = text_of(&conf, "cis").unwrap_or_default();
            step(
                "reset the old configuration",
                write_cloud_conf(tcp, &[("cis", "")]),
            )?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let c = step("reset the old configuration", read_cloud_conf(tcp))?;
                if text_of(&c, "cps").as_deref() == Some("uninitialized") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Stop::Failed {
                        step: "reset the old configuration",
                        why: format!("cps still {:?} after 30 s", text_of(&c, "cps")),
                    });
                }
                self.pause(Duration::from_millis(100), "reset the old configuration")?;
            }
            println!(
                "  reset      POST {CLOUD_CONF} {{\"cis\":\"\"}}: dropped the last run's {old}"
            );
        }

        let csr = step("csr", agent_csr(&bin_dir(), &state))?;
        println!(
            "  csr        ocf-agent csr --state-dir {} → a CSR for uuid:{}",
            shown(&state),
            self.agent().di
        );
        let (cert, ca) = step("sign", self.cloud().try_sign_csr(&csr))?;
        println!("  sign       POST /api/v1/csr → an identity certificate from the cloud's CA");
        step("install", install_identity(&state, &cert, &ca))?;
        println!(
            "  install    identity.crt and cloud-ca.pem written to {}",
            shown(&state)
        );
        let code = step("authcode", self.cloud().try_auth_code(USER))?;
        println!("  authcode   POST /api/v1/authcodes {{\"user\":\"{USER}\"}} → a single-use authorisation code");
        let rep = step(
            "configure",
            write_cloud_conf(
                tcp,
                &[("cis", &cis), ("apn", "plgd"), ("at", &code), ("sid", &sid)],
            ),
        )?;
        let written = Instant::now();
        println!(
            "  configure  POST {CLOUD_CONF} {{cis, apn, at, sid}} to coap+tcp://{tcp} → 2.04 Changed (cps {})",
            text_of(&rep, "cps").unwrap_or_default()
        );
        check_interrupt()?;
        Ok(written)
    }

    /// Polls `cps` until `registered`, then waits for the cloud to list the device online.
    fn registration(&mut self, since: Instant) -> Step<()> {
        const STEP: &str = "registration";
        let tcp = self.agent().tcp;
        let di = self.agent().di.clone();
        println!();
        println!("registration (cps of {CLOUD_CONF}, read locally)");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            let conf = step(STEP, read_cloud_conf(tcp))?;
            let cps = text_of(&conf, "cps").unwrap_or_default();
            if cps != last {
                println!("  {:>5.2} s  cps {cps}", since.elapsed().as_secs_f64());
                last = cps.clone();
            }
            match cps.as_str() {
                "registered" => break,
                "failed" => {
                    let clec = clec_of(&conf).unwrap_or(255);
                    return Err(Stop::Failed {
                        step: STEP,
                        why: format!(
                            "cps failed, clec {clec} ({}); the agent's log ends:\n{}",
                            clec_meaning(clec),
                            log_tail(&self.agent_log(), 10)
                        ),
                    });
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(Stop::Failed {
                    step: STEP,
                    why: format!(
                        "cps still {cps} after 30 s; see {}",
                        shown(&self.agent_log())
                    ),
                });
            }
            self.pause(Duration::from_millis(50), STEP)?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let devices = step(STEP, self.cloud().try_devices())?;
            if let Some(d) = devices
                .iter()
                .find(|d| d["di"] == di.as_str() && d["online"] == true)
            {
                println!(
                    "  {:>5.2} s  the cloud lists the device online as {}",
                    since.elapsed().as_secs_f64(),
                    d["name"]
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Stop::Failed {
                    step: STEP,
                    why: "registered, but the cloud does not list the device online after 20 s"
                        .into(),
                });
            }
            self.pause(Duration::from_millis(100), STEP)?;
        }
    }

    /// The links the agent published, as the cloud lists them.
    fn links(&mut self) -> Step<()> {
        const STEP: &str = "published links";
        let di = self.agent().di.clone();
        let path = format!("/api/v1/devices/{di}/links");
        let deadline = Instant::now() + Duration::from_secs(15);
        let links = loop {
            let j = step(STEP, self.cloud_get(&path))?;
            let links = j
                .as_array()
                .cloned()
                .or_else(|| j["links"].as_array().cloned())
                .unwrap_or_default();
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
                list("rt"),
                list("if")
            );
        }
        check_interrupt()
    }

    /// Switches the switch through the cloud and reads it back through the cloud.
    fn switch(&mut self) -> Step<()> {
        const STEP: &str = "switch";
        let path = format!("/api/v1/devices/{}/switch", self.agent().di);
        let on_off = |v: &Json| match v.as_bool() {
            Some(true) => "on",
            Some(false) => "off",
            None => "?",
        };
        let before = step(STEP, self.cloud_get(&path))?;
        let want = !before["value"].as_bool().unwrap_or(false);
        let r = step(
            STEP,
            try_http(
                self.cloud().http,
                "POST",
                &path,
                Some(&json!({ "value": want })),
            ),
        )?;
        step(STEP, r.expect_ok(&format!("POST {path}")))?;
        let after = step(STEP, self.cloud_get(&path))?;
        if after["value"].as_bool() != Some(want) {
            return Err(Stop::Failed {
                step: STEP,
                why: format!("wrote {want}, read back {after}"),
            });
        }
        println!();
        println!("switch through the cloud ({path})");
        println!(
            "  GET → {}   POST {{\"value\":{want}}} → CoAP {}   GET → {}",
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
        println!();
        println!("try it while this runs");
        println!("  the device, locally (libcoap; `apt-get install libcoap3-bin`):");
        println!(
            "    coap-client-openssl -m get -A 50 'coap://{}/oic/res'",
            agent.udp
        );
        println!(
            "    coap-client-openssl -m get -A 50 'coap+tcp://{}/humidity'",
            agent.tcp
        );
        println!("    coap-client-openssl -m post -t 50 -A 50 -e '{{\"value\":false}}' 'coap+tcp://{}/switch'", agent.tcp);
        println!("    coap-client-openssl -s 10 -m get -A 50 'coap://{}/temperature'    # observe for 10 s", agent.udp);
        println!("  the cloud (curl):");
        println!("    curl -s {api}/devices");
        println!("    curl -s {api}/devices/{di}/humidity");
        println!("    curl -s -X POST -H 'Content-Type: application/json' -d '{{\"value\":false}}' {api}/devices/{di}/switch");
        println!("    curl -sN {api}/devices/{di}/events    # changes as server-sent events");
    }

    /// Temperature and humidity through the cloud every 2 s, until Ctrl-C or `--readings`.
    fn readings(&mut self) -> Step<()> {
        const STEP: &str = "readings";
        let di = self.agent().di.clone();
        println!();
        println!(
            "live readings through the cloud (GET /api/v1/devices/{{di}}/temperature and /humidity every {} s; Ctrl-C stops)",
            INTERVAL.as_secs()
        );
        let (mut done, mut failed) = (0u64, 0u32);
        let mut next = Instant::now();
        loop {
            let t0 = Instant::now();
            let result = self
                .cloud_get(&format!("/api/v1/devices/{di}/temperature"))
                .and_then(|t| {
                    Ok((
                        t,
                        self.cloud_get(&format!("/api/v1/devices/{di}/humidity"))?,
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
    install_signal_handlers();
    let mut demo = Demo {
        args,
        cloud: None,
        agent: None,
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
            let what = match SIGNAL.load(Ordering::SeqCst) {
                libc::SIGINT => "Ctrl-C",
                libc::SIGTERM => "SIGTERM",
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
