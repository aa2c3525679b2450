//! End to end, runners out: what happens to one of our runners when the world does not go to
//! plan, on Forgejo 13, 14 and 15 (issue 3, tests 4 and 5).
//!
//! * Another runner takes the job first: our idle runner is removed (15: its registration
//!   deleted; 13/14: its identity lent back) and the job completes on the other runner.
//! * The runner process is SIGKILLed mid-job: the slot is freed, the registration cleaned or
//!   the identity lent back, the instance removed with a reason, and new jobs are still served.

mod e2e_jobs_support;
mod support;

use std::{path::Path, time::Duration};

use e2e_jobs_support::*;
use support::*;

/// Labels of the foreign runner: the same names as the default pool.
const FOREIGN_LABELS: &str = "trixie:host,bookworm:host,test:host";

/// How long our runner sleeps before it first talks to Forgejo, so that the foreign runner can
/// take the job after our instance was created and before our runner asks for it.
const OUR_RUNNER_DELAY: Duration = Duration::from_secs(4);

/// Registers a runner with the scope's registration token, the way an admin's static runner
/// is registered, in its own directory; returns that directory and the runner's id.
async fn register_foreign_runner(env: &Env) -> (std::path::PathBuf, i64) {
    let dir = env.path().join("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    let token = registration_token(env).await;
    let output = tokio::process::Command::new(&env.runner)
        .args([
            "register",
            "--instance",
            &env.url(),
            "--token",
            &token,
            "--name",
            "foreign-runner",
        ])
        .args(["--labels", FOREIGN_LABELS, "--no-interactive"])
        .current_dir(&dir)
        .output()
        .await
        .expect("register runs");
    assert!(
        output.status.success(),
        "foreign register: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runners = env.sim_runners().await;
    let foreign = runners
        .iter()
        .find(|r| r.name == "foreign-runner")
        .expect("foreign runner registered");
    (dir, foreign.id)
}

async fn job_named(env: &Env, name: &str) -> Option<SimJob> {
    env.sim_jobs().await.into_iter().find(|j| j.name == name)
}

/// Issue 3, test 4. Field notes #13 and #28 (a runner started for a job that another runner
/// took must be reaped, and must not take some other job instead), #49 (a runner that never
/// got its task leaves a registration Forgejo never removes: the autoscaler must delete it).
async fn taken_by_another_runner(version: &str) {
    let env = Env::start(version).await;
    let config = env.write_config(&ConfigOpts::default());
    set_runner_binary(
        &config,
        &delayed_runner(&env, "slow-runner.sh", OUR_RUNNER_DELAY),
    );
    let (foreign_dir, foreign_id) = register_foreign_runner(&env).await;
    let mut autoscaler = env.spawn_autoscaler(&["run", "-c", &config.display().to_string()]);

    // Long enough that, on 15, our runner is up and idle while the job still runs elsewhere.
    env.commit_workflow(
        "taken.yml",
        "on: [push]\njobs:\n  taken:\n    runs-on: trixie\n    steps:\n      - run: echo taken elsewhere; sleep 8\n",
    )
    .await;
    let job = wait_for_job(&env, "taken").await;

    // Our instance exists for the job; its runner is still asleep.
    let store = store_of(&env);
    let ours_created = wait_until(Duration::from_secs(30), || async {
        stored_instances(&store).is_some_and(|list| list.iter().any(|i| i.job_id == Some(job.id)))
    })
    .await;
    assert!(
        ours_created,
        "Forgejo {version}: an instance for job {}\n{}",
        job.id,
        env.logs()
    );

    let mut foreign = tokio::process::Command::new(&env.runner)
        .args(["one-job", "--wait", "--fetch-interval", "200ms"])
        .current_dir(&foreign_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.path().join("foreign.log")).unwrap())
        .spawn()
        .expect("foreign one-job starts");
    let taken = wait_until(Duration::from_secs(20), || async {
        job_named(&env, "taken")
            .await
            .is_some_and(|j| j.runner_id == Some(foreign_id))
    })
    .await;
    assert!(
        taken,
        "Forgejo {version}: the foreign runner took the job: {:?}\n{}",
        job_named(&env, "taken").await,
        env.logs()
    );
    let foreign_status = tokio::time::timeout(Duration::from_secs(60), foreign.wait()).await;
    assert!(
        matches!(foreign_status, Ok(Ok(s)) if s.success()),
        "Forgejo {version}: the foreign runner ran the job: {foreign_status:?}"
    );
    let finished = job_named(&env, "taken").await.expect("job");
    assert_eq!(
        finished.status, "success",
        "Forgejo {version}: the job completed on the foreign runner: {finished:?}"
    );
    assert_eq!(
        finished.runner_id,
        Some(foreign_id),
        "Forgejo {version}: ... and only there"
    );

    // Our idle runner is removed, with a reason that says why.
    let removed = wait_until(Duration::from_secs(60), || async {
        stored_instances(&store).is_some_and(|list| list.iter().all(|i| i.state == "gone"))
    })
    .await;
    let instances = stored_instances(&store).expect("the store is readable");
    assert!(
        removed,
        "Forgejo {version}: our instance was not removed: {instances:#?}\n{}",
        env.logs()
    );
    assert_eq!(
        instances.len(),
        1,
        "Forgejo {version}: one instance, never a second one for the job: {instances:#?}"
    );
    let ours = &instances[0];
    let reason = ours.reason.as_deref().unwrap_or_default();
    let runner_id = ours.runner_id.expect("our instance had a registration");
    eprintln!(
        "Forgejo {version}: our idle runner was removed with reason {reason:?} (exit code {:?})",
        ours.exit_code
    );
    if version == "15" {
        assert!(
            matches!(reason, "taken_by_other" | "cancelled"),
            "Forgejo 15: removal reason {reason:?}: {ours:?}\n{}",
            env.logs()
        );
        let ours_registered = env
            .sim_runners()
            .await
            .into_iter()
            .find(|r| r.id == runner_id)
            .expect("our runner");
        assert!(
            ours_registered.deleted,
            "Forgejo 15: our registration {runner_id} was deleted: {ours_registered:?}"
        );
        assert!(
            env.live_runners().await.iter().all(|r| r.id == foreign_id),
            "Forgejo 15: only the foreign registration is left: {:#?}",
            env.live_runners().await
        );
    } else {
        // One fetch, no task: the runner exits on its own (exit code 2 of one-job) and the
        // identity goes back to the pool.
        assert_eq!(
            reason,
            "no_task",
            "Forgejo {version}: removal reason: {ours:?}\n{}",
            env.logs()
        );
        assert_eq!(
            ours.exit_code,
            Some(2),
            "Forgejo {version}: one-job's no-task exit code: {ours:?}"
        );
        let identities = stored_identities(&store).expect("identities readable");
        assert_eq!(
            identities.len(),
            1,
            "Forgejo {version}: one identity: {identities:#?}"
        );
        assert_eq!(identities[0].runner_id, runner_id);
        assert_eq!(
            identities[0].instance_id, None,
            "Forgejo {version}: the identity is back in the pool"
        );
    }
    assert_eq!(
        env.backend_instances(),
        0,
        "Forgejo {version}: no instance directory left"
    );
    let status = terminate(&mut autoscaler, Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "Forgejo {version}: exit after SIGTERM\n{}",
        env.logs()
    );
}

async fn wait_for_job(env: &Env, name: &str) -> SimJob {
    let appeared = wait_until(Duration::from_secs(10), || async {
        job_named(env, name).await.is_some()
    })
    .await;
    assert!(appeared, "job {name} created by the push");
    job_named(env, name).await.expect("job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_by_another_runner_on_forgejo_13() {
    taken_by_another_runner("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_by_another_runner_on_forgejo_14() {
    taken_by_another_runner("14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_by_another_runner_on_forgejo_15() {
    taken_by_another_runner("15").await;
}

/// A step whose command line is unique (per version: the three tests run at the same time),
/// to find it among all processes.
fn step_marker(version: &str) -> String {
    format!("killed-mid-job-step-on-{version}")
}

/// Issue 3, test 5. Field notes #31 (an OOM-killed runner must free its slot), #30 (a runner
/// that disappears mid-job must not hold the slot forever) and #50 (its registration must not
/// be left behind). The pool has a single slot, so serving the next job proves the slot freed.
async fn runner_killed_mid_job(version: &str) {
    let env = Env::start(version).await;
    let marker = step_marker(version);
    let config = env.write_config(&ConfigOpts {
        max_runners: 1,
        pool_max_runners: 1,
        ..ConfigOpts::default()
    });
    let mut autoscaler = env.spawn_autoscaler(&["run", "-c", &config.display().to_string()]);
    // Started by hand, not by pushes: the next commit must not start it again.
    env.commit_workflow(
        "long.yml",
        &format!(
            "on: [workflow_dispatch]\njobs:\n  long:\n    runs-on: trixie\n    steps:\n      - run: echo {marker}; sleep 60; echo not reached\n"
        ),
    )
    .await;
    let dispatched = env
        .sim_post(
            "/dispatch",
            serde_json::json!({"owner": "root", "repo": "on-demand", "workflow": "long.yml"}),
        )
        .await;
    assert!(
        dispatched.status().is_success(),
        "dispatch: {}",
        dispatched.status()
    );
    let job = wait_for_job(&env, "long").await;
    let store = store_of(&env);
    let instances_dir = env.path().join("state/instances");

    // The job runs on our runner and the autoscaler knows it is busy.
    let busy = wait_until(Duration::from_secs(60), || async {
        let running = job_named(&env, "long")
            .await
            .is_some_and(|j| j.status == "running");
        let recorded = stored_instances(&store).is_some_and(|l| {
            l.iter()
                .any(|i| i.job_id == Some(job.id) && i.busy_since_ms.is_some())
        });
        running && recorded && step_processes(&marker).len() == 1
    })
    .await;
    assert!(
        busy,
        "Forgejo {version}: the job runs on our runner: {:?}\n{}",
        job_named(&env, "long").await,
        env.logs()
    );
    let instance = stored_instances(&store)
        .expect("store")
        .into_iter()
        .find(|i| i.job_id == Some(job.id))
        .expect("our instance");
    let runner_id = instance.runner_id.expect("a registration");

    let pids = runner_binary_pids_under(&instances_dir);
    assert_eq!(
        pids.len(),
        1,
        "Forgejo {version}: exactly one runner process: {pids:?}"
    );
    // SAFETY: kill(2) on a pid this test found under its own instance directory.
    let killed = unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    assert_eq!(killed, 0, "SIGKILL delivered");

    let removed = wait_until(Duration::from_secs(60), || async {
        stored_instances(&store)
            .is_some_and(|l| l.iter().any(|i| i.id == instance.id && i.state == "gone"))
    })
    .await;
    let after = stored_instances(&store).expect("store");
    let record = after
        .iter()
        .find(|i| i.id == instance.id)
        .expect("record kept");
    assert!(
        removed,
        "Forgejo {version}: the killed instance was not removed: {record:?}\n{}",
        env.logs()
    );
    let reason = record.reason.as_deref().unwrap_or_default();
    assert!(
        matches!(reason, "runner_failed" | "instance_lost"),
        "Forgejo {version}: a runner killed mid-job is recorded as a failure, got {reason:?} (exit code {:?})\n{}",
        record.exit_code,
        env.logs()
    );
    assert!(
        !instances_dir.join(&instance.id).exists(),
        "Forgejo {version}: the instance directory is removed"
    );
    let survivors = wait_until(Duration::from_secs(10), || async {
        step_processes(&marker).is_empty()
    })
    .await;
    assert!(
        survivors,
        "Forgejo {version}: the job's step outlived its runner: {:?}",
        step_processes(&marker)
    );
    if version == "15" {
        let registration = env
            .sim_runners()
            .await
            .into_iter()
            .find(|r| r.id == runner_id)
            .expect("our runner");
        assert!(
            registration.deleted,
            "Forgejo 15: the killed runner's registration is deleted: {registration:?}"
        );
    } else {
        let identities = stored_identities(&store).expect("identities");
        let identity = identities
            .iter()
            .find(|i| i.runner_id == runner_id)
            .expect("identity kept");
        assert_ne!(
            identity.instance_id.as_deref(),
            Some(instance.id.as_str()),
            "Forgejo {version}: the identity is no longer lent to the killed instance"
        );
    }

    // The single slot is free again: a new job gets a runner and completes.
    env.commit_workflow(
        "next.yml",
        "on: [push]\njobs:\n  next:\n    runs-on: trixie\n    steps:\n      - run: echo next\n",
    )
    .await;
    let served = wait_until(Duration::from_secs(60), || async {
        job_named(&env, "next")
            .await
            .is_some_and(|j| j.status == "success")
    })
    .await;
    assert!(
        served,
        "Forgejo {version}: the next job was served: {:?}\n{}",
        job_named(&env, "next").await,
        env.logs()
    );
    let drained = wait_until(Duration::from_secs(30), || async {
        stored_instances(&store).is_some_and(|l| l.iter().all(|i| i.state == "gone"))
    })
    .await;
    assert!(
        drained,
        "Forgejo {version}: every instance removed: {:#?}",
        stored_instances(&store)
    );
    let status = terminate(&mut autoscaler, Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "Forgejo {version}: exit after SIGTERM\n{}",
        env.logs()
    );
    assert_eq!(
        env.backend_instances(),
        0,
        "Forgejo {version}: no instance directory left"
    );
    if version == "15" {
        assert!(
            env.live_runners().await.is_empty(),
            "Forgejo 15: no registration left: {:#?}",
            env.live_runners().await
        );
    } else {
        let identities = stored_identities(&store).expect("identities");
        assert!(
            identities.iter().all(|i| i.instance_id.is_none()),
            "identities all back: {identities:#?}"
        );
        assert!(
            identities.len() <= 1,
            "Forgejo {version}: registrations bounded by the cap of 1: {identities:#?}"
        );
    }
}

/// Live processes running the killed job's step (its shell command line holds the marker).
fn step_processes(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        });
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if alive && is_step_shell(&cmdline, marker) {
            pids.push(pid);
        }
    }
    pids
}

/// The step shell (`sh -e -c "echo MARKER; sleep 60; ..."`), not the test binary or a runner whose
/// arguments could mention the marker.
fn is_step_shell(cmdline: &[u8], marker: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Some(program) = args.first() else {
        return false;
    };
    let program = Path::new(std::str::from_utf8(program).unwrap_or_default());
    program
        .file_name()
        .is_some_and(|n| n == "sh" || n == "bash")
        && String::from_utf8_lossy(cmdline).contains(marker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_killed_mid_job_on_forgejo_13() {
    runner_killed_mid_job("13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_killed_mid_job_on_forgejo_14() {
    runner_killed_mid_job("14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_killed_mid_job_on_forgejo_15() {
    runner_killed_mid_job("15").await;
}
