//! The cloud figures of `cargo xtask bench`: the agent and `ocf-dev-cloud`
//! on loopback with TLS (coaps+tcp, the identity certificate from the cloud's CA).
//!
//! - process start → published: first boot (a `cloud.cbor` holding only the configuration, as an
//!   installer would leave it): sign-up + sign-in + publish. An agent that is already registered
//!   (state directory with identity.key/.crt, cloud-ca.pem and the `cloud.cbor` of an earlier run)
//!   is then started N times: refresh (the restored token expires) + sign-in, and nothing to
//!   publish (the RD's links are persisted and unchanged): process start → signed in.
//! - cloud connection cut → signed in again, through a [`Proxy`] that drops the connection.
//! - forwarded GET through the HTTP API with 1 and 16 keep-alive clients, and the agent's CPU
//!   time per forwarded GET (from /proc/PID/task/*/schedstat).
//! - agent RSS when signed in and idle, for each build given.
//!
//! Instants come from the agent's own log lines (`signed in to the cloud`, `published to the
//! cloud`: written when the cloud's answer arrived), timestamped as they are read from its
//! stderr; the agent runs with `OCF_LOG=info`, as installed.
//!
//! Included by `bin/bench.rs` with `#[path]`, so the library is left as it is.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ocf::cloud::{Clec, CloudConf, Cps, PersistedState, Secret};
use ocf_e2e::cloud::{DevCloud, Proxy};
use ocf_e2e::{bin_dir, binary, provision, TempDir};

pub const SIGNED_UP: &str = "signed up with the cloud";
pub const SIGNED_IN: &str = "signed in to the cloud";
pub const PUBLISHED: &str = "published to the cloud";

/// An `ocf-agent` process (any build) whose stderr lines are timestamped as they arrive.
pub struct TimedAgent {
    child: Child,
    pub spawned: Instant,
    pub di: String,
    pub tcp: Option<SocketAddr>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<(Instant, String)>,
    lines: Vec<(Instant, String)>,
}

impl TimedAgent {
    /// Starts `bin` on loopback (OS-chosen ports, no multicast) with `state`; returns at once.
    pub fn spawn(bin: &Path, state: &Path, extra: &[&str]) -> TimedAgent {
        let spawned = Instant::now();
        let mut child = Command::new(bin)
            .args(["--board", "sim", "--state-dir"])
            .arg(state)
            // As the e2e harness starts it: loopback, OS-chosen ports, and the development mode
            // (the cloud link without onboarding, with identity.crt and cloud-ca.pem).
            .args([
                "--udp",
                "127.0.0.1:0",
                "--tcp",
                "127.0.0.1:0",
                "--tls",
                "127.0.0.1:0",
                "--dtls",
                "127.0.0.1:0",
                "--multicast",
                "off",
                "--insecure-dev",
            ])
            .args(extra)
            .env("OCF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let (out_tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if err_tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        TimedAgent {
            child,
            spawned,
            di: String::new(),
            tcp: None,
            stdout,
            stderr,
            lines: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for `ocf-agent: ready`, noting the di and the coap+tcp endpoint.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self
                .stdout
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if let Some(v) = line.strip_prefix("ocf-agent: di ") {
                        self.di = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("ocf-agent: endpoint coap+tcp://") {
                        self.tcp = v.trim().parse().ok();
                    } else if line == "ocf-agent: ready" {
                        return;
                    }
                }
                Err(_) => panic!("ocf-agent did not become ready:\n{}", self.log_text()),
            }
        }
    }

    fn drain(&mut self) {
        self.lines.extend(self.stderr.try_iter());
    }

    /// The arrival time of the first log line containing `what` read at or after `after`.
    pub fn wait_line(&mut self, what: &str, after: Instant, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            self.drain();
            if let Some((t, _)) = self.lines[seen..]
                .iter()
                .find(|(t, l)| *t >= after && l.contains(what))
            {
                return *t;
            }
            seen = self.lines.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what:?} from the agent within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            match self.stderr.recv_timeout(left) {
                Ok(l) => self.lines.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the agent exited while waiting for {what:?}:\n{}",
                        self.log_text()
                    )
                }
            }
        }
    }

    /// Log lines containing `what` so far.
    pub fn count(&mut self, what: &str) -> usize {
        self.drain();
        self.lines.iter().filter(|(_, l)| l.contains(what)).count()
    }

    pub fn log_text(&mut self) -> String {
        self.drain();
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM, then waits (SIGKILL after 10 s).
    pub fn terminate(&mut self) {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TimedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ocf-agent csr` → the cloud's CA → `identity.crt` + `cloud-ca.pem` in `state` (the interim
/// file provisioning of [`ocf_e2e::provision`] for the development mode, `--insecure-dev`: the
/// bench measures the protocol path, not the onboarding).
pub fn provision_identity(cloud: &DevCloud, state: &Path) {
    let csr = provision::agent_csr(&bin_dir(), state).unwrap_or_else(|e| panic!("{e}"));
    let (cert, ca) = cloud.sign_csr(&csr);
    provision::install_identity(state, &cert, &ca).unwrap_or_else(|e| panic!("{e}"));
}

/// A provisioned state directory whose `cloud.cbor` holds a fresh configuration for `cis` (a
/// new authorisation code, not yet signed up): the agent signs up when it starts.
pub fn configured_state(cloud: &DevCloud, state: &Path, cis: &str) {
    provision_identity(cloud, state);
    let conf = CloudConf {
        cis: cis.to_string(),
        sid: cloud.sid.clone(),
        apn: "plgd".into(),
        at: Secret::new(cloud.auth_code("bench")),
        servers: Vec::new(),
    };
    let st = PersistedState {
        version: PersistedState::VERSION,
        cps: Cps::ReadyToRegister,
        clec: Clec::Ok,
        conf: Some(conf),
        registration: None,
        published: Vec::new(),
    };
    let path = state.join("cloud.cbor");
    std::fs::write(&path, st.to_cbor().expect("cloud.cbor")).expect("write cloud.cbor");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Sorted samples.
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Samples {
        v.sort();
        Samples(v)
    }
    pub fn median(&self) -> Duration {
        percentile(&self.0, 0.5)
    }
    pub fn p90(&self) -> Duration {
        percentile(&self.0, 0.9)
    }
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// Start → published figures.
pub struct StartFigures {
    /// Spawn → published, first boot (sign-up + sign-in + publish), fresh identity each time.
    pub first_boot: Samples,
    /// Spawn → signed in, first boot.
    pub first_signed_in: Samples,
    /// Spawn → published, registered agent restarted (refresh + sign-in + publish).
    pub restart: Samples,
    /// A registered state directory (direct to the cloud), for the RSS runs.
    pub registered_state: PathBuf,
}

/// First boots (`first` times, each with a new identity) and restarts (`restarts` times) of the
/// `ocf-agent` next to the bench binary.
pub fn start_to_published(
    cloud: &DevCloud,
    dir: &TempDir,
    first: usize,
    restarts: usize,
) -> StartFigures {
    let bin = binary("ocf-agent");
    let mut first_boot = Vec::new();
    let mut first_signed_in = Vec::new();
    let mut registered_state = PathBuf::new();
    for i in 0..first {
        let state = dir.path().join(format!("first-{i}"));
        configured_state(cloud, &state, &cloud.cis());
        let mut a = TimedAgent::spawn(&bin, &state, &[]);
        let t_pub = a.wait_line(PUBLISHED, a.spawned, Duration::from_secs(20));
        let t_in = a.wait_line(SIGNED_IN, a.spawned, Duration::from_secs(1));
        assert_eq!(
            a.count(SIGNED_UP),
            1,
            "first boot signs up:\n{}",
            a.log_text()
        );
        first_boot.push(t_pub - a.spawned);
        first_signed_in.push(t_in - a.spawned);
        // Let the cloud finish its discovery, so the restart below starts from quiet.
        std::thread::sleep(Duration::from_millis(200));
        a.terminate();
        registered_state = state;
    }
    let bin_restart = bin.clone();
    let mut restart = Vec::new();
    for _ in 0..restarts {
        let mut a = TimedAgent::spawn(&bin_restart, &registered_state, &[]);
        let t_in = a.wait_line(SIGNED_IN, a.spawned, Duration::from_secs(20));
        restart.push(t_in - a.spawned);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            (a.count(SIGNED_UP), a.count(PUBLISHED)),
            (0, 0),
            "a restart neither signs up nor republishes unchanged links:\n{}",
            a.log_text()
        );
        a.terminate();
    }
    StartFigures {
        first_boot: Samples::new(first_boot),
        first_signed_in: Samples::new(first_signed_in),
        restart: Samples::new(restart),
        registered_state,
    }
}

/// Cuts the agent's cloud connection `cuts` times (through a proxy); cut → signed in again.
pub fn cut_to_signed_in(cloud: &DevCloud, dir: &TempDir, cuts: usize) -> Samples {
    let proxy = Proxy::start(cloud.coaps);
    let state = dir.path().join("cut");
    configured_state(cloud, &state, &format!("coaps+tcp://{}", proxy.addr));
    let mut a = TimedAgent::spawn(&binary("ocf-agent"), &state, &[]);
    a.wait_line(PUBLISHED, a.spawned, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    for i in 0..cuts {
        let t0 = Instant::now();
        proxy.cut();
        let t = a.wait_line(SIGNED_IN, t0, Duration::from_secs(20));
        times.push(t - t0);
        // Let the cloud's discovery after the sign-in settle; vary the phase a little.
        std::thread::sleep(Duration::from_millis(250 + 37 * (i as u64 % 5)));
    }
    a.terminate();
    Samples::new(times)
}

/// A keep-alive HTTP/1.1 client for the cloud's API (Content-Length bodies).
pub struct HttpClient {
    stream: TcpStream,
    buf: Vec<u8>,
    host: SocketAddr,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> HttpClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        HttpClient {
            stream,
            buf: Vec::with_capacity(8192),
            host: addr,
        }
    }

    /// GET `path` with a bearer token: (status, body).
    pub fn get(&mut self, path: &str, token: &str) -> (u16, Vec<u8>) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n",
            self.host
        );
        self.stream
            .write_all(req.as_bytes())
            .expect("write request");
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = self.stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "the cloud closed the keep-alive connection");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length (keep-alive client): {head}"));
        let total = head_end + 4 + len;
        while self.buf.len() < total {
            let n = self.stream.read(&mut chunk).expect("read body");
            assert!(n > 0, "the cloud closed the connection mid-body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end + 4..total].to_vec();
        self.buf.drain(..total);
        (status, body)
    }
}

/// CPU time of every thread of `pid` so far (ns on CPU, /proc/PID/task/*/schedstat).
pub fn cpu_ns(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// The forwarded-GET load figures.
pub struct ForwardFigures {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Agent CPU time per forwarded GET.
    pub agent_cpu: Duration,
    /// Cloud CPU time per forwarded GET.
    pub cloud_cpu: Duration,
}

/// `clients` keep-alive clients send `GET /api/v1/devices/{di}/resources{href}?shadow=false`
/// (a request to the device) back to back for `duration` (after a warm-up).
pub fn forwarded_get(
    cloud: &DevCloud,
    agent_pid: i32,
    di: &str,
    href: &str,
    clients: usize,
    duration: Duration,
) -> ForwardFigures {
    let addr = cloud.http;
    let path = format!("/api/v1/devices/{di}/resources{href}?shadow=false");
    let token = cloud.token();
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (path, barrier, token) = (path.clone(), barrier.clone(), token.clone());
            std::thread::spawn(move || {
                let mut c = HttpClient::connect(addr);
                for _ in 0..20 {
                    let (status, body) = c.get(&path, &token);
                    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
                }
                barrier.wait();
                let mut lat = Vec::new();
                let end = Instant::now() + duration;
                while Instant::now() < end {
                    let t = Instant::now();
                    let (status, body) = c.get(&path, &token);
                    lat.push(t.elapsed());
                    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let (agent0, cloud0) = (cpu_ns(agent_pid), cpu_ns(cloud.child.id() as i32));
    let start = Instant::now();
    let lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let elapsed = start.elapsed();
    let (agent1, cloud1) = (cpu_ns(agent_pid), cpu_ns(cloud.child.id() as i32));
    let n = lat.len().max(1) as u64;
    let s = Samples::new(lat);
    ForwardFigures {
        rps: s.0.len() as f64 / elapsed.as_secs_f64(),
        p50: s.median(),
        p99: percentile(&s.0, 0.99),
        agent_cpu: Duration::from_nanos(agent1.saturating_sub(agent0) / n),
        cloud_cpu: Duration::from_nanos(cloud1.saturating_sub(cloud0) / n),
    }
}

/// Memory of a process, KiB, from /proc/PID/status and /proc/PID/smaps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    /// Resident part of the brk heap (`[heap]`); mmap'ed malloc arenas are in `anon` only.
    pub heap: u64,
}

pub fn memory(pid: i32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let mut heap = 0;
    if let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
        let mut in_heap = false;
        for line in smaps.lines() {
            if line
                .split_whitespace()
                .next()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                in_heap = line.trim_end().ends_with("[heap]");
            } else if in_heap {
                if let Some(v) = line.strip_prefix("Rss:") {
                    heap += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
    }
    Some(Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        heap,
    })
}

/// Starts `bin` with the registered `state`, waits until it has signed in and the cloud's
/// discovery has settled, and reads its memory.
pub fn signed_in_idle_memory(bin: &Path, state: &Path, settle: Duration) -> Memory {
    let mut a = TimedAgent::spawn(bin, state, &[]);
    a.wait_line(SIGNED_IN, a.spawned, Duration::from_secs(20));
    std::thread::sleep(settle);
    let m = memory(a.pid()).unwrap_or_default();
    if std::env::var_os("OCF_BENCH_SMAPS").is_some() {
        eprintln!(
            "{}: resident mappings (KiB):\n{}",
            bin.display(),
            resident_mappings(a.pid())
        );
    }
    a.terminate();
    m
}

/// Resident KiB per mapping of `pid` (`OCF_BENCH_SMAPS=1` prints it for the RSS runs), to see
/// where the memory goes: code and read-only data of the binary and libc, relocated data, heap.
pub fn resident_mappings(pid: i32) -> String {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return String::new();
    };
    let mut out = String::new();
    let mut head = String::new();
    let (mut rss, mut anon) = (0u64, 0u64);
    let kib = |v: &str| {
        v.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let flush = |head: &str, rss: u64, anon: u64, out: &mut String| {
        if rss > 0 {
            let f: Vec<&str> = head.split_whitespace().collect();
            let name = f.get(5).copied().unwrap_or("[anon]");
            let name = name.rsplit('/').next().unwrap_or(name);
            out.push_str(&format!(
                "  {:>6} (anon {:>5})  {} {}\n",
                rss,
                anon,
                f.get(1).copied().unwrap_or(""),
                name
            ));
        }
    };
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            flush(&head, rss, anon, &mut out);
            head = line.to_string();
            rss = 0;
            anon = 0;
        } else if let Some(v) = line.strip_prefix("Rss:") {
            rss = kib(v);
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            anon = kib(v);
        }
    }
    flush(&head, rss, anon, &mut out);
    out
}
