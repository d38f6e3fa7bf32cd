//! Smoke tests of `ocf-demo`, what `cargo xtask demo` runs: the dev cloud and the agent (sim
//! board, secure mode) are started, the agent prints its setup PIN, `ocf-mediator onboard` with
//! that PIN takes ownership and provisions it, it registers, and readings come through the
//! cloud; both ways to end it (`--readings N`, and Ctrl-C) stop both children and exit 0; with
//! `--keep` the registered device signs back in without a second onboarding.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ocf_e2e::{binary, TempDir};

/// `ocf-demo --dir DIR ARGS...`, its stdout as lines on a channel.
fn start_demo(dir: &Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    // The demo starts these from its own directory: fail here with the command that builds them.
    binary("ocf-agent");
    binary("ocf-dev-cloud");
    binary("ocf-mediator");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocf-demo"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ocf-demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Collects stdout until the demo exits (killing it after `timeout`): (status, stdout, stderr).
fn finish(
    mut child: Child,
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    timeout: Duration,
) -> (ExitStatus, String) {
    let deadline = Instant::now() + timeout;
    let status = loop {
        seen.extend(rx.try_iter());
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ocf-demo still running after {timeout:?}; its output:\n{}",
                seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The reader thread ends at EOF.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// The PIDs of the cloud and the agent, from the `cloud ... pid N` and `agent ... pid N` lines.
fn child_pids(out: &[String]) -> Vec<i32> {
    out.iter()
        .filter(|l| l.starts_with("cloud ") || l.starts_with("agent "))
        .filter_map(|l| {
            l.rsplit_once("pid ")
                .and_then(|(_, p)| p.trim().parse().ok())
        })
        .collect()
}

/// The process is gone (reaped), not merely a zombie or still running.
fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn readings(out: &[String]) -> Vec<&String> {
    out.iter()
        .filter(|l| l.contains("temperature ") && l.contains("humidity ") && l.contains('°'))
        .collect()
}

fn has(out: &[String], needle: &str) -> bool {
    out.iter().any(|l| l.contains(needle))
}

/// The setup PIN from the `  PIN   NNNNNNNN ...` line.
fn setup_pin(out: &[String]) -> Option<String> {
    out.iter()
        .find_map(|l| l.strip_prefix("  PIN   "))
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|p| p.len() == 8 && p.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
}

/// The device's di from the `  di    UUID` line.
fn di(out: &[String]) -> Option<String> {
    out.iter()
        .find_map(|l| l.strip_prefix("  di    "))
        .map(|d| d.trim().to_string())
}

#[test]
fn demo_registers_and_reads_through_the_cloud() {
    let dir = TempDir::new("demo");
    let (child, rx) = start_demo(dir.path(), &["--readings", "2"]);
    let mut out = Vec::new();
    let (status, stderr) = finish(child, &rx, &mut out, Duration::from_secs(90));
    let all = out.join("\n");
    assert!(
        status.success(),
        "ocf-demo: {status}\n{all}\nstderr:\n{stderr}"
    );

    // The console's address comes first, before the device starts, with a token that works.
    let console = out
        .iter()
        .position(|l| l.starts_with("console http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no console line:\n{all}"));
    let agent = out
        .iter()
        .position(|l| l.starts_with("agent "))
        .unwrap_or_else(|| panic!("no agent line:\n{all}"));
    assert!(console < agent, "the console is not shown first:\n{all}");
    assert!(out[console].contains("/#token=dev."), "{}", out[console]);
    assert!(has(&out, "  sid   "), "no sid:\n{all}");
    assert!(
        has(&out, "coaps+tcp://127.0.0.1:") && has(&out, "http://127.0.0.1:"),
        "no cloud endpoints:\n{all}"
    );
    assert!(has(&out, "  di    "), "no di:\n{all}");
    assert!(
        !has(&out, "coap+tcp://"),
        "a plain coap+tcp endpoint in the secure mode:\n{all}"
    );
    let pin = setup_pin(&out).unwrap_or_else(|| panic!("no setup PIN shown:\n{all}"));
    assert!(
        has(
            &out,
            &format!(" onboard --pin {pin} --cloud http://127.0.0.1:")
        ) && has(&out, " --token-file "),
        "the Mediator not run with the PIN the agent printed:\n{all}"
    );
    for n in 1..=9 {
        assert!(
            has(&out, &format!("  [{n}/9] ")),
            "no onboarding progress line [{n}/9]:\n{all}"
        );
    }
    assert!(has(&out, "onboarded and registered in "), "{all}");
    assert!(
        !has(&out, "ocf-agent csr") && !has(&out, "POST /api/v1/csr"),
        "the interim provisioning is still there:\n{all}"
    );
    assert!(has(&out, "cps registered"), "never registered:\n{all}");
    assert!(
        has(&out, "the cloud lists the device online"),
        "not online in the cloud:\n{all}"
    );
    assert!(
        out.iter()
            .any(|l| l.trim_start().starts_with("/temperature ")),
        "links not listed:\n{all}"
    );
    assert!(
        has(&out, "PUT {\"value\":true} → CoAP 2.04   GET → on"),
        "the switch was not switched:\n{all}"
    );
    assert!(
        has(&out, "coap-client-openssl -m get -A 50 -c ")
            && has(&out, "/mediator.crt -j ")
            && has(&out, " get --device coaps+tcp://127.0.0.1:")
            && has(&out, "curl "),
        "no hint:\n{all}"
    );

    let lines = readings(&out);
    assert_eq!(lines.len(), 2, "two readings wanted:\n{all}");
    for l in lines {
        let number = |after: &str| -> f64 {
            let rest = l
                .split(after)
                .nth(1)
                .unwrap_or_else(|| panic!("{after:?} in {l:?}"));
            rest.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a number after {after:?} in {l:?}"))
        };
        assert!((15.0..=30.0).contains(&number("temperature ")), "{l}");
        assert!((20.0..=80.0).contains(&number("humidity ")), "{l}");
    }

    let pids = child_pids(&out);
    assert_eq!(pids.len(), 2, "cloud and agent PIDs:\n{all}");
    assert!(
        has(&out, "stopped ocf-agent") && has(&out, "stopped ocf-dev-cloud"),
        "{all}"
    );
    for pid in pids {
        assert!(gone(pid), "pid {pid} still there after the demo exited");
    }
}

#[test]
fn ctrl_c_stops_the_agent_and_the_cloud_and_exits_0() {
    let dir = TempDir::new("demo-sigint");
    let (child, rx) = start_demo(dir.path(), &[]);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while readings(&out).is_empty() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => out.push(line),
            Err(_) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                panic!("no reading from ocf-demo:\n{}", out.join("\n"));
            }
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let (status, stderr) = finish(child, &rx, &mut out, Duration::from_secs(30));
    let all = out.join("\n");
    assert_eq!(
        status.code(),
        Some(0),
        "ocf-demo after Ctrl-C: {status}\n{all}\nstderr:\n{stderr}"
    );
    assert!(
        has(&out, "Ctrl-C: stopping the agent and the cloud"),
        "{all}"
    );
    assert!(
        has(&out, "stopped ocf-agent") && has(&out, "stopped ocf-dev-cloud"),
        "{all}"
    );
    for pid in child_pids(&out) {
        assert!(gone(pid), "pid {pid} still there after the demo exited");
    }
}

#[test]
fn keep_signs_the_registered_device_back_in_without_onboarding() {
    let dir = TempDir::new("demo-keep");
    let (child, rx) = start_demo(dir.path(), &["--readings", "1"]);
    let mut first = Vec::new();
    let (status, stderr) = finish(child, &rx, &mut first, Duration::from_secs(90));
    let all = first.join("\n");
    assert!(
        status.success(),
        "first run: {status}\n{all}\nstderr:\n{stderr}"
    );
    assert!(has(&first, "  [9/9] "), "not onboarded:\n{all}");

    let (child, rx) = start_demo(dir.path(), &["--keep", "--readings", "1"]);
    let mut out = Vec::new();
    let (status, stderr) = finish(child, &rx, &mut out, Duration::from_secs(90));
    let all = out.join("\n");
    assert!(
        status.success(),
        "run with --keep: {status}\n{all}\nstderr:\n{stderr}"
    );
    assert!(has(&out, "(kept from the last run)"), "{all}");
    assert_eq!(di(&out), di(&first), "the same device:\n{all}");
    assert!(
        setup_pin(&out).is_none() && has(&out, "PIN   not printed again"),
        "{all}"
    );
    assert!(
        has(&out, " get --device coaps+tcp://127.0.0.1:")
            && has(&out, "yes: 2.05 Content, cps registered"),
        "the kept registration not checked as the owner:\n{all}"
    );
    assert!(!has(&out, "[1/9]"), "onboarded a second time:\n{all}");
    assert!(has(&out, "signed back in"), "{all}");
    assert_eq!(readings(&out).len(), 1, "{all}");
    let pids = child_pids(&out);
    assert_eq!(pids.len(), 2, "cloud and agent PIDs:\n{all}");
    for pid in pids {
        assert!(gone(pid), "pid {pid} still there after the demo exited");
    }
}
