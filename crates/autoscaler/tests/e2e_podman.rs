//! Issue 4, test 5: the docker backend through Podman's Docker-compatible socket. The same
//! smoke as the docker tests: 5 jobs on Forgejo 15, all succeed, the credential file is 0600
//! inside the container, the containers are removed and no registration is left.
//!
//! The test starts its own `podman system service --time=0 unix://TMP/podman.sock` (a child
//! process, stopped by its pid when the test ends) and points the pool's `docker_host` at it,
//! so nothing has to be running beforehand. It needs, as `.ci/run` sets up:
//! * `podman` on PATH (rootful; Debian 12 ships 4.3);
//! * `/etc/containers/containers.conf.d/50-ulimits.conf` on machines where every `podman run`
//!   fails with `error setting rlimit type 7` (root without CAP_SYS_RESOURCE; see
//!   ../shared/machine-notes.md);
//! * the stand-in image in Podman's storage. When it is missing there, or differs from the
//!   Docker engine's copy (the stand-in was rebuilt), the test loads it itself with
//!   `docker save IMAGE | podman load`.
//!
//! Without Podman the test FAILS with a message saying so; `AUTOSCALER_SKIP_DOCKER_TESTS=1`
//! skips it (local use only, and the skip is printed), as in e2e_docker.rs.
//!
//! It prints the per-job overhead of the container path (instance lifetime minus the job's
//! own run time) so that runs can be compared; `docker_reference_overhead` (ignored by
//! default) measures the same on the system Docker engine.

mod container_support;
mod support;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use container_support::*;
use support::*;

const PODMAN: Cli = Cli("podman");
const DOCKER: Cli = Cli("docker");

/// The measurements are compared, so the two smokes never run at the same time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `podman system service` on a socket of its own, for the length of one test.
struct PodmanService {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanService {
    fn start() -> Result<PodmanService, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let socket = dir.path().join("podman.sock");
        let log = dir.path().join("podman-service.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("{e}"))?;
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| format!("{e}"))?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start podman system service: {e}"))?;
        let mut service = PodmanService {
            child,
            socket,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if ping(&service.socket) {
                return Ok(service);
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(format!(
                    "podman system service exited ({status}): {}",
                    service.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "podman system service did not answer on {} within 30 s: {}",
            service.socket.display(),
            service.log_text()
        ))
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        // Our own child, by its pid: SIGTERM, then SIGKILL if it does not stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /_ping` over the socket answers `OK`.
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("OK")
}

fn image_id(cli: Cli) -> Option<String> {
    cli.try_run(&["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .ok()
        .map(|id| id.trim().trim_start_matches("sha256:").to_string())
}

/// Everything the test needs from Podman, or what is missing.
fn podman_problem() -> Option<String> {
    if let Err(e) = PODMAN.try_run(&["--version"]) {
        return Some(e);
    }
    let docker_id = image_id(DOCKER);
    let podman_id = image_id(PODMAN);
    if podman_id.is_none() || (docker_id.is_some() && docker_id != podman_id) {
        eprintln!("loading {IMAGE} into Podman's storage (docker save | podman load)");
        let loaded = Command::new("bash")
            .args([
                "-c",
                &format!("set -o pipefail; docker save {IMAGE} | podman load"),
            ])
            .output();
        match loaded {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Some(format!(
                    "{IMAGE} is not in Podman's storage and `docker save | podman load` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => return Some(format!("cannot run bash: {e}")),
        }
    }
    // One container by hand: a Podman that cannot run containers at all (the rlimit error
    // of machine-notes.md) is a set-up problem, said as such, not a backend failure.
    if let Err(e) = PODMAN.try_run(&["run", "--rm", "--network", "host", IMAGE, "true"]) {
        return Some(format!(
            "{e}\n(on `error setting rlimit type 7`: write \
             /etc/containers/containers.conf.d/50-ulimits.conf as .ci/run does)"
        ));
    }
    None
}

/// `false` when the test must be skipped (said so on stderr); panics when Podman is missing
/// and skipping was not asked for.
fn podman_ready() -> bool {
    let Some(problem) = podman_problem() else {
        return true;
    };
    if std::env::var("AUTOSCALER_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED (AUTOSCALER_SKIP_DOCKER_TESTS=1): {problem}");
        return false;
    }
    panic!(
        "the Podman test needs podman and the image {IMAGE} in its storage: {problem}\n\
         install podman and run the Podman set-up of .ci/run, \
         or set AUTOSCALER_SKIP_DOCKER_TESTS=1 to skip it locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_through_podman_socket_v15() {
    if !podman_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let service = PodmanService::start().unwrap_or_else(|e| panic!("{e}"));
    let overhead = smoke(PODMAN, Some(&service.docker_host())).await;
    eprintln!("podman: {overhead}");
    assert!(
        ping(&service.socket),
        "the Podman service still answers after the test: {}",
        service.log_text()
    );
}

/// The same smoke on the system Docker engine, for comparing the numbers printed above
/// (`cargo test --test e2e_podman -- --ignored --nocapture`); the docker backend's own tests
/// are in e2e_docker.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand to compare Podman's overhead with Docker's"]
async fn docker_reference_overhead() {
    let _one = ONE_AT_A_TIME.lock().await;
    let overhead = smoke(DOCKER, None).await;
    eprintln!("docker: {overhead}");
}

const JOBS: u32 = 5;
const CAP: u32 = 3;

/// The smoke: 5 jobs through the engine `cli` reaches at `docker_host`; returns the measured
/// per-job numbers as text.
async fn smoke(cli: Cli, docker_host: Option<&str>) -> String {
    let env = Env::start("15").await;
    let pool = unique_pool("pm");
    let _guard = PoolGuard {
        cli,
        pool: pool.clone(),
    };
    let config = DockerPool {
        name: &pool,
        cap: CAP,
        docker_host,
        image: IMAGE,
        runner_binary: "forgejo-runner",
        timeouts: "",
    }
    .write(&env);
    // Each step leaves its environment in the work directory, then lingers a little so that
    // the test can look inside a running container.
    let script = "env > /forgejo-runner/work/job-env.txt; sleep 5";
    env.commit_workflow("smoke.yml", &Env::burst_yaml(JOBS, script))
        .await;
    let started = Instant::now();
    let mut daemon = Daemon(env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]));

    let view = look_inside(cli, &env, &pool).await;
    check_container(&env, &view, cli);

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut most = 0;
    while env.finished_jobs().await < JOBS as usize {
        most = most.max(pool_containers(cli, &env, &pool, false).len());
        assert!(
            Instant::now() < deadline,
            "jobs unfinished: {:?}\n{}",
            env.sim_jobs().await,
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let makespan = started.elapsed();
    let jobs = env.sim_jobs().await;
    assert!(all_succeeded(&jobs), "jobs: {jobs:?}\n{}", env.logs());
    assert!(most as u32 <= CAP, "{most} containers at once, cap {CAP}");
    assert!(most >= 2, "the jobs never ran in parallel ({most} at most)");
    assert_nothing_left(cli, &env, &pool, CAP as usize).await;

    let records = exit_records(&env);
    let done: Vec<&ExitRecord> = records
        .iter()
        .filter(|r| matches!(r.reason.as_deref(), Some("job_done" | "runner_gone")))
        .collect();
    assert_eq!(done.len(), JOBS as usize, "records: {records:?}");
    assert!(
        done.iter().all(|r| r.exit_code == Some(0)),
        "the containers' exit codes are recorded: {records:?}"
    );
    let status = terminate(&mut daemon.0, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
    overhead_text(&jobs, &records, makespan)
}

/// What the test saw inside one running runner container while its job ran.
struct Inside {
    /// `stat -c '%a %u'` of the credential file.
    credential_stat: String,
    /// The runner's own credential (Forgejo 15: its token).
    runner_token: String,
    /// The job's environment, as its step wrote it.
    job_env: String,
    /// `/proc/1/environ` and `/proc/1/cmdline` (the runner process).
    runner_process: String,
    /// `inspect` of the container.
    inspect: String,
}

const SEPARATOR: &str = "=====separator=====";

/// Looks inside a running container of the pool once its job has started (its step wrote
/// `job-env.txt`). One `exec` reads everything, and a container whose job ends meanwhile is
/// skipped for the next one: the jobs are short.
async fn look_inside(cli: Cli, env: &Env, pool: &str) -> Inside {
    let script = format!(
        "test -s job-env.txt || exit 3; stat -c '%a %u' runner-token; echo {SEPARATOR}; \
         cat runner-token; echo {SEPARATOR}; cat job-env.txt; echo {SEPARATOR}; \
         cat /proc/1/environ; echo; cat /proc/1/cmdline"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        for container in pool_containers(cli, env, pool, false) {
            let Ok(inspect) = cli.try_run(&["inspect", &container]) else {
                continue;
            };
            match cli.try_run(&[
                "exec",
                "-w",
                "/forgejo-runner/work",
                &container,
                "sh",
                "-c",
                &script,
            ]) {
                Ok(out) => {
                    let parts: Vec<&str> = out.splitn(4, &format!("{SEPARATOR}\n")).collect();
                    assert_eq!(
                        parts.len(),
                        4,
                        "unexpected output of the look inside: {out:?}"
                    );
                    return Inside {
                        credential_stat: parts[0].trim().to_string(),
                        runner_token: parts[1].trim().to_string(),
                        job_env: parts[2].to_string(),
                        runner_process: parts[3].to_string(),
                        inspect,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "never saw a running job inside a container of the pool (last: {last_error})\n{}",
        env.logs()
    );
}

/// The credential file is 0600 and owned by the pool's user; the job ran in the container;
/// neither the API token nor the runner's token is in the engine's view of the container,
/// the runner's environment or arguments, or the job's environment.
fn check_container(env: &Env, inside: &Inside, cli: Cli) {
    assert_eq!(
        inside.credential_stat, "600 1000",
        "credential file mode and owner"
    );
    assert!(
        inside.job_env.contains("GITHUB_"),
        "the job ran in this container and left its environment: {:?}",
        inside.job_env
    );
    let token = inside.runner_token.as_str();
    assert!(token.len() >= 16, "a real runner token: {token:?}");
    for (what, secret) in [("API token", env.token.as_str()), ("runner token", token)] {
        assert!(
            !inside.inspect.contains(secret),
            "{what} in `{} inspect`",
            cli.0
        );
        assert!(
            !inside.runner_process.contains(secret),
            "{what} in the runner's environment or arguments"
        );
        assert!(
            !inside.job_env.contains(secret),
            "{what} in the job's environment"
        );
    }
}

/// Per job: how long its instance lived beyond the job's own run time (create, start, the
/// runner's fetch, exit, removal), and the job's wait in the queue.
fn overhead_text(jobs: &[SimJob], records: &[ExitRecord], makespan: Duration) -> String {
    let mut overhead = Vec::new();
    let mut waits = Vec::new();
    for job in jobs {
        let (Some(started), Some(stopped)) = (job.started, job.stopped) else {
            continue;
        };
        waits.push(started as i64 - job.created as i64);
        if let Some(record) = records
            .iter()
            .find(|r| r.job_id == Some(job.id) && r.state == "gone")
        {
            let lifetime = record.state_since_ms - record.created_ms;
            overhead.push(lifetime - (stopped as i64 - started as i64));
        }
    }
    format!(
        "{} jobs in {:.1} s; per job: instance lifetime minus run time median {} ms (max {} ms), \
         queue wait median {} ms (max {} ms)",
        jobs.len(),
        makespan.as_secs_f64(),
        median_ms(overhead.clone()),
        overhead.iter().max().copied().unwrap_or(0),
        median_ms(waits.clone()),
        waits.iter().max().copied().unwrap_or(0),
    )
}
