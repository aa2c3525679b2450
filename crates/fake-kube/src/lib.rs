//! `fake-kube`: an in-memory fake Kubernetes API server for tests, faithful to the API for
//! the subset it serves (README.md says what is faithful and what is simplified):
//!
//! * core/v1 namespaces, pods and secrets; coordination.k8s.io/v1 leases;
//! * create / get / list / update (PUT, optimistic concurrency) / merge patch / delete /
//!   deletecollection, label and field selectors, `limit` and `continue`;
//! * watch with resourceVersion, bookmarks and a bounded history (410 Expired when resumed
//!   from before it);
//! * Status objects for errors (`reason`, `code`, `details`), resourceVersion, uid,
//!   creationTimestamp, generation, graceful pod deletion, finalizers, and garbage collection
//!   of objects whose ownerReferences all point at deleted owners;
//! * an optional kubelet that runs each pod's first container as a local process;
//! * a control API under `/_fake/` to drive pod phases, evict, OOM-kill and inject faults.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let kube = fake_kube::FakeKube::start("127.0.0.1:0".parse().unwrap()).await?;
//! println!("API server at {}", kube.url());
//! kube.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod control;
mod kubelet;
mod podstatus;
mod resource;
mod selector;
mod server;
mod status;
mod store;
mod validate;
mod watch;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde_json::Value;

pub use kubelet::rewrite_paths;
pub use server::{Fault, KubeletOptions, Options};

/// A running fake API server. Dropping it stops the server and kills the kubelet's processes.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeKube {
    /// Starts a server with the default [`Options`] (no kubelet, no token).
    pub async fn start(addr: SocketAddr) -> std::io::Result<FakeKube> {
        FakeKube::start_with(addr, Options::default()).await
    }

    pub async fn start_with(addr: SocketAddr, options: Options) -> std::io::Result<FakeKube> {
        let shared = server::Shared::new(options)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(server::dispatch)
            .with_state(shared.clone());
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake-kube server stopped");
            }
        })];
        let gc = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                gc.gc.notified().await;
                tokio::time::sleep(gc.options.gc_delay).await;
                gc.collect_garbage();
            }
        }));
        if shared.kubelet.is_none() {
            let node = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    enforce_deadlines(&node);
                }
            }));
        }
        Ok(FakeKube {
            addr,
            shared,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for this server (one cluster, user and context, all named `fake`), with
    /// the bearer token when the server requires one.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        let user = match &self.shared.options.token {
            Some(token) => format!("    token: {token}\n"),
            None => "    {}\n".to_string(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: fake\n  user:\n{user}contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
            url = self.url(),
        )
    }

    /// The current object (as JSON), if it exists. `resource` is the plural (`pods`,
    /// `secrets`, `leases`, `namespaces`).
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource::Resource::ALL
            .into_iter()
            .find(|r| r.plural() == resource)?;
        self.shared
            .state()
            .get(&store::Key::new(resource, namespace, name))
            .cloned()
    }

    /// Every object of one resource (plural) in `namespace` (`None`: all).
    pub fn objects(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(resource) = resource::Resource::ALL
            .into_iter()
            .find(|r| r.plural() == resource)
        else {
            return Vec::new();
        };
        self.shared
            .state()
            .list(resource, namespace)
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stops the server and the kubelet's processes.
    pub async fn shutdown(mut self) {
        self.stop();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    fn stop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(kubelet) = &self.shared.kubelet {
            kubelet.kill_all();
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Without a kubelet: fail running pods whose `activeDeadlineSeconds` passed.
fn enforce_deadlines(shared: &server::Shared) {
    let mut state = shared.state();
    let now = std::time::SystemTime::now();
    let due: Vec<store::Key> = state
        .list(resource::Resource::Pod, None)
        .into_iter()
        .filter(|(_, pod)| {
            let running = pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
            let deadline = pod
                .pointer("/spec/activeDeadlineSeconds")
                .and_then(Value::as_u64);
            let started = pod
                .pointer("/status/startTime")
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339(t).ok());
            match (running, deadline, started) {
                (true, Some(deadline), Some(started)) => now
                    .duration_since(started)
                    .is_ok_and(|d| d >= Duration::from_secs(deadline)),
                _ => false,
            }
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in due {
        if let Some(mut pod) = state.get(&key).cloned() {
            podstatus::terminated(&mut pod, &podstatus::Ending::deadline_exceeded(137));
            state.put(key, pod);
        }
    }
}
