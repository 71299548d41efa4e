//! Small helpers for walking the bootstrap JSON while keeping the path of every field, so
//! each error names exactly where it is.

use serde_json::{Map, Value};

use super::error::{BootstrapError, FieldErrorKind};

/// The path used for the document itself.
pub(super) const ROOT: &str = "(root)";

/// The path of `key` inside the object at `parent`: `parent.key`, or `parent["key"]` when
/// the key is not a plain identifier (authority names hold dots, for example).
pub(super) fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !key.as_bytes()[0].is_ascii_digit();
    match (parent.is_empty() || parent == ROOT, plain) {
        (true, true) => key.to_owned(),
        (true, false) => format!("[{key:?}]"),
        (false, true) => format!("{parent}.{key}"),
        (false, false) => format!("{parent}[{key:?}]"),
    }
}

/// The path of element `i` of the array at `parent`.
pub(super) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A short rendering of a JSON value for an error message: scalars as written, strings
/// quoted (and shortened), containers by kind.
pub(super) fn describe(value: &Value) -> String {
    const MAX: usize = 48;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > MAX => {
            let short: String = s.chars().take(MAX).collect();
            format!("{short:?}...")
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

pub(super) fn wrong_type(path: &str, expected: &'static str, got: &Value) -> BootstrapError {
    BootstrapError::field(
        path,
        FieldErrorKind::WrongType {
            expected,
            got: describe(got),
        },
    )
}

/// A field of an object, with `null` treated as absent (as gRPC's own parsers do).
pub(super) fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

pub(super) fn as_object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a Map<String, Value>, BootstrapError> {
    value
        .as_object()
        .ok_or_else(|| wrong_type(path, "an object", value))
}

pub(super) fn as_array<'a>(value: &'a Value, path: &str) -> Result<&'a [Value], BootstrapError> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| wrong_type(path, "an array", value))
}

pub(super) fn as_str<'a>(value: &'a Value, path: &str) -> Result<&'a str, BootstrapError> {
    value
        .as_str()
        .ok_or_else(|| wrong_type(path, "a string", value))
}

/// An optional string field of the object at `path`.
pub(super) fn opt_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, BootstrapError> {
    get(map, key)
        .map(|v| as_str(v, &child(path, key)))
        .transpose()
}

/// A required string field of the object at `path`.
pub(super) fn req_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, BootstrapError> {
    opt_str(map, key, path)?
        .ok_or_else(|| BootstrapError::field(child(path, key), FieldErrorKind::Missing))
}

/// An optional list of strings of the object at `path`.
pub(super) fn opt_str_list(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Vec<String>, BootstrapError> {
    let Some(value) = get(map, key) else {
        return Ok(Vec::new());
    };
    let path = child(path, key);
    as_array(value, &path)?
        .iter()
        .enumerate()
        .map(|(i, v)| as_str(v, &index(&path, i)).map(str::to_owned))
        .collect()
}

/// Records the keys of the object at `path` that are not in `known`.
pub(super) fn record_unknown(
    map: &Map<String, Value>,
    known: &[&str],
    path: &str,
    unknown: &mut Vec<String>,
) {
    unknown.extend(
        map.keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| child(path, k)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_use_dots_for_identifiers_and_brackets_otherwise() {
        assert_eq!(child("", "xds_servers"), "xds_servers");
        assert_eq!(child(ROOT, "node"), "node");
        assert_eq!(index("xds_servers", 1), "xds_servers[1]");
        assert_eq!(
            child("xds_servers[1]", "server_uri"),
            "xds_servers[1].server_uri"
        );
        assert_eq!(
            child("authorities", "xds.example.com"),
            "authorities[\"xds.example.com\"]"
        );
        assert_eq!(child("authorities", ""), "authorities[\"\"]");
        assert_eq!(child("m", "0abc"), "m[\"0abc\"]");
        assert_eq!(child("", "a b"), "[\"a b\"]");
    }

    #[test]
    fn describe_is_short() {
        assert_eq!(describe(&json!(null)), "null");
        assert_eq!(describe(&json!(42)), "42");
        assert_eq!(describe(&json!(1.5)), "1.5");
        assert_eq!(describe(&json!(true)), "true");
        assert_eq!(describe(&json!("x")), "\"x\"");
        assert_eq!(describe(&json!([1])), "an array");
        assert_eq!(describe(&json!({"a": 1})), "an object");
        let long = "y".repeat(100);
        let d = describe(&json!(long));
        assert!(d.ends_with("..."), "{d}");
        assert!(d.len() < 60, "{d}");
    }

    #[test]
    fn null_counts_as_absent() {
        let v = json!({"a": null, "b": "x", "c": 3});
        let m = v.as_object().unwrap();
        assert_eq!(opt_str(m, "a", "p").unwrap(), None);
        assert_eq!(opt_str(m, "b", "p").unwrap(), Some("x"));
        let err = req_str(m, "a", "p").unwrap_err();
        assert_eq!(err.to_string(), "p.a: required field is missing");
        let err = opt_str(m, "c", "p").unwrap_err();
        assert_eq!(err.to_string(), "p.c: expected a string, got 3");
    }

    #[test]
    fn string_lists_name_the_bad_element() {
        let v = json!({"l": ["a", 7], "m": "x"});
        let m = v.as_object().unwrap();
        let err = opt_str_list(m, "l", "s").unwrap_err();
        assert_eq!(err.to_string(), "s.l[1]: expected a string, got 7");
        let err = opt_str_list(m, "m", "s").unwrap_err();
        assert_eq!(err.to_string(), "s.m: expected an array, got \"x\"");
        assert!(opt_str_list(m, "absent", "s").unwrap().is_empty());
    }
}
