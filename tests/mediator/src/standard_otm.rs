//! OCF's standard ownership transfer methods, the Mediator's side (OCF Security §7.3; the
//! order of iotivity-lite's `oc_obt_otm_randompin.c` and plgd's `ownDevice.go`):
//!
//! 1. in the clear over UDP: `GET /oic/sec/doxm` (the method must be offered), then
//!    `POST /oic/sec/doxm {"oxmsel": n}`; for Random PIN the device shows a fresh PIN;
//! 2. the Device Ownership Connection: DTLS with the PIN's PSK (identity `oic.sec.doxm.rdp`),
//!    or, for Manufacturer Certificate, DTLS or coaps+tcp with the Mediator's certificate,
//!    the device showing its manufacturer certificate, checked against `--mfg-ca`;
//! 3. on it: `pstat.om`, `doxm.devowneruuid`, the `rowneruuid`s, the owner PSK credential
//!    (empty key over DTLS: both sides derive it from the session, OCF Security §7.3.2; a
//!    random key over coaps+tcp, whose TLS stack gives no key block), `doxm.owned = true`;
//! 4. over DTLS: a new session with the owner PSK (identity: our UUID) moves the device to
//!    RFPRO and, after Random PIN, installs our certificate as a trust anchor, so that the
//!    provisioning can go on over coaps+tcp with it. The device's key for coaps+tcp is read
//!    from its CSR on that authenticated session and pinned.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ciborium::Value;
use ocf::security::doxm::{OXM_MFG_CERT, OXM_RANDOM_PIN};
use ocf::security::dtls_keys::{owner_psk, pin_psk, uuid_bytes, Oxm, RDP_IDENTITY};
use ocf::security::otm::Pin;
use ocf::x509;

use crate::dtls::{clear_request, ClientAuth, DtlsClient, CERT_CIPHERS, PSK_CIPHERS};
use crate::flow::{cred_body, field, field_text, get, post, Progress};
use crate::identity::{sha256_hex, Identity};
use crate::tls::{client_config, NetError, Reply, SecureClient};

/// Which standard method, and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Random PIN over DTLS.
    RandomPin,
    /// Manufacturer Certificate over DTLS (`tcp: false`) or coaps+tcp.
    MfgCert { tcp: bool },
}

impl Method {
    fn oxm(self) -> u16 {
        match self {
            Method::RandomPin => OXM_RANDOM_PIN,
            Method::MfgCert { .. } => OXM_MFG_CERT,
        }
    }
}

/// Where the device is and what it is.
pub struct Device<'a> {
    pub di: &'a str,
    /// Its coaps+tcp endpoint.
    pub tls: SocketAddr,
    /// `/oic/res`, for its `coap://` and `coaps://` endpoints.
    pub res: &'a Value,
}

/// What the transfer leaves behind.
pub struct Owned {
    /// SHA-256 of the key the device shows on coaps+tcp, authenticated by the method.
    pub spki_sha256: String,
    pub cert_sha256: String,
    /// The DOC itself when it was coaps+tcp: the owner's connection, kept open.
    pub tcp_link: Option<SecureClient>,
}

/// The Device Ownership Connection.
enum Doc {
    Dtls(DtlsClient),
    Tcp(Box<SecureClient>),
}

impl Doc {
    fn close(self) {
        match self {
            Doc::Dtls(c) => c.close(),
            Doc::Tcp(c) => c.close(),
        }
    }

    fn request(&mut self, what: &str, req: &ocf::resource::Request) -> Result<Reply, String> {
        let r = match self {
            Doc::Dtls(c) => c.request(req),
            Doc::Tcp(c) => c.request(req),
        };
        check(what, r)
    }
}

/// The `scheme://` endpoints in `/oic/res`'s `eps`, those on `near`'s IP first.
pub fn endpoints(res: &Value, scheme: &str, near: SocketAddr) -> Vec<SocketAddr> {
    let prefix = format!("{scheme}://");
    let mut out: Vec<SocketAddr> = Vec::new();
    for link in res.as_array().into_iter().flatten() {
        let Some(eps) = field(link, "eps").and_then(Value::as_array) else {
            continue;
        };
        for ep in eps {
            let Some(uri) = field_text(ep, "ep") else {
                continue;
            };
            let Some(addr) = uri
                .strip_prefix(&prefix)
                .and_then(|a| a.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out.sort_by_key(|a| a.ip() != near.ip());
    out
}

fn check(what: &str, r: Result<Reply, NetError>) -> Result<Reply, String> {
    match r {
        Ok(r) if r.is_success() => Ok(r),
        Ok(r) => Err(format!("{what}: the device answered {}", r.describe())),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn uuid_map(key: &str, uuid: &str) -> Value {
    Value::Map(vec![(Value::Text(key.into()), Value::Text(uuid.into()))])
}

fn dos(s: u8) -> Value {
    Value::Map(vec![(
        Value::Text("dos".into()),
        Value::Map(vec![(Value::Text("s".into()), Value::Integer(s.into()))]),
    )])
}

/// The owner PSK credential: `key` empty asks the device to derive it.
fn owner_cred(owner: &str, key: &[u8]) -> Value {
    let t = |s: &str| Value::Text(s.into());
    Value::Map(vec![
        (
            t("creds"),
            Value::Array(vec![Value::Map(vec![
                (t("credtype"), Value::Integer(1.into())),
                (t("subjectuuid"), t(owner)),
                (
                    t("privatedata"),
                    Value::Map(vec![
                        (t("encoding"), t("oic.sec.encoding.raw")),
                        (t("data"), Value::Bytes(key.to_vec())),
                    ]),
                ),
            ])]),
        ),
        (t("rowneruuid"), t(owner)),
    ])
}

/// Checks that the device's certificate (DER) is signed by a CA of `ca_pem` and valid now.
fn check_mfg_certificate(der: &[u8], ca_pem: &str) -> Result<(), String> {
    let cert =
        openssl::x509::X509::from_der(der).map_err(|e| format!("the device's certificate: {e}"))?;
    let cas = openssl::x509::X509::stack_from_pem(ca_pem.as_bytes())
        .map_err(|e| format!("--mfg-ca: {e}"))?;
    let signed = cas.iter().any(|ca| {
        ca.public_key()
            .and_then(|k| cert.verify(&k))
            .unwrap_or(false)
    });
    if !signed {
        return Err(
            "the device's certificate is not signed by the manufacturer CA (--mfg-ca)".into(),
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match x509::Certificate::from_der(der)
        .map_err(|e| format!("the device's certificate: {e}"))?
        .validity_at(now)
    {
        x509::Validity::Valid => Ok(()),
        other => Err(format!(
            "the device's manufacturer certificate is not valid now: {other:?}"
        )),
    }
}

/// Runs the method (see the module docs). `random_pin` asks the user for the PIN the device
/// shows; `mfg_ca_pem` is what a manufacturer certificate must chain to.
pub fn take_ownership(
    identity: &Identity,
    device: &Device<'_>,
    method: Method,
    mfg_ca_pem: Option<&str>,
    random_pin: &mut dyn FnMut() -> Result<Pin, String>,
    timeout: Duration,
    p: &Progress,
) -> Result<Owned, String> {
    let me = identity.uuid.as_str();
    let coap = *endpoints(device.res, "coap", device.tls)
        .first()
        .ok_or("the device lists no coap:// endpoint for the method selection")?;
    // 1. The selection, in the clear.
    let doxm = check(
        "GET /oic/sec/doxm (UDP)",
        clear_request(coap, &get(ocf::security::DOXM_HREF), timeout),
    )?;
    let oxms: Vec<u64> = doxm
        .body()
        .and_then(|b| field(&b, "oxms").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_integer().and_then(|i| u64::try_from(i).ok()))
        .collect();
    if !oxms.contains(&u64::from(method.oxm())) {
        return Err(format!(
            "the device does not offer method {} (oxms {oxms:?})",
            method.oxm()
        ));
    }
    let select = Value::Map(vec![(
        Value::Text("oxmsel".into()),
        Value::Integer(method.oxm().into()),
    )]);
    check(
        "POST /oic/sec/doxm {oxmsel} (UDP)",
        clear_request(coap, &post(ocf::security::DOXM_HREF, &select), timeout),
    )?;
    p.detail(&format!(
        "selected method {} over {}",
        method.oxm(),
        crate::endpoint::endpoint_uri(&coap).replace("coaps+tcp", "coap")
    ));
    // 2. The DOC.
    let device_uuid = uuid_bytes(device.di).ok_or("the device's di is not a UUID")?;
    let coaps = || {
        endpoints(device.res, "coaps", device.tls)
            .first()
            .copied()
            .ok_or("the device lists no coaps:// (DTLS) endpoint")
    };
    let (mut doc, oxm) = match method {
        Method::RandomPin => {
            let pin = random_pin()?;
            let key = pin_psk(pin.expose().as_bytes(), &device_uuid);
            let c = DtlsClient::connect(
                coaps()?,
                ClientAuth::Psk {
                    identity: RDP_IDENTITY,
                    key: &key,
                },
                PSK_CIPHERS,
                timeout,
            )
            .map_err(|e| format!("{e} (a wrong PIN fails the handshake)"))?;
            (Doc::Dtls(c), Oxm::RandomPin)
        }
        Method::MfgCert { tcp } => {
            let ca = mfg_ca_pem.ok_or("the Manufacturer Certificate method needs --mfg-ca")?;
            let (doc, leaf) = if tcp {
                let c = SecureClient::connect(device.tls, client_config(identity)?, timeout)
                    .map_err(|e| e.to_string())?;
                let leaf = c.peer_certificate();
                (Doc::Tcp(Box::new(c)), leaf)
            } else {
                let c = DtlsClient::connect(
                    coaps()?,
                    ClientAuth::Certificate {
                        cert_pem: &identity.cert_pem,
                        key_pem: identity.key_pem(),
                        device_ca_pem: None,
                    },
                    CERT_CIPHERS,
                    timeout,
                )?;
                let leaf = c.peer_certificate();
                (Doc::Dtls(c), leaf)
            };
            let checked = leaf
                .ok_or_else(|| "the device showed no certificate".to_string())
                .and_then(|der| check_mfg_certificate(&der, ca));
            if let Err(e) = checked {
                // Ends the session at once: while it is open, the device keeps its clear
                // side closed.
                doc.close();
                return Err(e);
            }
            (doc, Oxm::MfgCert)
        }
    };
    let mut send = |what: &str, req: ocf::resource::Request| doc.request(what, &req);
    let om = Value::Map(vec![(Value::Text("om".into()), Value::Integer(4.into()))]);
    send(
        "POST /oic/sec/pstat {om}",
        post(ocf::security::PSTAT_HREF, &om),
    )?;
    send(
        "POST /oic/sec/doxm {devowneruuid}",
        post(ocf::security::DOXM_HREF, &uuid_map("devowneruuid", me)),
    )?;
    send(
        "POST /oic/sec/doxm {rowneruuid}",
        post(ocf::security::DOXM_HREF, &uuid_map("rowneruuid", me)),
    )?;
    send(
        "POST /oic/sec/acl2 {rowneruuid}",
        post(ocf::security::ACL2_HREF, &uuid_map("rowneruuid", me)),
    )?;
    send(
        "POST /oic/sec/pstat {rowneruuid}",
        post(ocf::security::PSTAT_HREF, &uuid_map("rowneruuid", me)),
    )?;
    let owner_uuid = uuid_bytes(me).ok_or("our identity's UUID is not a UUID")?;
    let psk: Vec<u8> = match &doc {
        Doc::Dtls(c) => {
            let secrets = c
                .secrets()
                .ok_or("the DTLS session has no secrets to derive from")?;
            owner_psk(&secrets, oxm, &owner_uuid, &device_uuid)
                .ok_or("the session's suite has no key block")?
                .to_vec()
        }
        Doc::Tcp(_) => {
            let mut k = vec![0u8; 16];
            getrandom::fill(&mut k).map_err(|e| format!("no randomness from the OS: {e}"))?;
            k
        }
    };
    let sent_key: &[u8] = match &doc {
        Doc::Dtls(_) => &[],
        Doc::Tcp(_) => &psk,
    };
    let cred = post(ocf::security::CRED_HREF, &owner_cred(me, sent_key));
    doc.request("POST /oic/sec/cred (owner PSK)", &cred)?;
    let owned = Value::Map(vec![(Value::Text("owned".into()), Value::Bool(true))]);
    doc.request(
        "POST /oic/sec/doxm {owned}",
        &post(ocf::security::DOXM_HREF, &owned),
    )?;
    let describe = match &doc {
        Doc::Dtls(c) => format!("DTLS 1.2, {}", c.cipher()),
        Doc::Tcp(c) => c.describe_session(),
    };
    p.detail(&format!(
        "ownership taken over the Device Ownership Connection ({describe}); owner {me}"
    ));
    // 3. Onwards as the owner.
    match doc {
        Doc::Tcp(mut c) => {
            let r = c.request(&post(ocf::security::PSTAT_HREF, &dos(2)));
            check("POST /oic/sec/pstat {dos.s: 2}", r)?;
            let der = c.peer_certificate().ok_or("no device certificate")?;
            let spki = c.peer_spki_sha256().ok_or("no device key")?;
            Ok(Owned {
                spki_sha256: spki,
                cert_sha256: sha256_hex(&der),
                tcp_link: Some(*c),
            })
        }
        Doc::Dtls(c) => {
            let mfg_leaf = c.peer_certificate();
            c.close();
            let mut owner = DtlsClient::connect(
                coaps()?,
                ClientAuth::Psk {
                    identity: me.as_bytes(),
                    key: &psk,
                },
                PSK_CIPHERS,
                timeout,
            )
            .map_err(|e| format!("the owner PSK session: {e}"))?;
            check(
                "POST /oic/sec/pstat {dos.s: 2} (owner PSK session)",
                owner.request(&post(ocf::security::PSTAT_HREF, &dos(2))),
            )?;
            p.detail("the owner PSK opens a DTLS session; the device is in RFPRO");
            let (spki, cert_sha) = match mfg_leaf {
                Some(der) => {
                    let cert = x509::Certificate::from_der(&der)
                        .map_err(|e| format!("the device's certificate: {e}"))?;
                    (x509::hex(&cert.spki_sha256()), sha256_hex(&der))
                }
                None => {
                    // Random PIN: our certificate is the owner's on coaps+tcp through a trust
                    // anchor, and the device's coaps+tcp key is its identity key, which the
                    // CSR on this authenticated session names.
                    check(
                        "POST /oic/sec/cred (the Mediator's certificate as trust anchor)",
                        owner.request(&post(
                            ocf::security::CRED_HREF,
                            &cred_body(me, "oic.sec.cred.trustca", &identity.cert_pem),
                        )),
                    )?;
                    let r = check(
                        "GET /oic/sec/csr",
                        owner.request(&get(ocf::security::CSR_HREF)),
                    )?;
                    let pem = r
                        .body()
                        .and_then(|b| field_text(&b, "csr"))
                        .ok_or("GET /oic/sec/csr: no `csr`")?;
                    (crate::csr::csr_info(&pem)?.spki_sha256, String::new())
                }
            };
            owner.close();
            Ok(Owned {
                spki_sha256: spki,
                cert_sha256: cert_sha,
                tcp_link: None,
            })
        }
    }
}

/// Reads the Random PIN the device shows from standard input.
pub fn read_random_pin_from_stdin(deadline: Instant) -> Result<Pin, String> {
    eprintln!("ocf-mediator: enter the Random PIN the device shows now:");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the Random PIN: {e}"))?;
    if Instant::now() > deadline {
        return Err("the Random PIN came too late".into());
    }
    let pin = Pin::new(&line).map_err(|e| format!("the Random PIN: {e}"));
    line.clear();
    pin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_prefer_the_address_already_used() {
        let res = ocf::model::content::json_to_cbor(&serde_json::json!([
            {"href": "/oic/d", "eps": [
                {"ep": "coap://10.0.0.2:5683"}, {"ep": "coaps://10.0.0.2:40000"},
                {"ep": "coap://127.0.0.1:5683"}, {"ep": "coaps://127.0.0.1:40000"},
                {"ep": "coaps+tcp://127.0.0.1:5684"}
            ]},
            {"href": "/oic/p", "eps": [{"ep": "coap://127.0.0.1:5683"}]}
        ]))
        .unwrap();
        let near: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        assert_eq!(
            endpoints(&res, "coap", near),
            [
                "127.0.0.1:5683".parse().unwrap(),
                "10.0.0.2:5683".parse().unwrap()
            ]
        );
        assert_eq!(
            endpoints(&res, "coaps", near)[0],
            "127.0.0.1:40000".parse().unwrap()
        );
        assert!(endpoints(&Value::Null, "coaps", near).is_empty());
    }

    #[test]
    fn the_owner_credential_asks_for_derivation_with_an_empty_key() {
        let v = owner_cred("aaaaaaaa-0000-0000-0000-000000000001", &[]);
        let json = format!("{v:?}");
        assert!(json.contains("Bytes([])"), "{json}");
    }
}
