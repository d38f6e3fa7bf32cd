//! Small helpers shared by the security resources: strict reading of CBOR maps from the network
//! and UUID checks. Every function here refuses bad input with a message; none panics.

use ciborium::Value;

use crate::resource::{Props, ResourceError};

/// The nil UUID, shown in `devowneruuid` / `rowneruuid` while the device has no owner.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Longest key or value echoed back in a diagnostic (the rest is cut off).
const MAX_ECHO: usize = 48;

/// A piece of client input, shortened for a diagnostic.
pub(crate) fn echo(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_ECHO).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

pub(crate) fn bad(msg: impl Into<String>) -> ResourceError {
    ResourceError::BadRequest(msg.into())
}

pub use crate::model::is_uuid;

/// A UUID from the network, lower-cased; `what` names the property in the diagnostic.
pub(crate) fn parse_uuid(s: &str, what: &str) -> Result<String, ResourceError> {
    if is_uuid(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(bad(format!("`{what}` must be a UUID, got {:?}", echo(s))))
    }
}

/// The entries of a CBOR map whose keys are all text; `what` names it in the diagnostic.
pub(crate) fn text_map<'a>(
    v: &'a Value,
    what: &str,
) -> Result<Vec<(&'a str, &'a Value)>, ResourceError> {
    let Value::Map(entries) = v else {
        return Err(bad(format!("`{what}` must be a map")));
    };
    let mut out: Vec<(&str, &Value)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(bad(format!("`{what}` has a key that is not text")));
        };
        if out.iter().any(|(seen, _)| *seen == k.as_str()) {
            return Err(bad(format!("`{what}` has the key `{}` twice", echo(k))));
        }
        out.push((k.as_str(), v));
    }
    Ok(out)
}

/// Refuses a key that is not in `allowed`.
pub(crate) fn only_keys<'a, I>(keys: I, allowed: &[&str], what: &str) -> Result<(), ResourceError>
where
    I: IntoIterator<Item = &'a str>,
{
    for k in keys {
        if !allowed.contains(&k) {
            return Err(bad(format!("unknown property `{}` in {what}", echo(k))));
        }
    }
    Ok(())
}

pub(crate) fn as_text<'a>(v: &'a Value, what: &str) -> Result<&'a str, ResourceError> {
    match v {
        Value::Text(s) => Ok(s.as_str()),
        _ => Err(bad(format!("`{what}` must be a text string"))),
    }
}

/// An unsigned integer no larger than `max`.
pub(crate) fn as_uint(v: &Value, what: &str, max: u64) -> Result<u64, ResourceError> {
    let Value::Integer(i) = v else {
        return Err(bad(format!("`{what}` must be an integer")));
    };
    let n = i128::from(*i);
    if (0..=i128::from(max)).contains(&n) {
        // In range 0..=max, so it fits.
        Ok(n as u64)
    } else {
        Err(bad(format!("`{what}` must be between 0 and {max}")))
    }
}

pub(crate) fn as_array<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], ResourceError> {
    match v {
        Value::Array(items) => Ok(items.as_slice()),
        _ => Err(bad(format!("`{what}` must be an array"))),
    }
}

/// Refuses a top-level property outside `allowed` in an update body.
pub(crate) fn only_props(props: &Props, allowed: &[&str], what: &str) -> Result<(), ResourceError> {
    only_keys(props.keys().map(String::as_str), allowed, what)
}

pub(crate) fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

pub(crate) fn uint(n: u64) -> Value {
    Value::Integer(n.into())
}

/// A CBOR map with text keys, in the given order.
pub(crate) fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
}

/// Overwrites a byte buffer with zeros when a secret is dropped. Best effort: `black_box`
/// keeps the optimiser from dropping the write as dead, without `unsafe`.
pub(crate) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_checks() {
        assert!(is_uuid("12345678-9abc-DEF0-1234-56789abcdef0"));
        assert!(!is_uuid("12345678-9abc-def0-1234-56789abcdef"));
        assert!(!is_uuid("12345678x9abc-def0-1234-56789abcdef0"));
        assert!(!is_uuid("g2345678-9abc-def0-1234-56789abcdef0"));
        assert!(!is_uuid("*"));
        assert_eq!(
            parse_uuid("ABCDEF00-0000-0000-0000-000000000000", "x").unwrap(),
            "abcdef00-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn integers_out_of_range_are_refused() {
        assert_eq!(as_uint(&Value::Integer(5.into()), "n", 10).unwrap(), 5);
        assert!(as_uint(&Value::Integer((-1).into()), "n", 10).is_err());
        assert!(as_uint(&Value::Integer(11.into()), "n", 10).is_err());
        assert!(as_uint(&Value::Integer(u64::MAX.into()), "n", 10).is_err());
        assert!(as_uint(&Value::Text("5".into()), "n", 10).is_err());
    }

    #[test]
    fn echo_cuts_long_input() {
        let long = "x".repeat(100);
        assert!(echo(&long).chars().count() <= MAX_ECHO + 1);
        assert_eq!(echo("short"), "short");
    }
}
