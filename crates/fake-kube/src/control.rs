//! The test control API under `/_fake/` (no authentication, not part of Kubernetes):
//!
//! | request | effect |
//! |---|---|
//! | `GET /_fake/stats` | requests by verb and resource, max requests in one second, open watches, object counts |
//! | `POST /_fake/faults` `{"status":500,"count":3,"method":"POST","pathPrefix":"/api/v1/namespaces/ci/pods","watch":false,"retryAfterSeconds":1}` | the next matching API requests fail with that status (a Status body; 429 with `Retry-After`) |
//! | the same with `"afterProcessing":true` | the request is carried out, then answered with the fault (a lost response) |
//! | `DELETE /_fake/faults` | removes every fault rule |
//! | `POST /_fake/watches/drop` | ends every open watch stream (clients must resume) |
//! | `POST /_fake/compact` | drops the event history: a watch resumed from an older version gets 410 |
//! | `POST /_fake/gc` | runs the garbage collector now; answers how many objects it deleted |
//! | `POST /_fake/pods/NS/NAME/phase` `{"phase":"Running"}` or `{"phase":"Failed","exitCode":3,"reason":"Error"}` | drives a pod (without kubelet: any of Running, Succeeded, Failed; with it: only the end, which kills the process) |
//! | `POST /_fake/pods/NS/NAME/evict` `{"message":"..."}` | node-pressure eviction: phase Failed, reason Evicted, process killed |
//! | `POST /_fake/pods/NS/NAME/oom` | the container is OOM-killed: exit code 137, reason OOMKilled |
//! | `GET /_fake/pods/NS/NAME/process` | kubelet mode: the pod's process id and directory |

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    http::Method,
    response::{IntoResponse, Response},
};
use serde_json::{json, Value};

use crate::{
    kubelet::Outcome,
    podstatus::{self, Ending},
    resource::Resource,
    server::{parse_body, Fault, Shared},
    status::{json_response, ApiError},
    store::Key,
};

pub async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    _query: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (method, segments.as_slice()) {
        (&Method::GET, ["stats"]) => Ok(stats(shared)),
        (&Method::POST, ["faults"]) => add_faults(shared, body),
        (&Method::DELETE, ["faults"]) => {
            shared
                .faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            Ok(json!({"faults": 0}))
        }
        (&Method::POST, ["watches", "drop"]) => {
            let open = shared
                .open_watches
                .load(std::sync::atomic::Ordering::SeqCst);
            shared.drop_watches.send_modify(|n| *n += 1);
            Ok(json!({"dropped": open}))
        }
        (&Method::POST, ["compact"]) => {
            let mut state = shared.state();
            state.compact();
            Ok(json!({"compactedTo": state.rv.to_string()}))
        }
        (&Method::POST, ["gc"]) => Ok(json!({"deleted": shared.collect_garbage()})),
        (&Method::POST, ["pods", ns, name, action]) => {
            parse_body(body).and_then(|b| drive_pod(shared, ns, name, action, &b))
        }
        (&Method::GET, ["pods", ns, name, "process"]) => process(shared, ns, name),
        _ => Err(ApiError::no_such_resource()),
    };
    match result {
        Ok(value) => json_response(200, &value),
        Err(e) => e.into_response(),
    }
}

fn stats(shared: &Shared) -> Value {
    let stats = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    let state = shared.state();
    let mut objects = serde_json::Map::new();
    for resource in Resource::ALL {
        objects.insert(
            resource.plural().into(),
            json!(state.list(resource, None).len()),
        );
    }
    json!({
        "requests": stats.by_verb,
        "requestsTotal": stats.total(),
        "maxRequestsPerSecond": stats.max_per_second(),
        "faultsInjected": stats.faults_injected,
        "openWatches": shared.open_watches.load(std::sync::atomic::Ordering::SeqCst),
        "resourceVersion": state.rv.to_string(),
        "eventsRetained": state.history_len(),
        "objects": objects,
    })
}

fn add_faults(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let value = parse_body(body)?;
    let list: Vec<Fault> = if value.is_array() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(|f| vec![f])
    }
    .map_err(|e| ApiError::bad_request(format!("fault: {e}")))?;
    let mut faults = shared.faults.lock().unwrap_or_else(|p| p.into_inner());
    faults.extend(list);
    Ok(json!({"faults": faults.len()}))
}

fn process(shared: &Shared, ns: &str, name: &str) -> Result<Value, ApiError> {
    let uid = pod_uid(shared, ns, name)?;
    let kubelet = shared
        .kubelet
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("fake-kube runs without a kubelet"))?;
    let process = kubelet
        .process(&uid)
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    Ok(json!(process))
}

fn pod_uid(shared: &Shared, ns: &str, name: &str) -> Result<String, ApiError> {
    shared
        .state()
        .get(&Key::new(Resource::Pod, ns, name))
        .and_then(|p| p.pointer("/metadata/uid"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::not_found("pods", name))
}

fn drive_pod(
    shared: &Arc<Shared>,
    ns: &str,
    name: &str,
    action: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let ending = match action {
        "evict" => Some(Ending::evicted(body["message"].as_str().unwrap_or(
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 42Mi.",
        ))),
        "oom" => Some(Ending::oom_killed()),
        "phase" => match body["phase"].as_str() {
            Some("Running") => None,
            Some(phase @ ("Succeeded" | "Failed")) => {
                let code = body["exitCode"]
                    .as_i64()
                    .unwrap_or(if phase == "Succeeded" { 0 } else { 1 });
                let code = i32::try_from(code)
                    .map_err(|_| ApiError::bad_request("exitCode out of range"))?;
                if (phase == "Succeeded") != (code == 0) {
                    return Err(ApiError::bad_request(
                        "Succeeded needs exit code 0 and Failed a non-zero one",
                    ));
                }
                let mut ending = Ending::exited(code);
                if let Some(reason) = body["reason"].as_str() {
                    ending.container_reason = reason.to_string();
                }
                ending.container_message = body["message"].as_str().map(str::to_string);
                Some(ending)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "phase {other:?}: use Running, Succeeded or Failed"
                )))
            }
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown pod action {other:?}: use phase, evict or oom"
            )))
        }
    };
    let uid = pod_uid(shared, ns, name)?;
    if let Some(kubelet) = &shared.kubelet {
        let Some(ending) = ending else {
            return Err(ApiError::bad_request(
                "with the kubelet, a pod runs when its process does; only its end can be driven",
            ));
        };
        if kubelet.terminate(&uid, Outcome::End(ending)) {
            return Ok(json!({"accepted": true}));
        }
        return Err(ApiError::not_found("pods", name));
    }
    let key = Key::new(Resource::Pod, ns, name);
    let mut state = shared.state();
    let mut pod = state
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    if podstatus::is_terminal(&pod) {
        return Err(ApiError::bad_request(format!(
            "pod {name} has ended already; a pod's phase never leaves Succeeded or Failed"
        )));
    }
    if pod.pointer("/spec/nodeName").is_none_or(Value::is_null) {
        podstatus::scheduled(&mut pod, &shared.options.node_name);
    }
    match ending {
        None => podstatus::running(&mut pod, "10.244.0.2"),
        Some(ending) => podstatus::terminated(&mut pod, &ending),
    }
    Ok(state.put(key, pod))
}
