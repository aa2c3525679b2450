//! Pod status as the kubelet reports it, for each step of a pod's life: bound to the node,
//! containers waiting (creating, image pull errors), running, and terminated (completed,
//! failed, OOM-killed, evicted, past its deadline). Used by the process-running kubelet and by
//! the control API that drives pods by hand.

use serde_json::{json, Value};

use crate::api::now_rfc3339;

pub const HOST_IP: &str = "10.0.0.10";

fn container_names(pod: &Value) -> Vec<(String, String)> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c["image"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn condition(kind: &str, status: bool, reason: Option<&str>) -> Value {
    let mut c = json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "lastProbeTime": null,
        "lastTransitionTime": now_rfc3339(),
    });
    if let Some(reason) = reason {
        c["reason"] = json!(reason);
    }
    c
}

fn container_status(name: &str, image: &str, state: Value, ready: bool, uid: &str) -> Value {
    json!({
        "name": name,
        "image": image,
        "imageID": format!("fake-kube://{image}"),
        "containerID": format!("fake-kube://{uid}-{name}"),
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    })
}

fn uid(pod: &Value) -> String {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Bound to `node`: scheduled, containers being created.
pub fn scheduled(pod: &mut Value, node: &str) {
    pod["spec"]["nodeName"] = json!(node);
    let uid = uid(pod);
    let statuses: Vec<Value> = container_names(pod)
        .iter()
        .map(|(name, image)| {
            container_status(
                name,
                image,
                json!({"waiting": {"reason": "ContainerCreating"}}),
                false,
                &uid,
            )
        })
        .collect();
    let qos = pod["status"]["qosClass"].clone();
    pod["status"] = json!({
        "phase": "Pending",
        "qosClass": qos,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "startTime": now_rfc3339(),
        "conditions": [
            condition("PodScheduled", true, None),
            condition("Initialized", true, None),
            condition("Ready", false, Some("ContainersNotReady")),
            condition("ContainersReady", false, Some("ContainersNotReady")),
        ],
        "containerStatuses": statuses,
    });
}

/// Containers waiting with `reason` (ErrImagePull, CreateContainerConfigError, ...).
pub fn waiting(pod: &mut Value, reason: &str, message: &str) {
    if let Some(statuses) = pod
        .pointer_mut("/status/containerStatuses")
        .and_then(Value::as_array_mut)
    {
        for s in statuses {
            s["state"] = json!({"waiting": {"reason": reason, "message": message}});
        }
    }
}

/// Every container running.
pub fn running(pod: &mut Value, pod_ip: &str) {
    let uid = uid(pod);
    let now = now_rfc3339();
    let statuses: Vec<Value> = container_names(pod)
        .iter()
        .map(|(name, image)| {
            container_status(
                name,
                image,
                json!({"running": {"startedAt": now}}),
                true,
                &uid,
            )
        })
        .collect();
    let status = &mut pod["status"];
    status["phase"] = json!("Running");
    status["podIP"] = json!(pod_ip);
    status["podIPs"] = json!([{"ip": pod_ip}]);
    status["conditions"] = json!([
        condition("PodScheduled", true, None),
        condition("Initialized", true, None),
        condition("Ready", true, None),
        condition("ContainersReady", true, None),
    ]);
    status["containerStatuses"] = json!(statuses);
}

/// How a pod ended.
#[derive(Debug, Clone)]
pub struct Ending {
    pub exit_code: i32,
    /// The container's `state.terminated.reason`: Completed, Error, OOMKilled, ...
    pub container_reason: String,
    pub container_message: Option<String>,
    /// The pod's own `status.reason` (Evicted, DeadlineExceeded) and message.
    pub pod_reason: Option<String>,
    pub pod_message: Option<String>,
    /// Adds the DisruptionTarget condition (eviction, deadline) with this reason.
    pub disruption: Option<String>,
}

impl Ending {
    /// The container exited with `code` on its own.
    pub fn exited(code: i32) -> Ending {
        Ending {
            exit_code: code,
            container_reason: if code == 0 { "Completed" } else { "Error" }.into(),
            container_message: None,
            pod_reason: None,
            pod_message: None,
            disruption: None,
        }
    }

    /// Killed by the kernel's OOM killer (SIGKILL: 137).
    pub fn oom_killed() -> Ending {
        Ending {
            exit_code: 137,
            container_reason: "OOMKilled".into(),
            ..Ending::exited(137)
        }
    }

    /// Node-pressure eviction by the kubelet.
    pub fn evicted(message: &str) -> Ending {
        Ending {
            exit_code: 137,
            container_reason: "Error".into(),
            container_message: None,
            pod_reason: Some("Evicted".into()),
            pod_message: Some(message.to_string()),
            disruption: Some("TerminationByKubelet".into()),
        }
    }

    /// `activeDeadlineSeconds` passed: the kubelet stopped the containers (SIGTERM: 143, or
    /// SIGKILL after the grace period: 137).
    pub fn deadline_exceeded(exit_code: i32) -> Ending {
        Ending {
            exit_code,
            container_reason: "Error".into(),
            container_message: None,
            pod_reason: Some("DeadlineExceeded".into()),
            pod_message: Some(
                "Pod was active on the node longer than the specified deadline".into(),
            ),
            disruption: Some("DeadlineExceeded".into()),
        }
    }

    pub fn phase(&self) -> &'static str {
        if self.exit_code == 0 && self.pod_reason.is_none() {
            "Succeeded"
        } else {
            "Failed"
        }
    }
}

/// The pod ended: phase Succeeded or Failed, every container terminated.
pub fn terminated(pod: &mut Value, ending: &Ending) {
    let uid = uid(pod);
    let now = now_rfc3339();
    let started = pod
        .pointer("/status/containerStatuses/0/state/running/startedAt")
        .cloned()
        .unwrap_or_else(|| json!(now));
    let statuses: Vec<Value> = container_names(pod)
        .iter()
        .map(|(name, image)| {
            let mut terminated = json!({
                "exitCode": ending.exit_code,
                "reason": ending.container_reason,
                "startedAt": started,
                "finishedAt": now,
                "containerID": format!("fake-kube://{uid}-{name}"),
            });
            if let Some(message) = &ending.container_message {
                terminated["message"] = json!(message);
            }
            container_status(name, image, json!({"terminated": terminated}), false, &uid)
        })
        .collect();
    let phase = ending.phase();
    if pod["status"]["startTime"].is_null() {
        pod["status"]["startTime"] = json!(now);
    }
    let status = &mut pod["status"];
    status["phase"] = json!(phase);
    let mut conditions = vec![
        condition("PodScheduled", true, None),
        condition("Initialized", true, None),
        condition("Ready", false, Some("PodCompleted")),
        condition("ContainersReady", false, Some("PodCompleted")),
    ];
    if let Some(reason) = &ending.disruption {
        let mut c = condition("DisruptionTarget", true, Some(reason));
        if let Some(message) = &ending.pod_message {
            c["message"] = json!(message);
        }
        conditions.push(c);
    }
    status["conditions"] = json!(conditions);
    status["containerStatuses"] = json!(statuses);
    if let Some(reason) = &ending.pod_reason {
        status["reason"] = json!(reason);
    }
    if let Some(message) = &ending.pod_message {
        status["message"] = json!(message);
    }
}

pub fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}
