//! The autoscaler's configuration file (TOML): what it may contain, its defaults, and the
//! checks that make a broken file fail at `validate` with `FILE:LINE:COL: problem; fix`.
//!
//! Reading happens in three passes, each with one job:
//! 1. syntax: the text must be TOML (`toml::de::DeTable`);
//! 2. shape: `raw.rs` mirrors the file with `deny_unknown_fields` everywhere, and the value
//!    types (durations, scopes, labels) parse themselves, so a typo or a wrong type is
//!    reported at the exact key or value;
//! 3. meaning: `build.rs` applies defaults, resolves paths relative to the file's directory
//!    and checks what involves several keys (caps, duplicates, token sources, ...).
//!
//! The reference file `config/reference.toml` at the repository root documents every key;
//! a test keeps it valid and its stated defaults equal to the ones below.

mod build;
mod docker;
mod duration;
mod error;
mod ha;
mod kubernetes;
mod labels;
mod raw;
mod scope;
mod swarm;
mod token;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub use docker::{DockerNetwork, DockerPoolConfig, PullPolicy, VolumeMount};
pub use error::{ConfigError, ConfigWarning};
pub use ha::{derived_owner_id, ha_defaults, HaConfig};
pub use kubernetes::{
    json_merge_patch, kubernetes_defaults, KubernetesConfig, KubernetesPoolConfig,
    KubernetesToleration,
};
pub use labels::{Label, LabelSchema, DEFAULT_DOCKER_IMAGE, DEFAULT_LXC_TEMPLATE};
pub use scope::Scope;
pub use swarm::{SwarmNetwork, SwarmPoolConfig, SwarmResources};
pub use token::{ReadToken, TokenError, TokenSource};

use crate::secret::Secret;

/// Defaults, in one place so the code, the reference file and the docs agree.
pub mod defaults {
    use super::*;

    pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
    /// Below this, polling costs Forgejo more than it saves in latency.
    pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
    pub const RUNNER_BINARY: &str = "forgejo-runner";
    pub const FETCH_INTERVAL: Duration = Duration::from_secs(2);
    pub const MAX_RUNNERS: u32 = 20;
    pub const MAX_PARALLEL_OPERATIONS: u32 = 8;
    pub const STORE_PATH: &str = "state/autoscaler.db";
    pub const HTTP_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
    pub const TIMEOUTS: Timeouts = Timeouts {
        boot: Duration::from_secs(2 * 60),
        pickup: Duration::from_secs(10 * 60),
        job: Duration::from_secs(3 * 60 * 60),
        teardown: Duration::from_secs(60),
        orphan_grace: Duration::from_secs(2 * 60),
        drain: Duration::from_secs(10 * 60),
    };
}

/// The whole configuration, validated, with defaults applied and paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub forgejo: ForgejoConfig,
    pub runner: RunnerConfig,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub pools: Vec<PoolConfig>,
    /// `[kubernetes]`: the cluster of kubernetes pools (defaults when absent).
    pub kubernetes: KubernetesConfig,
    /// `[ha]`: leader election among replicas; `None`: a single instance (state-directory lock).
    pub ha: Option<HaConfig>,
    /// The file this came from, as given (for messages).
    pub file: PathBuf,
    /// Legal but doubtful settings (e.g. a token file others can read). `validate` prints
    /// them; `run` logs them.
    pub warnings: Vec<ConfigWarning>,
}

/// How to reach Forgejo and which jobs to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct ForgejoConfig {
    /// `http(s)://host[:port][/path]`, without a trailing slash.
    pub url: String,
    pub token: TokenSource,
    /// Non-empty, without duplicates.
    pub scopes: Vec<Scope>,
    pub version: VersionSetting,
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    /// Extra CA certificate (PEM) to trust, for a Forgejo behind a private CA.
    pub ca_file: Option<PathBuf>,
}

/// Which Forgejo behaviour to assume (see design.md's version table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionSetting {
    /// Ask `GET /api/v1/version` at start.
    #[default]
    Auto,
    V13,
    V14,
    /// 15 and later.
    V15,
}

/// How runner instances are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// The runner executable. A bare name is looked up in `PATH`; a name with a `/` is
    /// resolved relative to the config file's directory.
    pub binary: PathBuf,
    /// How often an instance's runner asks Forgejo for its task.
    pub fetch_interval: Duration,
    /// Extra environment for every runner instance (the autoscaler's own is not inherited).
    pub env: BTreeMap<String, String>,
}

/// Caps that hold across all pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Instances at once over all pools, counting ones still starting.
    pub max_runners: u32,
    /// Backend/API operations the executor runs at once.
    pub max_parallel_operations: u32,
}

/// A deadline for every state an instance can be in (design.md: "every state has a deadline").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From "create instance" until its runner is online.
    pub boot: Duration,
    /// From online until it picked up its job; afterwards it is removed as unneeded.
    pub pickup: Duration,
    /// Longest a job may run before its instance is stopped.
    pub job: Duration,
    /// Longest a delete may take before it is retried and reported.
    pub teardown: Duration,
    /// Age below which an instance with no record is left alone (it may be being created).
    pub orphan_grace: Duration,
    /// On shutdown, how long running jobs may continue before everything is cleaned up.
    pub drain: Duration,
}

/// Where the autoscaler records what it did, so a restart adopts instead of leaking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub path: PathBuf,
}

/// The metrics/health/status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `None` when disabled (`listen = "off"` or `""`).
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token required by the endpoint; required off loopback.
    pub token_file: Option<PathBuf>,
}

/// Where a pool's runner instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A child process per runner on this machine (the embedded default).
    #[default]
    Process,
    /// A container per runner (Docker or Podman's Docker-compatible socket).
    Docker,
    /// A Docker Swarm service (one replicated job) per runner; needs `[pools.swarm]`.
    Swarm,
    /// A Kubernetes Pod per runner; needs `[pools.kubernetes]` (cluster: `[kubernetes]`).
    Kubernetes,
}

/// A set of runner labels plus where and how its runners start.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// Non-empty, names unique within the pool.
    pub labels: Vec<Label>,
    pub backend: BackendKind,
    /// At most `limits.max_runners`; defaults to it.
    pub max_runners: u32,
    /// Idle runners kept ready ahead of demand; at most `max_runners`.
    pub warm_spares: u32,
    /// The scopes this pool serves, a subset of `forgejo.scopes`; `None` = all of them.
    pub scopes: Option<Vec<Scope>>,
    /// The global timeouts with this pool's overrides applied.
    pub timeouts: Timeouts,
    /// Extra environment for this pool's runners, on top of `runner.env`.
    pub env: BTreeMap<String, String>,
    /// Present exactly when `backend` is `Docker`.
    pub docker: Option<DockerPoolConfig>,
    /// Present exactly when `backend` is `Swarm`.
    pub swarm: Option<SwarmPoolConfig>,
    /// Present exactly when `backend` is `Kubernetes`.
    pub kubernetes: Option<KubernetesPoolConfig>,
}

impl PoolConfig {
    /// The label names (what jobs ask for and what Forgejo matches on).
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|l| l.name.as_str())
    }

    /// Whether this pool serves jobs of `scope`.
    pub fn serves(&self, scope: &Scope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(scope))
    }
}

impl Config {
    /// Reads the Forgejo API token (trimmed) from its file or variable. A missing file is an
    /// error here, at run time, not at `validate` (the token may be provisioned later).
    /// Logs a warning when the file is readable by others than its owner.
    pub fn read_token(&self) -> Result<Secret, TokenError> {
        let read = self.forgejo.token.read()?;
        if let Some(warning) = &read.warning {
            tracing::warn!("{warning}");
        }
        Ok(read.token)
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The environment of a pool's runners: `runner.env`, then the pool's `env` on top.
    pub fn runner_env(&self, pool: &PoolConfig) -> BTreeMap<String, String> {
        let mut env = self.runner.env.clone();
        env.extend(pool.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

impl HttpConfig {
    /// Reads the endpoint's bearer token, when one is configured. Logs a warning when the
    /// file is readable by others than its owner.
    pub fn read_token(&self) -> Result<Option<Secret>, TokenError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let read = token::read_file(path)?;
        if let Some(warning) = &read.warning {
            tracing::warn!("{warning}");
        }
        Ok(Some(read.token))
    }
}

/// Reads, parses and validates the file at `path`. Relative paths inside it are resolved
/// against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::whole_file(
            path,
            format!("cannot read the configuration file: {e}; check the path given to -c"),
        )
    })?;
    parse(&text, path)
}

/// Parses and validates `text` as if read from `path` (used for messages and as the base
/// for relative paths: its parent directory).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let source = error::Source { file: path, text };
    if let Err(err) = toml::de::DeTable::parse(text) {
        return Err(source.syntax_error(&err));
    }
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| source.typed_error(&e))?;
    let base_dir = base_dir_of(path);
    build::build(raw, &source, &base_dir)
}

/// The directory relative paths are resolved against: the file's parent, made absolute so a
/// later change of working directory does not change what they mean.
fn base_dir_of(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new(""));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Process => "process",
            BackendKind::Docker => "docker",
            BackendKind::Swarm => "swarm",
            BackendKind::Kubernetes => "kubernetes",
        })
    }
}

impl std::fmt::Display for VersionSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VersionSetting::Auto => "auto",
            VersionSetting::V13 => "13",
            VersionSetting::V14 => "14",
            VersionSetting::V15 => "15",
        })
    }
}

impl<'de> Deserialize<'de> for VersionSetting {
    /// Accepts `"auto"`, `"13"`, `"14"`, `"15"` and the bare numbers 13, 14, 15.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;
        impl serde::de::Visitor<'_> for VersionVisitor {
            type Value = VersionSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\", \"13\", \"14\" or \"15\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<VersionSetting, E> {
                match text.trim() {
                    "auto" => Ok(VersionSetting::Auto),
                    "13" => Ok(VersionSetting::V13),
                    "14" => Ok(VersionSetting::V14),
                    "15" => Ok(VersionSetting::V15),
                    other => Err(E::custom(format!(
                        "unknown Forgejo version \"{other}\"; use \"auto\" (ask Forgejo at start), \"13\", \"14\" or \"15\" (15 also covers later versions)"
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<VersionSetting, E> {
                self.visit_str(&n.to_string())
            }
        }
        deserializer.deserialize_any(VersionVisitor)
    }
}
