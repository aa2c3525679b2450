//! The scenarios of issue 5: what jobs arrive, when, how long they run, and the pool cap.
//!
//! A scenario is plain data; `workload` turns it into workflow files and dispatches, so both
//! systems under test see exactly the same sequence of jobs.

use std::time::Duration;

/// How the jobs of a scenario reach the simulator.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// `runs` dispatches of the seed's two-job workflow, all at once.
    SeedRuns { runs: u32 },
    /// One run with `jobs` single-label jobs (a matrix), all waiting at once.
    Burst { jobs: u32 },
    /// One single-job run every `every`, for `duration`.
    Paced { every: Duration, duration: Duration },
    /// No jobs; the system under test is watched for `window` of simulated time.
    Idle { window: Duration },
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub arrival: Arrival,
    /// Seconds each job's step sleeps.
    pub job_seconds: f64,
    /// Cap of concurrent runners for the autoscaler (the seed always runs one at a time).
    pub max_runners: u32,
    /// Simulated seconds per real second (`forgejo-sim --time-scale`).
    pub time_scale: f64,
    /// Longest a system may take once the workload is submitted; a system still busy then
    /// is stopped and its unfinished jobs are reported as such (censored waits).
    pub deadline: Duration,
}

impl Scenario {
    /// Names accepted on the command line, in the order BENCHMARKS.md lists them.
    pub const NAMES: [&'static str; 6] = [
        "seed-example",
        "burst",
        "steady",
        "idle",
        "large-queue",
        "smoke",
    ];

    /// The scenario as issue 5 defines it.
    pub fn named(name: &str) -> Option<Scenario> {
        let s = |arrival, job_seconds, max_runners, time_scale, deadline_s| Scenario {
            name: name.to_string(),
            arrival,
            job_seconds,
            max_runners,
            time_scale,
            deadline: Duration::from_secs(deadline_s),
        };
        Some(match name {
            "seed-example" => s(Arrival::SeedRuns { runs: 20 }, 1.0, 20, 1.0, 900),
            "burst" => s(Arrival::Burst { jobs: 500 }, 0.5, 50, 1.0, 900),
            "steady" => s(
                Arrival::Paced {
                    every: Duration::from_millis(200),
                    duration: Duration::from_secs(120),
                },
                1.0,
                20,
                1.0,
                900,
            ),
            // 5 simulated minutes at 5x: 60 real seconds per system.
            "idle" => s(
                Arrival::Idle {
                    window: Duration::from_secs(300),
                },
                0.0,
                20,
                5.0,
                0,
            ),
            "large-queue" => s(Arrival::Burst { jobs: 5000 }, 0.5, 100, 1.0, 900),
            // For CI: three runs of the seed workflow with short jobs.
            "smoke" => s(Arrival::SeedRuns { runs: 3 }, 0.2, 5, 1.0, 60),
            _ => return None,
        })
    }

    /// Jobs the workload creates.
    pub fn total_jobs(&self) -> u32 {
        match &self.arrival {
            Arrival::SeedRuns { runs } => runs * 2,
            Arrival::Burst { jobs } => *jobs,
            Arrival::Paced { every, duration } => paced_count(*every, *duration),
            Arrival::Idle { .. } => 0,
        }
    }

    /// Real time the idle window lasts (simulated window divided by the time scale).
    pub fn idle_real_window(&self) -> Option<Duration> {
        match &self.arrival {
            Arrival::Idle { window } => Some(window.div_f64(self.time_scale)),
            _ => None,
        }
    }

    /// Replaces the job count (for reduced runs); the paced scenario keeps its rate and
    /// shortens its duration instead.
    pub fn with_jobs(mut self, jobs: u32) -> Scenario {
        self.arrival = match self.arrival {
            Arrival::SeedRuns { .. } => Arrival::SeedRuns {
                runs: jobs.div_ceil(2),
            },
            Arrival::Burst { .. } => Arrival::Burst { jobs },
            Arrival::Paced { every, .. } => Arrival::Paced {
                every,
                duration: every * jobs,
            },
            idle @ Arrival::Idle { .. } => idle,
        };
        self
    }

    /// One line for the table header and BENCHMARKS.md.
    pub fn describe(&self) -> String {
        match &self.arrival {
            Arrival::SeedRuns { runs } => format!(
                "{runs} runs of the seed workflow (first-job on trixie, second-job on [bookworm, test]) = {} jobs of `sleep {}`, all at once; autoscaler cap {}",
                runs * 2,
                self.job_seconds,
                self.max_runners
            ),
            Arrival::Burst { jobs } => {
                format!("{jobs} jobs of `sleep {}` waiting at once; autoscaler cap {}", self.job_seconds, self.max_runners)
            }
            Arrival::Paced { every, duration } => format!(
                "one job of `sleep {}` every {} ms for {} s ({} jobs); autoscaler cap {}",
                self.job_seconds,
                every.as_millis(),
                duration.as_secs(),
                self.total_jobs(),
                self.max_runners
            ),
            Arrival::Idle { window } => format!(
                "no jobs for {} simulated minutes (simulator --time-scale {}: {} real seconds)",
                window.as_secs() / 60,
                self.time_scale,
                window.div_f64(self.time_scale).as_secs_f64()
            ),
        }
    }
}

fn paced_count(every: Duration, duration: Duration) -> u32 {
    if every.is_zero() {
        return 0;
    }
    (duration.as_millis() / every.as_millis()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_a_scenario() {
        for name in Scenario::NAMES {
            assert_eq!(
                Scenario::named(name).map(|s| s.name),
                Some(name.to_string())
            );
        }
        assert!(Scenario::named("nope").is_none());
    }

    #[test]
    fn job_counts_follow_the_issue() {
        let count = |n: &str| Scenario::named(n).map(|s| s.total_jobs());
        assert_eq!(count("seed-example"), Some(40));
        assert_eq!(count("burst"), Some(500));
        assert_eq!(count("steady"), Some(600));
        assert_eq!(count("idle"), Some(0));
        assert_eq!(count("large-queue"), Some(5000));
    }

    #[test]
    fn idle_window_is_scaled_to_real_time() {
        let idle = Scenario::named("idle").expect("idle");
        assert_eq!(idle.idle_real_window(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn reduced_runs_keep_the_shape() {
        let steady = Scenario::named("steady").expect("steady").with_jobs(50);
        assert_eq!(steady.total_jobs(), 50);
        let seed = Scenario::named("seed-example").expect("seed").with_jobs(7);
        assert_eq!(seed.total_jobs(), 8);
    }
}
