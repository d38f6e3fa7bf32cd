//! The agent as a `Type=notify` service with a watchdog (sd_notify(3), sd_watchdog_enabled(3)),
//! with the test standing in for systemd: it binds the notification socket, starts the real
//! binary with `NOTIFY_SOCKET` (and `WATCHDOG_USEC`), and reads what arrives.
//!
//! - `READY=1` comes only once the endpoints are up: when it arrives, the `ready` line is already
//!   on stdout and both the UDP and the coaps+tcp endpoints answer;
//! - `WATCHDOG=1` keeps coming (every half `WATCHDOG_USEC`); `STOPPING=1` after SIGTERM;
//! - an abstract socket name (`@...`) works, and a `WATCHDOG_PID` of another process means no
//!   pings;
//! - without `NOTIFY_SOCKET` nothing is sent.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use ocf_e2e::mediator::secure_agent_args;
use ocf_e2e::*;

/// The agent as systemd would start it, with `env` set and every variable of the protocol
/// that `env` does not name removed (the test may itself run under a service manager).
/// Killed by PID when dropped.
struct Service {
    child: Child,
    stdout: ChildStdout,
}

impl Service {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Service {
        let state = dir.join("state");
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut cmd = Command::new(binary("ocf-agent"));
        cmd.args(secure_agent_args(&state, None, &[]))
            .env("OCF_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("start ocf-agent");
        let stdout = child.stdout.take().unwrap();
        Service { child, stdout }
    }

    /// What is on stdout right now, without waiting: the agent's println! flushes each line
    /// (Rust's stdout is line-buffered), so whatever it printed before a notification it sent
    /// is in the pipe by the time that notification is received.
    fn stdout_now(&mut self) -> String {
        let fd = self.stdout.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next notification, or `None` after `limit`.
fn next(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Reads notifications until `READY=1`; the others before it must be watchdog pings.
fn wait_ready(socket: &UnixDatagram, dir: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = next(socket, left.max(Duration::from_millis(1))) else {
            panic!(
                "no READY=1 (got {before:?}); log:\n{}",
                log_tail(&dir.join("agent.log"), 30)
            );
        };
        if m == "READY=1" {
            return before;
        }
        assert_eq!(m, "WATCHDOG=1", "before READY=1");
        before.push(m);
    }
}

fn endpoint(stdout: &str, scheme: &str) -> std::net::SocketAddr {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ocf-agent: endpoint "))
        .find_map(|e| e.strip_prefix(scheme))
        .unwrap_or_else(|| panic!("no {scheme} endpoint on stdout:\n{stdout}"))
        .parse()
        .unwrap()
}

#[test]
fn ready_after_the_endpoints_then_watchdog_pings_and_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut agent = Service::start(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    wait_ready(&socket, dir.path());
    // The order: everything the agent printed up to "ready" came before READY=1, and the
    // endpoints it names answer now, with nothing more awaited.
    let stdout = agent.stdout_now();
    assert!(
        stdout.lines().any(|l| l == "ocf-agent: ready"),
        "READY=1 before the ready line; stdout so far:\n{stdout}"
    );
    let mut udp = UdpClient::new(endpoint(&stdout, "coap://"));
    let (_, res) = udp.request(&get("/oic/res"));
    assert_eq!(res.code, coap_lite::ResponseType::Content);
    std::net::TcpStream::connect(endpoint(&stdout, "coaps+tcp://"))
        .expect("the secure endpoint listens at READY=1");

    // WATCHDOG_USEC=200000: a ping every 100 ms. Counted over 2 s with room for a loaded
    // machine; the largest gap is only reported.
    let window = Duration::from_secs(2);
    let start = Instant::now();
    let mut last = start;
    let (mut pings, mut max_gap) = (0, Duration::ZERO);
    while start.elapsed() < window {
        let left = window.saturating_sub(start.elapsed());
        let Some(m) = next(&socket, left.max(Duration::from_millis(1))) else {
            break;
        };
        assert_eq!(m, "WATCHDOG=1", "while running");
        pings += 1;
        max_gap = max_gap.max(last.elapsed());
        last = Instant::now();
    }
    eprintln!("{pings} watchdog pings in {window:?}, largest gap {max_gap:?}");
    assert!(pings >= 10, "only {pings} watchdog pings in {window:?}");

    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    let mut after = Vec::new();
    while let Some(m) = next(&socket, Duration::from_millis(200)) {
        after.push(m);
    }
    let stopping = after.iter().filter(|m| *m == "STOPPING=1").count();
    assert_eq!(stopping, 1, "after SIGTERM: {after:?}");
    assert!(
        after.iter().all(|m| m == "STOPPING=1" || m == "WATCHDOG=1"),
        "{after:?}"
    );
}

#[test]
fn an_abstract_socket_is_notified_and_another_process_s_watchdog_is_not_pinged() {
    let dir = TempDir::new("notify-abstract");
    let name = format!("ocf-agent-e2e-notify-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    let notify = format!("@{name}");
    // WATCHDOG_PID 1: the watchdog is init's business, not ours (sd_watchdog_enabled(3)).
    let mut agent = Service::start(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", &notify),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let before = wait_ready(&socket, dir.path());
    assert!(before.is_empty(), "pings for another pid: {before:?}");
    // Ten intervals' worth of silence.
    assert_eq!(next(&socket, Duration::from_secs(1)), None);
    assert!(agent.terminate().success());
    assert_eq!(
        next(&socket, Duration::from_secs(5)).as_deref(),
        Some("STOPPING=1")
    );
}

#[test]
fn without_notify_socket_nothing_is_sent() {
    let dir = TempDir::new("notify-none");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // Everything but NOTIFY_SOCKET: the watchdog alone must not make the agent send anywhere.
    let mut agent = Service::start(dir.path(), &[("WATCHDOG_USEC", "200000")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stdout = String::new();
    while !stdout.lines().any(|l| l == "ocf-agent: ready") {
        assert!(
            Instant::now() < deadline,
            "no ready line: {stdout}\n{}",
            log_tail(&dir.path().join("agent.log"), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
        stdout.push_str(&agent.stdout_now());
    }
    // Five watchdog intervals, then the shutdown, which would say STOPPING=1.
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.terminate().success());
    assert_eq!(next(&socket, Duration::from_millis(300)), None);
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        !log.contains("service manager"),
        "the agent tried to notify something:\n{log}"
    );
}
