//! Prometheus metrics (prometheus-client). Labels only take bounded values: pool names from the
//! configuration, fixed reasons and states, route templates.

use std::sync::Mutex;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::pools::PoolSpec;

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
    pub endpoint: String,
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
    pub forgejo_requests: Family<RequestLabel, Counter>,
    pub backend_operations: Family<OperationLabel, Counter>,
    pub unmatched_jobs: Gauge,
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
                Histogram::new([0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0])
            }),
            tick_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            last_tick_success: Gauge::default(),
            forgejo_requests: Family::default(),
            backend_operations: Family::default(),
            unmatched_jobs: Gauge::default(),
            registry: Registry::default(),
            last_request_counts: Mutex::default(),
        };
        registry.register("waiting_jobs", "Waiting jobs that fit the pool", m.waiting_jobs.clone());
        registry.register("runners", "Runner instances by pool and state", m.runners.clone());
        registry.register("pool_max_runners", "Cap of runner instances per pool", m.pool_cap.clone());
        registry.register("max_runners", "Global cap of runner instances", m.global_cap.clone());
        registry.register("runners_created", "Runner instances created", m.created.clone());
        registry.register("runners_removed", "Runner instances removed, by reason", m.removed.clone());
        registry.register("job_wait_seconds", "Time a job waited (waiting -> running), as observed", m.job_wait.clone());
        registry.register("reconcile_tick_seconds", "Duration of one reconcile tick", m.tick_seconds.clone());
        registry.register(
            "last_successful_tick_timestamp_seconds",
            "Unix time of the last tick that could read Forgejo",
            m.last_tick_success.clone(),
        );
        registry.register("forgejo_requests", "Requests to the Forgejo API by endpoint and status", m.forgejo_requests.clone());
        registry.register("backend_operations", "Backend operations by result", m.backend_operations.clone());
        registry.register("unmatched_jobs", "Waiting jobs that fit no pool", m.unmatched_jobs.clone());
        let build: Family<BuildLabel, Gauge> = Family::default();
        build.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        registry.register("build_info", "Build information", build);
        for pool in pools {
            m.pool_cap.get_or_create(&PoolLabel { pool: pool.name.clone() }).set(pool.max_runners as i64);
        }
        m.global_cap.set(global_cap as i64);
        Metrics { registry, ..m }
    }

    /// Adds the requests made since the last call (the client keeps running totals).
    pub fn sync_requests(&self, totals: &crate::forgejo::RequestCountsSnapshot) {
        let Ok(mut last) = self.last_request_counts.lock() else { return };
        for ((endpoint, status), total) in totals {
            let before = last.get(&(endpoint.clone(), status.clone())).copied().unwrap_or(0);
            if *total > before {
                self.forgejo_requests
                    .get_or_create(&RequestLabel { endpoint: endpoint.clone(), status: status.clone() })
                    .inc_by(total - before);
            }
        }
        *last = totals.clone();
    }

    pub fn operation(&self, operation: &str, ok: bool) {
        self.backend_operations
            .get_or_create(&OperationLabel { operation: operation.into(), result: if ok { "ok" } else { "error" }.into() })
            .inc();
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

    #[test]
    fn encodes_with_bounded_labels() {
        let pools = vec![crate::pools::test_pool("debian", &["trixie"], 3)];
        let m = Metrics::new(&pools, 10);
        m.removed.get_or_create(&PoolReasonLabel { pool: "debian".into(), reason: "job_done".into() }).inc();
        let text = m.encode();
        assert!(text.contains("forgejo_autoscaler_pool_max_runners{pool=\"debian\"} 3"), "{text}");
        assert!(text.contains("forgejo_autoscaler_runners_removed_total{pool=\"debian\",reason=\"job_done\"} 1"), "{text}");
        assert!(text.contains("forgejo_autoscaler_build_info"), "{text}");
    }
}
