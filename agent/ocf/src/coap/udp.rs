//! The server side of the CoAP-over-UDP message layer (RFC 7252 §4), sans-IO.
//!
//! [`UdpMessageLayer`] sits between a UDP socket and the application: datagrams go in with
//! the peer's address and the current time, and come out as requests for the application or
//! as bytes to send back. It does what RFC 7252 asks of a server's message layer:
//!
//! - a Confirmable request is answered with a piggybacked response in the ACK, with the
//!   request's Message-ID and Token (§5.2.1); a Non-confirmable request gets a
//!   Non-confirmable response with a fresh Message-ID and the request's Token (§5.2.3);
//! - duplicates are detected per (peer, Message-ID) (§4.5): a repeated Confirmable request
//!   is answered again with the very bytes sent the first time, without reaching the
//!   application again; a repeated Non-confirmable one is dropped. Entries live
//!   `EXCHANGE_LIFETIME` (CON) or `NON_LIFETIME` (NON) (§4.8.2), and the cache holds a bounded
//!   number of them, oldest evicted first, so a flood of requests cannot grow it;
//! - a Confirmable message that cannot be processed is rejected with a Reset (§4.2, §4.3):
//!   an Empty CON ("CoAP ping") and a CON response (we send no requests, so it has no
//!   context) both get RST; a message format error in a CON with a readable header gets RST;
//!   anything else that is malformed or unexpected is silently ignored. An unexpected ACK
//!   or RST is never answered: "rejecting an Acknowledgement or Reset message is effected by
//!   silently ignoring it" (§4.2);
//! - an ACK or a RST matching one of our Confirmable notifications is reported, so that the
//!   caller can drop an observer whose notification was reset (RFC 7641 §3.6, §4.5);
//! - a Confirmable notification is retransmitted with the §4.2 back-off (the first timeout
//!   random in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR], doubled after each of at most
//!   MAX_RETRANSMIT retransmissions) through [`UdpMessageLayer::poll_timeout`] and
//!   [`UdpMessageLayer::handle_timeout`]; one that is never acknowledged is reported as
//!   [`UdpTimeout::GaveUp`], which ends the observation (RFC 7641 §4.5). A newer notification
//!   for the same observation while one is unacknowledged takes its place, keeping its
//!   retransmission counter and timeout (RFC 7641 §4.5.2), so one client has at most one
//!   Confirmable notification per observation in flight;
//! - a multicast request is answered after a random delay within [`MULTICAST_LEISURE`]
//!   ([`UdpMessageLayer::multicast_delay`], §8.2).
//!
//! Not done here: separate responses (§5.2.2). Responses to multicast requests are the
//! caller's to suppress where §8.2 says so (a multicast request must be NON, so no RST is ever
//! sent for one). Message-IDs start at a random value (§4.4).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{MessageType, Packet};

/// EXCHANGE_LIFETIME with the default transmission parameters (RFC 7252 §4.8.2): how long a
/// Message-ID of a Confirmable message must be remembered.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// NON_LIFETIME with the default transmission parameters (RFC 7252 §4.8.2).
pub const NON_LIFETIME: Duration = Duration::from_secs(145);

/// Default number of (peer, Message-ID) entries kept for deduplication.
pub const DEFAULT_DEDUP_CAPACITY: usize = 64;

/// Default number of Confirmable notifications awaiting an ACK or RST that are remembered.
pub const DEFAULT_OUTSTANDING_CAPACITY: usize = 64;

/// ACK_TIMEOUT (RFC 7252 §4.8).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// ACK_RANDOM_FACTOR (RFC 7252 §4.8) as a ratio: 1.5.
const ACK_RANDOM_FACTOR: (u32, u32) = (3, 2);

/// MAX_RETRANSMIT (RFC 7252 §4.8).
pub const MAX_RETRANSMIT: u32 = 4;

/// The longest a multicast response waits (RFC 7252 §8.2 "Leisure"). The default of §8.2.1 is
/// 5 s for groups of unknown size; an OCF group is the devices of one home or room, each
/// answer about 1 KB, and discovery clients wait little (libcoap's `-B 2`, the Mediator 1.5 s):
/// 1 s spreads a few dozen answers and keeps every one of them within the clients' wait.
pub const MULTICAST_LEISURE: Duration = Duration::from_secs(1);

/// RFC 7252 header: version 1 in the two top bits.
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 4;
const MAX_TOKEN_LEN: usize = 8;

/// What the caller should do with a datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum UdpInbound {
    /// A new request for the application. Give its response to
    /// [`UdpMessageLayer::respond`].
    Request(Packet),
    /// Send these bytes back to the peer: a cached response to a duplicate, or a Reset.
    Reply(Vec<u8>),
    /// The peer reset one of our messages: drop any observation it belongs to.
    Reset {
        /// Who sent the Reset.
        peer: SocketAddr,
        /// The Message-ID it resets.
        message_id: u16,
    },
    /// The peer acknowledged one of our Confirmable notifications.
    Ack {
        /// Who sent the ACK.
        peer: SocketAddr,
        /// The Message-ID it acknowledges.
        message_id: u16,
    },
    /// Nothing to do.
    Ignore,
}

/// What [`UdpMessageLayer::handle_timeout`] asks of the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum UdpTimeout {
    /// Send these bytes to `peer` again: an unacknowledged Confirmable notification.
    Retransmit { peer: SocketAddr, bytes: Vec<u8> },
    /// A Confirmable notification with this token went unacknowledged through every
    /// retransmission: the client is gone; end its observation (RFC 7641 §4.5).
    GaveUp { peer: SocketAddr, token: Vec<u8> },
}

/// A Confirmable notification awaiting its ACK (RFC 7252 §4.2).
#[derive(Debug)]
struct Outstanding {
    peer: SocketAddr,
    message_id: u16,
    token: Vec<u8>,
    bytes: Vec<u8>,
    retransmissions: u32,
    timeout: Duration,
    next_at: Instant,
}

#[derive(Debug)]
struct DedupEntry {
    /// Insertion number, to tell a live entry from a stale position in the eviction queue.
    seq: u64,
    expires: Instant,
    confirmable: bool,
    /// The bytes sent in answer (for a CON request), once the application responded.
    reply: Option<Vec<u8>>,
}

type Key = (SocketAddr, u16);

/// The server-side RFC 7252 message layer: deduplication, ACK/RST, Message-IDs.
#[derive(Debug)]
pub struct UdpMessageLayer {
    dedup: HashMap<Key, DedupEntry>,
    /// Keys in insertion order, with their insertion number, for expiry and eviction.
    order: VecDeque<(Key, u64)>,
    seq: u64,
    capacity: usize,
    /// Our Confirmable notifications not yet acknowledged or reset, oldest first.
    outstanding: VecDeque<Outstanding>,
    outstanding_capacity: usize,
    next_message_id: u16,
    /// SplitMix64 state for the random timeouts and delays.
    random: u64,
}

/// The fixed header fields of an RFC 7252 message.
#[derive(Debug, Clone, Copy)]
struct Header {
    version: u8,
    kind: MessageType,
    token_len: usize,
    code: u8,
    message_id: u16,
}

impl Header {
    fn parse(bytes: &[u8]) -> Option<Header> {
        let [first, code, id_hi, id_lo, ..] = *bytes else {
            return None;
        };
        let kind = match (first >> 4) & 0x03 {
            0 => MessageType::Confirmable,
            1 => MessageType::NonConfirmable,
            2 => MessageType::Acknowledgement,
            _ => MessageType::Reset,
        };
        Some(Header {
            version: first >> 6,
            kind,
            token_len: usize::from(first & 0x0F),
            code,
            message_id: u16::from_be_bytes([id_hi, id_lo]),
        })
    }
}

/// Code classes (RFC 7252 §3, §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Empty,
    Request,
    Response,
    Reserved,
}

fn class_of(code: u8) -> Class {
    match code >> 5 {
        0 if code == 0 => Class::Empty,
        0 => Class::Request,
        2..=5 => Class::Response,
        _ => Class::Reserved,
    }
}

/// A Reset for `message_id`: an Empty message of type RST (RFC 7252 §4.2).
fn reset_bytes(message_id: u16) -> Vec<u8> {
    let [hi, lo] = message_id.to_be_bytes();
    vec![VERSION_1 << 6 | 0x30, 0x00, hi, lo]
}

impl Default for UdpMessageLayer {
    fn default() -> UdpMessageLayer {
        UdpMessageLayer::new()
    }
}

impl UdpMessageLayer {
    /// A message layer with the default capacities whose Message-IDs start at a random
    /// value (RFC 7252 §4.4: "the initial value SHOULD be randomized").
    ///
    /// The value comes from std's randomly keyed `RandomState`, so no clock or socket is
    /// involved; tests that need fixed IDs use [`UdpMessageLayer::with_initial_message_id`].
    pub fn new() -> UdpMessageLayer {
        let random = RandomState::new().hash_one(0u8);
        let seed = RandomState::new().hash_one(1u8);
        UdpMessageLayer {
            dedup: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            capacity: DEFAULT_DEDUP_CAPACITY,
            outstanding: VecDeque::new(),
            outstanding_capacity: DEFAULT_OUTSTANDING_CAPACITY,
            next_message_id: random as u16,
            random: seed,
        }
    }

    /// Seeds the random timeouts and delays (for tests that need them fixed).
    pub fn with_seed(mut self, seed: u64) -> UdpMessageLayer {
        self.random = seed;
        self
    }

    /// SplitMix64 (Steele, Lea, Flood 2014): no secrecy needed, only spread.
    fn next_random(&mut self) -> u64 {
        self.random = self.random.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]`.
    fn random_duration(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        let r = ((u128::from(self.next_random()) * (u128::from(nanos) + 1)) >> 64) as u64;
        Duration::from_nanos(r)
    }

    /// How long to wait before answering a multicast request: uniform in
    /// [0, [`MULTICAST_LEISURE`]] (RFC 7252 §8.2), so a group's answers do not all collide.
    pub fn multicast_delay(&mut self) -> Duration {
        self.random_duration(MULTICAST_LEISURE)
    }

    /// Starts Message-IDs at `message_id` instead of a random value.
    pub fn with_initial_message_id(mut self, message_id: u16) -> UdpMessageLayer {
        self.next_message_id = message_id;
        self
    }

    /// Keeps at most `capacity` (at least one) (peer, Message-ID) entries for deduplication
    /// instead of [`DEFAULT_DEDUP_CAPACITY`].
    pub fn with_dedup_capacity(mut self, capacity: usize) -> UdpMessageLayer {
        self.capacity = capacity.max(1);
        self
    }

    /// Handles one datagram from `peer` received at `now`.
    pub fn handle_datagram(&mut self, peer: SocketAddr, bytes: &[u8], now: Instant) -> UdpInbound {
        self.expire(now);
        let Some(header) = Header::parse(bytes) else {
            return UdpInbound::Ignore; // not even a header to answer
        };
        if header.version != VERSION_1 {
            return UdpInbound::Ignore; // RFC 7252 §3: silently ignore other versions
        }
        let Some(packet) = parse(&header, bytes) else {
            return self.reject(&header);
        };
        let class = class_of(header.code);
        match header.kind {
            MessageType::Confirmable => match class {
                Class::Request => self.new_request(peer, packet, true, now),
                // An Empty CON is a "CoAP ping" (§4.3); a CON response or a reserved class
                // has no context here: both are rejected with RST.
                _ => self.reject(&header),
            },
            MessageType::NonConfirmable => match class {
                Class::Request => self.new_request(peer, packet, false, now),
                _ => UdpInbound::Ignore,
            },
            MessageType::Acknowledgement => {
                // Only an Empty ACK answers a notification; anything else is unexpected, and
                // rejecting an ACK is silence (§4.2).
                if class == Class::Empty && self.take_outstanding(peer, header.message_id) {
                    UdpInbound::Ack {
                        peer,
                        message_id: header.message_id,
                    }
                } else {
                    UdpInbound::Ignore
                }
            }
            MessageType::Reset => {
                if class != Class::Empty {
                    return UdpInbound::Ignore; // a RST must be Empty (§4.2)
                }
                self.take_outstanding(peer, header.message_id);
                UdpInbound::Reset {
                    peer,
                    message_id: header.message_id,
                }
            }
        }
    }

    /// Rejects a message: RST for a CON, silence for the others (RFC 7252 §4.2, §4.3).
    fn reject(&self, header: &Header) -> UdpInbound {
        match header.kind {
            MessageType::Confirmable => UdpInbound::Reply(reset_bytes(header.message_id)),
            _ => UdpInbound::Ignore,
        }
    }

    fn new_request(
        &mut self,
        peer: SocketAddr,
        packet: Packet,
        confirmable: bool,
        now: Instant,
    ) -> UdpInbound {
        let key = (peer, packet.header.message_id);
        if let Some(entry) = self.dedup.get(&key).filter(|e| e.expires > now) {
            // A duplicate (§4.5): answer a CON again with the same bytes, once we have them;
            // while the application is still at it, or for a NON, stay quiet.
            return match (&entry.reply, entry.confirmable && confirmable) {
                (Some(reply), true) => UdpInbound::Reply(reply.clone()),
                _ => UdpInbound::Ignore,
            };
        }
        self.remember(key, confirmable, None, now);
        UdpInbound::Request(packet)
    }

    fn remember(&mut self, key: Key, confirmable: bool, reply: Option<Vec<u8>>, now: Instant) {
        let lifetime = if confirmable {
            EXCHANGE_LIFETIME
        } else {
            NON_LIFETIME
        };
        self.seq += 1;
        self.dedup.insert(
            key,
            DedupEntry {
                seq: self.seq,
                expires: now + lifetime,
                confirmable,
                reply,
            },
        );
        self.order.push_back((key, self.seq));
        while self.order.len() > self.capacity {
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        if let Some((key, seq)) = self.order.pop_front() {
            if self.dedup.get(&key).is_some_and(|e| e.seq == seq) {
                self.dedup.remove(&key);
            }
        }
    }

    /// Drops the entries at the front whose lifetime is over. Entries with a shorter
    /// lifetime further back are caught by the expiry check on lookup, and by eviction.
    fn expire(&mut self, now: Instant) {
        while let Some(&(key, seq)) = self.order.front() {
            match self.dedup.get(&key) {
                Some(e) if e.seq == seq && e.expires > now => break,
                _ => self.evict_front(),
            }
        }
    }

    fn take_outstanding(&mut self, peer: SocketAddr, message_id: u16) -> bool {
        match self
            .outstanding
            .iter()
            .position(|o| o.peer == peer && o.message_id == message_id)
        {
            Some(i) => {
                self.outstanding.remove(i);
                true
            }
            None => false,
        }
    }

    fn next_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        id
    }

    /// Encodes the application's `response` to `request` (from [`UdpInbound::Request`]).
    ///
    /// A CON request gets the response piggybacked in an ACK with the request's Message-ID
    /// (§5.2.1), and those bytes are kept to answer duplicates; a NON request gets a NON
    /// response with a fresh Message-ID (§5.2.3). The Token is always the request's. The
    /// response's own type, Message-ID and Token are overwritten.
    pub fn respond(
        &mut self,
        peer: SocketAddr,
        request: &Packet,
        mut response: Packet,
        now: Instant,
    ) -> Vec<u8> {
        response.set_token(request.get_token().to_vec());
        let confirmable = request.header.get_type() == MessageType::Confirmable;
        if confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = request.header.message_id;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.next_message_id();
        }
        let bytes = to_bytes(&response);
        if confirmable {
            let key = (peer, request.header.message_id);
            match self.dedup.get_mut(&key) {
                Some(entry) if entry.expires > now => entry.reply = Some(bytes.clone()),
                _ => self.remember(key, true, Some(bytes.clone()), now),
            }
        }
        bytes
    }

    /// Encodes a server-initiated message (an Observe notification, RFC 7641 §4.2) for `peer`
    /// with a fresh Message-ID, Confirmable or not, sent at `now`. An ACK or RST for a
    /// Confirmable one is reported by [`UdpMessageLayer::handle_datagram`], a RST for any
    /// Message-ID is; a Confirmable one is retransmitted until acknowledged (see the module
    /// docs).
    pub fn notification(
        &mut self,
        peer: SocketAddr,
        mut packet: Packet,
        confirmable: bool,
        now: Instant,
    ) -> (u16, Vec<u8>) {
        let message_id = self.next_message_id();
        packet.header.message_id = message_id;
        packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        let bytes = to_bytes(&packet);
        if confirmable {
            let token = packet.get_token().to_vec();
            let earlier = self
                .outstanding
                .iter()
                .position(|o| o.peer == peer && o.token == token);
            match earlier {
                // RFC 7641 §4.5.2: the newer state takes the place of the one in flight, with
                // its retransmission counter and timeout.
                Some(i) => {
                    let o = &mut self.outstanding[i];
                    o.message_id = message_id;
                    o.bytes = bytes.clone();
                }
                None => {
                    // RFC 7252 §4.2: the first timeout is random in
                    // [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR].
                    let spread = ACK_TIMEOUT * (ACK_RANDOM_FACTOR.0 - ACK_RANDOM_FACTOR.1)
                        / ACK_RANDOM_FACTOR.1;
                    let timeout = ACK_TIMEOUT + self.random_duration(spread);
                    self.outstanding.push_back(Outstanding {
                        peer,
                        message_id,
                        token,
                        bytes: bytes.clone(),
                        retransmissions: 0,
                        timeout,
                        next_at: now + timeout,
                    });
                    while self.outstanding.len() > self.outstanding_capacity {
                        self.outstanding.pop_front();
                    }
                }
            }
        }
        (message_id, bytes)
    }

    /// When [`UdpMessageLayer::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding.iter().map(|o| o.next_at).min()
    }

    /// Retransmits the Confirmable notifications whose timeout passed at `now`, doubling
    /// their timeout, and gives up on those already retransmitted MAX_RETRANSMIT times
    /// (RFC 7252 §4.2).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<UdpTimeout> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.outstanding.len() {
            let o = &mut self.outstanding[i];
            if o.next_at > now {
                i += 1;
                continue;
            }
            if o.retransmissions >= MAX_RETRANSMIT {
                if let Some(o) = self.outstanding.remove(i) {
                    out.push(UdpTimeout::GaveUp {
                        peer: o.peer,
                        token: o.token,
                    });
                }
                continue;
            }
            o.retransmissions += 1;
            o.timeout = o.timeout.saturating_mul(2);
            o.next_at = now + o.timeout;
            out.push(UdpTimeout::Retransmit {
                peer: o.peer,
                bytes: o.bytes.clone(),
            });
            i += 1;
        }
        out
    }

    /// Number of (peer, Message-ID) entries held for deduplication.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }
}

/// Parses a datagram whose header is readable, applying the format rules coap-lite does not
/// check: TKL 9–15 is a format error (§3), and an Empty message is exactly the 4-byte header
/// (§4.1).
fn parse(header: &Header, bytes: &[u8]) -> Option<Packet> {
    if header.token_len > MAX_TOKEN_LEN {
        return None;
    }
    if header.code == 0 && bytes.len() != HEADER_LEN {
        return None;
    }
    Packet::from_bytes(bytes).ok()
}

/// Serialises a message; cannot fail for a packet coap-lite built (its only error is the
/// size limit, which `to_bytes_unlimited` skips), so an empty datagram is a safe fallback.
fn to_bytes(packet: &Packet) -> Vec<u8> {
    packet.to_bytes_unlimited().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{CoapOption, MessageClass, RequestType, ResponseType};
    use proptest::prelude::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn request(kind: MessageType, message_id: u16, token: &[u8]) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(kind);
        p.header.message_id = message_id;
        p.header.code = MessageClass::Request(RequestType::Get);
        p.set_token(token.to_vec());
        p.add_option(CoapOption::UriPath, b"oic".to_vec());
        p.add_option(CoapOption::UriPath, b"res".to_vec());
        p.to_bytes().unwrap()
    }

    fn content(payload: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.payload = payload.to_vec();
        p
    }

    fn expect_request(inbound: UdpInbound) -> Packet {
        match inbound {
            UdpInbound::Request(p) => p,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn con_request_gets_piggybacked_ack() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(1000);
        let now = Instant::now();
        let req = expect_request(layer.handle_datagram(
            peer(1),
            &request(MessageType::Confirmable, 0x1234, &[1, 2, 3, 4]),
            now,
        ));
        let bytes = layer.respond(peer(1), &req, content(b"hi"), now);
        let resp = Packet::from_bytes(&bytes).unwrap();
        assert_eq!(resp.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(resp.header.message_id, 0x1234);
        assert_eq!(resp.get_token(), [1, 2, 3, 4]);
        assert_eq!(
            resp.header.code,
            MessageClass::Response(ResponseType::Content)
        );
        assert_eq!(resp.payload, b"hi");
    }

    #[test]
    fn non_request_gets_non_response_with_fresh_id() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(1000);
        let now = Instant::now();
        let req = expect_request(layer.handle_datagram(
            peer(1),
            &request(MessageType::NonConfirmable, 0x1234, &[9; 8]),
            now,
        ));
        let resp = Packet::from_bytes(&layer.respond(peer(1), &req, content(b""), now)).unwrap();
        assert_eq!(resp.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(resp.header.message_id, 1000);
        assert_eq!(resp.get_token(), [9; 8]);
        // The next one gets the next ID.
        let req = expect_request(layer.handle_datagram(
            peer(1),
            &request(MessageType::NonConfirmable, 0x1235, &[9; 8]),
            now,
        ));
        let resp = Packet::from_bytes(&layer.respond(peer(1), &req, content(b""), now)).unwrap();
        assert_eq!(resp.header.message_id, 1001);
    }

    #[test]
    fn duplicate_con_answered_from_cache() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(0);
        let t0 = Instant::now();
        let datagram = request(MessageType::Confirmable, 7, &[1, 2, 3, 4]);
        let req = expect_request(layer.handle_datagram(peer(1), &datagram, t0));
        // A duplicate while the application is still working: nothing yet.
        assert_eq!(
            layer.handle_datagram(peer(1), &datagram, t0),
            UdpInbound::Ignore
        );
        let sent = layer.respond(peer(1), &req, content(b"x"), t0);
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(
            layer.handle_datagram(peer(1), &datagram, t1),
            UdpInbound::Reply(sent.clone())
        );
        // Another peer with the same Message-ID is a different message.
        assert!(matches!(
            layer.handle_datagram(peer(2), &datagram, t1),
            UdpInbound::Request(_)
        ));
        // After EXCHANGE_LIFETIME the Message-ID is new again.
        let t2 = t0 + EXCHANGE_LIFETIME + Duration::from_secs(1);
        assert!(matches!(
            layer.handle_datagram(peer(1), &datagram, t2),
            UdpInbound::Request(_)
        ));
    }

    #[test]
    fn duplicate_non_is_dropped() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(0);
        let now = Instant::now();
        let datagram = request(MessageType::NonConfirmable, 7, &[1, 2, 3, 4]);
        let req = expect_request(layer.handle_datagram(peer(1), &datagram, now));
        layer.respond(peer(1), &req, content(b"x"), now);
        assert_eq!(
            layer.handle_datagram(peer(1), &datagram, now),
            UdpInbound::Ignore
        );
        let later = now + NON_LIFETIME + Duration::from_secs(1);
        assert!(matches!(
            layer.handle_datagram(peer(1), &datagram, later),
            UdpInbound::Request(_)
        ));
    }

    #[test]
    fn cache_is_bounded() {
        let mut layer = UdpMessageLayer::new()
            .with_initial_message_id(0)
            .with_dedup_capacity(8);
        let now = Instant::now();
        for id in 0..100u16 {
            let datagram = request(MessageType::Confirmable, id, &[1, 2, 3, 4]);
            let req = expect_request(layer.handle_datagram(peer(1), &datagram, now));
            layer.respond(peer(1), &req, content(b"x"), now);
            assert!(layer.dedup_len() <= 8);
        }
        assert!(layer.order.len() <= 8);
    }

    #[test]
    fn empty_con_ping_gets_rst() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(0);
        let ping = [0x40, 0x00, 0xBE, 0xEF];
        assert_eq!(
            layer.handle_datagram(peer(1), &ping, Instant::now()),
            UdpInbound::Reply(vec![0x70, 0x00, 0xBE, 0xEF])
        );
    }

    #[test]
    fn con_response_gets_rst() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(0);
        let mut p = content(b"unsolicited");
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = 42;
        assert_eq!(
            layer.handle_datagram(peer(1), &p.to_bytes().unwrap(), Instant::now()),
            UdpInbound::Reply(reset_bytes(42))
        );
    }

    #[test]
    fn unexpected_ack_is_ignored() {
        // RFC 7252 §4.2: rejecting an ACK is silently ignoring it (a RST would be wrong).
        let mut layer = UdpMessageLayer::new().with_initial_message_id(0);
        let now = Instant::now();
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x60, 0x00, 0x00, 0x05], now),
            UdpInbound::Ignore
        );
        let mut piggy = content(b"x");
        piggy.header.set_type(MessageType::Acknowledgement);
        assert_eq!(
            layer.handle_datagram(peer(1), &piggy.to_bytes().unwrap(), now),
            UdpInbound::Ignore
        );
    }

    #[test]
    fn notifications_ack_and_reset() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(500);
        let now = Instant::now();
        let mut note = content(b"22.5");
        note.set_token(vec![5; 4]);
        note.set_observe_value(3);
        let (id, bytes) = layer.notification(peer(1), note.clone(), true, now);
        assert_eq!(id, 500);
        let sent = Packet::from_bytes(&bytes).unwrap();
        assert_eq!(sent.header.get_type(), MessageType::Confirmable);
        assert_eq!(sent.header.message_id, 500);
        assert_eq!(sent.get_token(), [5; 4]);
        let [hi, lo] = id.to_be_bytes();
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x60, 0x00, hi, lo], now),
            UdpInbound::Ack {
                peer: peer(1),
                message_id: id
            }
        );
        // Only once.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x60, 0x00, hi, lo], now),
            UdpInbound::Ignore
        );

        let (id, bytes) = layer.notification(peer(1), note, false, now);
        assert_eq!(id, 501);
        assert_eq!(
            Packet::from_bytes(&bytes).unwrap().header.get_type(),
            MessageType::NonConfirmable
        );
        let [hi, lo] = id.to_be_bytes();
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x70, 0x00, hi, lo], now),
            UdpInbound::Reset {
                peer: peer(1),
                message_id: id
            }
        );
    }

    #[test]
    fn malformed_datagrams() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(0);
        let now = Instant::now();
        // Too short for a header.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x40, 0x01], now),
            UdpInbound::Ignore
        );
        // Version 2.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x80, 0x01, 0, 1], now),
            UdpInbound::Ignore
        );
        // CON with TKL 9: format error, header readable → RST.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x49, 0x01, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], now),
            UdpInbound::Reply(reset_bytes(1))
        );
        // CON with a token that runs past the end.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x48, 0x01, 0, 2, 1, 2], now),
            UdpInbound::Reply(reset_bytes(2))
        );
        // CON with a bad option delta.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x40, 0x01, 0, 3, 0xF0], now),
            UdpInbound::Reply(reset_bytes(3))
        );
        // Empty CON with a token: format error → RST.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x41, 0x00, 0, 4, 9], now),
            UdpInbound::Reply(reset_bytes(4))
        );
        // The same errors in NON: silence.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x50, 0x01, 0, 5, 0xF0], now),
            UdpInbound::Ignore
        );
        // A RST that is not Empty.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x70, 0x45, 0, 6], now),
            UdpInbound::Ignore
        );
        // An Empty NON.
        assert_eq!(
            layer.handle_datagram(peer(1), &[0x50, 0x00, 0, 7], now),
            UdpInbound::Ignore
        );
    }

    fn note(token: &[u8], payload: &[u8]) -> Packet {
        let mut n = content(payload);
        n.set_token(token.to_vec());
        n.set_observe_value(3);
        n
    }

    /// RFC 7252 §4.2 with the §4.8 defaults: retransmitted after a random 2–3 s, then after
    /// twice as long each time, 4 times; then the observation ends (RFC 7641 §4.5).
    #[test]
    fn unacknowledged_con_notification_is_retransmitted_then_ends_the_observation() {
        for seed in 0..50 {
            let mut layer = UdpMessageLayer::new()
                .with_initial_message_id(10)
                .with_seed(seed);
            let t0 = Instant::now();
            let (id, first) = layer.notification(peer(1), note(b"obs", b"1"), true, t0);
            let mut now = t0;
            let mut previous_gap = None::<Duration>;
            for n in 0..MAX_RETRANSMIT {
                let at = layer.poll_timeout().expect("a retransmission is armed");
                let gap = at - now;
                match previous_gap {
                    None => assert!(
                        (ACK_TIMEOUT..=ACK_TIMEOUT * 3 / 2).contains(&gap),
                        "first timeout {gap:?}"
                    ),
                    Some(p) => assert_eq!(gap, p * 2, "retransmission {n}"),
                }
                // Nothing before the deadline.
                assert!(layer
                    .handle_timeout(at - Duration::from_millis(1))
                    .is_empty());
                now = at;
                assert_eq!(
                    layer.handle_timeout(now),
                    [UdpTimeout::Retransmit {
                        peer: peer(1),
                        bytes: first.clone()
                    }],
                    "the same message, Message-ID {id} included"
                );
                previous_gap = Some(gap);
            }
            let at = layer.poll_timeout().unwrap();
            assert_eq!(at - now, previous_gap.unwrap() * 2);
            assert_eq!(
                layer.handle_timeout(at),
                [UdpTimeout::GaveUp {
                    peer: peer(1),
                    token: b"obs".to_vec()
                }]
            );
            // MAX_TRANSMIT_WAIT (§4.8.2) bounds the whole exchange: 93 s.
            assert!(at - t0 <= Duration::from_secs(93), "{:?}", at - t0);
            assert!(at - t0 >= Duration::from_secs(62), "{:?}", at - t0);
            assert_eq!(layer.poll_timeout(), None);
            // A late ACK is no longer matched.
            let [hi, lo] = id.to_be_bytes();
            assert_eq!(
                layer.handle_datagram(peer(1), &[0x60, 0x00, hi, lo], at),
                UdpInbound::Ignore
            );
        }
    }

    #[test]
    fn an_ack_stops_the_retransmissions_and_non_is_never_retransmitted() {
        let mut layer = UdpMessageLayer::new().with_initial_message_id(10);
        let t0 = Instant::now();
        layer.notification(peer(1), note(b"a", b"1"), false, t0);
        assert_eq!(layer.poll_timeout(), None);
        let (id, _) = layer.notification(peer(1), note(b"a", b"2"), true, t0);
        let at = layer.poll_timeout().unwrap();
        assert_eq!(layer.handle_timeout(at).len(), 1);
        let [hi, lo] = id.to_be_bytes();
        assert!(matches!(
            layer.handle_datagram(peer(1), &[0x60, 0x00, hi, lo], at),
            UdpInbound::Ack { .. }
        ));
        assert_eq!(layer.poll_timeout(), None);
        assert!(layer
            .handle_timeout(at + Duration::from_secs(600))
            .is_empty());
    }

    /// RFC 7641 §4.5.2: a newer notification replaces the one in flight, keeping its counter
    /// and timeout; other observations have their own.
    #[test]
    fn a_newer_notification_takes_the_place_of_the_unacknowledged_one() {
        let mut layer = UdpMessageLayer::new()
            .with_initial_message_id(10)
            .with_seed(3);
        let t0 = Instant::now();
        layer.notification(peer(1), note(b"a", b"old"), true, t0);
        let at = layer.poll_timeout().unwrap();
        layer.handle_timeout(at);
        let next = layer.poll_timeout().unwrap();
        let (newer_id, newer) = layer.notification(
            peer(1),
            note(b"a", b"new"),
            true,
            at + Duration::from_secs(1),
        );
        assert_eq!(layer.poll_timeout(), Some(next), "the timeout is kept");
        assert_eq!(
            layer.handle_timeout(next),
            [UdpTimeout::Retransmit {
                peer: peer(1),
                bytes: newer
            }]
        );
        // The newer Message-ID is the one acknowledged.
        let [hi, lo] = newer_id.to_be_bytes();
        assert!(matches!(
            layer.handle_datagram(peer(1), &[0x60, 0x00, hi, lo], next),
            UdpInbound::Ack { .. }
        ));
        assert_eq!(layer.poll_timeout(), None);
        // Two observations, two exchanges.
        layer.notification(peer(1), note(b"a", b"1"), true, t0);
        layer.notification(peer(1), note(b"b", b"1"), true, t0);
        assert_eq!(layer.outstanding.len(), 2);
    }

    #[test]
    fn multicast_answers_wait_a_random_leisure() {
        let mut layer = UdpMessageLayer::new().with_seed(9);
        let delays: Vec<Duration> = (0..1000).map(|_| layer.multicast_delay()).collect();
        assert!(delays.iter().all(|d| *d <= MULTICAST_LEISURE));
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min < Duration::from_millis(50) && *max > Duration::from_millis(950));
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(
            datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
            step in 0u64..400,
        ) {
            let mut layer = UdpMessageLayer::new().with_initial_message_id(0).with_dedup_capacity(4);
            let mut now = Instant::now();
            for d in &datagrams {
                if let UdpInbound::Request(req) = layer.handle_datagram(peer(1), d, now) {
                    layer.respond(peer(1), &req, content(b"ok"), now);
                }
                now += Duration::from_secs(step);
                prop_assert!(layer.dedup_len() <= 4);
            }
        }
    }
}
