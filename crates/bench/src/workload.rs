//! Turns a scenario into workflow files and dispatches. Every workflow is `workflow_dispatch`
//! only, so committing it starts nothing; the harness decides when each run starts.

use std::time::{Duration, Instant};

use crate::{
    scenario::{Arrival, Scenario},
    sim::SimClient,
};

/// Most matrix combinations per job (Forgejo caps a matrix at 256).
const MATRIX_CHUNK: u32 = 200;
/// Most jobs per run: the simulator refuses a run of more than 2048 jobs, so a larger burst
/// is several runs dispatched back to back.
const RUN_CHUNK: u32 = 2000;

/// Jobs of each run of a burst.
pub fn burst_runs(jobs: u32) -> Vec<u32> {
    let mut runs = Vec::new();
    let mut remaining = jobs;
    while remaining > 0 {
        let n = remaining.min(RUN_CHUNK);
        runs.push(n);
        remaining -= n;
    }
    runs
}

/// The seed's workflow: first-job on trixie, second-job on [bookworm, test].
pub fn seed_workflow(job_seconds: f64) -> String {
    format!(
        "name: on-demand\non:\n  workflow_dispatch:\njobs:\n  first-job:\n    runs-on: trixie\n    steps:\n      - run: echo first job; sleep {job_seconds}\n  second-job:\n    runs-on: [bookworm, test]\n    steps:\n      - run: echo second job; sleep {job_seconds}\n"
    )
}

/// One run of `jobs` jobs on `trixie`, as matrix jobs of at most 200 combinations.
pub fn burst_workflow(jobs: u32, job_seconds: f64) -> String {
    let mut text = "name: burst\non:\n  workflow_dispatch:\njobs:\n".to_string();
    let mut remaining = jobs;
    let mut part = 0;
    while remaining > 0 {
        let n = remaining.min(MATRIX_CHUNK);
        part += 1;
        let values: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        text.push_str(&format!(
            "  burst-{part}:\n    runs-on: trixie\n    strategy:\n      matrix:\n        n: [{}]\n    steps:\n      - run: sleep {job_seconds}\n",
            values.join(", ")
        ));
        remaining -= n;
    }
    text
}

/// A run with one job on `trixie`.
pub fn single_job_workflow(job_seconds: f64) -> String {
    format!("name: single\non:\n  workflow_dispatch:\njobs:\n  job:\n    runs-on: trixie\n    steps:\n      - run: sleep {job_seconds}\n")
}

/// Commits the workflow files of a scenario (before the system under test starts).
pub async fn prepare(sim: &SimClient, token: &str, scenario: &Scenario) -> anyhow::Result<()> {
    match &scenario.arrival {
        Arrival::SeedRuns { .. } => {
            sim.commit_workflow(token, "seed.yml", &seed_workflow(scenario.job_seconds))
                .await
        }
        Arrival::Burst { jobs } => {
            for (i, n) in burst_runs(*jobs).into_iter().enumerate() {
                sim.commit_workflow(
                    token,
                    &format!("burst-{}.yml", i + 1),
                    &burst_workflow(n, scenario.job_seconds),
                )
                .await?;
            }
            Ok(())
        }
        Arrival::Paced { .. } => {
            sim.commit_workflow(
                token,
                "single.yml",
                &single_job_workflow(scenario.job_seconds),
            )
            .await
        }
        Arrival::Idle { .. } => Ok(()),
    }
}

/// Starts the runs of a scenario. Returns when the last run was dispatched (for the paced
/// scenario, after its whole duration).
pub async fn submit(sim: &SimClient, scenario: &Scenario) -> anyhow::Result<()> {
    match &scenario.arrival {
        Arrival::SeedRuns { runs } => {
            for _ in 0..*runs {
                sim.dispatch("seed.yml").await?;
            }
        }
        Arrival::Burst { jobs } => {
            for i in 0..burst_runs(*jobs).len() {
                sim.dispatch(&format!("burst-{}.yml", i + 1)).await?;
            }
        }
        Arrival::Paced { every, .. } => {
            // Absolute deadlines, so a slow dispatch does not shift every later one.
            let start = Instant::now();
            for i in 0..scenario.total_jobs() {
                let at = start + *every * i;
                tokio::time::sleep_until(at.into()).await;
                sim.dispatch("single.yml").await?;
            }
        }
        Arrival::Idle { window } => tokio::time::sleep(window.div_f64(scenario.time_scale)).await,
    }
    Ok(())
}

/// A pause before the workload, drawn so the arrival falls at a random point of the system's
/// poll cycle (otherwise a poller that happens to poll right at arrival looks better than it is).
pub fn random_phase(poll: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    poll.mul_f64(f64::from(nanos % 1_000_000) / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_splits_into_matrix_chunks() {
        let yaml = burst_workflow(450, 0.5);
        assert_eq!(yaml.matches("runs-on: trixie").count(), 3);
        assert!(yaml.contains("n: [1, 2, 3"));
        assert!(yaml.contains("burst-3:"));
        assert!(!yaml.contains("burst-4:"));
        assert!(yaml.contains("sleep 0.5"));
    }

    #[test]
    fn large_bursts_are_split_into_runs_the_simulator_accepts() {
        assert_eq!(burst_runs(5000), vec![2000, 2000, 1000]);
        assert_eq!(burst_runs(500), vec![500]);
        assert!(burst_runs(0).is_empty());
    }

    #[test]
    fn seed_workflow_has_the_seed_labels() {
        let yaml = seed_workflow(1.0);
        assert!(yaml.contains("runs-on: trixie"));
        assert!(yaml.contains("runs-on: [bookworm, test]"));
        assert!(yaml.contains("workflow_dispatch"));
    }

    #[test]
    fn random_phase_stays_inside_the_poll_interval() {
        for _ in 0..100 {
            assert!(random_phase(Duration::from_secs(5)) < Duration::from_secs(5));
        }
    }
}
