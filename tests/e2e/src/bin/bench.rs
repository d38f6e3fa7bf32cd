//! `cargo xtask bench`: starts the release agent on loopback and measures it from outside.
//! Prints Markdown rows for the README's performance table.
//!
//! Figures: GET /oic/d over coap+tcp with 1 and 16 concurrent connections (requests/s,
//! p50/p99 latency), the agent's idle RSS, and the stripped binary size.

use std::time::{Duration, Instant};

use ocf_e2e::{get, Agent, TcpClient, TempDir};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Each of `clients` threads sends GET /oic/d back to back for `duration`.
fn load(agent: &Agent, clients: usize, duration: Duration) -> (f64, Duration, Duration) {
    let addr = agent.tcp;
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpClient::connect(addr);
                let req = get("/oic/d");
                // Warm-up.
                for _ in 0..50 {
                    c.request(&req);
                }
                let mut lat = Vec::new();
                let end = Instant::now() + duration;
                while Instant::now() < end {
                    let t = Instant::now();
                    let r = c.request(&req);
                    lat.push(t.elapsed());
                    assert_eq!(r.code, coap_lite::ResponseType::Content);
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect();
    let elapsed = start.elapsed().min(duration + Duration::from_millis(500)).max(duration);
    all.sort();
    let rps = all.len() as f64 / elapsed.as_secs_f64();
    (rps, percentile(&all, 0.50), percentile(&all, 0.99))
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = TempDir::new("bench");
    let agent = Agent::start(dir.path(), &[]);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let machine = format!("{} cores, {cpu}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = agent.rss_kib().unwrap_or(0);
    println!("| figure | value | machine |");
    println!("|---|---|---|");
    for clients in [1usize, 16] {
        let (rps, p50, p99) = load(&agent, clients, Duration::from_secs(seconds));
        println!(
            "| GET /oic/d over coap+tcp, {clients} connection{} | {rps:.0} req/s, p50 {}, p99 {} | {machine} |",
            if clients == 1 { "" } else { "s" },
            micros(p50),
            micros(p99)
        );
    }
    println!("| agent RSS, idle on the sim board | {:.1} MiB | {machine} |", idle_rss as f64 / 1024.0);
    let loaded_rss = agent.rss_kib().unwrap_or(0);
    println!("| agent RSS after the load runs | {:.1} MiB | {machine} |", loaded_rss as f64 / 1024.0);
    if let Ok(meta) = std::fs::metadata(ocf_e2e::binary("ocf-agent")) {
        println!("| ocf-agent binary (this profile, x86_64 glibc) | {:.2} MB | {machine} |", meta.len() as f64 / 1e6);
    }
}
