//! Runner labels in forgejo-runner's syntax, `name[:schema[:arg]]` (contract §2.4).
//!
//! Only the name is sent to Forgejo and used to match jobs; the schema and argument tell the
//! runner where a job runs. Parsing follows the runner's own rules so that a label set this
//! module accepts is one the runner accepts too, and a mistake is reported at `validate` time
//! instead of when the first runner starts.

use std::{fmt, str::FromStr};

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::error::closest;

/// The image forgejo-runner uses when a label has no schema or `docker` without an image.
pub const DEFAULT_DOCKER_IMAGE: &str = "node:22-bookworm";
/// The template forgejo-runner uses for `lxc` without an argument.
pub const DEFAULT_LXC_TEMPLATE: &str = "debian:bookworm";

/// One runner label: the name jobs ask for in `runs-on`, and where such a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// What a job's `runs-on` names and what Forgejo matches on.
    pub name: String,
    pub schema: LabelSchema,
    /// The label exactly as written, handed to the runner unchanged.
    pub raw: String,
}

/// Where a job that picked this label runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSchema {
    /// In a container of this image (`//` already stripped).
    Docker(String),
    /// Directly on the runner's host.
    Host,
    /// In an LXC container of this template, `DIST:RELEASE` (`//` already stripped).
    Lxc(String),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for Label {
    type Err = String;

    fn from_str(raw: &str) -> Result<Label, String> {
        let mut parts = raw.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        let schema = parts.next();
        let arg = parts.next();
        check_name(raw, name)?;
        let schema = match schema {
            None => LabelSchema::Docker(DEFAULT_DOCKER_IMAGE.to_string()),
            Some("docker") => {
                LabelSchema::Docker(argument(raw, "docker", arg, DEFAULT_DOCKER_IMAGE)?)
            }
            Some("lxc") => LabelSchema::Lxc(argument(raw, "lxc", arg, DEFAULT_LXC_TEMPLATE)?),
            Some("host") if arg.is_none() => LabelSchema::Host,
            Some("host") => {
                return Err(format!(
                    "label \"{raw}\": the host schema takes no argument; write \"{name}:host\""
                ))
            }
            Some(other) => return Err(unknown_schema(raw, name, other)),
        };
        Ok(Label {
            name: name.to_string(),
            schema,
            raw: raw.to_string(),
        })
    }
}

fn check_name(raw: &str, name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err(format!(
            "label \"{raw}\" has no name; write NAME[:SCHEMA[:ARG]], e.g. \"trixie:docker://debian:trixie\""
        ));
    }
    if name.trim() != name {
        return Err(format!(
            "label \"{raw}\": the name has spaces around it; remove them (write \"{}\")",
            raw.trim_start().replacen(name.trim_start(), name.trim(), 1)
        ));
    }
    if name.contains(',') {
        return Err(format!(
            "label \"{raw}\": a name cannot contain ','; write each label as its own string, e.g. [\"a\", \"b\"]"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "label {raw:?}: the name contains a control character; remove it"
        ));
    }
    Ok(())
}

/// The schema's argument with its leading `//` removed, or the runner's default when absent.
fn argument(raw: &str, schema: &str, arg: Option<&str>, default: &str) -> Result<String, String> {
    let Some(arg) = arg else {
        return Ok(default.to_string());
    };
    let value = arg.strip_prefix("//").unwrap_or(arg);
    if value.trim().is_empty() {
        let example = if schema == "docker" {
            "docker://debian:trixie"
        } else {
            "lxc://debian:trixie"
        };
        return Err(format!(
            "label \"{raw}\": nothing after \"{schema}:\"; name one (e.g. \"{example}\") or write just \"{schema}\" for {default}"
        ));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(format!(
            "label \"{raw}\": \"{value}\" contains spaces; image and template names have none"
        ));
    }
    Ok(value.to_string())
}

fn unknown_schema(raw: &str, name: &str, schema: &str) -> String {
    let forms = "docker://IMAGE, host or lxc://DIST:RELEASE";
    match closest(schema, &["docker", "host", "lxc"]) {
        Some(better) => format!(
            "label \"{raw}\": unsupported schema \"{schema}\"; did you mean \"{better}\"? (use {forms})"
        ),
        None => format!(
            "label \"{raw}\": unsupported schema \"{schema}\"; use {forms} (an image is written \"{name}:docker://IMAGE\")"
        ),
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelVisitor;
        impl Visitor<'_> for LabelVisitor {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted runner label such as \"trixie:docker://debian:trixie\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Label, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(LabelVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(raw: &str) -> LabelSchema {
        raw.parse::<Label>().unwrap().schema
    }

    #[test]
    fn the_runners_rules() {
        assert_eq!(
            schema("ubuntu"),
            LabelSchema::Docker("node:22-bookworm".into())
        );
        assert_eq!(
            schema("x:docker"),
            LabelSchema::Docker("node:22-bookworm".into())
        );
        assert_eq!(
            schema("trixie:docker://debian:trixie"),
            LabelSchema::Docker("debian:trixie".into())
        );
        assert_eq!(schema("self-hosted:host"), LabelSchema::Host);
        assert_eq!(
            schema("lxc:lxc://debian:trixie"),
            LabelSchema::Lxc("debian:trixie".into())
        );
        assert_eq!(
            schema("lxc:lxc"),
            LabelSchema::Lxc("debian:bookworm".into())
        );
        let label: Label = "trixie:docker://debian:trixie".parse().unwrap();
        assert_eq!(label.name, "trixie");
        assert_eq!(label.raw, "trixie:docker://debian:trixie");
    }

    #[test]
    fn digests_keep_their_colons() {
        let image = "node:24-bookworm@sha256:e98912";
        assert_eq!(
            schema(&format!("docker:docker://{image}")),
            LabelSchema::Docker(image.into())
        );
    }

    #[test]
    fn mistakes_are_refused_with_a_fix() {
        let err = |raw: &str| raw.parse::<Label>().unwrap_err();
        assert!(err("x:host:y").contains("takes no argument; write \"x:host\""));
        assert!(err("x:dockr://a").contains("did you mean \"docker\""));
        assert!(err("x:ubuntu:22.04").contains("unsupported schema \"ubuntu\""));
        assert!(err(" x:host").contains("spaces around it"));
        assert!(err("x :host").contains("spaces around it"));
        assert!(err(":host").contains("has no name"));
        assert!(err("a,b").contains("cannot contain ','"));
        assert!(err("x:docker://").contains("nothing after"));
    }
}
