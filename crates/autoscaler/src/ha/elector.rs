//! The election state machine on one Lease, after client-go's `leaderelection` (read for its
//! rules, not copied): acquire a free or expired lease with an optimistic-concurrency write,
//! renew it every `retry_period`, step down when it cannot be renewed within `renew_deadline`.
//!
//! Differences from client-go, each for safety:
//! * Expiry is judged on this process's monotonic clock from the moment it *first saw* the
//!   current version of the lease (never from the `renewTime` written by another machine's
//!   wall clock), so an offset between the machines' clocks cannot shorten the wait.
//! * The leader renews with a PUT carrying the `resourceVersion` of its own last write: any
//!   write by someone else in between (a takeover, an operator, a second replica configured
//!   with the same identity) makes the renew fail with 409 and the leader steps down at once.
//! * A lease that names this identity but was not acquired by this process (a restart with the
//!   same host name and pid, or a duplicated identity) is treated like anyone else's: it is
//!   taken over only after it expired.
//! * Every acquisition increments `leaseTransitions`, the fencing generation logged and shown
//!   in the status.

use std::{sync::Arc, time::Duration};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::time::Instant;

use super::{micro_time_now, Leadership, LeaseApi, LeaseError, LeaseRecord, Role};

/// The three durations of the election (`[ha]`; validated so that
/// `retry_period < renew_deadline < lease_duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease lasts after its last renew, as written in `leaseDurationSeconds` and
    /// as followers wait it out. Whole seconds.
    pub lease_duration: Duration,
    /// How long a leader keeps acting after its last successful renew was sent.
    pub renew_deadline: Duration,
    /// How often the leader renews and followers look.
    pub retry_period: Duration,
}

impl Timing {
    /// Longest a single call to the API server may take: a hung call must not keep the leader
    /// from noticing its deadline.
    fn call_timeout(&self) -> Duration {
        (self.renew_deadline / 2).max(Duration::from_millis(200))
    }
}

/// What this elector holds while it leads.
#[derive(Debug, Clone)]
struct Held {
    /// The lease as this elector last wrote it (its `resourceVersion` is the one to renew).
    record: LeaseRecord,
    /// When the write that last succeeded was sent.
    renewed_at: Instant,
}

pub struct Elector {
    api: Arc<dyn LeaseApi>,
    identity: String,
    timing: Timing,
    leadership: Arc<Leadership>,
    /// The lease version last seen and when it was first seen (monotonic).
    observed: Option<(LeaseRecord, Instant)>,
    held: Option<Held>,
    leader_gauge: Option<Gauge>,
    transitions: Option<Counter>,
}

impl Elector {
    pub fn new(
        api: Arc<dyn LeaseApi>,
        identity: &str,
        timing: Timing,
        leadership: Arc<Leadership>,
    ) -> Elector {
        Elector {
            api,
            identity: identity.to_string(),
            timing,
            leadership,
            observed: None,
            held: None,
            leader_gauge: None,
            transitions: None,
        }
    }

    /// Keeps `forgejo_autoscaler_leader` and the transitions counter up to date.
    pub fn with_metrics(mut self, leader: Gauge, transitions: Counter) -> Elector {
        leader.set(0);
        self.leader_gauge = Some(leader);
        self.transitions = Some(transitions);
        self
    }

    pub fn is_leader(&self) -> bool {
        self.held.is_some()
    }

    /// One step of the state machine; returns how long to wait before the next one.
    pub async fn step(&mut self) -> Duration {
        if self.held.is_some() {
            self.renew().await
        } else {
            self.try_acquire().await
        }
    }

    /// Runs until `stop` fires, then releases the lease if it is held (so a follower takes
    /// over at once instead of after `lease_duration`). The caller must have stopped acting
    /// before it fires.
    pub async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        loop {
            let wait = self.step().await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => break,
            }
        }
        self.release().await;
    }

    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, LeaseError>>,
    ) -> Result<T, LeaseError> {
        let result = match tokio::time::timeout(self.timing.call_timeout(), call).await {
            Ok(result) => result,
            Err(_) => Err(LeaseError::Other(format!(
                "no answer from the API server within {:?}",
                self.timing.call_timeout()
            ))),
        };
        // A 409 or 404 is an answer: the API server was reached.
        self.leadership
            .contact(!matches!(result, Err(LeaseError::Other(_))));
        result
    }

    async fn try_acquire(&mut self) -> Duration {
        let retry = self.timing.retry_period;
        let current = match self.call(self.api.get()).await {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(lease = %self.api.name(), error = %e, "cannot read the lease");
                return retry;
            }
        };
        let Some(current) = current else {
            return self.create().await;
        };
        let now = Instant::now();
        let first_seen = match &self.observed {
            Some((seen, at)) if seen.resource_version == current.resource_version => *at,
            _ => now,
        };
        self.observed = Some((current.clone(), first_seen));
        self.leadership.update(|v| {
            v.leader = current.holder().map(str::to_string);
            v.generation = Some(current.transitions);
        });
        if let Some(holder) = current.holder() {
            let duration = self.timing.lease_duration.max(Duration::from_secs(
                current.lease_duration_s.unwrap_or(0).max(0) as u64,
            ));
            let expires = first_seen + duration;
            if now < expires {
                return retry.min(expires - now);
            }
            tracing::info!(lease = %self.api.name(), previous = %holder, unchanged_for = ?now - first_seen, "the lease expired; taking it over");
        }
        let next = LeaseRecord {
            holder: Some(self.identity.clone()),
            lease_duration_s: Some(self.timing.lease_duration.as_secs() as i32),
            acquire_time: Some(micro_time_now()),
            renew_time: Some(micro_time_now()),
            transitions: current.transitions.saturating_add(1),
            resource_version: current.resource_version.clone(),
        };
        let sent = Instant::now();
        match self.call(self.api.replace(&next)).await {
            Ok(stored) => {
                self.lead(stored, sent);
                retry
            }
            Err(LeaseError::Conflict) | Err(LeaseError::NotFound) => {
                tracing::info!(lease = %self.api.name(), "another replica wrote the lease first");
                retry / 4
            }
            Err(e) => {
                tracing::warn!(lease = %self.api.name(), error = %e, "cannot take the lease");
                retry
            }
        }
    }

    async fn create(&mut self) -> Duration {
        let record = LeaseRecord {
            holder: Some(self.identity.clone()),
            lease_duration_s: Some(self.timing.lease_duration.as_secs() as i32),
            acquire_time: Some(micro_time_now()),
            renew_time: Some(micro_time_now()),
            transitions: 0,
            resource_version: String::new(),
        };
        let sent = Instant::now();
        match self.call(self.api.create(&record)).await {
            Ok(stored) => {
                self.lead(stored, sent);
                self.timing.retry_period
            }
            Err(LeaseError::Conflict) => self.timing.retry_period / 4,
            Err(e) => {
                tracing::warn!(lease = %self.api.name(), error = %e, "cannot create the lease");
                self.timing.retry_period
            }
        }
    }

    fn lead(&mut self, stored: LeaseRecord, sent: Instant) {
        let generation = stored.transitions;
        self.held = Some(Held {
            record: stored.clone(),
            renewed_at: sent,
        });
        self.observed = Some((stored, sent));
        self.leadership
            .set_valid_until(Some(sent + self.timing.renew_deadline));
        let identity = self.identity.clone();
        self.leadership.update(|v| {
            v.role = Role::Leader;
            v.leader = Some(identity);
            v.generation = Some(generation);
            v.since_ms = crate::clock::now_ms();
        });
        if let Some(g) = &self.leader_gauge {
            g.set(1);
        }
        if let Some(c) = &self.transitions {
            c.inc();
        }
        tracing::info!(lease = %self.api.name(), identity = %self.identity, generation, "became the leader");
    }

    async fn renew(&mut self) -> Duration {
        let Some(held) = self.held.clone() else {
            return Duration::ZERO;
        };
        let deadline = held.renewed_at + self.timing.renew_deadline;
        let due = held.renewed_at + self.timing.retry_period;
        let now = Instant::now();
        if now < due {
            return due - now;
        }
        if now >= deadline {
            self.step_down("the lease could not be renewed within renew_deadline");
            return self.timing.retry_period;
        }
        let mut next = held.record.clone();
        next.renew_time = Some(micro_time_now());
        next.lease_duration_s = Some(self.timing.lease_duration.as_secs() as i32);
        let sent = Instant::now();
        match self.call(self.api.replace(&next)).await {
            Ok(stored) => {
                self.leadership
                    .set_valid_until(Some(sent + self.timing.renew_deadline));
                self.held = Some(Held {
                    record: stored.clone(),
                    renewed_at: sent,
                });
                self.observed = Some((stored, sent));
                self.timing.retry_period
            }
            Err(LeaseError::Conflict) => {
                self.step_down("someone else wrote the lease (409 on renew)");
                self.timing.retry_period
            }
            Err(LeaseError::NotFound) => {
                self.step_down("the lease was deleted");
                self.timing.retry_period
            }
            Err(e) => {
                let now = Instant::now();
                tracing::warn!(lease = %self.api.name(), error = %e, left = ?deadline.saturating_duration_since(now), "cannot renew the lease; retrying until renew_deadline");
                if now >= deadline {
                    self.step_down("the lease could not be renewed within renew_deadline");
                    return self.timing.retry_period;
                }
                // Try again soon, but wake up at the deadline at the latest.
                (self.timing.retry_period / 2).min(deadline - now)
            }
        }
    }

    fn step_down(&mut self, why: &str) {
        // The fence closes first: from here on nothing is created or deleted.
        self.leadership.set_valid_until(None);
        let generation = self.held.take().map(|h| h.record.transitions);
        // Start the expiry clock afresh: what was seen while leading says nothing about others.
        self.observed = None;
        self.leadership.update(|v| {
            v.role = Role::Follower;
            v.since_ms = crate::clock::now_ms();
        });
        if let Some(g) = &self.leader_gauge {
            g.set(0);
        }
        tracing::warn!(lease = %self.api.name(), identity = %self.identity, generation, reason = why, "stepped down: no longer acting");
    }

    /// Gives the lease up (holder cleared, duration 1 s) so a follower takes over at once.
    pub async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        self.leadership.set_valid_until(None);
        let mut next = held.record.clone();
        next.holder = None;
        next.lease_duration_s = Some(1);
        next.renew_time = Some(micro_time_now());
        match self.call(self.api.replace(&next)).await {
            Ok(_) => {
                tracing::info!(lease = %self.api.name(), generation = held.record.transitions, "released the lease")
            }
            Err(e) => {
                tracing::warn!(lease = %self.api.name(), error = %e, "cannot release the lease; the next leader waits for it to expire")
            }
        }
        self.leadership.update(|v| {
            v.role = Role::Follower;
            v.leader = None;
            v.since_ms = crate::clock::now_ms();
        });
        if let Some(g) = &self.leader_gauge {
            g.set(0);
        }
    }
}

#[cfg(test)]
mod tests;
