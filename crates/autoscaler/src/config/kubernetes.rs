//! `[kubernetes]` (how to reach the cluster, shared by every kubernetes pool) and
//! `[pools.kubernetes]` (what a pool's runner Pods look like). docs/kubernetes-backend.md has
//! the meaning of each key; the raw tables and their checks live here so that the shared
//! config files only gain a line each.

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::{
    docker::{parse_volume, VolumeMount},
    duration::ConfigDuration,
    error::{ConfigError, ConfigWarning, Source},
};

/// Defaults of `[kubernetes]`.
pub mod kubernetes_defaults {
    use std::time::Duration;

    pub const NAMESPACE: &str = "default";
    /// client-go's defaults are 5 QPS and a burst of 10; a burst of runners needs a little more.
    pub const QPS: f64 = 10.0;
    pub const BURST: u32 = 20;
    /// How often the pod watch is replaced by a full list (a "resync"), even when healthy.
    pub const RESYNC: Duration = Duration::from_secs(5 * 60);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
}

/// How to reach the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// A kubeconfig file; `None`: in a pod its service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; `None`: its current context.
    pub context: Option<String>,
    /// Use the pod's service account even if a kubeconfig is around.
    pub in_cluster: bool,
    /// Namespace of pools that do not name their own.
    pub namespace: String,
    /// Requests per second to the API server, sustained, and how many may go at once above it.
    pub qps: f64,
    pub burst: u32,
    /// Period of the full re-list that backs the watch.
    pub resync: Duration,
    /// Deadline of each API request (watches excepted).
    pub request_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            context: None,
            in_cluster: false,
            namespace: kubernetes_defaults::NAMESPACE.into(),
            qps: kubernetes_defaults::QPS,
            burst: kubernetes_defaults::BURST,
            resync: kubernetes_defaults::RESYNC,
            request_timeout: kubernetes_defaults::REQUEST_TIMEOUT,
        }
    }
}

/// One toleration of a pool's Pods (the Kubernetes `Toleration` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesToleration {
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    pub operator: Option<String>,
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; `None`: all effects.
    pub effect: Option<String>,
    pub toleration_seconds: Option<i64>,
}

/// What a kubernetes pool's runner Pods look like.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesPoolConfig {
    /// Image of the runner container (it must contain the runner binary on its PATH).
    pub image: String,
    /// The pool's namespace; `None`: `[kubernetes] namespace`.
    pub namespace: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`; `None`: the cluster's default for the tag.
    pub image_pull_policy: Option<String>,
    /// `serviceAccountName` of the Pods (its token is never mounted).
    pub service_account: Option<String>,
    /// Resource requests and limits by resource name (`cpu`, `memory`, ...), as quantities.
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<KubernetesToleration>,
    pub runtime_class_name: Option<String>,
    /// Run the runner container privileged (only for trusted repositories).
    pub privileged: bool,
    /// hostPath volumes (`HOST:CONTAINER[:ro]`); none unless listed.
    pub host_paths: Vec<VolumeMount>,
    /// JSON merge patches (RFC 7386) applied to the generated Pod and to its runner container.
    pub pod_overlay: Option<Value>,
    pub container_overlay: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub kubeconfig: Option<Spanned<PathBuf>>,
    pub context: Option<Spanned<String>>,
    pub in_cluster: Option<bool>,
    pub namespace: Option<Spanned<String>>,
    pub qps: Option<Spanned<f64>>,
    pub burst: Option<Spanned<u32>>,
    pub resync: Option<Spanned<ConfigDuration>>,
    pub request_timeout: Option<Spanned<ConfigDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetesPool {
    pub image: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub image_pull_policy: Option<Spanned<String>>,
    pub service_account: Option<Spanned<String>>,
    pub resources: Option<Spanned<RawResources>>,
    #[serde(default)]
    pub node_selector: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub tolerations: Vec<Spanned<RawToleration>>,
    pub runtime_class_name: Option<Spanned<String>>,
    pub privileged: Option<Spanned<bool>>,
    #[serde(default)]
    pub host_paths: Vec<Spanned<String>>,
    pub pod_overlay: Option<Spanned<Value>>,
    pub container_overlay: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    #[serde(default)]
    pub requests: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub limits: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToleration {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
    pub toleration_seconds: Option<i64>,
}

/// `[kubernetes]`; `None` gives the defaults.
pub(super) fn build_cluster(
    table: Option<Spanned<RawKubernetes>>,
    source: &Source<'_>,
    base_dir: &Path,
) -> Result<KubernetesConfig, ConfigError> {
    let mut config = KubernetesConfig::default();
    let Some(table) = table else {
        return Ok(config);
    };
    let span = table.span();
    let raw = table.into_inner();
    config.kubeconfig = raw.kubeconfig.map(|p| base_dir.join(p.get_ref()));
    config.in_cluster = raw.in_cluster.unwrap_or(false);
    if config.in_cluster && config.kubeconfig.is_some() {
        return Err(source.error(
            &span,
            "in_cluster = true and kubeconfig are both set; keep one (in a pod, in_cluster uses its service account)",
        ));
    }
    if let Some(context) = raw.context {
        if config.in_cluster {
            return Err(source.error(
                &context.span(),
                "context names a kubeconfig context, but in_cluster = true uses no kubeconfig; remove one of them",
            ));
        }
        config.context = Some(context.into_inner());
    }
    if let Some(ns) = raw.namespace {
        check_dns_label(ns.get_ref()).map_err(|e| source.error(&ns.span(), e))?;
        config.namespace = ns.into_inner();
    }
    if let Some(qps) = raw.qps {
        let q = *qps.get_ref();
        if !(q.is_finite() && q > 0.0 && q <= 10_000.0) {
            return Err(source.error(
                &qps.span(),
                format!("qps = {q} must be a positive number of requests per second, e.g. 10"),
            ));
        }
        config.qps = q;
    }
    if let Some(burst) = raw.burst {
        if *burst.get_ref() == 0 {
            return Err(source.error(
                &burst.span(),
                "burst = 0 would allow no request at all; use 1 or more (default 20)",
            ));
        }
        config.burst = *burst.get_ref();
    }
    for (value, slot, key, min) in [
        (
            raw.resync,
            &mut config.resync,
            "resync",
            Duration::from_secs(10),
        ),
        (
            raw.request_timeout,
            &mut config.request_timeout,
            "request_timeout",
            Duration::from_secs(1),
        ),
    ] {
        if let Some(value) = value {
            let d = value.get_ref().0;
            if d < min {
                return Err(source.error(
                    &value.span(),
                    format!(
                        "{key} is shorter than {}; use a longer duration",
                        humantime::format_duration(min)
                    ),
                ));
            }
            *slot = d;
        }
    }
    Ok(config)
}

/// `[pools.kubernetes]`.
pub(super) fn build_pool(
    table: Spanned<RawKubernetesPool>,
    source: &Source<'_>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<KubernetesPoolConfig, ConfigError> {
    let span = table.span();
    let raw = table.into_inner();
    let error = |span: &Range<usize>, message: String| source.error(span, message);
    let Some(image) = raw.image else {
        return Err(error(
            &span,
            "the kubernetes table has no `image`; add image = \"IMAGE\" (an image with forgejo-runner on its PATH)".into(),
        ));
    };
    let image_text = image.get_ref().trim();
    if image_text.is_empty() || image_text.chars().any(char::is_whitespace) {
        return Err(error(
            &image.span(),
            "image is empty or has spaces; name an image, e.g. \"data.forgejo.org/forgejo/runner:12\"".into(),
        ));
    }
    let namespace = match raw.namespace {
        Some(ns) => {
            check_dns_label(ns.get_ref()).map_err(|e| error(&ns.span(), e))?;
            Some(ns.into_inner())
        }
        None => None,
    };
    let image_pull_policy = match raw.image_pull_policy {
        None => None,
        Some(p) if matches!(p.get_ref().as_str(), "Always" | "IfNotPresent" | "Never") => {
            Some(p.into_inner())
        }
        Some(p) => {
            return Err(error(
                &p.span(),
                format!(
                "image_pull_policy \"{}\" is not one of \"Always\", \"IfNotPresent\", \"Never\"",
                p.get_ref()
            ),
            ))
        }
    };
    let service_account = match raw.service_account {
        None => None,
        Some(sa) => {
            check_dns_subdomain(sa.get_ref()).map_err(|e| error(&sa.span(), e))?;
            Some(sa.into_inner())
        }
    };
    let (mut requests, mut limits) = (BTreeMap::new(), BTreeMap::new());
    if let Some(resources) = raw.resources {
        let resources = resources.into_inner();
        for (map, out) in [
            (resources.requests, &mut requests),
            (resources.limits, &mut limits),
        ] {
            for (name, quantity) in map {
                check_resource_name(name.get_ref()).map_err(|e| error(&name.span(), e))?;
                check_quantity(quantity.get_ref()).map_err(|e| error(&quantity.span(), e))?;
                out.insert(name.into_inner(), quantity.into_inner());
            }
        }
    }
    let mut node_selector = BTreeMap::new();
    for (key, value) in raw.node_selector {
        check_label_key(key.get_ref()).map_err(|e| error(&key.span(), e))?;
        check_label_value(value.get_ref()).map_err(|e| error(&value.span(), e))?;
        node_selector.insert(key.into_inner(), value.into_inner());
    }
    let mut tolerations = Vec::new();
    for t in raw.tolerations {
        let at = t.span();
        let t = t.into_inner();
        if let Some(op) = &t.operator {
            if !matches!(op.as_str(), "Equal" | "Exists") {
                return Err(error(
                    &at,
                    format!("toleration operator \"{op}\" is not \"Equal\" or \"Exists\""),
                ));
            }
            if op == "Exists" && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                return Err(error(
                    &at,
                    "a toleration with operator \"Exists\" takes no value; remove it".into(),
                ));
            }
        }
        if let Some(effect) = &t.effect {
            if !matches!(
                effect.as_str(),
                "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            ) {
                return Err(error(
                    &at,
                    format!("toleration effect \"{effect}\" is not one of \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""),
                ));
            }
        }
        if t.key.is_none() && t.operator.as_deref() != Some("Exists") {
            return Err(error(
                &at,
                "a toleration without key must have operator = \"Exists\" (it then tolerates every taint)".into(),
            ));
        }
        tolerations.push(KubernetesToleration {
            key: t.key,
            operator: t.operator,
            value: t.value,
            effect: t.effect,
            toleration_seconds: t.toleration_seconds,
        });
    }
    let runtime_class_name = match raw.runtime_class_name {
        None => None,
        Some(name) => {
            check_dns_subdomain(name.get_ref()).map_err(|e| error(&name.span(), e))?;
            Some(name.into_inner())
        }
    };
    let privileged = raw.privileged.as_ref().is_some_and(|p| *p.get_ref());
    if let Some(p) = raw.privileged.as_ref().filter(|p| *p.get_ref()) {
        warnings.push(source.warning(
            &p.span(),
            "privileged = true gives every job root on its node; use only for trusted repositories",
        ));
    }
    let mut host_paths = Vec::new();
    for entry in &raw.host_paths {
        let mount = parse_volume(entry.get_ref()).map_err(|e| error(&entry.span(), e))?;
        if !mount.source.starts_with('/') {
            return Err(error(
                &entry.span(),
                format!(
                    "host path \"{}\" must be an absolute path on the node",
                    mount.source
                ),
            ));
        }
        warnings.push(source.warning(
            &entry.span(),
            "a hostPath volume lets jobs reach the node's file system; use only for trusted repositories",
        ));
        host_paths.push(mount);
    }
    let pod_overlay = match raw.pod_overlay {
        None => None,
        Some(overlay) => {
            check_pod_overlay(overlay.get_ref()).map_err(|e| error(&overlay.span(), e))?;
            Some(overlay.into_inner())
        }
    };
    let container_overlay = match raw.container_overlay {
        None => None,
        Some(overlay) => {
            check_container_overlay(overlay.get_ref()).map_err(|e| error(&overlay.span(), e))?;
            Some(overlay.into_inner())
        }
    };
    Ok(KubernetesPoolConfig {
        image: image_text.to_string(),
        namespace,
        image_pull_policy,
        service_account,
        requests,
        limits,
        node_selector,
        tolerations,
        runtime_class_name,
        privileged,
        host_paths,
        pod_overlay,
        container_overlay,
    })
}

/// Paths of a Pod an overlay may not set: what the backend relies on (names, ownership,
/// the credential volume, the runner container, one run only) and what the pool has its own
/// key for (so that a review of the file sees them).
const POD_OVERLAY_REFUSED: &[(&str, &str)] = &[
    ("/metadata/name", "the Pod is named after its instance"),
    ("/metadata/namespace", "use namespace = \"...\""),
    ("/metadata/ownerReferences", "the backend owns its Pods"),
    (
        "/spec/containers",
        "use container_overlay for the runner container",
    ),
    ("/spec/initContainers", "runner Pods have one container"),
    (
        "/spec/volumes",
        "use host_paths; the credential volume is the backend's",
    ),
    ("/spec/restartPolicy", "a runner runs once (Never)"),
    (
        "/spec/automountServiceAccountToken",
        "jobs never get the service account's token",
    ),
    (
        "/spec/activeDeadlineSeconds",
        "it follows the pool's timeouts (boot + pickup + job + teardown)",
    ),
    ("/spec/nodeSelector", "use node_selector"),
    ("/spec/tolerations", "use tolerations"),
    ("/spec/runtimeClassName", "use runtime_class_name"),
    ("/spec/serviceAccountName", "use service_account"),
    ("/status", "status is the kubelet's"),
];

const CONTAINER_OVERLAY_REFUSED: &[(&str, &str)] = &[
    ("/name", "the container is named runner"),
    ("/image", "use image"),
    ("/command", "the runner's command is the autoscaler's"),
    ("/args", "the runner's arguments are the autoscaler's"),
    ("/env", "use [pools.env] (and [runner] env)"),
    ("/envFrom", "use [pools.env]"),
    ("/volumeMounts", "use host_paths"),
    ("/resources", "use [pools.kubernetes.resources]"),
    ("/securityContext/privileged", "use privileged = true"),
];

fn check_refused(overlay: &Value, refused: &[(&str, &str)], what: &str) -> Result<(), String> {
    if !overlay.is_object() {
        return Err(format!("{what} must be a table (a JSON merge patch)"));
    }
    for (pointer, why) in refused {
        if overlay.pointer(pointer).is_some() {
            return Err(format!(
                "{what} sets {}: not allowed ({why})",
                pointer.trim_start_matches('/').replace('/', ".")
            ));
        }
    }
    if let Some(labels) = overlay
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
    {
        if let Some(key) = labels
            .keys()
            .find(|k| k.starts_with("org.forgejo.autoscaler."))
        {
            return Err(format!(
                "{what} sets the label {key}: the org.forgejo.autoscaler.* labels are the backend's"
            ));
        }
    }
    Ok(())
}

/// The overlay must be a partial Pod: applied to a Pod, the result still reads as one.
fn check_pod_overlay(overlay: &Value) -> Result<(), String> {
    check_refused(overlay, POD_OVERLAY_REFUSED, "pod_overlay")?;
    let mut sample = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sample"},
        "spec": {"containers": [{"name": "runner", "image": "sample"}]}
    });
    json_merge_patch(&mut sample, overlay);
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(sample)
        .map(|_| ())
        .map_err(|e| format!("pod_overlay does not fit a Pod: {e}"))
}

fn check_container_overlay(overlay: &Value) -> Result<(), String> {
    check_refused(overlay, CONTAINER_OVERLAY_REFUSED, "container_overlay")?;
    let mut sample = serde_json::json!({"name": "runner", "image": "sample"});
    json_merge_patch(&mut sample, overlay);
    serde_json::from_value::<k8s_openapi::api::core::v1::Container>(sample)
        .map(|_| ())
        .map_err(|e| format!("container_overlay does not fit a container: {e}"))
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes, anything else replaces.
pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                json_merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn check_dns_label(name: &str) -> Result<(), String> {
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
        Err(format!("\"{name}\" is not a Kubernetes namespace name; use up to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"))
    }
}

fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(|p| check_dns_label(p).is_ok())
    {
        Ok(())
    } else {
        Err(format!("\"{name}\" is not a Kubernetes object name; use lowercase letters, digits, '-' and '.'"))
    }
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name_ok && prefix.is_none_or(|p| check_dns_subdomain(p).is_ok()) {
        Ok(())
    } else {
        Err(format!("\"{key}\" is not a Kubernetes label key; write NAME or PREFIX/NAME (e.g. \"kubernetes.io/arch\")"))
    }
}

fn check_label_value(value: &str) -> Result<(), String> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{value}\" is not a Kubernetes label value; use up to 63 letters, digits, '-', '_' or '.'"
        ))
    }
}

fn check_resource_name(name: &str) -> Result<(), String> {
    if check_label_key(name).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a resource name; use e.g. \"cpu\", \"memory\" or \"ephemeral-storage\""
        ))
    }
}

/// A Kubernetes quantity: a decimal number and a suffix (`500m`, `2`, `1.5Gi`, `128Mi`, `1e3`).
fn check_quantity(text: &str) -> Result<(), String> {
    let hint = "write a Kubernetes quantity, e.g. \"500m\", \"2\", \"512Mi\" or \"4Gi\"";
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let number_ok = number
        .parse::<f64>()
        .is_ok_and(|n| n.is_finite() && n >= 0.0);
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || (suffix.starts_with(['e', 'E']) && suffix[1..].parse::<i32>().is_ok());
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!("\"{text}\" is not a quantity; {hint}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["500m", "2", "1.5Gi", "128Mi", "1e3", "0.5"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "lots", "5 Gi", "1GB", "-1", "1.2.3"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("kubernetes.io/arch").is_ok());
        assert!(check_label_key("pool").is_ok());
        assert!(check_label_key("Bad Key").is_err());
        assert!(check_label_key("UPPER.example/x").is_err());
        assert!(check_label_value("amd64").is_ok());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("-x").is_err());
    }

    #[test]
    fn overlays_are_partial_pods_that_leave_the_backend_s_fields_alone() {
        let ok = serde_json::json!({"metadata": {"labels": {"team": "ci"}, "annotations": {"a": "b"}}, "spec": {"priorityClassName": "ci", "hostNetwork": true}});
        assert!(check_pod_overlay(&ok).is_ok());
        let wrong_type = serde_json::json!({"spec": {"hostNetwork": "yes"}});
        assert!(check_pod_overlay(&wrong_type)
            .unwrap_err()
            .contains("does not fit a Pod"));
        for refused in [
            serde_json::json!({"spec": {"containers": []}}),
            serde_json::json!({"spec": {"automountServiceAccountToken": true}}),
            serde_json::json!({"spec": {"volumes": []}}),
            serde_json::json!({"metadata": {"labels": {"org.forgejo.autoscaler.owner": "x"}}}),
        ] {
            assert!(check_pod_overlay(&refused).is_err(), "{refused}");
        }
        assert!(check_pod_overlay(&serde_json::json!("x")).is_err());
        assert!(check_container_overlay(
            &serde_json::json!({"securityContext": {"runAsUser": 1000}})
        )
        .is_ok());
        assert!(check_container_overlay(
            &serde_json::json!({"securityContext": {"privileged": true}})
        )
        .is_err());
        assert!(check_container_overlay(&serde_json::json!({"workingDir": 3})).is_err());
    }

    #[test]
    fn merge_patch() {
        let mut v = serde_json::json!({"a": {"b": 1, "c": 2}});
        json_merge_patch(&mut v, &serde_json::json!({"a": {"b": null, "d": [1]}}));
        assert_eq!(v, serde_json::json!({"a": {"c": 2, "d": [1]}}));
    }
}

#[cfg(test)]
mod file_tests {
    use std::path::Path;

    use crate::config::{parse, BackendKind};

    fn file(extra_global: &str, pool: &str) -> String {
        format!(
            "[forgejo]\nurl = \"https://f.example\"\ntoken_env = \"T\"\nscopes = [\"org:acme\"]\n{extra_global}\n[[pools]]\nname = \"k\"\nlabels = [\"trixie:docker://debian:trixie\"]\nbackend = \"kubernetes\"\n{pool}"
        )
    }

    #[test]
    fn a_full_kubernetes_pool_reads_back() {
        let text = file(
            "[kubernetes]\nkubeconfig = \"kc\"\ncontext = \"prod\"\nnamespace = \"ci\"\nqps = 20\nburst = 40\nresync = \"2m\"\n",
            "[pools.kubernetes]\nimage = \"runner:12\"\nnamespace = \"runners\"\nimage_pull_policy = \"IfNotPresent\"\nservice_account = \"runner\"\nnode_selector = { \"kubernetes.io/arch\" = \"amd64\" }\ntolerations = [{ key = \"ci\", operator = \"Equal\", value = \"true\", effect = \"NoSchedule\" }]\nruntime_class_name = \"gvisor\"\n[pools.kubernetes.resources]\nrequests = { cpu = \"500m\", memory = \"1Gi\" }\nlimits = { memory = \"2Gi\" }\n[pools.kubernetes.pod_overlay.spec]\npriorityClassName = \"ci\"\n",
        );
        let config = parse(&text, Path::new("/etc/a/autoscaler.toml")).unwrap();
        assert_eq!(
            config.kubernetes.kubeconfig.as_deref(),
            Some(Path::new("/etc/a/kc"))
        );
        assert_eq!(config.kubernetes.context.as_deref(), Some("prod"));
        assert_eq!((config.kubernetes.qps, config.kubernetes.burst), (20.0, 40));
        let pool = &config.pools[0];
        assert_eq!(pool.backend, BackendKind::Kubernetes);
        let k = pool.kubernetes.as_ref().unwrap();
        assert_eq!(k.namespace.as_deref(), Some("runners"));
        assert_eq!(k.requests["cpu"], "500m");
        assert_eq!(k.limits["memory"], "2Gi");
        assert_eq!(k.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(
            k.pod_overlay.as_ref().unwrap()["spec"]["priorityClassName"],
            "ci"
        );
        assert!(!k.privileged && k.host_paths.is_empty());
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn mistakes_point_at_their_key() {
        let cases = [
            (file("", ""), "needs a [pools.kubernetes] table"),
            (file("", "[pools.kubernetes]\nnamespace = \"ci\"\n"), "has no `image`"),
            (file("", "[pools.kubernetes]\nimage = \"i\"\nnamespace = \"CI\"\n"), "not a Kubernetes namespace name"),
            (file("", "[pools.kubernetes]\nimage = \"i\"\nimage_pull_policy = \"sometimes\"\n"), "image_pull_policy"),
            (file("", "[pools.kubernetes]\nimage = \"i\"\n[pools.kubernetes.resources]\nlimits = { memory = \"2GB\" }\n"), "is not a quantity"),
            (file("", "[pools.kubernetes]\nimage = \"i\"\ntolerations = [{ operator = \"Equal\" }]\n"), "without key"),
            (file("", "[pools.kubernetes]\nimage = \"i\"\n[pools.kubernetes.pod_overlay.spec]\nautomountServiceAccountToken = true\n"), "jobs never get the service account's token"),
            (file("", "[pools.kubernetes]\nimage = \"i\"\nimgae = \"typo\"\n"), "imgae"),
            (file("[kubernetes]\nqps = 0\n", "[pools.kubernetes]\nimage = \"i\"\n"), "qps = 0"),
            (file("[kubernetes]\nin_cluster = true\nkubeconfig = \"k\"\n", "[pools.kubernetes]\nimage = \"i\"\n"), "keep one"),
        ];
        for (text, expected) in cases {
            let message = parse(&text, Path::new("a.toml")).unwrap_err().to_string();
            assert!(message.contains(expected), "{expected:?} not in {message}");
            assert!(message.starts_with("a.toml:"), "positioned: {message}");
        }
        let mut docker = file("", "[pools.kubernetes]\nimage = \"i\"\n");
        docker = docker.replace(
            "backend = \"kubernetes\"",
            "backend = \"docker\"\n[pools.docker]\nimage = \"i\"",
        );
        let message = parse(&docker, Path::new("a.toml")).unwrap_err().to_string();
        assert!(
            message.contains("kubernetes settings on a pool whose backend is \"docker\""),
            "{message}"
        );
    }

    #[test]
    fn privileged_and_host_paths_are_warned_about() {
        let text = file("", "[pools.kubernetes]\nimage = \"i\"\nprivileged = true\nhost_paths = [\"/srv/cache:/cache:ro\"]\n");
        let config = parse(&text, Path::new("a.toml")).unwrap();
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        let k = config.pools[0].kubernetes.as_ref().unwrap();
        assert!(k.privileged);
        assert_eq!(k.host_paths[0].source, "/srv/cache");
    }
}
