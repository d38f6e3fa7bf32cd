//! Fuzzes the payload decoders of `ocf::model` (DESIGN.md §5, "CBOR payload decoding").
//!
//! The whole input is decoded as each content format (10000, 60, 50). Besides "never panics":
//! a decoded CBOR value re-encodes, and the re-encoded bytes decode to the same value (floats
//! compared bit for bit, any NaN equal to any NaN); a value decoded from JSON re-encodes as
//! JSON and as CBOR, and both decode again.
#![no_main]

use ciborium::Value;
use libfuzzer_sys::fuzz_target;
use ocf::model::content::cbor_to_json;
use ocf::model::{decode_payload, encode_payload, ContentFormat};

const FORMATS: [ContentFormat; 3] = [
    ContentFormat::OcfCbor,
    ContentFormat::Cbor,
    ContentFormat::Json,
];

/// Structural equality, with floats compared by bits (so -0.0 ≠ 0.0) except that NaNs are
/// equal whatever their payload.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| same(kx, ky) && same(vx, vy))
        }
        (Value::Tag(tx, x), Value::Tag(ty, y)) => tx == ty && same(x, y),
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    for format in FORMATS {
        let Ok(value) = decode_payload(format, data) else {
            continue;
        };
        // Every value the router may hold can be asked for as JSON (Accept: 50).
        let _ = cbor_to_json(&value);
        let _ = encode_payload(ContentFormat::Json, &value);
        match format {
            ContentFormat::OcfCbor | ContentFormat::Cbor => {
                let bytes =
                    encode_payload(format, &value).expect("a decoded CBOR value re-encodes");
                let again =
                    decode_payload(format, &bytes).expect("a re-encoded CBOR value decodes");
                assert!(
                    same(&value, &again),
                    "CBOR round trip changed {value:?} into {again:?}"
                );
            }
            ContentFormat::Json => {
                let json = encode_payload(ContentFormat::Json, &value)
                    .expect("a value decoded from JSON re-encodes as JSON");
                decode_payload(ContentFormat::Json, &json).expect("re-encoded JSON decodes");
                let cbor = encode_payload(ContentFormat::OcfCbor, &value)
                    .expect("a value decoded from JSON encodes as CBOR");
                let again = decode_payload(ContentFormat::OcfCbor, &cbor)
                    .expect("CBOR encoded from JSON decodes");
                assert!(
                    same(&value, &again),
                    "JSON→CBOR round trip changed {value:?} into {again:?}"
                );
            }
        }
    }
});
