//! Issue 3, test 3: a job cancelled before pickup, during instance start and while running.
//! Its instance and its registration are gone within the configured deadline, the reason is
//! in the store, and nothing is left behind — on Forgejo 13, 14 and 15.
//!
//! Field notes, bug log: #35 (Buildkite agent-stack-k8s#382/#392: machines kept being made
//! and left pending for cancelled builds), #33 (ARC#4602: a slow-starting instance must still
//! be reaped), #28 (a runner whose handle is no longer waiting must be reaped), #47 (GARM#813:
//! every state needs a way out), and the "cancelled-job handling" row (ARC#4091/#4307).

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The deadlines the tests configure. The cancellation must be acted on well within the
/// pickup deadline: that is the longest an instance may exist without running a job.
const TIMEOUTS: &str =
    "boot = \"20s\"\npickup = \"20s\"\nteardown = \"10s\"\norphan_grace = \"5s\"\ndrain = \"5s\"";
const DEADLINE: Duration = Duration::from_secs(20);
const POOL_CAP: u32 = 4;

fn opts() -> ConfigOpts {
    ConfigOpts {
        max_runners: POOL_CAP,
        pool_max_runners: POOL_CAP,
        timeouts: TIMEOUTS,
        ..ConfigOpts::default()
    }
}

fn one_job(name: &str, script: &str) -> String {
    format!(
        "on: [push]\njobs:\n  {name}:\n    runs-on: trixie\n    steps:\n      - run: {script}\n"
    )
}

/// Reasons that honestly describe the end of an instance whose job was cancelled before its
/// runner got it: the job left the queue, or the runner found no task and exited.
const NOT_PICKED: &[&str] = &["cancelled", "no_task"];

/// Waits until every instance made for `job_id` is gone; returns them, or fails with the logs.
async fn instances_of_job_gone(env: &Env, job_id: i64, within: Duration) -> Vec<StoreInstance> {
    let gone = wait_until(within, || async {
        env.store_instances()
            .iter()
            .filter(|i| i.job_id == Some(job_id))
            .all(|i| i.state == "gone")
    })
    .await;
    let records: Vec<StoreInstance> = env
        .store_instances()
        .into_iter()
        .filter(|i| i.job_id == Some(job_id))
        .collect();
    assert!(
        gone,
        "instances of job {job_id} not gone within {within:?}: {records:#?}\n{}",
        env.logs()
    );
    records
}

/// Asserts nothing is left while the daemon still runs, then stops it (exit 0).
async fn assert_clean_and_stop(env: &Env, mut daemon: std::process::Child) {
    let clean = wait_until(Duration::from_secs(15), || async {
        env.leftovers(POOL_CAP as usize).await.is_empty()
    })
    .await;
    let left = env.leftovers(POOL_CAP as usize).await;
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(clean, "left behind: {left:?}\n{}", env.logs());
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
}

/// Forgejo 15: the ephemeral runner of each record is deleted (13/14 identities are checked
/// by `leftovers`: lent back, and no more than the cap exist).
async fn assert_registrations_deleted(env: &Env, records: &[StoreInstance]) {
    if env.version != "15" {
        return;
    }
    let runners = env.sim_runners().await;
    for record in records {
        let Some(runner_id) = record.runner_id else {
            continue;
        };
        let runner = runners.iter().find(|r| r.id == runner_id);
        assert!(
            runner.is_some_and(|r| r.deleted),
            "runner {runner_id} of {} not deleted: {runner:?}\n{}",
            record.id,
            env.logs()
        );
    }
}

/// (a) Cancelled before any runner could pick it: a job cancelled before the autoscaler
/// starts never gets an instance; one cancelled right after its creation, with the autoscaler
/// running, gets none or loses it with a recorded reason. A control job proves the autoscaler
/// was serving all along (so "no instance" is not just a dead daemon). Each commit is a push
/// that starts every `on: push` workflow again (as Forgejo does): the extra runs are served
/// and must leave nothing either; the assertions name the jobs by id.
async fn cancelled_before_pickup(version: &str) {
    let env = Env::start(version).await;
    env.commit_workflow("early.yml", &one_job("early", "sleep 1"))
        .await;
    let early = env.job_named("early").await;
    env.cancel_job(early.id).await;
    let config = env.write_config(&opts());
    let daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);

    env.commit_workflow("control.yml", &one_job("control", "true"))
        .await;
    let control = env.job_named("control").await;
    let served = wait_until(Duration::from_secs(60), || async {
        env.job_by_id(control.id).await.status == "success"
    })
    .await;
    assert!(
        served,
        "control job not served: {:?}\n{}",
        env.job_by_id(control.id).await,
        env.logs()
    );

    env.commit_workflow("late.yml", &one_job("late", "sleep 60"))
        .await;
    let late = env.job_named("late").await;
    env.cancel_job(late.id).await;
    let cancelled_at = Instant::now();
    let records = instances_of_job_gone(&env, late.id, DEADLINE).await;
    assert!(cancelled_at.elapsed() <= DEADLINE + Duration::from_secs(1));
    for record in &records {
        let reason = record.reason.as_deref().unwrap_or("none");
        assert!(
            NOT_PICKED.contains(&reason),
            "{} removed with reason {reason}: {record:?}\n{}",
            record.id,
            env.logs()
        );
    }
    assert_registrations_deleted(&env, &records).await;

    assert!(
        env.store_instances()
            .iter()
            .all(|i| i.job_id != Some(early.id)),
        "an instance was made for a job cancelled before the autoscaler started: {:#?}",
        env.store_instances()
    );
    for id in [early.id, late.id] {
        let job = env.job_by_id(id).await;
        assert_eq!(
            (job.status.as_str(), job.runner_id),
            ("cancelled", None),
            "{job:?}"
        );
    }
    assert_clean_and_stop(&env, daemon).await;
}

/// (b) Cancelled while the instance is still starting: the runner executable sleeps before
/// it becomes the runner (an image pull, a VM boot), and the job is cancelled meanwhile.
async fn cancelled_during_instance_start(version: &str) {
    let env = Env::start(version).await;
    let config = env.write_config(&opts());
    use_runner_binary(&config, &env.slow_runner(Duration::from_secs(6)));
    env.commit_workflow("slow.yml", &one_job("slow-start", "sleep 60"))
        .await;
    let job = env.job_named("slow-start").await;
    let daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);

    let has_instance = wait_until(Duration::from_secs(20), || async {
        env.store_instances()
            .iter()
            .any(|i| i.job_id == Some(job.id))
    })
    .await;
    assert!(
        has_instance,
        "no instance for job {}\n{}",
        job.id,
        env.logs()
    );
    assert_eq!(
        env.job_by_id(job.id).await.status,
        "waiting",
        "the runner must not have started yet"
    );
    env.cancel_job(job.id).await;
    let cancelled_at = Instant::now();

    let records = instances_of_job_gone(&env, job.id, DEADLINE).await;
    assert!(cancelled_at.elapsed() <= DEADLINE + Duration::from_secs(1));
    for record in &records {
        let reason = record.reason.as_deref().unwrap_or("none");
        assert!(
            NOT_PICKED.contains(&reason),
            "{} removed with reason {reason}: {record:?}\n{}",
            record.id,
            env.logs()
        );
    }
    assert_registrations_deleted(&env, &records).await;
    let job = env.job_by_id(job.id).await;
    assert_eq!(
        (job.status.as_str(), job.runner_id),
        ("cancelled", None),
        "{job:?}"
    );
    assert_clean_and_stop(&env, daemon).await;
}

/// (c) Cancelled while running: the step sleeps long; after the cancel its runner, its
/// step's shell and its registration are gone (Forgejo 15 deletes the ephemeral runner under
/// the instance, contract §4 quirk 16, so the autoscaler must stop the instance itself).
async fn cancelled_while_running(version: &str) {
    let env = Env::start(version).await;
    let marker = format!(
        "cancel-marker-{}",
        env.path().file_name().unwrap().to_string_lossy()
    );
    let config = env.write_config(&opts());
    env.commit_workflow(
        "long.yml",
        &one_job("long", &format!("sleep 120; echo {marker}")),
    )
    .await;
    let job = env.job_named("long").await;
    let daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);

    let running = wait_until(Duration::from_secs(30), || async {
        env.job_by_id(job.id).await.status == "running"
    })
    .await;
    assert!(
        running,
        "job never ran: {:?}\n{}",
        env.job_by_id(job.id).await,
        env.logs()
    );
    let step_started = wait_until(Duration::from_secs(10), || async {
        !processes_with_cmdline(&marker).is_empty()
    })
    .await;
    assert!(
        step_started,
        "the step's shell never appeared\n{}",
        env.logs()
    );
    env.cancel_job(job.id).await;
    let cancelled_at = Instant::now();

    let records = instances_of_job_gone(&env, job.id, DEADLINE).await;
    assert!(cancelled_at.elapsed() <= DEADLINE + Duration::from_secs(1));
    assert!(
        !records.is_empty(),
        "the running job had no instance record"
    );
    for record in &records {
        let reason = record.reason.as_deref().unwrap_or("none");
        // The runner either learnt of the cancel and ended its job (job_done), or its
        // registration vanished under it (15: runner_gone).
        assert!(
            ["job_done", "runner_gone"].contains(&reason),
            "{} removed with reason {reason}: {record:?}\n{}",
            record.id,
            env.logs()
        );
    }
    assert_registrations_deleted(&env, &records).await;
    assert!(
        processes_with_cmdline(&marker).is_empty(),
        "the cancelled step still runs\n{}",
        env.logs()
    );
    assert_eq!(env.job_by_id(job.id).await.status, "cancelled");
    assert_clean_and_stop(&env, daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_before_pickup_13() {
    cancelled_before_pickup("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_before_pickup_14() {
    cancelled_before_pickup("14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_before_pickup_15() {
    cancelled_before_pickup("15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_during_instance_start_13() {
    cancelled_during_instance_start("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_during_instance_start_14() {
    cancelled_during_instance_start("14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_during_instance_start_15() {
    cancelled_during_instance_start("15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_running_13() {
    cancelled_while_running("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_running_14() {
    cancelled_while_running("14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_running_15() {
    cancelled_while_running("15").await;
}
