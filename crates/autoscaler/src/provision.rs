//! Credentials for runner instances, by Forgejo version (design.md "Forgejo versions").
//!
//! * Forgejo 15+: one ephemeral runner per instance, created through the runners API; the
//!   instance gets only that runner's uuid and token (a 0600 file) and `--handle` of its job.
//! * Forgejo 13/14: a bounded set of identities per pool and scope, registered by the
//!   autoscaler itself with the runner protocol's `Register` call; the instance gets one as a
//!   `.runner` file and gives it back when it is gone.
//!
//! Architecture invariant: neither the API token nor a registration token ever reaches an
//! instance: not in its files, its arguments or its environment. A job running in host mode
//! can at most read its own runner's token, which can take no other job (15: deleted after
//! one task; 13/14: `one-job` exits after one task and the identity is only lent again after
//! the instance is gone).

use std::{collections::HashMap, path::Path, sync::Mutex};

use anyhow::Context;
use runner_proto::{client::RunnerClient, connect::Codec, runner::v1::RegisterRequest};

use crate::{
    backend::{InstanceFile, InstanceSpec},
    forgejo::{ApiScope, ForgejoClient},
    plan::JobRef,
    pools::PoolSpec,
    secret::Secret,
    store::{Identity, Store},
};

/// Name of the token file of a Forgejo 15 instance, inside its work directory.
pub const TOKEN_FILE: &str = "runner-token";
/// Name of the registration file of a Forgejo 13/14 instance (forgejo-runner's default).
pub const RUNNER_FILE: &str = ".runner";

/// Everything the provisioner needs to know about where it runs.
pub struct Provisioner {
    pub client: ForgejoClient,
    pub store: Store,
    pub forgejo_url: String,
    pub runner_binary: std::path::PathBuf,
    pub fetch_interval: std::time::Duration,
    pub owner_id: String,
    /// Registration tokens by scope, cached in memory only (never stored, never logged).
    registration_tokens: Mutex<HashMap<ApiScope, Secret>>,
}

/// The result of preparing an instance: its spec, and the runner id to record.
pub struct Prepared {
    pub spec: InstanceSpec,
    pub runner_id: i64,
    pub runner_name: String,
}

impl Provisioner {
    pub fn new(
        client: ForgejoClient,
        store: Store,
        forgejo_url: String,
        runner_binary: std::path::PathBuf,
        fetch_interval: std::time::Duration,
        owner_id: String,
    ) -> Provisioner {
        Provisioner {
            client,
            store,
            forgejo_url,
            runner_binary,
            fetch_interval,
            owner_id,
            registration_tokens: Mutex::default(),
        }
    }

    /// The description tag that marks Forgejo runners as ours (for orphan collection).
    pub fn owner_tag(&self) -> String {
        format!("forgejo-autoscaler owner={}", self.owner_id)
    }

    /// Forgejo 15: creates the ephemeral runner and the instance spec that uses it. The runner
    /// id is recorded in the store before this returns, so a crash right after still leaves a
    /// record that leads to its removal.
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare_ephemeral(
        &self,
        instance_id: &str,
        pool: &PoolSpec,
        scope: &ApiScope,
        job: Option<&JobRef>,
        work_dir: &Path,
        env: std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Prepared> {
        let name = instance_id.to_string();
        let description = runner_description(&self.owner_tag(), instance_id, &pool.name, job);
        let runner = self
            .client
            .create_runner(scope, &name, &description, true)
            .await
            .context("creating the ephemeral runner")?;
        self.store.set_runner(instance_id, runner.id, &name)?;
        let token_path = work_dir.join(TOKEN_FILE);
        let mut args = vec![
            "one-job".to_string(),
            "--url".into(),
            self.forgejo_url.clone(),
            "--uuid".into(),
            runner.uuid.clone(),
            "--token-url".into(),
            format!("file:{}", token_path.display()),
        ];
        for label in &pool.labels {
            args.push("--label".into());
            args.push(label.clone());
        }
        if let Some(handle) = job.and_then(|j| j.handle.as_deref()) {
            args.push("--handle".into());
            args.push(handle.to_string());
        }
        args.push("--wait".into());
        args.push("--fetch-interval".into());
        args.push(humantime::format_duration(self.fetch_interval).to_string());
        let spec = InstanceSpec {
            id: instance_id.to_string(),
            pool: pool.name.clone(),
            program: self.runner_binary.clone(),
            args,
            files: vec![InstanceFile {
                name: TOKEN_FILE.into(),
                contents: runner.token.expose().as_bytes().to_vec(),
                secret: true,
            }],
            env,
        };
        Ok(Prepared {
            spec,
            runner_id: runner.id,
            runner_name: name,
        })
    }

    /// Forgejo 13/14: lends a free identity of the pool (registering one if none is free) and
    /// builds an instance spec that runs `one-job` once with it.
    pub async fn prepare_identity(
        &self,
        instance_id: &str,
        pool: &PoolSpec,
        scope: &ApiScope,
        env: std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Prepared> {
        let scope_key = scope.to_string();
        let identity = match self
            .store
            .acquire_identity(&pool.name, &scope_key, instance_id)?
        {
            Some(identity) => identity,
            None => self.register_identity(instance_id, pool, scope).await?,
        };
        self.store
            .set_runner(instance_id, identity.runner_id, &identity.name)?;
        let runner_file = serde_json::json!({
            "WARNING": "This file is automatically generated by forgejo-autoscaler. Do not edit it manually unless you know what you are doing. Removing this file will cause forgejo runner to re-register as a new runner.",
            "id": identity.runner_id,
            "uuid": identity.uuid,
            "name": identity.name,
            "token": identity.token.expose(),
            "address": self.forgejo_url,
            "labels": pool.labels,
        });
        let contents = serde_json::to_vec_pretty(&runner_file)?;
        let spec = InstanceSpec {
            id: instance_id.to_string(),
            pool: pool.name.clone(),
            program: self.runner_binary.clone(),
            // Without --wait: one fetch, then exit. A job taken by another runner in between
            // makes the runner exit (no_task) instead of taking some later job.
            args: vec!["one-job".into()],
            files: vec![InstanceFile {
                name: RUNNER_FILE.into(),
                contents,
                secret: true,
            }],
            env,
        };
        Ok(Prepared {
            spec,
            runner_id: identity.runner_id,
            runner_name: identity.name,
        })
    }

    #[allow(deprecated)] // agent_labels: forgejo-runner still fills it, so do we.
    async fn register_identity(
        &self,
        instance_id: &str,
        pool: &PoolSpec,
        scope: &ApiScope,
    ) -> anyhow::Result<Identity> {
        let name = format!(
            "{}-{}-{}",
            pool.name,
            &self.owner_id[..self.owner_id.len().min(6)],
            short_random()
        );
        let labels: Vec<String> = pool.label_names.iter().cloned().collect();
        let rpc = RunnerClient::new(&self.forgejo_url, Codec::Json)
            .map_err(|e| anyhow::anyhow!("runner protocol client: {e}"))?;
        let mut response = None;
        // A cached registration token may have been replaced in the web UI: fetch a fresh one
        // once and retry.
        for attempt in 0..2 {
            let token = self.registration_token(scope, attempt > 0).await?;
            let request = RegisterRequest {
                name: name.clone(),
                token: token.expose().to_string(),
                version: concat!("forgejo-autoscaler-", env!("CARGO_PKG_VERSION")).to_string(),
                agent_labels: labels.clone(),
                labels: labels.clone(),
                ..Default::default()
            };
            match rpc.register(&request).await {
                Ok(r) => {
                    response = Some(r);
                    break;
                }
                Err(e) if attempt == 0 && e.message.contains("registration token") => continue,
                Err(e) => anyhow::bail!(
                    "registering a runner for pool {} ({scope}): {}",
                    pool.name,
                    e
                ),
            }
        }
        let runner = response
            .and_then(|r| r.runner)
            .ok_or_else(|| anyhow::anyhow!("Forgejo's Register answer carried no runner"))?;
        let identity = Identity {
            runner_id: runner.id,
            pool: pool.name.clone(),
            scope: scope.to_string(),
            uuid: runner.uuid,
            token: Secret::new(runner.token),
            name,
            instance_id: Some(instance_id.to_string()),
        };
        self.store
            .insert_identity(&identity, crate::clock::now_ms())?;
        tracing::info!(pool = %pool.name, scope = %scope, runner_id = identity.runner_id, name = %identity.name, "registered a runner identity");
        Ok(identity)
    }

    async fn registration_token(&self, scope: &ApiScope, refresh: bool) -> anyhow::Result<Secret> {
        if !refresh {
            if let Some(token) = self
                .registration_tokens
                .lock()
                .ok()
                .and_then(|m| m.get(scope).cloned())
            {
                return Ok(token);
            }
        }
        let token = self
            .client
            .registration_token(scope)
            .await
            .context("getting a registration token")?;
        if let Ok(mut cache) = self.registration_tokens.lock() {
            cache.insert(scope.clone(), token.clone());
        }
        Ok(token)
    }
}

/// The description of a Forgejo 15 runner: the owner tag (orphan collection), then what a
/// replica that did not create the instance needs to adopt it after a failover (`[ha]`): the
/// instance, its pool and the job attempt it was made for. Forgejo keeps it with the runner,
/// so every replica can read it; none of it is secret (the handle is also in the runner's
/// arguments and the instance's labels). Read back by `crate::ha::adopt`.
pub fn runner_description(
    owner_tag: &str,
    instance_id: &str,
    pool: &str,
    job: Option<&JobRef>,
) -> String {
    let mut text = format!("{owner_tag} instance={instance_id} pool={pool}");
    if let Some(job) = job {
        text.push_str(&format!(" job={}", job.id));
        if let Some(attempt) = job.attempt {
            text.push_str(&format!(" attempt={attempt}"));
        }
        if let Some(handle) = &job.handle {
            text.push_str(&format!(" handle={handle}"));
        }
    }
    text
}

fn short_random() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A new instance id: the pool name and a random suffix (also the Forgejo 15 runner name).
pub fn new_instance_id(pool: &str) -> String {
    let safe: String = pool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{safe}-{}", short_random())
}
