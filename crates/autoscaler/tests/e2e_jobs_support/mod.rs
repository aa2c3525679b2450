//! Helpers of the seed/burst, runner-lifecycle and workflow-shape end-to-end tests
//! (`e2e_seed_and_burst.rs`, `e2e_runner_lifecycle.rs`), on top of `support`: read-only views
//! of the autoscaler's store that never panic (they sample a running daemon), the runner
//! stand-in's own processes, and a few simulator calls.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use base64::Engine;

use super::support::{runner_processes_under, Env, AUTOSCALER};

/// An instance row of the autoscaler's store.
#[derive(Debug, Clone)]
pub struct StoredInstance {
    pub id: String,
    pub pool: String,
    pub state: String,
    pub job_id: Option<i64>,
    pub runner_id: Option<i64>,
    pub busy_since_ms: Option<i64>,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
}

/// A Forgejo 13/14 runner identity of the store, and the instance it is lent to.
#[derive(Debug, Clone)]
pub struct StoredIdentity {
    pub runner_id: i64,
    pub pool: String,
    pub instance_id: Option<String>,
}

fn open_read_only(db: &Path) -> Option<rusqlite::Connection> {
    if !db.exists() {
        return None;
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(conn)
}

/// Every instance the store at `db` recorded; `None` when it cannot be read (not created yet,
/// or busy): a sampler skips that sample.
pub fn stored_instances(db: &Path) -> Option<Vec<StoredInstance>> {
    let conn = open_read_only(db)?;
    let mut stmt = conn
        .prepare(
            "SELECT id, pool, state, job_id, runner_id, busy_since_ms, reason, exit_code FROM instances ORDER BY created_ms",
        )
        .ok()?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredInstance {
                id: r.get(0)?,
                pool: r.get(1)?,
                state: r.get(2)?,
                job_id: r.get(3)?,
                runner_id: r.get(4)?,
                busy_since_ms: r.get(5)?,
                reason: r.get(6)?,
                exit_code: r.get(7)?,
            })
        })
        .ok()?;
    rows.collect::<Result<Vec<_>, _>>().ok()
}

/// The Forgejo 13/14 identities the store at `db` holds.
pub fn stored_identities(db: &Path) -> Option<Vec<StoredIdentity>> {
    let conn = open_read_only(db)?;
    let mut stmt = conn
        .prepare("SELECT runner_id, pool, instance_id FROM identities ORDER BY runner_id")
        .ok()?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredIdentity {
                runner_id: r.get(0)?,
                pool: r.get(1)?,
                instance_id: r.get(2)?,
            })
        })
        .ok()?;
    rows.collect::<Result<Vec<_>, _>>().ok()
}

/// The store of a `write_config` configuration (and of `run --state-dir <env>/state`).
pub fn store_of(env: &Env) -> PathBuf {
    env.path().join("state/autoscaler.db")
}

/// Pids of runner stand-in processes (the runner itself, not the backend's wrapper shell)
/// whose work directory is under `dir`: their executable is this package's binary.
pub fn runner_binary_pids_under(dir: &Path) -> Vec<u32> {
    let ours = std::fs::canonicalize(AUTOSCALER).ok();
    runner_processes_under(dir)
        .into_iter()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok() == ours)
        .collect()
}

/// Whether any autoscaler log of the environment contains `needle`.
pub fn logs_contain(env: &Env, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(env.path()) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        name.starts_with("autoscaler-")
            && name.ends_with(".log")
            && std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains(needle))
    })
}

/// Waits up to `timeout` for the child to exit, without blocking the runtime that serves the
/// simulator.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A runner executable that sleeps `delay` before it becomes the stand-in (an instance that is
/// slow to start), written as `name` in the environment.
pub fn delayed_runner(env: &Env, name: &str, delay: Duration) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = env.path().join(name);
    let script = format!(
        "#!/bin/sh\nsleep {}\nexec {:?} \"$@\"\n",
        delay.as_secs_f64(),
        env.runner.display().to_string()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Replaces the `binary = ...` line of a generated configuration.
pub fn set_runner_binary(config: &Path, binary: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("binary = ") {
                format!("binary = {:?}", binary.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(config, lines.join("\n") + "\n").unwrap();
}

/// `/_sim/jobs` as raw JSON (with the fields `SimJob` leaves out, e.g. `repo`).
pub async fn sim_jobs_raw(env: &Env) -> Vec<serde_json::Value> {
    reqwest::get(format!("{}/_sim/jobs", env.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The registration token of root/on-demand (for a foreign runner started by a test).
pub async fn registration_token(env: &Env) -> String {
    let response = env
        .api_get("/repos/root/on-demand/actions/runners/registration-token")
        .await;
    assert!(
        response.status().is_success(),
        "registration token: {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    body["token"].as_str().expect("token").to_string()
}

/// Creates the repository root/NAME.
pub async fn create_repo(env: &Env, name: &str) {
    let created = env
        .api_post(
            "/user/repos",
            serde_json::json!({"name": name, "auto_init": true}),
        )
        .await;
    assert!(
        created.status().is_success(),
        "repository {name} created: {}",
        created.status()
    );
}

/// Commits a file to root/REPO (a push: `on: push` workflows of that repository start).
pub async fn commit_file_to(env: &Env, repo: &str, path: &str, text: &str) {
    let response = env
        .api_post(
            &format!("/repos/root/{repo}/contents/{path}"),
            serde_json::json!({
                "content": base64::engine::general_purpose::STANDARD.encode(text),
                "message": format!("add {path}"),
            }),
        )
        .await;
    assert!(
        response.status().is_success(),
        "commit {repo}/{path}: {}",
        response.status()
    );
}

/// Writes a 0600 password file for `run --password-file`.
pub fn write_password_file(env: &Env) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = env.path().join("password");
    std::fs::write(&path, "admin1234\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
