//! The clockwork: workflow `on: schedule` crons and Forgejo's own Actions cron jobs, both
//! in simulated time (see [`crate::clock`]), so `--time-scale 60` runs an hourly schedule
//! every minute and the 10-minute zombie timer after 10 real seconds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use croner::Cron;
use tokio::sync::watch;

use crate::server::App;

/// The next time (unix ms, strictly after `after_ms`) a 5-field cron spec fires, in UTC.
/// `None` for a spec croner does not accept.
pub fn next_fire_ms(spec: &str, after_ms: i64) -> Option<i64> {
    let cron = Cron::new(spec.trim()).parse().ok()?;
    let after = Utc.timestamp_millis_opt(after_ms).single()?;
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Forgejo's Actions cron jobs with their default periods (contract §3.2, quirk 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronJob {
    StopZombieTasks,
    StopEndlessTasks,
    CancelAbandonedJobs,
    CleanupOfflineRunners,
    CleanupActions,
}

impl CronJob {
    pub const ALL: [CronJob; 5] = [
        CronJob::StopZombieTasks,
        CronJob::StopEndlessTasks,
        CronJob::CancelAbandonedJobs,
        CronJob::CleanupOfflineRunners,
        CronJob::CleanupActions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CronJob::StopZombieTasks => "stop_zombie_tasks",
            CronJob::StopEndlessTasks => "stop_endless_tasks",
            CronJob::CancelAbandonedJobs => "cancel_abandoned_jobs",
            CronJob::CleanupOfflineRunners => "cleanup_offline_runners",
            CronJob::CleanupActions => "cleanup_actions",
        }
    }

    pub fn from_name(name: &str) -> Option<CronJob> {
        CronJob::ALL.into_iter().find(|j| j.name() == name)
    }

    /// Next run after `now_ms`: `@every` periods, or midnight UTC for the daily ones.
    fn next_after(self, now_ms: i64) -> i64 {
        const MIN: i64 = 60_000;
        let every = |period: i64| now_ms + period;
        match self {
            CronJob::StopZombieTasks => every(5 * MIN),
            CronJob::StopEndlessTasks => every(30 * MIN),
            CronJob::CancelAbandonedJobs => every(6 * 60 * MIN),
            CronJob::CleanupOfflineRunners | CronJob::CleanupActions => {
                next_fire_ms("0 0 * * *", now_ms).unwrap_or(now_ms + 24 * 60 * MIN)
            }
        }
    }

    /// Runs the job now; returns the number of rows it changed.
    pub fn run(self, app: &App) -> usize {
        let now = app.now_ms();
        let mut state = app.lock();
        match self {
            CronJob::StopZombieTasks => state.stop_zombie_tasks(now),
            CronJob::StopEndlessTasks => state.stop_endless_tasks(now),
            CronJob::CancelAbandonedJobs => state.cancel_abandoned_jobs(now),
            CronJob::CleanupOfflineRunners => state.cleanup_offline_runners(now),
            CronJob::CleanupActions => state.cleanup_ephemeral_runners(),
        }
    }
}

/// Real time between two looks at the clock: one simulated second, within [10 ms, 1 s].
fn tick(app: &App) -> Duration {
    app.clock
        .real_duration(Duration::from_secs(1))
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Runs until `shutdown` changes: fires due workflow schedules and Forgejo cron jobs.
pub async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let start = app.now_ms();
    let mut next_runs: Vec<(CronJob, i64)> = CronJob::ALL
        .iter()
        .map(|j| (*j, j.next_after(start)))
        .collect();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(tick(&app)) => {}
        }
        let now = app.now_ms();
        app.lock().fire_due_schedules(now);
        for (job, next) in next_runs.iter_mut() {
            if *next <= now {
                job.run(&app);
                *next = job.next_after(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_minute_fires_on_the_next_minute() {
        let t = 1_700_000_010_000; // 10 s past a minute boundary
        let next = next_fire_ms("* * * * *", t).unwrap();
        assert_eq!(next % 60_000, 0);
        assert!(next > t && next - t <= 60_000);
        assert_eq!(next_fire_ms("not a cron", t), None);
    }
}
