//! Simulated time: real time sped up by `--time-scale`, plus manual jumps for tests.
//!
//! Everything the simulator stores (job timestamps, runner `last_online`, cron schedules,
//! timers) is in simulated unix milliseconds, so one factor scales all of it consistently.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct SimClock {
    started_real: Instant,
    started_unix_ms: i64,
    scale: f64,
    /// Milliseconds added by [`SimClock::advance`].
    offset_ms: AtomicI64,
}

impl SimClock {
    pub fn new(scale: f64) -> SimClock {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        SimClock {
            started_real: Instant::now(),
            started_unix_ms: unix_ms,
            scale,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Simulated unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        let elapsed = self.started_real.elapsed().as_secs_f64() * 1000.0 * self.scale;
        self.started_unix_ms + elapsed as i64 + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Jumps simulated time forward (tests of the 10 min / 3 h / 24 h timers).
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// Real duration that corresponds to `simulated` of Forgejo time.
    pub fn real_duration(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.scale)
    }
}
