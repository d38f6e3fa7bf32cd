//! Fuzzes the cloud link: arbitrary bytes from the cloud and arbitrary orders of connection
//! events, timers, notifications and answers, on a virtual clock.
//!
//! Input: a program of one-byte opcodes, some followed by an argument (a length byte and that
//! many bytes for a read, a byte or two otherwise). Besides "never panics", it checks that the
//! link never asks for a connection while it holds one and that every write is whole frames.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};
use libfuzzer_sys::fuzz_target;
use ocf::cloud::link::{CloudLink, Output};
use ocf::cloud::payload::{LinkPolicy, RdLink};
use ocf::cloud::{CloudConf, CloudSession, ConnectError, DeviceInfo, Timing};
use ocf::coap::signal::Signal;
use ocf::coap::tcp;

fn session(now: Instant, links: usize) -> CloudSession {
    let mut s = CloudSession::new(
        DeviceInfo {
            di: "c0ffee00-0000-4000-8000-000000000001".into(),
            name: "Pi".into(),
        },
        Timing::default(),
        1,
    );
    let _ = s.configure(
        CloudConf {
            cis: "coaps+tcp://cloud.example:5684".into(),
            sid: "00000000-0000-0000-0000-000000000001".into(),
            apn: "plgd".into(),
            at: "code".into(),
            servers: vec![],
        },
        now,
    );
    s.set_provisioned(true, now);
    let links = (0..links)
        .map(|i| RdLink {
            href: format!("/sensor/{i}/with/a/longer/path"),
            rt: vec!["oic.r.temperature".into()],
            ifs: vec!["oic.if.s".into(), "oic.if.baseline".into()],
            p: Some(LinkPolicy { bm: 3 }),
            ..Default::default()
        })
        .collect();
    s.set_links(links, now);
    s
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let Some(first) = input.byte() else { return };
    let start = Instant::now();
    let mut now = start;
    let shared = Rc::new(RefCell::new(session(now, usize::from(first % 24))));
    let mut link = CloudLink::new(shared.clone(), 4096);
    // What the link sent last, for answers that match it.
    let mut last_token = vec![0u8; 8];
    let mut last_request = Packet::new();
    while let Some(op) = input.byte() {
        match op % 14 {
            0 => link.connected(now),
            1 => link.connect_failed(
                if op & 0x80 != 0 {
                    ConnectError::ClockBehind
                } else {
                    ConnectError::Network
                },
                now,
            ),
            2 | 3 => {
                let n = usize::from(input.byte().unwrap_or(0));
                let bytes = input.bytes(n).to_vec();
                link.receive(&bytes, now);
            }
            4 => {
                // A response to the last request: any code, maybe a Block1 option.
                let code = input.byte().unwrap_or(0x44);
                let block = input.byte().unwrap_or(0);
                let mut p = Packet::new();
                p.header.code = MessageClass::from(code);
                p.set_token(last_token.clone());
                if block != 0 {
                    p.add_option(CoapOption::Block1, vec![block]);
                }
                p.payload = input.bytes(8).to_vec();
                if let Ok(bytes) = tcp::encode(&p) {
                    link.receive(&bytes, now);
                }
            }
            5 => {
                let size = u32::from(input.byte().unwrap_or(0)) * 16;
                let csm = Signal::Csm {
                    max_message_size: Some(size),
                    block_wise_transfer: false,
                };
                if let Ok(bytes) = tcp::encode(&csm.to_packet(&[])) {
                    link.receive(&bytes, now);
                }
            }
            6 => link.transport_lost(now),
            7 => link.notifications_overflowed(now),
            8 => {
                *shared.borrow_mut() = session(now, 0);
                link.session_replaced();
            }
            9 => {
                let mut p = Packet::new();
                p.header.code = MessageClass::Response(ResponseType::Content);
                p.set_token(vec![1, 2, 3, 4]);
                p.payload = vec![0; usize::from(input.byte().unwrap_or(0)) * 32];
                link.notify(p);
            }
            10 => {
                let mut p = Packet::new();
                p.header.code = MessageClass::Response(ResponseType::Content);
                p.set_token(last_request.get_token().to_vec());
                p.payload = vec![0; usize::from(input.byte().unwrap_or(0)) * 32];
                link.respond(&last_request.clone(), p);
            }
            11 => {
                let secs = u64::from(input.byte().unwrap_or(0));
                now += Duration::from_millis(secs * 250);
                link.handle_timeout(now);
            }
            12 => {
                if let Some(at) = link.poll_timeout() {
                    now = now.max(at);
                    link.handle_timeout(now);
                }
            }
            _ => link.shut_down(),
        }
        while let Some(output) = link.poll_output() {
            match output {
                Output::Connect { .. } => {
                    assert!(!link.is_connected(), "Connect with a connection up");
                }
                Output::Transmit(bytes) => {
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let (p, used) = tcp::decode(rest).expect("the link writes whole frames");
                        if matches!(p.header.code, MessageClass::Request(_)) {
                            last_token = p.get_token().to_vec();
                        }
                        rest = &rest[used..];
                    }
                }
                Output::Request(p) => last_request = p,
                _ => {}
            }
        }
    }
});
