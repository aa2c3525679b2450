//! Shared plumbing of the "clients we did not write" tests (seed script, snakey-runner, swagger
//! conformance): an in-process simulator, a small `/api/v1` client that keeps status, headers and
//! body together, and the `/_sim/` read-outs the tests assert on.
//!
//! Included with `#[path = "support/client_harness.rs"] mod client_harness;` so that it does not
//! depend on, or collide with, any other `tests/support` module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use forgejo_sim::{ForgejoVersion, SimConfig, SimServer};
use serde_json::Value;

pub const ADMIN_USER: &str = "root";
/// Test fixture only: the simulator's admin password, also used by the command line.
pub const ADMIN_PASSWORD: &str = "admin1234";

/// Starts an in-process simulator on a free loopback port.
pub async fn start_sim(version: ForgejoVersion, time_scale: f64) -> SimServer {
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let config = SimConfig {
        version,
        admin_user: ADMIN_USER.to_owned(),
        admin_password: ADMIN_PASSWORD.to_owned(),
        time_scale,
    };
    SimServer::start(listen, config)
        .await
        .expect("simulator starts on a loopback port")
}

/// The repository root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
}

/// Cargo's target directory as seen from the running test executable
/// (`<target>/<profile>/deps/<test>`), so a custom `CARGO_TARGET_DIR` is honoured.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// One HTTP answer, kept whole so a test can check status, headers and body separately.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON; panics with the status and body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status, self.text
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// How a request authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Basic { user: String, password: String },
    Token(String),
}

impl Auth {
    pub fn admin_basic() -> Auth {
        Auth::Basic {
            user: ADMIN_USER.to_owned(),
            password: ADMIN_PASSWORD.to_owned(),
        }
    }
}

/// A minimal `/api/v1` and `/_sim/` client.
#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("reqwest client builds");
        Client {
            base: base.into(),
            http,
        }
    }

    /// Sends `method path` (path starts with `/`) with an optional JSON body.
    pub async fn send(&self, method: &str, path: &str, auth: &Auth, body: Option<&Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        let mut request = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path));
        request = match auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Token(token) => request.header("Authorization", format!("token {token}")),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: reading body failed: {e}"));
        Reply {
            status,
            headers,
            text,
        }
    }

    pub async fn get(&self, path: &str, auth: &Auth) -> Reply {
        self.send("GET", path, auth, None).await
    }

    pub async fn post(&self, path: &str, auth: &Auth, body: &Value) -> Reply {
        self.send("POST", path, auth, Some(body)).await
    }

    pub async fn delete(&self, path: &str, auth: &Auth) -> Reply {
        self.send("DELETE", path, auth, None).await
    }

    /// Creates an API token for `user` with basic auth and returns its secret (`sha1`).
    pub async fn create_token(
        &self,
        user: &str,
        password: &str,
        name: &str,
        scopes: &[&str],
    ) -> String {
        let auth = Auth::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        let reply = self
            .post(
                &format!("/api/v1/users/{user}/tokens"),
                &auth,
                &serde_json::json!({ "name": name, "scopes": scopes }),
            )
            .await;
        assert_eq!(reply.status, 201, "token creation: {}", reply.text);
        reply.json()["sha1"]
            .as_str()
            .expect("token response has sha1")
            .to_owned()
    }

    /// `GET /_sim/jobs`: every job the simulator ever created.
    pub async fn sim_jobs(&self) -> Vec<Value> {
        let reply = self.get("/_sim/jobs", &Auth::None).await;
        assert_eq!(reply.status, 200, "/_sim/jobs: {}", reply.text);
        match reply.json() {
            Value::Array(jobs) => jobs,
            other => panic!("/_sim/jobs is not an array: {other}"),
        }
    }

    /// `GET /_sim/stats`.
    pub async fn sim_stats(&self) -> Value {
        let reply = self.get("/_sim/stats", &Auth::None).await;
        assert_eq!(reply.status, 200, "/_sim/stats: {}", reply.text);
        reply.json()
    }

    /// Polls `/_sim/jobs` until `done` holds for the job list or `limit` passes.
    pub async fn wait_for_jobs<F>(&self, limit: Duration, mut done: F) -> Vec<Value>
    where
        F: FnMut(&[Value]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let jobs = self.sim_jobs().await;
            if done(&jobs) || tokio::time::Instant::now() >= deadline {
                return jobs;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The number recorded in `/_sim/stats` under `requests` for `key` (e.g.
/// `"POST /api/actions/runner.v1.RunnerService/Declare"`), 0 when absent.
pub fn request_count(stats: &Value, key: &str) -> u64 {
    stats["requests"][key].as_u64().unwrap_or(0)
}

/// Writes `contents` to `path` with mode 0600 (files that hold secrets).
pub fn write_private_file(path: &std::path::Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Base64 (standard alphabet, padded) of `bytes`, for the contents API.
pub fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
