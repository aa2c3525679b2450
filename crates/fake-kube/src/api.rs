//! The API verbs on one resource: create, get, list, update (PUT), patch (merge), delete,
//! deletecollection; watch is in `watch.rs`, pod logs in `kubelet.rs`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    http::Method,
    response::{IntoResponse, Response},
};
use base64::Engine;
use rand::Rng;
use serde_json::{json, Value};

use crate::{
    resource::{Resource, Target},
    selector::{FieldSelector, LabelSelector},
    server::{is_true, parse_body, Shared},
    status::{json_response, ApiError},
    store::{Key, State},
    validate,
};

/// Which objects a list, watch or deletecollection covers.
pub struct Filter {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn from_query(
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Result<Filter, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?;
        fields.check().map_err(ApiError::bad_request)?;
        Ok(Filter {
            resource: target.resource,
            namespace: target.namespace.clone(),
            labels,
            fields,
        })
    }

    pub fn matches(&self, key: &Key, object: &Value) -> bool {
        key.resource == self.resource
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| key.namespace == ns)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub fn rfc3339_in(seconds: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if seconds >= 0 {
        now + std::time::Duration::from_secs(seconds as u64)
    } else {
        now - std::time::Duration::from_secs(seconds.unsigned_abs())
    };
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Five characters of the alphabet the API server uses for generated names.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The API verb of a request, as the audit log names it.
pub fn verb(method: &Method, target: &Target, watch: bool) -> &'static str {
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "other",
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    method: Method,
    target: Target,
    query: HashMap<String, String>,
    content_type: &str,
    body: Bytes,
) -> Response {
    let resource = target.resource.plural();
    let result = match (
        &method,
        target.name.as_deref(),
        target.subresource.as_deref(),
    ) {
        (&Method::GET, None, None) if is_true(&query, "watch") => {
            shared.count("watch", resource);
            return crate::watch::watch(shared, &target, &query).await;
        }
        (&Method::GET, None, None) => {
            shared.count("list", resource);
            shared.list(&target, &query).map(|v| (200, v))
        }
        (&Method::POST, None, None) => {
            shared.count("create", resource);
            parse_body(&body)
                .and_then(|b| shared.create(&target, b))
                .map(|v| (201, v))
        }
        (&Method::DELETE, None, None) => {
            shared.count("deletecollection", resource);
            shared.delete_collection(&target, &query).map(|v| (200, v))
        }
        (&Method::GET, Some(name), None) => {
            shared.count("get", resource);
            shared.get(&target, name).map(|v| (200, v))
        }
        (&Method::PUT, Some(name), None) => {
            shared.count("update", resource);
            parse_body(&body)
                .and_then(|b| shared.update(&target, name, b))
                .map(|v| (200, v))
        }
        (&Method::PATCH, Some(name), None) => {
            shared.count("patch", resource);
            let kind = content_type.split(';').next().unwrap_or("").trim();
            if !matches!(
                kind,
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            ) {
                Err(ApiError::unsupported_media_type(kind))
            } else {
                parse_body(&body)
                    .and_then(|b| shared.patch(&target, name, &b))
                    .map(|v| (200, v))
            }
        }
        (&Method::DELETE, Some(name), None) => {
            shared.count("delete", resource);
            parse_body(&body).and_then(|b| shared.delete(&target, name, &b, &query))
        }
        (&Method::GET, Some(name), Some("log")) if target.resource == Resource::Pod => {
            shared.count("get", "pods/log");
            return match crate::kubelet::logs(&shared, &target, name, &query) {
                Ok(text) => text.into_response(),
                Err(e) => e.into_response(),
            };
        }
        (_, _, Some(_)) => Err(ApiError::no_such_resource()),
        (method, _, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    };
    match result {
        Ok((code, value)) => json_response(code, &value),
        Err(e) => e.into_response(),
    }
}

fn require_namespace(target: &Target) -> Result<&str, ApiError> {
    if !target.resource.namespaced() {
        return Ok("");
    }
    target.namespace.as_deref().ok_or_else(|| {
        ApiError::method_not_allowed(format!(
            "{} can only be created, read or changed within a namespace",
            target.resource.plural()
        ))
    })
}

/// The `preconditions` of DeleteOptions.
fn check_preconditions(
    resource: Resource,
    name: &str,
    object: &Value,
    options: &Value,
) -> Result<(), ApiError> {
    let Some(pre) = options.get("preconditions") else {
        return Ok(());
    };
    let meta = |field: &str| {
        object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if let Some(uid) = pre.get("uid").and_then(Value::as_str) {
        if uid != meta("uid") {
            return Err(ApiError::precondition(
                &resource.qualified(),
                name,
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta("uid")
                ),
            ));
        }
    }
    if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str) {
        if rv != meta("resourceVersion") {
            return Err(ApiError::precondition(
                &resource.qualified(),
                name,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta("resourceVersion")
                ),
            ));
        }
    }
    Ok(())
}

impl Shared {
    pub fn create(self: &Arc<Self>, target: &Target, body: Value) -> Result<Value, ApiError> {
        if target.name.is_some() {
            return Err(ApiError::method_not_allowed(
                "POST is only allowed on a collection",
            ));
        }
        let resource = target.resource;
        let namespace = require_namespace(target)?.to_string();
        let mut object = body;
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = object.get("kind").and_then(Value::as_str) {
            if kind != resource.kind() {
                return Err(ApiError::bad_request(format!(
                    "the kind of the object ({kind}) does not match the resource ({})",
                    resource.kind()
                )));
            }
        }
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        if let Some(ns) = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            if resource.namespaced() && ns != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let has_name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            match object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) if !prefix.is_empty() => {
                    object["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
                }
                _ => {
                    return Err(ApiError::invalid(
                        resource.kind(),
                        "",
                        vec![(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ))
                }
            }
        }
        validate::metadata(resource, &object)?;
        validate::on_create(resource, &mut object, &mut random_suffix)?;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let meta = object["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        if resource.namespaced() {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("resourceVersion");
        meta.remove("selfLink");
        if !matches!(resource, Resource::Pod) {
            meta.insert("generation".into(), json!(1));
        }
        object["kind"] = json!(resource.kind());
        object["apiVersion"] = json!(resource.api_version());
        if resource == Resource::Namespace {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        let key = Key::new(resource, &namespace, &name);
        let has_owners = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|o| !o.is_empty());
        let stored = {
            let mut state = self.state();
            if resource.namespaced() && !namespace_exists(&state, &namespace) {
                return Err(ApiError::not_found("namespaces", &namespace));
            }
            if state.get(&key).is_some() {
                return Err(ApiError::already_exists(&resource.qualified(), &name));
            }
            state.put(key.clone(), object)
        };
        if has_owners {
            // An owner that does not exist (any more) makes the new object garbage at once.
            self.gc.notify_one();
        }
        if resource == Resource::Pod {
            if let Some(kubelet) = &self.kubelet {
                kubelet.admit(self.clone(), key, &stored);
            }
        }
        Ok(stored)
    }

    pub fn get(&self, target: &Target, name: &str) -> Result<Value, ApiError> {
        let namespace = require_namespace(target)?;
        let key = Key::new(target.resource, namespace, name);
        self.state()
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&target.resource.qualified(), name))
    }

    pub fn list(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        let filter = Filter::from_query(target, query)?;
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let after = match query.get("continue").filter(|c| !c.is_empty()) {
            None => None,
            Some(token) => Some(decode_continue(token)?),
        };
        let state = self.state();
        let mut items = Vec::new();
        let mut remaining = 0usize;
        let mut last = None;
        for (key, object) in state.list(filter.resource, filter.namespace.as_deref()) {
            if !filter.matches(key, object) {
                continue;
            }
            if let Some((ns, name)) = &after {
                if (key.namespace.as_str(), key.name.as_str()) <= (ns.as_str(), name.as_str()) {
                    continue;
                }
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
                continue;
            }
            let mut item = object.clone();
            // Items of a list carry no kind or apiVersion of their own.
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            last = Some((key.namespace.clone(), key.name.clone()));
            items.push(item);
        }
        let mut metadata = json!({"resourceVersion": state.rv.to_string()});
        if remaining > 0 {
            if let Some((ns, name)) = last {
                metadata["continue"] = json!(encode_continue(&ns, &name));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": target.resource.list_kind(),
            "apiVersion": target.resource.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    pub fn update(&self, target: &Target, name: &str, body: Value) -> Result<Value, ApiError> {
        let namespace = require_namespace(target)?.to_string();
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(body_name) = body.pointer("/metadata/name").and_then(Value::as_str) {
            if body_name != name {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
        }
        let key = Key::new(target.resource, &namespace, name);
        let mut state = self.state();
        let current = state
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&target.resource.qualified(), name))?;
        if let Some(rv) = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
        {
            if Some(rv)
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
            {
                return Err(ApiError::conflict(&target.resource.qualified(), name));
            }
        }
        self.replace(&mut state, &key, &current, body)
    }

    pub fn patch(&self, target: &Target, name: &str, patch: &Value) -> Result<Value, ApiError> {
        let namespace = require_namespace(target)?.to_string();
        let key = Key::new(target.resource, &namespace, name);
        let mut state = self.state();
        let current = state
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&target.resource.qualified(), name))?;
        // A patch that names a resourceVersion is an optimistic-concurrency patch.
        if let Some(rv) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if Some(rv)
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
            {
                return Err(ApiError::conflict(&target.resource.qualified(), name));
            }
        }
        let mut patched = current.clone();
        validate::merge_patch(&mut patched, patch);
        self.replace(&mut state, &key, &current, patched)
    }

    /// The common part of update and patch: immutable fields kept, checks, no-op detection.
    fn replace(
        &self,
        state: &mut State,
        key: &Key,
        current: &Value,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let resource = key.resource;
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generateName",
        ] {
            match current["metadata"].get(field) {
                Some(value) => object["metadata"][field] = value.clone(),
                None => {
                    if let Some(map) = object["metadata"].as_object_mut() {
                        map.remove(field);
                    }
                }
            }
        }
        object["kind"] = json!(resource.kind());
        object["apiVersion"] = json!(resource.api_version());
        if resource.has_status() {
            match current.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
        if resource == Resource::Secret {
            validate::on_create(resource, &mut object, &mut random_suffix)?;
        }
        validate::metadata(resource, &object)?;
        if resource == Resource::Pod {
            validate::pod_update(current, &object)?;
        }
        let mut unchanged = object.clone();
        unchanged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if unchanged
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .is_none()
        {
            if let Some(g) = current["metadata"].get("generation") {
                unchanged["metadata"]["generation"] = g.clone();
            }
        }
        if &unchanged == current {
            return Ok(current.clone());
        }
        if resource != Resource::Pod {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            let spec_changed = current.get("spec") != object.get("spec");
            object["metadata"]["generation"] = json!(if spec_changed {
                generation + 1
            } else {
                generation
            });
        }
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if deleting && no_finalizers && resource != Resource::Pod {
            // The last finalizer is gone: the deletion completes.
            state.put(key.clone(), object);
            let removed = state.remove(key).unwrap_or(Value::Null);
            self.gc.notify_one();
            return Ok(removed);
        }
        Ok(state.put(key.clone(), object))
    }

    pub fn delete(
        self: &Arc<Self>,
        target: &Target,
        name: &str,
        options: &Value,
        query: &HashMap<String, String>,
    ) -> Result<(u16, Value), ApiError> {
        let namespace = require_namespace(target)?.to_string();
        let key = Key::new(target.resource, &namespace, name);
        let grace = query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| options.get("gracePeriodSeconds").and_then(Value::as_i64));
        let mut state = self.state();
        let current = state
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&target.resource.qualified(), name))?;
        check_preconditions(target.resource, name, &current, options)?;
        let (object, gone) = self.delete_locked(&mut state, &key, grace);
        drop(state);
        let object = object.unwrap_or(current);
        let returns_object = matches!(target.resource, Resource::Pod | Resource::Namespace);
        if !gone || returns_object {
            return Ok((200, object));
        }
        let mut details = json!({
            "name": name,
            "kind": target.resource.plural(),
            "uid": object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        });
        if !target.resource.group().is_empty() {
            details["group"] = json!(target.resource.group());
        }
        Ok((
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
        ))
    }

    /// Deletes one object; pods on a node are deleted gracefully (their kubelet stops them
    /// first). Returns the object as it is now and whether it is gone from the store.
    pub fn delete_locked(
        self: &Arc<Self>,
        state: &mut State,
        key: &Key,
        grace: Option<i64>,
    ) -> (Option<Value>, bool) {
        let Some(mut object) = state.get(key).cloned() else {
            return (None, true);
        };
        let uid = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        if key.resource == Resource::Namespace {
            let contents: Vec<Key> = state
                .objects
                .keys()
                .filter(|k| k.resource.namespaced() && k.namespace == key.name)
                .cloned()
                .collect();
            for k in contents {
                self.delete_locked(state, &k, Some(0));
            }
        }
        if key.resource == Resource::Pod {
            let on_node = object
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let phase = object
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Pending");
            let terminal = matches!(phase, "Succeeded" | "Failed");
            let graceful = on_node && !terminal && grace != Some(0);
            if graceful {
                if deleting {
                    return (Some(object), false);
                }
                let seconds = grace
                    .or_else(|| {
                        object
                            .pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
                    .max(0);
                object["metadata"]["deletionTimestamp"] = json!(rfc3339_in(seconds));
                object["metadata"]["deletionGracePeriodSeconds"] = json!(seconds);
                let stored = state.put(key.clone(), object);
                let handled = self.kubelet.as_ref().is_some_and(|k| {
                    k.terminate(&uid, crate::kubelet::Outcome::Delete { grace: seconds })
                });
                if handled {
                    return (Some(stored), false);
                }
                // Without a kubelet, the (imaginary) node stops the containers at once.
                let removed = state.remove(key);
                self.gc.notify_one();
                return (removed, true);
            }
            if let Some(kubelet) = &self.kubelet {
                kubelet.terminate(&uid, crate::kubelet::Outcome::Kill);
            }
        }
        if finalizers {
            if deleting {
                return (Some(object), false);
            }
            object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return (Some(state.put(key.clone(), object)), false);
        }
        let removed = state.remove(key);
        self.gc.notify_one();
        (removed, true)
    }

    pub fn delete_collection(
        self: &Arc<Self>,
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        require_namespace(target)?;
        let filter = Filter::from_query(target, query)?;
        let grace = query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok());
        let mut state = self.state();
        let keys: Vec<Key> = state
            .list(filter.resource, filter.namespace.as_deref())
            .into_iter()
            .filter(|(k, o)| filter.matches(k, o))
            .map(|(k, _)| k.clone())
            .collect();
        let mut items = Vec::new();
        for key in keys {
            if let (Some(object), _) = self.delete_locked(&mut state, &key, grace) {
                items.push(object);
            }
        }
        Ok(json!({
            "kind": target.resource.list_kind(),
            "apiVersion": target.resource.api_version(),
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        }))
    }

    /// One pass of the garbage collector: deletes every object all of whose owners are gone,
    /// until nothing more is orphaned (dependents of dependents).
    pub fn collect_garbage(self: &Arc<Self>) -> usize {
        let mut state = self.state();
        let mut deleted = 0;
        loop {
            let orphans: Vec<Key> = state
                .orphaned_dependents()
                .into_iter()
                .filter(|k| {
                    state
                        .get(k)
                        .is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_none())
                })
                .collect();
            if orphans.is_empty() {
                return deleted;
            }
            for key in orphans {
                self.delete_locked(&mut state, &key, None);
                deleted += 1;
            }
        }
    }
}

fn namespace_exists(state: &State, namespace: &str) -> bool {
    state
        .get(&Key::new(Resource::Namespace, "", namespace))
        .is_some_and(|ns| ns.pointer("/metadata/deletionTimestamp").is_none())
}

fn encode_continue(namespace: &str, name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!([namespace, name])).unwrap_or_default())
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
    let (ns, name): (String, String) = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
    Ok((ns, name))
}
