//! The kubernetes backend: one Pod per runner, its credentials in a Secret the Pod owns
//! (docs/kubernetes-backend.md).
//!
//! * Ownership is by label: every Pod and Secret carries `org.forgejo.autoscaler.owner` = the
//!   store's owner id; only those are listed, adopted or removed. The instance id is in an
//!   annotation (labels are limited to 63 characters) and, when it fits, a label.
//! * Order of creation: the Pod first, then the Secret with an ownerReference to the Pod's
//!   uid. The Pod cannot start before the Secret exists (the kubelet waits for its volume), and
//!   whoever deletes the Pod (we, an admin, the namespace's deletion) takes the Secret with it
//!   through Kubernetes' garbage collector: no Secret outlives its Pod, and a crash between the
//!   two steps leaves a Pod that the restart removes (its record is `starting`).
//! * Observation is a watch-backed cache per namespace (`watch.rs`); every API request goes
//!   through one token bucket (`[kubernetes] qps`, `burst`) with retries of 429 and 5xx
//!   (`client.rs`).
//! * Removal reads the exit code and the last log lines, deletes the Pod (gracefully when it
//!   still runs, with a uid precondition), waits until it is gone, and deletes the Secret
//!   without waiting for the garbage collector. Evictions, OOM kills and the deadline backstop
//!   are named in the removal's detail (`status.rs`).

mod client;
mod pod;
mod status;
#[cfg(test)]
mod tests;
mod watch;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    api::{DeleteParams, LogParams, PostParams, Preconditions},
    Api,
};
use tokio::sync::Notify;

pub use pod::{pod_name, secret_name, WORK_DIR};

use super::{Backend, BackendError, BoxFuture, InstanceSpec, ObservedInstance, Removal};
use crate::{
    backend::docker::labels,
    config::{BackendKind, Config, KubernetesPoolConfig, Timeouts},
};
use client::{describe, err, is_not_found, status_code, Connection};
use watch::PodCache;

/// Lines of a removed runner's log kept in its record.
const LOG_TAIL_LINES: i64 = 20;
/// How long a removal waits for a Pod to go, beyond its grace period.
const GONE_MARGIN: Duration = Duration::from_secs(30);

struct PoolSettings {
    pod: KubernetesPoolConfig,
    namespace: String,
    timeouts: Timeouts,
}

pub struct KubernetesBackend {
    owner_id: String,
    pools: BTreeMap<String, PoolSettings>,
    connection: Arc<Connection>,
    /// One cache (and watch) per namespace in use.
    caches: BTreeMap<String, Arc<PodCache>>,
    exited: Arc<Notify>,
    /// The watch tasks, started on first use (a tokio runtime is needed).
    watchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Whether a caller already waited for the first listing (later callers do not wait: a
    /// cluster that cannot be reached must not slow every tick down).
    waited: std::sync::atomic::AtomicBool,
}

/// What is stored as the instance's backend reference.
#[derive(serde::Serialize)]
struct BackendRef<'a> {
    namespace: &'a str,
    pod: &'a str,
    uid: &'a str,
}

impl KubernetesBackend {
    /// The backend for every kubernetes pool of `config`. Connects lazily: a cluster that is
    /// unreachable at start fails its pools' creations (with backoff), not the autoscaler.
    pub fn new(config: &Config, owner_id: String, exited: Arc<Notify>) -> KubernetesBackend {
        let mut pools = BTreeMap::new();
        let mut caches = BTreeMap::new();
        for pool in config
            .pools
            .iter()
            .filter(|p| p.backend == BackendKind::Kubernetes)
        {
            let Some(settings) = pool.kubernetes.clone() else {
                continue;
            };
            let namespace = settings
                .namespace
                .clone()
                .unwrap_or_else(|| config.kubernetes.namespace.clone());
            caches
                .entry(namespace.clone())
                .or_insert_with(|| Arc::new(PodCache::new(&namespace)));
            pools.insert(
                pool.name.clone(),
                PoolSettings {
                    pod: settings,
                    namespace,
                    timeouts: pool.timeouts,
                },
            );
        }
        KubernetesBackend {
            owner_id,
            pools,
            connection: Arc::new(Connection::new(config.kubernetes.clone())),
            caches,
            exited,
            watchers: Mutex::default(),
            waited: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn ensure_watching(&self) {
        let Ok(mut watchers) = self.watchers.lock() else {
            return;
        };
        if !watchers.is_empty() {
            return;
        }
        for cache in self.caches.values() {
            watchers.push(tokio::spawn(watch::run(
                cache.clone(),
                self.connection.clone(),
                pod::owner_selector(&self.owner_id),
                self.exited.clone(),
            )));
        }
    }

    /// The caches, after waiting (once, up to the request timeout) for their first listing.
    async fn synced_caches(&self) -> Vec<&Arc<PodCache>> {
        self.ensure_watching();
        if !self.waited.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let timeout = self.connection.settings().request_timeout;
            for cache in self.caches.values() {
                cache.wait_synced(timeout).await;
            }
        }
        self.caches.values().collect()
    }

    async fn pods_api(&self, namespace: &str) -> Result<Api<Pod>, BackendError> {
        Ok(Api::namespaced(self.connection.client().await?, namespace))
    }

    async fn secrets_api(&self, namespace: &str) -> Result<Api<Secret>, BackendError> {
        Ok(Api::namespaced(self.connection.client().await?, namespace))
    }

    fn is_ours(&self, pod: &Pod, id: Option<&str>) -> bool {
        let owner = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::OWNER));
        owner == Some(&self.owner_id) && id.is_none_or(|id| instance_of(pod) == Some(id))
    }

    async fn create_instance(&self, mut spec: InstanceSpec) -> Result<String, BackendError> {
        let pool = self
            .pools
            .get(&spec.pool)
            .ok_or_else(|| err(format!("pool {:?} has no kubernetes settings", spec.pool)))?;
        self.ensure_watching();
        for file in spec
            .files
            .iter_mut()
            .filter(|f| f.name == crate::provision::RUNNER_FILE)
        {
            file.contents =
                crate::backend::docker::host_mode_runner_file(&file.contents).map_err(err)?;
        }
        let wanted = pod::pod(
            &spec,
            &pool.pod,
            &pool.namespace,
            &self.owner_id,
            &pool.timeouts,
        )
        .map_err(err)?;
        let name = pod::pod_name(&spec.id);
        let pods = self.pods_api(&pool.namespace).await?;
        let post = PostParams::default();
        let created = match self
            .connection
            .call("create pod", || pods.create(&post, &wanted))
            .await
        {
            Ok(pod) => pod,
            // A retried create whose first attempt did reach the server: ours if it says so.
            Err(e) if status_code(&e) == Some(409) => {
                let existing = self
                    .connection
                    .call("get pod", || pods.get(&name))
                    .await
                    .map_err(|e| {
                        err(format!(
                            "pod {name} exists but cannot be read: {}",
                            describe(&e)
                        ))
                    })?;
                if !self.is_ours(&existing, Some(&spec.id)) {
                    return Err(err(format!(
                        "a pod named {name} already exists in namespace {} and is not this instance's; remove it",
                        pool.namespace
                    )));
                }
                existing
            }
            Err(e) => {
                return Err(err(format!(
                    "creating pod {name} in namespace {}: {}",
                    pool.namespace,
                    describe(&e)
                )))
            }
        };
        let uid = created.metadata.uid.clone().unwrap_or_default();
        if let Err(e) = self.create_secret(&spec, &created, &pool.namespace).await {
            // The Pod waits for a Secret that will not come: remove it now (the record's
            // removal would too, but sooner is cleaner).
            let now = DeleteParams::default().grace_period(0);
            let _ = self
                .connection
                .call("delete pod", || pods.delete(&name, &now))
                .await;
            return Err(e);
        }
        if let Some(cache) = self.caches.get(&pool.namespace) {
            cache.insert_created(created);
        }
        tracing::debug!(instance = %spec.id, namespace = %pool.namespace, pod = %name, "runner pod created");
        Ok(serde_json::to_string(&BackendRef {
            namespace: &pool.namespace,
            pod: &name,
            uid: &uid,
        })
        .unwrap_or_default())
    }

    async fn create_secret(
        &self,
        spec: &InstanceSpec,
        owner: &Pod,
        namespace: &str,
    ) -> Result<(), BackendError> {
        let secret = pod::secret(spec, owner, &self.owner_id);
        let name = secret.metadata.name.clone().unwrap_or_default();
        let owner_uid = owner.metadata.uid.clone().unwrap_or_default();
        let secrets = self.secrets_api(namespace).await?;
        let post = PostParams::default();
        let delete = DeleteParams::default();
        for attempt in 0..2 {
            match self
                .connection
                .call("create secret", || secrets.create(&post, &secret))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if status_code(&e) == Some(409) => {
                    let existing = self
                        .connection
                        .call("get secret", || secrets.get(&name))
                        .await
                        .map_err(|e| {
                            err(format!(
                                "secret {name} exists but cannot be read: {}",
                                describe(&e)
                            ))
                        })?;
                    if pod::owned_by(&existing, &owner_uid) {
                        return Ok(());
                    }
                    // Left by an earlier Pod of the same name, before the garbage collector
                    // got to it: replace it once.
                    if attempt == 0 {
                        let _ = self
                            .connection
                            .call("delete secret", || secrets.delete(&name, &delete))
                            .await;
                        continue;
                    }
                    return Err(err(format!(
                        "secret {name} in namespace {namespace} exists and belongs to another pod"
                    )));
                }
                // The Status of a refused Secret names fields, never their values.
                Err(e) => {
                    return Err(err(format!(
                        "creating the credential secret {name} in namespace {namespace}: {}",
                        describe(&e)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Our Pod of instance `id`: from the caches, else by its name (an instance whose Pod
    /// the cache has not seen yet). `Ok(None)` only when every namespace answered.
    async fn find(&self, id: &str) -> Result<Option<(Arc<PodCache>, Pod)>, BackendError> {
        let name = pod::pod_name(id);
        for cache in self.synced_caches().await {
            if let Ok(pods) = cache.snapshot() {
                if let Some(found) = pods.into_iter().find(|p| self.is_ours(p, Some(id))) {
                    return Ok(Some((cache.clone(), found)));
                }
            }
            let api = self.pods_api(&cache.namespace).await?;
            match self.connection.call("get pod", || api.get(&name)).await {
                Ok(found) if self.is_ours(&found, Some(id)) => {
                    return Ok(Some((cache.clone(), found)))
                }
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(err(format!(
                        "looking up pod {name} in namespace {}: {}",
                        cache.namespace,
                        describe(&e)
                    )))
                }
            }
        }
        Ok(None)
    }

    async fn delete_instance(&self, id: &str, grace: Duration) -> Result<Removal, BackendError> {
        let Some((cache, found)) = self.find(id).await? else {
            // No Pod: its Secret may still be there (the collector is asynchronous).
            for cache in self.caches.values() {
                self.delete_secret(&cache.namespace, &secret_name(&pod::pod_name(id)))
                    .await?;
            }
            return Ok(Removal::default());
        };
        let namespace = cache.namespace.clone();
        let name = found.metadata.name.clone().unwrap_or_default();
        let uid = found.metadata.uid.clone().unwrap_or_default();
        let running = !status::is_terminal(&found);
        let pods = self.pods_api(&namespace).await?;
        // Logs first: they go with the Pod.
        let log_params = LogParams {
            container: Some(pod::CONTAINER.into()),
            tail_lines: Some(LOG_TAIL_LINES),
            ..Default::default()
        };
        let log = self
            .connection
            .call("read pod log", || pods.logs(&name, &log_params))
            .await
            .ok()
            .map(|text| text.trim_end().to_string())
            .filter(|text| !text.is_empty());
        let seconds = if running { grace.as_secs().max(1) } else { 0 };
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(seconds).unwrap_or(u32::MAX)),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self
            .connection
            .call("delete pod", || pods.delete(&name, &params))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            // The uid precondition failed: a different Pod has this name now; ours is gone.
            Err(e) if status_code(&e) == Some(409) => {}
            Err(e) => {
                return Err(err(format!(
                    "deleting pod {name} in namespace {namespace}: {}",
                    describe(&e)
                )))
            }
        }
        let wait = Duration::from_secs(seconds) + GONE_MARGIN;
        if !cache.wait_gone(&name, &uid, wait).await {
            // The cache may be behind (watch down): ask the server before giving up.
            match self.connection.call("get pod", || pods.get(&name)).await {
                Err(e) if is_not_found(&e) => {}
                Ok(p) if p.metadata.uid.as_deref() != Some(uid.as_str()) => {}
                _ => {
                    return Err(err(format!(
                        "pod {name} in namespace {namespace} is still terminating after {wait:?}"
                    )))
                }
            }
        }
        self.delete_secret(&namespace, &secret_name(&name)).await?;
        // The final state, as the watch saw the Pod go (its exit code after our SIGTERM).
        let last = cache.deleted(&uid).unwrap_or(found);
        let exit_code = match status::instance_status(&last) {
            super::InstanceStatus::Exited { code } => code,
            super::InstanceStatus::Running => status::runner_exit_code(&last),
        };
        let detail = status::cause(&last);
        let log_tail = match (detail, log) {
            (Some(d), Some(l)) => Some(format!("{d}\n{l}")),
            (Some(d), None) => Some(d),
            (None, l) => l,
        };
        tracing::debug!(instance = %id, namespace = %namespace, pod = %name, ?exit_code, stopped_by_us = running, "runner pod removed");
        Ok(Removal {
            exit_code,
            log_tail,
            log_path: None,
            stopped_by_us: running,
        })
    }

    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<(), BackendError> {
        let secrets = self.secrets_api(namespace).await?;
        let params = DeleteParams::default();
        match self
            .connection
            .call("delete secret", || secrets.delete(name, &params))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(err(format!(
                "deleting secret {name} in namespace {namespace}: {}",
                describe(&e)
            ))),
        }
    }

    async fn list_instances(&self) -> Result<Vec<ObservedInstance>, BackendError> {
        let mut found = Vec::new();
        for cache in self.synced_caches().await {
            let pods = cache.snapshot().map_err(err)?;
            for p in pods {
                // The watch selects by owner; check again so nothing else is ever handled.
                if !self.is_ours(&p, None) {
                    continue;
                }
                let Some(id) = instance_of(&p) else { continue };
                let name = p.metadata.name.clone().unwrap_or_default();
                let uid = p.metadata.uid.clone().unwrap_or_default();
                found.push(ObservedInstance {
                    id: id.to_string(),
                    pool: p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(labels::POOL))
                        .cloned(),
                    status: status::instance_status(&p),
                    backend_ref: serde_json::to_string(&BackendRef {
                        namespace: &cache.namespace,
                        pod: &name,
                        uid: &uid,
                    })
                    .unwrap_or_default(),
                });
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }
}

/// The instance id of one of our Pods: its annotation, else its label.
fn instance_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::INSTANCE))
        .or_else(|| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::INSTANCE))
        })
        .map(String::as_str)
}

impl Drop for KubernetesBackend {
    fn drop(&mut self) {
        if let Ok(watchers) = self.watchers.lock() {
            for task in watchers.iter() {
                task.abort();
            }
        }
    }
}

impl Backend for KubernetesBackend {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn work_dir(&self, _id: &str) -> PathBuf {
        PathBuf::from(WORK_DIR)
    }

    fn create(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(self.create_instance(spec))
    }

    fn delete<'a>(
        &'a self,
        id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<Removal, BackendError>> {
        Box::pin(self.delete_instance(id, grace))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, BackendError>> {
        Box::pin(self.list_instances())
    }
}
