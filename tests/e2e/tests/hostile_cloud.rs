//! A cloud that answers what no sane cloud would: every `expiresin` from `i64::MIN` to
//! `i64::MAX` at sign-up, sign-in and token refresh (the dev cloud's test-only
//! `--answer-expiresin`). The agent stays up through the answer and through a restart (which
//! refreshes the token first and meets the same answer again), and its `cps` follows the rules:
//! `registered`, signed in again after the restart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::ResponseType;
use ocf_e2e::cloud::*;
use ocf_e2e::*;

const CONF: &str = "/CoapCloudConfResURI";

fn cps(agent: &Agent) -> String {
    let r = TcpClient::connect(agent.tcp()).request(&get(CONF));
    assert_eq!(r.code, ResponseType::Content, "{}", r.diagnostic());
    key(&body(&r), "cps")
        .and_then(Value::as_text)
        .unwrap_or_default()
        .to_string()
}

fn wait_registered(agent: &mut Agent) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!("the agent died ({status}):\n{}", agent.log().join("\n"));
        }
        if cps(agent) == "registered" {
            return;
        }
        assert!(Instant::now() < deadline, "cps never became registered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The interim file identity of the development mode (as the cloud tests provision it).
fn provision_identity(cloud: &DevCloud, state: &Path) {
    let out = Command::new(binary("ocf-agent"))
        .args(["csr", "--state-dir"])
        .arg(state)
        .output()
        .expect("run ocf-agent csr");
    assert!(out.status.success());
    let (cert, ca) = cloud.sign_csr(&String::from_utf8(out.stdout).unwrap());
    std::fs::write(state.join("identity.crt"), cert).unwrap();
    std::fs::write(state.join("cloud-ca.pem"), ca).unwrap();
}

#[test]
fn any_expiresin_from_the_cloud_keeps_the_agent_up_and_registered() {
    for expiresin in [i64::MAX, 1 << 62, i64::MIN, -1, 0] {
        let dir = TempDir::new(&format!("expiresin-{}", expiresin as u64 % 1000));
        let answer = format!("--answer-expiresin={expiresin}");
        let cloud = DevCloud::start(&dir.path().join("cloud"), &[&answer]);
        let state = dir.path().join("agent");
        provision_identity(&cloud, &state);
        let mut agent = Agent::start(&state, &[]);
        let conf = map(&[
            ("cis", Value::Text(cloud.cis())),
            ("sid", Value::Text(cloud.sid.clone())),
            ("apn", Value::Text("plgd".into())),
            ("at", Value::Text(cloud.auth_code("alice"))),
        ]);
        let r = TcpClient::connect(agent.tcp()).request(&post_cbor(CONF, &conf));
        assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
        // Sign-up and sign-in answered with `expiresin`.
        wait_registered(&mut agent);
        let di = agent.di.clone();
        wait_for(Duration::from_secs(20), "signed in", || {
            (!cloud.requests(&di, "POST", "/oic/sec/session").is_empty()).then_some(())
        });
        // A restart does not know when the token expires: it refreshes first if the token
        // expires at all, and the refresh is answered with the same `expiresin`.
        let sign_ins = cloud.requests(&di, "POST", "/oic/sec/session").len();
        agent.terminate();
        let mut agent = Agent::start(&state, &[]);
        wait_for(
            Duration::from_secs(20),
            "a sign-in after the restart",
            || (cloud.requests(&di, "POST", "/oic/sec/session").len() > sign_ins).then_some(()),
        );
        wait_registered(&mut agent);
        let refreshes = cloud.requests(&di, "POST", "/oic/sec/tokenrefresh").len();
        assert_eq!(refreshes > 0, expiresin > 0, "expiresin {expiresin}");
        wait_for(Duration::from_secs(20), "the device online again", || {
            cloud.device(&di).filter(online)
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "expiresin {expiresin}: the agent died:\n{}",
            agent.log().join("\n")
        );
        assert_eq!(cps(&agent), "registered", "expiresin {expiresin}");
    }
}
