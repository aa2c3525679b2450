//! Configuration diagnostics: where in the file something is wrong, and what to do about it.
//!
//! Every diagnostic names a position (`FILE:LINE:COL`, 1-based, columns in characters) because an
//! admin fixing a config file wants to jump to the offending key, not read a serde type name.
//! The messages produced by `toml`/`serde` are rewritten here into plain language with a hint
//! (including "did you mean" for misspelled keys and values).

use std::{fmt, ops::Range, path::Path, path::PathBuf};

/// A configuration error, displayed as `FILE:LINE:COL: what is wrong and how to fix it`.
///
/// `line` and `col` are 1-based. They are both 0 when the error concerns the file as a whole
/// (it cannot be read); `Display` then prints `FILE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole (no position inside it).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_located(f, &self.file, self.line, self.col, &self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Something legal but probably unintended (for example a token file others can read).
/// Same shape and display as [`ConfigError`]; `validate` prints these and still exits 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_located(f, &self.file, self.line, self.col, &self.message)
    }
}

fn write_located(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    line: usize,
    col: usize,
    message: &str,
) -> fmt::Result {
    if line == 0 {
        write!(f, "{}: {message}", file.display())
    } else {
        write!(f, "{}:{line}:{col}: {message}", file.display())
    }
}

/// The text being parsed and its file name: turns byte spans into positions.
pub(super) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    pub fn error(&self, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = self.position(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    pub fn warning(&self, span: &Range<usize>, message: impl Into<String>) -> ConfigWarning {
        let (line, col) = self.position(span.start);
        ConfigWarning {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Turns a TOML syntax error (from the first, untyped pass) into a positioned error.
    pub fn syntax_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let one_line = err
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let hint = if one_line.starts_with("duplicate key") {
            "each key may appear only once per table; remove one of them"
        } else {
            "check the quotes, brackets and `key = value` form"
        };
        self.error(&span, format!("TOML syntax error: {one_line}; {hint}"))
    }

    /// Turns an error of the typed pass (unknown key, wrong type, or one raised by this
    /// module's own `Deserialize` impls) into a positioned error in plain language.
    pub fn typed_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let key = self.key_of_value_at(span.start);
        let message = rewrite_message(err.message(), key.as_deref());
        self.error(&span, message)
    }

    /// The key whose value starts at `offset`, when `key = value` starts on the same line.
    /// Only used to make messages friendlier, so a wrong guess costs nothing but a hint.
    fn key_of_value_at(&self, offset: usize) -> Option<String> {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        let (left, _) = line.rsplit_once('=')?;
        let key = left
            .trim_end()
            .rsplit(|c: char| c.is_whitespace() || c == '{' || c == ',')
            .next()?
            .trim_matches(|c| c == '"' || c == '\'');
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        plain.then(|| key.to_string())
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Rewrites serde/toml wording into the project's "what is wrong; how to fix it" style.
fn rewrite_message(message: &str, key: Option<&str>) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown_key(rest);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return unknown_value(rest, key);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("missing required key `{name}` in this table; add it");
    }
    let prefix = key.map_or(String::new(), |k| format!("`{k}`: "));
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "{prefix}wrong type: found {found}, expected {}",
                plain_expectation(expected)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "{prefix}invalid value {found}; expected {}",
                plain_expectation(expected)
            );
        }
    }
    // Raised by this module's own `Deserialize` impls: already says how to fix it.
    format!("{prefix}{message}")
}

/// Splits serde's "`X`, expected one of `a`, `b`" (or "expected `a`", or "there are no
/// fields") into the unknown name and the allowed ones.
fn name_and_allowed(rest: &str) -> (&str, Vec<&str>) {
    match rest.split_once('`') {
        Some((name, tail)) => (name, tail.split('`').skip(1).step_by(2).collect()),
        None => (rest, Vec::new()),
    }
}

fn unknown_key(rest: &str) -> String {
    let (name, known) = name_and_allowed(rest);
    if known.is_empty() {
        return format!("unknown key `{name}`: this table takes no keys; remove it");
    }
    let list = known.join(", ");
    match closest(name, &known) {
        Some(best) => format!("unknown key `{name}`; did you mean `{best}`? (allowed: {list})"),
        None => format!("unknown key `{name}`; remove it or use one of: {list}"),
    }
}

fn unknown_value(rest: &str, key: Option<&str>) -> String {
    let (name, allowed) = name_and_allowed(rest);
    let of_key = key.map_or(String::new(), |k| format!(" for `{k}`"));
    let list = allowed
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    match closest(name, &allowed) {
        Some(best) => {
            format!("unknown value \"{name}\"{of_key}; did you mean \"{best}\"? (allowed: {list})")
        }
        None => format!("unknown value \"{name}\"{of_key}; use one of: {list}"),
    }
}

fn plain_expectation(expected: &str) -> String {
    let expected = expected.trim();
    match expected {
        "u32" | "u64" | "u16" | "u8" | "usize" => {
            "a whole number of 0 or more, without quotes (e.g. 10)".to_string()
        }
        "f64" | "f32" => "a number without quotes (e.g. 2 or 1.5)".to_string(),
        "a string" => "a quoted string".to_string(),
        "a boolean" => "true or false, without quotes".to_string(),
        "a sequence" => "a list in brackets (e.g. [\"a\", \"b\"])".to_string(),
        "a map" => "a table".to_string(),
        e if e.starts_with("struct ") => "a table (e.g. [section] or { key = value })".to_string(),
        e if e.starts_with("enum ") => "one of the allowed words, quoted".to_string(),
        e => e.to_string(),
    }
}

/// The candidate closest to `name` by edit distance, when it is close enough to be a typo
/// (or one contains the other, as with `token` for `token_file`).
pub(super) fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lowered = name.to_ascii_lowercase();
    let limit = (name.chars().count() / 3).max(2);
    let by_distance = candidates
        .iter()
        .map(|c| (edit_distance(&lowered, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    by_distance.or_else(|| {
        candidates
            .iter()
            .find(|c| lowered.len() >= 3 && (c.contains(lowered.as_str()) || lowered.contains(**c)))
            .copied()
    })
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = Source {
            file: Path::new("c.toml"),
            text: "a = 1\nbé = \"x\"\n",
        };
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(6), (2, 1));
        // "bé = " is 6 bytes but 5 characters; the value starts at column 6.
        assert_eq!(src.position(12), (2, 6));
    }

    #[test]
    fn suggestions_catch_typos_and_prefixes() {
        let keys = ["url", "token_file", "token_env", "poll_interval"];
        assert_eq!(closest("tokn_file", &keys), Some("token_file"));
        assert_eq!(closest("poll_intervall", &keys), Some("poll_interval"));
        assert_eq!(closest("token", &keys), Some("token_file"));
        assert_eq!(closest("zzzzzz", &keys), None);
    }

    #[test]
    fn unknown_field_messages_get_a_suggestion() {
        let msg = rewrite_message(
            "unknown field `backnd`, expected one of `name`, `backend`",
            None,
        );
        assert_eq!(
            msg,
            "unknown key `backnd`; did you mean `backend`? (allowed: name, backend)"
        );
    }

    #[test]
    fn the_key_of_a_value_is_found_on_its_line() {
        let src = Source {
            file: Path::new("c.toml"),
            text: "[x]\nmax_runners = \"ten\"\ndocker = { cpus = \"two\" }\n",
        };
        let value = src.text.find("\"ten\"").unwrap();
        assert_eq!(src.key_of_value_at(value).as_deref(), Some("max_runners"));
        let value = src.text.find("\"two\"").unwrap();
        assert_eq!(src.key_of_value_at(value).as_deref(), Some("cpus"));
    }
}
