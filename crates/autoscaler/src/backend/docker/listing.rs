//! Listing our containers on every engine at once. An engine that cannot be read is left out
//! and remembered in `State::unread`, so that the reconciler treats its instances as unknown
//! (`Backend::unlisted`), never as lost; a failed listing backs the engine off like a failed
//! creation, and a listing that works again brings it back.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use bollard::{
    models::ContainerSummaryStateEnum,
    query_parameters::{ListContainersOptions, RemoveContainerOptions},
    Docker,
};

use super::{
    engine::{self, Engine, Failure},
    labels, BackendRef, DockerBackend, Placed, LIST_TIMEOUT,
};
use crate::backend::{BackendError, InstanceStatus, ObservedInstance};

impl DockerBackend {
    /// Every engine, concurrently. An engine that cannot be read is left out and named in
    /// `state.unread` (its instances are then "unlisted", not missing); only when no engine
    /// could be read is the listing an error.
    pub(super) async fn list_instances(&self) -> Result<Vec<ObservedInstance>, BackendError> {
        let now = Instant::now();
        let results = futures_util::future::join_all(
            self.engines
                .values()
                .map(|engine| async move { (engine, self.list_engine(engine, now).await) }),
        )
        .await;
        let mut found = Vec::new();
        let mut unread = BTreeMap::new();
        for (engine, result) in results {
            match result {
                Ok(list) => found.extend(list),
                Err(message) => {
                    unread.insert(engine.address.clone(), message);
                }
            }
        }
        let nothing_read = !self.engines.is_empty() && unread.len() == self.engines.len();
        let message = unread.values().cloned().collect::<Vec<_>>().join("; ");
        self.state().unread = unread;
        if nothing_read {
            return Err(Self::err(message));
        }
        // The same instance on two engines (only after a restart lost `placed`): the running
        // one first, since the reconciler takes the first it finds.
        found.sort_by(|a, b| {
            (&a.id, a.status != InstanceStatus::Running)
                .cmp(&(&b.id, b.status != InstanceStatus::Running))
        });
        Ok(found)
    }

    /// Our containers on one engine; `Err` with the reason when the engine cannot be read.
    async fn list_engine(
        &self,
        engine: &Arc<Engine>,
        now: Instant,
    ) -> Result<Vec<ObservedInstance>, String> {
        if engine.skip_listing(now) {
            return Err(not_listed(engine, &engine.last_error()));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.owner_filter(None)),
            ..Default::default()
        };
        let listed = tokio::time::timeout(LIST_TIMEOUT, async {
            let client = engine.client().await.map_err(|error| Failure {
                error,
                unreachable: true,
            })?;
            match super::compat::list_containers(&client, Some(options)).await {
                Ok(list) => Ok((client, list)),
                Err(e) => Err(engine.failure("listing containers", &e)),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(Failure {
                error: Self::err(format!(
                    "engine {}: listing containers: no answer within {} s",
                    engine.address,
                    LIST_TIMEOUT.as_secs()
                )),
                unreachable: true,
            })
        });
        let (client, list) = match listed {
            Ok(listed) => listed,
            Err(mut failure) => {
                // Any failure to list means the engine cannot be observed: left alone until
                // its backoff ends, like an engine that cannot be reached.
                failure.unreachable = true;
                engine.failed(&failure).await;
                return Err(not_listed(engine, &failure.error.message));
            }
        };
        engine.succeeded(true);
        let mut found = Vec::new();
        let mut leftovers = Vec::new();
        for summary in list {
            let labels = summary.labels.clone().unwrap_or_default();
            // The engine filtered by owner; check again so that nothing else is ever handled.
            if labels.get(labels::OWNER) != Some(&self.owner_id) {
                continue;
            }
            let (Some(id), Some(container_id)) = (labels.get(labels::INSTANCE), summary.id.clone())
            else {
                continue;
            };
            let running = matches!(
                summary.state,
                Some(ContainerSummaryStateEnum::RUNNING)
                    | Some(ContainerSummaryStateEnum::RESTARTING)
                    | Some(ContainerSummaryStateEnum::PAUSED)
                    | Some(ContainerSummaryStateEnum::STOPPING)
            );
            if self.is_leftover(engine, id, &container_id, running, labels.get(labels::POOL)) {
                leftovers.push(container_id);
                continue;
            }
            let status = if running {
                InstanceStatus::Running
            } else if summary.state == Some(ContainerSummaryStateEnum::CREATED) {
                InstanceStatus::Exited { code: None }
            } else {
                InstanceStatus::Exited {
                    code: exit_code(&client, &container_id, summary.status.as_deref()).await,
                }
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
        for container_id in leftovers {
            self.remove_leftover(engine, &client, container_id).await;
        }
        Ok(found)
    }

    /// Whether a listed container is what a failed creation left (then it is removed, not
    /// reported); else its engine is learnt for the instance.
    pub(super) fn is_leftover(
        &self,
        engine: &Engine,
        id: &str,
        container_id: &str,
        running: bool,
        pool: Option<&String>,
    ) -> bool {
        let mut state = self.state();
        if state
            .stale
            .contains(&(engine.address.clone(), container_id.to_string()))
        {
            return true;
        }
        match state.placed.get(id) {
            // Created on another engine; this copy is from an earlier failed attempt.
            Some(Placed::On {
                engine: other,
                created: true,
                ..
            }) if *other != engine.address => !running,
            Some(Placed::On { .. }) => false,
            None | Some(Placed::Nowhere) => {
                state.placed.insert(
                    id.to_string(),
                    Placed::On {
                        engine: engine.address.clone(),
                        pool: pool.cloned().unwrap_or_default(),
                        created: false,
                    },
                );
                false
            }
        }
    }

    async fn remove_leftover(&self, engine: &Engine, client: &Docker, container_id: String) {
        let remove = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match client.remove_container(&container_id, Some(remove)).await {
            Ok(()) => {
                tracing::info!(engine = %engine.address, container = %container_id, "removed a container a failed creation left");
            }
            Err(e) if engine::is_not_found(&e) => {}
            Err(e) => {
                tracing::debug!(engine = %engine.address, container = %container_id, error = %engine::describe(&e), "cannot remove a leftover container yet");
                return;
            }
        }
        self.state()
            .stale
            .remove(&(engine.address.clone(), container_id));
    }
}

/// Why an engine's containers are missing from the listing. The same words whether it was just
/// tried or is skipped during its backoff, so that the reconciler reports it once.
fn not_listed(engine: &Engine, error: &str) -> String {
    format!(
        "docker backend: engine {} is unreachable, its containers are not listed until it answers again ({error})",
        engine.address
    )
}

/// The exit code of a stopped container: from the listing's status text ("Exited (3) 2 seconds
/// ago"), else from an inspection.
async fn exit_code(client: &Docker, container_id: &str, status: Option<&str>) -> Option<i32> {
    if let Some(code) = status.and_then(parse_exit_status) {
        return Some(code);
    }
    let state = super::compat::inspect_container(client, container_id)
        .await
        .ok()?
        .state?;
    state.exit_code.and_then(|c| i32::try_from(c).ok())
}

fn parse_exit_status(status: &str) -> Option<i32> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.trim().parse().ok()
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
