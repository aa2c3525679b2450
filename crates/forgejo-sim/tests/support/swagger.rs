//! A small Swagger 2.0 response validator, for the subset Forgejo's `v1_json.tmpl` uses on the
//! endpoints the simulator serves: `$ref` to `#/definitions/..` and `#/responses/..`, `type`,
//! `properties`, `required`, `items`, `enum`, `additionalProperties`, and the formats `int64`,
//! `int32`, `uint64` and `date-time`.
//!
//! Swagger 2.0 cannot say "nullable", and Forgejo's file is generated from Go structs, where a
//! nil slice or nil pointer is written as `null`. The contract (which wins over swagger) names the
//! `null`s a client must expect; [`Policy`] carries them:
//! - `null_properties`: `Definition.property` pairs that may be `null` even in strict definitions
//!   (e.g. `ActionRunJob.needs`, `ActionRunner.labels`);
//! - a property that is a `$ref` to another definition may be `null` everywhere (a Go pointer);
//! - any property of a non-strict definition may be `null` (a Go nil slice or pointer, such as
//!   `ContentsResponse.target`, a `*string`).
//!
//! A few definitions are marshalled by hand and carry more than swagger shows
//! (`Policy::extra_properties`, e.g. `User.username`).
//!
//! Go writes every struct field unless its tag says `omitempty` (which the swagger files do not
//! show; `Policy::omitempty_properties` names those fields), and the definitions are the Go
//! structs, so a property the definition lacks is an error everywhere, and a property the body
//! lacks is an error in the `strict_definitions` (the shapes the contract lists field by field,
//! and those checked against Forgejo's source) and a warning elsewhere.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// What the validator allows beyond plain Swagger 2.0 (see the module comment).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub null_properties: BTreeSet<String>,
    pub strict_definitions: BTreeSet<String>,
    /// `Definition.property` pairs the real server writes although the definition lacks them
    /// (e.g. `User.username`, added by a custom `MarshalJSON` that swagger does not see).
    pub extra_properties: BTreeSet<String>,
    /// `Definition.property` pairs whose Go field is tagged `omitempty`: the server leaves them
    /// out when empty, so their absence is no finding even in a strict definition.
    pub omitempty_properties: BTreeSet<String>,
}

impl Policy {
    pub fn new(null_properties: &[&str], strict_definitions: &[&str]) -> Policy {
        Policy {
            null_properties: null_properties.iter().map(|s| s.to_string()).collect(),
            strict_definitions: strict_definitions.iter().map(|s| s.to_string()).collect(),
            extra_properties: BTreeSet::new(),
            omitempty_properties: BTreeSet::new(),
        }
    }

    /// Adds `Definition.property` pairs the server may write beyond the definition.
    pub fn with_extra_properties(mut self, extra: &[&str]) -> Policy {
        self.extra_properties
            .extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Adds `Definition.property` pairs the server omits when empty (Go `omitempty`).
    pub fn with_omitempty_properties(mut self, omitempty: &[&str]) -> Policy {
        self.omitempty_properties
            .extend(omitempty.iter().map(|s| s.to_string()));
        self
    }
}

/// The findings of one validation: errors fail a test, warnings are printed.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Findings {
    pub fn extend(&mut self, other: Findings) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }
}

/// What a swagger operation documents for one status code.
#[derive(Debug, Clone)]
pub enum Documented {
    /// A response with a body schema (already `$ref`-resolved to the response object).
    Body {
        schema: Value,
        headers: Value,
        response_name: Option<String>,
    },
    /// A response without a schema (e.g. `204`, `#/responses/empty`).
    NoBody { headers: Value },
}

/// How a status code was found for an operation.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub documented: Documented,
    /// False when the operation does not list the status and a generic response was used.
    pub listed_by_operation: bool,
}

pub struct Swagger {
    doc: Value,
}

impl Swagger {
    pub fn load(path: &Path) -> Result<Swagger, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if doc["swagger"] != "2.0" {
            return Err(format!("{}: not a Swagger 2.0 document", path.display()));
        }
        Ok(Swagger { doc })
    }

    /// Whether `method template` (e.g. `get`, `/repos/{owner}/{repo}`) exists in the file.
    pub fn has_operation(&self, method: &str, template: &str) -> bool {
        self.doc["paths"][template][method.to_ascii_lowercase()].is_object()
    }

    /// The documented response of `method template` for `status`. An operation that does not
    /// list the status falls back to Forgejo's generic response for it (`unauthorized`,
    /// `forbidden`, `notFound`, `validationError`, `error`), the way the server's shared
    /// middleware answers; `None` when neither exists.
    pub fn response(&self, method: &str, template: &str, status: u16) -> Option<Lookup> {
        let operation = &self.doc["paths"][template][method.to_ascii_lowercase()];
        let listed = &operation["responses"][status.to_string()];
        if listed.is_object() {
            return Some(Lookup {
                documented: self.documented(listed),
                listed_by_operation: true,
            });
        }
        let generic = match status {
            400 | 500 => "error",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "notFound",
            409 => "conflict",
            422 => "validationError",
            _ => return None,
        };
        let response = &self.doc["responses"][generic];
        response.is_object().then(|| Lookup {
            documented: self.documented(&json_ref(&format!("#/responses/{generic}"))),
            listed_by_operation: false,
        })
    }

    fn documented(&self, response: &Value) -> Documented {
        let (resolved, name) = match response["$ref"].as_str() {
            Some(reference) => (self.resolve(reference).clone(), ref_name(reference)),
            None => (response.clone(), None),
        };
        let headers = resolved["headers"].clone();
        match resolved.get("schema") {
            Some(schema) => Documented::Body {
                schema: schema.clone(),
                headers,
                response_name: name,
            },
            None => Documented::NoBody { headers },
        }
    }

    fn resolve(&self, reference: &str) -> &Value {
        let mut node = &self.doc;
        for part in reference.trim_start_matches("#/").split('/') {
            node = &node[part];
        }
        node
    }

    /// Validates `body` against `schema`; `at` names the place for messages (e.g. `$`).
    pub fn validate(&self, schema: &Value, body: &Value, policy: &Policy, at: &str) -> Findings {
        let mut findings = Findings::default();
        self.check(schema, body, policy, at, None, &mut findings);
        findings
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        policy: &Policy,
        at: &str,
        definition: Option<&str>,
        out: &mut Findings,
    ) {
        if let Some(reference) = schema["$ref"].as_str() {
            let target = self.resolve(reference);
            if target.is_null() {
                out.errors.push(format!(
                    "{at}: dangling $ref {reference} in the swagger file"
                ));
                return;
            }
            let name = ref_name(reference);
            self.check(target, value, policy, at, name.as_deref(), out);
            return;
        }
        let declared = schema["type"].as_str().or_else(|| {
            (schema.get("properties").is_some() || schema.get("additionalProperties").is_some())
                .then_some("object")
        });
        let Some(declared) = declared else {
            return; // no constraint (e.g. `{}` or an untyped `interface{}` field)
        };
        if value.is_null() {
            out.errors
                .push(format!("{at}: null where swagger says {declared}"));
            return;
        }
        match declared {
            "object" => self.check_object(schema, value, policy, at, definition, out),
            "array" => match value.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check(
                            &schema["items"],
                            item,
                            policy,
                            &format!("{at}[{i}]"),
                            None,
                            out,
                        );
                    }
                }
                None => out
                    .errors
                    .push(format!("{at}: expected an array, got {}", kind(value))),
            },
            "string" => match value.as_str() {
                Some(text) => check_string(schema, text, at, out),
                None => out
                    .errors
                    .push(format!("{at}: expected a string, got {}", kind(value))),
            },
            "integer" => check_integer(schema, value, at, out),
            "number" => {
                if !value.is_number() {
                    out.errors
                        .push(format!("{at}: expected a number, got {}", kind(value)));
                }
            }
            "boolean" => {
                if !value.is_boolean() {
                    out.errors
                        .push(format!("{at}: expected a boolean, got {}", kind(value)));
                }
            }
            other => out
                .warnings
                .push(format!("{at}: type {other:?} not checked")),
        }
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(value) {
                out.errors
                    .push(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
    }

    fn check_object(
        &self,
        schema: &Value,
        value: &Value,
        policy: &Policy,
        at: &str,
        definition: Option<&str>,
        out: &mut Findings,
    ) {
        let Some(object) = value.as_object() else {
            out.errors
                .push(format!("{at}: expected an object, got {}", kind(value)));
            return;
        };
        let strict = definition.is_some_and(|d| policy.strict_definitions.contains(d));
        let label = definition.unwrap_or("object");
        if let Some(required) = schema["required"].as_array() {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    out.errors
                        .push(format!("{at}: required property {label}.{name} is missing"));
                }
            }
        }
        let properties = schema["properties"].as_object();
        if let Some(properties) = properties {
            for (name, property) in properties {
                let place = format!("{at}.{name}");
                match object.get(name) {
                    None if policy
                        .omitempty_properties
                        .contains(&format!("{label}.{name}")) => {}
                    None if strict => out
                        .errors
                        .push(format!("{place}: {label}.{name} is missing")),
                    None => out
                        .warnings
                        .push(format!("{place}: {label}.{name} is missing")),
                    Some(Value::Null) if self.may_be_null(property, policy, definition, name) => {}
                    Some(field) => self.check(property, field, policy, &place, None, out),
                }
            }
        }
        let additional = schema.get("additionalProperties");
        for (name, field) in object {
            if properties.is_some_and(|p| p.contains_key(name))
                || policy.extra_properties.contains(&format!("{label}.{name}"))
            {
                continue;
            }
            match additional {
                Some(Value::Bool(true)) => {}
                Some(extra) if extra.is_object() => {
                    self.check(extra, field, policy, &format!("{at}.{name}"), None, out)
                }
                _ => out.errors.push(format!(
                    "{at}.{name}: property {label}.{name} is not in the swagger definition"
                )),
            }
        }
    }

    fn may_be_null(
        &self,
        property: &Value,
        policy: &Policy,
        definition: Option<&str>,
        name: &str,
    ) -> bool {
        let definition = definition.unwrap_or("");
        if policy
            .null_properties
            .contains(&format!("{definition}.{name}"))
        {
            return true;
        }
        if property.get("$ref").is_some() {
            return true; // a Go pointer to a struct
        }
        // Outside the strict shapes any field may be a Go pointer or slice (e.g.
        // `ContentsResponse.target` is a `*string`), which swagger cannot express.
        !policy.strict_definitions.contains(definition)
    }
}

fn json_ref(reference: &str) -> Value {
    serde_json::json!({ "$ref": reference })
}

fn ref_name(reference: &str) -> Option<String> {
    reference.rsplit('/').next().map(str::to_owned)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_integer(schema: &Value, value: &Value, at: &str, out: &mut Findings) {
    let in_range = match schema["format"].as_str() {
        Some("int32") => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        Some("uint64") => value.as_u64().is_some(),
        // int64, or no format: Go's int / int64.
        _ => value.as_i64().is_some(),
    };
    if !in_range {
        let format = schema["format"].as_str().unwrap_or("integer");
        out.errors
            .push(format!("{at}: {value} is not a valid {format}"));
    }
}

fn check_string(schema: &Value, text: &str, at: &str, out: &mut Findings) {
    if schema["format"] == "date-time" && !is_rfc3339(text) {
        out.errors
            .push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, what Go's `time.Time` marshals to.
pub fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| bytes.get(i) == Some(&c);
    if !(digits(0..4) && at(4, b'-') && digits(5..7) && at(7, b'-') && digits(8..10)) {
        return false;
    }
    if !(matches!(bytes.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match bytes.get(i) {
        Some(b'Z' | b'z') => i + 1 == bytes.len(),
        Some(b'+' | b'-') => {
            digits(i + 1..i + 3) && at(i + 3, b':') && digits(i + 4..i + 6) && i + 6 == bytes.len()
        }
        _ => false,
    }
}

/// Checks the response headers a swagger response documents (`X-Total-Count` as an integer,
/// `Link` as a string): each must be present and of its type.
pub fn check_headers(
    documented: &Value,
    headers: &reqwest::header::HeaderMap,
    at: &str,
) -> Findings {
    let mut findings = Findings::default();
    let Some(declared) = documented.as_object() else {
        return findings;
    };
    for (name, spec) in declared {
        match headers.get(name.as_str()).map(|v| v.to_str()) {
            None => findings
                .warnings
                .push(format!("documented header {name} is absent on {at}")),
            Some(Err(_)) => findings
                .errors
                .push(format!("{at}: header {name} is not text")),
            Some(Ok(text)) => {
                if spec["type"] == "integer" && text.trim().parse::<i64>().is_err() {
                    findings
                        .errors
                        .push(format!("{at}: header {name}: {text:?} is not an integer"));
                }
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn swagger() -> Swagger {
        Swagger {
            doc: json!({
                "swagger": "2.0",
                "paths": {"/x": {"get": {"responses": {"200": {"$ref": "#/responses/Things"}}}}},
                "responses": {
                    "Things": {"schema": {"type": "array", "items": {"$ref": "#/definitions/Thing"}}},
                    "notFound": {"schema": {"$ref": "#/definitions/APINotFound"}}
                },
                "definitions": {
                    "Thing": {"type": "object", "properties": {
                        "id": {"type": "integer", "format": "int64"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "when": {"type": "string", "format": "date-time"},
                        "state": {"type": "string", "enum": ["a", "b"]}
                    }},
                    "APINotFound": {"type": "object", "properties": {"message": {"type": "string"}}}
                }
            }),
        }
    }

    fn body_schema(lookup: Option<Lookup>) -> Value {
        match lookup.expect("documented").documented {
            Documented::Body { schema, .. } => schema,
            Documented::NoBody { .. } => panic!("expected a body"),
        }
    }

    #[test]
    fn accepts_a_conforming_body_and_rejects_each_kind_of_mismatch() {
        let s = swagger();
        let schema = body_schema(s.response("GET", "/x", 200));
        let strict = Policy::new(&[], &["Thing"]);
        let good =
            json!([{"id": 1, "tags": ["x"], "when": "2026-01-02T03:04:05.6Z", "state": "a"}]);
        assert!(s.validate(&schema, &good, &strict, "$").errors.is_empty());

        let cases = [
            json!([{"id": "1", "tags": [], "when": "2026-01-02T03:04:05Z", "state": "a"}]),
            json!([{"id": 1.5, "tags": [], "when": "2026-01-02T03:04:05Z", "state": "a"}]),
            json!([{"id": 1, "tags": null, "when": "2026-01-02T03:04:05Z", "state": "a"}]),
            json!([{"id": 1, "tags": [], "when": "yesterday", "state": "a"}]),
            json!([{"id": 1, "tags": [], "when": "2026-01-02T03:04:05Z", "state": "c"}]),
            json!([{"id": 1, "tags": [], "when": "2026-01-02T03:04:05Z", "state": "a", "x": 1}]),
            json!([{"id": 1, "tags": [], "when": "2026-01-02T03:04:05Z"}]),
            json!({"id": 1}),
            json!(null),
        ];
        for case in cases {
            assert!(
                !s.validate(&schema, &case, &strict, "$").errors.is_empty(),
                "{case}"
            );
        }
    }

    #[test]
    fn null_policy_and_lenient_definitions() {
        let s = swagger();
        let schema = body_schema(s.response("GET", "/x", 200));
        let body = json!([{"id": 1, "tags": null}]);
        let with_null = Policy::new(&["Thing.tags"], &["Thing"]);
        let findings = s.validate(&schema, &body, &with_null, "$");
        assert_eq!(
            findings.errors.len(),
            2,
            "when and state missing: {findings:?}"
        );
        let extra = json!([{"id": 1, "tags": [], "when": "2026-01-02T03:04:05Z", "state": "a", "alias": "x"}]);
        let allowing = Policy::new(&[], &[]).with_extra_properties(&["Thing.alias"]);
        assert!(s
            .validate(&schema, &extra, &allowing, "$")
            .errors
            .is_empty());
        assert!(!s
            .validate(&schema, &extra, &with_null, "$")
            .errors
            .is_empty());
        let lenient = Policy::new(&[], &[]);
        let findings = s.validate(&schema, &body, &lenient, "$");
        assert!(findings.errors.is_empty(), "{findings:?}");
        assert_eq!(findings.warnings.len(), 2);
        let typed_null =
            json!([{"id": null, "tags": [], "when": "2026-01-02T03:04:05Z", "state": "a"}]);
        assert!(s
            .validate(&schema, &typed_null, &lenient, "$")
            .errors
            .is_empty());
        assert!(!s
            .validate(&schema, &typed_null, &with_null, "$")
            .errors
            .is_empty());
    }

    #[test]
    fn omitempty_properties_may_be_absent_even_in_strict_definitions() {
        let s = swagger();
        let schema = body_schema(s.response("GET", "/x", 200));
        let without_state = json!([{"id": 1, "tags": [], "when": "2026-01-02T03:04:05Z"}]);
        let strict = Policy::new(&[], &["Thing"]);
        assert_eq!(
            s.validate(&schema, &without_state, &strict, "$")
                .errors
                .len(),
            1
        );
        let omitting = strict.clone().with_omitempty_properties(&["Thing.state"]);
        let findings = s.validate(&schema, &without_state, &omitting, "$");
        assert!(findings.errors.is_empty(), "{findings:?}");
        assert!(findings.warnings.is_empty(), "{findings:?}");
        let without_when = json!([{"id": 1, "tags": [], "state": "a"}]);
        assert_eq!(
            s.validate(&schema, &without_when, &omitting, "$")
                .errors
                .len(),
            1,
            "only the named property may be absent"
        );
        let wrong_type = json!([{"id": 1, "tags": [], "when": "2026-01-02T03:04:05Z", "state": 3}]);
        assert!(
            !s.validate(&schema, &wrong_type, &omitting, "$")
                .errors
                .is_empty(),
            "a present omitempty property is still checked"
        );
    }

    #[test]
    fn unlisted_statuses_fall_back_to_generic_responses() {
        let s = swagger();
        let lookup = s.response("GET", "/x", 404).expect("generic notFound");
        assert!(!lookup.listed_by_operation);
        assert!(s.response("GET", "/x", 418).is_none());
    }

    #[test]
    fn rfc3339_dates() {
        for good in [
            "2026-01-02T03:04:05Z",
            "2026-01-02T03:04:05.123+02:00",
            "2026-01-02t03:04:05z",
        ] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "2026-01-02",
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05.Z",
            "02/01/2026",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
