//! CI keeps the harness working: the `smoke` scenario (6 short jobs) through the seed and the
//! autoscaler, with the binaries of the test's own profile, checked end to end. The docker
//! system runs too where the engine and the stand-in image are present (CI builds them), and
//! is otherwise reported as unavailable with its reason.

use bench::{binaries::Binaries, report::ScenarioReport, scenario::Scenario, system::SystemKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_runs_both_systems_and_writes_the_report() {
    let binaries =
        Binaries::locate(true).expect("simulator, autoscaler and runner stand-in are built");
    let out = tempfile::tempdir().expect("tempdir");
    let scenario = Scenario::named("smoke").expect("smoke scenario");
    let total = u64::from(scenario.total_jobs());
    let options = bench::Options {
        scenario,
        systems: vec![
            SystemKind::Seed,
            SystemKind::AutoscalerProcess,
            SystemKind::AutoscalerDocker,
        ],
        forgejo_version: "15".into(),
        binaries,
        json_dir: out.path().join("json"),
        work_dir: out.path().join("work"),
        command: "cargo test -p bench".into(),
        reduced: None,
    };
    let report = bench::run_scenario(&options)
        .await
        .expect("the smoke scenario runs");

    let seed = &report.systems["seed"];
    let ours = &report.systems["autoscaler-process"];
    let docker = report.systems.get("autoscaler-docker");
    let mut checked = vec![("seed", seed), ("autoscaler-process", ours)];
    match (docker, report.unavailable.get("autoscaler-docker")) {
        (Some(d), None) => checked.push(("autoscaler-docker", d)),
        (None, Some(reason)) => assert!(reason.starts_with("not available: "), "{reason}"),
        other => panic!("autoscaler-docker must either run or say why not: {other:?}"),
    }
    for (name, r) in checked.iter().copied() {
        assert_eq!(r.jobs_done, total, "{name} finished every job: {r:?}");
        assert!(
            r.completed && r.makespan_s.is_some(),
            "{name} has a makespan"
        );
        assert_eq!(r.waits_s.len() as u64, total, "{name}: one wait per job");
        assert!(
            r.wait_p50_s <= r.wait_p95_s && r.wait_p95_s <= r.wait_max_s,
            "{name}: ordered percentiles"
        );
        assert!(
            r.floor_wait_s > r.poll_interval_s / 2.0,
            "{name}: floor includes the runner start"
        );
        assert!(
            r.requests_by_endpoint
                .keys()
                .any(|k| k.contains("/actions/runners/jobs")),
            "{name} polled the jobs list"
        );
        assert!(r.peak_rss_kib > 0, "{name}: peak RSS sampled");
        assert_eq!(r.runners_created, total, "{name}: one runner per job");
    }
    // The seed registers a permanent runner per job; the autoscaler leaves nothing behind.
    assert_eq!(seed.runners_leaked, total);
    for (name, r) in checked.iter().skip(1) {
        assert_eq!(r.runners_leaked, 0, "{name} leaked: {r:?}");
        assert!(
            r.reconcile_tick.as_ref().is_some_and(|t| t.ticks > 0),
            "{name}: reconcile ticks scraped from /metrics"
        );
    }
    // Sequential 0.2 s jobs behind a 5 s poll cannot beat runners started in parallel.
    assert!(
        ours.makespan_s < seed.makespan_s,
        "autoscaler {:?} vs seed {:?}",
        ours.makespan_s,
        seed.makespan_s
    );
    assert!(report.ratios["autoscaler-process/seed"]["makespan"].is_some());

    let written = ScenarioReport::read_json(&out.path().join("json/smoke.json"))
        .expect("smoke.json written and readable");
    assert_eq!(written.scenario, "smoke");
    assert_eq!(written.systems.len(), checked.len());
    let svg = out.path().join("smoke.svg");
    assert!(bench::plot::write_wait_svg(&written, &svg).expect("plot drawn"));
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(text.starts_with("<svg") && text.contains("autoscaler-process"));
}
