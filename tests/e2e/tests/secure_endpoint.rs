//! The agent in its default, secure mode (no `--insecure-dev`), before anyone owns it: the
//! secure endpoint (coaps+tcp) answers discovery and `/oic/d` to an anonymous TLS client and
//! refuses everything else; UDP answers discovery only; there is no plain coap+tcp listener; the
//! setup PIN is printed once, on stdout, on the first start only, and never logged; the state
//! files are private.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::ResponseType;
use ocf::resource::{Method, Request};
use ocf_e2e::tls_client::TlsClient;
use ocf_e2e::*;

/// A secure-mode agent with everything it printed on stdout up to `ready`.
struct SecureAgent {
    child: std::process::Child,
    stdout: Vec<String>,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
    udp: SocketAddr,
    tls: SocketAddr,
}

impl SecureAgent {
    fn start(state_dir: &Path, extra: &[&str]) -> SecureAgent {
        let args = ocf_e2e::mediator::secure_agent_args(state_dir, None, extra);
        let how = Spawn::default();
        let Spawned {
            mut child,
            stdout,
            stderr,
        } = how
            .start("ocf-agent", &args)
            .unwrap_or_else(|e| panic!("{e}"));
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
                Err(_) => panic!("{}", how.not_ready("ocf-agent", &mut child, &stderr)),
            }
        }
        let ep = |scheme: &str| -> Option<SocketAddr> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("ocf-agent: endpoint "))
                .find_map(|e| e.strip_prefix(&format!("{scheme}://")))
                .and_then(|a| a.parse().ok())
        };
        let (Some(udp), Some(tls)) = (ep("coap"), ep("coaps+tcp")) else {
            let _ = child.kill();
            panic!("no coap and coaps+tcp endpoints in {lines:?}");
        };
        SecureAgent {
            child,
            stdout: lines,
            stderr,
            log: Vec::new(),
            udp,
            tls,
        }
    }

    fn endpoints(&self) -> Vec<&str> {
        self.stdout
            .iter()
            .filter_map(|l| l.strip_prefix("ocf-agent: endpoint "))
            .collect()
    }

    fn pin_lines(&self) -> Vec<&str> {
        self.stdout
            .iter()
            .filter_map(|l| l.strip_prefix("ocf-agent: setup PIN "))
            .collect()
    }

    fn log(&mut self) -> String {
        self.log.extend(self.stderr.try_iter());
        self.log.join("\n")
    }

    fn terminate(&mut self) -> String {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "ocf-agent did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The stderr reader thread sees the end of the pipe shortly after the exit.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

impl Drop for SecureAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP ports the process listens on (from its socket inodes and /proc/net/tcp{,6}).
fn listening_tcp_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds of the agent")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                if let Some(port) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

fn get_if(path: &str, interface: &str) -> Request {
    let mut r = get(path);
    r.query.push(("if".into(), interface.into()));
    r
}

fn refused(code: ResponseType) -> bool {
    matches!(code, ResponseType::Unauthorized | ResponseType::Forbidden)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn without_the_standard_methods_udp_serves_discovery_only() {
    let dir = TempDir::new("secure-endpoint-spake2-only");
    let mut agent = SecureAgent::start(&dir.path().join("state"), &["--standard-otm", "none"]);
    let mut u = UdpClient::new(agent.udp);
    for path in ["/oic/d", "/oic/sec/doxm", "/oic/sec/pstat"] {
        let (_, r) = u.request(&get(path));
        assert_eq!(r.code, ResponseType::Unauthorized, "UDP {path}");
    }
    let mut c = TlsClient::connect(agent.tls, None);
    let doxm = body(&c.request(&get("/oic/sec/doxm")));
    assert_eq!(
        key(&doxm, "oxms"),
        Some(&Value::Array(vec![Value::Integer(65280.into())])),
        "only SPAKE2 is offered"
    );
    let _ = agent.terminate();
}

#[test]
fn secure_mode_before_onboarding() {
    let dir = TempDir::new("secure-endpoint");
    let state = dir.path().join("state");
    let mut agent = SecureAgent::start(&state, &[]);

    // The PIN: printed once on stdout, equal to the stored one.
    let pins = agent.pin_lines();
    assert_eq!(
        pins.len(),
        1,
        "one PIN line on the first start: {:?}",
        agent.stdout
    );
    let pin = pins[0].to_string();
    assert!(
        pin.len() == 8 && pin.bytes().all(|b| b.is_ascii_digit()),
        "{pin:?}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("pin")).unwrap().trim(),
        pin
    );

    // Endpoints: UDP and coaps+tcp, no plain coap+tcp printed nor listening.
    let eps = agent.endpoints();
    assert!(!eps.iter().any(|e| e.starts_with("coap+tcp://")), "{eps:?}");
    assert_eq!(
        listening_tcp_ports(agent.child.id()),
        HashSet::from([agent.tls.port()]),
        "the secure endpoint is the only TCP listener"
    );

    // The secure endpoint, anonymous TLS client (1.3, then 1.2).
    let mut c = TlsClient::connect(agent.tls, None);
    let r = c.request(&get("/oic/res"));
    assert_eq!(r.code, ResponseType::Content);
    let links = body(&r);
    let res = &links.as_array().unwrap()[0];
    let link_eps: Vec<String> = key(res, "eps")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter_map(|e| key(e, "ep")?.as_text().map(str::to_string))
        .collect();
    assert!(
        link_eps.contains(&format!("coaps+tcp://{}", agent.tls)),
        "{link_eps:?}"
    );
    assert!(
        !link_eps.iter().any(|e| e.starts_with("coap+tcp://")),
        "{link_eps:?}"
    );
    let r = c.request(&get("/oic/d"));
    assert_eq!(r.code, ResponseType::Content);
    let di = key(&body(&r), "di")
        .and_then(Value::as_text)
        .unwrap()
        .to_string();
    let r = c.request(&get("/oic/sec/doxm"));
    assert_eq!(r.code, ResponseType::Content);
    assert_eq!(key(&body(&r), "owned"), Some(&Value::Bool(false)));
    assert_eq!(
        key(&body(&r), "deviceuuid").and_then(Value::as_text),
        Some(di.as_str())
    );
    let switch_on = post_cbor("/switch", &map(&[("value", Value::Bool(true))]));
    for req in [
        get("/switch"),
        switch_on.clone(),
        get("/temperature"),
        get("/oic/sec/cred"),
        get("/oic/sec/acl2"),
        get("/oic/sec/csr"),
        get("/CoapCloudConfResURI"),
        post_cbor(
            "/oic/sec/pstat",
            &map(&[("dos", map(&[("s", Value::Integer(3.into()))]))]),
        ),
        Request::new(Method::Delete, "/oic/sec/cred"),
    ] {
        let r = c.request(&req);
        assert!(
            refused(r.code),
            "{:?} {}: {:?}",
            req.method,
            req.path,
            r.code
        );
        assert!(
            !r.diagnostic().is_empty(),
            "{} refused without a diagnostic",
            req.path
        );
    }
    // The batch form of /oic/res carries no representation the requester may not read.
    let r = c.request(&get_if("/oic/res", "oic.if.b"));
    assert_eq!(r.code, ResponseType::Content);
    let items: Vec<String> = body(&r)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| key(i, "href")?.as_text().map(str::to_string))
        .collect();
    assert!(
        !items
            .iter()
            .any(|h| h.ends_with("/switch") || h.ends_with("/temperature")),
        "{items:?}"
    );
    let mut c12 =
        TlsClient::try_connect_versions(agent.tls, None, &[&rustls::version::TLS12]).unwrap();
    assert_eq!(
        c12.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(c12.request(&get("/oic/d")).code, ResponseType::Content);
    assert!(refused(c12.request(&get("/switch")).code));
    assert_ne!(c.exporter(), c12.exporter());

    // UDP: discovery, and, while the device is unowned and offers OCF's standard methods,
    // what their selection in the clear reads (iotivity-lite's rule).
    let mut u = UdpClient::new(agent.udp);
    let (_, r) = u.request(&get("/oic/res"));
    assert_eq!(r.code, ResponseType::Content);
    for path in ["/oic/d", "/oic/sec/doxm", "/oic/sec/pstat"] {
        let (_, r) = u.request(&get(path));
        assert_eq!(r.code, ResponseType::Content, "UDP {path}");
    }
    for req in [
        get("/switch"),
        get("/oic/sec/cred"),
        get("/oic/sec/acl2"),
        get_if("/oic/res", "oic.if.b"),
        switch_on,
    ] {
        let (_, r) = u.request(&req);
        assert_eq!(r.code, ResponseType::Unauthorized, "UDP {}", req.path);
        assert!(
            r.diagnostic().contains("secure endpoint"),
            "{}",
            r.diagnostic()
        );
    }

    // State files are private.
    assert_eq!(mode(&state), 0o700);
    for f in ["identity.json", "identity.key", "pin", "security.cbor"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    let log = agent.terminate();
    assert!(log.contains("coaps+tcp listening"), "{log}");
    assert!(!log.contains(&pin), "the PIN must never be logged:\n{log}");
    assert!(!log.contains("insecure development mode"), "{log}");

    // Second start: the same PIN, not printed again, still not logged.
    let mut again = SecureAgent::start(&state, &[]);
    assert!(
        again.pin_lines().is_empty(),
        "the PIN is printed only when created: {:?}",
        again.stdout
    );
    assert_eq!(
        std::fs::read_to_string(state.join("pin")).unwrap().trim(),
        pin
    );
    let mut c = TlsClient::connect(again.tls, None);
    assert_eq!(c.request(&get("/oic/d")).code, ResponseType::Content);
    let log = again.terminate();
    assert!(!log.contains(&pin), "{log}");
}

#[test]
fn factory_pin_file_and_development_mode() {
    let dir = TempDir::new("secure-pin-file");
    let state = dir.path().join("state");
    let pin_file = dir.path().join("factory-pin");
    std::fs::write(&pin_file, "24681357\n").unwrap();
    let pin_arg = pin_file.display().to_string();
    let mut agent = SecureAgent::start(&state, &["--pin-file", &pin_arg]);
    assert!(
        agent.pin_lines().is_empty(),
        "a factory PIN is not printed: {:?}",
        agent.stdout
    );
    assert!(!state.join("pin").exists());
    let log = agent.terminate();
    assert!(!log.contains("24681357"), "{log}");

    // A malformed PIN file stops the agent with a message naming it.
    std::fs::write(&pin_file, "2468\n").unwrap();
    let out = std::process::Command::new(binary("ocf-agent"))
        .args([
            "--board",
            "sim",
            "--state-dir",
            &state.display().to_string(),
        ])
        .args([
            "--udp",
            "127.0.0.1:0",
            "--tls",
            "127.0.0.1:0",
            "--dtls",
            "127.0.0.1:0",
            "--multicast",
            "off",
        ])
        .args(["--pin-file", &pin_arg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("factory-pin") && err.contains("PIN"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));

    // The development mode warns, and opens plain coap+tcp serving everything.
    let dev_state = dir.path().join("dev");
    let mut dev = SecureAgent::start(&dev_state, &["--insecure-dev", "--tcp", "127.0.0.1:0"]);
    let tcp: SocketAddr = dev
        .endpoints()
        .iter()
        .find_map(|e| e.strip_prefix("coap+tcp://"))
        .and_then(|a| a.parse().ok())
        .expect("a coap+tcp endpoint in the development mode");
    assert_eq!(
        TcpClient::connect(tcp).request(&get("/switch")).code,
        ResponseType::Content
    );
    let (_, r) = UdpClient::new(dev.udp).request(&get("/switch"));
    assert_eq!(r.code, ResponseType::Content);
    // The secure endpoint keeps its access control.
    assert!(refused(
        TlsClient::connect(dev.tls, None)
            .request(&get("/switch"))
            .code
    ));
    let log = dev.terminate();
    assert!(log.contains("insecure development mode"), "{log}");
}

/// Under systemd stdout is the journal (a log): a new PIN must not go there nor to stderr.
#[test]
fn under_systemd_a_new_pin_stays_out_of_stdout_and_the_log() {
    let dir = TempDir::new("pin-journal");
    let state = dir.path().join("state");
    let out = std::process::Command::new(binary("ocf-agent"))
        .args(["--state-dir", state.to_str().unwrap()])
        .args([
            "--udp",
            "127.0.0.1:0",
            "--tls",
            "127.0.0.1:0",
            "--dtls",
            "127.0.0.1:0",
            "--multicast",
            "off",
        ])
        .env("JOURNAL_STREAM", "8:12345")
        .env("OCF_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id() as i32;
    let pin_file = state.join("pin");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pin_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let out = out.wait_with_output().unwrap();
    let pin = std::fs::read_to_string(&pin_file).unwrap();
    let pin = pin.trim();
    assert_eq!(pin.len(), 8);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("ocf-agent: ready"), "{stdout}");
    assert!(
        !stdout.contains(pin),
        "PIN on stdout (the journal): {stdout}"
    );
    assert!(!stderr.contains(pin), "PIN in the log: {stderr}");
    assert!(stderr.contains("setup PIN was created"), "{stderr}");
}
