//! CoAP over TCP and TLS framing (RFC 8323 §3.2).
//!
//! A reliable transport has no Version, Type or Message-ID: every message is one frame
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Len  |  TKL  | Extended Length (0, 1, 2 or 4 bytes) ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      Code     | Token (TKL bytes) ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Options (if any) ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |1 1 1 1 1 1 1 1|    Payload (if any) ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! where *Length* counts the options, the payload marker and the payload, but neither the
//! Code nor the Token (RFC 8323 §3.2). Lengths 0–12 sit in the nibble itself; 13, 14 and 15
//! select a 1-, 2- or 4-byte extended length holding `L − 13`, `L − 269` or `L − 65805`.
//!
//! The module follows smoltcp's wire style: [`FrameHeader`] parses and emits the length
//! prefix, [`Frame`] is a view over a byte buffer whose constructor validates the lengths
//! once so that its accessors cannot read out of bounds, and [`encode`], [`decode`] and the
//! incremental [`FrameDecoder`] are the high-level functions the connection uses.
//!
//! Options and payload are not re-implemented: `coap_lite::Packet` is the message currency
//! of the project, so encoding takes coap-lite's RFC 7252 serialisation and drops its 4-byte
//! UDP header and the token, and decoding feeds `[0x50 | TKL, Code, 0, 0] ‖ Token ‖ Body`
//! (version 1, type NON, Message-ID 0) back to `Packet::from_bytes` (OCF-PROTOCOL.md §2.8).
//! Decoded packets therefore have type NON and Message-ID 0; both are ignored over TCP.

use std::collections::VecDeque;
use std::fmt;

use coap_lite::Packet;

/// Longest token: TKL values 9–15 are reserved and a message format error
/// (RFC 8323 §3.2, RFC 7252 §3).
pub const MAX_TOKEN_LEN: usize = 8;

/// Longest possible frame header: the Len/TKL byte, a 4-byte extended length, the Code and
/// an 8-byte token. The decoder never buffers more than this plus the advertised
/// Max-Message-Size for one frame.
pub const MAX_HEADER_LEN: usize = 1 + 4 + 1 + MAX_TOKEN_LEN;

/// Largest Length a frame can declare: a 4-byte extended length plus 65805 (RFC 8323 §3.2).
pub const MAX_LENGTH: u64 = u32::MAX as u64 + OFFSET_4;

/// Longest option value [`encode`] accepts.
///
/// RFC 7252 §3.1 can express up to 65535 + 269 bytes, but coap-lite's parser refuses values
/// over 65535 bytes (and its serialiser silently truncates lengths over 65804). Refusing them
/// on the way out keeps every frame we send one that our own decoder reads back.
pub const MAX_OPTION_VALUE_LEN: usize = 65_535;

/// Len nibble values selecting an extended length field (RFC 8323 §3.2).
const LEN_EXT_1: u8 = 13;
const LEN_EXT_2: u8 = 14;
const LEN_EXT_4: u8 = 15;
/// What each extended length field is offset by.
const OFFSET_1: u64 = 13;
const OFFSET_2: u64 = 269;
const OFFSET_4: u64 = 65_805;

/// The first byte of the RFC 7252 header handed to coap-lite: version 1, type NON.
const UDP_VERSION_1_NON: u8 = 0x50;
/// Bytes of the RFC 7252 header (Ver/T/TKL, Code, Message-ID).
const UDP_HEADER_LEN: usize = 4;

/// What can go wrong when framing CoAP over a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The message is larger than allowed. On receipt `declared` is the Length field of the
    /// frame and `max` our Max-Message-Size; on sending, `declared` is the size of the whole
    /// frame and `max` the peer's Max-Message-Size (RFC 8323 §5.3.1).
    TooLarge {
        /// Size announced by the frame header, or of the frame to be sent.
        declared: u64,
        /// The limit it exceeds.
        max: usize,
    },
    /// A token longer than 8 bytes, or a TKL nibble of 9–15 (RFC 8323 §3.2).
    InvalidTokenLength(usize),
    /// An option value longer than RFC 7252 §3.1 can express.
    OptionTooLong {
        /// The option number.
        number: u16,
        /// Length of the offending value.
        len: usize,
    },
    /// The buffer does not hold a whole frame (only from the one-shot [`decode`] and
    /// [`Frame::new_checked`]; the [`FrameDecoder`] waits for more bytes instead).
    Truncated,
    /// The options or the payload marker are not valid RFC 7252 encoding.
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { declared, max } => {
                write!(
                    f,
                    "message too large: {declared} bytes, at most {max} allowed"
                )
            }
            FrameError::InvalidTokenLength(len) => {
                write!(f, "invalid token length {len} (at most {MAX_TOKEN_LEN})")
            }
            FrameError::OptionTooLong { number, len } => {
                write!(f, "option {number} value of {len} bytes cannot be encoded")
            }
            FrameError::Truncated => f.write_str("truncated frame"),
            FrameError::Malformed(why) => write!(f, "malformed message: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The length prefix of a frame: Len/TKL byte and extended length (RFC 8323 §3.2).
///
/// Knowing it is enough to know how many bytes the whole frame takes, which is what lets the
/// decoder refuse an oversized frame before buffering its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// TKL: the token length, 0–8.
    pub token_len: u8,
    /// Length: bytes of options, payload marker and payload.
    pub length: u64,
    /// Bytes taken by the Len/TKL byte and the extended length (1, 2, 3 or 5).
    pub prefix_len: usize,
}

impl FrameHeader {
    /// The header for a message with `token_len` token bytes and `length` bytes of options
    /// and payload, choosing the shortest length encoding.
    pub fn new(token_len: usize, length: u64) -> Result<FrameHeader, FrameError> {
        let token_len = u8::try_from(token_len)
            .ok()
            .filter(|&t| usize::from(t) <= MAX_TOKEN_LEN)
            .ok_or(FrameError::InvalidTokenLength(token_len))?;
        if length > MAX_LENGTH {
            return Err(FrameError::TooLarge {
                declared: length,
                max: usize::try_from(MAX_LENGTH).unwrap_or(usize::MAX),
            });
        }
        let prefix_len = 1 + extended_len(len_nibble(length));
        Ok(FrameHeader {
            token_len,
            length,
            prefix_len,
        })
    }

    /// Parses the length prefix at the start of `bytes`.
    ///
    /// `Ok(None)` means more bytes are needed (at most 5 in all). A TKL of 9–15 is a message
    /// format error (RFC 8323 §3.2).
    pub fn parse(bytes: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        let Some(&first) = bytes.first() else {
            return Ok(None);
        };
        let nibble = first >> 4;
        let token_len = first & 0x0F;
        if usize::from(token_len) > MAX_TOKEN_LEN {
            return Err(FrameError::InvalidTokenLength(usize::from(token_len)));
        }
        let ext_len = extended_len(nibble);
        let Some(ext) = bytes.get(1..1 + ext_len) else {
            return Ok(None);
        };
        let length = match nibble {
            LEN_EXT_1 => u64::from(ext[0]) + OFFSET_1,
            LEN_EXT_2 => u64::from(u16::from_be_bytes([ext[0], ext[1]])) + OFFSET_2,
            LEN_EXT_4 => u64::from(u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]])) + OFFSET_4,
            n => u64::from(n),
        };
        Ok(Some(FrameHeader {
            token_len,
            length,
            prefix_len: 1 + ext_len,
        }))
    }

    /// Bytes before the options: length prefix, Code and Token.
    pub fn header_len(&self) -> usize {
        self.prefix_len + 1 + usize::from(self.token_len)
    }

    /// Bytes of the whole frame. A `u64` because a 4-byte extended length can announce more
    /// than a 32-bit `usize` holds.
    pub fn frame_len(&self) -> u64 {
        self.header_len() as u64 + self.length
    }

    /// Writes the Len/TKL byte and the extended length.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let nibble = len_nibble(self.length);
        out.push(nibble << 4 | self.token_len);
        // The subtractions cannot underflow and the casts cannot truncate: `len_nibble`
        // picked the field whose range holds `length`.
        match nibble {
            LEN_EXT_1 => out.push((self.length - OFFSET_1) as u8),
            LEN_EXT_2 => out.extend_from_slice(&((self.length - OFFSET_2) as u16).to_be_bytes()),
            LEN_EXT_4 => out.extend_from_slice(&((self.length - OFFSET_4) as u32).to_be_bytes()),
            _ => {}
        }
    }
}

/// The Len nibble for a Length (RFC 8323 §3.2).
fn len_nibble(length: u64) -> u8 {
    if length < OFFSET_1 {
        length as u8
    } else if length < OFFSET_2 {
        LEN_EXT_1
    } else if length < OFFSET_4 {
        LEN_EXT_2
    } else {
        LEN_EXT_4
    }
}

/// Bytes of extended length selected by a Len nibble.
fn extended_len(nibble: u8) -> usize {
    match nibble {
        LEN_EXT_1 => 1,
        LEN_EXT_2 => 2,
        LEN_EXT_4 => 4,
        _ => 0,
    }
}

/// Total bytes of the frame starting at `bytes[0]`, once its length prefix is complete.
///
/// `Ok(None)` means the prefix is incomplete. A frame too large to address on this platform
/// is `TooLarge`.
pub fn frame_len(bytes: &[u8]) -> Result<Option<usize>, FrameError> {
    match FrameHeader::parse(bytes)? {
        None => Ok(None),
        Some(header) => frame_len_usize(&header).map(Some),
    }
}

fn frame_len_usize(header: &FrameHeader) -> Result<usize, FrameError> {
    let len = header.frame_len();
    usize::try_from(len).map_err(|_| FrameError::TooLarge {
        declared: len,
        max: usize::MAX,
    })
}

/// A checked view of one frame at the start of a byte buffer (smoltcp style).
///
/// [`Frame::new_checked`] validates the header and that the buffer holds the whole frame, so
/// the accessors never read out of bounds. Bytes after the frame are ignored.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
    header: FrameHeader,
    len: usize,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Validates `buffer` as starting with one complete frame.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, FrameError> {
        let bytes = buffer.as_ref();
        let header = FrameHeader::parse(bytes)?.ok_or(FrameError::Truncated)?;
        let len = frame_len_usize(&header)?;
        if bytes.len() < len {
            return Err(FrameError::Truncated);
        }
        Ok(Frame {
            buffer,
            header,
            len,
        })
    }

    /// The parsed length prefix.
    pub fn header(&self) -> FrameHeader {
        self.header
    }

    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        self.len
    }

    /// The Code byte (class << 5 | detail).
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[self.header.prefix_len]
    }

    /// The Token.
    pub fn token(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header.prefix_len + 1..self.header.header_len()]
    }

    /// Options, payload marker and payload: the bytes counted by Length.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header.header_len()..self.len]
    }

    /// Decodes the frame into a packet (type NON, Message-ID 0).
    pub fn to_packet(&self) -> Result<Packet, FrameError> {
        let token = self.token();
        let body = self.body();
        let mut udp = Vec::with_capacity(UDP_HEADER_LEN + token.len() + body.len());
        udp.extend_from_slice(&[UDP_VERSION_1_NON | self.header.token_len, self.code(), 0, 0]);
        udp.extend_from_slice(token);
        udp.extend_from_slice(body);
        packet_from_udp_form(&udp)
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// Parses `[0x50 | TKL, Code, 0, 0] ‖ Token ‖ Body` with coap-lite.
fn packet_from_udp_form(udp: &[u8]) -> Result<Packet, FrameError> {
    Packet::from_bytes(udp).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Encodes a packet as one RFC 8323 frame.
///
/// The packet's type and Message-ID are ignored (RFC 8323 §3.2 has neither). Tokens longer
/// than 8 bytes and option values longer than [`MAX_OPTION_VALUE_LEN`] are refused. An Empty
/// message (0.00) is encoded without payload, as coap-lite does. No size limit is applied
/// here: [`crate::coap::tcp_conn::TcpConnection::encode`] checks the peer's
/// Max-Message-Size.
pub fn encode(packet: &Packet) -> Result<Vec<u8>, FrameError> {
    let token = packet.get_token();
    if token.len() > MAX_TOKEN_LEN {
        return Err(FrameError::InvalidTokenLength(token.len()));
    }
    for (&number, values) in packet.options() {
        if let Some(value) = values.iter().find(|v| v.len() > MAX_OPTION_VALUE_LEN) {
            return Err(FrameError::OptionTooLong {
                number,
                len: value.len(),
            });
        }
    }
    // coap-lite writes the RFC 7252 header, the token, then options ‖ 0xFF ‖ payload: the
    // last part is exactly the body of an RFC 8323 frame.
    let udp = packet
        .to_bytes_unlimited()
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let body = udp
        .get(UDP_HEADER_LEN + token.len()..)
        .ok_or_else(|| FrameError::Malformed("coap-lite produced a short message".into()))?;
    let header = FrameHeader::new(token.len(), body.len() as u64)?;
    let mut out = Vec::with_capacity(header.header_len() + body.len());
    header.emit(&mut out);
    out.push(u8::from(packet.header.code));
    out.extend_from_slice(token);
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes the frame at the start of `bytes`, returning the packet and the bytes it took.
///
/// A one-shot helper for whole buffers: no size limit is applied beyond what the buffer
/// holds, and an incomplete frame is [`FrameError::Truncated`]. Streams use
/// [`FrameDecoder`].
pub fn decode(bytes: &[u8]) -> Result<(Packet, usize), FrameError> {
    let frame = Frame::new_checked(bytes)?;
    Ok((frame.to_packet()?, frame.frame_len()))
}

/// Where the decoder is within the current frame.
#[derive(Debug)]
enum State {
    /// Collecting the Len/TKL byte and the extended length (at most 5 bytes).
    Prefix { bytes: [u8; 5], filled: usize },
    /// Collecting Code, Token and body into `buf`, already laid out as the RFC 7252 message
    /// coap-lite parses (`[0x50 | TKL, Code, 0, 0] ‖ Token ‖ Body`), so that a complete frame
    /// is decoded without another copy. `total` is the size `buf` reaches when complete.
    Body { buf: Vec<u8>, total: usize },
}

impl State {
    fn start() -> State {
        State::Prefix {
            bytes: [0; 5],
            filled: 0,
        }
    }
}

/// Incremental decoder for a CoAP-over-TCP byte stream (RFC 8323 §3.2).
///
/// Bytes may arrive in any split: one at a time, or many frames in one [`push`]. Frames are
/// decoded as soon as they are complete and queued for [`next_frame`].
///
/// Memory is bounded by what the peer is allowed to send, not by what it claims: a frame
/// whose Length exceeds `max_message_size` is refused as soon as its length prefix is seen,
/// before any of its body is buffered, and the buffer of a frame in progress never exceeds
/// [`MAX_HEADER_LEN`] + `max_message_size` bytes. Complete frames wait decoded in a queue,
/// which only grows with what the caller itself pushed; an I/O layer that pushes a few KiB
/// and drains [`next_frame`] after every push holds at most that much.
///
/// After an error the decoder is poisoned: later input is discarded and [`next_frame`]
/// returns the same error (after any frames completed before it), because the stream can no
/// longer be resynchronised and the connection must be aborted (RFC 8323 §5.6).
///
/// [`push`]: FrameDecoder::push
/// [`next_frame`]: FrameDecoder::next_frame
#[derive(Debug)]
pub struct FrameDecoder {
    max_message_size: usize,
    state: State,
    ready: VecDeque<Packet>,
    error: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder accepting frames whose Length is at most `max_message_size`.
    ///
    /// Length (options and payload) rather than the whole frame is compared, so a peer that
    /// counts Max-Message-Size without the few header bytes is still served; the buffer bound
    /// adds at most [`MAX_HEADER_LEN`].
    pub fn new(max_message_size: usize) -> FrameDecoder {
        FrameDecoder {
            max_message_size,
            state: State::start(),
            ready: VecDeque::new(),
            error: None,
        }
    }

    /// The limit given to [`FrameDecoder::new`].
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Feeds bytes read from the stream. Never fails by itself: errors are reported by
    /// [`FrameDecoder::next_frame`].
    pub fn push(&mut self, mut input: &[u8]) {
        while !input.is_empty() && self.error.is_none() {
            match &mut self.state {
                State::Prefix { bytes, filled } => {
                    // The prefix is at most 5 bytes: taking them one by one keeps the
                    // boundary logic trivial.
                    let Some((&byte, rest)) = input.split_first() else {
                        break;
                    };
                    input = rest;
                    let Some(slot) = bytes.get_mut(*filled) else {
                        // Unreachable: `parse` completes by 5 bytes. Fail closed anyway.
                        self.error = Some(FrameError::Malformed("frame header overrun".into()));
                        break;
                    };
                    *slot = byte;
                    *filled += 1;
                    match FrameHeader::parse(&bytes[..*filled]) {
                        Ok(None) => {}
                        Ok(Some(header)) => self.begin_body(header),
                        Err(e) => self.error = Some(e),
                    }
                }
                State::Body { buf, total } => {
                    if buf.len() == 1 {
                        // The Code follows the length prefix; the zero Message-ID completes
                        // the RFC 7252 header coap-lite expects.
                        buf.extend_from_slice(&[input[0], 0, 0]);
                        input = &input[1..];
                    } else {
                        let take = total.saturating_sub(buf.len()).min(input.len());
                        buf.extend_from_slice(&input[..take]);
                        input = &input[take..];
                    }
                    if buf.len() >= *total {
                        let buf = std::mem::take(buf);
                        self.state = State::start();
                        match packet_from_udp_form(&buf) {
                            Ok(packet) => self.ready.push_back(packet),
                            Err(e) => self.error = Some(e),
                        }
                    }
                }
            }
        }
    }

    /// Called once the length prefix is known: refuses oversized frames before allocating.
    fn begin_body(&mut self, header: FrameHeader) {
        let max = self.max_message_size;
        if header.length > max as u64 {
            self.error = Some(FrameError::TooLarge {
                declared: header.length,
                max,
            });
            return;
        }
        // `length <= max`, so this only overflows for a max near usize::MAX.
        let total = (header.length as usize)
            .checked_add(UDP_HEADER_LEN + usize::from(header.token_len))
            .ok_or(FrameError::TooLarge {
                declared: header.length,
                max,
            });
        match total {
            Ok(total) => {
                let mut buf = Vec::with_capacity(total);
                buf.push(UDP_VERSION_1_NON | header.token_len);
                self.state = State::Body { buf, total };
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the error that
    /// poisoned the decoder (once the frames completed before it have been taken).
    pub fn next_frame(&mut self) -> Result<Option<Packet>, FrameError> {
        if let Some(packet) = self.ready.pop_front() {
            return Ok(Some(packet));
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// Bytes held for the frame in progress (not yet complete).
    pub fn buffered_len(&self) -> usize {
        match &self.state {
            State::Prefix { filled, .. } => *filled,
            // `buf` holds the 4-byte RFC 7252 header in place of the prefix and Code.
            State::Body { buf, .. } => buf.len(),
        }
    }

    /// Decoded frames waiting for [`FrameDecoder::next_frame`].
    pub fn pending_frames(&self) -> usize {
        self.ready.len()
    }

    /// Whether an error has poisoned the decoder.
    pub fn is_poisoned(&self) -> bool {
        self.error.is_some()
    }

    /// Capacity reserved for the frame in progress (for tests of the memory bound).
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        match &self.state {
            State::Prefix { bytes, .. } => bytes.len(),
            State::Body { buf, .. } => buf.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{
        CoapOption, ContentFormat, MessageClass, MessageType, RequestType, ResponseType,
    };
    use proptest::prelude::*;

    fn nonify(mut packet: Packet) -> Packet {
        packet.header.set_type(MessageType::NonConfirmable);
        packet.header.message_id = 0;
        packet
    }

    /// A 2.05 response whose body (options ‖ 0xFF ‖ payload) is exactly `length` bytes.
    fn packet_with_length(length: usize, token: &[u8]) -> Packet {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Response(ResponseType::Content);
        packet.set_token(token.to_vec());
        match length {
            0 => {}
            // An option with an empty value takes one byte.
            1 => packet.add_option(CoapOption::Unknown(2), vec![]),
            n => packet.payload = vec![0xA5; n - 1],
        }
        nonify(packet)
    }

    #[test]
    fn length_boundaries() {
        // (Length, expected Len nibble, extended length bytes)
        let cases: [(usize, u8, &[u8]); 7] = [
            (0, 0, &[]),
            (12, 12, &[]),
            (13, 13, &[0]),
            (268, 13, &[255]),
            (269, 14, &[0, 0]),
            (65_804, 14, &[0xFF, 0xFF]),
            (65_805, 15, &[0, 0, 0, 0]),
        ];
        for (length, nibble, ext) in cases {
            let packet = packet_with_length(length, &[0xAB, 0xCD]);
            let bytes = encode(&packet).unwrap();
            assert_eq!(bytes[0], nibble << 4 | 2, "Len/TKL for {length}");
            assert_eq!(
                &bytes[1..1 + ext.len()],
                ext,
                "extended length for {length}"
            );
            assert_eq!(bytes[1 + ext.len()], 0x45, "code for {length}");
            assert_eq!(&bytes[2 + ext.len()..4 + ext.len()], &[0xAB, 0xCD]);
            assert_eq!(bytes.len(), 1 + ext.len() + 1 + 2 + length);
            assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
            let (decoded, used) = decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(decoded, packet, "round trip for {length}");
        }
    }

    #[test]
    fn header_emit_parse_boundaries() {
        for length in [0u64, 12, 13, 268, 269, 65_804, 65_805, MAX_LENGTH] {
            let header = FrameHeader::new(3, length).unwrap();
            let mut out = Vec::new();
            header.emit(&mut out);
            assert_eq!(out.len(), header.prefix_len);
            assert_eq!(FrameHeader::parse(&out).unwrap(), Some(header));
            // Any shorter prefix asks for more bytes.
            for cut in 0..out.len() {
                assert_eq!(FrameHeader::parse(&out[..cut]).unwrap(), None);
            }
        }
        assert!(matches!(
            FrameHeader::new(0, MAX_LENGTH + 1),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn tokens_of_every_length() {
        for len in 0..=8usize {
            let token: Vec<u8> = (1..=len as u8).collect();
            let mut packet = Packet::new();
            packet.header.code = MessageClass::Request(RequestType::Get);
            packet.set_token(token.clone());
            packet.add_option(CoapOption::UriPath, b"oic".to_vec());
            packet.add_option(CoapOption::UriPath, b"res".to_vec());
            let packet = nonify(packet);
            let bytes = encode(&packet).unwrap();
            assert_eq!(usize::from(bytes[0] & 0x0F), len);
            assert_eq!(&bytes[2..2 + len], &token[..]);
            assert_eq!(decode(&bytes).unwrap().0, packet);
        }
        let mut packet = Packet::new();
        packet.set_token(vec![0; 9]);
        assert_eq!(encode(&packet), Err(FrameError::InvalidTokenLength(9)));
    }

    #[test]
    fn reserved_tkl_is_a_format_error() {
        for tkl in 9..=15u8 {
            let bytes = [tkl, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(
                frame_len(&bytes),
                Err(FrameError::InvalidTokenLength(usize::from(tkl)))
            );
            let mut decoder = FrameDecoder::new(1152);
            decoder.push(&bytes);
            assert!(decoder.next_frame().is_err());
        }
    }

    #[test]
    fn worked_bytes_from_the_protocol_reference() {
        // Ping (7.02) with an 8-byte token, no options.
        let mut ping = Packet::new();
        ping.header.code = MessageClass::from(0xE2);
        ping.set_token(vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(encode(&ping).unwrap(), [0x08, 0xE2, 1, 2, 3, 4, 5, 6, 7, 8]);
        // CSM (7.01) with Max-Message-Size (option 2) 1152, no token.
        let mut csm = Packet::new();
        csm.header.code = MessageClass::from(0xE1);
        csm.add_option(CoapOption::Unknown(2), vec![0x04, 0x80]);
        assert_eq!(encode(&csm).unwrap(), [0x30, 0xE1, 0x22, 0x04, 0x80]);
        // Option 2049 after Accept (17), then 2053 (OCF-PROTOCOL.md §2.2).
        let mut req = Packet::new();
        req.header.code = MessageClass::Request(RequestType::Get);
        req.add_option(CoapOption::Accept, vec![0x27, 0x10]);
        req.add_option(CoapOption::Unknown(2049), vec![0x08, 0x00]);
        req.add_option(CoapOption::Unknown(2053), vec![0x08, 0x00]);
        let bytes = encode(&req).unwrap();
        assert_eq!(
            &bytes[2..],
            [0xD2, 0x04, 0x27, 0x10, 0xE2, 0x06, 0xE3, 0x08, 0x00, 0x42, 0x08, 0x00]
        );
    }

    #[test]
    fn longest_option_value_round_trips() {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Request(RequestType::Post);
        packet.add_option(
            CoapOption::Unknown(65_000),
            vec![0x5A; MAX_OPTION_VALUE_LEN],
        );
        packet.payload = b"after".to_vec();
        let packet = nonify(packet);
        let bytes = encode(&packet).unwrap();
        assert_eq!(decode(&bytes).unwrap().0, packet);
    }

    #[test]
    fn option_value_longer_than_we_can_read_is_refused() {
        let mut packet = Packet::new();
        packet.add_option(CoapOption::Unknown(2), vec![0; MAX_OPTION_VALUE_LEN + 1]);
        assert_eq!(
            encode(&packet),
            Err(FrameError::OptionTooLong {
                number: 2,
                len: MAX_OPTION_VALUE_LEN + 1
            })
        );
    }

    fn sample_stream() -> (Vec<Packet>, Vec<u8>) {
        let mut packets = Vec::new();
        for i in 0..20u8 {
            let mut p = Packet::new();
            p.header.code = if i % 2 == 0 {
                MessageClass::Request(RequestType::Post)
            } else {
                MessageClass::Response(ResponseType::Changed)
            };
            p.set_token(vec![i; usize::from(i % 9)]);
            p.add_option(CoapOption::UriPath, format!("r{i}").into_bytes());
            p.set_content_format(ContentFormat::ApplicationVndOcfCbor);
            p.payload = vec![i; usize::from(i) * 37];
            packets.push(nonify(p));
        }
        let stream = packets.iter().flat_map(|p| encode(p).unwrap()).collect();
        (packets, stream)
    }

    #[test]
    fn decoder_one_byte_at_a_time() {
        let (packets, stream) = sample_stream();
        let mut decoder = FrameDecoder::new(1152);
        let mut got = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(p) = decoder.next_frame().unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got, packets);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn decoder_many_frames_in_one_push() {
        let (packets, stream) = sample_stream();
        let mut decoder = FrameDecoder::new(1152);
        decoder.push(&stream);
        assert_eq!(decoder.pending_frames(), packets.len());
        let mut got = Vec::new();
        while let Some(p) = decoder.next_frame().unwrap() {
            got.push(p);
        }
        assert_eq!(got, packets);
    }

    #[test]
    fn too_large_refused_before_buffering() {
        let mut decoder = FrameDecoder::new(16 * 1024);
        // Len 15: 4-byte extended length, 1 GiB declared; 8-byte token.
        let declared: u64 = 1 << 30;
        let mut header = vec![0xF8];
        header.extend_from_slice(&((declared - OFFSET_4) as u32).to_be_bytes());
        decoder.push(&header);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                declared,
                max: 16 * 1024
            })
        );
        assert!(decoder.buffered_len() <= 5);
        assert!(decoder.buffered_capacity() <= 5);
        // The body that follows is never buffered, and the error sticks.
        decoder.push(&vec![0u8; 1 << 20]);
        assert!(decoder.buffered_capacity() <= 5);
        assert_eq!(decoder.pending_frames(), 0);
        assert!(decoder.is_poisoned());
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn frame_at_the_limit_is_accepted_and_bounded() {
        let max = 2000;
        let packet = packet_with_length(max, &[7; 8]);
        let bytes = encode(&packet).unwrap();
        let mut decoder = FrameDecoder::new(max);
        decoder.push(&bytes[..bytes.len() - 1]);
        assert!(decoder.buffered_capacity() <= MAX_HEADER_LEN + max);
        decoder.push(&bytes[bytes.len() - 1..]);
        assert_eq!(decoder.next_frame().unwrap(), Some(packet));

        let mut decoder = FrameDecoder::new(max - 1);
        decoder.push(&bytes[..3]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                declared: max as u64,
                max: max - 1
            })
        );
    }

    #[test]
    fn frames_before_an_error_are_delivered_first() {
        let (packets, mut stream) = sample_stream();
        // A frame with an option delta nibble of 15 that is not the payload marker.
        stream.extend_from_slice(&[0x10, 0x45, 0xF0]);
        stream.extend_from_slice(&encode(&packets[0]).unwrap());
        let mut decoder = FrameDecoder::new(1152);
        decoder.push(&stream);
        for p in &packets {
            assert_eq!(decoder.next_frame().unwrap().as_ref(), Some(p));
        }
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn truncated_buffers() {
        let (_, stream) = sample_stream();
        let first = frame_len(&stream).unwrap().unwrap();
        assert_eq!(
            decode(&stream[..first - 1]).unwrap_err(),
            FrameError::Truncated
        );
        assert_eq!(decode(&[]).unwrap_err(), FrameError::Truncated);
        assert_eq!(frame_len(&[0xD0]).unwrap(), None);
        let frame = Frame::new_checked(&stream[..]).unwrap();
        assert_eq!(frame.frame_len(), first);
        assert_eq!(frame.code(), 0x02);
        assert!(frame.token().is_empty());
    }

    // ----- property tests -------------------------------------------------------------

    /// Deterministic filler so that large payloads cost no proptest value trees.
    fn filler(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn option_number() -> impl Strategy<Value = u16> {
        prop_oneof![
            0u16..=300,
            Just(2049u16),
            Just(2053u16),
            60_000u16..=65_535,
            any::<u16>(),
        ]
    }

    fn option_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..20),
            2 => (0usize..=1000, any::<u64>()).prop_map(|(l, s)| filler(l, s)),
            1 => (13usize..=300, any::<u64>()).prop_map(|(l, s)| filler(l, s)),
            // Up to what coap-lite's decoder accepts (its 2-byte length stops at 65535).
            1 => (60_000usize..=65_535, any::<u64>()).prop_map(|(l, s)| filler(l, s)),
        ]
    }

    prop_compose! {
        fn arb_packet()(
            code in any::<u8>(),
            token in prop::collection::vec(any::<u8>(), 0..=8),
            options in prop::collection::btree_map(
                option_number(),
                prop::collection::vec(option_value(), 1..3),
                0..6,
            ),
            payload_len in prop_oneof![4 => 0usize..100, 2 => 0usize..5000, 1 => 0usize..70_000],
            seed in any::<u64>(),
        ) -> Packet {
            let mut p = Packet::new();
            p.header.code = MessageClass::from(code);
            p.set_token(token);
            for (number, values) in options {
                for v in values {
                    p.add_option(CoapOption::from(number), v);
                }
            }
            // coap-lite writes no payload for an Empty message.
            if code != 0 {
                p.payload = filler(payload_len, seed);
            }
            nonify(p)
        }
    }

    /// Splits `bytes` at the given chunk sizes (cycled), then the rest.
    fn split<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(rest.len());
            let n = n.clamp(1, rest.len());
            chunks.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        chunks
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn round_trip_under_any_split(
            packets in prop::collection::vec(arb_packet(), 1..4),
            sizes in prop::collection::vec(
                prop_oneof![1usize..4, 1usize..100, 1usize..20_000], 0..12),
        ) {
            let mut stream = Vec::new();
            for p in &packets {
                stream.extend_from_slice(&encode(p).unwrap());
            }
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut got = Vec::new();
            for chunk in split(&stream, &sizes) {
                decoder.push(chunk);
                while let Some(p) = decoder.next_frame().unwrap() {
                    got.push(p);
                }
            }
            prop_assert_eq!(decoder.buffered_len(), 0);
            prop_assert_eq!(got, packets);
        }

        #[test]
        fn byte_soup_never_panics(
            soup in prop::collection::vec(any::<u8>(), 0..3000),
            sizes in prop::collection::vec(1usize..64, 0..8),
            max in 0usize..2000,
        ) {
            let mut decoder = FrameDecoder::new(max);
            for chunk in split(&soup, &sizes) {
                decoder.push(chunk);
                prop_assert!(decoder.buffered_len() <= MAX_HEADER_LEN + max);
                while let Ok(Some(_)) = decoder.next_frame() {}
            }
            let _ = frame_len(&soup);
            let _ = decode(&soup);
        }

        #[test]
        fn soup_after_a_valid_prefix_never_panics(
            packet in arb_packet(),
            soup in prop::collection::vec(any::<u8>(), 0..500),
        ) {
            let mut stream = encode(&packet).unwrap();
            stream.extend_from_slice(&soup);
            let mut decoder = FrameDecoder::new(1 << 20);
            decoder.push(&stream);
            prop_assert_eq!(decoder.next_frame().unwrap(), Some(packet));
            while let Ok(Some(_)) = decoder.next_frame() {}
        }
    }
}
