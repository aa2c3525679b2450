//! The reconcile loop (design.md "Three sources, one loop"): every tick it observes Forgejo's
//! jobs, Forgejo's runners (15), the backend's instances and the store, asks the pure planner
//! what to do, and hands the actions to an executor with bounded concurrency.
//!
//! The loop is level-triggered: a tick derives everything from what it observes, so a lost
//! wake-up, a failed action or a restart is repaired by the next tick. The only memory kept
//! between ticks is the confirmation counters (how many observations in a row agreed that
//! something is missing), the pools' creation backoff, and what was already reported.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    backend::{InstanceStatus, ObservedInstance},
    clock::now_ms,
    forgejo::{ApiScope, ForgejoError, Job, JobStatus, RunnerInfo},
    metrics::{PoolLabel, PoolReasonLabel, PoolStateLabel},
    plan::{
        self, Action, BackendObs, InstanceView, JobKey, JobObs, JobRef, Observed, OrphanView, Plan,
        Reason, RunnerObs, ScopeJobs, Strategy, Unmatched,
    },
    runtime::Runtime,
    store::{InstanceRecord, InstanceState},
};

/// How often the Forgejo 15 runners of a scope are listed when no instance needs them, to find
/// runners orphaned by a crash. When idle, the cost is one jobs request per scope per poll plus
/// one runners request per scope every five minutes.
const ORPHAN_SCAN_EVERY_MS: u64 = 5 * 60 * 1000;

/// A snapshot for the status API, `plan` and `explain`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub at_ms: u64,
    pub plan: Plan,
    pub instances: Vec<InstanceView>,
    pub jobs: Vec<ScopeJobs>,
    pub errors: Vec<String>,
    pub forgejo_reachable: bool,
}

#[derive(Default)]
struct Memory {
    job_absent: HashMap<String, u32>,
    backend_missing: HashMap<String, u32>,
    runner_gone: HashMap<String, u32>,
    /// Instance -> (ticks in a row, since when) its runner was idle while its job ran.
    idle_while_running: HashMap<String, (u32, u64)>,
    orphan_instances: HashMap<(String, String), (u64, u32)>,
    orphan_runners: HashMap<(ApiScope, i64), (u64, u32)>,
    unmatched_reported: HashSet<i64>,
    at_capacity: BTreeSet<String>,
    /// First time each waiting job was seen, for the job wait histogram.
    first_seen_waiting: HashMap<i64, (u64, String)>,
    ticks: u64,
    last_orphan_scan_ms: Option<u64>,
    last_errors: Vec<String>,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    until_ms: u64,
    /// Runners of the pool that exited without a task, in a row.
    no_task_streak: u32,
}

/// Pool backoff, shared by the executor's tasks.
type PoolBackoff = Arc<Mutex<HashMap<String, Backoff>>>;

/// Records a failure of `pool` (an API or backend refusal, or a runner that could not run) and
/// returns how long the pool now waits before its next creation: 2 s doubling up to 5 min.
/// Without it a runner binary that exits at once would be recreated on every tick.
fn pool_failed(backoff: &PoolBackoff, pool: &str) -> Duration {
    let mut backoff = backoff.lock().unwrap_or_else(|p| p.into_inner());
    let entry = backoff.entry(pool.to_string()).or_default();
    entry.failures += 1;
    let wait = Duration::from_secs(1u64 << entry.failures.min(8)).min(Duration::from_secs(300));
    entry.until_ms = now_ms() + wait.as_millis() as u64;
    wait
}

/// A runner of `pool` ran a job: the pool works, its backoff is forgotten.
fn pool_succeeded(backoff: &PoolBackoff, pool: &str) {
    backoff
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(pool);
}

/// A runner of `pool` exited without a task. A few in a row are normal races (another runner
/// was faster); a streak means the pool's runners cannot take its jobs, and it backs off.
fn pool_no_task(backoff: &PoolBackoff, pool: &str) -> Option<Duration> {
    let streak = {
        let mut backoff = backoff.lock().unwrap_or_else(|p| p.into_inner());
        let entry = backoff.entry(pool.to_string()).or_default();
        entry.no_task_streak += 1;
        entry.no_task_streak
    };
    (streak >= 3).then(|| pool_failed(backoff, pool))
}

pub struct Reconciler {
    rt: Arc<Runtime>,
    memory: Memory,
    in_flight: Arc<Mutex<HashSet<String>>>,
    backoff: PoolBackoff,
    semaphore: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// Jobs run to completion by our instances (for `--max-jobs`).
    jobs_done: Arc<std::sync::atomic::AtomicU32>,
    pub snapshot: Arc<Mutex<Snapshot>>,
}

/// What `run` should do and when to stop.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many jobs ran to completion on our runners.
    pub max_jobs: Option<u32>,
}

impl Reconciler {
    pub fn new(rt: Arc<Runtime>) -> Reconciler {
        let parallel = rt.config.limits.max_parallel_operations.max(1) as usize;
        Reconciler {
            rt,
            memory: Memory::default(),
            in_flight: Arc::default(),
            backoff: Arc::default(),
            semaphore: Arc::new(Semaphore::new(parallel)),
            tasks: JoinSet::new(),
            jobs_done: Arc::default(),
            snapshot: Arc::default(),
        }
    }

    pub fn jobs_done(&self) -> u32 {
        self.jobs_done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs until `shutdown` resolves (then drains) or `max_jobs` jobs are done.
    pub async fn run(
        mut self,
        options: RunOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<u32> {
        self.recover().await?;
        let poll = self.rt.config.forgejo.poll_interval;
        tokio::pin!(shutdown);
        loop {
            let budget = options.max_jobs.map(|max| self.create_budget(max));
            let done = options.max_jobs.is_some_and(|max| self.jobs_done() >= max);
            self.tick(done, budget).await;
            if done && self.idle()? {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = self.rt.wake.notified() => {
                    // Let sibling exits land in the same tick.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = &mut shutdown => {
                    let drain = self.rt.config.timeouts.drain;
                    tracing::info!(?drain, "shutting down: no new runners; running jobs may finish until the drain timeout");
                    return drain_then(self, drain).await;
                }
            }
        }
        while self.tasks.join_next().await.is_some() {}
        Ok(self.jobs_done())
    }

    /// Nothing live and nothing in flight.
    pub(crate) fn idle(&self) -> anyhow::Result<bool> {
        let in_flight = self.in_flight.lock().map(|s| s.is_empty()).unwrap_or(false);
        Ok(in_flight && self.tasks.is_empty() && self.rt.store.live_instances()?.is_empty())
    }

    /// Jobs still allowed to get an instance under `--max-jobs`.
    pub(crate) fn create_budget(&self, max: u32) -> u32 {
        let live_with_job = self
            .rt
            .store
            .live_instances()
            .map(|l| {
                l.iter()
                    .filter(|r| r.job_id.is_some() && r.state != InstanceState::Deleting)
                    .count() as u32
            })
            .unwrap_or(u32::MAX);
        max.saturating_sub(self.jobs_done())
            .saturating_sub(live_with_job)
    }

    /// After a restart: adopt what runs, remove what a crash interrupted.
    pub async fn recover(&mut self) -> anyhow::Result<()> {
        let records = self.rt.store.live_instances()?;
        // With [ha] a new leader also adopts what a previous leader created: its own store
        // does not know those instances (crate::ha::adopt).
        let ha = self.rt.fence.leadership().is_some();
        if records.is_empty() && !ha {
            return Ok(());
        }
        let known: HashSet<(String, String)> = records
            .iter()
            .map(|r| (r.backend.clone(), r.id.clone()))
            .collect();
        let listed = self.rt.backends.list_all().await;
        let mut by_id: HashMap<(&str, &str), &ObservedInstance> = HashMap::new();
        for (kind, list) in &listed {
            match list {
                Ok(list) => by_id.extend(list.iter().map(|i| ((*kind, i.id.as_str()), i))),
                Err(e) => anyhow::bail!("cannot list the {kind} backend's instances at start: {e}"),
            }
        }
        let now = now_ms();
        let mut adopted = 0;
        for record in records {
            match record.state {
                InstanceState::Starting => {
                    match by_id.get(&(record.backend.as_str(), record.id.as_str())) {
                        Some(found)
                            if found.status == InstanceStatus::Running
                                && record.runner_id.is_some() =>
                        {
                            self.rt
                                .store
                                .set_backend_ref(&record.id, &found.backend_ref)?;
                            self.rt.store.set_state(
                                &record.id,
                                InstanceState::Running,
                                now,
                                None,
                                Some("adopted after restart"),
                            )?;
                            adopted += 1;
                        }
                        _ => self.execute(Action::Delete {
                            id: record.id.clone(),
                            reason: Reason::Interrupted,
                        }),
                    }
                }
                // A removal this replica decided in an earlier term as leader: since then
                // another leader may have adopted the instance and given it work, so what
                // still runs is looked at afresh instead of being removed blindly.
                InstanceState::Deleting
                    if ha
                        && by_id
                            .get(&(record.backend.as_str(), record.id.as_str()))
                            .is_some_and(|found| found.status == InstanceStatus::Running) =>
                {
                    self.rt.store.set_state(
                        &record.id,
                        InstanceState::Running,
                        now,
                        None,
                        Some("removal decided in an earlier term; re-evaluated by this leader"),
                    )?;
                    adopted += 1;
                }
                InstanceState::Deleting => self.execute(Action::Delete {
                    id: record.id.clone(),
                    reason: Reason::TeardownRetry,
                }),
                InstanceState::Running => adopted += 1,
                InstanceState::Gone => {}
            }
        }
        if ha {
            adopted += self.adopt_unrecorded(&known, &listed).await?;
        }
        tracing::info!(adopted, "recovered state from the store");
        Ok(())
    }

    /// `[ha]`: records for the instances a previous leader created (`crate::ha::adopt`).
    /// Fails when a scope's runners cannot be listed: without them an instance's job is
    /// unknown, and the caller retries rather than start with a partial picture.
    async fn adopt_unrecorded(
        &mut self,
        known: &HashSet<(String, String)>,
        listed: &BTreeMap<
            &'static str,
            Result<Vec<ObservedInstance>, crate::backend::BackendError>,
        >,
    ) -> anyhow::Result<usize> {
        let unrecorded: Vec<(&str, &ObservedInstance)> = listed
            .iter()
            .flat_map(|(kind, list)| list.iter().flatten().map(move |i| (*kind, i)))
            .filter(|(kind, i)| !known.contains(&(kind.to_string(), i.id.clone())))
            .collect();
        if unrecorded.is_empty() {
            return Ok(0);
        }
        let mut runners = Vec::new();
        if self.rt.strategy == Strategy::Ephemeral {
            for scope in &self.rt.scopes {
                let list = self.rt.client.list_runners(scope).await.map_err(|e| {
                    anyhow::anyhow!("cannot list the runners of {scope} to adopt the instances of a previous leader: {e}")
                })?;
                runners.extend(list.into_iter().map(|r| (scope.clone(), r)));
            }
        }
        let tag = self.rt.provisioner.owner_tag();
        let fallback = self.rt.scopes.first().cloned().unwrap_or(ApiScope::User);
        let pools: Vec<(&str, ApiScope)> = self
            .rt
            .pools
            .iter()
            .map(|p| {
                let scope = p.scopes.as_ref().and_then(|s| s.first().cloned());
                (p.name.as_str(), scope.unwrap_or_else(|| fallback.clone()))
            })
            .collect();
        let now = now_ms();
        let mut adopted = 0;
        for (kind, instance) in unrecorded {
            match crate::ha::adopt::adoption_record(kind, instance, &runners, &tag, &pools, now) {
                Some(record) => {
                    self.rt.store.insert_instance(&record)?;
                    let detail = format!(
                        "adopted from a previous leader: runner {:?}, job {:?} (handle {:?})",
                        record.runner_id, record.job_id, record.job_handle
                    );
                    self.rt
                        .store
                        .record_event(now, Some(&record.id), "adopted", &detail)?;
                    tracing::info!(instance = %record.id, pool = %record.pool, backend = kind, runner_id = record.runner_id, job = record.job_id, "adopted an instance a previous leader created");
                    adopted += 1;
                }
                None => {
                    tracing::info!(instance = %instance.id, backend = kind, "an instance without a record or a runner registration; left to the orphan collection")
                }
            }
        }
        Ok(adopted)
    }

    /// One observation, plan and dispatch.
    pub async fn tick(&mut self, draining: bool, create_budget: Option<u32>) {
        let started = Instant::now();
        let (observed, errors) = self.observe(draining, create_budget).await;
        let plan = plan::plan(
            &observed,
            &self.rt.pools,
            plan::Limits {
                max_runners: self.rt.config.limits.max_runners,
            },
        );
        // With [ha], a replica whose lease lapsed during the observation plans but does not act.
        match self.rt.fence.check("acting on the plan") {
            Ok(()) => self.apply(&observed, &plan),
            Err(e) => tracing::info!(error = %e, "not acting on this tick's plan"),
        }
        self.log_error_changes(&errors);
        let reachable = observed.jobs.iter().any(|s| s.jobs.is_some());
        if reachable {
            self.rt
                .metrics
                .last_tick_success
                .set((now_ms() / 1000) as i64);
        }
        self.rt
            .metrics
            .tick_seconds
            .observe(started.elapsed().as_secs_f64());
        self.rt
            .metrics
            .sync_requests(&self.rt.client.request_counts());
        if let Ok(mut snapshot) = self.snapshot.lock() {
            *snapshot = Snapshot {
                at_ms: observed.now_ms,
                plan,
                instances: observed.instances,
                jobs: observed.jobs,
                errors,
                forgejo_reachable: reachable,
            };
        }
    }

    /// Logs observation errors at warn when they change (not on every tick), and once when
    /// they clear.
    fn log_error_changes(&mut self, errors: &[String]) {
        if errors == self.memory.last_errors.as_slice() {
            return;
        }
        if errors.is_empty() {
            tracing::info!("Forgejo and the backends can be read again");
        }
        for error in errors
            .iter()
            .filter(|e| !self.memory.last_errors.contains(e))
        {
            tracing::warn!(error = %error, "cannot observe; nothing is created or removed on what could not be read");
        }
        self.memory.last_errors = errors.to_vec();
    }

    /// Reads the three sources and the store. Never fails: what could not be read is
    /// `Unknown` / `None` and the error is returned for reporting.
    pub async fn observe(
        &mut self,
        draining: bool,
        create_budget: Option<u32>,
    ) -> (Observed, Vec<String>) {
        let rt = self.rt.clone();
        let mut errors = Vec::new();
        self.memory.ticks += 1;

        let mut jobs = Vec::new();
        for scope in &rt.scopes {
            let labels = rt
                .version
                .capabilities()
                .jobs_need_label_superset
                .then(|| crate::pools::label_query(&rt.pools, scope));
            match rt
                .client
                .list_jobs(scope, rt.version, labels.as_deref())
                .await
            {
                Ok(list) => jobs.push(ScopeJobs {
                    scope: scope.clone(),
                    jobs: Some(list),
                }),
                Err(e) => {
                    errors.push(e.to_string());
                    jobs.push(ScopeJobs {
                        scope: scope.clone(),
                        jobs: None,
                    });
                }
            }
        }

        let records = match rt.store.live_instances() {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("store: {e:#}"));
                Vec::new()
            }
        };
        let mut listed: BTreeMap<String, Option<Vec<ObservedInstance>>> = BTreeMap::new();
        for (kind, result) in rt.backends.list_all().await {
            rt.metrics.operation("list", result.is_ok());
            match result {
                Ok(list) => {
                    // A partial listing (an engine of several down) is reported like a failed one.
                    if let Ok(backend) = rt.backends.get(kind) {
                        errors.extend(backend.unlisted_parts());
                    }
                    listed.insert(kind.to_string(), Some(list))
                }
                Err(e) => {
                    errors.push(e.to_string());
                    listed.insert(kind.to_string(), None)
                }
            };
        }

        let runners = self.observe_runners(&records, &mut errors).await;
        let now = now_ms();
        let in_flight = self.in_flight.lock().map(|s| s.clone()).unwrap_or_default();
        let instances = records
            .iter()
            .map(|record| {
                let backend_list = listed.get(&record.backend).and_then(|l| l.as_deref());
                self.view(
                    record,
                    &jobs,
                    backend_list,
                    &runners,
                    in_flight.contains(&record.id),
                )
            })
            .collect();
        let orphan_instances = self.orphan_instances(&records, &listed, &in_flight, now);
        let orphan_runners = self.orphan_runners(&records, &runners, now);
        let backoff_pools = self
            .backoff
            .lock()
            .map(|b| {
                b.iter()
                    .filter(|(_, b)| b.until_ms > now)
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default();
        self.observe_job_waits(&jobs, now);
        let observed = Observed {
            now_ms: now,
            strategy: rt.strategy,
            jobs,
            instances,
            orphan_instances,
            orphan_runners,
            backoff_pools,
            draining,
            create_budget,
        };
        (observed, errors)
    }

    /// Forgejo 15: runners of each scope where we have runners (or periodically, for orphans).
    async fn observe_runners(
        &mut self,
        records: &[InstanceRecord],
        errors: &mut Vec<String>,
    ) -> BTreeMap<ApiScope, Option<Vec<RunnerInfo>>> {
        let mut out = BTreeMap::new();
        if self.rt.strategy != Strategy::Ephemeral {
            return out;
        }
        let now = now_ms();
        let scan_all = self
            .memory
            .last_orphan_scan_ms
            .is_none_or(|last| now.saturating_sub(last) >= ORPHAN_SCAN_EVERY_MS);
        if scan_all {
            self.memory.last_orphan_scan_ms = Some(now);
        }
        for scope in &self.rt.scopes {
            let needed = scan_all
                || records
                    .iter()
                    .any(|r| r.runner_id.is_some() && r.scope == scope.to_string());
            if !needed {
                continue;
            }
            match self.rt.client.list_runners(scope).await {
                Ok(list) => {
                    out.insert(scope.clone(), Some(list));
                }
                Err(e) => {
                    errors.push(e.to_string());
                    out.insert(scope.clone(), None);
                }
            }
        }
        out
    }

    fn view(
        &mut self,
        record: &InstanceRecord,
        jobs: &[ScopeJobs],
        listed: Option<&[ObservedInstance]>,
        runners: &BTreeMap<ApiScope, Option<Vec<RunnerInfo>>>,
        in_flight: bool,
    ) -> InstanceView {
        let scope: ApiScope = record.scope.parse().unwrap_or(ApiScope::User);
        let job = record.job_id.map(|id| JobKey {
            id,
            handle: record.job_handle.clone(),
        });
        // Its part of the backend was not read (an engine of several is down): not missing.
        let unlisted = record.backend_ref.as_deref().is_some_and(|r| {
            self.rt
                .backends
                .get(&record.backend)
                .is_ok_and(|b| b.unlisted(r))
        });
        let m = &mut self.memory;

        let backend = match listed {
            None => BackendObs::Unknown,
            Some(list) => match list.iter().find(|i| i.id == record.id) {
                Some(found) => {
                    m.backend_missing.remove(&record.id);
                    match found.status {
                        InstanceStatus::Running => BackendObs::Running,
                        InstanceStatus::Exited { code } => BackendObs::Exited { code },
                    }
                }
                None if record.state == InstanceState::Running && !unlisted => {
                    let count = bump(&mut m.backend_missing, &record.id);
                    BackendObs::Missing { count }
                }
                None => BackendObs::Unknown,
            },
        };

        let job_obs = match (
            &job,
            jobs.iter()
                .find(|s| s.scope == scope)
                .and_then(|s| s.jobs.as_ref()),
        ) {
            (None, _) | (_, None) => JobObs::Unknown,
            (Some(key), Some(list)) => {
                let found = list
                    .iter()
                    .find(|j| j.id == key.id && (key.handle.is_none() || j.handle == key.handle));
                match found {
                    Some(j) => {
                        m.job_absent.remove(&record.id);
                        if j.status == JobStatus::Running {
                            JobObs::Running
                        } else {
                            JobObs::Waiting
                        }
                    }
                    None => JobObs::Absent {
                        count: bump(&mut m.job_absent, &record.id),
                    },
                }
            }
        };

        let runner = match (record.runner_id, runners.get(&scope)) {
            (_, _) if self.rt.strategy != Strategy::Ephemeral => RunnerObs::NotTracked,
            (None, _) => RunnerObs::NotTracked,
            (Some(_), None) | (Some(_), Some(None)) => RunnerObs::Unknown,
            (Some(id), Some(Some(list))) => match list.iter().find(|r| r.id == id) {
                Some(r) => {
                    m.runner_gone.remove(&record.id);
                    match r.status.as_str() {
                        "active" => RunnerObs::Active,
                        "offline" => RunnerObs::Offline,
                        _ => RunnerObs::Idle,
                    }
                }
                None if record.state == InstanceState::Running => RunnerObs::Gone {
                    count: bump(&mut m.runner_gone, &record.id),
                },
                None => RunnerObs::Unknown,
            },
        };

        let (idle_while_job_running, idle_while_job_running_ms) =
            if job_obs == JobObs::Running && runner == RunnerObs::Idle {
                let now = now_ms();
                let entry = m
                    .idle_while_running
                    .entry(record.id.clone())
                    .or_insert((0, now));
                entry.0 += 1;
                (entry.0, now.saturating_sub(entry.1))
            } else {
                m.idle_while_running.remove(&record.id);
                (0, 0)
            };

        InstanceView {
            id: record.id.clone(),
            pool: record.pool.clone(),
            scope,
            state: record.state,
            job,
            created_ms: record.created_ms,
            state_since_ms: record.state_since_ms,
            busy_since_ms: record.busy_since_ms,
            backend,
            runner,
            job_obs,
            idle_while_job_running,
            idle_while_job_running_ms,
            in_flight,
        }
    }

    fn orphan_instances(
        &mut self,
        records: &[InstanceRecord],
        listed: &BTreeMap<String, Option<Vec<ObservedInstance>>>,
        in_flight: &HashSet<String>,
        now: u64,
    ) -> Vec<OrphanView> {
        let known: HashSet<(&str, &str)> = records
            .iter()
            .map(|r| (r.backend.as_str(), r.id.as_str()))
            .collect();
        let mut current: HashSet<(String, String)> = HashSet::new();
        for (kind, list) in listed {
            for instance in list.iter().flatten() {
                if !known.contains(&(kind.as_str(), instance.id.as_str()))
                    && !in_flight.contains(&instance.id)
                {
                    current.insert((kind.clone(), instance.id.clone()));
                }
            }
        }
        // A backend that could not be listed neither confirms nor clears its orphans.
        self.memory
            .orphan_instances
            .retain(|key, _| current.contains(key) || !matches!(listed.get(&key.0), Some(Some(_))));
        current
            .into_iter()
            .map(|key| {
                let entry = self
                    .memory
                    .orphan_instances
                    .entry(key.clone())
                    .or_insert((now, 0));
                entry.1 += 1;
                OrphanView {
                    key: key.1,
                    backend: Some(key.0),
                    scope: None,
                    first_seen_ms: entry.0,
                    seen_count: entry.1,
                }
            })
            .collect()
    }

    fn orphan_runners(
        &mut self,
        records: &[InstanceRecord],
        runners: &BTreeMap<ApiScope, Option<Vec<RunnerInfo>>>,
        now: u64,
    ) -> Vec<OrphanView> {
        let tag = self.rt.provisioner.owner_tag();
        let known: HashSet<i64> = records.iter().filter_map(|r| r.runner_id).collect();
        let mut current = HashSet::new();
        for (scope, list) in runners {
            for runner in list.iter().flatten() {
                if runner.description.starts_with(&tag) && !known.contains(&runner.id) {
                    current.insert((scope.clone(), runner.id));
                }
            }
        }
        // Only scopes listed this tick can confirm or clear their orphans.
        self.memory.orphan_runners.retain(|key, _| {
            current.contains(key) || !matches!(runners.get(&key.0), Some(Some(_)))
        });
        current
            .into_iter()
            .map(|key| {
                let entry = self
                    .memory
                    .orphan_runners
                    .entry(key.clone())
                    .or_insert((now, 0));
                entry.1 += 1;
                OrphanView {
                    key: key.1.to_string(),
                    backend: None,
                    scope: Some(key.0),
                    first_seen_ms: entry.0,
                    seen_count: entry.1,
                }
            })
            .collect()
    }

    /// Job wait as this autoscaler sees it: first seen waiting -> first seen running.
    fn observe_job_waits(&mut self, jobs: &[ScopeJobs], now: u64) {
        for scope_jobs in jobs {
            let Some(list) = &scope_jobs.jobs else {
                continue;
            };
            for job in list {
                match job.status {
                    JobStatus::Waiting => {
                        let pool = crate::pools::best_pool(
                            &self.rt.pools,
                            &scope_jobs.scope,
                            &job.runs_on,
                        )
                        .map(|p| p.name.clone())
                        .unwrap_or_default();
                        self.memory
                            .first_seen_waiting
                            .entry(job.id)
                            .or_insert((now, pool));
                    }
                    JobStatus::Running => {
                        if let Some((since, pool)) = self.memory.first_seen_waiting.remove(&job.id)
                        {
                            if !pool.is_empty() {
                                self.rt
                                    .metrics
                                    .job_wait
                                    .get_or_create(&PoolLabel { pool })
                                    .observe(now.saturating_sub(since) as f64 / 1000.0);
                            }
                        }
                    }
                    JobStatus::Other => {}
                }
            }
        }
        if self.memory.first_seen_waiting.len() > 100_000 {
            self.memory.first_seen_waiting.clear();
        }
    }

    fn apply(&mut self, observed: &Observed, plan: &Plan) {
        for id in &plan.became_busy {
            if let Err(e) = self.rt.store.set_busy(id, observed.now_ms) {
                tracing::warn!(instance = %id, error = %e, "cannot record that the instance is busy");
            }
        }
        self.report(observed, plan);
        for action in plan.actions.iter().cloned() {
            self.execute(action);
        }
    }

    /// Logs what changed since the last tick (at capacity, unmatched jobs) once, and updates gauges.
    fn report(&mut self, observed: &Observed, plan: &Plan) {
        let metrics = &self.rt.metrics;
        for (name, usage) in &plan.pools {
            metrics
                .waiting_jobs
                .get_or_create(&PoolLabel { pool: name.clone() })
                .set(usage.waiting_jobs as i64);
            let was = self.memory.at_capacity.contains(name);
            let now = usage.blocked_by_cap > 0;
            if now && !was {
                tracing::info!(pool = %name, used = usage.used, cap = usage.cap, waiting = usage.waiting_jobs, "pool at capacity; jobs wait for a free slot");
                self.memory.at_capacity.insert(name.clone());
            } else if !now && was {
                tracing::info!(pool = %name, "pool below capacity again");
                self.memory.at_capacity.remove(name);
            }
        }
        let mut states: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for pool in &self.rt.pools {
            for state in ["starting", "idle", "busy", "deleting"] {
                states.insert((pool.name.clone(), state), 0);
            }
        }
        for i in &observed.instances {
            let state = match i.state {
                InstanceState::Starting => "starting",
                InstanceState::Deleting => "deleting",
                InstanceState::Gone => continue,
                InstanceState::Running if plan::is_busy(observed.strategy, i) => "busy",
                InstanceState::Running => "idle",
            };
            *states.entry((i.pool.clone(), state)).or_default() += 1;
        }
        for ((pool, state), n) in states {
            metrics
                .runners
                .get_or_create(&PoolStateLabel {
                    pool,
                    state: state.into(),
                })
                .set(n);
        }
        metrics.unmatched_jobs.set(plan.unmatched.len() as i64);
        let current: HashSet<i64> = plan.unmatched.iter().map(|u| u.job_id).collect();
        for Unmatched {
            job_id,
            scope,
            name,
            runs_on,
        } in &plan.unmatched
        {
            if self.memory.unmatched_reported.insert(*job_id) {
                metrics.jobs_unmatched.inc();
                let offers: Vec<String> = self
                    .rt
                    .pools
                    .iter()
                    .map(|p| format!("{}=[{}]", p.name, p.labels.join(",")))
                    .collect();
                tracing::info!(job = job_id, %scope, name = %name, runs_on = ?runs_on, pools = ?offers, "job fits no pool; it will not get a runner from this autoscaler");
            }
        }
        self.memory
            .unmatched_reported
            .retain(|id| current.contains(id));
    }

    fn mark_in_flight(&self, id: &str) -> bool {
        self.in_flight
            .lock()
            .map(|mut s| s.insert(id.to_string()))
            .unwrap_or(false)
    }

    /// Dispatches one action. The store is updated synchronously (so the next tick counts it);
    /// the slow part runs in a task bounded by the semaphore.
    fn execute(&mut self, action: Action) {
        let rt = self.rt.clone();
        let in_flight = self.in_flight.clone();
        let semaphore = self.semaphore.clone();
        match action {
            Action::Create { pool, scope, job } => {
                let backend = match rt.backend_for_pool(&pool) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(pool = %pool, error = %e, "no backend for the pool");
                        return;
                    }
                };
                let id = crate::provision::new_instance_id(&pool);
                let now = now_ms();
                let record = InstanceRecord {
                    id: id.clone(),
                    pool: pool.clone(),
                    scope: scope.to_string(),
                    backend: backend.kind().into(),
                    state: InstanceState::Starting,
                    job_id: job.as_ref().map(|j| j.id),
                    job_handle: job.as_ref().and_then(|j| j.handle.clone()),
                    job_attempt: job.as_ref().and_then(|j| j.attempt),
                    runner_id: None,
                    runner_name: None,
                    backend_ref: None,
                    created_ms: now,
                    state_since_ms: now,
                    busy_since_ms: None,
                    reason: None,
                    exit_code: None,
                    detail: None,
                };
                if let Err(e) = rt.store.insert_instance(&record) {
                    tracing::error!(error = %e, "cannot record a new instance; not creating it");
                    return;
                }
                self.mark_in_flight(&id);
                rt.metrics
                    .created
                    .get_or_create(&PoolLabel { pool: pool.clone() })
                    .inc();
                let backoff = self.backoff.clone();
                self.tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    let result = create_instance(&rt, &id, &pool, &scope, job.as_ref()).await;
                    rt.metrics.operation("create", result.is_ok());
                    let failure = match result {
                        Ok(()) => None,
                        Err(e) => {
                            let wait = pool_failed(&backoff, &pool);
                            tracing::warn!(instance = %id, pool = %pool, error = %format!("{e:#}"), retry_in = ?wait, "creating a runner instance failed");
                            Some(format!("{e:#}"))
                        }
                    };
                    if let Some(detail) = failure {
                        remove_instance(&rt, &id, Reason::CreateFailed, Some(&detail)).await;
                    }
                    if let Ok(mut set) = in_flight.lock() {
                        set.remove(&id);
                    }
                    rt.wake.notify_one();
                });
            }
            Action::Delete { id, reason } => {
                if !self.mark_in_flight(&id) {
                    return;
                }
                if reason != Reason::TeardownRetry {
                    let _ = rt.store.set_state(
                        &id,
                        InstanceState::Deleting,
                        now_ms(),
                        Some(reason.as_str()),
                        None,
                    );
                }
                let jobs_done = self.jobs_done.clone();
                let backoff = self.backoff.clone();
                self.tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    if remove_instance(&rt, &id, reason, None).await {
                        let record = rt.store.instance(&id).ok().flatten();
                        let pool = record.as_ref().map(|r| r.pool.clone()).unwrap_or_default();
                        match reason {
                            Reason::JobDone => {
                                jobs_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                pool_succeeded(&backoff, &pool);
                            }
                            // A runner that failed before it ever had its job points at the
                            // pool (binary, image, labels); one killed mid-job does not.
                            Reason::RunnerFailed | Reason::BootTimeout
                                if record.as_ref().is_some_and(|r| r.busy_since_ms.is_none()) =>
                            {
                                let wait = pool_failed(&backoff, &pool);
                                let detail = record.and_then(|r| r.detail).unwrap_or_default();
                                tracing::warn!(instance = %id, pool = %pool, reason = reason.as_str(), retry_in = ?wait, runner_output = %detail, "the runner could not run; the pool backs off");
                            }
                            Reason::NoTask => {
                                if let Some(wait) = pool_no_task(&backoff, &pool) {
                                    tracing::warn!(pool = %pool, retry_in = ?wait, "runners of the pool keep exiting without a task; the pool backs off");
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Ok(mut set) = in_flight.lock() {
                        set.remove(&id);
                    }
                });
            }
            Action::DeleteOrphanInstance { backend, key } => {
                if !self.mark_in_flight(&key) {
                    return;
                }
                self.tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    let result = match rt.backends.get(&backend) {
                        Ok(b) => rt.fence.guard("removing an orphan instance", b.delete(&key, Duration::from_secs(10))).await,
                        Err(e) => Err(e.into()),
                    };
                    rt.metrics.operation("delete_orphan", result.is_ok());
                    match result {
                        Ok(_) => {
                            tracing::info!(instance = %key, reason = "orphan", "removed an instance the store does not know");
                            let _ = rt.store.record_event(now_ms(), Some(&key), "orphan_removed", "backend instance without a record");
                            rt.metrics.removed.get_or_create(&PoolReasonLabel { pool: String::new(), reason: "orphan".into() }).inc();
                        }
                        Err(e) => tracing::warn!(instance = %key, error = %e, "cannot remove an orphan instance"),
                    }
                    if let Ok(mut set) = in_flight.lock() {
                        set.remove(&key);
                    }
                });
            }
            Action::DeleteOrphanRunner { scope, runner_id } => {
                let key = format!("runner-{runner_id}");
                if !self.mark_in_flight(&key) {
                    return;
                }
                self.tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    let deleted = rt.fence.guard("deleting an orphan registration", rt.client.delete_runner(&scope, runner_id)).await;
                    match deleted {
                        Ok(_) => {
                            rt.metrics.orphan_registrations_removed.inc();
                            tracing::info!(runner_id, %scope, reason = "orphan", "deleted a runner registration no instance uses");
                            let _ = rt.store.record_event(now_ms(), None, "orphan_runner_deleted", &format!("runner {runner_id} in {scope}"));
                        }
                        Err(e) => tracing::warn!(runner_id, error = %e, "cannot delete an orphan runner"),
                    }
                    if let Ok(mut set) = in_flight.lock() {
                        set.remove(&key);
                    }
                });
            }
        }
    }
}

/// What the `[ha]` driver (`crate::ha::driver`) needs to run terms of leadership: the loop's
/// waiting, and stopping without removing anything (the next leader adopts what runs).
impl Reconciler {
    /// Waits up to `poll` for a reason to tick early: a wake-up (a runner exited) or a
    /// finished action. Returns whether there was one.
    pub(crate) async fn wait_for_work(&mut self, poll: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(poll) => false,
            _ = self.rt.wake.notified() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                true
            }
            Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => true,
        }
    }

    /// Stops acting: gives the actions in flight up to `within` to finish (each is fenced, so
    /// none starts a call after the lease lapsed), then abandons the rest. Nothing is removed:
    /// instances stay for whoever leads next.
    pub(crate) async fn stop_acting(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::info!(
                        abandoned = self.tasks.len(),
                        "abandoning actions still in flight"
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                }
            }
        }
        if let Ok(mut set) = self.in_flight.lock() {
            set.clear();
        }
    }
}

/// Drain: stop creating, let busy instances finish until `timeout`, then remove everything.
async fn drain_then(mut reconciler: Reconciler, timeout: Duration) -> anyhow::Result<u32> {
    let deadline = Instant::now() + timeout;
    let poll = reconciler
        .rt
        .config
        .forgejo
        .poll_interval
        .min(Duration::from_secs(2));
    loop {
        reconciler.tick(true, Some(0)).await;
        if reconciler.idle()? {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!("drain timeout reached; removing the remaining instances");
            for record in reconciler.rt.store.live_instances()? {
                if record.state != InstanceState::Deleting {
                    reconciler.execute(Action::Delete {
                        id: record.id,
                        reason: Reason::Shutdown,
                    });
                }
            }
            while reconciler.tasks.join_next().await.is_some() {}
            if reconciler.idle()? {
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = reconciler.rt.wake.notified() => {}
            Some(_) = reconciler.tasks.join_next(), if !reconciler.tasks.is_empty() => {}
        }
    }
    while reconciler.tasks.join_next().await.is_some() {}
    Ok(reconciler.jobs_done())
}

/// Credentials, then the backend instance. The record exists already (state `starting`).
async fn create_instance(
    rt: &Runtime,
    id: &str,
    pool_name: &str,
    scope: &ApiScope,
    job: Option<&JobRef>,
) -> anyhow::Result<()> {
    let pool = rt
        .pools
        .iter()
        .find(|p| p.name == pool_name)
        .ok_or_else(|| anyhow::anyhow!("pool {pool_name} is not configured"))?;
    let config_pool = rt
        .config
        .pool(pool_name)
        .ok_or_else(|| anyhow::anyhow!("pool {pool_name} is not configured"))?;
    let mut env = rt.config.runner_env(config_pool);
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    let backend = rt.backend_for_pool(pool_name)?;
    env.insert("HOME".into(), backend.work_dir(id).display().to_string());
    // [ha] fencing: each call that creates something is made only while the lease is held,
    // and abandoned if it is not done when the lease validity ends.
    let prepared = match rt.strategy {
        Strategy::Ephemeral => {
            rt.fence
                .guard(
                    "registering a runner",
                    rt.provisioner.prepare_ephemeral(
                        id,
                        pool,
                        scope,
                        job,
                        &backend.work_dir(id),
                        env,
                    ),
                )
                .await?
        }
        Strategy::Identities => {
            rt.fence
                .guard(
                    "lending a runner identity",
                    rt.provisioner.prepare_identity(id, pool, scope, env),
                )
                .await?
        }
    };
    let backend_ref = rt
        .fence
        .guard("creating the instance", backend.create(prepared.spec))
        .await?;
    rt.store.set_backend_ref(id, &backend_ref)?;
    rt.store.set_state(
        id,
        InstanceState::Running,
        now_ms(),
        None,
        Some(&format!("runner {} started", prepared.runner_name)),
    )?;
    tracing::info!(instance = %id, pool = %pool_name, job = job.map(|j| j.id), runner = %prepared.runner_name, "runner instance started");
    Ok(())
}

/// The reason to record once the removal has shown how the runner ended.
///
/// Forgejo 15 deletes an ephemeral registration, and drops the job from its list, as soon as
/// the job ends, which an observation can see a moment before the runner's own exit (a 30 ms
/// job is never even seen running). A runner that then turns out to have ended on its own with
/// 0 received and ran its task: the same verdict as had its exit been observed first.
fn verdict_after_removal(reason_text: String, removal: &crate::backend::Removal) -> String {
    let decided_without_exit = [Reason::RunnerGone, Reason::JobGone]
        .iter()
        .any(|r| r.as_str() == reason_text);
    // Exit 0 means "task received and run" (contract: one-job exit codes), whether the runner
    // ended on its own or was finishing when our stop reached it (seen in CI: stopped, exit 0).
    if decided_without_exit && removal.exit_code == Some(0) {
        Reason::JobDone.as_str().to_string()
    } else {
        reason_text
    }
}

/// Removes the backend instance, then its registration (15) or lends its identity back
/// (13/14), then marks the record gone. Returns whether everything was removed; if not, the
/// record stays `deleting` and the teardown deadline makes a later tick try again.
pub(crate) async fn remove_instance(
    rt: &Runtime,
    id: &str,
    reason: Reason,
    detail: Option<&str>,
) -> bool {
    let Ok(Some(record)) = rt.store.instance(id) else {
        return false;
    };
    // A tick that read the record while an earlier removal was finishing may ask again; the
    // record is final then, and its reason (and the job count) must not be overwritten.
    if record.state == InstanceState::Gone {
        return false;
    }
    // A retried removal (teardown deadline, or a restart found it half-removed) keeps the
    // reason it was started for.
    let reason_text = match (reason, record.reason.as_deref()) {
        (Reason::TeardownRetry | Reason::Interrupted, Some(original))
            if record.state == InstanceState::Deleting =>
        {
            original.to_string()
        }
        _ => reason.as_str().to_string(),
    };
    let _ = rt.store.set_state(
        id,
        InstanceState::Deleting,
        now_ms(),
        Some(reason_text.as_str()),
        detail,
    );
    let grace = Duration::from_secs(10);
    let removal = match rt.backends.get(&record.backend) {
        Ok(backend) => {
            rt.fence
                .guard("removing an instance", backend.delete(id, grace))
                .await
        }
        Err(e) => Err(e.into()),
    };
    let removal = match removal {
        Ok(removal) => removal,
        Err(e) => {
            rt.metrics.operation("delete", false);
            tracing::warn!(instance = %id, error = %e, "cannot remove the instance; will retry");
            return false;
        }
    };
    rt.metrics.operation("delete", true);
    let reason_text = verdict_after_removal(reason_text, &removal);
    let _ = rt.store.set_exit(
        id,
        removal.exit_code,
        removal.log_tail.as_deref().filter(|_| detail.is_none()),
    );
    match (rt.strategy, record.runner_id) {
        (Strategy::Ephemeral, Some(runner_id)) => {
            let scope: ApiScope = match record.scope.parse() {
                Ok(scope) => scope,
                Err(e) => {
                    tracing::error!(instance = %id, error = %e, "record has an unreadable scope");
                    return false;
                }
            };
            let deleted = match rt.fence.check("deleting a runner registration") {
                Ok(()) => rt.client.delete_runner(&scope, runner_id).await,
                Err(e) => {
                    tracing::info!(instance = %id, error = %e, "registration left for the leader");
                    return false;
                }
            };
            match deleted {
                Ok(_) => {}
                Err(ForgejoError::Status { status: 404, .. }) => {}
                Err(e) => {
                    tracing::warn!(instance = %id, runner_id, error = %e, "cannot delete the runner registration; will retry");
                    return false;
                }
            }
        }
        (Strategy::Identities, _) => {
            if let Err(e) = rt.store.release_identity(id) {
                tracing::warn!(instance = %id, error = %e, "cannot release the runner identity");
                return false;
            }
        }
        _ => {}
    }
    let _ = rt.store.set_state(
        id,
        InstanceState::Gone,
        now_ms(),
        Some(reason_text.as_str()),
        None,
    );
    rt.metrics
        .removed
        .get_or_create(&PoolReasonLabel {
            pool: record.pool.clone(),
            reason: reason_text.clone(),
        })
        .inc();
    tracing::info!(instance = %id, pool = %record.pool, job = record.job_id, reason = %reason_text, exit_code = removal.exit_code, "runner instance removed");
    true
}

fn bump(map: &mut HashMap<String, u32>, key: &str) -> u32 {
    let count = map.entry(key.to_string()).or_default();
    *count += 1;
    *count
}

/// Jobs as listed, for callers that only need them (the `plan` command).
pub fn waiting_jobs(jobs: &[ScopeJobs]) -> Vec<(&ApiScope, &Job)> {
    jobs.iter()
        .flat_map(|s| s.jobs.iter().flatten().map(move |j| (&s.scope, j)))
        .filter(|(_, j)| j.status == JobStatus::Waiting)
        .collect()
}

#[cfg(test)]
mod verdict_tests {
    use super::verdict_after_removal;
    use crate::backend::Removal;

    fn removal(exit_code: Option<i32>, stopped_by_us: bool) -> Removal {
        Removal {
            exit_code,
            stopped_by_us,
            ..Removal::default()
        }
    }

    #[test]
    fn a_runner_that_ended_with_0_did_its_job() {
        for decided in ["runner_gone", "cancelled"] {
            for stopped in [false, true] {
                assert_eq!(
                    verdict_after_removal(decided.into(), &removal(Some(0), stopped)),
                    "job_done"
                );
            }
        }
    }

    #[test]
    fn a_runner_we_stopped_or_that_failed_keeps_the_decided_reason() {
        for decided in ["runner_gone", "cancelled"] {
            for (code, stopped) in [
                (Some(2), true),
                (Some(1), false),
                (Some(137), true),
                (None, false),
            ] {
                assert_eq!(
                    verdict_after_removal(decided.into(), &removal(code, stopped)),
                    decided,
                    "{code:?} stopped_by_us={stopped}"
                );
            }
        }
    }

    #[test]
    fn other_reasons_are_never_rewritten() {
        for decided in ["pickup_timeout", "job_timeout", "orphan", "taken_by_other"] {
            assert_eq!(
                verdict_after_removal(decided.into(), &removal(Some(0), false)),
                decided
            );
        }
    }
}
