//! Creating a runner container: the engine is chosen by placement (`placement.rs`), the
//! image checked or pulled, the container created, the credential uploaded, the container
//! started. A failed attempt backs its engine off and moves on to the pool's next engine in the
//! same call, so one dead engine does not fail the pool while another one works.

use std::{sync::Arc, time::Instant};

use bollard::{
    query_parameters::{
        CreateContainerOptions, CreateImageOptions, RemoveContainerOptions,
        UploadToContainerOptions,
    },
    Docker,
};
use futures_util::StreamExt;

use super::{
    archive, container,
    engine::{self, Engine, Failure},
    placement::{self, EngineLoad},
    BackendRef, DockerBackend, Placed,
};
use crate::{
    backend::{BackendError, InstanceSpec},
    config::{DockerPoolConfig, PullPolicy},
};

impl DockerBackend {
    pub(super) async fn create_instance(
        &self,
        mut spec: InstanceSpec,
    ) -> Result<String, BackendError> {
        let pool = self
            .pools
            .get(&spec.pool)
            .ok_or_else(|| Self::err(format!("pool {:?} has no docker settings", spec.pool)))?;
        for file in spec
            .files
            .iter_mut()
            .filter(|f| f.name == crate::provision::RUNNER_FILE)
        {
            file.contents = container::host_mode_runner_file(&file.contents).map_err(Self::err)?;
        }
        let mut failures = Vec::new();
        for (attempt, address) in self.placement(&spec.pool).into_iter().enumerate() {
            let Some(engine) = self.engines.get(&address).cloned() else {
                continue;
            };
            // A fallback only goes to an engine that is not backing off (it may have started
            // to since the order was made, e.g. by a concurrent creation).
            if attempt > 0 && engine.backing_off_for(Instant::now()).is_some() {
                continue;
            }
            self.reserve(&spec, &address);
            match self.create_on(&engine, &spec, pool).await {
                Ok(reference) => {
                    engine.succeeded(false);
                    self.state().placed.insert(
                        spec.id.clone(),
                        Placed::On {
                            engine: address,
                            pool: spec.pool.clone(),
                            created: true,
                        },
                    );
                    return Ok(reference);
                }
                Err(failure) => {
                    engine.failed(&failure).await;
                    failures.push(failure.error.message);
                }
            }
        }
        self.state().placed.insert(spec.id.clone(), Placed::Nowhere);
        if failures.is_empty() {
            failures.push(format!("pool {:?} has no engine", spec.pool));
        }
        Err(Self::err(failures.join("; ")))
    }

    /// The pool's engines to try, best first (see `placement.rs`).
    pub(super) fn placement(&self, pool: &str) -> Vec<String> {
        let Some(addresses) = self.pool_engines.get(pool) else {
            return Vec::new();
        };
        let now = Instant::now();
        let state = self.state();
        let loads: Vec<EngineLoad> = addresses
            .iter()
            .map(|address| EngineLoad {
                containers: state
                    .placed
                    .values()
                    .filter(|p| matches!(p, Placed::On { engine, pool: p, .. } if engine == address && p == pool))
                    .count(),
                backing_off_for: self
                    .engines
                    .get(address)
                    .and_then(|e| e.backing_off_for(now)),
            })
            .collect();
        placement::placement_order(&loads)
            .into_iter()
            .map(|i| addresses[i].clone())
            .collect()
    }

    /// Counts the instance on `address` while it is being created there, so that concurrent
    /// creations spread.
    pub(super) fn reserve(&self, spec: &InstanceSpec, address: &str) {
        self.state().placed.insert(
            spec.id.clone(),
            Placed::On {
                engine: address.to_string(),
                pool: spec.pool.clone(),
                created: false,
            },
        );
    }

    /// One attempt on one engine. What a failed attempt created is removed, or remembered in
    /// `stale` when the engine cannot be asked any more.
    async fn create_on(
        &self,
        engine: &Arc<Engine>,
        spec: &InstanceSpec,
        pool: &DockerPoolConfig,
    ) -> Result<String, Failure> {
        let client = engine.client().await.map_err(|error| Failure {
            error,
            unreachable: true,
        })?;
        let mut created = None;
        let result = self
            .start_container(engine, &client, spec, pool, &mut created)
            .await;
        if let (Err(_), Some(container_id)) = (&result, created) {
            let remove = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match client.remove_container(&container_id, Some(remove)).await {
                Ok(()) => {}
                Err(e) if engine::is_not_found(&e) => {}
                Err(_) => {
                    self.state()
                        .stale
                        .insert((engine.address.clone(), container_id));
                }
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
        created_id: &mut Option<String>,
    ) -> Result<String, Failure> {
        ensure_image(engine, client, &pool.image, pool.pull_policy).await?;
        let body = container::create_body(spec, pool, &self.owner_id);
        let options = CreateContainerOptions {
            name: Some(container::container_name(&spec.id)),
            ..Default::default()
        };
        let created = client
            .create_container(Some(options), body)
            .await
            .map_err(|e| engine.failure(&format!("creating the container of {}", spec.id), &e))?;
        *created_id = Some(created.id.clone());
        // The credential file, before the runner can look for it. A failure leaves a created
        // (never started) container, which `create_on` removes.
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
            .map_err(|e| {
                engine.failure("writing the runner's credential into the container", &e)
            })?;
        client
            .start_container(&created.id, None)
            .await
            .map_err(|e| engine.failure(&format!("starting the container of {}", spec.id), &e))?;
        self.watch(client.clone(), created.id.clone());
        tracing::debug!(instance = %spec.id, engine = %engine.address, container = %created.id, "runner container started");
        Ok(serde_json::to_string(&BackendRef {
            engine: &engine.address,
            container: &created.id,
        })
        .unwrap_or_default())
    }
}

/// Applies the pull policy; `never` only checks that the image is there.
async fn ensure_image(
    engine: &Engine,
    client: &Docker,
    image: &str,
    policy: PullPolicy,
) -> Result<(), Failure> {
    let present = match client.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if engine::is_not_found(&e) => false,
        Err(e) => return Err(engine.failure(&format!("looking up image {image}"), &e)),
    };
    let pull = match policy {
        PullPolicy::Never if !present => {
            return Err(Failure::from(BackendError {
                backend: "docker",
                message: format!(
                    "engine {}: image {image} is not present and pull_policy = \"never\"; load or build it on the engine, or set pull_policy = \"missing\"",
                    engine.address
                ),
            }))
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
            step.map_err(|e| engine.failure(&format!("pulling image {image}"), &e))?;
        }
    }
    Ok(())
}
