//! Backends: where runner instances live. A small provider interface in the spirit of GitLab's
//! fleeting plugins and GARM's providers: create, delete, list what we own.

use std::{collections::BTreeMap, future::Future, path::PathBuf, pin::Pin};

pub mod docker;
pub mod kubernetes;
pub mod process;
pub mod swarm;

use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A file the runner needs in its instance, e.g. its token or its `.runner` registration.
#[derive(Clone)]
pub struct InstanceFile {
    /// Path relative to the instance's work directory.
    pub name: String,
    pub contents: Vec<u8>,
    /// Holds a credential: written with mode 0600.
    pub secret: bool,
}

impl std::fmt::Debug for InstanceFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceFile")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Everything a backend needs to start one runner.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    pub pool: String,
    /// The runner executable and its arguments. Never contains a secret: credentials go in
    /// `files`, and the arguments point at them (`--token-url file:...`).
    pub program: PathBuf,
    pub args: Vec<String>,
    pub files: Vec<InstanceFile>,
    /// The complete environment of the runner (the autoscaler's own is not inherited).
    pub env: BTreeMap<String, String>,
}

/// What the backend sees of an instance it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    pub id: String,
    pub pool: Option<String>,
    pub status: InstanceStatus,
    /// Backend-specific reference to store (e.g. pid and start time).
    pub backend_ref: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    Running,
    /// The runner exited; `code` when known.
    Exited {
        code: Option<i32>,
    },
}

/// What a removal found, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    pub exit_code: Option<i32>,
    /// Last lines of the runner's output.
    pub log_tail: Option<String>,
    /// Where the full log was kept, if it was.
    pub log_path: Option<PathBuf>,
    /// Whether the runner was still running and the removal stopped it, for the logs. The
    /// recorded reason does not depend on it: exit 0 means the runner received and ran its
    /// task, whether it ended on its own or was finishing when the stop reached it.
    pub stopped_by_us: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {message}")]
pub struct BackendError {
    pub backend: &'static str,
    pub message: String,
}

pub trait Backend: Send + Sync {
    fn kind(&self) -> &'static str;
    /// The instance's work directory as the runner sees it (credential file paths in the
    /// runner's arguments are built from it).
    fn work_dir(&self, id: &str) -> PathBuf;
    /// Starts the instance; returns its backend reference.
    fn create(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<String, BackendError>>;
    /// Stops and removes the instance (idempotent: an instance already gone is fine).
    /// `grace`: how long the runner gets to stop after a polite signal.
    fn delete<'a>(
        &'a self,
        id: &'a str,
        grace: std::time::Duration,
    ) -> BoxFuture<'a, Result<Removal, BackendError>>;
    /// Every instance this autoscaler owns on this backend, running or exited.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, BackendError>>;
    /// Whether the instance whose stored reference is `backend_ref` lives in a part of the
    /// backend that the latest `list()` could not read (one engine of several was down). Such an
    /// instance is unknown, not missing: it must not be declared lost for that. Backends that
    /// list everything or fail keep the default.
    fn unlisted(&self, _backend_ref: &str) -> bool {
        false
    }
    /// Why parts of the backend were left out of the latest `list()`, one message per part.
    fn unlisted_parts(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The backends in use, by kind (`process`, `docker`, ...).
#[derive(Clone, Default)]
pub struct Backends {
    by_kind: BTreeMap<&'static str, Arc<dyn Backend>>,
}

impl Backends {
    pub fn add(&mut self, backend: Arc<dyn Backend>) {
        self.by_kind.insert(backend.kind(), backend);
    }

    pub fn get(&self, kind: &str) -> Result<&Arc<dyn Backend>, BackendError> {
        self.by_kind.get(kind).ok_or_else(|| BackendError {
            backend: "registry",
            message: format!("no {kind:?} backend is configured (an instance recorded with it cannot be managed)"),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.by_kind.values()
    }

    /// Lists every backend; a failed listing is `Err` for that kind only.
    pub async fn list_all(
        &self,
    ) -> BTreeMap<&'static str, Result<Vec<ObservedInstance>, BackendError>> {
        let mut out = BTreeMap::new();
        for (kind, backend) in &self.by_kind {
            out.insert(*kind, backend.list().await);
        }
        out
    }
}
