//! Issue 7, "the autoscaler highly available": two autoscaler processes (the same
//! configuration apart from identity, store and HTTP port) elect a leader on a Lease served by
//! fake-kube, against the Forgejo simulator (15). The leader is killed with SIGKILL in the
//! middle of a burst; the follower takes over; every job completes, no job attempt gets two
//! runners, nothing is left (runner instances, registrations), and the failover time (kill ->
//! first action of the new leader) is measured and printed.
//!
//! The runners run on the docker backend: one engine shared by both replicas stands in for the
//! cluster (the kubernetes backend was not ready when this test was written). What matters
//! for the takeover is the same: the new leader lists the old leader's instances (same owner
//! id) and adopts them. Needs the engine and the stand-in image, like tests/e2e_docker.rs
//! (`AUTOSCALER_SKIP_DOCKER_TESTS=1` skips, printed).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use support::*;

const IMAGE: &str = "local/forgejo-runner-stand-in:latest";
const POOL_LABEL: &str = "org.forgejo.autoscaler.pool";
const HANDLE_LABEL: &str = "org.forgejo.autoscaler.job-handle";
const JOBS: u32 = 24;
/// Longer than the failover, so that the new leader finds runners busy with their jobs.
const JOB_SECONDS: u32 = 10;
const CAP: u32 = 6;
const LEASE: &str = "forgejo-autoscaler-e2e";

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
        "the HA test runs its runners on docker and needs the engine and {IMAGE}: {problem}\n\
         start dockerd and run tests/support/build-runner-image.sh (as .ci/run does), \
         or set AUTOSCALER_SKIP_DOCKER_TESTS=1 to skip locally"
    );
}

/// `name handle` of every container of `pool`, running or not.
fn pool_containers(pool: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={POOL_LABEL}={pool}"),
            "--format",
            &format!("{{{{.Names}}}} {{{{.Label \"{HANDLE_LABEL}\"}}}}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, handle) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (!name.is_empty()).then(|| (name.to_string(), handle.to_string()))
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    name: &'static str,
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl Replica {
    fn start(env: &Env, name: &'static str, pool: &str, kubeconfig: &Path) -> Replica {
        let dir = env.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let text = format!(
            r#"[forgejo]
url = "{url}"
token_file = "../token"
scopes = ["repo:root/on-demand"]
version = "15"
poll_interval = "1s"
request_timeout = "5s"

[runner]
binary = "forgejo-runner"
fetch_interval = "1s"

[limits]
max_runners = {CAP}

[timeouts]
orphan_grace = "5s"

[store]
path = "state/autoscaler.db"

[http]
listen = "127.0.0.1:{port}"

[ha]
lease_name = "{LEASE}"
identity = "{name}"
lease_duration = "5s"
renew_deadline = "3s"
retry_period = "1s"
kubeconfig = "{kubeconfig}"

[[pools]]
name = "{pool}"
labels = ["trixie:docker://debian:trixie"]
backend = "docker"
max_runners = {CAP}

[pools.docker]
image = "{IMAGE}"
network = "host"
memory = "256m"
"#,
            url = env.url(),
            kubeconfig = kubeconfig.display(),
        );
        let config = dir.join("autoscaler.toml");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(env.path().join(format!("autoscaler-{name}.log"))).unwrap();
        let child = Command::new(AUTOSCALER)
            .args(["run", "-c", config.to_str().unwrap()])
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("autoscaler starts");
        Replica {
            name,
            dir,
            port,
            child,
        }
    }

    async fn get(&self, path: &str) -> Option<reqwest::Response> {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
    }

    /// The `ha` block of `/api/status`.
    async fn ha(&self) -> Option<serde_json::Value> {
        let status: serde_json::Value = self.get("/api/status").await?.json().await.ok()?;
        status.get("ha").cloned()
    }

    async fn role(&self) -> Option<String> {
        Some(self.ha().await?["role"].as_str()?.to_string())
    }

    /// `(ts_ms, kind, instance, detail)` of the events this replica's store recorded.
    fn events(&self) -> Vec<(i64, String, String, String)> {
        let Ok(conn) = rusqlite::Connection::open(self.dir.join("state/autoscaler.db")) else {
            return Vec::new();
        };
        let _ = conn.busy_timeout(Duration::from_secs(5));
        let Ok(mut statement) = conn.prepare(
            "SELECT ts_ms, kind, COALESCE(instance_id, ''), detail FROM events ORDER BY id",
        ) else {
            return Vec::new();
        };
        statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_follower_takes_over_when_the_leader_is_killed_mid_burst() {
    if !engine_ready() {
        return;
    }
    let env = Env::start("15").await;
    let kube = fake_kube::FakeKube::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("fake-kube starts");
    let kubeconfig = env.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kube.kubeconfig("default")).unwrap();
    let pool = format!(
        "ha-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
            % 0xffff_ffff
    );

    // A first, so that it leads; then B, which must follow.
    let mut a = Replica::start(&env, "a", &pool, &kubeconfig);
    let led = wait_until(Duration::from_secs(30), || async {
        a.role().await.as_deref() == Some("leader")
    })
    .await;
    assert!(led, "a did not become the leader\n{}", env.logs());
    let mut b = Replica::start(&env, "b", &pool, &kubeconfig);
    let follows = wait_until(Duration::from_secs(30), || async {
        b.ha()
            .await
            .is_some_and(|ha| ha["role"] == "follower" && ha["leader"] == "a")
    })
    .await;
    assert!(follows, "b does not follow a\n{}", env.logs());
    let ready = b.get("/readyz").await.map(|r| r.status().as_u16());
    assert_eq!(ready, Some(200), "a follower that reads the lease is ready");

    // Every container of the pool seen during the run, with its job handle.
    let seen: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = {
        let (seen, stop, pool) = (seen.clone(), stop.clone(), pool.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (name, handle) in pool_containers(&pool) {
                    seen.lock().unwrap().insert(name, handle);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    env.commit_workflow(
        "burst.yml",
        &Env::burst_yaml(JOBS, &format!("sleep {JOB_SECONDS}")),
    )
    .await;
    let mid_burst = wait_until(Duration::from_secs(120), || async {
        let jobs = env.sim_jobs().await;
        let done = jobs.iter().filter(|j| j.status == "success").count();
        let running = jobs.iter().filter(|j| j.status == "running").count();
        done >= CAP as usize && running >= 3
    })
    .await;
    assert!(mid_burst, "the burst did not get going\n{}", env.logs());

    let killed_ms = now_ms();
    let killed = Instant::now();
    unsafe { libc::kill(a.child.id() as i32, libc::SIGKILL) };
    let _ = a.child.wait();

    let mut became_leader = None;
    while killed.elapsed() < Duration::from_secs(30) {
        if b.role().await.as_deref() == Some("leader") {
            became_leader = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let became_leader =
        became_leader.unwrap_or_else(|| panic!("b did not take over\n{}", env.logs()));

    let finished = wait_until(Duration::from_secs(240), || async {
        env.finished_jobs().await == JOBS as usize
    })
    .await;
    assert!(
        finished,
        "jobs unfinished: {:?}\n{}",
        env.sim_stats().await["jobs"],
        env.logs()
    );
    let clean = wait_until(Duration::from_secs(60), || async {
        pool_containers(&pool).is_empty() && env.live_runners().await.is_empty()
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tracker.join().unwrap();
    assert!(
        clean,
        "left behind: containers {:?}, registrations {:?}\n{}",
        pool_containers(&pool),
        env.live_runners().await,
        env.logs()
    );

    // The first create or removal by b after the kill.
    let events = b.events();
    let first_action = events
        .iter()
        .filter(|(ts, kind, _, _)| {
            *ts >= killed_ms
                && matches!(
                    kind.as_str(),
                    "created" | "deleting" | "gone" | "orphan_removed"
                )
        })
        .map(|(ts, _, _, _)| ts - killed_ms)
        .min()
        .expect("b acted after the kill");
    let adopted: Vec<&String> = events
        .iter()
        .filter(|(_, kind, _, _)| kind == "adopted")
        .map(|(_, _, id, _)| id)
        .collect();
    // Adopted while busy: the runner registration and the job attempt were found.
    let adopted_busy: Vec<&String> = events
        .iter()
        .filter(|(_, kind, _, detail)| {
            kind == "adopted" && detail.contains("runner Some(") && detail.contains("job Some(")
        })
        .map(|(_, _, id, _)| id)
        .collect();
    println!(
        "failover: SIGKILL -> b leader in {:.2} s; SIGKILL -> b's first action in {:.2} s; b adopted {} instance(s) of a, {} of them busy with their job",
        became_leader.as_secs_f64(),
        first_action as f64 / 1000.0,
        adopted.len(),
        adopted_busy.len()
    );
    assert!(
        !adopted_busy.is_empty(),
        "mid-burst, a had busy runners for b to adopt: {events:?}\n{}",
        env.logs()
    );
    // b let each of them finish its job.
    let removals: Vec<(i64, String, String, String)> = events
        .iter()
        .filter(|(_, kind, id, _)| kind == "gone" && adopted_busy.contains(&id))
        .cloned()
        .collect();
    for id in &adopted_busy {
        assert!(
            removals
                .iter()
                .any(|(_, _, rid, detail)| rid == *id && detail.starts_with("job_done")),
            "adopted busy instance {id} was not removed as job_done: {removals:?}\n{}",
            env.logs()
        );
    }
    assert!(
        became_leader <= Duration::from_secs(5 + 1 + 2),
        "takeover {became_leader:?} after the kill: lease_duration 5 s + retry_period 1 s (+ slack)"
    );

    // Every job succeeded, on one runner made for its own attempt.
    let jobs = env.sim_jobs().await;
    let runners = env.sim_runners().await;
    let seen = seen.lock().unwrap().clone();
    let mut per_handle: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, handle) in &seen {
        if !handle.is_empty() {
            per_handle.entry(handle).or_default().insert(name);
        }
    }
    for job in &jobs {
        assert_eq!(job.status, "success", "{job:?}\n{}", env.logs());
        let runner = runners
            .iter()
            .find(|r| Some(r.id) == job.runner_id)
            .unwrap_or_else(|| panic!("{job:?} ran on no runner we know"));
        let containers = per_handle
            .get(job.handle.as_str())
            .cloned()
            .unwrap_or_default();
        assert!(
            containers.len() <= 1,
            "job {} (handle {}) got {} runner containers: {containers:?}",
            job.id,
            job.handle,
            containers.len()
        );
        assert!(
            containers.contains(format!("forgejo-autoscaler-{}", runner.name).as_str()),
            "job {} ran on {} but its containers were {containers:?}",
            job.id,
            runner.name
        );
    }

    let metrics = b.get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("forgejo_autoscaler_leader 1"), "{metrics}");
    assert!(
        metrics.contains("forgejo_autoscaler_leader_transitions_total 1"),
        "{metrics}"
    );

    // b hands over on SIGTERM without removing anything: the lease is released.
    let status = terminate(&mut b.child, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "b exit: {status:?}\n{}",
        env.logs()
    );
    let lease = kube.object("leases", "default", LEASE).expect("the lease");
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "released: {lease}"
    );
    assert!(
        lease["spec"]["leaseTransitions"].as_i64() >= Some(1),
        "{lease}"
    );
    if std::env::var_os("E2E_HA_LOGS").is_some() {
        println!("{}", env.logs());
    }
    let _ = b.name;
}
