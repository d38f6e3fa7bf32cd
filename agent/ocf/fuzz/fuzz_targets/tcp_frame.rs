//! Fuzzes the RFC 8323 frame decoder and the connection on top of it.
//!
//! Input: one byte choosing the chunk size the stream is pushed in, one byte choosing
//! Max-Message-Size (× 64), then the stream itself. Besides "never panics", it checks that
//! the decoder's buffer stays within header + Max-Message-Size and that every decoded frame
//! re-encodes to something that decodes to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocf::coap::tcp::{self, FrameDecoder, MAX_HEADER_LEN};
use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};

fuzz_target!(|data: &[u8]| {
    let [chunk, max, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let max = usize::from(*max) * 64;

    let mut decoder = FrameDecoder::new(max);
    for piece in stream.chunks(chunk) {
        decoder.push(piece);
        assert!(decoder.buffered_len() <= MAX_HEADER_LEN + max);
        while let Ok(Some(packet)) = decoder.next_frame() {
            // coap-lite drops the payload of an Empty message when encoding, so only
            // non-empty codes are expected to survive the round trip unchanged.
            if u8::from(packet.header.code) == 0 {
                continue;
            }
            let bytes = tcp::encode(&packet).expect("a decoded packet re-encodes");
            let (again, used) = tcp::decode(&bytes).expect("a re-encoded frame decodes");
            assert_eq!(used, bytes.len());
            assert_eq!(again, packet);
        }
    }

    let _ = tcp::frame_len(stream);
    let _ = tcp::decode(stream);

    let mut conn = TcpConnection::new(u32::try_from(max).unwrap_or(u32::MAX));
    let mut closed = false;
    for piece in stream.chunks(chunk) {
        for event in conn.receive(piece) {
            assert!(!closed, "no event after Close");
            if let ConnEvent::Close { .. } = event {
                closed = true;
            }
        }
    }
});
