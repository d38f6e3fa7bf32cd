//! The security resources behind the router, as the daemon wires them: authorise, then OTM /
//! DELETE / router. Covers the first-boot flow end to end on the sans-IO level.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, ResponseType};

use super::otm::tests::test_rng;
use super::*;
use crate::model::{decode_payload, encode_payload, ContentFormat};
use crate::resource::{
    Backend, Device, DeviceInfo, Interface, Method, Origin, PlatformInfo, Policy, Props, Request,
    Resource, Response, Value,
};
use crate::x509::tests::{CA_CERT, OWNER_CERT};

const DI: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const SID: &str = "cccccccc-0000-0000-0000-000000000003";
const OWNER_UUID: &str = "11111111-2222-3333-4444-555555555555";
const PIN: &str = "27182818";
const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";

struct Light(bool);

impl Backend for Light {
    fn retrieve(&mut self) -> Result<Props, crate::resource::ResourceError> {
        Ok(Props::from([("value".to_string(), Value::Bool(self.0))]))
    }
    fn update(&mut self, props: &Props) -> Result<(), crate::resource::ResourceError> {
        if let Some(Value::Bool(b)) = props.get("value") {
            self.0 = *b;
        }
        Ok(())
    }
}

/// A peer on one TLS connection.
#[derive(Clone)]
struct Peer {
    conn: u64,
    exporter: [u8; 32],
    cert: Option<PeerIdentity>,
}

fn owner_peer(conn: u64) -> Peer {
    let der = crate::x509::certificates_from_pem(OWNER_CERT)
        .unwrap()
        .remove(0);
    Peer {
        conn,
        exporter: [conn as u8; 32],
        cert: Some(PeerIdentity::from_certificate_der(&der, false).unwrap()),
    }
}

fn other_peer(conn: u64, uuid: &str, key: u8, verified: bool) -> Peer {
    Peer {
        conn,
        exporter: [conn as u8; 32],
        cert: Some(PeerIdentity {
            uuid: Some(uuid.into()),
            spki_sha256: [key; 32],
            chain_verified: verified,
        }),
    }
}

fn anonymous(conn: u64) -> Peer {
    Peer {
        conn,
        exporter: [conn as u8; 32],
        cert: None,
    }
}

struct Harness {
    state: SharedState,
    device: Device,
    otm: OtmHandler,
    now: Instant,
}

impl Harness {
    fn new() -> Harness {
        let state: SharedState = Rc::new(RefCell::new(SecurityState::new(DI)));
        let mut device = Device::new(
            DeviceInfo {
                di: DI.into(),
                piid: "6d0f9ab2-33c3-4d8e-b1f1-5a7c0e2f4b60".into(),
                name: "test".into(),
                device_type: "oic.d.light".into(),
                spec_version: "ocf.2.5.0".into(),
                data_model_version: "ocf.res.1.3.0".into(),
                software_version: "0.1.0".into(),
            },
            PlatformInfo {
                pi: "a0b1c2d3-0000-4000-8000-000000000001".into(),
                manufacturer: "Example".into(),
                extra: Props::new(),
            },
        );
        for r in resources(&state, Box::new(|| Ok(CSR.to_string()))) {
            device.add(r).unwrap();
        }
        device
            .add(Resource::new(
                "/light",
                &["oic.r.switch.binary"],
                &[Interface::Actuator, Interface::Baseline],
                Policy::discoverable_observable(),
                Box::new(Light(false)),
            ))
            .unwrap();
        let otm = DeviceOtm::new(Pin::new(PIN).unwrap(), DI, Box::new(test_rng(42)));
        Harness {
            otm: OtmHandler::new(state.clone(), otm),
            state,
            device,
            now: Instant::now(),
        }
    }

    /// What the daemon does with a request on a TLS connection.
    fn send(&mut self, peer: &Peer, req: &Request) -> Response {
        self.send_full(peer, req).response
    }

    fn send_full(&mut self, peer: &Peer, req: &Request) -> OtmReply {
        let who = self.state.borrow().requester(peer.cert.as_ref(), true);
        let denial = self.state.borrow().authorize_request(&who, req).denial();
        if let Some(d) = denial {
            return OtmReply {
                response: d,
                max_age: None,
            };
        }
        if req.path == OTM_HREF {
            let conn = Connection {
                session_id: peer.conn,
                exporter: &peer.exporter,
                peer: peer.cert.as_ref(),
            };
            return self.otm.handle(req, &conn, self.now);
        }
        let response = match handle_delete(&self.state, req) {
            Some(r) => r,
            None => self.device.handle(&Origin::Stream(peer.conn), req, &[]),
        };
        OtmReply {
            response,
            max_age: None,
        }
    }

    /// The Mediator's side of the OTM over `peer`'s connection; `seen_exporter` is the value
    /// the Mediator computes (different from the device's under a MITM).
    fn take_ownership(
        &mut self,
        peer: &Peer,
        pin: &str,
        seen_exporter: &[u8],
    ) -> Result<otm::OwnerInfo, OtmError> {
        let mut rng = test_rng(peer.conn + 1000);
        let (m, msg_a) = MediatorOtm::start(&Pin::new(pin).unwrap(), DI, &mut rng);
        let resp = self.send(peer, &otm::step1_request(&msg_a));
        let reply = otm::parse_step1_response(&resp)?;
        let confirm_a = m.finish(&reply.pake_msg_b, &reply.confirm_b, seen_exporter)?;
        let resp = self.send(peer, &otm::step2_request(&confirm_a));
        otm::parse_step2_response(&resp)
    }
}

fn get(path: &str) -> Request {
    Request::new(Method::Get, path)
}

fn post(path: &str, body: Value) -> Request {
    let mut r = Request::new(Method::Post, path);
    r.content_format = Some(ContentFormat::OCF_CBOR_NUMBER);
    r.payload = encode_payload(ContentFormat::OcfCbor, &body).unwrap();
    r
}

fn delete(path: &str, query: &[(&str, &str)]) -> Request {
    let mut r = Request::new(Method::Delete, path);
    r.query = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    r
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn m(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (t(k), v)).collect())
}

fn int(n: u64) -> Value {
    Value::Integer(n.into())
}

fn dos(s: u64) -> Value {
    m(vec![("dos", m(vec![("s", int(s))]))])
}

fn body_of(r: &Response) -> Value {
    decode_payload(ContentFormat::OcfCbor, &r.payload).unwrap()
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    let Value::Map(entries) = v else {
        panic!("not a map: {v:?}")
    };
    &entries
        .iter()
        .find(|(k, _)| k == &t(key))
        .unwrap_or_else(|| panic!("no {key}"))
        .1
}

fn cred_body(subject: &str, usage: &str, pem: &str) -> Value {
    m(vec![(
        "creds",
        Value::Array(vec![m(vec![
            ("credtype", int(8)),
            ("subjectuuid", t(subject)),
            ("credusage", t(usage)),
            (
                "publicdata",
                m(vec![
                    ("encoding", t("oic.sec.encoding.pem")),
                    ("data", t(pem)),
                ]),
            ),
        ])]),
    )])
}

fn cloud_ace() -> Value {
    m(vec![(
        "aclist2",
        Value::Array(vec![m(vec![
            ("subject", m(vec![("uuid", t(SID))])),
            ("permission", int(31)),
            (
                "resources",
                Value::Array(vec![
                    m(vec![("wc", t("*")), ("if", Value::Array(vec![t("*")]))]),
                    m(vec![
                        ("href", t("/oic/mnt")),
                        ("if", Value::Array(vec![t("*")])),
                    ]),
                ]),
            ),
        ])]),
    )])
}

/// Owns and provisions the device as the Mediator does (OCF-PROTOCOL.md §8.5).
fn onboard(h: &mut Harness) -> Peer {
    let owner = owner_peer(1);
    let exporter = owner.exporter;
    let info = h.take_ownership(&owner, PIN, &exporter).unwrap();
    assert_eq!(
        info,
        otm::OwnerInfo {
            deviceuuid: DI.into(),
            devowneruuid: OWNER_UUID.into()
        }
    );
    let ok = |r: Response| assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
    ok(h.send(
        &owner,
        &post(CRED_HREF, cred_body(DI, "oic.sec.cred.cert", OWNER_CERT)),
    ));
    ok(h.send(
        &owner,
        &post(CRED_HREF, cred_body(SID, "oic.sec.cred.trustca", CA_CERT)),
    ));
    ok(h.send(&owner, &post(PSTAT_HREF, dos(2))));
    ok(h.send(&owner, &post(ACL2_HREF, cloud_ace())));
    ok(h.send(&owner, &post(PSTAT_HREF, dos(3))));
    owner
}

#[test]
fn first_boot_flow_end_to_end() {
    let mut h = Harness::new();
    let anon = anonymous(9);
    // Unowned: doxm is readable, the rest of the security resources are not.
    let r = h.send(&anon, &get(DOXM_HREF));
    assert_eq!(r.code, ResponseType::Content);
    assert_eq!(field(&body_of(&r), "owned"), &Value::Bool(false));
    assert_eq!(
        field(&body_of(&r), "oxms"),
        &Value::Array(vec![int(0xFF00)])
    );
    assert_eq!(
        h.send(&anon, &get(PSTAT_HREF)).code,
        ResponseType::Forbidden
    );
    assert_eq!(h.send(&anon, &get("/light")).code, ResponseType::Forbidden);
    assert_eq!(h.send(&anon, &get("/oic/d")).code, ResponseType::Content);
    h.state.borrow_mut().take_events();

    let owner = onboard(&mut h);
    {
        let mut s = h.state.borrow_mut();
        assert_eq!(s.dos(), DosState::Rfnop);
        assert!(s.doxm().owned);
        assert_eq!(s.doxm().devowneruuid, OWNER_UUID);
        assert_eq!(
            s.owner().unwrap().spki_sha256,
            crate::x509::tests::OWNER_SPKI_SHA256
        );
        assert_eq!(s.creds().identity_chain(DI).unwrap().credid, 1);
        assert_eq!(s.creds().trust_anchors_for(SID).count(), 1);
        assert!(s.take_dirty());
        let events = s.take_events();
        assert_eq!(
            events,
            vec![
                SecurityEvent::OwnershipTransferred {
                    owner_uuid: OWNER_UUID.into()
                },
                SecurityEvent::StateChanged {
                    from: DosState::Rfotm,
                    to: DosState::Rfpro
                },
                SecurityEvent::CredentialsChanged,
                SecurityEvent::CredentialsChanged,
                SecurityEvent::AclChanged,
                SecurityEvent::StateChanged {
                    from: DosState::Rfpro,
                    to: DosState::Rfnop
                },
            ]
        );
    }

    // The owner reads the CSR and everything else.
    let r = h.send(&owner, &get(CSR_HREF));
    assert_eq!(field(&body_of(&r), "csr"), &t(CSR));
    assert_eq!(h.send(&owner, &get("/light")).code, ResponseType::Content);

    // The cloud, authenticated by its chain, with its ACE.
    let cloud = other_peer(2, SID, 7, true);
    assert_eq!(h.send(&cloud, &get("/light")).code, ResponseType::Content);
    assert_eq!(
        h.send(
            &cloud,
            &post("/light", m(vec![("value", Value::Bool(true))]))
        )
        .code,
        ResponseType::Changed
    );
    assert_eq!(
        h.send(&cloud, &get(CRED_HREF)).code,
        ResponseType::Unauthorized
    );
    assert_eq!(
        h.send(&cloud, &post(PSTAT_HREF, dos(0))).code,
        ResponseType::Unauthorized
    );
    // A cloud whose chain does not verify is nobody.
    let fake_cloud = other_peer(3, SID, 7, false);
    assert_eq!(
        h.send(&fake_cloud, &get("/light")).code,
        ResponseType::Unauthorized
    );

    // A second Mediator cannot take the owned device, whatever the PIN.
    let second = other_peer(4, "eeeeeeee-0000-0000-0000-000000000005", 9, false);
    let e = h
        .take_ownership(&second, PIN, &second.exporter)
        .unwrap_err();
    assert!(
        matches!(
            e,
            OtmError::Rejected {
                code: ResponseType::Forbidden,
                ..
            }
        ),
        "{e:?}"
    );
    // Not even when the ACL check is skipped.
    let conn = Connection {
        session_id: 4,
        exporter: &second.exporter,
        peer: second.cert.as_ref(),
    };
    let r = h.otm.handle(&otm::step1_request(&[0x41; 33]), &conn, h.now);
    assert_eq!(r.response.code, ResponseType::Forbidden);
    // A non-owner cannot write the configuration.
    assert_eq!(
        h.send(&second, &post(PSTAT_HREF, dos(2))).code,
        ResponseType::Unauthorized
    );
    assert_eq!(
        h.send(&second, &post(ACL2_HREF, cloud_ace())).code,
        ResponseType::Unauthorized
    );
    assert_eq!(
        h.send(&second, &delete(CRED_HREF, &[])).code,
        ResponseType::Unauthorized
    );
    assert_eq!(h.state.borrow().creds().creds().len(), 2);
}

#[test]
fn no_get_returns_secrets() {
    let mut h = Harness::new();
    let owner = onboard(&mut h);
    // A PSK for a DTLS peer (credtype 1, raw key) is accepted, stored and never shown.
    let key = b"PSK-never-shown!";
    let psk = m(vec![(
        "creds",
        Value::Array(vec![m(vec![
            ("credtype", int(1)),
            ("subjectuuid", t(SID)),
            (
                "privatedata",
                m(vec![
                    ("encoding", t("oic.sec.encoding.raw")),
                    ("data", Value::Bytes(key.to_vec())),
                ]),
            ),
        ])]),
    )]);
    assert_eq!(
        h.send(&owner, &post(CRED_HREF, psk)).code,
        ResponseType::Changed
    );
    assert_eq!(
        dtls_keys::psk_for_identity(SID.as_bytes(), h.state.borrow().creds()),
        Some(&key[..])
    );
    let mut all = Vec::new();
    for href in [DOXM_HREF, PSTAT_HREF, CRED_HREF, ACL2_HREF, CSR_HREF] {
        for iface in ["oic.if.rw", "oic.if.baseline"] {
            let mut req = get(href);
            req.query.push(("if".into(), iface.into()));
            let r = h.send(&owner, &req);
            assert_eq!(r.code, ResponseType::Content, "{href}");
            all.extend_from_slice(&r.payload);
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(!text.contains("privatedata"));
    assert!(!text.contains("PSK-never-shown!"));
    assert!(text.contains(SID), "the PSK credential itself is listed");
    assert!(!text.contains(PIN));
    assert!(!text.contains("PRIVATE KEY"));
    assert!(text.contains("oic.r.cred") && text.contains("BEGIN CERTIFICATE"));
    // Nor does Debug of anything the daemon might log.
    let dbg = format!("{:?} {:?} {:?}", h.state.borrow(), h.otm, owner.cert);
    assert!(!dbg.contains(PIN), "{dbg}");
    assert!(dbg.contains("Psk(<16 bytes>)"), "{dbg}");
}

#[test]
fn otm_refusals_over_the_resource() {
    let mut h = Harness::new();
    // No client certificate → 4.01, and no attempt is spent.
    let anon = anonymous(5);
    let e = h.take_ownership(&anon, PIN, &anon.exporter).unwrap_err();
    assert!(
        matches!(
            e,
            OtmError::Rejected {
                code: ResponseType::Unauthorized,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(h.otm.otm().failed_attempts(), 0);
    // A certificate whose CN is not uuid:<…> is no better.
    let mut no_uuid = other_peer(6, OWNER_UUID, 1, false);
    if let Some(c) = no_uuid.cert.as_mut() {
        c.uuid = None;
    }
    assert!(h.take_ownership(&no_uuid, PIN, &no_uuid.exporter).is_err());

    // Wrong PIN: the Mediator detects it, and the device refuses a confirmation anyway.
    let owner = owner_peer(1);
    assert_eq!(
        h.take_ownership(&owner, "00000000", &owner.exporter),
        Err(OtmError::Unauthorized)
    );
    // (The Mediator stopped after step 1; a forged step 2 on that session is refused, and the
    // session is gone afterwards.)
    let r = h.send(&owner, &otm::step2_request(&[0; 32]));
    assert_eq!(r.code, ResponseType::Unauthorized, "{}", r.diagnostic());
    let r = h.send(&owner, &otm::step2_request(&[0; 32]));
    assert_eq!(r.code, ResponseType::BadRequest, "{}", r.diagnostic());

    // MITM: the Mediator sees another exporter than the device.
    let e = h.take_ownership(&owner, PIN, &[0xee; 32]).unwrap_err();
    assert_eq!(e, OtmError::Unauthorized);
    assert!(!h.state.borrow().doxm().owned);

    // Bad bodies, other methods.
    let mut bad = otm::step1_request(&[0x41; 33]);
    bad.payload = vec![0xa0];
    assert_eq!(h.send(&owner, &bad).code, ResponseType::BadRequest);
    assert_eq!(
        h.send(&owner, &get(OTM_HREF)).code,
        ResponseType::MethodNotAllowed
    );

    // Rate limited after 5 counted attempts: 4.29 with Max-Age.
    for _ in 0..3 {
        let _ = h.take_ownership(&owner, "00000000", &owner.exporter);
    }
    assert_eq!(h.otm.otm().failed_attempts(), 5);
    let mut rng = test_rng(77);
    let (_m, msg_a) = MediatorOtm::start(&Pin::new(PIN).unwrap(), DI, &mut rng);
    let reply = h.send_full(&owner, &otm::step1_request(&msg_a));
    assert_eq!(reply.response.code, ResponseType::TooManyRequests);
    assert_eq!(reply.max_age, Some(1));
    let packet = reply.to_packet(&[1]);
    assert_eq!(
        packet.get_first_option(CoapOption::MaxAge),
        Some(&vec![1u8])
    );
    // After the delay the right PIN works.
    h.now += Duration::from_secs(1);
    let exporter = owner.exporter;
    assert!(h.take_ownership(&owner, PIN, &exporter).is_ok());
}

#[test]
fn pstat_updates_are_validated() {
    let mut h = Harness::new();
    let owner = onboard(&mut h);
    let refuse = |h: &mut Harness, body: Value, want: &str| {
        let r = h.send(&owner, &post(PSTAT_HREF, body));
        assert_eq!(r.code, ResponseType::BadRequest);
        assert!(
            r.diagnostic().contains(want),
            "{:?} lacks {want:?}",
            r.diagnostic()
        );
    };
    refuse(&mut h, dos(1), "cannot change from RFNOP (3) to RFOTM (1)");
    refuse(&mut h, dos(9), "dos.s");
    refuse(
        &mut h,
        m(vec![("dos", m(vec![("p", Value::Bool(false))]))]),
        "read-only",
    );
    refuse(&mut h, m(vec![("dos", m(vec![]))]), "required");
    refuse(&mut h, m(vec![("isop", Value::Bool(true))]), "read-only");
    refuse(&mut h, m(vec![("tm", int(0))]), "tm");
    refuse(&mut h, m(vec![("x", int(0))]), "unknown");
    refuse(&mut h, m(vec![("rowneruuid", t("nope"))]), "UUID");
    assert_eq!(h.state.borrow().dos(), DosState::Rfnop);

    // RFNOP → SRESET → RFPRO, SRESET → RFNOP refused.
    let r = h.send(&owner, &post(PSTAT_HREF, dos(4)));
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(field(field(&body_of(&r), "dos"), "s"), &int(4));
    assert_eq!(field(&body_of(&r), "isop"), &Value::Bool(false));
    refuse(&mut h, dos(3), "cannot change");
    assert_eq!(
        h.send(&owner, &post(PSTAT_HREF, dos(2))).code,
        ResponseType::Changed
    );

    // dos.s = 0: factory reset requested, then finished by the daemon.
    h.state.borrow_mut().take_events();
    let r = h.send(&owner, &post(PSTAT_HREF, dos(0)));
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(field(field(&body_of(&r), "dos"), "p"), &Value::Bool(true));
    {
        let mut s = h.state.borrow_mut();
        assert!(s.reset_pending());
        assert!(s
            .take_events()
            .contains(&SecurityEvent::FactoryResetRequested));
        s.reset();
        assert_eq!(s.dos(), DosState::Rfotm);
        assert!(!s.doxm().owned && s.owner().is_none());
        assert!(s.creds().creds().is_empty() && s.acl().aces().is_empty());
        assert_eq!(s.di(), DI);
    }
    // The old owner is nobody now; the device can be owned again.
    assert_eq!(
        h.send(&owner, &get(PSTAT_HREF)).code,
        ResponseType::Forbidden
    );
    let exporter = owner.exporter;
    assert!(h.take_ownership(&owner, PIN, &exporter).is_ok());
}

#[test]
fn doxm_updates_are_validated() {
    let mut h = Harness::new();
    let owner = onboard(&mut h);
    for (body, want) in [
        (m(vec![("owned", Value::Bool(false))]), "read-only"),
        (m(vec![("devowneruuid", t(SID))]), "read-only"),
        (m(vec![("oxmsel", int(0))]), "selected in the clear"),
        (m(vec![("nope", int(0))]), "unknown"),
    ] {
        let r = h.send(&owner, &post(DOXM_HREF, body));
        assert_eq!(r.code, ResponseType::BadRequest);
        assert!(r.diagnostic().contains(want), "{}", r.diagnostic());
    }
    let r = h.send(
        &owner,
        &post(
            DOXM_HREF,
            m(vec![("oxmsel", int(0xFF00)), ("rowneruuid", t(SID))]),
        ),
    );
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(field(&body_of(&r), "rowneruuid"), &t(SID));
    assert!(h.state.borrow().doxm().owned);
}

#[test]
fn delete_on_cred_and_acl2() {
    let mut h = Harness::new();
    let owner = onboard(&mut h);
    assert_eq!(
        h.send(&owner, &delete(CRED_HREF, &[("credid", "99")])).code,
        ResponseType::NotFound
    );
    assert_eq!(
        h.send(&owner, &delete(CRED_HREF, &[("foo", "1")])).code,
        ResponseType::BadRequest
    );
    assert_eq!(
        h.send(&owner, &delete(CRED_HREF, &[("credid", "2")])).code,
        ResponseType::Deleted
    );
    assert_eq!(h.state.borrow().creds().creds().len(), 1);
    assert_eq!(
        h.send(&owner, &delete(ACL2_HREF, &[("aceid", "1")])).code,
        ResponseType::Deleted
    );
    assert!(h.state.borrow().acl().aces().is_empty());
    // The cloud lost its ACE.
    let cloud = other_peer(2, SID, 7, true);
    assert_eq!(
        h.send(&cloud, &get("/light")).code,
        ResponseType::Unauthorized
    );
    // Other resources are the router's: DELETE is 4.05 there.
    assert!(handle_delete(&h.state, &delete("/light", &[])).is_none());
    assert_eq!(
        h.send(&owner, &delete("/light", &[])).code,
        ResponseType::MethodNotAllowed
    );
    assert!(handle_delete(&h.state, &get(CRED_HREF)).is_none());
}

#[test]
fn state_persists_and_loads() {
    let mut h = Harness::new();
    let owner = onboard(&mut h);
    let bytes = h.state.borrow().to_cbor();
    let loaded = SecurityState::from_cbor(&bytes).unwrap();
    assert_eq!(loaded.to_cbor(), bytes);
    assert_eq!(loaded.dos(), DosState::Rfnop);
    // The owner is recognised by its key after a restart.
    let who = loaded.requester(owner.cert.as_ref(), true);
    assert!(who.is_owner && who.authenticated);
    assert_eq!(who.uuid.as_deref(), Some(OWNER_UUID));
    // Same CN, other key: not the owner, not even authenticated.
    let impostor = other_peer(8, OWNER_UUID, 1, false);
    let who = loaded.requester(impostor.cert.as_ref(), true);
    assert!(!who.is_owner && !who.authenticated && who.uuid.is_none());
    // Without TLS there is no peer at all.
    assert_eq!(
        loaded.requester(owner.cert.as_ref(), false),
        Requester::anonymous_clear()
    );

    assert!(SecurityState::from_cbor(b"garbage").is_err());
    let mut v: Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
    if let Value::Map(entries) = &mut v {
        entries[0].1 = int(99);
    }
    let mut wrong_version = Vec::new();
    ciborium::ser::into_writer(&v, &mut wrong_version).unwrap();
    let e = SecurityState::from_cbor(&wrong_version).unwrap_err();
    assert!(e.to_string().contains("version"), "{e}");

    // An interrupted reset is visible after loading.
    h.state.borrow_mut().begin_factory_reset();
    let loaded = SecurityState::from_cbor(&h.state.borrow().to_cbor()).unwrap();
    assert!(loaded.reset_pending());
    let mut fresh = SecurityState::new(DI);
    fresh.reset_with_deviceuuid("bbbbbbbb-0000-0000-0000-000000000002");
    assert_eq!(fresh.di(), "bbbbbbbb-0000-0000-0000-000000000002");
}

#[test]
fn peer_identity_from_a_certificate() {
    assert_eq!(
        uuid_from_cn("uuid:11111111-2222-3333-4444-555555555555").as_deref(),
        Some(OWNER_UUID)
    );
    assert_eq!(
        uuid_from_cn("UUID:11111111-2222-3333-4444-555555555555").as_deref(),
        Some(OWNER_UUID)
    );
    assert_eq!(uuid_from_cn("uuid:nope"), None);
    assert_eq!(uuid_from_cn("11111111-2222-3333-4444-555555555555"), None);
    assert_eq!(uuid_from_cn("ü"), None);
    let ca = crate::x509::certificates_from_pem(CA_CERT)
        .unwrap()
        .remove(0);
    let p = PeerIdentity::from_certificate_der(&ca, true).unwrap();
    assert_eq!(p.uuid, None);
    assert!(PeerIdentity::from_certificate_der(&ca[..40], true).is_err());
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// Small CBOR values with the keys the security resources look for, to reach deep into
    /// their parsers.
    fn value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("creds"),
            Just("aclist2"),
            Just("subject"),
            Just("resources"),
            Just("uuid"),
            Just("conntype"),
            Just("href"),
            Just("wc"),
            Just("if"),
            Just("permission"),
            Just("credtype"),
            Just("credusage"),
            Just("subjectuuid"),
            Just("publicdata"),
            Just("privatedata"),
            Just("data"),
            Just("encoding"),
            Just("dos"),
            Just("s"),
            Just("step"),
            Just("pake"),
            Just("confirm"),
            Just("aceid"),
            Just("credid"),
            Just("rowneruuid"),
            Just("oxmsel"),
        ];
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| Value::Integer(n.into())),
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![
                Just(SID.to_string()),
                Just("*".to_string()),
                Just("/oic/mnt".to_string()),
                Just("auth-crypt".to_string()),
                Just(OWNER_CERT.to_string()),
                ".{0,8}"
            ]
            .prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((key.clone(), inner), 0..5).prop_map(|kv| {
                    Value::Map(kv.into_iter().map(|(k, v)| (t(k), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the owner (or anyone) POSTs or DELETEs, no handler panics and every answer
        /// is a CoAP response code.
        #[test]
        fn security_resources_survive_any_body(body in value(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut h = Harness::new();
            let stranger = other_peer(3, SID, 5, false);
            let _ = h.send(&stranger, &post(OTM_HREF, body.clone()));
            let mut req = post(OTM_HREF, Value::Null);
            req.payload = raw.clone();
            let _ = h.send(&stranger, &req);
            let owner = onboard(&mut h);
            for href in [DOXM_HREF, PSTAT_HREF, CRED_HREF, ACL2_HREF, CSR_HREF, OTM_HREF] {
                let _ = h.send(&owner, &post(href, body.clone()));
                let mut req = post(href, Value::Null);
                req.payload = raw.clone();
                let _ = h.send(&owner, &req);
            }
            let _ = h.send(&owner, &delete(CRED_HREF, &[("credid", "x")]));
            // The state still round-trips through its file.
            let bytes = h.state.borrow().to_cbor();
            prop_assert!(SecurityState::from_cbor(&bytes).is_ok());
        }

        #[test]
        fn certificate_parsing_survives_any_bytes(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PeerIdentity::from_certificate_der(&raw, false);
            let text = String::from_utf8_lossy(&raw);
            let _ = crate::x509::certificates_from_pem(&format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----"));
        }
    }
}
