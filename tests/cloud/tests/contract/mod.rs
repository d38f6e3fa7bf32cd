//! A small JSON Schema validator, enough for `plgd-hub.schema.json`: `type` (one or a list),
//! `enum`, `properties`, `required`, `additionalProperties` (false or a schema), `items`,
//! `minProperties`/`maxProperties`, `$ref` to a JSON pointer in the same document, `format`
//! (`uuid`, `int64`, `byte`, `uri`) and `pattern` limited to a literal (`^` anchors it at the
//! start). A keyword it does not know makes the schema itself fail, so it never passes silently.

use serde_json::Value;

const SCHEMA: &str = include_str!("plgd-hub.schema.json");

const KNOWN: &[&str] = &[
    "$comment",
    "$ref",
    "type",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minProperties",
    "maxProperties",
    "format",
    "pattern",
    "description",
];

/// The schema document.
pub fn document() -> Value {
    serde_json::from_str(SCHEMA).expect("plgd-hub.schema.json is JSON")
}

/// Validates `value` against the definition `name`; every violation, with its JSON path.
pub fn check(name: &str, value: &Value) -> Vec<String> {
    let doc = document();
    let schema = doc["definitions"]
        .get(name)
        .unwrap_or_else(|| panic!("no definition {name}"));
    let mut errors = Vec::new();
    validate(&doc, schema, value, "$", &mut errors);
    errors
}

/// Panics with every violation unless `value` is a valid `name`.
pub fn assert_valid(name: &str, value: &Value) {
    let errors = check(name, value);
    assert!(
        errors.is_empty(),
        "not a plgd {name}:\n  {}\nin {value:#}",
        errors.join("\n  ")
    );
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs: {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference} points nowhere"))
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("unknown type {other}"),
    }
}

fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "uuid" => ocf::model::is_uuid(s),
        "int64" => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            !digits.is_empty()
                && digits.bytes().all(|c| c.is_ascii_digit())
                && s.parse::<i64>().is_ok()
        }
        "byte" => s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)),
        "uri" => s.contains("://"),
        other => panic!("unknown format {other}"),
    }
}

fn pattern_ok(pattern: &str, s: &str) -> bool {
    let (anchored, literal) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    assert!(
        !literal.chars().any(|c| "\\.*+?()[]{}|$".contains(c)),
        "pattern {pattern:?}: only literals are supported"
    );
    if anchored {
        s.starts_with(literal)
    } else {
        s.contains(literal)
    }
}

fn validate(doc: &Value, schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        panic!("{path}: a schema must be an object");
    };
    for k in schema.keys() {
        assert!(KNOWN.contains(&k.as_str()), "{path}: unknown keyword {k}");
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        validate(doc, resolve(doc, r), v, path, errors);
        return;
    }
    if let Some(t) = schema.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap_or("?"), v)),
            _ => panic!("{path}: bad type keyword"),
        };
        if !ok {
            errors.push(format!("{path}: expected {t}, found {v}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            errors.push(format!("{path}: {v} is not one of {options:?}"));
        }
    }
    if let Some(s) = v.as_str() {
        if let Some(f) = schema.get("format").and_then(Value::as_str) {
            if !format_ok(f, s) {
                errors.push(format!("{path}: {s:?} is not a {f}"));
            }
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            if !pattern_ok(p, s) {
                errors.push(format!("{path}: {s:?} does not match {p:?}"));
            }
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(doc, item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap_or_default();
            if !obj.contains_key(r) {
                errors.push(format!("{path}: missing {r}"));
            }
        }
        let count = obj.len() as u64;
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
            if count < min {
                errors.push(format!("{path}: {count} fields, fewer than {min}"));
            }
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
            if count > max {
                errors.push(format!("{path}: {count} fields, more than {max}"));
            }
        }
        for (k, child) in obj {
            let child_path = format!("{path}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, child, &child_path, errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{path}: unexpected field {k}"))
                    }
                    Some(s @ Value::Object(_)) => validate(doc, s, child, &child_path, errors),
                    _ => {}
                },
            }
        }
    }
}
