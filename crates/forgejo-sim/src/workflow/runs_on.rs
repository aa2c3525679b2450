//! `jobs.<id>.runs-on` to a flat list of label names.
//!
//! Forgejo evaluates the whole `runs-on` node first (so `${{ matrix.x }}` or `${{ fromJSON(..) }}`
//! may yield a string or a list) and then flattens it with act's `FlattenRunsOnNode`
//! (forgejo/runner `act/model/workflow.go` at commit b93a918a, the same in project-mirrors/forgejo-runner
//! 0988a0cb; used by `act/jobparser/jobparser.go` Parse): a string is
//! one label, a list is its labels, and a mapping `{group, labels}` gives the `labels` followed by
//! the `group` name as one more label when it is not empty. A node that does not decode (a list
//! holding a mapping, a `group` that is not a string) gives no labels at all, and such a job never
//! matches a runner.

use serde_norway::Value;

use super::expr::{evaluate_node, ExprContext, ExprError};
use super::value::{get, scalar_string, string_or_list, untagged};

/// Evaluates and flattens `runs-on`. The error, if any, is an expression that could not be
/// evaluated yet (Forgejo's "incomplete runs-on"); the labels are then computed from the partly
/// evaluated node, as Forgejo does.
pub fn evaluate_runs_on(
    raw: Option<&Value>,
    ctx: &ExprContext<'_>,
) -> (Vec<String>, Option<ExprError>) {
    let Some(raw) = raw else {
        return (Vec::new(), None);
    };
    match evaluate_node(raw, ctx) {
        Ok(evaluated) => (flatten(&evaluated), None),
        Err(err) => (flatten(raw), Some(err)),
    }
}

/// Flattens an evaluated `runs-on` node.
pub fn flatten(node: &Value) -> Vec<String> {
    match untagged(node) {
        Value::Mapping(_) => {
            let group = match get(node, "group") {
                None | Some(Value::Null) => String::new(),
                Some(g) => match scalar_string(g) {
                    Some(g) => g,
                    None => return Vec::new(),
                },
            };
            let mut labels = match get(node, "labels") {
                None => Vec::new(),
                Some(l) => string_or_list(l).unwrap_or_default(),
            };
            if !group.is_empty() {
                labels.push(group);
            }
            labels
        }
        Value::Null => Vec::new(),
        other => string_or_list(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Vec<String> {
        flatten(&serde_norway::from_str::<Value>(text).unwrap())
    }

    #[test]
    fn every_form_flattens_like_act() {
        assert_eq!(labels("docker"), vec!["docker"]);
        assert_eq!(labels("[a, b]"), vec!["a", "b"]);
        assert_eq!(
            labels("{group: big, labels: [a, b]}"),
            vec!["a", "b", "big"]
        );
        assert_eq!(labels("{group: big}"), vec!["big"]);
        assert_eq!(labels("{labels: solo}"), vec!["solo"]);
        assert!(labels("[a, {b: c}]").is_empty());
        assert!(labels("{group: [x], labels: a}").is_empty());
    }
}
