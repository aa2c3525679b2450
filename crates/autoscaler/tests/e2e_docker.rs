//! Issue 4: the docker backend against a real engine and the simulator (Forgejo 15 and 14).
//!
//! Needs a running Docker engine (DOCKER_HOST or /var/run/docker.sock) and the image
//! `local/forgejo-runner-stand-in:latest` (tests/support/build-runner-image.sh; `.ci/run`
//! installs docker.io, starts dockerd and builds it). Without them every test here FAILS with
//! a message saying so; `AUTOSCALER_SKIP_DOCKER_TESTS=1` skips them (local use only, and the
//! skip is printed).
//!
//! The tests run one at a time (a lock): each starts containers, and the machine has 2 cores.
//! Each uses its own pool name, so the containers of one test are told apart by the pool label
//! and nothing outside the test is inspected or removed.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const IMAGE: &str = "local/forgejo-runner-stand-in:latest";
const OWNER_LABEL: &str = "org.forgejo.autoscaler.owner";
const POOL_LABEL: &str = "org.forgejo.autoscaler.pool";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `false` when the tests must be skipped (said so on stderr); panics when the engine or the
/// image is missing and skipping was not asked for.
fn engine_ready() -> bool {
    let problem = match Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
    {
        Err(e) => Some(format!("cannot run the docker client: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "docker image inspect {IMAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    };
    let Some(problem) = problem else { return true };
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

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker client runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The autoscaler's owner id (from its store), once it has started.
fn owner_id(env: &Env) -> Option<String> {
    let db = rusqlite::Connection::open_with_flags(
        env.path().join("state/autoscaler.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    db.query_row("SELECT value FROM meta WHERE key = 'owner_id'", [], |r| {
        r.get(0)
    })
    .ok()
}

/// Ids of the containers of this autoscaler (its owner label) in `pool`; `running` only or all.
fn our_containers(env: &Env, pool: &str, running: bool) -> Vec<String> {
    let Some(owner) = owner_id(env) else {
        return Vec::new();
    };
    let mut args = vec![
        "ps".to_string(),
        "-q".into(),
        "--filter".into(),
        format!("label={POOL_LABEL}={pool}"),
        "--filter".into(),
        format!("label={OWNER_LABEL}={owner}"),
    ];
    if !running {
        args.push("-a".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args).lines().map(str::to_string).collect()
}

fn pool_containers(env: &Env, pool: &str) -> Vec<String> {
    our_containers(env, pool, false)
}

fn running_pool_containers(env: &Env, pool: &str) -> Vec<String> {
    our_containers(env, pool, true)
}

/// Removes every container of the test's pool (its name is unique to the test) when the test
/// ends, passed or failed, so that a failed run leaves nothing running for the next one.
struct PoolGuard(String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label={POOL_LABEL}={}", self.0),
            ])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

fn unique_pool() -> String {
    format!("dk{}", &uuid_like()[..8])
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

/// The configuration: one docker pool (host network: the simulator listens on loopback),
/// read-only root filesystem, a numeric user, limits.
fn write_docker_config(env: &Env, pool: &str, cap: u32) -> std::path::PathBuf {
    let tables = format!(
        r#"[pools.docker]
image = "{IMAGE}"
network = "host"
read_only = true
user = "1000:1000"
memory = "256m"
pids_limit = 512
cpus = 1.0
"#
    );
    env.write_one_pool_config(&OnePool {
        name: pool,
        backend: "docker",
        cap,
        runner_binary: "forgejo-runner",
        timeouts: "",
        sections: "",
        pool_env: true,
        tables: &tables,
    })
}

/// Waits for every job to finish, tracking the most containers seen running at once.
async fn watch_jobs(env: &Env, pool: &str, jobs: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut most = 0;
    loop {
        most = most.max(running_pool_containers(env, pool).len());
        if env.finished_jobs().await == jobs {
            return most;
        }
        assert!(
            Instant::now() < deadline,
            "jobs unfinished: {:?}\n{}",
            env.sim_stats().await["jobs"],
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Nothing of the pool left: no container with our labels, no live record, no registration.
async fn assert_nothing_left(env: &Env, pool: &str, cap: usize) {
    let clean = wait_until(Duration::from_secs(30), || async {
        pool_containers(env, pool).is_empty() && env.leftovers(cap).await.is_empty()
    })
    .await;
    assert!(
        clean,
        "left behind: containers {:?}, {:?}\n{}",
        pool_containers(env, pool),
        env.leftovers(cap).await,
        env.logs()
    );
}

/// (id, reason, exit code, detail) of an instance record.
type ExitRecord = (String, Option<String>, Option<i64>, Option<String>);

/// Every instance record's ending, from the store.
fn exit_records(env: &Env) -> Vec<ExitRecord> {
    let db =
        rusqlite::Connection::open(env.path().join("state/autoscaler.db")).expect("store opens");
    let mut query = db
        .prepare("SELECT id, reason, exit_code, detail FROM instances ORDER BY created_ms")
        .expect("query");
    query
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("readable rows")
}

fn all_succeeded(jobs: &[SimJob]) -> bool {
    jobs.iter().all(|j| j.status == "success")
}

/// Issue test 1 (burst through the docker backend) and test 2 (credentials), Forgejo 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_in_containers_and_credentials_v15() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    burst_and_credentials("15", 20, 5).await;
}

/// The same on Forgejo 14 (identities and a `.runner` file instead of ephemeral runners).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_in_containers_and_credentials_v14() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    burst_and_credentials("14", 8, 4).await;
}

async fn burst_and_credentials(version: &str, jobs: u32, cap: u32) {
    let env = Env::start(version).await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let config = write_docker_config(&env, &pool, cap);
    // Each step leaves its environment in the work directory, then lingers so that the test
    // can look inside a running container.
    let script = "env > /forgejo-runner/work/job-env.txt; sleep 3";
    env.commit_workflow("burst.yml", &Env::burst_yaml(jobs, script))
        .await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);

    let inspected = wait_until(Duration::from_secs(60), || async {
        !running_pool_containers(&env, &pool).is_empty()
    })
    .await;
    assert!(inspected, "no container started\n{}", env.logs());
    let first = running_pool_containers(&env, &pool)[0].clone();
    let volume = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Destination \"/forgejo-runner\"}}{{.Name}}{{end}}{{end}}",
        &first,
    ]);
    let volume = volume.trim().to_string();
    assert!(
        !volume.is_empty(),
        "the work directory is an anonymous volume"
    );
    check_credentials(&env, &first).await;

    let most = watch_jobs(&env, &pool, jobs as usize, Duration::from_secs(240)).await;
    let sim_jobs = env.sim_jobs().await;
    assert!(
        all_succeeded(&sim_jobs),
        "jobs: {sim_jobs:?}\n{}",
        env.logs()
    );
    assert!(most as u32 <= cap, "{most} containers at once, cap {cap}");
    assert!(
        most >= 2,
        "the burst never ran in parallel ({most} at most)"
    );
    assert_nothing_left(&env, &pool, cap as usize).await;
    let records = exit_records(&env);
    // A runner that finished its job ends either way: its container exits (job_done) or
    // Forgejo deletes the ephemeral runner first (runner_gone).
    let done: Vec<_> = records
        .iter()
        .filter(|r| matches!(r.1.as_deref(), Some("job_done") | Some("runner_gone")))
        .collect();
    assert_eq!(done.len(), jobs as usize, "records: {records:?}");
    assert!(
        done.iter().all(|r| r.2 == Some(0)),
        "exit codes are recorded: {records:?}"
    );
    let volume_gone = Command::new("docker")
        .args(["volume", "inspect", &volume])
        .output()
        .expect("docker runs");
    assert!(
        !volume_gone.status.success(),
        "the work volume {volume} was removed with its container"
    );
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
}

/// The credential file is 0600 and owned by the container's user; the API token and (on
/// 13/14) registration tokens appear nowhere: inspect (env, args, labels), the runner's
/// process environment and command line, the job's environment, the container's files.
async fn check_credentials(env: &Env, container: &str) {
    let credential = if env.version == "15" {
        "runner-token"
    } else {
        ".runner"
    };
    let path = format!("/forgejo-runner/work/{credential}");
    let stat = docker(&["exec", container, "stat", "-c", "%a %u", &path]);
    assert_eq!(stat.trim(), "600 1000", "credential file mode and owner");
    let inspect = docker(&["inspect", container]);
    let process = docker(&[
        "exec",
        container,
        "sh",
        "-c",
        "cat /proc/1/environ /proc/1/cmdline",
    ]);
    let job_env = {
        let mut text = String::new();
        for _ in 0..50 {
            let out = Command::new("docker")
                .args(["exec", container, "cat", "/forgejo-runner/work/job-env.txt"])
                .output()
                .expect("docker exec");
            if out.status.success() {
                text = String::from_utf8_lossy(&out.stdout).into_owned();
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        text
    };
    assert!(
        job_env.contains("GITHUB_"),
        "the job ran in this container and left its environment: {job_env:?}"
    );
    let files = Command::new("docker")
        .args(["export", container])
        .output()
        .expect("docker export");
    assert!(files.status.success());
    let volume_files = docker(&[
        "exec",
        container,
        "sh",
        "-c",
        "cat /forgejo-runner/work/* 2>/dev/null; ls -la /tmp",
    ]);

    let mut secrets = vec![("API token", env.token.clone())];
    if env.version != "15" {
        for scope in [
            "/repos/root/on-demand/actions/runners/registration-token",
            "/admin/runners/registration-token",
        ] {
            if let Ok(value) = env.api_get(scope).await.json::<serde_json::Value>().await {
                if let Some(token) = value["token"].as_str() {
                    secrets.push(("registration token", token.to_string()));
                }
            }
        }
    }
    if env.version != "15" {
        assert!(
            secrets.len() > 1,
            "the registration token could be read for the check"
        );
    }
    for (what, secret) in &secrets {
        assert!(!secret.is_empty());
        assert!(
            !inspect.contains(secret.as_str()),
            "{what} in docker inspect"
        );
        assert!(
            !process.contains(secret.as_str()),
            "{what} in the runner's environment or arguments"
        );
        assert!(
            !job_env.contains(secret.as_str()),
            "{what} in the job's environment"
        );
        let exported = String::from_utf8_lossy(&files.stdout);
        assert!(
            !exported.contains(secret.as_str()),
            "{what} in the container's files"
        );
        assert!(
            !volume_files.contains(secret.as_str()),
            "{what} in the work directory"
        );
    }
    // The runner's own credential is in its file only: not in inspect, env or arguments.
    let runner_credential = docker(&["exec", container, "cat", &path]);
    let runner_token = if env.version == "15" {
        runner_credential.trim().to_string()
    } else {
        serde_json::from_str::<serde_json::Value>(&runner_credential).expect("a JSON .runner")
            ["token"]
            .as_str()
            .expect("a token")
            .to_string()
    };
    assert!(runner_token.len() >= 16, "a real token: {runner_token:?}");
    assert!(
        !inspect.contains(&runner_token),
        "runner token in docker inspect"
    );
    assert!(
        !process.contains(&runner_token),
        "runner token in the runner's environment or arguments"
    );
    assert!(
        !job_env.contains(&runner_token),
        "runner token in the job's environment"
    );
    assert!(
        job_env.contains("EXTRA_SETTING") || inspect.contains("EXTRA_SETTING=from-the-pool"),
        "pool env reaches the container"
    );
    assert!(
        inspect.contains("\"ReadonlyRootfs\": true") && inspect.contains("\"PidsLimit\": 512"),
        "settings applied"
    );
}

/// Issue test 3 (first half): the autoscaler is SIGKILLed while containers run and restarted;
/// it adopts them, every job completes, nothing leaks. Test 4: an unlabelled container (and
/// one labelled by another owner) survives all of it, including `cleanup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restart_adopts_containers_and_spares_foreign_ones() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let cap = 3;
    let config = write_docker_config(&env, &pool, cap);
    let foreign = [
        docker(&[
            "run",
            "-d",
            "--label",
            &format!("{POOL_LABEL}={pool}"),
            IMAGE,
            "sleep",
            "600",
        ]),
        docker(&[
            "run",
            "-d",
            "--label",
            &format!("{OWNER_LABEL}=someone-else"),
            "--label",
            &format!("{POOL_LABEL}={pool}"),
            IMAGE,
            "sleep",
            "600",
        ]),
    ]
    .map(|id| id.trim().to_string());

    let jobs = 6;
    env.commit_workflow("burst.yml", &Env::burst_yaml(jobs, "sleep 6"))
        .await;
    let mut first = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    let busy = wait_until(Duration::from_secs(60), || async {
        env.sim_jobs()
            .await
            .iter()
            .filter(|j| j.status == "running")
            .count()
            >= 2
    })
    .await;
    assert!(busy, "jobs never ran\n{}", env.logs());
    kill_hard(&mut first);
    let before: Vec<String> = running_pool_containers(&env, &pool);
    assert!(
        !before.is_empty(),
        "containers run while the autoscaler is dead"
    );
    let adopted: Vec<String> = before
        .iter()
        .map(|c| {
            docker(&[
                "inspect",
                "--format",
                "{{index .Config.Labels \"org.forgejo.autoscaler.instance\"}}",
                c,
            ])
            .trim()
            .to_string()
        })
        .collect();

    let mut second = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    watch_jobs(&env, &pool, jobs as usize, Duration::from_secs(180)).await;
    let sim_jobs = env.sim_jobs().await;
    assert!(
        all_succeeded(&sim_jobs),
        "jobs: {sim_jobs:?}\n{}",
        env.logs()
    );
    assert_nothing_left(&env, &pool, cap as usize).await;
    // The containers that ran through the crash were adopted: their jobs ended normally.
    let records = exit_records(&env);
    for instance in &adopted {
        let record = records
            .iter()
            .find(|r| &r.0 == instance)
            .expect("a record per container");
        assert!(
            matches!(record.1.as_deref(), Some("job_done") | Some("runner_gone"))
                && record.2 == Some(0),
            "container of {instance} was not adopted: {record:?}"
        );
    }
    let status = terminate(&mut second, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );

    let cleanup = Command::new(AUTOSCALER)
        .args(["cleanup", "-c", config.to_str().unwrap()])
        .current_dir(env.path())
        .output()
        .expect("cleanup runs");
    assert!(
        cleanup.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    for id in &foreign {
        let state = docker(&["inspect", "--format", "{{.State.Status}}", id]);
        assert_eq!(
            state.trim(),
            "running",
            "a container that is not ours was touched: {id}"
        );
    }
    docker(&["rm", "-f", &foreign[0], &foreign[1]]);
}

/// Issue test 3 (second half): a container killed from outside mid-job frees its slot and its
/// registration is deleted; the next job gets a container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_mid_job_frees_its_slot_v15() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let config = write_docker_config(&env, &pool, 1);
    env.commit_workflow(
        "long.yml",
        "on: [push]\njobs:\n  long:\n    runs-on: trixie\n    steps:\n      - run: sleep 120\n",
    )
    .await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    let running = wait_until(Duration::from_secs(60), || async {
        env.sim_jobs().await.iter().any(|j| j.status == "running")
            && running_pool_containers(&env, &pool).len() == 1
    })
    .await;
    assert!(running, "the long job never ran\n{}", env.logs());
    let victim = running_pool_containers(&env, &pool)[0].clone();
    let runner_before = env.live_runners().await;
    assert_eq!(runner_before.len(), 1);
    docker(&["kill", &victim]);

    // Slot freed: the container is removed and the registration deleted.
    let freed = wait_until(Duration::from_secs(30), || async {
        pool_containers(&env, &pool).is_empty() && env.live_runners().await.is_empty()
    })
    .await;
    assert!(
        freed,
        "containers {:?}, runners {:?}\n{}",
        pool_containers(&env, &pool),
        env.live_runners().await,
        env.logs()
    );
    let records = exit_records(&env);
    assert!(
        records.iter().any(|r| r.2 == Some(137)),
        "the kill's exit code is recorded: {records:?}"
    );

    // The freed slot serves the next job (a push runs every workflow again: a second "long").
    let killed_job = env
        .sim_jobs()
        .await
        .into_iter()
        .find(|j| j.status == "running")
        .map(|j| j.id);
    env.commit_workflow(
        "short.yml",
        "on: [push]\njobs:\n  short:\n    runs-on: trixie\n    steps:\n      - run: echo ok\n",
    )
    .await;
    let served = wait_until(Duration::from_secs(90), || async {
        env.sim_jobs()
            .await
            .iter()
            .any(|j| Some(j.id) != killed_job && j.runner_id.is_some())
    })
    .await;
    assert!(
        served,
        "no other job got a runner: {:?}\n{}",
        env.sim_jobs().await,
        env.logs()
    );
    // The second job runs for two minutes: stop hard, then `cleanup` removes its container.
    kill_hard(&mut daemon);
    let cleanup = Command::new(AUTOSCALER)
        .args(["cleanup", "-c", config.to_str().unwrap()])
        .current_dir(env.path())
        .output()
        .expect("cleanup runs");
    assert!(
        cleanup.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert!(
        pool_containers(&env, &pool).is_empty(),
        "containers left: {:?}",
        pool_containers(&env, &pool)
    );
}

/// A pool without `user` runs as the image's USER (the stand-in image says `0:0` and has no
/// /etc/passwd): the credential file must still be written, owned by that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_default_user_without_passwd_v15() {
    if !engine_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let config = write_docker_config(&env, &pool, 2);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("user = \"1000:1000\"\n", "");
    std::fs::write(&config, text).unwrap();
    env.commit_workflow("burst.yml", &Env::burst_yaml(3, "true"))
        .await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    watch_jobs(&env, &pool, 3, Duration::from_secs(120)).await;
    let sim_jobs = env.sim_jobs().await;
    assert!(
        all_succeeded(&sim_jobs),
        "jobs: {sim_jobs:?}\n{}",
        env.logs()
    );
    assert_eq!(
        terminate(&mut daemon, Duration::from_secs(60)).and_then(|s| s.code()),
        Some(0)
    );
    assert_nothing_left(&env, &pool, 2).await;
}
