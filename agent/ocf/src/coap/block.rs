//! Block-wise responses (RFC 7959 §2): a representation larger than one block is served in
//! pieces, statelessly — every block request renders the representation again and the client
//! reassembles the slices, with the ETag telling it when the representation changed under it.
//!
//! Over UDP this keeps datagrams within the 1152-byte default that CoAP stacks such as libcoap
//! accept; over TCP it is used when a response exceeds the peer's Max-Message-Size (RFC 8323
//! §5.3.1: 1152 bytes until the peer's CSM says otherwise).

use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};

/// The Block2/Block1 option value (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    /// Size exponent: the block holds 2^(szx+4) bytes; 7 is BERT and not used here.
    pub szx: u8,
}

/// SZX 6 = 1024-byte blocks, the largest non-BERT size.
pub const MAX_SZX: u8 = 6;

impl Block {
    pub fn size(self) -> usize {
        1usize << (u32::from(self.szx.min(MAX_SZX)) + 4)
    }

    /// Parses the option value (0 to 3 bytes).
    pub fn decode(bytes: &[u8]) -> Option<Block> {
        if bytes.len() > 3 {
            return None;
        }
        let v = bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        Some(Block {
            num: v >> 4,
            more: v & 0x08 != 0,
            szx: (v & 0x07) as u8,
        })
    }

    pub fn encode(self) -> Vec<u8> {
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx);
        OptionValueU32(v).into()
    }
}

/// The largest SZX whose block, with room for the response's options, fits `max_message`
/// bytes of options and payload.
pub fn szx_for(max_message: usize) -> u8 {
    // Leave room for the header, token and options of a response (ETag, Content-Format,
    // Observe, Block2, Size2, 2053): 128 bytes is ample.
    let room = max_message.saturating_sub(128);
    (0..=MAX_SZX)
        .rev()
        .find(|szx| (1usize << (szx + 4)) <= room)
        .unwrap_or(0)
}

/// Cuts `response` to the block the request asks for (its Block2 option), or to the first
/// block of size 2^(max_szx+4) when the payload is larger than that. Small responses to requests
/// without Block2 are left alone. Returns an error response when the requested block lies
/// beyond the representation.
pub fn apply_block2(request: &Packet, response: &mut Packet, max_szx: u8) {
    if !matches!(
        response.header.code,
        MessageClass::Response(ResponseType::Content)
    ) {
        return;
    }
    let max_szx = max_szx.min(MAX_SZX);
    let asked = request
        .get_first_option(CoapOption::Block2)
        .and_then(|b| Block::decode(b));
    let (num, szx) = match asked {
        // RFC 7959 §2.4: the server may answer with a smaller block than asked for; the
        // block number then scales so the offset stays the same.
        Some(b) if b.szx > max_szx => (b.num << (b.szx.min(MAX_SZX) - max_szx), max_szx),
        Some(b) => (b.num, b.szx),
        None if response.payload.len() > (1usize << (max_szx + 4)) => (0, max_szx),
        None => return,
    };
    let block = Block {
        num,
        more: false,
        szx,
    };
    let total = response.payload.len();
    let start = (num as usize).saturating_mul(block.size());
    if start >= total && !(start == 0 && total == 0) {
        let token = response.get_token().to_vec();
        let mut err = Packet::new();
        err.header = response.header.clone();
        err.header.code = MessageClass::Response(ResponseType::BadOption);
        err.set_token(token);
        err.payload = format!("block {num} is beyond the {total}-byte representation").into_bytes();
        *response = err;
        return;
    }
    let end = (start + block.size()).min(total);
    let more = end < total;
    response.payload = response.payload[start..end].to_vec();
    response.add_option(CoapOption::Block2, Block { num, more, szx }.encode());
    if num == 0 {
        response.add_option_as(CoapOption::Size2, OptionValueU32(total as u32));
    }
    if num > 0 {
        // Notifications are only the first block (RFC 7959 §2.6); later blocks are plain GETs.
        response.clear_option(CoapOption::Observe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.payload = (0..len).map(|i| i as u8).collect();
        p
    }

    #[test]
    fn option_value_round_trips() {
        for b in [
            Block {
                num: 0,
                more: true,
                szx: 6,
            },
            Block {
                num: 70000,
                more: false,
                szx: 2,
            },
        ] {
            assert_eq!(Block::decode(&b.encode()), Some(b));
        }
        assert_eq!(
            Block::decode(&[]),
            Some(Block {
                num: 0,
                more: false,
                szx: 0
            })
        );
        assert_eq!(Block::decode(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn large_payload_is_split_and_reassembles() {
        let whole = content(2500).payload;
        let mut got = Vec::new();
        let mut num = 0;
        loop {
            let mut req = Packet::new();
            if num > 0 {
                req.add_option(
                    CoapOption::Block2,
                    Block {
                        num,
                        more: false,
                        szx: 6,
                    }
                    .encode(),
                );
            }
            let mut resp = content(2500);
            apply_block2(&req, &mut resp, 6);
            let b = Block::decode(resp.get_first_option(CoapOption::Block2).unwrap()).unwrap();
            assert_eq!(b.num, num);
            if num == 0 {
                assert_eq!(
                    resp.get_first_option_as(CoapOption::Size2),
                    Some(Ok(OptionValueU32(2500)))
                );
                assert_eq!(
                    resp.get_first_option(CoapOption::Size2),
                    Some(&vec![0x09, 0xc4])
                );
            }
            got.extend_from_slice(&resp.payload);
            if !b.more {
                break;
            }
            num += 1;
        }
        assert_eq!(got, whole);
        assert_eq!(num, 2);
    }

    #[test]
    fn small_payload_untouched_and_smaller_block_honoured() {
        let mut resp = content(100);
        apply_block2(&Packet::new(), &mut resp, 6);
        assert!(resp.get_option(CoapOption::Block2).is_none());
        let mut req = Packet::new();
        req.add_option(
            CoapOption::Block2,
            Block {
                num: 1,
                more: false,
                szx: 2,
            }
            .encode(),
        );
        let mut resp = content(100);
        apply_block2(&req, &mut resp, 6);
        assert_eq!(resp.payload, (64..100).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn block_beyond_the_end_is_refused() {
        let mut req = Packet::new();
        req.add_option(
            CoapOption::Block2,
            Block {
                num: 9,
                more: false,
                szx: 6,
            }
            .encode(),
        );
        let mut resp = content(100);
        apply_block2(&req, &mut resp, 6);
        assert_eq!(
            resp.header.code,
            MessageClass::Response(ResponseType::BadOption)
        );
    }

    #[test]
    fn szx_fits_the_message_size() {
        assert_eq!(szx_for(1152), 6);
        assert_eq!(szx_for(600), 4);
        assert_eq!(szx_for(16 * 1024), 6);
    }
}
