//! The lease as the election needs it: a `coordination.k8s.io/v1` Lease reduced to its spec
//! and its `resourceVersion`, and the three calls made on it (get, create, replace). The
//! election logic (`elector.rs`) is written against the [`LeaseApi`] trait so that it is
//! unit-tested against [`MemoryLease`], which keeps the API server's optimistic concurrency
//! rule: a replace whose `resourceVersion` is not the current one fails with 409 Conflict.

use std::sync::Mutex;

use crate::backend::BoxFuture;

/// The spec of a Lease plus its `metadata.resourceVersion` (empty before it is created).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity`; `None` (or empty) when nobody holds the lease (released).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`.
    pub lease_duration_s: Option<i32>,
    /// `spec.acquireTime`, RFC 3339 with microseconds (a `MicroTime`).
    pub acquire_time: Option<String>,
    /// `spec.renewTime`, RFC 3339 with microseconds.
    pub renew_time: Option<String>,
    /// `spec.leaseTransitions`: how often the holder changed. Used as the fencing generation.
    pub transitions: i32,
    /// `metadata.resourceVersion` of the object as read or as written.
    pub resource_version: String,
}

impl LeaseRecord {
    /// The holder, with an empty identity read as nobody (client-go writes `""` on release).
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// 409: the lease changed since it was read (stale `resourceVersion`), or a create found
    /// it existing. Someone else wrote it: never retried blindly.
    #[error("the lease was changed by someone else (409 Conflict)")]
    Conflict,
    /// 404 on replace: the lease was deleted.
    #[error("the lease does not exist (404)")]
    NotFound,
    /// Anything else (transport, 5xx, 403 from missing RBAC, ...). The message never holds
    /// a credential.
    #[error("{0}")]
    Other(String),
}

/// The calls the election makes on one named lease.
pub trait LeaseApi: Send + Sync {
    /// `namespace/name`, for logs and status.
    fn name(&self) -> String;
    /// The lease, or `None` when it does not exist.
    fn get(&self) -> BoxFuture<'_, Result<Option<LeaseRecord>, LeaseError>>;
    /// Creates it; `Conflict` when it already exists.
    fn create<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>>;
    /// Replaces it (PUT) if its `resourceVersion` is still `record.resource_version`.
    fn replace<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>>;
}

/// An in-memory lease with the API server's concurrency rules, for tests of the election
/// (including several electors racing on one lease) and fault injection.
#[derive(Default)]
pub struct MemoryLease {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    lease: Option<LeaseRecord>,
    next_version: u64,
    /// The next this many calls fail with `Other` (an unreachable API server).
    failing: u32,
}

impl MemoryLease {
    pub fn new() -> MemoryLease {
        MemoryLease::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease as stored now.
    pub fn current(&self) -> Option<LeaseRecord> {
        self.lock().lease.clone()
    }

    /// Makes the next `calls` calls fail as if the API server could not be reached.
    pub fn fail_next(&self, calls: u32) {
        self.lock().failing = calls;
    }

    /// Writes the lease as another party would (bumping its version), e.g. a competing holder.
    pub fn overwrite(&self, mut record: LeaseRecord) -> LeaseRecord {
        let mut state = self.lock();
        state.next_version += 1;
        record.resource_version = state.next_version.to_string();
        state.lease = Some(record.clone());
        record
    }

    fn call<T>(
        &self,
        f: impl FnOnce(&mut MemoryState) -> Result<T, LeaseError>,
    ) -> Result<T, LeaseError> {
        let mut state = self.lock();
        if state.failing > 0 {
            state.failing -= 1;
            return Err(LeaseError::Other("connection refused (injected)".into()));
        }
        f(&mut state)
    }
}

impl LeaseApi for MemoryLease {
    fn name(&self) -> String {
        "memory/lease".into()
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<LeaseRecord>, LeaseError>> {
        let result = self.call(|s| Ok(s.lease.clone()));
        Box::pin(async move { result })
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>> {
        let result = self.call(|s| {
            if s.lease.is_some() {
                return Err(LeaseError::Conflict);
            }
            s.next_version += 1;
            let mut stored = record.clone();
            stored.resource_version = s.next_version.to_string();
            s.lease = Some(stored.clone());
            Ok(stored)
        });
        Box::pin(async move { result })
    }

    fn replace<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>> {
        let result = self.call(|s| {
            let Some(current) = &s.lease else {
                return Err(LeaseError::NotFound);
            };
            if current.resource_version != record.resource_version {
                return Err(LeaseError::Conflict);
            }
            s.next_version += 1;
            let mut stored = record.clone();
            stored.resource_version = s.next_version.to_string();
            s.lease = Some(stored.clone());
            Ok(stored)
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_lease_keeps_optimistic_concurrency() {
        let lease = MemoryLease::new();
        assert_eq!(lease.get().await, Ok(None));
        let record = LeaseRecord {
            holder: Some("a".into()),
            ..Default::default()
        };
        let created = lease.create(&record).await.unwrap();
        assert_eq!(lease.create(&record).await, Err(LeaseError::Conflict));
        let mut next = created.clone();
        next.holder = Some("b".into());
        let replaced = lease.replace(&next).await.unwrap();
        assert_ne!(replaced.resource_version, created.resource_version);
        // The same stale version again: someone else wrote in between.
        assert_eq!(lease.replace(&next).await, Err(LeaseError::Conflict));
        lease.fail_next(1);
        assert!(matches!(lease.get().await, Err(LeaseError::Other(_))));
        assert_eq!(lease.get().await.unwrap().unwrap().holder(), Some("b"));
    }
}
