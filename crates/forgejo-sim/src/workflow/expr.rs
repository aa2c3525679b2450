//! The small part of the Actions expression language that Forgejo evaluates on the server when it
//! turns a workflow into jobs: `${{ matrix.<dim>... }}`, `${{ needs.<job>.outputs.<name> }}`,
//! `${{ inputs.<name> }}` and `fromJSON(...)` around them. Everything else (operators, `github.*`,
//! `vars.*`, status functions) is left verbatim: the runner evaluates it, and the simulator has no
//! event context to evaluate it with.

use std::collections::{BTreeMap, HashMap};

use serde_norway::{Mapping, Value};

use super::value::{go_float, untagged};

/// What an expression may refer to while a workflow is parsed.
#[derive(Default, Clone, Copy)]
pub struct ExprContext<'a> {
    /// The matrix combination of the job (empty when the job has none).
    pub matrix: Option<&'a BTreeMap<String, Value>>,
    /// Outputs of finished jobs. `Some` turns a reference to a missing output into
    /// [`ExprError::MissingJobOutput`] (Forgejo's "incomplete" tagging, `WithJobOutputs`).
    pub job_outputs: Option<&'a HashMap<String, HashMap<String, String>>>,
    /// `inputs` of a reusable workflow call.
    pub inputs: Option<&'a Mapping>,
    /// A reference to an undefined matrix dimension is an error (Forgejo's
    /// `InvalidMatrixDimension` mode, used for `runs-on`).
    pub strict_matrix: bool,
}

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExprError {
    /// `needs.<job>.outputs.<output>` is not known yet.
    MissingJobOutput { job: String, output: String },
    /// `matrix.<dimension>` is not defined for this job.
    MissingMatrixDimension(String),
    /// The expression is well-formed but fails, e.g. `fromJSON` of text that is not JSON.
    Invalid(String),
}

impl std::fmt::Display for ExprError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExprError::MissingJobOutput { job, output } => {
                write!(f, "output {output:?} of job {job:?} is not available yet")
            }
            ExprError::MissingMatrixDimension(dim) => {
                write!(f, "matrix dimension {dim:?} is not defined")
            }
            ExprError::Invalid(msg) => f.write_str(msg),
        }
    }
}

/// Evaluates every expression inside a YAML node (values only, keys are left alone). A string that
/// is exactly one `${{ expr }}` becomes the expression's value, so `fromJSON` can produce a list.
pub fn evaluate_node(node: &Value, ctx: &ExprContext<'_>) -> Result<Value, ExprError> {
    match untagged(node) {
        Value::String(s) => {
            if let Some(inner) = whole_expression(s) {
                if let Some(value) = evaluate(inner, ctx)? {
                    return Ok(value);
                }
                return Ok(Value::String(s.clone()));
            }
            Ok(Value::String(interpolate(s, ctx)?))
        }
        Value::Sequence(items) => items
            .iter()
            .map(|item| evaluate_node(item, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Sequence),
        Value::Mapping(map) => {
            let mut out = Mapping::new();
            for (k, v) in map {
                out.insert(k.clone(), evaluate_node(v, ctx)?);
            }
            Ok(Value::Mapping(out))
        }
        other => Ok(other.clone()),
    }
}

/// Replaces each `${{ expr }}` in `text` by the string form of its value; expressions this module
/// does not evaluate stay as they are.
pub fn interpolate(text: &str, ctx: &ExprContext<'_>) -> Result<String, ExprError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        match evaluate(&after[..end], ctx)? {
            Some(value) => out.push_str(&display(&value)),
            None => out.push_str(&rest[start..start + 3 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The inside of `text` when it is exactly one `${{ ... }}` (surrounding blanks allowed).
fn whole_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("${{")?.strip_suffix("}}")?;
    (!inner.contains("}}") && !inner.contains("${{")).then_some(inner)
}

/// The string an expression value interpolates to (as the Actions `format` function shows it).
fn display(value: &Value) -> String {
    match untagged(value) {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => n.as_f64().map(go_float).unwrap_or_default(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(_) => "Array".to_string(),
        Value::Mapping(_) | Value::Tagged(_) => "Object".to_string(),
    }
}

/// Evaluates one expression; `Ok(None)` means "not something the server evaluates".
fn evaluate(source: &str, ctx: &ExprContext<'_>) -> Result<Option<Value>, ExprError> {
    let Some(tokens) = tokenize(source) else {
        return Ok(None);
    };
    let mut parser = Parser { tokens, pos: 0 };
    let Some(expr) = parser.expr() else {
        return Ok(None);
    };
    if parser.pos != parser.tokens.len() {
        return Ok(None);
    }
    eval(&expr, ctx)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Int(i64),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
}

fn tokenize(source: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '.' => {
                tokens.push(Token::Dot);
                i += 1;
            }
            '[' => {
                tokens.push(Token::LBracket);
                i += 1;
            }
            ']' => {
                tokens.push(Token::RBracket);
                i += 1;
            }
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    let ch = *chars.get(i)?;
                    if ch == '\'' {
                        if chars.get(i + 1) == Some(&'\'') {
                            s.push('\'');
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    s.push(ch);
                    i += 1;
                }
                tokens.push(Token::Str(s));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                tokens.push(Token::Int(text.parse().ok()?));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            _ => return None,
        }
    }
    Some(tokens)
}

#[derive(Debug)]
enum Expr {
    Literal(Value),
    /// A context root followed by property/index accesses.
    Path(String, Vec<Value>),
    FromJson(Box<Expr>),
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn expr(&mut self) -> Option<Expr> {
        match self.next()? {
            Token::Str(s) => Some(Expr::Literal(Value::String(s))),
            Token::Int(n) => Some(Expr::Literal(Value::Number(n.into()))),
            Token::Ident(name) => {
                if self.peek() == Some(&Token::LParen) {
                    self.pos += 1;
                    if !name.eq_ignore_ascii_case("fromjson") {
                        return None;
                    }
                    let arg = self.expr()?;
                    (self.next()? == Token::RParen).then_some(Expr::FromJson(Box::new(arg)))
                } else {
                    match name.to_ascii_lowercase().as_str() {
                        "true" => return Some(Expr::Literal(Value::Bool(true))),
                        "false" => return Some(Expr::Literal(Value::Bool(false))),
                        "null" => return Some(Expr::Literal(Value::Null)),
                        _ => {}
                    }
                    let mut path = Vec::new();
                    loop {
                        match self.peek() {
                            Some(Token::Dot) => {
                                self.pos += 1;
                                match self.next()? {
                                    Token::Ident(p) => path.push(Value::String(p)),
                                    _ => return None,
                                }
                            }
                            Some(Token::LBracket) => {
                                self.pos += 1;
                                let index = match self.next()? {
                                    Token::Str(s) => Value::String(s),
                                    Token::Int(n) => Value::Number(n.into()),
                                    _ => return None,
                                };
                                if self.next()? != Token::RBracket {
                                    return None;
                                }
                                path.push(index);
                            }
                            _ => break,
                        }
                    }
                    Some(Expr::Path(name, path))
                }
            }
            _ => None,
        }
    }
}

fn eval(expr: &Expr, ctx: &ExprContext<'_>) -> Result<Option<Value>, ExprError> {
    match expr {
        Expr::Literal(v) => Ok(Some(v.clone())),
        Expr::FromJson(arg) => {
            let Some(value) = eval(arg, ctx)? else {
                return Ok(None);
            };
            let text = display(&value);
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ExprError::Invalid(format!("fromJSON: {e}")))?;
            serde_norway::to_value(json)
                .map(Some)
                .map_err(|e| ExprError::Invalid(format!("fromJSON: {e}")))
        }
        Expr::Path(root, path) => eval_path(root, path, ctx),
    }
}

fn eval_path(
    root: &str,
    path: &[Value],
    ctx: &ExprContext<'_>,
) -> Result<Option<Value>, ExprError> {
    let key = |i: usize| path.get(i).and_then(|v| v.as_str().map(str::to_string));
    match root.to_ascii_lowercase().as_str() {
        "matrix" => {
            let Some(first) = path.first() else {
                let map: Mapping = ctx
                    .matrix
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (Value::String(k.clone()), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(Some(Value::Mapping(map)));
            };
            let dim = first.as_str().map(str::to_string).unwrap_or_default();
            let found = ctx.matrix.and_then(|m| {
                m.get(&dim).or_else(|| {
                    m.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&dim))
                        .map(|(_, v)| v)
                })
            });
            match found {
                Some(v) => Ok(Some(navigate(v, &path[1..]))),
                None if ctx.strict_matrix => Err(ExprError::MissingMatrixDimension(dim)),
                None => Ok(Some(Value::Null)),
            }
        }
        "needs" => {
            let (Some(job), Some(section), Some(output)) = (key(0), key(1), key(2)) else {
                return Ok(None);
            };
            if !section.eq_ignore_ascii_case("outputs") || path.len() > 3 {
                return Ok(None);
            }
            let Some(outputs) = ctx.job_outputs else {
                return Ok(None);
            };
            match outputs.get(&job).and_then(|o| o.get(&output)) {
                Some(v) => Ok(Some(Value::String(v.clone()))),
                None => Err(ExprError::MissingJobOutput { job, output }),
            }
        }
        "inputs" => {
            let Some(inputs) = ctx.inputs else {
                return Ok(None);
            };
            let Some(first) = path.first() else {
                return Ok(Some(Value::Mapping(inputs.clone())));
            };
            let value = inputs.get(first).cloned().unwrap_or(Value::Null);
            Ok(Some(navigate(&value, &path[1..])))
        }
        _ => Ok(None),
    }
}

/// Follows property and index accesses into a value; anything missing is `null`.
fn navigate(value: &Value, path: &[Value]) -> Value {
    let mut current = untagged(value).clone();
    for step in path {
        current = match (&current, step) {
            (Value::Mapping(map), Value::String(k)) => map
                .get(k.as_str())
                .or_else(|| {
                    map.iter()
                        .find(|(mk, _)| mk.as_str().is_some_and(|s| s.eq_ignore_ascii_case(k)))
                        .map(|(_, v)| v)
                })
                .cloned()
                .unwrap_or(Value::Null),
            (Value::Sequence(items), Value::Number(n)) => n
                .as_u64()
                .and_then(|i| items.get(usize::try_from(i).ok()?))
                .cloned()
                .unwrap_or(Value::Null),
            _ => Value::Null,
        };
        current = untagged(&current).clone();
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn interpolates_matrix_values_and_keeps_other_expressions() {
        let m = matrix(&[
            ("os", Value::String("linux".into())),
            ("n", Value::Number(3.into())),
        ]);
        let ctx = ExprContext {
            matrix: Some(&m),
            ..Default::default()
        };
        assert_eq!(
            interpolate(
                "build-${{ matrix.os }}-${{matrix.n}} ${{ github.ref }}",
                &ctx
            )
            .unwrap(),
            "build-linux-3 ${{ github.ref }}"
        );
        assert_eq!(interpolate("${{ matrix['os'] }}", &ctx).unwrap(), "linux");
        assert_eq!(
            interpolate("x ${{ matrix.missing }} y", &ctx).unwrap(),
            "x  y"
        );
    }

    #[test]
    fn strict_matrix_reports_missing_dimension() {
        let ctx = ExprContext {
            strict_matrix: true,
            ..Default::default()
        };
        assert_eq!(
            evaluate_node(&Value::String("${{ matrix.os }}".into()), &ctx),
            Err(ExprError::MissingMatrixDimension("os".into()))
        );
    }

    #[test]
    fn from_json_of_known_output_gives_a_list() {
        let outputs: HashMap<String, HashMap<String, String>> = [(
            "gen".to_string(),
            [("names".to_string(), r#"["a","b"]"#.to_string())].into(),
        )]
        .into();
        let ctx = ExprContext {
            job_outputs: Some(&outputs),
            ..Default::default()
        };
        let v = evaluate_node(
            &Value::String("${{ fromJSON(needs.gen.outputs.names) }}".into()),
            &ctx,
        )
        .unwrap();
        assert_eq!(v, serde_norway::from_str::<Value>("[a, b]").unwrap());
        let err = evaluate_node(
            &Value::String("${{ fromJSON(needs.gen.outputs.other) }}".into()),
            &ctx,
        );
        assert_eq!(
            err,
            Err(ExprError::MissingJobOutput {
                job: "gen".into(),
                output: "other".into()
            })
        );
    }
}
