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

mod archive;
mod compat;
mod container;
mod engine;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bollard::{
    models::ContainerSummaryStateEnum,
    query_parameters::{
        CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
        RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions,
    },
    Docker,
};
use futures_util::StreamExt;
use tokio::sync::Notify;

pub use container::{labels, VOLUME_DIR, WORK_DIR};
/// Shared with the swarm backend, which runs the same runner on the same kind of engine.
pub(crate) use container::{host_mode_args, host_mode_runner_file, program_name};
pub(crate) use engine::{describe, is_not_found, is_transport};
use engine::Engine;

use super::{
    Backend, BackendError, BoxFuture, InstanceSpec, InstanceStatus, ObservedInstance, Removal,
};
use crate::config::{BackendKind, Config, DockerPoolConfig, PullPolicy};

/// Lines of a removed container's log kept in its record.
const LOG_TAIL_LINES: usize = 20;

pub struct DockerBackend {
    owner_id: String,
    /// Docker settings of each docker pool, by pool name.
    pools: BTreeMap<String, DockerPoolConfig>,
    /// The engines in use, by address (several pools may share one).
    engines: BTreeMap<String, Arc<Engine>>,
    /// Woken when a container exits, so the reconciler reacts at once.
    exited: Arc<Notify>,
    /// Containers (by engine id) a task is waiting on.
    watched: Arc<Mutex<HashSet<String>>>,
}

/// What is stored as the instance's backend reference.
#[derive(serde::Serialize)]
struct BackendRef<'a> {
    engine: &'a str,
    container: &'a str,
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
        let mut engines = BTreeMap::new();
        for pool in config
            .pools
            .iter()
            .filter(|p| p.backend == BackendKind::Docker)
        {
            let Some(settings) = pool.docker.clone() else {
                continue;
            };
            let address = Engine::address_for(settings.docker_host.as_deref());
            engines
                .entry(address.clone())
                .or_insert_with(|| Arc::new(Engine::new(address)));
            pools.insert(pool.name.clone(), settings);
        }
        DockerBackend {
            owner_id,
            pools,
            engines,
            exited,
            watched: Arc::default(),
        }
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

    async fn create_instance(&self, mut spec: InstanceSpec) -> Result<String, BackendError> {
        let pool = self
            .pools
            .get(&spec.pool)
            .ok_or_else(|| Self::err(format!("pool {:?} has no docker settings", spec.pool)))?;
        let engine = self
            .engines
            .get(&Engine::address_for(pool.docker_host.as_deref()))
            .ok_or_else(|| Self::err(format!("no engine for pool {:?}", spec.pool)))?
            .clone();
        for file in spec
            .files
            .iter_mut()
            .filter(|f| f.name == crate::provision::RUNNER_FILE)
        {
            file.contents = container::host_mode_runner_file(&file.contents).map_err(Self::err)?;
        }
        let client = engine.client().await?;
        let result = self.start_container(&engine, &client, &spec, pool).await;
        if let Err(e) = &result {
            if e.message.contains("cannot reach") {
                engine.reset().await;
            }
        }
        result
    }

    async fn start_container(
        &self,
        engine: &Arc<Engine>,
        client: &Docker,
        spec: &InstanceSpec,
        pool: &DockerPoolConfig,
    ) -> Result<String, BackendError> {
        ensure_image(engine, client, &pool.image, pool.pull_policy).await?;
        let body = container::create_body(spec, pool, &self.owner_id);
        let options = CreateContainerOptions {
            name: Some(container::container_name(&spec.id)),
            ..Default::default()
        };
        let created = client
            .create_container(Some(options), body)
            .await
            .map_err(|e| engine.error(&format!("creating the container of {}", spec.id), &e))?;
        // The credential file, before the runner can look for it. A failure leaves a created
        // (never started) container: the reconciler removes it with the instance.
        // The file must belong to the user the runner runs as: the pool's `user`, else the
        // image's USER. A numeric one (or none: root) goes into the archive directly; only a
        // name needs the engine's copyUIDGID lookup, which fails in images without
        // /etc/passwd (busybox) even for "0:0".
        let image_user = match &pool.user {
            Some(user) => Some(user.clone()),
            None => client
                .inspect_image(&pool.image)
                .await
                .ok()
                .and_then(|image| image.config)
                .and_then(|config| config.user)
                .filter(|user| !user.is_empty()),
        };
        let owner = match image_user.as_deref() {
            None => Some(archive::Owner { uid: 0, gid: 0 }),
            Some(user) => container::numeric_owner(Some(user)),
        };
        let tar = archive::work_dir_archive(
            container::WORK_DIR_NAME,
            &spec.files,
            owner.unwrap_or_default(),
        )
        .map_err(Self::err)?;
        let upload = UploadToContainerOptions {
            path: container::VOLUME_DIR.to_string(),
            copy_uidgid: owner.is_none().then(|| "1".to_string()),
            ..Default::default()
        };
        client
            .upload_to_container(&created.id, Some(upload), bollard::body_full(tar.into()))
            .await
            .map_err(|e| engine.error("writing the runner's credential into the container", &e))?;
        client
            .start_container(&created.id, None)
            .await
            .map_err(|e| engine.error(&format!("starting the container of {}", spec.id), &e))?;
        self.watch(client.clone(), created.id.clone());
        tracing::debug!(instance = %spec.id, engine = %engine.address, container = %created.id, "runner container started");
        Ok(serde_json::to_string(&BackendRef {
            engine: &engine.address,
            container: &created.id,
        })
        .unwrap_or_default())
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

    /// Finds our container of `id` on the engines. `Ok(None)` only when every engine answered.
    async fn find(&self, id: &str) -> Result<Option<Found>, BackendError> {
        let mut failures = Vec::new();
        for engine in self.engines.values() {
            let client = match engine.client().await {
                Ok(client) => client,
                Err(e) => {
                    failures.push(e.message);
                    continue;
                }
            };
            let options = ListContainersOptions {
                all: true,
                filters: Some(self.owner_filter(Some(id))),
                ..Default::default()
            };
            match compat::list_containers(&client, Some(options)).await {
                Ok(list) => {
                    if let Some(container_id) = list.into_iter().find_map(|c| c.id) {
                        return Ok(Some(Found {
                            engine: engine.clone(),
                            client,
                            container_id,
                        }));
                    }
                }
                Err(e) => {
                    if engine::is_transport(&e) {
                        engine.reset().await;
                    }
                    failures.push(engine.error("listing containers", &e).message);
                }
            }
        }
        if failures.is_empty() {
            Ok(None)
        } else {
            Err(Self::err(failures.join("; ")))
        }
    }

    async fn delete_instance(&self, id: &str, grace: Duration) -> Result<Removal, BackendError> {
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

    async fn list_instances(&self) -> Result<Vec<ObservedInstance>, BackendError> {
        let mut found = Vec::new();
        for engine in self.engines.values() {
            let client = engine.client().await?;
            let options = ListContainersOptions {
                all: true,
                filters: Some(self.owner_filter(None)),
                ..Default::default()
            };
            let list = match compat::list_containers(&client, Some(options)).await {
                Ok(list) => list,
                Err(e) => {
                    if engine::is_transport(&e) {
                        engine.reset().await;
                    }
                    return Err(engine.error("listing containers", &e));
                }
            };
            for summary in list {
                let labels = summary.labels.clone().unwrap_or_default();
                // The engine filtered by owner; check again so that nothing else is ever handled.
                if labels.get(labels::OWNER) != Some(&self.owner_id) {
                    continue;
                }
                let (Some(id), Some(container_id)) =
                    (labels.get(labels::INSTANCE), summary.id.clone())
                else {
                    continue;
                };
                let status = match summary.state {
                    Some(ContainerSummaryStateEnum::RUNNING)
                    | Some(ContainerSummaryStateEnum::RESTARTING)
                    | Some(ContainerSummaryStateEnum::PAUSED)
                    | Some(ContainerSummaryStateEnum::STOPPING) => InstanceStatus::Running,
                    Some(ContainerSummaryStateEnum::CREATED) => {
                        InstanceStatus::Exited { code: None }
                    }
                    _ => InstanceStatus::Exited {
                        code: exit_code(&client, &container_id, summary.status.as_deref()).await,
                    },
                };
                if status == InstanceStatus::Running {
                    self.watch(client.clone(), container_id.clone());
                }
                found.push(ObservedInstance {
                    id: id.clone(),
                    pool: labels.get(labels::POOL).cloned(),
                    status,
                    backend_ref: serde_json::to_string(&BackendRef {
                        engine: &engine.address,
                        container: &container_id,
                    })
                    .unwrap_or_default(),
                });
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
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
}

/// Applies the pull policy; `never` only checks that the image is there.
async fn ensure_image(
    engine: &Engine,
    client: &Docker,
    image: &str,
    policy: PullPolicy,
) -> Result<(), BackendError> {
    let present = match client.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if engine::is_not_found(&e) => false,
        Err(e) => return Err(engine.error(&format!("looking up image {image}"), &e)),
    };
    let pull = match policy {
        PullPolicy::Never if !present => {
            return Err(BackendError {
                backend: "docker",
                message: format!(
                    "engine {}: image {image} is not present and pull_policy = \"never\"; load or build it on the engine, or set pull_policy = \"missing\"",
                    engine.address
                ),
            })
        }
        PullPolicy::Never => false,
        PullPolicy::Missing => !present,
        PullPolicy::Always => true,
    };
    if pull {
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut progress = client.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| engine.error(&format!("pulling image {image}"), &e))?;
        }
    }
    Ok(())
}

/// The exit code of a stopped container: from the listing's status text ("Exited (3) 2 seconds
/// ago"), else from an inspection.
async fn exit_code(client: &Docker, container_id: &str, status: Option<&str>) -> Option<i32> {
    if let Some(code) = status.and_then(parse_exit_status) {
        return Some(code);
    }
    let state = compat::inspect_container(client, container_id)
        .await
        .ok()?
        .state?;
    state.exit_code.and_then(|c| i32::try_from(c).ok())
}

fn parse_exit_status(status: &str) -> Option<i32> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.trim().parse().ok()
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
mod tests {
    use super::*;

    #[test]
    fn exit_status_text() {
        assert_eq!(parse_exit_status("Exited (0) 3 seconds ago"), Some(0));
        assert_eq!(
            parse_exit_status("Exited (137) About a minute ago"),
            Some(137)
        );
        assert_eq!(parse_exit_status("Up 2 seconds"), None);
        assert_eq!(parse_exit_status("Created"), None);
    }
}
