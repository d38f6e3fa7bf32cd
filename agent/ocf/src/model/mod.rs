//! Payload encodings: the OCF content formats and the conversions between CBOR and JSON.
//!
//! Representations live in memory as CBOR values ([`ciborium::Value`]); JSON (content-format 50)
//! is converted at the edge, so every resource serves all three formats from one code path.

pub mod cbor;
pub mod content;

pub use content::{decode_payload, encode_payload, ContentFormat, PayloadError};
