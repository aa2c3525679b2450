//! High availability: several replicas, one leader, elected on a `coordination.k8s.io/v1`
//! Lease (`[ha]` in the configuration; docs/high-availability.md).
//!
//! * `lease.rs`: the lease reduced to what the election needs, behind a small trait, with an
//!   in-memory implementation that keeps the API server's 409 rule (tests).
//! * `elector.rs`: the election state machine (acquire, renew, step down, release).
//! * `kube.rs`: the trait on a real API server (kube-rs `Api<Lease>`).
//! * `adopt.rs`: records for the instances a previous leader created.
//! * `driver.rs`: runs the reconcile loop only while this replica leads.
//!
//! Fencing: [`Leadership`] holds the monotonic instant until which this replica may act
//! ("valid until" = when the last successful renew was *sent* + `renew_deadline`). Every
//! create and delete checks it right before it talks to Forgejo or a backend ([`Fence`]), and
//! a call in flight is abandoned when the instant passes. A follower takes over only
//! `lease_duration` after it saw the last renew, which is later than that instant by at least
//! `lease_duration - renew_deadline`. ARCHITECTURE.md (invariants) has the argument.

pub mod adopt;
pub mod driver;
pub mod elector;
pub mod kube;
pub mod lease;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use elector::{Elector, Timing};
pub use lease::{LeaseApi, LeaseError, LeaseRecord, MemoryLease};

/// What this replica does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the lease: observes, creates and deletes.
    Leader,
    /// Does not hold the lease: serves health and status, creates and deletes nothing.
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// The election as the rest of the daemon sees it (status, page, probes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    pub role: Role,
    /// This replica's identity (`holderIdentity` when it leads).
    pub identity: String,
    /// `namespace/name` of the lease.
    pub lease: String,
    /// The holder as last read from the lease (`None`: nobody, or not read yet).
    pub leader: Option<String>,
    /// `leaseTransitions` of the lease as last read or written: the fencing generation.
    pub generation: Option<i32>,
    /// Whether the last call to the API server about the lease succeeded.
    pub lease_readable: bool,
    /// Wall-clock time (unix ms) this replica took its current role.
    pub since_ms: u64,
}

/// Shared between the elector (which writes it) and everything that must not act without the
/// lease (which reads it).
pub struct Leadership {
    view: tokio::sync::watch::Sender<LeaderView>,
    /// Until when this replica may act (monotonic). `None` while it does not lead.
    valid_until: Mutex<Option<Instant>>,
    /// Last successful call to the API server about the lease.
    last_contact: Mutex<Option<Instant>>,
}

impl Leadership {
    pub fn new(identity: &str, lease: &str) -> Arc<Leadership> {
        let (view, _) = tokio::sync::watch::channel(LeaderView {
            role: Role::Follower,
            identity: identity.to_string(),
            lease: lease.to_string(),
            leader: None,
            generation: None,
            lease_readable: false,
            since_ms: crate::clock::now_ms(),
        });
        Arc::new(Leadership {
            view,
            valid_until: Mutex::new(None),
            last_contact: Mutex::new(None),
        })
    }

    pub fn view(&self) -> LeaderView {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<LeaderView> {
        self.view.subscribe()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut LeaderView)) {
        self.view.send_if_modified(|view| {
            let before = view.clone();
            f(view);
            *view != before
        });
    }

    /// Until when this replica may act, if it leads.
    pub fn valid_until(&self) -> Option<Instant> {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_valid_until(&self, until: Option<Instant>) {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    pub(crate) fn contact(&self, ok: bool) {
        if ok {
            *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        self.update(|v| v.lease_readable = ok);
    }

    /// Time since the last successful call about the lease.
    pub fn since_contact(&self) -> Option<std::time::Duration> {
        self.last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| at.elapsed())
    }

    /// Whether this replica may act at this instant.
    pub fn acting(&self) -> bool {
        self.valid_until()
            .is_some_and(|until| Instant::now() < until)
    }
}

/// Raised by a fenced call that was refused or abandoned because the lease is not (or no
/// longer) held.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not acting: this replica does not hold the lease {lease} (fenced before {operation})")]
pub struct Fenced {
    pub lease: String,
    pub operation: &'static str,
}

/// The check every create and delete makes right before it talks to Forgejo or a backend.
/// Without `[ha]` it always passes.
#[derive(Clone, Default)]
pub struct Fence(Option<Arc<Leadership>>);

impl Fence {
    /// No election: this process always acts (the state-directory lock keeps it single).
    pub fn none() -> Fence {
        Fence(None)
    }

    pub fn of(leadership: Arc<Leadership>) -> Fence {
        Fence(Some(leadership))
    }

    pub fn leadership(&self) -> Option<&Arc<Leadership>> {
        self.0.as_ref()
    }

    /// `Ok` when this replica may act now.
    pub fn check(&self, operation: &'static str) -> Result<(), Fenced> {
        match &self.0 {
            None => Ok(()),
            Some(l) if l.acting() => Ok(()),
            Some(l) => Err(Fenced {
                lease: l.view.borrow().lease.clone(),
                operation,
            }),
        }
    }

    /// Runs `call` if this replica may act now, and abandons it (drops the future, which
    /// closes its connection) when the lease validity ends before it completes. Renewals
    /// during the call extend the validity: only a lapse ends it.
    pub async fn guard<T, E>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T>
    where
        E: Into<anyhow::Error>,
    {
        self.check(operation)?;
        let Some(leadership) = self.0.as_ref() else {
            return call.await.map_err(Into::into);
        };
        tokio::pin!(call);
        loop {
            let Some(until) = leadership.valid_until().filter(|u| *u > Instant::now()) else {
                return Err(Fenced {
                    lease: leadership.view.borrow().lease.clone(),
                    operation,
                }
                .into());
            };
            tokio::select! {
                result = &mut call => return result.map_err(Into::into),
                // Look again: a renew may have moved the instant on.
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// The wall-clock now as a Kubernetes `MicroTime` (RFC 3339, microseconds, UTC).
pub fn micro_time_now() -> String {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(crate::clock::now_ms());
    humantime::format_rfc3339_micros(now).to_string()
}

/// The default identity: host name and process id, so two replicas (or a replica and its
/// restart) never share one.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}_{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_fence_closes_at_the_validity_instant() {
        let leadership = Leadership::new("me", "ns/lease");
        let fence = Fence::of(leadership.clone());
        assert!(fence.check("create").is_err(), "a follower never acts");
        leadership.set_valid_until(Some(Instant::now() + std::time::Duration::from_secs(2)));
        assert!(fence.check("create").is_ok());
        // A call still running when the validity ends is abandoned.
        let slow = fence
            .guard("create", async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                Ok::<_, std::io::Error>(())
            })
            .await;
        let err = slow.unwrap_err().to_string();
        assert!(err.contains("fenced before create"), "{err}");
        assert!(fence.check("delete").is_err());
        assert!(Fence::none().check("delete").is_ok());
    }

    /// A call longer than the validity left when it started completes if the lease is renewed
    /// meanwhile (found by e2e_ha: 3 s container creations were abandoned under a 3 s
    /// renew_deadline although every renew succeeded).
    #[tokio::test(start_paused = true)]
    async fn renewals_during_a_call_keep_it_alive() {
        let leadership = Leadership::new("me", "ns/lease");
        let fence = Fence::of(leadership.clone());
        let second = std::time::Duration::from_secs(1);
        leadership.set_valid_until(Some(Instant::now() + 2 * second));
        let renewer = {
            let leadership = leadership.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(second).await;
                    leadership.set_valid_until(Some(Instant::now() + 2 * second));
                }
            })
        };
        let long = fence
            .guard("create", async {
                tokio::time::sleep(4 * second).await;
                Ok::<_, std::io::Error>("done")
            })
            .await;
        assert_eq!(long.unwrap(), "done");
        renewer.await.unwrap();
        // The last renewal was at 5 s (now): the validity ends at 7 s and a call still
        // running then is abandoned.
        let started = Instant::now();
        let cut = fence
            .guard("create", async {
                tokio::time::sleep(10 * second).await;
                Ok::<_, std::io::Error>("done")
            })
            .await;
        assert!(cut.is_err());
        assert_eq!(Instant::now() - started, 2 * second);
    }

    #[test]
    fn micro_time_is_rfc3339_with_microseconds() {
        let text = micro_time_now();
        assert!(
            text.ends_with('Z') && text.len() == "2026-01-01T00:00:00.000000Z".len(),
            "{text}"
        );
        assert!(humantime::parse_rfc3339(&text).is_ok());
    }
}
