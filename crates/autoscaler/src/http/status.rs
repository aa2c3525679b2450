//! The status document: what `/api/status` answers, what the page at `/` and the `status`
//! command show. Built from the reconcile loop's last snapshot plus the store (reasons, recent
//! removals and events), or from the store alone when the daemon is not running.
//!
//! Nothing secret is part of it: tokens live in files and in the store's identities table,
//! neither of which is read here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    clock::now_ms,
    config::Config,
    plan::is_busy,
    pools::PoolSpec,
    reconcile::Snapshot,
    runtime::Runtime,
    store::{InstanceRecord, InstanceState, Store},
};

/// How many removals and events the status carries.
const RECENT: u32 = 50;
/// Longest text of a removal's detail (an error message or the tail of a runner log).
const DETAIL_CHARS: usize = 240;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// `daemon` (live observation) or `store` (what the store recorded; the daemon is not running).
    pub source: String,
    pub generated_at_ms: u64,
    pub autoscaler_version: String,
    pub forgejo: ForgejoStatus,
    pub totals: Totals,
    pub pools: Vec<PoolStatus>,
    pub instances: Vec<InstanceStatus>,
    pub recent_removals: Vec<Removal>,
    pub events: Vec<EventStatus>,
    /// Waiting jobs no pool can serve; empty when read from the store (jobs are not recorded).
    pub unmatched_jobs: Vec<UnmatchedJob>,
    /// What could not be read in the last tick (Forgejo, a backend, the store).
    pub errors: Vec<String>,
    /// `[ha]`: this replica's role and the current leader; absent without `[ha]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
}

/// The election as this replica sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaStatus {
    /// `leader` or `follower`.
    pub role: String,
    pub identity: String,
    /// `namespace/name` of the lease.
    pub lease: String,
    /// The holder of the lease as last read (`None`: nobody).
    pub leader: Option<String>,
    /// `leaseTransitions`: the fencing generation.
    pub generation: Option<i32>,
    /// Whether this replica may create and delete right now (a leader whose renewals fail
    /// stops before its lease can expire).
    pub acting: bool,
    /// Whether the last call about the lease reached the API server.
    pub lease_readable: bool,
    /// Seconds in the current role.
    pub role_age_s: f64,
}

impl HaStatus {
    pub fn of(leadership: &crate::ha::Leadership, now_ms: u64) -> HaStatus {
        let view = leadership.view();
        HaStatus {
            role: view.role.as_str().into(),
            identity: view.identity,
            lease: view.lease,
            leader: view.leader,
            generation: view.generation,
            acting: leadership.acting(),
            lease_readable: view.lease_readable,
            role_age_s: seconds(now_ms.saturating_sub(view.since_ms)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgejoStatus {
    pub url: String,
    /// The version in use, or the configured setting when read from the store.
    pub version: String,
    /// `None` when read from the store.
    pub reachable: Option<bool>,
    pub last_tick_age_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub instances: u32,
    pub cap: u32,
    pub by_state: BTreeMap<String, u32>,
    pub waiting_jobs: u32,
    pub blocked_by_cap: u32,
    pub unmatched_jobs: u32,
    pub removed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// Full labels (`name:docker://image`) the pool's runners declare.
    pub labels: Vec<String>,
    /// Instances counted against the cap (starting, running and deleting ones).
    pub used: u32,
    pub cap: u32,
    pub by_state: BTreeMap<String, u32>,
    pub waiting_jobs: u32,
    /// Waiting jobs that got no instance in the last tick because a cap is reached.
    pub blocked_by_cap: u32,
    pub at_capacity: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub pool: String,
    /// `starting`, `idle`, `busy` or `deleting` (`running` when read from the store and the
    /// runner was not yet seen with its job).
    pub state: String,
    pub age_s: f64,
    /// Time in the current state.
    pub state_age_s: f64,
    pub job_id: Option<i64>,
    /// Why it is in this state: the removal reason while deleting, else what it waits for.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removal {
    pub id: String,
    pub pool: String,
    pub reason: String,
    pub at_ms: u64,
    pub job_id: Option<i64>,
    pub exit_code: Option<i32>,
    /// The error or the last runner log line, shortened.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventStatus {
    pub at_ms: u64,
    pub instance: Option<String>,
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnmatchedJob {
    pub job_id: i64,
    pub name: String,
    /// The labels the job needs (`runs-on`).
    pub runs_on: Vec<String>,
    pub scope: String,
    /// What each pool offers and which of the job's labels it lacks.
    pub pools: Vec<PoolOffer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolOffer {
    pub pool: String,
    /// Label names the pool declares.
    pub offers: Vec<String>,
    /// Labels of the job the pool does not declare.
    pub missing: Vec<String>,
    /// The pool is not configured for the job's scope.
    pub serves_scope: bool,
}

/// What every pool offers a job with `runs_on` in `scope`.
pub fn pool_offers(
    pools: &[PoolSpec],
    scope: &crate::forgejo::ApiScope,
    runs_on: &[String],
) -> Vec<PoolOffer> {
    pools
        .iter()
        .map(|p| PoolOffer {
            pool: p.name.clone(),
            offers: p.label_names.iter().cloned().collect(),
            missing: runs_on
                .iter()
                .filter(|l| !p.label_names.contains(*l))
                .cloned()
                .collect(),
            serves_scope: p.serves(scope),
        })
        .collect()
}

fn zero_states() -> BTreeMap<String, u32> {
    crate::metrics::INSTANCE_STATES
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect()
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Why an instance is where it is, in a few words.
fn instance_reason(state: &str, job_id: Option<i64>, record: Option<&InstanceRecord>) -> String {
    match (state, job_id) {
        ("deleting", _) => record
            .and_then(|r| r.reason.clone())
            .unwrap_or_else(|| "removal in progress".into()),
        ("starting", _) => "credentials and instance being created".into(),
        ("busy", Some(job)) => format!("running job {job}"),
        ("busy", None) => "running a job".into(),
        ("idle", Some(job)) | ("running", Some(job)) => {
            format!("runner online, waiting to pick job {job}")
        }
        ("idle", None) | ("running", None) => "warm spare, waiting for any job".into(),
        _ => String::new(),
    }
}

fn short(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > DETAIL_CHARS {
        format!("{}…", line.chars().take(DETAIL_CHARS).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Removals, events and the total of removals, as the store recorded them.
fn history(store: &Store) -> (Vec<Removal>, Vec<EventStatus>, u64) {
    let removals = store
        .recent_gone(RECENT)
        .unwrap_or_default()
        .into_iter()
        .map(|r| Removal {
            id: r.id,
            pool: r.pool,
            reason: r.reason.unwrap_or_else(|| "unknown".into()),
            at_ms: r.state_since_ms,
            job_id: r.job_id,
            exit_code: r.exit_code,
            detail: r.detail.as_deref().map(short).filter(|d| !d.is_empty()),
        })
        .collect();
    let events = store
        .recent_events(RECENT)
        .unwrap_or_default()
        .into_iter()
        .map(|e| EventStatus {
            at_ms: e.ts_ms,
            instance: e.instance_id,
            kind: e.kind,
            detail: short(&e.detail),
        })
        .collect();
    let removed = store
        .gone_by_reason()
        .unwrap_or_default()
        .iter()
        .map(|(_, n)| n)
        .sum();
    (removals, events, removed)
}

fn totals(
    pools: &[PoolStatus],
    instances: &[InstanceStatus],
    cap: u32,
    unmatched: usize,
    removed: u64,
) -> Totals {
    let mut by_state = zero_states();
    for i in instances {
        *by_state.entry(i.state.clone()).or_default() += 1;
    }
    Totals {
        instances: instances.len() as u32,
        cap,
        by_state,
        waiting_jobs: pools.iter().map(|p| p.waiting_jobs).sum(),
        blocked_by_cap: pools.iter().map(|p| p.blocked_by_cap).sum(),
        unmatched_jobs: unmatched as u32,
        removed,
    }
}

/// The live status: the reconcile loop's last snapshot, with reasons and history from the store.
pub fn build_status(rt: &Runtime, snapshot: &Snapshot) -> Status {
    let now = now_ms();
    let records: BTreeMap<String, InstanceRecord> = rt
        .store
        .live_instances()
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let instances: Vec<InstanceStatus> = snapshot
        .instances
        .iter()
        .filter(|i| i.state != InstanceState::Gone)
        .map(|i| {
            let state = match i.state {
                InstanceState::Running if is_busy(rt.strategy, i) => "busy",
                InstanceState::Running => "idle",
                other => other.as_str(),
            };
            let job_id = i.job.as_ref().map(|j| j.id);
            InstanceStatus {
                id: i.id.clone(),
                pool: i.pool.clone(),
                state: state.into(),
                age_s: seconds(now.saturating_sub(i.created_ms)),
                state_age_s: seconds(now.saturating_sub(i.state_since_ms)),
                job_id,
                reason: instance_reason(state, job_id, records.get(&i.id)),
            }
        })
        .collect();
    let pools: Vec<PoolStatus> = rt
        .pools
        .iter()
        .map(|p| {
            let usage = snapshot
                .plan
                .pools
                .get(&p.name)
                .cloned()
                .unwrap_or_default();
            let mut by_state = zero_states();
            for i in instances.iter().filter(|i| i.pool == p.name) {
                *by_state.entry(i.state.clone()).or_default() += 1;
            }
            PoolStatus {
                name: p.name.clone(),
                labels: p.labels.clone(),
                used: usage.used,
                cap: p.max_runners,
                by_state,
                waiting_jobs: usage.waiting_jobs,
                blocked_by_cap: usage.blocked_by_cap,
                at_capacity: usage.blocked_by_cap > 0,
            }
        })
        .collect();
    let unmatched_jobs: Vec<UnmatchedJob> = snapshot
        .plan
        .unmatched
        .iter()
        .map(|u| UnmatchedJob {
            job_id: u.job_id,
            name: u.name.clone(),
            runs_on: u.runs_on.clone(),
            scope: u.scope.to_string(),
            pools: pool_offers(&rt.pools, &u.scope, &u.runs_on),
        })
        .collect();
    let (recent_removals, events, removed) = history(&rt.store);
    let follower = rt
        .fence
        .leadership()
        .is_some_and(|l| l.view().role == crate::ha::Role::Follower);
    Status {
        source: "daemon".into(),
        generated_at_ms: now,
        autoscaler_version: env!("CARGO_PKG_VERSION").into(),
        forgejo: ForgejoStatus {
            url: rt.config.forgejo.url.clone(),
            version: rt.version.to_string(),
            // A follower observes nothing: neither reachable nor not.
            reachable: (!follower).then_some(snapshot.forgejo_reachable),
            last_tick_age_s: (snapshot.at_ms > 0)
                .then(|| seconds(now.saturating_sub(snapshot.at_ms))),
        },
        totals: totals(
            &pools,
            &instances,
            rt.config.limits.max_runners,
            unmatched_jobs.len(),
            removed,
        ),
        pools,
        instances,
        recent_removals,
        events,
        unmatched_jobs,
        errors: snapshot.errors.clone(),
        ha: rt.fence.leadership().map(|l| HaStatus::of(l, now)),
    }
}

/// What the store recorded, for when the daemon is not running: instances as last recorded
/// (their processes may have ended since), removals and events. No jobs: those are not stored.
pub fn status_from_store(config: &Config, store: &Store) -> anyhow::Result<Status> {
    let now = now_ms();
    let pool_specs = crate::runtime::pool_specs(config)?;
    let instances: Vec<InstanceStatus> = store
        .live_instances()?
        .into_iter()
        .map(|r| {
            let state = match r.state {
                InstanceState::Running if r.busy_since_ms.is_some() => "busy",
                other => other.as_str(),
            };
            InstanceStatus {
                id: r.id.clone(),
                pool: r.pool.clone(),
                state: state.into(),
                age_s: seconds(now.saturating_sub(r.created_ms)),
                state_age_s: seconds(now.saturating_sub(r.state_since_ms)),
                job_id: r.job_id,
                reason: instance_reason(state, r.job_id, Some(&r)),
            }
        })
        .collect();
    let pools: Vec<PoolStatus> = pool_specs
        .iter()
        .map(|p| {
            let mut by_state = zero_states();
            for i in instances.iter().filter(|i| i.pool == p.name) {
                *by_state.entry(i.state.clone()).or_default() += 1;
            }
            PoolStatus {
                name: p.name.clone(),
                labels: p.labels.clone(),
                used: instances.iter().filter(|i| i.pool == p.name).count() as u32,
                cap: p.max_runners,
                by_state,
                waiting_jobs: 0,
                blocked_by_cap: 0,
                at_capacity: false,
            }
        })
        .collect();
    let (recent_removals, events, removed) = history(store);
    Ok(Status {
        source: "store".into(),
        generated_at_ms: now,
        autoscaler_version: env!("CARGO_PKG_VERSION").into(),
        forgejo: ForgejoStatus {
            url: config.forgejo.url.clone(),
            version: format!("{:?}", config.forgejo.version)
                .trim_start_matches('V')
                .to_lowercase(),
            reachable: None,
            last_tick_age_s: None,
        },
        totals: totals(&pools, &instances, config.limits.max_runners, 0, removed),
        pools,
        instances,
        recent_removals,
        events,
        unmatched_jobs: Vec::new(),
        errors: Vec::new(),
        ha: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_name_the_missing_labels_per_pool() {
        let pools = vec![
            crate::pools::test_pool(
                "debian",
                &[
                    "trixie:docker://debian:trixie",
                    "test:docker://debian:bookworm",
                ],
                3,
            ),
            crate::pools::test_pool("gpu", &["cuda:host"], 1),
        ];
        let offers = pool_offers(
            &pools,
            &crate::forgejo::ApiScope::User,
            &["trixie".into(), "cuda".into()],
        );
        assert_eq!(offers[0].pool, "debian");
        assert_eq!(
            offers[0].offers,
            vec!["test".to_string(), "trixie".to_string()]
        );
        assert_eq!(offers[0].missing, vec!["cuda".to_string()]);
        assert_eq!(offers[1].missing, vec!["trixie".to_string()]);
        assert!(offers.iter().all(|o| o.serves_scope));
    }

    #[test]
    fn details_keep_the_last_line_and_are_bounded() {
        assert_eq!(short("first\nsecond\n\n"), "second");
        let long = "x".repeat(1000);
        assert_eq!(short(&long).chars().count(), DETAIL_CHARS + 1);
    }

    #[test]
    fn reasons_say_what_an_instance_waits_for() {
        assert_eq!(instance_reason("busy", Some(7), None), "running job 7");
        assert_eq!(
            instance_reason("idle", Some(7), None),
            "runner online, waiting to pick job 7"
        );
        assert_eq!(
            instance_reason("deleting", None, None),
            "removal in progress"
        );
    }
}
