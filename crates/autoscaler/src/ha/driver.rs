//! `run` with `[ha]`: the elector runs beside the HTTP endpoints, and the reconcile loop runs
//! only in terms of leadership.
//!
//! * Follower: no observation at all (no Forgejo requests, no backend listing), so the load
//!   on Forgejo does not grow with the number of replicas. It serves `/healthz`, `/readyz`
//!   (ready while it can read the lease) and the status with its role and the leader.
//! * Taking over: `recover` (adopt this store's records and the previous leader's instances,
//!   `crate::ha::adopt`), retried until it works or the lease is lost, then ticks.
//! * Losing the lease (the elector stepped down, or the validity instant passed): stop
//!   ticking, let actions in flight end (they are fenced), forget the term's memory; follower.
//! * Shutdown (SIGTERM): a leader stops acting *without removing anything* and releases the
//!   lease, so another replica takes over at once and adopts the running instances. (Without
//!   `[ha]`, shutdown drains and removes; with replicas, that would kill the jobs another
//!   replica could have kept.)

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::time::Instant;

use super::{Elector, Fence, Leadership, LeaseApi, Role, Timing};
use crate::{
    config::{Config, HaConfig},
    plan::Strategy,
    reconcile::{Reconciler, RunOptions, Snapshot},
    runtime::Runtime,
};

/// Everything `run` needs with `[ha]`, given a connection to the lease.
pub async fn run(
    mut config: Config,
    ha: HaConfig,
    lease: Arc<dyn LeaseApi>,
    namespace: &str,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u32> {
    let identity = ha.identity.clone().unwrap_or_else(super::default_identity);
    let owner_id = ha.owner_id_in(namespace);
    if let Some(table) = config.ha.as_mut() {
        table.owner_id = Some(owner_id.clone());
    }
    let mut rt = Runtime::start(config).await?;
    if rt.strategy != Strategy::Ephemeral {
        anyhow::bail!(
            "[ha] needs Forgejo 15 or later (Forgejo {} found at {}): a new leader adopts the previous leader's runners through Forgejo 15's runners API, and Forgejo 13/14 runner identities live in one replica's store. Remove [ha] and run a single instance",
            rt.version,
            rt.config.forgejo.url
        );
    }
    for pool in rt
        .config
        .pools
        .iter()
        .filter(|p| p.backend == crate::config::BackendKind::Process)
    {
        // Nothing wrong for the election, but a process runner lives and dies with its
        // replica: no other replica can list, adopt or remove it.
        tracing::warn!(pool = %pool.name, "[ha] with a process pool: its runners run beside this replica only; a new leader cannot adopt them (use the kubernetes or docker backend)");
    }
    let leadership = Leadership::new(&identity, &lease.name());
    rt.fence = Fence::of(leadership.clone());
    let rt = Arc::new(rt);
    tracing::info!(lease = %lease.name(), %identity, owner_id = %owner_id, "high availability: electing a leader");
    let timing = Timing {
        lease_duration: ha.lease_duration,
        renew_deadline: ha.renew_deadline,
        retry_period: ha.retry_period,
    };
    let elector = Elector::new(lease, &identity, timing, leadership.clone()).with_metrics(
        rt.metrics.leader.clone(),
        rt.metrics.leader_transitions.clone(),
    );
    let (stop_elector, stopped) = tokio::sync::oneshot::channel();
    let elector_task = tokio::spawn(elector.run(stopped));
    let snapshot: Arc<std::sync::Mutex<Snapshot>> = Arc::default();
    let server = crate::http::serve(rt.clone(), snapshot.clone()).await?;
    let result = terms(&rt, &leadership, &snapshot, timing, options, shutdown).await;
    // Nothing acts any more: hand the lease over.
    let _ = stop_elector.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), elector_task).await;
    if let Some(server) = server {
        server.abort();
    }
    result
}

/// Follower, leader, follower, ... until shutdown (or `--max-jobs`).
async fn terms(
    rt: &Arc<Runtime>,
    leadership: &Arc<Leadership>,
    snapshot: &Arc<std::sync::Mutex<Snapshot>>,
    timing: Timing,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u32> {
    tokio::pin!(shutdown);
    let mut roles = leadership.subscribe();
    let mut jobs_done = 0;
    loop {
        // Follower: wait to lead.
        loop {
            if leadership.acting() {
                break;
            }
            tokio::select! {
                _ = roles.changed() => {}
                _ = tokio::time::sleep(timing.retry_period) => {}
                _ = &mut shutdown => return Ok(jobs_done),
            }
        }
        let generation = leadership.view().generation;
        let took_over = Instant::now();
        let mut reconciler = Reconciler::new(rt.clone());
        reconciler.snapshot = snapshot.clone();
        let end = lead(
            rt,
            leadership,
            &mut reconciler,
            &options,
            &mut roles,
            &mut shutdown,
            jobs_done,
        )
        .await;
        // Whatever ended the term: let fenced actions finish or abandon them, but remove
        // nothing.
        let left = leadership
            .valid_until()
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
            .min(Duration::from_secs(10));
        reconciler.stop_acting(left).await;
        jobs_done += reconciler.jobs_done();
        if let Ok(mut s) = snapshot.lock() {
            *s = Snapshot::default();
        }
        match end {
            TermEnd::Lost => {
                tracing::warn!(generation, led_for = ?took_over.elapsed(), "no longer the leader; stopped acting")
            }
            TermEnd::Shutdown => {
                tracing::info!(
                    generation,
                    "shutting down: the runners stay for the next leader"
                );
                return Ok(jobs_done);
            }
            TermEnd::MaxJobs => return Ok(jobs_done),
        }
    }
}

enum TermEnd {
    Lost,
    Shutdown,
    MaxJobs,
}

/// One term of leadership.
async fn lead(
    rt: &Arc<Runtime>,
    leadership: &Arc<Leadership>,
    reconciler: &mut Reconciler,
    options: &RunOptions,
    roles: &mut tokio::sync::watch::Receiver<super::LeaderView>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    done_before: u32,
) -> TermEnd {
    let poll = rt.config.forgejo.poll_interval;
    let view = leadership.view();
    // Adopt before the first tick; a failure (a backend or Forgejo that cannot be listed)
    // is retried, because acting on a partial picture could start second runners.
    loop {
        if !leadership.acting() {
            return TermEnd::Lost;
        }
        match reconciler.recover().await.context("taking over") {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot take over yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = &mut *shutdown => return TermEnd::Shutdown,
        }
    }
    tracing::info!(generation = view.generation, identity = %view.identity, "acting as the leader");
    loop {
        if !leadership.acting() || leadership.view().role != Role::Leader {
            return TermEnd::Lost;
        }
        let done = options
            .max_jobs
            .is_some_and(|max| done_before + reconciler.jobs_done() >= max);
        let budget = options
            .max_jobs
            .map(|max| reconciler.create_budget(max.saturating_sub(done_before)));
        reconciler.tick(done, budget).await;
        if done && reconciler.idle().unwrap_or(false) {
            return TermEnd::MaxJobs;
        }
        // Wait for work, but look at the lease often: its validity can end between ticks.
        let next = Instant::now() + poll;
        loop {
            let check = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            let woken = tokio::select! {
                woken = reconciler.wait_for_work(check) => woken,
                _ = roles.changed() => false,
                _ = &mut *shutdown => return TermEnd::Shutdown,
            };
            if !leadership.acting() {
                return TermEnd::Lost;
            }
            if woken || Instant::now() >= next {
                break;
            }
        }
    }
}
