//! Reading a runner Pod's status: running or ended, the runner's exit code, and why it ended
//! when Kubernetes (not the runner) ended it: eviction, the OOM killer, the deadline, an image
//! or configuration the kubelet cannot use.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::pod::CONTAINER;
use crate::backend::InstanceStatus;

/// Exit code reported for a Failed Pod whose runner container has no exit code of its own
/// (evicted or failed before the container ran): "killed", as SIGKILL would report it, so
/// that the reconciler never reads a missing code as a finished job.
pub const KILLED: i32 = 137;

/// Waiting reasons that do not go away by waiting: the instance is treated as ended.
const HOPELESS: &[&str] = &[
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn runner_status(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find(|s| s.name == CONTAINER)
        .or_else(|| statuses.first())
}

/// The runner container's exit code, when it has ended.
pub fn runner_exit_code(pod: &Pod) -> Option<i32> {
    runner_status(pod)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

fn waiting_reason(pod: &Pod) -> Option<(&str, &str)> {
    let waiting = runner_status(pod)?.state.as_ref()?.waiting.as_ref()?;
    Some((
        waiting.reason.as_deref().unwrap_or_default(),
        waiting.message.as_deref().unwrap_or_default(),
    ))
}

/// Whether the Pod has ended (Succeeded or Failed): Pods never leave those phases.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// What the reconciler sees of the instance.
pub fn instance_status(pod: &Pod) -> InstanceStatus {
    match phase(pod) {
        "Succeeded" => InstanceStatus::Exited {
            code: Some(runner_exit_code(pod).unwrap_or(0)),
        },
        "Failed" => InstanceStatus::Exited {
            code: Some(runner_exit_code(pod).unwrap_or(KILLED)),
        },
        _ => match waiting_reason(pod) {
            Some((reason, _)) if HOPELESS.contains(&reason) => {
                InstanceStatus::Exited { code: None }
            }
            _ => InstanceStatus::Running,
        },
    }
}

/// Why Kubernetes ended or held the Pod, for the removal record; `None` when the runner just
/// ran and exited.
pub fn cause(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref();
    let pod_reason = status.and_then(|s| s.reason.as_deref()).unwrap_or_default();
    let pod_message = status
        .and_then(|s| s.message.as_deref())
        .unwrap_or_default();
    let terminated = runner_status(pod)
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    if pod_reason == "Evicted" {
        return Some(format!("pod evicted by the kubelet: {pod_message}"));
    }
    if pod_reason == "DeadlineExceeded" {
        let deadline = pod
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .map(|d| format!(" ({d} s)"))
            .unwrap_or_default();
        return Some(format!(
            "pod stopped at its activeDeadlineSeconds{deadline}, the backstop of the job deadline"
        ));
    }
    if let Some(t) = terminated {
        match t.reason.as_deref() {
            Some("OOMKilled") => {
                let limit = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
                    .and_then(|c| c.resources.as_ref())
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get("memory"))
                    .map(|q| format!("memory limit {}", q.0))
                    .unwrap_or_else(|| "no memory limit set: the node ran out".into());
                return Some(format!(
                    "runner container OOMKilled (exit {}; {limit})",
                    t.exit_code
                ));
            }
            Some(reason @ ("StartError" | "ContainerCannotRun")) => {
                return Some(format!(
                    "runner container could not start ({reason}): {}",
                    t.message.as_deref().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
    if let Some((reason, message)) = waiting_reason(pod) {
        if !matches!(reason, "ContainerCreating" | "PodInitializing" | "") {
            return Some(format!("runner container waiting: {reason}: {message}"));
        }
    }
    if phase(pod) == "Failed" && !pod_reason.is_empty() {
        return Some(format!("pod failed: {pod_reason}: {pod_message}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"activeDeadlineSeconds": 600, "containers": [{"name": "runner", "image": "i", "resources": {"limits": {"memory": "256Mi"}}}]},
            "status": status,
        }))
        .unwrap()
    }

    fn terminated(code: i32, reason: &str) -> serde_json::Value {
        serde_json::json!([{"name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason}}}])
    }

    #[test]
    fn phases_and_exit_codes() {
        let running = pod(serde_json::json!({"phase": "Running"}));
        assert_eq!(instance_status(&running), InstanceStatus::Running);
        assert!(!is_terminal(&running));
        let done = pod(
            serde_json::json!({"phase": "Succeeded", "containerStatuses": terminated(0, "Completed")}),
        );
        assert_eq!(
            instance_status(&done),
            InstanceStatus::Exited { code: Some(0) }
        );
        assert_eq!(cause(&done), None);
        let failed = pod(
            serde_json::json!({"phase": "Failed", "containerStatuses": terminated(2, "Error")}),
        );
        assert_eq!(
            instance_status(&failed),
            InstanceStatus::Exited { code: Some(2) }
        );
        let lost =
            pod(serde_json::json!({"phase": "Failed", "reason": "NodeLost", "message": "gone"}));
        assert_eq!(
            instance_status(&lost),
            InstanceStatus::Exited { code: Some(KILLED) }
        );
        assert_eq!(cause(&lost).unwrap(), "pod failed: NodeLost: gone");
        assert_eq!(
            instance_status(&pod(serde_json::Value::Null)),
            InstanceStatus::Running
        );
    }

    #[test]
    fn eviction_oom_and_deadline_are_named() {
        let evicted = pod(
            serde_json::json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.", "containerStatuses": terminated(137, "Error")}),
        );
        assert_eq!(
            instance_status(&evicted),
            InstanceStatus::Exited { code: Some(137) }
        );
        assert_eq!(
            cause(&evicted).unwrap(),
            "pod evicted by the kubelet: The node was low on resource: memory."
        );
        let oom = pod(
            serde_json::json!({"phase": "Failed", "containerStatuses": terminated(137, "OOMKilled")}),
        );
        assert_eq!(
            cause(&oom).unwrap(),
            "runner container OOMKilled (exit 137; memory limit 256Mi)"
        );
        let deadline = pod(
            serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "m"}),
        );
        assert!(cause(&deadline)
            .unwrap()
            .contains("activeDeadlineSeconds (600 s)"));
    }

    #[test]
    fn hopeless_waiting_ends_the_instance() {
        let waiting = |reason: &str| {
            pod(
                serde_json::json!({"phase": "Pending", "containerStatuses": [{"name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": "why"}}}]}),
            )
        };
        assert_eq!(
            instance_status(&waiting("ContainerCreating")),
            InstanceStatus::Running
        );
        assert_eq!(cause(&waiting("ContainerCreating")), None);
        assert_eq!(
            instance_status(&waiting("ErrImagePull")),
            InstanceStatus::Running
        );
        assert_eq!(
            cause(&waiting("ErrImagePull")).unwrap(),
            "runner container waiting: ErrImagePull: why"
        );
        assert_eq!(
            instance_status(&waiting("InvalidImageName")),
            InstanceStatus::Exited { code: None }
        );
    }
}
