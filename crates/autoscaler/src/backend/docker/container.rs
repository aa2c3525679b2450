//! What a runner's container looks like: the engine request built from an instance spec and
//! the pool's `[pools.docker]` settings. Pure functions, so every setting is unit-tested
//! without an engine.
//!
//! Layout inside the container: an anonymous volume at [`VOLUME_DIR`] holds the work directory
//! [`WORK_DIR`] (the runner's cwd and HOME, where its credential file is). It is a volume, not
//! a tmpfs, because the credential is written before the container starts: a tmpfs is mounted
//! at start and would hide it, and the engine refuses writes into a read-only root filesystem
//! except onto volumes. The volume is removed with the container. With `read_only = true`,
//! `/tmp` is a tmpfs (jobs need a scratch directory).

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};

use crate::{
    backend::InstanceSpec,
    config::{DockerNetwork, DockerPoolConfig},
};

use super::archive::Owner;

/// Mount point of the per-container volume.
pub const VOLUME_DIR: &str = "/forgejo-runner";
/// Name of the work directory inside the volume.
pub const WORK_DIR_NAME: &str = "work";
/// The runner's work directory (cwd, HOME, credential files), as the runner sees it.
pub const WORK_DIR: &str = "/forgejo-runner/work";

/// Label keys on every container this autoscaler creates.
pub mod labels {
    /// The store's owner id: only containers carrying ours are ever listed or removed.
    pub const OWNER: &str = "org.forgejo.autoscaler.owner";
    pub const INSTANCE: &str = "org.forgejo.autoscaler.instance";
    pub const POOL: &str = "org.forgejo.autoscaler.pool";
    pub const RUNNER: &str = "org.forgejo.autoscaler.runner";
    pub const JOB_HANDLE: &str = "org.forgejo.autoscaler.job-handle";
}

/// The container name of an instance (lookups go by label, never by this name alone).
pub fn container_name(instance_id: &str) -> String {
    format!("forgejo-autoscaler-{instance_id}")
}

/// The engine request for one runner container.
pub fn create_body(
    spec: &InstanceSpec,
    pool: &DockerPoolConfig,
    owner_id: &str,
) -> ContainerCreateBody {
    let runner_file = spec
        .files
        .iter()
        .find(|f| f.name == crate::provision::RUNNER_FILE);
    let mut labels = HashMap::from([
        (labels::OWNER.to_string(), owner_id.to_string()),
        (labels::INSTANCE.to_string(), spec.id.clone()),
        (labels::POOL.to_string(), spec.pool.clone()),
        (
            labels::RUNNER.to_string(),
            runner_name(spec, runner_file.map(|f| f.contents.as_slice())),
        ),
    ]);
    if let Some(handle) = arg_value(&spec.args, "--handle") {
        labels.insert(labels::JOB_HANDLE.to_string(), handle.to_string());
    }
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    ContainerCreateBody {
        image: Some(pool.image.clone()),
        entrypoint: Some(vec![program_name(spec)]),
        cmd: Some(host_mode_args(&spec.args)),
        env: Some(env),
        labels: Some(labels),
        working_dir: Some(WORK_DIR.to_string()),
        user: pool.user.clone(),
        volumes: Some(vec![VOLUME_DIR.to_string()]),
        // The runner stops on SIGTERM; the grace is chosen per removal.
        stop_signal: Some("SIGTERM".into()),
        host_config: Some(host_config(pool)),
        ..Default::default()
    }
}

fn host_config(pool: &DockerPoolConfig) -> HostConfig {
    let binds: Vec<String> = pool
        .volumes
        .iter()
        .map(|v| {
            format!(
                "{}:{}{}",
                v.source,
                v.target.display(),
                if v.read_only { ":ro" } else { "" }
            )
        })
        .collect();
    let network = match pool.network {
        DockerNetwork::Bridge => "bridge",
        DockerNetwork::Disabled => "none",
        DockerNetwork::Host => "host",
    };
    HostConfig {
        nano_cpus: pool.cpus.map(|cpus| (cpus * 1e9).round() as i64),
        memory: pool.memory.and_then(|m| i64::try_from(m).ok()),
        pids_limit: pool.pids_limit.map(i64::from),
        network_mode: Some(network.to_string()),
        binds: (!binds.is_empty()).then_some(binds),
        readonly_rootfs: Some(pool.read_only),
        tmpfs: pool.read_only.then(|| {
            HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,mode=1777".to_string())])
        }),
        // Removal is ours: the exit code and log are read first (no auto-remove race).
        auto_remove: Some(false),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    }
}

/// The runner executable, looked up on the image's PATH by its file name: the host path of
/// `runner.binary` means nothing inside the image.
pub fn program_name(spec: &InstanceSpec) -> String {
    spec.program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "forgejo-runner".to_string())
}

/// The runner already is inside the job's container: every label it declares runs the job
/// on its own host, i.e. `name:host`. Only the names matter to Forgejo.
pub fn host_mode_label(label: &str) -> String {
    let name = label.split(':').next().unwrap_or(label);
    format!("{name}:host")
}

/// The arguments with every `--label VALUE` turned into host mode.
pub fn host_mode_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut next_is_label = false;
    for arg in args {
        if next_is_label {
            out.push(host_mode_label(arg));
            next_is_label = false;
        } else {
            next_is_label = arg == "--label";
            out.push(arg.clone());
        }
    }
    out
}

/// A `.runner` file (Forgejo 13/14) with its labels turned into host mode; other fields kept.
pub fn host_mode_runner_file(contents: &[u8]) -> Result<Vec<u8>, String> {
    let mut value: serde_json::Value = serde_json::from_slice(contents)
        .map_err(|e| format!("the .runner file is not JSON: {e}"))?;
    if let Some(labels) = value.get_mut("labels").and_then(|l| l.as_array_mut()) {
        for label in labels.iter_mut() {
            if let Some(text) = label.as_str() {
                *label = serde_json::Value::String(host_mode_label(text));
            }
        }
    }
    serde_json::to_vec_pretty(&value).map_err(|e| e.to_string())
}

/// The runner's registration name: the `.runner` file's `name` (13/14), else the instance id
/// (Forgejo 15 runners are named after their instance).
fn runner_name(spec: &InstanceSpec, runner_file: Option<&[u8]>) -> String {
    runner_file
        .and_then(|contents| serde_json::from_slice::<serde_json::Value>(contents).ok())
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| spec.id.clone())
}

fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Who must own the work directory: a numeric `UID[:GID]` user. `None` for a named user or the
/// image's default, whose ids only the engine can resolve (it is then asked to copy the
/// ownership of the container's user).
pub fn numeric_owner(user: Option<&str>) -> Option<Owner> {
    let user = user?;
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let uid: u32 = uid.parse().ok()?;
    let gid: u32 = match gid {
        Some(gid) => gid.parse().ok()?,
        None => 0,
    };
    Some(Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use super::*;
    use crate::{
        backend::InstanceFile,
        config::{PullPolicy, VolumeMount},
    };

    fn pool() -> DockerPoolConfig {
        DockerPoolConfig {
            image: "local/runner:1".into(),
            docker_host: None,
            docker_hosts: Vec::new(),
            cpus: Some(1.5),
            memory: Some(512 << 20),
            pids_limit: Some(256),
            network: DockerNetwork::Host,
            volumes: vec![VolumeMount {
                source: "/srv/cache".into(),
                target: PathBuf::from("/cache"),
                read_only: true,
            }],
            user: Some("1000:1000".into()),
            read_only: true,
            pull_policy: PullPolicy::Never,
        }
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "debian-1a2b3c4d".into(),
            pool: "debian".into(),
            program: PathBuf::from("/usr/local/bin/forgejo-runner"),
            args: [
                "one-job",
                "--url",
                "http://f",
                "--token-url",
                "file:/forgejo-runner/work/runner-token",
                "--label",
                "trixie:docker://debian:trixie",
                "--label",
                "plain",
                "--handle",
                "h-42",
            ]
            .map(String::from)
            .to_vec(),
            files: vec![InstanceFile {
                name: "runner-token".into(),
                contents: b"tok".to_vec(),
                secret: true,
            }],
            env: BTreeMap::from([
                ("HOME".into(), WORK_DIR.into()),
                ("CI_EXTRA".into(), "1".into()),
            ]),
        }
    }

    #[test]
    fn every_setting_reaches_the_request() {
        let body = create_body(&spec(), &pool(), "owner-xyz");
        assert_eq!(body.image.as_deref(), Some("local/runner:1"));
        assert_eq!(body.entrypoint, Some(vec!["forgejo-runner".to_string()]));
        assert_eq!(body.working_dir.as_deref(), Some(WORK_DIR));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.volumes, Some(vec![VOLUME_DIR.to_string()]));
        let env = body.env.unwrap();
        assert!(
            env.contains(&"CI_EXTRA=1".to_string()) && env.contains(&format!("HOME={WORK_DIR}"))
        );
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(512 << 20));
        assert_eq!(host.pids_limit, Some(256));
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.binds, Some(vec!["/srv/cache:/cache:ro".to_string()]));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(host.auto_remove, Some(false));
        let labels = body.labels.unwrap();
        assert_eq!(labels[labels::OWNER], "owner-xyz");
        assert_eq!(labels[labels::INSTANCE], "debian-1a2b3c4d");
        assert_eq!(labels[labels::POOL], "debian");
        assert_eq!(labels[labels::RUNNER], "debian-1a2b3c4d");
        assert_eq!(labels[labels::JOB_HANDLE], "h-42");
    }

    #[test]
    fn defaults_add_nothing_unasked() {
        let mut p = pool();
        p.cpus = None;
        p.memory = None;
        p.pids_limit = None;
        p.volumes.clear();
        p.user = None;
        p.read_only = false;
        p.network = DockerNetwork::Bridge;
        let host = create_body(&spec(), &p, "o").host_config.unwrap();
        assert_eq!(
            (host.nano_cpus, host.memory, host.pids_limit),
            (None, None, None)
        );
        assert_eq!(
            host.binds, None,
            "no volume (and so no Docker socket) unless configured"
        );
        assert_eq!(host.tmpfs, None);
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        let mut none = pool();
        none.network = DockerNetwork::Disabled;
        assert_eq!(
            create_body(&spec(), &none, "o")
                .host_config
                .unwrap()
                .network_mode
                .as_deref(),
            Some("none")
        );
    }

    #[test]
    fn labels_become_host_mode_and_secrets_stay_out_of_the_request() {
        let body = create_body(&spec(), &pool(), "o");
        let cmd = body.cmd.clone().unwrap();
        assert!(
            cmd.contains(&"trixie:host".to_string()) && cmd.contains(&"plain:host".to_string()),
            "{cmd:?}"
        );
        assert!(!cmd.iter().any(|a| a.contains("docker://")));
        let request = serde_json::to_string(&body).unwrap();
        assert!(
            !request.contains("tok\""),
            "the credential must not be in the create request: {request}"
        );
    }

    #[test]
    fn runner_file_labels_and_name() {
        let file = serde_json::json!({"name": "debian-ab12-x", "token": "t", "labels": ["trixie:docker://debian:trixie", "x"]});
        let rewritten = host_mode_runner_file(file.to_string().as_bytes()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(
            value["labels"],
            serde_json::json!(["trixie:host", "x:host"])
        );
        assert_eq!(value["token"], "t");
        let mut s = spec();
        s.args = vec!["one-job".into()];
        s.files = vec![InstanceFile {
            name: ".runner".into(),
            contents: rewritten,
            secret: true,
        }];
        let labels = create_body(&s, &pool(), "o").labels.unwrap();
        assert_eq!(labels[labels::RUNNER], "debian-ab12-x");
        assert!(!labels.contains_key(labels::JOB_HANDLE));
        assert!(host_mode_runner_file(b"not json").is_err());
    }

    #[test]
    fn numeric_users_only() {
        assert_eq!(
            numeric_owner(Some("1000:1001")),
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            numeric_owner(Some("1000")),
            Some(Owner { uid: 1000, gid: 0 })
        );
        assert_eq!(numeric_owner(Some("runner")), None);
        assert_eq!(numeric_owner(Some("1000:runner")), None);
        assert_eq!(numeric_owner(None), None);
        let mut s = spec();
        s.program = PathBuf::from("fake-forgejo-runner");
        assert_eq!(program_name(&s), "fake-forgejo-runner");
    }
}
