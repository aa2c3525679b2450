//! The swarm backend: one Docker Swarm service per runner, a replicated job of one task that
//! Swarm places on a node of the cluster (docs/swarm-backend.md).
//!
//! * Ownership is by label, with the container backend's keys: the service, its task
//!   containers and its secrets carry `org.forgejo.autoscaler.owner` = the store's owner id;
//!   only services and secrets with ours are listed, adopted or removed.
//! * The runner's credential is a Swarm secret, created before the service and mounted
//!   read-only at `/run/secrets/NAME` (0400, owned by the task's user), removed after the
//!   service; never in the service's environment or arguments (`secrets.rs`).
//! * A secret whose service is missing (a crash between the two creations) is listed as an
//!   exited instance, so a restart removes it with its record, and the orphan collection
//!   removes it when there is no record.
//! * Removal reads the task's exit code, Swarm's note on a failed task and the last log lines
//!   first, then removes the service, then the secrets. A task still running is stopped first
//!   when its container is on the manager's own engine (SIGTERM, the removal's grace, then
//!   its exit code is read as the docker backend does); on another node, removing the service
//!   stops it (SIGTERM and the service's stop grace period) and its exit code is not known.
//! * Engine errors carry the engine's message; the reconciler backs off per pool.

mod events;
mod manager;
mod names;
mod secrets;
mod service;
mod status;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bollard::{
    models::{NodeState, Service},
    query_parameters::{
        ListNodesOptions, ListSecretsOptions, ListServicesOptions, ListTasksOptions, LogsOptions,
        StopContainerOptions,
    },
    Docker,
};
use futures_util::StreamExt;
use tokio::sync::Notify;

pub use service::WORK_DIR;

use super::{
    docker::{self, labels},
    Backend, BackendError, BoxFuture, InstanceSpec, InstanceStatus, ObservedInstance, Removal,
};
use crate::config::{BackendKind, Config, SwarmPoolConfig};
use manager::Manager;

/// Lines of a removed runner's log kept in its record.
const LOG_TAIL_LINES: usize = 20;

pub struct SwarmBackend {
    owner_id: String,
    /// Swarm settings and manager of each swarm pool, by pool name.
    pools: BTreeMap<String, (SwarmPoolConfig, Arc<Manager>)>,
    /// The managers in use, by address (several pools may share one swarm).
    managers: BTreeMap<String, Arc<Manager>>,
    /// Woken when a task container exits, so the reconciler reacts at once.
    exited: Arc<Notify>,
    /// Managers whose exit events are watched already.
    watched: Mutex<HashSet<String>>,
}

/// What is stored as the instance's backend reference.
#[derive(serde::Serialize)]
struct BackendRef<'a> {
    manager: &'a str,
    service: &'a str,
}

impl SwarmBackend {
    /// The backend for every swarm pool of `config`. Connects lazily: a manager that is down at
    /// start fails its pools' creations (with backoff), not the autoscaler.
    pub fn new(config: &Config, owner_id: String, exited: Arc<Notify>) -> SwarmBackend {
        let mut pools = BTreeMap::new();
        let mut managers = BTreeMap::new();
        for pool in config
            .pools
            .iter()
            .filter(|p| p.backend == BackendKind::Swarm)
        {
            let Some(settings) = pool.swarm.clone() else {
                continue;
            };
            let manager = Manager::new(settings.docker_host.as_deref());
            let manager = managers
                .entry(manager.address().to_string())
                .or_insert_with(|| Arc::new(manager))
                .clone();
            pools.insert(pool.name.clone(), (settings, manager));
        }
        SwarmBackend {
            owner_id,
            pools,
            managers,
            exited,
            watched: Mutex::default(),
        }
    }

    /// Starts watching the manager's container exits (once per manager).
    fn watch(&self, manager: &Arc<Manager>) {
        let Ok(mut watched) = self.watched.lock() else {
            return;
        };
        if watched.insert(manager.address().to_string()) {
            events::watch(
                manager.clone(),
                self.owner_id.clone(),
                Arc::downgrade(&self.exited),
            );
        }
    }

    fn owner_filter(&self, instance: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut wanted = vec![format!("{}={}", labels::OWNER, self.owner_id)];
        if let Some(id) = instance {
            wanted.push(format!("{}={id}", labels::INSTANCE));
        }
        HashMap::from([("label".to_string(), wanted)])
    }

    /// Whether the engine's labels say this object is ours (the engine filtered already; this
    /// is checked again so that nothing else is ever handled).
    fn ours<'a>(
        &self,
        labels: Option<&'a HashMap<String, String>>,
    ) -> Option<&'a HashMap<String, String>> {
        labels.filter(|l| l.get(labels::OWNER) == Some(&self.owner_id))
    }

    async fn create_instance(&self, spec: InstanceSpec) -> Result<String, BackendError> {
        let (pool, manager) = self.pools.get(&spec.pool).ok_or_else(|| BackendError {
            backend: "swarm",
            message: format!("pool {:?} has no swarm settings", spec.pool),
        })?;
        let client = manager.client().await?;
        self.watch(manager);
        let image_user = manager
            .ensure_image(&client, &pool.image, pool.pull_policy)
            .await?;
        let user = pool
            .user
            .clone()
            .or(image_user.filter(|u| !u.trim().is_empty()));
        let owner = match user.as_deref() {
            None => secrets::Owner::default(),
            Some(user) => secrets::Owner::parse(user).ok_or_else(|| {
                manager.plain_error(format!(
                    "the image {} runs as user {user:?}, a name; set user = \"UID:GID\" in [pools.swarm] (the credential secret is handed to its owner by number)",
                    pool.image
                ))
            })?,
        };
        let args = docker::host_mode_args(&spec.args);
        let mounted = secrets::mount(&spec, WORK_DIR, &args).map_err(|e| manager.plain_error(e))?;
        let labels = service::instance_labels(&spec, &self.owner_id);
        // The secrets first: the service refers to them by id. A failure leaves some secrets
        // and no service; the reconciler removes the instance, which removes them.
        let mut mounts = Vec::new();
        for file in &mounted.files {
            let created = client
                .create_secret(secrets::secret_spec(file, &labels))
                .await;
            match created {
                Ok(created) => mounts.push(secrets::reference(file, &created.id, owner)),
                Err(e) => {
                    return Err(manager
                        .error(&format!("creating the secret {}", file.name), &e)
                        .await)
                }
            }
        }
        let api = client.client_version();
        let mode = service::Mode::for_api(api.major_version, api.minor_version);
        let request =
            service::service_spec(&spec, pool, &self.owner_id, mounted.args, mounts, mode);
        let created = match client.create_service(request, None).await {
            Ok(created) => created,
            Err(e) => {
                return Err(manager
                    .error(&format!("creating the service of {}", spec.id), &e)
                    .await)
            }
        };
        let service_id = created.id.unwrap_or_default();
        tracing::debug!(instance = %spec.id, manager = %manager.address(), service = %service_id, "runner service created");
        Ok(serde_json::to_string(&BackendRef {
            manager: manager.address(),
            service: &service_id,
        })
        .unwrap_or_default())
    }

    async fn delete_instance(&self, id: &str, grace: Duration) -> Result<Removal, BackendError> {
        let mut removal = Removal::default();
        let mut failures = Vec::new();
        for manager in self.managers.values() {
            match self.delete_on(manager, id, grace).await {
                Ok(Some(found)) => removal = found,
                Ok(None) => {}
                Err(e) => failures.push(e.message),
            }
        }
        if failures.is_empty() {
            Ok(removal)
        } else {
            Err(BackendError {
                backend: "swarm",
                message: failures.join("; "),
            })
        }
    }

    /// Removes the instance's service and secrets on one manager; `Some` when a service was
    /// there.
    async fn delete_on(
        &self,
        manager: &Manager,
        id: &str,
        grace: Duration,
    ) -> Result<Option<Removal>, BackendError> {
        let client = manager.client().await?;
        let options = ListServicesOptions {
            filters: Some(self.owner_filter(Some(id))),
            ..Default::default()
        };
        let services = match client.list_services(Some(options)).await {
            Ok(list) => list,
            Err(e) => return Err(manager.error("listing services", &e).await),
        };
        let mut removal = None;
        for found in services.iter().filter(|s| {
            self.ours(s.spec.as_ref().and_then(|s| s.labels.as_ref()))
                .is_some()
        }) {
            let Some(service_id) = found.id.as_deref() else {
                continue;
            };
            let tasks = match list_tasks(&client, &[service_id]).await {
                Ok(tasks) => tasks,
                Err(e) => return Err(manager.error("listing the service's tasks", &e).await),
            };
            let down = down_nodes(&client).await.unwrap_or_default();
            let task = status::current_task(&tasks);
            let (exit_code, stopped_by_us) = match status::instance_status(task, &down) {
                InstanceStatus::Exited { code } => (code, false),
                InstanceStatus::Running => {
                    let container = task
                        .and_then(|t| t.status.as_ref())
                        .and_then(|s| s.container_status.as_ref())
                        .and_then(|c| c.container_id.as_deref());
                    match container {
                        Some(container) => stop_local(&client, container, grace)
                            .await
                            .unwrap_or((None, true)),
                        None => (None, true),
                    }
                }
            };
            let mut tail = log_tail(&client, service_id).await;
            if let Some(note) = status::task_note(task, &down) {
                tail = Some(match tail {
                    Some(log) => format!("{log}\n{note}"),
                    None => note,
                });
            }
            match client.delete_service(service_id).await {
                Ok(()) => {}
                Err(e) if docker::is_not_found(&e) => {}
                Err(e) => return Err(manager.error("removing the service", &e).await),
            }
            tracing::debug!(instance = %id, manager = %manager.address(), service = %service_id, ?exit_code, stopped_by_us, "runner service removed");
            removal = Some(Removal {
                exit_code,
                log_tail: tail,
                log_path: None,
                stopped_by_us,
            });
        }
        let options = ListSecretsOptions {
            filters: Some(self.owner_filter(Some(id))),
        };
        let secrets = match client.list_secrets(Some(options)).await {
            Ok(list) => list,
            Err(e) => return Err(manager.error("listing secrets", &e).await),
        };
        for secret in secrets.iter().filter(|s| {
            self.ours(s.spec.as_ref().and_then(|s| s.labels.as_ref()))
                .is_some()
        }) {
            let Some(secret_id) = secret.id.as_deref() else {
                continue;
            };
            match client.delete_secret(secret_id).await {
                Ok(()) => {}
                Err(e) if docker::is_not_found(&e) => {}
                Err(e) => return Err(manager.error("removing the runner's secret", &e).await),
            }
        }
        Ok(removal)
    }

    async fn list_instances(&self) -> Result<Vec<ObservedInstance>, BackendError> {
        let mut found = Vec::new();
        for manager in self.managers.values() {
            self.list_on(manager, &mut found, 3).await?;
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn list_on(
        &self,
        manager: &Arc<Manager>,
        found: &mut Vec<ObservedInstance>,
        attempts: u32,
    ) -> Result<(), BackendError> {
        let client = manager.client().await?;
        self.watch(manager);
        let options = ListServicesOptions {
            filters: Some(self.owner_filter(None)),
            ..Default::default()
        };
        let services: Vec<Service> = match client.list_services(Some(options)).await {
            Ok(list) => list,
            Err(e) => return Err(manager.error("listing services", &e).await),
        };
        let ids: Vec<&str> = services.iter().filter_map(|s| s.id.as_deref()).collect();
        let tasks = if ids.is_empty() {
            Vec::new()
        } else {
            match list_tasks(&client, &ids).await {
                Ok(tasks) => tasks,
                // A service removed between the two listings (by a removal running at the
                // same time) makes the whole filtered listing fail: list again.
                Err(e) if docker::is_not_found(&e) && attempts > 1 => {
                    return Box::pin(self.list_on(manager, found, attempts - 1)).await;
                }
                Err(e) => return Err(manager.error("listing tasks", &e).await),
            }
        };
        let down = if tasks.is_empty() {
            HashSet::new()
        } else {
            match down_nodes(&client).await {
                Ok(down) => down,
                Err(e) => return Err(manager.error("listing nodes", &e).await),
            }
        };
        let mut with_service = HashSet::new();
        for svc in &services {
            let Some(labels) = self.ours(svc.spec.as_ref().and_then(|s| s.labels.as_ref())) else {
                continue;
            };
            let (Some(id), Some(service_id)) = (labels.get(labels::INSTANCE), svc.id.as_deref())
            else {
                continue;
            };
            let own_tasks: Vec<_> = tasks
                .iter()
                .filter(|t| t.service_id.as_deref() == Some(service_id))
                .cloned()
                .collect();
            with_service.insert(id.clone());
            found.push(ObservedInstance {
                id: id.clone(),
                pool: labels.get(labels::POOL).cloned(),
                status: status::instance_status(status::current_task(&own_tasks), &down),
                backend_ref: backend_ref(manager, service_id),
            });
        }
        let options = ListSecretsOptions {
            filters: Some(self.owner_filter(None)),
        };
        let secrets = match client.list_secrets(Some(options)).await {
            Ok(list) => list,
            Err(e) => return Err(manager.error("listing secrets", &e).await),
        };
        for secret in &secrets {
            let Some(labels) = self.ours(secret.spec.as_ref().and_then(|s| s.labels.as_ref()))
            else {
                continue;
            };
            let Some(id) = labels.get(labels::INSTANCE) else {
                continue;
            };
            // A secret without its service: created just before a crash, or left by a removal
            // that failed half-way. Reported as an exited instance, so that it is removed.
            if with_service.insert(id.clone()) {
                found.push(ObservedInstance {
                    id: id.clone(),
                    pool: labels.get(labels::POOL).cloned(),
                    status: InstanceStatus::Exited { code: None },
                    backend_ref: backend_ref(manager, ""),
                });
            }
        }
        Ok(())
    }
}

impl Backend for SwarmBackend {
    fn kind(&self) -> &'static str {
        "swarm"
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

fn backend_ref(manager: &Manager, service: &str) -> String {
    serde_json::to_string(&BackendRef {
        manager: manager.address(),
        service,
    })
    .unwrap_or_default()
}

/// Stops a running task container when it is on this engine (the manager's own node), the way
/// the docker backend stops its containers, and reads its exit code. `None` when the container
/// is not here (another node) or the engine refused: the service's removal stops it then.
/// `Some((code, stopped_by_us))` otherwise.
async fn stop_local(
    client: &Docker,
    container: &str,
    grace: Duration,
) -> Option<(Option<i32>, bool)> {
    let state = client
        .inspect_container(container, None)
        .await
        .ok()?
        .state?;
    let mut stopped_by_us = false;
    if state.running.unwrap_or(false) {
        let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        let stop = StopContainerOptions {
            t: Some(seconds),
            ..Default::default()
        };
        match client.stop_container(container, Some(stop)).await {
            Ok(()) => stopped_by_us = true,
            // 304: it ended on its own in between.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(_) => return None,
        }
    }
    let state = client
        .inspect_container(container, None)
        .await
        .ok()?
        .state?;
    let code = state.exit_code.and_then(|c| i32::try_from(c).ok());
    Some((code, stopped_by_us))
}

/// The tasks of the given services.
async fn list_tasks(
    client: &Docker,
    service_ids: &[&str],
) -> Result<Vec<bollard::models::Task>, bollard::errors::Error> {
    let options = ListTasksOptions {
        filters: Some(HashMap::from([(
            "service".to_string(),
            service_ids.iter().map(|s| s.to_string()).collect(),
        )])),
    };
    client.list_tasks(Some(options)).await
}

/// The ids of the nodes the managers see down.
async fn down_nodes(client: &Docker) -> Result<HashSet<String>, bollard::errors::Error> {
    let nodes = client.list_nodes(None::<ListNodesOptions>).await?;
    Ok(nodes
        .into_iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(NodeState::DOWN))
        .filter_map(|n| n.id)
        .collect())
}

/// The last lines of the service's output (stdout and stderr), within a time limit: a task on
/// a node that is down never answers.
async fn log_tail(client: &Docker, service_id: &str) -> Option<String> {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: LOG_TAIL_LINES.to_string(),
        ..Default::default()
    };
    let mut text = String::new();
    let read = async {
        let mut stream = client.service_logs(service_id, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
            if text.len() > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(manager::LOG_TIMEOUT, read).await;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let tail = lines[start..].join("\n");
    (!tail.is_empty()).then_some(tail)
}
