//! Issue 4, test 1 (the cancellation half): e2e_cancel.rs's scenarios through the docker
//! backend, on Forgejo 15 and 13. A job is cancelled through the simulator's control API
//! (`POST /_sim/jobs/{id}/cancel`, a user pressing "cancel"):
//! * while it runs: its container is stopped (the step's process is gone) and removed, the
//!   record says `job_done` (the runner learnt of the cancel and ended) or `runner_gone`
//!   (Forgejo 15 deleted the ephemeral runner under it), as in e2e_cancel.rs;
//! * while it still waits and its container is starting (an image whose runner sleeps 6 s
//!   before it starts, like a slow pull): removed with `cancelled` (the job left the queue)
//!   or `no_task` (the runner found nothing and exited).
//!
//! Either way within the deadline, no registration is left, and the pool's only slot (cap 1)
//! serves the next job. Jobs are started with `workflow_dispatch`, not by pushes, so that one
//! commit does not start every workflow again.
//!
//! Needs the Docker engine and the stand-in image like e2e_docker.rs, and fails without them
//! unless `AUTOSCALER_SKIP_DOCKER_TESTS=1`. The slow-starting image is derived from the
//! stand-in here (`docker create` + `cp` + `commit`, no registry, no builder) and removed
//! after the test.

mod container_support;
mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use container_support::*;
use support::*;

const DOCKER: Cli = Cli("docker");

/// The deadlines the tests configure (as e2e_cancel.rs; `boot` is longer because a container
/// takes longer than a process to start on a busy 2-core machine).
const TIMEOUTS: &str = "boot = \"30s\"\npickup = \"20s\"\nteardown = \"10s\"\ndrain = \"5s\"";
/// The cancellation must be acted on well within the pickup deadline.
const DEADLINE: Duration = Duration::from_secs(20);
/// One slot: the job after the cancelled one only runs if the slot was freed.
const CAP: u32 = 1;
/// Reasons of an instance whose job was cancelled before its runner got it.
const NOT_PICKED: &[&str] = &["cancelled", "no_task"];
/// Reasons of an instance whose running job was cancelled.
const ENDED_RUNNING: &[&str] = &["job_done", "runner_gone"];

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `false` when the tests must be skipped (said so on stderr); panics when the engine or the
/// image is missing and skipping was not asked for.
fn engine_ready() -> bool {
    let Err(problem) = DOCKER.try_run(&["image", "inspect", "--format", "{{.Id}}", IMAGE]) else {
        return true;
    };
    if std::env::var("AUTOSCALER_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED (AUTOSCALER_SKIP_DOCKER_TESTS=1): {problem}");
        return false;
    }
    panic!(
        "the docker backend tests need a running Docker engine and the image {IMAGE}: {problem}\n\
         start dockerd and run tests/support/build-runner-image.sh (as .ci/run does), \
         or set AUTOSCALER_SKIP_DOCKER_TESTS=1 to skip them locally"
    );
}

/// The stand-in image plus `/bin/slow-forgejo-runner`, which sleeps before it becomes the
/// runner. Removed when dropped.
struct SlowImage(String);

impl SlowImage {
    fn build(tag: &str, delay_secs: u32) -> SlowImage {
        let image = format!("local/forgejo-runner-stand-in:{tag}");
        let dir = tempfile::tempdir().expect("temporary directory");
        let script = dir.path().join("slow-forgejo-runner");
        std::fs::write(
            &script,
            // Stops at once on SIGTERM, as the runner itself would (as PID 1 a shell ignores
            // it, and the engine would wait the whole stop grace before SIGKILL).
            format!(
                "#!/bin/sh\ntrap 'exit 143' TERM\nsleep {delay_secs} &\nwait $!\nexec forgejo-runner \"$@\"\n"
            ),
        )
        .expect("script written");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("script mode");
        let container = DOCKER.run(&["create", IMAGE, "true"]);
        let container = container.trim();
        let built = DOCKER
            .try_run(&[
                "cp",
                &script.display().to_string(),
                &format!("{container}:/bin/slow-forgejo-runner"),
            ])
            .and_then(|_| DOCKER.try_run(&["commit", container, &image]));
        let _ = DOCKER.try_run(&["rm", "-f", container]);
        built.unwrap_or_else(|e| panic!("building {image}: {e}"));
        SlowImage(image)
    }
}

impl Drop for SlowImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.0])
            .output();
    }
}

fn one_job(name: &str, script: &str) -> String {
    format!(
        "on: [workflow_dispatch]\njobs:\n  {name}:\n    runs-on: trixie\n    steps:\n      - run: {script}\n"
    )
}

/// Starts `file` through `workflow_dispatch`; the id of its one job.
async fn dispatch(env: &Env, file: &str) -> i64 {
    let response = env
        .sim_post(
            "/dispatch",
            serde_json::json!({"owner": "root", "repo": "on-demand", "workflow": file}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 201, "dispatch {file}");
    let body: serde_json::Value = response.json().await.expect("dispatch answer");
    body["jobs"][0].as_i64().expect("one job id")
}

/// The containers of every instance made for `job_id`, and those instances' ids.
fn job_instances(env: &Env, job_id: i64) -> Vec<StoreInstance> {
    env.store_instances()
        .into_iter()
        .filter(|i| i.job_id == Some(job_id))
        .collect()
}

/// Waits until every instance of `job_id` is gone and its container removed; returns the
/// records, or fails with the logs.
async fn gone_with_containers(env: &Env, job_id: i64) -> Vec<StoreInstance> {
    let gone = wait_until(DEADLINE, || async {
        let records = job_instances(env, job_id);
        records.iter().all(|i| i.state == "gone")
            && records
                .iter()
                .all(|i| instance_containers(DOCKER, &i.id).is_empty())
    })
    .await;
    let records = job_instances(env, job_id);
    assert!(
        gone,
        "instances of job {job_id} not gone within {DEADLINE:?}: {records:#?}, containers {:?}\n{}",
        records
            .iter()
            .map(|i| instance_containers(DOCKER, &i.id))
            .collect::<Vec<_>>(),
        env.logs()
    );
    records
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

fn assert_reasons(env: &Env, records: &[StoreInstance], allowed: &[&str]) {
    for record in records {
        let reason = record.reason.as_deref().unwrap_or("none");
        assert!(
            allowed.contains(&reason),
            "{} removed with reason {reason} (expected one of {allowed:?}): {record:?}\n{}",
            record.id,
            env.logs()
        );
    }
}

/// Prints how long the removal took and where the time went (seen, then stopped and removed).
fn report(env: &Env, what: &str, records: &[StoreInstance], took: Duration) {
    for record in records {
        let removing = env
            .deleting_since_ms(&record.id)
            .map(|ms| format!("{:.1} s", (record.state_since_ms - ms) as f64 / 1000.0))
            .unwrap_or_else(|| "?".into());
        eprintln!(
            "Forgejo {}: {what} job cancelled; its container was gone {:.1} s later (removal itself: {removing}), reason {}",
            env.version,
            took.as_secs_f64(),
            record.reason.as_deref().unwrap_or("none"),
        );
    }
}

/// The freed slot serves the next job, then nothing is left and the daemon stops cleanly.
async fn next_job_runs_and_nothing_left(env: &Env, pool: &str, mut daemon: Daemon) {
    let after = dispatch(env, "after.yml").await;
    let served = wait_until(Duration::from_secs(90), || async {
        env.job_by_id(after).await.status == "success"
    })
    .await;
    assert!(
        served,
        "the job after the cancelled one did not get the freed slot: {:?}\n{}",
        env.job_by_id(after).await,
        env.logs()
    );
    assert_nothing_left(DOCKER, env, pool, CAP as usize).await;
    let status = terminate(&mut daemon.0, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
}

/// Cancelled while running: the container is stopped (the step's process is gone) and
/// removed, the registration deleted, the slot freed.
async fn cancelled_while_running(version: &str) {
    let env = Env::start(version).await;
    let pool = unique_pool("dc");
    let _guard = PoolGuard {
        cli: DOCKER,
        pool: pool.clone(),
    };
    let marker = format!("cancel-marker-{pool}");
    let config = DockerPool {
        name: &pool,
        cap: CAP,
        docker_host: None,
        image: IMAGE,
        runner_binary: "forgejo-runner",
        timeouts: TIMEOUTS,
    }
    .write(&env);
    env.commit_workflow(
        "long.yml",
        &one_job("long", &format!("sleep 120; echo {marker}")),
    )
    .await;
    env.commit_workflow("after.yml", &one_job("after", "echo after"))
        .await;
    let daemon = Daemon(env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]));
    let job = dispatch(&env, "long.yml").await;

    let running = wait_until(Duration::from_secs(60), || async {
        env.job_by_id(job).await.status == "running" && !processes_with_cmdline(&marker).is_empty()
    })
    .await;
    assert!(
        running,
        "the job never ran in a container: {:?}\n{}",
        env.job_by_id(job).await,
        env.logs()
    );
    let instances = job_instances(&env, job);
    assert_eq!(instances.len(), 1, "{instances:#?}");
    let containers = instance_containers(DOCKER, &instances[0].id);
    assert_eq!(containers.len(), 1, "one container for the instance");
    let state = DOCKER.run(&["inspect", "--format", "{{.State.Status}}", &containers[0]]);
    assert_eq!(state.trim(), "running");

    env.cancel_job(job).await;
    let cancelled_at = Instant::now();
    let records = gone_with_containers(&env, job).await;
    let took = cancelled_at.elapsed();
    assert_reasons(&env, &records, ENDED_RUNNING);
    assert_registrations_deleted(&env, &records).await;
    assert!(
        processes_with_cmdline(&marker).is_empty(),
        "the cancelled step still runs\n{}",
        env.logs()
    );
    assert_eq!(env.job_by_id(job).await.status, "cancelled");
    report(&env, "running", &records, took);
    next_job_runs_and_nothing_left(&env, &pool, daemon).await;
}

/// Cancelled while waiting, its container already started but its runner not yet asking
/// for work: the container is removed before it takes the job, the slot freed.
async fn cancelled_while_waiting(version: &str) {
    let env = Env::start(version).await;
    let pool = unique_pool("dw");
    // Before the guard, so that the containers are removed before their image.
    let slow = SlowImage::build(&format!("slow-{pool}"), 6);
    let _guard = PoolGuard {
        cli: DOCKER,
        pool: pool.clone(),
    };
    let config = DockerPool {
        name: &pool,
        cap: CAP,
        docker_host: None,
        image: &slow.0,
        runner_binary: "slow-forgejo-runner",
        timeouts: TIMEOUTS,
    }
    .write(&env);
    env.commit_workflow("waits.yml", &one_job("waits", "sleep 60"))
        .await;
    env.commit_workflow("after.yml", &one_job("after", "echo after"))
        .await;
    let daemon = Daemon(env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]));
    let job = dispatch(&env, "waits.yml").await;

    let container_up = wait_until(Duration::from_secs(30), || async {
        job_instances(&env, job).iter().any(|i| {
            instance_containers(DOCKER, &i.id).iter().any(|c| {
                DOCKER
                    .try_run(&["inspect", "--format", "{{.State.Status}}", c])
                    .is_ok_and(|s| s.trim() == "running")
            })
        })
    })
    .await;
    assert!(
        container_up,
        "no running container for job {job}: {:#?}\n{}",
        job_instances(&env, job),
        env.logs()
    );
    assert_eq!(
        env.job_by_id(job).await.status,
        "waiting",
        "the runner must not have started yet"
    );
    env.cancel_job(job).await;
    let cancelled_at = Instant::now();
    let records = gone_with_containers(&env, job).await;
    let took = cancelled_at.elapsed();
    assert_reasons(&env, &records, NOT_PICKED);
    assert_registrations_deleted(&env, &records).await;
    let cancelled = env.job_by_id(job).await;
    assert_eq!(
        (cancelled.status.as_str(), cancelled.runner_id),
        ("cancelled", None),
        "{cancelled:?}"
    );
    report(&env, "waiting", &records, took);
    next_job_runs_and_nothing_left(&env, &pool, daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cancelled_while_running_15() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    cancelled_while_running("15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cancelled_while_running_13() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    cancelled_while_running("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cancelled_while_waiting_15() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    cancelled_while_waiting("15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cancelled_while_waiting_13() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    cancelled_while_waiting("13").await;
}
