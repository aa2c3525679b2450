//! Forgejo versions and what each can do (forgejo-contract.md §1.3, §1.4, §3.3).

use std::{fmt, str::FromStr};

/// The behaviour family of a Forgejo server. Anything newer than 15 behaves like 15 until a
/// later release changes the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ForgejoVersion {
    V13,
    V14,
    V15,
}

impl ForgejoVersion {
    /// Parses the string of `GET /api/v1/version`, e.g. `15.0.3+gitea-1.22.0`.
    pub fn from_server_string(version: &str) -> Option<ForgejoVersion> {
        let major: u32 = version.trim().split(['.', '+', '-']).next()?.parse().ok()?;
        Some(match major {
            0..=13 => ForgejoVersion::V13,
            14 => ForgejoVersion::V14,
            _ => ForgejoVersion::V15,
        })
    }

    pub fn capabilities(self) -> Capabilities {
        Capabilities {
            jobs_need_label_superset: self == ForgejoVersion::V13,
            runners_api: self >= ForgejoVersion::V15,
            job_handles: self >= ForgejoVersion::V15,
        }
    }
}

impl fmt::Display for ForgejoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForgejoVersion::V13 => "13",
            ForgejoVersion::V14 => "14",
            ForgejoVersion::V15 => "15",
        })
    }
}

impl FromStr for ForgejoVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "13" => Ok(ForgejoVersion::V13),
            "14" => Ok(ForgejoVersion::V14),
            "15" => Ok(ForgejoVersion::V15),
            other => Err(format!(
                "unknown Forgejo version {other:?}: expected 13, 14 or 15"
            )),
        }
    }
}

/// What the autoscaler's strategy depends on. Derived from the version once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Forgejo 13: the jobs endpoint returns a job only if `labels=` lists every label of it.
    pub jobs_need_label_superset: bool,
    /// Forgejo 15: runners can be created (ephemeral) and deleted through `/api/v1`.
    pub runners_api: bool,
    /// Forgejo 15: jobs carry `attempt` and `handle`; `one-job --handle` pins a runner to one.
    pub job_handles: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_strings() {
        assert_eq!(
            ForgejoVersion::from_server_string("13.0.5+gitea-1.22.0"),
            Some(ForgejoVersion::V13)
        );
        assert_eq!(
            ForgejoVersion::from_server_string("14.0.5"),
            Some(ForgejoVersion::V14)
        );
        assert_eq!(
            ForgejoVersion::from_server_string("15.0.3+gitea-1.22.0"),
            Some(ForgejoVersion::V15)
        );
        assert_eq!(
            ForgejoVersion::from_server_string("17.0.0-dev-123"),
            Some(ForgejoVersion::V15)
        );
        assert_eq!(ForgejoVersion::from_server_string("garbage"), None);
        assert!(ForgejoVersion::V15.capabilities().runners_api);
        assert!(ForgejoVersion::V13.capabilities().jobs_need_label_superset);
        assert!(!ForgejoVersion::V14.capabilities().jobs_need_label_superset);
    }
}
