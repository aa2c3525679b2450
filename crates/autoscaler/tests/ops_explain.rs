//! Issue 6, test 3: `explain` beside a running daemon, for a job that fits no pool, one
//! waiting at the pool's cap and one running; plus a job id that is not in any queue and the
//! form without a job id. Each answer is checked against the simulator's view of the job.

mod ops_support;
mod support;

use std::{sync::Arc, time::Duration};

use ops_support::*;
use support::*;

const GPU_WORKFLOW: &str = "on: [push]\njobs:\n  needs-gpu:\n    runs-on: [trixie, gpu]\n    steps:\n      - run: echo never\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_no_pool_at_capacity_and_running() {
    let env = Arc::new(Env::start("15").await);
    let config = env.write_config(&ConfigOpts {
        max_runners: 10,
        pool_max_runners: 2,
        timeouts: "drain = \"1s\"",
        ..ConfigOpts::default()
    });
    let config_arg = config.display().to_string();
    env.commit_workflow("gpu.yml", GPU_WORKFLOW).await;
    env.commit_workflow("burst.yml", &Env::burst_yaml(4, "sleep 15"))
        .await;
    let mut child = env.spawn_autoscaler(&["run", "-c", &config_arg]);

    let full = wait_until(Duration::from_secs(60), || {
        let env = env.clone();
        async move {
            env.sim_jobs()
                .await
                .iter()
                .filter(|j| j.status == "running")
                .count()
                == 2
        }
    })
    .await;
    assert!(full, "two jobs run at the pool's cap of 2\n{}", env.logs());
    // Let the daemon record both runners as busy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let jobs = env.sim_jobs().await;
    let running = jobs
        .iter()
        .find(|j| j.status == "running")
        .expect("a running job");
    let waiting = jobs
        .iter()
        .find(|j| j.status == "waiting" && j.runs_on == ["trixie"])
        .expect("a job waiting at the cap");
    let gpu = jobs
        .iter()
        .find(|j| j.runs_on.iter().any(|l| l == "gpu"))
        .expect("the gpu job");
    assert_eq!(gpu.status, "waiting");

    // Running: on which of our instances.
    let text = cli_stdout(
        &env,
        &["explain", "-c", &config_arg, &running.id.to_string()],
    );
    let expected = format!(
        "job {} {:?} (runs-on [trixie], repo:root/on-demand): running on our instance debian-",
        running.id, running.name
    );
    assert!(text.starts_with(&expected), "{text}");
    let instance = env
        .store_instances()
        .into_iter()
        .find(|i| i.job_id == Some(running.id) && i.state == "running")
        .expect("the store has the job's instance");
    assert!(
        text.contains(&format!(
            "our instance {} (pool debian, started ",
            instance.id
        )),
        "{text}"
    );
    assert!(text.contains("busy for "), "{text}");

    // At capacity: which pool, how full, and that this is normal.
    let text = cli_stdout(
        &env,
        &["explain", "-c", &config_arg, &waiting.id.to_string()],
    );
    let expected = format!(
        "job {} {:?} (runs-on [trixie], repo:root/on-demand): fits pool debian, which is at capacity: 2/2 instances in use and 2 jobs waiting for a slot.",
        waiting.id, waiting.name
    );
    assert!(text.starts_with(&expected), "{text}");

    // No pool: the labels it needs and what the pool lacks.
    let text = cli_stdout(&env, &["explain", "-c", &config_arg, &gpu.id.to_string()]);
    let expected = format!(
        "job {} \"needs-gpu\" (runs-on [trixie, gpu], repo:root/on-demand): fits no pool, so this autoscaler starts no runner for it \
         (every runs-on label must be among one pool's label names): pool debian offers [bookworm, test, trixie], lacks [gpu].",
        gpu.id
    );
    assert!(text.starts_with(&expected), "{text}");

    // A job in no queue.
    let text = cli_stdout(&env, &["explain", "-c", &config_arg, "987654"]);
    assert!(
        text.starts_with("job 987654: not waiting or running in any configured scope"),
        "{text}"
    );

    // Every job at once: one paragraph per waiting or running job the simulator lists.
    let text = cli_stdout(&env, &["explain", "-c", &config_arg]);
    let listed = env
        .sim_jobs()
        .await
        .iter()
        .filter(|j| j.status == "waiting" || j.status == "running")
        .count();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("job ")).count(),
        listed,
        "{text}"
    );

    let exit = terminate(&mut child, Duration::from_secs(60));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", env.logs());
}
