//! Helpers to build and check OCF property maps ([`Props`]).

use ocf::resource::{Props, ResourceError, Value};

/// Properties every resource has through the baseline interface; a client may not write them.
const COMMON_READ_ONLY: &[&str] = &["rt", "if", "n", "id"];

/// A CBOR number from an `f64`.
pub fn number(v: f64) -> Value {
    Value::Float(v)
}

/// A CBOR integer.
pub fn integer(v: i64) -> Value {
    Value::Integer(v.into())
}

/// A CBOR text string.
pub fn text(v: &str) -> Value {
    Value::Text(v.to_owned())
}

/// `v` rounded to `decimals` decimal places (so `21.500000476837158` becomes `21.5`).
pub fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

/// Builds a [`Props`] map from `(key, value)` pairs.
pub fn props<const N: usize>(pairs: [(&str, Value); N]) -> Props {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The single writable property `key` of an update body, checked: any other key (unknown, or
/// one of the read-only `read_only` keys or the common `rt`/`if`/`n`/`id`) is refused with a
/// [`ResourceError::BadRequest`] naming it. Returns `None` for an empty body.
pub fn single_writable<'a>(
    body: &'a Props,
    key: &str,
    read_only: &[&str],
) -> Result<Option<&'a Value>, ResourceError> {
    for k in body.keys() {
        if k == key {
            continue;
        }
        if read_only.contains(&k.as_str()) || COMMON_READ_ONLY.contains(&k.as_str()) {
            return Err(ResourceError::BadRequest(format!(
                "property \"{k}\" is read-only"
            )));
        }
        return Err(ResourceError::BadRequest(format!(
            "unknown property \"{k}\" (this resource accepts only \"{key}\")"
        )));
    }
    Ok(body.get(key))
}

/// A short description of a value's CBOR type for error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "an integer",
        Value::Bytes(_) => "a byte string",
        Value::Float(_) => "a number",
        Value::Text(_) => "a text string",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Tag(_, _) => "a tagged value",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "an unsupported value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_writable_refuses_other_keys() {
        let body = props([("value", Value::Bool(true)), ("rt", text("x"))]);
        let err = single_writable(&body, "value", &[]).unwrap_err();
        assert_eq!(
            err,
            ResourceError::BadRequest("property \"rt\" is read-only".into())
        );
        let body = props([("valu", Value::Bool(true))]);
        let err = single_writable(&body, "value", &[]).unwrap_err();
        assert!(
            matches!(err, ResourceError::BadRequest(m) if m.contains("unknown property \"valu\""))
        );
        let body = Props::new();
        assert_eq!(single_writable(&body, "value", &[]), Ok(None));
    }

    #[test]
    fn rounding() {
        assert_eq!(round_to(21.500000476837158, 2), 21.5);
        assert_eq!(round_to(-0.0625, 4), -0.0625);
    }
}
