//! Read-only views for end-to-end assertions: the autoscaler's SQLite store (instances,
//! identities, events), slow-starting runner wrappers, fault injection and process scans.
//!
//! The store is read with a plain SQLite connection beside the running daemon (WAL allows a
//! concurrent reader); nothing here writes to it.

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use super::Env;

/// One row of the store's `instances` table.
#[derive(Debug, Clone)]
pub struct StoreInstance {
    pub id: String,
    pub state: String,
    pub job_id: Option<i64>,
    pub job_handle: Option<String>,
    pub runner_id: Option<i64>,
    pub runner_name: Option<String>,
    pub created_ms: i64,
    pub state_since_ms: i64,
    pub busy_since_ms: Option<i64>,
    pub reason: Option<String>,
}

/// One row of the store's `events` table.
#[derive(Debug, Clone)]
pub struct StoreEvent {
    pub ts_ms: i64,
    pub instance_id: Option<String>,
    pub kind: String,
    pub detail: String,
}

/// One Forgejo 13/14 runner identity the store keeps (its token is not read).
#[derive(Debug, Clone)]
pub struct StoreIdentity {
    pub runner_id: i64,
    pub name: String,
    pub instance_id: Option<String>,
}

impl Env {
    /// Where the generated configuration puts the store.
    pub fn store_path(&self) -> PathBuf {
        self.path().join("state/autoscaler.db")
    }

    fn store_connection(&self) -> Option<rusqlite::Connection> {
        let path = self.store_path();
        if !path.exists() {
            return None;
        }
        let conn = rusqlite::Connection::open(&path).ok()?;
        conn.busy_timeout(Duration::from_secs(5)).ok()?;
        Some(conn)
    }

    /// Every instance record (empty when there is no store yet).
    pub fn store_instances(&self) -> Vec<StoreInstance> {
        let Some(conn) = self.store_connection() else {
            return Vec::new();
        };
        let mut statement = conn
            .prepare(
                "SELECT id, state, job_id, job_handle, runner_id, runner_name, created_ms, state_since_ms,
                        busy_since_ms, reason FROM instances ORDER BY created_ms",
            )
            .expect("instances table");
        statement
            .query_map([], |r| {
                Ok(StoreInstance {
                    id: r.get(0)?,
                    state: r.get(1)?,
                    job_id: r.get(2)?,
                    job_handle: r.get(3)?,
                    runner_id: r.get(4)?,
                    runner_name: r.get(5)?,
                    created_ms: r.get(6)?,
                    state_since_ms: r.get(7)?,
                    busy_since_ms: r.get(8)?,
                    reason: r.get(9)?,
                })
            })
            .expect("instances query")
            .collect::<Result<_, _>>()
            .expect("instance rows")
    }

    /// Every recorded event, oldest first.
    pub fn store_events(&self) -> Vec<StoreEvent> {
        let Some(conn) = self.store_connection() else {
            return Vec::new();
        };
        let mut statement = conn
            .prepare("SELECT ts_ms, instance_id, kind, detail FROM events ORDER BY id")
            .expect("events table");
        statement
            .query_map([], |r| {
                Ok(StoreEvent {
                    ts_ms: r.get(0)?,
                    instance_id: r.get(1)?,
                    kind: r.get(2)?,
                    detail: r.get(3)?,
                })
            })
            .expect("events query")
            .collect::<Result<_, _>>()
            .expect("event rows")
    }

    /// Forgejo 13/14 identities the store keeps, and which instance holds each.
    pub fn store_identities(&self) -> Vec<StoreIdentity> {
        let Some(conn) = self.store_connection() else {
            return Vec::new();
        };
        let mut statement = conn
            .prepare("SELECT runner_id, name, instance_id FROM identities ORDER BY runner_id")
            .expect("identities table");
        statement
            .query_map([], |r| {
                Ok(StoreIdentity {
                    runner_id: r.get(0)?,
                    name: r.get(1)?,
                    instance_id: r.get(2)?,
                })
            })
            .expect("identities query")
            .collect::<Result<_, _>>()
            .expect("identity rows")
    }

    /// When removal of `instance` started (its `deleting` event), in unix ms.
    pub fn deleting_since_ms(&self, instance: &str) -> Option<i64> {
        self.store_events()
            .into_iter()
            .find(|e| e.instance_id.as_deref() == Some(instance) && e.kind == "deleting")
            .map(|e| e.ts_ms)
    }

    /// A runner executable that sleeps `delay` before it becomes the stand-in: an instance
    /// that is slow to start (an image pull, a VM boot).
    pub fn slow_runner(&self, delay: Duration) -> PathBuf {
        let path = self.path().join("slow-runner.sh");
        let script = format!(
            "#!/bin/sh\nsleep {}\nexec {:?} \"$@\"\n",
            delay.as_secs_f64(),
            self.runner.display().to_string()
        );
        std::fs::write(&path, script).expect("wrapper written");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("wrapper executable");
        path
    }

    /// Adds fault rules to the simulator (`POST /_sim/faults`, body `{"rules": [...]}`).
    pub async fn add_faults(&self, rules: serde_json::Value) {
        let response = self
            .sim_post("/faults", serde_json::json!({ "rules": rules }))
            .await;
        assert!(
            response.status().is_success(),
            "faults accepted: {}",
            response.status()
        );
    }

    /// Removes every fault rule.
    pub async fn clear_faults(&self) {
        let response = self.sim_delete("/faults").await;
        assert!(
            response.status().is_success(),
            "faults cleared: {}",
            response.status()
        );
    }

    /// Cancels a job through the control API (like a user pressing "cancel").
    pub async fn cancel_job(&self, job_id: i64) {
        let response = self
            .sim_post(&format!("/jobs/{job_id}/cancel"), serde_json::json!({}))
            .await;
        assert!(
            response.status().is_success(),
            "job {job_id} cancelled: {}",
            response.status()
        );
    }
}

/// Points the configuration at another runner executable.
pub fn use_runner_binary(config: &Path, binary: &Path) {
    let text = std::fs::read_to_string(config).expect("config readable");
    let replaced: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("binary = ") {
                format!("binary = {:?}", binary.display().to_string())
            } else {
                line.to_string()
            }
        })
        .collect();
    std::fs::write(config, replaced.join("\n") + "\n").expect("config written");
}

/// SIGKILL (no chance to clean up) and reap.
pub fn kill_hard(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Live processes whose command line contains `marker` (e.g. a job step's shell).
pub fn processes_with_cmdline(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && String::from_utf8_lossy(&cmdline).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

impl Env {
    /// The job named `name` (waits up to 10 s for the push to create it).
    pub async fn job_named(&self, name: &str) -> super::SimJob {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(job) = self.sim_jobs().await.into_iter().find(|j| j.name == name) {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no job named {name}: {:?}",
                self.sim_jobs().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current state of job `id`.
    pub async fn job_by_id(&self, id: i64) -> super::SimJob {
        self.sim_jobs()
            .await
            .into_iter()
            .find(|j| j.id == id)
            .expect("job exists")
    }

    /// What is left behind right now, as readable problems (empty = nothing). `registration_cap`:
    /// Forgejo 13/14 keep up to this many idle identities on purpose.
    pub async fn leftovers(&self, registration_cap: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let dirs = self.backend_instances();
        if dirs > 0 {
            problems.push(format!("{dirs} instance directories"));
        }
        let processes = super::runner_processes_under(&self.path().join("state"));
        if !processes.is_empty() {
            problems.push(format!("runner processes {processes:?}"));
        }
        let live: Vec<String> = self
            .store_instances()
            .into_iter()
            .filter(|i| i.state != "gone")
            .map(|i| format!("{}={}", i.id, i.state))
            .collect();
        if !live.is_empty() {
            problems.push(format!("live instance records {live:?}"));
        }
        let registrations = self.live_runners().await;
        if self.version == "15" {
            if !registrations.is_empty() {
                let names: Vec<&str> = registrations.iter().map(|r| r.name.as_str()).collect();
                problems.push(format!("live runner registrations {names:?}"));
            }
        } else {
            if registrations.len() > registration_cap {
                problems.push(format!(
                    "{} registrations, cap {registration_cap}",
                    registrations.len()
                ));
            }
            let lent: Vec<String> = self
                .store_identities()
                .into_iter()
                .filter_map(|i| i.instance_id.map(|x| format!("{}->{x}", i.name)))
                .collect();
            if !lent.is_empty() {
                problems.push(format!("identities still lent {lent:?}"));
            }
        }
        problems
    }
}

impl Env {
    /// `commit_workflow` while faults are injected: an injected error status is answered
    /// before the simulator handles the request, so trying again cannot commit twice.
    pub async fn commit_workflow_despite_faults(&self, file: &str, yaml: &str) {
        use base64::Engine;
        let body = serde_json::json!({
            "content": base64::engine::general_purpose::STANDARD.encode(yaml),
            "message": format!("add {file}"),
        });
        let mut last = None;
        for _ in 0..20 {
            let response = self
                .api_post(
                    &format!("/repos/root/on-demand/contents/.forgejo/workflows/{file}"),
                    body.clone(),
                )
                .await;
            if response.status().is_success() {
                return;
            }
            last = Some(response.status());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("commit {file} kept failing: {last:?}");
    }
}
