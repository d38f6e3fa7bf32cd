//! Block-wise requests from a device (RFC 7959 §2.5): a request whose body exceeds our
//! Max-Message-Size arrives in Block1 blocks on one connection, all with the same token (what
//! plgd hub's go-coap expects too: it keys its reassembly by token, answers 2.31 Continue
//! echoing the block, and hands the whole request on after the last block).
//!
//! [`Block1Assembler`] puts them together per token: 2.31 Continue for each block with more to
//! come, the whole request after the last one. A block that does not follow the one before gets
//! 4.08 Request Entity Incomplete (RFC 7959 §2.9.2), a body over the bound 4.13 Request Entity
//! Too Large with Size1 giving the bound (§2.9.3, RFC 7252 §5.10.9); either way the partial body
//! is dropped.

use std::collections::HashMap;

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};
use ocf::coap::block::{Block, MAX_SZX};

/// Largest body put together from blocks.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most block-wise requests in progress on one connection.
const MAX_IN_PROGRESS: usize = 8;

/// What to do with a request after [`Block1Assembler::accept`].
#[derive(Debug, PartialEq)]
pub enum Block1Outcome {
    /// Handle this request: it came whole, or its last block completed it. `last` is the
    /// Block1 of that last block, to echo in the response (RFC 7959 §2.3).
    Whole {
        request: Packet,
        last: Option<Block>,
    },
    /// Answer with this and handle nothing (2.31 Continue, or an error).
    Reply(Packet),
}

/// The block-wise requests in progress on one connection, by token.
#[derive(Debug)]
pub struct Block1Assembler {
    max_body: usize,
    partial: HashMap<Vec<u8>, Packet>,
}

impl Default for Block1Assembler {
    fn default() -> Self {
        Self::new(MAX_BODY)
    }
}

impl Block1Assembler {
    /// Accepts bodies up to `max_body` bytes.
    pub fn new(max_body: usize) -> Block1Assembler {
        Block1Assembler {
            max_body,
            partial: HashMap::new(),
        }
    }

    /// Takes one request off the connection.
    pub fn accept(&mut self, request: Packet) -> Block1Outcome {
        let Some(option) = request.get_first_option(CoapOption::Block1) else {
            return Block1Outcome::Whole {
                request,
                last: None,
            };
        };
        let token = request.get_token().to_vec();
        let so_far = self.partial.remove(&token);
        let Some(block) = Block::decode(option) else {
            return reply(
                &token,
                ResponseType::BadOption,
                "Block1 longer than 3 bytes",
                None,
            );
        };
        if block.szx > MAX_SZX {
            // BERT (RFC 8323 §6) is not offered in our CSM.
            return reply(
                &token,
                ResponseType::BadOption,
                "BERT was not offered",
                None,
            );
        }
        let expected = so_far.as_ref().map_or(0, |p| p.payload.len());
        let offset = usize::try_from(block.num)
            .ok()
            .and_then(|n| n.checked_mul(block.size()));
        if offset != Some(expected) {
            return reply(
                &token,
                ResponseType::RequestEntityIncomplete,
                &format!(
                    "block {} of {} bytes does not follow the {expected} bytes received",
                    block.num,
                    block.size()
                ),
                None,
            );
        }
        if block.more && request.payload.len() != block.size() {
            // RFC 7959 §2.3: only the last block may be shorter than the block size.
            return reply(
                &token,
                ResponseType::BadRequest,
                "a block with more to come must fill the block size",
                None,
            );
        }
        let announced = request
            .get_first_option(CoapOption::Size1)
            .filter(|v| v.len() <= 4)
            .map(|v| v.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
        let total = expected.saturating_add(request.payload.len());
        let max = self.max_body;
        if total > max || announced.is_some_and(|n| n > max as u64) {
            return reply(
                &token,
                ResponseType::RequestEntityTooLarge,
                &format!("a body over {max} bytes"),
                Some(max),
            );
        }
        if so_far.is_none() && block.more && self.partial.len() >= MAX_IN_PROGRESS {
            return reply(
                &token,
                ResponseType::ServiceUnavailable,
                "too many block-wise requests at once",
                None,
            );
        }
        let mut whole = match so_far {
            Some(mut p) => {
                p.payload.extend_from_slice(&request.payload);
                p
            }
            None => request,
        };
        if block.more {
            self.partial.insert(token.clone(), whole);
            let mut cont = response(&token, ResponseType::Continue);
            cont.add_option(CoapOption::Block1, block.encode());
            return Block1Outcome::Reply(cont);
        }
        whole.clear_option(CoapOption::Block1);
        whole.clear_option(CoapOption::Size1);
        Block1Outcome::Whole {
            request: whole,
            last: Some(block),
        }
    }

    /// Block-wise requests in progress.
    pub fn in_progress(&self) -> usize {
        self.partial.len()
    }
}

fn response(token: &[u8], code: ResponseType) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(code);
    p.set_token(token.to_vec());
    p
}

/// An error answer with a diagnostic payload (RFC 7252 §5.5.2) and, for 4.13, Size1.
fn reply(
    token: &[u8],
    code: ResponseType,
    diagnostic: &str,
    size1: Option<usize>,
) -> Block1Outcome {
    let mut p = response(token, code);
    if let Some(max) = size1 {
        p.add_option_as(
            CoapOption::Size1,
            coap_lite::option_value::OptionValueU32(u32::try_from(max).unwrap_or(u32::MAX)),
        );
    }
    p.payload = diagnostic.as_bytes().to_vec();
    Block1Outcome::Reply(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::RequestType;

    const TOKEN: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn block(num: u32, more: bool, body: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Post);
        p.set_token(TOKEN.to_vec());
        p.add_option(CoapOption::UriPath, b"oic".to_vec());
        p.add_option(CoapOption::UriPath, b"rd".to_vec());
        p.add_option(CoapOption::Block1, Block { num, more, szx: 0 }.encode());
        p.payload = body.to_vec();
        p
    }

    fn code(o: &Block1Outcome) -> Option<ResponseType> {
        match o {
            Block1Outcome::Reply(p) => match p.header.code {
                MessageClass::Response(c) => Some(c),
                _ => None,
            },
            Block1Outcome::Whole { .. } => None,
        }
    }

    #[test]
    fn blocks_get_continue_and_the_last_completes_the_request() {
        let mut a = Block1Assembler::default();
        let first = a.accept(block(0, true, &[b'a'; 16]));
        assert_eq!(code(&first), Some(ResponseType::Continue));
        let Block1Outcome::Reply(cont) = first else {
            unreachable!()
        };
        assert_eq!(cont.get_token(), TOKEN);
        assert_eq!(
            Block::decode(cont.get_first_option(CoapOption::Block1).unwrap()),
            Some(Block {
                num: 0,
                more: true,
                szx: 0
            })
        );
        assert_eq!(
            code(&a.accept(block(1, true, &[b'b'; 16]))),
            Some(ResponseType::Continue)
        );
        let Block1Outcome::Whole { request, last } = a.accept(block(2, false, b"cc")) else {
            panic!("not complete")
        };
        assert_eq!(request.payload.len(), 34);
        assert!(request.payload.ends_with(b"bbcc"));
        assert!(request.get_first_option(CoapOption::Block1).is_none());
        assert_eq!(request.get_option(CoapOption::UriPath).unwrap().len(), 2);
        assert_eq!(last.map(|b| (b.num, b.more)), Some((2, false)));
        assert_eq!(a.in_progress(), 0);
    }

    #[test]
    fn a_request_without_block1_passes_through() {
        let mut a = Block1Assembler::default();
        let mut p = block(0, false, b"x");
        p.clear_option(CoapOption::Block1);
        assert_eq!(
            a.accept(p.clone()),
            Block1Outcome::Whole {
                request: p,
                last: None
            }
        );
    }

    #[test]
    fn an_out_of_order_block_gets_408_and_drops_the_body() {
        let mut a = Block1Assembler::default();
        a.accept(block(0, true, &[0; 16]));
        let skipped = a.accept(block(2, true, &[0; 16]));
        assert_eq!(code(&skipped), Some(ResponseType::RequestEntityIncomplete));
        let Block1Outcome::Reply(p) = skipped else {
            unreachable!()
        };
        assert!(String::from_utf8_lossy(&p.payload).contains("does not follow"));
        assert_eq!(a.in_progress(), 0);
        // A later block of the dropped body cannot complete anything either.
        assert_eq!(
            code(&a.accept(block(1, false, b"z"))),
            Some(ResponseType::RequestEntityIncomplete)
        );
        // A short block with more to come is refused.
        assert_eq!(
            code(&a.accept(block(0, true, b"short"))),
            Some(ResponseType::BadRequest)
        );
    }

    #[test]
    fn a_body_over_the_bound_gets_413_with_size1() {
        let mut a = Block1Assembler::new(40);
        a.accept(block(0, true, &[0; 16]));
        a.accept(block(1, true, &[0; 16]));
        let over = a.accept(block(2, true, &[0; 16]));
        assert_eq!(code(&over), Some(ResponseType::RequestEntityTooLarge));
        let Block1Outcome::Reply(p) = over else {
            unreachable!()
        };
        assert_eq!(p.get_first_option(CoapOption::Size1), Some(&vec![40]));
        assert_eq!(a.in_progress(), 0);
        // Announced too large up front (RFC 7959 §4, Size1): refused at the first block.
        let mut first = block(0, true, &[0; 16]);
        first.add_option(CoapOption::Size1, vec![0x01, 0x00]);
        assert_eq!(
            code(&a.accept(first)),
            Some(ResponseType::RequestEntityTooLarge)
        );
    }

    #[test]
    fn in_progress_requests_are_bounded() {
        let mut a = Block1Assembler::default();
        for i in 0..MAX_IN_PROGRESS {
            let mut p = block(0, true, &[0; 16]);
            p.set_token(vec![i as u8; 8]);
            assert_eq!(code(&a.accept(p)), Some(ResponseType::Continue));
        }
        assert_eq!(
            code(&a.accept(block(0, true, &[0; 16]))),
            Some(ResponseType::ServiceUnavailable)
        );
    }
}
