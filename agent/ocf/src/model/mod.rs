//! Payload encodings: the OCF content formats and the conversions between CBOR and JSON.
//!
//! Representations live in memory as CBOR values ([`ciborium::Value`]); JSON (content-format 50)
//! is converted at the edge, so every resource serves all three formats from one code path.

pub mod cbor;
pub mod content;

pub use content::{decode_payload, encode_payload, ContentFormat, PayloadError};

/// Whether `s` is a UUID in the hyphenated 8-4-4-4-12 hex form (either case), the form OCF
/// writes `di`, `piid`, `sid` and `uuid:` subjects in.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
