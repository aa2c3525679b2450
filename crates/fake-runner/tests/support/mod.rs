//! Plumbing of the integration tests: an in-process simulator, a small `/api/v1` and `/_sim/`
//! client, and a way to run the `fake-forgejo-runner` binary and collect its exit code and log.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use forgejo_sim::{ForgejoVersion, SimConfig, SimServer};
use serde_json::{json, Value};

pub const ADMIN: &str = "root";
/// Test fixture only: the simulator's admin password.
pub const ADMIN_PASSWORD: &str = "admin1234";
pub const REPO: &str = "demo";

pub async fn start_sim(version: ForgejoVersion) -> SimServer {
    let config = SimConfig {
        version,
        admin_user: ADMIN.into(),
        admin_password: ADMIN_PASSWORD.into(),
        time_scale: 1.0,
    };
    SimServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("simulator starts")
}

/// `/api/v1` with an admin API token, plus the `/_sim/` control API.
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    /// Creates an admin token and the repository `root/demo`.
    pub async fn with_repo(base: &str) -> Api {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let reply = http
            .post(format!("{base}/api/v1/users/{ADMIN}/tokens"))
            .basic_auth(ADMIN, Some(ADMIN_PASSWORD))
            .json(&json!({"name": "fake-runner-tests", "scopes": ["write:repository", "write:user", "write:admin", "write:organization"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 201);
        let token = reply.json::<Value>().await.unwrap()["sha1"]
            .as_str()
            .unwrap()
            .to_string();
        let api = Api {
            base: base.to_string(),
            http,
            token,
        };
        let (status, body) = api
            .call("POST", "/api/v1/user/repos", Some(json!({"name": REPO})))
            .await;
        assert_eq!(status, 201, "{body}");
        api
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if path.starts_with("/api/v1") {
            request = request.header("Authorization", format!("token {}", self.token));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Commits a workflow file to `root/demo` (an `on: push` workflow starts a run at once).
    pub async fn commit_workflow(&self, file: &str, yaml: &str) {
        let path = format!("/api/v1/repos/{ADMIN}/{REPO}/contents/.forgejo/workflows/{file}");
        let body = json!({"content": base64(yaml.as_bytes()), "message": "add workflow"});
        let (status, reply) = self.call("POST", &path, Some(body)).await;
        assert_eq!(status, 201, "{reply}");
    }

    pub async fn registration_token(&self) -> String {
        let path = format!("/api/v1/repos/{ADMIN}/{REPO}/actions/runners/registration-token");
        let (status, reply) = self.call("GET", &path, None).await;
        assert_eq!(status, 200, "{reply}");
        reply["token"].as_str().unwrap().to_string()
    }

    /// Forgejo 15: `POST .../actions/runners`, returns (id, uuid, token).
    pub async fn create_runner(&self, name: &str, ephemeral: bool) -> (i64, String, String) {
        let path = format!("/api/v1/repos/{ADMIN}/{REPO}/actions/runners");
        let (status, reply) = self
            .call(
                "POST",
                &path,
                Some(json!({"name": name, "ephemeral": ephemeral})),
            )
            .await;
        assert_eq!(status, 201, "{reply}");
        (
            reply["id"].as_i64().unwrap(),
            reply["uuid"].as_str().unwrap().to_string(),
            reply["token"].as_str().unwrap().to_string(),
        )
    }

    pub async fn jobs(&self) -> Vec<Value> {
        let (status, reply) = self.call("GET", "/_sim/jobs", None).await;
        assert_eq!(status, 200);
        reply.as_array().cloned().unwrap_or_default()
    }

    pub async fn runners(&self) -> Vec<Value> {
        let (_, reply) = self.call("GET", "/_sim/runners", None).await;
        reply.as_array().cloned().unwrap_or_default()
    }

    pub async fn log(&self, job_id: i64) -> (Vec<String>, bool) {
        let (status, reply) = self
            .call("GET", &format!("/_sim/jobs/{job_id}/log"), None)
            .await;
        assert_eq!(status, 200, "{reply}");
        let rows = reply["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap_or_default().to_string())
            .collect();
        (rows, reply["archived"].as_bool().unwrap_or(false))
    }

    /// Waits until `count` jobs exist, returns them.
    pub async fn wait_jobs(&self, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            let jobs = self.jobs().await;
            if jobs.len() >= count {
                return jobs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "fewer than {count} jobs after 10 s: {:?}",
            self.jobs().await
        );
    }

    /// Waits until job `id` has `status`, returns the job.
    pub async fn wait_status(&self, id: i64, statuses: &[&str], limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let job = self
                .jobs()
                .await
                .into_iter()
                .find(|j| j["id"] == id)
                .expect("job exists");
            if statuses.iter().any(|s| job["status"] == *s)
                || tokio::time::Instant::now() > deadline
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Standard base64 with padding (the contents API wants it; no crate needed for a test).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Exit code and stderr of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stderr: String,
}

pub fn runner_command(dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-forgejo-runner"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("FAKE_RUNNER_COMPAT")
        .env_remove("FAKE_RUNNER_CODEC")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the binary to completion (at most 60 s).
pub async fn run_runner(mut command: tokio::process::Command) -> Run {
    let child = command.spawn().expect("binary starts");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("runner finished within 60 s")
        .unwrap();
    Run {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
