//! The stateless half of the DTLS cookie exchange (RFC 6347 §4.2.1), for a server to do before
//! its DTLS stack sees a peer, as OpenSSL's `DTLSv1_listen` does: a ClientHello without the
//! right cookie gets a HelloVerifyRequest and leaves no state behind, so a flood of
//! ClientHellos from made-up addresses costs nothing but the answers.
//!
//! Once a ClientHello carries the cookie for its address, the session starts: the stack is fed
//! the same hello without the cookie and one message sequence number earlier
//! ([`ClientHello::without_cookie`]; it answers with the HelloVerifyRequest the client already
//! has, which is dropped), then the real one, whose cookie it accepts. Its handshake then
//! continues as if it had made the exchange itself.

/// Record header: type, version, epoch, sequence number, length.
const RECORD_HEADER: usize = 13;
/// Handshake header: type, length, message_seq, fragment_offset, fragment_length.
const HANDSHAKE_HEADER: usize = 12;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;
/// DTLS 1.0's version, which RFC 6347 §4.2.1 says a HelloVerifyRequest carries.
const DTLS1_0: [u8; 2] = [0xfe, 0xff];

/// A datagram that starts with an unfragmented DTLS ClientHello in epoch 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    datagram: &'a [u8],
    /// The record's 48-bit sequence number.
    record_seq: u64,
    message_seq: u16,
    /// Where the cookie's length byte is, within the datagram.
    cookie_at: usize,
    pub cookie: &'a [u8],
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, b| (n << 8) | u64::from(*b))
}

impl<'a> ClientHello<'a> {
    /// Parses the first record of `datagram`; `None` for anything else.
    pub fn parse(datagram: &'a [u8]) -> Option<ClientHello<'a>> {
        let rec = datagram.get(..RECORD_HEADER)?;
        if rec[0] != CONTENT_HANDSHAKE || rec[1] != 0xfe || be(&rec[3..5]) != 0 {
            return None;
        }
        let record_len = usize::try_from(be(&rec[11..13])).ok()?;
        let body = datagram.get(RECORD_HEADER..RECORD_HEADER.checked_add(record_len)?)?;
        let hs = body.get(..HANDSHAKE_HEADER)?;
        let length = be(&hs[1..4]);
        if hs[0] != CLIENT_HELLO || be(&hs[6..9]) != 0 || be(&hs[9..12]) != length {
            return None;
        }
        let msg = body.get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + usize::try_from(length).ok()?)?;
        // client_version (2), random (32), session_id <0..32>, cookie <0..255>.
        let sid_len = usize::from(*msg.get(34)?);
        let cookie_off = 35 + sid_len;
        let cookie_len = usize::from(*msg.get(cookie_off)?);
        let cookie = msg.get(cookie_off + 1..cookie_off + 1 + cookie_len)?;
        Some(ClientHello {
            datagram,
            record_seq: be(&rec[5..11]),
            message_seq: u16::try_from(be(&hs[4..6])).ok()?,
            cookie_at: RECORD_HEADER + HANDSHAKE_HEADER + cookie_off,
            cookie,
        })
    }

    /// The HelloVerifyRequest with `cookie` for this hello: its record and message sequence
    /// numbers, as RFC 6347 §4.2.1 asks of a server that keeps no state.
    pub fn hello_verify_request(&self, cookie: &[u8]) -> Vec<u8> {
        let body_len = 2 + 1 + cookie.len();
        let mut out = Vec::with_capacity(RECORD_HEADER + HANDSHAKE_HEADER + body_len);
        out.push(CONTENT_HANDSHAKE);
        out.extend_from_slice(&DTLS1_0);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.record_seq.to_be_bytes()[2..]);
        out.extend_from_slice(&((HANDSHAKE_HEADER + body_len) as u16).to_be_bytes());
        out.push(HELLO_VERIFY_REQUEST);
        out.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&self.message_seq.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&DTLS1_0);
        out.push(cookie.len() as u8);
        out.extend_from_slice(cookie);
        out
    }

    /// The hello the client sent before this one: the same without the cookie, one record and
    /// one message sequence number earlier. `None` if this one is not a second hello.
    pub fn without_cookie(&self) -> Option<Vec<u8>> {
        if self.cookie.is_empty() || self.message_seq == 0 || self.record_seq == 0 {
            return None;
        }
        let n = self.cookie.len();
        let record_len = usize::try_from(be(&self.datagram[11..13])).ok()?;
        let end = RECORD_HEADER + record_len;
        let mut out = Vec::with_capacity(end - n);
        out.extend_from_slice(&self.datagram[..self.cookie_at]);
        out.push(0);
        out.extend_from_slice(&self.datagram[self.cookie_at + 1 + n..end]);
        out[5..11].copy_from_slice(&(self.record_seq - 1).to_be_bytes()[2..]);
        out[11..13].copy_from_slice(&u16::try_from(record_len - n).ok()?.to_be_bytes());
        let hs = RECORD_HEADER;
        let length = u32::try_from(record_len - n - HANDSHAKE_HEADER).ok()?;
        out[hs + 1..hs + 4].copy_from_slice(&length.to_be_bytes()[1..]);
        out[hs + 4..hs + 6].copy_from_slice(&(self.message_seq - 1).to_be_bytes());
        out[hs + 9..hs + 12].copy_from_slice(&length.to_be_bytes()[1..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a DTLS 1.2 client sends it: record seq `rs`, message seq `ms`.
    fn hello(rs: u8, ms: u8, cookie: &[u8]) -> Vec<u8> {
        let mut msg = vec![0xfe, 0xfd];
        msg.extend_from_slice(&[7; 32]);
        msg.push(0); // no session id
        msg.push(cookie.len() as u8);
        msg.extend_from_slice(cookie);
        msg.extend_from_slice(&[0, 2, 0xc0, 0x37, 1, 0]); // one suite, null compression
        let len = msg.len();
        let mut hs = vec![
            CLIENT_HELLO,
            0,
            0,
            len as u8,
            0,
            ms,
            0,
            0,
            0,
            0,
            0,
            len as u8,
        ];
        hs.extend_from_slice(&msg);
        let mut rec = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, rs, 0, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn a_client_hello_is_read_and_anything_else_is_not() {
        let h = hello(0, 0, &[]);
        let p = ClientHello::parse(&h).unwrap();
        assert!(p.cookie.is_empty());
        let with = hello(1, 1, &[9; 16]);
        assert_eq!(ClientHello::parse(&with).unwrap().cookie, &[9; 16]);
        // Truncated at every length, other content types, epochs, fragments: not a hello.
        for n in 0..h.len() {
            assert_eq!(ClientHello::parse(&h[..n]), None, "{n}");
        }
        for (at, v) in [(0, 23), (3, 1), (RECORD_HEADER, 2), (RECORD_HEADER + 8, 1)] {
            let mut bad = h.clone();
            bad[at] = v;
            assert_eq!(ClientHello::parse(&bad), None, "byte {at}");
        }
    }

    #[test]
    fn the_verify_request_echoes_the_sequence_numbers_and_carries_the_cookie() {
        let h = hello(5, 0, &[]);
        let hvr = ClientHello::parse(&h)
            .unwrap()
            .hello_verify_request(&[1; 16]);
        assert_eq!(&hvr[..3], &[22, 0xfe, 0xff]);
        assert_eq!(be(&hvr[5..11]), 5);
        assert_eq!(usize::from(hvr[12]), hvr.len() - RECORD_HEADER);
        assert_eq!(hvr[RECORD_HEADER], HELLO_VERIFY_REQUEST);
        assert_eq!(be(&hvr[RECORD_HEADER + 4..RECORD_HEADER + 6]), 0);
        assert_eq!(
            &hvr[hvr.len() - 17..],
            &[[16u8].as_slice(), &[1; 16]].concat()[..]
        );
    }

    #[test]
    fn the_second_hello_without_its_cookie_is_the_first_one() {
        let first = hello(0, 0, &[]);
        let second = hello(1, 1, &[9; 16]);
        let rebuilt = ClientHello::parse(&second)
            .unwrap()
            .without_cookie()
            .unwrap();
        assert_eq!(rebuilt, first);
        // A first hello has nothing before it.
        assert_eq!(ClientHello::parse(&first).unwrap().without_cookie(), None);
    }
}
