//! Peers on the LAN that try to wear the device down:
//!
//! - 200 idle TLS connections from one address and 200 from another (a second network namespace
//!   the test creates, joined by a veth pair) to an owned device and to a fresh one: the owner's
//!   `ocf-mediator get` and the onboarding of the fresh device still succeed, each within 2 s;
//! - a peer that sends requests and never reads its socket: the others are served meanwhile, and
//!   the agent closes it when a write has waited too long;
//! - 10 000 observe registrations on one connection: 64 are taken, the rest refused with 5.03
//!   and a diagnostic, and memory stays bounded;
//! - an anonymous TLS peer may not observe `/oic/res` in batch form (4.01 with a diagnostic).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coap_lite::ResponseType;
use ocf::coap::tcp_conn::TcpConnection;
use ocf::resource::{Method, Request};
use ocf_e2e::cloud::*;
use ocf_e2e::mediator::*;
use ocf_e2e::tls_client::TlsClient;
use ocf_e2e::*;

const PIN: &str = "27182818";
/// The device side of the veth pair (namespace A) and the second host (namespace B).
const HOST_A: &str = "10.77.0.1";
const HOST_B: &str = "10.77.0.2";
const IDLE_PER_ADDRESS: usize = 200;

/// Two network namespaces held by `unshare --net sleep` processes, joined by a veth pair:
/// A (10.77.0.1, where the agents, the cloud and the Mediator run, and the first flood comes
/// from) and B (10.77.0.2, the second flood). Killed by PID on drop; the namespaces go with them.
struct Namespaces {
    a: Child,
    b: Child,
}

impl Namespaces {
    fn new() -> Namespaces {
        let holder = || {
            Command::new("unshare")
                .args(["--net", "sleep", "600"])
                .stdin(Stdio::null())
                .spawn()
                .expect("run unshare (util-linux)")
        };
        let ns = Namespaces {
            a: holder(),
            b: holder(),
        };
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        for pid in [ns.a.id(), ns.b.id()] {
            wait_for(Duration::from_secs(5), "unshare to take effect", || {
                let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
                (theirs != own).then_some(())
            });
        }
        let (a, b) = (ns.a.id(), ns.b.id());
        ns.sh(
            a,
            &format!(
                "ip link set lo up && ip link add hard0 type veth peer name hard1 && \
                 ip link set hard1 netns {b} && ip addr add {HOST_A}/24 dev hard0 && \
                 ip link set hard0 up"
            ),
        );
        ns.sh(
            b,
            &format!(
                "ip link set lo up && ip addr add {HOST_B}/24 dev hard1 && ip link set hard1 up"
            ),
        );
        ns
    }

    fn sh(&self, pid: u32, script: &str) {
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "sh", "-c", script])
            .output()
            .expect("run nsenter");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for c in [&mut self.a, &mut self.b] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Moves the calling thread (only it) into the network namespace of `pid`.
fn enter(pid: u32) {
    let ns = File::open(format!("/proc/{pid}/ns/net")).expect("open the namespace");
    // SAFETY: setns(2) on a descriptor we own; it changes this thread's namespace only.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside the namespace of `pid`, returning what it returns (and its
/// panic, if it panics).
fn in_namespace<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        enter(pid);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Up to `n` TLS connections that finish the handshake and then say nothing (an agent that
/// refuses some is judged by what its owner can still do).
fn idle_tls(to: SocketAddr, n: usize) -> Vec<TlsClient> {
    let mut held = Vec::new();
    for _ in 0..n {
        // One that was evicted while the next ones came in is simply gone.
        if let Ok(c) = TlsClient::try_connect(to, None) {
            held.push(c);
        }
    }
    held
}

fn agent_args(state: &Path, pin: &Path) -> Vec<String> {
    let mut args = secure_agent_args(state, Some(pin), &[]);
    let tls = args.iter().position(|a| a == "--tls").unwrap();
    args[tls + 1] = format!("{HOST_A}:0");
    args
}

#[test]
fn idle_floods_from_two_addresses_lock_out_neither_the_owner_nor_an_onboarding() {
    let ns = Namespaces::new();
    let (a, b) = (ns.a.id(), ns.b.id());
    in_namespace(a, move || {
        let dir = TempDir::new("flood-ns");
        let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
        let api = format!("http://{}", cloud.http);
        let pin = pin_file(dir.path(), PIN);
        let owned = SecureAgent::spawn(
            &dir.path().join("owned"),
            &agent_args(&dir.path().join("owned"), &pin),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let owner = Mediator::new(&dir.path().join("owner"));
        owner.token_from(&cloud);
        owner.onboard(PIN, &owned.ep, &api, &[]).expect_ok();
        let fresh = SecureAgent::spawn(
            &dir.path().join("fresh"),
            &agent_args(&dir.path().join("fresh"), &pin),
        )
        .unwrap_or_else(|e| panic!("{e}"));

        // Both devices flooded from both hosts; every connection stays open to the end.
        let mut held = Vec::new();
        for target in [owned.coaps, fresh.coaps] {
            held.extend(idle_tls(target, IDLE_PER_ADDRESS));
            held.extend(in_namespace(b, move || idle_tls(target, IDLE_PER_ADDRESS)));
        }

        let started = Instant::now();
        let run = owner.get(&owned.ep, "/oic/d");
        let took = started.elapsed();
        assert!(run.ok(), "the owner is locked out: {}", run.output());
        assert!(
            took < Duration::from_secs(2),
            "the owner's GET took {took:?}"
        );

        let mediator = Mediator::new(&dir.path().join("second-mediator"));
        mediator.token_from(&cloud);
        let started = Instant::now();
        let run = mediator.onboard(PIN, &fresh.ep, &api, &[]);
        let took = started.elapsed();
        assert!(run.ok(), "the onboarding is locked out: {}", run.output());
        assert!(run.stdout.contains("cps registered"), "{}", run.output());
        assert!(
            took < Duration::from_secs(2),
            "the onboarding took {took:?}"
        );
        drop(held);
    });
}

/// A coap+tcp stream that sends requests and never reads what comes back.
#[test]
fn a_peer_that_never_reads_is_closed_and_stalls_no_one() {
    let dir = TempDir::new("slow-reader");
    let agent = Agent::start(dir.path(), &[]);
    let mut slow = TcpStream::connect(agent.tcp()).unwrap();
    slow.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut conn = TcpConnection::new(1 << 20);
    slow.write_all(&conn.start()).unwrap();
    let mut req = Request::new(Method::Get, "/oic/res");
    req.query.push(("if".into(), "oic.if.baseline".into()));
    let mut sent_requests = 0usize;
    let started = Instant::now();
    // Until our own writes block: the agent stopped reading, its writes wait for us.
    while started.elapsed() < Duration::from_secs(20) {
        let bytes = conn.encode(&req.to_packet(&[1, 2])).unwrap();
        match slow.write_all(&bytes) {
            Ok(()) => sent_requests += 1,
            Err(_) => break,
        }
    }
    assert!(sent_requests > 1000, "{sent_requests}");
    // Meanwhile everyone else is served at once.
    let mut other = TcpClient::connect(agent.tcp());
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(other.request(&get("/oic/d")).code, ResponseType::Content);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // The stuck write ends the connection: draining it now ends in EOF or a reset, with far
    // fewer answers than requests.
    std::thread::sleep(Duration::from_secs(12));
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match slow.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(
        ended,
        "the agent kept a peer that never reads ({received} bytes waiting)"
    );
    assert_eq!(other.request(&get("/oic/d")).code, ResponseType::Content);
}

#[test]
fn ten_thousand_observations_on_one_connection_are_capped() {
    let dir = TempDir::new("observe-flood");
    let agent = Agent::start(dir.path(), &[]);
    let mut c = TcpClient::connect(agent.tcp());
    let rss_before = agent.rss_kib().unwrap();
    let (mut taken, mut refused) = (0usize, 0usize);
    let mut observe = get("/switch");
    observe.observe = Some(0);
    for i in 0..10_000u32 {
        let r = c.request_with_token(&observe, &i.to_be_bytes());
        match r.code {
            ResponseType::Content => taken += 1,
            ResponseType::ServiceUnavailable => {
                assert!(r.diagnostic().contains("limit"), "{}", r.diagnostic());
                refused += 1;
            }
            other => panic!("{other:?}: {}", r.diagnostic()),
        }
    }
    assert_eq!((taken, refused), (64, 10_000 - 64));
    // One change: exactly one notification per observation held.
    let mut other = TcpClient::connect(agent.tcp());
    let body = map(&[("value", ciborium::Value::Bool(true))]);
    assert_eq!(
        other.request(&post_cbor("/switch", &body)).code,
        ResponseType::Changed
    );
    let mut notified = 0;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    while c.recv().is_some() {
        notified += 1;
    }
    assert_eq!(notified, 64);
    let grown = agent.rss_kib().unwrap().saturating_sub(rss_before);
    assert!(grown < 4096, "RSS grew by {grown} KiB");
}

#[test]
fn an_anonymous_peer_may_not_observe_the_batch_form_of_discovery() {
    let dir = TempDir::new("batch-observe");
    let pin = pin_file(dir.path(), PIN);
    let agent = SecureAgent::start(&dir.path().join("state"), Some(&pin), &[]);
    let mut c = TlsClient::connect(agent.coaps, None);
    let mut batch = get("/oic/res");
    batch.query.push(("if".into(), "oic.if.b".into()));
    batch.observe = Some(0);
    let r = c.request(&batch);
    assert_eq!(r.code, ResponseType::Unauthorized, "{}", r.diagnostic());
    assert!(!r.diagnostic().is_empty());
    // Reading it, and observing the link list, stay open.
    batch.observe = None;
    assert_eq!(c.request(&batch).code, ResponseType::Content);
    let mut links = get("/oic/res");
    links.observe = Some(0);
    assert_eq!(c.request(&links).code, ResponseType::Content);
}
