//! The Forgejo major version being simulated, and every behaviour that depends on it.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ForgejoVersion {
    V13,
    V14,
    V15,
}

impl FromStr for ForgejoVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "13" => Ok(ForgejoVersion::V13),
            "14" => Ok(ForgejoVersion::V14),
            "15" => Ok(ForgejoVersion::V15),
            other => Err(format!(
                "unsupported Forgejo version {other:?} (expected 13, 14 or 15)"
            )),
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

impl ForgejoVersion {
    pub fn major(self) -> u32 {
        match self {
            ForgejoVersion::V13 => 13,
            ForgejoVersion::V14 => 14,
            ForgejoVersion::V15 => 15,
        }
    }

    /// How this version's server parses workflow files.
    pub fn parse_options(self) -> crate::workflow::ParseOptions {
        crate::workflow::ParseOptions::for_forgejo_major(self.major())
    }

    /// The string `GET /api/v1/version` answers (the patch releases the contract was read from).
    pub fn version_string(self) -> &'static str {
        match self {
            ForgejoVersion::V13 => "13.0.5+gitea-1.22.0",
            ForgejoVersion::V14 => "14.0.5+gitea-1.22.0",
            ForgejoVersion::V15 => "15.0.3+gitea-1.22.0",
        }
    }

    /// Contract §1.4: 14+ lists every job when `labels` is absent; 13 lists none.
    pub fn absent_labels_mean_all(self) -> bool {
        self >= ForgejoVersion::V14
    }

    /// Contract §1.4: `attempt` and `handle` appear in job JSON from 15 on.
    pub fn jobs_have_handle(self) -> bool {
        self >= ForgejoVersion::V15
    }

    /// Contract §1.3/§1.5: list/get/create/delete runners over HTTP exist from 15 on.
    pub fn has_runners_api(self) -> bool {
        self >= ForgejoVersion::V15
    }

    /// Contract §3.3: the `ephemeral` column exists from 15 on.
    pub fn has_ephemeral_runners(self) -> bool {
        self >= ForgejoVersion::V15
    }

    /// `Repository.has_wiki_contents`, `wiki_clone_url` and `wiki_ssh_url` exist from 15 on
    /// (the 13 and 14 swagger files lack them).
    pub fn has_wiki_repository_fields(self) -> bool {
        self >= ForgejoVersion::V15
    }

    /// Contract §2.6: FetchSingleTask (and the handle) exist from 15 on.
    pub fn has_fetch_single_task(self) -> bool {
        self >= ForgejoVersion::V15
    }

    /// Contract §2.6: `x-runner-request-key` replay is a 15 feature.
    pub fn has_request_key_replay(self) -> bool {
        self >= ForgejoVersion::V15
    }

    /// Contract §2.6: `task_capacity` / `additional_tasks` from 14 on.
    pub fn has_task_capacity(self) -> bool {
        self >= ForgejoVersion::V14
    }

    /// Contract §3.1 step 4 / §1.4: 15 sets `attempt` when a job (or rerun) is created,
    /// 13/14 increment it when a runner picks the job.
    pub fn attempt_set_on_create(self) -> bool {
        self >= ForgejoVersion::V15
    }

    /// Contract §3.1 step 1: jobs behind a busy concurrency group are not picked (14+).
    pub fn has_concurrency_queue(self) -> bool {
        self >= ForgejoVersion::V14
    }

    /// Contract §1.6: registration token length (F15 43 chars of a base64-style alphabet).
    pub fn registration_token_len(self) -> usize {
        match self {
            ForgejoVersion::V15 => 43,
            _ => 40,
        }
    }
}
