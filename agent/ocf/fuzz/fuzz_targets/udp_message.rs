//! Fuzzes the RFC 7252 message layer with sequences of datagrams.
//!
//! Input: records of `[len, peer, seconds, datagram (len bytes)]`: a datagram from one of a
//! few peers, received `seconds` after the previous one. Requests are answered by echoing
//! them back as responses, so the deduplication cache fills and expires too.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ocf::coap::udp::{UdpInbound, UdpMessageLayer};

fuzz_target!(|data: &[u8]| {
    let mut layer = UdpMessageLayer::new()
        .with_initial_message_id(0)
        .with_dedup_capacity(16);
    let mut now = Instant::now();
    let mut rest = data;
    while let [len, peer, seconds, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_secs(u64::from(*seconds));
        let peer = SocketAddr::from(([192, 0, 2, peer % 4], 5683));
        match layer.handle_datagram(peer, datagram, now) {
            UdpInbound::Request(request) => {
                let response = request.clone();
                let bytes = layer.respond(peer, &request, response, now);
                assert!(bytes.len() >= 4);
                let _ = layer.notification(peer, request, seconds % 2 == 0, now);
                let _ = layer.handle_timeout(now);
            }
            UdpInbound::Reply(bytes) => assert!(bytes.len() >= 4),
            UdpInbound::Reset { .. } | UdpInbound::Ack { .. } | UdpInbound::Ignore => {}
        }
        assert!(layer.dedup_len() <= 16);
    }
});
