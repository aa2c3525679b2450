//! Shapes of the Forgejo API objects the autoscaler reads, and its error type.

use std::{fmt, time::Duration};

use serde::Deserialize;

use crate::secret::Secret;

/// A job as listed by `GET {scope}/actions/runners/jobs` (contract §1.4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Job {
    pub id: i64,
    /// Forgejo 15 only.
    #[serde(default)]
    pub attempt: Option<i64>,
    /// Forgejo 15 only: unique per attempt, passed to `one-job --handle`.
    #[serde(default)]
    pub handle: Option<String>,
    #[serde(default)]
    pub repo_id: i64,
    #[serde(default)]
    pub owner_id: i64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub runs_on: Vec<String>,
    #[serde(default)]
    pub task_id: i64,
    pub status: JobStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Waiting,
    Running,
    /// Anything else; the endpoint should not list other states, but a newer server might.
    #[serde(other)]
    Other,
}

/// A runner of the Forgejo 15 runners API (contract §1.5).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunnerInfo {
    pub id: i64,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub name: String,
    /// `offline`, `idle` or `active`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub description: String,
}

/// The answer of `POST {scope}/actions/runners`: the token is the runner's secret.
#[derive(Debug, Clone)]
pub struct CreatedRunner {
    pub id: i64,
    pub uuid: String,
    pub token: Secret,
}

/// A scope as the API addresses it. Paths differ per version for `/admin` (contract §1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiScope {
    Instance,
    Org(String),
    User,
    Repo { owner: String, name: String },
}

impl fmt::Display for ApiScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiScope::Instance => f.write_str("instance"),
            ApiScope::Org(org) => write!(f, "org:{org}"),
            ApiScope::User => f.write_str("user"),
            ApiScope::Repo { owner, name } => write!(f, "repo:{owner}/{name}"),
        }
    }
}

impl std::str::FromStr for ApiScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("invalid scope {s:?}: use \"instance\", \"user\", \"org:NAME\" or \"repo:OWNER/NAME\"")
        };
        match s.split_once(':') {
            None if s == "instance" => Ok(ApiScope::Instance),
            None if s == "user" => Ok(ApiScope::User),
            Some(("org", org)) if !org.is_empty() && !org.contains('/') => {
                Ok(ApiScope::Org(org.into()))
            }
            Some(("repo", full)) => match full.split_once('/') {
                Some((owner, name))
                    if !owner.is_empty() && !name.is_empty() && !name.contains('/') =>
                {
                    Ok(ApiScope::Repo {
                        owner: owner.into(),
                        name: name.into(),
                    })
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// What went wrong talking to Forgejo. `endpoint` is a route template such as
/// `GET /repos/{owner}/{repo}/actions/runners/jobs`: never a token, never a query string.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgejoError {
    #[error("{endpoint}: cannot reach Forgejo: {detail}")]
    Transport {
        endpoint: String,
        detail: String,
        timed_out: bool,
    },
    #[error("{endpoint}: Forgejo answered {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{endpoint}: unexpected response body: {detail}")]
    Decode { endpoint: String, detail: String },
    #[error("runner protocol {procedure}: {detail}")]
    Rpc { procedure: String, detail: String },
}

impl ForgejoError {
    /// Errors worth another try: transport failures, timeouts, 5xx, 429 and bodies that
    /// failed to decode (a truncated response).
    pub fn is_transient(&self) -> bool {
        match self {
            ForgejoError::Transport { .. } | ForgejoError::Decode { .. } => true,
            ForgejoError::Status { status, .. } => {
                *status == 429 || *status == 408 || *status >= 500
            }
            ForgejoError::Rpc { .. } => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ForgejoError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgejoError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        for s in ["instance", "user", "org:acme", "repo:root/on-demand"] {
            assert_eq!(s.parse::<ApiScope>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "org:",
            "repo:x",
            "repo:/x",
            "repo:a/b/c",
            "group:x",
            "Instance",
        ] {
            assert!(bad.parse::<ApiScope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn jobs_decode_from_each_version() {
        let v13 = r#"[{"id":3,"repo_id":1,"owner_id":1,"name":"a","needs":null,"runs_on":["trixie"],"task_id":0,"status":"waiting"}]"#;
        let jobs: Vec<Job> = serde_json::from_str(v13).unwrap();
        assert_eq!(jobs[0].handle, None);
        let v15 = r#"[{"id":982,"attempt":1,"handle":"33ba7d51","repo_id":1,"owner_id":1,"name":"build","needs":null,"runs_on":["debian"],"task_id":0,"status":"waiting"}]"#;
        let jobs: Vec<Job> = serde_json::from_str(v15).unwrap();
        assert_eq!(jobs[0].handle.as_deref(), Some("33ba7d51"));
        assert_eq!(jobs[0].status, JobStatus::Waiting);
        let other: Job = serde_json::from_str(r#"{"id":1,"status":"blocked"}"#).unwrap();
        assert_eq!(other.status, JobStatus::Other);
    }
}
