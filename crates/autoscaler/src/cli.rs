//! Command line: parsing, logging set-up, and one function per command.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::{self, Config},
    forgejo::{ApiScope, ForgejoClient, ForgejoClientOptions, RetryPolicy},
    plan::Action,
    reconcile::{Reconciler, RunOptions},
    runtime::Runtime,
    secret::Secret,
};

pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "forgejo-autoscaler",
    version,
    about = "One fresh Forgejo Actions runner per waiting job, nothing left behind."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `forgejo_autoscaler=debug`.
    /// Default: `info`; `warn` for `demo`, which prints its own progress.
    #[arg(long, env = "FORGEJO_AUTOSCALER_LOG", global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the autoscaler (the daemon), from a configuration file or the seed's flags.
    Run(RunArgs),
    /// Check a configuration file; print FILE:LINE:COL and exit 2 on the first error.
    Validate(ConfigArg),
    /// One observation pass: print the actions the autoscaler would take. Changes nothing.
    Plan(ConfigArg),
    /// Remove every instance and runner registration this autoscaler owns (for uninstalling).
    Cleanup(ConfigArg),
    /// Show pools, instances and recent removals (from the running daemon, or from the store).
    Status(ConfigArg),
    /// Explain why a job is or is not getting a runner.
    Explain(ExplainArgs),
    /// Start a Forgejo simulator in-process and autoscale a burst of jobs on it (or on a real Forgejo).
    Demo(crate::demo::DemoArgs),
}

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// A job id; without it, every waiting job is explained.
    pub job_id: Option<i64>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(short = 'c', long = "config", conflicts_with_all = ["url", "user", "password_file"])]
    pub config: Option<PathBuf>,
    /// The seed's way, without a file: Forgejo URL.
    #[arg(long, requires_all = ["user", "password_file"])]
    pub url: Option<String>,
    /// Forgejo user whose password creates the API token (HTTP Basic, as the seed does).
    #[arg(long)]
    pub user: Option<String>,
    /// File holding that user's password (never pass a password as an argument).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Scope to serve: "instance", "user", "org:NAME" or "repo:OWNER/NAME" (default: user).
    #[arg(long)]
    pub scope: Option<String>,
    /// Stop after this many jobs ran to completion.
    #[arg(long)]
    pub max_jobs: Option<u32>,
    /// The runner executable (seed mode; default `forgejo-runner` on PATH).
    #[arg(long, default_value = "forgejo-runner")]
    pub runner_binary: PathBuf,
    /// Where the store, instances and logs go (seed mode).
    #[arg(long, default_value = "forgejo-autoscaler-state")]
    pub state_dir: PathBuf,
    /// Global cap on concurrent runners (seed mode).
    #[arg(long, default_value_t = 10)]
    pub max_runners: u32,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    init_logging(
        cli.log_format,
        cli.log_level.as_deref().unwrap_or(default_level),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(dispatch(cli.command))
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Validate(args) => validate(&args.config),
        Command::Run(args) => run_command(args).await,
        Command::Plan(args) => with_config(&args.config, plan_command).await,
        Command::Cleanup(args) => with_config(&args.config, cleanup_command).await,
        Command::Status(args) => with_config(&args.config, crate::http::status_command).await,
        Command::Explain(args) => {
            let job = args.job_id;
            with_config(&args.config, move |c| crate::http::explain_command(c, job)).await
        }
        Command::Demo(args) => crate::demo::run(args).await,
    }
}

/// Loads the configuration (exit 2 on error) and runs `f` with it (exit 1 on error).
async fn with_config<F, Fut>(path: &std::path::Path, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match f(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    match config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(config)
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match load_config(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} pool{}, {} scope{}, global cap {})",
                path.display(),
                config.pools.len(),
                if config.pools.len() == 1 { "" } else { "s" },
                config.forgejo.scopes.len(),
                if config.forgejo.scopes.len() == 1 {
                    ""
                } else {
                    "s"
                },
                config.limits.max_runners
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn run_command(args: RunArgs) -> ExitCode {
    let (config, seed_token) = match (&args.config, &args.url) {
        (Some(path), _) => match load_config(path) {
            Ok(c) => (c, None),
            Err(code) => return code,
        },
        (None, Some(_)) => match seed_config(&args).await {
            Ok((c, token)) => (c, Some(token)),
            Err(SeedError::Usage(message)) => {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_USAGE);
            }
            Err(SeedError::Runtime(e)) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        },
        (None, None) => {
            eprintln!(
                "error: give a configuration file (-c FILE) or --url, --user and --password-file"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = run_daemon(
        config,
        RunOptions {
            max_jobs: args.max_jobs,
        },
        shutdown_signal(),
    )
    .await;
    if let Some(token) = seed_token {
        token.revoke().await;
    }
    match result {
        Ok(done) => {
            tracing::info!(jobs_done = done, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Runs the daemon: the reconcile loop plus the HTTP endpoints, until `shutdown` or `--max-jobs`.
pub async fn run_daemon(
    config: Config,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u32> {
    let _lock = crate::runtime::lock_state_dir(&config)?;
    if let Some(ha) = config.ha.clone() {
        // Replicas: one leader, elected on a Lease (docs/high-availability.md).
        let (lease, namespace) = crate::ha::kube::connect(&ha, &config.kubernetes).await?;
        return crate::ha::driver::run(config, ha, lease, &namespace, options, shutdown).await;
    }
    let rt = Arc::new(Runtime::start(config).await?);
    // A single instance always acts.
    rt.metrics.leader.set(1);
    let reconciler = Reconciler::new(rt.clone());
    let server = crate::http::serve(rt.clone(), reconciler.snapshot.clone()).await?;
    let result = reconciler.run(options, shutdown).await;
    if let Some(server) = server {
        server.abort();
    }
    result
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The API token seed mode created with the user's password: revoked when the run ends, so
/// every start does not leave a write-scoped token behind.
struct SeedToken {
    client: ForgejoClient,
    user: String,
    password: Secret,
    name: String,
    file: PathBuf,
}

impl SeedToken {
    async fn revoke(self) {
        let _ = std::fs::remove_file(&self.file);
        match self
            .client
            .delete_access_token(&self.user, &self.password, &self.name)
            .await
        {
            Ok(()) => tracing::info!(token = %self.name, "revoked the API token this run created"),
            Err(e) => {
                tracing::warn!(token = %self.name, error = %e, "cannot revoke the API token this run created; delete it in the user's settings (Applications)")
            }
        }
    }
}

enum SeedError {
    Usage(String),
    Runtime(anyhow::Error),
}

/// `run --url --user --password-file`: creates an API token with basic auth (as the seed
/// does) and builds the seed's configuration: its label mapping, the process backend.
async fn seed_config(args: &RunArgs) -> Result<(Config, SeedToken), SeedError> {
    let (Some(url), Some(user), Some(password_file)) = (&args.url, &args.user, &args.password_file)
    else {
        return Err(SeedError::Usage(
            "--url needs --user and --password-file".into(),
        ));
    };
    let password = read_secret_file(password_file).map_err(SeedError::Usage)?;
    let scope: ApiScope = args
        .scope
        .as_deref()
        .unwrap_or("user")
        .parse()
        .map_err(SeedError::Usage)?;
    let state_dir =
        std::path::absolute(&args.state_dir).map_err(|e| SeedError::Runtime(e.into()))?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))
        .map_err(SeedError::Runtime)?;
    let client = ForgejoClient::new(ForgejoClientOptions {
        url: url.trim_end_matches('/').to_string(),
        token: None,
        request_timeout: std::time::Duration::from_secs(15),
        ca_file: None,
        retry: RetryPolicy::default(),
    })
    .map_err(SeedError::Runtime)?;
    let scopes: &[&str] = match scope {
        ApiScope::Instance => &[
            "write:admin",
            "write:repository",
            "write:organization",
            "write:user",
        ],
        _ => &["write:repository", "write:organization", "write:user"],
    };
    let name = format!(
        "forgejo-autoscaler-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let token = client
        .create_access_token(user, &password, &name, scopes)
        .await
        .context("creating an API token with the user's password")
        .map_err(SeedError::Runtime)?;
    let token_path = state_dir.join("token");
    crate::secret::write_private_file(&token_path, token.expose().as_bytes())
        .context("writing the API token file")
        .map_err(SeedError::Runtime)?;
    let text = seed_config_text(url, &scope, &args.runner_binary, args.max_runners);
    let path = state_dir.join("autoscaler.toml");
    std::fs::write(&path, &text)
        .context("writing the seed configuration")
        .map_err(SeedError::Runtime)?;
    let config = config::parse(&text, &path).map_err(|e| SeedError::Usage(e.to_string()))?;
    let seed_token = SeedToken {
        client,
        user: user.clone(),
        password,
        name,
        file: token_path,
    };
    Ok((config, seed_token))
}

/// The seed's label mapping, as a configuration file (written beside the store, so an admin can
/// start from it).
pub fn seed_config_text(
    url: &str,
    scope: &ApiScope,
    runner_binary: &std::path::Path,
    max_runners: u32,
) -> String {
    let binary = std::path::absolute(runner_binary)
        .ok()
        .filter(|_| runner_binary.components().count() > 1)
        .unwrap_or_else(|| runner_binary.to_path_buf());
    format!(
        r#"# Written by `forgejo-autoscaler run --url ...` (the seed's settings).
[forgejo]
url = "{url}"
token_file = "token"
scopes = ["{scope}"]
version = "auto"
poll_interval = "2s"

[runner]
binary = "{binary}"

[limits]
max_runners = {max_runners}

[store]
path = "autoscaler.db"

[http]
listen = "off"

[[pools]]
name = "seed"
labels = ["trixie:docker://debian:trixie", "bookworm:docker://debian:bookworm", "ubuntu-2404:docker://ubuntu:24.04", "test"]
backend = "process"
max_runners = {max_runners}
"#,
        url = url.trim_end_matches('/'),
        binary = binary.display(),
    )
}

/// Reads a one-line secret file; the error never contains the value.
pub fn read_secret_file(path: &std::path::Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        return Err(format!(
            "{} is empty; put the password on its first line",
            path.display()
        ));
    }
    Ok(Secret::new(value))
}

async fn plan_command(config: Config) -> anyhow::Result<()> {
    let rt = Arc::new(Runtime::start(config).await?);
    let mut reconciler = Reconciler::new(rt.clone());
    let (observed, errors) = reconciler.observe(false, None).await;
    let plan = crate::plan::plan(
        &observed,
        &rt.pools,
        crate::plan::Limits {
            max_runners: rt.config.limits.max_runners,
        },
    );
    println!(
        "Forgejo {} at {} (strategy: {:?})",
        rt.version, rt.config.forgejo.url, rt.strategy
    );
    for error in &errors {
        println!("  could not observe: {error}");
    }
    for scope_jobs in &observed.jobs {
        match &scope_jobs.jobs {
            Some(jobs) => {
                let waiting = jobs
                    .iter()
                    .filter(|j| j.status == crate::forgejo::JobStatus::Waiting)
                    .count();
                println!(
                    "  {}: {} waiting, {} running",
                    scope_jobs.scope,
                    waiting,
                    jobs.len() - waiting
                );
            }
            None => println!("  {}: jobs could not be listed", scope_jobs.scope),
        }
    }
    for (pool, usage) in &plan.pools {
        println!(
            "  pool {pool}: {}/{} instances, {} waiting jobs fit",
            usage.used, usage.cap, usage.waiting_jobs
        );
    }
    if plan.actions.is_empty() {
        println!("Nothing to do.");
    }
    for action in &plan.actions {
        match action {
            Action::Create { pool, scope, job: Some(job) } => println!(
                "would create: instance in pool {pool} for job {} {:?} (runs-on {:?}, scope {scope})",
                job.id, job.name, job.runs_on
            ),
            Action::Create { pool, scope, job: None } => println!("would create: warm spare in pool {pool} (scope {scope})"),
            Action::Delete { id, reason } => println!("would remove: instance {id} ({})", reason.as_str()),
            Action::DeleteOrphanInstance { backend, key } => println!("would remove: orphan instance {key} ({backend})"),
            Action::DeleteOrphanRunner { scope, runner_id } => println!("would delete: orphan runner {runner_id} in {scope}"),
        }
    }
    for unmatched in &plan.unmatched {
        println!(
            "no pool fits: job {} {:?} needs {:?}",
            unmatched.job_id, unmatched.name, unmatched.runs_on
        );
    }
    Ok(())
}

async fn cleanup_command(config: Config) -> anyhow::Result<()> {
    let _lock = crate::runtime::lock_state_dir(&config)?;
    let rt = Arc::new(Runtime::start(config).await?);
    let report = crate::cleanup::remove_everything(&rt).await?;
    println!("{report}");
    if report.failures > 0 {
        anyhow::bail!(
            "{} item(s) could not be removed; run cleanup again",
            report.failures
        );
    }
    Ok(())
}
