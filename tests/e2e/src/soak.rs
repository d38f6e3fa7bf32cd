//! The soak run (`ocf-soak`, `cargo xtask soak --minutes N`, and a 2-minute e2e test): the
//! agent in its secure mode on the sim board and the dev cloud on loopback, onboarded by the
//! Mediator as a user would; then, for the whole run:
//!
//! - the cloud is cut (killed, down for 1–5 s, started again) or restarted (killed and started
//!   at once) every 15–30 s, at random; each time, how long until a forwarded GET works again
//!   (the reconnect time);
//! - forwarded GETs of `/temperature` through the dev cloud's HTTP API, one every 500 ms;
//! - the owner observes `/temperature` over the local secure endpoint;
//! - idle TLS connections come (3 every 5 s) and go (after 20 s).
//!
//! Every minute: the agent's RSS, anonymous memory (heap), open file descriptors, and the
//! counts so far. At the end: the RSS slope, the sign-up count (from the cloud's request log:
//! it must stay 1) and the reconnect times.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocf::resource::{Method, Request};

use crate::cloud::{Api, DevCloud};
use crate::mediator::{pin_file, secure_agent_args, Mediator, SecureAgent};
use crate::tls_client::TlsClient;
use crate::Receive;
use crate::Spawn;

const PIN: &str = "16180339";
/// The longest a device may take to be reachable through the cloud again after a cut: the
/// agent's reconnect back-off (full jitter, 60 s cap) plus a sign-in.
const RECONNECT_LIMIT: Duration = Duration::from_secs(90);

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    /// Working directory (emptied first): the cloud's data, the agent's state, the logs.
    pub dir: PathBuf,
    /// Seeds the cut schedule.
    pub seed: u64,
    /// Where the binaries are.
    pub bin_dir: PathBuf,
}

/// One minute's reading of the agent.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    /// Anonymous resident memory (`RssAnon`): the heap and the stacks.
    pub anon_kib: u64,
    pub fds: usize,
    pub gets_ok: u64,
    pub gets_failed: u64,
    pub notifications: u64,
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    /// Sign-ups the cloud saw from the device over the whole run.
    pub sign_ups: usize,
    /// Time from each cloud restart to the first forwarded GET that works.
    pub reconnects: Vec<Duration>,
    /// Cuts after which the device did not come back within [`RECONNECT_LIMIT`].
    pub lost: usize,
    pub cuts: usize,
    /// Times the owner's observation had to be set up again.
    pub observation_restarts: u64,
    pub idle_connections_opened: u64,
    /// RSS growth by least squares over the samples after the first, KiB per minute.
    pub rss_slope_kib_per_min: f64,
    pub agent_alive: bool,
}

impl SoakReport {
    /// The summary lines the README's performance section quotes.
    pub fn summary(&self) -> String {
        let secs: Vec<f64> = self.reconnects.iter().map(Duration::as_secs_f64).collect();
        let mut sorted = secs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        let max = sorted.last().copied().unwrap_or(0.0);
        let first = self.samples.first();
        let last = self.samples.last();
        format!(
            "cuts {} (not back within {} s: {}), reconnect median {:.1} s, max {:.1} s\n\
             sign-ups {} (must be 1), observation restarts {}, idle TLS connections opened {}\n\
             RSS {} → {} KiB, slope {:.1} KiB/min; anon {} → {} KiB; fds {} → {}\n\
             forwarded GETs ok {} failed {}; notifications {}; agent alive: {}",
            self.cuts,
            RECONNECT_LIMIT.as_secs(),
            self.lost,
            median,
            max,
            self.sign_ups,
            self.observation_restarts,
            self.idle_connections_opened,
            first.map_or(0, |s| s.rss_kib),
            last.map_or(0, |s| s.rss_kib),
            self.rss_slope_kib_per_min,
            first.map_or(0, |s| s.anon_kib),
            last.map_or(0, |s| s.anon_kib),
            first.map_or(0, |s| s.fds),
            last.map_or(0, |s| s.fds),
            last.map_or(0, |s| s.gets_ok),
            last.map_or(0, |s| s.gets_failed),
            last.map_or(0, |s| s.notifications),
            self.agent_alive,
        )
    }
}

/// Least-squares slope of `(x minutes, y KiB)`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// SplitMix64 for the schedule.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// Counters shared with the load threads.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    gets_ok: AtomicU64,
    gets_failed: AtomicU64,
    notifications: AtomicU64,
    observation_restarts: AtomicU64,
    idle_opened: AtomicU64,
    /// When the last forwarded GET worked.
    last_ok: Mutex<Option<Instant>>,
}

fn forwarded_gets(load: Arc<Load>, api: Api, di: String) {
    while !load.stop.load(Ordering::Relaxed) {
        match api.try_resource(&di, "/temperature") {
            Ok(r) if r.status == 200 => {
                load.gets_ok.fetch_add(1, Ordering::Relaxed);
                *load.last_ok.lock().unwrap() = Some(Instant::now());
            }
            _ => {
                load.gets_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn observation(load: Arc<Load>, addr: std::net::SocketAddr, owner: (String, String)) {
    let mut first = true;
    while !load.stop.load(Ordering::Relaxed) {
        if !first {
            load.observation_restarts.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(500));
        }
        first = false;
        let Ok(mut c) = TlsClient::try_connect(addr, Some(owner.clone())) else {
            continue;
        };
        // The reading may rest for a while; only a closed connection ends the wait.
        let _ = c
            .stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(120)));
        let mut req = Request::new(Method::Get, "/temperature");
        req.observe = Some(0);
        let token = c.token();
        if c.try_send(&req.to_packet(&token)).is_err() {
            continue;
        }
        // The registration's answer, then a notification each time the reading moves.
        while !load.stop.load(Ordering::Relaxed) {
            match c.recv_token(&token) {
                Some(_) => {
                    load.notifications.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
    }
}

fn idle_connections(load: Arc<Load>, addr: std::net::SocketAddr) {
    let mut held: Vec<(Instant, TlsClient)> = Vec::new();
    while !load.stop.load(Ordering::Relaxed) {
        for _ in 0..3 {
            if let Ok(c) = TlsClient::try_connect(addr, None) {
                load.idle_opened.fetch_add(1, Ordering::Relaxed);
                held.push((Instant::now(), c));
            }
        }
        held.retain(|(at, _)| at.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Sign-ups of `di` in the cloud's request log (kept in memory: read before every kill).
fn sign_ups(api: &Api, di: &str) -> usize {
    api.try_request_log()
        .ok()
        .map(|log| {
            log.iter()
                .filter(|e| {
                    e["di"] == di
                        && e["path"]
                            .as_str()
                            .is_some_and(|p| p.starts_with("/oic/sec/account"))
                        && e["method"]
                            .as_str()
                            .is_some_and(|m| m.eq_ignore_ascii_case("POST"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn prepare(dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Runs the soak; `progress` gets a line per minute and per cut.
pub fn run(opts: &SoakOptions, progress: &mut dyn FnMut(&str)) -> Result<SoakReport, String> {
    prepare(&opts.dir)?;
    let how = |log: &str| Spawn {
        bin_dir: opts.bin_dir.clone(),
        log_level: "info".into(),
        log_file: Some(opts.dir.join(log)),
        supervised: true,
    };
    let mut cloud = DevCloud::spawn(
        &opts.dir.join("cloud"),
        "127.0.0.1:0",
        "",
        "127.0.0.1:0",
        Vec::new(),
        &how("cloud.log"),
    )?;
    let pin = pin_file(&opts.dir, PIN);
    let state = opts.dir.join("agent");
    let agent = SecureAgent::spawn_with(
        &state,
        &secure_agent_args(&state, Some(&pin), &[]),
        &how("agent.log"),
        &[],
    )?;
    let pid = agent.child.id();
    let mediator = Mediator::new(&opts.dir.join("mediator"));
    mediator.token_from(&cloud);
    let api = cloud.api();
    let run = mediator.onboard(PIN, &agent.ep, &format!("http://{}", cloud.http), &[]);
    if !run.ok() || !run.stdout.contains("cps registered") {
        return Err(format!("onboarding failed:\n{}", run.output()));
    }
    let di = agent.di.clone();
    let owner = (
        std::fs::read_to_string(mediator.cert_path()).map_err(|e| e.to_string())?,
        std::fs::read_to_string(mediator.key_path()).map_err(|e| e.to_string())?,
    );
    progress(&format!("onboarded {di}; soaking for {:?}", opts.duration));

    let load = Arc::new(Load::default());
    let threads = vec![
        {
            let (load, di, api) = (load.clone(), di.clone(), api.clone());
            std::thread::spawn(move || forwarded_gets(load, api, di))
        },
        {
            let (load, addr) = (load.clone(), agent.coaps);
            std::thread::spawn(move || observation(load, addr, owner))
        },
        {
            let (load, addr) = (load.clone(), agent.coaps);
            std::thread::spawn(move || idle_connections(load, addr))
        },
    ];

    let mut report = SoakReport::default();
    let mut rng = Rng(opts.seed);
    let start = Instant::now();
    let end = start + opts.duration;
    let mut next_sample = start + Duration::from_secs(60);
    let mut next_cut = start + Duration::from_secs(15 + rng.below(16));
    let mut counted_sign_ups = 0;
    let sample = |at: Duration| Sample {
        at,
        rss_kib: status_kib(pid, "VmRSS:"),
        anon_kib: status_kib(pid, "RssAnon:"),
        fds: open_fds(pid),
        gets_ok: load.gets_ok.load(Ordering::Relaxed),
        gets_failed: load.gets_failed.load(Ordering::Relaxed),
        notifications: load.notifications.load(Ordering::Relaxed),
    };
    let mut agent = agent;
    while Instant::now() < end {
        if agent.child.try_wait().ok().flatten().is_some() {
            break;
        }
        let now = Instant::now();
        if now >= next_sample {
            let s = sample(now - start);
            progress(&format!(
                "{:>4} min  RSS {} KiB  anon {} KiB  fds {}  GETs ok {} failed {}  notifications {}",
                s.at.as_secs() / 60,
                s.rss_kib,
                s.anon_kib,
                s.fds,
                s.gets_ok,
                s.gets_failed,
                s.notifications
            ));
            report.samples.push(s);
            next_sample += Duration::from_secs(60);
        }
        if now >= next_cut {
            counted_sign_ups += sign_ups(&cloud.api(), &di);
            let down = if rng.below(2) == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(1 + rng.below(5))
            };
            if down.is_zero() {
                cloud.restart();
            } else {
                cloud.kill();
                std::thread::sleep(down);
                cloud.restart();
            }
            let back_up = Instant::now();
            report.cuts += 1;
            let back = wait_back(&load, back_up);
            match back {
                Some(took) => {
                    progress(&format!(
                        "cut {} (down {:?}): reachable through the cloud again after {:.1} s",
                        report.cuts,
                        down,
                        took.as_secs_f64()
                    ));
                    report.reconnects.push(took);
                }
                None => {
                    progress(&format!(
                        "cut {}: not back within {RECONNECT_LIMIT:?}",
                        report.cuts
                    ));
                    report.lost += 1;
                }
            }
            next_cut = Instant::now() + Duration::from_secs(15 + rng.below(16));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let final_sample = sample(start.elapsed());
    if report
        .samples
        .last()
        .is_none_or(|s| s.at + Duration::from_secs(30) < final_sample.at)
    {
        report.samples.push(final_sample);
    }
    report.agent_alive = agent.child.try_wait().ok().flatten().is_none();
    load.stop.store(true, Ordering::Relaxed);
    counted_sign_ups += sign_ups(&cloud.api(), &di);
    report.sign_ups = counted_sign_ups;
    report.observation_restarts = load.observation_restarts.load(Ordering::Relaxed);
    report.idle_connections_opened = load.idle_opened.load(Ordering::Relaxed);
    let points: Vec<(f64, f64)> = report
        .samples
        .iter()
        .skip(1)
        .map(|s| (s.at.as_secs_f64() / 60.0, s.rss_kib as f64))
        .collect();
    report.rss_slope_kib_per_min = slope(&points);
    // Stop the agent first: the load threads then see their connections end.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    cloud.kill();
    for t in threads {
        let _ = t.join();
    }
    Ok(report)
}

/// How long after `since` a forwarded GET works again; `None` past [`RECONNECT_LIMIT`].
fn wait_back(load: &Load, since: Instant) -> Option<Duration> {
    let deadline = since + RECONNECT_LIMIT;
    while Instant::now() < deadline {
        if let Some(ok) = *load.last_ok.lock().unwrap() {
            if ok > since {
                return Some(ok - since);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, 100.0 + 3.0 * i as f64))
            .collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        let flat = [(1.0, 10.0), (2.0, 12.0), (3.0, 10.0), (4.0, 12.0)];
        assert!(slope(&flat).abs() < 1.0);
    }
}
