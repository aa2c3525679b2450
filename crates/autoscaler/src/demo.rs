//! `demo`: the README's first command. Starts the Forgejo simulator in-process (or uses a real
//! Forgejo), commits the seed's example workflow plus a burst of jobs, autoscales them with the
//! process backend and the runner stand-in, and prints a summary. Exit 0 only if every job
//! succeeded and nothing was left behind.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::Engine;
use clap::Args;
use serde::Deserialize;

use crate::{
    cli::{read_secret_file, run_daemon, EXIT_RUNTIME, EXIT_USAGE},
    config,
    forgejo::{ForgejoClient, ForgejoClientOptions, RetryPolicy},
    reconcile::RunOptions,
    secret::Secret,
};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Forgejo version the simulator imitates.
    #[arg(long, default_value = "15", value_parser = ["13", "14", "15"])]
    pub forgejo_version: String,
    /// Jobs in the burst, on top of the seed workflow's two (at most 2000: Forgejo's job parser,
    /// and the simulator, refuse a run of more than 2048 jobs).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=2000))]
    pub jobs: u32,
    /// Global cap on concurrent runners.
    #[arg(long, default_value_t = 10)]
    pub max_runners: u32,
    /// A real Forgejo instead of the simulator (as the seed does it).
    #[arg(long, requires_all = ["user", "password_file"])]
    pub forgejo_url: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Runner executable for a real Forgejo (the simulator demo uses the built-in stand-in).
    #[arg(long, default_value = "forgejo-runner")]
    pub runner_binary: PathBuf,
    /// Give up after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Keep the demo's work directory (store, logs) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

const SEED_WORKFLOW_PUSH: &str = r#"name: on-demand
on: [push]
jobs:
  first-job:
    runs-on: trixie
    steps:
      - run: echo "first job, on a fresh runner"; sleep 1
  second-job:
    runs-on: [bookworm, test]
    steps:
      - run: echo "second job, on a fresh runner"; sleep 1
"#;

const SEED_WORKFLOW_SCHEDULE: &str = r#"name: on-demand
on:
  schedule:
    - cron: '* * * * *'
jobs:
  first-job:
    runs-on: trixie
    steps:
      - run: echo "first job"; sleep 1
  second-job:
    runs-on: [bookworm, test]
    steps:
      - run: echo "second job"; sleep 1
"#;

pub async fn run(args: DemoArgs) -> ExitCode {
    let result = match &args.forgejo_url {
        Some(url) => real_forgejo(&args, url).await,
        None => simulated(&args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_RUNTIME),
        Err(DemoError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(DemoError::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

enum DemoError {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for DemoError {
    fn from(e: anyhow::Error) -> Self {
        DemoError::Runtime(e)
    }
}

/// The demo's work directory, removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("work directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn work_dir(keep: bool) -> anyhow::Result<WorkDir> {
    let path = std::env::temp_dir().join(format!(
        "forgejo-autoscaler-demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&path)?;
    Ok(WorkDir { path, keep })
}

async fn simulated(args: &DemoArgs) -> Result<bool, DemoError> {
    let version: forgejo_sim::ForgejoVersion = args
        .forgejo_version
        .parse()
        .map_err(|e| DemoError::Usage(format!("--forgejo-version: {e:?}")))?;
    let sim = forgejo_sim::SimServer::start(
        "127.0.0.1:0".parse().expect("literal address"),
        forgejo_sim::SimConfig {
            version,
            admin_user: "root".into(),
            admin_password: "admin1234".into(),
            time_scale: 1.0,
        },
    )
    .await
    .context("starting the Forgejo simulator")?;
    let url = sim.url();
    println!(
        "Forgejo {} simulator listening on {url}",
        args.forgejo_version
    );
    let work = work_dir(args.keep)?;
    let result = simulated_in(args, &url, &work.path).await;
    sim.shutdown().await;
    Ok(result?)
}

async fn simulated_in(args: &DemoArgs, url: &str, work: &Path) -> anyhow::Result<bool> {
    let anonymous = client(url, None)?;
    let token = anonymous
        .create_access_token(
            "root",
            &Secret::new("admin1234"),
            "autoscaler-demo",
            &["write:repository", "write:user", "write:organization"],
        )
        .await?;
    let api = anonymous.with_token(token.clone());
    create_repo(&api).await?;
    // One commit: every push runs every push-triggered workflow, so a second commit would run
    // the seed jobs again.
    commit_file(
        &api,
        ".forgejo/workflows/demo.yml",
        &demo_workflow(args.jobs),
    )
    .await?;
    let total = args.jobs as u64 + 2;
    println!("committed the seed workflow (first-job on trixie, second-job on [bookworm, test]) and a burst of {} jobs", args.jobs);

    let runner = work.join("fake-forgejo-runner");
    std::os::unix::fs::symlink(std::env::current_exe()?, &runner)
        .context("linking the runner stand-in")?;
    crate::secret::write_private_file(&work.join("token"), token.expose().as_bytes())?;
    let text = demo_config(url, &runner, args.max_runners, "1s");
    let config_path = work.join("autoscaler.toml");
    std::fs::write(&config_path, &text)?;
    let config = config::parse(&text, &config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store_path = config.store.path.clone();

    let started = Instant::now();
    let sim_url = url.to_string();
    let timeout = args.timeout;
    let finished = async move {
        let http = reqwest::Client::new();
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Ok(stats) = sim_stats(&http, &sim_url).await else {
                continue;
            };
            let j = &stats.jobs;
            let done = j.success + j.failure + j.cancelled + j.skipped;
            let line = format!(
                "[{:>4.0}s] jobs: {:>3} waiting, {:>3} running, {:>3}/{} done | runners registered: {}",
                started.elapsed().as_secs_f64(), j.waiting + j.blocked, j.running, done, total, stats.runners.active
            );
            if line[8..] != last[last.len().min(8)..] {
                println!("{line}");
                last = line;
            }
            if done >= total || started.elapsed() > timeout {
                break;
            }
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = finished => {}
            _ = crate::cli::shutdown_signal() => {}
        }
    };
    run_daemon(config, RunOptions::default(), shutdown).await?;
    let elapsed = started.elapsed();
    summarize(url, &store_path, work, total, elapsed).await
}

#[derive(Debug, Deserialize, Default)]
struct SimStats {
    jobs: JobCounts,
    runners: RunnerCounts,
}

#[derive(Debug, Deserialize, Default)]
struct JobCounts {
    #[serde(default)]
    blocked: u64,
    #[serde(default)]
    waiting: u64,
    #[serde(default)]
    running: u64,
    #[serde(default)]
    success: u64,
    #[serde(default)]
    failure: u64,
    #[serde(default)]
    cancelled: u64,
    #[serde(default)]
    skipped: u64,
}

#[derive(Debug, Deserialize, Default)]
struct RunnerCounts {
    #[serde(default)]
    active: u64,
    #[serde(default)]
    deleted: u64,
}

#[derive(Debug, Deserialize)]
struct SimJob {
    status: String,
    created: u64,
    started: Option<u64>,
}

async fn sim_stats(http: &reqwest::Client, url: &str) -> anyhow::Result<SimStats> {
    Ok(http
        .get(format!("{url}/_sim/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn summarize(
    url: &str,
    store_path: &Path,
    work: &Path,
    total: u64,
    elapsed: Duration,
) -> anyhow::Result<bool> {
    let http = reqwest::Client::new();
    let jobs: Vec<SimJob> = http
        .get(format!("{url}/_sim/jobs"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let stats = sim_stats(&http, url).await?;
    let succeeded = jobs.iter().filter(|j| j.status == "success").count() as u64;
    let mut waits: Vec<f64> = jobs
        .iter()
        .filter_map(|j| {
            j.started
                .map(|s| s.saturating_sub(j.created) as f64 / 1000.0)
        })
        .collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    let store = crate::store::Store::open(store_path)?;
    let created = store.total_instances()?;
    let live = store.live_instances()?.len() as u64;
    let removed: u64 = store.gone_by_reason()?.iter().map(|(_, n)| n).sum();
    let reasons = store.gone_by_reason()?;
    let backend_left = std::fs::read_dir(work.join("state/instances"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let identities = store.all_identities()?.len() as u64;
    // 15: every runner registration we made must be deleted; 13/14: the registrations that
    // exist are the reusable identities (bounded by the cap), anything beyond them leaked.
    let registrations_left = stats.runners.active.saturating_sub(identities);
    let leftovers = live + backend_left + registrations_left;
    println!();
    println!("summary");
    println!(
        "  jobs done:            {succeeded}/{total} succeeded in {:.1}s",
        elapsed.as_secs_f64()
    );
    println!(
        "  job wait (waiting -> running): p50 {:.2}s, p95 {:.2}s, max {:.2}s",
        percentile(&waits, 0.50),
        percentile(&waits, 0.95),
        waits.last().copied().unwrap_or(0.0)
    );
    println!("  runners created:      {created}");
    println!(
        "  runners removed:      {removed} ({})",
        reasons
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if identities > 0 {
        println!("  runner identities:    {identities} registered once and reused (Forgejo 13/14 has no runner delete API)");
    }
    println!(
        "  runner registrations deleted in Forgejo: {}",
        stats.runners.deleted
    );
    println!(
        "  leftovers:            {leftovers} (instances in the store: {live}, on the backend: {backend_left}, registrations: {registrations_left})"
    );
    let ok = succeeded == total && leftovers == 0;
    println!(
        "{}",
        if ok {
            "OK: every job succeeded and nothing was left behind"
        } else {
            "FAILED"
        }
    );
    Ok(ok)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The seed's two jobs plus `burst` jobs (matrix jobs of at most 200 combinations each).
fn demo_workflow(burst: u32) -> String {
    let mut text = SEED_WORKFLOW_PUSH.to_string();
    let mut remaining = burst;
    let mut part = 0;
    while remaining > 0 {
        let n = remaining.min(200);
        part += 1;
        let values: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        text.push_str(&format!(
            "  burst-{part}:\n    runs-on: trixie\n    strategy:\n      matrix:\n        n: [{}]\n    steps:\n      - run: echo \"burst job\"; sleep 1\n",
            values.join(", ")
        ));
        remaining -= n;
    }
    text
}

fn demo_config(url: &str, runner: &Path, max_runners: u32, poll: &str) -> String {
    format!(
        r#"[forgejo]
url = "{url}"
token_file = "token"
scopes = ["repo:root/on-demand"]
version = "auto"
poll_interval = "{poll}"

[runner]
binary = "{runner}"
fetch_interval = "1s"

[limits]
max_runners = {max_runners}

[store]
path = "state/autoscaler.db"

[http]
listen = "off"

[[pools]]
name = "debian"
labels = ["trixie:docker://debian:trixie", "bookworm:docker://debian:bookworm", "test:docker://debian:bookworm"]
backend = "process"
max_runners = {max_runners}
"#,
        runner = runner.display()
    )
}

fn client(url: &str, token: Option<Secret>) -> anyhow::Result<ForgejoClient> {
    ForgejoClient::new(ForgejoClientOptions {
        url: url.trim_end_matches('/').to_string(),
        token,
        request_timeout: Duration::from_secs(15),
        ca_file: None,
        retry: RetryPolicy::default(),
    })
}

async fn create_repo(api: &ForgejoClient) -> anyhow::Result<()> {
    let body =
        serde_json::json!({ "name": "on-demand", "auto_init": true, "default_branch": "main" });
    match api
        .post_json::<_, serde_json::Value>("/user/repos", "/user/repos", &body)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(409) => Ok(()),
        Err(e) => Err(e).context("creating the on-demand repository"),
    }
}

async fn commit_file(api: &ForgejoClient, path: &str, content: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "content": base64::engine::general_purpose::STANDARD.encode(content),
        "message": format!("add {path}"),
    });
    api.post_json::<_, serde_json::Value>(
        &format!("/repos/root/on-demand/contents/{path}"),
        "/repos/{owner}/{repo}/contents/{filepath}",
        &body,
    )
    .await
    .with_context(|| format!("committing {path}"))?;
    Ok(())
}

/// The same demo against a real Forgejo, as the seed does it: the `on-demand` repository with
/// the scheduled workflow, N jobs processed, then stop.
async fn real_forgejo(args: &DemoArgs, url: &str) -> Result<bool, DemoError> {
    let (Some(user), Some(password_file)) = (&args.user, &args.password_file) else {
        return Err(DemoError::Usage(
            "--forgejo-url needs --user and --password-file".into(),
        ));
    };
    let password = read_secret_file(password_file).map_err(DemoError::Usage)?;
    let anonymous = client(url, None)?;
    let name = format!(
        "autoscaler-demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let token = anonymous
        .create_access_token(
            user,
            &password,
            &name,
            &["write:repository", "write:user", "write:organization"],
        )
        .await
        .map_err(anyhow::Error::from)?;
    let api = anonymous.with_token(token.clone());
    create_repo(&api).await?;
    commit_file(&api, ".forgejo/workflows/demo.yml", SEED_WORKFLOW_SCHEDULE).await?;
    let work = work_dir(args.keep)?;
    crate::secret::write_private_file(&work.path.join("token"), token.expose().as_bytes())
        .map_err(anyhow::Error::from)?;
    let text = demo_config(url, &args.runner_binary, args.max_runners, "5s")
        .replace("root/on-demand", &format!("{user}/on-demand"));
    let config_path = work.path.join("autoscaler.toml");
    std::fs::write(&config_path, &text).map_err(anyhow::Error::from)?;
    let config = config::parse(&text, &config_path).map_err(|e| DemoError::Usage(e.to_string()))?;
    println!(
        "processing {} jobs from the scheduled workflow (one run per minute) on {url}",
        args.jobs
    );
    let done = run_daemon(
        config,
        RunOptions {
            max_jobs: Some(args.jobs),
        },
        crate::cli::shutdown_signal(),
    )
    .await?;
    println!("jobs done: {done}/{}", args.jobs);
    if let Err(e) = anonymous.delete_access_token(user, &password, &name).await {
        eprintln!("warning: cannot revoke the demo's API token {name}: {e}; delete it in {user}'s settings (Applications)");
    }
    println!(
        "left in Forgejo on purpose: the repository {user}/on-demand with its scheduled workflow (a run every minute). Delete the repository, or .forgejo/workflows/demo.yml in it, when you are done."
    );
    let _ = Arc::new(());
    Ok(done >= args.jobs)
}
