//! CoAP transports.
//!
//! - [`tcp`]: RFC 8323 §3.2 framing of CoAP over TCP and TLS, reusing coap-lite's
//!   `Packet` for options and payload.
//! - [`signal`]: RFC 8323 §5 signalling messages (CSM, Ping, Pong, Release, Abort).
//! - [`tcp_conn`]: a sans-IO connection over one stream, tying framing and signalling
//!   together.
//! - [`udp`]: the server side of the RFC 7252 message layer (deduplication, ACK, RST).

pub mod block;
pub mod signal;
pub mod tcp;
pub mod tcp_conn;
pub mod udp;
