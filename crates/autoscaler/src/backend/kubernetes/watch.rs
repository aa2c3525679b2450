//! The pod cache: one list-then-watch loop per namespace keeps the autoscaler's Pods in memory,
//! so that the reconciler's listing every tick costs the API server nothing.
//!
//! * List (with the owner label selector), then watch from the list's resourceVersion with
//!   bookmarks; a watch that ends (server timeout, dropped connection) resumes from the last
//!   version seen, events or bookmarks.
//! * 410 Gone (the version fell out of the server's history) or any error: list again (after
//!   a backoff of 1 s doubling to 30 s on errors). Every `resync` the watch is replaced by a
//!   fresh list anyway, so a missed event cannot linger.
//! * The cache answers only while it is fresh: synced once, and watching now or successful
//!   within the last 30 s. Otherwise the listing fails, and the reconciler treats the
//!   instances as unknown (never as missing).
//! * A Pod that ends or disappears wakes the reconciler at once.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{ListParams, WatchEvent, WatchParams},
    Api,
};
use tokio::{sync::Notify, time::Instant};

use super::{
    client::{describe, status_code, Connection},
    status::is_terminal,
};

/// How long one watch request lasts (the server ends it; we resume).
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(290);
/// Without a watch and without success for this long, the cache is not trusted.
const STALE_AFTER: Duration = Duration::from_secs(30);
/// Final states of deleted Pods kept for their removal records.
const DELETED_KEPT: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Default)]
struct CacheState {
    pods: BTreeMap<String, Pod>,
    /// (uid, final object) of recently deleted Pods.
    deleted: VecDeque<(String, Pod)>,
    synced: bool,
    watching: bool,
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

pub struct PodCache {
    pub namespace: String,
    state: Mutex<CacheState>,
    changed: Notify,
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

impl PodCache {
    pub fn new(namespace: &str) -> PodCache {
        PodCache {
            namespace: namespace.to_string(),
            state: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Every cached Pod, or why the cache cannot be trusted now.
    pub fn snapshot(&self) -> Result<Vec<Pod>, String> {
        let state = self.state();
        let fresh = state.watching || state.last_ok.is_some_and(|t| t.elapsed() < STALE_AFTER);
        if state.synced && fresh {
            return Ok(state.pods.values().cloned().collect());
        }
        Err(format!(
            "the pods of namespace {} are not known right now: {}",
            self.namespace,
            state
                .last_error
                .clone()
                .unwrap_or_else(|| "not listed yet".into())
        ))
    }

    /// The final object of a deleted Pod, if it was seen going.
    pub fn deleted(&self, pod_uid: &str) -> Option<Pod> {
        self.state()
            .deleted
            .iter()
            .find(|(u, _)| u == pod_uid)
            .map(|(_, p)| p.clone())
    }

    /// A Pod just created: known before its watch event arrives.
    pub fn insert_created(&self, pod: Pod) {
        let mut state = self.state();
        let key = name(&pod);
        state.pods.entry(key).or_insert(pod);
    }

    /// Waits until the first list succeeded; `false` after `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.state().synced {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.state().synced;
            }
        }
    }

    /// Waits until the Pod `name` with `pod_uid` is no longer there; `false` after `timeout`.
    pub async fn wait_gone(&self, name: &str, pod_uid: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let present = self
                .state()
                .pods
                .get(name)
                .is_some_and(|p| uid(p) == pod_uid);
            if !present {
                return true;
            }
            // Events may be missed while disconnected; look again now and then regardless.
            let step = (Instant::now() + Duration::from_secs(1)).min(deadline);
            let _ = tokio::time::timeout_at(step, notified).await;
            if Instant::now() >= deadline {
                return self
                    .state()
                    .pods
                    .get(name)
                    .is_none_or(|p| uid(p) != pod_uid);
            }
        }
    }

    /// Replaces everything with a fresh listing; `true` when a Pod ended or vanished.
    fn replace(&self, pods: Vec<Pod>) -> bool {
        let mut state = self.state();
        let fresh: BTreeMap<String, Pod> = pods.into_iter().map(|p| (name(&p), p)).collect();
        let mut wake = false;
        for (key, old) in &state.pods {
            match fresh.get(key) {
                None => wake = true,
                Some(new) => wake |= is_terminal(new) && !is_terminal(old),
            }
        }
        wake |= fresh
            .values()
            .any(|p| is_terminal(p) && !state.pods.contains_key(&name(p)));
        state.pods = fresh;
        state.synced = true;
        state.last_ok = Some(Instant::now());
        state.last_error = None;
        drop(state);
        self.changed();
        wake
    }

    /// One watch event's object; `true` when the Pod just ended.
    fn upsert(&self, pod: Pod) -> bool {
        let mut state = self.state();
        let key = name(&pod);
        let was_terminal = state.pods.get(&key).is_some_and(is_terminal);
        let wake = is_terminal(&pod) && !was_terminal;
        state.pods.insert(key, pod);
        state.last_ok = Some(Instant::now());
        drop(state);
        self.changed();
        wake
    }

    fn remove(&self, pod: Pod) {
        let mut state = self.state();
        let key = name(&pod);
        state.pods.remove(&key);
        state.deleted.push_back((uid(&pod).to_string(), pod));
        while state.deleted.len() > DELETED_KEPT {
            state.deleted.pop_front();
        }
        state.last_ok = Some(Instant::now());
        drop(state);
        self.changed();
    }

    fn touch(&self) {
        self.state().last_ok = Some(Instant::now());
    }

    fn set_watching(&self, watching: bool) {
        let mut state = self.state();
        state.watching = watching;
        if watching {
            state.last_ok = Some(Instant::now());
        }
    }

    /// Records a failure; returns whether the cache was fine until now (to log once).
    fn failed(&self, error: String) -> bool {
        let mut state = self.state();
        state.watching = false;
        let first = state.last_error.is_none();
        state.last_error = Some(error);
        first
    }
}

/// How one list-and-watch round ended without an error.
enum Round {
    /// Time for the periodic full list.
    Resync,
    /// 410: the watch's version is too old; list again at once.
    Expired,
}

/// Runs the cache's list-and-watch loop forever (the backend aborts it when dropped).
pub async fn run(
    cache: Arc<PodCache>,
    connection: Arc<Connection>,
    selector: String,
    exited: Arc<Notify>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match round(&cache, &connection, &selector, &exited).await {
            Ok(Round::Resync) => {
                backoff = Duration::from_secs(1);
                tracing::debug!(namespace = %cache.namespace, "pod cache: periodic resync");
            }
            Ok(Round::Expired) => {
                backoff = Duration::from_secs(1);
                tracing::debug!(namespace = %cache.namespace, "pod cache: watch version expired (410); listing again");
            }
            Err(e) => {
                if cache.failed(e.clone()) {
                    tracing::warn!(namespace = %cache.namespace, error = %e, "cannot list or watch runner pods; retrying");
                } else {
                    tracing::debug!(namespace = %cache.namespace, error = %e, "cannot list or watch runner pods; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn round(
    cache: &PodCache,
    connection: &Connection,
    selector: &str,
    exited: &Notify,
) -> Result<Round, String> {
    let client = connection.client().await.map_err(|e| e.message)?;
    let api: Api<Pod> = Api::namespaced(client, &cache.namespace);
    let params = ListParams::default().labels(selector);
    let list = connection
        .call("list pods", || api.list(&params))
        .await
        .map_err(|e| format!("listing pods: {}", describe(&e)))?;
    let mut version = list.metadata.resource_version.clone().unwrap_or_default();
    let recovered = cache.state().last_error.is_some();
    if cache.replace(list.items) {
        exited.notify_one();
    }
    if recovered {
        tracing::info!(namespace = %cache.namespace, "runner pods listed again");
    }
    let resync_at = Instant::now() + connection.settings().resync;
    loop {
        let now = Instant::now();
        if now >= resync_at {
            return Ok(Round::Resync);
        }
        let seconds = (resync_at - now).min(WATCH_TIMEOUT).as_secs().max(1);
        let params = WatchParams::default()
            .labels(selector)
            .timeout(u32::try_from(seconds).unwrap_or(290));
        connection.limiter.acquire().await;
        let stream = match api.watch(&params, &version).await {
            Ok(stream) => stream,
            Err(e) if status_code(&e) == Some(410) => return Ok(Round::Expired),
            Err(e) => return Err(format!("watching pods: {}", describe(&e))),
        };
        cache.set_watching(true);
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = match stream.try_next().await {
                Ok(Some(event)) => event,
                // The server ended the watch (its timeout, or a dropped connection): resume.
                Ok(None) => break,
                Err(e) => {
                    cache.set_watching(false);
                    return Err(format!("watching pods: {}", describe(&e)));
                }
            };
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    if let Some(v) = &pod.metadata.resource_version {
                        version = v.clone();
                    }
                    if cache.upsert(pod) {
                        exited.notify_one();
                    }
                }
                WatchEvent::Deleted(pod) => {
                    if let Some(v) = &pod.metadata.resource_version {
                        version = v.clone();
                    }
                    cache.remove(pod);
                    exited.notify_one();
                }
                WatchEvent::Bookmark(bookmark) => {
                    version = bookmark.metadata.resource_version;
                    cache.touch();
                }
                WatchEvent::Error(status) if status.code == 410 => {
                    cache.set_watching(false);
                    return Ok(Round::Expired);
                }
                WatchEvent::Error(status) => {
                    cache.set_watching(false);
                    return Err(format!(
                        "watching pods: {} ({} {})",
                        status.message, status.code, status.reason
                    ));
                }
            }
        }
        cache.set_watching(false);
    }
}
