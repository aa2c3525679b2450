//! Issue 7: the kubernetes backend against the project's fake API server (crates/fake-kube)
//! in kubelet mode (each Pod's runner container runs as a local process: the runner
//! stand-in) and the Forgejo simulator (15; one burst on 14 for the `.runner` file).
//!
//! This is not a real cluster: what the fake does and does not do is in its README. The
//! autoscaler reaches it like any cluster, through a kubeconfig with a bearer token.
//!
//! The tests run one at a time (a lock): each runs a burst of processes on a 2-core machine.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use fake_kube::{FakeKube, KubeletOptions, Options};
use serde_json::{json, Value};
use support::*;

const NAMESPACE: &str = "runners";
const IMAGE: &str = "local/forgejo-runner-stand-in:latest";
const OWNER_LABEL: &str = "org.forgejo.autoscaler.owner";
const INSTANCE: &str = "org.forgejo.autoscaler.instance";
const TOKEN: &str = "fake-kube-bearer-token-for-the-tests";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The simulator, the fake API server and the configuration of one kubernetes pool.
struct Cluster {
    env: Env,
    kube: FakeKube,
    http: reqwest::Client,
    config: std::path::PathBuf,
}

impl Cluster {
    async fn start(version: &str, cap: u32) -> Cluster {
        Cluster::start_with(version, cap, Duration::from_secs(1)).await
    }

    /// `bookmarks`: how often watches get a bookmark (a long interval lets a watch's version
    /// fall behind unrelated changes, so that a compaction makes it expire).
    async fn start_with(version: &str, cap: u32, bookmarks: Duration) -> Cluster {
        let env = Env::start(version).await;
        let kube = FakeKube::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Options {
                token: Some(TOKEN.into()),
                history_limit: 200,
                bookmark_interval: bookmarks,
                kubelet: Some(KubeletOptions {
                    // The runner stand-in lives in the work directory (a link to the binary).
                    path: vec![env.path().to_path_buf()],
                    images: Some(vec![IMAGE.into()]),
                    root: Some(env.path().join("kubelet")),
                    start_delay: Duration::from_millis(100),
                }),
                ..Options::default()
            },
        )
        .await
        .expect("fake-kube starts");
        let http = reqwest::Client::new();
        let cluster = Cluster {
            env,
            kube,
            http,
            config: Default::default(),
        };
        let (code, _) = cluster
            .api(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": NAMESPACE}})),
            )
            .await;
        assert_eq!(code, 201);
        let kubeconfig = cluster.env.path().join("kubeconfig");
        std::fs::write(&kubeconfig, cluster.kube.kubeconfig(NAMESPACE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = cluster.write_config(cap);
        Cluster { config, ..cluster }
    }

    /// One kubernetes pool: QPS bounded low enough that the test can see the bound hold.
    fn write_config(&self, cap: u32) -> std::path::PathBuf {
        let sections = format!(
            r#"
[kubernetes]
kubeconfig = "kubeconfig"
namespace = "{NAMESPACE}"
qps = 5
burst = 10
request_timeout = "5s"
"#
        );
        let tables = format!(
            r#"[pools.kubernetes]
image = "{IMAGE}"
image_pull_policy = "Never"

[pools.kubernetes.resources]
requests = {{ cpu = "250m", memory = "128Mi" }}
limits = {{ memory = "256Mi" }}

[pools.kubernetes.pod_overlay.metadata.labels]
team = "ci"
"#
        );
        self.env.write_one_pool_config(&OnePool {
            name: "kube",
            backend: "kubernetes",
            cap,
            runner_binary: "fake-forgejo-runner",
            timeouts: "",
            sections: &sections,
            pool_env: true,
            tables: &tables,
        })
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.kube.url()),
            )
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("fake-kube answers");
        let code = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn spawn(&self) -> std::process::Child {
        self.env
            .spawn_autoscaler(&["run", "-c", self.config.to_str().unwrap()])
    }

    fn pods(&self) -> Vec<Value> {
        self.kube.objects("pods", Some(NAMESPACE))
    }

    fn secrets(&self) -> Vec<Value> {
        self.kube.objects("secrets", Some(NAMESPACE))
    }

    /// Our pods that have not ended.
    fn live_pods(&self) -> Vec<Value> {
        self.pods()
            .into_iter()
            .filter(|p| p["metadata"]["annotations"][INSTANCE].is_string())
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .collect()
    }

    fn running_pods(&self) -> Vec<Value> {
        self.live_pods()
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .collect()
    }

    async fn stats(&self) -> Value {
        self.api("GET", "/_fake/stats", None).await.1
    }

    async fn drive(&self, pod: &str, action: &str) {
        let (code, body) = self
            .api(
                "POST",
                &format!("/_fake/pods/{NAMESPACE}/{pod}/{action}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(code, 200, "{action} {pod}: {body}");
    }

    fn logs(&self) -> String {
        let pods: Vec<String> = self
            .pods()
            .iter()
            .map(|p| format!("{} {}", p["metadata"]["name"], p["status"]["phase"]))
            .collect();
        format!("pods now: {pods:?}\n{}", self.env.logs())
    }

    /// Waits for every job to finish; the most of our pods seen alive at once.
    async fn watch_jobs(&self, jobs: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut most = 0;
        loop {
            most = most.max(self.live_pods().len());
            if self.env.finished_jobs().await == jobs {
                return most;
            }
            assert!(
                Instant::now() < deadline,
                "jobs unfinished: {:?}\n{}",
                self.env.sim_stats().await["jobs"],
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// No pod, no secret, no live record, no registration, no runner process.
    async fn assert_nothing_left(&self, cap: usize) {
        let clean = wait_until(Duration::from_secs(30), || async {
            self.pods()
                .iter()
                .all(|p| p["metadata"]["annotations"][INSTANCE].is_null())
                && self.secrets().is_empty()
                && self.env.leftovers(cap).await.is_empty()
        })
        .await;
        let names = |list: Vec<Value>| -> Vec<String> {
            list.iter()
                .map(|o| {
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        };
        assert!(
            clean,
            "left behind: pods {:?}, secrets {:?}, {:?}\n{}",
            names(self.pods()),
            names(self.secrets()),
            self.env.leftovers(cap).await,
            self.logs()
        );
        let processes = runner_processes_under(&self.env.path().join("kubelet"));
        assert!(processes.is_empty(), "runner processes left: {processes:?}");
    }

    /// (id, reason, exit code, detail) of every instance record.
    fn records(&self) -> Vec<Record> {
        let db = rusqlite::Connection::open(self.env.path().join("state/autoscaler.db"))
            .expect("store opens");
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
}

/// (id, reason, exit code, detail) of an instance record.
type Record = (String, Option<String>, Option<i64>, Option<String>);

fn all_succeeded(jobs: &[SimJob]) -> bool {
    jobs.iter().all(|j| j.status == "success")
}

fn long_job(name: &str) -> String {
    format!(
        "on: [push]\njobs:\n  {name}:\n    runs-on: trixie\n    steps:\n      - run: sleep 120\n"
    )
}

fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A burst under the cap on Forgejo 15: every job succeeds, never more pods than the cap,
/// the Pods look as documented, credentials stay in their Secret, the API is watched (not
/// polled) within the configured QPS, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_runs_in_pods_under_the_cap_v15() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("15", 4).await;
    let jobs = 12;
    // The jobs run on this host (the fake kubelet's processes): each leaves its environment
    // in the test's directory.
    let script = format!(
        "env > {}/job-env-$$.txt; sleep 2",
        cluster.env.path().display()
    );
    cluster
        .env
        .commit_workflow("burst.yml", &Env::burst_yaml(jobs, &script))
        .await;
    let started = Instant::now();
    let mut daemon = cluster.spawn();
    let running = wait_until(Duration::from_secs(60), || async {
        !cluster.running_pods().is_empty()
    })
    .await;
    assert!(running, "no pod ran\n{}", cluster.logs());
    check_pod_and_secret(&cluster, &cluster.running_pods()[0]).await;

    let most = cluster
        .watch_jobs(jobs as usize, Duration::from_secs(180))
        .await;
    let elapsed = started.elapsed();
    let sim_jobs = cluster.env.sim_jobs().await;
    assert!(
        all_succeeded(&sim_jobs),
        "jobs: {sim_jobs:?}\n{}",
        cluster.logs()
    );
    assert!(most <= 4, "{most} pods at once, cap 4");
    assert!(
        most >= 2,
        "the burst never ran in parallel ({most} at most)"
    );
    cluster.assert_nothing_left(4).await;
    let records = cluster.records();
    let done = records
        .iter()
        .filter(|r| {
            matches!(r.1.as_deref(), Some("job_done") | Some("runner_gone")) && r.2 == Some(0)
        })
        .count();
    assert_eq!(done, jobs as usize, "records: {records:?}");

    let stats = cluster.stats().await;
    let lists = stats["requests"]["list pods"].as_u64().unwrap_or(0);
    let watches = stats["requests"]["watch pods"].as_u64().unwrap_or(0);
    let per_second = stats["maxRequestsPerSecond"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "burst of {jobs} in {elapsed:?}: most pods at once {most}; requests {}; max {per_second}/s",
        stats["requests"]
    );
    assert!(watches >= 1, "the pods are watched: {stats}");
    assert!(
        lists <= 3,
        "listed {lists} times in {elapsed:?}: the reconciler's listing is served from the watch cache"
    );
    // qps = 5, burst = 10: at most 10 + 5 requests leave the client within any one second
    // (one more may fall into the server's window by arrival jitter). Without the bucket this
    // burst reached 20 per second.
    assert!(
        per_second <= 16,
        "{per_second} requests in one second (qps 5, burst 10): {stats}"
    );
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}\n{}",
        cluster.logs()
    );
}

/// What a runner Pod and its Secret look like, and where the credentials are (and are not).
async fn check_pod_and_secret(cluster: &Cluster, pod: &Value) {
    let name = pod_name(pod);
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["restartPolicy"], "Never");
    assert!(
        spec["activeDeadlineSeconds"].as_i64().unwrap() > 0,
        "a deadline backstop"
    );
    let volumes = spec["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .all(|v| v.get("hostPath").is_none() && v.get("projected").is_none()),
        "no hostPath and no service-account token volume: {volumes:?}"
    );
    let container = &spec["containers"][0];
    assert!(container.get("securityContext").is_none(), "not privileged");
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(
        pod["metadata"]["labels"]["team"], "ci",
        "the pod overlay applies"
    );
    let instance = pod["metadata"]["annotations"][INSTANCE]
        .as_str()
        .unwrap()
        .to_string();
    let secret = cluster
        .kube
        .object("secrets", NAMESPACE, &format!("{name}-credentials"))
        .expect("the credential secret exists while the pod runs");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Pod");
    assert_eq!(
        owner["uid"], pod["metadata"]["uid"],
        "the secret is owned by its pod"
    );
    assert_eq!(
        secret["metadata"]["annotations"][INSTANCE],
        instance.as_str()
    );
    let token = secret["data"]["runner-token"]
        .as_str()
        .expect("the runner token is in the secret");
    use base64::Engine;
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap(),
    )
    .unwrap();
    assert!(token.len() >= 16);
    let pod_text = pod.to_string();
    assert!(
        !pod_text.contains(&token),
        "the runner token is not in the pod"
    );
    assert!(
        !pod_text.contains(&cluster.env.token),
        "the API token is not in the pod"
    );
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "EXTRA_SETTING"),
        "the pool's env reaches the container"
    );
    // The job's environment (written by the job into the work directory of the pod).
    let (_, process) = cluster
        .api(
            "GET",
            &format!("/_fake/pods/{NAMESPACE}/{name}/process"),
            None,
        )
        .await;
    let dir = std::path::PathBuf::from(process["dir"].as_str().expect("a pod directory"));
    let job_env = {
        let mut text = String::new();
        for _ in 0..100 {
            let found = std::fs::read_dir(cluster.env.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("job-env-"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .find(|t| t.contains("GITHUB_"));
            if let Some(t) = found {
                text = t;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        text
    };
    assert!(
        job_env.contains("GITHUB_"),
        "the job ran in the pod: {job_env:?}"
    );
    assert!(
        !job_env.contains(&token),
        "the runner token is not in the job's environment"
    );
    assert!(
        !job_env.contains(&cluster.env.token),
        "the API token is not in the job's environment"
    );
    let stat = Command::new("stat")
        .args([
            "-L",
            "-c",
            "%a",
            dir.join("rootfs/forgejo-runner/work/runner-token")
                .to_str()
                .unwrap(),
        ])
        .output()
        .expect("stat runs");
    assert_eq!(
        String::from_utf8_lossy(&stat.stdout).trim(),
        "440",
        "the credential file's mode"
    );
}

/// Forgejo 14: identities, the `.runner` file mounted from the Secret into the work directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_runner_files_v14() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("14", 2).await;
    cluster
        .env
        .commit_workflow("burst.yml", &Env::burst_yaml(4, "sleep 1"))
        .await;
    let mut daemon = cluster.spawn();
    let most = cluster.watch_jobs(4, Duration::from_secs(120)).await;
    let sim_jobs = cluster.env.sim_jobs().await;
    assert!(
        all_succeeded(&sim_jobs),
        "jobs: {sim_jobs:?}\n{}",
        cluster.logs()
    );
    assert!(most <= 2);
    assert_eq!(
        terminate(&mut daemon, Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
    cluster.assert_nothing_left(2).await;
}

/// A job cancelled while its pod runs it: the pod, its secret and the registration go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_removes_its_pod_v15() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("15", 2).await;
    cluster
        .env
        .commit_workflow("long.yml", &long_job("long"))
        .await;
    let mut daemon = cluster.spawn();
    let running = wait_until(Duration::from_secs(60), || async {
        cluster
            .env
            .sim_jobs()
            .await
            .iter()
            .any(|j| j.status == "running")
            && cluster.running_pods().len() == 1
    })
    .await;
    assert!(running, "the job never ran\n{}", cluster.logs());
    let job = cluster
        .env
        .sim_jobs()
        .await
        .into_iter()
        .find(|j| j.status == "running")
        .unwrap();
    let cancelled_at = Instant::now();
    cluster.env.cancel_job(job.id).await;
    let gone = wait_until(Duration::from_secs(30), || async {
        cluster.live_pods().is_empty() && cluster.env.live_runners().await.is_empty()
    })
    .await;
    assert!(
        gone,
        "the pod stayed after the cancellation\n{}",
        cluster.logs()
    );
    eprintln!("cancellation to pod removed: {:?}", cancelled_at.elapsed());
    cluster.assert_nothing_left(2).await;
    let records = cluster.records();
    assert!(
        records.iter().all(|r| matches!(
            r.1.as_deref(),
            Some("runner_gone" | "cancelled" | "job_done")
        )),
        "{records:?}"
    );
    assert_eq!(
        terminate(&mut daemon, Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
}

/// A pod evicted mid-job: its slot is freed (the next job gets a pod under a cap of 1), and
/// the record says it was evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_pod_frees_its_slot_and_says_why_v15() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("15", 1).await;
    cluster
        .env
        .commit_workflow("long.yml", &long_job("long"))
        .await;
    let mut daemon = cluster.spawn();
    let running = wait_until(Duration::from_secs(60), || async {
        cluster
            .env
            .sim_jobs()
            .await
            .iter()
            .any(|j| j.status == "running")
            && cluster.running_pods().len() == 1
    })
    .await;
    assert!(running, "the job never ran\n{}", cluster.logs());
    let victim = pod_name(&cluster.running_pods()[0]);
    let evicted_job = cluster
        .env
        .sim_jobs()
        .await
        .into_iter()
        .find(|j| j.status == "running")
        .map(|j| j.id);
    cluster.drive(&victim, "evict").await;
    let freed = wait_until(Duration::from_secs(30), || async {
        cluster.kube.object("pods", NAMESPACE, &victim).is_none()
            && cluster.env.live_runners().await.is_empty()
    })
    .await;
    assert!(freed, "the evicted pod was not removed\n{}", cluster.logs());
    let records = cluster.records();
    let record = records.first().expect("a record");
    assert_eq!(record.2, Some(137), "{records:?}");
    assert!(
        record
            .3
            .as_deref()
            .is_some_and(|d| d.contains("pod evicted by the kubelet")),
        "the eviction is in the record: {records:?}"
    );
    // The slot serves the next job.
    cluster
        .env
        .commit_workflow(
            "short.yml",
            "on: [push]\njobs:\n  short:\n    runs-on: trixie\n    steps:\n      - run: echo ok\n",
        )
        .await;
    let served = wait_until(Duration::from_secs(60), || async {
        cluster
            .env
            .sim_jobs()
            .await
            .iter()
            .any(|j| Some(j.id) != evicted_job && j.runner_id.is_some())
    })
    .await;
    assert!(served, "no other job got a pod\n{}", cluster.logs());
    // The long job runs on for two minutes: stop hard, then `cleanup` removes its pod.
    kill_hard(&mut daemon);
    let cleanup = Command::new(AUTOSCALER)
        .args(["cleanup", "-c", cluster.config.to_str().unwrap()])
        .current_dir(cluster.env.path())
        .output()
        .expect("cleanup runs");
    assert!(
        cleanup.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    cluster.assert_nothing_left(1).await;
}

/// A runner container killed by the OOM killer: exit 137, reason OOMKilled and the memory
/// limit in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_pod_is_recorded_as_such_v15() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("15", 1).await;
    cluster
        .env
        .commit_workflow("long.yml", &long_job("long"))
        .await;
    let mut daemon = cluster.spawn();
    let running = wait_until(Duration::from_secs(60), || async {
        cluster
            .env
            .sim_jobs()
            .await
            .iter()
            .any(|j| j.status == "running")
            && cluster.running_pods().len() == 1
    })
    .await;
    assert!(running, "the job never ran\n{}", cluster.logs());
    let victim = pod_name(&cluster.running_pods()[0]);
    cluster.drive(&victim, "oom").await;
    let recorded = wait_until(Duration::from_secs(30), || async {
        cluster
            .records()
            .iter()
            .any(|r| r.1.is_some() && r.3.as_deref().is_some_and(|d| d.contains("OOMKilled")))
            && cluster.kube.object("pods", NAMESPACE, &victim).is_none()
    })
    .await;
    let records = cluster.records();
    assert!(recorded, "records: {records:?}\n{}", cluster.logs());
    let record = &records[0];
    assert_eq!(record.1.as_deref(), Some("runner_failed"), "{records:?}");
    assert_eq!(record.2, Some(137));
    assert!(
        record.3.as_deref().unwrap().contains("memory limit 256Mi"),
        "{records:?}"
    );
    kill_hard(&mut daemon);
    let cleanup = Command::new(AUTOSCALER)
        .args(["cleanup", "-c", cluster.config.to_str().unwrap()])
        .current_dir(cluster.env.path())
        .output()
        .expect("cleanup runs");
    assert!(
        cleanup.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    cluster.assert_nothing_left(1).await;
}

/// kill -9 of the autoscaler while pods run, then a restart: the pods are adopted (their
/// jobs end normally), every job succeeds, nothing leaks; a pod that is not ours (no owner
/// label, or another owner's) survives everything including `cleanup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_adopts_pods_and_spares_foreign_ones_v15() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("15", 3).await;
    for (name, labels) in [
        ("foreign-unlabelled", json!({})),
        ("foreign-other-owner", json!({OWNER_LABEL: "someone-else"})),
    ] {
        let pod = json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "600"]}]}
        });
        let (code, body) = cluster
            .api(
                "POST",
                &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
                Some(pod),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    let jobs = 6;
    cluster
        .env
        .commit_workflow("burst.yml", &Env::burst_yaml(jobs, "sleep 5"))
        .await;
    let mut first = cluster.spawn();
    let busy = wait_until(Duration::from_secs(60), || async {
        cluster
            .env
            .sim_jobs()
            .await
            .iter()
            .filter(|j| j.status == "running")
            .count()
            >= 2
    })
    .await;
    assert!(busy, "jobs never ran\n{}", cluster.logs());
    kill_hard(&mut first);
    let adopted: Vec<String> = cluster
        .running_pods()
        .iter()
        .map(|p| {
            p["metadata"]["annotations"][INSTANCE]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!adopted.is_empty(), "pods run while the autoscaler is dead");

    let mut second = cluster.spawn();
    cluster
        .watch_jobs(jobs as usize, Duration::from_secs(180))
        .await;
    let sim_jobs = cluster.env.sim_jobs().await;
    assert!(
        all_succeeded(&sim_jobs),
        "jobs: {sim_jobs:?}\n{}",
        cluster.logs()
    );
    assert_eq!(
        terminate(&mut second, Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
    let cleanup = Command::new(AUTOSCALER)
        .args(["cleanup", "-c", cluster.config.to_str().unwrap()])
        .current_dir(cluster.env.path())
        .output()
        .expect("cleanup runs");
    assert!(
        cleanup.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    for name in ["foreign-unlabelled", "foreign-other-owner"] {
        let pod = cluster.kube.object("pods", NAMESPACE, name);
        assert!(
            pod.is_some_and(|p| p["status"]["phase"] == "Running"),
            "a pod that is not ours was touched: {name}"
        );
        let (code, _) = cluster
            .api(
                "DELETE",
                &format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}?gracePeriodSeconds=0"),
                None,
            )
            .await;
        assert_eq!(code, 200);
    }
    cluster.assert_nothing_left(3).await;
    let records = cluster.records();
    for instance in &adopted {
        let record = records
            .iter()
            .find(|r| &r.0 == instance)
            .expect("a record per pod");
        assert!(
            matches!(record.1.as_deref(), Some("job_done") | Some("runner_gone"))
                && record.2 == Some(0),
            "the pod of {instance} was not adopted: {record:?}"
        );
    }
}

/// The API misbehaves: lost responses to pod creates (the retry meets 409 AlreadyExists),
/// 500s and 429s with Retry-After, watches dropped and the history compacted (the resumed
/// watch gets 410 and the cache lists again). Every job still succeeds; nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_409_410_and_dropped_watches_v15() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start_with("15", 3, Duration::from_secs(600)).await;
    let pods_path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let (code, _) = cluster
        .api(
            "POST",
            "/_fake/faults",
            Some(json!([
                {"status": 504, "method": "POST", "pathPrefix": pods_path, "count": 2, "afterProcessing": true},
                {"status": 500, "method": "POST", "pathPrefix": format!("/api/v1/namespaces/{NAMESPACE}/secrets"), "count": 2},
                {"status": 429, "method": "DELETE", "pathPrefix": pods_path, "count": 2, "retryAfterSeconds": 1},
            ])),
        )
        .await;
    assert_eq!(code, 200);
    let jobs = 8;
    cluster
        .env
        .commit_workflow("burst.yml", &Env::burst_yaml(jobs, "sleep 2"))
        .await;
    let mut daemon = cluster.spawn();
    let mut disturbed = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while cluster.env.finished_jobs().await < jobs as usize {
        assert!(
            Instant::now() < deadline,
            "jobs unfinished\n{}",
            cluster.logs()
        );
        if disturbed < 3 && !cluster.running_pods().is_empty() {
            // A change the pod watch does not see, then the history is dropped: the watch's
            // last version is now too old, and its resumption gets 410.
            let noise = json!({"metadata": {"generateName": "noise-"}});
            cluster
                .api("POST", "/api/v1/namespaces/default/secrets", Some(noise))
                .await;
            cluster.api("POST", "/_fake/compact", None).await;
            cluster.api("POST", "/_fake/watches/drop", None).await;
            disturbed += 1;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let sim_jobs = cluster.env.sim_jobs().await;
    assert!(
        all_succeeded(&sim_jobs),
        "jobs: {sim_jobs:?}\n{}",
        cluster.logs()
    );
    cluster.assert_nothing_left(3).await;
    let stats = cluster.stats().await;
    eprintln!("requests under faults: {}", stats["requests"]);
    assert_eq!(stats["faultsInjected"], 6, "every fault fired: {stats}");
    assert!(
        stats["requests"]["get pods"].as_u64().unwrap_or(0) >= 2,
        "a create whose response was lost is found again (409, then get): {stats}"
    );
    assert!(
        stats["requests"]["list pods"].as_u64().unwrap_or(0) >= 2,
        "a 410 makes the cache list again: {stats}"
    );
    let status = terminate(&mut daemon, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        cluster.logs()
    );
}
