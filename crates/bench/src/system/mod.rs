//! Systems under test: how each is started against a simulator, stopped, and measured.
//! Every system runs as a child process of the harness, with the same runner stand-in.

mod autoscaler;
pub mod docker;
mod seed;

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use crate::procmon::{self, Monitor, Usage};

pub use autoscaler::{AutoscalerSettings, PoolBackend};

/// The systems the harness knows (`--systems`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    Seed,
    AutoscalerProcess,
    AutoscalerDocker,
}

impl SystemKind {
    pub const ALL: [SystemKind; 3] = [
        SystemKind::Seed,
        SystemKind::AutoscalerProcess,
        SystemKind::AutoscalerDocker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Seed => "seed",
            SystemKind::AutoscalerProcess => "autoscaler-process",
            SystemKind::AutoscalerDocker => "autoscaler-docker",
        }
    }

    pub fn parse(name: &str) -> Option<SystemKind> {
        SystemKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Why the system cannot run on this machine, if it cannot (the docker system needs a
    /// Docker engine that answers and the stand-in image).
    pub fn unavailable(self) -> Option<String> {
        match self {
            SystemKind::AutoscalerDocker => docker::unavailable_reason(),
            _ => None,
        }
    }

    /// The interval at which the system reads the jobs list (P of the floor).
    pub fn poll_interval(self) -> Duration {
        match self {
            SystemKind::Seed => seed::POLL_INTERVAL,
            SystemKind::AutoscalerProcess | SystemKind::AutoscalerDocker => {
                autoscaler::POLL_INTERVAL
            }
        }
    }

    /// What the top process is, for BENCHMARKS.md.
    pub fn measured_process(self) -> &'static str {
        match self {
            SystemKind::Seed => "bash running tests/seed-style.sh",
            _ => "the forgejo-autoscaler process",
        }
    }
}

/// What a system needs to start.
pub struct Launch<'a> {
    pub url: &'a str,
    pub token: &'a str,
    pub runner_binary: &'a Path,
    pub work_dir: &'a Path,
    /// Jobs after which the system may stop by itself (0: never).
    pub max_jobs: u32,
    pub autoscaler: AutoscalerSettings,
}

/// A started system under test.
pub struct Running {
    pub kind: SystemKind,
    child: Child,
    monitor: Monitor,
    /// `/metrics` of the autoscaler, when it serves one.
    pub metrics_url: Option<String>,
    pub work_dir: PathBuf,
    /// The docker system's pool name, whose containers are looked for after the stop.
    docker_pool: Option<String>,
}

/// How a system ended.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub usage: Usage,
    /// Exit status, or a note that it had to be killed.
    pub exit: String,
    /// Runner processes (cwd under the work directory) or runner containers (of the docker
    /// system's pool) still present after the system stopped.
    pub leftover_processes: u64,
}

impl Running {
    pub fn start(kind: SystemKind, launch: &Launch<'_>) -> anyhow::Result<Running> {
        std::fs::create_dir_all(launch.work_dir)?;
        let mut docker_pool = None;
        let (child, metrics_url) = match kind {
            SystemKind::Seed => (seed::spawn(launch)?, None),
            SystemKind::AutoscalerProcess => autoscaler::spawn(
                launch,
                PoolBackend::Process {
                    runner: launch.runner_binary,
                },
                "bench",
            )?,
            SystemKind::AutoscalerDocker => {
                if let Some(reason) = kind.unavailable() {
                    anyhow::bail!("autoscaler-docker: {reason}");
                }
                let pool = docker::unique_pool_name();
                let started = autoscaler::spawn(
                    launch,
                    PoolBackend::Docker {
                        image: docker::IMAGE,
                    },
                    &pool,
                )?;
                docker_pool = Some(pool);
                started
            }
        };
        let monitor = Monitor::start(child.id());
        Ok(Running {
            kind,
            child,
            monitor,
            metrics_url,
            work_dir: launch.work_dir.to_path_buf(),
            docker_pool,
        })
    }

    /// True once the process has exited by itself (the seed after its max jobs).
    pub fn has_exited(&mut self) -> bool {
        // A zombie counts as exited; reading it without reaping keeps its CPU readable.
        procmon::exited_ticks(self.child.id(), Duration::ZERO).is_some()
    }

    /// Stops the system (SIGTERM to the autoscaler, which drains; the seed's whole process
    /// group), measures it, and kills any runner process it left behind.
    pub fn stop(mut self, grace: Duration) -> Stopped {
        self.monitor.sample_now();
        let pid = self.child.id();
        let already = procmon::exited_ticks(pid, Duration::ZERO);
        let mut forced = false;
        let ticks = match already {
            Some(t) => Some(t),
            None => {
                match self.kind {
                    // bash would not forward SIGTERM to its foreground runner; the group gets it.
                    SystemKind::Seed => unsafe { libc::kill(-(pid as i32), libc::SIGTERM) },
                    _ => unsafe { libc::kill(pid as i32, libc::SIGTERM) },
                };
                let t = procmon::exited_ticks(pid, grace);
                if t.is_none() {
                    forced = true;
                    let _ = self.child.kill();
                }
                t
            }
        };
        let status = self.child.wait();
        let exit = match (forced, status) {
            (true, _) => format!("killed after {grace:?} without exiting"),
            (false, Ok(s)) => s.to_string(),
            (false, Err(e)) => format!("wait failed: {e}"),
        };
        let usage = self.monitor.finish(ticks);
        // Give runners a moment to exit on their own before they count as left behind.
        std::thread::sleep(Duration::from_millis(500));
        let leftovers = processes_under(&self.work_dir);
        for leftover in &leftovers {
            unsafe { libc::kill(*leftover as i32, libc::SIGKILL) };
        }
        let leftover_containers = self
            .docker_pool
            .as_deref()
            .map(docker::remove_leftover_containers)
            .unwrap_or(0);
        Stopped {
            usage,
            exit,
            leftover_processes: leftovers.len() as u64 + leftover_containers,
        }
    }
}

/// Live processes whose working directory is under `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in SystemKind::ALL {
            assert_eq!(SystemKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(SystemKind::parse("autoscaler"), None);
    }

    #[test]
    fn only_docker_depends_on_the_machine() {
        assert!(SystemKind::Seed.unavailable().is_none());
        assert!(SystemKind::AutoscalerProcess.unavailable().is_none());
        // Whichever way the machine answers, an unavailable docker system says why.
        if let Some(reason) = SystemKind::AutoscalerDocker.unavailable() {
            assert!(reason.starts_with("not available: "), "{reason}");
        }
    }
}
