//! The numbers of one system in one scenario, computed from the simulator's job timestamps,
//! request counters and runner list, and from the process measurements; plus the ratios.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    probe::{StartTime, PROBE_PREFIX},
    procmon::Usage,
    prom::TickStats,
    sim::{SimJob, SimRunner},
};

/// Everything measured for one system; field names are the JSON keys of issue 5 plus extras.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SystemResult {
    pub jobs_total: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// All jobs finished before the deadline.
    pub completed: bool,
    /// First job created -> last job finished; null when not every job finished.
    pub makespan_s: Option<f64>,
    /// When not completed: the time the system had (a lower bound of its makespan).
    pub makespan_lower_bound_s: Option<f64>,
    pub wait_p50_s: Option<f64>,
    pub wait_p95_s: Option<f64>,
    pub wait_p99_s: Option<f64>,
    pub wait_max_s: Option<f64>,
    pub wait_mean_s: Option<f64>,
    /// Jobs that never started; their wait counts as (end of run - created), a lower bound.
    pub waits_censored: u64,
    pub poll_interval_s: f64,
    pub runner_start_s: f64,
    /// P/2 + S.
    pub floor_wait_s: f64,
    pub wait_mean_over_floor: Option<f64>,
    /// Every request to the simulator (REST API and runner protocol) per finished job.
    pub api_requests_per_job: Option<f64>,
    /// Only `/api/v1` (the REST API) per finished job.
    pub rest_requests_per_job: Option<f64>,
    /// Idle scenario: requests per minute of the system's (real) time.
    pub idle_requests_per_minute: Option<f64>,
    pub requests_total: u64,
    pub requests_by_endpoint: BTreeMap<String, u64>,
    pub peak_rss_kib: u64,
    /// CPU of the system without its runner processes (see BENCHMARKS.md for how).
    pub cpu_s: f64,
    pub cpu_self_s: f64,
    pub cpu_tree_s: f64,
    pub cpu_runners_s: f64,
    /// CPU the simulator spent while serving this system.
    pub sim_cpu_s: f64,
    pub runners_created: u64,
    pub runners_removed: u64,
    /// Registrations still live at the end plus runner processes left running.
    pub runners_leaked: u64,
    pub leftover_processes: u64,
    pub reconcile_tick: Option<TickStats>,
    pub measured_process: String,
    pub exit: String,
    /// Real seconds from the start of the workload until the system was stopped.
    pub elapsed_s: f64,
    /// Every job's wait (censored ones included), sorted, for the plot.
    pub waits_s: Vec<f64>,
}

/// Inputs of [`compute`] that do not come from the simulator's lists.
pub struct Measured<'a> {
    pub jobs_total: u64,
    pub time_scale: f64,
    /// Simulated unix ms at the end of the run (for censored waits).
    pub end_ms: i64,
    pub poll_interval_s: f64,
    pub start: StartTime,
    pub requests: &'a BTreeMap<String, u64>,
    pub idle_minutes: Option<f64>,
    pub idle_requests: u64,
    pub usage: &'a Usage,
    pub cpu_s: f64,
    pub sim_cpu_s: f64,
    pub leftover_processes: u64,
    pub reconcile_tick: Option<TickStats>,
    pub measured_process: &'a str,
    pub exit: String,
    pub elapsed_s: f64,
}

pub fn compute(jobs: &[SimJob], runners: &[SimRunner], m: Measured<'_>) -> SystemResult {
    let to_s = |ms: i64| ms as f64 / 1000.0 / m.time_scale;
    let finished: Vec<&SimJob> = jobs.iter().filter(|j| j.stopped.is_some()).collect();
    let jobs_done = finished.len() as u64;
    let completed = jobs_done >= m.jobs_total;
    let makespan_s = if completed && !jobs.is_empty() {
        let first = jobs.iter().map(|j| j.created).min().unwrap_or(0);
        let last = jobs.iter().filter_map(|j| j.stopped).max().unwrap_or(first);
        Some(to_s(last - first))
    } else {
        None
    };
    let mut waits: Vec<f64> = jobs
        .iter()
        .map(|j| to_s(j.started.unwrap_or(m.end_ms) - j.created).max(0.0))
        .collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    let waits_censored = jobs.iter().filter(|j| j.started.is_none()).count() as u64;
    let mean = (!waits.is_empty()).then(|| waits.iter().sum::<f64>() / waits.len() as f64);
    let floor = m.poll_interval_s / 2.0 + m.start.median_s;
    let requests_total: u64 = m.requests.values().sum();
    let rest: u64 = m
        .requests
        .iter()
        .filter(|(k, _)| k.contains(" /api/v1/"))
        .map(|(_, v)| v)
        .sum();
    let per_job = |n: u64| (jobs_done > 0).then(|| n as f64 / jobs_done as f64);
    let own: Vec<&SimRunner> = runners
        .iter()
        .filter(|r| !r.name.starts_with(PROBE_PREFIX))
        .collect();
    let removed = own.iter().filter(|r| r.deleted).count() as u64;
    let live = own.len() as u64 - removed;
    SystemResult {
        jobs_total: m.jobs_total,
        jobs_done,
        jobs_failed: jobs.iter().filter(|j| j.status == "failure").count() as u64,
        completed,
        makespan_s,
        makespan_lower_bound_s: (!completed).then_some(m.elapsed_s),
        wait_p50_s: percentile(&waits, 0.50),
        wait_p95_s: percentile(&waits, 0.95),
        wait_p99_s: percentile(&waits, 0.99),
        wait_max_s: waits.last().copied(),
        wait_mean_s: mean,
        waits_censored,
        poll_interval_s: m.poll_interval_s,
        runner_start_s: m.start.median_s,
        floor_wait_s: floor,
        wait_mean_over_floor: mean.map(|w| w / floor),
        api_requests_per_job: per_job(requests_total),
        rest_requests_per_job: per_job(rest),
        idle_requests_per_minute: m
            .idle_minutes
            .filter(|t| *t > 0.0)
            .map(|t| m.idle_requests as f64 / t),
        requests_total,
        requests_by_endpoint: m.requests.clone(),
        peak_rss_kib: m.usage.peak_rss_kib,
        cpu_s: m.cpu_s,
        cpu_self_s: m.usage.cpu_self_s,
        cpu_tree_s: m.usage.cpu_tree_s,
        cpu_runners_s: m.usage.cpu_runners_s,
        sim_cpu_s: m.sim_cpu_s,
        runners_created: own.len() as u64,
        runners_removed: removed,
        runners_leaked: live + m.leftover_processes,
        leftover_processes: m.leftover_processes,
        reconcile_tick: m.reconcile_tick,
        measured_process: m.measured_process.to_string(),
        exit: m.exit,
        elapsed_s: m.elapsed_s,
        waits_s: waits,
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// autoscaler / seed for the headline numbers (null where either side is missing or zero).
pub fn ratios(system: &SystemResult, seed: &SystemResult) -> BTreeMap<String, Option<f64>> {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let mut out = BTreeMap::new();
    // A seed that did not finish has only a lower bound: the ratio is then an upper bound.
    let seed_makespan = seed.makespan_s.or(seed.makespan_lower_bound_s);
    out.insert("makespan".into(), ratio(system.makespan_s, seed_makespan));
    out.insert(
        "wait_mean".into(),
        ratio(system.wait_mean_s, seed.wait_mean_s),
    );
    out.insert("wait_p95".into(), ratio(system.wait_p95_s, seed.wait_p95_s));
    out.insert(
        "api_requests_per_job".into(),
        ratio(system.api_requests_per_job, seed.api_requests_per_job),
    );
    out.insert(
        "idle_requests_per_minute".into(),
        ratio(
            system.idle_requests_per_minute,
            seed.idle_requests_per_minute,
        ),
    );
    out.insert(
        "peak_rss".into(),
        ratio(
            Some(system.peak_rss_kib as f64),
            Some(seed.peak_rss_kib as f64),
        ),
    );
    out.insert("cpu".into(), ratio(Some(system.cpu_s), Some(seed.cpu_s)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, created: i64, started: Option<i64>, stopped: Option<i64>) -> SimJob {
        SimJob {
            id,
            status: if stopped.is_some() {
                "success"
            } else {
                "waiting"
            }
            .into(),
            created,
            started,
            stopped,
        }
    }

    fn measured<'a>(
        requests: &'a BTreeMap<String, u64>,
        usage: &'a Usage,
        total: u64,
    ) -> Measured<'a> {
        Measured {
            jobs_total: total,
            time_scale: 1.0,
            end_ms: 100_000,
            poll_interval_s: 2.0,
            start: StartTime {
                median_s: 0.5,
                min_s: 0.4,
                max_s: 0.6,
                samples: 3,
            },
            requests,
            idle_minutes: None,
            idle_requests: 0,
            usage,
            cpu_s: 1.0,
            sim_cpu_s: 0.0,
            leftover_processes: 0,
            reconcile_tick: None,
            measured_process: "p",
            exit: "exit status: 0".into(),
            elapsed_s: 10.0,
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[3.0], 0.99), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn complete_run_has_makespan_waits_and_floor() {
        let jobs = vec![
            job(1, 1_000, Some(2_000), Some(5_000)),
            job(2, 1_000, Some(4_000), Some(9_000)),
        ];
        let runners = vec![
            SimRunner {
                id: 1,
                name: "a".into(),
                deleted: true,
            },
            SimRunner {
                id: 2,
                name: "b".into(),
                deleted: false,
            },
            SimRunner {
                id: 3,
                name: format!("{PROBE_PREFIX}0"),
                deleted: false,
            },
        ];
        let requests = BTreeMap::from([
            ("GET /api/v1/x".to_string(), 6),
            ("POST /api/actions/y".to_string(), 4),
        ]);
        let usage = Usage::default();
        let r = compute(&jobs, &runners, measured(&requests, &usage, 2));
        assert!(r.completed);
        assert_eq!(r.makespan_s, Some(8.0));
        assert_eq!(r.wait_mean_s, Some(2.0));
        assert_eq!(r.wait_max_s, Some(3.0));
        assert_eq!(r.floor_wait_s, 1.5);
        assert_eq!(r.api_requests_per_job, Some(5.0));
        assert_eq!(r.rest_requests_per_job, Some(3.0));
        assert_eq!(
            (r.runners_created, r.runners_removed, r.runners_leaked),
            (2, 1, 1)
        );
    }

    #[test]
    fn unfinished_jobs_are_censored_not_dropped() {
        let jobs = vec![job(1, 0, Some(1_000), Some(2_000)), job(2, 0, None, None)];
        let requests = BTreeMap::new();
        let usage = Usage::default();
        let r = compute(&jobs, &[], measured(&requests, &usage, 2));
        assert!(!r.completed);
        assert_eq!(r.makespan_s, None);
        assert_eq!(r.makespan_lower_bound_s, Some(10.0));
        assert_eq!(r.waits_censored, 1);
        assert_eq!(r.wait_max_s, Some(100.0));
    }

    #[test]
    fn ratios_divide_system_by_seed() {
        let seed = SystemResult {
            makespan_s: Some(100.0),
            wait_mean_s: Some(10.0),
            cpu_s: 2.0,
            ..Default::default()
        };
        let ours = SystemResult {
            makespan_s: Some(5.0),
            wait_mean_s: Some(1.0),
            cpu_s: 1.0,
            ..Default::default()
        };
        let r = ratios(&ours, &seed);
        assert_eq!(r["makespan"], Some(0.05));
        assert_eq!(r["wait_mean"], Some(0.1));
        assert_eq!(r["cpu"], Some(0.5));
        assert_eq!(r["idle_requests_per_minute"], None);
    }
}
