//! First-boot provisioning by the Mediator: the agent in its secure
//! mode (no `--insecure-dev`; coaps+tcp endpoint, PIN from `--pin-file` or printed once), the
//! development cloud, and `ocf-mediator` on loopback with ports chosen by the OS.
//!
//! - the whole flow with `--device` ends `registered`, a client reads and drives the device
//!   through the cloud's HTTP API, and `offboard` deregisters it; the same with `--di` through
//!   multicast discovery inside a network namespace the test creates;
//! - a device that reports `failed` makes the Mediator exit non-zero with `clec` explained;
//! - a wrong PIN is refused (4.01 from the device; the Mediator names the step) and, after 5
//!   wrong attempts, rate limited with 4.29 and a growing Max-Age;
//! - a man in the middle terminating TLS on both sides cannot complete ownership, and once the
//!   device's key is pinned, the Mediator refuses the impostor before sending anything;
//! - a second Mediator cannot take an owned device (4.03) nor write CoAPCloudConf, `/oic/mnt` or
//!   the security resources (4.01/4.03);
//! - a cloud whose ACE lacks the wildcard cannot read or write the device's resources;
//! - no GET of any resource, as the owner or as the cloud, returns `at`, a token, a private key
//!   or the PIN; no log line has them; the agent's state files are 0600;
//! - interop: libcoap's `coap-client` over coaps+tcp with the owner's certificate and key GETs and
//!   POSTs the switch, and without them is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ciborium::Value;
use coap_lite::{CoapOption, ResponseType};
use ocf::resource::Response;
use ocf::security::otm::{self, MediatorOtm, OtmError, Pin};
use ocf_e2e::cloud::*;
use ocf_e2e::mediator::*;
use ocf_e2e::tls_client::TlsClient;
use ocf_e2e::*;
use serde_json::json;

const PIN: &str = "27182818";
const WRONG_PIN: &str = "31415926";
const CONF: &str = "/CoapCloudConfResURI";

/// A cloud, a recording proxy in front of its HTTP API, an agent with [`PIN`], a Mediator.
struct Bench {
    cloud: DevCloud,
    api: RecordingProxy,
    agent: SecureAgent,
    med: Mediator,
    dir: TempDir,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let dir = TempDir::new(tag);
        let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
        let api = RecordingProxy::start(cloud.http);
        let pin = pin_file(dir.path(), PIN);
        let agent = SecureAgent::start(&dir.path().join("state"), Some(&pin), &[]);
        let med = Mediator::new(&dir.path().join("mediator"));
        med.token_from(&cloud);
        Bench {
            cloud,
            api,
            agent,
            med,
            dir,
        }
    }

    /// Onboards with [`PIN`]; must end `registered`.
    fn onboard(&self, extra: &[&str]) -> Run {
        let run = self
            .med
            .onboard(PIN, &self.agent.ep, &self.api.url(), extra)
            .expect_ok();
        assert!(run.stdout.contains("cps registered"), "{}", run.output());
        run
    }

    fn owner_cert(&self) -> (String, String) {
        owner_cert(&self.med)
    }
}

fn owner_cert(med: &Mediator) -> (String, String) {
    (
        std::fs::read_to_string(med.cert_path()).expect("mediator.crt"),
        std::fs::read_to_string(med.key_path()).expect("mediator.key"),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The number in "try again in N s".
fn retry_after(text: &str) -> u64 {
    let i = text
        .find("try again in ")
        .unwrap_or_else(|| panic!("no retry time in:\n{text}"));
    text[i + 13..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad retry time in:\n{text}"))
}

/// Whether `needle` (digits) occurs in `hay` as a whole number, not inside a longer one.
fn contains_number(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Text values under keys that hold secrets, anywhere in a CBOR value.
fn secret_values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Map(m) => {
            for (k, v) in m {
                let k = k.as_text().unwrap_or_default().to_ascii_lowercase();
                if k == "at" || k.contains("token") || k.contains("authcode") {
                    if let Some(t) = v.as_text().filter(|t| !t.is_empty()) {
                        out.push(t.to_string());
                    }
                }
                secret_values(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| secret_values(v, out)),
        Value::Tag(_, v) => secret_values(v, out),
        _ => {}
    }
}

/// Keys naming secrets anywhere in a CBOR value.
fn secret_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Map(m) => {
            for (k, v) in m {
                let k = k.as_text().unwrap_or_default();
                let lk = k.to_ascii_lowercase();
                if lk == "at" || lk.contains("token") || lk == "privatedata" || lk == "pin" {
                    out.push(k.to_string());
                }
                secret_keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| secret_keys(v, out)),
        Value::Tag(_, v) => secret_keys(v, out),
        _ => {}
    }
}

/// Fails if `text` holds any secret (or any private key).
fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    assert!(
        !text.contains("PRIVATE KEY"),
        "{what} contains a private key:\n{text}"
    );
    for s in secrets {
        let found = if s.chars().all(|c| c.is_ascii_digit()) {
            contains_number(text, s)
        } else {
            text.contains(s.as_str())
        };
        assert!(
            !found,
            "{what} contains a secret ({} chars):\n{text}",
            s.len()
        );
    }
}

/// A deterministic random source for protocol runs in tests (never for real keys).
fn test_rng(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut s = seed | 1;
    move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *b = (s >> 24) as u8;
        }
    }
}

/// Sends `req` and returns the whole answer packet (for options such as Max-Age).
fn raw_request(tls: &mut TlsClient, req: &ocf::resource::Request) -> (coap_lite::Packet, Response) {
    let token = tls.token();
    tls.try_send(&req.to_packet(&token)).expect("send");
    let p = tls.recv_token(&token).expect("an answer");
    let r = Response::from_packet(&p).expect("a response");
    (p, r)
}

fn max_age(p: &coap_lite::Packet) -> Option<u32> {
    p.get_first_option(CoapOption::MaxAge)
        .map(|b| b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
}

#[test]
fn first_boot_flow_registers_and_a_client_uses_the_device_through_the_cloud() {
    let b = Bench::new("onboard-flow");
    // The secure mode: a coaps+tcp endpoint and no plain coap+tcp one.
    assert!(
        !b.agent
            .endpoints
            .iter()
            .any(|e| e.starts_with("coap+tcp://")),
        "{:?}",
        b.agent.endpoints
    );

    let run = b.onboard(&[]);
    let mut last = 0;
    for n in 1..=9 {
        let at = run
            .stdout
            .find(&format!("[{n}/9]"))
            .unwrap_or_else(|| panic!("no step {n}:\n{}", run.output()));
        assert!(at >= last, "steps out of order:\n{}", run.stdout);
        last = at;
    }
    for line in [
        "ownership transfer",
        "/oic/sec/cred",
        "/oic/sec/acl2",
        CONF,
        "dos.s = 3",
        "cps registered",
    ] {
        assert!(
            run.stdout.contains(line),
            "{line:?} not in:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains(&format!(
            "device {} is registered with cloud {}",
            b.agent.di, b.cloud.sid
        )),
        "{}",
        run.stdout
    );

    // The Mediator's identity: a private directory, a private key, and the device pinned.
    assert_eq!(mode(&b.med.dir), 0o700);
    assert_eq!(mode(&b.med.key_path()), 0o600);
    let devices: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.med.dir.join("devices.json")).unwrap())
            .unwrap();
    let pinned = &devices["devices"][&b.agent.di];
    assert_eq!(
        pinned["spki_sha256"].as_str().map(str::len),
        Some(64),
        "{devices}"
    );

    // The device is owned by this Mediator and in normal operation.
    let mut tls = TlsClient::connect(b.agent.coaps, Some(b.owner_cert()));
    let doxm = body(&tls.request(&get("/oic/sec/doxm")));
    assert_eq!(key(&doxm, "owned"), Some(&Value::Bool(true)));
    assert_eq!(
        key(&doxm, "devowneruuid").and_then(Value::as_text),
        Some(b.med.uuid().as_str())
    );
    let pstat = body(&tls.request(&get("/oic/sec/pstat")));
    assert_eq!(
        key(key(&pstat, "dos").unwrap(), "s").and_then(Value::as_integer),
        Some(3.into())
    );

    // A client reads the temperature and drives the switch through the cloud.
    let di = b.agent.di.clone();
    wait_for(
        Duration::from_secs(20),
        "the device online in the cloud",
        || b.cloud.device(&di).filter(online),
    );
    let r = b.cloud.resource(&di, "/temperature");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.content()["temperature"].is_number(), "{}", r.text());
    let r = b.cloud.update(&di, "/switch", &json!({"value": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let sw = body(&tls.request(&get("/switch")));
    assert_eq!(key(&sw, "value"), Some(&Value::Bool(true)));
    drop(tls);

    // Offboarding: {"cis":""} as the owner, then `uninitialized`; the cloud forgets the device.
    let off = b
        .med
        .run(&["offboard", "--device", &b.agent.ep, "--timeout", "30"])
        .expect_ok();
    assert!(
        off.stdout.contains("[3/3]") && off.stdout.contains("cps uninitialized"),
        "{}",
        off.output()
    );
    wait_for(
        Duration::from_secs(10),
        "the cloud to forget the device",
        || {
            b.cloud
                .try_devices()
                .ok()
                .filter(|d| !d.iter().any(|d| d["id"] == di && ocf_e2e::cloud::online(d)))
                .map(|_| ())
        },
    );
    let _ = &b.dir;
}

#[test]
fn onboarding_by_di_through_multicast_discovery_in_a_network_namespace() {
    let dir = TempDir::new("onboard-di");
    let d = dir.path().display().to_string();
    pin_file(dir.path(), PIN);
    let script = format!(
        r#"
set -eu
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
'{cloud}' --coap 127.0.0.1:0 --http 127.0.0.1:0 --data-dir '{d}/cloud' >'{d}/cloud.out' 2>'{d}/cloud.err' &
cpid=$!
'{agent}' --board sim --state-dir '{d}/state' --tls 127.0.0.1:0 --pin-file '{d}/pin' >'{d}/agent.out' 2>'{d}/agent.err' &
apid=$!
trap 'kill $apid $cpid 2>/dev/null || true' EXIT
for i in $(seq 400); do grep -q 'ready' '{d}/agent.out' && grep -q 'ready' '{d}/cloud.out' && break; sleep 0.05; done
http=$(sed -n 's/^ocf-dev-cloud: http http:\/\///p' '{d}/cloud.out')
di=$(sed -n 's/^ocf-agent: di //p' '{d}/agent.out')
host=${{http%:*}}; port=${{http##*:}}
# A bearer token from the cloud's OAuth token endpoint (bash's /dev/tcp: no curl needed).
form="grant_type=client_credentials&client_id=ocf-dev&client_secret=$(cat '{d}/cloud/client-secret')"
exec 3<>/dev/tcp/$host/$port
printf 'POST /oauth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %s\r\n\r\n%s' "${{#form}}" "$form" >&3
token=$(cat <&3 | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
exec 3<&-
set +e
OCF_CLOUD_TOKEN="$token" '{mediator}' --identity '{d}/med' onboard --di "$di" --pin {pin} --cloud "http://$http" --timeout 30 >'{d}/onboard.out' 2>'{d}/onboard.err'
echo $? >'{d}/onboard.code'
set -e
# A client of the cloud reads the temperature.
for i in $(seq 50); do
  exec 3<>/dev/tcp/$host/$port
  printf 'GET /api/v1/devices/%s/resources/temperature?shadow=false HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' "$di" "$token" >&3
  cat <&3 >'{d}/temperature.http'
  exec 3<&-
  grep -q '"temperature"' '{d}/temperature.http' && break
  sleep 0.2
done
"#,
        cloud = binary("ocf-dev-cloud").display(),
        agent = binary("ocf-agent").display(),
        mediator = binary("ocf-mediator").display(),
        pin = PIN,
    );
    let out = Command::new("unshare")
        .args(["--net", "--", "bash", "-c", &script])
        .output()
        .expect("run unshare (util-linux)");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    let logs = || {
        format!(
            "onboard:\n{}{}\nagent:\n{}\ncloud:\n{}",
            read("onboard.out"),
            read("onboard.err"),
            read("agent.err"),
            read("cloud.err")
        )
    };
    assert!(
        out.status.success(),
        "namespace script failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    assert_eq!(read("onboard.code").trim(), "0", "{}", logs());
    let onboard = read("onboard.out");
    assert!(
        onboard.contains("by multicast discovery") && onboard.contains("found "),
        "{onboard}"
    );
    assert!(onboard.contains("cps registered"), "{}", logs());
    let temp = read("temperature.http");
    assert!(
        temp.starts_with("HTTP/1.1 200") && temp.contains("\"temperature\""),
        "{temp}\n{}",
        logs()
    );
    assert_no_secret(
        "the Mediator's output",
        &format!("{onboard}{}", read("onboard.err")),
        &[PIN.to_string()],
    );
}

#[test]
fn a_failed_registration_exits_non_zero_with_clec_explained() {
    let dir = TempDir::new("onboard-failed");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    // The cloud's API as the Mediator sees it, with every authorisation code spoiled (same
    // length, so the HTTP framing holds): the device's sign-up is refused.
    fn spoil(answer: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(answer).into_owned();
        match text.find("\"code\":\"") {
            Some(i) => {
                let start = i + 8;
                let end = start + text[start..].find('"').unwrap_or(0);
                format!(
                    "{}{}{}",
                    &text[..start],
                    "x".repeat(end - start),
                    &text[end..]
                )
                .into_bytes()
            }
            None => answer.to_vec(),
        }
    }
    let api = RecordingProxy::start_with(cloud.http, Some(spoil));
    let pin = pin_file(dir.path(), PIN);
    let agent = SecureAgent::start(&dir.path().join("state"), Some(&pin), &[]);
    let med = Mediator::new(&dir.path().join("mediator"));
    med.token_from(&cloud);
    let run = med.onboard(PIN, &agent.ep, &api.url(), &[]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stdout.contains("[9/9]") && run.stdout.contains("cps failed"),
        "{}",
        run.output()
    );
    let clec_line = run
        .stdout
        .lines()
        .find(|l| l.contains("failed to register: clec"))
        .unwrap_or_else(|| panic!("{}", run.output()));
    assert!(
        (clec_line.contains("clec 1") && clec_line.contains("refused"))
            || (clec_line.contains("clec 4") && clec_line.contains("unauthorised")),
        "{clec_line}"
    );
}

#[test]
fn a_wrong_pin_is_refused_and_then_rate_limited_with_growing_delays() {
    let b = Bench::new("onboard-wrong-pin");
    b.med.uuid(); // creates the identity
    let di = b.agent.di.clone();

    // The device refuses a wrong PIN itself: with the protocol run by hand, the device's
    // confirmation does not match ours, and a confirmation made without the right key gets 4.01.
    let mut tls = TlsClient::connect(b.agent.coaps, Some(b.owner_cert()));
    let mut rng = test_rng(42);
    let (m, msg_a) = MediatorOtm::start(&Pin::new(WRONG_PIN).unwrap(), &di, &mut rng);
    let r1 = tls.request(&otm::step1_request(&msg_a));
    assert_eq!(r1.code, ResponseType::Changed, "{}", r1.diagnostic());
    let s1 = otm::parse_step1_response(&r1).unwrap();
    assert_eq!(
        m.finish(&s1.pake_msg_b, &s1.confirm_b, &tls.exporter()),
        Err(OtmError::Unauthorized)
    );
    let r2 = tls.request(&otm::step2_request(&[0x5a; 32]));
    assert_eq!(r2.code, ResponseType::Unauthorized, "{}", r2.diagnostic());
    drop(tls);

    // Four more wrong PINs through the Mediator: each names the step and the reason.
    for _ in 0..4 {
        let run = b.med.onboard(WRONG_PIN, &b.agent.ep, &b.api.url(), &[]);
        assert_eq!(run.code, 1, "{}", run.output());
        assert!(
            run.stderr.contains("step 3/9 (ownership transfer): wrong PIN, or a man in the middle: the device's key confirmation did not match"),
            "{}",
            run.output()
        );
    }
    // After 5 failures: 4.29 Too Many Requests with Max-Age, growing after each further
    // failure. On the wire first (an attempt answered instead, on a slow machine, only adds a
    // failure), then through the Mediator, which says when to retry.
    let mut delays = Vec::new();
    for round in 0..3 {
        let mut wire = None;
        for _ in 0..6 {
            let mut tls = TlsClient::connect(b.agent.coaps, Some(b.owner_cert()));
            let (_, msg_a) = MediatorOtm::start(&Pin::new(WRONG_PIN).unwrap(), &di, &mut rng);
            let (p, r) = raw_request(&mut tls, &otm::step1_request(&msg_a));
            if r.code == ResponseType::TooManyRequests {
                wire = Some(max_age(&p).expect("Max-Age on 4.29"));
                break;
            }
            assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
        }
        let wire = u64::from(wire.expect("never rate limited"));
        let run = b.med.onboard(WRONG_PIN, &b.agent.ep, &b.api.url(), &[]);
        assert_eq!(run.code, 1, "{}", run.output());
        assert!(
            run.stderr.contains("step 3/9 (ownership transfer): rate limited after too many wrong PINs (4.29): try again in"),
            "{}",
            run.output()
        );
        // The Mediator reports the Max-Age it got, which counts down from the wire's: on a
        // loaded machine its run reaches step 3 a few seconds later.
        let secs = retry_after(&run.stderr);
        assert!(
            secs <= wire && secs + 3 >= wire,
            "Max-Age {wire}, the Mediator said {secs}"
        );
        delays.push(wire);
        std::thread::sleep(Duration::from_millis(wire * 1000 + 300));
        if round < 2 {
            // One more wrong PIN is answered once the delay is over, and makes the next longer.
            let run = b.med.onboard(WRONG_PIN, &b.agent.ep, &b.api.url(), &[]);
            assert!(
                run.stderr.contains("wrong PIN, or a man in the middle"),
                "{}",
                run.output()
            );
        }
    }
    assert!(
        delays[0] >= 1 && delays[0] < delays[1] && delays[1] < delays[2],
        "delays {delays:?}"
    );
    // The right PIN still works once the delay has passed; the device is then owned.
    b.onboard(&[]);
    let mut tls = TlsClient::connect(b.agent.coaps, None);
    let doxm = body(&tls.request(&get("/oic/sec/doxm")));
    assert_eq!(key(&doxm, "owned"), Some(&Value::Bool(true)));
}

#[test]
fn a_man_in_the_middle_cannot_take_ownership() {
    let dir = TempDir::new("onboard-mitm");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let api = RecordingProxy::start(cloud.http);
    // No --pin-file: the agent makes a PIN and prints it once on stdout, never in its log.
    let mut agent = SecureAgent::start(&dir.path().join("state"), None, &[]);
    let pin = agent
        .stdout()
        .iter()
        .find_map(|l| l.strip_prefix("ocf-agent: setup PIN "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no setup PIN line in {:?}", agent.stdout_lines));
    assert!(Pin::new(&pin).is_ok(), "not an 8-digit PIN: {pin:?}");
    let med = Mediator::new(&dir.path().join("mediator"));
    med.token_from(&cloud);

    // Through the man in the middle: TLS is terminated on both sides, the CoAP relayed.
    let mitm = Mitm::start(agent.coaps);
    let run = med.onboard(&pin, &mitm.ep, &api.url(), &[]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr.contains("step 3/9 (ownership transfer): wrong PIN, or a man in the middle: the device's key confirmation did not match"),
        "{}",
        run.output()
    );
    assert!(
        mitm.log().iter().any(|l| l.contains("relaying")),
        "the Mediator did not go through the man in the middle"
    );
    // The device stays unowned, and nothing was pinned.
    let mut tls = TlsClient::connect(agent.coaps, None);
    let doxm = body(&tls.request(&get("/oic/sec/doxm")));
    assert_eq!(key(&doxm, "owned"), Some(&Value::Bool(false)), "{doxm:?}");
    drop(tls);
    let devices = std::fs::read_to_string(med.dir.join("devices.json")).unwrap_or_default();
    assert!(!devices.contains(&agent.di), "{devices}");

    // Directly, the same Mediator with the same PIN takes the device.
    let run = med.onboard(&pin, &agent.ep, &api.url(), &[]).expect_ok();
    assert!(run.stdout.contains("cps registered"), "{}", run.output());
    // Now its key is pinned: through the man in the middle the Mediator stops at once.
    let run = med.run(&["offboard", "--device", &mitm.ep, "--timeout", "10"]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr.contains("step 1/3 (connecting)") && run.stderr.contains("not the one pinned"),
        "{}",
        run.output()
    );

    let log = agent.log().join("\n");
    assert_no_secret("the agent's log", &log, std::slice::from_ref(&pin));
    assert_no_secret("the Mediator's output", &med.all_output(), &[pin]);
}

#[test]
fn a_second_mediator_can_neither_take_nor_configure_an_owned_device() {
    let b = Bench::new("onboard-second");
    b.onboard(&[]);
    let owner_uuid = b.med.uuid();
    let other = Mediator::new(&b.dir.path().join("other-mediator"));
    other.token_from(&b.cloud);
    assert_ne!(other.uuid(), owner_uuid);

    // Ownership transfer with the right PIN: 4.03, the device is owned.
    let run = other.onboard(PIN, &b.agent.ep, &b.api.url(), &[]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("step 3/9 (ownership transfer): the device is already owned (4.03)"),
        "{}",
        run.output()
    );
    let mut tls = TlsClient::connect(b.agent.coaps, Some(owner_cert(&other)));
    let mut rng = test_rng(7);
    let (_, msg_a) = MediatorOtm::start(&Pin::new(PIN).unwrap(), &b.agent.di, &mut rng);
    let r = tls.request(&otm::step1_request(&msg_a));
    assert_eq!(r.code, ResponseType::Forbidden, "{}", r.diagnostic());
    drop(tls);

    // Writes to the configuration and security resources: 4.01 or 4.03.
    for (path, body) in [
        (CONF, r#"{"cis":""}"#),
        (
            CONF,
            r#"{"cis":"coaps+tcp://127.0.0.1:1","at":"x","sid":"11111111-2222-3333-4444-555555555555","apn":"plgd"}"#,
        ),
        ("/oic/mnt", r#"{"fr":true}"#),
        ("/oic/sec/pstat", r#"{"dos":{"s":2}}"#),
        (
            "/oic/sec/acl2",
            r#"{"aclist2":[{"subject":{"conntype":"anon-clear"},"permission":31,"resources":[{"wc":"*"}]}]}"#,
        ),
        (
            "/oic/sec/doxm",
            r#"{"rowneruuid":"11111111-2222-3333-4444-555555555555"}"#,
        ),
    ] {
        let run = other.post(&b.agent.ep, path, body);
        assert!(
            ["4.01", "4.03"].contains(&run.coap_code().as_str()),
            "POST {path} by a non-owner: {}",
            run.output()
        );
    }
    // Offboarding by a Mediator that never onboarded the device is refused by the Mediator.
    let run = other.run(&["offboard", "--device", &b.agent.ep, "--timeout", "5"]);
    assert_eq!(run.code, 1, "{}", run.output());

    // Nothing changed: still registered, still the first Mediator's.
    let conf = b
        .med
        .get(&b.agent.ep, CONF)
        .expect_ok()
        .json()
        .expect("JSON");
    assert_eq!(conf["cps"], "registered", "{conf}");
    let doxm = b
        .med
        .get(&b.agent.ep, "/oic/sec/doxm")
        .expect_ok()
        .json()
        .expect("JSON");
    assert_eq!(doxm["devowneruuid"], owner_uuid.as_str(), "{doxm}");
}

#[test]
fn a_cloud_without_the_wildcard_ace_cannot_use_the_resources() {
    let b = Bench::new("onboard-no-ace");
    let run = b.onboard(&["--cloud-ace", "/oic/mnt,{conf}"]);
    assert!(
        run.stdout
            .contains("permission 31 (CRUDN) on /oic/mnt, /CoapCloudConfResURI"),
        "{}",
        run.stdout
    );
    let di = b.agent.di.clone();
    wait_for(
        Duration::from_secs(20),
        "the device online in the cloud",
        || b.cloud.device(&di).filter(online),
    );
    for href in ["/temperature", "/switch", "/humidity"] {
        let r = b.cloud.resource(&di, href);
        assert!(
            [401, 403].contains(&r.status),
            "GET {href} through the cloud without an ACE: {} {}",
            r.status,
            r.text()
        );
    }
    let r = b.cloud.update(&di, "/switch", &json!({"value": true}));
    assert!(
        [401, 403].contains(&r.status),
        "POST /switch through the cloud without an ACE: {} {}",
        r.status,
        r.text()
    );
    // The owner still can.
    let r = b.med.get(&b.agent.ep, "/temperature").expect_ok();
    assert!(
        r.json().expect("JSON")["temperature"].is_number(),
        "{}",
        r.output()
    );
}

#[test]
fn no_secret_in_any_representation_or_log_and_state_files_are_private() {
    let mut b = Bench::new("onboard-secrets");
    b.onboard(&["--name", "bench device"]);
    let di = b.agent.di.clone();
    wait_for(
        Duration::from_secs(20),
        "the device online in the cloud",
        || b.cloud.device(&di).filter(online),
    );

    // The secrets: the PIN, the authorisation code the cloud gave the Mediator (seen by the
    // recording proxy), and the tokens the device holds (in its state file).
    let mut secrets = vec![PIN.to_string()];
    let codes = b.api.json_values("code");
    assert!(
        !codes.is_empty(),
        "no authorisation code went through the proxy: {}",
        b.api.recorded()
    );
    secrets.extend(codes);
    let state = b.agent.state_dir.clone();
    let tokens = wait_for(
        Duration::from_secs(10),
        "tokens in the device's cloud state",
        || {
            let bytes = std::fs::read(state.join("cloud.cbor")).ok()?;
            let v: Value = ciborium::de::from_reader(bytes.as_slice()).ok()?;
            let mut t = Vec::new();
            secret_values(&v, &mut t);
            (t.len() >= 2).then_some(t)
        },
    );
    secrets.extend(tokens);
    secrets.sort();
    secrets.dedup();

    // Every resource as the owner, over the secure endpoint (default and baseline interfaces).
    let mut tls = TlsClient::connect(b.agent.coaps, Some(b.owner_cert()));
    // `--name` went through /oic/con.
    let d = body(&tls.request(&get("/oic/d")));
    assert_eq!(key(&d, "n").and_then(Value::as_text), Some("bench device"));
    let res = tls.request(&get("/oic/res"));
    let mut hrefs: Vec<String> = body(&res)
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| key(l, "href").and_then(Value::as_text).map(str::to_string))
        .collect();
    for h in [
        "/oic/sec/doxm",
        "/oic/sec/pstat",
        "/oic/sec/cred",
        "/oic/sec/acl2",
        "/oic/sec/csr",
        CONF,
    ] {
        if !hrefs.iter().any(|x| x == h) {
            hrefs.push(h.to_string());
        }
    }
    assert!(hrefs.len() >= 10, "{hrefs:?}");
    for href in &hrefs {
        for path in [href.clone(), format!("{href}?if=oic.if.baseline")] {
            let mut req = get(&path);
            if let Some((p, q)) = path.split_once('?') {
                req = get(p);
                let (k, v) = q.split_once('=').unwrap();
                req.query.push((k.into(), v.into()));
            }
            let r = tls.request(&req);
            let text = String::from_utf8_lossy(&r.payload).into_owned();
            assert_no_secret(&format!("owner GET {path}"), &text, &secrets);
            if let Ok(v) =
                ocf::model::decode_payload(ocf::model::ContentFormat::OcfCbor, &r.payload)
            {
                let mut keys = Vec::new();
                secret_keys(&v, &mut keys);
                assert!(
                    keys.is_empty(),
                    "owner GET {path} has secret keys {keys:?}: {v:?}"
                );
            }
        }
    }
    drop(tls);

    // Every published resource as the cloud, through its HTTP API.
    let links = serde_json::Value::Array(b.cloud.links(&di));
    let cloud_hrefs: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["href"].as_str().map(str::to_string))
        .collect();
    assert!(
        cloud_hrefs.iter().any(|h| h == "/temperature"),
        "{cloud_hrefs:?}"
    );
    for href in cloud_hrefs.iter().chain(
        [
            CONF.to_string(),
            "/oic/sec/cred".into(),
            "/oic/sec/acl2".into(),
        ]
        .iter(),
    ) {
        let r = b.cloud.resource(&di, href);
        let text = r.text();
        assert_no_secret(&format!("cloud GET {href}"), &text, &secrets);
        for k in ["\"at\"", "token", "privatedata"] {
            assert!(
                !text.to_ascii_lowercase().contains(k),
                "cloud GET {href} has {k}: {text}"
            );
        }
    }

    // No log line: the agent's (debug level), the cloud's, the Mediator's output.
    std::thread::sleep(Duration::from_millis(300));
    let agent_log = b.agent.log().join("\n");
    assert!(
        agent_log.contains("DEBUG") || agent_log.contains("INFO"),
        "no agent log captured"
    );
    assert_no_secret("the agent's log", &agent_log, &secrets);
    assert_no_secret("the agent's stdout", &b.agent.stdout().join("\n"), &secrets);
    assert_no_secret(
        "the cloud's log",
        &b.cloud.stderr_log().join("\n"),
        &secrets,
    );
    assert_no_secret("the Mediator's output", &b.med.all_output(), &secrets);

    // The agent's state files are 0600.
    let mut seen = 0;
    for entry in std::fs::read_dir(&state).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            seen += 1;
            assert_eq!(
                mode(&entry.path()) & 0o077,
                0,
                "{} is mode {:o}",
                entry.path().display(),
                mode(&entry.path())
            );
        }
    }
    assert!(seen >= 3, "only {seen} state files");
}

#[test]
fn libcoap_client_with_the_owner_certificate_gets_and_posts_the_switch() {
    let tool = coap_client();
    let b = Bench::new("onboard-libcoap");
    b.onboard(&[]);
    let url = format!("{}/switch", b.agent.ep);
    let cert = b.med.cert_path().display().to_string();
    let keyf = b.med.key_path().display().to_string();
    let coap = |args: &[&str]| {
        let out = Command::new(&tool)
            .args(args)
            .output()
            .expect("run coap-client");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let json_value = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text.trim())
            .ok()
            .map(|j| j["value"].clone())
    };

    let (ok, out) = coap(&[
        "-B",
        "10",
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        r#"{"value":true}"#,
        "-c",
        &cert,
        "-j",
        &keyf,
        &url,
    ]);
    assert!(ok && !out.contains("4.0"), "POST as the owner: {out}");
    let (ok, out) = coap(&[
        "-B", "10", "-m", "get", "-A", "50", "-c", &cert, "-j", &keyf, &url,
    ]);
    assert!(ok, "{out}");
    assert_eq!(
        json_value(&out),
        Some(json!(true)),
        "GET as the owner: {out}"
    );
    let (ok, out) = coap(&[
        "-B",
        "10",
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        r#"{"value":false}"#,
        "-c",
        &cert,
        "-j",
        &keyf,
        &url,
    ]);
    assert!(ok && !out.contains("4.0"), "{out}");
    let (_, out) = coap(&[
        "-B", "10", "-m", "get", "-A", "50", "-c", &cert, "-j", &keyf, &url,
    ]);
    assert_eq!(json_value(&out), Some(json!(false)), "{out}");

    // Without the owner's certificate the same requests are refused.
    let (_, out) = coap(&["-B", "10", "-m", "get", "-A", "50", &url]);
    assert!(
        out.contains("4.01") || out.contains("4.03"),
        "GET without a certificate: {out}"
    );
    let other = Mediator::new(&b.dir.path().join("other"));
    other.token_from(&b.cloud);
    other.uuid();
    let (ocert, okey) = (
        other.cert_path().display().to_string(),
        other.key_path().display().to_string(),
    );
    let (_, out) = coap(&[
        "-B",
        "10",
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        r#"{"value":true}"#,
        "-c",
        &ocert,
        "-j",
        &okey,
        &url,
    ]);
    assert!(
        out.contains("4.01") || out.contains("4.03"),
        "POST with another certificate: {out}"
    );
    let sw = b
        .med
        .get(&b.agent.ep, "/switch")
        .expect_ok()
        .json()
        .unwrap();
    assert_eq!(sw["value"], false, "{sw}");
}
