//! Harness for the onboarding tests (tests/onboarding.rs): the agent in its secure mode (no
//! `--insecure-dev`: a coaps+tcp endpoint, UDP for discovery only), the `ocf-mediator` CLI with
//! its own identity directory, the `ocf-mitm` man in the middle, and a TCP proxy that records
//! what it relays (to learn the authorisation code the cloud gave the Mediator, which nothing
//! prints). Children are killed by PID when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{binary, Spawn, Spawned};

/// A running `ocf-agent` without `--insecure-dev`.
pub struct SecureAgent {
    pub child: Child,
    pub di: String,
    /// `coaps+tcp://IP:PORT`.
    pub ep: String,
    pub coaps: SocketAddr,
    pub endpoints: Vec<String>,
    pub state_dir: PathBuf,
    /// Everything it printed on stdout up to `ready`.
    pub stdout_lines: Vec<String>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl SecureAgent {
    /// Starts the sim board on loopback (ports chosen by the OS, no multicast) with the PIN
    /// from `pin_file` (or a generated one when `None`).
    pub fn start(state_dir: &Path, pin_file: Option<&Path>, extra: &[&str]) -> SecureAgent {
        SecureAgent::spawn(state_dir, &secure_agent_args(state_dir, pin_file, extra))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits for an `ocf-agent: di <uuid>` line other than `old` on stdout: the new `di` a
    /// factory reset at run time prints.
    pub fn wait_new_di(&mut self, old: &str) -> String {
        crate::cloud::wait_for(Duration::from_secs(20), "a new di on stdout", || {
            self.stdout()
                .iter()
                .filter_map(|l| l.strip_prefix("ocf-agent: di "))
                .find(|d| *d != old)
                .map(str::to_string)
        })
    }

    /// Starts `ocf-agent` with `args`; an error if it is not ready within 20 s or has no
    /// coaps+tcp endpoint.
    pub fn spawn(state_dir: &Path, args: &[String]) -> Result<SecureAgent, String> {
        SecureAgent::spawn_with(state_dir, args, &Spawn::default(), &[])
    }

    /// [`SecureAgent::spawn`] as `how` says (e.g. stderr to a file), with extra environment
    /// variables for the agent.
    pub fn spawn_with(
        state_dir: &Path,
        args: &[String],
        how: &Spawn,
        env: &[(&str, &str)],
    ) -> Result<SecureAgent, String> {
        let Spawned {
            mut child,
            stdout,
            stderr,
        } = how.start_with_env("ocf-agent", args, env)?;
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let ready = line == "ocf-agent: ready";
                    lines.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => return Err(how.not_ready("ocf-agent", &mut child, &stderr)),
            }
        }
        let di = lines
            .iter()
            .find_map(|l| l.strip_prefix("ocf-agent: di "))
            .unwrap_or_default()
            .to_string();
        let endpoints: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ocf-agent: endpoint "))
            .map(str::to_string)
            .collect();
        let Some(ep) = endpoints
            .iter()
            .find(|e| e.starts_with("coaps+tcp://"))
            .cloned()
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("ocf-agent: no coaps+tcp endpoint in {endpoints:?}"));
        };
        let coaps = ep
            .trim_start_matches("coaps+tcp://")
            .parse()
            .map_err(|_| format!("bad endpoint {ep}"))?;
        Ok(SecureAgent {
            child,
            di,
            ep,
            coaps,
            endpoints,
            state_dir: state_dir.to_path_buf(),
            stdout_lines: lines,
            stdout,
            stderr,
            log: Vec::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the agent wrote to stderr so far.
    pub fn log(&mut self) -> &[String] {
        self.log.extend(self.stderr.try_iter());
        &self.log
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&mut self) -> &[String] {
        self.stdout_lines.extend(self.stdout.try_iter());
        &self.stdout_lines
    }
}

impl Drop for SecureAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments [`SecureAgent::start`] uses: the sim board on loopback (ports chosen by the OS,
/// no multicast), the PIN from `pin_file` (or the one the agent makes when `None`), then `extra`.
pub fn secure_agent_args(state_dir: &Path, pin_file: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--board",
        "sim",
        "--state-dir",
        &state_dir.display().to_string(),
        "--udp",
        "127.0.0.1:0",
        "--tls",
        "127.0.0.1:0",
        "--dtls",
        "127.0.0.1:0",
        "--multicast",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = pin_file {
        args.push("--pin-file".into());
        args.push(p.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Writes an 8-digit PIN file (mode 0600) and returns its path.
pub fn pin_file(dir: &Path, pin: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("pin");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("pin file");
    writeln!(f, "{pin}").expect("write pin");
    path
}

/// The outcome of one `ocf-mediator` run.
#[derive(Debug, Clone)]
pub struct Run {
    pub args: Vec<String>,
    /// Exit code (-1 if killed).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// stdout and stderr together.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the whole run unless it exited 0.
    pub fn expect_ok(self) -> Run {
        assert!(
            self.ok(),
            "ocf-mediator {:?} exited {}:\n{}",
            self.args,
            self.code,
            self.output()
        );
        self
    }

    /// The first line of stdout of `get` / `post`: the CoAP code (`2.05`, `4.01`, ...).
    pub fn coap_code(&self) -> String {
        self.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// The JSON body `get` / `post` printed after the code line.
    pub fn json(&self) -> Option<serde_json::Value> {
        let rest: String = self.stdout.lines().skip(1).collect::<Vec<_>>().join("\n");
        serde_json::from_str(&rest).ok()
    }
}

/// Runs a program with a time limit, killing it by PID when over.
pub fn run_with_timeout(program: &Path, args: &[String], limit: Duration) -> Run {
    run_feeding(program, args, limit, &mut || None)
}

/// [`run_with_timeout`], writing to the program's stdin the line `input` returns once it
/// returns one (it is asked every 10 ms until then).
pub fn run_feeding(
    program: &Path,
    args: &[String],
    limit: Duration,
    input: &mut dyn FnMut() -> Option<String>,
) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut stdin = child.stdin.take();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(mut w) = stdin.take() {
            match input() {
                Some(line) => {
                    use std::io::Write;
                    let _ = writeln!(w, "{line}");
                }
                None => stdin = Some(w),
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        args: args.to_vec(),
        code,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// `ocf-mediator` with one identity directory. Every run is kept, for the log checks.
pub struct Mediator {
    pub dir: PathBuf,
    pub runs: Mutex<Vec<Run>>,
    /// The hub user's bearer token file `onboard` passes (`--token-file`).
    token_file: Mutex<Option<PathBuf>>,
}

impl Mediator {
    pub fn new(dir: &Path) -> Mediator {
        Mediator {
            dir: dir.to_path_buf(),
            runs: Mutex::new(Vec::new()),
            token_file: Mutex::new(None),
        }
    }

    /// Onboards as the current user of `cloud` from now on: its bearer token goes into a
    /// private file beside the identity directory, passed as `--token-file`.
    pub fn token_from(&self, cloud: &crate::cloud::DevCloud) {
        let path = self.dir.with_extension("token");
        crate::cloud::write_private(&path, &cloud.token());
        *self.token_file.lock().unwrap() = Some(path);
    }

    /// Runs `ocf-mediator --identity DIR ARGS` (at most 120 s).
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--identity".to_string(), self.dir.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let run = run_with_timeout(&binary("ocf-mediator"), &all, Duration::from_secs(120));
        self.runs.lock().unwrap().push(run.clone());
        run
    }

    /// Runs `ocf-mediator --identity DIR ARGS`, feeding its stdin what `input` gives.
    pub fn run_feeding(&self, args: &[&str], input: &mut dyn FnMut() -> Option<String>) -> Run {
        let mut all = vec!["--identity".to_string(), self.dir.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let run = run_feeding(
            &binary("ocf-mediator"),
            &all,
            Duration::from_secs(120),
            input,
        );
        self.runs.lock().unwrap().push(run.clone());
        run
    }

    /// `onboard --pin PIN --device EP --cloud URL [--token-file PATH] [extra]` (the token of
    /// [`Mediator::token_from`]).
    pub fn onboard(&self, pin: &str, ep: &str, cloud: &str, extra: &[&str]) -> Run {
        let token = self.token_args();
        let mut args = vec![
            "onboard",
            "--pin",
            pin,
            "--device",
            ep,
            "--cloud",
            cloud,
            "--timeout",
            "30",
        ];
        args.extend(token.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `--token-file PATH`, if a token was given.
    pub fn token_args(&self) -> Vec<String> {
        match &*self.token_file.lock().unwrap() {
            Some(p) => vec!["--token-file".into(), p.display().to_string()],
            None => Vec::new(),
        }
    }

    pub fn get(&self, ep: &str, path: &str) -> Run {
        self.run(&["get", "--device", ep, path])
    }

    pub fn post(&self, ep: &str, path: &str, json: &str) -> Run {
        self.run(&["post", "--device", ep, path, json])
    }

    /// The Mediator's uuid (creating its identity if needed).
    pub fn uuid(&self) -> String {
        let r = self.run(&["identity"]).expect_ok();
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix("uuid "))
            .expect("uuid line")
            .to_string()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("mediator.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("mediator.key")
    }

    /// stdout and stderr of every run so far.
    pub fn all_output(&self) -> String {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(Run::output)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `ocf-mitm` between the Mediator and `target`, killed when dropped.
pub struct Mitm {
    pub child: Child,
    /// `coaps+tcp://IP:PORT` to give the Mediator.
    pub ep: String,
    stderr: mpsc::Receiver<String>,
}

impl Mitm {
    pub fn start(target: SocketAddr) -> Mitm {
        let mut child = Command::new(binary("ocf-mitm"))
            .args(["--target", &target.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ocf-mitm");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ep = None;
        for line in out.lines().map_while(Result::ok) {
            if let Some(e) = line.strip_prefix("ocf-mitm: listening ") {
                ep = Some(e.to_string());
            }
            if line == "ocf-mitm: ready" {
                break;
            }
        }
        let ep = ep.expect("ocf-mitm did not say where it listens");
        Mitm {
            child,
            ep,
            stderr: rx,
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites a whole answer (everything the target sent on one connection) before it is
/// passed on.
pub type Rewrite = fn(&[u8]) -> Vec<u8>;

/// A TCP forwarder to `target` that records every byte the target sends back, and can rewrite
/// the answers (for one-shot request/answer protocols such as HTTP with `Connection: close`).
pub struct RecordingProxy {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl RecordingProxy {
    pub fn start(target: SocketAddr) -> RecordingProxy {
        RecordingProxy::start_with(target, None)
    }

    /// Forwards to `target`; with `rewrite`, each connection's whole answer is read to its end,
    /// recorded as the target sent it, and passed on rewritten.
    pub fn start_with(target: SocketAddr, rewrite: Option<Rewrite>) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, st) = (recorded.clone(), stop.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut inbound) = inbound else { continue };
                let Ok(mut outbound) = TcpStream::connect(target) else {
                    continue;
                };
                let (Ok(mut in2), Ok(mut out2)) = (inbound.try_clone(), outbound.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut inbound, &mut outbound);
                    let _ = outbound.shutdown(Shutdown::Write);
                });
                let rec = rec.clone();
                if let Some(f) = rewrite {
                    std::thread::spawn(move || {
                        let mut all = Vec::new();
                        let _ = out2.read_to_end(&mut all);
                        rec.lock().unwrap().extend_from_slice(&all);
                        let _ = in2.write_all(&f(&all));
                        let _ = in2.shutdown(Shutdown::Both);
                    });
                    continue;
                }
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match out2.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                if in2.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = in2.shutdown(Shutdown::Both);
                });
            }
        });
        RecordingProxy {
            addr,
            recorded,
            stop,
        }
    }

    /// `http://IP:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything recorded so far.
    pub fn recorded(&self) -> String {
        String::from_utf8_lossy(&self.recorded.lock().unwrap()).into_owned()
    }

    /// Values of `"key":"value"` pairs in the recorded JSON answers.
    pub fn json_values(&self, key: &str) -> Vec<String> {
        let text = self.recorded();
        let pat = format!("\"{key}\":\"");
        text.match_indices(&pat)
            .filter_map(|(i, _)| {
                let rest = &text[i + pat.len()..];
                rest.find('"').map(|end| rest[..end].to_string())
            })
            .collect()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
