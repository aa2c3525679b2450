//! Wiring: turns a validated configuration into the live parts the reconciler works with.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use tokio::sync::Notify;

use crate::{
    backend::{docker::DockerBackend, process::ProcessBackend, Backend, Backends},
    config::{BackendKind, Config, VersionSetting},
    forgejo::{ApiScope, ForgejoClient, ForgejoClientOptions, ForgejoVersion, RetryPolicy},
    metrics::Metrics,
    plan::Strategy,
    pools::{Deadlines, PoolSpec},
    provision::Provisioner,
    store::Store,
};

pub struct Runtime {
    pub config: Config,
    pub client: ForgejoClient,
    pub version: ForgejoVersion,
    pub strategy: Strategy,
    pub store: Store,
    pub backends: Backends,
    pub pools: Vec<PoolSpec>,
    pub scopes: Vec<ApiScope>,
    pub provisioner: Provisioner,
    /// Woken when something happened that the next tick should see at once (a runner exited).
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Checked right before every create and delete: with `[ha]`, only while this replica
    /// holds the lease; without, always open.
    pub fence: crate::ha::Fence,
}

impl Runtime {
    /// Connects to Forgejo (detecting its version unless configured), opens the store and
    /// the backends. Fails with a message that says what to fix.
    pub async fn start(config: Config) -> anyhow::Result<Runtime> {
        let token = config
            .read_token()
            .context("reading the Forgejo API token")?;
        let client = ForgejoClient::new(ForgejoClientOptions {
            url: config.forgejo.url.clone(),
            token: Some(token),
            request_timeout: config.forgejo.request_timeout,
            ca_file: config.forgejo.ca_file.clone(),
            retry: RetryPolicy::default(),
        })?;
        let version = match config.forgejo.version {
            VersionSetting::V13 => ForgejoVersion::V13,
            VersionSetting::V14 => ForgejoVersion::V14,
            VersionSetting::V15 => ForgejoVersion::V15,
            VersionSetting::Auto => client.detect_version().await.with_context(|| {
                format!("detecting the Forgejo version at {}", config.forgejo.url)
            })?,
        };
        let rt = Runtime::with_client(config, client, version)?;
        rt.check_access().await?;
        Ok(rt)
    }

    /// Lists each scope's jobs once: a token Forgejo refuses (401/403) or a scope it does not
    /// know (404) is a configuration problem, reported now rather than as an empty queue
    /// forever. Transient failures (5xx, timeouts) only warn: the loop retries them.
    async fn check_access(&self) -> anyhow::Result<()> {
        for scope in &self.scopes {
            let labels = self
                .version
                .capabilities()
                .jobs_need_label_superset
                .then(|| crate::pools::label_query(&self.pools, scope));
            match self
                .client
                .list_jobs(scope, self.version, labels.as_deref())
                .await
            {
                Ok(_) => {}
                Err(e) if matches!(e.status(), Some(401) | Some(403) | Some(404)) => {
                    anyhow::bail!(
                        "Forgejo refused to list the jobs of scope {scope}: {e}. Check the token in {} (its user must own {scope}, with the scopes README.md lists) and the scope's spelling in {}",
                        match &self.config.forgejo.token {
                            crate::config::TokenSource::File(path) => path.display().to_string(),
                            crate::config::TokenSource::Env(name) => format!("${name}"),
                        },
                        self.config.file.display()
                    );
                }
                Err(e) => {
                    tracing::warn!(%scope, error = %e, "cannot list jobs yet; will retry every poll")
                }
            }
        }
        Ok(())
    }

    /// Refuses to start a process pool whose runner binary is not an executable file: every
    /// instance would exit at once.
    fn check_runner_binary(config: &Config) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if !config
            .pools
            .iter()
            .any(|p| p.backend == BackendKind::Process)
        {
            return Ok(());
        }
        let resolved = resolve_binary(&config.runner.binary);
        let executable = std::fs::metadata(&resolved)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            anyhow::bail!(
                "the runner binary {} ([runner] binary in {}) is not an executable file{}; install forgejo-runner (12.8 or later for Forgejo 15) or set the path",
                config.runner.binary.display(),
                config.file.display(),
                if config.runner.binary.components().count() == 1 { " on PATH" } else { "" }
            );
        }
        Ok(())
    }

    /// The backend of a configured pool.
    pub fn backend_for_pool(&self, pool: &str) -> anyhow::Result<Arc<dyn Backend>> {
        let kind = self
            .config
            .pool(pool)
            .map(|p| p.backend.to_string())
            .unwrap_or_else(|| "process".into());
        Ok(self.backends.get(&kind)?.clone())
    }

    pub fn with_client(
        config: Config,
        client: ForgejoClient,
        version: ForgejoVersion,
    ) -> anyhow::Result<Runtime> {
        Runtime::check_runner_binary(&config)?;
        let strategy = if version.capabilities().runners_api {
            Strategy::Ephemeral
        } else {
            Strategy::Identities
        };
        let store = Store::open(&config.store.path)?;
        // With [ha], every replica must tag what it creates alike (the leader after a failover
        // adopts what the previous one created): the id comes from the configuration.
        let owner_id = match config.ha.as_ref().and_then(|ha| ha.owner_id.clone()) {
            Some(id) => id,
            None => store.owner_id()?,
        };
        let state_dir = state_dir(&config);
        let wake = Arc::new(Notify::new());
        let mut backends = Backends::default();
        // The process backend is always there: it also finds instances left by a process pool
        // that was since removed from the configuration.
        backends.add(Arc::new(
            ProcessBackend::new(&state_dir, wake.clone()).with_context(|| {
                format!("preparing the process backend in {}", state_dir.display())
            })?,
        ));
        if config
            .pools
            .iter()
            .any(|p| p.backend == BackendKind::Docker)
        {
            backends.add(Arc::new(DockerBackend::new(
                &config,
                owner_id.clone(),
                wake.clone(),
            )));
        }
        if config.pools.iter().any(|p| p.backend == BackendKind::Swarm) {
            backends.add(Arc::new(crate::backend::swarm::SwarmBackend::new(
                &config,
                owner_id.clone(),
                wake.clone(),
            )));
        }
        if config
            .pools
            .iter()
            .any(|p| p.backend == BackendKind::Kubernetes)
        {
            backends.add(Arc::new(
                crate::backend::kubernetes::KubernetesBackend::new(
                    &config,
                    owner_id.clone(),
                    wake.clone(),
                ),
            ));
        }
        let scopes: Vec<ApiScope> = config
            .forgejo
            .scopes
            .iter()
            .map(|s| {
                s.to_string()
                    .parse::<ApiScope>()
                    .map_err(anyhow::Error::msg)
            })
            .collect::<Result<_, _>>()?;
        let pools = pool_specs(&config)?;
        let provisioner = Provisioner::new(
            client.clone(),
            store.clone(),
            config.forgejo.url.clone(),
            resolve_binary(&config.runner.binary),
            config.runner.fetch_interval,
            owner_id,
        );
        let metrics = Arc::new(Metrics::new(&pools, config.limits.max_runners));
        tracing::info!(
            forgejo = %config.forgejo.url,
            version = %version,
            strategy = ?strategy,
            pools = pools.len(),
            scopes = scopes.len(),
            "autoscaler ready"
        );
        Ok(Runtime {
            config,
            client,
            version,
            strategy,
            store,
            backends,
            pools,
            scopes,
            provisioner,
            wake,
            metrics,
            fence: crate::ha::Fence::none(),
        })
    }
}

/// Takes the state directory for this process: `run` and `cleanup` hold it, so two daemons
/// never manage the same instances and `cleanup` never pulls instances from under a running
/// daemon. The lock is released when the returned file is dropped (or the process dies).
pub fn lock_state_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = state_dir(config);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("autoscaler.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a file descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        // The holder wrote its pid into the file; naming it saves the admin a search.
        let holder = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .map(|pid| format!(" by process {pid}"))
            .unwrap_or_default();
        anyhow::bail!(
            "another forgejo-autoscaler (run or cleanup) is using the state directory {} ({} is locked{holder}); stop it first, or give this one its own [store] path. Two daemons on one store would both create and remove the same runners; to run several replicas for high availability, give each its own store and add an [ha] table (docs/high-availability.md)",
            dir.display(),
            path.display()
        );
    }
    // Best effort: the lock is the flock, the pid only makes the refusal above clearer.
    {
        use std::io::Write;
        let mut writer = &file;
        let _ = file.set_len(0);
        let _ = writeln!(writer, "{}", std::process::id());
    }
    Ok(file)
}

/// Where instances and logs live: beside the store.
pub fn state_dir(config: &Config) -> PathBuf {
    config
        .store
        .path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `forgejo-runner` without a slash is looked up on PATH now, so the instance (which gets a
/// minimal environment) starts the same binary the admin would.
fn resolve_binary(binary: &std::path::Path) -> PathBuf {
    if binary.components().count() > 1 || binary.is_absolute() {
        return std::path::absolute(binary).unwrap_or_else(|_| binary.to_path_buf());
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(binary))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| binary.to_path_buf())
}

pub fn pool_specs(config: &Config) -> anyhow::Result<Vec<PoolSpec>> {
    config
        .pools
        .iter()
        .map(|pool| {
            let scopes = pool
                .scopes
                .as_ref()
                .map(|scopes| {
                    scopes
                        .iter()
                        .map(|s| {
                            s.to_string()
                                .parse::<ApiScope>()
                                .map_err(anyhow::Error::msg)
                        })
                        .collect()
                })
                .transpose()?;
            Ok(PoolSpec {
                name: pool.name.clone(),
                label_names: pool.labels.iter().map(|l| l.name.clone()).collect(),
                labels: pool.labels.iter().map(|l| l.raw.clone()).collect(),
                max_runners: pool.max_runners,
                warm_spares: pool.warm_spares,
                scopes,
                deadlines: Deadlines {
                    boot: pool.timeouts.boot,
                    pickup: pool.timeouts.pickup,
                    job: pool.timeouts.job,
                    teardown: pool.timeouts.teardown,
                    orphan_grace: pool.timeouts.orphan_grace,
                },
            })
        })
        .collect()
}
