//! The election state machine against the in-memory lease (which keeps the API server's 409
//! rule), on tokio's paused clock so that every duration is exact.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::{backend::BoxFuture, ha::MemoryLease};

const TIMING: Timing = Timing {
    lease_duration: Duration::from_secs(15),
    renew_deadline: Duration::from_secs(10),
    retry_period: Duration::from_secs(2),
};

/// One replica's view of the shared lease; `down` cuts this replica off the API server.
struct Link {
    lease: Arc<MemoryLease>,
    down: AtomicBool,
}

impl Link {
    fn new(lease: &Arc<MemoryLease>) -> Arc<Link> {
        Arc::new(Link {
            lease: lease.clone(),
            down: AtomicBool::new(false),
        })
    }

    fn unreachable<T: Send + 'static>(&self) -> Option<BoxFuture<'_, Result<T, LeaseError>>> {
        self.down
            .load(Ordering::SeqCst)
            .then(|| -> BoxFuture<'_, Result<T, LeaseError>> {
                Box::pin(async { Err(LeaseError::Other("partitioned".into())) })
            })
    }
}

impl LeaseApi for Link {
    fn name(&self) -> String {
        "test/lease".into()
    }
    fn get(&self) -> BoxFuture<'_, Result<Option<LeaseRecord>, LeaseError>> {
        self.unreachable().unwrap_or_else(|| self.lease.get())
    }
    fn create<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>> {
        self.unreachable()
            .unwrap_or_else(|| self.lease.create(record))
    }
    fn replace<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>> {
        self.unreachable()
            .unwrap_or_else(|| self.lease.replace(record))
    }
}

fn elector(api: Arc<dyn LeaseApi>, identity: &str) -> (Elector, Arc<Leadership>) {
    let leadership = Leadership::new(identity, "test/lease");
    (
        Elector::new(api, identity, TIMING, leadership.clone()),
        leadership,
    )
}

fn held_by(holder: &str) -> LeaseRecord {
    LeaseRecord {
        holder: Some(holder.into()),
        lease_duration_s: Some(15),
        renew_time: Some(micro_time_now()),
        transitions: 3,
        ..Default::default()
    }
}

/// Steps `e` until `until` (each step sleeping what it asked for).
async fn drive(e: &mut Elector, until: Instant) {
    while Instant::now() < until {
        let wait = e.step().await;
        tokio::time::sleep(
            wait.min(until - Instant::now())
                .max(Duration::from_millis(1)),
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn acquires_a_lease_that_does_not_exist() {
    let lease = Arc::new(MemoryLease::new());
    let (mut e, leadership) = elector(lease.clone(), "a");
    e.step().await;
    assert!(e.is_leader());
    assert!(leadership.acting());
    let stored = lease.current().unwrap();
    assert_eq!(stored.holder(), Some("a"));
    assert_eq!(stored.transitions, 0);
    assert_eq!(stored.lease_duration_s, Some(15));
    let view = leadership.view();
    assert_eq!((view.role, view.generation), (Role::Leader, Some(0)));
    // Acting ends renew_deadline after the write was sent, unless renewed.
    assert_eq!(
        leadership.valid_until(),
        Some(Instant::now() + TIMING.renew_deadline)
    );
}

#[tokio::test(start_paused = true)]
async fn acquires_a_released_lease_at_once_and_counts_the_transition() {
    let lease = Arc::new(MemoryLease::new());
    lease.overwrite(LeaseRecord {
        holder: None,
        lease_duration_s: Some(1),
        transitions: 4,
        ..Default::default()
    });
    let (mut e, leadership) = elector(lease.clone(), "a");
    e.step().await;
    assert!(leadership.acting());
    assert_eq!(lease.current().unwrap().transitions, 5);
    assert_eq!(leadership.view().generation, Some(5));
}

#[tokio::test(start_paused = true)]
async fn does_not_take_a_lease_that_is_renewed() {
    let lease = Arc::new(MemoryLease::new());
    lease.overwrite(held_by("b"));
    let (mut e, leadership) = elector(lease.clone(), "a");
    let start = Instant::now();
    // "b" renews every 2 s for a minute: a new resourceVersion each time.
    while Instant::now() < start + Duration::from_secs(60) {
        let wait = e.step().await;
        assert!(!e.is_leader() && !leadership.acting());
        tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
        if (Instant::now() - start).as_secs().is_multiple_of(2) {
            lease.overwrite(held_by("b"));
        }
    }
    let view = leadership.view();
    assert_eq!(view.role, Role::Follower);
    assert_eq!(view.leader.as_deref(), Some("b"));
    assert!(view.lease_readable);
}

#[tokio::test(start_paused = true)]
async fn takes_over_only_a_full_lease_duration_after_the_last_renew_was_seen() {
    let lease = Arc::new(MemoryLease::new());
    lease.overwrite(held_by("b"));
    let (mut e, leadership) = elector(lease.clone(), "a");
    let seen = Instant::now();
    e.step().await;
    assert!(!e.is_leader());
    drive(
        &mut e,
        seen + TIMING.lease_duration - Duration::from_millis(1),
    )
    .await;
    assert!(!e.is_leader(), "took over before the lease expired");
    drive(&mut e, seen + TIMING.lease_duration + TIMING.retry_period).await;
    assert!(e.is_leader());
    assert!(leadership.acting());
    let stored = lease.current().unwrap();
    assert_eq!(stored.holder(), Some("a"));
    assert_eq!(stored.transitions, 4, "a takeover is a new generation");
}

#[tokio::test(start_paused = true)]
async fn a_lease_naming_this_identity_from_an_earlier_life_is_waited_out() {
    let lease = Arc::new(MemoryLease::new());
    lease.overwrite(held_by("a"));
    let (mut e, _) = elector(lease.clone(), "a");
    e.step().await;
    assert!(
        !e.is_leader(),
        "a previous process with this identity may still act"
    );
    drive(
        &mut e,
        Instant::now() + TIMING.lease_duration + TIMING.retry_period,
    )
    .await;
    assert!(e.is_leader());
}

#[tokio::test(start_paused = true)]
async fn renews_every_retry_period_and_keeps_acting() {
    let lease = Arc::new(MemoryLease::new());
    let (mut e, leadership) = elector(lease.clone(), "a");
    e.step().await;
    let first = lease.current().unwrap().resource_version;
    drive(&mut e, Instant::now() + Duration::from_secs(60)).await;
    assert!(leadership.acting());
    let now = lease.current().unwrap();
    assert_ne!(now.resource_version, first);
    assert_eq!(now.transitions, 0, "renewing is not a transition");
    let left = leadership.valid_until().unwrap() - Instant::now();
    assert!(
        left >= TIMING.renew_deadline - TIMING.retry_period,
        "{left:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn steps_down_at_renew_deadline_strictly_before_anyone_can_take_over() {
    let lease = Arc::new(MemoryLease::new());
    let link_a = Link::new(&lease);
    let (mut a, leadership_a) = elector(link_a.clone(), "a");
    let (mut b, leadership_b) = elector(Link::new(&lease), "b");
    a.step().await;
    b.step().await;
    assert!(a.is_leader() && !b.is_leader());
    // Let a renew a few times, then cut it off the API server right after a renew.
    drive(&mut a, Instant::now() + Duration::from_secs(7)).await;
    let last_renew = a.held.as_ref().unwrap().renewed_at;
    link_a.down.store(true, Ordering::SeqCst);
    let a_stops = last_renew + TIMING.renew_deadline;
    let mut a_stopped_at = None;
    let mut b_started_at = None;
    let end = Instant::now() + Duration::from_secs(40);
    let (mut next_a, mut next_b) = (Instant::now(), Instant::now());
    while Instant::now() < end {
        if Instant::now() >= next_a {
            next_a = Instant::now() + a.step().await.max(Duration::from_millis(1));
        }
        if Instant::now() >= next_b {
            next_b = Instant::now() + b.step().await.max(Duration::from_millis(1));
        }
        assert!(
            !(leadership_a.acting() && leadership_b.acting()),
            "two replicas acting at once"
        );
        if a_stopped_at.is_none() && !leadership_a.acting() {
            a_stopped_at = Some(Instant::now());
        }
        if b_started_at.is_none() && leadership_b.acting() {
            b_started_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_stopped_at = a_stopped_at.expect("a stopped acting");
    assert!(
        a_stopped_at <= a_stops + Duration::from_millis(100),
        "a acted past renew_deadline"
    );
    assert!(!a.is_leader(), "a stepped down");
    let b_started_at = b_started_at.expect("b took over");
    assert!(
        b_started_at
            >= a_stops + (TIMING.lease_duration - TIMING.renew_deadline) - TIMING.retry_period,
        "b started {:?} after a's deadline",
        b_started_at - a_stops
    );
    assert!(b_started_at > a_stopped_at);
    assert_eq!(lease.current().unwrap().holder(), Some("b"));
    // a, reconnected, stays a follower.
    link_a.down.store(false, Ordering::SeqCst);
    drive(&mut a, Instant::now() + Duration::from_secs(5)).await;
    assert!(!a.is_leader());
    assert_eq!(leadership_a.view().leader.as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn a_transient_renew_failure_does_not_cost_the_lease() {
    let lease = Arc::new(MemoryLease::new());
    let (mut e, leadership) = elector(lease.clone(), "a");
    e.step().await;
    lease.fail_next(2);
    drive(&mut e, Instant::now() + Duration::from_secs(30)).await;
    assert!(e.is_leader() && leadership.acting());
    assert_eq!(lease.current().unwrap().transitions, 0);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_renew_steps_down_at_once() {
    let lease = Arc::new(MemoryLease::new());
    let (mut e, leadership) = elector(lease.clone(), "a");
    e.step().await;
    // Someone else writes the lease (e.g. a replica configured with the same identity).
    let mut theirs = lease.current().unwrap();
    theirs.renew_time = Some(micro_time_now());
    lease.overwrite(theirs);
    tokio::time::sleep(TIMING.retry_period).await;
    e.step().await;
    assert!(!e.is_leader());
    assert!(!leadership.acting());
    assert_eq!(leadership.view().role, Role::Follower);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_takeover_leaves_the_lease_to_the_winner() {
    let lease = Arc::new(MemoryLease::new());
    lease.overwrite(LeaseRecord {
        holder: None,
        transitions: 1,
        ..Default::default()
    });
    let (mut a, _) = elector(lease.clone(), "a");
    let (mut b, _) = elector(lease.clone(), "b");
    // Both read the free lease; a writes first; b's write carries the stale version.
    b.step().await;
    assert!(b.is_leader());
    a.step().await;
    assert!(
        !a.is_leader(),
        "a must not win with a stale resourceVersion"
    );
    assert_eq!(lease.current().unwrap().holder(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn release_hands_over_without_waiting_for_expiry() {
    let lease = Arc::new(MemoryLease::new());
    let (mut a, leadership_a) = elector(lease.clone(), "a");
    let (mut b, _) = elector(lease.clone(), "b");
    a.step().await;
    b.step().await;
    assert!(!b.is_leader());
    a.release().await;
    assert!(!leadership_a.acting());
    assert_eq!(lease.current().unwrap().holder(), None);
    b.step().await;
    assert!(b.is_leader());
    assert_eq!(lease.current().unwrap().transitions, 1);
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_the_role() {
    let lease = Arc::new(MemoryLease::new());
    let (e, _) = elector(lease.clone(), "a");
    let gauge = Gauge::default();
    let counter = Counter::default();
    let mut e = e.with_metrics(gauge.clone(), counter.clone());
    e.step().await;
    assert_eq!((gauge.get(), counter.get()), (1, 1));
    e.release().await;
    assert_eq!((gauge.get(), counter.get()), (0, 1));
}
