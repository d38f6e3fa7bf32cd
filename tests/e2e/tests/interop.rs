//! Interop with CoAP peers nobody here wrote: Debian's libcoap `coap-client` and Python's
//! aiocoap, over UDP and CoAP over TCP. The tools come from `cargo xtask test`'s set-up; when
//! they are missing the tests fail and say how to get them, they never skip.

use std::path::PathBuf;
use std::process::{Command, Output};

use ciborium::Value;
use ocf_e2e::*;

fn libcoap(args: &[&str]) -> Output {
    let out = Command::new(coap_client())
        .args(args)
        .output()
        .expect("run coap-client");
    assert!(
        out.status.success(),
        "coap-client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn check_links(payload: &[u8], agent: &Agent) {
    let links: Value = ciborium::de::from_reader(payload).expect("CBOR links from coap-client");
    let links = links.as_array().expect("array");
    let hrefs: Vec<&str> = links
        .iter()
        .filter_map(|l| key(l, "href")?.as_text())
        .collect();
    for want in ["/oic/res", "/oic/d", "/temperature", "/switch"] {
        assert!(hrefs.contains(&want), "{want} not in {hrefs:?}");
    }
    for l in links {
        assert_eq!(
            key(l, "anchor").and_then(Value::as_text),
            Some(format!("ocf://{}", agent.di).as_str())
        );
    }
}

fn json_objects(stdout: &[u8]) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(stdout)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .collect()
}

fn libcoap_against(scheme: &str) {
    let dir = TempDir::new(&format!("libcoap-{}", scheme.replace('+', "-")));
    let agent = Agent::start(dir.path(), &[]);
    let addr = if scheme == "coap" {
        agent.udp()
    } else {
        agent.tcp()
    };
    let base = format!("{scheme}://{addr}");
    let file = dir.path().join("res.cbor");
    libcoap(&[
        "-m",
        "get",
        "-o",
        file.to_str().unwrap(),
        &format!("{base}/oic/res"),
    ]);
    check_links(&std::fs::read(&file).unwrap(), &agent);

    libcoap(&[
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        r#"{"value":true}"#,
        &format!("{base}/switch"),
    ]);
    let out = libcoap(&["-m", "get", "-A", "50", &format!("{base}/switch")]);
    let v = json_objects(&out.stdout);
    assert_eq!(
        v.first().map(|j| j["value"].clone()),
        Some(serde_json::Value::Bool(true)),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    libcoap(&[
        "-m",
        "post",
        "-t",
        "60",
        "-e",
        "%A1%65value%F4",
        &format!("{base}/switch"),
    ]);
    let out = libcoap(&["-m", "get", "-A", "50", &format!("{base}/switch")]);
    assert_eq!(json_objects(&out.stdout)[0]["value"], false);

    // Observe the drifting temperature: the first answer plus at least two notifications.
    let out = libcoap(&[
        "-s",
        "8",
        "-m",
        "get",
        "-A",
        "50",
        &format!("{base}/temperature"),
    ]);
    let readings = json_objects(&out.stdout);
    assert!(
        readings.len() >= 3,
        "got {} readings: {:?}",
        readings.len(),
        String::from_utf8_lossy(&out.stdout)
    );
    for r in &readings {
        assert!(r["temperature"].is_number(), "{r}");
    }
}

#[test]
fn libcoap_client_over_udp() {
    libcoap_against("coap");
}

#[test]
fn libcoap_client_over_tcp() {
    libcoap_against("coap+tcp");
}

fn aiocoap_against(scheme: &str) {
    let dir = TempDir::new(&format!("aiocoap-{}", scheme.replace('+', "-")));
    let agent = Agent::start(dir.path(), &[]);
    let addr = if scheme == "coap" {
        agent.udp()
    } else {
        agent.tcp()
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/aiocoap_client.py");
    let out = Command::new(interop_python())
        .arg(&script)
        .arg(format!("{scheme}://{addr}"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "aiocoap client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(seen["res_cf"], 10000);
    let hrefs: Vec<&str> = seen["hrefs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    assert!(
        hrefs.contains(&"/temperature") && hrefs.contains(&"/switch"),
        "{hrefs:?}"
    );
    assert!(
        seen["post_code"].as_str().unwrap().contains("2.04"),
        "{seen}"
    );
    assert_eq!(seen["switch_json"]["value"], true);
    let seqs: Vec<u64> = seen["observe_seqs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_u64())
        .collect();
    assert_eq!(seqs.len(), 3, "{seen}");
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "increasing Observe: {seqs:?}"
    );
}

#[test]
fn aiocoap_client_over_udp() {
    aiocoap_against("coap");
}

#[test]
fn aiocoap_client_over_tcp() {
    aiocoap_against("coap+tcp");
}
