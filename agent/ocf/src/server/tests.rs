use std::sync::atomic::{AtomicU64, Ordering};

use ciborium::Value;

use super::*;
use crate::resource::{DeviceInfo, PlatformInfo};
use crate::security::{otm, MediatorOtm};

const DI: &str = "c0ffee00-0000-4000-8000-000000000001";
const OWNER: &str = "00000000-0000-4000-8000-0000000000aa";

fn random(buf: &mut [u8]) {
    static NEXT: AtomicU64 = AtomicU64::new(0x5eed);
    for b in buf {
        let n = NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        *b = (n >> 29) as u8;
    }
}

fn server(dev_mode: bool) -> Server {
    let device = Device::new(
        DeviceInfo {
            di: DI.into(),
            piid: "c0ffee00-0000-4000-8000-000000000002".into(),
            name: "t".into(),
            device_type: "oic.d.sensor".into(),
            spec_version: "ocf.2.5.0".into(),
            data_model_version: "ocf.res.1.3.0".into(),
            software_version: "0".into(),
        },
        PlatformInfo::default(),
    );
    let cloud = CloudSession::new(
        CloudDevice {
            di: DI.into(),
            name: "t".into(),
        },
        Timing::default(),
        1,
    );
    Server::new(
        device,
        SecurityState::new(DI),
        cloud,
        Options {
            dev_mode,
            pin: Pin::new("12345678").unwrap(),
            random,
            default_name: "board".into(),
            cloud_timing: Timing::default(),
        },
        Instant::now(),
    )
    .unwrap()
}

fn get(path: &str, interface: Option<&str>) -> Packet {
    let mut req = Request::new(Method::Get, path);
    if let Some(i) = interface {
        req.query.push(("if".into(), i.into()));
    }
    req.to_packet(&[1, 2, 3, 4])
}

fn post(path: &str, body: &str) -> Packet {
    let mut r = Request::new(Method::Post, path);
    r.content_format = Some(50);
    r.payload = body.as_bytes().to_vec();
    r.to_packet(&[5, 6, 7, 8])
}

fn code(p: &Option<Packet>) -> ResponseType {
    Response::from_packet(p.as_ref().expect("an answer"))
        .unwrap()
        .code
}

fn owner_identity() -> PeerIdentity {
    PeerIdentity {
        uuid: Some(OWNER.into()),
        spki_sha256: [7; 32],
        chain_verified: false,
    }
}

/// Takes ownership over `handle` on TLS connection `id` (the Mediator's side of the OTM).
fn take_ownership(s: &mut Server, id: u64, exporter: &[u8]) -> (ResponseType, Vec<Event>) {
    let pin = Pin::new("12345678").unwrap();
    let mut rng = random;
    let (m, msg_a) = MediatorOtm::start(&pin, DI, &mut rng);
    let now = Instant::now();
    let (p, _) = s.handle(
        Peer::Tls(id),
        &otm::step1_request(&msg_a).to_packet(&[1]),
        now,
    );
    let r = Response::from_packet(&p.unwrap()).unwrap();
    let step1 = otm::parse_step1_response(&r).unwrap();
    let confirm = m
        .finish(&step1.pake_msg_b, &step1.confirm_b, exporter)
        .unwrap();
    let (p, events) = s.handle(
        Peer::Tls(id),
        &otm::step2_request(&confirm).to_packet(&[2]),
        now,
    );
    (code(&p), events)
}

#[test]
fn clear_transports_serve_only_discovery_unless_in_development_mode() {
    let udp: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let now = Instant::now();
    let mut secure = server(false);
    for peer in [Peer::Udp(udp), Peer::Tcp(3)] {
        let c = |s: &mut Server, path, i| code(&s.handle(peer, &get(path, i), now).0);
        assert_eq!(c(&mut secure, "/oic/res", None), ResponseType::Content);
        assert_eq!(c(&mut secure, "/oic/d", None), ResponseType::Unauthorized);
        assert_eq!(
            c(&mut secure, "/oic/sec/doxm", None),
            ResponseType::Unauthorized
        );
        assert_eq!(
            c(&mut secure, "/oic/res", Some("oic.if.b")),
            ResponseType::Unauthorized
        );
    }
    // Multicast: discovery only, and the batch form not at all.
    let m = Peer::Multicast(udp);
    assert!(secure.handle(m, &get("/oic/res", None), now).0.is_some());
    assert!(secure.handle(m, &get("/oic/d", None), now).0.is_none());
    assert!(secure
        .handle(m, &get("/oic/res", Some("oic.if.b")), now)
        .0
        .is_none());
    // The ownership transfer is refused in the clear before it is looked at.
    assert_eq!(
        code(&secure.handle(Peer::Tcp(3), &post(OTM_HREF, "{}"), now).0),
        ResponseType::Unauthorized
    );

    let mut dev = server(true);
    assert_eq!(
        code(&dev.handle(Peer::Udp(udp), &get("/oic/d", None), now).0),
        ResponseType::Content
    );
    assert!(dev
        .handle(m, &get("/oic/res", Some("oic.if.b")), now)
        .0
        .is_some());
}

#[test]
fn ownership_closes_the_connections_opened_before_and_the_owner_gets_in() {
    let mut s = server(false);
    let now = Instant::now();
    s.open(
        1,
        ConnKind::Tls {
            identity: Some(owner_identity()),
            exporter: vec![5; 32],
        },
    );
    s.open(
        2,
        ConnKind::Tls {
            identity: None,
            exporter: vec![6; 32],
        },
    );
    s.open(3, ConnKind::Cloud { identity: None });
    assert_eq!(
        code(&s.handle(Peer::Tls(1), &get("/oic/sec/cred", None), now).0),
        ResponseType::Forbidden
    );
    // Not over the cloud link.
    assert_eq!(
        code(&s.handle(Peer::Cloud(3), &post(OTM_HREF, "{}"), now).0),
        ResponseType::Unauthorized
    );
    let (c, events) = take_ownership(&mut s, 1, &[5; 32]);
    assert_eq!(c, ResponseType::Changed);
    assert!(
        matches!(events.first(), Some(Event::PersistSecurityState(_))),
        "persisted before the answer: {events:?}"
    );
    assert!(
        events.contains(&Event::CloseConnections(vec![2])),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::Security(SecurityEvent::OwnershipTransferred {
            owner_uuid: OWNER.into()
        }))
    );
    assert_eq!(s.security().borrow().dos(), DosState::Rfpro);
    // The owner, now and on a later connection with the same key; nobody else.
    assert_eq!(
        code(&s.handle(Peer::Tls(1), &get("/oic/sec/cred", None), now).0),
        ResponseType::Content
    );
    s.open(
        4,
        ConnKind::Tls {
            identity: Some(owner_identity()),
            exporter: vec![8; 32],
        },
    );
    assert_eq!(
        code(&s.handle(Peer::Tls(4), &get("/oic/sec/acl2", None), now).0),
        ResponseType::Content
    );
    s.close(2);
    s.open(
        5,
        ConnKind::Tls {
            identity: None,
            exporter: vec![9; 32],
        },
    );
    assert_eq!(
        code(&s.handle(Peer::Tls(5), &get("/oic/sec/cred", None), now).0),
        ResponseType::Unauthorized
    );
    // A second ownership transfer is refused.
    let mut rng = random;
    let (_, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut rng);
    let (p, _) = s.handle(
        Peer::Tls(4),
        &otm::step1_request(&msg_a).to_packet(&[1]),
        now,
    );
    assert_eq!(code(&p), ResponseType::Forbidden);
}

fn owned_rfnop(s: &mut Server) {
    s.open(
        1,
        ConnKind::Tls {
            identity: Some(owner_identity()),
            exporter: vec![5; 32],
        },
    );
    assert_eq!(take_ownership(s, 1, &[5; 32]).0, ResponseType::Changed);
    let (p, events) = s.handle(
        Peer::Tls(1),
        &post("/oic/sec/pstat", r#"{"dos":{"s":3}}"#),
        Instant::now(),
    );
    assert_eq!(code(&p), ResponseType::Changed);
    assert!(events.contains(&Event::CloudMayStart), "{events:?}");
    assert!(s.cloud_allowed());
}

#[test]
fn a_factory_reset_from_oic_mnt_is_recorded_before_the_answer_and_asked_for_once() {
    let mut s = server(false);
    owned_rfnop(&mut s);
    let (p, events) = s.handle(
        Peer::Tls(1),
        &post("/oic/mnt", r#"{"fr":true}"#),
        Instant::now(),
    );
    assert_eq!(code(&p), ResponseType::Changed);
    let Some(Event::PersistSecurityState(bytes)) = events.first() else {
        panic!("the reset is persisted first: {events:?}");
    };
    assert!(SecurityState::from_cbor(bytes).unwrap().reset_pending());
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == Event::FactoryResetRequested)
            .count(),
        1,
        "{events:?}"
    );
    assert_eq!(s.take_maintenance_request(), Some(Action::FactoryReset));
    // Asked again on the console while it runs: the same reset. (In RESET nobody may write
    // /oic/mnt or pstat any more: the ACL answers that.)
    let (ticket, _) = s.request_factory_reset(Instant::now()).unwrap();
    assert_eq!(s.take_maintenance_request(), None, "no second reset");
    assert_eq!(
        code(
            &s.handle(
                Peer::Tls(1),
                &post("/oic/mnt", r#"{"rb":true}"#),
                Instant::now()
            )
            .0
        ),
        ResponseType::Forbidden
    );
    s.maintenance_finished(Some(MaintenanceError::DeregistrationIncomplete));
    assert_eq!(
        s.maintenance().borrow().outcome(ticket),
        Some(Some(MaintenanceError::DeregistrationIncomplete)),
        "the console gets the running reset's real outcome"
    );
}

#[test]
fn pstat_reset_asks_for_the_reset_and_the_new_identity_closes_the_gate() {
    let mut s = server(false);
    owned_rfnop(&mut s);
    let (p, events) = s.handle(
        Peer::Tls(1),
        &post("/oic/sec/pstat", r#"{"dos":{"s":0}}"#),
        Instant::now(),
    );
    assert_eq!(code(&p), ResponseType::Changed);
    assert!(events.contains(&Event::FactoryResetRequested), "{events:?}");
    assert!(s.cloud_allowed(), "the reset decides the gate");
    assert_eq!(s.take_maintenance_request(), Some(Action::FactoryReset));
    // The wipe (the daemon's files) resets the state with a new di; the server takes it.
    let new_di = "c0ffee00-0000-4000-8000-0000000000ff";
    s.security().borrow_mut().reset_with_deviceuuid(new_di);
    let events = s.renew_identity(Instant::now());
    assert!(!s.cloud_allowed());
    assert!(
        !events.contains(&Event::FactoryResetRequested),
        "{events:?}"
    );
    assert_eq!(s.device().info().di, new_di);
    assert_eq!(s.device().name(), "board");
    // The former owner is a stranger now.
    assert_eq!(
        code(
            &s.handle(Peer::Tls(1), &get("/oic/sec/cred", None), Instant::now())
                .0
        ),
        ResponseType::Forbidden
    );
    let v: Value = ciborium::from_reader(
        &Response::from_packet(
            &s.handle(Peer::Tls(1), &get("/oic/d", None), Instant::now())
                .0
                .unwrap(),
        )
        .unwrap()
        .payload[..],
    )
    .unwrap();
    assert!(format!("{v:?}").contains(new_di));
}

#[test]
fn batch_items_follow_the_requesters_rights_also_over_the_cloud() {
    let mut s = server(false);
    owned_rfnop(&mut s);
    let sid = "9b8c6a0e-1f2d-4e3c-8a7b-6c5d4e3f2a1b";
    s.open(
        9,
        ConnKind::Cloud {
            identity: Some(PeerIdentity {
                uuid: Some(sid.into()),
                spki_sha256: [1; 32],
                chain_verified: true,
            }),
        },
    );
    let hrefs = |s: &mut Server, peer| -> String {
        let p = s
            .handle(peer, &get("/oic/res", Some("oic.if.b")), Instant::now())
            .0;
        let r = Response::from_packet(&p.unwrap()).unwrap();
        assert_eq!(r.code, ResponseType::Content);
        let v: Value = ciborium::from_reader(&r.payload[..]).unwrap();
        format!("{v:?}")
    };
    assert!(!hrefs(&mut s, Peer::Cloud(9)).contains("/oic/mnt"));
    assert!(
        hrefs(&mut s, Peer::Tls(1)).contains("/oic/mnt"),
        "the owner"
    );
    assert_eq!(
        code(
            &s.handle(Peer::Cloud(9), &get("/oic/mnt", None), Instant::now())
                .0
        ),
        ResponseType::Unauthorized
    );
}

// ---------------------------------------------------------------------------------------------
// The standard ownership transfer (Random PIN, Manufacturer Certificate) over a DOC
// ---------------------------------------------------------------------------------------------

mod standard_otm {
    use super::*;
    use crate::security::doc::SessionAuth;
    use crate::security::doxm::{OXM_MFG_CERT, OXM_RANDOM_PIN, OXM_SPAKE2};
    use crate::security::dtls_keys::{
        owner_psk, pin_psk, uuid_bytes, Oxm, SessionSecrets, RDP_IDENTITY,
        TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256,
    };

    const UDP: &str = "192.0.2.7:40000";
    const NEW_DI: &str = "c0ffee00-0000-4000-8000-0000000000dd";

    fn udp() -> Peer {
        Peer::Udp(UDP.parse().unwrap())
    }

    fn secrets() -> SessionSecrets {
        SessionSecrets {
            master_secret: [0x11; 48],
            client_random: [0x22; 32],
            server_random: [0x33; 32],
            suite: TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256,
        }
    }

    /// The owner credential with an empty raw key (CBOR: JSON has no byte strings).
    fn empty_owner_cred() -> Packet {
        let text = |t: &str| Value::Text(t.into());
        let body = Value::Map(vec![
            (
                text("creds"),
                Value::Array(vec![Value::Map(vec![
                    (text("credtype"), Value::Integer(1.into())),
                    (text("subjectuuid"), text(OWNER)),
                    (
                        text("privatedata"),
                        Value::Map(vec![
                            (text("encoding"), text("oic.sec.encoding.raw")),
                            (text("data"), Value::Bytes(Vec::new())),
                        ]),
                    ),
                ])]),
            ),
            (text("rowneruuid"), text(OWNER)),
        ]);
        let mut r = Request::new(Method::Post, crate::security::CRED_HREF);
        r.content_format = Some(60);
        ciborium::ser::into_writer(&body, &mut r.payload).unwrap();
        r.to_packet(&[9])
    }

    fn offering() -> Server {
        let mut s = server(false);
        s.set_offered_oxms(&[OXM_RANDOM_PIN, OXM_MFG_CERT]);
        s
    }

    fn shown_pin(events: &[Event]) -> Option<Pin> {
        events.iter().find_map(|e| match e {
            Event::ShowRandomPin(p) => Some(p.clone()),
            _ => None,
        })
    }

    /// POSTs `body` to `href` as `peer`, which must be answered 2.04; the events.
    fn post_changed(
        s: &mut Server,
        peer: Peer,
        href: &str,
        body: &str,
        now: Instant,
    ) -> Vec<Event> {
        let (p, events) = s.handle(peer, &post(href, body), now);
        let r = Response::from_packet(p.as_ref().unwrap()).unwrap();
        assert_eq!(
            r.code,
            ResponseType::Changed,
            "{href} {body}: {}",
            r.diagnostic()
        );
        events
    }

    fn doxm(s: &mut Server, peer: Peer) -> serde_json::Value {
        let (p, _) = s.handle(peer, &get(DOXM_HREF, None), Instant::now());
        let r = Response::from_packet(&p.unwrap()).unwrap();
        assert_eq!(r.code, ResponseType::Content, "{}", r.diagnostic());
        let v: Value = ciborium::de::from_reader(&r.payload[..]).unwrap();
        crate::model::content::cbor_to_json(&v).unwrap()
    }

    /// Selects Random PIN in the clear and opens the DOC with the PIN's key: the steps of
    /// iotivity-lite's OBT (`oc_obt_otm_randompin.c`) up to the handshake.
    fn open_rdp_doc(s: &mut Server, id: u64) -> Pin {
        let (p, events) = s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":1}"#), Instant::now());
        assert_eq!(code(&p), ResponseType::Changed);
        let pin = shown_pin(&events).expect("a fresh PIN to show");
        let (key, auth) = s
            .dtls_psk(RDP_IDENTITY, Instant::now())
            .expect("the PIN's key");
        assert_eq!(
            key,
            pin_psk(pin.expose().as_bytes(), &uuid_bytes(DI).unwrap())
        );
        assert_eq!(auth, SessionAuth::RandomPin);
        s.open(
            id,
            ConnKind::Dtls {
                auth,
                secrets: Some(secrets()),
            },
        );
        pin
    }

    #[test]
    fn doxm_lists_the_offered_methods_and_the_selection() {
        let mut s = offering();
        let d = doxm(&mut s, udp());
        assert_eq!(d["oxms"], serde_json::json!([1, 2, 65280]));
        assert_eq!(d["oxmsel"], 65280);
        let mut plain = server(false);
        plain.open(
            9,
            ConnKind::Tls {
                identity: None,
                exporter: vec![0; 32],
            },
        );
        assert_eq!(
            doxm(&mut plain, Peer::Tls(9))["oxms"],
            serde_json::json!([65280])
        );
    }

    #[test]
    fn the_method_is_selected_in_the_clear_only_among_those_offered_while_unowned() {
        let mut s = server(false);
        let (p, events) = s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":1}"#), Instant::now());
        assert_eq!(
            code(&p),
            ResponseType::Unauthorized,
            "no standard method is offered here"
        );
        assert!(shown_pin(&events).is_none());
        let mut s = offering();
        for body in [
            r#"{"oxmsel":0}"#,
            r#"{"oxmsel":7}"#,
            r#"{"owned":true}"#,
            r#"{"oxmsel":1,"owned":true}"#,
        ] {
            let (p, _) = s.handle(udp(), &post(DOXM_HREF, body), Instant::now());
            assert_eq!(code(&p), ResponseType::BadRequest, "{body}");
        }
        let (p, _) = s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":2}"#), Instant::now());
        assert_eq!(code(&p), ResponseType::Changed);
        assert_eq!(doxm(&mut s, udp())["oxmsel"], 2);
        // Other writes in the clear stay refused.
        let (p, _) = s.handle(udp(), &post(PSTAT_HREF, r#"{"om":4}"#), Instant::now());
        assert_eq!(code(&p), ResponseType::Unauthorized);
        let (p, _) = s.handle(
            udp(),
            &get(crate::security::CRED_HREF, None),
            Instant::now(),
        );
        assert_eq!(code(&p), ResponseType::Unauthorized);
    }

    #[test]
    fn a_random_pin_is_fresh_per_selection_and_answers_one_handshake_within_its_lifetime() {
        let mut s = offering();
        assert!(
            s.dtls_psk(RDP_IDENTITY, Instant::now()).is_none(),
            "no PIN selected yet"
        );
        let (_, e1) = s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":1}"#), Instant::now());
        let pin1 = shown_pin(&e1).unwrap();
        assert!(
            format!("{e1:?}").find(pin1.expose()).is_none(),
            "events never print the PIN"
        );
        let (_, e2) = s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":1}"#), Instant::now());
        let pin2 = shown_pin(&e2).unwrap();
        assert_ne!(pin1, pin2);
        let start = Instant::now();
        assert!(s.dtls_psk(RDP_IDENTITY, start).is_some());
        assert!(
            s.dtls_psk(RDP_IDENTITY, start).is_none(),
            "one handshake per PIN"
        );
        let (_, e3) = s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":1}"#), start);
        assert!(shown_pin(&e3).is_some());
        assert!(
            s.dtls_psk(RDP_IDENTITY, start + RDP_PIN_LIFETIME).is_none(),
            "expired"
        );
        // With another method selected, the PIN identity opens nothing.
        let (_, e4) = s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":1}"#), start);
        assert!(shown_pin(&e4).is_some());
        s.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":2}"#), start);
        assert!(s.dtls_psk(RDP_IDENTITY, start).is_none());
    }

    #[test]
    fn random_pin_ownership_transfer_as_iotivity_lite_s_obt_does_it() {
        let mut s = offering();
        open_rdp_doc(&mut s, 10);
        // A second connection opened before the transfer is closed by it.
        s.open(
            11,
            ConnKind::Tls {
                identity: None,
                exporter: vec![0; 32],
            },
        );
        // While the DOC is open, the clear side is closed again.
        let (p, _) = s.handle(udp(), &get(DOXM_HREF, None), Instant::now());
        assert_eq!(code(&p), ResponseType::Unauthorized);
        let doc = Peer::Dtls(10);
        let now = Instant::now();
        let steps = [
            (PSTAT_HREF, r#"{"om":4}"#.to_string()),
            (DOXM_HREF, format!(r#"{{"devowneruuid":"{OWNER}"}}"#)),
            (DOXM_HREF, format!(r#"{{"deviceuuid":"{NEW_DI}"}}"#)),
            (DOXM_HREF, format!(r#"{{"rowneruuid":"{OWNER}"}}"#)),
            (
                crate::security::ACL2_HREF,
                format!(r#"{{"rowneruuid":"{OWNER}"}}"#),
            ),
            (PSTAT_HREF, format!(r#"{{"rowneruuid":"{OWNER}"}}"#)),
        ];
        let mut all = Vec::new();
        for (href, body) in &steps {
            all.extend(post_changed(&mut s, doc, href, body, now));
        }
        let (p, _) = s.handle(doc, &empty_owner_cred(), now);
        assert_eq!(code(&p), ResponseType::Changed);
        assert!(all.contains(&Event::DeviceIdChanged(NEW_DI.into())));
        assert_eq!(s.device().info().di, NEW_DI);
        // The derived owner PSK is OCF's, over the device's new UUID.
        let expected = owner_psk(
            &secrets(),
            Oxm::RandomPin,
            &uuid_bytes(OWNER).unwrap(),
            &uuid_bytes(NEW_DI).unwrap(),
        )
        .unwrap();
        assert_eq!(
            s.security().borrow().creds().psk_for(OWNER),
            Some(&expected[..])
        );
        // `oxmsel` cannot change inside the DOC.
        let (p, _) = s.handle(doc, &post(DOXM_HREF, r#"{"oxmsel":2}"#), now);
        assert_eq!(code(&p), ResponseType::BadRequest);
        let (p, events) = s.handle(doc, &post(DOXM_HREF, r#"{"owned":true}"#), now);
        assert_eq!(code(&p), ResponseType::Changed);
        assert!(
            events.contains(&Event::CloseConnections(vec![11])),
            "{events:?}"
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::PersistSecurityState(_))));
        s.close(10);
        s.close(11);
        // The owner comes back over DTLS with the owner PSK (identity = its UUID, raw).
        let (key, auth) = s
            .dtls_psk(&uuid_bytes(OWNER).unwrap(), now)
            .expect("the owner PSK");
        assert_eq!(key, expected);
        assert_eq!(
            auth,
            SessionAuth::Psk {
                subject: OWNER.into()
            }
        );
        assert!(
            s.dtls_psk(OWNER.as_bytes(), now).is_some(),
            "the text form too"
        );
        s.open(
            12,
            ConnKind::Dtls {
                auth,
                secrets: None,
            },
        );
        assert!(s.is_owner_connection(12));
        let (p, _) = s.handle(Peer::Dtls(12), &post(PSTAT_HREF, r#"{"dos":{"s":2}}"#), now);
        assert_eq!(code(&p), ResponseType::Changed);
        assert_eq!(s.security().borrow().dos(), DosState::Rfpro);
        let (p, _) = s.handle(Peer::Dtls(12), &get(crate::security::CRED_HREF, None), now);
        assert_eq!(code(&p), ResponseType::Content);
        // A stranger's PSK identity gets nothing; a later DOC is impossible.
        assert!(s.dtls_psk(&uuid_bytes(DI).unwrap(), now).is_none());
        assert!(s.dtls_psk(RDP_IDENTITY, now).is_none());
    }

    #[test]
    fn a_doc_cannot_finish_without_an_owner_nor_derive_outside_a_dtls_session() {
        let mut s = offering();
        open_rdp_doc(&mut s, 10);
        let now = Instant::now();
        let (p, _) = s.handle(Peer::Dtls(10), &post(DOXM_HREF, r#"{"owned":true}"#), now);
        assert_eq!(code(&p), ResponseType::BadRequest);
        // No DOC: the Random PIN session without the PIN selected is nobody.
        let mut t = offering();
        t.open(
            20,
            ConnKind::Dtls {
                auth: SessionAuth::RandomPin,
                secrets: Some(secrets()),
            },
        );
        let (p, _) = t.handle(
            Peer::Dtls(20),
            &post(DOXM_HREF, &format!(r#"{{"devowneruuid":"{OWNER}"}}"#)),
            now,
        );
        assert_eq!(code(&p), ResponseType::Forbidden);
        // A Manufacturer Certificate DOC over coaps+tcp has no key block: the key is sent.
        let mut m = offering();
        m.handle(udp(), &post(DOXM_HREF, r#"{"oxmsel":2}"#), now);
        m.open(
            30,
            ConnKind::Tls {
                identity: Some(owner_identity()),
                exporter: vec![0; 32],
            },
        );
        let (p, _) = m.handle(Peer::Tls(30), &empty_owner_cred(), now);
        let r = Response::from_packet(p.as_ref().unwrap()).unwrap();
        assert_eq!(r.code, ResponseType::BadRequest);
        assert!(
            r.diagnostic().contains("send the key"),
            "{}",
            r.diagnostic()
        );
        let sent = format!(
            r#"{{"creds":[{{"credtype":1,"subjectuuid":"{OWNER}","privatedata":{{"encoding":"oic.sec.encoding.base64","data":"AAECAwQFBgcICQoLDA0ODw=="}}}}],"rowneruuid":"{OWNER}"}}"#
        );
        for (href, body) in [
            (DOXM_HREF, format!(r#"{{"devowneruuid":"{OWNER}"}}"#)),
            (crate::security::CRED_HREF, sent),
            (
                DOXM_HREF,
                format!(r#"{{"rowneruuid":"{OWNER}","owned":true}}"#),
            ),
            (PSTAT_HREF, r#"{"dos":{"s":2}}"#.to_string()),
        ] {
            post_changed(&mut m, Peer::Tls(30), href, &body, now);
        }
        // The Mediator's certificate is the owner's from now on.
        assert!(m.is_owner_connection(30));
        let psk: Vec<u8> = (0..16).collect();
        assert_eq!(m.security().borrow().creds().psk_for(OWNER), Some(&psk[..]));
        assert_eq!(m.security().borrow().dos(), DosState::Rfpro);
        // A stranger's certificate on coaps+tcp is not the owner.
        let mut stranger = owner_identity();
        stranger.spki_sha256 = [8; 32];
        m.open(
            31,
            ConnKind::Tls {
                identity: Some(stranger),
                exporter: vec![0; 32],
            },
        );
        assert!(!m.is_owner_connection(31));
        // SPAKE2 stays the default and needs no selection.
        assert_eq!(server(false).security().borrow().doxm().oxmsel, OXM_SPAKE2);
    }
}
