//! The file as written: serde structures that mirror the TOML one to one.
//!
//! Every table denies unknown keys (a misspelled key is an error, never silently ignored) and
//! keeps the spans of the values that later checks point at. Nothing here applies defaults or
//! cross-checks; `build.rs` turns these into the public [`super::Config`].

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    docker::{DockerNetwork, PullPolicy},
    duration::ConfigDuration,
    BackendKind, Label, Scope, VersionSetting,
};

type At<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub forgejo: Option<At<RawForgejo>>,
    #[serde(default)]
    pub runner: RawRunner,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub pools: Vec<At<RawPool>>,
    pub kubernetes: Option<At<super::kubernetes::RawKubernetes>>,
    pub ha: Option<At<super::ha::RawHa>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForgejo {
    pub url: Option<At<String>>,
    pub token_file: Option<At<PathBuf>>,
    pub token_env: Option<At<String>>,
    pub scopes: Option<At<Vec<At<Scope>>>>,
    pub version: Option<VersionSetting>,
    pub poll_interval: Option<At<ConfigDuration>>,
    pub request_timeout: Option<At<ConfigDuration>>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunner {
    pub binary: Option<PathBuf>,
    pub fetch_interval: Option<At<ConfigDuration>>,
    #[serde(default)]
    pub env: BTreeMap<At<String>, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_runners: Option<At<u32>>,
    pub max_parallel_operations: Option<At<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub boot: Option<At<ConfigDuration>>,
    pub pickup: Option<At<ConfigDuration>>,
    pub job: Option<At<ConfigDuration>>,
    pub teardown: Option<At<ConfigDuration>>,
    pub orphan_grace: Option<At<ConfigDuration>>,
    pub drain: Option<At<ConfigDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub path: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub listen: Option<At<String>>,
    pub token_file: Option<At<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub name: Option<At<String>>,
    pub labels: Option<At<Vec<At<Label>>>>,
    pub backend: Option<At<BackendKind>>,
    pub max_runners: Option<At<u32>>,
    pub warm_spares: Option<At<u32>>,
    pub scopes: Option<At<Vec<At<Scope>>>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub env: BTreeMap<At<String>, String>,
    pub docker: Option<At<RawDocker>>,
    pub swarm: Option<At<super::swarm::RawSwarm>>,
    pub kubernetes: Option<At<super::kubernetes::RawKubernetesPool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    pub image: Option<At<String>>,
    pub docker_host: Option<At<String>>,
    pub docker_hosts: Option<At<Vec<At<String>>>>,
    pub cpus: Option<At<f64>>,
    pub memory: Option<At<String>>,
    pub pids_limit: Option<At<u32>>,
    pub network: Option<At<DockerNetwork>>,
    #[serde(default)]
    pub volumes: Vec<At<String>>,
    pub user: Option<At<String>>,
    pub read_only: Option<bool>,
    pub pull_policy: Option<PullPolicy>,
}
