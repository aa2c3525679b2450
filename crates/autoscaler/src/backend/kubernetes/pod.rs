//! What a runner's Pod and credential Secret look like: built from the instance spec and the
//! pool's `[pools.kubernetes]` settings. Pure functions, so every setting is unit-tested
//! without a cluster.
//!
//! Layout inside the Pod: an emptyDir at [`WORK_DIR`] is the runner's cwd and HOME; each
//! credential file is one key of the instance's Secret, mounted read-only by `subPath` at
//! `WORK_DIR/<name>`, where the runner's arguments (`--token-url file:...`) or its default
//! (`.runner` in the cwd) expect it. Secret files are mode 0440: with a non-root image, set
//! `pod_overlay.spec.securityContext.fsGroup` to the runner's group and the kubelet gives the
//! file that group.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Container, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource, Pod, PodSpec,
        ResourceRequirements, Secret, SecretVolumeSource, SecurityContext, Toleration, Volume,
        VolumeMount,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference},
    },
    ByteString,
};
use serde_json::Value;

use crate::{
    backend::{docker::labels, InstanceSpec},
    config::{json_merge_patch, KubernetesPoolConfig, Timeouts},
};

/// The runner's work directory (cwd, HOME, credential files), as the runner sees it.
pub const WORK_DIR: &str = "/forgejo-runner/work";
/// The runner container's name.
pub const CONTAINER: &str = "runner";
const WORK_VOLUME: &str = "work";
const CREDENTIALS_VOLUME: &str = "credentials";
/// Labels every runner Pod carries besides the ownership ones (for `kubectl get -l`).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "forgejo-autoscaler");
const NAME: (&str, &str) = ("app.kubernetes.io/name", "forgejo-runner");

/// The Pod name of an instance: `forgejo-runner-POOL-SUFFIX`, at most 63 characters (the
/// host name limit), lowercase. The pool part is shortened, never the random suffix.
pub fn pod_name(instance_id: &str) -> String {
    let (pool, suffix) = instance_id
        .rsplit_once('-')
        .unwrap_or(("runner", instance_id));
    let clean = |s: &str| -> String {
        let mapped: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        mapped.trim_matches('-').to_string()
    };
    let suffix: String = clean(suffix).chars().take(16).collect();
    let room = 63 - "forgejo-runner-".len() - 1 - suffix.len();
    let pool: String = clean(pool).chars().take(room).collect();
    let pool = pool.trim_end_matches('-');
    if pool.is_empty() {
        format!("forgejo-runner-{suffix}")
    } else {
        format!("forgejo-runner-{pool}-{suffix}")
    }
}

/// The credential Secret's name.
pub fn secret_name(pod_name: &str) -> String {
    format!("{pod_name}-credentials")
}

/// Whether `value` may be a label value (63 characters of `[A-Za-z0-9._-]`, alphanumeric
/// at both ends). Values that may not stay annotations only.
pub fn label_value_ok(value: &str) -> bool {
    value.len() <= 63
        && !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The selector of every Pod and Secret this autoscaler owns.
pub fn owner_selector(owner_id: &str) -> String {
    format!("{}={owner_id}", labels::OWNER)
}

fn ownership_labels(spec: &InstanceSpec, owner_id: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (labels::OWNER.to_string(), owner_id.to_string()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (NAME.0.to_string(), NAME.1.to_string()),
    ]);
    if label_value_ok(&spec.pool) {
        out.insert(labels::POOL.to_string(), spec.pool.clone());
    }
    if label_value_ok(&spec.id) {
        out.insert(labels::INSTANCE.to_string(), spec.id.clone());
    }
    out
}

/// Annotations hold the exact values (labels are limited to 63 characters).
fn annotations(spec: &InstanceSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (labels::INSTANCE.to_string(), spec.id.clone()),
        (labels::POOL.to_string(), spec.pool.clone()),
        (labels::RUNNER.to_string(), runner_name(spec)),
    ]);
    if let Some(handle) = arg_value(&spec.args, "--handle") {
        out.insert(labels::JOB_HANDLE.to_string(), handle.to_string());
    }
    out
}

/// The backstop deadline of a Pod: every state's deadline together, so the autoscaler's own
/// (earlier) enforcement normally acts first and the Pod still ends if no autoscaler is left.
pub fn active_deadline(timeouts: &Timeouts) -> i64 {
    let total = timeouts.boot + timeouts.pickup + timeouts.job + timeouts.teardown;
    i64::try_from(total.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// The Pod of one runner instance. Errors only come from the overlays, which the config
/// check already tried on a sample Pod.
pub fn pod(
    spec: &InstanceSpec,
    pool: &KubernetesPoolConfig,
    namespace: &str,
    owner_id: &str,
    timeouts: &Timeouts,
) -> Result<Pod, String> {
    let name = pod_name(&spec.id);
    let mut volumes = vec![
        Volume {
            name: WORK_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: CREDENTIALS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(&name)),
                default_mode: Some(0o440),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![VolumeMount {
        name: WORK_VOLUME.into(),
        mount_path: WORK_DIR.into(),
        ..Default::default()
    }];
    for file in &spec.files {
        mounts.push(VolumeMount {
            name: CREDENTIALS_VOLUME.into(),
            mount_path: format!("{WORK_DIR}/{}", file.name),
            sub_path: Some(file.name.clone()),
            read_only: Some(true),
            ..Default::default()
        });
    }
    for (i, host) in pool.host_paths.iter().enumerate() {
        let volume = format!("host-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            host_path: Some(HostPathVolumeSource {
                path: host.source.clone(),
                type_: None,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: host.target.display().to_string(),
            read_only: Some(host.read_only),
            ..Default::default()
        });
    }
    let quantities = |map: &BTreeMap<String, String>| -> Option<BTreeMap<String, Quantity>> {
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(pool.image.clone()),
        image_pull_policy: pool.image_pull_policy.clone(),
        command: Some(vec![crate::backend::docker::program_name(spec)]),
        args: Some(crate::backend::docker::host_mode_args(&spec.args)),
        env: Some(
            spec.env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    value_from: None,
                })
                .collect(),
        ),
        working_dir: Some(WORK_DIR.into()),
        volume_mounts: Some(mounts),
        resources: (!pool.requests.is_empty() || !pool.limits.is_empty()).then(|| {
            ResourceRequirements {
                requests: quantities(&pool.requests),
                limits: quantities(&pool.limits),
                ..Default::default()
            }
        }),
        security_context: pool.privileged.then(|| SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_string()),
            labels: Some(ownership_labels(spec, owner_id)),
            annotations: Some(annotations(spec)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            // No Service environment variables: jobs see only the runner's environment.
            enable_service_links: Some(false),
            service_account_name: pool.service_account.clone(),
            active_deadline_seconds: Some(active_deadline(timeouts)),
            termination_grace_period_seconds: Some(10),
            node_selector: (!pool.node_selector.is_empty()).then(|| pool.node_selector.clone()),
            tolerations: (!pool.tolerations.is_empty()).then(|| {
                pool.tolerations
                    .iter()
                    .map(|t| Toleration {
                        key: t.key.clone(),
                        operator: t.operator.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                        toleration_seconds: t.toleration_seconds,
                    })
                    .collect()
            }),
            runtime_class_name: pool.runtime_class_name.clone(),
            volumes: Some(volumes),
            containers: vec![container],
            ..Default::default()
        }),
        status: None,
    };
    apply_overlays(pod, pool)
}

/// The pool's merge patches: the pod overlay onto the Pod, the container overlay onto the
/// runner container.
fn apply_overlays(pod: Pod, pool: &KubernetesPoolConfig) -> Result<Pod, String> {
    if pool.pod_overlay.is_none() && pool.container_overlay.is_none() {
        return Ok(pod);
    }
    let mut value = serde_json::to_value(&pod).map_err(|e| e.to_string())?;
    if let Some(overlay) = &pool.pod_overlay {
        json_merge_patch(&mut value, overlay);
    }
    if let Some(overlay) = &pool.container_overlay {
        if let Some(container) = value.pointer_mut("/spec/containers/0") {
            json_merge_patch(container, overlay);
        }
    }
    serde_json::from_value(value).map_err(|e| format!("the pool's overlays do not fit a Pod: {e}"))
}

/// The Secret holding the instance's credential files, owned by its Pod: Kubernetes' garbage
/// collector deletes it with the Pod, whoever deletes the Pod.
pub fn secret(spec: &InstanceSpec, pod: &Pod, owner_id: &str) -> Secret {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let data: BTreeMap<String, ByteString> = spec
        .files
        .iter()
        .map(|f| (f.name.clone(), ByteString(f.contents.clone())))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&pod_name)),
            namespace: pod.metadata.namespace.clone(),
            labels: Some(ownership_labels(spec, owner_id)),
            annotations: Some(BTreeMap::from([(
                labels::INSTANCE.to_string(),
                spec.id.clone(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod_name,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(data),
        ..Default::default()
    }
}

/// Whether a stored Secret is the one this instance's Pod owns.
pub fn owned_by(secret: &Secret, pod_uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.kind == "Pod" && r.uid == pod_uid))
}

/// The runner's registration name: the `.runner` file's `name` (13/14), else the instance id.
fn runner_name(spec: &InstanceSpec) -> String {
    spec.files
        .iter()
        .find(|f| f.name == crate::provision::RUNNER_FILE)
        .and_then(|f| serde_json::from_slice::<Value>(&f.contents).ok())
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
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
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::{
        backend::InstanceFile,
        config::{KubernetesToleration, VolumeMount as HostMount},
    };

    fn pool() -> KubernetesPoolConfig {
        KubernetesPoolConfig {
            image: "local/runner:1".into(),
            namespace: None,
            image_pull_policy: Some("IfNotPresent".into()),
            service_account: Some("runner".into()),
            requests: BTreeMap::from([("cpu".into(), "500m".into())]),
            limits: BTreeMap::from([("memory".into(), "1Gi".into())]),
            node_selector: BTreeMap::from([("kubernetes.io/arch".into(), "amd64".into())]),
            tolerations: vec![KubernetesToleration {
                key: Some("ci".into()),
                operator: Some("Equal".into()),
                value: Some("true".into()),
                effect: Some("NoSchedule".into()),
                toleration_seconds: None,
            }],
            runtime_class_name: Some("gvisor".into()),
            privileged: false,
            host_paths: vec![],
            pod_overlay: None,
            container_overlay: None,
        }
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            boot: Duration::from_secs(60),
            pickup: Duration::from_secs(60),
            job: Duration::from_secs(3600),
            teardown: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(60),
            drain: Duration::from_secs(60),
        }
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "debian-1a2b3c4d".into(),
            pool: "debian".into(),
            program: PathBuf::from("/usr/local/bin/forgejo-runner"),
            args: [
                "one-job",
                "--token-url",
                "file:/forgejo-runner/work/runner-token",
                "--label",
                "trixie:docker://debian:trixie",
                "--handle",
                "h-42",
            ]
            .map(String::from)
            .to_vec(),
            files: vec![InstanceFile {
                name: "runner-token".into(),
                contents: b"s3cret-token".to_vec(),
                secret: true,
            }],
            env: BTreeMap::from([("HOME".into(), WORK_DIR.into())]),
        }
    }

    #[test]
    fn names_fit_kubernetes() {
        assert_eq!(
            pod_name("debian-1a2b3c4d"),
            "forgejo-runner-debian-1a2b3c4d"
        );
        assert_eq!(
            pod_name("Big_Pool.x-1a2b3c4d"),
            "forgejo-runner-big-pool-x-1a2b3c4d"
        );
        let long = format!("{}-1a2b3c4d", "p".repeat(63));
        let name = pod_name(&long);
        assert!(name.len() <= 63 && name.ends_with("-1a2b3c4d"), "{name}");
        assert!(label_value_ok("debian-1a2b3c4d"));
        assert!(!label_value_ok(&long));
        assert!(!label_value_ok("pool_"));
    }

    #[test]
    fn every_setting_reaches_the_pod() {
        let pod = pod(&spec(), &pool(), "ci", "owner-1", &timeouts()).unwrap();
        let meta = &pod.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("ci"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[labels::OWNER], "owner-1");
        assert_eq!(labels[labels::POOL], "debian");
        assert_eq!(labels[labels::INSTANCE], "debian-1a2b3c4d");
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations[labels::JOB_HANDLE], "h-42");
        assert_eq!(annotations[labels::RUNNER], "debian-1a2b3c4d");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.active_deadline_seconds, Some(60 + 60 + 3600 + 30));
        assert_eq!(spec.service_account_name.as_deref(), Some("runner"));
        assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
        assert_eq!(
            spec.node_selector.as_ref().unwrap()["kubernetes.io/arch"],
            "amd64"
        );
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("ci")
        );
        let volumes = spec.volumes.as_ref().unwrap();
        assert!(
            volumes.iter().all(|v| v.host_path.is_none()),
            "no hostPath unless asked"
        );
        let secret_volume = volumes.iter().find_map(|v| v.secret.as_ref()).unwrap();
        assert_eq!(
            secret_volume.secret_name.as_deref(),
            Some("forgejo-runner-debian-1a2b3c4d-credentials")
        );
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("local/runner:1"));
        assert_eq!(c.command, Some(vec!["forgejo-runner".to_string()]));
        assert!(c
            .args
            .as_ref()
            .unwrap()
            .contains(&"trixie:host".to_string()));
        assert_eq!(c.security_context, None, "not privileged unless asked");
        let resources = c.resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "500m");
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi");
        let token_mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.sub_path.as_deref() == Some("runner-token"))
            .unwrap();
        assert_eq!(token_mount.mount_path, "/forgejo-runner/work/runner-token");
        assert_eq!(token_mount.read_only, Some(true));
        let json = serde_json::to_string(&pod).unwrap();
        assert!(
            !json.contains("s3cret-token"),
            "the credential is not in the Pod"
        );
    }

    #[test]
    fn the_secret_is_owned_by_the_pod_and_holds_the_files() {
        let mut pod = pod(&spec(), &pool(), "ci", "owner-1", &timeouts()).unwrap();
        pod.metadata.uid = Some("uid-1".into());
        let secret = secret(&spec(), &pod, "owner-1");
        assert!(owned_by(&secret, "uid-1"));
        assert!(!owned_by(&secret, "uid-2"));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Pod", "forgejo-runner-debian-1a2b3c4d")
        );
        assert_eq!(
            secret.data.as_ref().unwrap()["runner-token"].0,
            b"s3cret-token"
        );
        assert_eq!(secret.immutable, Some(true));
    }

    #[test]
    fn privileged_host_paths_and_overlays_only_when_configured() {
        let mut p = pool();
        p.privileged = true;
        p.host_paths = vec![HostMount {
            source: "/srv/cache".into(),
            target: PathBuf::from("/cache"),
            read_only: true,
        }];
        p.pod_overlay = Some(
            serde_json::json!({"metadata": {"labels": {"team": "ci"}}, "spec": {"priorityClassName": "ci"}}),
        );
        p.container_overlay = Some(serde_json::json!({"securityContext": {"runAsUser": 1000}}));
        let pod = pod(&spec(), &p, "ci", "o", &timeouts()).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.priority_class_name.as_deref(), Some("ci"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["team"], "ci");
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[labels::OWNER], "o");
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.privileged, sc.run_as_user), (Some(true), Some(1000)));
        let host = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find_map(|v| v.host_path.as_ref())
            .unwrap();
        assert_eq!(host.path, "/srv/cache");
        assert!(c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/cache" && m.read_only == Some(true)));
    }
}
