//! The rows of the simulated database. Field names follow Forgejo's tables where one exists.

use std::collections::BTreeMap;

pub type Id = i64;

/// Job and task status (Forgejo `models/actions/status.go`; 0–4 equal `runner.v1.Result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Unknown,
    Success,
    Failure,
    Cancelled,
    Skipped,
    Waiting,
    Running,
    Blocked,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Blocked,
        Status::Waiting,
        Status::Running,
        Status::Success,
        Status::Failure,
        Status::Cancelled,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
            Status::Waiting => "waiting",
            Status::Running => "running",
            Status::Blocked => "blocked",
        }
    }

    /// A final status: the job or task will not change again (until a rerun).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            Status::Success | Status::Failure | Status::Cancelled | Status::Skipped
        )
    }

    /// The `runner.v1.Result` a runner reports, or `None` for UNSPECIFIED / unknown numbers.
    pub fn from_result(result: i32) -> Option<Status> {
        match result {
            1 => Some(Status::Success),
            2 => Some(Status::Failure),
            3 => Some(Status::Cancelled),
            4 => Some(Status::Skipped),
            _ => None,
        }
    }

    /// The `runner.v1.Result` number for this status (UNSPECIFIED while not done).
    pub fn as_result(self) -> i32 {
        match self {
            Status::Success => 1,
            Status::Failure => 2,
            Status::Cancelled => 3,
            Status::Skipped => 4,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    User,
    Org,
}

/// A user or an organization (Forgejo keeps both in one table, sharing the id space).
#[derive(Debug, Clone)]
pub struct Account {
    pub id: Id,
    pub name: String,
    pub kind: AccountKind,
    pub email: String,
    pub full_name: String,
    pub description: String,
    /// Salted hash; `None` for organizations.
    pub password_hash: Option<String>,
    pub is_admin: bool,
    /// Users in the organization's Owners team.
    pub org_owners: Vec<Id>,
    pub created_ms: i64,
}

#[derive(Debug, Clone)]
pub struct AccessToken {
    pub id: Id,
    pub user_id: Id,
    pub name: String,
    pub hash: String,
    pub last_eight: String,
    pub scopes: Vec<String>,
}

/// What a workflow file of a repository reacts to, or why it is not a workflow.
#[derive(Debug, Clone)]
pub enum WorkflowEntry {
    Valid {
        push: bool,
        workflow_dispatch: bool,
        schedules: Vec<String>,
    },
    Invalid {
        error: String,
    },
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub workflow_file: String,
    pub spec: String,
    pub next_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Repo {
    pub id: Id,
    pub owner_id: Id,
    pub name: String,
    pub description: String,
    pub private: bool,
    pub default_branch: String,
    pub actions_enabled: bool,
    pub files: BTreeMap<String, String>,
    pub workflows: BTreeMap<String, WorkflowEntry>,
    pub schedules: Vec<Schedule>,
    pub run_number: i64,
    pub commit_count: u64,
    pub head_sha: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub id: Id,
    pub repo_id: Id,
    pub workflow_file: String,
    pub title: String,
    pub index: i64,
    pub event: String,
    pub trigger_user: String,
    pub sha: String,
    pub created_ms: i64,
    pub job_ids: Vec<Id>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: Id,
    pub run_id: Id,
    pub repo_id: Id,
    pub owner_id: Id,
    pub key: String,
    pub name: String,
    pub runs_on: Vec<String>,
    pub needs: Vec<String>,
    pub if_condition: Option<String>,
    pub concurrency: Option<String>,
    pub timeout_minutes: Option<u64>,
    pub payload: String,
    /// The placeholder of an expanded reusable workflow call: never sent to a runner, the
    /// server completes it from its needs.
    pub workflow_call_outer: bool,
    /// A job whose matrix or `runs-on` needs other jobs' outputs: expanded once they are done.
    pub incomplete: Option<Box<crate::workflow::JobSpec>>,
    pub status: Status,
    pub attempt: i64,
    pub handle: String,
    pub task_id: Id,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub started_ms: Option<i64>,
    pub stopped_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: Id,
    pub job_id: Id,
    pub runner_id: Id,
    pub attempt: i64,
    pub status: Status,
    pub token_hash: String,
    pub started_ms: i64,
    /// Last heartbeat (UpdateTask) — what the zombie timer looks at.
    pub updated_ms: i64,
    pub stopped_ms: Option<i64>,
    pub log_rows: Vec<String>,
    pub log_archived: bool,
    pub outputs: BTreeMap<String, String>,
    pub request_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Runner {
    pub id: Id,
    pub uuid: String,
    pub name: String,
    pub token_hash: String,
    pub owner_id: Id,
    pub repo_id: Id,
    pub version: String,
    /// Label names as last declared; `None` until the first Register/Declare.
    pub labels: Option<Vec<String>>,
    pub description: String,
    pub ephemeral: bool,
    pub deleted: bool,
    pub created_ms: i64,
    pub last_online_ms: Option<i64>,
    pub last_active_ms: Option<i64>,
    pub tasks_taken: u64,
}

#[derive(Debug, Clone)]
pub struct RegistrationToken {
    pub id: Id,
    pub token: String,
    pub owner_id: Id,
    pub repo_id: Id,
    pub active: bool,
}

/// Which jobs a listing or a runner sees (contract §1.3: instance, owner, repository).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Owner(Id),
    Repo(Id),
}

impl Scope {
    /// `(owner_id, repo_id)` as Forgejo stores it on runners and tokens.
    pub fn ids(self) -> (Id, Id) {
        match self {
            Scope::Global => (0, 0),
            Scope::Owner(o) => (o, 0),
            Scope::Repo(r) => (0, r),
        }
    }

    pub fn from_ids(owner_id: Id, repo_id: Id) -> Scope {
        if repo_id != 0 {
            Scope::Repo(repo_id)
        } else if owner_id != 0 {
            Scope::Owner(owner_id)
        } else {
            Scope::Global
        }
    }
}
