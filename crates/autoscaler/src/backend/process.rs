//! The process backend (the embedded default): each runner is a child process in its own work
//! directory and its own session (which is also its own process group).
//!
//! Layout under the state directory:
//! `instances/<id>/instance.json` (ownership marker: id, pool, pid, start time),
//! the runner's credential files (0600), `runner.log` (its output), `exit-code` (written by the
//! wrapper shell when the runner exits, so the code survives an autoscaler restart), and
//! `logs/<id>.log`, where a removed instance's log is kept.
//!
//! Architecture invariant: the runner never inherits the autoscaler's environment; it gets
//! exactly `InstanceSpec::env`. A process is identified by pid *and* kernel start time, so a
//! recycled pid is never mistaken for (or killed as) one of our runners. Removal stops every
//! process of the instance's session, also when the runner itself already died: job steps run
//! in process groups of their own (as forgejo-runner's host mode does), so killing the
//! runner's process group alone would leave a step of a SIGKILLed runner running.

use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    Backend, BackendError, BoxFuture, InstanceSpec, InstanceStatus, ObservedInstance, Removal,
};

/// Runs the runner, then records its exit code. `trap` keeps the shell alive when the process
/// group gets SIGTERM so that it can still write the code after the runner stops; a caught
/// (not ignored) signal is reset to default for the runner itself.
const WRAPPER: &str = r#"trap 'true' TERM INT; "$@"; code=$?; echo "$code" > exit-code.tmp && mv exit-code.tmp exit-code; exit "$code""#;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    id: String,
    pool: String,
    pid: Option<u32>,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22).
    start_ticks: Option<u64>,
}

pub struct ProcessBackend {
    instances_dir: PathBuf,
    logs_dir: PathBuf,
    /// Woken when a child exits, so the reconciler reacts at once rather than at the next tick.
    exited: Arc<Notify>,
    /// Children started by this process (reaped by a task each).
    children: Mutex<HashMap<String, u32>>,
}

impl ProcessBackend {
    pub fn new(state_dir: &Path, exited: Arc<Notify>) -> std::io::Result<ProcessBackend> {
        let state_dir = std::path::absolute(state_dir)?;
        let instances_dir = state_dir.join("instances");
        let logs_dir = state_dir.join("logs");
        create_private_dir(&instances_dir)?;
        create_private_dir(&logs_dir)?;
        Ok(ProcessBackend {
            instances_dir,
            logs_dir,
            exited,
            children: Mutex::default(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.instances_dir.join(id)
    }

    fn err(message: impl Into<String>) -> BackendError {
        BackendError {
            backend: "process",
            message: message.into(),
        }
    }

    async fn create_instance(&self, spec: InstanceSpec) -> Result<String, BackendError> {
        if !valid_id(&spec.id) {
            return Err(Self::err(format!("invalid instance id {:?}", spec.id)));
        }
        let dir = self.dir(&spec.id);
        create_private_dir(&dir)
            .map_err(|e| Self::err(format!("cannot create {}: {e}", dir.display())))?;
        let mut meta = Meta {
            id: spec.id.clone(),
            pool: spec.pool.clone(),
            pid: None,
            start_ticks: None,
        };
        write_meta(&dir, &meta)?;
        for file in &spec.files {
            if file.name.contains("..") || file.name.starts_with('/') {
                return Err(Self::err(format!(
                    "instance file name {:?} escapes the work directory",
                    file.name
                )));
            }
            let path = dir.join(&file.name);
            let result = if file.secret {
                crate::secret::write_private_file(&path, &file.contents)
            } else {
                std::fs::write(&path, &file.contents)
            };
            result.map_err(|e| Self::err(format!("cannot write {}: {e}", path.display())))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runner.log"))
            .map_err(|e| Self::err(format!("cannot open the runner log: {e}")))?;
        let log_err = log.try_clone().map_err(|e| Self::err(e.to_string()))?;
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg("forgejo-autoscaler-runner")
            .arg(&spec.program)
            .args(&spec.args)
            .current_dir(&dir)
            .env_clear()
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        // SAFETY: setsid(2) is async-signal-safe and only affects the child, between fork and
        // exec. A new session (and process group) holds everything the runner starts, so that
        // removal can find it even after the runner is gone.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| Self::err(format!("cannot start {}: {e}", spec.program.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| Self::err("the runner exited before it could be watched"))?;
        meta.pid = Some(pid);
        meta.start_ticks = process_start_ticks(pid);
        write_meta(&dir, &meta)?;
        if let Ok(mut children) = self.children.lock() {
            children.insert(spec.id.clone(), pid);
        }
        let exited = self.exited.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            exited.notify_one();
        });
        Ok(serde_json::to_string(&meta).unwrap_or_default())
    }

    async fn delete_instance(&self, id: &str, grace: Duration) -> Result<Removal, BackendError> {
        if !valid_id(id) {
            return Err(Self::err(format!("invalid instance id {id:?}")));
        }
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(Removal::default());
        }
        let exited_before = read_exit_code(&dir).is_some();
        if let Ok(meta) = read_meta(&dir).map(|meta| with_recovered_pid(&dir, meta)) {
            if let Some(pid) = meta.pid {
                stop_session(pid, meta.start_ticks, grace).await;
            }
        }
        if let Ok(mut children) = self.children.lock() {
            children.remove(id);
        }
        let exit_code = read_exit_code(&dir);
        let log_tail = tail(&dir.join("runner.log"), 4096, 20);
        let kept = self.logs_dir.join(format!("{id}.log"));
        let log_path = std::fs::rename(dir.join("runner.log"), &kept)
            .ok()
            .map(|_| kept);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Self::err(format!("cannot remove {}: {e}", dir.display())))?;
        Ok(Removal {
            stopped_by_us: !exited_before && exit_code.is_some(),
            exit_code,
            log_tail,
            log_path,
        })
    }

    fn list_instances(&self) -> Result<Vec<ObservedInstance>, BackendError> {
        let entries = std::fs::read_dir(&self.instances_dir)
            .map_err(|e| Self::err(format!("cannot list {}: {e}", self.instances_dir.display())))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            // A directory without a readable marker was not (fully) created by us: an instance
            // interrupted before its marker was written. Listed so that it gets collected.
            let meta = read_meta(&dir).unwrap_or(Meta {
                id: id.clone(),
                pool: String::new(),
                pid: None,
                start_ticks: None,
            });
            let meta = with_recovered_pid(&dir, meta);
            let status = match (read_exit_code(&dir), meta.pid) {
                (Some(code), _) => InstanceStatus::Exited { code: Some(code) },
                (None, Some(pid)) if is_alive(pid, meta.start_ticks) => InstanceStatus::Running,
                _ => InstanceStatus::Exited { code: None },
            };
            found.push(ObservedInstance {
                id,
                pool: (!meta.pool.is_empty()).then_some(meta.pool.clone()),
                status,
                backend_ref: serde_json::to_string(&meta).unwrap_or_default(),
            });
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }
}

impl Backend for ProcessBackend {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn work_dir(&self, id: &str) -> PathBuf {
        self.dir(id)
    }

    fn create(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(self.create_instance(spec))
    }

    fn delete<'a>(
        &'a self,
        id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<Removal, BackendError>> {
        Box::pin(self.delete_instance(id, grace))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, BackendError>> {
        Box::pin(async move { self.list_instances() })
    }
}

/// A crash between spawning the runner and recording its pid leaves a marker without a pid
/// while the runner runs (and may already run a job). Its session leader is the wrapper shell,
/// whose working directory is the instance's directory: find it there, record it, and the
/// instance is adopted or stopped like any other instead of running on unseen.
fn with_recovered_pid(dir: &Path, mut meta: Meta) -> Meta {
    if meta.pid.is_some() {
        return meta;
    }
    if let Some((pid, start_ticks)) = session_leader_in(dir) {
        meta.pid = Some(pid);
        meta.start_ticks = Some(start_ticks);
        if write_meta(dir, &meta).is_err() {
            tracing::warn!(dir = %dir.display(), "cannot record the recovered pid");
        }
    }
    meta
}

/// A live process that leads its own session and works in `dir`.
fn session_leader_in(dir: &Path) -> Option<(u32, u64)> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .as_deref()
            != Some(dir)
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let leads_session = fields.get(3).and_then(|f| f.parse::<u32>().ok()) == Some(pid);
        let alive = !matches!(fields.first(), Some(&"Z") | Some(&"X"));
        if let (true, true, Some(start)) = (
            leads_session,
            alive,
            fields.get(19).and_then(|f| f.parse().ok()),
        ) {
            return Some((pid, start));
        }
    }
    None
}

/// Instance ids become directory names: letters, digits, `-` and `_` only.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes the marker atomically (temporary file, then rename). The listing may record a
/// recovered pid while `create` records the spawned one (the same pid, found by the runner's
/// working directory): each writer needs its own temporary file, or one writer's rename takes
/// the other's file away and its own rename fails (seen in CI: a creation failed after its
/// runner had already fetched its task).
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), BackendError> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("instance.json.{}-{n}.tmp", std::process::id()));
    let body = serde_json::to_vec_pretty(meta).map_err(|e| ProcessBackend::err(e.to_string()))?;
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, dir.join("instance.json")))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ProcessBackend::err(format!("cannot write the instance marker: {e}"))
        })
}

fn read_meta(dir: &Path) -> Result<Meta, String> {
    let text = std::fs::read_to_string(dir.join("instance.json")).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn read_exit_code(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("exit-code"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name, which may hold spaces).
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Alive and the same process (start time matches); zombies count as dead.
fn is_alive(pid: u32, start_ticks: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return false;
    }
    match start_ticks {
        Some(expected) => fields.get(19).and_then(|f| f.parse::<u64>().ok()) == Some(expected),
        None => true,
    }
}

/// Live processes of the session whose leader is `leader` (started at `leader_start`): the
/// runner, its wrapper and everything they started that did not start a session of its own,
/// whether or not the leader still lives.
///
/// Linux does not reuse a pid while it still names a session or process group with members, so
/// if a process with the leader's pid exists but started at another time, nothing of ours is left.
fn session_members(leader: u32, leader_start: Option<u64>) -> Vec<u32> {
    if let (Some(expected), Some(actual)) = (leader_start, process_start_ticks(leader)) {
        if actual != expected {
            return Vec::new();
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // Fields after the command name: state, ppid, pgrp, session, ..., starttime (index 19).
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let state = fields.first().copied().unwrap_or("X");
        let session = fields.get(3).and_then(|f| f.parse::<u32>().ok());
        let start = fields.get(19).and_then(|f| f.parse::<u64>().ok());
        let ours = session == Some(leader) && start.zip(leader_start).is_none_or(|(s, l)| s >= l);
        if ours && state != "Z" && state != "X" {
            members.push(pid);
        }
    }
    members
}

/// SIGTERM to every process of the instance's session, SIGKILL to what is left after `grace`.
async fn stop_session(leader: u32, leader_start: Option<u64>, grace: Duration) {
    let signal_all = |signal: i32| {
        let members = session_members(leader, leader_start);
        for pid in &members {
            // SAFETY: kill(2) on a pid of our own instance's session; no memory is involved.
            unsafe { libc::kill(*pid as i32, signal) };
        }
        !members.is_empty()
    };
    if !signal_all(libc::SIGTERM) {
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    while !session_members(leader, leader_start).is_empty()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if signal_all(libc::SIGKILL) {
        for _ in 0..100 {
            if session_members(leader, leader_start).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The last `lines` lines of the last `max_bytes` of a file.
fn tail(path: &Path, max_bytes: u64, lines: usize) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))
        .ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let out = all[start..].join("\n");
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::InstanceFile;
    use std::collections::BTreeMap;

    fn spec(id: &str, script: &str) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            pool: "p".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            files: vec![InstanceFile {
                name: "token".into(),
                contents: b"s3cret".to_vec(),
                secret: true,
            }],
            env: BTreeMap::from([("PATH".into(), "/usr/bin:/bin".into())]),
        }
    }

    async fn wait_for(
        backend: &ProcessBackend,
        id: &str,
        want: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        for _ in 0..200 {
            if let Some(i) = backend
                .list_instances()
                .unwrap()
                .into_iter()
                .find(|i| i.id == id)
            {
                if want(&i.status) {
                    return i.status;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("instance {id} never reached the wanted status");
    }

    #[tokio::test]
    async fn exit_code_env_and_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let backend = ProcessBackend::new(state.path(), Arc::default()).unwrap();
        std::env::set_var("AUTOSCALER_TEST_SECRET", "must-not-leak");
        backend
            .create_instance(spec("a", "env > env.txt; exit 3"))
            .await
            .unwrap();
        let status = wait_for(&backend, "a", |s| {
            matches!(s, InstanceStatus::Exited { .. })
        })
        .await;
        assert_eq!(status, InstanceStatus::Exited { code: Some(3) });
        let dir = state.path().join("instances/a");
        let env = std::fs::read_to_string(dir.join("env.txt")).unwrap();
        assert!(
            !env.contains("must-not-leak"),
            "the autoscaler's environment leaked: {env}"
        );
        assert_eq!(
            std::fs::metadata(dir.join("token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let removal = backend
            .delete_instance("a", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(removal.exit_code, Some(3));
        assert!(!dir.exists());
        assert!(backend.list_instances().unwrap().is_empty());
    }

    #[test]
    fn concurrent_marker_writes_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta {
            id: "m".into(),
            pool: "p".into(),
            pid: Some(1),
            start_ticks: Some(2),
        };
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        write_meta(dir.path(), &meta).expect("a concurrent marker write");
                    }
                });
            }
        });
        assert_eq!(read_meta(dir.path()).unwrap().pid, Some(1));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("instance.json")]);
    }

    #[tokio::test]
    async fn delete_kills_the_whole_process_group() {
        let state = tempfile::tempdir().unwrap();
        let backend = ProcessBackend::new(state.path(), Arc::default()).unwrap();
        // The runner starts a grandchild that would outlive a plain kill of the runner.
        backend
            .create_instance(spec("b", "sleep 300 & echo $! > grandchild; wait"))
            .await
            .unwrap();
        wait_for(&backend, "b", |s| *s == InstanceStatus::Running).await;
        let grandchild_file = state.path().join("instances/b/grandchild");
        for _ in 0..100 {
            if grandchild_file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let grandchild: u32 = std::fs::read_to_string(&grandchild_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        backend
            .delete_instance("b", Duration::from_secs(2))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !is_alive(grandchild, None),
            "grandchild {grandchild} survived"
        );
    }

    #[tokio::test]
    async fn delete_stops_what_a_dead_runner_left_running() {
        let state = tempfile::tempdir().unwrap();
        let backend = ProcessBackend::new(state.path(), Arc::default()).unwrap();
        // The runner dies (exit 137, as after SIGKILL) and leaves a child behind, the way a
        // SIGKILLed runner leaves its job step.
        backend
            .create_instance(spec("d", "sleep 300 & echo $! > leftover; exit 137"))
            .await
            .unwrap();
        let status = wait_for(&backend, "d", |s| {
            matches!(s, InstanceStatus::Exited { .. })
        })
        .await;
        assert_eq!(status, InstanceStatus::Exited { code: Some(137) });
        let leftover: u32 = std::fs::read_to_string(state.path().join("instances/d/leftover"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            is_alive(leftover, None),
            "the leftover runs before the removal"
        );
        backend
            .delete_instance("d", Duration::from_secs(2))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !is_alive(leftover, None),
            "leftover {leftover} survived the removal"
        );
    }

    #[tokio::test]
    async fn a_restarted_backend_adopts_running_instances() {
        let state = tempfile::tempdir().unwrap();
        let first = ProcessBackend::new(state.path(), Arc::default()).unwrap();
        first.create_instance(spec("c", "sleep 300")).await.unwrap();
        drop(first);
        let second = ProcessBackend::new(state.path(), Arc::default()).unwrap();
        let listed = second.list_instances().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, InstanceStatus::Running);
        assert_eq!(listed[0].pool.as_deref(), Some("p"));
        second
            .delete_instance("c", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(second.list_instances().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_runner_whose_pid_was_never_recorded_is_found_and_stopped() {
        let state = tempfile::tempdir().unwrap();
        let backend = ProcessBackend::new(state.path(), Arc::default()).unwrap();
        backend
            .create_instance(spec("d", "sleep 300"))
            .await
            .unwrap();
        wait_for(&backend, "d", |s| *s == InstanceStatus::Running).await;
        // Simulate a crash right after spawn: the marker lost its pid.
        let dir = backend.dir("d");
        let mut meta = read_meta(&dir).unwrap();
        let pid = meta.pid.take().unwrap();
        meta.start_ticks = None;
        write_meta(&dir, &meta).unwrap();
        let listed = backend.list_instances().unwrap();
        assert_eq!(
            listed[0].status,
            InstanceStatus::Running,
            "found again by its directory"
        );
        assert_eq!(read_meta(&dir).unwrap().pid, Some(pid));
        backend
            .delete_instance("d", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(!is_alive(pid, None));
    }

    #[test]
    fn ids_cannot_escape() {
        assert!(valid_id("debian-1a2b"));
        for bad in ["", "../x", "a/b", "a b"] {
            assert!(!valid_id(bad));
        }
    }
}
