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
