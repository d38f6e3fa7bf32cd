//! `cargo xtask bench`: starts the release agent on loopback and measures it from outside.
//! Prints Markdown rows for the README's performance table.
//!
//! Figures: GET /oic/d over coap+tcp with 1 and 16 concurrent connections (requests/s,
//! p50/p99 latency), the agent's idle RSS, and the stripped binary size.

use std::time::{Duration, Instant};

use ciborium::Value;
use ocf::coap::tcp_conn::TcpConnection;
use ocf::resource::{Device, DeviceInfo, Origin, PlatformInfo, Props, Resource};
use ocf_drivers::board::Board;
use ocf_drivers::device::{Device as LiveDevice, HardwareEnv, LiveDriver};
use ocf_e2e::{get, map, post_cbor, Agent, TcpClient, TempDir};

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
        PlatformInfo { pi: "00000000-0000-4000-8000-000000000003".into(), manufacturer: "bench".into(), extra: Props::new() },
    );
    let mut sensor = None;
    for r in live.resources {
        let types: Vec<&str> = r.resource_types.iter().map(String::as_str).collect();
        let href = r.href.clone();
        device.add(Resource::new(&r.href, &types, &r.interfaces, r.policy, r.backend)).expect("add");
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
    let mut observer = TcpClient::connect(agent.tcp);
    let mut req = get("/switch");
    req.observe = Some(0);
    observer.request_with_token(&req, b"bench-ob");
    let mut writer = TcpClient::connect(agent.tcp);
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
    let (p50, p99) = write_to_notification(&agent, 2000);
    println!("| switch POST on one connection → notification on another (coap+tcp) | p50 {}, p99 {} | {machine} |", micros(p50), micros(p99));
    let (p50, p99) = sensor_to_notification(20000);
    println!(
        "| simulated sensor change → notification frame encoded (in process; add up to one sampling period) | p50 {}, p99 {} | {machine} |",
        micros(p50),
        micros(p99)
    );
    println!("| agent RSS, idle on the sim board | {:.1} MiB | {machine} |", idle_rss as f64 / 1024.0);
    let loaded_rss = agent.rss_kib().unwrap_or(0);
    println!("| agent RSS after the load runs | {:.1} MiB | {machine} |", loaded_rss as f64 / 1024.0);
    // The size-tuned release build (`cargo xtask bench` builds it next to this profile's).
    let release = ocf_e2e::bin_dir().with_file_name("release").join("ocf-agent");
    if let Ok(meta) = std::fs::metadata(&release) {
        println!("| ocf-agent binary, release profile (opt-level z, LTO, stripped), x86_64 glibc | {:.2} MB | {machine} |", meta.len() as f64 / 1e6);
    }
}
