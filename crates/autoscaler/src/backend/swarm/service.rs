//! What a runner's service looks like: the create request built from an instance spec and the
//! pool's `[pools.swarm]` settings. Pure functions, unit-tested without a swarm.
//!
//! * Mode replicated-job with one completion and at most one task at a time, restart
//!   condition none: the runner runs once, and a runner that exits (or a node that dies) is
//!   never restarted by Swarm; the reconciler decides what comes next. On engines older than
//!   Docker 24 (API < 1.43, e.g. Debian's 20.10) removing a job service leaves its tasks in
//!   the swarm's store and its containers on the nodes (moby#42789, moby#44312, fixed by
//!   moby#45106), one leak per job; there the service is a replicated one with one replica
//!   and restart condition none instead, which runs once just the same and is cleaned up.
//! * The ownership labels of the container backend, on the service (how the autoscaler lists
//!   and adopts) and on its task containers (so `docker ps` on any node tells them apart).
//! * The runner's HOME and working directory is `/tmp` of the image, inside the task
//!   container's own layer (removed with it). A tmpfs would be cleaner, but Swarm ignores a
//!   tmpfs mount's mode and mounts it noexec (swarmkit#3226, moby#32131), so a non-root runner
//!   could not write to it.

use std::{collections::HashMap, time::Duration};

use bollard::models::{
    Limit, NetworkAttachmentConfig, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecModeReplicatedJob, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};

use super::names;
use crate::{
    backend::{docker::labels, InstanceSpec},
    config::{SwarmNetwork, SwarmPoolConfig, SwarmResources},
    provision::RUNNER_FILE,
};

/// The runner's HOME and working directory inside the task.
pub const WORK_DIR: &str = "/tmp";
/// How long the runner gets after SIGTERM when its service is removed while it runs.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The first API version whose engines remove a job service's tasks with it (Docker 24).
pub const JOBS_CLEANED_UP_FROM: (usize, usize) = (1, 43);

/// How the service runs its one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `replicated-job`: one completion, at most one task at a time.
    Job,
    /// `replicated` with one replica (restart condition none makes it run once).
    OneReplica,
}

impl Mode {
    /// The mode for an engine speaking API `major.minor` (negotiated).
    pub fn for_api(major: usize, minor: usize) -> Mode {
        if (major, minor) >= JOBS_CLEANED_UP_FROM {
            Mode::Job
        } else {
            Mode::OneReplica
        }
    }
}

/// The labels of an instance's service, task containers and secrets.
pub fn instance_labels(spec: &InstanceSpec, owner_id: &str) -> HashMap<String, String> {
    let mut out = HashMap::from([
        (labels::OWNER.to_string(), owner_id.to_string()),
        (labels::INSTANCE.to_string(), spec.id.clone()),
        (labels::POOL.to_string(), spec.pool.clone()),
        (labels::RUNNER.to_string(), runner_name(spec)),
    ]);
    if let Some(handle) = arg_value(&spec.args, "--handle") {
        out.insert(labels::JOB_HANDLE.to_string(), handle.to_string());
    }
    out
}

/// The create request of the instance's service. `args` are the runner's arguments with
/// host-mode labels and secret paths; `secrets` the mounts of its created secrets.
pub fn service_spec(
    spec: &InstanceSpec,
    pool: &SwarmPoolConfig,
    owner_id: &str,
    args: Vec<String>,
    secrets: Vec<TaskSpecContainerSpecSecrets>,
    mode: Mode,
) -> ServiceSpec {
    let labels = instance_labels(spec, owner_id);
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let container = TaskSpecContainerSpec {
        image: Some(pool.image.clone()),
        labels: Some(labels.clone()),
        command: Some(vec![crate::backend::docker::program_name(spec)]),
        args: Some(args),
        env: Some(env),
        dir: Some(WORK_DIR.to_string()),
        user: pool.user.clone(),
        secrets: Some(secrets),
        stop_signal: Some("SIGTERM".into()),
        stop_grace_period: Some(STOP_GRACE.as_nanos() as i64),
        ..Default::default()
    };
    let networks = match &pool.network {
        SwarmNetwork::Default => None,
        SwarmNetwork::Host => Some(vec![attach("host")]),
        SwarmNetwork::Named(name) => Some(vec![attach(name)]),
    };
    let task = TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources {
            limits: limit(&pool.limits),
            reservations: reservation(&pool.reservations),
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
            max_attempts: Some(0),
            ..Default::default()
        }),
        placement: (!pool.constraints.is_empty()).then(|| TaskSpecPlacement {
            constraints: Some(pool.constraints.clone()),
            ..Default::default()
        }),
        networks,
        ..Default::default()
    };
    ServiceSpec {
        name: Some(names::service_name(&spec.id)),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(match mode {
            Mode::Job => ServiceSpecMode {
                replicated_job: Some(ServiceSpecModeReplicatedJob {
                    max_concurrent: Some(1),
                    total_completions: Some(1),
                }),
                ..Default::default()
            },
            Mode::OneReplica => ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

fn attach(target: &str) -> NetworkAttachmentConfig {
    NetworkAttachmentConfig {
        target: Some(target.to_string()),
        ..Default::default()
    }
}

fn nano_cpus(cpus: Option<f64>) -> Option<i64> {
    cpus.map(|c| (c * 1e9).round() as i64)
}

fn memory(bytes: Option<u64>) -> Option<i64> {
    bytes.and_then(|m| i64::try_from(m).ok())
}

fn limit(resources: &SwarmResources) -> Option<Limit> {
    (*resources != SwarmResources::default()).then(|| Limit {
        nano_cpus: nano_cpus(resources.cpus),
        memory_bytes: memory(resources.memory),
        ..Default::default()
    })
}

fn reservation(resources: &SwarmResources) -> Option<ResourceObject> {
    (*resources != SwarmResources::default()).then(|| ResourceObject {
        nano_cpus: nano_cpus(resources.cpus),
        memory_bytes: memory(resources.memory),
        ..Default::default()
    })
}

/// The runner's registration name: the `.runner` file's `name` (13/14), else the instance id
/// (Forgejo 15 runners are named after their instance).
fn runner_name(spec: &InstanceSpec) -> String {
    spec.files
        .iter()
        .find(|f| f.name == RUNNER_FILE)
        .and_then(|f| serde_json::from_slice::<serde_json::Value>(&f.contents).ok())
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| spec.id.clone())
}

fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use super::*;
    use crate::{backend::InstanceFile, config::PullPolicy};

    fn pool() -> SwarmPoolConfig {
        SwarmPoolConfig {
            image: "local/runner:1".into(),
            docker_host: None,
            network: SwarmNetwork::Named("runners".into()),
            constraints: vec!["node.role == worker".into()],
            reservations: SwarmResources {
                cpus: Some(0.5),
                memory: Some(256 << 20),
            },
            limits: SwarmResources {
                cpus: Some(1.5),
                memory: Some(1 << 30),
            },
            user: Some("1000:1000".into()),
            pull_policy: PullPolicy::Never,
        }
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "cluster-1a2b3c4d".into(),
            pool: "cluster".into(),
            program: PathBuf::from("/usr/local/bin/forgejo-runner"),
            args: ["one-job", "--handle", "h-42"].map(String::from).to_vec(),
            files: vec![InstanceFile {
                name: "runner-token".into(),
                contents: b"tok-value".to_vec(),
                secret: true,
            }],
            env: BTreeMap::from([
                ("HOME".into(), WORK_DIR.into()),
                ("CI_X".into(), "1".into()),
            ]),
        }
    }

    #[test]
    fn every_setting_reaches_the_request() {
        let request = service_spec(
            &spec(),
            &pool(),
            "owner-xyz",
            vec!["one-job".into()],
            vec![],
            Mode::Job,
        );
        assert_eq!(
            request.name.as_deref(),
            Some("forgejo-autoscaler-cluster-1a2b3c4d")
        );
        let job = request.mode.unwrap().replicated_job.unwrap();
        assert_eq!(
            (job.max_concurrent, job.total_completions),
            (Some(1), Some(1))
        );
        let labels = request.labels.unwrap();
        assert_eq!(labels[labels::OWNER], "owner-xyz");
        assert_eq!(labels[labels::INSTANCE], "cluster-1a2b3c4d");
        assert_eq!(labels[labels::POOL], "cluster");
        assert_eq!(labels[labels::RUNNER], "cluster-1a2b3c4d");
        assert_eq!(labels[labels::JOB_HANDLE], "h-42");
        let task = request.task_template.unwrap();
        let container = task.container_spec.unwrap();
        assert_eq!(
            container.labels.as_ref(),
            Some(&labels),
            "task containers carry them too"
        );
        assert_eq!(container.image.as_deref(), Some("local/runner:1"));
        assert_eq!(container.command, Some(vec!["forgejo-runner".to_string()]));
        assert_eq!(container.user.as_deref(), Some("1000:1000"));
        assert_eq!(container.dir.as_deref(), Some(WORK_DIR));
        assert_eq!(container.stop_grace_period, Some(10_000_000_000));
        let env = container.env.unwrap();
        assert!(env.contains(&"CI_X=1".to_string()));
        assert_eq!(
            task.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        assert_eq!(
            task.placement.unwrap().constraints,
            Some(vec!["node.role == worker".to_string()])
        );
        let resources = task.resources.unwrap();
        let limits = resources.limits.unwrap();
        assert_eq!(
            (limits.nano_cpus, limits.memory_bytes),
            (Some(1_500_000_000), Some(1 << 30))
        );
        let reserved = resources.reservations.unwrap();
        assert_eq!(
            (reserved.nano_cpus, reserved.memory_bytes),
            (Some(500_000_000), Some(256 << 20))
        );
        assert_eq!(task.networks.unwrap()[0].target.as_deref(), Some("runners"));
        let text = serde_json::to_string(&service_spec(
            &spec(),
            &pool(),
            "o",
            vec![],
            vec![],
            Mode::Job,
        ))
        .unwrap();
        assert!(
            !text.contains("tok-value"),
            "the credential is not in the service: {text}"
        );
    }

    #[test]
    fn older_engines_get_one_replica_instead_of_a_job() {
        assert_eq!(Mode::for_api(1, 41), Mode::OneReplica);
        assert_eq!(Mode::for_api(1, 43), Mode::Job);
        assert_eq!(Mode::for_api(1, 53), Mode::Job);
        let request = service_spec(&spec(), &pool(), "o", vec![], vec![], Mode::OneReplica);
        let mode = request.mode.unwrap();
        assert_eq!(mode.replicated.unwrap().replicas, Some(1));
        assert_eq!(mode.replicated_job, None);
        let restart = request.task_template.unwrap().restart_policy.unwrap();
        assert_eq!(
            restart.condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
    }

    #[test]
    fn defaults_add_nothing_unasked() {
        let mut p = pool();
        p.network = SwarmNetwork::Default;
        p.constraints.clear();
        p.reservations = SwarmResources::default();
        p.limits = SwarmResources::default();
        p.user = None;
        let task = service_spec(&spec(), &p, "o", vec![], vec![], Mode::Job)
            .task_template
            .unwrap();
        assert_eq!(task.networks, None);
        assert_eq!(task.placement, None);
        let resources = task.resources.unwrap();
        assert_eq!((resources.limits, resources.reservations), (None, None));
        assert_eq!(task.container_spec.unwrap().user, None);
        p.network = SwarmNetwork::Host;
        let task = service_spec(&spec(), &p, "o", vec![], vec![], Mode::Job)
            .task_template
            .unwrap();
        assert_eq!(task.networks.unwrap()[0].target.as_deref(), Some("host"));
    }

    #[test]
    fn the_runner_name_of_a_registration_file() {
        let mut s = spec();
        s.args = vec!["one-job".into()];
        s.files = vec![InstanceFile {
            name: RUNNER_FILE.into(),
            contents: br#"{"name": "cluster-ab12-x", "token": "t"}"#.to_vec(),
            secret: true,
        }];
        let labels = instance_labels(&s, "o");
        assert_eq!(labels[labels::RUNNER], "cluster-ab12-x");
        assert!(!labels.contains_key(labels::JOB_HANDLE));
    }
}
