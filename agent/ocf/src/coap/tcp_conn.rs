//! A sans-IO CoAP-over-TCP/TLS connection (RFC 8323), for either end of the stream.
//!
//! [`TcpConnection`] turns bytes read from the socket into [`ConnEvent`]s and hands back the
//! bytes to write; it owns no socket, no clock and no task. The device's cloud link, the
//! device's local coaps+tcp endpoint, the development cloud and the Mediator all drive the
//! same type, so its behaviour is what every peer of ours sees:
//!
//! - **CSM** (RFC 8323 §5.3). [`TcpConnection::start`] gives our CSM; send it first on every
//!   connection, opened or accepted, without waiting for the peer's. The peer's CSM is
//!   honoured whenever it arrives, repeated ones included, and is never required: the
//!   reference device (iotivity-lite) sends its first request without any CSM
//!   (OCF-PROTOCOL.md §2.4, §7.6), so requests before a CSM are delivered normally. Until a
//!   CSM says otherwise the peer's Max-Message-Size is the base value 1152 (§5.3.1). CSMs
//!   are cumulative: an option missing from a later CSM leaves its setting as it was.
//! - **Ping/Pong** (§5.4). Every Ping is answered at once with a Pong carrying its Token and,
//!   if the Ping had it, Custody. Pongs are reported as [`ConnEvent::Pong`] so that the caller
//!   can match its keepalives by token. Custody promises that everything received before the
//!   Ping has been processed: events come out in order, so a caller that handles each
//!   [`ConnEvent::Message`] before writing the later [`ConnEvent::Transmit`] keeps it.
//! - **Release / Abort** (§5.5, §5.6) from the peer end the connection: [`ConnEvent::Close`].
//! - **Empty messages** (0.00) are ignored (§3.3): they are keepalives at most.
//! - **Errors**: a frame larger than our Max-Message-Size, a malformed frame, or a CSM with an
//!   unknown critical option produce an Abort for the peer ([`ConnEvent::Transmit`]) and then
//!   [`ConnEvent::Close`]; the caller writes the Abort and closes the socket. Nothing more is
//!   read afterwards.
//!
//! **The six-byte rule** (OCF-PROTOCOL.md §7.7): iotivity-lite's Linux TCP receive path reads
//! six bytes and takes them as the start of one message, so a frame shorter than six bytes
//! followed by another one in the same socket read makes it drop the session. Every frame
//! this type builds itself is therefore at least six bytes:
//! - our CSM gives Max-Message-Size in at least three bytes (leading zeros are valid uint
//!   encoding, RFC 7252 §3.2), so even the base value 1152 makes `40 E1 23 00 04 80`;
//! - Release and Abort always carry a diagnostic text;
//! - a Ping carries the caller's token, which should be 4 to 8 bytes long;
//! - a Pong must echo the Ping's token, so it is `2 + TKL` bytes (plus one with Custody):
//!   iotivity-lite pings with 8-byte tokens, giving 10-byte Pongs; only a peer pinging with a
//!   token under 4 bytes gets a shorter Pong, and such a peer is not iotivity-lite.
//!
//! Application messages (requests, responses, notifications) are the caller's: give them
//! tokens of 4 bytes or more so that even empty responses stay above six bytes.

use coap_lite::{CoapOption, MessageClass, Packet};

use crate::coap::signal::{self, Signal, SignalError, BASE_MAX_MESSAGE_SIZE};
use crate::coap::tcp::{self, FrameDecoder, FrameError};

/// Base Max-Message-Size of RFC 8323 §5.3.1: what a peer may send before any CSM, and what
/// we assume of a peer until its CSM arrives.
pub const DEFAULT_MAX_MESSAGE_SIZE: u32 = BASE_MAX_MESSAGE_SIZE;

/// Shortest frame iotivity-lite can take when another follows it (OCF-PROTOCOL.md §7.7).
pub const MIN_FRAME_LEN: usize = 6;

/// Longest diagnostic text we put in an Abort or Release.
const MAX_DIAGNOSTIC_LEN: usize = 128;

/// What the connection asks of its driver after [`TcpConnection::receive`].
#[derive(Debug, Clone, PartialEq)]
pub enum ConnEvent {
    /// A request or response (any non-signalling, non-empty message) for the application.
    /// Its type is NON and Message-ID 0; both mean nothing over TCP (RFC 8323 §3.2).
    Message(Packet),
    /// Bytes to write to the stream, in order with the other events.
    Transmit(Vec<u8>),
    /// A Pong arrived (RFC 8323 §5.4) with this token.
    Pong {
        /// The token, equal to the one of the Ping it answers.
        token: Vec<u8>,
    },
    /// The connection is over: write any preceding [`ConnEvent::Transmit`], then close the
    /// socket. Nothing is read after this.
    Close {
        /// Why, for the log.
        reason: String,
    },
}

/// One CoAP-over-TCP/TLS connection, sans-IO.
#[derive(Debug)]
pub struct TcpConnection {
    decoder: FrameDecoder,
    max_message_size: u32,
    block_wise_transfer: bool,
    peer_max_message_size: u32,
    peer_block_wise_transfer: bool,
    peer_csm_received: bool,
    peer_hold_off: Option<u32>,
    closed: bool,
}

impl TcpConnection {
    /// A connection accepting messages up to `max_message_size` bytes, which our CSM
    /// announces. The RFC base value is [`DEFAULT_MAX_MESSAGE_SIZE`]; the agent uses more.
    pub fn new(max_message_size: u32) -> TcpConnection {
        TcpConnection {
            decoder: FrameDecoder::new(usize::try_from(max_message_size).unwrap_or(usize::MAX)),
            max_message_size,
            block_wise_transfer: false,
            peer_max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            peer_block_wise_transfer: false,
            peer_csm_received: false,
            peer_hold_off: None,
            closed: false,
        }
    }

    /// Whether our CSM offers BERT (RFC 8323 §5.3.2). Off by default: offer it only if the
    /// application handles BERT blocks (SZX 7).
    pub fn with_block_wise_transfer(mut self, enabled: bool) -> TcpConnection {
        self.block_wise_transfer = enabled;
        self
    }

    /// Our CSM, to be written first on every connection we open or accept (RFC 8323 §5.3).
    /// It is at least six bytes long (see the module documentation). Calling it again gives
    /// the same CSM, which may be sent again at any time.
    pub fn start(&mut self) -> Vec<u8> {
        let mut packet = Signal::Csm {
            max_message_size: None,
            block_wise_transfer: self.block_wise_transfer,
        }
        .to_packet(&[]);
        // Max-Message-Size in at least three bytes keeps the CSM at six bytes or more.
        let bytes = self.max_message_size.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count().min(1);
        packet.add_option(
            CoapOption::from(signal::option::MAX_MESSAGE_SIZE),
            bytes[skip..].to_vec(),
        );
        frame(&packet)
    }

    /// Feeds bytes read from the stream; returns what to deliver and what to write, in
    /// order. After a [`ConnEvent::Close`] further input is ignored.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<ConnEvent> {
        let mut events = Vec::new();
        if self.closed {
            return events;
        }
        self.decoder.push(bytes);
        while !self.closed {
            match self.decoder.next_frame() {
                Ok(Some(packet)) => self.handle(packet, &mut events),
                Ok(None) => break,
                Err(e) => self.fail(&e, None, &mut events),
            }
        }
        events
    }

    fn handle(&mut self, packet: Packet, events: &mut Vec<ConnEvent>) {
        let signal = match Signal::from_packet(&packet) {
            Ok(None) => {
                // RFC 8323 §3.3: Empty messages can always be sent and must be ignored.
                if packet.header.code != MessageClass::Empty {
                    events.push(ConnEvent::Message(packet));
                }
                return;
            }
            Ok(Some(signal)) => signal,
            Err(SignalError::UnknownCode(_)) => return, // reserved for future signals
            Err(e) => {
                let code = u8::from(packet.header.code);
                if code == signal::code::RELEASE || code == signal::code::ABORT {
                    // The peer is leaving either way; its options do not matter any more.
                    self.closed = true;
                    events.push(ConnEvent::Close {
                        reason: format!("peer closed the connection ({e})"),
                    });
                } else {
                    let bad_csm_option = e.bad_csm_option();
                    self.fail(&e, bad_csm_option, events);
                }
                return;
            }
        };
        match signal {
            Signal::Csm {
                max_message_size,
                block_wise_transfer,
            } => {
                if let Some(size) = max_message_size {
                    self.peer_max_message_size = size;
                }
                self.peer_block_wise_transfer |= block_wise_transfer;
                self.peer_csm_received = true;
            }
            Signal::Ping { custody } => {
                let pong = Signal::Pong { custody }.to_packet(packet.get_token());
                events.push(ConnEvent::Transmit(frame(&pong)));
            }
            Signal::Pong { .. } => events.push(ConnEvent::Pong {
                token: packet.get_token().to_vec(),
            }),
            Signal::Release {
                hold_off,
                diagnostic,
                ..
            } => {
                self.peer_hold_off = hold_off;
                self.closed = true;
                events.push(ConnEvent::Close {
                    reason: with_diagnostic("peer released the connection", &diagnostic),
                });
            }
            Signal::Abort {
                bad_csm_option,
                diagnostic,
            } => {
                self.closed = true;
                let what = match bad_csm_option {
                    Some(n) => format!("peer aborted the connection (bad CSM option {n})"),
                    None => "peer aborted the connection".to_owned(),
                };
                events.push(ConnEvent::Close {
                    reason: with_diagnostic(&what, &diagnostic),
                });
            }
        }
    }

    /// A protocol error of the peer: Abort it (RFC 8323 §5.6) and close.
    fn fail(
        &mut self,
        error: &dyn std::fmt::Display,
        bad_csm_option: Option<u16>,
        events: &mut Vec<ConnEvent>,
    ) {
        let diagnostic = error.to_string();
        events.push(ConnEvent::Transmit(
            self.abort_frame(bad_csm_option, &diagnostic),
        ));
        events.push(ConnEvent::Close {
            reason: format!("aborted: {diagnostic}"),
        });
        self.closed = true;
    }

    fn abort_frame(&self, bad_csm_option: Option<u16>, diagnostic: &str) -> Vec<u8> {
        let signal = Signal::Abort {
            bad_csm_option,
            diagnostic: diagnostic_text(diagnostic, "abort"),
        };
        frame(&signal.to_packet(&[]))
    }

    /// Frames an application message, refusing one larger than the peer's Max-Message-Size
    /// (RFC 8323 §5.3.1; the whole frame is counted, which is what go-coap checks).
    pub fn encode(&self, packet: &Packet) -> Result<Vec<u8>, FrameError> {
        let bytes = tcp::encode(packet)?;
        let max = self.peer_max_message_size;
        if bytes.len() as u64 > u64::from(max) {
            return Err(FrameError::TooLarge {
                declared: bytes.len() as u64,
                max: usize::try_from(max).unwrap_or(usize::MAX),
            });
        }
        Ok(bytes)
    }

    /// Fits a response (or a notification, with an empty `request`) to this connection:
    /// serves the block the request asks for, and cuts a representation that would exceed the
    /// peer's Max-Message-Size into blocks (RFC 7959 §2, RFC 8323 §5.3.1: 1152 bytes until the
    /// peer's CSM says more). Every stream link — local TCP, TLS and the cloud — fits the same
    /// way, so the peer asks for the following blocks instead of the body being dropped.
    pub fn fit(&self, request: &Packet, response: &mut Packet) {
        let peer_max = self.peer_max_message_size() as usize;
        if request.get_option(CoapOption::Block2).is_some() || self.encode(response).is_err() {
            crate::coap::block::apply_block2(
                request,
                response,
                crate::coap::block::szx_for(peer_max),
            );
        }
    }

    /// A Ping (RFC 8323 §5.4) with `token`, without Custody. Use a token of 4 to 8 bytes
    /// (iotivity-lite uses 8 random bytes): the Pong echoes it, and the frame stays at six
    /// bytes or more. A token longer than 8 bytes is cut to 8.
    pub fn ping(&self, token: &[u8]) -> Vec<u8> {
        frame(&Signal::Ping { custody: false }.to_packet(token))
    }

    /// A Release (RFC 8323 §5.5) announcing a graceful close, with `reason` as diagnostic.
    /// Write it, stop sending requests, and close once the exchanges in flight are done.
    pub fn release(&self, reason: &str) -> Vec<u8> {
        let signal = Signal::Release {
            alternative_addresses: Vec::new(),
            hold_off: None,
            diagnostic: diagnostic_text(reason, "release"),
        };
        frame(&signal.to_packet(&[]))
    }

    /// An Abort (RFC 8323 §5.6) with `reason` as diagnostic; the connection is closed from
    /// now on. Write it and close the socket.
    pub fn abort(&mut self, reason: &str) -> Vec<u8> {
        self.closed = true;
        self.abort_frame(None, reason)
    }

    /// Our Max-Message-Size, as announced in our CSM.
    pub fn max_message_size(&self) -> u32 {
        self.max_message_size
    }

    /// The peer's Max-Message-Size: 1152 until its CSM says otherwise.
    pub fn peer_max_message_size(&self) -> u32 {
        self.peer_max_message_size
    }

    /// Whether the peer's CSM offered BERT.
    pub fn peer_block_wise_transfer(&self) -> bool {
        self.peer_block_wise_transfer
    }

    /// Whether BERT may be used: both CSMs carried Block-Wise-Transfer (RFC 8323 §5.3.2).
    pub fn bert_allowed(&self) -> bool {
        self.block_wise_transfer && self.peer_block_wise_transfer
    }

    /// Whether a CSM from the peer has arrived (never required, see the module docs).
    pub fn peer_csm_received(&self) -> bool {
        self.peer_csm_received
    }

    /// The Hold-Off of the peer's Release, in seconds: wait that long before reconnecting.
    pub fn peer_hold_off(&self) -> Option<u32> {
        self.peer_hold_off
    }

    /// Whether the connection is over (closed by the peer, by an error, or by [`abort`]).
    ///
    /// [`abort`]: TcpConnection::abort
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Frames a signalling packet we built ourselves.
///
/// Cannot fail: `Signal::to_packet` caps the token at 8 bytes and no signalling option comes
/// near the option length limit. Should that change, an empty write is the safe failure.
fn frame(packet: &Packet) -> Vec<u8> {
    tcp::encode(packet).unwrap_or_default()
}

/// A non-empty diagnostic of bounded length, cut on a character boundary.
fn diagnostic_text(text: &str, fallback: &str) -> String {
    let text = if text.is_empty() { fallback } else { text };
    let mut end = text.len().min(MAX_DIAGNOSTIC_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn with_diagnostic(what: &str, diagnostic: &str) -> String {
    if diagnostic.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {diagnostic}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{MessageType, RequestType, ResponseType};
    use proptest::prelude::*;

    const TOKEN: [u8; 8] = [0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8];

    fn signal_bytes(signal: &Signal, token: &[u8]) -> Vec<u8> {
        tcp::encode(&signal.to_packet(token)).unwrap()
    }

    fn get(path: &str, token: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = 0;
        p.header.code = MessageClass::Request(RequestType::Get);
        p.set_token(token.to_vec());
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        p
    }

    fn decode_all(bytes: &[u8]) -> Vec<Signal> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (packet, used) = tcp::decode(rest).unwrap();
            out.push(Signal::from_packet(&packet).unwrap().unwrap());
            rest = &rest[used..];
        }
        out
    }

    fn transmitted(events: &[ConnEvent]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                ConnEvent::Transmit(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn our_csm_is_at_least_six_bytes() {
        let mut conn = TcpConnection::new(DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(conn.start(), [0x40, 0xE1, 0x23, 0x00, 0x04, 0x80]);
        for size in [0u32, 1, 255, 256, 1152, 16 * 1024, 65_535, 65_536, u32::MAX] {
            let mut conn = TcpConnection::new(size).with_block_wise_transfer(size % 2 == 0);
            let bytes = conn.start();
            assert!(bytes.len() >= MIN_FRAME_LEN, "CSM for {size}: {bytes:02X?}");
            assert_eq!(
                decode_all(&bytes),
                [Signal::Csm {
                    max_message_size: Some(size),
                    block_wise_transfer: size % 2 == 0
                }]
            );
        }
    }

    #[test]
    fn requests_before_any_csm_are_delivered() {
        let mut conn = TcpConnection::new(16 * 1024);
        let req = get("/oic/sec/account", &TOKEN);
        let events = conn.receive(&tcp::encode(&req).unwrap());
        assert_eq!(events, [ConnEvent::Message(req)]);
        assert!(!conn.peer_csm_received());
        assert_eq!(conn.peer_max_message_size(), 1152);
    }

    #[test]
    fn ping_gets_pong_with_token_and_custody() {
        let mut conn = TcpConnection::new(16 * 1024);
        for custody in [false, true] {
            let events = conn.receive(&signal_bytes(&Signal::Ping { custody }, &TOKEN));
            let [ConnEvent::Transmit(bytes)] = &events[..] else {
                panic!("expected one transmit, got {events:?}");
            };
            let (packet, _) = tcp::decode(bytes).unwrap();
            assert_eq!(packet.get_token(), TOKEN);
            assert_eq!(
                Signal::from_packet(&packet).unwrap(),
                Some(Signal::Pong { custody })
            );
            assert!(bytes.len() >= MIN_FRAME_LEN);
        }
    }

    #[test]
    fn pong_is_surfaced() {
        let mut conn = TcpConnection::new(1152);
        let ping = conn.ping(&TOKEN);
        assert_eq!(ping[..2], [0x08, 0xE2]);
        let events = conn.receive(&signal_bytes(&Signal::Pong { custody: false }, &TOKEN));
        assert_eq!(
            events,
            [ConnEvent::Pong {
                token: TOKEN.to_vec()
            }]
        );
    }

    #[test]
    fn csm_honoured_late_and_repeated() {
        let mut conn = TcpConnection::new(16 * 1024).with_block_wise_transfer(true);
        let mut big = Packet::new();
        big.header.code = MessageClass::Response(ResponseType::Content);
        big.set_token(TOKEN.to_vec());
        big.payload = vec![0; 3000];
        assert!(matches!(
            conn.encode(&big),
            Err(FrameError::TooLarge { max: 1152, .. })
        ));

        // A request first, then the CSM: both honoured.
        let mut stream = tcp::encode(&get("/oic/res", &TOKEN)).unwrap();
        stream.extend(signal_bytes(
            &Signal::Csm {
                max_message_size: Some(4096),
                block_wise_transfer: false,
            },
            &[],
        ));
        let events = conn.receive(&stream);
        assert!(matches!(&events[..], [ConnEvent::Message(_)]));
        assert!(conn.peer_csm_received());
        assert_eq!(conn.peer_max_message_size(), 4096);
        assert!(!conn.bert_allowed());
        assert!(conn.encode(&big).is_ok());

        // A repeated CSM changes only what it carries.
        conn.receive(&signal_bytes(
            &Signal::Csm {
                max_message_size: None,
                block_wise_transfer: true,
            },
            &[],
        ));
        assert_eq!(conn.peer_max_message_size(), 4096);
        assert!(conn.bert_allowed());
        conn.receive(&signal_bytes(
            &Signal::Csm {
                max_message_size: Some(2048),
                block_wise_transfer: false,
            },
            &[],
        ));
        assert_eq!(conn.peer_max_message_size(), 2048);
        assert!(conn.peer_block_wise_transfer());
        assert!(matches!(
            conn.encode(&big),
            Err(FrameError::TooLarge { max: 2048, .. })
        ));
    }

    #[test]
    fn release_closes_gracefully() {
        let mut conn = TcpConnection::new(1152);
        let release = Signal::Release {
            alternative_addresses: vec![],
            hold_off: Some(60),
            diagnostic: "going down".into(),
        };
        let mut stream = signal_bytes(&release, &[]);
        // Nothing after the Release is delivered.
        stream.extend(tcp::encode(&get("/a", &TOKEN)).unwrap());
        let events = conn.receive(&stream);
        assert!(
            matches!(&events[..], [ConnEvent::Close { reason }] if reason.contains("going down"))
        );
        assert!(conn.is_closed());
        assert_eq!(conn.peer_hold_off(), Some(60));
        assert!(conn
            .receive(&tcp::encode(&get("/b", &TOKEN)).unwrap())
            .is_empty());
    }

    #[test]
    fn abort_closes() {
        let mut conn = TcpConnection::new(1152);
        let abort = Signal::Abort {
            bad_csm_option: None,
            diagnostic: "bye".into(),
        };
        let events = conn.receive(&signal_bytes(&abort, &[]));
        assert!(matches!(&events[..], [ConnEvent::Close { reason }] if reason.contains("bye")));
    }

    #[test]
    fn oversize_frame_gets_abort_then_close() {
        let mut conn = TcpConnection::new(1152);
        let mut big = get("/x", &TOKEN);
        big.payload = vec![1; 2000];
        let bytes = tcp::encode(&big).unwrap();
        // Only the header: the Abort comes before the body is read.
        let events = conn.receive(&bytes[..4]);
        let [ConnEvent::Transmit(abort), ConnEvent::Close { .. }] = &events[..] else {
            panic!("expected abort and close, got {events:?}");
        };
        assert!(abort.len() >= MIN_FRAME_LEN);
        assert!(matches!(
            &decode_all(abort)[..],
            [Signal::Abort { bad_csm_option: None, diagnostic }] if diagnostic.contains("too large")
        ));
        assert!(conn.is_closed());
        assert!(conn.receive(&bytes[4..]).is_empty());
    }

    #[test]
    fn malformed_frame_gets_abort_then_close() {
        let mut conn = TcpConnection::new(1152);
        let events = conn.receive(&[0x10, 0x45, 0xF0]);
        assert!(matches!(
            &events[..],
            [ConnEvent::Transmit(_), ConnEvent::Close { .. }]
        ));
    }

    #[test]
    fn csm_with_unknown_critical_option_aborts_with_bad_csm_option() {
        let mut conn = TcpConnection::new(1152);
        let mut csm = Signal::Csm {
            max_message_size: Some(2048),
            block_wise_transfer: false,
        }
        .to_packet(&[]);
        csm.add_option(CoapOption::from(7), vec![1]);
        let events = conn.receive(&tcp::encode(&csm).unwrap());
        let [ConnEvent::Transmit(abort), ConnEvent::Close { .. }] = &events[..] else {
            panic!("expected abort and close, got {events:?}");
        };
        assert!(matches!(
            &decode_all(abort)[..],
            [Signal::Abort {
                bad_csm_option: Some(7),
                ..
            }]
        ));
        // The bad CSM was not applied.
        assert_eq!(conn.peer_max_message_size(), 1152);
    }

    #[test]
    fn empty_messages_and_unknown_signals_are_ignored() {
        let mut conn = TcpConnection::new(1152);
        // 0.00 with and without a token, and a 7.06.
        let events = conn.receive(&[0x00, 0x00, 0x01, 0x00, 0x09, 0x00, 0xE6]);
        assert!(events.is_empty(), "{events:?}");
        assert!(!conn.is_closed());
    }

    #[test]
    fn helpers_build_six_byte_frames() {
        let mut conn = TcpConnection::new(1152);
        let release = conn.release("");
        assert!(release.len() >= MIN_FRAME_LEN);
        assert!(matches!(
            &decode_all(&release)[..],
            [Signal::Release { diagnostic, .. }] if diagnostic == "release"
        ));
        let long = "é".repeat(200);
        let abort = conn.abort(&long);
        assert!(matches!(
            &decode_all(&abort)[..],
            [Signal::Abort { diagnostic, .. }] if diagnostic.len() <= MAX_DIAGNOSTIC_LEN
        ));
        assert!(conn.is_closed());
        assert_eq!(conn.ping(&TOKEN).len(), 10);
    }

    #[test]
    fn mixed_stream_in_one_read() {
        let mut conn = TcpConnection::new(16 * 1024);
        let req = get("/light/1", &TOKEN);
        let mut stream = Vec::new();
        stream.extend(signal_bytes(
            &Signal::Csm {
                max_message_size: Some(262_144),
                block_wise_transfer: false,
            },
            &[],
        ));
        stream.extend(tcp::encode(&req).unwrap());
        stream.extend(signal_bytes(&Signal::Ping { custody: true }, &[1, 2, 3, 4]));
        stream.extend([0x00, 0x00]);
        let events = conn.receive(&stream);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], ConnEvent::Message(req));
        assert_eq!(
            decode_all(&transmitted(&events)),
            [Signal::Pong { custody: true }]
        );
        assert_eq!(conn.peer_max_message_size(), 262_144);
    }

    proptest! {
        #[test]
        fn byte_soup_never_panics(
            soup in prop::collection::vec(any::<u8>(), 0..2000),
            cut in 0usize..2000,
        ) {
            let mut conn = TcpConnection::new(512);
            let cut = cut.min(soup.len());
            let mut events = conn.receive(&soup[..cut]);
            events.extend(conn.receive(&soup[cut..]));
            // At most one Close, and it is the last event.
            let closes = events.iter().filter(|e| matches!(e, ConnEvent::Close { .. })).count();
            prop_assert!(closes <= 1);
            if closes == 1 {
                let last_is_close = matches!(events.last(), Some(ConnEvent::Close { .. }));
                prop_assert!(last_is_close);
            }
        }
    }

    #[test]
    fn a_response_larger_than_the_peers_max_message_size_is_cut_into_blocks() {
        // No CSM from the peer: RFC 8323 §5.3.1's base value, 1152 bytes, applies.
        let conn = TcpConnection::new(16 * 1024);
        let mut big = Packet::new();
        big.header.code = MessageClass::Response(ResponseType::Content);
        big.payload = vec![0x61; 3000];
        assert!(conn.encode(&big).is_err(), "too large as a whole");
        let request = get("/oic/res", &TOKEN);
        conn.fit(&request, &mut big);
        let block = big
            .get_first_option(CoapOption::Block2)
            .and_then(|b| crate::coap::block::Block::decode(b))
            .expect("Block2");
        assert!(block.more && block.num == 0, "{block:?}");
        assert!(conn.encode(&big).is_ok(), "the first block fits");

        // A notification (no request) is fitted the same way; a small body is left alone.
        let mut note = Packet::new();
        note.header.code = MessageClass::Response(ResponseType::Content);
        note.payload = vec![0x62; 3000];
        conn.fit(&Packet::new(), &mut note);
        assert!(note.get_first_option(CoapOption::Block2).is_some());
        let mut small = Packet::new();
        small.header.code = MessageClass::Response(ResponseType::Content);
        small.payload = vec![0x63; 100];
        conn.fit(&request, &mut small);
        assert!(small.get_first_option(CoapOption::Block2).is_none());
        assert_eq!(small.payload.len(), 100);
    }
}
