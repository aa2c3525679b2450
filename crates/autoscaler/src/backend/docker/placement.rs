//! Which engine of a pool gets the next container, and how long a failing engine is left alone.
//!
//! Both are pure (the clock is a parameter) so that the choice is unit-tested without engines:
//!
//! * Placement: the engine with the fewest of the pool's containers (reservations included), ties
//!   to the engine listed first; engines backing off are skipped. When every engine backs off,
//!   the one whose backoff ends first is tried (a single probe: the pool's own backoff in the
//!   reconciler already spaces such attempts, and a pool with one engine keeps working as soon
//!   as its engine is back).
//! * Backoff: 5 s after the first failure, doubling up to 2 minutes; any success clears it. A
//!   successful listing clears only an "unreachable" backoff: an engine that answers but refused
//!   a container (image missing, disk full) must not be offered the next one at once.

use std::time::{Duration, Instant};

/// Backoff after the first failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest backoff.
pub const BACKOFF_CAP: Duration = Duration::from_secs(120);

/// One engine as the placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLoad {
    /// The pool's containers on the engine (running, exited but not yet removed, being created).
    pub containers: usize,
    /// Time left in the engine's backoff; `None` when it may be used.
    pub backing_off_for: Option<Duration>,
}

/// The engines to try, best first (indexes into `engines`).
pub fn placement_order(engines: &[EngineLoad]) -> Vec<usize> {
    let mut ready: Vec<usize> = (0..engines.len())
        .filter(|&i| engines[i].backing_off_for.is_none())
        .collect();
    ready.sort_by_key(|&i| (engines[i].containers, i));
    if ready.is_empty() {
        return (0..engines.len())
            .min_by_key(|&i| (engines[i].backing_off_for, i))
            .into_iter()
            .collect();
    }
    ready
}

/// What a failure or success changed, for a log line per change of state (not per attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing worth a log line: same state as before.
    None,
    /// The engine went from usable (or refusing) to unreachable.
    Unreachable(Duration),
    /// The engine answers but refused a container.
    Refusing(Duration),
    /// The engine is usable again.
    Recovered,
}

/// The health of one engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    failures: u32,
    until: Option<Instant>,
    unreachable: bool,
}

impl Health {
    /// Time left in the backoff at `now`, if any.
    pub fn backing_off_for(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Whether the listing should skip the engine at `now`: it could not be reached and its
    /// backoff has not ended (then one listing probes it again).
    pub fn skip_listing(&self, now: Instant) -> bool {
        self.unreachable && self.backing_off_for(now).is_some()
    }

    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }

    /// A request failed; `unreachable` when it never reached a working engine.
    pub fn failed(&mut self, now: Instant, unreachable: bool) -> Change {
        let was_failing = self.failures > 0;
        let was_unreachable = self.unreachable;
        self.failures = self.failures.saturating_add(1);
        self.unreachable = unreachable;
        let wait = backoff(self.failures);
        self.until = Some(now + wait);
        match (unreachable, was_failing, was_unreachable) {
            (true, _, false) => Change::Unreachable(wait),
            (false, false, _) | (false, true, true) => Change::Refusing(wait),
            _ => Change::None,
        }
    }

    /// A container was created, or (`listing_only`) a listing worked, which clears an
    /// unreachable state but not a refusal.
    pub fn succeeded(&mut self, listing_only: bool) -> Change {
        if self.failures == 0 || (listing_only && !self.unreachable) {
            return Change::None;
        }
        *self = Health::default();
        Change::Recovered
    }
}

/// The backoff after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(containers: usize, backing_off_for: Option<u64>) -> EngineLoad {
        EngineLoad {
            containers,
            backing_off_for: backing_off_for.map(Duration::from_secs),
        }
    }

    #[test]
    fn the_engine_with_the_fewest_containers_comes_first() {
        assert_eq!(
            placement_order(&[load(3, None), load(1, None), load(2, None)]),
            [1, 2, 0]
        );
    }

    #[test]
    fn ties_go_to_the_engine_listed_first_so_a_burst_alternates() {
        assert_eq!(placement_order(&[load(0, None), load(0, None)]), [0, 1]);
        assert_eq!(placement_order(&[load(1, None), load(1, None)]), [0, 1]);
        // Placing one after another spreads evenly.
        let mut counts = [0usize; 3];
        for _ in 0..9 {
            let loads: Vec<EngineLoad> = counts.iter().map(|&c| load(c, None)).collect();
            counts[placement_order(&loads)[0]] += 1;
        }
        assert_eq!(counts, [3, 3, 3]);
    }

    #[test]
    fn engines_backing_off_are_skipped_even_when_emptier() {
        assert_eq!(
            placement_order(&[load(0, Some(30)), load(5, None), load(7, None)]),
            [1, 2]
        );
    }

    #[test]
    fn when_every_engine_backs_off_only_the_one_back_soonest_is_probed() {
        assert_eq!(
            placement_order(&[load(0, Some(90)), load(4, Some(10)), load(1, Some(60))]),
            [1]
        );
        assert_eq!(placement_order(&[load(0, Some(5)), load(0, Some(5))]), [0]);
        assert!(placement_order(&[]).is_empty());
    }

    #[test]
    fn backoff_doubles_from_5_s_up_to_2_minutes() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 120, 120, 120]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn health_logs_changes_of_state_only() {
        let t0 = Instant::now();
        let mut health = Health::default();
        assert_eq!(health.backing_off_for(t0), None);
        assert!(!health.skip_listing(t0));
        assert_eq!(
            health.failed(t0, true),
            Change::Unreachable(Duration::from_secs(5))
        );
        assert!(health.skip_listing(t0 + Duration::from_secs(4)));
        assert!(!health.skip_listing(t0 + Duration::from_secs(5)));
        // The probe fails again: longer backoff, no new log line.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(health.failed(t1, true), Change::None);
        assert_eq!(health.backing_off_for(t1), Some(Duration::from_secs(10)));
        assert_eq!(health.succeeded(true), Change::Recovered);
        assert_eq!(health, Health::default());
        assert_eq!(health.succeeded(false), Change::None);
    }

    #[test]
    fn a_refusal_is_not_cleared_by_a_listing() {
        let t0 = Instant::now();
        let mut health = Health::default();
        assert_eq!(
            health.failed(t0, false),
            Change::Refusing(Duration::from_secs(5))
        );
        // Reachable: still listed, but not offered containers until the backoff ends.
        assert!(!health.skip_listing(t0));
        assert_eq!(health.succeeded(true), Change::None);
        assert!(health.backing_off_for(t0).is_some());
        // Refused again, then unreachable: one line each.
        assert_eq!(health.failed(t0, false), Change::None);
        assert_eq!(
            health.failed(t0, true),
            Change::Unreachable(Duration::from_secs(20))
        );
        assert_eq!(
            health.failed(t0, false),
            Change::Refusing(Duration::from_secs(40))
        );
        assert_eq!(health.succeeded(false), Change::Recovered);
    }
}
