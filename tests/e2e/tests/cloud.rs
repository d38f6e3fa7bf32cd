//! The agent (sim board) and the development cloud (`ocf-dev-cloud`) on loopback: provisioning
//! of the identity certificate and CoAPCloudConf, sign-up, sign-in, publish, requests and observations through the cloud's HTTP API, token
//! refresh, reconnects, the failure paths (`cps`/`clec`), deregistration, the cloud identity
//! check, a cloud certificate that is not valid yet (a clock behind) retried without failing;
//! and peers nobody here wrote against the cloud: libcoap's `coap-client` with TLS and a
//! client certificate signs up and signs in (one request per connection, so its publish is
//! refused 4.01 as on plgd), and aiocoap signs up, signs in and publishes on one connection.
//!
//! Until the Mediator does it over the secured local endpoint, a test provisions the
//! agent as an installer would: `ocf-agent csr` → the cloud's CSR API → `identity.crt` and
//! `cloud-ca.pem` in the state directory, then CoAPCloudConf over the plain local coap+tcp
//! endpoint.
//!
//! The agent's cloud timers are shortened where a test waits for retries, with the hidden
//! `--cloud-timing` flag (see `ocf-agent`'s `cloud::parse_timing`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::ResponseType;
use ocf::resource::Response;
use ocf_e2e::cloud::*;
use ocf_e2e::*;
use serde_json::{json, Value as Json};

const CONF: &str = "/CoapCloudConfResURI";
/// Quick retries for the failure-path tests.
const FAST_RETRIES: &str =
    "backoff-base=100ms,backoff-cap=400ms,attempts=3,connect-timeout=3s,request-timeout=3s,deregister-timeout=3s";

fn text(v: &Value, k: &str) -> String {
    key(v, k)
        .and_then(Value::as_text)
        .unwrap_or_else(|| panic!("no text {k:?} in {v:?}"))
        .to_string()
}

fn clec(v: &Value) -> u64 {
    key(v, "clec")
        .and_then(|c| c.as_integer())
        .and_then(|i| u64::try_from(i).ok())
        .unwrap_or_else(|| panic!("no clec in {v:?}"))
}

/// GET CoAPCloudConf over the local coap+tcp endpoint.
fn cloud_conf(agent: &Agent) -> Value {
    let mut tcp = TcpClient::connect(agent.tcp());
    let r = tcp.request(&get(CONF));
    assert_eq!(r.code, ResponseType::Content, "{}", r.diagnostic());
    body(&r)
}

/// POST CoAPCloudConf over the local coap+tcp endpoint.
fn write_conf(agent: &Agent, entries: &[(&str, &str)]) -> Response {
    let body = map(&entries
        .iter()
        .map(|(k, v)| (*k, Value::Text(v.to_string())))
        .collect::<Vec<_>>());
    TcpClient::connect(agent.tcp()).request(&post_cbor(CONF, &body))
}

fn wait_cps(agent: &Agent, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let c = cloud_conf(agent);
        if text(&c, "cps") == want {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "cps never became {want}; last: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ocf-agent csr` → the cloud's CA → `identity.crt` + `cloud-ca.pem` in the state directory.
fn provision_identity(cloud: &DevCloud, state: &Path) {
    let out = Command::new(binary("ocf-agent"))
        .arg("csr")
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run ocf-agent csr");
    assert!(
        out.status.success(),
        "ocf-agent csr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr = String::from_utf8(out.stdout).expect("PEM");
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    let mode = std::fs::metadata(state.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "identity.key must be private");
    let (cert, ca) = cloud.sign_csr(&csr);
    std::fs::write(state.join("identity.crt"), cert).unwrap();
    std::fs::write(state.join("cloud-ca.pem"), ca).unwrap();
}

/// A cloud, a provisioned agent, and the agent registered over `cis` (TLS unless given).
struct Registered {
    _dir: TempDir,
    state: std::path::PathBuf,
    cloud: DevCloud,
    agent: Agent,
    code: String,
}

fn registered(
    tag: &str,
    cloud_args: &[&str],
    agent_args: &[&str],
    cis: Option<String>,
) -> Registered {
    let dir = TempDir::new(tag);
    let cloud = DevCloud::start(&dir.path().join("cloud"), cloud_args);
    let state = dir.path().join("agent");
    provision_identity(&cloud, &state);
    let agent = Agent::start(&state, agent_args);
    let code = cloud.auth_code("alice");
    let cis = cis.unwrap_or_else(|| cloud.cis());
    let r = write_conf(
        &agent,
        &[
            ("cis", &cis),
            ("sid", &cloud.sid),
            ("apn", "plgd"),
            ("at", &code),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    let rep = body(&r);
    assert!(key(&rep, "at").is_none(), "at is write-only: {rep:?}");
    assert!(
        ["readytoregister", "registering"].contains(&text(&rep, "cps").as_str()),
        "{rep:?}"
    );
    let c = wait_cps(&agent, "registered", Duration::from_secs(20));
    assert_eq!(clec(&c), 0);
    let di = agent.di.clone();
    wait_for(
        Duration::from_secs(20),
        "the device online in the cloud",
        || cloud.device(&di).filter(online),
    );
    Registered {
        _dir: dir,
        state,
        cloud,
        agent,
        code,
    }
}

fn signed_in_count(agent: &mut Agent) -> usize {
    agent
        .log()
        .iter()
        .filter(|l| l.contains("signed in to the cloud"))
        .count()
}

fn link_hrefs(cloud: &DevCloud, di: &str) -> Vec<String> {
    cloud
        .links(di)
        .iter()
        .filter_map(|l| l["href"].as_str().map(str::to_string))
        .collect()
}

fn no_401(cloud: &DevCloud, di: &str) {
    let bad: Vec<Json> = cloud
        .request_log()
        .into_iter()
        .filter(|e| e["di"] == di && coap_code(&e["code"]) == "4.01")
        .collect();
    assert!(bad.is_empty(), "requests refused with 4.01: {bad:?}");
}

#[test]
fn registers_publishes_and_serves_clients_through_the_cloud() {
    let mut s = registered("cloud-basic", &[], &[], None);
    let di = s.agent.di.clone();

    // Published: the sensors and actuators, not discovery or the cloud configuration.
    let hrefs = wait_for(Duration::from_secs(10), "published links", || {
        let h = link_hrefs(&s.cloud, &di);
        h.iter().any(|h| h == "/switch").then_some(h)
    });
    for want in ["/temperature", "/switch", "/oic/d", "/oic/p"] {
        assert!(
            hrefs.iter().any(|h| h == want),
            "{want} not published: {hrefs:?}"
        );
    }
    for not in ["/oic/res", CONF] {
        assert!(
            !hrefs.iter().any(|h| h == not),
            "{not} must not be published: {hrefs:?}"
        );
    }
    assert_eq!(
        s.cloud.requests(&di, "POST", "/oic/sec/account").len(),
        1,
        "one sign-up"
    );

    // A client reads the temperature through the cloud.
    let r = s.cloud.resource(&di, "/temperature");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.content()["temperature"].is_number(), "{}", r.text());

    // Discovery read through the cloud names no LAN endpoint; read locally, it does.
    let r = s.cloud.resource(&di, "/oic/res");
    assert_eq!(r.status, 200, "{}", r.text());
    let links = r.content();
    let links = links.as_array().expect("/oic/res is an array of links");
    assert!(links.iter().any(|l| l["href"] == "/switch"), "{links:?}");
    for link in links {
        assert_eq!(
            link["eps"],
            json!([]),
            "a LAN endpoint reached the cloud: {link}"
        );
    }
    let local = body(&TcpClient::connect(s.agent.tcp()).request(&get("/oic/res")));
    assert!(
        format!("{local:?}").contains("coap"),
        "the LAN client sees the endpoints: {local:?}"
    );

    // An observation through the cloud (its event subscription), then the switch switched.
    let mut events = s.cloud.events(&di);
    let r = s.cloud.update(&di, "/switch", &json!({"value": true}));
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text());
    assert_eq!(r.header("x-coap-code"), Some("2.04"), "{:?}", r.headers);
    let r = s.cloud.resource(&di, "/switch");
    assert_eq!(r.content()["value"], true, "{}", r.text());
    let local = body(&TcpClient::connect(s.agent.tcp()).request(&get("/switch")));
    assert_eq!(
        key(&local, "value"),
        Some(&Value::Bool(true)),
        "the real switch changed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut saw_switch, mut saw_temperature) = (false, false);
    while !(saw_switch && saw_temperature) {
        let Some((href, rep)) = events.next_change(deadline) else {
            break;
        };
        if href == "/switch" && rep["value"] == true {
            saw_switch = true;
        }
        if href == "/temperature" && rep["temperature"].is_number() {
            saw_temperature = true;
        }
    }
    assert!(saw_switch, "no change event for /switch");
    assert!(
        saw_temperature,
        "no change event for the drifting /temperature"
    );

    // CoAPCloudConf through the cloud too, without `at`.
    let r = s.cloud.resource(&di, CONF);
    if r.status == 200 {
        assert_eq!(r.content()["cps"], "registered");
        assert!(r.json().get("at").is_none());
    }

    // Secrets: the auth code is in no log line, and the state file is private and has dropped it.
    assert!(
        !s.agent.log().iter().any(|l| l.contains(&s.code)),
        "the auth code was logged"
    );
    let state = std::fs::read(s.state.join("cloud.cbor")).unwrap();
    assert!(
        !state.windows(s.code.len()).any(|w| w == s.code.as_bytes()),
        "single-use at kept at rest"
    );
    let persisted = ocf::cloud::PersistedState::from_cbor(&state).expect("cloud.cbor");
    let reg = persisted.registration.expect("registration persisted");
    for secret in [reg.accesstoken.expose(), reg.refreshtoken.expose()] {
        assert!(!secret.is_empty());
        assert!(
            !s.agent.log().iter().any(|l| l.contains(secret)),
            "a token was logged"
        );
    }
    let mode = std::fs::metadata(s.state.join("cloud.cbor"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    no_401(&s.cloud, &di);
}

#[test]
fn plain_coap_tcp_for_development_clouds() {
    let dir = TempDir::new("cloud-plain");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let cis = cloud.cis_plain();
    // No certificates at all: the plain listener does not ask for them.
    let agent = Agent::start(&dir.path().join("agent"), &[]);

    // CoAPCloudConf is discoverable and observable: a local observer sees cps move.
    let mut res = TcpClient::connect(agent.tcp());
    let links = body(&res.request(&get("/oic/res")));
    let conf_link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| key(l, "href").and_then(Value::as_text) == Some(CONF))
        .expect("CoAPCloudConf in /oic/res");
    assert_eq!(
        key(conf_link, "rt"),
        Some(&Value::Array(vec![Value::Text(
            "oic.r.coapcloudconf".into()
        )]))
    );
    let mut observer = TcpClient::connect(agent.tcp());
    let mut obs = get(CONF);
    obs.observe = Some(0);
    let first = observer.request_with_token(&obs, &[0xC0, 0xF0, 0x01, 0x02]);
    assert!(first.observe.is_some(), "CoAPCloudConf must be observable");
    assert_eq!(text(&body(&first), "cps"), "uninitialized");

    let code = cloud.auth_code("bob");
    let r = write_conf(
        &agent,
        &[
            ("cis", &cis),
            ("sid", &cloud.sid),
            ("apn", "plgd"),
            ("at", &code),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    wait_cps(&agent, "registered", Duration::from_secs(20));
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("registered") {
        let p = observer
            .recv_token(&[0xC0, 0xF0, 0x01, 0x02])
            .expect("a notification");
        let n = Response::from_packet(&p).expect("a notification");
        assert!(key(&body(&n), "at").is_none());
        seen.push(text(&body(&n), "cps"));
    }
    assert!(
        seen.contains(&"registering".to_string()),
        "notified: {seen:?}"
    );
    let di = agent.di.clone();
    let r = wait_for(Duration::from_secs(10), "a forwarded GET", || {
        let r = cloud.resource(&di, "/switch");
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.content()["value"], false);
}

#[test]
fn short_lived_tokens_are_refreshed_without_a_401() {
    let s = registered("cloud-refresh", &["--token-lifetime", "5"], &[], None);
    let di = s.agent.di.clone();
    // Three lifetimes: at least two refreshes, and the device stays usable throughout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(16) {
        let r = s.cloud.resource(&di, "/switch");
        assert_eq!(
            r.status,
            200,
            "forwarded GET failed at {:?}: {}",
            start.elapsed(),
            r.text()
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    let refreshes = s.cloud.requests(&di, "POST", "/oic/sec/tokenrefresh");
    // How long after the previous token was issued each refresh came (the lifetime is 5 s).
    let issued: Vec<(u64, String)> = s
        .cloud
        .request_log()
        .iter()
        .filter(|e| e["di"] == di.as_str() && coap_code(&e["code"]) == "2.04")
        .filter_map(|e| Some((e["t"].as_u64()?, e["path"].as_str()?.to_string())))
        .filter(|(_, p)| {
            p.starts_with("/oic/sec/account") || p.starts_with("/oic/sec/tokenrefresh")
        })
        .collect();
    let gaps: Vec<u64> = issued
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .collect();
    eprintln!("token age at refresh (ms): {gaps:?}");
    // Refreshed *before* expiry: every token was replaced while it was still valid.
    assert!(
        gaps.iter().all(|g| *g < 5000),
        "a token was refreshed only after its 5 s lifetime: {gaps:?} ms"
    );
    assert!(
        refreshes.len() >= 2,
        "only {} refreshes in 16 s with 5 s tokens",
        refreshes.len()
    );
    assert_eq!(
        s.cloud.requests(&di, "POST", "/oic/sec/account").len(),
        1,
        "no second sign-up"
    );
    no_401(&s.cloud, &di);
    assert_eq!(text(&cloud_conf(&s.agent), "cps"), "registered");
}

#[test]
fn restarts_sign_in_again_without_a_second_sign_up() {
    let mut s = registered("cloud-restart", &[], &[], None);
    let di = s.agent.di.clone();
    let before = signed_in_count(&mut s.agent);

    // The cloud restarts (state kept in its data directory): the agent reconnects and signs in.
    s.cloud.restart();
    wait_for(
        Duration::from_secs(20),
        "a sign-in after the cloud restart",
        || (signed_in_count(&mut s.agent) > before).then_some(()),
    );
    wait_for(Duration::from_secs(10), "the device online again", || {
        s.cloud.device(&di).filter(online)
    });
    let r = s.cloud.resource(&di, "/switch");
    assert_eq!(r.status, 200, "{}", r.text());

    // The agent restarts: it restores cloud.cbor and signs in, again without signing up.
    assert!(s.agent.terminate().success());
    let mut agent = Agent::start(&s.state, &[]);
    assert_eq!(agent.di, di);
    wait_for(
        Duration::from_secs(20),
        "a sign-in after the agent restart",
        || (signed_in_count(&mut agent) > 0).then_some(()),
    );
    assert_eq!(text(&cloud_conf(&agent), "cps"), "registered");
    assert!(
        !agent
            .log()
            .iter()
            .any(|l| l.contains("signed up with the cloud")),
        "signed up again"
    );
    let sign_ups = s.cloud.requests(&di, "POST", "/oic/sec/account");
    assert!(sign_ups.len() <= 1, "sign-up repeated: {sign_ups:?}");
    assert!(!s.cloud.requests(&di, "POST", "/oic/sec/session").is_empty());
    no_401(&s.cloud, &di);
}

#[test]
fn a_cut_connection_is_back_within_the_backoff_bound() {
    let dir = TempDir::new("cloud-cut");
    let mut cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let proxy = Proxy::start(cloud.coaps);
    let state = dir.path().join("agent");
    provision_identity(&cloud, &state);
    // Default timing: the documented back-off (first retry within 1 s).
    let mut agent = Agent::start(&state, &[]);
    let code = cloud.auth_code("carol");
    let r = write_conf(
        &agent,
        &[
            ("cis", &format!("coaps+tcp://{}", proxy.addr)),
            ("sid", &cloud.sid),
            ("apn", "plgd"),
            ("at", &code),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    wait_cps(&agent, "registered", Duration::from_secs(20));
    wait_for(Duration::from_secs(10), "signed in", || {
        (signed_in_count(&mut agent) > 0).then_some(())
    });

    let mut times = Vec::new();
    for _ in 0..3 {
        let before = signed_in_count(&mut agent);
        let t0 = Instant::now();
        proxy.cut();
        wait_for(Duration::from_secs(10), "a sign-in after the cut", || {
            (signed_in_count(&mut agent) > before).then_some(())
        });
        times.push(t0.elapsed());
    }
    eprintln!("cut → signed in again: {times:?}");
    // Back-off ceiling 1 s for the first retry, plus TCP, TLS and the sign-in on loopback
    // (with room for a loaded CI machine).
    for t in &times {
        assert!(
            *t < Duration::from_millis(3000),
            "reconnect took {t:?} (all: {times:?})"
        );
    }
    assert_eq!(text(&cloud_conf(&agent), "cps"), "registered");
    assert_eq!(
        cloud.requests(&agent.di, "POST", "/oic/sec/account").len(),
        1,
        "no second sign-up"
    );
    cloud.kill();
}

#[test]
fn a_refused_sign_up_is_failed_with_clec_1() {
    let dir = TempDir::new("cloud-refused");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let state = dir.path().join("agent");
    provision_identity(&cloud, &state);
    let agent = Agent::start(&state, &["--cloud-timing", FAST_RETRIES]);
    let r = write_conf(
        &agent,
        &[
            ("cis", &cloud.cis()),
            ("sid", &cloud.sid),
            ("apn", "plgd"),
            ("at", "not-a-valid-code"),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    let c = wait_cps(&agent, "failed", Duration::from_secs(20));
    assert_eq!(clec(&c), 1, "{c:?}");
    // No retry of a refused sign-up (§5.1): it needs a new configuration.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cloud.requests(&agent.di, "POST", "/oic/sec/account").len(),
        1
    );
    assert_eq!(text(&cloud_conf(&agent), "cps"), "failed");

    // A new configuration with a good code recovers.
    let code = cloud.auth_code("dave");
    let r = write_conf(
        &agent,
        &[
            ("cis", &cloud.cis()),
            ("sid", &cloud.sid),
            ("apn", "plgd"),
            ("at", &code),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    let c = wait_cps(&agent, "registered", Duration::from_secs(20));
    assert_eq!(clec(&c), 0);
}

/// A board without a real-time clock before time sync sees every certificate as not valid yet.
/// Here the cloud's server certificate becomes valid 10 s after the cloud starts: the agent
/// keeps retrying with its back-off (shortened here, so that 3 ordinary failures would make it
/// `failed` within about a second), says once that its clock is probably behind, never reports
/// `failed` or a `clec`, keeps its configuration, and registers once the certificate is valid.
#[test]
fn a_cloud_certificate_not_valid_yet_is_retried_until_it_is_and_never_fails() {
    let dir = TempDir::new("cloud-clock");
    let cloud = DevCloud::start(
        &dir.path().join("cloud"),
        &["--cert-not-before-offset", "10"],
    );
    let state = dir.path().join("agent");
    provision_identity(&cloud, &state);
    let mut agent = Agent::start(&state, &["--cloud-timing", FAST_RETRIES]);
    let code = cloud.auth_code("erin");
    let r = write_conf(
        &agent,
        &[
            ("cis", &cloud.cis()),
            ("sid", &cloud.sid),
            ("apn", "plgd"),
            ("at", &code),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    // Every state CoAPCloudConf shows on the way, polled.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<(String, u64)> = Vec::new();
    loop {
        let c = cloud_conf(&agent);
        let state = (text(&c, "cps"), clec(&c));
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state.0 == "registered" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not registered: {seen:?}\n{}",
            agent.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log().join("\n");
    assert!(
        seen.iter().all(|(cps, clec)| cps != "failed" && *clec == 0),
        "{seen:?}\n{log}"
    );
    let clock_lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("DEBUG") && l.contains("probably behind"))
        .collect();
    assert_eq!(clock_lines.len(), 1, "reported once:\n{log}");
    assert!(
        clock_lines[0].contains("WARN") && clock_lines[0].contains("is not valid until"),
        "{}",
        clock_lines[0]
    );
    // Every attempt is in the debug log, the same clock problem each time.
    let failures = log
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("probably behind"))
        .count();
    assert!(failures >= 3, "{failures} failed attempts:\n{log}");
    assert_eq!(
        cloud.requests(&agent.di, "POST", "/oic/sec/account").len(),
        1,
        "one sign-up, once the certificate is valid"
    );
}

#[test]
fn an_unreachable_cloud_is_clec_2_after_the_retries() {
    let dir = TempDir::new("cloud-unreachable");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut agent = Agent::start(dir.path(), &["--cloud-timing", FAST_RETRIES]);
    let r = write_conf(
        &agent,
        &[
            ("cis", &format!("coap+tcp://127.0.0.1:{port}")),
            ("sid", "9b8c6a0e-1f2d-4e3c-8a7b-6c5d4e3f2a1b"),
            ("apn", "plgd"),
            ("at", "code"),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    let c = wait_cps(&agent, "failed", Duration::from_secs(20));
    assert_eq!(clec(&c), 2, "{c:?}");
    let attempts = agent
        .log()
        .iter()
        .filter(|l| l.contains("cannot connect to the cloud"))
        .count();
    assert!(attempts >= 3, "{attempts} attempts before failing");
}

#[test]
fn empty_cis_deregisters() {
    let s = registered("cloud-dereg", &[], &["--cloud-timing", FAST_RETRIES], None);
    let di = s.agent.di.clone();

    // While registered only {"cis":""} is accepted; `cps` is read-only.
    let code = s.cloud.auth_code("erin");
    let r = write_conf(
        &s.agent,
        &[
            ("cis", &s.cloud.cis()),
            ("sid", &s.cloud.sid),
            ("at", &code),
        ],
    );
    assert_eq!(r.code, ResponseType::BadRequest);
    assert!(r.diagnostic().contains("cis"), "{}", r.diagnostic());
    let r = write_conf(&s.agent, &[("cis", ""), ("cps", "uninitialized")]);
    assert_eq!(r.code, ResponseType::BadRequest);
    assert!(r.diagnostic().contains("read-only"), "{}", r.diagnostic());

    let r = write_conf(&s.agent, &[("cis", "")]);
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    let c = wait_cps(&s.agent, "uninitialized", Duration::from_secs(15));
    assert_eq!(text(&c, "cis"), "");
    let deletes = wait_for(
        Duration::from_secs(10),
        "DELETE /oic/sec/account in the cloud log",
        || {
            let d = s.cloud.requests(&di, "DELETE", "/oic/sec/account");
            (!d.is_empty()).then_some(d)
        },
    );
    assert_eq!(coap_code(&deletes[0]["code"]), "2.02", "{deletes:?}");
    // The persisted state is wiped too.
    let state: Value =
        ciborium::de::from_reader(&std::fs::read(s.state.join("cloud.cbor")).unwrap()[..]).unwrap();
    assert_eq!(text(&state, "cps"), "uninitialized");
    assert!(key(&state, "registration").is_none(), "{state:?}");
}

#[test]
fn a_cloud_certificate_for_another_sid_is_refused() {
    let dir = TempDir::new("cloud-wrong-sid");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let state = dir.path().join("agent");
    provision_identity(&cloud, &state);
    let mut agent = Agent::start(&state, &["--cloud-timing", FAST_RETRIES]);
    let wrong = "0f0e0d0c-0b0a-4908-8706-050403020100";
    assert_ne!(cloud.sid, wrong);
    let code = cloud.auth_code("mallory");
    let r = write_conf(
        &agent,
        &[
            ("cis", &cloud.cis()),
            ("sid", wrong),
            ("apn", "plgd"),
            ("at", &code),
        ],
    );
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    let c = wait_cps(&agent, "failed", Duration::from_secs(20));
    assert_eq!(clec(&c), 2, "{c:?}");
    let refusals = agent
        .log()
        .iter()
        .filter(|l| l.contains(&format!("instead of uuid:{wrong}")))
        .count();
    assert!(
        refusals >= 1,
        "no certificate refusal in the log:\n{}",
        agent.log().join("\n")
    );
    assert!(
        cloud
            .requests(&agent.di, "POST", "/oic/sec/account")
            .is_empty(),
        "sent the code to an unverified cloud"
    );
}

// ---------------------------------------------------------------------------------------------
// Interop: libcoap's coap-client with TLS against the development cloud.
// ---------------------------------------------------------------------------------------------

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cbor_file(dir: &Path, name: &str, v: &Json) -> String {
    let cbor = ocf::model::content::json_to_cbor(v).unwrap();
    let path = dir.join(name);
    let bytes = ocf::model::encode_payload(ocf::model::ContentFormat::Cbor, &cbor).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// One coap-client request over coaps+tcp with the client certificate; the CBOR answer.
fn libcoap_post(
    dir: &Path,
    cloud: &DevCloud,
    path: &str,
    body_file: &str,
) -> (String, Option<Value>) {
    let out_file = dir.join("out.cbor");
    let _ = std::fs::remove_file(&out_file);
    let uri = format!("coaps+tcp://{}{path}", cloud.coaps);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let ca = dir.join("ca.pem").display().to_string();
    let out = Command::new(coap_client())
        .args([
            "-m", "post", "-c", &cert, "-j", &key, "-C", &ca, "-t", "10000", "-A", "10000", "-B",
            "10",
        ])
        .args(["-f", body_file, "-o", &out_file.display().to_string(), &uri])
        .output()
        .expect("run coap-client");
    let stderr =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let answer = std::fs::read(&out_file)
        .ok()
        .filter(|b| !b.is_empty())
        .and_then(|b| ciborium::de::from_reader::<Value, _>(&b[..]).ok());
    (stderr, answer)
}

#[test]
fn libcoap_client_with_tls_signs_up_and_signs_in() {
    let dir = TempDir::new("cloud-libcoap");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let work = dir.path().join("client");
    std::fs::create_dir_all(&work).unwrap();
    let di = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9";
    let (key_file, csr) = (work.join("key.pem"), work.join("csr.pem"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key_file.to_str().unwrap(),
        "-subj",
        &format!("/CN=uuid:{di}"),
        "-out",
        csr.to_str().unwrap(),
    ]);
    let (cert, ca) = cloud.sign_csr(&std::fs::read_to_string(&csr).unwrap());
    std::fs::write(work.join("cert.pem"), cert).unwrap();
    std::fs::write(work.join("ca.pem"), ca).unwrap();

    let code = cloud.auth_code("libcoap");
    let f = cbor_file(
        &work,
        "signup.cbor",
        &json!({"di": di, "accesstoken": code, "authprovider": "plgd", "devicetype": "device"}),
    );
    let (log, answer) = libcoap_post(&work, &cloud, "/oic/sec/account", &f);
    let answer = answer.unwrap_or_else(|| panic!("no sign-up answer: {log}"));
    let access = text(&answer, "accesstoken");
    let uid = text(&answer, "uid");
    assert!(!text(&answer, "refreshtoken").is_empty());

    let f = cbor_file(
        &work,
        "signin.cbor",
        &json!({"di": di, "uid": uid, "accesstoken": access, "login": true}),
    );
    let (log, answer) = libcoap_post(&work, &cloud, "/oic/sec/session", &f);
    let answer = answer.unwrap_or_else(|| panic!("no sign-in answer: {log}"));
    assert!(key(&answer, "expiresin").is_some(), "{answer:?}");

    let links = json!([{"href": "/light/1", "rt": ["core.light"], "if": ["oic.if.rw", "oic.if.baseline"], "p": {"bm": 3}}]);
    let f = cbor_file(
        &work,
        "publish.cbor",
        &json!({"di": di, "ttl": 0, "links": links}),
    );
    let (log, _) = libcoap_post(&work, &cloud, "/oic/rd", &f);
    let signed_in = cloud.requests(di, "POST", "/oic/sec/session");
    assert!(
        signed_in.iter().any(|e| coap_code(&e["code"]) == "2.04"),
        "sign-in not in the cloud log: {signed_in:?}"
    );
    // coap-client sends one request per connection, and a publish is only accepted on a
    // connection that signed in (plgd: 4.01 and close, OCF-PROTOCOL.md §5): the cloud refuses
    // this one, and says so in its log. (The agent's e2e tests above publish for real.)
    let published = cloud.requests(di, "POST", "/oic/rd");
    assert_eq!(published.len(), 1, "publish not in the cloud log:\n{log}");
    assert_eq!(coap_code(&published[0]["code"]), "4.01", "{published:?}");
}

/// A CoAP stack nobody here wrote (aiocoap) as a device: sign-up, sign-in and publish on one
/// mutually authenticated coaps+tcp connection; the cloud then lists the published link.
#[test]
fn aiocoap_device_with_tls_signs_in_and_publishes() {
    let dir = TempDir::new("cloud-aiocoap");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let work = dir.path().join("client");
    std::fs::create_dir_all(&work).unwrap();
    let di = "2c3d4e5f-6071-4829-93a4-b5c6d7e8f90a";
    let (key_file, csr) = (work.join("key.pem"), work.join("csr.pem"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key_file.to_str().unwrap(),
        "-subj",
        &format!("/CN=uuid:{di}"),
        "-out",
        csr.to_str().unwrap(),
    ]);
    let (cert, ca) = cloud.sign_csr(&std::fs::read_to_string(&csr).unwrap());
    std::fs::write(work.join("cert.pem"), cert).unwrap();
    std::fs::write(work.join("ca.pem"), ca).unwrap();
    let code = cloud.auth_code("aiocoap");
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop/aiocoap_cloud_device.py");
    let out = Command::new(interop_python())
        .arg(script)
        .arg(format!("coaps+tcp://{}", cloud.coaps))
        .args([
            work.join("cert.pem"),
            work.join("key.pem"),
            work.join("ca.pem"),
        ])
        .args([di, code.as_str()])
        .output()
        .expect("run the aiocoap device");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aiocoap device failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Json =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!("aiocoap device saw: {seen}");
    assert!(seen.get("error").is_none(), "{seen}");
    assert_eq!(seen["signup_code"], "2.04 Changed", "{seen}");
    assert_eq!(seen["signin_code"], "2.04 Changed", "{seen}");
    assert_eq!(seen["publish_code"], "2.04 Changed", "{seen}");
    let links = seen["published"]["links"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        links
            .iter()
            .any(|l| l["href"] == "/light/1" && l["ins"].is_number()),
        "{seen}"
    );
    let hrefs = link_hrefs(&cloud, di);
    assert!(
        hrefs.iter().any(|h| h == "/light/1"),
        "not in the cloud RD: {hrefs:?}"
    );
}

/// A publish larger than the cloud's Max-Message-Size (RFC 8323 §5.3.1) goes out block-wise
/// (RFC 7959 §2.5: Block1 blocks within the limit, each after the cloud's 2.31 Continue) and
/// completes: every link the device publishes is in the cloud's RD.
#[test]
fn a_publish_larger_than_the_clouds_max_message_size_completes_block_wise() {
    let mut s = registered("cloud-block1", &["--max-message-size", "600"], &[], None);
    let di = s.agent.di.clone();
    let local = body(&TcpClient::connect(s.agent.tcp()).request(&get("/oic/res")));
    let mut bytes = Vec::new();
    ciborium::into_writer(&local, &mut bytes).unwrap();
    assert!(
        bytes.len() > 600,
        "the links must need blocks: {} bytes",
        bytes.len()
    );

    let published = wait_for(Duration::from_secs(20), "the publish", || {
        s.agent
            .log()
            .iter()
            .find(|l| l.contains("published to the cloud"))
            .cloned()
    });
    let hrefs = link_hrefs(&s.cloud, &di);
    for want in [
        "/oic/d",
        "/oic/p",
        "/temperature",
        "/humidity",
        "/switch",
        "/contact",
    ] {
        assert!(
            published.contains(&format!("\"{want}\"")),
            "{want} not in the publish: {published}"
        );
        assert!(
            hrefs.iter().any(|h| h == want),
            "{want} not in the cloud's RD: {hrefs:?}"
        );
    }
    let rd = s.cloud.requests(&di, "POST", "/oic/rd");
    assert!(
        rd.iter().any(|e| coap_code(&e["code"]) == "2.04"),
        "the publish was not answered 2.04: {rd:?}"
    );
    let log = s.agent.log().join("\n");
    assert!(
        !log.contains("cannot send"),
        "a request was dropped:\n{log}"
    );
    assert_eq!(signed_in_count(&mut s.agent), 1, "no reconnect:\n{log}");
}

/// A representation larger than the cloud's Max-Message-Size (RFC 8323 §5.3.1) arrives whole:
/// the device sends the first block, the cloud asks for the rest (RFC 7959 §2.4), on the
/// forwarded request and on the notifications of the batch observation alike.
#[test]
fn a_forwarded_representation_larger_than_the_clouds_max_message_size_arrives_whole() {
    let mut s = registered(
        "cloud-blockwise",
        &["--max-message-size", "1152"],
        &[],
        None,
    );
    let di = s.agent.di.clone();
    let local = body(&TcpClient::connect(s.agent.tcp()).request(&get("/oic/res")));
    let mut bytes = Vec::new();
    ciborium::into_writer(&local, &mut bytes).unwrap();
    assert!(
        bytes.len() > 1200,
        "/oic/res must need blocks: {} bytes",
        bytes.len()
    );

    let r = s.cloud.resource(&di, "/oic/res");
    assert_eq!(r.status, 200, "{}", r.text());
    let links = r.content();
    let links = links.as_array().expect("/oic/res is an array of links");
    let hrefs: Vec<&str> = links.iter().filter_map(|l| l["href"].as_str()).collect();
    for want in [
        "/oic/d",
        "/oic/p",
        "/temperature",
        "/switch",
        "/contact",
        CONF,
    ] {
        assert!(hrefs.contains(&want), "{want} missing from {hrefs:?}");
    }
    // The batch observation's notifications come block-wise too: the shadow still fills.
    wait_for(Duration::from_secs(10), "the shadow of /humidity", || {
        let r = s.cloud.shadow(&di, "/humidity");
        (r.status == 200 && r.content()["humidity"].is_number()).then_some(())
    });
    let log = s.agent.log().join("\n");
    assert!(
        !log.contains("cannot send"),
        "a response was dropped:\n{log}"
    );
}
