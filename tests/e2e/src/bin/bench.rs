//! `cargo xtask bench`: starts the release agent on loopback and measures it from outside.
//! Prints Markdown rows for the README's performance table, each beside its goal and the
//! reference device's (iotivity-lite, OCF-PROTOCOL.md §7.7) figure where there is one.
//!
//! Local figures: GET /oic/d over coap+tcp with 1 and 16 concurrent connections (requests/s,
//! p50/p99 latency), notification latencies, the agent's idle RSS, the stripped binary size.
//! Cloud figures ([`bench_cloud`]), agent and `ocf-dev-cloud` on loopback
//! with TLS: process start → signed in (restart of a registered agent), → published (first boot with the
//! sign-up), connection cut → signed in again, GET forwarded through the cloud's HTTP API with 1
//! and 16 keep-alive clients, RSS signed in and idle for the glibc and the static musl release
//! builds (`cargo xtask bench` builds both), and both builds' stripped size.
//!
//! `ocf-bench [SECONDS]`: SECONDS (default 5) per load run. `ocf-bench rss BINARY...`: only the
//! signed-in idle RSS of the given agent builds (to compare build options).

#[path = "../bench_cloud.rs"]
mod bench_cloud;

use std::time::{Duration, Instant};

use ciborium::Value;
use ocf::coap::tcp_conn::TcpConnection;
use ocf::resource::{Device, DeviceInfo, Origin, PlatformInfo, Props, Resource};
use ocf_drivers::board::Board;
use ocf_drivers::device::{Device as LiveDevice, HardwareEnv, LiveDriver};
use ocf_e2e::{get, map, post_cbor, Agent, Receive, TcpClient, TempDir};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Each of `clients` threads sends GET /oic/d back to back for `duration`.
fn load(agent: &Agent, clients: usize, duration: Duration) -> (f64, Duration, Duration) {
    let addr = agent.tcp();
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
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let elapsed = start
        .elapsed()
        .min(duration + Duration::from_millis(500))
        .max(duration);
    all.sort();
    let rps = all.len() as f64 / elapsed.as_secs_f64();
    (rps, percentile(&all, 0.50), percentile(&all, 0.99))
}

/// In process, the agent's own pipeline: a simulated temperature moves past its threshold, the
/// sampler reads it, the tree queues the notification, and the RFC 8323 frame is encoded — the
/// work between a sensor change and the bytes leaving the agent, without the wait for the next
/// sampling period (up to one period, 1 s on the sim board) and the socket write.
fn sensor_to_notification(samples: usize) -> (Duration, Duration) {
    let board = Board::builtin("sim").expect("sim board");
    let start = std::time::Instant::now();
    let live = LiveDevice::build(&board, &HardwareEnv::default(), start).expect("sim hardware");
    let mut device = Device::new(
        DeviceInfo {
            di: "00000000-0000-4000-8000-000000000001".into(),
            piid: "00000000-0000-4000-8000-000000000002".into(),
            name: "bench".into(),
            device_type: "oic.d.sensor".into(),
            spec_version: "ocf.2.5.0".into(),
            data_model_version: "ocf.res.1.3.0".into(),
            software_version: "0".into(),
        },
        PlatformInfo {
            pi: "00000000-0000-4000-8000-000000000003".into(),
            manufacturer: "bench".into(),
            extra: Props::new(),
        },
    );
    let mut sensor = None;
    for r in live.resources {
        let types: Vec<&str> = r.resource_types.iter().map(String::as_str).collect();
        let href = r.href.clone();
        device
            .add(Resource::new(
                &r.href,
                &types,
                &r.interfaces,
                r.policy,
                r.backend,
            ))
            .expect("add");
        if href == "/temperature" {
            if let LiveDriver::Sensor(task) = r.driver {
                sensor = Some((task, r.sim.expect("sim control")));
            }
        }
    }
    let (mut task, control) = sensor.expect("a simulated temperature");
    let mut now = start;
    task.handle_timeout(now);
    let mut observe = get("/temperature");
    observe.observe = Some(0);
    device.handle(&Origin::Stream(1), &observe, b"benchobs");
    let conn = TcpConnection::new(1 << 16);
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        now = task.poll_timeout().max(now);
        let t = Instant::now();
        control.set_value(if i % 2 == 0 { 25.0 } else { 20.0 });
        let report = task.handle_timeout(now).expect("due");
        assert!(report.notify);
        device.mark_changed("/temperature");
        let n = device.take_notifications();
        let bytes = conn.encode(&n[0].packet).expect("frame");
        std::hint::black_box(bytes);
        lat.push(t.elapsed());
    }
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// Out of process: one connection writes the switch, another observes it; the time from the
/// POST leaving the writer to the notification arriving at the observer.
fn write_to_notification(agent: &Agent, rounds: usize) -> (Duration, Duration) {
    let mut observer = TcpClient::connect(agent.tcp());
    let mut req = get("/switch");
    req.observe = Some(0);
    observer.request_with_token(&req, b"bench-ob");
    let mut writer = TcpClient::connect(agent.tcp());
    let mut lat = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let body = map(&[("value", Value::Bool(i % 2 == 0))]);
        let t = Instant::now();
        writer.send(&post_cbor("/switch", &body).to_packet(b"w"));
        observer.recv_token(b"bench-ob").expect("notification");
        lat.push(t.elapsed());
        writer.recv_token(b"w").expect("2.04");
    }
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

const NONE: &str = "—";

/// Where `cargo xtask bench` puts the static musl release build.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// `ocf-bench rss BINARY...`: only the signed-in idle RSS (and size) of other agent builds, to
/// compare build options.
fn rss_only(bins: &[String]) {
    let dir = TempDir::new("bench-rss");
    let cloud = ocf_e2e::cloud::DevCloud::start(&dir.path().join("cloud"), &[]);
    let starts = bench_cloud::start_to_published(&cloud, &dir, 1, 0);
    println!("| build | RSS signed in and idle | size |");
    println!("|---|---|---|");
    for bin in bins {
        let path = std::path::Path::new(bin);
        let m = bench_cloud::signed_in_idle_memory(
            path,
            &starts.registered_state,
            Duration::from_millis(1500),
        );
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "| {bin} | {} (anon {}, of it brk heap {}; file-backed {}) | {:.3} MB |",
            mib(m.rss),
            mib(m.anon),
            mib(m.heap),
            mib(m.file),
            size as f64 / 1e6
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("rss") {
        return rss_only(&args[1..]);
    }
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let machine = format!(
        "{} cores, {cpu}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let row = |figure: &str, value: String, goal: &str, reference: &str| {
        println!("| {figure} | {value} | {goal} | {reference} | {machine} |");
    };
    println!("| figure | value | goal | iotivity-lite (OCF-PROTOCOL.md §7.7) | machine |");
    println!("|---|---|---|---|---|");

    // Local endpoints, no cloud.
    {
        let dir = TempDir::new("bench");
        let agent = Agent::start(dir.path(), &[]);
        std::thread::sleep(Duration::from_millis(500));
        let idle_rss = agent.rss_kib().unwrap_or(0);
        for clients in [1usize, 16] {
            let (rps, p50, p99) = load(&agent, clients, Duration::from_secs(seconds));
            row(
                &format!(
                    "GET /oic/d over coap+tcp, {clients} connection{}",
                    if clients == 1 { "" } else { "s" }
                ),
                format!("{rps:.0} req/s, p50 {}, p99 {}", micros(p50), micros(p99)),
                NONE,
                NONE,
            );
        }
        let (p50, p99) = write_to_notification(&agent, 2000);
        row(
            "switch POST on one connection → notification on another (coap+tcp)",
            format!("p50 {}, p99 {}", micros(p50), micros(p99)),
            NONE,
            NONE,
        );
        let (p50, p99) = sensor_to_notification(20000);
        row(
            "simulated sensor change → notification frame encoded (in process; add up to one sampling period)",
            format!("p50 {}, p99 {}", micros(p50), micros(p99)),
            NONE,
            NONE,
        );
        row(
            "agent RSS, idle on the sim board, no cloud (bench-release profile, glibc)",
            mib(idle_rss),
            NONE,
            NONE,
        );
        let loaded_rss = agent.rss_kib().unwrap_or(0);
        row(
            "agent RSS after the load runs, no cloud (bench-release profile, glibc)",
            mib(loaded_rss),
            NONE,
            NONE,
        );
    }

    // The cloud link, TLS on loopback.
    let dir = TempDir::new("bench-cloud");
    let cloud = ocf_e2e::cloud::DevCloud::start(&dir.path().join("cloud"), &[]);
    let starts = bench_cloud::start_to_published(&cloud, &dir, 5, 20);
    let s = &starts.restart;
    row(
        &format!("process start → signed in, registered agent restarted (refresh + sign-in; links unchanged, so no publish; TLS), {} runs", s.0.len()),
        format!("median {}, p90 {}, max {}", millis(s.median()), millis(s.p90()), millis(s.max())),
        "≤ 100 ms",
        "connects ≈1.6 s after start (random 1–2 s delay), refreshes, signs in ≈1.7 s later (as §7.6 R2–R3): ≈3.3 s (derived)",
    );
    let (f, fi) = (&starts.first_boot, &starts.first_signed_in);
    row(
        &format!("process start → published, first boot (sign-up + sign-in + publish, TLS), {} runs", f.0.len()),
        format!(
            "median {}, p90 {} (signed in: median {})",
            millis(f.median()),
            millis(f.p90()),
            millis(fi.median())
        ),
        NONE,
        "connects ≈1.6 s after start, signs in ≈1.8 s after the sign-up answer, publishes at once: ≈3.4 s",
    );
    let cut = bench_cloud::cut_to_signed_in(&cloud, &dir, 20);
    row(
        &format!("cloud connection cut → signed in again (back-off with full jitter, first retry ≤ 1 s; TLS), {} cuts", cut.0.len()),
        format!("median {}, p90 {}, max {}", millis(cut.median()), millis(cut.p90()), millis(cut.max())),
        "≤ 1 s median",
        "≈3.4 s",
    );

    // Forwarded GETs through the cloud's HTTP API.
    {
        let agent_bin = ocf_e2e::binary("ocf-agent");
        let mut a = bench_cloud::TimedAgent::spawn(&agent_bin, &starts.registered_state, &[]);
        a.wait_ready();
        a.wait_line(bench_cloud::SIGNED_IN, a.spawned, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(500));
        for clients in [1usize, 16] {
            let f = bench_cloud::forwarded_get(
                &cloud,
                a.pid(),
                &a.di,
                "/temperature",
                clients,
                Duration::from_secs(seconds),
            );
            row(
                &format!(
                    "GET /api/v1/devices/{{di}}/resources/temperature?shadow=false through the dev cloud (HTTP keep-alive, {clients} client{}; TLS to the agent)",
                    if clients == 1 { "" } else { "s" }
                ),
                format!("{:.0} req/s, p50 {}, p99 {}", f.rps, micros(f.p50), micros(f.p99)),
                NONE,
                NONE,
            );
            row(
                &format!(
                    "agent CPU per forwarded GET ({clients} client{})",
                    if clients == 1 { "" } else { "s" }
                ),
                format!(
                    "{} (dev cloud: {})",
                    micros(f.agent_cpu),
                    micros(f.cloud_cpu)
                ),
                NONE,
                "≈15 µs per pipelined forwarded GET (plain TCP)",
            );
        }
        a.terminate();
    }

    // RSS signed in and idle, and the size of the shipped builds.
    let target = ocf_e2e::bin_dir()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let builds = [
        (
            "release profile, x86_64 glibc",
            target.join("release").join("ocf-agent"),
        ),
        (
            "release profile, x86_64 musl static",
            target.join(MUSL_TARGET).join("release").join("ocf-agent"),
        ),
        (
            "bench-release profile, x86_64 glibc",
            ocf_e2e::binary("ocf-agent"),
        ),
    ];
    for (name, bin) in &builds {
        if !bin.exists() {
            eprintln!(
                "ocf-bench: {} is not built (cargo xtask bench builds it); no RSS figure for it",
                bin.display()
            );
            continue;
        }
        let m = bench_cloud::signed_in_idle_memory(
            bin,
            &starts.registered_state,
            Duration::from_millis(1500),
        );
        row(
            &format!("agent RSS signed in and idle (TLS), {name}"),
            format!(
                "{} (anon {}, of it brk heap {}; file-backed {})",
                mib(m.rss),
                mib(m.anon),
                mib(m.heap),
                mib(m.file)
            ),
            "≤ 2.6 MiB",
            "≈2.2 MiB signed in",
        );
    }
    for (name, bin) in builds.iter().take(2) {
        if let Ok(meta) = std::fs::metadata(bin) {
            row(
                &format!("ocf-agent binary, {name} (opt-level z, LTO, stripped)"),
                format!("{:.2} MB", meta.len() as f64 / 1e6),
                NONE,
                NONE,
            );
        }
    }
    drop(cloud);
}
