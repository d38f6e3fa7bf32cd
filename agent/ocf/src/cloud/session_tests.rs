//! Unit tests of [`CloudSession`] on a virtual clock: `Instant::now()` once, then Durations.

use std::time::{Duration, Instant};

use coap_lite::{MessageClass, Packet, ResponseType};
use serde_json::{json, Value};

use super::*;
use crate::cloud::payload::{from_cbor, to_cbor, CloudServer, LinkPolicy};
use crate::cloud::schedule::backoff_ceiling;

const DI: &str = "c0ffee00-0000-4000-8000-000000000001";
const SID: &str = "00000000-0000-0000-0000-000000000001";
const ALT_SID: &str = "00000000-0000-0000-0000-000000000002";
const CIS: &str = "coaps+tcp://cloud.example:5684";
const ALT_CIS: &str = "coaps+tcp://alt.example:5684";
const AT: &str = "code-SECRET-at";
const AT1: &str = "AT1-SECRET";
const RT1: &str = "RT1-SECRET";
const UID: &str = "auth0|user-1";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn conf() -> CloudConf {
    CloudConf {
        cis: CIS.into(),
        sid: SID.into(),
        apn: "plgd".into(),
        at: AT.into(),
        servers: vec![],
    }
}

fn device() -> DeviceInfo {
    DeviceInfo {
        di: DI.into(),
        name: "Pi".into(),
    }
}

fn link(href: &str, rt: &str) -> RdLink {
    RdLink {
        href: href.into(),
        rt: vec![rt.into()],
        ifs: vec!["oic.if.baseline".into()],
        p: Some(LinkPolicy { bm: 3 }),
        ..Default::default()
    }
}

/// A decoded request the session sent.
#[derive(Debug, Clone)]
struct Req {
    code: u8,
    path: String,
    queries: Vec<String>,
    body: Value,
    token: Vec<u8>,
}

impl Req {
    fn from_packet(p: &Packet) -> Self {
        Req {
            code: p.header.code.into(),
            path: uri_path(p),
            queries: p
                .get_option(CoapOption::UriQuery)
                .into_iter()
                .flatten()
                .map(|q| String::from_utf8(q.clone()).unwrap())
                .collect(),
            body: if p.payload.is_empty() {
                Value::Null
            } else {
                from_cbor(&p.payload).unwrap()
            },
            token: p.get_token().to_vec(),
        }
    }
}

/// A one-line description of an action, for readable assertions.
fn describe(a: &Action) -> String {
    match a {
        Action::Connect { uri, sid } => format!("Connect {uri} {sid}"),
        Action::Disconnect => "Disconnect".into(),
        Action::Send(p) => {
            let r = Req::from_packet(p);
            let m = match r.code {
                0x02 => "POST",
                0x04 => "DELETE",
                _ => "?",
            };
            format!("{m} {}", r.path)
        }
        Action::SendPing { .. } => "Ping".into(),
        Action::Event(SessionEvent::Persist(s)) => format!("Persist {}", s.cps),
        Action::Event(SessionEvent::StatusChanged { cps, clec }) => {
            format!("Status {cps} {}", clec.as_u8())
        }
        Action::Event(SessionEvent::Registered { uid }) => format!("Registered {uid}"),
        Action::Event(SessionEvent::SignedIn { expiresin }) => format!("SignedIn {expiresin}"),
        Action::Event(SessionEvent::Published { links }) => format!("Published {}", links.len()),
        Action::Event(SessionEvent::Unpublished { hrefs }) => {
            format!("Unpublished {}", hrefs.join(","))
        }
        Action::Event(SessionEvent::Deregistered) => "Deregistered".into(),
        Action::Event(SessionEvent::SignedOut) => "SignedOut".into(),
        Action::Event(SessionEvent::ClockBehind) => "ClockBehind".into(),
    }
}

fn response(token: &[u8], code: ResponseType, body: Option<Value>) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(code);
    p.set_token(token.to_vec());
    if let Some(b) = body {
        p.add_option_as(CoapOption::ContentFormat, OptionValueU16(CF_OCF_CBOR));
        p.payload = to_cbor(&b).unwrap();
    }
    p
}

fn sign_up_ok(expiresin: i64) -> Value {
    json!({"accesstoken": AT1, "refreshtoken": RT1, "uid": UID, "expiresin": expiresin,
           "redirecturi": "", "rt": ["oic.r.account"]})
}

/// The test bench: a session, a virtual clock, and everything it emitted.
struct Bench {
    s: CloudSession,
    now: Instant,
    /// The last [`Action::Event(SessionEvent::Persist)`] drained: what the driver's state file holds.
    saved: Option<PersistedState>,
}

impl Bench {
    fn new() -> Self {
        Self::with(CloudSession::new(device(), Timing::default(), 42))
    }

    fn with(s: CloudSession) -> Self {
        // The only clock reading: everything else is this instant plus Durations.
        Bench {
            s,
            now: Instant::now(),
            saved: None,
        }
    }

    fn restore(state: PersistedState) -> Self {
        Self::with(CloudSession::restore(state, device(), Timing::default(), 42).unwrap())
    }

    fn drain(&mut self) -> Vec<Action> {
        let actions: Vec<Action> = std::iter::from_fn(|| self.s.poll_action()).collect();
        if let Some(state) = persisted(&actions) {
            self.saved = Some(state);
        }
        actions
    }

    fn log(&mut self) -> Vec<String> {
        self.drain().iter().map(describe).collect()
    }

    /// Jumps to the next timeout and handles it.
    fn fire(&mut self) -> Vec<Action> {
        let at = self.s.poll_timeout().expect("a timer is armed");
        assert!(at >= self.now, "timer in the past");
        self.now = at;
        self.s.handle_timeout(self.now);
        self.drain()
    }

    fn fire_log(&mut self) -> Vec<String> {
        self.fire().iter().map(describe).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Fires timers up to `until`, answering every Ping at once; returns the other actions.
    fn run_until(&mut self, until: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(at) = self.s.poll_timeout() {
            if at > until {
                break;
            }
            for a in self.fire() {
                match a {
                    Action::SendPing { token } => {
                        assert!(self.s.handle_pong(&token, self.now));
                    }
                    other => out.push(other),
                }
            }
        }
        self.now = self.now.max(until);
        out
    }

    fn respond(&mut self, req: &Req, code: ResponseType, body: Option<Value>) -> Vec<Action> {
        assert!(self
            .s
            .handle_response(&response(&req.token, code, body), self.now));
        self.drain()
    }

    fn respond_log(&mut self, req: &Req, code: ResponseType, body: Option<Value>) -> Vec<String> {
        self.respond(req, code, body).iter().map(describe).collect()
    }

    fn connected(&mut self) -> Vec<Action> {
        self.s.handle_connected(self.now);
        self.drain()
    }

    /// Configures, provisions, connects: returns the sign-up request.
    fn until_sign_up(&mut self) -> Req {
        self.s.configure(conf(), self.now).unwrap();
        self.s.set_provisioned(true, self.now);
        self.drain();
        only_send(&self.connected())
    }

    /// All the way to signed in (and published, if there are links).
    fn signed_in(&mut self, expiresin: i64) {
        let up = self.until_sign_up();
        let sign_in =
            only_send(&self.respond(&up, ResponseType::Changed, Some(sign_up_ok(expiresin))));
        let after = self.respond(
            &sign_in,
            ResponseType::Changed,
            Some(json!({"expiresin": expiresin})),
        );
        if let Some(publish) = sends(&after).into_iter().next() {
            let links: Vec<Value> = publish.body["links"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, l)| json!({"href": l["href"], "ins": i + 1}))
                .collect();
            self.respond(
                &publish,
                ResponseType::Changed,
                Some(json!({"links": links})),
            );
        }
        assert!(self.s.is_signed_in());
    }
}

fn sends(actions: &[Action]) -> Vec<Req> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(Req::from_packet(p)),
            _ => None,
        })
        .collect()
}

fn only_send(actions: &[Action]) -> Req {
    let s = sends(actions);
    assert_eq!(
        s.len(),
        1,
        "{:?}",
        actions.iter().map(describe).collect::<Vec<_>>()
    );
    s.into_iter().next().unwrap()
}

fn persisted(actions: &[Action]) -> Option<PersistedState> {
    actions.iter().rev().find_map(|a| match a {
        Action::Event(SessionEvent::Persist(s)) => Some((**s).clone()),
        _ => None,
    })
}

/// `l` as the session publishes it: `rel` defaults to `hosts`.
fn hosted(l: &RdLink) -> RdLink {
    let mut l = l.clone();
    if l.rel.is_empty() {
        l.rel.push(REL_HOSTS.to_owned());
    }
    l
}

fn registered_state(expiresin: i64) -> PersistedState {
    PersistedState {
        version: PersistedState::VERSION,
        cps: Cps::Registered,
        clec: Clec::Ok,
        conf: Some(CloudConf {
            at: Secret::default(),
            ..conf()
        }),
        registration: Some(Registration {
            uid: UID.into(),
            accesstoken: AT1.into(),
            refreshtoken: RT1.into(),
            expiresin,
        }),
        published: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The reference flow
// ---------------------------------------------------------------------------------------------

/// OCF-PROTOCOL.md §1 and the iotivity-lite wire trace §7.6: sign-up, sign-in, publish (ttl 0,
/// `?rt=oic.wk.rdpub`), Ping every 20 s, with the reference device's payload keys and options.
#[test]
fn reference_device_compatible_sequence() {
    let mut b = Bench::new();
    b.s.set_links(
        vec![
            link("/oic/d", "oic.wk.d"),
            link("/light/1", "core.light"),
            link("/oic/res", "oic.wk.res"),
            link("/CoapCloudConfResURI", "oic.r.coapcloudconf"),
            link("/oic/sec/doxm", "oic.r.doxm"),
            link("/oc/wk/introspection", "oic.wk.introspection"),
        ],
        b.now,
    );
    assert!(b.drain().is_empty());
    assert_eq!(b.s.cps(), Cps::Uninitialized);

    // CoAPCloudConf written in RFPRO: readytoregister, persisted, no traffic yet.
    b.s.configure(conf(), b.now).unwrap();
    let a = b.drain();
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["Status readytoregister 0", "Persist readytoregister"]
    );
    assert_eq!(persisted(&a).unwrap().conf.unwrap().at.expose(), AT);
    assert_eq!(b.s.poll_timeout(), None);

    // RFNOP: connect.
    b.s.set_provisioned(true, b.now);
    assert_eq!(
        b.log(),
        [
            "Status registering 0".to_owned(),
            format!("Connect {CIS} {SID}")
        ]
    );

    // First frame: the sign-up POST, no CSM (that is the framing layer's business).
    let a = b.connected();
    let up = only_send(&a);
    assert_eq!((up.code, up.path.as_str()), (0x02, "/oic/sec/account"));
    assert_eq!(
        up.body,
        json!({"di": DI, "accesstoken": AT, "authprovider": "plgd", "devicetype": "device"})
    );
    assert_eq!(up.token.len(), 8);
    let Action::Send(p) = &a[0] else {
        unreachable!()
    };
    let opt = |n: u16| {
        p.get_first_option_as::<OptionValueU16>(CoapOption::from(n))
            .and_then(Result::ok)
            .map(|v| v.0)
    };
    assert_eq!(opt(12), Some(10000), "Content-Format");
    assert_eq!(opt(17), Some(10000), "Accept");
    assert_eq!(opt(2049), Some(0x0800));
    assert_eq!(opt(2053), Some(0x0800));

    // 2.04 → registered, persisted (without `at`), sign-in at once.
    let a = b.respond(&up, ResponseType::Changed, Some(sign_up_ok(3600)));
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        [
            "Status registered 0".to_owned(),
            "Persist registered".into(),
            format!("Registered {UID}"),
            "POST /oic/sec/session".into()
        ]
    );
    let st = persisted(&a).unwrap();
    assert!(st.conf.as_ref().unwrap().at.is_empty(), "at is single-use");
    let reg = st.registration.unwrap();
    assert_eq!(
        (
            reg.uid.as_str(),
            reg.accesstoken.expose(),
            reg.refreshtoken.expose()
        ),
        (UID, AT1, RT1)
    );
    let sign_in = only_send(&a);
    assert_eq!(
        sign_in.body,
        json!({"uid": UID, "di": DI, "accesstoken": AT1, "login": true})
    );

    // Sign-in 2.04 → publish of the discoverable links, except discovery/security/cloud conf.
    let a = b.respond(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": 3600})),
    );
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["SignedIn 3600", "POST /oic/rd"],
        "no Persist: nothing persisted changed"
    );
    let publish = only_send(&a);
    assert_eq!(publish.queries, ["rt=oic.wk.rdpub"]);
    assert_eq!(
        publish.body,
        json!({"di": DI, "n": "Pi", "ttl": 0, "links": [
            {"href": "/light/1", "rt": ["core.light"], "if": ["oic.if.baseline"], "rel": "hosts", "p": {"bm": 3}},
            {"href": "/oic/d", "rt": ["oic.wk.d"], "if": ["oic.if.baseline"], "rel": "hosts", "p": {"bm": 3}}
        ]})
    );
    let a = b.respond(
        &publish,
        ResponseType::Changed,
        Some(json!({"di": DI, "ttl": 0, "links": [
            {"href": "/light/1", "ins": 3_000_000_000u32, "di": DI, "rt": ["core.light"]},
            {"href": "/oic/d", "ins": 2, "di": DI}
        ]})),
    );
    let Some(Action::Event(SessionEvent::Published { links })) = a.first() else {
        panic!("{a:?}")
    };
    assert_eq!(links[0].ins, Some(3_000_000_000));
    assert_eq!(b.s.published_links().len(), 2);

    // Idle: Ping 20 s after the sign-in, and again 20 s after the Pong.
    let signed_in_at = b.now;
    assert_eq!(b.s.poll_timeout(), Some(signed_in_at + secs(20)));
    let a = b.fire();
    let [Action::SendPing { token }] = a.as_slice() else {
        panic!("{a:?}")
    };
    b.advance(Duration::from_millis(30));
    assert!(b.s.handle_pong(token, b.now));
    assert_eq!(b.s.poll_timeout(), Some(b.now + secs(20)));
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Registered, Clec::Ok));
}

// ---------------------------------------------------------------------------------------------
// Keepalive (§7.3)
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_pong_timeout_and_six_misses_reconnect() {
    let mut b = Bench::new();
    b.signed_in(-1);
    let start = b.now;
    let mut pings = 0;
    // Ping at +20, misses at +24, +32, ...: 6 Pings, the 6th miss at +20 + 5·8 + 4 = +64.
    loop {
        let a = b.fire();
        let log: Vec<String> = a.iter().map(describe).collect();
        match log.as_slice() {
            [p] if p == "Ping" => {
                pings += 1;
                let expected = secs(20) + secs(8) * (pings - 1);
                assert_eq!(b.now - start, expected, "ping {pings}");
                assert_eq!(b.s.poll_timeout(), Some(b.now + secs(4)), "pong timeout");
            }
            [] => {
                // A miss: the next Ping 4 s later.
                assert_eq!(b.s.poll_timeout(), Some(b.now + secs(4)));
            }
            other => {
                assert_eq!(other, ["Status registered 2", "Disconnect"]);
                break;
            }
        }
    }
    assert_eq!(pings, 6);
    assert_eq!(b.now - start, secs(64));
    assert_eq!(
        (b.s.cps(), b.s.clec()),
        (Cps::Registered, Clec::ConnectFailed)
    );
    // Reconnect within the first back-off window, then sign in (permanent token: no refresh).
    let retry = b.s.poll_timeout().unwrap();
    assert!(retry - b.now <= secs(1));
    assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
    let sign_in = only_send(&b.connected());
    assert_eq!(sign_in.path, "/oic/sec/session");
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    );
    assert_eq!(log, ["Status registered 0", "SignedIn -1"]);
}

#[test]
fn any_traffic_counts_as_liveness() {
    let mut b = Bench::new();
    b.signed_in(-1);
    // Traffic every 15 s: never a Ping.
    for _ in 0..10 {
        b.advance(secs(15));
        b.s.handle_received(b.now);
        assert_eq!(b.s.poll_timeout(), Some(b.now + secs(20)));
    }
    // A Ping out, then a forwarded request instead of the Pong: alive, miss count cleared.
    let a = b.fire();
    assert!(matches!(a.as_slice(), [Action::SendPing { .. }]));
    let Action::SendPing { token } = &a[0] else {
        unreachable!()
    };
    b.advance(secs(1));
    b.s.handle_received(b.now);
    assert_eq!(b.s.poll_timeout(), Some(b.now + secs(20)));
    // The late Pong is harmless (not the outstanding Ping any more, still liveness).
    assert!(!b.s.handle_pong(token, b.now));
    // Five misses, then traffic: the count restarts, so five more misses do not disconnect.
    for _ in 0..2 {
        for _ in 0..10 {
            let log = b.fire_log();
            assert!(log.is_empty() || log == ["Ping"], "{log:?}");
        }
        b.s.handle_received(b.now);
    }
    assert!(b.s.is_signed_in());
}

// ---------------------------------------------------------------------------------------------
// Token refresh (§7.4, §7.2, §7.7)
// ---------------------------------------------------------------------------------------------

#[test]
fn refresh_follows_schedule_then_signs_in_without_republish() {
    let mut b = Bench::new();
    b.s.set_links(vec![link("/light/1", "core.light")], b.now);
    b.signed_in(300);
    let signed_in_at = b.now;
    // 300 s → refresh at expiry - 2 min = +180 s; pings answered meanwhile.
    let a = b.run_until(signed_in_at + secs(179));
    assert!(
        a.is_empty(),
        "{:?}",
        a.iter().map(describe).collect::<Vec<_>>()
    );
    let a = b.run_until(signed_in_at + secs(180));
    assert_eq!(b.now, signed_in_at + secs(180));
    let refresh = only_send(&a);
    assert_eq!(refresh.path, "/oic/sec/tokenrefresh");
    assert_eq!(
        refresh.body,
        json!({"uid": UID, "di": DI, "refreshtoken": RT1, "authprovider": "plgd",
               "granttype": "refresh_token"})
    );
    // Pings pause while the refresh runs: the only timer is the request timeout.
    assert_eq!(b.s.poll_timeout(), Some(b.now + secs(10)));
    assert!(!b.s.is_signed_in());

    let a = b.respond(
        &refresh,
        ResponseType::Changed,
        Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": 300})),
    );
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["Persist registered", "POST /oic/sec/session"]
    );
    let reg = persisted(&a).unwrap().registration.unwrap();
    assert_eq!(
        (reg.accesstoken.expose(), reg.refreshtoken.expose()),
        ("AT2", "RT2")
    );
    let sign_in = only_send(&a);
    assert_eq!(sign_in.body["accesstoken"], "AT2");
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": 290})),
    );
    assert_eq!(
        log,
        ["Persist registered", "SignedIn 290"],
        "no republish after a refresh"
    );
    // Next refresh from the new sign-in expiresin: 290 - 120.
    let a = b.run_until(b.now + secs(170));
    assert_eq!(only_send(&a).path, "/oic/sec/tokenrefresh");
}

#[test]
fn non_expiring_token_is_never_refreshed() {
    for expiresin in [0, -1] {
        let mut b = Bench::new();
        b.signed_in(expiresin);
        let a = b.run_until(b.now + secs(30 * 24 * 3600));
        assert!(a.is_empty(), "expiresin {expiresin}");
    }
}

/// §7.6 R1-R3 / §7.7: after a reconnect with an expiring token, refresh first, then sign in; no
/// sign-up, no publish.
#[test]
fn reconnect_with_short_token_refreshes_before_sign_in() {
    let mut b = Bench::new();
    b.s.set_links(vec![link("/light/1", "core.light")], b.now);
    b.signed_in(20);
    b.advance(secs(10));
    b.s.handle_disconnected(b.now);
    assert!(
        b.drain().is_empty(),
        "no Disconnect for a connection the driver lost"
    );
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Registered, Clec::Ok));
    assert!(b.s.poll_timeout().unwrap() - b.now <= secs(1));
    assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
    let first = only_send(&b.connected());
    assert_eq!(first.path, "/oic/sec/tokenrefresh");
    let sign_in = only_send(&b.respond(
        &first,
        ResponseType::Changed,
        Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": 20})),
    ));
    assert_eq!(sign_in.path, "/oic/sec/session");
    assert_eq!(sign_in.body["accesstoken"], "AT2");
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": 20})),
    );
    assert_eq!(log, ["SignedIn 20"]);
}

#[test]
fn reconnect_with_long_lived_token_signs_in_directly() {
    let mut b = Bench::new();
    b.signed_in(3600);
    b.advance(secs(60));
    b.s.handle_disconnected(b.now);
    b.fire();
    assert_eq!(only_send(&b.connected()).path, "/oic/sec/session");

    // Close to expiry (within the stale margin, past the refresh point): refresh first.
    let mut b = Bench::new();
    b.signed_in(3600);
    let t = b.now;
    b.now = t + secs(3490);
    b.s.handle_disconnected(b.now);
    b.fire();
    assert_eq!(only_send(&b.connected()).path, "/oic/sec/tokenrefresh");

    // Permanent token: sign in directly, even much later.
    let mut b = Bench::new();
    b.signed_in(-1);
    b.now += secs(100_000);
    b.s.handle_disconnected(b.now);
    b.fire();
    assert_eq!(only_send(&b.connected()).path, "/oic/sec/session");
}

// ---------------------------------------------------------------------------------------------
// Restart from persisted state
// ---------------------------------------------------------------------------------------------

#[test]
fn restart_never_signs_up_again() {
    let mut b = Bench::new();
    b.s.set_links(vec![link("/light/1", "core.light")], b.now);
    b.signed_in(3600);
    let state = b.s.persisted_state();
    assert_eq!(state.cps, Cps::Registered);
    assert_eq!(b.saved.as_ref(), Some(&state), "what the file holds");
    let bytes = state.to_cbor().unwrap();
    let state = PersistedState::from_cbor(&bytes).unwrap();
    assert_eq!(
        state,
        PersistedState {
            published: vec![PublishedRecord {
                link: hosted(&link("/light/1", "core.light")),
                ins: Some(1),
            }],
            ..registered_state(3600)
        }
    );

    // "Reboot".
    let mut b = Bench::restore(state);
    assert!(
        b.drain().is_empty(),
        "nothing to persist after a clean restore"
    );
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Registered, Clec::Ok));
    b.s.set_links(vec![link("/light/1", "core.light")], b.now);
    b.s.set_provisioned(true, b.now);
    assert_eq!(b.log(), [format!("Connect {CIS} {SID}")]);
    // The token expires and its remaining lifetime is unknown: refresh first (§7.2, §9).
    let refresh = only_send(&b.connected());
    assert_eq!(refresh.path, "/oic/sec/tokenrefresh");
    let sign_in = only_send(&b.respond(
        &refresh,
        ResponseType::Changed,
        Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": 3600})),
    ));
    assert_eq!(sign_in.path, "/oic/sec/session");
    // The RD's links were persisted and did not change: nothing to publish (§7.5).
    let a = b.respond(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": 3600})),
    );
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["SignedIn 3600"]
    );

    // A permanent token signs in directly after the restart.
    let mut b = Bench::restore(registered_state(-1));
    b.s.set_provisioned(true, b.now);
    b.drain();
    assert_eq!(only_send(&b.connected()).path, "/oic/sec/session");
}

#[test]
fn restore_recovers_an_interrupted_deregistration() {
    let mut state = registered_state(3600);
    state.cps = Cps::Deregistering;
    let mut b = Bench::restore(state);
    let a = b.drain();
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["Persist uninitialized", "Deregistered"]
    );
    let st = persisted(&a).unwrap();
    assert_eq!((st.conf, st.registration), (None, None));
    b.s.set_provisioned(true, b.now);
    assert!(b.drain().is_empty());
    assert_eq!(b.s.cps(), Cps::Uninitialized);
}

#[test]
fn restore_other_states() {
    // Failed: stays failed with its clec, offline, until a new configuration.
    let state = PersistedState {
        version: 1,
        cps: Cps::Failed,
        clec: Clec::RefreshFailed,
        conf: Some(conf()),
        registration: None,
        published: Vec::new(),
    };
    let mut b = Bench::restore(state);
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Failed, Clec::RefreshFailed));
    b.s.set_provisioned(true, b.now);
    assert!(b.drain().is_empty());
    assert_eq!(b.s.persisted_state().clec, Clec::RefreshFailed);
    b.s.configure(conf(), b.now).unwrap();
    assert!(b.log().contains(&format!("Connect {CIS} {SID}")));

    // Ready to register (the sign-up never completed): sign up.
    let state = PersistedState {
        version: 1,
        cps: Cps::Registering,
        clec: Clec::Ok,
        conf: Some(conf()),
        registration: None,
        published: Vec::new(),
    };
    let mut b = Bench::restore(state);
    assert_eq!(b.log(), ["Persist readytoregister"]);
    b.s.set_provisioned(true, b.now);
    b.drain();
    assert_eq!(only_send(&b.connected()).path, "/oic/sec/account");

    // Unknown version.
    let mut state = registered_state(1);
    state.version = 2;
    assert_eq!(
        CloudSession::restore(state, device(), Timing::default(), 1).unwrap_err(),
        RestoreError::UnsupportedVersion(2)
    );
    // Uninitialized.
    let b = Bench::restore(PersistedState {
        version: 1,
        cps: Cps::Uninitialized,
        clec: Clec::Ok,
        conf: None,
        registration: None,
        published: Vec::new(),
    });
    assert_eq!(b.s.cps(), Cps::Uninitialized);
}

// ---------------------------------------------------------------------------------------------
// RD publish / unpublish (§5.5, §5.6, §7.5)
// ---------------------------------------------------------------------------------------------

#[test]
fn republish_only_when_links_change_and_unpublish_removed_ones() {
    let mut b = Bench::new();
    let light = link("/light/1", "core.light");
    let switch = link("/switch/1", "oic.r.switch.binary");
    b.s.set_links(vec![light.clone(), switch.clone()], b.now);
    b.signed_in(-1);
    assert_eq!(
        b.s.published_links()
            .iter()
            .map(|l| l.ins)
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );

    // The same set (in another order): nothing.
    b.s.set_links(vec![switch.clone(), light.clone()], b.now);
    assert!(b.drain().is_empty());

    // One added: only that one is published.
    let temp = link("/temp/1", "oic.r.temperature");
    b.s.set_links(vec![light.clone(), switch.clone(), temp.clone()], b.now);
    let publish = only_send(&b.drain());
    assert_eq!(publish.path, "/oic/rd");
    assert_eq!(publish.body["links"].as_array().unwrap().len(), 1);
    assert_eq!(publish.body["links"][0]["href"], "/temp/1");
    let log = b.respond_log(
        &publish,
        ResponseType::Changed,
        Some(json!({"links": [{"href": "/temp/1", "ins": 77}]})),
    );
    assert_eq!(log, ["Published 1", "Persist registered"]);

    // One removed: DELETE /oic/rd?di=..&ins=.. with its ins.
    b.s.set_links(vec![light.clone(), temp.clone()], b.now);
    let del = only_send(&b.drain());
    assert_eq!((del.code, del.path.as_str()), (0x04, "/oic/rd"));
    assert_eq!(del.queries, [format!("di={DI}"), "ins=2".to_owned()]);
    let log = b.respond_log(&del, ResponseType::Deleted, None);
    assert_eq!(log, ["Unpublished /switch/1", "Persist registered"]);

    // A changed link (same href, new types): republished.
    let mut light2 = light.clone();
    light2.rt.push("oic.r.light.brightness".into());
    b.s.set_links(vec![light2.clone(), temp.clone()], b.now);
    let publish = only_send(&b.drain());
    assert_eq!(publish.body["links"][0]["href"], "/light/1");
    b.respond(&publish, ResponseType::Changed, Some(json!({"links": []})));

    // A plain reconnect does not republish.
    b.s.handle_disconnected(b.now);
    b.fire();
    let sign_in = only_send(&b.connected());
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    );
    assert_eq!(log, ["SignedIn -1"]);

    // Links changed while offline are published after the next sign-in, not before.
    b.s.handle_disconnected(b.now);
    b.s.set_links(vec![temp.clone()], b.now);
    assert!(sends(&b.drain()).is_empty());
    b.fire();
    let sign_in = only_send(&b.connected());
    let a = b.respond(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    );
    // /light/1 was published without ins in the last response: it cannot be unpublished, it is
    // dropped from the bookkeeping; nothing else to do.
    assert!(
        sends(&a).is_empty(),
        "{:?}",
        a.iter().map(describe).collect::<Vec<_>>()
    );
    assert_eq!(
        b.s.published_links(),
        [PublishedLink {
            href: "/temp/1".into(),
            ins: Some(77)
        }]
    );
}

#[test]
fn rd_errors_do_not_loop_and_timeouts_reconnect() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.set_links(vec![link("/a", "x.a")], b.now);
    let publish = only_send(&b.drain());
    assert!(b
        .respond(&publish, ResponseType::BadRequest, None)
        .is_empty());
    // Blocked until the links change.
    let a = b.run_until(b.now + secs(100));
    assert!(sends(&a).is_empty());
    b.s.set_links(vec![link("/a", "x.a"), link("/b", "x.b")], b.now);
    let publish = only_send(&b.drain());
    assert_eq!(publish.body["links"].as_array().unwrap().len(), 2);
    // No answer within the request timeout: connection error, reconnect.
    assert_eq!(b.s.poll_timeout(), Some(b.now + secs(10)));
    assert_eq!(b.fire_log(), ["Disconnect"]);
    assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
}

#[test]
fn many_removed_links_are_unpublished_in_chunks() {
    let mut b = Bench::new();
    let links: Vec<RdLink> = (0..20)
        .map(|i| link(&format!("/r/{i:02}"), "x.r"))
        .collect();
    b.s.set_links(links, b.now);
    b.signed_in(-1);
    b.s.set_links(vec![], b.now);
    let first = only_send(&b.drain());
    assert_eq!(first.queries.len(), 1 + 16);
    let second = only_send(&b.respond(&first, ResponseType::Deleted, None));
    assert_eq!(second.queries.len(), 1 + 4);
    let a = b.respond(&second, ResponseType::BadRequest, None);
    assert!(sends(&a).is_empty());
    assert!(b.s.published_links().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The RD's links across a reboot (§5.5, §5.6, §7.5, §9)
// ---------------------------------------------------------------------------------------------

/// Three ping intervals (§7.3): long enough for anything the session would still send after a
/// sign-in, far from the token refresh.
const QUIET: Duration = Duration::from_secs(61);

impl Bench {
    /// After a restore: provisioned, connected, refreshed first when the token expires (§7.2,
    /// §9), signed in with `expiresin`. Asserts there is no sign-up; returns what followed the
    /// sign-in answer.
    fn reboot_sign_in(&mut self, expiresin: i64) -> Vec<Action> {
        self.s.set_provisioned(true, self.now);
        assert_eq!(self.log(), [format!("Connect {CIS} {SID}")]);
        let mut req = only_send(&self.connected());
        if expiresin > 0 {
            assert_eq!(req.path, URI_TOKEN_REFRESH, "a restored expiring token");
            req = only_send(&self.respond(
                &req,
                ResponseType::Changed,
                Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": expiresin})),
            ));
        }
        assert_eq!(
            req.path, URI_SESSION,
            "sign-in, never a sign-up, after a reboot"
        );
        self.respond(
            &req,
            ResponseType::Changed,
            Some(json!({"expiresin": expiresin})),
        )
    }

    /// The RD requests sent within `d` of virtual time (Pings answered).
    fn rd_requests_within(&mut self, d: Duration) -> Vec<Req> {
        let until = self.now + d;
        sends(&self.run_until(until))
            .into_iter()
            .filter(|r| r.path == URI_RD)
            .collect()
    }
}

fn records(links: &[(&RdLink, Option<i64>)]) -> Vec<PublishedRecord> {
    links
        .iter()
        .map(|(l, ins)| PublishedRecord {
            link: hosted(l),
            ins: *ins,
        })
        .collect()
}

/// §7.5: links the RD already holds (persisted with their `ins`) are not published again after a
/// reboot, whether the token is refreshed first or not.
#[test]
fn reboot_with_unchanged_links_publishes_nothing() {
    let light = link("/light/1", "core.light");
    let switch = link("/switch/1", "oic.r.switch.binary");
    for expiresin in [3600, -1] {
        let mut b = Bench::new();
        b.s.set_links(vec![light.clone(), switch.clone()], b.now);
        b.signed_in(expiresin);
        let file = b.saved.clone().unwrap();
        assert_eq!(
            file.published,
            records(&[(&light, Some(1)), (&switch, Some(2))])
        );
        let file = PersistedState::from_cbor(&file.to_cbor().unwrap()).unwrap();

        let mut b = Bench::restore(file);
        assert!(
            b.drain().is_empty(),
            "nothing to persist after a clean restore"
        );
        assert_eq!(b.s.published_links().len(), 2);
        // The daemon lists its links before connecting, in whatever order.
        b.s.set_links(vec![switch.clone(), light.clone()], b.now);
        let a = b.reboot_sign_in(expiresin);
        assert_eq!(
            a.iter().map(describe).collect::<Vec<_>>(),
            [format!("SignedIn {expiresin}")],
            "expiresin {expiresin}: no publish after the sign-in"
        );
        assert!(
            b.rd_requests_within(QUIET).is_empty(),
            "expiresin {expiresin}"
        );
        assert!(b.s.is_signed_in());
    }
}

/// §5.5/§5.6/§7.5: after a reboot only the changed and the new link are published (one
/// request), and a link removed since is unpublished by its persisted `ins`.
#[test]
fn reboot_publishes_only_what_changed_and_unpublishes_by_persisted_ins() {
    let light = link("/light/1", "core.light");
    let switch = link("/switch/1", "oic.r.switch.binary");
    let temp = link("/temp/1", "oic.r.temperature");
    let mut b = Bench::new();
    b.s.set_links(vec![light.clone(), switch.clone(), temp.clone()], b.now);
    b.signed_in(-1);
    let file = b.saved.clone().unwrap();
    assert_eq!(file.published.len(), 3);

    // While down: /light/1 gained a type, /door/1 appeared, /temp/1 (ins 3) went away.
    let mut light2 = light.clone();
    light2.rt.push("oic.r.light.brightness".into());
    let door = link("/door/1", "oic.r.door");
    let mut b = Bench::restore(file);
    b.s.set_links(vec![light2.clone(), switch.clone(), door.clone()], b.now);
    let a = b.reboot_sign_in(-1);
    let del = only_send(&a);
    assert_eq!((del.code, del.path.as_str()), (0x04, URI_RD));
    assert_eq!(del.queries, [format!("di={DI}"), "ins=3".to_owned()]);
    let a = b.respond(&del, ResponseType::Deleted, None);
    assert_eq!(
        b.saved.as_ref().unwrap().published,
        records(&[(&light, Some(1)), (&switch, Some(2))]),
        "the unpublish is persisted"
    );
    let publish = only_send(&a);
    assert_eq!((publish.code, publish.path.as_str()), (0x02, URI_RD));
    let links = publish.body["links"].as_array().unwrap();
    assert_eq!(
        links.iter().map(|l| l["href"].clone()).collect::<Vec<_>>(),
        [json!("/door/1"), json!("/light/1")],
        "exactly the new and the changed link"
    );
    assert_eq!(
        links[1]["rt"],
        json!(["core.light", "oic.r.light.brightness"])
    );
    let log = b.respond_log(
        &publish,
        ResponseType::Changed,
        Some(json!({"links": [{"href": "/door/1", "ins": 40}, {"href": "/light/1", "ins": 1}]})),
    );
    assert_eq!(log, ["Published 2", "Persist registered"]);
    assert_eq!(
        b.saved.as_ref().unwrap().published,
        records(&[(&door, Some(40)), (&light2, Some(1)), (&switch, Some(2))])
    );
    assert!(b.rd_requests_within(QUIET).is_empty());
}

/// A successful publish or unpublish is persisted (with the links and their `ins`); a new
/// configuration forgets them, so the next sign-in publishes everything; a deregistration
/// forgets them too.
#[test]
fn rd_changes_are_persisted_and_a_new_configuration_forgets_them() {
    let light = link("/light/1", "core.light");
    let switch = link("/switch/1", "oic.r.switch.binary");
    let mut b = Bench::new();
    b.s.set_links(vec![light.clone(), switch.clone()], b.now);
    let up = b.until_sign_up();
    let sign_in = only_send(&b.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1))));
    let publish = only_send(&b.respond(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    ));
    let a = b.respond(
        &publish,
        ResponseType::Changed,
        Some(json!({"links": [{"href": "/light/1", "ins": 10}, {"href": "/switch/1", "ins": 20}]})),
    );
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["Published 2", "Persist registered"]
    );
    let st = persisted(&a).unwrap();
    assert_eq!(st.cps, Cps::Registered);
    assert_eq!(
        st.published,
        records(&[(&light, Some(10)), (&switch, Some(20))])
    );

    // An unpublish is persisted the same way.
    b.s.set_links(vec![light.clone()], b.now);
    let del = only_send(&b.drain());
    assert_eq!(del.queries, [format!("di={DI}"), "ins=20".to_owned()]);
    let a = b.respond(&del, ResponseType::Deleted, None);
    assert_eq!(
        persisted(&a).unwrap().published,
        records(&[(&light, Some(10))])
    );

    // A refused sign-in leaves cps failed (registration kept), where a new configuration is
    // accepted (§4 rule 1): it drops the registration and with it the RD's links.
    b.s.handle_disconnected(b.now);
    b.fire();
    let sign_in = only_send(&b.connected());
    b.respond(&sign_in, ResponseType::Forbidden, None);
    assert_eq!(b.s.cps(), Cps::Failed);
    assert_eq!(
        b.saved.as_ref().unwrap().published.len(),
        1,
        "still registered"
    );
    b.s.configure(
        CloudConf {
            at: "code-2".into(),
            ..conf()
        },
        b.now,
    )
    .unwrap();
    let a = b.drain();
    let st = persisted(&a).unwrap();
    assert_eq!((st.cps, st.registration), (Cps::ReadyToRegister, None));
    assert!(st.published.is_empty());
    assert!(b.s.published_links().is_empty());
    // Sign-up, sign-in, then everything is published again.
    let up = only_send(&b.connected());
    assert_eq!(up.body["accesstoken"], "code-2");
    let sign_in = only_send(&b.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1))));
    let publish = only_send(&b.respond(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    ));
    assert_eq!(publish.path, URI_RD);
    assert_eq!(publish.body["links"].as_array().unwrap().len(), 1);
    assert_eq!(publish.body["links"][0]["href"], "/light/1");
    b.respond(
        &publish,
        ResponseType::Changed,
        Some(json!({"links": [{"href": "/light/1", "ins": 11}]})),
    );
    assert_eq!(b.saved.as_ref().unwrap().published.len(), 1);

    // Deregistration wipes them with the rest.
    b.s.deregister(b.now);
    let del = only_send(&b.drain());
    let a = b.respond(&del, ResponseType::Deleted, None);
    let st = persisted(&a).unwrap();
    assert_eq!(st.cps, Cps::Uninitialized);
    assert!(st.published.is_empty());
}

/// §5.2/§9: sign-out before a reboot, then the restored file: refresh if the token expires,
/// sign-in, no sign-up, no publish.
#[test]
fn sign_out_then_reboot_signs_in_without_sign_up_or_publish() {
    let light = link("/light/1", "core.light");
    let mut b = Bench::new();
    b.s.set_links(vec![light.clone()], b.now);
    b.signed_in(3600);
    b.s.sign_out(b.now);
    let out = only_send(&b.drain());
    assert_eq!(out.body["login"], false);
    assert_eq!(
        b.respond_log(&out, ResponseType::Changed, Some(json!({}))),
        ["Disconnect", "SignedOut"]
    );
    let file = b.saved.clone().unwrap();
    assert_eq!(file.cps, Cps::Registered);
    assert_eq!(file.published, records(&[(&light, Some(1))]));

    let mut b = Bench::restore(file);
    b.s.set_links(vec![light.clone()], b.now);
    let a = b.reboot_sign_in(3600);
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["SignedIn 3600"]
    );
    assert!(b.rd_requests_within(QUIET).is_empty());
    assert_eq!(
        b.s.published_links(),
        [PublishedLink {
            href: "/light/1".into(),
            ins: Some(1)
        }]
    );
}

/// The RD's links are restored only with a registration; other states drop them (and say so
/// with a Persist).
#[test]
fn published_links_are_restored_only_when_registered() {
    let light = link("/light/1", "core.light");
    let published = records(&[(&light, Some(1))]);
    for (cps, registration) in [
        (Cps::Failed, None),
        (Cps::ReadyToRegister, None),
        (Cps::Uninitialized, None),
        (Cps::Deregistering, registered_state(-1).registration),
    ] {
        let state = PersistedState {
            cps,
            registration,
            published: published.clone(),
            ..registered_state(-1)
        };
        let mut b = Bench::restore(state);
        assert!(b.s.published_links().is_empty(), "{cps}");
        let st = persisted(&b.drain()).expect("the dropped links are persisted");
        assert!(st.published.is_empty(), "{cps}");
        assert!(b.s.persisted_state().published.is_empty(), "{cps}");
    }
    let mut b = Bench::restore(PersistedState {
        published: published.clone(),
        ..registered_state(-1)
    });
    assert!(b.drain().is_empty());
    assert_eq!(b.s.persisted_state().published, published);
}

/// CBOR round trip of a state with links (one without `ins`, one with several `rel`); the keys
/// are short and readable.
#[test]
fn persisted_state_with_published_links_round_trips_in_cbor() {
    let mut multi = link("/light/1", "core.light");
    multi.rel = vec!["hosts".into(), "item".into()];
    let state = PersistedState {
        published: vec![
            PublishedRecord {
                link: multi,
                ins: Some(3_000_000_000),
            },
            PublishedRecord {
                link: hosted(&link("/switch/1", "oic.r.switch.binary")),
                ins: None,
            },
        ],
        ..registered_state(3600)
    };
    let bytes = state.to_cbor().unwrap();
    assert_eq!(PersistedState::from_cbor(&bytes).unwrap(), state);
    let v: Value = from_cbor(&bytes).unwrap();
    assert_eq!(
        v["published"],
        json!([
            {"link": {"href": "/light/1", "rt": ["core.light"], "if": ["oic.if.baseline"],
                      "rel": ["hosts", "item"], "p": {"bm": 3}},
             "ins": 3_000_000_000u32},
            {"link": {"href": "/switch/1", "rt": ["oic.r.switch.binary"],
                      "if": ["oic.if.baseline"], "rel": "hosts", "p": {"bm": 3}}}
        ])
    );
    // Nothing published: no key at all.
    let bytes = registered_state(3600).to_cbor().unwrap();
    let v: Value = from_cbor(&bytes).unwrap();
    assert!(v.get("published").is_none());
}

/// A version-1 file written before `published` existed still loads, and that device publishes
/// everything after its first sign-in (it cannot know what the RD holds).
#[test]
fn version_1_file_without_published_links_still_loads() {
    /// The state as it was before `published` (same serde attributes).
    #[derive(Serialize)]
    struct OldPersistedState {
        version: u32,
        cps: Cps,
        clec: Clec,
        #[serde(skip_serializing_if = "Option::is_none")]
        conf: Option<CloudConf>,
        #[serde(skip_serializing_if = "Option::is_none")]
        registration: Option<Registration>,
    }
    let new = registered_state(-1);
    let old = OldPersistedState {
        version: 1,
        cps: new.cps,
        clec: new.clec,
        conf: new.conf.clone(),
        registration: new.registration.clone(),
    };
    let state = PersistedState::from_cbor(&to_cbor(&old).unwrap()).unwrap();
    assert_eq!(state, new);
    assert!(state.published.is_empty());

    let mut b = Bench::restore(state);
    assert!(b.drain().is_empty());
    b.s.set_links(vec![link("/light/1", "core.light")], b.now);
    let a = b.reboot_sign_in(-1);
    let publish = only_send(&a);
    assert_eq!(publish.path, URI_RD);
    assert_eq!(publish.body["links"][0]["href"], "/light/1");
}

// ---------------------------------------------------------------------------------------------
// §4 transition table: sign-up
// ---------------------------------------------------------------------------------------------

#[test]
fn sign_up_error_fails_without_retry() {
    for (code, body) in [
        (ResponseType::BadRequest, None),
        (ResponseType::Unauthorized, None),
        (ResponseType::InternalServerError, None),
        // 2.04 with a malformed body (no refreshtoken).
        (
            ResponseType::Changed,
            Some(json!({"accesstoken": "a", "uid": "u", "expiresin": 1})),
        ),
        // 2.04 with an empty uid.
        (
            ResponseType::Changed,
            Some(json!({"accesstoken": "a", "refreshtoken": "r", "uid": "", "expiresin": 1})),
        ),
    ] {
        let mut b = Bench::new();
        let up = b.until_sign_up();
        let log = b.respond_log(&up, code, body);
        assert_eq!(log, ["Disconnect", "Status failed 1", "Persist failed"]);
        assert_eq!(b.s.poll_timeout(), None, "no retry");
        b.s.set_provisioned(false, b.now);
        b.s.set_provisioned(true, b.now);
        assert!(b.drain().is_empty());
        // A new configuration starts over.
        b.s.configure(conf(), b.now).unwrap();
        assert_eq!(
            b.log(),
            [
                "Status readytoregister 0".to_owned(),
                "Persist readytoregister".into(),
                "Status registering 0".into(),
                format!("Connect {CIS} {SID}")
            ]
        );
    }
}

#[test]
fn sign_up_transport_errors_retry_with_clec_0() {
    let mut b = Bench::new();
    let up = b.until_sign_up();
    // 5.03 (hub: OAuth exchange failed) is a connection error (§7.1).
    assert_eq!(
        b.respond_log(&up, ResponseType::ServiceUnavailable, None),
        ["Disconnect"]
    );
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Registering, Clec::Ok));
    assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
    let up = only_send(&b.connected());
    assert_eq!(up.path, "/oic/sec/account");
    // No answer: request timeout → connection error, retry.
    assert_eq!(b.s.poll_timeout(), Some(b.now + secs(10)));
    assert_eq!(b.fire_log(), ["Disconnect"]);
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Registering, Clec::Ok));
    b.fire();
    let up = only_send(&b.connected());
    assert_eq!(up.body["accesstoken"], AT, "the same code is retried");
    b.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1)));
    assert_eq!(b.s.cps(), Cps::Registered);
}

#[test]
fn redirect_switches_cis_keeps_sid_and_signs_in_there() {
    let mut b = Bench::new();
    let up = b.until_sign_up();
    let mut body = sign_up_ok(-1);
    body["redirecturi"] = json!(ALT_CIS);
    let a = b.respond(&up, ResponseType::Changed, Some(body));
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        [
            "Status registered 0".to_owned(),
            "Persist registered".into(),
            format!("Registered {UID}"),
            "Disconnect".into(),
            format!("Connect {ALT_CIS} {SID}")
        ]
    );
    assert_eq!(persisted(&a).unwrap().conf.unwrap().cis, ALT_CIS);
    assert_eq!(b.s.conf().unwrap().cis, ALT_CIS);
    let sign_in = only_send(&b.connected());
    assert_eq!(sign_in.path, "/oic/sec/session");

    // No switch for "", a single character, or the current server.
    for redirect in ["", "/", CIS] {
        let mut b = Bench::new();
        let up = b.until_sign_up();
        let mut body = sign_up_ok(-1);
        body["redirecturi"] = json!(redirect);
        let a = b.respond(&up, ResponseType::Changed, Some(body));
        assert_eq!(only_send(&a).path, "/oic/sec/session", "{redirect:?}");
        assert_eq!(b.s.conf().unwrap().cis, CIS);
    }
}

// ---------------------------------------------------------------------------------------------
// §4 transition table: sign-in
// ---------------------------------------------------------------------------------------------

#[test]
fn sign_in_error_fails_with_clec_1_then_restarts() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    b.fire();
    let sign_in = only_send(&b.connected());
    assert_eq!(
        b.respond_log(&sign_in, ResponseType::Forbidden, None),
        ["Status failed 1", "Disconnect"]
    );
    // Restart with back-off, sign in again (forever), failed/1 until it works.
    for n in 2..=10 {
        let delay = b.s.poll_timeout().unwrap() - b.now;
        assert!(delay <= backoff_ceiling(n, secs(1), secs(60)));
        assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
        let sign_in = only_send(&b.connected());
        assert_eq!(sign_in.path, "/oic/sec/session");
        if n < 10 {
            assert_eq!(
                b.respond_log(&sign_in, ResponseType::BadRequest, None),
                ["Disconnect"]
            );
            assert_eq!((b.s.cps(), b.s.clec()), (Cps::Failed, Clec::CloudError));
        } else {
            let log = b.respond_log(
                &sign_in,
                ResponseType::Changed,
                Some(json!({"expiresin": -1})),
            );
            assert_eq!(log, ["Status registered 0", "SignedIn -1"]);
        }
    }
    // A 2.04 without expiresin is as bad as an error.
    b.s.handle_disconnected(b.now);
    b.fire();
    let sign_in = only_send(&b.connected());
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"rt": ["oic.r.session"]})),
    );
    assert_eq!(log, ["Status failed 1", "Disconnect"]);
}

/// §4/§5.2: sign-in 4.01 → failed, clec 4, access token dropped, refresh, then sign in again.
#[test]
fn sign_in_unauthorized_drops_token_and_refreshes() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    b.fire();
    let sign_in = only_send(&b.connected());
    let a = b.respond(&sign_in, ResponseType::Unauthorized, None);
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        [
            "Status failed 4",
            "Persist registered",
            "POST /oic/sec/tokenrefresh"
        ]
    );
    assert!(persisted(&a)
        .unwrap()
        .registration
        .unwrap()
        .accesstoken
        .is_empty());
    let refresh = only_send(&a);
    let sign_in = only_send(&b.respond(
        &refresh,
        ResponseType::Changed,
        Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": -1})),
    ));
    assert_eq!(sign_in.body["accesstoken"], "AT2");
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    );
    assert_eq!(log, ["Status registered 0", "SignedIn -1"]);
}

/// hub closes the connection after the 4.01: the refresh goes first after the reconnect.
#[test]
fn sign_in_unauthorized_then_closed_refreshes_after_reconnect() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    b.fire();
    let sign_in = only_send(&b.connected());
    b.respond(&sign_in, ResponseType::Unauthorized, None);
    b.s.handle_disconnected(b.now);
    assert!(b.drain().is_empty());
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Failed, Clec::Unauthorized));
    b.fire();
    assert_eq!(only_send(&b.connected()).path, "/oic/sec/tokenrefresh");
}

/// A 4.01 on the sign-in right after a refresh would loop (iotivity-lite#74): wipe instead.
#[test]
fn sign_in_unauthorized_with_fresh_token_wipes() {
    let mut b = Bench::new();
    b.signed_in(20);
    b.s.handle_disconnected(b.now);
    b.fire();
    let refresh = only_send(&b.connected());
    let sign_in = only_send(&b.respond(
        &refresh,
        ResponseType::Changed,
        Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": 20})),
    ));
    let a = b.respond(&sign_in, ResponseType::Unauthorized, None);
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        [
            "Disconnect",
            "Status uninitialized 4",
            "Persist uninitialized"
        ]
    );
    let st = persisted(&a).unwrap();
    assert_eq!((st.conf, st.registration), (None, None));
    assert_eq!(b.s.poll_timeout(), None);
}

/// No refresh token: sign-in 4.01 wipes, `cps` uninitialized, `clec` 4 (§4 table).
#[test]
fn sign_in_unauthorized_without_refresh_token_wipes() {
    let mut state = registered_state(-1);
    if let Some(r) = state.registration.as_mut() {
        r.refreshtoken = Secret::default();
    }
    let mut b = Bench::restore(state);
    b.s.set_provisioned(true, b.now);
    b.drain();
    let sign_in = only_send(&b.connected());
    assert_eq!(sign_in.path, "/oic/sec/session");
    let log = b.respond_log(&sign_in, ResponseType::Unauthorized, None);
    assert_eq!(
        log,
        [
            "Disconnect",
            "Status uninitialized 4",
            "Persist uninitialized"
        ]
    );
    assert_eq!(b.s.poll_timeout(), None);
    // Rule 1 lets a new configuration in.
    assert!(b.s.configure(conf(), b.now).is_ok());
}

// ---------------------------------------------------------------------------------------------
// §4 transition table: refresh
// ---------------------------------------------------------------------------------------------

fn at_scheduled_refresh(b: &mut Bench) -> Req {
    b.signed_in(300);
    let a = b.run_until(b.now + secs(180));
    only_send(&a)
}

#[test]
fn refresh_unauthorized_wipes_and_reports_clec_4() {
    let mut b = Bench::new();
    let refresh = at_scheduled_refresh(&mut b);
    let a = b.respond(&refresh, ResponseType::Unauthorized, None);
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["Disconnect", "Status failed 4", "Persist failed"]
    );
    let st = persisted(&a).unwrap();
    assert_eq!(st.registration, None);
    assert_eq!(st.clec, Clec::Unauthorized);
    assert_eq!(
        st.conf.unwrap().cis,
        CIS,
        "where it was registered stays visible"
    );
    assert_eq!(b.s.poll_timeout(), None, "no automatic recovery");
    assert!(b.run_until(b.now + secs(3600)).is_empty());
}

#[test]
fn refresh_other_error_fails_with_clec_3_no_recovery() {
    for code in [ResponseType::BadRequest, ResponseType::InternalServerError] {
        let mut b = Bench::new();
        let refresh = at_scheduled_refresh(&mut b);
        let log = b.respond_log(&refresh, code, None);
        assert_eq!(log, ["Disconnect", "Status failed 3", "Persist failed"]);
        assert_eq!(b.s.poll_timeout(), None);
        assert_eq!(b.s.uid(), None, "REGISTERED cleared");
    }
    // A 2.04 with an empty refresh token is refused the same way.
    let mut b = Bench::new();
    let refresh = at_scheduled_refresh(&mut b);
    let log = b.respond_log(
        &refresh,
        ResponseType::Changed,
        Some(json!({"accesstoken": "a", "refreshtoken": "", "expiresin": 5})),
    );
    assert_eq!(log, ["Disconnect", "Status failed 3", "Persist failed"]);
}

#[test]
fn refresh_connection_errors_exhausted_fail_with_clec_3_then_recover() {
    let mut b = Bench::new();
    let refresh = at_scheduled_refresh(&mut b);
    assert_eq!(
        b.respond_log(&refresh, ResponseType::ServiceUnavailable, None),
        ["Disconnect"]
    );
    assert_eq!(
        (b.s.cps(), b.s.clec()),
        (Cps::Registered, Clec::Ok),
        "clec 0 while retrying"
    );
    for n in 2..=6 {
        b.fire();
        let refresh = only_send(&b.connected());
        assert_eq!(refresh.path, "/oic/sec/tokenrefresh");
        // Timeout this time.
        let log = b.fire_log();
        if n < 6 {
            assert_eq!(log, ["Disconnect"]);
        } else {
            assert_eq!(log, ["Disconnect", "Status failed 3"]);
        }
    }
    // Still retrying at the capped back-off; the next success recovers.
    b.fire();
    let refresh = only_send(&b.connected());
    let sign_in = only_send(&b.respond(
        &refresh,
        ResponseType::Changed,
        Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": 300})),
    ));
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": 300})),
    );
    assert_eq!(log, ["Status registered 0", "SignedIn 300"]);
}

// ---------------------------------------------------------------------------------------------
// Sign-out, deregistration
// ---------------------------------------------------------------------------------------------

#[test]
fn sign_out_before_reboot() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.sign_out(b.now);
    let out = only_send(&b.drain());
    assert_eq!(out.path, "/oic/sec/session");
    assert_eq!(
        out.body,
        json!({"uid": UID, "di": DI, "accesstoken": AT1, "login": false})
    );
    // hub answers 2.04 {}.
    let log = b.respond_log(&out, ResponseType::Changed, Some(json!({})));
    assert_eq!(log, ["Disconnect", "SignedOut"]);
    assert_eq!(
        b.s.cps(),
        Cps::Registered,
        "signs in again after the reboot"
    );
    assert_eq!(b.s.poll_timeout(), None, "stays offline");
    b.s.resume(b.now);
    assert_eq!(b.log(), [format!("Connect {CIS} {SID}")]);

    // Unanswered: done after the request timeout.
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.sign_out(b.now);
    b.drain();
    let t = b.now;
    assert_eq!(b.fire_log(), ["Disconnect", "SignedOut"]);
    assert_eq!(b.now - t, secs(10));

    // Not connected: done at once.
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    b.s.sign_out(b.now);
    assert_eq!(b.log(), ["SignedOut"]);
    assert_eq!(b.s.poll_timeout(), None);
    // Unconfigured: nothing to do, but the driver still gets its answer.
    let mut b = Bench::new();
    b.s.sign_out(b.now);
    assert_eq!(b.log(), ["SignedOut"]);
}

/// A refresh in flight is completed before signing out, so the rotated tokens are persisted
/// (iotivity-lite#285).
#[test]
fn sign_out_waits_for_refresh_in_flight() {
    let mut b = Bench::new();
    let refresh = at_scheduled_refresh(&mut b);
    b.s.sign_out(b.now);
    assert!(b.drain().is_empty());
    let a = b.respond(
        &refresh,
        ResponseType::Changed,
        Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": 300})),
    );
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        ["Persist registered", "Disconnect", "SignedOut"]
    );
    assert_eq!(
        persisted(&a)
            .unwrap()
            .registration
            .unwrap()
            .refreshtoken
            .expose(),
        "RT2"
    );
}

#[test]
fn deregistration_sends_delete_then_wipes() {
    let mut b = Bench::new();
    b.signed_in(-1);
    let a = {
        b.s.configure(
            CloudConf {
                cis: String::new(),
                ..Default::default()
            },
            b.now,
        )
        .unwrap();
        b.drain()
    };
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        [
            "Status deregistering 0",
            "Persist deregistering",
            "DELETE /oic/sec/account"
        ]
    );
    let del = only_send(&a);
    assert_eq!(del.queries, [format!("di={DI}"), format!("uid={UID}")]);
    // No pings while deregistering; the deadline is 10 s.
    assert_eq!(b.s.poll_timeout(), Some(b.now + secs(10)));
    let log = b.respond_log(&del, ResponseType::Deleted, None);
    assert_eq!(
        log,
        [
            "Disconnect",
            "Status uninitialized 0",
            "Persist uninitialized",
            "Deregistered"
        ]
    );
    assert_eq!(b.s.persisted_state().conf, None);
    assert_eq!(b.s.poll_timeout(), None);
    assert!(b.s.deregistration_told(), "the cloud answered");
}

#[test]
fn deregistration_completes_on_timeout_error_or_disconnect() {
    let finish = [
        "Disconnect",
        "Status uninitialized 0",
        "Persist uninitialized",
        "Deregistered",
    ];
    // Timeout.
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.deregister(b.now);
    b.drain();
    let t = b.now;
    assert_eq!(b.fire_log(), finish);
    assert_eq!(b.now - t, secs(10));
    assert!(
        !b.s.deregistration_told(),
        "no answer: the cloud may still list it"
    );
    // Error response: the cloud heard it.
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.deregister(b.now);
    let del = only_send(&b.drain());
    assert_eq!(b.respond_log(&del, ResponseType::NotFound, None), finish);
    assert!(b.s.deregistration_told());
    // Connection lost.
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.deregister(b.now);
    b.drain();
    b.s.handle_disconnected(b.now);
    assert_eq!(b.log(), &finish[1..]);
    assert!(!b.s.deregistration_told());
    // Not connected: at once.
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    b.s.deregister(b.now);
    assert_eq!(b.log(), &finish[1..]);
    assert!(!b.s.deregistration_told());
    // Connecting: the attempt is abandoned.
    let mut b = Bench::new();
    b.s.configure(conf(), b.now).unwrap();
    b.s.set_provisioned(true, b.now);
    b.drain();
    b.s.deregister(b.now);
    assert_eq!(b.log(), finish);
    assert!(
        b.s.deregistration_told(),
        "never registered: nothing to tell"
    );
}

/// During a sign-in (no session yet) the cloud cannot fill in the token: it goes in the query
/// (§5.4, iotivity-lite).
#[test]
fn deregistration_before_sign_in_carries_the_token() {
    let mut b = Bench::restore(registered_state(-1));
    b.s.set_provisioned(true, b.now);
    b.drain();
    let sign_in = only_send(&b.connected());
    b.s.deregister(b.now);
    let del = only_send(&b.drain());
    assert_eq!(
        del.queries,
        [
            format!("di={DI}"),
            format!("uid={UID}"),
            format!("accesstoken={AT1}")
        ]
    );
    // The late sign-in answer is ignored.
    assert!(!b.s.handle_response(
        &response(
            &sign_in.token,
            ResponseType::Changed,
            Some(json!({"expiresin": -1}))
        ),
        b.now
    ));
}

// ---------------------------------------------------------------------------------------------
// Configuration rules, provisioning gate
// ---------------------------------------------------------------------------------------------

#[test]
fn configuration_update_rules() {
    let mut b = Bench::new();
    let mut bad = conf();
    bad.at = Secret::default();
    assert_eq!(b.s.configure(bad, b.now), Err(ConfError::MissingAt));
    let mut bad = conf();
    bad.sid = "cloud".into();
    assert_eq!(b.s.configure(bad, b.now), Err(ConfError::InvalidSid));
    assert!(b.drain().is_empty());

    b.s.configure(conf(), b.now).unwrap();
    b.s.set_provisioned(true, b.now);
    b.drain();
    // registering: only {"cis":""}.
    assert_eq!(
        b.s.configure(conf(), b.now),
        Err(ConfError::Busy(Cps::Registering))
    );
    b.s.handle_disconnected(b.now);
    b.signed_in_again();
    assert_eq!(
        b.s.configure(conf(), b.now),
        Err(ConfError::Busy(Cps::Registered))
    );
    assert!(b.drain().is_empty());
}

impl Bench {
    fn signed_in_again(&mut self) {
        self.fire();
        let up = only_send(&self.connected());
        let sign_in = only_send(&self.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1))));
        self.respond(
            &sign_in,
            ResponseType::Changed,
            Some(json!({"expiresin": -1})),
        );
    }
}

#[test]
fn provisioning_gate() {
    let mut b = Bench::new();
    b.s.configure(conf(), b.now).unwrap();
    b.drain();
    assert_eq!(b.s.poll_timeout(), None, "no connection outside RFNOP");
    b.s.set_provisioned(true, b.now);
    assert!(b.log().contains(&format!("Connect {CIS} {SID}")));
    b.s.set_provisioned(false, b.now);
    assert_eq!(b.log(), ["Disconnect"]);
    b.s.set_provisioned(true, b.now);
    b.drain();
    let up = only_send(&b.connected());
    let sign_in = only_send(&b.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1))));
    b.respond(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    );
    // Leaving RFNOP while signed in: disconnect, cps unchanged.
    b.s.set_provisioned(false, b.now);
    assert_eq!(b.log(), ["Disconnect"]);
    assert_eq!(b.s.cps(), Cps::Registered);
    assert_eq!(b.s.poll_timeout(), None);
    b.s.set_provisioned(true, b.now);
    b.drain();
    assert_eq!(only_send(&b.connected()).path, "/oic/sec/session");
}

// ---------------------------------------------------------------------------------------------
// Back-off, timeouts, unreachable cloud, alternative servers
// ---------------------------------------------------------------------------------------------

#[test]
fn connect_timeout_is_a_connection_error() {
    let mut b = Bench::new();
    b.s.configure(conf(), b.now).unwrap();
    b.s.set_provisioned(true, b.now);
    b.drain();
    let t = b.now;
    assert_eq!(b.fire_log(), ["Disconnect"]);
    assert_eq!(b.now - t, secs(20));
    assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
}

#[test]
fn request_timeout_is_a_connection_error() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    b.fire();
    only_send(&b.connected());
    let t = b.now;
    assert_eq!(b.fire_log(), ["Disconnect"]);
    assert_eq!(b.now - t, secs(10));
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Registered, Clec::Ok));
}

/// Unreachable cloud while signing up: back-off delays within the full-jitter bounds, clec 0
/// for the first 5 failures, failed/2 after the 6th, then retries forever at the capped interval
/// and recovers by itself.
#[test]
fn unreachable_cloud_backoff_bounds_then_failed_then_recovery() {
    let mut b = Bench::new();
    b.s.configure(conf(), b.now).unwrap();
    b.s.set_provisioned(true, b.now);
    b.drain();
    for n in 1..=20u32 {
        b.s.handle_disconnected(b.now); // connect refused
        let log = b.log();
        if n == 6 {
            assert_eq!(log, ["Status failed 2"]);
        } else {
            assert!(log.is_empty(), "failure {n}: {log:?}");
        }
        let delay = b.s.poll_timeout().unwrap() - b.now;
        assert!(
            delay <= backoff_ceiling(n, secs(1), secs(60)),
            "failure {n}: {delay:?}"
        );
        if n == 1 {
            assert!(delay <= secs(1), "first retry within 1 s");
        }
        assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
    }
    assert_eq!((b.s.cps(), b.s.clec()), (Cps::Failed, Clec::ConnectFailed));
    // In `failed` a new configuration would be accepted (§4 rule 1); instead the cloud returns.
    let up = only_send(&b.connected());
    assert_eq!(up.path, "/oic/sec/account");
    let a = b.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1)));
    assert!(a.iter().any(|a| describe(a) == "Status registered 0"));
}

#[test]
fn unreachable_cloud_while_registered_reports_failed_2_and_recovers() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    for n in 1..=8u32 {
        assert!(b.s.poll_timeout().unwrap() - b.now <= backoff_ceiling(n, secs(1), secs(60)));
        b.fire();
        b.s.handle_disconnected(b.now);
        let log = b.log();
        if n == 5 {
            assert_eq!(log, ["Status failed 2"], "6th consecutive failure");
        } else {
            assert!(log.is_empty(), "{n}: {log:?}");
        }
    }
    b.fire();
    let sign_in = only_send(&b.connected());
    let log = b.respond_log(
        &sign_in,
        ResponseType::Changed,
        Some(json!({"expiresin": -1})),
    );
    assert_eq!(log, ["Status registered 0", "SignedIn -1"]);
    // Back-off reset by the successful sign-in: the next retry is within 1 s again.
    b.s.handle_disconnected(b.now);
    assert!(b.s.poll_timeout().unwrap() - b.now <= secs(1));
}

/// A board without a real-time clock before time sync: every attempt fails because the cloud's
/// certificate is not valid yet. The session keeps retrying with the usual back-off, reports the
/// clock once per run of such failures, never touches cps/clec (no `failed`, no configuration
/// dropped), and signs up as soon as the clock is right.
#[test]
fn a_clock_behind_is_retried_with_back_off_reported_once_and_never_fails() {
    let mut b = Bench::new();
    b.s.configure(conf(), b.now).unwrap();
    b.s.set_provisioned(true, b.now);
    let log = b.log();
    assert_eq!(log.last(), Some(&format!("Connect {CIS} {SID}")), "{log:?}");
    let status = (b.s.cps(), b.s.clec());
    assert_eq!(status, (Cps::Registering, Clec::Ok));
    for n in 1..=20u32 {
        b.s.handle_connect_failed(ConnectError::ClockBehind, b.now);
        let log = b.log();
        if n == 1 {
            assert_eq!(log, ["ClockBehind"]);
        } else {
            assert!(log.is_empty(), "failure {n}: {log:?}");
        }
        assert_eq!((b.s.cps(), b.s.clec()), status, "failure {n}");
        let delay = b.s.poll_timeout().unwrap() - b.now;
        assert!(
            delay <= backoff_ceiling(n, secs(1), secs(60)),
            "failure {n}: {delay:?}"
        );
        assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
    }
    // Clock failures are not failures of the cloud: the next network failures start counting
    // from zero towards `failed` (the 6th).
    for n in 1..=6u32 {
        b.s.handle_connect_failed(ConnectError::Network, b.now);
        let log = b.log();
        if n == 6 {
            assert_eq!(log, ["Status failed 2"]);
        } else {
            assert!(log.is_empty(), "network failure {n}: {log:?}");
        }
        b.fire();
    }
    // Time sync: the certificate is valid now, the sign-up goes out and succeeds.
    let up = only_send(&b.connected());
    assert_eq!(up.path, "/oic/sec/account");
    let a = b.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1)));
    assert!(a.iter().any(|a| describe(a) == "Status registered 0"));
    assert!(b.s.conf().is_some(), "the configuration is kept");
}

#[test]
fn a_clock_behind_after_a_connection_is_reported_again_and_a_sign_out_still_finishes() {
    let mut b = Bench::new();
    b.signed_in(-1);
    b.s.handle_disconnected(b.now);
    b.drain();
    // A reboot into 1970 (or a clock that jumped back): a new run, reported again.
    for n in 1..=10u32 {
        b.fire();
        b.s.handle_connect_failed(ConnectError::ClockBehind, b.now);
        let log = b.log();
        assert_eq!(log.is_empty(), n > 1, "failure {n}: {log:?}");
        assert_eq!((b.s.cps(), b.s.clec()), (Cps::Registered, Clec::Ok));
    }
    // A ClockBehind report is only for an attempt that was asked for.
    b.s.handle_connect_failed(ConnectError::ClockBehind, b.now);
    assert!(b.log().is_empty());
    // A reboot asked for meanwhile: the sign-out cannot reach the cloud; it still finishes.
    assert_eq!(b.fire_log(), [format!("Connect {CIS} {SID}")]);
    b.s.sign_out(b.now);
    let mut log = b.log();
    b.s.handle_connect_failed(ConnectError::ClockBehind, b.now);
    log.extend(b.log());
    assert_eq!(
        log.iter().filter(|l| *l == "SignedOut").count(),
        1,
        "{log:?}"
    );
    assert!(!log.contains(&"ClockBehind".to_string()), "{log:?}");
    assert_eq!(b.s.poll_timeout(), None, "no retry while signed out");
}

/// A fleet that loses its cloud at the same instant does not come back at the same instant.
#[test]
fn fleet_reconnects_are_spread_over_the_window() {
    let t0 = Instant::now();
    let delays: Vec<Duration> = (0..300u64)
        .map(|seed| {
            let mut s =
                CloudSession::restore(registered_state(-1), device(), Timing::default(), seed)
                    .unwrap();
            s.set_provisioned(true, t0);
            s.handle_connected(t0);
            s.handle_disconnected(t0);
            s.poll_timeout().unwrap() - t0
        })
        .collect();
    let max = *delays.iter().max().unwrap();
    let min = *delays.iter().min().unwrap();
    assert!(max <= secs(1));
    assert!(min < Duration::from_millis(20), "{min:?}");
    assert!(max > Duration::from_millis(980), "{max:?}");
    let early = delays
        .iter()
        .filter(|d| **d < Duration::from_millis(500))
        .count();
    assert!((120..180).contains(&early), "{early}");
}

#[test]
fn alternative_servers_are_tried_while_signing_up() {
    let mut b = Bench::new();
    let mut c = conf();
    c.servers = vec![
        CloudServer {
            uri: CIS.into(),
            id: SID.into(),
        },
        CloudServer {
            uri: ALT_CIS.into(),
            id: ALT_SID.into(),
        },
    ];
    b.s.configure(c, b.now).unwrap();
    b.s.set_provisioned(true, b.now);
    b.drain();
    let mut connects = Vec::new();
    for _ in 0..12 {
        b.s.handle_disconnected(b.now);
        let log = b.log();
        connects.push(b.fire_log());
        if connects.len() == 12 {
            assert_eq!(log, ["Status failed 2"], "both servers exhausted");
        } else {
            assert!(log.is_empty());
        }
    }
    assert!(connects[..5]
        .iter()
        .all(|l| *l == [format!("Connect {CIS} {SID}")]));
    assert!(connects[5..11]
        .iter()
        .all(|l| *l == [format!("Connect {ALT_CIS} {ALT_SID}")]));
    assert_eq!(
        connects[11],
        [format!("Connect {CIS} {SID}")],
        "round again"
    );
    // Registered at the alternative: it becomes the configured cloud.
    for _ in 0..6 {
        b.s.handle_disconnected(b.now);
        b.fire();
    }
    let up = only_send(&b.connected());
    let a = b.respond(&up, ResponseType::Changed, Some(sign_up_ok(-1)));
    let c = persisted(&a).unwrap().conf.unwrap();
    assert_eq!((c.cis.as_str(), c.sid.as_str()), (ALT_CIS, ALT_SID));
}

// ---------------------------------------------------------------------------------------------
// Robustness and secrecy
// ---------------------------------------------------------------------------------------------

#[test]
fn unrelated_or_malformed_input_is_ignored() {
    let mut b = Bench::new();
    // Nothing connected.
    assert!(!b
        .s
        .handle_response(&response(b"12345678", ResponseType::Changed, None), b.now));
    assert!(!b.s.handle_pong(b"x", b.now));
    b.s.handle_connected(b.now);
    assert_eq!(
        b.log(),
        ["Disconnect"],
        "an unrequested connection is closed"
    );
    b.s.handle_disconnected(b.now);
    b.s.handle_timeout(b.now);
    assert!(b.drain().is_empty());

    b.signed_in(-1);
    // Unknown token, a request code, an empty message.
    assert!(!b
        .s
        .handle_response(&response(b"nope", ResponseType::Changed, None), b.now));
    let mut req = Packet::new();
    req.header.code = MessageClass::Request(RequestType::Get);
    assert!(!b.s.handle_response(&req, b.now));
    assert!(!b.s.handle_response(&Packet::new(), b.now));
    assert!(b.drain().is_empty());
    // Early timeout calls do nothing.
    b.s.handle_timeout(b.now);
    assert!(b.drain().is_empty());
}

#[test]
fn garbage_response_bodies_never_panic() {
    let bodies: [&[u8]; 5] = [b"", b"\xff\xff", b"\xa1\x63uid", &[0x9f; 300], b"\xbf"];
    for body in bodies {
        for stage in 0..3 {
            let mut b = Bench::new();
            let mut req = b.until_sign_up();
            if stage >= 1 {
                req = only_send(&b.respond(&req, ResponseType::Changed, Some(sign_up_ok(300))));
            }
            if stage >= 2 {
                b.respond(&req, ResponseType::Changed, Some(json!({"expiresin": 300})));
                req = only_send(&b.run_until(b.now + secs(180)));
            }
            let mut p = response(&req.token, ResponseType::Changed, None);
            p.add_option_as(CoapOption::ContentFormat, OptionValueU16(CF_OCF_CBOR));
            p.payload = body.to_vec();
            assert!(b.s.handle_response(&p, b.now));
            assert_eq!(b.s.cps(), Cps::Failed, "stage {stage}");
            b.drain();
        }
    }
}

/// `at`, access and refresh tokens never appear in any `Debug` output: of the session, of any
/// action (including request bodies and queries), of the persisted state.
#[test]
fn secrets_never_in_debug_output() {
    let mut dbg = String::new();
    let mut b = Bench::new();
    let record = |b: &mut Bench, dbg: &mut String| {
        let actions = b.drain();
        *dbg += &format!(
            "{:?} {:?} {actions:?} {:#?}",
            b.s,
            b.s.persisted_state(),
            actions
        );
        actions
    };
    b.s.configure(conf(), b.now).unwrap();
    b.s.set_provisioned(true, b.now);
    record(&mut b, &mut dbg);
    b.s.handle_connected(b.now);
    let up = only_send(&record(&mut b, &mut dbg));
    b.s.handle_response(
        &response(&up.token, ResponseType::Changed, Some(sign_up_ok(20))),
        b.now,
    );
    let sign_in = only_send(&record(&mut b, &mut dbg));
    // Deregistration before sign-in puts the token in the query: still redacted.
    b.s.deregister(b.now);
    let del = only_send(&record(&mut b, &mut dbg));
    assert!(del.queries.iter().any(|q| q.contains(AT1)));
    drop(sign_in);
    dbg += &format!("{:?}", conf());
    for secret in [AT, AT1, RT1] {
        assert!(!dbg.contains(secret), "{secret} leaked");
    }
    assert!(dbg.contains("Secret(<redacted>)"));
    assert!(dbg.contains("/oic/sec/account"));
}

/// A plausible answer to a request (what a working cloud would say).
fn good_answer(r: &Req, rng: &mut SplitMix64) -> (ResponseType, Option<Value>) {
    let lifetime = [-1, 0, 5, 30, 400][rng.below_inclusive(4) as usize];
    match (r.code, r.path.as_str()) {
        (0x02, "/oic/sec/account") => (ResponseType::Changed, Some(sign_up_ok(lifetime))),
        (0x02, "/oic/sec/session") if r.body["login"] == true => {
            (ResponseType::Changed, Some(json!({"expiresin": lifetime})))
        }
        (0x02, "/oic/sec/session") => (ResponseType::Changed, Some(json!({}))),
        (0x02, "/oic/sec/tokenrefresh") => (
            ResponseType::Changed,
            Some(json!({"accesstoken": "a2", "refreshtoken": "r2", "expiresin": lifetime})),
        ),
        (0x02, "/oic/rd") => {
            let links: Vec<Value> = r.body["links"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .enumerate()
                        .map(|(i, l)| json!({"href": l["href"], "ins": i}))
                        .collect()
                })
                .unwrap_or_default();
            (ResponseType::Changed, Some(json!({"links": links})))
        }
        _ => (ResponseType::Deleted, None),
    }
}

/// A long random walk through every input, mostly plausible, sometimes hostile: no panic, the
/// reported status always matches the last `StatusChanged`, and never a second sign-up after a
/// successful one for the same configuration (plgd hub#396).
#[test]
fn random_walk_never_repeats_a_successful_sign_up() {
    let mut rng = SplitMix64::new(2024);
    let mut b = Bench::with(CloudSession::new(device(), Timing::default(), 7));
    let mut last_sent: Option<Req> = None;
    let mut last_ping: Option<Vec<u8>> = None;
    let mut registered = false;
    let mut configured_secret = 0u64;
    let codes = [
        ResponseType::Changed,
        ResponseType::BadRequest,
        ResponseType::Unauthorized,
        ResponseType::ServiceUnavailable,
        ResponseType::InternalServerError,
    ];
    let bodies = [
        None,
        Some(sign_up_ok(5)),
        Some(json!({"expiresin": 30})),
        Some(json!({"accesstoken": "a2", "refreshtoken": "", "expiresin": 25})),
        Some(json!([1, 2, 3])),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..50_000 {
        b.advance(Duration::from_millis(rng.below_inclusive(2000)));
        match rng.below_inclusive(99) {
            0 => {
                configured_secret += 1;
                let mut c = conf();
                c.at = Secret::new(format!("code-{configured_secret}"));
                if b.s.configure(c, b.now).is_ok() {
                    registered = false;
                }
            }
            1 => b.s.deregister(b.now),
            2 => b.s.sign_out(b.now),
            3..=5 => b.s.resume(b.now),
            6..=8 => b.s.set_provisioned(rng.below_inclusive(4) != 0, b.now),
            9..=20 => b.s.handle_connected(b.now),
            21..=23 => b.s.handle_disconnected(b.now),
            24..=60 => {
                if let Some(r) = &last_sent {
                    let (code, body) = if rng.below_inclusive(9) < 8 {
                        good_answer(r, &mut rng)
                    } else {
                        (
                            codes[rng.below_inclusive(4) as usize],
                            bodies[rng.below_inclusive(4) as usize].clone(),
                        )
                    };
                    b.s.handle_response(&response(&r.token, code, body), b.now);
                }
            }
            61..=85 => {
                if let Some(at) = b.s.poll_timeout() {
                    b.now = b.now.max(at);
                }
                b.s.handle_timeout(b.now);
            }
            86..=88 => {
                let n = rng.below_inclusive(3);
                let links = (0..n).map(|i| link(&format!("/l/{i}"), "x.l")).collect();
                b.s.set_links(links, b.now);
            }
            89..=95 => {
                if let Some(t) = &last_ping {
                    b.s.handle_pong(t, b.now);
                }
            }
            _ => b.s.handle_received(b.now),
        }
        let mut last_status = None;
        for a in b.drain() {
            let kind = describe(&a);
            let kind = kind.split(' ').next().unwrap_or_default().to_owned();
            *seen.entry(kind).or_insert(0u32) += 1;
            match &a {
                Action::Send(p) => {
                    let r = Req::from_packet(p);
                    if r.code == 0x02 && r.path == "/oic/sec/account" {
                        assert!(!registered, "second sign-up for the same configuration");
                    }
                    last_sent = Some(r);
                }
                Action::SendPing { token } => last_ping = Some(token.clone()),
                Action::Event(SessionEvent::Registered { .. }) => registered = true,
                Action::Event(SessionEvent::Deregistered) => registered = false,
                Action::Event(SessionEvent::StatusChanged { cps, clec }) => {
                    last_status = Some((*cps, *clec))
                }
                _ => {}
            }
        }
        if let Some(status) = last_status {
            assert_eq!(status, (b.s.cps(), b.s.clec()));
        }
        if let Some(at) = b.s.poll_timeout() {
            // No timer further away than the longest configured delay or token lifetime.
            assert!(at <= b.now + secs(400), "{:?}", at - b.now);
        }
    }
    // The walk reaches every kind of outcome.
    for kind in [
        "Registered",
        "SignedIn",
        "Published",
        "Unpublished",
        "Deregistered",
        "SignedOut",
        "Ping",
        "DELETE",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 3,
            "{kind}: {seen:?}"
        );
    }
}

/// A cloud may answer any `expiresin` (OCF-PROTOCOL.md §7.4): huge, `i64::MAX`, zero or negative
/// values, at sign-up, sign-in and refresh. None stops the session; `cps` stays `registered`,
/// a lifetime beyond [`MAX_TOKEN_LIFETIME_SECS`] is refreshed on that cap's schedule, and `<= 0`
/// is never refreshed.
#[test]
fn any_expiresin_is_survived_and_scheduled_by_the_rules() {
    let cap = MAX_TOKEN_LIFETIME_SECS as u64;
    for expiresin in [
        i64::MAX,
        i64::MAX - 1,
        i64::MIN,
        -1,
        0,
        1,
        u32::MAX as i64,
        1 << 40,
        1 << 62,
        MAX_TOKEN_LIFETIME_SECS + 1,
    ] {
        // Pings every 30 days: a year of virtual time in a few thousand steps.
        let timing = Timing {
            ping_interval: secs(30 * 24 * 3600),
            ..Timing::default()
        };
        let mut b = Bench::with(CloudSession::new(device(), timing, 42));
        b.signed_in(expiresin);
        assert_eq!(b.s.cps(), Cps::Registered, "expiresin {expiresin}");
        assert_eq!(b.s.clec(), Clec::Ok, "expiresin {expiresin}");
        let start = b.now;
        if expiresin <= 0 {
            assert!(b.run_until(start + secs(2 * cap)).is_empty(), "{expiresin}");
            continue;
        }
        // The refresh comes by the §7.4 schedule of min(expiresin, cap).
        let lifetime = expiresin.min(MAX_TOKEN_LIFETIME_SECS);
        let due = start + refresh_delay(lifetime).unwrap();
        let a = b.run_until(due - Duration::from_millis(1));
        assert!(sends(&a).is_empty(), "early refresh for {expiresin}");
        let a = b.run_until(due);
        let refresh = only_send(&a);
        assert_eq!(refresh.path, "/oic/sec/tokenrefresh", "{expiresin}");
        // The refresh answers the same: still registered, and signed in again.
        let a = b.respond(
            &refresh,
            ResponseType::Changed,
            Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": expiresin})),
        );
        let sign_in = only_send(&a);
        b.respond(
            &sign_in,
            ResponseType::Changed,
            Some(json!({"expiresin": expiresin})),
        );
        assert!(b.s.is_signed_in(), "{expiresin}");
        assert_eq!(b.s.cps(), Cps::Registered, "{expiresin}");
        assert!(b.s.poll_timeout().is_some());
    }
}

/// The same values through a restart: the persisted registration restores and signs in again.
#[test]
fn any_persisted_expiresin_restores() {
    for expiresin in [i64::MAX, i64::MIN, 0, 1 << 62] {
        let mut b = Bench::restore(registered_state(expiresin));
        b.s.set_provisioned(true, b.now);
        b.drain();
        let first = only_send(&b.connected());
        let sign_in = if first.path == "/oic/sec/tokenrefresh" {
            let a = b.respond(
                &first,
                ResponseType::Changed,
                Some(json!({"accesstoken": "AT2", "refreshtoken": "RT2", "expiresin": expiresin})),
            );
            only_send(&a)
        } else {
            first
        };
        b.respond(
            &sign_in,
            ResponseType::Changed,
            Some(json!({"expiresin": expiresin})),
        );
        assert!(b.s.is_signed_in(), "{expiresin}");
        assert_eq!(b.s.cps(), Cps::Registered);
    }
}

mod arbitrary_cloud {
    //! Property: whatever the cloud answers to whatever the session sent, and in whatever order
    //! its timers are run, the session never panics.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Body {
        None,
        Bytes(Vec<u8>),
        Fields {
            expiresin: i64,
            accesstoken: String,
            refreshtoken: String,
            uid: String,
            redirecturi: String,
            links: Vec<(String, i64)>,
        },
    }

    #[derive(Debug, Clone)]
    enum Step {
        Configure,
        Deregister,
        SignOut,
        Resume,
        Provisioned(bool),
        Connected,
        ConnectFailed(bool),
        Disconnected,
        /// Answer the last request (or an unknown token) with this code, body and format.
        Respond {
            code: u8,
            body: Body,
            format: Option<u16>,
            right_token: bool,
        },
        /// Run the timers this many milliseconds later, due or not.
        Timeout(u64),
        /// Jump to the armed deadline exactly.
        FireDue,
        Pong,
        Received,
        Links(u8),
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            Just(Body::None),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Bytes),
            (
                prop_oneof![
                    any::<i64>(),
                    Just(i64::MAX),
                    Just(i64::MIN),
                    Just(0i64),
                    -5i64..5000
                ],
                "[a-z0-9]{0,6}",
                "[a-z0-9]{0,6}",
                "[a-z0-9|]{0,6}",
                prop_oneof![
                    Just(String::new()),
                    Just("coaps+tcp://other.example:5684".to_string()),
                    "[ -~]{0,12}"
                ],
                prop::collection::vec(("/[a-z]{1,3}", any::<i64>()), 0..3),
            )
                .prop_map(
                    |(expiresin, accesstoken, refreshtoken, uid, redirecturi, links)| {
                        Body::Fields {
                            expiresin,
                            accesstoken,
                            refreshtoken,
                            uid,
                            redirecturi,
                            links,
                        }
                    },
                ),
        ]
    }

    fn format() -> impl Strategy<Value = Option<u16>> {
        prop_oneof![
            Just(None),
            Just(Some(CF_OCF_CBOR)),
            Just(Some(50)),
            any::<u16>().prop_map(Some)
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => Just(Step::Configure),
            1 => Just(Step::Deregister),
            1 => Just(Step::SignOut),
            1 => Just(Step::Resume),
            1 => any::<bool>().prop_map(Step::Provisioned),
            3 => Just(Step::Connected),
            1 => any::<bool>().prop_map(Step::ConnectFailed),
            1 => Just(Step::Disconnected),
            8 => (any::<u8>(), body(), format(), prop::bool::weighted(0.9)).prop_map(
                |(code, body, format, right_token)| Step::Respond { code, body, format, right_token }
            ),
            3 => prop_oneof![0u64..5_000, 0u64..40_000_000_000].prop_map(Step::Timeout),
            3 => Just(Step::FireDue),
            1 => Just(Step::Pong),
            1 => Just(Step::Received),
            1 => any::<u8>().prop_map(Step::Links),
        ]
    }

    fn packet(token: &[u8], code: u8, body: &Body, format: Option<u16>) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::from(code);
        p.set_token(token.to_vec());
        if let Some(cf) = format {
            p.add_option_as(CoapOption::ContentFormat, OptionValueU16(cf));
        }
        p.payload = match body {
            Body::None => Vec::new(),
            Body::Bytes(b) => b.clone(),
            Body::Fields {
                expiresin,
                accesstoken,
                refreshtoken,
                uid,
                redirecturi,
                links,
            } => {
                let links: Vec<Value> = links
                    .iter()
                    .map(|(href, ins)| json!({"href": href, "ins": ins}))
                    .collect();
                let v = json!({"expiresin": expiresin, "accesstoken": accesstoken,
                    "refreshtoken": refreshtoken, "uid": uid, "redirecturi": redirecturi,
                    "links": links});
                if format == Some(50) {
                    serde_json::to_vec(&v).unwrap()
                } else {
                    to_cbor(&v).unwrap()
                }
            }
        };
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn cloud_session_never_panics(steps in prop::collection::vec(step(), 1..120)) {
            let mut b = Bench::with(CloudSession::new(device(), Timing::default(), 7));
            let mut last_token: Vec<u8> = Vec::new();
            let mut last_ping: Vec<u8> = Vec::new();
            for step in steps {
                match step {
                    Step::Configure => { let _ = b.s.configure(conf(), b.now); }
                    Step::Deregister => b.s.deregister(b.now),
                    Step::SignOut => b.s.sign_out(b.now),
                    Step::Resume => b.s.resume(b.now),
                    Step::Provisioned(p) => b.s.set_provisioned(p, b.now),
                    Step::Connected => b.s.handle_connected(b.now),
                    Step::ConnectFailed(clock) => b.s.handle_connect_failed(
                        if clock { ConnectError::ClockBehind } else { ConnectError::Network },
                        b.now,
                    ),
                    Step::Disconnected => b.s.handle_disconnected(b.now),
                    Step::Respond { code, body, format, right_token } => {
                        let token = if right_token { last_token.clone() } else { vec![0xAB; 4] };
                        b.s.handle_response(&packet(&token, code, &body, format), b.now);
                    }
                    Step::Timeout(ms) => {
                        b.advance(Duration::from_millis(ms));
                        b.s.handle_timeout(b.now);
                    }
                    Step::FireDue => {
                        if let Some(at) = b.s.poll_timeout() {
                            b.now = b.now.max(at);
                        }
                        b.s.handle_timeout(b.now);
                    }
                    Step::Pong => { b.s.handle_pong(&last_ping, b.now); }
                    Step::Received => b.s.handle_received(b.now),
                    Step::Links(n) => {
                        let links = (0..n % 4).map(|i| link(&format!("/l/{i}"), "x.l")).collect();
                        b.s.set_links(links, b.now);
                    }
                }
                for a in b.drain() {
                    match a {
                        Action::Send(p) => last_token = p.get_token().to_vec(),
                        Action::SendPing { token } => last_ping = token,
                        _ => {}
                    }
                }
                let _ = b.s.persisted_state().to_cbor();
                let _ = crate::cloud::resource::representation(&b.s);
            }
        }
    }
}
