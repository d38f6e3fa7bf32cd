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

/// Largest nesting of arrays and maps an accepted payload may have (the same bound as JSON's).
pub const MAX_DEPTH: usize = 64;

/// Checks that `bytes` starts with one well-formed CBOR data item made only of what OCF
/// payloads carry (OCF Core: maps, arrays, text and byte strings, integers, floats, booleans,
/// null), and returns its length. Refused, with a message for the 4.00 diagnostic: any tag
/// (RFC 8949 §3.4: OCF defines none, and decoders disagree on them: a bignum tag decodes to a
/// plain integer, so a tagged value does not survive a round trip), `undefined` and other simple
/// values (§3.3), reserved heads (§3: additional information 28–30), a misplaced "break", and
/// nesting deeper than [`MAX_DEPTH`]. Indefinite lengths are accepted (§3.2.2–3.2.3):
/// iotivity-lite writes its maps that way. Every decoder of network input runs this first, so
/// the rule is the same on every path.
pub fn check_ocf_item(bytes: &[u8]) -> Result<usize, String> {
    let mut at = 0;
    ocf_item(bytes, &mut at, 0)?;
    Ok(at)
}

/// The head at `*at`: (major type, additional information, argument); the argument of an
/// indefinite length (31) is `None`.
fn read_head(bytes: &[u8], at: &mut usize) -> Result<(u8, u8, Option<u64>), String> {
    let initial = *bytes.get(*at).ok_or("truncated CBOR")?;
    *at += 1;
    let (major, info) = (initial >> 5, initial & 0x1f);
    let argument = match info {
        0..=23 => Some(u64::from(info)),
        24..=27 => {
            let n = 1usize << (info - 24);
            let end = at.checked_add(n).ok_or("truncated CBOR")?;
            let field = bytes.get(*at..end).ok_or("truncated CBOR")?;
            *at = end;
            Some(field.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
        }
        28..=30 => return Err(format!("malformed CBOR: reserved head {initial:#04x}")),
        _ => None,
    };
    Ok((major, info, argument))
}

fn skip(bytes: &[u8], at: &mut usize, len: u64) -> Result<(), String> {
    let len = usize::try_from(len).map_err(|_| "truncated CBOR")?;
    *at = at
        .checked_add(len)
        .filter(|&end| end <= bytes.len())
        .ok_or("truncated CBOR")?;
    Ok(())
}

/// Whether the next byte is a "break" (0xff); consumes it if so.
fn at_break(bytes: &[u8], at: &mut usize) -> Result<bool, String> {
    match bytes.get(*at) {
        Some(0xff) => {
            *at += 1;
            Ok(true)
        }
        Some(_) => Ok(false),
        None => Err("truncated CBOR".into()),
    }
}

fn ocf_item(bytes: &[u8], at: &mut usize, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("CBOR nested deeper than {MAX_DEPTH}"));
    }
    let (major, info, argument) = read_head(bytes, at)?;
    match (major, argument) {
        (0 | 1, Some(_)) => Ok(()),
        (2 | 3, Some(len)) => skip(bytes, at, len),
        (2 | 3, None) => {
            // §3.2.3: chunks of the same major type, each of definite length.
            while !at_break(bytes, at)? {
                match read_head(bytes, at)? {
                    (m, _, Some(len)) if m == major => skip(bytes, at, len)?,
                    _ => {
                        return Err(
                            "malformed CBOR: bad chunk in an indefinite-length string".into()
                        )
                    }
                }
            }
            Ok(())
        }
        (4 | 5, Some(n)) => {
            let items = if major == 5 { n.saturating_mul(2) } else { n };
            for _ in 0..items {
                ocf_item(bytes, at, depth + 1)?;
            }
            Ok(())
        }
        (4 | 5, None) => {
            let mut items = 0u64;
            while !at_break(bytes, at)? {
                ocf_item(bytes, at, depth + 1)?;
                items += 1;
            }
            if major == 5 && items % 2 == 1 {
                return Err("malformed CBOR: a map key without a value".into());
            }
            Ok(())
        }
        (6, Some(tag)) => Err(format!(
            "CBOR tag {tag} is not allowed: OCF payloads carry no tags"
        )),
        // false, true, null; half, single and double floats.
        (7, _) if matches!(info, 20..=22 | 25..=27) => Ok(()),
        (7, None) => Err("malformed CBOR: \"break\" outside an indefinite-length item".into()),
        (7, _) => Err(format!(
            "CBOR simple value {} is not allowed: OCF payloads carry only false, true and null",
            argument.unwrap_or_default()
        )),
        _ => Err(format!(
            "malformed CBOR: major type {major} with an indefinite length"
        )),
    }
}

/// The width in bytes (2, 4 or 8) of every float in the CBOR data items of `bytes`, read from
/// the items' heads (RFC 8949 §3), not through a decoder: what a peer's parser will meet. For
/// tests and fuzz targets that check what goes on the wire.
pub fn float_widths(bytes: &[u8]) -> Result<Vec<usize>, String> {
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

    /// Found by the `payload` fuzz target: tag 9 around a bignum (tag 2) whose byte string has
    /// an indefinite length decoded to a tag, re-encoded, and decoded again as an integer.
    const FUZZ_TAGGED_BIGNUM: &[u8] = &[0xc9, 0xc2, 0x5f, 0x41, 0x41, 0x41, 0x01, 0xff];

    #[test]
    fn tags_and_other_items_ocf_never_carries_are_refused() {
        for (bytes, why) in [
            (FUZZ_TAGGED_BIGNUM, "tag 9"),
            (&[0xc2, 0x41, 0x01][..], "tag 2"),
            (&[0xa1, 0x61, 0x61, 0xc1, 0x00][..], "tag 1"),
            (&[0xf7][..], "simple value 23"),
            (&[0xf8, 0x20][..], "simple value 32"),
            (&[0xe0][..], "simple value 0"),
            (&[0x1c][..], "reserved"),
            (&[0xff][..], "break"),
            (&[0x1f][..], "indefinite"),
            (&[0x5f, 0x61, 0x61, 0xff][..], "chunk"),
            (&[0xbf, 0x61, 0x61, 0xff][..], "without a value"),
            (&[0x9f, 0x01][..], "truncated"),
            (&[0xa1, 0x61][..], "truncated"),
        ] {
            let e = check_ocf_item(bytes).unwrap_err();
            assert!(e.contains(why), "{bytes:02x?}: {e}");
        }
        let deep = [vec![0x81; MAX_DEPTH + 1], vec![0x00]].concat();
        assert!(check_ocf_item(&deep).unwrap_err().contains("nested"));
    }

    #[test]
    fn everything_ocf_payloads_carry_is_accepted_with_its_length() {
        for bytes in [
            &[0xa0][..],
            &[0xf4],
            &[0xf5],
            &[0xf6],
            &[0xf9, 0x3c, 0x00],
            &[0xfa, 0x3f, 0x80, 0x00, 0x00],
            &[0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0],
            &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            // iotivity-lite's indefinite-length map {"a": [1, h'01']} and a chunked string.
            &[0xbf, 0x61, 0x61, 0x9f, 0x01, 0x41, 0x01, 0xff, 0xff],
            &[0x7f, 0x61, 0x61, 0x62, 0x62, 0x63, 0xff],
        ] {
            assert_eq!(check_ocf_item(bytes), Ok(bytes.len()), "{bytes:02x?}");
        }
        // Only the first item is measured; what follows is the caller's business.
        assert_eq!(check_ocf_item(&[0x01, 0x02]), Ok(1));
        let nested = [vec![0x81; MAX_DEPTH], vec![0x00]].concat();
        assert_eq!(check_ocf_item(&nested), Ok(nested.len()));
    }

    proptest! {
        /// What passes the check and decodes survives a round trip through the encoder.
        #[test]
        fn accepted_items_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(len) = check_ocf_item(&bytes) {
                if let Ok(v) = ciborium::from_reader::<Value, _>(&bytes[..len]) {
                    let again = value_to_vec(&v).unwrap();
                    prop_assert!(check_ocf_item(&again).is_ok());
                    let back: Value = ciborium::from_reader(&again[..]).unwrap();
                    prop_assert_eq!(format!("{back:?}"), format!("{v:?}"));
                }
            }
        }
    }

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
