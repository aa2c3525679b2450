//! Where the autoscaler looks for jobs: the whole instance, an organisation, the token's
//! user, or one repository. Written `"instance"`, `"org:NAME"`, `"user"`, `"repo:OWNER/NAME"`.

use std::{fmt, str::FromStr};

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::error::closest;

/// A Forgejo scope whose waiting jobs the autoscaler serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every repository of the instance (needs an admin token).
    Instance,
    /// Every repository of one organisation.
    Org(String),
    /// The repositories of the user who owns the token.
    User,
    /// One repository.
    Repo { owner: String, name: String },
}

impl Scope {
    /// The API path prefix (after `/api/v1`) of this scope's actions endpoints, e.g.
    /// `"/repos/OWNER/NAME"` for `{prefix}/actions/runners/jobs`.
    ///
    /// Names are restricted to `[A-Za-z0-9_.-]` at parse time, so they need no escaping here.
    pub fn api_prefix(&self) -> String {
        match self {
            Scope::Instance => "/admin".to_string(),
            Scope::Org(org) => format!("/orgs/{org}"),
            Scope::User => "/user".to_string(),
            Scope::Repo { owner, name } => format!("/repos/{owner}/{name}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Instance => f.write_str("instance"),
            Scope::Org(org) => write!(f, "org:{org}"),
            Scope::User => f.write_str("user"),
            Scope::Repo { owner, name } => write!(f, "repo:{owner}/{name}"),
        }
    }
}

const SCOPE_FORMS: &str = "\"instance\", \"org:NAME\", \"user\" or \"repo:OWNER/NAME\"";

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Scope, String> {
        let (kind, arg) = match text.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (text, None),
        };
        match (kind, arg) {
            ("instance", None) => Ok(Scope::Instance),
            ("user", None) => Ok(Scope::User),
            ("instance" | "user", Some(_)) => Err(format!(
                "scope \"{text}\": \"{kind}\" takes no argument; write \"{kind}\""
            )),
            ("org", Some(org)) => {
                check_name(text, "organisation", org)?;
                Ok(Scope::Org(org.to_string()))
            }
            ("repo", Some(path)) => {
                let Some((owner, name)) = path.split_once('/') else {
                    return Err(format!(
                        "scope \"{text}\": a repository is written \"repo:OWNER/NAME\""
                    ));
                };
                check_name(text, "owner", owner)?;
                check_name(text, "repository", name)?;
                Ok(Scope::Repo {
                    owner: owner.to_string(),
                    name: name.to_string(),
                })
            }
            ("org" | "repo", None) => Err(format!(
                "scope \"{text}\" needs a name; write {SCOPE_FORMS}"
            )),
            _ => Err(unknown_kind(text, kind, arg)),
        }
    }
}

/// Forgejo user, organisation and repository names are made of these characters, which also
/// keeps them safe to put in a URL path unescaped.
fn check_name(text: &str, what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "scope \"{text}\": invalid {what} name \"{name}\"; names use letters, digits, '-', '_' and '.'"
        ))
    }
}

fn unknown_kind(text: &str, kind: &str, arg: Option<&str>) -> String {
    let alias = match kind.to_ascii_lowercase().as_str() {
        "organization" | "organisation" | "orgs" => Some("org"),
        "repository" | "repos" => Some("repo"),
        "admin" | "global" | "site" => Some("instance"),
        "users" | "self" => Some("user"),
        _ => None,
    };
    let better = alias.or_else(|| closest(kind, &["instance", "org", "user", "repo"]));
    match better {
        Some(better) => {
            let fixed = arg.map_or(better.to_string(), |a| format!("{better}:{a}"));
            format!("unknown scope \"{text}\"; did you mean \"{fixed}\"? (write {SCOPE_FORMS})")
        }
        None => format!("unknown scope \"{text}\"; write {SCOPE_FORMS}"),
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScopeVisitor;
        impl Visitor<'_> for ScopeVisitor {
            type Value = Scope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a quoted scope: {SCOPE_FORMS}")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Scope, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(ScopeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_displays_back() {
        for text in ["instance", "org:acme", "user", "repo:root/on-demand"] {
            let scope: Scope = text.parse().unwrap();
            assert_eq!(scope.to_string(), text);
        }
    }

    #[test]
    fn api_prefixes() {
        let prefix = |t: &str| t.parse::<Scope>().unwrap().api_prefix();
        assert_eq!(prefix("instance"), "/admin");
        assert_eq!(prefix("org:acme"), "/orgs/acme");
        assert_eq!(prefix("user"), "/user");
        assert_eq!(prefix("repo:root/on-demand"), "/repos/root/on-demand");
    }

    #[test]
    fn mistakes_are_explained() {
        let err = "organization:acme".parse::<Scope>().unwrap_err();
        assert!(err.contains("did you mean \"org:acme\""), "{err}");
        let err = "repo:root".parse::<Scope>().unwrap_err();
        assert!(err.contains("repo:OWNER/NAME"), "{err}");
        let err = "org:a/b".parse::<Scope>().unwrap_err();
        assert!(err.contains("invalid organisation name"), "{err}");
        assert!("user:bob".parse::<Scope>().is_err());
        assert!("repo:../x".parse::<Scope>().is_err());
    }
}
