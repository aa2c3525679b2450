//! One system through one scenario: a fresh simulator process, the seeding, the runner start
//! probes, the system, the workload, the wait for the last job (or the deadline), the stop,
//! and the collection of every number.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;

use crate::{
    binaries::Binaries,
    probe, procmon, prom,
    results::{self, Measured, SystemResult},
    scenario::{Arrival, Scenario},
    sim::{SimClient, SimProcess, Stats},
    system::{AutoscalerSettings, Launch, Running, SystemKind},
    workload,
};

/// Time the system gets to start (version detection, registration token) before jobs arrive.
const WARM_UP: Duration = Duration::from_secs(2);
/// After the last job: how long registrations may take to disappear before the stop.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a stopped system may take to exit.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub struct RunSettings<'a> {
    pub binaries: &'a Binaries,
    pub forgejo_version: &'a str,
    pub work_dir: &'a Path,
}

pub async fn run_system(
    scenario: &Scenario,
    kind: SystemKind,
    settings: &RunSettings<'_>,
) -> anyhow::Result<SystemResult> {
    let dir = settings.work_dir.join(kind.name());
    std::fs::create_dir_all(&dir)?;
    let sim = SimProcess::start(
        &settings.binaries.sim,
        settings.forgejo_version,
        scenario.time_scale,
        &dir.join("forgejo-sim.log"),
    )?;
    let client = SimClient::new(&sim.url)?;
    let token = client.create_token("bench").await?;
    client.create_repo(&token).await?;
    workload::prepare(&client, &token, scenario).await?;
    let probe_runner = match kind {
        SystemKind::AutoscalerDocker => probe::ProbeRunner::Container,
        _ => probe::ProbeRunner::Process(settings.binaries.runner.clone()),
    };
    let start = probe::runner_start_time(&client, &probe_runner, &dir.join("probes"))
        .await
        .context("measuring the runner start time")?;
    let sim_cpu_before = cpu_of(sim.pid());

    let before = client.stats().await?;
    let system_dir = dir.join("system");
    let launch = Launch {
        url: &sim.url,
        token: &token,
        runner_binary: &settings.binaries.runner,
        work_dir: &system_dir,
        max_jobs: scenario.total_jobs(),
        autoscaler: AutoscalerSettings {
            binary: settings.binaries.autoscaler.clone(),
            max_runners: scenario.max_runners,
        },
    };
    let mut running = Running::start(kind, &launch)?;
    let idle = matches!(scenario.arrival, Arrival::Idle { .. });
    let pause = if idle {
        WARM_UP
    } else {
        WARM_UP + workload::random_phase(kind.poll_interval())
    };
    tokio::time::sleep(pause).await;

    let window_start = client.stats().await?;
    let started = Instant::now();
    let mut submission = Some({
        let (client, scenario) = (client.clone(), scenario.clone());
        tokio::spawn(async move { workload::submit(&client, &scenario).await })
    });
    // A workload the simulator refused makes every number meaningless: the run fails, after
    // the system is stopped.
    let mut submit_error = None;
    let total = u64::from(scenario.total_jobs());
    let deadline = if idle {
        Duration::MAX
    } else {
        scenario.deadline
    };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(task) = submission.take_if(|t| t.is_finished()) {
            if let Err(e) = task.await.map_err(anyhow::Error::from).and_then(|r| r) {
                submit_error = Some(e);
                break;
            }
        }
        if submission.is_none() {
            if idle {
                break;
            }
            let stats = client.stats().await?;
            if stats.finished_jobs() >= total {
                break;
            }
        }
        if running.has_exited() {
            eprintln!("bench: {} exited before its work was done", kind.name());
            break;
        }
        if started.elapsed() >= deadline {
            eprintln!(
                "bench: {} reached the {}s deadline",
                kind.name(),
                deadline.as_secs()
            );
            break;
        }
    }
    let elapsed = started.elapsed();
    let window_end = client.stats().await?;
    if let Some(task) = submission {
        task.abort();
    }
    if !idle && kind != SystemKind::Seed {
        settle(&client).await;
    }
    let reconcile_tick = match &running.metrics_url {
        Some(url) => scrape_ticks(url).await,
        None => None,
    };
    let measured_process = kind.measured_process();
    let stopped = tokio::task::spawn_blocking(move || running.stop(STOP_GRACE)).await?;
    if let Some(e) = submit_error {
        return Err(e.context(format!(
            "submitting the workload (the system was stopped: {})",
            stopped.exit
        )));
    }
    let end_ms = unix_ms();
    let after = client.stats().await?;
    let jobs = client.jobs().await?;
    let runners = client.runners().await?;
    let sim_cpu_s = (cpu_of(sim.pid()) - sim_cpu_before).max(0.0);
    drop(sim);

    let requests = after.requests_since(&before);
    let idle_requests: u64 = window_end.requests_since(&window_start).values().sum();
    let cpu_s = match kind {
        // The autoscaler process alone (exact: read from its zombie).
        SystemKind::AutoscalerProcess | SystemKind::AutoscalerDocker => stopped.usage.cpu_self_s,
        // bash + curl + jq: the whole tree minus the runner processes (as last sampled).
        SystemKind::Seed => {
            (stopped.usage.cpu_tree_s - stopped.usage.cpu_runners_s).max(stopped.usage.cpu_self_s)
        }
    };
    Ok(results::compute(
        &jobs,
        &runners,
        Measured {
            jobs_total: total,
            time_scale: scenario.time_scale,
            end_ms,
            poll_interval_s: kind.poll_interval().as_secs_f64(),
            start,
            requests: &requests,
            idle_minutes: idle.then(|| elapsed.as_secs_f64() / 60.0),
            idle_requests,
            usage: &stopped.usage,
            cpu_s,
            sim_cpu_s,
            leftover_processes: stopped.leftover_processes,
            reconcile_tick,
            measured_process,
            exit: stopped.exit,
            elapsed_s: elapsed.as_secs_f64(),
        },
    ))
}

/// Waits (up to [`SETTLE`]) until no runner registration of the system is live, so an
/// ephemeral registration Forgejo is about to delete does not count as leaked. (The seed's
/// registrations are never deleted, so it skips this.)
async fn settle(client: &SimClient) {
    let until = Instant::now() + SETTLE;
    while Instant::now() < until {
        match client.stats().await {
            Ok(Stats { jobs, .. }) if jobs.get("running").copied().unwrap_or(0) == 0 => {
                let live = client
                    .runners()
                    .await
                    .map(|r| {
                        r.iter()
                            .filter(|r| !r.deleted && !r.name.starts_with(probe::PROBE_PREFIX))
                            .count()
                    })
                    .unwrap_or(0);
                if live == 0 {
                    return;
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn scrape_ticks(url: &str) -> Option<prom::TickStats> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    prom::tick_stats(&text)
}

/// CPU seconds a (running) process has used.
fn cpu_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| procmon::parse_stat(&s))
        .map(|s| s.cpu.own() as f64 / procmon::ticks_per_second())
        .unwrap_or(0.0)
}

/// "Now" in unix ms, for the waits of jobs that never started. The simulator's clock equals
/// the real one at time scale 1, the only scale the scenarios with jobs use.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
