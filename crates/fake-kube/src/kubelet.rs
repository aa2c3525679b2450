//! The process-running kubelet ("kubelet mode"): each Pod's first container runs as a local
//! process, and the Pod's status follows it.
//!
//! A pod gets a directory `ROOT/<uid>/` with `rootfs/` (its file system view), `volumes/` and
//! `logs/`. Each volume mount becomes a symlink at `rootfs/<mountPath>` to its volume
//! (emptyDir: a directory; secret: the Secret's keys as files with their modes; the
//! service-account token volume: a fake token; hostPath: the host path itself), nested mounts
//! inside outer ones. Absolute paths under a mount path in the command, arguments,
//! environment and working directory are rewritten to `rootfs/...`, so that a program that
//! reads `/forgejo-runner/work/.runner` reads the file the Secret provided. Everything else
//! (`/bin/sh`, `/tmp`) is the host's, standing in for the image's.
//!
//! Life of a pod: bound to the node (Pending, ContainerCreating) -> image check (absent:
//! ErrImagePull, stays Pending) -> volumes (a missing Secret keeps it ContainerCreating and is
//! retried, as the real kubelet does) -> process started (Running) -> exit (Succeeded with 0,
//! else Failed; a signal is 128+n). Deletion: SIGTERM to the process group, SIGKILL after the
//! grace period, then the object is removed. `activeDeadlineSeconds` from `status.startTime`:
//! stopped like a deletion, then Failed with reason DeadlineExceeded. Tests end pods by
//! OOM kill or eviction through the control API.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use base64::Engine;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    podstatus::{self, Ending},
    resource::{Resource, Target},
    server::{KubeletOptions, Shared},
    status::ApiError,
    store::Key,
};

/// What the API server or the test asks of a pod's kubelet.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Graceful deletion: SIGTERM, `grace` seconds, SIGKILL, then the object goes.
    Delete { grace: i64 },
    /// The object is gone already (forced deletion or the namespace): stop everything.
    Kill,
    /// End the container now (SIGKILL) and report `ending`.
    End(Ending),
}

struct Worker {
    tx: mpsc::UnboundedSender<Outcome>,
    pid: Arc<AtomicU32>,
    dir: PathBuf,
}

pub struct Kubelet {
    options: KubeletOptions,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
    workers: Mutex<HashMap<String, Worker>>,
    next_ip: AtomicU32,
}

/// A process of a pod, as the control API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PodProcess {
    pub pid: Option<u32>,
    pub dir: PathBuf,
}

impl Kubelet {
    pub fn new(options: KubeletOptions) -> std::io::Result<Kubelet> {
        let (root, temp) = match &options.root {
            Some(root) => {
                std::fs::create_dir_all(root)?;
                (root.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("fake-kubelet-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        Ok(Kubelet {
            options,
            root,
            _temp: temp,
            workers: Mutex::default(),
            next_ip: AtomicU32::new(2),
        })
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Worker>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new pod: start its worker.
    pub fn admit(&self, shared: Arc<Shared>, key: Key, pod: &Value) {
        let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let pid = Arc::new(AtomicU32::new(0));
        let dir = self.root.join(uid);
        self.workers().insert(
            uid.to_string(),
            Worker {
                tx,
                pid: pid.clone(),
                dir: dir.clone(),
            },
        );
        let ip = format!(
            "10.244.0.{}",
            self.next_ip.fetch_add(1, Ordering::SeqCst) % 250 + 2
        );
        let run = PodRun {
            shared,
            key,
            uid: uid.to_string(),
            dir,
            pid,
            ip,
            options: self.options.clone(),
        };
        tokio::spawn(run.run(rx));
    }

    /// Hands `outcome` to the pod's worker; `false` when there is none (any more).
    pub fn terminate(&self, uid: &str, outcome: Outcome) -> bool {
        self.workers()
            .get(uid)
            .is_some_and(|w| w.tx.send(outcome).is_ok())
    }

    pub fn process(&self, uid: &str) -> Option<PodProcess> {
        self.workers().get(uid).map(|w| PodProcess {
            pid: match w.pid.load(Ordering::SeqCst) {
                0 => None,
                pid => Some(pid),
            },
            dir: w.dir.clone(),
        })
    }

    pub fn log_path(&self, uid: &str, container: &str) -> PathBuf {
        self.root
            .join(uid)
            .join("logs")
            .join(format!("{container}.log"))
    }

    fn forget(&self, uid: &str) {
        self.workers().remove(uid);
    }

    /// Kills every pod process (the fake is going away).
    pub fn kill_all(&self) {
        for worker in self.workers().values() {
            let pid = worker.pid.load(Ordering::SeqCst);
            if pid != 0 {
                signal_group(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on the process group we created; no memory is involved.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Why a pod cannot start yet, or at all.
enum NotYet {
    /// Retry (a Secret that does not exist yet).
    Wait(String, String),
    /// Never (an unsupported volume, a missing command): the pod fails.
    Fail(Box<Ending>),
}

impl NotYet {
    fn fail(ending: Ending) -> NotYet {
        NotYet::Fail(Box::new(ending))
    }
}

struct PodRun {
    shared: Arc<Shared>,
    key: Key,
    uid: String,
    dir: PathBuf,
    pid: Arc<AtomicU32>,
    ip: String,
    options: KubeletOptions,
}

impl PodRun {
    /// Changes the pod if it is still this pod (same uid); `None` when it is gone.
    fn update(&self, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut state = self.shared.state();
        let mut pod = state.get(&self.key).cloned()?;
        if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(self.uid.as_str()) {
            return None;
        }
        change(&mut pod);
        Some(state.put(self.key.clone(), pod))
    }

    fn remove(&self) {
        let mut state = self.shared.state();
        let same = state
            .get(&self.key)
            .and_then(|p| p.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            == Some(self.uid.as_str());
        if same {
            state.remove(&self.key);
            drop(state);
            self.shared.gc.notify_one();
        }
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Outcome>) {
        let node = self.shared.options.node_name.clone();
        let Some(pod) = self.update(|pod| podstatus::scheduled(pod, &node)) else {
            return self.finish();
        };
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let grace_default = pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let sleep_deadline = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_deadline);

        // Before the process: pull delay, image, volumes.
        let mut pulled = false;
        let mut last_wait = String::new();
        let child = loop {
            let step = if !pulled {
                tokio::time::sleep(self.options.start_delay)
            } else {
                tokio::time::sleep(Duration::from_millis(100))
            };
            tokio::select! {
                _ = step => {}
                outcome = rx.recv() => {
                    if self.before_start(outcome) {
                        return self.finish();
                    }
                    return self.wait_for_removal(rx).await;
                }
                _ = &mut sleep_deadline => {
                    self.update(|p| podstatus::terminated(p, &Ending::deadline_exceeded(137)));
                    return self.wait_for_removal(rx).await;
                }
            }
            pulled = true;
            let Some(pod) = self.shared.state().get(&self.key).cloned() else {
                return self.finish();
            };
            match self.start(&pod).await {
                Ok(child) => break child,
                Err(NotYet::Wait(reason, message)) => {
                    if message != last_wait {
                        self.update(|p| podstatus::waiting(p, &reason, &message));
                        last_wait = message;
                    }
                }
                Err(NotYet::Fail(ending)) => {
                    self.update(|p| podstatus::terminated(p, &ending));
                    return self.wait_for_removal(rx).await;
                }
            }
        };
        let ip = self.ip.clone();
        if self.update(|p| podstatus::running(p, &ip)).is_none() {
            // Deleted while starting.
            self.stop(child, 0).await;
            return self.finish();
        }
        self.supervise(child, rx, sleep_deadline, grace_default)
            .await
    }

    async fn supervise(
        &self,
        mut child: tokio::process::Child,
        mut rx: mpsc::UnboundedReceiver<Outcome>,
        deadline: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
        grace_default: i64,
    ) {
        let mut deadline = deadline;
        tokio::select! {
            status = child.wait() => {
                let code = status.map(|s| exit_code(&s)).unwrap_or(128);
                self.update(|p| podstatus::terminated(p, &Ending::exited(code)));
                self.wait_for_removal(rx).await
            }
            outcome = rx.recv() => match outcome {
                Some(Outcome::Delete { grace }) => {
                    // As the kubelet does: the final status first, then the object goes.
                    let code = self.stop(child, grace).await;
                    self.update(|p| podstatus::terminated(p, &Ending::exited(code)));
                    self.remove();
                    self.finish();
                }
                None | Some(Outcome::Kill) => {
                    self.stop(child, 0).await;
                    self.finish();
                }
                Some(Outcome::End(ending)) => {
                    self.stop(child, 0).await;
                    self.update(|p| podstatus::terminated(p, &ending));
                    self.wait_for_removal(rx).await
                }
            },
            _ = &mut deadline => {
                let code = self.stop(child, grace_default).await;
                self.update(|p| podstatus::terminated(p, &Ending::deadline_exceeded(code)));
                self.wait_for_removal(rx).await
            }
        }
    }

    /// An outcome before the process started; `true` when the pod is gone.
    fn before_start(&self, outcome: Option<Outcome>) -> bool {
        match outcome {
            Some(Outcome::Delete { .. }) => {
                self.remove();
                true
            }
            None | Some(Outcome::Kill) => true,
            Some(Outcome::End(ending)) => {
                self.update(|p| podstatus::terminated(p, &ending));
                false
            }
        }
    }

    /// A pod that ended stays (with its logs) until it is deleted.
    async fn wait_for_removal(&self, mut rx: mpsc::UnboundedReceiver<Outcome>) {
        while let Some(outcome) = rx.recv().await {
            match outcome {
                Outcome::Delete { .. } => {
                    self.remove();
                    break;
                }
                Outcome::Kill => break,
                Outcome::End(_) => {}
            }
        }
        self.finish();
    }

    fn finish(&self) {
        if let Some(kubelet) = &self.shared.kubelet {
            kubelet.forget(&self.uid);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// SIGTERM, up to `grace` seconds, SIGKILL; the exit code (128+signal when killed).
    async fn stop(&self, mut child: tokio::process::Child, grace: i64) -> i32 {
        let pid = self.pid.load(Ordering::SeqCst);
        if grace > 0 {
            signal_group(pid, libc::SIGTERM);
            let wait = Duration::from_secs(grace.max(0) as u64);
            if let Ok(Ok(status)) = tokio::time::timeout(wait, child.wait()).await {
                signal_group(pid, libc::SIGKILL);
                return exit_code(&status);
            }
        }
        signal_group(pid, libc::SIGKILL);
        let code = child.wait().await.map(|s| exit_code(&s)).unwrap_or(137);
        code
    }

    /// Volumes, environment, command; then the process.
    async fn start(&self, pod: &Value) -> Result<tokio::process::Child, NotYet> {
        let images = self.options.images.as_ref();
        let container = pod
            .pointer("/spec/containers/0")
            .cloned()
            .unwrap_or(Value::Null);
        let image = container["image"].as_str().unwrap_or_default().to_string();
        if images.is_some_and(|list| !list.contains(&image)) {
            return Err(NotYet::Wait(
                "ErrImagePull".into(),
                format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found on the node (fake-kube: not among the kubelet's images)"),
            ));
        }
        let rootfs = self.dir.join("rootfs");
        let mounts = self.mount(pod, &container, &rootfs)?;
        let rewrite = |s: &str| rewrite_paths(s, &mounts, &rootfs);
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or_default().to_string();
            let value = match (&var["value"], &var["valueFrom"]) {
                (Value::String(v), _) => rewrite(v),
                (_, Value::Object(from)) => self.value_from(pod, from)?,
                _ => String::new(),
            };
            env.push((name, value));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ));
        }
        if !env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.push((
                "HOSTNAME".into(),
                pod.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
            ));
        }
        let mut argv: Vec<String> = Vec::new();
        for part in ["command", "args"] {
            for a in container[part].as_array().into_iter().flatten() {
                argv.push(rewrite(a.as_str().unwrap_or_default()));
            }
        }
        if container["command"].as_array().is_none_or(|c| c.is_empty()) {
            return Err(NotYet::fail(start_error(
                "fake-kube runs only containers that name their command (it knows no image entrypoints)",
            )));
        }
        let path_env = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let program = self.resolve(&argv[0], &path_env).ok_or_else(|| {
            NotYet::fail(start_error(&format!(
                "failed to create containerd task: exec: \"{}\": executable file not found in $PATH",
                argv[0]
            )))
        })?;
        let working_dir = container["workingDir"].as_str().unwrap_or("/");
        let cwd = rootfs.join(working_dir.trim_start_matches('/'));
        std::fs::create_dir_all(&cwd)
            .map_err(|e| NotYet::fail(start_error(&format!("working directory: {e}"))))?;
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| NotYet::fail(start_error(&format!("log directory: {e}"))))?;
        let name = container["name"].as_str().unwrap_or("container");
        let log = std::fs::File::create(logs.join(format!("{name}.log")))
            .map_err(|e| NotYet::fail(start_error(&format!("log file: {e}"))))?;
        let log2 = log
            .try_clone()
            .map_err(|e| NotYet::fail(start_error(&format!("log file: {e}"))))?;
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(env)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        let child = command.spawn().map_err(|e| {
            NotYet::fail(start_error(&format!(
                "failed to create containerd task: {}: {e}",
                program.display()
            )))
        })?;
        self.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        Ok(child)
    }

    fn resolve(&self, program: &str, path_env: &str) -> Option<PathBuf> {
        let executable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if program.contains('/') {
            let direct = PathBuf::from(program);
            if executable(&direct) {
                return Some(direct);
            }
            let file = direct.file_name()?;
            return self
                .options
                .path
                .iter()
                .map(|d| d.join(file))
                .find(|p| executable(p));
        }
        self.options
            .path
            .iter()
            .cloned()
            .chain(std::env::split_paths(path_env))
            .map(|d| d.join(program))
            .find(|p| executable(p))
    }

    fn value_from(
        &self,
        pod: &Value,
        from: &serde_json::Map<String, Value>,
    ) -> Result<String, NotYet> {
        if let Some(field) = from.get("fieldRef").and_then(|f| f["fieldPath"].as_str()) {
            let pointer = format!("/{}", field.replace('.', "/"));
            return Ok(pod
                .pointer(&pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string());
        }
        if let Some(secret) = from.get("secretKeyRef") {
            let name = secret["name"].as_str().unwrap_or_default();
            let key = secret["key"].as_str().unwrap_or_default();
            let found = self.secret(name).and_then(|s| s.get(key).cloned());
            return match found {
                Some(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                None if secret["optional"].as_bool() == Some(true) => Ok(String::new()),
                None => Err(NotYet::Wait(
                    "CreateContainerConfigError".into(),
                    format!("secret \"{name}\" not found or has no key \"{key}\""),
                )),
            };
        }
        Ok(String::new())
    }

    /// The decoded data of a Secret in the pod's namespace.
    fn secret(&self, name: &str) -> Option<HashMap<String, Vec<u8>>> {
        let state = self.shared.state();
        let secret = state.get(&Key::new(Resource::Secret, &self.key.namespace, name))?;
        let mut out = HashMap::new();
        if let Some(data) = secret.get("data").and_then(Value::as_object) {
            for (k, v) in data {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                out.insert(k.clone(), bytes);
            }
        }
        Some(out)
    }

    /// Materialises the container's volume mounts under `rootfs`; returns the mount paths.
    fn mount(&self, pod: &Value, container: &Value, rootfs: &Path) -> Result<Vec<String>, NotYet> {
        let volumes: HashMap<String, Value> = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?.to_string(), v.clone())))
            .collect();
        let mut mounts: Vec<Value> = container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        mounts.sort_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len());
        let fail = |message: String| {
            NotYet::fail(Ending {
                container_message: Some(message),
                ..Ending::exited(128)
            })
        };
        std::fs::create_dir_all(rootfs).map_err(|e| fail(format!("rootfs: {e}")))?;
        let mut paths = Vec::new();
        for mount in &mounts {
            let name = mount["name"].as_str().unwrap_or_default();
            let mount_path = mount["mountPath"].as_str().unwrap_or_default();
            let sub_path = mount["subPath"].as_str().unwrap_or_default();
            let volume = volumes
                .get(name)
                .ok_or_else(|| fail(format!("volume mount {name:?} names no volume of the pod")))?;
            let source = self.volume_dir(name, volume)?;
            let source = if sub_path.is_empty() {
                source
            } else {
                source.join(sub_path)
            };
            let at = rootfs.join(mount_path.trim_start_matches('/'));
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| fail(format!("mount {mount_path}: {e}")))?;
            }
            let _ = std::fs::remove_file(&at);
            std::os::unix::fs::symlink(&source, &at)
                .map_err(|e| fail(format!("mount {mount_path}: {e}")))?;
            paths.push(mount_path.to_string());
        }
        Ok(paths)
    }

    /// The host directory holding a volume's contents, created on first use.
    fn volume_dir(&self, name: &str, volume: &Value) -> Result<PathBuf, NotYet> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |message: String| {
            NotYet::fail(Ending {
                container_message: Some(message),
                ..Ending::exited(128)
            })
        };
        if let Some(path) = volume.pointer("/hostPath/path").and_then(Value::as_str) {
            return Ok(PathBuf::from(path));
        }
        let dir = self.dir.join("volumes").join(name);
        let write = |file: &Path, bytes: &[u8], mode: u32| -> Result<(), NotYet> {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail(format!("volume {name}: {e}")))?;
            }
            std::fs::write(file, bytes).map_err(|e| fail(format!("volume {name}: {e}")))?;
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))
                .map_err(|e| fail(format!("volume {name}: {e}")))
        };
        if volume.get("emptyDir").is_some() {
            std::fs::create_dir_all(&dir).map_err(|e| fail(format!("volume {name}: {e}")))?;
            return Ok(dir);
        }
        if let Some(secret) = volume.get("secret") {
            let secret_name = secret["secretName"].as_str().unwrap_or_default();
            let default_mode = secret["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            let Some(data) = self.secret(secret_name) else {
                if secret["optional"].as_bool() == Some(true) {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| fail(format!("volume {name}: {e}")))?;
                    return Ok(dir);
                }
                return Err(NotYet::Wait(
                    "ContainerCreating".into(),
                    format!("MountVolume.SetUp failed for volume \"{name}\" : secret \"{secret_name}\" not found"),
                ));
            };
            std::fs::create_dir_all(&dir).map_err(|e| fail(format!("volume {name}: {e}")))?;
            match secret["items"].as_array() {
                Some(items) => {
                    for item in items {
                        let key = item["key"].as_str().unwrap_or_default();
                        let path = item["path"].as_str().unwrap_or(key);
                        let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
                        let bytes = data.get(key).cloned().unwrap_or_default();
                        write(&dir.join(path), &bytes, mode)?;
                    }
                }
                None => {
                    for (key, bytes) in &data {
                        write(&dir.join(key), bytes, default_mode)?;
                    }
                }
            }
            return Ok(dir);
        }
        if volume.get("projected").is_some() {
            write(
                &dir.join("token"),
                b"fake-kube-service-account-token",
                0o644,
            )?;
            write(&dir.join("namespace"), self.key.namespace.as_bytes(), 0o644)?;
            return Ok(dir);
        }
        Err(fail(format!(
            "volume {name}: fake-kube supports emptyDir, secret, hostPath and the service-account token volume only"
        )))
    }
}

fn start_error(message: &str) -> Ending {
    Ending {
        container_reason: "StartError".into(),
        container_message: Some(message.to_string()),
        ..Ending::exited(128)
    }
}

fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(128)
}

/// Rewrites every absolute path under one of `mounts` (at a word boundary: start, `:`, `=`,
/// `,` or whitespace before it) to the same path under `rootfs`.
pub fn rewrite_paths(text: &str, mounts: &[String], rootfs: &Path) -> String {
    let mut sorted: Vec<&String> = mounts.iter().filter(|m| m.starts_with('/')).collect();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let root = rootfs.display().to_string();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let boundary_before =
            i == 0 || matches!(bytes[i - 1], b':' | b'=' | b',' | b' ' | b'\t' | b'\n');
        if boundary_before && bytes[i] == b'/' {
            let hit = sorted.iter().find(|m| {
                text[i..].starts_with(m.as_str())
                    && text[i + m.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| matches!(c, '/' | ':' | ',' | ' ' | '\t' | '\n'))
            });
            if let Some(m) = hit {
                out.push_str(&root);
                out.push_str(m);
                i += m.len();
                continue;
            }
        }
        let c = text[i..].chars().next().unwrap_or('\u{0}');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// `GET .../pods/NAME/log`: the container's output (`tailLines`, `container`).
pub fn logs(
    shared: &Shared,
    target: &Target,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let pod = shared
        .state()
        .get(&Key::new(Resource::Pod, &namespace, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let container = match query.get("container") {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: {containers:?}"
            )))
        }
    };
    let waiting = pod
        .pointer("/status/containerStatuses/0/state/waiting/reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let text = shared
        .kubelet
        .as_ref()
        .and_then(|k| std::fs::read_to_string(k.log_path(uid, &container)).ok());
    let Some(text) = text else {
        if let Some(reason) = waiting {
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
            )));
        }
        return Ok(String::new());
    };
    match query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            let mut tail = lines[start..].join("\n");
            if !tail.is_empty() {
                tail.push('\n');
            }
            Ok(tail)
        }
        None => Ok(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_mounts_are_rewritten() {
        let mounts = vec![
            "/forgejo-runner/work".to_string(),
            "/forgejo-runner/work/runner-token".to_string(),
        ];
        let root = Path::new("/r/rootfs");
        assert_eq!(
            rewrite_paths("file:/forgejo-runner/work/runner-token", &mounts, root),
            "file:/r/rootfs/forgejo-runner/work/runner-token"
        );
        assert_eq!(
            rewrite_paths("/forgejo-runner/work", &mounts, root),
            "/r/rootfs/forgejo-runner/work"
        );
        assert_eq!(
            rewrite_paths("A=/forgejo-runner/work/x,/bin/sh", &mounts, root),
            "A=/r/rootfs/forgejo-runner/work/x,/bin/sh"
        );
        assert_eq!(
            rewrite_paths("/forgejo-runner/workshop", &mounts, root),
            "/forgejo-runner/workshop"
        );
        assert_eq!(
            rewrite_paths("x/forgejo-runner/work", &mounts, root),
            "x/forgejo-runner/work"
        );
    }
}
