//! A deliberately small subset of GitHub/Forgejo expressions: `${{ path.to.value }}`
//! substitution, literals, `==` / `!=`, and the status functions of step `if:` conditions.
//! Anything else evaluates to an empty string (substitution) or to `success()` (conditions),
//! and is reported so the job log shows what the stand-in did not understand.

use serde_json::Value;

use super::context::display;

/// Result of substituting expressions in a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Substituted {
    pub text: String,
    /// Expressions that were not understood.
    pub unsupported: Vec<String>,
}

/// Replaces every `${{ expr }}` in `text` using `root` (`github`, `env`, `secrets`, `vars`,
/// `matrix`, `needs`, `steps`, `runner`, `job`).
pub fn substitute(text: &str, root: &Value) -> Substituted {
    let mut out = String::with_capacity(text.len());
    let mut unsupported = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let Some(len) = rest[start + 3..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let expr = rest[start + 3..start + 3 + len].trim();
        match evaluate(expr, root) {
            Some(v) => out.push_str(&display(&v)),
            None => unsupported.push(expr.to_string()),
        }
        rest = &rest[start + 3 + len + 2..];
    }
    out.push_str(rest);
    Substituted {
        text: out,
        unsupported,
    }
}

/// Job status seen by a step condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Success,
    Failure,
    Cancelled,
}

/// Whether a step with `if: condition` runs. Returns the decision and whether the condition
/// was fully understood.
pub fn should_run(condition: Option<&str>, status: JobStatus, root: &Value) -> (bool, bool) {
    let Some(raw) = condition.map(str::trim).filter(|c| !c.is_empty()) else {
        return (status == JobStatus::Success, true);
    };
    let expr = raw
        .strip_prefix("${{")
        .and_then(|e| e.strip_suffix("}}"))
        .unwrap_or(raw)
        .trim();
    match expr {
        "always()" => return (true, true),
        "success()" => return (status == JobStatus::Success, true),
        "failure()" => return (status == JobStatus::Failure, true),
        "cancelled()" => return (status == JobStatus::Cancelled, true),
        "!cancelled()" => return (status != JobStatus::Cancelled, true),
        _ => {}
    }
    // Without a status function, GitHub semantics prepend `success() &&`.
    if status != JobStatus::Success {
        return (false, true);
    }
    match evaluate(expr, root) {
        Some(v) => (truthy(&v), true),
        None => (true, false),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Evaluates one expression; `None` when it uses syntax outside the subset.
pub fn evaluate(expr: &str, root: &Value) -> Option<Value> {
    let expr = expr.trim();
    for (op, equal) in [("==", true), ("!=", false)] {
        if let Some((left, right)) = split_operator(expr, op) {
            let (l, r) = (evaluate(left, root)?, evaluate(right, root)?);
            let same = loose_text(&l) == loose_text(&r);
            return Some(Value::Bool(same == equal));
        }
    }
    if let Some(inner) = expr.strip_prefix('!') {
        return Some(Value::Bool(!truthy(&evaluate(inner, root)?)));
    }
    literal(expr).or_else(|| lookup(expr, root))
}

/// Splits on an operator outside quotes.
fn split_operator<'a>(expr: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut in_quote = false;
    for (i, c) in expr.char_indices() {
        if c == '\'' {
            in_quote = !in_quote;
        } else if !in_quote && expr[i..].starts_with(op) {
            return Some((&expr[..i], &expr[i + op.len()..]));
        }
    }
    None
}

/// Comparison is case-insensitive on strings, as in GitHub expressions.
fn loose_text(v: &Value) -> String {
    display(v).to_lowercase()
}

fn literal(expr: &str) -> Option<Value> {
    if let Some(s) = expr.strip_prefix('\'').and_then(|e| e.strip_suffix('\'')) {
        return Some(Value::String(s.replace("''", "'")));
    }
    match expr {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        "null" => Some(Value::Null),
        _ => expr
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
    }
}

/// `a.b.c` or `a['b'].c`; a missing leaf is `null` (empty), an unknown root is unsupported.
fn lookup(expr: &str, root: &Value) -> Option<Value> {
    let normalized = expr.replace("['", ".").replace("']", "");
    let mut parts = normalized.split('.');
    let head = parts.next()?;
    if head.is_empty()
        || !head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let mut current = root.get(head)?;
    for part in parts {
        match current.get(part) {
            Some(v) => current = v,
            None => return Some(Value::Null),
        }
    }
    Some(current.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root() -> Value {
        json!({
            "github": {"repository": "o/r", "run_id": 7, "event": {"ref": "main"}},
            "env": {"A": "x"},
            "secrets": {"S": "hidden"},
            "matrix": {"os": "trixie"},
            "steps": {"s1": {"outputs": {"v": "42"}}},
        })
    }

    #[test]
    fn substitutes_paths_and_literals() {
        let s = substitute("repo=${{ github.repository }} id=${{github.run_id}} os=${{ matrix.os }} s=${{ secrets['S'] }} q=${{ 'it''s' }}", &root());
        assert_eq!(s.text, "repo=o/r id=7 os=trixie s=hidden q=it's");
        assert!(s.unsupported.is_empty());
        let s = substitute(
            "${{ github.nope }}|${{ toJSON(github) }}|${{ unclosed",
            &root(),
        );
        assert_eq!(s.text, "||${{ unclosed");
        assert_eq!(s.unsupported, vec!["toJSON(github)"]);
    }

    #[test]
    fn comparisons() {
        assert_eq!(
            evaluate("github.event.ref == 'MAIN'", &root()),
            Some(Value::Bool(true))
        );
        assert_eq!(
            evaluate("steps.s1.outputs.v != '42'", &root()),
            Some(Value::Bool(false))
        );
        assert_eq!(evaluate("!env.A", &root()), Some(Value::Bool(false)));
        assert_eq!(evaluate("contains(env.A, 'x')", &root()), None);
    }

    #[test]
    fn step_conditions_follow_status_functions() {
        let r = root();
        assert_eq!(should_run(None, JobStatus::Success, &r), (true, true));
        assert_eq!(should_run(None, JobStatus::Failure, &r), (false, true));
        assert_eq!(
            should_run(Some("always()"), JobStatus::Failure, &r),
            (true, true)
        );
        assert_eq!(
            should_run(Some("${{ failure() }}"), JobStatus::Failure, &r),
            (true, true)
        );
        assert_eq!(
            should_run(Some("failure()"), JobStatus::Success, &r),
            (false, true)
        );
        assert_eq!(
            should_run(Some("env.A == 'y'"), JobStatus::Success, &r),
            (false, true)
        );
        assert_eq!(
            should_run(Some("env.A == 'x'"), JobStatus::Failure, &r),
            (false, true)
        );
        assert_eq!(
            should_run(Some("startsWith(env.A, 'x')"), JobStatus::Success, &r),
            (true, false)
        );
    }
}
