//! OCF's standard ownership transfer over DTLS (`coaps://`), end to end with the real binaries
//! on loopback (ports chosen by the OS):
//!
//! - `ocf-mediator onboard --otm rdp`: the method selected in the clear, the Random PIN the
//!   device prints read from the agent and typed into the Mediator, the DTLS Device Ownership
//!   Connection, the owner PSK both sides derive, RFPRO over an owner PSK session, then the
//!   provisioning for the cloud over coaps+tcp and the registration;
//! - `--otm mfg` over DTLS and over coaps+tcp, with a manufacturer certificate the test makes,
//!   each followed by provisioning and registration; a wrong manufacturer CA is refused;
//! - a wrong Random PIN fails the handshake and a PIN answers one handshake only;
//! - interop with stacks no one here wrote: `openssl s_client -dtls1_2` completes a handshake
//!   with each advertised suite (the Random PIN PSK, each ECDHE-ECDSA CCM suite) and none with
//!   a suite not offered; libcoap's `coap-client-openssl` reaches the owned device over DTLS
//!   with a PSK (`-u`/`-k`) and with a certificate (`-c`/`-j`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocf::security::dtls_keys::{pin_psk, uuid_bytes, RDP_IDENTITY};
use ocf_e2e::cloud::*;
use ocf_e2e::mediator::*;
use ocf_e2e::*;
use ocf_mediator::dtls::{clear_request, ClientAuth, DtlsClient, PSK_CIPHERS};
use ocf_mediator::tls::Reply;

const PIN: &str = "27182818";

struct Bench {
    cloud: DevCloud,
    agent: SecureAgent,
    med: Mediator,
    dir: TempDir,
}

impl Bench {
    fn new(tag: &str, extra: &[&str]) -> Bench {
        let dir = TempDir::new(tag);
        let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
        let pin = pin_file(dir.path(), PIN);
        let agent = SecureAgent::start(&dir.path().join("state"), Some(&pin), extra);
        let med = Mediator::new(&dir.path().join("mediator"));
        med.token_from(&cloud);
        Bench {
            cloud,
            agent,
            med,
            dir,
        }
    }

    fn endpoint(&self, scheme: &str) -> SocketAddr {
        let prefix = format!("{scheme}://");
        self.agent
            .endpoints
            .iter()
            .find_map(|e| e.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {scheme} endpoint in {:?}", self.agent.endpoints))
            .parse()
            .unwrap()
    }

    /// A DTLS session to `to` with the Mediator's certificate (`ocf-mediator identity` made
    /// it), not checking the device's.
    fn certificate_session(&self, to: SocketAddr, timeout: Duration) -> Result<DtlsClient, String> {
        let cert = std::fs::read_to_string(self.med.cert_path()).unwrap();
        let key = std::fs::read_to_string(self.med.key_path()).unwrap();
        DtlsClient::connect(
            to,
            ClientAuth::Certificate {
                cert_pem: &cert,
                key_pem: &key,
                device_ca_pem: None,
            },
            ocf_mediator::dtls::CERT_CIPHERS,
            timeout,
        )
    }

    /// `POST /oic/sec/doxm {"oxmsel": 1}` (Random PIN) in the clear, over UDP.
    fn post_random_pin_selection(&self) -> Reply {
        clear_request(
            self.endpoint("coap"),
            &post_cbor(
                "/oic/sec/doxm",
                &map(&[("oxmsel", ciborium::Value::Integer(1.into()))]),
            ),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    /// Selects Random PIN and returns the fresh PIN the agent shows for it.
    fn select_random_pin(&mut self) -> String {
        let before = self.pins_shown();
        let r = self.post_random_pin_selection();
        assert_eq!(r.code_text(), "2.04", "{}", r.describe());
        wait_for(Duration::from_secs(5), "a Random PIN", || {
            self.random_pin_after(before)
        })
    }

    /// A DTLS session authenticated by the Random PIN `pin` of the device `di`.
    fn random_pin_session(&self, pin: &str, di: &str) -> Result<DtlsClient, String> {
        let key = pin_psk(pin.as_bytes(), &uuid_bytes(di).unwrap());
        DtlsClient::connect(
            self.endpoint("coaps"),
            ClientAuth::Psk {
                identity: RDP_IDENTITY,
                key: &key,
            },
            PSK_CIPHERS,
            Duration::from_secs(5),
        )
    }

    /// The Random PIN the agent printed after the first `seen` ones.
    fn random_pin_after(&mut self, seen: usize) -> Option<String> {
        random_pin_after(&mut self.agent, seen)
    }

    fn pins_shown(&mut self) -> usize {
        self.agent
            .stdout()
            .iter()
            .filter(|l| l.starts_with("ocf-agent: random PIN "))
            .count()
    }

    /// `onboard` with `otm_args`, typing the Random PIN the agent shows when asked.
    fn onboard(&mut self, otm_args: &[&str]) -> Run {
        let mut args = vec![
            "onboard",
            "--device",
            &self.agent.ep,
            "--cloud",
            &format!("http://{}", self.cloud.http),
            "--timeout",
            "30",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        args.extend(self.med.token_args());
        args.extend(otm_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = self.pins_shown();
        let agent = &mut self.agent;
        let mut feed = || random_pin_after(agent, before);
        self.med.run_feeding(&args, &mut feed)
    }

    fn assert_registered(&self, run: &Run) {
        assert!(run.ok(), "{}", run.output());
        assert!(run.stdout.contains("cps registered"), "{}", run.output());
        assert!(
            run.stdout.contains(&format!(
                "device {} is registered with cloud {}",
                self.agent.di, self.cloud.sid
            )),
            "{}",
            run.output()
        );
        // The owner reaches the device over coaps+tcp with its certificate afterwards.
        let get = self.med.get(&self.agent.ep, "/oic/sec/doxm").expect_ok();
        let doxm = get.json().expect("doxm as JSON");
        assert_eq!(doxm["owned"], true, "{}", get.output());
        assert_eq!(doxm["devowneruuid"], self.med.uuid().as_str());
        let pstat = self.med.get(&self.agent.ep, "/oic/sec/pstat").expect_ok();
        assert_eq!(pstat.json().unwrap()["dos"]["s"], 3);
    }
}

/// The Random PIN `agent` printed after the first `seen` ones.
fn random_pin_after(agent: &mut SecureAgent, seen: usize) -> Option<String> {
    agent
        .stdout()
        .iter()
        .filter_map(|l| l.strip_prefix("ocf-agent: random PIN "))
        .nth(seen)
        .map(str::to_string)
}

/// A manufacturer CA and a device certificate it signed, as PEM files in `dir`:
/// (ca.pem, mfg.crt, mfg.key).
fn manufacturer_pki(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{tag} manufacturer CA"));
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{tag} board"));
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("mfg.crt"), dir.join("mfg.key"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn random_pin_over_dtls_then_provisioning_and_registration() {
    let mut b = Bench::new("otm-rdp", &[]);
    let run = b.onboard(&["--otm", "rdp"]);
    b.assert_registered(&run);
    for line in [
        "OCF Random PIN over DTLS",
        "selected method 1",
        "ECDHE-PSK-AES128-CBC-SHA256",
        "the owner PSK opens a DTLS session",
    ] {
        assert!(
            run.output().contains(line),
            "{line:?} not in:\n{}",
            run.output()
        );
    }
    // The PIN went to the console only: not in the Mediator's output, not in the agent's log.
    let pin = b.random_pin_after(0).unwrap();
    assert!(!run.output().contains(&pin), "{}", run.output());
    assert!(!b.agent.log().join("\n").contains(&pin));
    // The device is owned: the clear side no longer selects methods, and the PIN is spent.
    let r = b.post_random_pin_selection();
    assert_eq!(r.code_text(), "4.01", "{}", r.describe());
    let replay = b.random_pin_session(&pin, &b.agent.di);
    assert!(replay.is_err(), "the Random PIN opened a second session");
    let _ = &b.dir;
}

#[test]
fn a_wrong_random_pin_fails_the_handshake_and_each_pin_answers_once() {
    let mut b = Bench::new("otm-rdp-wrong", &[]);
    let di = b.agent.di.clone();
    let pin = b.select_random_pin();
    let wrong = if pin == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    assert!(b.random_pin_session(wrong, &di).is_err());
    // The wrong guess spent this PIN: the right one no longer works either.
    assert!(b.random_pin_session(&pin, &di).is_err());
    let pin2 = b.select_random_pin();
    assert_ne!(pin, pin2);
    let mut doc = b
        .random_pin_session(&pin2, &di)
        .expect("the fresh PIN opens the DOC");
    let r = doc.request(&ocf_e2e::get("/oic/sec/doxm")).unwrap();
    assert_eq!(r.code_text(), "2.05");
    doc.close();
    let _ = &b.dir;
}

#[test]
fn manufacturer_certificate_over_dtls_and_over_coaps_tcp() {
    for tcp in [false, true] {
        let tag = if tcp { "otm-mfg-tcp" } else { "otm-mfg-dtls" };
        let pki_dir = std::env::temp_dir().join(format!("{tag}-pki-{}", std::process::id()));
        let (ca, cert, key) = manufacturer_pki(&pki_dir, tag);
        let mut b = Bench::new(tag, &["--mfg-cert", &s(&cert), "--mfg-key", &s(&key)]);
        // A Mediator that trusts another manufacturer refuses the device before owning it.
        let (other_ca, _, _) = manufacturer_pki(&pki_dir.join("other"), "other");
        let mut otm = vec!["--otm", "mfg"];
        if tcp {
            otm.push("--mfg-over-tcp");
        }
        let ca_s = s(&ca);
        let other_s = s(&other_ca);
        let refused = b.onboard(&[otm.clone(), vec!["--mfg-ca", &other_s]].concat());
        assert!(!refused.ok(), "{}", refused.output());
        assert!(
            refused
                .output()
                .contains("not signed by the manufacturer CA"),
            "{}",
            refused.output()
        );
        let run = b.onboard(&[otm, vec!["--mfg-ca", &ca_s]].concat());
        b.assert_registered(&run);
        let want = if tcp {
            "OCF Manufacturer Certificate over coaps+tcp"
        } else {
            "OCF Manufacturer Certificate over DTLS"
        };
        assert!(run.stdout.contains(want), "{}", run.output());
        if !tcp {
            assert!(
                run.stdout.contains("ECDHE-ECDSA-AES128-CCM8"),
                "{}",
                run.output()
            );
        }
        let _ = std::fs::remove_dir_all(&pki_dir);
        let _ = &b.dir;
    }
}

/// `openssl s_client -dtls1_2` with `args`, stdin held open briefly; its output.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-dtls1_2", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (Debian package openssl)");
    let mut stdin = child.stdin.take().unwrap();
    let start = Instant::now();
    // Keep stdin open until the handshake had its time, then let it end.
    while start.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = stdin.write_all(b"");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn negotiated(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Cipher    : "))
        .map(str::to_string)
        .filter(|c| c != "0000")
}

#[test]
fn openssl_s_client_completes_each_advertised_suite_and_no_other() {
    let pki_dir = std::env::temp_dir().join(format!("otm-sclient-pki-{}", std::process::id()));
    let (_, cert, key) = manufacturer_pki(&pki_dir, "sclient");
    let mut b = Bench::new(
        "otm-sclient",
        &["--mfg-cert", &s(&cert), "--mfg-key", &s(&key)],
    );
    let coaps = b.endpoint("coaps");
    let med_cert = s(&b.med.cert_path());
    let med_key = s(&b.med.key_path());
    // The Mediator's identity exists once it ran.
    b.med.run(&["identity"]).expect_ok();
    for suite in [
        "ECDHE-ECDSA-AES128-CCM8",
        "ECDHE-ECDSA-AES128-CCM",
        "ECDHE-ECDSA-AES256-CCM8",
        "ECDHE-ECDSA-AES256-CCM",
    ] {
        let out = s_client(
            coaps,
            &["-cipher", suite, "-cert", &med_cert, "-key", &med_key],
        );
        assert_eq!(negotiated(&out).as_deref(), Some(suite), "{out}");
        // The device showed its manufacturer certificate.
        assert!(out.contains("sclient board"), "{out}");
    }
    // The Random PIN suite, with the PIN the device shows after the selection.
    let pin = b.select_random_pin();
    let hex: String = pin_psk(pin.as_bytes(), &uuid_bytes(&b.agent.di).unwrap())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let out = s_client(
        coaps,
        &[
            "-cipher",
            "ECDHE-PSK-AES128-CBC-SHA256",
            "-psk_identity",
            "oic.sec.doxm.rdp",
            "-psk",
            &hex,
        ],
    );
    assert_eq!(
        negotiated(&out).as_deref(),
        Some("ECDHE-PSK-AES128-CBC-SHA256"),
        "{out}"
    );
    // Suites the device does not offer: the nearest thing OpenSSL has to Just Works'
    // anonymous ECDH, and a plain GCM suite.
    for suite in [
        "AECDH-AES128-SHA:@SECLEVEL=0",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ] {
        let out = s_client(
            coaps,
            &["-cipher", suite, "-cert", &med_cert, "-key", &med_key],
        );
        assert_eq!(negotiated(&out), None, "{suite} was accepted:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&pki_dir);
    let _ = &b.dir;
}

#[test]
fn libcoap_reaches_the_owned_device_over_dtls_with_a_psk_and_with_a_certificate() {
    let coap_client = coap_client();
    let mut b = Bench::new("otm-libcoap", &[]);
    let run = b.onboard(&["--otm", "rdp"]);
    b.assert_registered(&run);
    let coaps = b.endpoint("coaps");
    // The owner gives a local client a PSK (printable, since coap-client -k takes text) and
    // read access to the switch.
    let client = "c1c1c1c1-0000-4000-8000-000000000001";
    let psk = "libcoap-psk-0001";
    let cred = serde_json::json!({"creds": [{"credtype": 1, "subjectuuid": client,
        "privatedata": {"encoding": "oic.sec.encoding.raw", "data": psk}}]});
    // JSON has no byte strings: base64 carries the key.
    let b64 = base64_of(psk.as_bytes());
    let cred = cred
        .to_string()
        .replace("oic.sec.encoding.raw", "oic.sec.encoding.base64")
        .replace(&format!("\"{psk}\""), &format!("\"{b64}\""));
    b.med.post(&b.agent.ep, "/oic/sec/cred", &cred).expect_ok();
    let ace = serde_json::json!({"aclist2": [{"subject": {"uuid": client},
        "resources": [{"href": "/switch"}], "permission": 2}]});
    b.med
        .post(&b.agent.ep, "/oic/sec/acl2", &ace.to_string())
        .expect_ok();
    let uri = format!("coaps://{coaps}/switch");
    let out = Command::new(&coap_client)
        .args(["-m", "get", "-B", "10", "-u", client, "-k", psk, &uri])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("4."), "{text}");
    // A wrong key gets no session, hence no answer.
    let out = Command::new(&coap_client)
        .args([
            "-m",
            "get",
            "-B",
            "3",
            "-u",
            client,
            "-k",
            "wrong-psk-000001",
            &uri,
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("value"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // With the owner's certificate (the trust anchor installed by the Random PIN flow).
    let out = Command::new(&coap_client)
        .args([
            "-m",
            "get",
            "-B",
            "10",
            "-c",
            &s(&b.med.cert_path()),
            "-j",
            &s(&b.med.key_path()),
            "-n",
            &format!("coaps://{coaps}/oic/sec/doxm"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("devowneruuid"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = &b.dir;
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A DTLS 1.2 ClientHello as OpenSSL sends it first (record and message sequence 0, no
/// cookie), captured from `ocf_mediator`'s client against a socket that never answers.
fn captured_client_hello() -> Vec<u8> {
    let trap = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = trap.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let _ = DtlsClient::connect(
            addr,
            ClientAuth::Psk {
                identity: b"x",
                key: &[1; 16],
            },
            PSK_CIPHERS,
            Duration::from_millis(300),
        );
    });
    let mut buf = [0u8; 1500];
    let n = trap.recv(&mut buf).unwrap();
    t.join().unwrap();
    buf[..n].to_vec()
}

/// `hello` resent with `cookie`, one record and one message sequence number later.
fn with_cookie(hello: &[u8], cookie: &[u8]) -> Vec<u8> {
    let sid_len = usize::from(hello[13 + 12 + 34]);
    let at = 13 + 12 + 35 + sid_len;
    assert_eq!(hello[at], 0, "the first hello has no cookie");
    let mut out = hello[..at].to_vec();
    out.push(cookie.len() as u8);
    out.extend_from_slice(cookie);
    out.extend_from_slice(&hello[at + 1..]);
    let n = cookie.len();
    out[10] += 1; // record sequence 1
    let rec_len = u16::from_be_bytes([out[11], out[12]]) as usize + n;
    out[11..13].copy_from_slice(&(rec_len as u16).to_be_bytes());
    let hs_len = (rec_len - 12) as u32;
    out[14..17].copy_from_slice(&hs_len.to_be_bytes()[1..]);
    out[18] = 1; // message sequence 1
    out[22..25].copy_from_slice(&hs_len.to_be_bytes()[1..]);
    out
}

/// The cookie of a HelloVerifyRequest.
fn hvr_cookie(d: &[u8]) -> Option<Vec<u8>> {
    (d.len() > 13 + 12 + 3 && d[0] == 22 && d[13] == 3).then(|| {
        let n = usize::from(d[13 + 12 + 2]);
        d[13 + 12 + 3..13 + 12 + 3 + n].to_vec()
    })
}

#[test]
fn a_hello_flood_and_unfinished_handshakes_do_not_keep_a_client_out() {
    let b = Bench::new("otm-dtls-flood", &[]);
    let coaps = b.endpoint("coaps");
    let hello = captured_client_hello();
    // A flood of first hellos: each is answered with a HelloVerifyRequest and nothing is kept.
    let flood: Vec<std::net::UdpSocket> = (0..200)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &flood {
        s.send_to(&hello, coaps).unwrap();
    }
    let mut answered = 0;
    for s in &flood {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok(n) = s.recv(&mut buf) {
            assert!(hvr_cookie(&buf[..n]).is_some(), "{:?}", &buf[..n]);
            answered += 1;
        }
    }
    assert!(
        answered >= 190,
        "only {answered} of 200 hellos were answered"
    );
    // Peers at 24 other addresses answer the cookie and then stop half-way: each holds a
    // handshake until the device gives its place to a newer one.
    let mut stalled = Vec::new();
    for i in 0..24 {
        let ip = format!("127.0.0.{}", 2 + i / 2);
        let s = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&hello, coaps).unwrap();
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).unwrap();
        let cookie = hvr_cookie(&buf[..n]).expect("a HelloVerifyRequest");
        s.send_to(&with_cookie(&hello, &cookie), coaps).unwrap();
        // The device went on with the handshake (its ServerHello flight).
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(
            buf[13],
            2,
            "a ServerHello after the cookie, not {:?}",
            &buf[..n.min(20)]
        );
        stalled.push(s);
    }
    // A client still gets its handshake, within its 5 s, while all of them wait.
    b.med.run(&["identity"]).expect_ok();
    let mut client = b
        .certificate_session(coaps, Duration::from_secs(5))
        .expect("a handshake while others stall");
    let r = client.request(&ocf_e2e::get("/oic/d")).unwrap();
    assert_eq!(r.code_text(), "2.05", "{}", r.describe());
    client.close();
    drop(stalled);
    let _ = &b.dir;
}

#[test]
fn sessions_over_the_per_address_cap_close_the_longest_idle_one_to_make_room() {
    let b = Bench::new("otm-dtls-cap", &[]);
    let coaps = b.endpoint("coaps");
    b.med.run(&["identity"]).expect_ok();
    let connect = || {
        let mut c = b
            .certificate_session(coaps, Duration::from_secs(5))
            .expect("a handshake");
        let r = c.request(&ocf_e2e::get("/oic/d")).unwrap();
        assert_eq!(r.code_text(), "2.05", "{}", r.describe());
        c
    };
    // Eight sessions from 127.0.0.1 fill its share (the agent's DTLS limits), the first one
    // idle the longest.
    let mut held: Vec<DtlsClient> = (0..8)
        .map(|_| {
            let c = connect();
            std::thread::sleep(Duration::from_millis(20));
            c
        })
        .collect();
    // A ninth gets its turn, and the first is the one closed for it.
    let mut newcomer = connect();
    let mut first = held.remove(0);
    first.timeout = Duration::from_secs(2);
    assert!(
        first.request(&ocf_e2e::get("/oic/d")).is_err(),
        "the longest idle session is still open"
    );
    for c in held.iter_mut().chain(std::iter::once(&mut newcomer)) {
        let r = c.request(&ocf_e2e::get("/oic/d")).unwrap();
        assert_eq!(r.code_text(), "2.05", "{}", r.describe());
    }
    let _ = &b.dir;
}

/// A UDP relay between one client and `device` that drops the device's first datagram whose
/// first handshake message is a ServerHello (its first flight after the cookie).
fn lossy_relay(device: SocketAddr) -> SocketAddr {
    let front = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    back.connect(device).unwrap();
    front
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut client = None;
        let mut dropped = false;
        let mut buf = [0u8; 2048];
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok((n, from)) = front.recv_from(&mut buf) {
                client = Some(from);
                let _ = back.send(&buf[..n]);
            }
            if let Ok(n) = back.recv(&mut buf) {
                if !dropped && n > 13 && buf[0] == 22 && buf[13] == 2 {
                    dropped = true;
                    continue;
                }
                if let Some(c) = client {
                    let _ = front.send_to(&buf[..n], c);
                }
            }
        }
    });
    addr
}

#[test]
fn a_handshake_completes_when_the_device_s_first_flight_is_lost() {
    let b = Bench::new("otm-dtls-loss", &[]);
    b.med.run(&["identity"]).expect_ok();
    let relay = lossy_relay(b.endpoint("coaps"));
    let mut c = b
        .certificate_session(relay, Duration::from_secs(10))
        .expect("the flight is sent again");
    let r = c.request(&ocf_e2e::get("/oic/d")).unwrap();
    assert_eq!(r.code_text(), "2.05", "{}", r.describe());
    c.close();
    let _ = &b.dir;
}

#[test]
fn a_new_deviceuuid_from_the_ownership_transfer_is_kept_across_a_restart() {
    let mut b = Bench::new("otm-new-di", &[]);
    let owner = b.med.uuid();
    let old_di = b.agent.di.clone();
    let new_di = "0dd0dd00-0000-4000-8000-0000000000d1";
    let pin = b.select_random_pin();
    let mut doc = b.random_pin_session(&pin, &old_di).unwrap();
    let text = |s: &str| ciborium::Value::Text(s.into());
    for (href, body) in [
        (
            "/oic/sec/pstat",
            map(&[("om", ciborium::Value::Integer(4.into()))]),
        ),
        ("/oic/sec/doxm", map(&[("devowneruuid", text(&owner))])),
        ("/oic/sec/doxm", map(&[("deviceuuid", text(new_di))])),
    ] {
        let r = doc.request(&post_cbor(href, &body)).unwrap();
        assert_eq!(r.code_text(), "2.04", "{href}: {}", r.describe());
    }
    let d = doc.request(&ocf_e2e::get("/oic/d")).unwrap();
    assert_eq!(
        key(&d.body().unwrap(), "di").and_then(ciborium::Value::as_text),
        Some(new_di)
    );
    doc.close();
    // Both files hold the new di before the answer went out: a restart comes back with it,
    // and the security state is not set aside as another device's.
    let identity = std::fs::read_to_string(b.agent.state_dir.join("identity.json")).unwrap();
    assert!(identity.contains(new_di), "{identity}");
    let state = b.agent.state_dir.clone();
    let _ = b.agent.child.kill();
    let _ = b.agent.child.wait();
    b.agent = SecureAgent::start(&state, Some(&b.dir.path().join("pin")), &[]);
    assert_eq!(b.agent.di, new_di);
    std::thread::sleep(Duration::from_millis(200));
    let log = b.agent.log().join("\n");
    assert!(
        !log.contains("moved to"),
        "a state file was set aside:\n{log}"
    );
    let doxm = clear_request(
        b.endpoint("coap"),
        &ocf_e2e::get("/oic/sec/doxm"),
        Duration::from_secs(5),
    )
    .unwrap();
    let body = doxm.body().unwrap();
    assert_eq!(
        key(&body, "devowneruuid").and_then(ciborium::Value::as_text),
        Some(owner.as_str()),
        "the transfer's state survived the restart"
    );
}
