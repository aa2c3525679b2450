//! The planner: a pure function from what was observed to what should be done.
//!
//! `plan(observed, pools, limits)` does no I/O and reads no clock, so its invariants are
//! property-tested (see the tests at the end) over thousands of random observed states:
//!
//! * Architecture invariant: never more instances than the global cap or a pool's cap;
//!   instances that are starting or being deleted count.
//! * Architecture invariant: never two live instances for one job attempt, and never more
//!   new instances than uncovered waiting jobs plus missing warm spares.
//! * Architecture invariant: never delete an instance whose runner is busy with a job, except
//!   when its job deadline passed, its runner was deleted under it (cancellation of an
//!   ephemeral runner), or the instance itself already exited or vanished.
//! * Architecture invariant: never decide "gone" from one observation: a job, runner or
//!   instance must be missing from two successful observations in a row; a failed fetch
//!   counts as "unknown", never as "missing".
//! * Every removal carries a [`Reason`].

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::{
    forgejo::{ApiScope, Job, JobStatus},
    pools::{best_pool, PoolSpec},
    store::InstanceState,
};

/// How runners get their credentials, which decides how busy-ness can be observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Forgejo 15+: one ephemeral runner per job attempt, pinned with `--handle`.
    Ephemeral,
    /// Forgejo 13/14: a bounded set of reused identities; `one-job` fetches once and exits.
    Identities,
}

/// The number of consecutive successful observations that must agree before something is
/// declared gone.
pub const CONFIRMATIONS: u32 = 2;

/// Forgejo 15: how long our runner must stay idle while its job runs before the job counts as
/// taken by another runner. Forgejo calls a runner idle 10 s after its last UpdateTask/UpdateLog
/// and a runner running a job reports every second, so 30 s of idleness is never a busy runner
/// between two heartbeats.
pub const TAKEN_BY_OTHER_AFTER_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobKey {
    pub id: i64,
    /// Forgejo 15: the attempt's handle.
    pub handle: Option<String>,
}

/// What the backend says about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendObs {
    Running,
    Exited {
        code: Option<i32>,
    },
    /// Not listed by a successful backend listing, `count` times in a row.
    Missing {
        count: u32,
    },
    /// The backend could not be asked this tick.
    Unknown,
}

/// What Forgejo says about the instance's runner (Forgejo 15 runners API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerObs {
    /// Reported an UpdateTask/UpdateLog in the last 10 s: running a job.
    Active,
    /// Online but not running a job.
    Idle,
    Offline,
    /// Not in a successful runners listing, `count` times in a row (an ephemeral runner is
    /// deleted by Forgejo when its job ends or is cancelled).
    Gone {
        count: u32,
    },
    Unknown,
    /// The strategy does not watch runners (13/14) or the instance has no runner yet.
    NotTracked,
}

/// Where the instance's job is in Forgejo's jobs listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobObs {
    Waiting,
    Running,
    Absent { count: u32 },
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub id: String,
    pub pool: String,
    pub scope: ApiScope,
    pub state: InstanceState,
    pub job: Option<JobKey>,
    pub created_ms: u64,
    pub state_since_ms: u64,
    pub busy_since_ms: Option<u64>,
    pub backend: BackendObs,
    pub runner: RunnerObs,
    pub job_obs: JobObs,
    /// Ticks in a row in which the job was running while our runner stayed idle (15).
    pub idle_while_job_running: u32,
    /// For how long (ms) that has been so.
    pub idle_while_job_running_ms: u64,
    /// An action on this instance is still being carried out.
    pub in_flight: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanView {
    /// Backend instance id, or Forgejo runner id for runners.
    pub key: String,
    /// The backend kind, for instances.
    pub backend: Option<String>,
    pub scope: Option<ApiScope>,
    pub first_seen_ms: u64,
    pub seen_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeJobs {
    pub scope: ApiScope,
    /// `None`: the listing failed this tick.
    pub jobs: Option<Vec<Job>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub now_ms: u64,
    pub strategy: Strategy,
    pub jobs: Vec<ScopeJobs>,
    pub instances: Vec<InstanceView>,
    pub orphan_instances: Vec<OrphanView>,
    pub orphan_runners: Vec<OrphanView>,
    /// Pools whose creations failed recently and wait out a backoff.
    pub backoff_pools: BTreeSet<String>,
    /// Shutting down: create nothing, remove idle instances.
    pub draining: bool,
    /// `--max-jobs`: how many more job instances may still be created (`None` = no limit).
    pub create_budget: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_runners: u32,
}

/// Why an instance is removed. Shown in metrics, the status page and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The runner ran its job and exited.
    JobDone,
    /// The runner exited without getting a task (another runner took the job, or it was cancelled).
    NoTask,
    /// The runner exited with an unexpected code.
    RunnerFailed,
    BootTimeout,
    PickupTimeout,
    JobTimeout,
    /// The job left the queue (cancelled, or finished elsewhere) before our runner picked it.
    JobGone,
    /// Forgejo 15: the job is running on another runner.
    TakenByOther,
    /// Forgejo 15: our runner's registration disappeared while the instance still ran
    /// (the job was cancelled: Forgejo deletes an ephemeral runner on cancellation).
    RunnerGone,
    InstanceLost,
    CreateFailed,
    Shutdown,
    /// A crash interrupted the instance's start; what it created is removed.
    Interrupted,
    Orphan,
    /// Removal did not finish within the teardown deadline and is tried again.
    TeardownRetry,
    /// `cleanup` command.
    Uninstall,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::JobDone => "job_done",
            Reason::NoTask => "no_task",
            Reason::RunnerFailed => "runner_failed",
            Reason::BootTimeout => "boot_timeout",
            Reason::PickupTimeout => "pickup_timeout",
            Reason::JobTimeout => "job_timeout",
            Reason::JobGone => "cancelled",
            Reason::TakenByOther => "taken_by_other",
            Reason::RunnerGone => "runner_gone",
            Reason::InstanceLost => "instance_lost",
            Reason::CreateFailed => "create_failed",
            Reason::Shutdown => "shutdown",
            Reason::Interrupted => "interrupted",
            Reason::Orphan => "orphan",
            Reason::TeardownRetry => "teardown_retry",
            Reason::Uninstall => "uninstall",
        }
    }

    pub const ALL: [Reason; 16] = [
        Reason::JobDone,
        Reason::NoTask,
        Reason::RunnerFailed,
        Reason::BootTimeout,
        Reason::PickupTimeout,
        Reason::JobTimeout,
        Reason::JobGone,
        Reason::TakenByOther,
        Reason::RunnerGone,
        Reason::InstanceLost,
        Reason::CreateFailed,
        Reason::Shutdown,
        Reason::Interrupted,
        Reason::Orphan,
        Reason::TeardownRetry,
        Reason::Uninstall,
    ];
}

/// A job the new instance is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    pub id: i64,
    pub handle: Option<String>,
    pub attempt: Option<i64>,
    pub name: String,
    pub runs_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an instance in `pool` with credentials of `scope`; `job: None` is a warm spare.
    Create {
        pool: String,
        scope: ApiScope,
        job: Option<JobRef>,
    },
    Delete {
        id: String,
        reason: Reason,
    },
    DeleteOrphanInstance {
        backend: String,
        key: String,
    },
    DeleteOrphanRunner {
        scope: ApiScope,
        runner_id: i64,
    },
}

/// A waiting job that no pool can serve: reported, never retried in a loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    pub job_id: i64,
    pub scope: ApiScope,
    pub name: String,
    pub runs_on: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Instances counted against the cap (starting, running, deleting).
    pub used: u32,
    pub cap: u32,
    pub waiting_jobs: u32,
    /// Waiting jobs that got no instance this tick because the pool or the global cap is reached.
    pub blocked_by_cap: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Instances seen picking their job this tick (their busy time starts now).
    pub became_busy: Vec<String>,
    pub unmatched: Vec<Unmatched>,
    pub pools: BTreeMap<String, PoolUsage>,
}

/// Decides what to do. Pure: same input, same output.
pub fn plan(observed: &Observed, pools: &[PoolSpec], limits: Limits) -> Plan {
    let mut out = Plan::default();
    let pool_by_name: BTreeMap<&str, &PoolSpec> =
        pools.iter().map(|p| (p.name.as_str(), p)).collect();

    for instance in &observed.instances {
        if instance.state == InstanceState::Gone || instance.in_flight {
            continue;
        }
        let busy = is_busy(observed.strategy, instance);
        if busy && instance.busy_since_ms.is_none() {
            out.became_busy.push(instance.id.clone());
        }
        let deadlines = match pool_by_name.get(instance.pool.as_str()) {
            Some(pool) => pool.deadlines,
            // A pool removed from the configuration: its instances finish, then go.
            None => pools
                .first()
                .map(|p| p.deadlines)
                .unwrap_or(DEFAULT_DEADLINES),
        };
        if let Some(reason) = removal_reason(observed, instance, busy, deadlines) {
            out.actions.push(Action::Delete {
                id: instance.id.clone(),
                reason,
            });
        }
    }

    for orphan in &observed.orphan_instances {
        if orphan_confirmed(observed, orphan, pools) {
            out.actions.push(Action::DeleteOrphanInstance {
                backend: orphan.backend.clone().unwrap_or_default(),
                key: orphan.key.clone(),
            });
        }
    }
    for orphan in &observed.orphan_runners {
        if let (true, Some(scope), Ok(runner_id)) = (
            orphan_confirmed(observed, orphan, pools),
            &orphan.scope,
            orphan.key.parse::<i64>(),
        ) {
            out.actions.push(Action::DeleteOrphanRunner {
                scope: scope.clone(),
                runner_id,
            });
        }
    }

    plan_creates(observed, pools, limits, &mut out);
    out
}

const DEFAULT_DEADLINES: crate::pools::Deadlines = crate::pools::Deadlines {
    boot: std::time::Duration::from_secs(120),
    pickup: std::time::Duration::from_secs(600),
    job: std::time::Duration::from_secs(3 * 3600),
    teardown: std::time::Duration::from_secs(60),
    orphan_grace: std::time::Duration::from_secs(120),
};

/// Whether the instance's runner has its job.
///
/// Forgejo 15: the job (this attempt) is running and our runner is active, or it was busy
/// before. Forgejo 13/14 cannot tell which runner took a job; an instance counts as busy once
/// the job it was started for left the queue (its runner's single fetch took that job or
/// another one; if it got none, the runner exits on its own).
pub fn is_busy(strategy: Strategy, instance: &InstanceView) -> bool {
    if instance.busy_since_ms.is_some() {
        return true;
    }
    if instance.state != InstanceState::Running {
        return false;
    }
    match strategy {
        Strategy::Ephemeral => {
            instance.job_obs == JobObs::Running && instance.runner == RunnerObs::Active
        }
        Strategy::Identities => {
            instance.job.is_some()
                && matches!(instance.job_obs, JobObs::Running | JobObs::Absent { .. })
        }
    }
}

fn removal_reason(
    observed: &Observed,
    instance: &InstanceView,
    busy: bool,
    deadlines: crate::pools::Deadlines,
) -> Option<Reason> {
    let now = observed.now_ms;
    let age_in_state = now.saturating_sub(instance.state_since_ms);
    let over = |limit: std::time::Duration| age_in_state > limit.as_millis() as u64;
    match instance.state {
        InstanceState::Gone => None,
        InstanceState::Deleting => over(deadlines.teardown).then_some(Reason::TeardownRetry),
        InstanceState::Starting => over(deadlines.boot).then_some(Reason::BootTimeout),
        InstanceState::Running => {
            match instance.backend {
                BackendObs::Exited { code } => return Some(exit_reason(code, busy)),
                BackendObs::Missing { count } if count >= CONFIRMATIONS => {
                    return Some(Reason::InstanceLost)
                }
                _ => {}
            }
            if let RunnerObs::Gone { count } = instance.runner {
                if count >= CONFIRMATIONS {
                    // Forgejo deletes an ephemeral runner when its job ends or is cancelled;
                    // the runner may not learn of a cancellation (contract §4 quirk 16), so the
                    // instance must be stopped by us.
                    return Some(match instance.job_obs {
                        JobObs::Absent { .. } if !busy => Reason::JobGone,
                        _ => Reason::RunnerGone,
                    });
                }
            }
            if busy {
                let busy_for =
                    now.saturating_sub(instance.busy_since_ms.unwrap_or(instance.state_since_ms));
                if busy_for > deadlines.job.as_millis() as u64 {
                    return Some(Reason::JobTimeout);
                }
                return None;
            }
            if instance.job.is_some() {
                if let JobObs::Absent { count } = instance.job_obs {
                    if count >= CONFIRMATIONS {
                        return Some(Reason::JobGone);
                    }
                }
            }
            if observed.strategy == Strategy::Ephemeral {
                if instance.idle_while_job_running > CONFIRMATIONS
                    && instance.idle_while_job_running_ms >= TAKEN_BY_OTHER_AFTER_MS
                {
                    return Some(Reason::TakenByOther);
                }
                if over(deadlines.pickup) {
                    return Some(Reason::PickupTimeout);
                }
            } else if instance.job.is_none() && over(deadlines.pickup) {
                return Some(Reason::PickupTimeout);
            }
            if observed.draining {
                return Some(Reason::Shutdown);
            }
            None
        }
    }
}

/// Reading of `one-job` exit codes (contract §2.2, quirk 12): 0 after running a task whatever
/// its result; 2 (12.8.2+), 1 (<= 12.7) or 0 (12.8.0/12.8.1) when no task came.
fn exit_reason(code: Option<i32>, busy: bool) -> Reason {
    match code {
        Some(0) => Reason::JobDone,
        // 2 means "no task" and nothing else; on 13/14 "busy" is only inferred from the job
        // leaving the queue, which a cancellation does too, so it must not turn 2 into JobDone.
        Some(2) => Reason::NoTask,
        Some(1) if !busy => Reason::NoTask,
        // No code recorded (the wrapper did not survive either): the job's outcome is Forgejo's
        // to tell; the instance had its job.
        None if busy => Reason::JobDone,
        // Any other code after the job started (128+n: killed by a signal, e.g. SIGKILL or the
        // OOM killer; 1: an error) means the runner died mid-job: not a done job.
        _ => Reason::RunnerFailed,
    }
}

fn orphan_confirmed(observed: &Observed, orphan: &OrphanView, pools: &[PoolSpec]) -> bool {
    let grace = pools
        .first()
        .map(|p| p.deadlines.orphan_grace)
        .unwrap_or(DEFAULT_DEADLINES.orphan_grace);
    orphan.seen_count >= CONFIRMATIONS
        && observed.now_ms.saturating_sub(orphan.first_seen_ms) >= grace.as_millis() as u64
}

fn plan_creates(observed: &Observed, pools: &[PoolSpec], limits: Limits, out: &mut Plan) {
    let live = |i: &&InstanceView| i.state != InstanceState::Gone;
    let mut used: BTreeMap<&str, u32> = BTreeMap::new();
    for instance in observed.instances.iter().filter(live) {
        *used.entry(instance.pool.as_str()).or_default() += 1;
    }
    let mut global_used: u32 = used.values().sum();
    for pool in pools {
        out.pools.insert(
            pool.name.clone(),
            PoolUsage {
                used: used.get(pool.name.as_str()).copied().unwrap_or(0),
                cap: pool.max_runners,
                ..Default::default()
            },
        );
    }
    // Jobs already served: by attempt handle (15) or job id (13/14). Instances being deleted do
    // not serve their job any more.
    let covered: HashSet<(i64, Option<&str>)> = observed
        .instances
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Starting | InstanceState::Running))
        .filter(|i| !is_removed_this_tick(out, &i.id))
        .filter_map(|i| i.job.as_ref().map(|j| (j.id, j.handle.as_deref())))
        .collect();

    let mut waiting: Vec<(&ApiScope, &Job)> = Vec::new();
    let mut seen_ids = HashSet::new();
    for scope_jobs in &observed.jobs {
        for job in scope_jobs.jobs.iter().flatten() {
            if job.status == JobStatus::Waiting && seen_ids.insert(job.id) {
                waiting.push((&scope_jobs.scope, job));
            }
        }
    }
    waiting.sort_by_key(|(_, job)| job.id);

    let can_create = !observed.draining;
    let mut budget = observed.create_budget;
    let mut pool_used: BTreeMap<String, u32> = pools
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                used.get(p.name.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();

    for (scope, job) in waiting {
        let Some(pool) = best_pool(pools, scope, &job.runs_on) else {
            out.unmatched.push(Unmatched {
                job_id: job.id,
                scope: scope.clone(),
                name: job.name.clone(),
                runs_on: job.runs_on.clone(),
            });
            continue;
        };
        let usage = out
            .pools
            .get_mut(&pool.name)
            .expect("every pool has a usage row");
        usage.waiting_jobs += 1;
        let key_handle = if observed.strategy == Strategy::Ephemeral {
            job.handle.as_deref()
        } else {
            None
        };
        let is_covered = covered.contains(&(job.id, key_handle))
            || (observed.strategy == Strategy::Identities
                && covered.iter().any(|(id, _)| *id == job.id));
        if is_covered
            || !can_create
            || observed.backoff_pools.contains(&pool.name)
            || budget == Some(0)
        {
            continue;
        }
        let pool_count = pool_used
            .get_mut(&pool.name)
            .expect("every pool is counted");
        if *pool_count >= pool.max_runners || global_used >= limits.max_runners {
            usage.blocked_by_cap += 1;
            continue;
        }
        *pool_count += 1;
        global_used += 1;
        usage.used += 1;
        budget = budget.map(|b| b - 1);
        out.actions.push(Action::Create {
            pool: pool.name.clone(),
            scope: scope.clone(),
            job: Some(JobRef {
                id: job.id,
                handle: key_handle.map(str::to_string),
                attempt: job.attempt,
                name: job.name.clone(),
                runs_on: job.runs_on.clone(),
            }),
        });
    }

    if !can_create || budget == Some(0) {
        return;
    }
    // Warm spares: idle instances without a job, ready for the next job of their pool.
    for pool in pools {
        if observed.backoff_pools.contains(&pool.name) {
            continue;
        }
        let idle_spares = observed
            .instances
            .iter()
            .filter(|i| i.pool == pool.name && i.job.is_none())
            .filter(|i| matches!(i.state, InstanceState::Starting | InstanceState::Running))
            .filter(|i| !is_busy(observed.strategy, i))
            .count() as u32;
        let Some(scope) = pool
            .scopes
            .as_ref()
            .and_then(|s| s.first().cloned())
            .or_else(|| observed.jobs.first().map(|j| j.scope.clone()))
        else {
            continue;
        };
        for _ in idle_spares..pool.warm_spares {
            let pool_count = pool_used
                .get_mut(&pool.name)
                .expect("every pool is counted");
            if *pool_count >= pool.max_runners || global_used >= limits.max_runners {
                break;
            }
            *pool_count += 1;
            global_used += 1;
            if let Some(usage) = out.pools.get_mut(&pool.name) {
                usage.used += 1;
            }
            out.actions.push(Action::Create {
                pool: pool.name.clone(),
                scope: scope.clone(),
                job: None,
            });
        }
    }
}

fn is_removed_this_tick(plan: &Plan, id: &str) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::Delete { id: d, .. } if d == id))
}

#[cfg(test)]
mod tests;
