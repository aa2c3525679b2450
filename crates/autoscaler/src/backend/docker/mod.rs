//! The docker backend: one container per runner on a Docker engine or Podman's
//! Docker-compatible service (docs/docker-backend.md).
//!
//! * Ownership is by label: every container carries `org.forgejo.autoscaler.owner` = the
//!   store's owner id, and only containers with that label are listed, adopted or removed.
//!   An unlabelled container (or one of another autoscaler) is never touched.
//! * The runner's credential goes in as a 0600 file, uploaded into the created container
//!   before it starts; never in its environment or command line.
//! * Removal is explicit (no auto-remove): the exit code and last log lines are read first.
//! * Engine errors carry the engine's message; the reconciler backs off per pool.
//! * A pool may use several engines (`docker_hosts`): each container goes to the engine with
//!   the fewest of the pool's containers (`placement.rs`); a failing engine backs off and the
//!   creation moves on to the next one. An engine that cannot be listed is left out of the
//!   listing and reported through `unlisted`, so that its instances are unknown, not lost.

mod archive;
mod compat;
mod container;
mod create;
mod engine;
mod listing;
mod placement;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bollard::{
    query_parameters::{
        ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    },
    Docker,
};
use futures_util::StreamExt;
use tokio::sync::Notify;

/// Shared with the swarm backend, which runs the same runner on the same kind of engine.
pub(crate) use container::{host_mode_args, host_mode_runner_file, program_name};
pub use container::{labels, VOLUME_DIR, WORK_DIR};
pub(crate) use engine::{describe, is_not_found, is_transport};
use engine::{Engine, Failure};

use super::{Backend, BackendError, BoxFuture, InstanceSpec, ObservedInstance, Removal};
use crate::config::{BackendKind, Config, DockerPoolConfig};

/// Lines of a removed container's log kept in its record.
const LOG_TAIL_LINES: usize = 20;
/// How long one engine's listing may take before it counts as unreachable: a dead `tcp://`
/// engine must not hold up the other engines' listing (and with it the reconciler's tick).
const LIST_TIMEOUT: Duration = Duration::from_secs(20);

pub struct DockerBackend {
    owner_id: String,
    /// Docker settings of each docker pool, by pool name.
    pools: BTreeMap<String, DockerPoolConfig>,
    /// The engine addresses of each docker pool, in the order of its configuration.
    pool_engines: BTreeMap<String, Vec<String>>,
    /// The engines in use, by address (several pools may share one).
    engines: BTreeMap<String, Arc<Engine>>,
    /// Woken when a container exits, so the reconciler reacts at once.
    exited: Arc<Notify>,
    /// Containers (by engine id) a task is waiting on.
    watched: Arc<Mutex<HashSet<String>>>,
    /// Where the instances are, as far as this process knows.
    state: Mutex<State>,
}

/// What the backend remembers between calls. All of it can be lost (a restart): the listing
/// rebuilds `placed`, and what `stale` held is then an ordinary orphan.
#[derive(Default)]
struct State {
    /// The engine of each instance: reserved when placement chooses it, confirmed by a
    /// creation, learnt from a listing.
    placed: HashMap<String, Placed>,
    /// (engine, container) left by a failed creation that could not be removed at the time
    /// (the engine went away): removed when the engine answers again, never reported.
    stale: HashSet<(String, String)>,
    /// Engines the latest listing could not read, with why.
    unread: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Placed {
    On {
        engine: String,
        pool: String,
        /// Set by a successful creation on that engine (not only seen in a listing).
        created: bool,
    },
    /// Every attempt to create it failed and whatever they left is in `stale`: nothing to
    /// remove for the instance itself.
    Nowhere,
}

/// What is stored as the instance's backend reference.
#[derive(serde::Serialize)]
struct BackendRef<'a> {
    engine: &'a str,
    container: &'a str,
}

/// The part of a stored backend reference the reconciler's questions need.
#[derive(serde::Deserialize)]
struct StoredRef {
    engine: String,
}

/// One of our containers as an engine listed it.
struct Found {
    engine: Arc<Engine>,
    client: Docker,
    container_id: String,
}

impl DockerBackend {
    /// The backend for every docker pool of `config`. Connects lazily: an engine that is down
    /// at start fails its pools' creations (with backoff), not the autoscaler.
    pub fn new(config: &Config, owner_id: String, exited: Arc<Notify>) -> DockerBackend {
        let mut pools = BTreeMap::new();
        let mut pool_engines = BTreeMap::new();
        let mut engines = BTreeMap::new();
        for pool in config
            .pools
            .iter()
            .filter(|p| p.backend == BackendKind::Docker)
        {
            let Some(settings) = pool.docker.clone() else {
                continue;
            };
            let addresses = if settings.docker_hosts.is_empty() {
                vec![Engine::address_for(settings.docker_host.as_deref())]
            } else {
                settings.docker_hosts.clone()
            };
            for address in &addresses {
                engines
                    .entry(address.clone())
                    .or_insert_with(|| Arc::new(Engine::new(address.clone())));
            }
            pool_engines.insert(pool.name.clone(), addresses);
            pools.insert(pool.name.clone(), settings);
        }
        DockerBackend {
            owner_id,
            pools,
            pool_engines,
            engines,
            exited,
            watched: Arc::default(),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(message: impl Into<String>) -> BackendError {
        BackendError {
            backend: "docker",
            message: message.into(),
        }
    }

    fn owner_filter(&self, instance: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{}={}", labels::OWNER, self.owner_id)];
        if let Some(id) = instance {
            labels.push(format!("{}={id}", labels::INSTANCE));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// Waits for the container's exit in the background and wakes the reconciler then.
    fn watch(&self, client: Docker, container_id: String) {
        let Ok(mut watched) = self.watched.lock() else {
            return;
        };
        if !watched.insert(container_id.clone()) {
            return;
        }
        let exited = self.exited.clone();
        let watched = self.watched.clone();
        tokio::spawn(async move {
            // Any end of the stream (exit, error, engine gone) is worth a look by the reconciler.
            let _ = client.wait_container(&container_id, None).next().await;
            if let Ok(mut set) = watched.lock() {
                set.remove(&container_id);
            }
            exited.notify_one();
        });
    }

    /// Finds our container of `id`: on its engine when this process knows it, else on every
    /// engine. `Ok(None)` only when every engine asked answered.
    async fn find(&self, id: &str) -> Result<Option<Found>, BackendError> {
        let known = self.state().placed.get(id).cloned();
        let engine = match &known {
            Some(Placed::On { engine, .. }) => self.engines.get(engine).cloned(),
            _ => None,
        };
        if let Some(engine) = engine {
            return self
                .find_on(&engine, id)
                .await
                .map_err(|failure| failure.error);
        }
        let mut failures = Vec::new();
        for engine in self.engines.values() {
            match self.find_on(engine, id).await {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                Err(failure) => failures.push(failure.error.message),
            }
        }
        if failures.is_empty() {
            Ok(None)
        } else {
            Err(Self::err(failures.join("; ")))
        }
    }

    /// Our container of `id` on one engine. An engine backing off because it could not be
    /// reached is not asked (a removal is retried later; it must not wait on a dead engine).
    async fn find_on(&self, engine: &Arc<Engine>, id: &str) -> Result<Option<Found>, Failure> {
        if let Some(left) = engine
            .backing_off_for(Instant::now())
            .filter(|_| engine.is_unreachable())
        {
            return Err(Failure {
                error: Self::err(format!(
                    "engine {} is unreachable (next try in {} s): {}",
                    engine.address,
                    left.as_secs().max(1),
                    engine.last_error()
                )),
                unreachable: true,
            });
        }
        let client = match engine.client().await {
            Ok(client) => client,
            Err(error) => {
                let failure = Failure {
                    error,
                    unreachable: true,
                };
                engine.failed(&failure).await;
                return Err(failure);
            }
        };
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.owner_filter(Some(id))),
            ..Default::default()
        };
        match compat::list_containers(&client, Some(options)).await {
            Ok(list) => Ok(list
                .into_iter()
                .find_map(|c| c.id)
                .map(|container_id| Found {
                    engine: engine.clone(),
                    client,
                    container_id,
                })),
            Err(e) => {
                let failure = engine.failure("listing containers", &e);
                engine.failed(&failure).await;
                Err(failure)
            }
        }
    }

    async fn delete_instance(&self, id: &str, grace: Duration) -> Result<Removal, BackendError> {
        let nowhere = self.state().placed.get(id) == Some(&Placed::Nowhere);
        if nowhere {
            // Its creation failed everywhere; what the attempts left is in `stale`.
            self.state().placed.remove(id);
            return Ok(Removal::default());
        }
        let removal = self.remove_found(id, grace).await;
        if removal.is_ok() {
            self.state().placed.remove(id);
        }
        removal
    }

    async fn remove_found(&self, id: &str, grace: Duration) -> Result<Removal, BackendError> {
        let Some(Found {
            engine,
            client,
            container_id,
        }) = self.find(id).await?
        else {
            return Ok(Removal::default());
        };
        let gone = |e: &bollard::errors::Error| engine::is_not_found(e);
        let inspected = match compat::inspect_container(&client, &container_id).await {
            Ok(i) => Some(i),
            Err(e) if gone(&e) => return Ok(Removal::default()),
            Err(e) => return Err(engine.error("inspecting the container", &e)),
        };
        let running = inspected
            .as_ref()
            .and_then(|i| i.state.as_ref())
            .and_then(|s| s.running)
            .unwrap_or(false);
        let mut stopped_by_us = false;
        if running {
            let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
            let stop = StopContainerOptions {
                t: Some(seconds),
                ..Default::default()
            };
            match client.stop_container(&container_id, Some(stop)).await {
                Ok(()) => stopped_by_us = true,
                Err(e) if gone(&e) => return Ok(Removal::default()),
                // 304: already stopped in between.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304, ..
                }) => {}
                Err(e) => return Err(engine.error("stopping the container", &e)),
            }
        }
        let state = compat::inspect_container(&client, &container_id)
            .await
            .ok()
            .and_then(|i| i.state);
        let started = state
            .as_ref()
            .and_then(|s| s.started_at.as_deref())
            .is_some_and(|t| !t.starts_with("0001-"));
        let exit_code = state
            .as_ref()
            .filter(|_| started)
            .and_then(|s| s.exit_code)
            .and_then(|c| i32::try_from(c).ok());
        let log_tail = log_tail(&client, &container_id).await;
        let remove = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match client.remove_container(&container_id, Some(remove)).await {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(engine.error("removing the container", &e)),
        }
        if let Ok(mut watched) = self.watched.lock() {
            watched.remove(&container_id);
        }
        tracing::debug!(instance = %id, engine = %engine.address, ?exit_code, stopped_by_us, "runner container removed");
        Ok(Removal {
            exit_code,
            log_tail,
            log_path: None,
            stopped_by_us,
        })
    }
}

impl Backend for DockerBackend {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn work_dir(&self, _id: &str) -> PathBuf {
        PathBuf::from(container::WORK_DIR)
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

    fn unlisted(&self, backend_ref: &str) -> bool {
        serde_json::from_str::<StoredRef>(backend_ref)
            .is_ok_and(|r| self.state().unread.contains_key(&r.engine))
    }

    fn unlisted_parts(&self) -> Vec<String> {
        self.state().unread.values().cloned().collect()
    }
}

/// The last lines of the container's output (stdout and stderr).
async fn log_tail(client: &Docker, container_id: &str) -> Option<String> {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: LOG_TAIL_LINES.to_string(),
        ..Default::default()
    };
    let mut stream = client.logs(container_id, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
        if text.len() > 64 * 1024 {
            break;
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let tail = lines[start..].join("\n");
    (!tail.is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests;
