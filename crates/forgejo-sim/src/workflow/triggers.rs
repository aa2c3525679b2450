//! The `on:` section, with the acceptance rules of Forgejo's `jobparser.ParseRawOn`
//! (forgejo/runner `act/jobparser/model.go`): a string, a list of strings, or a mapping whose
//! values are null, a mapping of filters, or (for `schedule` only) a list of `{cron, timezone}`.

use serde_norway::Value;

use super::value::{key_string, scalar_string, untagged};

/// The triggers the simulator acts on; every event name is kept in `events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triggers {
    pub push: bool,
    /// Cron strings of `on.schedule[*].cron`, in file order.
    pub schedules: Vec<String>,
    pub workflow_dispatch: bool,
    /// Every event name of `on`, in file order (`pull_request`, `workflow_call`, ...).
    pub events: Vec<String>,
}

/// Parses `on`; the error text says what is wrong (the caller adds the file path).
pub fn parse_triggers(on: Option<&Value>) -> Result<Triggers, String> {
    let Some(on) = on.map(untagged) else {
        return Err("the workflow has no `on:` section".to_string());
    };
    let mut triggers = Triggers::default();
    match on {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            triggers.events.push(scalar_string(on).unwrap_or_default());
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                match untagged(item) {
                    Value::String(s) => triggers.events.push(s.clone()),
                    _ => return Err(format!("`on[{i}]` must be an event name (a string)")),
                }
            }
        }
        Value::Mapping(map) => {
            for (key, value) in map {
                let event = key_string(key).ok_or("`on:` has a key that is not a string")?;
                check_event_value(&event, untagged(value), &mut triggers.schedules)?;
                triggers.events.push(event);
            }
        }
        Value::Null | Value::Tagged(_) => return Err("`on:` is empty".to_string()),
    }
    triggers.push = triggers.events.iter().any(|e| e == "push");
    triggers.workflow_dispatch = triggers.events.iter().any(|e| e == "workflow_dispatch");
    Ok(triggers)
}

/// Validates the value of one event of an `on:` mapping; collects cron strings of `schedule`.
fn check_event_value(event: &str, value: &Value, crons: &mut Vec<String>) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        Value::Mapping(filters) => {
            for (key, filter) in filters {
                let name = key_string(key).unwrap_or_default();
                match untagged(filter) {
                    Value::String(_) => {}
                    Value::Sequence(items) => {
                        if let Some(i) = items
                            .iter()
                            .position(|v| !matches!(untagged(v), Value::String(_)))
                        {
                            return Err(format!("`on.{event}.{name}[{i}]` must be a string"));
                        }
                    }
                    Value::Mapping(_) => check_nested_key(event, &name)?,
                    _ => {
                        return Err(format!(
                            "`on.{event}.{name}` must be a string, a list of strings or a mapping"
                        ))
                    }
                }
            }
            Ok(())
        }
        Value::Sequence(entries) => {
            if event != "schedule" {
                return Err(format!(
                    "`on.{event}` is a list; only `schedule` may be a list"
                ));
            }
            for (i, entry) in entries.iter().enumerate() {
                let Value::Mapping(fields) = untagged(entry) else {
                    return Err(format!(
                        "`on.schedule[{i}]` must be a mapping with a `cron` key"
                    ));
                };
                for (k, v) in fields {
                    let field = key_string(k).unwrap_or_default();
                    if !matches!(field.to_ascii_lowercase().as_str(), "cron" | "timezone") {
                        return Err(format!("`on.schedule[{i}]` has unexpected key {field:?}; only `cron` and `timezone` are allowed"));
                    }
                    let Value::String(text) = untagged(v) else {
                        return Err(format!("`on.schedule[{i}].{field}` must be a string"));
                    };
                    if field == "cron" {
                        crons.push(text.clone());
                    }
                }
            }
            Ok(())
        }
        _ => Err(format!(
            "`on.{event}` must be empty, a mapping or (for schedule) a list"
        )),
    }
}

/// Only `workflow_dispatch.inputs` and `workflow_call.{inputs,outputs}` may hold a mapping.
fn check_nested_key(event: &str, key: &str) -> Result<(), String> {
    match (event, key) {
        ("workflow_dispatch", "inputs") | ("workflow_call", "inputs" | "outputs") => Ok(()),
        _ => Err(format!("unexpected key `on.{event}.{key}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Triggers, String> {
        let v: Value = serde_norway::from_str(text).unwrap();
        parse_triggers(Some(&v))
    }

    #[test]
    fn string_list_and_mapping_forms() {
        assert!(parse("push").unwrap().push);
        let t = parse("[push, workflow_dispatch]").unwrap();
        assert!(t.push && t.workflow_dispatch);
        let t =
            parse("{schedule: [{cron: '*/5 * * * *'}, {cron: '@daily'}], pull_request: }").unwrap();
        assert!(!t.push);
        assert_eq!(t.schedules, vec!["*/5 * * * *", "@daily"]);
        assert_eq!(t.events, vec!["schedule", "pull_request"]);
    }

    #[test]
    fn rejects_what_forgejo_rejects() {
        assert!(parse("[push, 3]").is_err());
        assert!(parse("{push: [main]}").is_err());
        assert!(parse("{schedule: [{cron: x, when: y}]}").is_err());
        assert!(parse("{push: {branches: {a: b}}}").is_err());
        assert!(parse_triggers(None).is_err());
    }
}
