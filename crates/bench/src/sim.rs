//! The Forgejo simulator as a separate process (so the system under test is measured alone),
//! and a small client for the parts of its API the harness uses: seeding (token, repository,
//! workflow files) and the `/_sim/` control API (stats, jobs, runners, dispatch).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The admin the simulator is started with. A test fixture, not a secret, but it still
/// travels in the environment rather than argv, as the team's rule for passwords says.
pub const ADMIN_USER: &str = "root";
const ADMIN_PASSWORD: &str = "admin1234";
/// The repository every scenario uses.
pub const REPO: &str = "bench";

pub struct SimProcess {
    child: Child,
    pub url: String,
}

impl SimProcess {
    /// Starts `forgejo-sim` on a free loopback port and waits for its `listening on` line.
    pub fn start(
        binary: &Path,
        version: &str,
        time_scale: f64,
        log: &Path,
    ) -> anyhow::Result<SimProcess> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--forgejo-version",
                version,
                "--admin-user",
                ADMIN_USER,
            ])
            .arg("--time-scale")
            .arg(time_scale.to_string())
            .env("FORGEJO_SIM_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the simulator"))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the simulator's first line")?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the simulator did not print its address (got {line:?}); see {}",
                log.display()
            );
        };
        Ok(SimProcess {
            url: url.trim_end_matches('/').to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        // SIGTERM is the simulator's clean stop; a kill follows if it does not exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counters of `GET /_sim/stats`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Stats {
    #[serde(default)]
    pub jobs: BTreeMap<String, u64>,
    #[serde(default)]
    pub runners: BTreeMap<String, u64>,
    #[serde(default)]
    pub requests: BTreeMap<String, u64>,
    #[serde(default)]
    pub responses: BTreeMap<String, u64>,
}

impl Stats {
    /// Jobs in a final state.
    pub fn finished_jobs(&self) -> u64 {
        ["success", "failure", "cancelled", "skipped"]
            .iter()
            .map(|k| self.jobs.get(*k).copied().unwrap_or(0))
            .sum()
    }

    pub fn job_count(&self, status: &str) -> u64 {
        self.jobs.get(status).copied().unwrap_or(0)
    }

    /// Requests per route template made since `before`.
    pub fn requests_since(&self, before: &Stats) -> BTreeMap<String, u64> {
        self.requests
            .iter()
            .map(|(route, n)| {
                (
                    route.clone(),
                    n.saturating_sub(before.requests.get(route).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// One job of `GET /_sim/jobs` (times in simulated unix milliseconds).
#[derive(Debug, Clone, Deserialize)]
pub struct SimJob {
    pub id: i64,
    pub status: String,
    pub created: i64,
    pub started: Option<i64>,
    pub stopped: Option<i64>,
}

/// One runner of `GET /_sim/runners`.
#[derive(Debug, Clone, Deserialize)]
pub struct SimRunner {
    pub id: i64,
    pub name: String,
    pub deleted: bool,
}

/// HTTP access to one simulator.
#[derive(Clone)]
pub struct SimClient {
    http: reqwest::Client,
    pub url: String,
}

impl SimClient {
    pub fn new(url: &str) -> anyhow::Result<SimClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(SimClient {
            http,
            url: url.to_string(),
        })
    }

    /// Creates an API token for the admin (basic auth) and returns it.
    pub async fn create_token(&self, name: &str) -> anyhow::Result<String> {
        let response: serde_json::Value = self
            .http
            .post(format!("{}/api/v1/users/{ADMIN_USER}/tokens", self.url))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .json(&serde_json::json!({
                "name": name,
                "scopes": ["write:repository", "write:user", "write:organization"],
            }))
            .send()
            .await?
            .error_for_status()
            .context("creating an API token")?
            .json()
            .await?;
        response["sha1"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("token response without sha1"))
    }

    /// Creates `root/bench` with an initial commit.
    pub async fn create_repo(&self, token: &str) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/api/v1/user/repos", self.url))
            .header("Authorization", format!("token {token}"))
            .json(&serde_json::json!({"name": REPO, "auto_init": true}))
            .send()
            .await?
            .error_for_status()
            .context("creating the bench repository")?;
        Ok(())
    }

    /// Commits `.forgejo/workflows/FILE` to the bench repository.
    pub async fn commit_workflow(&self, token: &str, file: &str, yaml: &str) -> anyhow::Result<()> {
        self.http
            .post(format!(
                "{}/api/v1/repos/{ADMIN_USER}/{REPO}/contents/.forgejo/workflows/{file}",
                self.url
            ))
            .header("Authorization", format!("token {token}"))
            .json(&serde_json::json!({
                "content": base64::engine::general_purpose::STANDARD.encode(yaml),
                "message": format!("add {file}"),
            }))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("committing {file}"))?;
        Ok(())
    }

    /// Starts one run of a `workflow_dispatch` workflow.
    pub async fn dispatch(&self, file: &str) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_sim/dispatch", self.url))
            .json(&serde_json::json!({"owner": ADMIN_USER, "repo": REPO, "workflow": file}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("dispatching {file}"))?;
        Ok(())
    }

    /// Registers a runner from a shared secret (`forgejo-cli actions register --secret`).
    pub async fn register_secret_runner(
        &self,
        name: &str,
        secret: &str,
        labels: &[&str],
    ) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_sim/runners", self.url))
            .json(&serde_json::json!({
                "owner": ADMIN_USER, "repo": REPO, "name": name, "secret": secret, "labels": labels,
            }))
            .send()
            .await?
            .error_for_status()
            .context("registering a probe runner")?;
        Ok(())
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        Ok(self
            .http
            .get(format!("{}/_sim/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    pub async fn jobs(&self) -> anyhow::Result<Vec<SimJob>> {
        Ok(self
            .http
            .get(format!("{}/_sim/jobs", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    pub async fn runners(&self) -> anyhow::Result<Vec<SimRunner>> {
        Ok(self
            .http
            .get(format!("{}/_sim/runners", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}
