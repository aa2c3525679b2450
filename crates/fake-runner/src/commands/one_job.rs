//! `one-job`: Declare, fetch at most one task (FetchTask, or FetchSingleTask with `--handle`),
//! run it, exit (contract §2.2, runner 12.8 behaviour).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use runner_proto::client::RunnerClient;
use runner_proto::connect::ConnectError;
use runner_proto::runner::v1::{
    DeclareRequest, FetchSingleTaskRequest, FetchTaskRequest, Result as TaskResult, Task,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Env;
use crate::cli::OneJobArgs;
use crate::duration::parse_go_duration;
use crate::job::reporter::CancelCause;
use crate::job::{self, JobSettings};
use crate::registration::Registration;
use crate::{labels, rpc, shutdown};

/// How `one-job` ended, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A task was received and run; its result does not change the exit code.
    TaskRun(TaskResult),
    NoTask,
}

/// Where the runner's identity comes from: exactly one source.
pub struct Connection {
    pub url: String,
    pub uuid: String,
    pub token: String,
    /// Full label strings.
    pub labels: Vec<String>,
    pub fetch_interval: Duration,
    /// The registration file, when that is the source (its labels follow Declare).
    pub registration: Option<(PathBuf, Registration)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("uuid", &self.uuid)
            .field("token", &"***")
            .field("labels", &self.labels)
            .field("fetch_interval", &self.fetch_interval)
            .finish()
    }
}

/// Reads the token named by `--token-url`; only `file:` URLs, `$CREDENTIALS_DIRECTORY` expanded.
pub fn read_token_url(token_url: &str) -> anyhow::Result<String> {
    let Some(path) = token_url.strip_prefix("file:") else {
        bail!("unsupported --token-url {token_url:?}: only file:PATH is supported");
    };
    let path = path.strip_prefix("//").unwrap_or(path);
    let expanded = if path.contains("CREDENTIALS_DIRECTORY") {
        let dir = std::env::var("CREDENTIALS_DIRECTORY")
            .context("--token-url uses $CREDENTIALS_DIRECTORY, which is not set")?;
        path.replace("${CREDENTIALS_DIRECTORY}", &dir)
            .replace("$CREDENTIALS_DIRECTORY", &dir)
    } else {
        path.to_string()
    };
    let token = std::fs::read_to_string(&expanded)
        .with_context(|| format!("cannot read the runner token from {expanded}"))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the runner token file {expanded} is empty");
    }
    Ok(token)
}

/// Picks the connection source and checks there is exactly one.
pub fn resolve(args: &OneJobArgs, env: &Env) -> anyhow::Result<Connection> {
    let config = &env.config;
    let fetch_interval = match &args.fetch_interval {
        Some(text) => parse_go_duration(text)
            .map_err(anyhow::Error::msg)
            .context("--fetch-interval")?,
        None => config.fetch_interval,
    };
    let flags_given = args.url.is_some() || args.uuid.is_some() || args.token_url.is_some();
    let file_exists = config.file.exists();
    if flags_given && file_exists {
        bail!(
            "more than one connection is configured: the registration file {} and --url/--uuid/--token-url; use only one",
            config.file.display()
        );
    }
    if flags_given {
        let (Some(url), Some(uuid), Some(token_url)) = (&args.url, &args.uuid, &args.token_url)
        else {
            bail!("--url, --uuid and --token-url must be given together");
        };
        let labels = if args.labels.is_empty() {
            config.labels.clone()
        } else {
            args.labels.clone()
        };
        return Ok(Connection {
            url: url.clone(),
            uuid: uuid.clone(),
            token: read_token_url(token_url)?,
            labels,
            fetch_interval,
            registration: None,
        });
    }
    if !file_exists {
        bail!(
            "no connection: the registration file {} does not exist (run register first) and --url/--uuid/--token-url were not given",
            config.file.display()
        );
    }
    let registration = Registration::load(&config.file)?;
    if !args.labels.is_empty() {
        tracing::warn!("--label is ignored when the connection comes from the registration file");
    }
    let labels = if config.labels.is_empty() {
        registration.labels.clone()
    } else {
        tracing::info!(
            "labels from runner.labels of the configuration file override the registration file's"
        );
        config.labels.clone()
    };
    Ok(Connection {
        url: registration.address.clone(),
        uuid: registration.uuid.clone(),
        token: registration.token.clone(),
        labels,
        fetch_interval,
        registration: Some((config.file.clone(), registration)),
    })
}

pub async fn run(
    args: OneJobArgs,
    env: &Env,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    let connection = resolve(&args, env)?;
    let parsed = labels::parse_all(&connection.labels).context("invalid label")?;
    let names = labels::names(&parsed);
    let client = rpc::client(&connection.url, env.codec, env.compat)?
        .with_credentials(connection.uuid.clone(), connection.token.clone())
        .with_fetch_timeout(Some(env.config.fetch_timeout));

    declare(&client, env, &connection, names).await?;

    let Some(task) = poll(&client, &connection, &args, &mut shutdown).await else {
        tracing::info!("no task received");
        return Ok(Outcome::NoTask);
    };
    tracing::info!("task {} picked", task.id);
    let settings = JobSettings {
        report_interval: env.config.report_interval,
        report_retry: env.config.report_retry.clone(),
        job_timeout: env.config.job_timeout,
        version: env.compat.version().to_string(),
    };
    let (cancel, _keep) = watch::channel(None);
    let cancel = Arc::new(cancel);
    let forward = {
        let cancel = Arc::clone(&cancel);
        tokio::spawn(async move {
            shutdown::requested(&mut shutdown).await;
            cancel.send_if_modified(|cause| {
                let first = cause.is_none();
                if first {
                    *cause = Some(CancelCause::Shutdown);
                }
                first
            });
        })
    };
    let task_id = task.id;
    let result = job::run_task(task, client, &settings, cancel).await;
    forward.abort();
    tracing::info!("task {task_id} finished: {}", result.as_str_name());
    Ok(Outcome::TaskRun(result))
}

async fn declare(
    client: &RunnerClient,
    env: &Env,
    connection: &Connection,
    names: Vec<String>,
) -> anyhow::Result<()> {
    let request = DeclareRequest {
        version: env.compat.version().to_string(),
        labels: names,
    };
    match client.declare(&request).await {
        Ok(response) => {
            let runner = response.runner.unwrap_or_default();
            tracing::info!(
                "declared runner {} (id {}) with labels {:?}",
                runner.name,
                runner.id,
                runner.labels
            );
            if runner.ephemeral {
                tracing::info!("the runner is ephemeral: it will get at most one task");
            }
            if let Some((path, registration)) = &connection.registration {
                update_registration_labels(path, registration, &connection.labels)?;
            }
            Ok(())
        }
        Err(e) if rpc::is_unimplemented(&e) => {
            tracing::warn!("Declare is not implemented by this instance; continuing");
            Ok(())
        }
        Err(e) => Err(e).context("Declare failed"),
    }
}

/// After a successful Declare the registration file carries the declared labels.
fn update_registration_labels(
    path: &Path,
    registration: &Registration,
    labels: &[String],
) -> anyhow::Result<()> {
    if registration.labels == labels {
        return Ok(());
    }
    let mut updated = registration.clone();
    updated.labels = labels.to_vec();
    updated.save(path)?;
    Ok(())
}

/// Asks for a task once per fetch interval until one arrives, or once without `--wait`.
/// The request key is kept after an error and renewed after every successful response.
async fn poll(
    client: &RunnerClient,
    connection: &Connection,
    args: &OneJobArgs,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Task> {
    let mut request_key = uuid::Uuid::new_v4().to_string();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown::requested(shutdown) => return None,
        }
        next = Instant::now() + connection.fetch_interval;
        let fetched = tokio::select! {
            fetched = fetch(client, args.handle.as_deref(), &request_key) => fetched,
            _ = shutdown::requested(shutdown) => return None,
        };
        match fetched {
            Ok(task) => {
                request_key = uuid::Uuid::new_v4().to_string();
                if task.is_some() {
                    return task;
                }
            }
            Err(e) => tracing::error!("failed to fetch task: {e}"),
        }
        if !args.wait {
            return None;
        }
        tracing::info!("received no task, trying again");
    }
}

async fn fetch(
    client: &RunnerClient,
    handle: Option<&str>,
    request_key: &str,
) -> Result<Option<Task>, ConnectError> {
    match handle {
        Some(handle) => {
            let request = FetchSingleTaskRequest {
                tasks_version: 0,
                handle: Some(handle.to_string()),
            };
            Ok(client
                .fetch_single_task(&request, Some(request_key))
                .await?
                .task)
        }
        None => {
            let request = FetchTaskRequest {
                tasks_version: 0,
                task_capacity: None,
            };
            Ok(client.fetch_task(&request, Some(request_key)).await?.task)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::Compat;
    use crate::config::Config;
    use runner_proto::connect::Codec;

    fn args() -> OneJobArgs {
        OneJobArgs {
            url: None,
            uuid: None,
            token_url: None,
            labels: vec![],
            fetch_interval: None,
            handle: None,
            wait: false,
        }
    }

    fn env_with_file(file: PathBuf) -> Env {
        Env {
            config: Config {
                file,
                ..Config::default()
            },
            codec: Codec::Proto,
            compat: Compat::default(),
        }
    }

    #[test]
    fn token_url_reads_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(
            read_token_url(&format!("file:{}", path.display())).unwrap(),
            "abc"
        );
        assert!(read_token_url("https://x/token").is_err());
        std::fs::write(&path, " \n").unwrap();
        assert!(read_token_url(&format!("file:{}", path.display())).is_err());
    }

    #[test]
    fn exactly_one_connection_source() {
        let dir = tempfile::tempdir().unwrap();
        let runner_file = dir.path().join(".runner");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "secret-token").unwrap();
        let env = env_with_file(runner_file.clone());

        let err = resolve(&args(), &env).unwrap_err();
        assert!(err.to_string().contains("no connection"), "{err}");

        let mut cli = args();
        cli.url = Some("http://h".into());
        cli.uuid = Some("u".into());
        cli.token_url = Some(format!("file:{}", token_file.display()));
        cli.labels = vec!["a:host".into()];
        cli.fetch_interval = Some("500ms".into());
        let c = resolve(&cli, &env).unwrap();
        assert_eq!(
            (c.url.as_str(), c.uuid.as_str(), c.token.as_str()),
            ("http://h", "u", "secret-token")
        );
        assert_eq!(c.labels, vec!["a:host"]);
        assert_eq!(c.fetch_interval, Duration::from_millis(500));
        assert!(!format!("{c:?}").contains("secret-token"));

        let mut partial = args();
        partial.url = Some("http://h".into());
        assert!(resolve(&partial, &env)
            .unwrap_err()
            .to_string()
            .contains("together"));

        Registration::new(
            1,
            "ru".into(),
            "n".into(),
            "t".into(),
            "http://f".into(),
            vec!["f:host".into()],
        )
        .save(&runner_file)
        .unwrap();
        let c = resolve(&args(), &env).unwrap();
        assert_eq!((c.url.as_str(), c.uuid.as_str()), ("http://f", "ru"));
        assert_eq!(c.labels, vec!["f:host"]);
        let err = resolve(&cli, &env).unwrap_err();
        assert!(
            err.to_string().contains("more than one connection"),
            "{err}"
        );

        let mut env = env;
        env.config.labels = vec!["cfg:host".into()];
        assert_eq!(resolve(&args(), &env).unwrap().labels, vec!["cfg:host"]);
    }
}
