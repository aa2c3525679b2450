//! Small helpers over `serde_norway::Value`: key lookup, scalar-to-string conversion as Go's
//! `yaml.v3` does it when decoding into a `string`, and Go's `fmt.Sprint` rendering that Forgejo
//! uses for the default display name of a matrix job.

use serde_norway::{Mapping, Value};

/// Strips YAML tags (`!custom value`), which Forgejo's decoder ignores for our purposes.
pub fn untagged(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untagged(&tagged.value),
        other => other,
    }
}

/// Looks up a string key in a mapping (tags on the mapping itself are ignored).
pub fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match untagged(value) {
        Value::Mapping(map) => map.get(key).map(untagged),
        _ => None,
    }
}

/// The mapping inside `value`, if it is one.
pub fn as_mapping(value: &Value) -> Option<&Mapping> {
    match untagged(value) {
        Value::Mapping(map) => Some(map),
        _ => None,
    }
}

/// A scalar as a string, the way Go's `yaml.v3` fills a `string` field from any scalar node.
/// `null` and non-scalars give `None`.
pub fn scalar_string(value: &Value) -> Option<String> {
    match untagged(value) {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A mapping key as a string (job ids, matrix dimensions, event names).
pub fn key_string(key: &Value) -> Option<String> {
    scalar_string(key)
}

/// A string or a list of strings (`needs`, labels), as act's `nodeAsStringSlice`: a list with
/// a non-scalar element is rejected as a whole (`None`), as the Go decoder fails on it.
pub fn string_or_list(value: &Value) -> Option<Vec<String>> {
    match untagged(value) {
        Value::Sequence(items) => items.iter().map(scalar_string).collect(),
        Value::Null => Some(Vec::new()),
        other => scalar_string(other).map(|s| vec![s]),
    }
}

/// Renders a value like Go's `fmt.Sprint` does for what `yaml.v3` decodes into `any`:
/// strings raw, lists `[a b]`, maps `map[k:v]` with sorted keys, null `<nil>`, floats in
/// `%v` (shortest `%g`) form. Forgejo uses this for `job (v1, v2)` matrix names.
pub fn go_sprint(value: &Value) -> String {
    match untagged(value) {
        Value::Null => "<nil>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            if n.is_f64() {
                n.as_f64().map(go_float).unwrap_or_else(|| n.to_string())
            } else {
                n.to_string()
            }
        }
        Value::Sequence(items) => {
            let parts: Vec<String> = items.iter().map(go_sprint).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Mapping(map) => {
            let mut parts: Vec<(String, String)> = map
                .iter()
                .map(|(k, v)| (go_sprint(k), go_sprint(v)))
                .collect();
            parts.sort();
            let joined: Vec<String> = parts.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("map[{}]", joined.join(" "))
        }
        Value::Tagged(_) => String::new(),
    }
}

/// Go's `%v` for a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`): shortest round-trip digits,
/// exponent form when the decimal exponent is below -4 or at least 6, e.g. `1e+06`, `3.1`, `1e-05`.
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "1.5e6", "-3.1e0".
    let sci = format!("{f:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return sci;
    };
    let (sign, digits_part) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = digits_part.chars().filter(|c| *c != '.').collect();
    if !(-4..6).contains(&exp) {
        let mut out = format!("{sign}{}", &digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exp_sign = if exp < 0 { '-' } else { '+' };
        out.push_str(&format!("e{exp_sign}{:02}", exp.abs()));
        return out;
    }
    // Plain decimal notation.
    let point = exp + 1; // position of the decimal point within `digits`
    let body = if point <= 0 {
        format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(point as usize - digits.len()))
    } else {
        let (int_part, frac) = digits.split_at(point as usize);
        format!("{int_part}.{frac}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_matches_go_percent_v() {
        assert_eq!(go_float(3.1), "3.1");
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(1_000_000.0), "1e+06");
        assert_eq!(go_float(123_456.0), "123456");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(-2.5), "-2.5");
        assert_eq!(go_float(1.5e7), "1.5e+07");
    }

    #[test]
    fn go_sprint_renders_maps_sorted_and_lists_spaced() {
        let v: Value = serde_norway::from_str("{name: redis, image: r:7}").unwrap();
        assert_eq!(go_sprint(&v), "map[image:r:7 name:redis]");
        let v: Value = serde_norway::from_str("[a, 1, null]").unwrap();
        assert_eq!(go_sprint(&v), "[a 1 <nil>]");
    }
}
