//! Issue 7 (Docker Swarm backend), tested for real: a single-node swarm on the machine's
//! dockerd, the simulator (Forgejo 15, and 14 for the `.runner` credential), and the scenarios
//! of issue 3 through this backend: a burst under a cap, a running job cancelled, and the
//! autoscaler SIGKILLed mid-burst and restarted (adoption, orphan collection, nothing leaks).
//!
//! Needs a running Docker engine and the image `local/forgejo-runner-stand-in:latest`
//! (tests/support/build-runner-image.sh; `.ci/run` installs docker.io, starts dockerd, builds
//! it and initialises the swarm). When the engine is not in a swarm, the tests initialise one
//! (`docker swarm init --advertise-addr 127.0.0.1`). Without an engine or the image every test
//! here FAILS with a message saying so; `AUTOSCALER_SKIP_DOCKER_TESTS=1` skips them (local use
//! only, and the skip is printed).
//!
//! The pools use `network = "host"` so that the runners reach the simulator on loopback: no
//! traffic leaves the machine. Tests run one at a time (a lock; the machine has 2 cores), each
//! with its own pool name, so a test looks only at its own services, secrets and containers.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const IMAGE: &str = "local/forgejo-runner-stand-in:latest";
const OWNER_LABEL: &str = "org.forgejo.autoscaler.owner";
const POOL_LABEL: &str = "org.forgejo.autoscaler.pool";
const INSTANCE_LABEL: &str = "org.forgejo.autoscaler.instance";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `false` when the tests must be skipped (said so on stderr); panics when the engine, the
/// image or the swarm is missing and skipping was not asked for.
fn swarm_ready() -> bool {
    // Once per test binary: tests start in parallel, and two `swarm init` would collide.
    static PROBLEM: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(problem) = PROBLEM.get_or_init(swarm_problem) else {
        return true;
    };
    if std::env::var("AUTOSCALER_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED (AUTOSCALER_SKIP_DOCKER_TESTS=1): {problem}");
        return false;
    }
    panic!(
        "the swarm backend tests need a running Docker engine in swarm mode and the image {IMAGE}: {problem}\n\
         start dockerd and run tests/support/build-runner-image.sh (as .ci/run does), \
         or set AUTOSCALER_SKIP_DOCKER_TESTS=1 to skip them locally"
    );
}

fn swarm_problem() -> Option<String> {
    if let Err(e) = try_docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]) {
        return Some(e);
    }
    let state = match try_docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]) {
        Ok(state) => state,
        Err(e) => return Some(e),
    };
    match state.trim() {
        "active true" => None,
        "inactive false" => {
            eprintln!("initialising a single-node swarm on the local engine");
            try_docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).err()
        }
        other => Some(format!(
            "the engine is in swarm state {other:?} (need an active manager; docker swarm init)"
        )),
    }
}

fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run the docker client: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// `docker ... -q --filter label=K=V ...`: the ids listed.
fn ids(command: &[&str], labels: &[String]) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.push("-q".into());
    for label in labels {
        args.push("--filter".into());
        args.push(format!("label={label}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args).lines().map(str::to_string).collect()
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

fn ours(env: &Env, pool: &str) -> Vec<String> {
    let mut labels = vec![format!("{POOL_LABEL}={pool}")];
    if let Some(owner) = owner_id(env) {
        labels.push(format!("{OWNER_LABEL}={owner}"));
    }
    labels
}

fn services(env: &Env, pool: &str) -> Vec<String> {
    ids(&["service", "ls"], &ours(env, pool))
}

fn secrets(env: &Env, pool: &str) -> Vec<String> {
    ids(&["secret", "ls"], &ours(env, pool))
}

/// Task containers of the pool (they carry our labels too); `all` includes stopped ones.
fn containers(env: &Env, pool: &str, all: bool) -> Vec<String> {
    if all {
        ids(&["ps", "-a"], &ours(env, pool))
    } else {
        ids(&["ps"], &ours(env, pool))
    }
}

/// Removes every service, secret and container of the test's pool when the test ends, passed
/// or failed, so that a failed run leaves nothing for the next one.
struct PoolGuard(String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let label = format!("label={POOL_LABEL}={}", self.0);
        for (list, remove) in [
            (vec!["service", "ls", "-q"], vec!["service", "rm"]),
            (vec!["secret", "ls", "-q"], vec!["secret", "rm"]),
            (vec!["ps", "-aq"], vec!["rm", "-f"]),
        ] {
            let mut args = list.clone();
            args.extend(["--filter", label.as_str()]);
            let Ok(out) = try_docker(&args) else {
                continue;
            };
            let found: Vec<&str> = out.lines().collect();
            if !found.is_empty() {
                let mut args = remove.clone();
                args.extend(found);
                let _ = try_docker(&args);
            }
        }
    }
}

fn unique_pool() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("sw{:x}", (nanos as u64) ^ u64::from(std::process::id()))
}

/// The configuration: one swarm pool on the host network (the simulator listens on loopback),
/// a numeric user, reservations, limits and a constraint that the single node meets.
fn write_swarm_config(env: &Env, pool: &str, cap: u32) -> std::path::PathBuf {
    let tables = format!(
        r#"[pools.swarm]
image = "{IMAGE}"
network = "host"
user = "1000:1000"
constraints = ["node.role == manager"]
reservations = {{ cpus = 0.01, memory = "16m" }}
limits = {{ cpus = 1, memory = "256m" }}
"#
    );
    env.write_one_pool_config(&OnePool {
        name: pool,
        backend: "swarm",
        cap,
        runner_binary: "forgejo-runner",
        timeouts: "boot = \"60s\"",
        sections: "",
        pool_env: true,
        tables: &tables,
    })
}

/// Waits for every job to finish, tracking the most services of the pool seen at once.
async fn watch_jobs(env: &Env, pool: &str, jobs: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut most = 0;
    loop {
        most = most.max(services(env, pool).len());
        let total = env.sim_jobs().await.len();
        if total >= jobs && env.finished_jobs().await == total {
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

/// Nothing of the pool left: no service, secret or task container with our labels, no live
/// record, no registration.
async fn assert_nothing_left(env: &Env, pool: &str, cap: usize) {
    let clean = wait_until(Duration::from_secs(30), || async {
        services(env, pool).is_empty()
            && secrets(env, pool).is_empty()
            && containers(env, pool, true).is_empty()
            && env.leftovers(cap).await.is_empty()
    })
    .await;
    assert!(
        clean,
        "left behind: services {:?}, secrets {:?}, containers {:?}, {:?}\n{}",
        services(env, pool),
        secrets(env, pool),
        containers(env, pool, true),
        env.leftovers(cap).await,
        env.logs()
    );
}

/// (id, reason, exit code, detail) of an instance record.
type ExitRecord = (String, Option<String>, Option<i64>, Option<String>);

/// Every instance record's ending, oldest first.
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

fn finished_normally(reason: Option<&str>) -> bool {
    matches!(reason, Some("job_done") | Some("runner_gone"))
}

/// Seconds from each service's creation to its task container's start, for the services of
/// the pool seen so far (read while they exist: removal deletes them).
fn record_start_delays(env: &Env, pool: &str, seen: &mut BTreeMap<String, f64>) {
    for container in containers(env, pool, true) {
        let Ok(out) = try_docker(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"com.docker.swarm.service.id\"}} {{.State.StartedAt}}",
            &container,
        ]) else {
            continue;
        };
        let mut parts = out.split_whitespace();
        let (Some(service), Some(started)) = (parts.next(), parts.next()) else {
            continue;
        };
        if seen.contains_key(service) || started.starts_with("0001-") {
            continue;
        }
        let Ok(created) =
            try_docker(&["service", "inspect", "--format", "{{.CreatedAt}}", service])
        else {
            continue;
        };
        if let (Some(a), Some(b)) = (unix_seconds(created.trim()), unix_seconds(started)) {
            seen.insert(service.to_string(), b - a);
        }
    }
}

/// Seconds since the epoch of a Docker timestamp (`2026-01-02T03:04:05.123456789Z` or Go's
/// `2026-01-02 03:04:05.123456789 +0000 UTC`).
fn unix_seconds(text: &str) -> Option<f64> {
    let text = text.replace(' ', "T");
    let (date, rest) = text.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let time: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ':' || *c == '.')
        .collect();
    let mut hms = time.split(':');
    let h: f64 = hms.next()?.parse().ok()?;
    let min: f64 = hms.next()?.parse().ok()?;
    let s: f64 = hms.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Job waits (created -> started) in seconds, from the simulator.
async fn job_waits(env: &Env) -> Vec<f64> {
    env.sim_jobs()
        .await
        .iter()
        .filter_map(|j| {
            j.started
                .map(|s| s.saturating_sub(j.created) as f64 / 1000.0)
        })
        .collect()
}

/// Issue 3 test 1 through this backend, with the credential checks of the container backend:
/// a burst of 12 jobs under a cap of 4, on Forgejo 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_in_services_and_credentials_v15() {
    if !swarm_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    burst_and_credentials("15", 12, 4).await;
}

/// The same on Forgejo 14: the credential is a `.runner` file, mounted with a configuration
/// that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_in_services_and_credentials_v14() {
    if !swarm_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    burst_and_credentials("14", 6, 3).await;
}

async fn burst_and_credentials(version: &str, jobs: u32, cap: u32) {
    let env = Env::start(version).await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let config = write_swarm_config(&env, &pool, cap);
    // Each step leaves its environment beside the runner, then lingers so that the test can
    // look inside a running task.
    let script = "env > /tmp/job-env.txt; sleep 3";
    env.commit_workflow("burst.yml", &Env::burst_yaml(jobs, script))
        .await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);

    let started = wait_until(Duration::from_secs(60), || async {
        !containers(&env, &pool, false).is_empty()
    })
    .await;
    assert!(started, "no task container started\n{}", env.logs());
    let first = containers(&env, &pool, false)[0].clone();
    check_credentials(&env, &pool, &first).await;

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut most = 0;
    let mut delays = BTreeMap::new();
    loop {
        most = most.max(services(&env, &pool).len());
        record_start_delays(&env, &pool, &mut delays);
        let total = env.sim_jobs().await.len();
        if total >= jobs as usize && env.finished_jobs().await == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs unfinished: {:?}\n{}",
            env.sim_stats().await["jobs"],
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sim_jobs = env.sim_jobs().await;
    assert!(
        sim_jobs.iter().all(|j| j.status == "success"),
        "jobs: {sim_jobs:?}\n{}",
        env.logs()
    );
    assert!(most as u32 <= cap, "{most} services at once, cap {cap}");
    assert!(
        most >= 2,
        "the burst never ran in parallel ({most} at most)"
    );
    assert_nothing_left(&env, &pool, cap as usize).await;
    let records = exit_records(&env);
    let done: Vec<_> = records
        .iter()
        .filter(|r| finished_normally(r.1.as_deref()))
        .collect();
    assert_eq!(done.len(), jobs as usize, "records: {records:?}");
    assert!(
        done.iter().all(|r| r.2 == Some(0)),
        "exit codes are recorded: {records:?}"
    );
    let mut delays: Vec<f64> = delays.into_values().collect();
    let mut waits = job_waits(&env).await;
    eprintln!(
        "swarm (Forgejo {version}): {} services measured, service created -> task container started: median {:.2}s, max {:.2}s; job wait median {:.2}s, max {:.2}s over {} jobs",
        delays.len(),
        median(&mut delays),
        delays.iter().cloned().fold(0.0, f64::max),
        median(&mut waits),
        waits.iter().cloned().fold(0.0, f64::max),
        waits.len()
    );
    assert!(!delays.is_empty(), "no task start was measured");
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
}

/// The credential is a 0400 file under /run/secrets owned by the task's user; the API token,
/// the registration tokens (13/14) and the runner's own token appear nowhere else: not in the
/// service or container inspection, the secret's inspection, the runner's environment or
/// command line, or the job's environment.
async fn check_credentials(env: &Env, pool: &str, container: &str) {
    let credential = if env.version == "15" {
        "runner-token"
    } else {
        ".runner"
    };
    let path = format!("/run/secrets/{credential}");
    let stat = docker(&["exec", container, "stat", "-c", "%a %u", &path]);
    assert_eq!(stat.trim(), "400 1000", "credential file mode and owner");
    let service = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"com.docker.swarm.service.id\"}}",
        container,
    ]);
    let mut inspect = docker(&["service", "inspect", service.trim()]);
    inspect.push_str(&docker(&["inspect", container]));
    for secret in secrets(env, pool) {
        inspect.push_str(&docker(&["secret", "inspect", &secret]));
    }
    assert!(
        inspect.contains("\"NanoCPUs\": 1000000000") && inspect.contains("node.role == manager"),
        "the pool's limits and constraints reach the service"
    );
    // A replicated job where the engine cleans those up (Docker 24, API 1.43), else one
    // replica with restart condition none (20.10 leaves a job's tasks and containers behind).
    let api = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    let minor: u32 = api.trim().trim_start_matches("1.").parse().unwrap_or(0);
    if minor >= 43 {
        assert!(
            inspect.contains("\"ReplicatedJob\""),
            "a replicated job on API {api}"
        );
    } else {
        assert!(
            inspect.contains("\"Replicas\": 1") && !inspect.contains("\"ReplicatedJob\""),
            "one replica on API {api}"
        );
    }
    assert!(
        inspect.contains("\"Condition\": \"none\""),
        "restart condition none"
    );
    let process = docker(&[
        "exec",
        container,
        "sh",
        "-c",
        "cat /proc/1/environ /proc/1/cmdline",
    ]);
    if env.version == "15" {
        assert!(
            process.contains("file:/run/secrets/runner-token"),
            "the runner reads its token from the secret: {process:?}"
        );
    } else {
        let config = docker(&["exec", container, "cat", "/run/secrets/runner-config.yaml"]);
        assert!(config.contains("file: /run/secrets/.runner"), "{config}");
        assert!(
            process.contains("/run/secrets/runner-config.yaml"),
            "{process:?}"
        );
    }
    let job_env = {
        let mut text = String::new();
        for _ in 0..50 {
            if let Ok(out) = try_docker(&["exec", container, "cat", "/tmp/job-env.txt"]) {
                text = out;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        text
    };
    assert!(
        job_env.contains("GITHUB_"),
        "the job ran in this task and left its environment: {job_env:?}"
    );
    assert!(
        process.contains("EXTRA_SETTING=from-the-pool"),
        "the pool's env reaches the runner"
    );
    let mut secrets_seen = vec![("API token", env.token.clone())];
    if env.version != "15" {
        for scope in [
            "/repos/root/on-demand/actions/runners/registration-token",
            "/admin/runners/registration-token",
        ] {
            if let Ok(value) = env.api_get(scope).await.json::<serde_json::Value>().await {
                if let Some(token) = value["token"].as_str() {
                    secrets_seen.push(("registration token", token.to_string()));
                }
            }
        }
        assert!(
            secrets_seen.len() > 1,
            "the registration token could be read for the check"
        );
    }
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
    secrets_seen.push(("runner token", runner_token));
    for (what, secret) in &secrets_seen {
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
    }
}

/// Issue 3 test 3 (cancelled while running) through this backend: the service and its secret
/// are removed within the deadline, the registration is deleted, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancelled_v15() {
    if !swarm_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let config = write_swarm_config(&env, &pool, 2);
    env.commit_workflow(
        "long.yml",
        "on: [push]\njobs:\n  long:\n    runs-on: trixie\n    steps:\n      - run: sleep 120\n",
    )
    .await;
    let job = env.job_named("long").await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    let running = wait_until(Duration::from_secs(60), || async {
        env.job_by_id(job.id).await.status == "running" && containers(&env, &pool, false).len() == 1
    })
    .await;
    assert!(running, "the long job never ran\n{}", env.logs());
    assert_eq!(services(&env, &pool).len(), 1);
    assert_eq!(secrets(&env, &pool).len(), 1);
    env.cancel_job(job.id).await;
    let cancelled_at = Instant::now();
    let gone = wait_until(Duration::from_secs(20), || async {
        services(&env, &pool).is_empty() && secrets(&env, &pool).is_empty()
    })
    .await;
    assert!(
        gone,
        "service or secret still there 20 s after the cancel\n{}",
        env.logs()
    );
    eprintln!(
        "swarm: cancelled job's service and secret removed {:.1}s after the cancel",
        cancelled_at.elapsed().as_secs_f64()
    );
    let records: Vec<_> = env
        .store_instances()
        .into_iter()
        .filter(|i| i.job_id == Some(job.id))
        .collect();
    assert!(
        !records.is_empty(),
        "the running job had no instance record"
    );
    let removed = wait_until(Duration::from_secs(10), || async {
        env.store_instances()
            .iter()
            .filter(|i| i.job_id == Some(job.id))
            .all(|i| i.state == "gone")
    })
    .await;
    assert!(removed, "{:?}\n{}", env.store_instances(), env.logs());
    for record in env
        .store_instances()
        .iter()
        .filter(|i| i.job_id == Some(job.id))
    {
        // The runner learnt of the cancel and ended its job (job_done), or its registration
        // vanished under it (runner_gone), or both the job and the registration were gone
        // before it was seen busy (cancelled): each an honest account of a cancelled job.
        assert!(
            finished_normally(record.reason.as_deref())
                || record.reason.as_deref() == Some("cancelled"),
            "{} removed with reason {:?}: {:?}\n{}",
            record.id,
            record.reason,
            exit_records(&env),
            env.logs()
        );
    }
    assert_eq!(env.job_by_id(job.id).await.status, "cancelled");
    assert!(
        env.live_runners().await.is_empty(),
        "the registration is deleted"
    );
    assert_nothing_left(&env, &pool, 2).await;
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
}

/// Issue 3 test 6 through this backend: SIGKILL mid-burst, restart: the services that ran
/// through the crash are adopted and end normally, every job completes, nothing leaks. A
/// service and a secret labelled as ours but without a record (a crash's leftovers) are
/// collected after the orphan grace; a service of another owner is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restart_adopts_services_and_collects_orphans_v15() {
    if !swarm_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let cap = 3;
    let config = write_swarm_config(&env, &pool, cap);
    let jobs = 8;
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
    let owner = owner_id(&env).expect("the store has an owner id");
    let before = containers(&env, &pool, false);
    assert!(
        !before.is_empty(),
        "task containers run while the autoscaler is dead"
    );
    let adopted: HashSet<String> = before
        .iter()
        .map(|c| {
            docker(&[
                "inspect",
                "--format",
                &format!("{{{{index .Config.Labels \"{INSTANCE_LABEL}\"}}}}"),
                c,
            ])
            .trim()
            .to_string()
        })
        .collect();

    // Leftovers of a crash with no record, and a service that belongs to someone else.
    let orphan_labels = [
        format!("{OWNER_LABEL}={owner}"),
        format!("{INSTANCE_LABEL}={pool}-orphan00"),
        format!("{POOL_LABEL}={pool}"),
    ];
    let mut secret_args = vec!["secret", "create"];
    for label in &orphan_labels {
        secret_args.extend(["--label", label.as_str()]);
    }
    let orphan_secret_name = format!("{pool}-orphan-secret");
    let orphan_secret_file = env.path().join("orphan-secret");
    std::fs::write(&orphan_secret_file, "left by a crash").unwrap();
    let orphan_secret_path = orphan_secret_file.display().to_string();
    secret_args.extend([orphan_secret_name.as_str(), orphan_secret_path.as_str()]);
    docker(&secret_args);
    let orphan_service = format!("{pool}-orphan");
    let foreign_service = format!("{pool}-foreign");
    for (name, owner_label) in [
        (&orphan_service, format!("{OWNER_LABEL}={owner}")),
        (&foreign_service, format!("{OWNER_LABEL}=someone-else")),
    ] {
        let instance = format!("{INSTANCE_LABEL}={name}");
        let pool_label = format!("{POOL_LABEL}={pool}");
        docker(&[
            "service",
            "create",
            "-d",
            "--name",
            name,
            // One replica, not a job: Docker 20.10 leaves a removed job's containers.
            "--replicas",
            "1",
            "--restart-condition",
            "none",
            "--network",
            "host",
            "--label",
            &owner_label,
            "--label",
            &instance,
            "--label",
            &pool_label,
            IMAGE,
            "sleep",
            "600",
        ]);
    }

    let mut second = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    watch_jobs(&env, &pool, jobs as usize, Duration::from_secs(240)).await;
    let sim_jobs = env.sim_jobs().await;
    assert!(
        sim_jobs.iter().all(|j| j.status == "success"),
        "jobs: {sim_jobs:?}\n{}",
        env.logs()
    );
    // The orphans go after the grace (3 s) and two sightings; the foreign service stays.
    let collected = wait_until(Duration::from_secs(30), || async {
        try_docker(&["service", "inspect", &orphan_service]).is_err()
            && try_docker(&["secret", "inspect", &orphan_secret_name]).is_err()
    })
    .await;
    assert!(
        collected,
        "the orphan service or secret is still there\n{}",
        env.logs()
    );
    assert!(
        try_docker(&["service", "inspect", &foreign_service]).is_ok(),
        "a service of another owner was removed"
    );
    docker(&["service", "rm", &foreign_service]);
    assert_nothing_left(&env, &pool, cap as usize).await;
    let records = exit_records(&env);
    for instance in &adopted {
        let record = records
            .iter()
            .find(|r| &r.0 == instance)
            .unwrap_or_else(|| panic!("no record for {instance}: {records:?}"));
        assert!(
            finished_normally(record.1.as_deref()) && record.2 == Some(0),
            "the service of {instance} was not adopted: {record:?}"
        );
    }
    let events = env.store_events();
    assert!(
        events.iter().any(|e| e.kind == "orphan_removed"),
        "the orphan removal is recorded: {events:?}"
    );
    let status = terminate(&mut second, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
    // `cleanup` (uninstall) leaves the other owner's service alone too.
    let foreign_again = format!("{pool}-foreign2");
    docker(&[
        "service",
        "create",
        "-d",
        "--name",
        &foreign_again,
        "--replicas",
        "1",
        "--restart-condition",
        "none",
        "--network",
        "host",
        "--label",
        &format!("{OWNER_LABEL}=someone-else"),
        "--label",
        &format!("{POOL_LABEL}={pool}"),
        IMAGE,
        "sleep",
        "600",
    ]);
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
        try_docker(&["service", "inspect", &foreign_again]).is_ok(),
        "cleanup removed a service of another owner"
    );
    docker(&["service", "rm", &foreign_again]);
}

/// A pool whose image is missing on the manager: creation fails with the engine's state named
/// and the pool backs off instead of retrying on every tick; nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_backs_off_with_a_clear_message() {
    if !swarm_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let config = write_swarm_config(&env, &pool, 2);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(IMAGE, "local/no-such-image:1");
    std::fs::write(&config, text).unwrap();
    env.commit_workflow("one.yml", &Env::burst_yaml(1, "true"))
        .await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let logs = env.logs();
    assert!(
        logs.contains("local/no-such-image:1 is not present on the manager"),
        "{logs}"
    );
    let attempts = logs.matches("is not present on the manager").count();
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} attempts in 8 s: the pool does not back off\n{logs}"
    );
    assert!(services(&env, &pool).is_empty() && secrets(&env, &pool).is_empty());
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
    assert!(
        env.leftovers(2).await.is_empty(),
        "{:?}",
        env.leftovers(2).await
    );
}

/// The per-job cost of Swarm over plain containers: the same burst (6 jobs, cap 3, Forgejo
/// 15) through a docker pool and through a swarm pool on the same engine. Measured per runner:
/// the container backend's container creation -> start, the swarm backend's service creation
/// -> task container start; and per job, the wait (queued -> picked by its runner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_overhead_compared_with_the_docker_backend() {
    if !swarm_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut results = Vec::new();
    for backend in ["docker", "swarm"] {
        let env = Env::start("15").await;
        let pool = unique_pool();
        let _guard = PoolGuard(pool.clone());
        let config = write_swarm_config(&env, &pool, 3);
        if backend == "docker" {
            let text = std::fs::read_to_string(&config).unwrap();
            let head = &text[..text.find("[pools.swarm]").unwrap()];
            let text = format!(
                "{}[pools.docker]\nimage = \"{IMAGE}\"\nnetwork = \"host\"\nuser = \"1000:1000\"\n",
                head.replace("backend = \"swarm\"", "backend = \"docker\"")
            );
            std::fs::write(&config, text).unwrap();
        }
        env.commit_workflow("burst.yml", &Env::burst_yaml(6, "sleep 1"))
            .await;
        let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
        let mut delays = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if backend == "swarm" {
                record_start_delays(&env, &pool, &mut delays);
            } else {
                for container in containers(&env, &pool, true) {
                    if delays.contains_key(&container) {
                        continue;
                    }
                    let Ok(out) = try_docker(&[
                        "inspect",
                        "--format",
                        "{{.Created}} {{.State.StartedAt}}",
                        &container,
                    ]) else {
                        continue;
                    };
                    let mut parts = out.split_whitespace();
                    if let (Some(Some(a)), Some(Some(b))) = (
                        parts.next().map(unix_seconds),
                        parts
                            .next()
                            .filter(|t| !t.starts_with("0001-"))
                            .map(unix_seconds),
                    ) {
                        delays.insert(container, b - a);
                    }
                }
            }
            let total = env.sim_jobs().await.len();
            if total >= 6 && env.finished_jobs().await == total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{backend}: jobs unfinished\n{}",
                env.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sim_jobs = env.sim_jobs().await;
        assert!(
            sim_jobs.iter().all(|j| j.status == "success"),
            "{backend}: {sim_jobs:?}"
        );
        let mut delays: Vec<f64> = delays.into_values().collect();
        let mut waits = job_waits(&env).await;
        assert!(
            !delays.is_empty(),
            "{backend}: no runner start was measured"
        );
        let row = (
            backend,
            median(&mut delays),
            delays.len(),
            median(&mut waits),
        );
        eprintln!(
            "{backend}: runner created -> started: median {:.2}s over {} runners; job wait median {:.2}s",
            row.1, row.2, row.3
        );
        results.push(row);
        let status = terminate(&mut daemon, Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{backend}: exit {status:?}\n{}",
            env.logs()
        );
        assert_nothing_left(&env, &pool, 3).await;
    }
    let (docker_start, swarm_start) = (results[0].1, results[1].1);
    eprintln!(
        "swarm overhead over docker, runner creation -> start: {:+.2}s (median); job wait: {:+.2}s (median)",
        swarm_start - docker_start,
        results[1].3 - results[0].3
    );
    assert!(
        swarm_start < 10.0,
        "a swarm task took {swarm_start:.2}s (median) from service creation to start"
    );
}

/// An engine refusal (a network the swarm does not have): the error carries the engine's own
/// message, the pool backs off, and the secret created before the refused service is removed
/// with its instance, so nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_refusal_carries_its_message_and_leaves_no_secret() {
    if !swarm_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    let pool = unique_pool();
    let _guard = PoolGuard(pool.clone());
    let config = write_swarm_config(&env, &pool, 2);
    let missing = format!("{pool}-no-such-network");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("network = \"host\"", &format!("network = \"{missing}\""));
    std::fs::write(&config, text).unwrap();
    env.commit_workflow("one.yml", &Env::burst_yaml(1, "true"))
        .await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    let refused = wait_until(Duration::from_secs(30), || async {
        env.logs().contains("creating the service of")
    })
    .await;
    let logs = env.logs();
    assert!(refused, "no creation was refused\n{logs}");
    let line = logs
        .lines()
        .find(|l| l.contains("creating the service of"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains(&missing) && line.contains("not found"),
        "the engine's message is kept: {line}"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let attempts = env.logs().matches("creating the service of").count();
    assert!(
        attempts <= 4,
        "{attempts} refused creations in about 6 s: the pool does not back off\n{}",
        env.logs()
    );
    let clean = wait_until(Duration::from_secs(20), || async {
        secrets(&env, &pool).is_empty() && services(&env, &pool).is_empty()
    })
    .await;
    assert!(
        clean,
        "left behind: secrets {:?}, services {:?}\n{}",
        secrets(&env, &pool),
        services(&env, &pool),
        env.logs()
    );
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
    assert!(
        env.leftovers(2).await.is_empty(),
        "{:?}",
        env.leftovers(2).await
    );
    assert!(
        secrets(&env, &pool).is_empty(),
        "{:?}",
        secrets(&env, &pool)
    );
}
