//! Issue 7, "the autoscaler highly available": two autoscaler processes (the same
//! configuration apart from identity, store and HTTP port) elect a leader on a Lease served by
//! fake-kube, against the Forgejo simulator (15). The leader is killed with SIGKILL in the
//! middle of a burst; the follower takes over; every job completes, no job attempt gets two
//! runners, nothing is left (runner instances, registrations), and the failover time (kill ->
//! first action of the new leader) is measured and printed.
//!
//! The runners run on one of two backends, one test each:
//! * `kubernetes`: pods on the same fake-kube, in its kubelet mode (each pod's runner is a
//!   local process of the runner stand-in; the fake is not a real cluster, see its README);
//! * `docker`: one engine shared by both replicas (needs the engine and the stand-in image,
//!   like tests/e2e_docker.rs; `AUTOSCALER_SKIP_DOCKER_TESTS=1` skips, printed).
//!
//! What the takeover relies on is the same on both: the new leader lists the old leader's
//! instances (same owner id) and adopts them. The tests run one at a time (a lock).

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
const INSTANCE_LABEL: &str = "org.forgejo.autoscaler.instance";
const HANDLE_LABEL: &str = "org.forgejo.autoscaler.job-handle";
const NAMESPACE: &str = "runners";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the runners run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runners {
    Docker,
    Kubernetes,
}

impl Runners {
    /// The runner binary setting and the pool's backend tables.
    fn config(self, kubeconfig: &Path) -> (String, String) {
        match self {
            Runners::Docker => (
                "forgejo-runner".into(),
                format!(
                    "backend = \"docker\"\nmax_runners = {CAP}\n\n[pools.docker]\nimage = \"{IMAGE}\"\nnetwork = \"host\"\nmemory = \"256m\"\n"
                ),
            ),
            Runners::Kubernetes => (
                "fake-forgejo-runner".into(),
                format!(
                    "backend = \"kubernetes\"\nmax_runners = {CAP}\n\n[pools.kubernetes]\nimage = \"{IMAGE}\"\nimage_pull_policy = \"Never\"\n\n[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"{NAMESPACE}\"\n",
                    kubeconfig.display()
                ),
            ),
        }
    }
}

/// `(instance, job handle)` of every runner instance of `pool` (containers or pods), running
/// or not.
fn pool_instances(
    runners: Runners,
    pool: &str,
    kube: &fake_kube::FakeKube,
) -> Vec<(String, String)> {
    match runners {
        Runners::Docker => pool_containers(pool),
        Runners::Kubernetes => kube
            .objects("pods", Some(NAMESPACE))
            .iter()
            .filter_map(|pod| {
                let notes = &pod["metadata"]["annotations"];
                (notes[POOL_LABEL] == pool).then(|| {
                    (
                        notes[INSTANCE_LABEL]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        notes[HANDLE_LABEL].as_str().unwrap_or_default().to_string(),
                    )
                })
            })
            .collect(),
    }
}

/// Credential secrets of `pool`'s runners left in the namespace (kubernetes).
fn pool_secrets(runners: Runners, kube: &fake_kube::FakeKube, owner: &str) -> usize {
    match runners {
        Runners::Docker => 0,
        Runners::Kubernetes => kube
            .objects("secrets", Some(NAMESPACE))
            .iter()
            .filter(|s| s["metadata"]["labels"]["org.forgejo.autoscaler.owner"] == owner)
            .count(),
    }
}
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

/// `instance handle` of every container of `pool`, running or not.
fn pool_containers(pool: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={POOL_LABEL}={pool}"),
            "--format",
            &format!("{{{{.Label \"{INSTANCE_LABEL}\"}}}} {{{{.Label \"{HANDLE_LABEL}\"}}}}"),
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
    fn start(
        env: &Env,
        name: &'static str,
        pool: &str,
        kubeconfig: &Path,
        runners: Runners,
    ) -> Replica {
        let (binary, backend) = runners.config(kubeconfig);
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
binary = "{binary}"
fetch_interval = "1s"

[limits]
max_runners = {CAP}

[timeouts]
orphan_grace = "5s"
# An instance whose start the kill interrupted never comes online; it is removed at this
# deadline (default 10 min) and its job gets a new runner.
pickup = "30s"

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
{backend}"#,
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

/// A failed test must not leave its replicas running (they would keep polling a simulator that
/// is gone). A child already waited for is not signalled again.
impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes the test pool's containers when the test ends, so a failure leaves none behind
/// (on success there are none left to remove: the test checks that).
struct ContainerCleanup(Runners, String);

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        if self.0 != Runners::Docker {
            return;
        }
        for (instance, _) in pool_containers(&self.1) {
            let _ = Command::new("docker")
                .args(["rm", "-f", &format!("forgejo-autoscaler-{instance}")])
                .output();
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_the_follower_takes_over_when_the_leader_is_killed_mid_burst() {
    failover(Runners::Kubernetes, libc::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_the_follower_takes_over_when_the_leader_is_killed_mid_burst() {
    if !engine_ready() {
        return;
    }
    failover(Runners::Docker, libc::SIGKILL).await;
}

/// A rolling update: the leader gets SIGTERM mid-burst, stops acting without removing
/// anything and releases the lease, so the follower takes over at its next look instead of
/// after lease_duration, and adopts the running jobs.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_sigterm_hands_over_at_once() {
    failover(Runners::Kubernetes, libc::SIGTERM).await;
}

async fn failover(runners: Runners, signal: i32) {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start("15").await;
    // The lease lives in "default"; kubernetes runners in their own namespace.
    let options = fake_kube::Options {
        namespaces: vec!["default".into(), NAMESPACE.into()],
        kubelet: (runners == Runners::Kubernetes).then(|| fake_kube::KubeletOptions {
            // The runner stand-in is linked into the work directory.
            path: vec![env.path().to_path_buf()],
            images: Some(vec![IMAGE.into()]),
            root: Some(env.path().join("kubelet")),
            start_delay: Duration::from_millis(100),
        }),
        ..fake_kube::Options::default()
    };
    let kube = Arc::new(
        fake_kube::FakeKube::start_with("127.0.0.1:0".parse().unwrap(), options)
            .await
            .expect("fake-kube starts"),
    );
    let kubeconfig = env.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kube.kubeconfig("default")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pool = format!(
        "ha-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
            % 0xffff_ffff
    );
    // Declared before the replicas, so dropped after them.
    let _cleanup = ContainerCleanup(runners, pool.clone());

    // A first, so that it leads; then B, which must follow.
    let mut a = Replica::start(&env, "a", &pool, &kubeconfig, runners);
    let led = wait_until(Duration::from_secs(30), || async {
        a.role().await.as_deref() == Some("leader")
    })
    .await;
    assert!(led, "a did not become the leader\n{}", env.logs());
    let mut b = Replica::start(&env, "b", &pool, &kubeconfig, runners);
    let follows = wait_until(Duration::from_secs(30), || async {
        b.ha()
            .await
            .is_some_and(|ha| ha["role"] == "follower" && ha["leader"] == "a")
    })
    .await;
    assert!(follows, "b does not follow a\n{}", env.logs());
    let ready = b.get("/readyz").await.map(|r| r.status().as_u16());
    assert_eq!(ready, Some(200), "a follower that reads the lease is ready");
    // The follower says what it is and who leads, and claims nothing about Forgejo.
    let status: serde_json::Value = b.get("/api/status").await.unwrap().json().await.unwrap();
    assert_eq!(
        status["forgejo"]["reachable"],
        serde_json::Value::Null,
        "{status}"
    );
    assert_eq!(status["ha"]["acting"], false, "{status}");
    let page = b.get("/").await.unwrap().text().await.unwrap();
    assert!(
        page.contains("<b>follower</b>") && page.contains("leader <b>a</b>"),
        "{page}"
    );
    let leader: serde_json::Value = a.get("/api/status").await.unwrap().json().await.unwrap();
    assert_eq!(leader["ha"]["acting"], true, "{leader}");
    assert_eq!(leader["ha"]["generation"], 0, "{leader}");

    // Every runner instance (container or pod) of the pool seen during the run, with its job
    // handle.
    let seen: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = {
        let (seen, stop, pool, kube) = (seen.clone(), stop.clone(), pool.clone(), kube.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (name, handle) in pool_instances(runners, &pool, &kube) {
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
    unsafe { libc::kill(a.child.id() as i32, signal) };
    let exit = a.child.wait().ok();
    if signal == libc::SIGTERM {
        assert!(
            exit.is_some_and(|s| s.success()),
            "a exits cleanly on SIGTERM: {exit:?}\n{}",
            env.logs()
        );
        let stopped = killed.elapsed();
        assert!(
            stopped < Duration::from_secs(5),
            "a took {stopped:?} to hand over (no drain with [ha])"
        );
    }

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
    if !finished {
        let jobs: Vec<String> = env
            .sim_jobs()
            .await
            .iter()
            .filter(|j| j.status != "success")
            .map(|j| format!("{j:?}"))
            .collect();
        let runners: Vec<String> = env
            .sim_runners()
            .await
            .iter()
            .map(|r| {
                format!(
                    "{}:{}:{}",
                    r.id,
                    r.name,
                    if r.deleted { "deleted" } else { "live" }
                )
            })
            .collect();
        panic!(
            "jobs unfinished: {:?}\n{jobs:#?}\nrunners {runners:?}\ninstances seen {:?}\nb's events {:?}\n{}",
            env.sim_stats().await["jobs"],
            seen.lock().unwrap(),
            b.events(),
            env.logs()
        );
    }
    let owner = forgejo_autoscaler::config::derived_owner_id("default", LEASE);
    let clean = wait_until(Duration::from_secs(60), || async {
        pool_instances(runners, &pool, &kube).is_empty()
            && pool_secrets(runners, &kube, &owner) == 0
            && env.live_runners().await.is_empty()
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tracker.join().unwrap();
    assert!(
        clean,
        "left behind: instances {:?}, secrets {}, registrations {:?}\n{}",
        pool_instances(runners, &pool, &kube),
        pool_secrets(runners, &kube, &owner),
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
    // Adopted with their runner registration and job attempt (found in Forgejo).
    let adopted_for_job: Vec<&String> = events
        .iter()
        .filter(|(_, kind, _, detail)| {
            kind == "adopted" && detail.contains("runner Some(") && detail.contains("job Some(")
        })
        .map(|(_, _, id, _)| id)
        .collect();
    let reason_of = |id: &str| {
        events
            .iter()
            .find(|(_, kind, rid, _)| kind == "gone" && rid == id)
            .map(|(_, _, _, detail)| detail.split(':').next().unwrap_or_default().to_string())
    };
    // Kept until their job was done: removed after the runner exited (job_done), or when
    // Forgejo deleted the ephemeral registration at the end of the job a moment before the
    // runner's exit was seen (runner_gone); the jobs' success is checked below. The others
    // are instances whose start the kill interrupted (checked below too).
    let kept_busy: Vec<&&String> = adopted_for_job
        .iter()
        .filter(|id| matches!(reason_of(id).as_deref(), Some("job_done" | "runner_gone")))
        .collect();
    println!(
        "failover ({runners:?}, {}): signal -> b leader in {:.2} s; signal -> b's first action in {:.2} s; b adopted {} instance(s) of a, {} with their job, {} of them kept until the job was done",
        if signal == libc::SIGTERM { "SIGTERM" } else { "SIGKILL" },
        became_leader.as_secs_f64(),
        first_action as f64 / 1000.0,
        adopted.len(),
        adopted_for_job.len(),
        kept_busy.len()
    );
    assert!(
        !kept_busy.is_empty(),
        "mid-burst, a had busy runners that b must adopt and keep: {events:?}\n{}",
        env.logs()
    );
    let limit = if signal == libc::SIGTERM {
        // Released: b takes it at its next look (retry_period 1 s), plus a's stop.
        Duration::from_secs(3)
    } else {
        // lease_duration 5 s + retry_period 1 s, and slack for a loaded machine.
        Duration::from_secs(5 + 1 + 2)
    };
    assert!(
        became_leader <= limit,
        "takeover {became_leader:?} after the signal (at most {limit:?})"
    );

    // Every job succeeded, on one runner made for its own attempt.
    let jobs = env.sim_jobs().await;
    let runners = env.sim_runners().await;
    let seen = seen.lock().unwrap().clone();
    // Why each instance was removed, by whichever replica removed it.
    let removed: BTreeMap<String, String> = a
        .events()
        .into_iter()
        .chain(b.events())
        .filter(|(_, kind, _, _)| kind == "gone")
        .map(|(_, _, id, detail)| {
            let reason = detail.split(':').next().unwrap_or_default().to_string();
            (id, reason)
        })
        .collect();
    let mut interrupted = Vec::new();
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
            containers.contains(runner.name.as_str()),
            "job {} ran on {} but its instances were {containers:?}",
            job.id,
            runner.name
        );
        // Any other instance made for this attempt is one whose start the kill interrupted
        // (kubernetes: the pod was created, its credentials secret not yet, so its runner
        // never came online): removed at a deadline without ever running a task. Two runners
        // able to take the attempt never existed.
        for other in containers.iter().filter(|c| **c != runner.name) {
            let reason = removed.get(*other).map(String::as_str);
            assert!(
                matches!(
                    reason,
                    Some("pickup_timeout" | "boot_timeout" | "interrupted" | "create_failed")
                ),
                "job {} (handle {}) had a second instance {other} removed as {reason:?}\n{}",
                job.id,
                job.handle,
                env.logs()
            );
            let ran = runners
                .iter()
                .filter(|r| r.name == *other)
                .any(|r| jobs.iter().any(|j| j.runner_id == Some(r.id)));
            assert!(!ran, "{other} ran a job");
            interrupted.push((*other).to_string());
        }
    }
    println!(
        "instances whose start the kill interrupted, removed without running anything: {interrupted:?}"
    );

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
