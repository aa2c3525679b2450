//! What the API server checks and fills in when an object is created or updated: names,
//! labels, and per-kind defaults (a Pod's restart policy, QoS class and service-account token
//! volume; a Secret's `stringData` folded into `data`).

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::{resource::Resource, status::ApiError};

/// RFC 1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253 characters.
pub fn dns_subdomain(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| dns_label(part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (got \"{name}\")"))
    }
}

/// RFC 1123 label: at most 63 of lowercase alphanumerics and '-'.
pub fn dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (got \"{name}\")"))
    }
}

/// Checks the object's name (already set) and labels.
pub fn metadata(resource: Resource, object: &Value) -> Result<(), ApiError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut causes = Vec::new();
    let check = if resource == Resource::Namespace {
        dns_label(name)
    } else {
        dns_subdomain(name)
    };
    if let Err(e) = check {
        causes.push(("metadata.name".to_string(), e));
    }
    if let Some(labels) = object.pointer("/metadata/labels") {
        match labels.as_object() {
            None => causes.push(("metadata.labels".into(), "must be a map".into())),
            Some(map) => {
                for (key, value) in map {
                    let as_selector = format!("{key}={}", value.as_str().unwrap_or("\u{0}"));
                    if value.as_str().is_none()
                        || crate::selector::LabelSelector::parse(&as_selector).is_err()
                    {
                        causes.push((
                            format!("metadata.labels[{key}]"),
                            format!("invalid label {key}={value}"),
                        ));
                    }
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(resource.kind(), name, causes))
    }
}

/// Per-kind checks and defaults on create. `random` gives 5-character suffixes.
pub fn on_create(
    resource: Resource,
    object: &mut Value,
    random: &mut dyn FnMut() -> String,
) -> Result<(), ApiError> {
    match resource {
        Resource::Pod => pod(object, random),
        Resource::Secret => secret(object),
        Resource::Lease | Resource::Namespace => Ok(()),
    }
}

fn pod(object: &mut Value, random: &mut dyn FnMut() -> String) -> Result<(), ApiError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut causes = Vec::new();
    let containers = object
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        causes.push(("spec.containers".to_string(), "Required value".to_string()));
    }
    for (i, c) in containers.iter().enumerate() {
        match c.get("name").and_then(Value::as_str) {
            Some(n) if dns_label(n).is_ok() => {}
            _ => causes.push((
                format!("spec.containers[{i}].name"),
                "Required value: a lowercase RFC 1123 label".into(),
            )),
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            causes.push((
                format!("spec.containers[{i}].image"),
                "Required value".into(),
            ));
        }
    }
    if let Some(policy) = object
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
    {
        if !matches!(policy, "Always" | "OnFailure" | "Never") {
            causes.push((
                "spec.restartPolicy".into(),
                format!("Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
    if let Some(deadline) = object.pointer("/spec/activeDeadlineSeconds") {
        if deadline.as_i64().is_none_or(|d| d <= 0) {
            causes.push((
                "spec.activeDeadlineSeconds".into(),
                "must be greater than 0".into(),
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("Pod", &name, causes));
    }
    let spec = object
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .expect("checked above: spec.containers exists");
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "serviceAccountName", json!("default"));
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let token_volume = automount.then(|| format!("kube-api-access-{}", random()));
    if let Some(volume) = &token_volume {
        let volumes = spec
            .entry("volumes")
            .or_insert_with(|| json!([]))
            .as_array_mut();
        if let Some(volumes) = volumes {
            volumes.push(json!({
                "name": volume,
                "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}
            }));
        }
    }
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let tag_latest = !image.rsplit('/').next().unwrap_or(image).contains(':')
                || image.ends_with(":latest");
            default(
                c,
                "imagePullPolicy",
                json!(if tag_latest { "Always" } else { "IfNotPresent" }),
            );
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            default(c, "resources", json!({}));
            if let Some(volume) = &token_volume {
                let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
                if let Some(mounts) = mounts.as_array_mut() {
                    mounts.push(json!({"name": volume, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}));
                }
            }
        }
    }
    let qos = qos_class(&containers);
    object["status"] = json!({"phase": "Pending", "qosClass": qos});
    Ok(())
}

/// Guaranteed: every container has cpu and memory limits equal to its requests;
/// BestEffort: no requests or limits at all; otherwise Burstable.
fn qos_class(containers: &[Value]) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn secret(object: &mut Value) -> Result<(), ApiError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let map = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
    default(map, "type", json!("Opaque"));
    let mut data: Map<String, Value> = match map.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_request("Secret.data: must be a map")),
    };
    let mut total = 0usize;
    for (key, value) in &data {
        let text = value.as_str().ok_or_else(|| {
            ApiError::bad_request(format!("Secret.data[{key}]: must be a base64 string"))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| {
                ApiError::bad_request(format!("Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{key}]: {e}"))
            })?;
        total += bytes.len();
    }
    if let Some(Value::Object(string_data)) = map.remove("stringData") {
        for (key, value) in string_data {
            let text = value.as_str().unwrap_or_default();
            total += text.len();
            data.insert(
                key,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
    let mut causes = Vec::new();
    for key in data.keys() {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            causes.push((
                format!("data[{key}]"),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
                    .to_string(),
            ));
        }
    }
    if total > 1024 * 1024 {
        causes.push((
            "data".to_string(),
            "Too long: must have at most 1048576 bytes".to_string(),
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("Secret", &name, causes));
    }
    if !data.is_empty() {
        map.insert("data".into(), Value::Object(data));
    }
    Ok(())
}

fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// Pod updates may change only a few spec fields (the API server's rule, simplified to the
/// fields below); everything else is refused with 422.
pub fn pod_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let strip = |spec: Option<&Value>| -> Value {
        let mut spec = spec.cloned().unwrap_or(Value::Null);
        if let Some(map) = spec.as_object_mut() {
            map.remove("activeDeadlineSeconds");
            map.remove("tolerations");
            if let Some(containers) = map.get_mut("containers").and_then(Value::as_array_mut) {
                for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
        spec
    };
    if strip(old.get("spec")) == strip(new.get("spec")) {
        return Ok(());
    }
    let name = old
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(ApiError::invalid(
        "Pod",
        name,
        vec![(
            "spec".into(),
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)".into(),
        )],
    ))
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let map = target.as_object_mut().expect("made an object above");
            for (key, value) in patch {
                if value.is_null() {
                    map.remove(key);
                } else {
                    merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_subdomain("a-b.c").is_ok());
        assert!(dns_subdomain("A").is_err());
        assert!(dns_subdomain("-a").is_err());
        assert!(dns_label("a.b").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn pod_defaults_and_qos() {
        let mut n = 0;
        let mut random = || {
            n += 1;
            format!("r{n}")
        };
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        on_create(Resource::Pod, &mut pod, &mut random).unwrap();
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["volumes"][0]["name"], "kube-api-access-r1");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox:1", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        on_create(Resource::Pod, &mut pod, &mut random).unwrap();
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
        assert!(pod["spec"].get("volumes").is_none());
        assert!(pod["spec"]["containers"][0].get("volumeMounts").is_none());
        let mut bad = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(
            on_create(Resource::Pod, &mut bad, &mut random)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn secrets_fold_string_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}, "data": {"x": "eA=="}});
        on_create(Resource::Secret, &mut s, &mut || String::new()).unwrap();
        assert_eq!(s["data"]["token"], "YWJj");
        assert_eq!(s["data"]["x"], "eA==");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
        let mut bad = json!({"metadata": {"name": "s"}, "data": {"x": "!!"}});
        assert_eq!(
            on_create(Resource::Secret, &mut bad, &mut || String::new())
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn merge_patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}
