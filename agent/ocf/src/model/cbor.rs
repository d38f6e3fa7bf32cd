//! The CBOR writer for everything this stack sends: every float goes out as a 64-bit double.
//!
//! ciborium writes a float in the shortest form that keeps its value (RFC 8949 §4.2.2), so
//! 21.5, 22.0 or a `range` of `[15.0, 30.0]` become half-precision floats (`0xf9`).
//! iotivity-lite's parser (tinycbor) rejects a half float inside an array and reads a lone one as
//! null, and its own encoder always writes doubles: a client built on it could not read most
//! sensor values. So floats are written as major type 7, additional information 27
//! (RFC 8949 §3.3), whatever their value; integers stay integers. Decoding still accepts every
//! width (ciborium reads them all).

use ciborium::Value;
use serde::Serialize;

/// Encodes `value` as CBOR with doubles for every float.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let value = Value::serialized(value).map_err(|e| e.to_string())?;
    value_to_vec(&value)
}

/// Encodes a CBOR value with doubles for every float.
pub fn value_to_vec(value: &Value) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

/// A data item's head: major type and argument in the shortest form (RFC 8949 §3, preferred
/// serialisation of lengths and integers).
fn head(out: &mut Vec<u8>, major: u8, argument: u64) {
    let major = major << 5;
    match argument {
        0..=23 => out.push(major | argument as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, argument as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(argument as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(argument as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&argument.to_be_bytes());
        }
    }
}

fn length(out: &mut Vec<u8>, major: u8, len: usize) {
    // usize is at most 64 bits on every target this builds for.
    head(out, major, len as u64);
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match value {
        Value::Integer(i) => {
            let i: i128 = (*i).into();
            // ciborium's Integer spans exactly CBOR's range: -2^64 ..= 2^64-1.
            match u64::try_from(i) {
                Ok(n) => head(out, 0, n),
                Err(_) => {
                    let n = u64::try_from(-1 - i).map_err(|_| "integer out of CBOR range")?;
                    head(out, 1, n);
                }
            }
        }
        Value::Bytes(b) => {
            length(out, 2, b.len());
            out.extend_from_slice(b);
        }
        Value::Text(s) => {
            length(out, 3, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            length(out, 4, items.len());
            for item in items {
                write(item, out)?;
            }
        }
        Value::Map(entries) => {
            length(out, 5, entries.len());
            for (k, v) in entries {
                write(k, out)?;
                write(v, out)?;
            }
        }
        Value::Tag(tag, inner) => {
            head(out, 6, *tag);
            write(inner, out)?;
        }
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Null => out.push(0xf6),
        Value::Float(f) => {
            out.push(0xfb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        other => return Err(format!("cannot encode CBOR item {other:?}")),
    }
    Ok(())
}

/// The width in bytes (2, 4 or 8) of every float in the CBOR data items of `bytes`, read from
/// the items' heads (RFC 8949 §3), not through a decoder: what a peer's parser will meet. For
/// tests and fuzz targets that check what goes on the wire.
pub fn float_widths(bytes: &[u8]) -> Result<Vec<usize>, String> {
    /// Nesting bound, as for decoding.
    const MAX_DEPTH: usize = 64;
    fn walk(
        bytes: &[u8],
        at: &mut usize,
        depth: usize,
        widths: &mut Vec<usize>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        let initial = *bytes.get(*at).ok_or("truncated")?;
        *at += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let argument = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                let field = bytes.get(*at..*at + n).ok_or("truncated")?;
                *at += n;
                field.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b))
            }
            _ => return Err(format!("indefinite length or reserved head {initial:#04x}")),
        };
        match major {
            2 | 3 => {
                let len = usize::try_from(argument).map_err(|_| "length too large")?;
                *at = at
                    .checked_add(len)
                    .filter(|&end| end <= bytes.len())
                    .ok_or("truncated")?;
            }
            4 | 5 => {
                let items = if major == 5 {
                    argument.saturating_mul(2)
                } else {
                    argument
                };
                for _ in 0..items {
                    walk(bytes, at, depth + 1, widths)?;
                }
            }
            6 => walk(bytes, at, depth + 1, widths)?,
            7 if (25..=27).contains(&info) => widths.push(1 << (info - 24)),
            _ => {}
        }
        Ok(())
    }
    let mut widths = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        walk(bytes, &mut at, 0, &mut widths)?;
    }
    Ok(widths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// No half (`0xf9`) or single (`0xfa`) float anywhere in `bytes`.
    fn assert_only_doubles(bytes: &[u8]) {
        let widths = float_widths(bytes).unwrap();
        assert!(widths.iter().all(|&w| w == 8), "{widths:?} in {bytes:02x?}");
    }

    #[test]
    fn floats_that_fit_a_half_are_still_doubles() {
        let v = Value::Array(vec![Value::Float(15.0), Value::Float(30.0)]);
        assert_eq!(
            value_to_vec(&v).unwrap(),
            [
                &[0x82, 0xfb][..],
                &15.0f64.to_be_bytes(),
                &[0xfb],
                &30.0f64.to_be_bytes()
            ]
            .concat()
        );
        // ciborium alone writes halves: the reason this module exists.
        let mut shortest = Vec::new();
        ciborium::into_writer(&v, &mut shortest).unwrap();
        assert_eq!(shortest[1], 0xf9);
    }

    #[test]
    fn integers_and_lengths_use_their_shortest_heads() {
        let v = Value::Map(vec![
            (Value::Text("a".into()), Value::Integer(23.into())),
            (Value::Text("b".into()), Value::Integer(24.into())),
            (Value::Text("c".into()), Value::Integer((-1).into())),
            (Value::Text("d".into()), Value::Integer(u64::MAX.into())),
            (
                Value::Text("e".into()),
                Value::Integer((-1 - i128::from(u64::MAX)).try_into().unwrap()),
            ),
        ]);
        let mut reference = Vec::new();
        ciborium::into_writer(&v, &mut reference).unwrap();
        assert_eq!(value_to_vec(&v).unwrap(), reference);
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|i| Value::Integer(i.into())),
            any::<u64>().prop_map(|i| Value::Integer(i.into())),
            any::<f64>().prop_map(Value::Float),
            (-1000i32..1000).prop_map(|i| Value::Float(f64::from(i) / 4.0)),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            ".{0,30}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..30).prop_map(Value::Array),
                proptest::collection::vec((".{0,8}".prop_map(Value::Text), inner), 0..30)
                    .prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        /// Apart from float widths, the bytes are exactly ciborium's, and they decode to the
        /// same value.
        #[test]
        fn decodes_back_to_the_value_with_only_doubles(v in value()) {
            let bytes = value_to_vec(&v).unwrap();
            assert_only_doubles(&bytes);
            let back: Value = ciborium::from_reader(&bytes[..]).unwrap();
            if !contains_nan(&v) {
                prop_assert_eq!(back, v);
            }
        }
    }

    fn contains_nan(v: &Value) -> bool {
        match v {
            Value::Float(f) => f.is_nan(),
            Value::Array(a) => a.iter().any(contains_nan),
            Value::Map(m) => m.iter().any(|(k, v)| contains_nan(k) || contains_nan(v)),
            _ => false,
        }
    }
}
