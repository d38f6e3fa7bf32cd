//! Content formats (OCF-PROTOCOL.md §2.5) and payload encoding.

use ciborium::Value;
use std::fmt;

/// CoAP Content-Format numbers this stack understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentFormat {
    /// 10000 `application/vnd.ocf+cbor`, the OCF default.
    OcfCbor,
    /// 60 `application/cbor`.
    Cbor,
    /// 50 `application/json`.
    Json,
}

impl ContentFormat {
    pub const OCF_CBOR_NUMBER: u16 = 10000;
    pub const CBOR_NUMBER: u16 = 60;
    pub const JSON_NUMBER: u16 = 50;

    pub fn from_number(n: u16) -> Option<Self> {
        match n {
            Self::OCF_CBOR_NUMBER => Some(Self::OcfCbor),
            Self::CBOR_NUMBER => Some(Self::Cbor),
            Self::JSON_NUMBER => Some(Self::Json),
            _ => None,
        }
    }

    pub fn number(self) -> u16 {
        match self {
            Self::OcfCbor => Self::OCF_CBOR_NUMBER,
            Self::Cbor => Self::CBOR_NUMBER,
            Self::Json => Self::JSON_NUMBER,
        }
    }
}

/// A payload that could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError(pub String);

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PayloadError {}

/// Largest nesting a decoded payload may have, CBOR or JSON, so one bad body cannot exhaust
/// the stack.
const MAX_DEPTH: usize = super::cbor::MAX_DEPTH;

/// Decodes a request or response body.
pub fn decode_payload(format: ContentFormat, bytes: &[u8]) -> Result<Value, PayloadError> {
    match format {
        ContentFormat::OcfCbor | ContentFormat::Cbor => {
            // Tags, `undefined` and other items OCF never carries are refused before decoding.
            super::cbor::check_ocf_item(bytes).map_err(PayloadError)?;
            let mut reader = bytes;
            let value: Value = ciborium::de::from_reader(&mut reader)
                .map_err(|e| PayloadError(format!("invalid CBOR: {e}")))?;
            if !reader.is_empty() {
                return Err(PayloadError(format!(
                    "invalid CBOR: {} trailing bytes after the first data item",
                    reader.len()
                )));
            }
            Ok(value)
        }
        ContentFormat::Json => {
            let json: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| PayloadError(format!("invalid JSON: {e}")))?;
            json_to_cbor(&json)
        }
    }
}

/// Encodes a body in the given format (CBOR floats as doubles, see [`super::cbor`]).
pub fn encode_payload(format: ContentFormat, value: &Value) -> Result<Vec<u8>, PayloadError> {
    match format {
        ContentFormat::OcfCbor | ContentFormat::Cbor => super::cbor::value_to_vec(value)
            .map_err(|e| PayloadError(format!("cannot encode CBOR: {e}"))),
        ContentFormat::Json => {
            let json = cbor_to_json(value)?;
            serde_json::to_vec(&json).map_err(|e| PayloadError(format!("cannot encode JSON: {e}")))
        }
    }
}

/// Converts JSON to a CBOR value: integral numbers become integers, others doubles. Nesting
/// deeper than a payload may have is an error, as in [`decode_payload`].
pub fn json_to_cbor(json: &serde_json::Value) -> Result<Value, PayloadError> {
    json_to_cbor_at(json, 0)
}

fn json_to_cbor_at(json: &serde_json::Value, depth: usize) -> Result<Value, PayloadError> {
    if depth > MAX_DEPTH {
        return Err(PayloadError("invalid JSON: nested too deeply".into()));
    }
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Integer(u.into())
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| json_to_cbor_at(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| Ok((Value::Text(k.clone()), json_to_cbor_at(v, depth + 1)?)))
                .collect::<Result<_, PayloadError>>()?,
        ),
    })
}

/// Converts a CBOR value to JSON. Byte strings become base64 text (as OCF's JSON mapping does);
/// map keys must be text.
pub fn cbor_to_json(value: &Value) -> Result<serde_json::Value, PayloadError> {
    Ok(match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Integer(i) => {
            let i: i128 = (*i).into();
            if let Ok(v) = i64::try_from(i) {
                serde_json::Value::from(v)
            } else if let Ok(v) = u64::try_from(i) {
                serde_json::Value::from(v)
            } else {
                return Err(PayloadError("integer out of JSON range".into()));
            }
        }
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Text(s) => serde_json::Value::String(s.clone()),
        Value::Bytes(b) => serde_json::Value::String(base64(b)),
        Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(cbor_to_json).collect::<Result<_, _>>()?)
        }
        Value::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let key = match k {
                    Value::Text(s) => s.clone(),
                    _ => return Err(PayloadError("map key is not text".into())),
                };
                map.insert(key, cbor_to_json(v)?);
            }
            serde_json::Value::Object(map)
        }
        Value::Tag(_, inner) => cbor_to_json(inner)?,
        _ => return Err(PayloadError("CBOR value has no JSON form".into())),
    })
}

/// Standard base64 with padding (RFC 4648 §4), the alphabet OCF's JSON mapping uses.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_cbor_carry_the_same_representation() {
        let json =
            br#"{"value":true,"brightness":42,"temperature":-3.5,"rt":["oic.r.switch.binary"]}"#;
        let v = decode_payload(ContentFormat::Json, json).unwrap();
        let cbor = encode_payload(ContentFormat::OcfCbor, &v).unwrap();
        let back = decode_payload(ContentFormat::Cbor, &cbor).unwrap();
        assert_eq!(v, back);
        let json_again = encode_payload(ContentFormat::Json, &back).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&json_again).unwrap();
        assert_eq!(parsed["brightness"], 42);
        assert_eq!(parsed["temperature"], -3.5);
        assert_eq!(parsed["value"], true);
    }

    #[test]
    fn malformed_bodies_are_reported_not_panicked_on() {
        assert!(decode_payload(ContentFormat::OcfCbor, &[0xa1, 0x61]).is_err());
        assert!(decode_payload(ContentFormat::OcfCbor, &[0xa0, 0x00])
            .unwrap_err()
            .0
            .contains("trailing"));
        assert!(decode_payload(ContentFormat::Json, b"{\"a\":").is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(decode_payload(ContentFormat::Json, deep.as_bytes()).is_err());
        let deep = [vec![0x81; 200], vec![0x00]].concat();
        assert!(decode_payload(ContentFormat::Cbor, &deep).is_err());
    }

    #[test]
    fn json_values_convert_with_integers_kept_and_depth_bounded() {
        let j = serde_json::json!([-3, u64::MAX, 1.5, null, "x", false, {"k": true}]);
        let v = json_to_cbor(&j).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Integer((-3).into()),
                Value::Integer(u64::MAX.into()),
                Value::Float(1.5),
                Value::Null,
                Value::Text("x".into()),
                Value::Bool(false),
                Value::Map(vec![(Value::Text("k".into()), Value::Bool(true))]),
            ])
        );
        assert_eq!(cbor_to_json(&v).unwrap(), j);
        // A value built in memory has no parser's recursion limit: the depth bound still holds.
        let mut deep = serde_json::Value::Null;
        for _ in 0..=MAX_DEPTH {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert!(json_to_cbor(&deep)
            .unwrap_err()
            .0
            .contains("nested too deeply"));
        let serde_json::Value::Array(mut inner) = deep else {
            unreachable!()
        };
        assert!(json_to_cbor(&inner.remove(0)).is_ok());
    }

    #[test]
    fn tagged_cbor_is_refused_in_every_cbor_format() {
        // {"value": 1(0)}: an epoch-time tag; and the fuzz target's tag 9 around a bignum.
        for bytes in [
            &[0xa1, 0x65, b'v', b'a', b'l', b'u', b'e', 0xc1, 0x00][..],
            &[0xc9, 0xc2, 0x5f, 0x41, 0x41, 0x41, 0x01, 0xff],
        ] {
            for format in [ContentFormat::OcfCbor, ContentFormat::Cbor] {
                let e = decode_payload(format, bytes).unwrap_err();
                assert!(e.0.contains("tag"), "{e}");
            }
        }
    }

    #[test]
    fn bytes_become_base64_in_json() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        assert_eq!(base64(b""), "");
    }
}
