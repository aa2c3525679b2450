//! End to end, jobs in: the seed's own scenario (`run --url --user --password-file --max-jobs 4`
//! on a scheduled workflow) and a burst of 200 waiting jobs under a cap of 20, on Forgejo 13, 14
//! and 15 (issue 3, tests 1 and 2); and the real workflow shapes of `shared/workflow-shapes/`
//! on Forgejo 15, with a job no pool fits (issue 3, test 10, second part).
//!
//! Every test runs the real `forgejo-autoscaler` binary against the in-process simulator, with
//! the runner stand-in as the runner, and checks what the simulator, the process backend's
//! directory and the store say, not what the autoscaler claims.

mod e2e_jobs_support;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use e2e_jobs_support::*;
use support::*;

/// The seed's example workflow on a one-minute schedule, with steps short enough that a job
/// is over well within a poll interval.
const SEED_SCHEDULED_WORKFLOW: &str = r#"name: on-demand
on:
  schedule:
    - cron: '* * * * *'
jobs:
  first-job:
    runs-on: trixie
    steps:
      - run: echo "first job"
  second-job:
    runs-on: [bookworm, test]
    steps:
      - run: echo "second job"
"#;

/// Simulated time runs this much faster than real time, so the one-minute schedule fires
/// every 3 s.
const SEED_TIME_SCALE: f64 = 20.0;

/// Issue 3, test 1: the seed's scenario. The seed (run.sh) processes N jobs one at a time and
/// leaves a registration per job behind; the autoscaler must process exactly four, exit 0, and
/// leave no instance, no runner process and (15) no live registration; on 13/14 the
/// registrations are its bounded identities only (field notes #42, #49: nothing piles up).
async fn seed_scenario(version: &str) {
    let env = Env::start_scaled(version, SEED_TIME_SCALE).await;
    env.commit_workflow("on-demand.yml", SEED_SCHEDULED_WORKFLOW)
        .await;
    let password = write_password_file(&env);
    let state = env.path().join("state");
    let url = env.url();
    let runner = env.runner.display().to_string();
    let mut child = env.spawn_autoscaler(&[
        "run",
        "--url",
        &url,
        "--user",
        "root",
        "--password-file",
        &password.display().to_string(),
        "--scope",
        "repo:root/on-demand",
        "--max-jobs",
        "4",
        "--runner-binary",
        &runner,
        "--state-dir",
        &state.display().to_string(),
    ]);
    let status = wait_exit(&mut child, Duration::from_secs(180)).await;
    let Some(status) = status else {
        let _ = child.kill();
        panic!(
            "Forgejo {version}: `run --max-jobs 4` did not stop within 180 s\n{}",
            env.logs()
        );
    };
    assert_eq!(
        status.code(),
        Some(0),
        "Forgejo {version}: exit status\n{}",
        env.logs()
    );

    let jobs = env.sim_jobs().await;
    let succeeded: Vec<&SimJob> = jobs.iter().filter(|j| j.status == "success").collect();
    assert_eq!(
        succeeded.len(),
        4,
        "Forgejo {version}: four jobs processed; jobs: {jobs:#?}\n{}",
        env.logs()
    );
    let names: BTreeSet<&str> = succeeded.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["first-job", "second-job"]),
        "both jobs of the seed's workflow ran"
    );
    assert!(
        !jobs
            .iter()
            .any(|j| j.status == "failure" || j.status == "running"),
        "Forgejo {version}: no job failed or was left running: {jobs:#?}\n{}",
        env.logs()
    );

    assert_no_leftovers(&env, &state, version).await;
    let instances = stored_instances(&state.join("autoscaler.db")).expect("the store is readable");
    let done = instances
        .iter()
        .filter(|i| i.reason.as_deref() == Some("job_done"))
        .count();
    assert_eq!(
        done, 4,
        "Forgejo {version}: four instances ran a job: {instances:#?}"
    );
    if version == "15" {
        assert!(
            env.live_runners().await.is_empty(),
            "Forgejo 15: live registrations left: {:#?}",
            env.live_runners().await
        );
    } else {
        let identities =
            stored_identities(&state.join("autoscaler.db")).expect("identities readable");
        assert_registrations_are_identities(&env, &identities, 10, version).await;
    }
}

/// Nothing of ours is left: no instance directory, no runner process, no live store record.
async fn assert_no_leftovers(env: &Env, state: &Path, version: &str) {
    let instances_dir = state.join("instances");
    let left = std::fs::read_dir(&instances_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        left,
        0,
        "Forgejo {version}: instance directories left in {}\n{}",
        instances_dir.display(),
        env.logs()
    );
    assert!(
        runner_processes_under(state).is_empty(),
        "Forgejo {version}: runner processes left: {:?}",
        runner_processes_under(state)
    );
    let stored = stored_instances(&state.join("autoscaler.db")).expect("the store is readable");
    let live: Vec<_> = stored.iter().filter(|i| i.state != "gone").collect();
    assert!(
        live.is_empty(),
        "Forgejo {version}: live instances in the store: {live:#?}"
    );
}

/// Forgejo 13/14: every live registration is one of the autoscaler's identities, there are at
/// most `cap` of them, and none is still lent to an instance.
async fn assert_registrations_are_identities(
    env: &Env,
    identities: &[StoredIdentity],
    cap: usize,
    version: &str,
) {
    let registered = env.live_runners().await;
    let ids: BTreeSet<i64> = identities.iter().map(|i| i.runner_id).collect();
    assert!(
        !ids.is_empty(),
        "Forgejo {version}: identities were registered"
    );
    assert!(
        identities.len() <= cap,
        "Forgejo {version}: {} identities for a cap of {cap}",
        identities.len()
    );
    assert!(
        registered.len() <= identities.len(),
        "Forgejo {version}: {} registrations for {} identities: {registered:#?}",
        registered.len(),
        identities.len()
    );
    for runner in &registered {
        assert!(
            ids.contains(&runner.id),
            "Forgejo {version}: registration {runner:?} is not one of our identities"
        );
    }
    let lent: Vec<_> = identities
        .iter()
        .filter(|i| i.instance_id.is_some())
        .collect();
    assert!(
        lent.is_empty(),
        "Forgejo {version}: identities still lent out: {lent:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_on_forgejo_13() {
    seed_scenario("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_on_forgejo_14() {
    seed_scenario("14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_on_forgejo_15() {
    seed_scenario("15").await;
}

/// The largest value each watched quantity reached while the burst ran.
#[derive(Debug, Default)]
struct Peaks {
    sim_running_jobs: AtomicUsize,
    sim_live_registrations: AtomicUsize,
    instance_dirs: AtomicUsize,
    runner_processes: AtomicUsize,
    store_live: AtomicUsize,
    samples: AtomicUsize,
}

impl Peaks {
    fn record(slot: &AtomicUsize, value: usize) {
        slot.fetch_max(value, Ordering::SeqCst);
    }

    fn summary(&self) -> String {
        format!(
            "running jobs {}, live registrations {}, instance dirs {}, runner processes {}, live store records {} ({} samples)",
            self.sim_running_jobs.load(Ordering::SeqCst),
            self.sim_live_registrations.load(Ordering::SeqCst),
            self.instance_dirs.load(Ordering::SeqCst),
            self.runner_processes.load(Ordering::SeqCst),
            self.store_live.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

const BURST_JOBS: usize = 200;
const BURST_CAP: u32 = 20;

/// Issue 3, test 2: 200 waiting jobs, cap 20. Every job succeeds; at no sample are there more
/// than 20 instances (directories, runner processes, live store records), running jobs or
/// (15) live registrations; nothing is left afterwards. Field notes #3 (burst of 100+ jobs),
/// #7 (more jobs than max: every job still runs), #15 (never claim more runners than can be
/// started), #46 (slot accounting converges under many deletes).
async fn burst(version: &str) {
    let env = Arc::new(Env::start(version).await);
    let config = env.write_config(&ConfigOpts {
        max_runners: BURST_CAP,
        pool_max_runners: BURST_CAP,
        ..ConfigOpts::default()
    });
    env.commit_workflow(
        "burst.yml",
        &Env::burst_yaml(BURST_JOBS as u32, "echo burst"),
    )
    .await;
    let mut child = env.spawn_autoscaler(&["run", "-c", &config.display().to_string()]);

    let peaks = Arc::new(Peaks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_burst(env.clone(), peaks.clone(), stop.clone()));

    let started = Instant::now();
    let all_done = wait_until(Duration::from_secs(480), || {
        let env = env.clone();
        async move { env.finished_jobs().await >= BURST_JOBS }
    })
    .await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let status = terminate(&mut child, Duration::from_secs(60));
    let jobs = env.sim_jobs().await;
    let by_status = count_by(jobs.iter().map(|j| j.status.clone()));
    assert!(
        all_done,
        "Forgejo {version}: not every burst job finished in time: {by_status:?}\n{}",
        env.logs()
    );
    eprintln!(
        "Forgejo {version}: {BURST_JOBS} jobs in {elapsed:.1?}; peaks: {}",
        peaks.summary()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "Forgejo {version}: exit after SIGTERM\n{}",
        env.logs()
    );
    assert_eq!(
        by_status.get("success"),
        Some(&BURST_JOBS),
        "Forgejo {version}: every job succeeded: {by_status:?}\n{}",
        env.logs()
    );

    let cap = BURST_CAP as usize;
    assert!(
        peaks.samples.load(Ordering::SeqCst) >= 20,
        "too few samples: {}",
        peaks.summary()
    );
    for (what, slot) in [
        ("running jobs", &peaks.sim_running_jobs),
        ("live registrations", &peaks.sim_live_registrations),
        ("instance directories", &peaks.instance_dirs),
        ("runner processes", &peaks.runner_processes),
        ("live store records", &peaks.store_live),
    ] {
        let peak = slot.load(Ordering::SeqCst);
        assert!(
            peak <= cap,
            "Forgejo {version}: {peak} {what} at once, cap {cap} ({})",
            peaks.summary()
        );
    }
    // The cap was actually used: the burst ran in parallel, not one job at a time.
    assert!(
        peaks.store_live.load(Ordering::SeqCst) >= cap / 2,
        "Forgejo {version}: the burst never used half the cap ({})",
        peaks.summary()
    );

    let state = env.path().join("state");
    assert_no_leftovers(&env, &state, version).await;
    let instances = stored_instances(&store_of(&env)).expect("the store is readable");
    let reasons = count_by(
        instances
            .iter()
            .map(|i| i.reason.clone().unwrap_or_default()),
    );
    assert_eq!(
        reasons.get("job_done"),
        Some(&BURST_JOBS),
        "Forgejo {version}: one instance per job: {reasons:?}"
    );
    if version == "15" {
        let live = env.live_runners().await;
        assert!(
            live.is_empty(),
            "Forgejo 15: registrations left after the burst: {live:#?}"
        );
        let all = env.sim_runners().await;
        assert!(
            all.iter().all(|r| r.ephemeral),
            "Forgejo 15: every runner the autoscaler created is ephemeral"
        );
    } else {
        let identities = stored_identities(&store_of(&env)).expect("identities readable");
        assert_registrations_are_identities(&env, &identities, cap, version).await;
        assert!(
            env.sim_runners().await.len() <= cap,
            "Forgejo {version}: registrations ever made <= cap"
        );
    }
}

/// Samples every 100 ms until `stop`: running jobs and live registrations in the simulator,
/// instance directories and runner processes of the process backend, live records in the store.
async fn sample_burst(env: Arc<Env>, peaks: Arc<Peaks>, stop: Arc<AtomicBool>) {
    let state = env.path().join("state");
    let instances_dir = state.join("instances");
    while !stop.load(Ordering::SeqCst) {
        let stats = env.sim_stats().await;
        Peaks::record(
            &peaks.sim_running_jobs,
            stats["jobs"]["running"].as_u64().unwrap_or(0) as usize,
        );
        let live = env.live_runners().await.len();
        // 13/14: the registrations are the identities, which outlive their instances.
        if env.version == "15" {
            Peaks::record(&peaks.sim_live_registrations, live);
        } else {
            Peaks::record(&peaks.sim_live_registrations, env.sim_runners().await.len());
        }
        Peaks::record(
            &peaks.instance_dirs,
            std::fs::read_dir(&instances_dir)
                .map(|d| d.count())
                .unwrap_or(0),
        );
        Peaks::record(
            &peaks.runner_processes,
            runner_binary_pids_under(&instances_dir).len(),
        );
        if let Some(stored) = stored_instances(&store_of(&env)) {
            Peaks::record(
                &peaks.store_live,
                stored.iter().filter(|i| i.state != "gone").count(),
            );
        }
        peaks.samples.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count_by(items: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_200_under_cap_20_on_forgejo_13() {
    burst("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_200_under_cap_20_on_forgejo_14() {
    burst("14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_200_under_cap_20_on_forgejo_15() {
    burst("15").await;
}
