//! The task's `context` (a protobuf `Struct`) as JSON, and the lookups a job needs from it.

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// Converts a protobuf `Struct` to a JSON object.
pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// Integral numbers print without a fractional part (`run_id` 7, not 7.0).
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// A JSON value as the text an expression or environment variable shows.
pub fn display(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// `context[key]` as text, empty when absent.
pub fn text(context: &Value, key: &str) -> String {
    context.get(key).map(display).unwrap_or_default()
}

/// The first non-empty of several keys (Forgejo sends `forgejo_`- or `gitea_`-prefixed
/// variants depending on the version).
pub fn first_text(context: &Value, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| text(context, k))
        .find(|v| !v.is_empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{ListValue, Struct, Value as PValue};

    fn s(fields: Vec<(&str, Kind)>) -> Struct {
        Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), PValue { kind: Some(v) }))
                .collect(),
        }
    }

    #[test]
    fn converts_nested_values() {
        let inner = s(vec![("ref", Kind::StringValue("main".into()))]);
        let st = s(vec![
            ("run_id", Kind::NumberValue(7.0)),
            ("ratio", Kind::NumberValue(0.5)),
            ("event", Kind::StructValue(inner)),
            (
                "list",
                Kind::ListValue(ListValue {
                    values: vec![PValue {
                        kind: Some(Kind::BoolValue(true)),
                    }],
                }),
            ),
        ]);
        let json = struct_to_json(&st);
        assert_eq!(text(&json, "run_id"), "7");
        assert_eq!(text(&json, "ratio"), "0.5");
        assert_eq!(json["event"]["ref"], "main");
        assert_eq!(json["list"][0], true);
        assert_eq!(text(&json, "missing"), "");
        assert_eq!(first_text(&json, &["missing", "run_id"]), "7");
    }
}
