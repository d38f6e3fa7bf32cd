//! Unit tests of [`CloudLink`] on a virtual clock: `Instant::now()` once, then Durations. The
//! cloud's side of the connection is a [`TcpConnection`] driven by the test.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use coap_lite::{MessageClass, Packet, RequestType, ResponseType};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::cloud::payload::{from_cbor, to_cbor, CloudConf, LinkPolicy, RdLink};
use crate::cloud::session::{CloudSession, DeviceInfo, Timing, URI_ACCOUNT, URI_RD, URI_SESSION};
use crate::coap::signal::Signal;
use crate::coap::tcp;

const DI: &str = "c0ffee00-0000-4000-8000-000000000001";
const SID: &str = "00000000-0000-0000-0000-000000000001";
const CIS: &str = "coaps+tcp://cloud.example:5684";
/// What the device accepts from the cloud.
const OUR_MAX: u32 = 64 * 1024;

fn timing() -> Timing {
    Timing {
        max_missed_pongs: 1,
        ..Timing::default()
    }
}

fn session(now: Instant) -> SharedSession {
    let mut s = CloudSession::new(
        DeviceInfo {
            di: DI.into(),
            name: "Pi".into(),
        },
        timing(),
        7,
    );
    s.configure(
        CloudConf {
            cis: CIS.into(),
            sid: SID.into(),
            apn: "plgd".into(),
            at: "code".into(),
            servers: vec![],
        },
        now,
    )
    .unwrap();
    s.set_provisioned(true, now);
    Rc::new(RefCell::new(s))
}

fn links(n: usize) -> Vec<RdLink> {
    (0..n)
        .map(|i| RdLink {
            href: format!("/sensor/{i}/with/a/longish/path"),
            rt: vec!["oic.r.temperature".into(), format!("x.example.kind{i}")],
            ifs: vec!["oic.if.s".into(), "oic.if.baseline".into()],
            p: Some(LinkPolicy { bm: 3 }),
            ..Default::default()
        })
        .collect()
}

fn path(p: &Packet) -> String {
    let mut s = String::new();
    for seg in p.get_option(CoapOption::UriPath).into_iter().flatten() {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(seg));
    }
    s
}

fn response(token: &[u8], code: ResponseType, body: Option<Value>) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(code);
    p.set_token(token.to_vec());
    if let Some(b) = body {
        p.payload = to_cbor(&b).unwrap();
    }
    p
}

fn block1(p: &Packet) -> Option<Block> {
    p.get_first_option(CoapOption::Block1)
        .and_then(|b| Block::decode(b))
}

/// The link, the cloud's end of the connection, and the virtual clock.
struct Bench {
    link: CloudLink,
    cloud: TcpConnection,
    now: Instant,
    /// Everything the link asked for except bytes, described.
    log: Vec<String>,
    /// Pongs and Aborts the cloud's end produced, not yet fed back.
    cloud_out: Vec<u8>,
    /// Raw frames the link wrote on this connection, in order.
    frames: Vec<Vec<u8>>,
}

impl Bench {
    fn new(cloud_max: u32) -> Bench {
        let now = Instant::now();
        Bench {
            link: CloudLink::new(session(now), OUR_MAX),
            cloud: TcpConnection::new(cloud_max),
            now,
            log: Vec::new(),
            cloud_out: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// Drains the link: bytes go to the cloud's end, its messages come back.
    fn drain(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        while let Some(o) = self.link.poll_output() {
            match o {
                Output::Transmit(bytes) => {
                    self.frames.push(bytes.clone());
                    for ev in self.cloud.receive(&bytes) {
                        match ev {
                            ConnEvent::Message(p) => got.push(p),
                            ConnEvent::Transmit(b) => self.cloud_out.extend(b),
                            ConnEvent::Pong { .. } => {}
                            ConnEvent::Close { reason } => {
                                self.log.push(format!("cloud: {reason}"))
                            }
                        }
                    }
                }
                Output::Request(p) => {
                    self.log.push(format!("Request {}", path(&p)));
                    got.push(p);
                }
                Output::Connect { uri, .. } => self.log.push(format!("Connect {uri}")),
                Output::Close { release, reason } => self.log.push(format!(
                    "Close {reason}{}",
                    if release.is_some() { " +release" } else { "" }
                )),
                Output::Session(SessionEvent::Published { links }) => {
                    self.log.push(format!("Published {}", links.len()))
                }
                Output::Session(SessionEvent::StatusChanged { cps, .. }) => {
                    self.log.push(format!("Status {cps}"))
                }
                other => self.log.push(format!("{other:?}")),
            }
        }
        got
    }

    fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// Connects: a fresh cloud end with its CSM announcing `cloud_max`.
    fn connect(&mut self) -> Vec<Packet> {
        self.frames.clear();
        let max = self.cloud.max_message_size();
        self.cloud = TcpConnection::new(max);
        self.link.connected(self.now);
        let got = self.drain();
        let csm = self.cloud.start();
        self.link.receive(&csm, self.now);
        let mut more = self.drain();
        let mut all = got;
        all.append(&mut more);
        all
    }

    fn send(&mut self, p: &Packet) -> Vec<Packet> {
        let bytes = tcp::encode(p).unwrap();
        self.link.receive(&bytes, self.now);
        self.drain()
    }

    fn advance(&mut self, d: Duration) -> Vec<Packet> {
        self.now += d;
        self.link.handle_timeout(self.now);
        self.drain()
    }

    /// Signs up and in; returns what followed the sign-in's answer.
    fn sign_in(&mut self) -> Vec<Packet> {
        assert_eq!(self.drain(), []);
        assert!(self.take_log().contains(&format!("Connect {CIS}")));
        let up = self.connect();
        let [up] = &up[..] else { panic!("{up:?}") };
        assert_eq!(path(up), URI_ACCOUNT);
        let body = json!({"accesstoken": "AT", "refreshtoken": "RT", "uid": "u", "expiresin": -1});
        let sign_in = self.send(&response(up.get_token(), ResponseType::Changed, Some(body)));
        let [sign_in] = &sign_in[..] else {
            panic!("{sign_in:?}")
        };
        assert_eq!(path(sign_in), URI_SESSION);
        self.send(&response(
            sign_in.get_token(),
            ResponseType::Changed,
            Some(json!({"expiresin": -1})),
        ))
    }
}

#[test]
fn our_csm_goes_out_first_on_connect() {
    let mut b = Bench::new(1152);
    b.drain();
    assert_eq!(b.take_log().last(), Some(&format!("Connect {CIS}")));
    b.link.connected(b.now);
    let got = b.drain();
    let first = tcp::decode(&b.frames[0]).unwrap().0;
    assert_eq!(
        Signal::from_packet(&first).unwrap(),
        Some(Signal::Csm {
            max_message_size: Some(OUR_MAX),
            block_wise_transfer: false
        })
    );
    // Then the sign-up, without waiting for the cloud's CSM.
    assert_eq!(got.len(), 1);
    assert_eq!(path(&got[0]), URI_ACCOUNT);
}

#[test]
fn a_forwarded_request_comes_out_and_its_response_is_fitted_to_the_clouds_size() {
    let mut b = Bench::new(600);
    b.sign_in();
    let mut get = Packet::new();
    get.header.code = MessageClass::Request(RequestType::Get);
    get.set_token(vec![1, 2, 3, 4]);
    get.add_option(CoapOption::UriPath, b"oic".to_vec());
    get.add_option(CoapOption::UriPath, b"res".to_vec());
    b.link.receive(&tcp::encode(&get).unwrap(), b.now);
    let Some(Output::Request(request)) = b.link.poll_output() else {
        panic!("no request")
    };
    assert_eq!(
        (request.get_token(), path(&request)),
        (&[1u8, 2, 3, 4][..], "/oic/res".into())
    );
    let mut answer = response(&[1, 2, 3, 4], ResponseType::Content, None);
    answer.payload = vec![0x61; 3000];
    b.link.respond(&request, answer);
    let got = b.drain();
    let [first] = &got[..] else { panic!("{got:?}") };
    let block = first
        .get_first_option(CoapOption::Block2)
        .and_then(|v| Block::decode(v))
        .expect("Block2");
    assert!(block.num == 0 && block.more, "{block:?}");
    // RFC 8323 §5.3.1: the whole frame within the cloud's 600 bytes.
    assert!(b.frames.last().unwrap().len() <= 600);
    assert_eq!(first.get_token(), [1, 2, 3, 4]);
}

#[test]
fn a_response_goes_out_before_what_followed_its_request() {
    let mut b = Bench::new(1152);
    b.sign_in();
    let mut get = Packet::new();
    get.header.code = MessageClass::Request(RequestType::Get);
    get.set_token(vec![5, 5, 5, 5]);
    let mut bytes = tcp::encode(&get).unwrap();
    bytes.extend(tcp::encode(&Signal::Ping { custody: true }.to_packet(&[9, 9, 9, 9])).unwrap());
    b.link.receive(&bytes, b.now);
    let Some(Output::Request(request)) = b.link.poll_output() else {
        panic!("no request")
    };
    b.link.respond(
        &request,
        response(&[5, 5, 5, 5], ResponseType::Content, None),
    );
    b.frames.clear();
    b.drain();
    // RFC 8323 §5.4: the Pong with Custody comes after the answer to what preceded the Ping.
    let kinds: Vec<u8> = b
        .frames
        .iter()
        .map(|f| u8::from(tcp::decode(f).unwrap().0.header.code))
        .collect();
    assert_eq!(kinds, [0x45, 0xE3]);
}

#[test]
fn a_notification_larger_than_the_clouds_limit_goes_out_as_its_first_block() {
    let mut b = Bench::new(600);
    b.sign_in();
    let mut note = response(&[7, 7, 7, 7], ResponseType::Content, None);
    note.add_option(CoapOption::Observe, vec![3]);
    note.payload = vec![0x62; 2000];
    b.link.notify(note);
    let got = b.drain();
    let [first] = &got[..] else { panic!("{got:?}") };
    let block = first
        .get_first_option(CoapOption::Block2)
        .and_then(|v| Block::decode(v))
        .unwrap();
    assert!(block.num == 0 && block.more);
    assert!(first.get_first_option(CoapOption::Observe).is_some());
    assert!(b.frames.last().unwrap().len() <= 600);
}

#[test]
fn keepalive_pings_and_a_missing_pong_closes_and_schedules_a_reconnect() {
    let mut b = Bench::new(1152);
    b.sign_in();
    b.take_log();
    let t = timing();
    // Idle: a Ping, answered.
    b.frames.clear();
    b.advance(t.ping_interval);
    let ping = tcp::decode(b.frames.last().expect("a Ping")).unwrap().0;
    assert_eq!(
        Signal::from_packet(&ping).unwrap(),
        Some(Signal::Ping { custody: false })
    );
    let pong = std::mem::take(&mut b.cloud_out);
    b.link.receive(&pong, b.now);
    b.drain();
    assert_eq!(b.take_log(), Vec::<String>::new());
    // Idle again, and this time the Pong does not come.
    b.advance(t.ping_interval);
    b.cloud_out.clear();
    b.advance(t.pong_timeout);
    let log = b.take_log();
    assert!(
        log.contains(&"Close closing +release".to_string()),
        "{log:?}"
    );
    assert!(!b.link.is_connected());
    // The reconnect is scheduled, not immediate.
    let at = b.link.poll_timeout().expect("a back-off");
    assert!(at > b.now);
    b.now = at;
    b.link.handle_timeout(b.now);
    b.drain();
    assert!(b.take_log().contains(&format!("Connect {CIS}")));
}

#[test]
fn a_bad_frame_gets_an_abort_and_the_link_reconnects_later() {
    let mut b = Bench::new(1152);
    b.sign_in();
    b.take_log();
    b.frames.clear();
    // TKL 9: RFC 8323 §3.2 makes it a message format error.
    b.link
        .receive(&[0x09, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9], b.now);
    b.drain();
    let abort = tcp::decode(&b.frames[0]).unwrap().0;
    assert!(matches!(
        Signal::from_packet(&abort).unwrap(),
        Some(Signal::Abort { .. })
    ));
    let log = b.take_log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("Close closed by the cloud: aborted")),
        "{log:?}"
    );
    assert!(!b.link.is_connected());
    assert!(b.link.poll_timeout().is_some(), "a reconnect is scheduled");
    // Later bytes of that connection are ignored.
    b.link.receive(&[0x00, 0x00], b.now);
    assert_eq!(b.drain(), []);
}

/// Answers the blocks of a block-wise request with 2.31 until the last; returns the body and
/// the blocks.
fn upload(b: &mut Bench, first: Packet) -> (Packet, Vec<Block>) {
    let mut blocks = Vec::new();
    let mut body = Vec::new();
    let mut p = first;
    loop {
        let bl = block1(&p).expect("Block1");
        assert_eq!(bl.num as usize * bl.size(), body.len(), "in order");
        body.extend_from_slice(&p.payload);
        blocks.push(bl);
        if !bl.more {
            let mut whole = p.clone();
            whole.payload = body;
            return (whole, blocks);
        }
        assert_eq!(p.payload.len(), bl.size());
        let mut cont = response(p.get_token(), ResponseType::Continue, None);
        cont.add_option(CoapOption::Block1, bl.encode());
        let next = b.send(&cont);
        let [next] = &next[..] else {
            panic!("{next:?}")
        };
        p = next.clone();
    }
}

#[test]
fn a_publish_larger_than_the_clouds_limit_goes_block_wise_and_completes() {
    let mut b = Bench::new(600);
    let many = links(12);
    b.link.session().borrow_mut().set_links(many, b.now);
    let after = b.sign_in();
    let [first] = &after[..] else {
        panic!("{after:?}")
    };
    assert_eq!(path(first), URI_RD);
    let size1 = first.get_first_option(CoapOption::Size1).expect("Size1");
    let (whole, blocks) = upload(&mut b, first.clone());
    let size1 = size1
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    assert_eq!(size1, whole.payload.len());
    assert!(whole.payload.len() > 600, "{}", whole.payload.len());
    // 600 - room for the options: 256-byte blocks.
    assert!(blocks.iter().all(|bl| bl.szx == 4), "{blocks:?}");
    assert!(blocks.len() >= 3);
    for f in &b.frames {
        assert!(f.len() <= 600, "a frame of {} bytes", f.len());
    }
    let body: Value = from_cbor(&whole.payload).unwrap();
    assert_eq!(body["links"].as_array().unwrap().len(), 12);
    b.take_log();
    b.send(&response(
        whole.get_token(),
        ResponseType::Changed,
        Some(json!({"links": []})),
    ));
    assert!(b.take_log().contains(&"Published 12".to_string()));
    assert!(b.link.is_connected());
}

#[test]
fn the_cloud_may_ask_for_smaller_blocks() {
    let mut b = Bench::new(1152);
    b.link.session().borrow_mut().set_links(links(20), b.now);
    let after = b.sign_in();
    let first = after[0].clone();
    let bl = block1(&first).unwrap();
    assert_eq!(bl.szx, 6);
    // RFC 7959 §2.5 (Figure 6): the cloud acknowledges block 0 in 256-byte units.
    let mut cont = response(first.get_token(), ResponseType::Continue, None);
    cont.add_option(
        CoapOption::Block1,
        Block {
            num: 0,
            more: true,
            szx: 4,
        }
        .encode(),
    );
    let next = b.send(&cont);
    let bl = block1(&next[0]).unwrap();
    assert_eq!((bl.num, bl.szx), (4, 4), "the byte offset is kept");
}

#[test]
fn a_413_mid_way_ends_the_block_wise_publish_cleanly() {
    let mut b = Bench::new(600);
    b.link.session().borrow_mut().set_links(links(12), b.now);
    let after = b.sign_in();
    let first = after[0].clone();
    let mut cont = response(first.get_token(), ResponseType::Continue, None);
    cont.add_option(CoapOption::Block1, block1(&first).unwrap().encode());
    let second = b.send(&cont);
    assert_eq!(block1(&second[0]).unwrap().num, 1);
    b.take_log();
    let mut too_large = response(first.get_token(), ResponseType::RequestEntityTooLarge, None);
    too_large.payload = b"too large".to_vec();
    let next = b.send(&too_large);
    assert_eq!(next, [], "no further block");
    let log = b.take_log();
    assert!(!log.iter().any(|l| l.starts_with("Published")), "{log:?}");
    assert!(b.link.is_connected(), "the connection stays");
    // A late 2.31 for that token is no longer part of any transfer.
    b.send(&cont);
    assert_eq!(b.drain(), []);
    assert!(b.link.is_connected());
}

#[test]
fn a_continue_for_the_wrong_block_ends_the_transfer() {
    let mut b = Bench::new(600);
    b.link.session().borrow_mut().set_links(links(12), b.now);
    let after = b.sign_in();
    let first = after[0].clone();
    let mut cont = response(first.get_token(), ResponseType::Continue, None);
    cont.add_option(
        CoapOption::Block1,
        Block {
            num: 5,
            more: true,
            szx: 4,
        }
        .encode(),
    );
    b.take_log();
    assert_eq!(b.send(&cont), []);
    assert!(b.take_log()[0].starts_with("Undeliverable"));
    // The session's request timeout takes over: a connection error, then a reconnect.
    b.advance(timing().request_timeout);
    assert!(b.take_log().iter().any(|l| l.starts_with("Close closing")));
}

#[test]
fn transport_loss_drops_what_was_queued_for_the_connection() {
    let mut b = Bench::new(1152);
    b.sign_in();
    let mut get = Packet::new();
    get.header.code = MessageClass::Request(RequestType::Get);
    get.set_token(vec![1, 1, 1, 1]);
    b.link.receive(&tcp::encode(&get).unwrap(), b.now);
    b.link.transport_lost(b.now);
    assert!(!b.link.is_connected());
    let mut rest = Vec::new();
    while let Some(o) = b.link.poll_output() {
        rest.push(o);
    }
    assert!(
        !rest
            .iter()
            .any(|o| matches!(o, Output::Request(_) | Output::Transmit(_))),
        "{rest:?}"
    );
    // An answer after the loss goes nowhere.
    b.link
        .respond(&get, response(&[1, 1, 1, 1], ResponseType::Content, None));
    assert!(b.link.poll_output().is_none());
}

#[test]
fn a_slow_observer_closes_with_a_release_and_a_replaced_session_too() {
    let mut b = Bench::new(1152);
    b.sign_in();
    b.take_log();
    b.link.notifications_overflowed(b.now);
    b.drain();
    let log = b.take_log();
    assert_eq!(log[0], "Close observer too slow +release", "{log:?}");
    assert!(b.link.poll_timeout().is_some(), "a reconnect is scheduled");

    let mut b = Bench::new(1152);
    b.sign_in();
    b.take_log();
    *b.link.session().borrow_mut() = CloudSession::new(
        DeviceInfo {
            di: DI.into(),
            name: "Pi".into(),
        },
        timing(),
        1,
    );
    b.link.session_replaced();
    b.drain();
    assert_eq!(b.take_log(), ["Close factory reset +release"]);
    assert_eq!(b.link.poll_timeout(), None);
}

/// An input the property test applies.
#[derive(Debug, Clone)]
enum Step {
    Connected,
    ConnectFailed(bool),
    Receive(Vec<u8>),
    ReceiveResponse {
        to_last: bool,
        code: u8,
        block1: Option<u32>,
    },
    Lost,
    Overflowed,
    Replaced,
    Notify(usize),
    Respond(usize),
    Advance(u64),
    Timeout,
    Csm(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Connected),
        any::<bool>().prop_map(Step::ConnectFailed),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Step::Receive),
        (any::<bool>(), any::<u8>(), prop::option::of(0u32..0x1000)).prop_map(
            |(to_last, code, block1)| Step::ReceiveResponse {
                to_last,
                code,
                block1
            }
        ),
        Just(Step::Lost),
        Just(Step::Overflowed),
        Just(Step::Replaced),
        (0usize..3000).prop_map(Step::Notify),
        (0usize..3000).prop_map(Step::Respond),
        (0u64..40_000).prop_map(Step::Advance),
        Just(Step::Timeout),
        (0u16..2000).prop_map(Step::Csm),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_events_and_timer_orders_never_panic(
        steps in prop::collection::vec(step(), 0..60),
        n_links in 0usize..20,
    ) {
        let now0 = Instant::now();
        let mut now = now0;
        let mut link = CloudLink::new(session(now), 2048);
        link.session().borrow_mut().set_links(links(n_links), now);
        let mut last_token: Vec<u8> = vec![0; 8];
        let mut last_request = Packet::new();
        for s in steps {
            match s {
                Step::Connected => link.connected(now),
                Step::ConnectFailed(clock) => link.connect_failed(
                    if clock { ConnectError::ClockBehind } else { ConnectError::Network },
                    now,
                ),
                Step::Receive(bytes) => link.receive(&bytes, now),
                Step::ReceiveResponse { to_last, code, block1 } => {
                    let mut p = Packet::new();
                    p.header.code = MessageClass::from(code);
                    p.set_token(if to_last { last_token.clone() } else { vec![9; 8] });
                    if let Some(v) = block1 {
                        p.add_option_as(CoapOption::Block1, coap_lite::option_value::OptionValueU32(v));
                    }
                    if let Ok(bytes) = tcp::encode(&p) {
                        link.receive(&bytes, now);
                    }
                }
                Step::Lost => link.transport_lost(now),
                Step::Overflowed => link.notifications_overflowed(now),
                Step::Replaced => {
                    *link.session().borrow_mut() = CloudSession::new(
                        DeviceInfo { di: DI.into(), name: "Pi".into() },
                        timing(),
                        3,
                    );
                    link.session_replaced();
                }
                Step::Notify(n) => {
                    let mut p = response(&[1, 2, 3, 4], ResponseType::Content, None);
                    p.payload = vec![0; n];
                    link.notify(p);
                }
                Step::Respond(n) => {
                    let mut p = response(last_request.get_token(), ResponseType::Content, None);
                    p.payload = vec![0; n];
                    link.respond(&last_request.clone(), p);
                }
                Step::Advance(ms) => now += Duration::from_millis(ms),
                Step::Timeout => {
                    if let Some(at) = link.poll_timeout() {
                        now = now.max(at);
                        link.handle_timeout(now);
                    }
                }
                Step::Csm(size) => {
                    let csm = Signal::Csm {
                        max_message_size: Some(u32::from(size)),
                        block_wise_transfer: false,
                    };
                    link.receive(&tcp::encode(&csm.to_packet(&[])).unwrap(), now);
                }
            }
            while let Some(o) = link.poll_output() {
                match o {
                    Output::Transmit(bytes) => {
                        if let Ok((p, _)) = tcp::decode(&bytes) {
                            if matches!(p.header.code, MessageClass::Request(_)) {
                                last_token = p.get_token().to_vec();
                            }
                        }
                    }
                    Output::Request(p) => last_request = p,
                    _ => {}
                }
            }
        }
    }
}
