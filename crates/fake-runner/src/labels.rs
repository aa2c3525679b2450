//! Runner labels, `name[:schema[:arg]]` (contract §2.4).
//!
//! Only the name is sent to Forgejo; schema and argument say where a job would run. The
//! stand-in runs every job on the host whatever the schema, but it validates labels exactly
//! like forgejo-runner so that a label the real runner rejects is rejected here too.

use std::fmt;

/// Image used when a label has no schema, or `docker` without an argument.
pub const DEFAULT_DOCKER_ARG: &str = "//node:22-bookworm";
/// Distribution used by `lxc` without an argument.
pub const DEFAULT_LXC_ARG: &str = "//debian:bookworm";
/// Label `register` uses when none is given (forgejo-runner 12.8).
pub const DEFAULT_REGISTER_LABEL: &str = "docker:docker://data.forgejo.org/oci/node:lts";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Docker,
    Host,
    Lxc,
}

impl Schema {
    pub fn as_str(self) -> &'static str {
        match self {
            Schema::Docker => "docker",
            Schema::Host => "host",
            Schema::Lxc => "lxc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub name: String,
    pub schema: Schema,
    /// Schema argument, e.g. `//debian:bookworm`; empty for `host`.
    pub arg: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label name {0:?} has leading or trailing spaces")]
    Spaces(String),
    #[error("label {0:?} has an empty name")]
    EmptyName(String),
    #[error("unsupported schema: {0}")]
    UnsupportedSchema(String),
    #[error("schema host does not take an argument: {0:?}")]
    HostWithArgument(String),
}

impl Label {
    /// Parses `name[:schema[:arg]]`, split on the first two colons.
    pub fn parse(text: &str) -> Result<Label, LabelError> {
        let mut parts = text.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        let schema = parts.next();
        let arg = parts.next();
        if name.trim() != name {
            return Err(LabelError::Spaces(name.to_string()));
        }
        if name.is_empty() {
            return Err(LabelError::EmptyName(text.to_string()));
        }
        let (schema, arg) = match (schema, arg) {
            (None, _) => (Schema::Docker, DEFAULT_DOCKER_ARG.to_string()),
            (Some("docker"), None) => (Schema::Docker, DEFAULT_DOCKER_ARG.to_string()),
            (Some("docker"), Some(arg)) => (Schema::Docker, arg.to_string()),
            (Some("host"), None) => (Schema::Host, String::new()),
            (Some("host"), Some(_)) => return Err(LabelError::HostWithArgument(text.to_string())),
            (Some("lxc"), None) => (Schema::Lxc, DEFAULT_LXC_ARG.to_string()),
            (Some("lxc"), Some(arg)) => (Schema::Lxc, arg.to_string()),
            (Some(other), _) => return Err(LabelError::UnsupportedSchema(other.to_string())),
        };
        Ok(Label {
            name: name.to_string(),
            schema,
            arg,
        })
    }

    /// The container image or distribution named by the argument (`//` stripped).
    pub fn target(&self) -> &str {
        self.arg.trim_start_matches("//")
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.arg.is_empty() {
            write!(f, "{}:{}", self.name, self.schema.as_str())
        } else {
            write!(f, "{}:{}:{}", self.name, self.schema.as_str(), self.arg)
        }
    }
}

/// Parses every label; the first invalid one is the error.
pub fn parse_all<S: AsRef<str>>(labels: &[S]) -> Result<Vec<Label>, LabelError> {
    labels.iter().map(|l| Label::parse(l.as_ref())).collect()
}

/// The names sent to Forgejo in `Register` / `Declare`.
pub fn names(labels: &[Label]) -> Vec<String> {
    labels.iter().map(|l| l.name.clone()).collect()
}

/// `--labels a,b , c` → `["a", "b", "c"]`: pieces trimmed, empty pieces dropped.
pub fn comma_split(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_only_defaults_to_docker_node() {
        let l = Label::parse("trixie").unwrap();
        assert_eq!(
            (l.name.as_str(), l.schema, l.target()),
            ("trixie", Schema::Docker, "node:22-bookworm")
        );
    }

    #[test]
    fn docker_with_image_keeps_everything_after_the_second_colon() {
        let l = Label::parse("bookworm:docker://debian:bookworm").unwrap();
        assert_eq!(l.name, "bookworm");
        assert_eq!(l.schema, Schema::Docker);
        assert_eq!(l.arg, "//debian:bookworm");
        assert_eq!(l.target(), "debian:bookworm");
        assert_eq!(l.to_string(), "bookworm:docker://debian:bookworm");
        assert_eq!(Label::parse("d:docker").unwrap().arg, DEFAULT_DOCKER_ARG);
    }

    #[test]
    fn host_takes_no_argument() {
        let l = Label::parse("self:host").unwrap();
        assert_eq!((l.schema, l.arg.as_str()), (Schema::Host, ""));
        assert_eq!(l.to_string(), "self:host");
        assert!(matches!(
            Label::parse("self:host:x"),
            Err(LabelError::HostWithArgument(_))
        ));
        assert!(matches!(
            Label::parse("self:host:"),
            Err(LabelError::HostWithArgument(_))
        ));
    }

    #[test]
    fn lxc_default_and_explicit() {
        assert_eq!(Label::parse("l:lxc").unwrap().target(), "debian:bookworm");
        assert_eq!(
            Label::parse("l:lxc://debian:trixie").unwrap().target(),
            "debian:trixie"
        );
    }

    #[test]
    fn other_schemas_and_spaces_are_errors() {
        assert_eq!(
            Label::parse("x:vm://a"),
            Err(LabelError::UnsupportedSchema("vm".into()))
        );
        assert_eq!(
            Label::parse("x:"),
            Err(LabelError::UnsupportedSchema(String::new()))
        );
        assert!(matches!(
            Label::parse(" x:host"),
            Err(LabelError::Spaces(_))
        ));
        assert!(matches!(
            Label::parse("x :host"),
            Err(LabelError::Spaces(_))
        ));
        assert!(matches!(Label::parse(""), Err(LabelError::EmptyName(_))));
    }

    #[test]
    fn comma_split_trims_and_names_strip_schemas() {
        assert_eq!(
            comma_split(" a:host, b ,,c:docker://x:y "),
            vec!["a:host", "b", "c:docker://x:y"]
        );
        let parsed = parse_all(&comma_split("a:host,b:docker://x:y")).unwrap();
        assert_eq!(names(&parsed), vec!["a", "b"]);
        assert!(parse_all(&["ok", "bad:nope"]).is_err());
    }
}
