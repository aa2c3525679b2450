//! The shared server state and the HTTP entry point: authentication, injected faults,
//! request accounting, then dispatch to the API verbs (`api.rs`), watches (`watch.rs`) and
//! the test control API (`control.rs`).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{Query, State as AxumState},
    http::{HeaderMap, Method, Uri},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio::sync::{broadcast, Notify};

use crate::{
    kubelet::Kubelet,
    resource::parse_path,
    status::{json_response, ApiError},
    store::State,
};

/// How a fake API server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Change events kept for watches; a watch resumed from before them gets 410 Expired.
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// When set, every API request needs `Authorization: Bearer TOKEN` (401 otherwise). The
    /// control API under `/_fake/` never does.
    pub token: Option<String>,
    /// Namespaces that exist at start.
    pub namespaces: Vec<String>,
    /// Delay of the garbage collector after a deletion (the real one works in the background).
    pub gc_delay: Duration,
    /// The one node pods are bound to (`spec.nodeName`).
    pub node_name: String,
    /// Run each pod's first container as a local process; `None`: pods only change phase
    /// when the test says so (`/_fake/`).
    pub kubelet: Option<KubeletOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(5),
            token: None,
            namespaces: vec!["default".into(), "kube-system".into()],
            gc_delay: Duration::from_millis(20),
            node_name: "fake-node".into(),
            kubelet: None,
        }
    }
}

/// The process-running kubelet (README "kubelet mode").
#[derive(Debug, Clone, Default)]
pub struct KubeletOptions {
    /// Directories searched first for a container's command (the image's filesystem, as it
    /// were); then the directories of the pod's own `PATH`.
    pub path: Vec<PathBuf>,
    /// Images present on the node; `None`: every image is. A pod with another image stays
    /// Pending with `ErrImagePull`.
    pub images: Option<Vec<String>>,
    /// Where pod directories (volumes, logs) go; a temporary directory when `None`.
    pub root: Option<PathBuf>,
    /// Time between a pod's scheduling and its container's start (the image pull).
    pub start_delay: Duration,
}

/// One injected fault rule.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// HTTP method to match (`GET`, `POST`, ...); any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Path prefix to match, e.g. `/api/v1/namespaces/ci/pods`; any API path when absent.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Match watch requests only (`true`), non-watch only (`false`), or both.
    #[serde(default)]
    pub watch: Option<bool>,
    /// 500, 503, 504, 429, 409, ...
    pub status: u16,
    /// How many matching requests fail; then the rule is gone.
    #[serde(default = "one")]
    pub count: u32,
    /// Sent as `Retry-After` and `details.retryAfterSeconds`.
    #[serde(default)]
    pub retry_after_seconds: Option<u32>,
    /// Carry the request out, then answer with the fault anyway (a response lost after the
    /// change was made, e.g. a timeout between the API server and the client).
    #[serde(default)]
    pub after_processing: bool,
}

fn one() -> u32 {
    1
}

/// Request accounting for tests of client behaviour (QPS, retries).
#[derive(Default)]
pub struct Stats {
    /// By `VERB resource`, e.g. `create pods`, `watch pods`.
    pub by_verb: BTreeMap<String, u64>,
    /// Arrival times of the last non-watch API requests.
    recent: VecDeque<Instant>,
    pub faults_injected: u64,
}

impl Stats {
    const RECENT: usize = 20_000;

    fn count(&mut self, verb: &str, resource: &str) {
        *self
            .by_verb
            .entry(format!("{verb} {resource}"))
            .or_default() += 1;
        if verb != "watch" {
            self.recent.push_back(Instant::now());
            if self.recent.len() > Self::RECENT {
                self.recent.pop_front();
            }
        }
    }

    /// The most non-watch requests seen within any one second.
    pub fn max_per_second(&self) -> usize {
        let times: Vec<Instant> = self.recent.iter().copied().collect();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    pub fn total(&self) -> u64 {
        self.by_verb.values().sum()
    }
}

pub struct Shared {
    pub options: Options,
    state: Mutex<State>,
    pub gc: Notify,
    /// Bumped to end every open watch (`/_fake/watches/drop`).
    pub drop_watches: tokio::sync::watch::Sender<u64>,
    pub faults: Mutex<Vec<Fault>>,
    pub stats: Mutex<Stats>,
    pub open_watches: AtomicUsize,
    pub kubelet: Option<Kubelet>,
}

impl Shared {
    pub fn new(options: Options) -> std::io::Result<Arc<Shared>> {
        let (events, _) = broadcast::channel(4096);
        let kubelet = options.kubelet.clone().map(Kubelet::new).transpose()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(options.history_limit, events)),
            gc: Notify::new(),
            drop_watches: tokio::sync::watch::channel(0).0,
            faults: Mutex::default(),
            stats: Mutex::default(),
            open_watches: AtomicUsize::new(0),
            kubelet,
            options,
        });
        for ns in shared.options.namespaces.clone() {
            let body = serde_json::json!({"metadata": {"name": ns}});
            let target = crate::resource::Target {
                resource: crate::resource::Resource::Namespace,
                namespace: None,
                name: None,
                subresource: None,
            };
            // Names from the options; a bad one is the caller's mistake, reported by panic
            // at start rather than as a confusing 404 later.
            if let Err(e) = shared.create(&target, body) {
                panic!("namespace {ns:?} from Options: {}", e.message);
            }
        }
        Ok(shared)
    }

    /// The store, locked. Never held across an await.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fault_for(&self, method: &Method, path: &str, watch: bool) -> Option<(ApiError, bool)> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let index = faults.iter().position(|f| {
            f.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
                && f.watch.is_none_or(|w| w == watch)
        })?;
        let fault = faults[index].clone();
        faults[index].count = faults[index].count.saturating_sub(1);
        if faults[index].count == 0 {
            faults.remove(index);
        }
        drop(faults);
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .faults_injected += 1;
        Some((
            ApiError::fault(fault.status, fault.retry_after_seconds),
            fault.after_processing,
        ))
    }

    pub fn count(&self, verb: &str, resource: &str) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count(verb, resource);
    }

    pub fn open_watch(&self) {
        self.open_watches.fetch_add(1, Ordering::SeqCst);
    }

    pub fn close_watch(&self) {
        self.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn is_true(query: &HashMap<String, String>, key: &str) -> bool {
    query
        .get(key)
        .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "True"))
}

/// Every request: `/_fake/` goes to the control API; the rest is the Kubernetes API.
pub async fn dispatch(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if let Some(rest) = path.strip_prefix("/_fake/") {
        return crate::control::handle(&shared, &method, rest, &query, &body).await;
    }
    if let Some(token) = &shared.options.token {
        let expected = format!("Bearer {token}");
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    let watch = is_true(&query, "watch");
    let mut lost_response = None;
    if let Some((error, after_processing)) = shared.fault_for(&method, &path, watch) {
        if after_processing {
            lost_response = Some(error);
        } else {
            // A failed attempt is a request all the same (client retry and QPS tests count it).
            if let Some(target) = parse_path(&path) {
                shared.count(
                    crate::api::verb(&method, &target, watch),
                    target.resource.plural(),
                );
            }
            return error.into_response();
        }
    }
    match path.as_str() {
        "/version" => {
            shared.count("get", "version");
            return json_response(
                200,
                &serde_json::json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake-kube",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
                }),
            );
        }
        "/healthz" | "/readyz" | "/livez" => return "ok".into_response(),
        _ => {}
    }
    let Some(target) = parse_path(&path) else {
        return ApiError::no_such_resource().into_response();
    };
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let response = crate::api::handle(shared, method, target, query, &content_type, body).await;
    match lost_response {
        Some(error) => error.into_response(),
        None => response,
    }
}

/// Parses a JSON request body.
pub fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}
