//! Issue 6, test 1: `/metrics` scraped during and after a burst, checked against what the
//! simulator saw: jobs done, runners created = removed + live, registrations, requests to the
//! jobs endpoint, a job that fits no pool; every label value from a bounded set; the cap never
//! exceeded; "pool at capacity" logged at info once per change, not per tick.

mod ops_support;
mod support;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ops_support::*;
use support::*;

const BURST_JOBS: usize = 30;
const POOL_CAP: u32 = 5;

/// A job whose `gpu` label no pool offers.
const GPU_WORKFLOW: &str = "on: [push]\njobs:\n  needs-gpu:\n    runs-on: [trixie, gpu]\n    steps:\n      - run: echo never\n";

/// Every label value a sample may carry; anything else is an unbounded label.
fn assert_labels_bounded(samples: &[Sample], version: &str) {
    let reasons: BTreeSet<&str> = forgejo_autoscaler::plan::Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    let states: BTreeSet<&str> = forgejo_autoscaler::metrics::INSTANCE_STATES
        .into_iter()
        .chain(["lent", "free"])
        .collect();
    let operations: BTreeSet<&str> = forgejo_autoscaler::metrics::BACKEND_OPERATIONS
        .into_iter()
        .collect();
    for s in samples {
        for (key, value) in &s.labels {
            let ok = match key.as_str() {
                "pool" => value == "debian" || value.is_empty(),
                "state" => states.contains(value.as_str()),
                "reason" => reasons.contains(value.as_str()),
                "operation" => operations.contains(value.as_str()),
                "result" => value == "ok" || value == "error",
                // A route template: method, then a path without ids.
                "endpoint" => {
                    value.split_once(' ').is_some_and(|(m, p)| {
                        ["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&m) && p.starts_with('/')
                    }) && !value.chars().any(|c| c.is_ascii_digit())
                }
                "status" => {
                    value == "2xx"
                        || value == "error"
                        || (value.len() == 3 && value.parse::<u16>().is_ok())
                }
                "version" => value == env!("CARGO_PKG_VERSION") || value == version,
                "strategy" => value == "ephemeral" || value == "identities",
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                _ => false,
            };
            assert!(
                ok,
                "unbounded or unknown label {key}={value:?} on {}",
                s.name
            );
        }
    }
}

async fn metrics_after_a_burst(version: &str) {
    let env = Arc::new(Env::start(version).await);
    let config = env.write_config(&ConfigOpts {
        max_runners: 10,
        pool_max_runners: POOL_CAP,
        http_listen: "127.0.0.1:0".into(),
        ..ConfigOpts::default()
    });
    env.commit_workflow("gpu.yml", GPU_WORKFLOW).await;
    env.commit_workflow("burst.yml", &Env::burst_yaml(BURST_JOBS as u32, "sleep 1"))
        .await;
    let mut child = env.spawn_autoscaler(&["run", "-c", &config.display().to_string()]);
    let address = http_address(&env, Duration::from_secs(30)).await;

    // Scrape while the burst runs: the instances the gauges show never exceed the pool's cap.
    let peak = Arc::new(AtomicU64::new(0));
    let scrapes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (peak, scrapes, stop) = (peak.clone(), scrapes.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (code, text) = get(address, "/metrics", None).await;
                assert_eq!(code, 200);
                let live = sum(
                    &samples(&text),
                    "forgejo_autoscaler_runners",
                    &[("pool", "debian")],
                );
                peak.fetch_max(live as u64, Ordering::SeqCst);
                scrapes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let done = wait_until(Duration::from_secs(120), || {
        let env = env.clone();
        async move {
            env.sim_jobs()
                .await
                .iter()
                .filter(|j| j.status == "success")
                .count()
                >= BURST_JOBS
                && env.store_instances().iter().all(|i| i.state == "gone")
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    scraper.await.expect("scraper");
    if !done {
        let jobs: Vec<String> = env
            .sim_jobs()
            .await
            .iter()
            .map(|j| format!("{}:{}", j.id, j.status))
            .collect();
        let log = full_logs(&env);
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "Forgejo {version}: the burst did not finish: {jobs:?}\n{}\n{:?}",
            tail.join("\n"),
            env.store_instances()
        );
    }
    // One more tick, so the gauges reflect that nothing is live.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (code, text) = get(address, "/metrics", None).await;
    assert_eq!(code, 200);
    let stats = env.sim_stats().await;
    let jobs = env.sim_jobs().await;
    let s = samples(&text);
    let pool = [("pool", "debian")];

    // Jobs done, as the simulator saw them, are the removals with reason job_done.
    let succeeded = jobs.iter().filter(|j| j.status == "success").count() as f64;
    assert_eq!(
        succeeded, BURST_JOBS as f64,
        "only the burst succeeds; the gpu job waits"
    );
    let job_done = sum(
        &s,
        "forgejo_autoscaler_runners_removed_total",
        &[("pool", "debian"), ("reason", "job_done")],
    );
    assert_eq!(
        job_done, succeeded,
        "Forgejo {version}: job_done removals vs jobs done\n{text}"
    );

    // Runners created = removed + live.
    let created = sum(&s, "forgejo_autoscaler_runners_created_total", &pool);
    let removed = sum(&s, "forgejo_autoscaler_runners_removed_total", &pool);
    let live = sum(&s, "forgejo_autoscaler_runners", &pool);
    assert_eq!(
        created,
        removed + live,
        "Forgejo {version}: created {created} != removed {removed} + live {live}\n{text}"
    );
    assert_eq!(live, 0.0, "nothing is live after the burst");
    assert!(created >= succeeded, "a runner per job at least");
    assert_eq!(
        sum(
            &s,
            "forgejo_autoscaler_backend_operations_total",
            &[("operation", "create"), ("result", "ok")]
        ),
        created,
        "every creation reached the backend"
    );
    assert!(
        sum(
            &s,
            "forgejo_autoscaler_backend_operations_total",
            &[("operation", "delete"), ("result", "ok")]
        ) >= removed
    );
    assert_eq!(
        sum(
            &s,
            "forgejo_autoscaler_backend_operations_total",
            &[("result", "error")]
        ),
        0.0,
        "{text}"
    );

    // Registrations as the simulator saw them.
    let registered = stats["runners"]["active"].as_f64().unwrap_or(0.0)
        + stats["runners"]["deleted"].as_f64().unwrap_or(0.0);
    if version == "15" {
        assert_eq!(
            registered, created,
            "one ephemeral runner per instance\n{stats}"
        );
        assert_eq!(
            stats["runners"]["active"].as_f64(),
            Some(0.0),
            "no registration left\n{stats}"
        );
    } else {
        let identities = sum(&s, "forgejo_autoscaler_runner_identities", &pool);
        assert_eq!(
            identities, registered,
            "identities in the metrics vs registrations in Forgejo\n{stats}"
        );
        assert!(
            registered <= POOL_CAP as f64,
            "identities stay within the cap: {registered}"
        );
        assert_eq!(
            sum(
                &s,
                "forgejo_autoscaler_runner_identities",
                &[("pool", "debian"), ("state", "lent")]
            ),
            0.0
        );
    }

    // Jobs that fit no pool (the gpu workflow ran on both pushes): each counted once, and
    // visible as a gauge while they wait.
    let gpu_waiting = jobs
        .iter()
        .filter(|j| j.runs_on.iter().any(|l| l == "gpu") && j.status == "waiting")
        .count() as f64;
    assert!(gpu_waiting >= 1.0, "the simulator has the gpu jobs waiting");
    assert_eq!(
        sum(&s, "forgejo_autoscaler_jobs_unmatched_total", &[]),
        gpu_waiting,
        "{text}"
    );
    assert_eq!(
        sum(&s, "forgejo_autoscaler_unmatched_jobs", &[]),
        gpu_waiting,
        "{text}"
    );
    assert_eq!(sum(&s, "forgejo_autoscaler_waiting_jobs", &pool), 0.0);

    // Requests to the jobs endpoint: ours against the simulator's count (one may be in flight).
    let ours: f64 = s
        .iter()
        .filter(|x| x.name == "forgejo_autoscaler_forgejo_requests_total")
        .filter(|x| {
            x.labels
                .get("endpoint")
                .is_some_and(|e| e.starts_with("GET ") && e.ends_with("/actions/runners/jobs"))
        })
        .map(|x| x.value)
        .sum();
    let theirs: f64 = stats["requests"]
        .as_object()
        .expect("request counts")
        .iter()
        .filter(|(route, _)| route.starts_with("GET ") && route.ends_with("/actions/runners/jobs"))
        .map(|(_, n)| n.as_f64().unwrap_or(0.0))
        .sum();
    assert!(
        ours > 0.0 && ours <= theirs && theirs <= ours + 1.0,
        "jobs listings: ours {ours}, simulator {theirs}"
    );

    // Waits, ticks, caps, health of the loop.
    let waits = sum(&s, "forgejo_autoscaler_job_wait_seconds_count", &pool);
    assert!(
        waits >= 1.0 && waits <= succeeded,
        "observed waits: {waits}"
    );
    assert!(sum(&s, "forgejo_autoscaler_job_wait_seconds_sum", &pool) > 0.0);
    assert!(sum(&s, "forgejo_autoscaler_reconcile_tick_seconds_count", &[]) >= 3.0);
    let age = sum(
        &s,
        "forgejo_autoscaler_last_successful_tick_age_seconds",
        &[],
    );
    assert!(
        (0.0..10.0).contains(&age),
        "last successful tick {age} s ago"
    );
    assert_eq!(sum(&s, "forgejo_autoscaler_forgejo_reachable", &[]), 1.0);
    assert_eq!(
        sum(&s, "forgejo_autoscaler_pool_max_runners", &pool),
        POOL_CAP as f64
    );
    assert_eq!(sum(&s, "forgejo_autoscaler_max_runners", &[]), 10.0);
    assert_eq!(
        sum(
            &s,
            "forgejo_autoscaler_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &s,
            "forgejo_autoscaler_forgejo_info",
            &[("version", version)]
        ),
        1.0
    );
    assert_labels_bounded(&s, version);
    assert!(
        !text.contains(&env.token),
        "the API token is not in the metrics"
    );

    assert!(
        scrapes.load(Ordering::SeqCst) >= 3,
        "scraped during the burst"
    );
    let peak = peak.load(Ordering::SeqCst);
    assert_eq!(
        peak, POOL_CAP as u64,
        "instances at the busiest scrape reach the cap, never more"
    );

    let status = terminate(&mut child, Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM\n{}",
        env.logs()
    );

    // Capacity is normal: logged at info on each change, not at every tick.
    let log = full_logs(&env);
    let at_cap: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pool at capacity"))
        .collect();
    let below: usize = log
        .lines()
        .filter(|l| l.contains("pool below capacity again"))
        .count();
    assert!(
        !at_cap.is_empty(),
        "a burst of {BURST_JOBS} on a cap of {POOL_CAP} reaches capacity\n{log}"
    );
    assert!(
        at_cap.iter().all(|l| l.contains(" INFO ")),
        "at info level: {at_cap:?}"
    );
    assert!(
        at_cap.len() == below || at_cap.len() == below + 1,
        "one line per change: {} vs {below}",
        at_cap.len()
    );
    let ticks = sum(&s, "forgejo_autoscaler_reconcile_tick_seconds_count", &[]);
    assert!(
        (at_cap.len() as f64) < ticks / 2.0,
        "{} capacity lines in {ticks} ticks",
        at_cap.len()
    );
    assert!(!log.contains(&env.token), "the API token is not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_burst_match_the_simulator_on_15() {
    metrics_after_a_burst("15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_burst_match_the_simulator_on_14() {
    metrics_after_a_burst("14").await;
}
