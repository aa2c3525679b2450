//! Forgejo's Actions cron jobs (contract §3.2, §3.3, quirk 9), run by the scheduler in
//! simulated time. Each returns how many rows it changed.

use super::{Id, State, Status};

pub const ZOMBIE_TASK_TIMEOUT_MS: i64 = 10 * 60 * 1000;
pub const ENDLESS_TASK_TIMEOUT_MS: i64 = 3 * 60 * 60 * 1000;
pub const ABANDONED_JOB_TIMEOUT_MS: i64 = 24 * 60 * 60 * 1000;

/// `[cron.cleanup_offline_runners]`: disabled, 24 h, global scope only by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineCleanup {
    pub enabled: bool,
    pub older_than_ms: i64,
    pub global_scope_only: bool,
}

impl Default for OfflineCleanup {
    fn default() -> Self {
        OfflineCleanup {
            enabled: false,
            older_than_ms: 24 * 60 * 60 * 1000,
            global_scope_only: true,
        }
    }
}

impl State {
    fn running_tasks(&self) -> impl Iterator<Item = &super::Task> {
        self.listed
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| j.status == Status::Running)
            .filter_map(|j| self.tasks.get(&j.task_id))
    }

    /// `stop_zombie_tasks`: running tasks without an UpdateTask for 10 minutes fail.
    pub fn stop_zombie_tasks(&mut self, now_ms: i64) -> usize {
        let ids: Vec<Id> = self
            .running_tasks()
            .filter(|t| now_ms - t.updated_ms > ZOMBIE_TASK_TIMEOUT_MS)
            .map(|t| t.id)
            .collect();
        ids.iter()
            .for_each(|id| self.stop_task(*id, Status::Failure, now_ms));
        ids.len()
    }

    /// `stop_endless_tasks`: tasks running for more than 3 hours fail.
    pub fn stop_endless_tasks(&mut self, now_ms: i64) -> usize {
        let ids: Vec<Id> = self
            .running_tasks()
            .filter(|t| now_ms - t.started_ms > ENDLESS_TASK_TIMEOUT_MS)
            .map(|t| t.id)
            .collect();
        ids.iter()
            .for_each(|id| self.stop_task(*id, Status::Failure, now_ms));
        ids.len()
    }

    /// `cancel_abandoned_jobs`: waiting or blocked jobs not updated for 24 hours.
    pub fn cancel_abandoned_jobs(&mut self, now_ms: i64) -> usize {
        let ids: Vec<Id> = self
            .jobs
            .values()
            .filter(|j| matches!(j.status, Status::Waiting | Status::Blocked))
            .filter(|j| now_ms - j.updated_ms > ABANDONED_JOB_TIMEOUT_MS)
            .map(|j| j.id)
            .collect();
        ids.iter().for_each(|id| {
            self.cancel_job(*id, now_ms);
        });
        ids.len()
    }

    /// `cleanup_offline_runners` (when enabled): runners never online and created before the
    /// cutoff, or last online before it; only global ones unless configured otherwise.
    pub fn cleanup_offline_runners(&mut self, now_ms: i64) -> usize {
        let config = self.offline_cleanup.clone();
        if !config.enabled {
            return 0;
        }
        let cutoff = now_ms - config.older_than_ms.max(60_000);
        let ids: Vec<Id> = self
            .runners
            .values()
            .filter(|r| !r.deleted)
            .filter(|r| !config.global_scope_only || (r.owner_id == 0 && r.repo_id == 0))
            .filter(|r| match r.last_online_ms {
                None => r.created_ms < cutoff,
                Some(online) => online < cutoff,
            })
            .map(|r| r.id)
            .collect();
        ids.iter().for_each(|id| {
            self.delete_runner(*id);
        });
        ids.len()
    }

    /// `cleanup_actions` (15): ephemeral runners that have a finished task are deleted.
    pub fn cleanup_ephemeral_runners(&mut self) -> usize {
        if !self.version.has_ephemeral_runners() {
            return 0;
        }
        let ids: Vec<Id> = self
            .runners
            .values()
            .filter(|r| r.ephemeral && !r.deleted)
            .filter(|r| {
                self.tasks
                    .values()
                    .any(|t| t.runner_id == r.id && t.status.is_done())
            })
            .map(|r| r.id)
            .collect();
        ids.iter().for_each(|id| {
            self.delete_runner(*id);
        });
        ids.len()
    }
}
