//! Test harness shared by the autoscaler's end-to-end tests: an in-process Forgejo simulator, a
//! work directory with a token and a configuration, and the real `forgejo-autoscaler` binary
//! started as a child process (so tests can SIGTERM or SIGKILL it). The runner is the stand-in:
//! the same binary under the name `fake-forgejo-runner` (multi-call).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use serde::Deserialize;

pub const AUTOSCALER: &str = env!("CARGO_BIN_EXE_forgejo-autoscaler");

pub struct Env {
    pub sim: forgejo_sim::SimServer,
    pub dir: tempfile::TempDir,
    pub token: String,
    pub runner: PathBuf,
    pub version: String,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimJob {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub attempt: i64,
    #[serde(default)]
    pub handle: String,
    pub runs_on: Vec<String>,
    pub runner_id: Option<i64>,
    pub task_id: Option<i64>,
    pub created: u64,
    pub started: Option<u64>,
    pub stopped: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimRunner {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub labels: Vec<String>,
    pub ephemeral: bool,
    pub deleted: bool,
}

/// Knobs of the generated configuration.
#[derive(Debug, Clone)]
pub struct ConfigOpts {
    pub max_runners: u32,
    pub pool_max_runners: u32,
    pub poll_interval: &'static str,
    pub labels: Vec<String>,
    /// Extra TOML appended to the `[timeouts]` table, e.g. `pickup = "20s"`.
    pub timeouts: &'static str,
    /// Extra pools, as complete `[[pools]]` tables.
    pub extra_pools: String,
    pub http_listen: String,
}

/// One pool of a container-like backend, for [`Env::write_one_pool_config`].
pub struct OnePool<'a> {
    pub name: &'a str,
    /// `docker`, `swarm` or `kubernetes`.
    pub backend: &'a str,
    pub cap: u32,
    /// `[runner] binary`, as the instance finds it (e.g. on the image's PATH).
    pub runner_binary: &'a str,
    /// Extra lines of `[timeouts]`.
    pub timeouts: &'a str,
    /// Extra top-level tables before the pool, e.g. `[kubernetes]`.
    pub sections: &'a str,
    /// Adds `[pools.env] EXTRA_SETTING = "from-the-pool"` (the credential tests look for it).
    pub pool_env: bool,
    /// The pool's backend tables, e.g. `[pools.docker]` and its keys.
    pub tables: &'a str,
}

impl Default for ConfigOpts {
    fn default() -> Self {
        ConfigOpts {
            max_runners: 10,
            pool_max_runners: 10,
            poll_interval: "1s",
            labels: vec![
                "trixie:docker://debian:trixie".into(),
                "bookworm:docker://debian:bookworm".into(),
                "test:docker://debian:bookworm".into(),
            ],
            timeouts: "",
            extra_pools: String::new(),
            http_listen: "off".into(),
        }
    }
}

impl Env {
    /// A simulator of `version` ("13", "14", "15") with user root, an API token and the
    /// repository root/on-demand.
    pub async fn start(version: &str) -> Env {
        Env::start_scaled(version, 1.0).await
    }

    pub async fn start_scaled(version: &str, time_scale: f64) -> Env {
        let sim = forgejo_sim::SimServer::start(
            "127.0.0.1:0".parse().unwrap(),
            forgejo_sim::SimConfig {
                version: version.parse().expect("version"),
                admin_user: "root".into(),
                admin_password: "admin1234".into(),
                time_scale,
            },
        )
        .await
        .expect("simulator starts");
        let http = reqwest::Client::new();
        let token: serde_json::Value = http
            .post(format!("{}/api/v1/users/root/tokens", sim.url()))
            .basic_auth("root", Some("admin1234"))
            .json(&serde_json::json!({"name": "tests", "scopes": ["all"]}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .expect("token created")
            .json()
            .await
            .unwrap();
        let token = token["sha1"].as_str().expect("sha1").to_string();
        let dir = tempfile::tempdir().unwrap();
        let runner = dir.path().join("fake-forgejo-runner");
        std::os::unix::fs::symlink(AUTOSCALER, &runner).unwrap();
        std::fs::write(dir.path().join("token"), &token).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let env = Env {
            sim,
            dir,
            token,
            runner,
            version: version.into(),
            http,
        };
        let created = env
            .api_post(
                "/user/repos",
                serde_json::json!({"name": "on-demand", "auto_init": true}),
            )
            .await;
        assert!(
            created.status().is_success(),
            "repository created: {}",
            created.status()
        );
        env
    }

    pub fn url(&self) -> String {
        self.sim.url()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub async fn api_post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1{path}", self.url()))
            .header("Authorization", format!("token {}", self.token))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/api/v1{path}", self.url()))
            .header("Authorization", format!("token {}", self.token))
            .send()
            .await
            .unwrap()
    }

    /// Commits a workflow file to root/on-demand (a push: `on: push` workflows start at once).
    pub async fn commit_workflow(&self, file: &str, yaml: &str) {
        let response = self
            .api_post(
                &format!("/repos/root/on-demand/contents/.forgejo/workflows/{file}"),
                serde_json::json!({
                    "content": base64::engine::general_purpose::STANDARD.encode(yaml),
                    "message": format!("add {file}"),
                }),
            )
            .await;
        assert!(
            response.status().is_success(),
            "commit {file}: {}",
            response.status()
        );
    }

    /// A workflow with `n` jobs on `trixie` whose steps run `script`.
    pub fn burst_yaml(n: u32, script: &str) -> String {
        let mut text = "on: [push]\njobs:\n".to_string();
        let mut remaining = n;
        let mut part = 0;
        while remaining > 0 {
            let k = remaining.min(200);
            part += 1;
            let values: Vec<String> = (1..=k).map(|i| i.to_string()).collect();
            text.push_str(&format!(
                "  burst-{part}:\n    runs-on: trixie\n    strategy:\n      matrix:\n        n: [{}]\n    steps:\n      - run: {script}\n",
                values.join(", ")
            ));
            remaining -= k;
        }
        text
    }

    /// Writes `autoscaler.toml` in the work directory and returns its path.
    pub fn write_config(&self, opts: &ConfigOpts) -> PathBuf {
        let labels: Vec<String> = opts.labels.iter().map(|l| format!("{l:?}")).collect();
        let text = format!(
            r#"[forgejo]
url = "{url}"
token_file = "token"
scopes = ["repo:root/on-demand"]
version = "auto"
poll_interval = "{poll}"
request_timeout = "5s"

[runner]
binary = "{runner}"
fetch_interval = "1s"

[limits]
max_runners = {max}

[timeouts]
{timeouts}

[store]
path = "state/autoscaler.db"

[http]
listen = "{listen}"

[[pools]]
name = "debian"
labels = [{labels}]
backend = "process"
max_runners = {pool_max}
{extra}
"#,
            url = self.url(),
            poll = opts.poll_interval,
            runner = self.runner.display(),
            max = opts.max_runners,
            timeouts = opts.timeouts,
            listen = opts.http_listen,
            labels = labels.join(", "),
            pool_max = opts.pool_max_runners,
            extra = opts.extra_pools,
        );
        let path = self.path().join("autoscaler.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes `autoscaler.toml` with one pool of a container-like backend (docker, swarm,
    /// kubernetes): the header every such test shares (fast polls, a 3 s orphan grace, no HTTP
    /// listener), then the caller's own tables.
    pub fn write_one_pool_config(&self, pool: &OnePool) -> PathBuf {
        let text = format!(
            r#"[forgejo]
url = "{url}"
token_file = "token"
scopes = ["repo:root/on-demand"]
version = "auto"
poll_interval = "1s"
request_timeout = "5s"

[runner]
binary = "{binary}"
fetch_interval = "1s"

[limits]
max_runners = {cap}

[timeouts]
orphan_grace = "3s"
{timeouts}

[store]
path = "state/autoscaler.db"

[http]
listen = "off"
{sections}
[[pools]]
name = "{name}"
labels = ["trixie:docker://debian:trixie"]
backend = "{backend}"
max_runners = {cap}
{pool_env}
{tables}"#,
            url = self.url(),
            binary = pool.runner_binary,
            cap = pool.cap,
            timeouts = pool.timeouts,
            sections = pool.sections,
            name = pool.name,
            backend = pool.backend,
            pool_env = if pool.pool_env {
                "\n[pools.env]\nEXTRA_SETTING = \"from-the-pool\"\n"
            } else {
                ""
            },
            tables = pool.tables,
        );
        let path = self.path().join("autoscaler.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `forgejo-autoscaler ARGS` with its stderr in `autoscaler-N.log`.
    pub fn spawn_autoscaler(&self, args: &[&str]) -> Child {
        let n = std::fs::read_dir(self.path()).unwrap().count();
        let log = std::fs::File::create(self.path().join(format!("autoscaler-{n}.log"))).unwrap();
        Command::new(AUTOSCALER)
            .args(args)
            .current_dir(self.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("autoscaler starts")
    }

    /// Every log the autoscaler wrote in this environment, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.path()).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("autoscaler-") && name.ends_with(".log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                out.push_str(&format!("--- {name} (last lines)\n"));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    pub async fn sim_jobs(&self) -> Vec<SimJob> {
        self.http
            .get(format!("{}/_sim/jobs", self.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn sim_runners(&self) -> Vec<SimRunner> {
        self.http
            .get(format!("{}/_sim/runners", self.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn sim_stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/_sim/stats", self.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn sim_post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/_sim{path}", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn sim_delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}/_sim{path}", self.url()))
            .send()
            .await
            .unwrap()
    }

    /// Jobs in a final state.
    pub async fn finished_jobs(&self) -> usize {
        self.sim_jobs()
            .await
            .iter()
            .filter(|j| {
                matches!(
                    j.status.as_str(),
                    "success" | "failure" | "cancelled" | "skipped"
                )
            })
            .count()
    }

    /// Live (not deleted) runner registrations in the simulator.
    pub async fn live_runners(&self) -> Vec<SimRunner> {
        self.sim_runners()
            .await
            .into_iter()
            .filter(|r| !r.deleted)
            .collect()
    }

    /// Instance directories the process backend still has.
    pub fn backend_instances(&self) -> usize {
        std::fs::read_dir(self.path().join("state/instances"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Polls `check` every 200 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Sends SIGTERM and waits for the exit status.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

/// Runner processes (our stand-in) still alive whose work directory is under `dir`.
pub fn runner_processes_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(dir) {
                if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                    if stat.contains(" Z ") {
                        continue;
                    }
                }
                pids.push(pid);
            }
        }
    }
    pids
}

/// Store, fault and process views for the e2e tests of cancellation, crashes and faults.
pub mod inspect;
#[allow(unused_imports)]
pub use inspect::*;
