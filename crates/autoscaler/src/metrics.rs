//! Prometheus metrics (prometheus-client), served at `/metrics`.
//!
//! Every label takes values from a bounded set: pool names from the configuration, the fixed
//! removal reasons of [`Reason`], fixed instance states and backend operations, the Forgejo
//! client's route templates (never a concrete path, so no job or runner ids) and HTTP status
//! codes. Series that dashboards and alerts expect are created at zero at start, so that
//! `rate()` and `absent()` behave from the first scrape.

use std::sync::{atomic::AtomicU64, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{plan::Reason, pools::PoolSpec};

/// Instance states as the metrics and the status page show them (`running` split by whether
/// the runner has its job).
pub const INSTANCE_STATES: [&str; 4] = ["starting", "idle", "busy", "deleting"];

/// Backend operations counted in `backend_operations_total`.
pub const BACKEND_OPERATIONS: [&str; 4] = ["create", "delete", "delete_orphan", "list"];

/// The pool label of removals that belong to no pool: an instance found in a backend with no
/// record in the store (an orphan) cannot be attributed to one. Prometheus treats an empty
/// label value as an absent label, so `sum by (pool)` shows these apart.
pub const NO_POOL: &str = "";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabel {
    pub pool: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolReasonLabel {
    pub pool: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// `METHOD /route/{template}` as the Forgejo client names it.
    pub endpoint: String,
    /// The HTTP status code, `2xx` for any success, or `error` for a transport failure.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForgejoInfoLabel {
    /// The Forgejo major version in use (`13`, `14`, `15`).
    pub version: String,
    /// How runners get credentials: `ephemeral` (15) or `identities` (13/14).
    pub strategy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabel {
    pub pool: String,
    /// `lent` (in use by an instance) or `free`.
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    pub waiting_jobs: Family<PoolLabel, Gauge>,
    pub runners: Family<PoolStateLabel, Gauge>,
    pub pool_cap: Family<PoolLabel, Gauge>,
    pub global_cap: Gauge,
    pub created: Family<PoolLabel, Counter>,
    pub removed: Family<PoolReasonLabel, Counter>,
    pub job_wait: Family<PoolLabel, Histogram>,
    pub tick_seconds: Histogram,
    pub last_tick_success: Gauge,
    /// Seconds since the last tick that could read Forgejo; set when `/metrics` is scraped.
    pub last_tick_success_age: Gauge<f64, AtomicU64>,
    /// 1 when the last tick could read Forgejo's job lists; set when `/metrics` is scraped.
    pub forgejo_reachable: Gauge,
    pub forgejo_requests: Family<RequestLabel, Counter>,
    pub forgejo_info: Family<ForgejoInfoLabel, Gauge>,
    pub backend_operations: Family<OperationLabel, Counter>,
    /// Waiting jobs that fit no pool right now.
    pub unmatched_jobs: Gauge,
    /// Distinct jobs found fitting no pool (each counted once, when first reported).
    pub jobs_unmatched: Counter,
    /// Forgejo 15 runner registrations with our owner tag but no instance, deleted.
    pub orphan_registrations_removed: Counter,
    /// Forgejo 13/14 runner identities per pool, lent or free.
    pub identities: Family<IdentityLabel, Gauge>,
    /// 1 while this process may create and delete (always, without `[ha]`), else 0.
    pub leader: Gauge,
    /// Times this process became the leader (`[ha]`).
    pub leader_transitions: Counter,
    last_request_counts: Mutex<crate::forgejo::RequestCountsSnapshot>,
}

impl Metrics {
    pub fn new(pools: &[PoolSpec], global_cap: u32) -> Metrics {
        let mut registry = Registry::with_prefix("forgejo_autoscaler");
        let m = Metrics {
            waiting_jobs: Family::default(),
            runners: Family::default(),
            pool_cap: Family::default(),
            global_cap: Gauge::default(),
            created: Family::default(),
            removed: Family::default(),
            job_wait: Family::new_with_constructor(|| {
                Histogram::new([
                    0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                ])
            }),
            tick_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            last_tick_success: Gauge::default(),
            last_tick_success_age: Gauge::default(),
            forgejo_reachable: Gauge::default(),
            forgejo_requests: Family::default(),
            forgejo_info: Family::default(),
            backend_operations: Family::default(),
            unmatched_jobs: Gauge::default(),
            jobs_unmatched: Counter::default(),
            orphan_registrations_removed: Counter::default(),
            identities: Family::default(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
            registry: Registry::default(),
            last_request_counts: Mutex::default(),
        };
        registry.register(
            "waiting_jobs",
            "Waiting jobs seen that fit the pool",
            m.waiting_jobs.clone(),
        );
        registry.register(
            "runners",
            "Runner instances by pool and state (starting, idle, busy, deleting)",
            m.runners.clone(),
        );
        registry.register(
            "pool_max_runners",
            "Cap of runner instances per pool",
            m.pool_cap.clone(),
        );
        registry.register(
            "max_runners",
            "Global cap of runner instances",
            m.global_cap.clone(),
        );
        registry.register(
            "runners_created",
            "Runner instances created",
            m.created.clone(),
        );
        registry.register(
            "runners_removed",
            "Runner instances removed, by reason (pool is empty for orphans found without a record)",
            m.removed.clone(),
        );
        registry.register(
            "job_wait_seconds",
            "Time a job waited (waiting -> running), as observed",
            m.job_wait.clone(),
        );
        registry.register(
            "reconcile_tick_seconds",
            "Duration of one reconcile tick",
            m.tick_seconds.clone(),
        );
        registry.register(
            "last_successful_tick_timestamp_seconds",
            "Unix time of the last tick that could read Forgejo",
            m.last_tick_success.clone(),
        );
        registry.register(
            "last_successful_tick_age_seconds",
            "Seconds since the last tick that could read Forgejo, at scrape time",
            m.last_tick_success_age.clone(),
        );
        registry.register(
            "forgejo_reachable",
            "1 if the last tick could read Forgejo's job lists",
            m.forgejo_reachable.clone(),
        );
        registry.register(
            "forgejo_requests",
            "Requests to the Forgejo API by endpoint (route template) and status",
            m.forgejo_requests.clone(),
        );
        registry.register(
            "forgejo_info",
            "The Forgejo version in use and the credential strategy",
            m.forgejo_info.clone(),
        );
        registry.register(
            "backend_operations",
            "Backend operations (create, delete, delete_orphan, list) by result (ok, error)",
            m.backend_operations.clone(),
        );
        registry.register(
            "unmatched_jobs",
            "Waiting jobs that fit no pool, now",
            m.unmatched_jobs.clone(),
        );
        registry.register(
            "jobs_unmatched",
            "Jobs found fitting no pool (each counted once)",
            m.jobs_unmatched.clone(),
        );
        registry.register(
            "orphan_registrations_removed",
            "Forgejo runner registrations of this autoscaler with no instance, deleted",
            m.orphan_registrations_removed.clone(),
        );
        registry.register(
            "runner_identities",
            "Forgejo 13/14 runner identities by pool, lent or free",
            m.identities.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the lease and may create and delete runners (always 1 without [ha])",
            m.leader.clone(),
        );
        registry.register(
            "leader_transitions",
            "Times this replica became the leader ([ha])",
            m.leader_transitions.clone(),
        );
        let build: Family<BuildLabel, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);

        m.global_cap.set(global_cap as i64);
        for pool in pools {
            let name = || pool.name.clone();
            m.pool_cap
                .get_or_create(&PoolLabel { pool: name() })
                .set(pool.max_runners as i64);
            let _ = m.waiting_jobs.get_or_create(&PoolLabel { pool: name() });
            let _ = m.created.get_or_create(&PoolLabel { pool: name() });
            let _ = m.job_wait.get_or_create(&PoolLabel { pool: name() });
            for state in INSTANCE_STATES {
                let _ = m.runners.get_or_create(&PoolStateLabel {
                    pool: name(),
                    state: state.into(),
                });
            }
            for reason in Reason::ALL.iter().filter(|r| **r != Reason::Orphan) {
                let _ = m.removed.get_or_create(&PoolReasonLabel {
                    pool: name(),
                    reason: reason.as_str().into(),
                });
            }
        }
        let _ = m.removed.get_or_create(&PoolReasonLabel {
            pool: NO_POOL.into(),
            reason: Reason::Orphan.as_str().into(),
        });
        for operation in BACKEND_OPERATIONS {
            for result in ["ok", "error"] {
                let _ = m.backend_operations.get_or_create(&OperationLabel {
                    operation: operation.into(),
                    result: result.into(),
                });
            }
        }
        Metrics { registry, ..m }
    }

    /// Adds the requests made since the last call (the client keeps running totals). Called
    /// every tick and at every scrape, so the counters are current when read.
    pub fn sync_requests(&self, totals: &crate::forgejo::RequestCountsSnapshot) {
        let Ok(mut last) = self.last_request_counts.lock() else {
            return;
        };
        for ((endpoint, status), total) in totals {
            let before = last
                .get(&(endpoint.clone(), status.clone()))
                .copied()
                .unwrap_or(0);
            if *total > before {
                self.forgejo_requests
                    .get_or_create(&RequestLabel {
                        endpoint: endpoint.clone(),
                        status: status.clone(),
                    })
                    .inc_by(total - before);
            }
        }
        *last = totals.clone();
    }

    pub fn operation(&self, operation: &str, ok: bool) {
        self.backend_operations
            .get_or_create(&OperationLabel {
                operation: operation.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// Counts a removed instance under its pool and reason.
    pub fn count_removal(&self, pool: &str, reason: Reason) {
        self.removed
            .get_or_create(&PoolReasonLabel {
                pool: pool.into(),
                reason: reason.as_str().into(),
            })
            .inc();
    }

    /// Records which Forgejo version and credential strategy this process uses.
    pub fn set_forgejo_info(&self, version: &str, strategy: &str) {
        self.forgejo_info
            .get_or_create(&ForgejoInfoLabel {
                version: version.into(),
                strategy: strategy.into(),
            })
            .set(1);
    }

    /// Gauges derived at scrape time: the age of the last successful tick and reachability.
    pub fn refresh_at_scrape(&self, now_ms: u64, forgejo_reachable: bool) {
        let last = self.last_tick_success.get();
        let age = if last > 0 {
            (now_ms as f64 / 1000.0 - last as f64).max(0.0)
        } else {
            f64::NAN
        };
        self.last_tick_success_age.set(age);
        self.forgejo_reachable.set(i64::from(forgejo_reachable));
    }

    /// Identity counts per pool, as `(pool, total, lent)`.
    pub fn set_identities(&self, counts: &[(String, u64, u64)]) {
        for (pool, total, lent) in counts {
            let lent = (*lent).min(*total);
            self.identities
                .get_or_create(&IdentityLabel {
                    pool: pool.clone(),
                    state: "lent".into(),
                })
                .set(lent as i64);
            self.identities
                .get_or_create(&IdentityLabel {
                    pool: pool.clone(),
                    state: "free".into(),
                })
                .set((total - lent) as i64);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&[crate::pools::test_pool("debian", &["trixie"], 3)], 10)
    }

    #[test]
    fn encodes_caps_removals_and_build_info() {
        let m = metrics();
        m.count_removal("debian", Reason::JobDone);
        let text = m.encode();
        assert!(
            text.contains("forgejo_autoscaler_pool_max_runners{pool=\"debian\"} 3"),
            "{text}"
        );
        assert!(text.contains("forgejo_autoscaler_max_runners 10"), "{text}");
        assert!(
            text.contains(
                "forgejo_autoscaler_runners_removed_total{pool=\"debian\",reason=\"job_done\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("forgejo_autoscaler_build_info{version="),
            "{text}"
        );
    }

    #[test]
    fn expected_series_exist_at_zero_before_anything_happens() {
        let text = metrics().encode();
        for line in [
            "forgejo_autoscaler_runners_created_total{pool=\"debian\"} 0",
            "forgejo_autoscaler_runners_removed_total{pool=\"debian\",reason=\"boot_timeout\"} 0",
            "forgejo_autoscaler_runners_removed_total{pool=\"debian\",reason=\"pickup_timeout\"} 0",
            "forgejo_autoscaler_runners_removed_total{pool=\"debian\",reason=\"cancelled\"} 0",
            "forgejo_autoscaler_runners_removed_total{pool=\"\",reason=\"orphan\"} 0",
            "forgejo_autoscaler_runners{pool=\"debian\",state=\"busy\"} 0",
            "forgejo_autoscaler_waiting_jobs{pool=\"debian\"} 0",
            "forgejo_autoscaler_job_wait_seconds_count{pool=\"debian\"} 0",
            "forgejo_autoscaler_backend_operations_total{operation=\"create\",result=\"error\"} 0",
            "forgejo_autoscaler_jobs_unmatched_total 0",
            "forgejo_autoscaler_orphan_registrations_removed_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn request_totals_are_added_as_deltas() {
        let m = metrics();
        let key = (
            "GET /repos/{owner}/{repo}/actions/runners/jobs".to_string(),
            "2xx".to_string(),
        );
        let mut totals = crate::forgejo::RequestCountsSnapshot::new();
        totals.insert(key.clone(), 3);
        m.sync_requests(&totals);
        m.sync_requests(&totals);
        totals.insert(key, 5);
        m.sync_requests(&totals);
        let text = m.encode();
        let line = "forgejo_autoscaler_forgejo_requests_total{endpoint=\"GET /repos/{owner}/{repo}/actions/runners/jobs\",status=\"2xx\"} 5";
        assert!(text.lines().any(|l| l == line), "{text}");
    }

    #[test]
    fn scrape_time_gauges_follow_the_last_successful_tick() {
        let m = metrics();
        m.refresh_at_scrape(50_000, false);
        assert!(m
            .encode()
            .contains("forgejo_autoscaler_forgejo_reachable 0"));
        m.last_tick_success.set(40);
        m.refresh_at_scrape(52_500, true);
        let text = m.encode();
        assert!(
            text.contains("forgejo_autoscaler_last_successful_tick_age_seconds 12.5"),
            "{text}"
        );
        assert!(
            text.contains("forgejo_autoscaler_forgejo_reachable 1"),
            "{text}"
        );
    }

    #[test]
    fn identities_split_into_lent_and_free() {
        let m = metrics();
        m.set_identities(&[("debian".into(), 5, 2)]);
        let text = m.encode();
        assert!(
            text.contains("forgejo_autoscaler_runner_identities{pool=\"debian\",state=\"lent\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("forgejo_autoscaler_runner_identities{pool=\"debian\",state=\"free\"} 3"),
            "{text}"
        );
    }
}
