//! Issue 4, test 6: one docker pool on two engines (`docker_hosts`): the system engine and a
//! second, private `dockerd` this test starts on its own socket, data and exec roots.
//!
//! A burst on Forgejo 15 runs on both engines; the private engine's daemon is then killed
//! (SIGKILL) mid-burst. What must hold: every job still succeeds, every container created after
//! the kill runs on the system engine, no instance is declared lost because its engine could
//! not be listed, nothing is left on the system engine; and once the private engine is started
//! again, its containers are found and removed and no record or registration is left.
//!
//! Why SIGKILL: a killed daemon's containers live on under their shims (the runner inside
//! finishes its job and reaches Forgejo directly), which is what an engine whose API is
//! unreachable looks like to the autoscaler. A stopped daemon (SIGTERM) would instead stop its
//! containers, and their runners would report their jobs cancelled: no autoscaler can make those
//! jobs succeed.
//!
//! Needs `dockerd`, a running system engine and the image `local/forgejo-runner-stand-in:latest`
//! (as `e2e_docker.rs`): without them the test FAILS, unless `AUTOSCALER_SKIP_DOCKER_TESTS=1`.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

const IMAGE: &str = "local/forgejo-runner-stand-in:latest";
const OWNER_LABEL: &str = "org.forgejo.autoscaler.owner";
const POOL_LABEL: &str = "org.forgejo.autoscaler.pool";
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// `false` when the test must be skipped (said so on stderr); panics when something it needs
/// is missing and skipping was not asked for.
fn engines_ready() -> bool {
    let dockerd = Command::new("dockerd").arg("--version").output();
    let image = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output();
    let problem = match (dockerd, image) {
        (Err(e), _) => Some(format!("cannot run dockerd: {e}")),
        (Ok(out), _) if !out.status.success() => Some("dockerd --version failed".to_string()),
        (_, Err(e)) => Some(format!("cannot run the docker client: {e}")),
        (_, Ok(out)) if !out.status.success() => Some(format!(
            "docker image inspect {IMAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        _ => None,
    };
    let Some(problem) = problem else { return true };
    if std::env::var("AUTOSCALER_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED (AUTOSCALER_SKIP_DOCKER_TESTS=1): {problem}");
        return false;
    }
    panic!(
        "the two-engine test needs dockerd, a running Docker engine and the image {IMAGE}: {problem}\n\
         install docker.io, start dockerd and run tests/support/build-runner-image.sh (as .ci/run does), \
         or set AUTOSCALER_SKIP_DOCKER_TESTS=1 to skip it locally"
    );
}

fn system_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.to_string())
}

/// `docker -H HOST ARGS`: its stdout, or `Err` with its stderr.
fn docker_at(host: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "docker -H {host} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A second Docker daemon, private to this test: its own socket, data root, exec root, pid
/// file, configuration file and bridge interface, and no iptables rules (its containers use
/// the host network). Dropping it stops it and removes everything it had, also when the test
/// failed half-way.
///
/// Why its own bridge and not `--bridge none`: a dockerd whose bridge is disabled deletes the
/// host's `docker0` interface at start, which breaks the bridge network of the system engine
/// (seen here: "could not find bridge docker0" for every container on it afterwards).
struct PrivateDockerd {
    root: PathBuf,
    bridge: String,
    child: Option<Child>,
}

impl PrivateDockerd {
    fn start() -> PrivateDockerd {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // Short: a unix socket path must fit in 108 bytes.
        let root = PathBuf::from(format!("/tmp/fa-d2-{}-{:x}", std::process::id(), nanos));
        std::fs::create_dir_all(&root).expect("private engine directory");
        // Not the host's /etc/docker/daemon.json: nothing of the system engine's settings.
        std::fs::write(root.join("daemon.json"), "{}").expect("daemon.json");
        // An interface name has at most 15 bytes; a subnet unlikely to be in use.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let pid = std::process::id();
        let bridge = format!("fad2{:x}{n}", pid % 0xff_ffff);
        let address = format!("10.231.{}.1/24", (pid + n) % 250);
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        for args in [
            vec!["link", "add", &bridge, "type", "bridge"],
            vec!["addr", "add", &address, "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap_or_else(|e| {
                panic!("the private engine's bridge is made with `ip` (iproute2): {e}")
            });
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut engine = PrivateDockerd {
            root,
            bridge,
            child: None,
        };
        engine.spawn();
        engine
    }

    fn address(&self) -> String {
        format!("unix://{}", self.root.join("d.sock").display())
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        docker_at(&self.address(), args)
    }

    /// Starts the daemon (again) on the same roots and waits until it answers.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))
            .expect("dockerd log");
        let r = |name: &str| self.root.join(name).display().to_string();
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(self.address())
            .args(["--data-root", &r("data")])
            .args(["--exec-root", &r("exec")])
            .args(["--pidfile", &r("d.pid")])
            .args(["--config-file", &r("daemon.json")])
            .args(["--bridge", &self.bridge])
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .cli(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "the private dockerd did not come up ({exited:?}):\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The daemon dies at once; its containers live on under their shims.
    fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 30 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Loads the stand-in image from the system engine (no registry is reachable).
    fn load_image(&self) {
        let mut save = Command::new("docker")
            .args(["save", IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save runs");
        let load = Command::new("docker")
            .arg("-H")
            .arg(self.address())
            .arg("load")
            .stdin(save.stdout.take().expect("save's output"))
            .output()
            .expect("docker load runs");
        assert!(save.wait().expect("docker save ends").success());
        assert!(
            load.status.success(),
            "docker load into the private engine: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        // After a hard kill, containers may still run under their shims: a daemon started on
        // the same roots stops them (no live-restore), then everything is removed.
        if self.child.is_none() {
            let root = self.root.clone();
            let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn()));
            if restarted.is_err() {
                eprintln!(
                    "could not restart the private dockerd in {}",
                    root.display()
                );
            }
        }
        if self.child.is_some() {
            if let Ok(ids) = self.cli(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.lines().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = self.cli(&args);
                }
            }
        }
        self.stop();
        // What is still running from these roots (a shim whose daemon never came back).
        let marker = self.root.display().to_string();
        for pid in processes_with_cmdline(&marker) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        unmount_under(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Detaches every mount below `root` (the daemon's network namespace file, overlays), deepest
/// first, so that the directory can be removed.
fn unmount_under(root: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|point| Path::new(point).starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Ok(path) = std::ffi::CString::new(point) {
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Containers of the pool (our owner label) on one engine; `running` only, or all.
fn pool_containers_at(host: &str, owner: &str, pool: &str, running: bool) -> Vec<String> {
    let owner_filter = format!("label={OWNER_LABEL}={owner}");
    let pool_filter = format!("label={POOL_LABEL}={pool}");
    let mut args = vec![
        "ps",
        "-q",
        "--filter",
        &owner_filter,
        "--filter",
        &pool_filter,
    ];
    if !running {
        args.push("-a");
    }
    docker_at(host, &args)
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Removes the pool's containers from the system engine when the test ends, passed or failed.
struct SystemPoolGuard(String);

impl Drop for SystemPoolGuard {
    fn drop(&mut self) {
        let filter = format!("label={POOL_LABEL}={}", self.0);
        if let Ok(ids) = docker_at(&system_host(), &["ps", "-aq", "--filter", &filter]) {
            let ids: Vec<&str> = ids.lines().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = docker_at(&system_host(), &args);
            }
        }
    }
}

/// The store's owner id (the value of our containers' owner label).
fn owner_id(env: &Env) -> Option<String> {
    let db = rusqlite::Connection::open_with_flags(
        env.store_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    db.query_row("SELECT value FROM meta WHERE key = 'owner_id'", [], |r| {
        r.get(0)
    })
    .ok()
}

/// (id, created_ms, engine of the backend reference, reason) of every instance record.
fn placements(env: &Env) -> Vec<(String, i64, Option<String>, Option<String>)> {
    let db = rusqlite::Connection::open(env.store_path()).expect("store opens");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let mut query = db
        .prepare("SELECT id, created_ms, backend_ref, reason FROM instances ORDER BY created_ms")
        .expect("query");
    query
        .query_map([], |row| {
            let backend_ref: Option<String> = row.get(2)?;
            let engine = backend_ref
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                .and_then(|v| v["engine"].as_str().map(str::to_string));
            Ok((row.get(0)?, row.get(1)?, engine, row.get(3)?))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("readable rows")
}

/// Every line the autoscaler logged (`Env::logs` keeps only the last ones).
fn full_logs(env: &Env) -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir(env.path())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("autoscaler-") && n.ends_with(".log"))
    });
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn write_config(env: &Env, pool: &str, hosts: &[String], cap: u32) -> PathBuf {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let tables = format!(
        r#"[pools.docker]
image = "{IMAGE}"
docker_hosts = [{hosts}]
network = "host"
"#,
        hosts = hosts.join(", "),
    );
    env.write_one_pool_config(&OnePool {
        name: pool,
        backend: "docker",
        cap,
        runner_binary: "forgejo-runner",
        timeouts: "teardown = \"5s\"",
        sections: "",
        pool_env: false,
        tables: &tables,
    })
}

/// The tests run one at a time: each starts a daemon and containers on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spreads_over_two_engines_and_survives_losing_one_v15() {
    if !engines_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    const JOBS: u32 = 14;
    const CAP: u32 = 6;
    let test_started = Instant::now();
    let env = Env::start("15").await;
    let docker0 = Path::new("/sys/class/net/docker0");
    let had_docker0 = docker0.exists();
    let mut private = PrivateDockerd::start();
    let load_started = Instant::now();
    private.load_image();
    eprintln!(
        "private engine up and image loaded in {:.1}s ({} after start)",
        load_started.elapsed().as_secs_f64(),
        private.address()
    );
    let system = system_host();
    let second = private.address();
    let pool = format!("eng{:x}", now_ms() % 0xffff_ffff);
    let _system_guard = SystemPoolGuard(pool.clone());
    let config = write_config(&env, &pool, &[system.clone(), second.clone()], CAP);

    env.commit_workflow("burst.yml", &Env::burst_yaml(JOBS, "sleep 4"))
        .await;
    let burst_started = Instant::now();
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);

    // Both engines get containers before one of them goes away.
    let owner = {
        let found = wait_until(Duration::from_secs(30), || async {
            owner_id(&env).is_some()
        })
        .await;
        assert!(
            found,
            "the autoscaler did not create its store\n{}",
            env.logs()
        );
        owner_id(&env).unwrap()
    };
    let spread = wait_until(Duration::from_secs(60), || async {
        pool_containers_at(&second, &owner, &pool, true).len() >= 2
            && !pool_containers_at(&system, &owner, &pool, true).is_empty()
    })
    .await;
    assert!(
        spread,
        "containers did not start on both engines: system {:?}, private {:?}\n{}",
        pool_containers_at(&system, &owner, &pool, false),
        pool_containers_at(&second, &owner, &pool, false),
        env.logs()
    );
    let on_second_at_kill = pool_containers_at(&second, &owner, &pool, true).len();
    let finished_at_kill = env.finished_jobs().await;
    assert!(
        finished_at_kill < JOBS as usize,
        "the burst ended before the engine could be stopped mid-burst"
    );
    let killed_ms = now_ms();
    private.kill_hard();
    let killed_at = Instant::now();
    eprintln!(
        "killed the private dockerd {:.1}s into the burst: {on_second_at_kill} containers running on it, {finished_at_kill}/{JOBS} jobs done",
        burst_started.elapsed().as_secs_f64()
    );

    // Every job completes: the killed engine's containers finish theirs under their shims, the
    // rest run on the system engine.
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.finished_jobs().await < JOBS as usize {
        assert!(
            Instant::now() < deadline,
            "jobs unfinished after the engine was lost: {:?}\n{}",
            env.sim_stats().await["jobs"],
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let burst_secs = burst_started.elapsed().as_secs_f64();
    let jobs = env.sim_jobs().await;
    assert!(
        jobs.iter().all(|j| j.status == "success"),
        "every job succeeds: {:?}\n{}",
        jobs.iter()
            .map(|j| (&j.name, &j.status))
            .collect::<Vec<_>>(),
        env.logs()
    );

    let records = placements(&env);
    let mut per_engine: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, engine, _) in &records {
        *per_engine
            .entry(engine.clone().unwrap_or_else(|| "(none)".into()))
            .or_default() += 1;
    }
    eprintln!(
        "{JOBS} jobs in {burst_secs:.1}s; containers per engine: {per_engine:?} (the private engine is {second})"
    );
    assert!(
        per_engine.get(&second).copied().unwrap_or(0) >= 2
            && per_engine.get(&system).copied().unwrap_or(0) >= 1,
        "the burst ran on both engines: {per_engine:?}"
    );
    let after_kill: Vec<_> = records
        .iter()
        .filter(|(_, created, _, _)| *created > killed_ms)
        .collect();
    assert!(
        !after_kill.is_empty(),
        "some containers were created after the kill: {records:?}"
    );
    assert!(
        after_kill
            .iter()
            .all(|(_, _, engine, _)| engine.as_deref() == Some(system.as_str())),
        "every container created after the kill is on the system engine: {after_kill:?}"
    );
    assert!(
        !records.iter().any(|r| matches!(
            r.3.as_deref(),
            Some("instance_lost") | Some("create_failed")
        )),
        "no instance is declared lost, no creation fails because of the dead engine: {records:?}"
    );
    assert!(
        full_logs(&env).contains(&format!("engine {second} unreachable, backing off")),
        "the lost engine is reported with its backoff\n{}",
        env.logs()
    );
    // Nothing left on the system engine.
    let system_clean = wait_until(Duration::from_secs(30), || async {
        pool_containers_at(&system, &owner, &pool, false).is_empty()
    })
    .await;
    assert!(
        system_clean,
        "left on the system engine: {:?}\n{}",
        pool_containers_at(&system, &owner, &pool, false),
        env.logs()
    );

    // The engine comes back: its containers are found again and removed, the records that
    // waited for it are closed, no registration is left.
    private.spawn();
    let restarted_at = Instant::now();
    let clean = wait_until(Duration::from_secs(150), || async {
        pool_containers_at(&second, &owner, &pool, false).is_empty()
            && env.leftovers(CAP as usize).await.is_empty()
    })
    .await;
    assert!(
        clean,
        "left behind after the engine came back: private engine {:?}, {:?}\n{}",
        pool_containers_at(&second, &owner, &pool, false),
        env.leftovers(CAP as usize).await,
        env.logs()
    );
    eprintln!(
        "engine down for {:.1}s; after its restart, its containers were cleaned in {:.1}s; test time {:.1}s",
        restarted_at.duration_since(killed_at).as_secs_f64(),
        restarted_at.elapsed().as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
    assert!(
        full_logs(&env).contains(&format!("engine {second} is usable again")),
        "the engine's recovery is logged\n{}",
        env.logs()
    );
    let records = placements(&env);
    assert!(
        !records
            .iter()
            .any(|r| r.3.as_deref() == Some("instance_lost")),
        "no instance is declared lost: {records:?}"
    );
    let mut endings: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (_, _, engine, reason) in &records {
        let engine = if engine.as_deref() == Some(second.as_str()) {
            "private"
        } else {
            "system"
        };
        *endings
            .entry((engine.to_string(), reason.clone().unwrap_or_default()))
            .or_default() += 1;
    }
    eprintln!("removal reasons by engine: {endings:?}");
    for line in full_logs(&env)
        .lines()
        .filter(|l| l.contains(&format!("engine {second}")))
        .take(10)
    {
        eprintln!("  log: {line}");
    }
    drop(private);
    assert!(
        !had_docker0 || docker0.exists(),
        "the private engine left the system engine's docker0 bridge alone"
    );
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
}

/// An engine that answers but refuses every container (here: the image is not on it, and
/// `pull_policy = "never"`) is backed off; each creation it refuses moves on to the other
/// engine in the same call, so no creation of the pool fails and every job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_refuses_containers_is_skipped_v15() {
    if !engines_ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    const JOBS: u32 = 6;
    let env = Env::start("15").await;
    // No image loaded into it.
    let private = PrivateDockerd::start();
    let system = system_host();
    let second = private.address();
    let pool = format!("ref{:x}", now_ms() % 0xffff_ffff);
    let _system_guard = SystemPoolGuard(pool.clone());
    // The engine without the image is listed first: it is tried first.
    let config = write_config(&env, &pool, &[second.clone(), system.clone()], 3);
    env.commit_workflow("burst.yml", &Env::burst_yaml(JOBS, "sleep 1"))
        .await;
    let started = Instant::now();
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while env.finished_jobs().await < JOBS as usize {
        assert!(
            Instant::now() < deadline,
            "jobs unfinished: {:?}\n{}",
            env.sim_stats().await["jobs"],
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs = env.sim_jobs().await;
    assert!(
        jobs.iter().all(|j| j.status == "success"),
        "every job succeeds: {jobs:?}\n{}",
        env.logs()
    );
    let records = placements(&env);
    eprintln!(
        "{JOBS} jobs in {:.1}s with one engine refusing; records: {:?}",
        started.elapsed().as_secs_f64(),
        records
            .iter()
            .map(|r| (r.2.as_deref() == Some(second.as_str()), r.3.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        records
            .iter()
            .all(|(_, _, engine, _)| engine.as_deref() == Some(system.as_str())),
        "every container runs on the engine that has the image: {records:?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r.3.as_deref() == Some("create_failed")),
        "no creation failed: {records:?}"
    );
    let logs = full_logs(&env);
    assert!(
        logs.contains(&format!(
            "engine {second} refused a container, backing off 5 s"
        )),
        "the refusal is reported with its backoff\n{}",
        env.logs()
    );
    assert!(
        logs.contains("is not present and pull_policy"),
        "with the engine's reason\n{}",
        env.logs()
    );
    let owner = owner_id(&env).expect("owner id");
    let clean = wait_until(Duration::from_secs(30), || async {
        pool_containers_at(&system, &owner, &pool, false).is_empty()
            && pool_containers_at(&second, &owner, &pool, false).is_empty()
            && env.leftovers(3).await.is_empty()
    })
    .await;
    assert!(
        clean,
        "left behind: {:?}\n{}",
        env.leftovers(3).await,
        env.logs()
    );
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        env.logs()
    );
}
