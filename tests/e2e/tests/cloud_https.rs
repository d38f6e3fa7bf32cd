//! The development cloud's client API over HTTPS (as plgd hub serves it), and the Mediator
//! onboarding through it: the agent in its secure mode, `ocf-dev-cloud --https`, and
//! `ocf-mediator onboard --cloud https://… --cloud-ca …`, on loopback with ports chosen by the OS.
//!
//! - over HTTPS the hub configuration names https:// services, and its certificate verifies
//!   against the cloud's CA for 127.0.0.1;
//! - the Mediator onboards a device to `registered` with `--cloud https://… --cloud-ca CA`;
//! - the Mediator refuses a cloud whose certificate it does not trust (another CA with
//!   `--cloud-ca`, or the system's trust store), names the URL, exits non-zero and leaves the
//!   device unowned.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use ocf_e2e::cloud::*;
use ocf_e2e::mediator::*;
use ocf_e2e::*;
use rustls::pki_types::ServerName;

const PIN: &str = "27182818";

/// `GET path` over HTTPS to `cloud`, trusting only the cloud's CA: (status line, body).
fn https_get(cloud: &DevCloud, path: &str) -> (String, String) {
    let pem = std::fs::read(cloud.ca_file()).expect("ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    for c in ocf::x509::certificate_bundle_from_pem(&pem).expect("PEM") {
        roots.add(c).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = cloud.https.expect("--https");
    let name = ServerName::try_from(addr.ip().to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).expect("connect to the HTTPS listener");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // The end of the answer may come without close_notify; what came is enough here.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn https_cloud(dir: &TempDir) -> DevCloud {
    DevCloud::start(&dir.path().join("cloud"), &["--https", "127.0.0.1:0"])
}

#[test]
fn over_https_the_hub_configuration_names_https_services() {
    let dir = TempDir::new("https-hubconf");
    let cloud = https_cloud(&dir);
    let (status, body) = https_get(&cloud, "/.well-known/hub-configuration");
    assert!(status.contains(" 200 "), "{status}\n{body}");
    // The body may be chunked; the JSON object is between the first '{' and the last '}'.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let conf: serde_json::Value = serde_json::from_str(json).expect("JSON");
    let base = cloud.https_url();
    for key in ["authority", "certificateAuthority", "httpGatewayAddress"] {
        assert_eq!(conf[key].as_str(), Some(base.as_str()), "{key}: {conf}");
    }
    assert_eq!(
        conf["certificateAuthorities"].as_str().map(str::trim),
        Some(std::fs::read_to_string(cloud.ca_file()).unwrap().trim())
    );
    // The plain listener still names http:// services.
    assert!(cloud.hub_configuration()["authority"]
        .as_str()
        .unwrap()
        .starts_with("http://"));
}

#[test]
fn the_mediator_onboards_over_https_with_the_cloud_ca() {
    let dir = TempDir::new("https-onboard");
    let cloud = https_cloud(&dir);
    let pin = pin_file(dir.path(), PIN);
    let agent = SecureAgent::start(&dir.path().join("state"), Some(&pin), &[]);
    let med = Mediator::new(&dir.path().join("mediator"));
    med.token_from(&cloud);
    let ca = cloud.ca_file().display().to_string();
    let run = med
        .onboard(PIN, &agent.ep, &cloud.https_url(), &["--cloud-ca", &ca])
        .expect_ok();
    assert!(run.stdout.contains("cps registered"), "{}", run.output());
    assert!(
        run.stdout.contains(&format!(
            "device {} is registered with cloud {}",
            agent.di, cloud.sid
        )),
        "{}",
        run.output()
    );
    wait_for(
        Duration::from_secs(20),
        "the device online at the cloud",
        || {
            cloud
                .devices()
                .iter()
                .any(|d| d.to_string().contains(&agent.di))
                .then_some(())
        },
    );
    // The token never shows.
    let token = cloud.token();
    assert!(!run.output().contains(&token), "{}", run.output());
}

#[test]
fn the_mediator_refuses_a_cloud_it_does_not_trust() {
    let dir = TempDir::new("https-untrusted");
    let cloud = https_cloud(&dir);
    let pin = pin_file(dir.path(), PIN);
    let agent = SecureAgent::start(&dir.path().join("state"), Some(&pin), &[]);
    let med = Mediator::new(&dir.path().join("mediator"));
    med.token_from(&cloud);
    med.run(&["identity"]).expect_ok();
    let url = cloud.https_url();

    // Another CA: the Mediator's own self-signed certificate.
    let other = med.cert_path().display().to_string();
    let mut runs = vec![med.onboard(PIN, &agent.ep, &url, &["--cloud-ca", &other])];
    // No --cloud-ca: the system's trust store, which does not hold the cloud's CA.
    if std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        runs.push(med.onboard(PIN, &agent.ep, &url, &[]));
    }
    for run in runs {
        assert!(!run.ok(), "{}", run.output());
        assert_eq!(run.code, 1, "{}", run.output());
        assert!(
            run.stderr.contains(&url),
            "the URL is named:\n{}",
            run.output()
        );
        assert!(
            run.stderr.contains("certificate is not accepted"),
            "{}",
            run.output()
        );
        // Nothing was done to the device: the cloud is asked before the ownership transfer.
        assert!(!run.stdout.contains("[3/9]"), "{}", run.output());
    }
    // The device is still unowned: the right CA onboards it.
    let ca = cloud.ca_file().display().to_string();
    let run = med
        .onboard(PIN, &agent.ep, &url, &["--cloud-ca", &ca])
        .expect_ok();
    assert!(run.stdout.contains("cps registered"), "{}", run.output());
}
