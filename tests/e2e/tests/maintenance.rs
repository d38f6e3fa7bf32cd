//! Maintenance-state changes (OCF-PROTOCOL.md §9): the agent in its secure mode, the development cloud and
//! `ocf-mediator` on loopback, ports chosen by the OS.
//!
//! - `/oic/mnt` is published, reads `fr`/`rb` false and `err` 0 through the cloud, refuses bad
//!   bodies with 4.00;
//! - a factory reset through the cloud API: the cloud sees the deregistration, a CoAPCloudConf
//!   observer sees `cps` uninitialized, the device comes back unowned with a new `di` and key,
//!   and a second onboarding works;
//! - a factory reset from the console (`ocf-agent factory-reset`) while the cloud does not answer
//!   (stopped with SIGSTOP) still wipes locally within the deregistration bound; with the agent
//!   stopped the command resets the state directory itself;
//! - a reboot through the cloud API (reboot command = stop the agent, which the test restarts):
//!   sign-out, then after the restart refresh + sign-in, no second sign-up, no republish;
//! - a reboot by exit status (`--reboot-exit-status 85`, as the service runs it): one sign-out,
//!   exit 85, and after the restart a sign-in without a second sign-up or publish;
//! - a reboot command that fails: `err` 1 and the device signs in again;
//! - corrupt state files: a clear message naming the file, moved aside, a safe start.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::ResponseType;
use ocf_e2e::cloud::*;
use ocf_e2e::mediator::*;
use ocf_e2e::tls_client::TlsClient;
use ocf_e2e::*;
use serde_json::json;

const PIN: &str = "16180339";
const CONF: &str = "/CoapCloudConfResURI";

/// A cloud, a Mediator and the agent's directories.
struct Bench {
    cloud: DevCloud,
    med: Mediator,
    pin: PathBuf,
    state: PathBuf,
    dir: TempDir,
}

impl Bench {
    fn new(tag: &str, cloud_args: &[&str]) -> Bench {
        let dir = TempDir::new(tag);
        let cloud = DevCloud::start(&dir.path().join("cloud"), cloud_args);
        let pin = pin_file(dir.path(), PIN);
        let med = Mediator::new(&dir.path().join("mediator"));
        med.token_from(&cloud);
        Bench {
            state: dir.path().join("state"),
            cloud,
            med,
            pin,
            dir,
        }
    }

    fn agent(&self, extra: &[&str]) -> SecureAgent {
        SecureAgent::start(&self.state, Some(&self.pin), extra)
    }

    /// Onboards `agent`; must end `registered`, and the device online in the cloud.
    fn onboard(&self, agent: &SecureAgent) {
        let run = self
            .med
            .onboard(PIN, &agent.ep, &self.cloud.http_url(), &[])
            .expect_ok();
        assert!(run.stdout.contains("cps registered"), "{}", run.output());
        self.wait_online(&agent.di);
    }

    fn wait_online(&self, di: &str) {
        wait_for(Duration::from_secs(20), "the device online", || {
            self.cloud.device(di).filter(online)
        });
    }

    fn owner(&self) -> (String, String) {
        (
            std::fs::read_to_string(self.med.cert_path()).unwrap(),
            std::fs::read_to_string(self.med.key_path()).unwrap(),
        )
    }
}

trait HttpUrl {
    fn http_url(&self) -> String;
}

impl HttpUrl for DevCloud {
    fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }
}

fn mnt(cloud: &DevCloud, di: &str) -> serde_json::Value {
    let r = cloud.resource(di, "/oic/mnt");
    assert_eq!(r.status, 200, "GET /oic/mnt: {}", r.text());
    r.content()
}

/// The `di` the device announces in UDP discovery (`/oic/res` anchors), which needs no owner.
fn discovered_di(agent: &SecureAgent) -> String {
    let udp: std::net::SocketAddr = agent
        .endpoints
        .iter()
        .find_map(|e| e.strip_prefix("coap://"))
        .expect("a coap:// endpoint")
        .parse()
        .unwrap();
    let mut c = UdpClient::new(udp);
    let links = body(&c.request(&get("/oic/res")).1);
    let Value::Array(links) = links else {
        panic!("/oic/res: {links:?}")
    };
    let anchor = links
        .iter()
        .find_map(|l| key(l, "anchor").and_then(Value::as_text))
        .expect("an anchor");
    anchor.trim_start_matches("ocf://").to_string()
}

fn agent_bin() -> PathBuf {
    binary("ocf-agent")
}

#[test]
fn oic_mnt_is_published_reads_false_and_refuses_bad_bodies() {
    let b = Bench::new("mnt-basics", &[]);
    let agent = b.agent(&[]);
    b.onboard(&agent);
    let di = agent.di.clone();
    // `cps registered` comes with the sign-in; the publish follows it.
    let mnt_link = wait_for(Duration::from_secs(10), "/oic/mnt published", || {
        b.cloud
            .links(&di)
            .into_iter()
            .find(|l| l["href"] == "/oic/mnt")
    });
    assert!(
        mnt_link["resourceTypes"].to_string().contains("oic.wk.mnt"),
        "{mnt_link}"
    );
    assert_eq!(
        mnt(&b.cloud, &di),
        json!({"fr": false, "rb": false, "err": 0})
    );
    for bad in [
        json!({"fr": "yes"}),
        json!({"err": 1}),
        json!({"fr": true, "rb": true}),
        json!({"reset": true}),
    ] {
        let r = b.cloud.update(&di, "/oic/mnt", &bad);
        assert_ne!(r.status, 200, "{bad} accepted: {}", r.text());
        assert!(
            r.text().contains("4.00") || r.status == 400,
            "{bad}: {} {}",
            r.status,
            r.text()
        );
    }
    // Nothing happened: still registered, same di.
    assert_eq!(mnt(&b.cloud, &di)["fr"], false);
    // The owner reads it over the local secure endpoint too (baseline: rt and if).
    let mut tls = TlsClient::connect(agent.coaps, Some(b.owner()));
    let mut req = get("/oic/mnt");
    req.query.push(("if".into(), "oic.if.baseline".into()));
    let v = body(&tls.request(&req));
    let text = format!("{v:?}");
    assert!(
        text.contains("oic.wk.mnt") && text.contains("oic.if.rw"),
        "{text}"
    );
    // A stranger may not.
    let mut anon = TlsClient::connect(agent.coaps, None);
    let r = anon.request(&post_cbor(
        "/oic/mnt",
        &Value::Map(vec![("fr".into(), Value::Bool(true))]),
    ));
    assert!(
        matches!(r.code, ResponseType::Unauthorized | ResponseType::Forbidden),
        "{:?}",
        r.code
    );
    let _ = &b.dir;
}

#[test]
fn factory_reset_through_the_cloud_deregisters_wipes_and_a_second_onboarding_works() {
    let b = Bench::new("reset-cloud", &[]);
    let mut agent = b.agent(&[]);
    b.onboard(&agent);
    let old_di = agent.di.clone();
    let old_key = std::fs::read(b.state.join("identity.key")).unwrap();

    // The owner observes CoAPCloudConf.
    let mut tls = TlsClient::connect(agent.coaps, Some(b.owner()));
    let token = tls.token();
    let mut obs = get(CONF);
    obs.observe = Some(0);
    let first = tls.request_with_token(&obs, &token);
    assert_eq!(
        key(&body(&first), "cps").and_then(Value::as_text),
        Some("registered")
    );

    let r = b.cloud.update(&old_di, "/oic/mnt", &json!({"fr": true}));
    assert_eq!(r.status, 200, "{}", r.text());

    // The cloud sees the deregistration and forgets the device.
    wait_for(Duration::from_secs(20), "DELETE /oic/sec/account", || {
        let d = b.cloud.requests(&old_di, "DELETE", "/oic/sec/account");
        (!d.is_empty()).then_some(())
    });
    wait_for(
        Duration::from_secs(20),
        "the cloud to forget the device",
        || {
            b.cloud
                .try_devices()
                .ok()
                .filter(|d| !d.iter().any(|d| d["id"] == old_di.as_str()))
                .map(|_| ())
        },
    );
    // The observer hears `uninitialized`, then the device closes the connection.
    let mut cps = Vec::new();
    while let Some(p) = tls.recv_token(&token) {
        let r = ocf::resource::Response::from_packet(&p).unwrap();
        if let Some(c) = key(&body(&r), "cps").and_then(Value::as_text) {
            cps.push(c.to_string());
        }
    }
    assert!(
        cps.iter().any(|c| c == "uninitialized"),
        "notifications: {cps:?}"
    );

    // A new di (stdout, discovery, identity.json), a new key, unowned, no cloud state.
    let new_di = agent.wait_new_di(&old_di);
    assert_ne!(new_di, old_di);
    assert_eq!(discovered_di(&agent), new_di);
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.state.join("identity.json")).unwrap()).unwrap();
    assert_eq!(identity["di"], new_di.as_str());
    assert_ne!(
        std::fs::read(b.state.join("identity.key")).unwrap(),
        old_key
    );
    assert!(!b.state.join("cloud.cbor").exists());
    let mut anon = TlsClient::connect(agent.coaps, None);
    let doxm = body(&anon.request(&get("/oic/sec/doxm")));
    assert_eq!(key(&doxm, "owned"), Some(&Value::Bool(false)), "{doxm:?}");
    assert_eq!(
        key(&doxm, "deviceuuid").and_then(Value::as_text),
        Some(new_di.as_str())
    );
    drop(anon);

    // The former owner is a stranger; a second onboarding works, under the new di.
    let mut former = TlsClient::connect(agent.coaps, Some(b.owner()));
    let r = former.request(&get("/oic/sec/cred"));
    assert!(
        matches!(r.code, ResponseType::Unauthorized | ResponseType::Forbidden),
        "{:?}",
        r.code
    );
    drop(former);
    agent.di = new_di.clone();
    b.onboard(&agent);
    let r = b.cloud.resource(&new_di, "/temperature");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b.cloud.device(&old_di).is_none());
    let log = agent.log().join("\n");
    assert!(log.contains("factory reset done"), "{log}");
}

#[test]
fn factory_reset_from_the_console_with_the_cloud_not_answering_wipes_within_the_bound() {
    // A 1 s deregistration timeout (the default is 10 s).
    let b = Bench::new("reset-offline", &[]);
    let mut agent = b.agent(&["--cloud-timing", "deregister-timeout=1s"]);
    b.onboard(&agent);
    let old_di = agent.di.clone();

    // The cloud stops answering; its TCP connections stay open.
    let cloud_pid = b.cloud.child.id() as i32;
    assert_eq!(unsafe { libc::kill(cloud_pid, libc::SIGSTOP) }, 0);
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let _resume = Resume(cloud_pid);

    let started = Instant::now();
    let run = run_with_timeout(
        &agent_bin(),
        &[
            "factory-reset".into(),
            "--state-dir".into(),
            b.state.display().to_string(),
        ],
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    assert!(run.ok(), "{}", run.output());
    // The bound: the deregistration timeout (1 s) plus the agent's 2 s of slack, with room
    // for a loaded machine; the default would be 10 s + 2 s.
    assert!(
        took < Duration::from_secs(10),
        "the reset took {took:?}:\n{}",
        run.output()
    );
    assert!(
        run.stdout.contains("factory reset done") && run.stdout.contains("could not be told"),
        "{}",
        run.output()
    );
    let new_di = agent.wait_new_di(&old_di);
    assert!(run.stdout.contains(&new_di), "{}", run.output());
    assert!(!b.state.join("cloud.cbor").exists());
    assert_eq!(discovered_di(&agent), new_di);
    let log = agent.log().join("\n");
    assert!(
        log.contains("not told") || log.contains("wiping the cloud state anyway"),
        "{log}"
    );
    drop(_resume);

    // With the agent stopped, the command resets the directory itself and says the cloud was
    // not told; the next start has the new identity.
    drop(agent);
    let run = run_with_timeout(
        &agent_bin(),
        &[
            "factory-reset".into(),
            "--state-dir".into(),
            b.state.display().to_string(),
        ],
        Duration::from_secs(30),
    );
    assert!(run.ok(), "{}", run.output());
    assert!(
        run.stdout.contains("no agent is running") && run.stdout.contains("not told"),
        "{}",
        run.output()
    );
    let agent = b.agent(&[]);
    assert_ne!(agent.di, new_di);
    assert!(run.stdout.contains(&agent.di), "{}", run.output());
    b.onboard(&agent);
}

#[test]
fn reboot_through_the_cloud_signs_out_and_back_in_without_sign_up_or_republish() {
    // Expiring tokens, so the restart also refreshes first.
    let b = Bench::new("reboot", &["--token-lifetime", "3600"]);
    let reboot = ["--reboot-command", "kill -TERM $OCF_AGENT_PID"];
    let mut agent = b.agent(&reboot);
    b.onboard(&agent);
    let di = agent.di.clone();
    wait_for(Duration::from_secs(20), "the links published", || {
        (!b.cloud.requests(&di, "POST", "/oic/rd").is_empty()).then_some(())
    });
    let count = |method: &str, path: &str| b.cloud.requests(&di, method, path).len();
    let (sign_ups, sessions, publishes, refreshes) = (
        count("POST", "/oic/sec/account"),
        count("POST", "/oic/sec/session"),
        count("POST", "/oic/rd"),
        count("POST", "/oic/sec/tokenrefresh"),
    );

    let r = b.cloud.update(&di, "/oic/mnt", &json!({"rb": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    // The reboot command stops the agent (as systemd would for a reboot): exit 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status:?} (signal {:?})",
        status.signal()
    );
    let log = agent.log().join("\n");
    assert!(log.contains("signed out of the cloud"), "{log}");
    assert_eq!(
        count("POST", "/oic/sec/session"),
        sessions + 1,
        "one sign-out (login:false)"
    );
    wait_for(Duration::from_secs(10), "the device offline", || {
        b.cloud.device(&di).filter(|d| !online(d))
    });

    // "After boot": the same state directory.
    let mut agent = b.agent(&reboot);
    assert_eq!(agent.di, di);
    b.wait_online(&di);
    let r = b.cloud.resource(&di, "/temperature");
    assert_eq!(r.status, 200, "{}", r.text());
    // Give a republish every chance to show up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count("POST", "/oic/sec/account"),
        sign_ups,
        "no second sign-up"
    );
    assert_eq!(
        count("POST", "/oic/rd"),
        publishes,
        "no republish of unchanged links"
    );
    assert_eq!(
        count("POST", "/oic/sec/tokenrefresh"),
        refreshes + 1,
        "the restored token expires: refreshed first"
    );
    assert_eq!(
        count("POST", "/oic/sec/session"),
        sessions + 2,
        "signed in again"
    );
    let log = agent.log().join("\n");
    assert!(log.contains("signed in to the cloud"), "{log}");
    assert!(!log.contains("published to the cloud"), "{log}");
    assert_eq!(
        mnt(&b.cloud, &di),
        json!({"fr": false, "rb": false, "err": 0})
    );
}

#[test]
fn reboot_by_exit_status_signs_out_exits_with_it_and_signs_back_in_after_the_restart() {
    let mut b = Bench::new("reboot-exit", &[]);
    let reboot = ["--reboot-exit-status", "85"];
    // Standing in for systemd's notification socket: STOPPING=1 comes before the exit.
    let notify_path = b.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut agent = SecureAgent::spawn_with(
        &b.state,
        &secure_agent_args(&b.state, Some(&b.pin), &reboot),
        &Spawn::default(),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    b.onboard(&agent);
    let di = agent.di.clone();
    wait_for(Duration::from_secs(20), "the links published", || {
        (!b.cloud.requests(&di, "POST", "/oic/rd").is_empty()).then_some(())
    });
    let count =
        |cloud: &DevCloud, method: &str, path: &str| cloud.requests(&di, method, path).len();
    let (sign_ups, sessions, publishes) = (
        count(&b.cloud, "POST", "/oic/sec/account"),
        count(&b.cloud, "POST", "/oic/sec/session"),
        count(&b.cloud, "POST", "/oic/rd"),
    );

    let r = b.cloud.update(&di, "/oic/mnt", &json!({"rb": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    // No command and no signal: the agent ends itself, with the status the unit reboots on.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = agent.log().join("\n");
    assert_eq!(
        status.code(),
        Some(85),
        "{status:?} (signal {:?})\n{log}",
        status.signal()
    );
    assert!(log.contains("signed out of the cloud"), "{log}");
    assert!(!log.contains("running the reboot command"), "{log}");
    notify.set_nonblocking(true).unwrap();
    let notes: Vec<String> = std::iter::from_fn(|| {
        let mut buf = [0u8; 64];
        let n = notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect();
    assert_eq!(notes, ["READY=1", "STOPPING=1"], "notifications");
    // Exactly one sign-out (a `login: false` session request) before the exit.
    assert_eq!(
        count(&b.cloud, "POST", "/oic/sec/session"),
        sessions + 1,
        "one sign-out"
    );
    let cloud_log = b.cloud.stderr_log().join("\n");
    let sign_outs = cloud_log
        .lines()
        .filter(|l| l.contains("device signed out") && l.contains(&di))
        .count();
    assert_eq!(sign_outs, 1, "the dev cloud's log:\n{cloud_log}");
    wait_for(Duration::from_secs(10), "the device offline", || {
        b.cloud.device(&di).filter(|d| !online(d))
    });

    // What systemd does when the reboot did not happen (Restart=on-failure), or what the next
    // boot does: the same state directory, the same options.
    let mut agent = b.agent(&reboot);
    assert_eq!(agent.di, di);
    b.wait_online(&di);
    wait_for(Duration::from_secs(10), "the sign-in", || {
        (count(&b.cloud, "POST", "/oic/sec/session") == sessions + 2).then_some(())
    });
    // Give a republish every chance to show up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&b.cloud, "POST", "/oic/sec/account"),
        sign_ups,
        "no second sign-up"
    );
    assert_eq!(
        count(&b.cloud, "POST", "/oic/rd"),
        publishes,
        "no republish"
    );
    let log = agent.log().join("\n");
    assert!(log.contains("signed in to the cloud"), "{log}");
    assert!(!log.contains("published to the cloud"), "{log}");
    assert_eq!(
        mnt(&b.cloud, &di),
        json!({"fr": false, "rb": false, "err": 0})
    );
}

#[test]
fn a_failing_reboot_command_sets_err_and_the_device_signs_in_again() {
    let b = Bench::new("reboot-fails", &[]);
    let mut agent = b.agent(&["--reboot-command", "echo no reboot here >&2; exit 1"]);
    b.onboard(&agent);
    let di = agent.di.clone();
    let sessions = b.cloud.requests(&di, "POST", "/oic/sec/session").len();
    let r = b.cloud.update(&di, "/oic/mnt", &json!({"rb": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    // Signed out, the command fails, signed in again (a new connection).
    wait_for(Duration::from_secs(30), "err 1 through the cloud", || {
        let v = b.cloud.resource(&di, "/oic/mnt").try_json().ok()?["data"]["content"].clone();
        (v["err"] == 1 && v["rb"] == false).then_some(())
    });
    assert!(
        b.cloud.requests(&di, "POST", "/oic/sec/session").len() >= sessions + 2,
        "sign-out and a new sign-in"
    );
    let log = agent.log().join("\n");
    assert!(
        log.contains("the reboot command failed") && log.contains("signing in again"),
        "{log}"
    );
    assert!(agent.child.try_wait().unwrap().is_none(), "still running");
}

fn restart(b: &Bench, agent: SecureAgent) -> SecureAgent {
    drop(agent);
    b.agent(&[])
}

fn state_file(b: &Bench, name: &str) -> PathBuf {
    b.state.join(name)
}

/// Waits (the log is read as it comes) for an ERROR line naming `path` and saying where it was
/// moved; returns the log so far.
fn assert_moved_aside(agent: &mut SecureAgent, path: &Path) -> String {
    let name = path.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log().join("\n");
        if log
            .lines()
            .any(|l| l.contains("ERROR") && l.contains(&name) && l.contains("moved to"))
        {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".corrupt");
            assert!(PathBuf::from(aside).exists(), "{name} not moved aside");
            return log;
        }
        assert!(Instant::now() < deadline, "no error naming {name}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn corrupt_state_files_are_reported_moved_aside_and_the_agent_starts_safe() {
    let b = Bench::new("corrupt", &[]);
    let agent = b.agent(&[]);
    b.onboard(&agent);
    let di = agent.di.clone();

    // A damaged identity file: the di is recovered from the security state, and the device
    // signs in again as itself.
    drop(agent);
    std::fs::write(state_file(&b, "identity.json"), b"{\"version\":1,\"di\":").unwrap();
    let mut agent = b.agent(&[]);
    assert_eq!(agent.di, di);
    assert_moved_aside(&mut agent, &state_file(&b, "identity.json"));
    b.wait_online(&di);

    // A cloud state of an unknown version: not registered any more, still owned; the owner
    // can configure the cloud again (a new onboarding by the same Mediator does that).
    drop(agent);
    let mut v: ciborium::Value = ciborium::from_reader(
        std::fs::read(state_file(&b, "cloud.cbor"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    if let Value::Map(m) = &mut v {
        for (k, val) in m.iter_mut() {
            if k.as_text() == Some("version") {
                *val = Value::Integer(7.into());
            }
        }
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(&v, &mut bytes).unwrap();
    std::fs::write(state_file(&b, "cloud.cbor"), &bytes).unwrap();
    let mut agent = b.agent(&[]);
    let log = assert_moved_aside(&mut agent, &state_file(&b, "cloud.cbor"));
    assert!(log.contains("version 7"), "the reason is given:\n{log}");
    let mut tls = TlsClient::connect(agent.coaps, Some(b.owner()));
    let conf = body(&tls.request(&get(CONF)));
    assert_eq!(
        key(&conf, "cps").and_then(Value::as_text),
        Some("uninitialized")
    );
    let doxm = body(&tls.request(&get("/oic/sec/doxm")));
    assert_eq!(key(&doxm, "owned"), Some(&Value::Bool(true)), "still owned");
    drop(tls);

    // Garbage in the security state: the device starts unowned and can be onboarded again.
    std::fs::write(state_file(&b, "security.cbor"), b"\xbf\x63xyz garbage").unwrap();
    let mut agent = restart(&b, agent);
    assert_eq!(agent.di, di, "the identity is kept");
    let log = assert_moved_aside(&mut agent, &state_file(&b, "security.cbor"));
    assert!(log.contains("onboarded again"), "{log}");
    let mut anon = TlsClient::connect(agent.coaps, None);
    let doxm = body(&anon.request(&get("/oic/sec/doxm")));
    assert_eq!(key(&doxm, "owned"), Some(&Value::Bool(false)));
    drop(anon);
    b.onboard(&agent);
    let r = b.cloud.resource(&di, "/temperature");
    assert_eq!(r.status, 200, "{}", r.text());

    // The PIN the device made for itself is state too (no --pin-file here).
    drop(agent);
    std::fs::write(state_file(&b, "pin"), b"12ab\n").unwrap();
    let mut agent = SecureAgent::start(&b.state, None, &[]);
    assert_moved_aside(&mut agent, &state_file(&b, "pin"));
    assert!(
        agent
            .stdout_lines
            .iter()
            .any(|l| l.starts_with("ocf-agent: setup PIN ")),
        "the new PIN is shown: {:?}",
        agent.stdout_lines
    );
}
