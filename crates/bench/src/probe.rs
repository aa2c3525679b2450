//! The runner start time S of the floor P/2 + S, measured in the same run against the same
//! simulator: the wall time of a runner stand-in `one-job` that finds no task (process start,
//! reading its credentials, `Declare`, one `FetchTask`, exit). That is the least a freshly
//! started runner needs before it could receive a job. Probe runners carry the label
//! `bench-probe`, which no job asks for, and their names start with [`PROBE_PREFIX`] so the
//! runner counts leave them out. For the docker system the probe runs in a fresh container of
//! the pool's image, so S includes the container's creation and start.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{sim::SimClient, system::docker};

pub const PROBE_PREFIX: &str = "bench-probe-";
const PROBES: usize = 5;
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Median, min and max of the probe times, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct StartTime {
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub samples: usize,
}

/// How a probe runner is started: the way the system under test starts its runners.
#[derive(Debug, Clone)]
pub enum ProbeRunner {
    /// The stand-in binary as a child process.
    Process(PathBuf),
    /// The stand-in image in a container on the host network (`docker run`).
    Container,
}

/// Runs the probes and returns their statistics.
pub async fn runner_start_time(
    sim: &SimClient,
    runner: &ProbeRunner,
    dir: &Path,
) -> anyhow::Result<StartTime> {
    let mut times = Vec::with_capacity(PROBES);
    for i in 0..PROBES {
        let probe_dir = dir.join(format!("probe-{i}"));
        std::fs::create_dir_all(&probe_dir)?;
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        sim.register_secret_runner(&format!("{PROBE_PREFIX}{i}"), &secret, &["bench-probe"])
            .await?;
        let uuid = uuid::Uuid::from_slice(&secret.as_bytes()[..16])
            .context("probe uuid")?
            .to_string();
        let token_file = probe_dir.join("token");
        write_private(&token_file, &secret)?;
        let (runner, url, dir) = (runner.clone(), sim.url.clone(), probe_dir.clone());
        let elapsed = tokio::task::spawn_blocking(move || match runner {
            ProbeRunner::Process(binary) => time_one_job(&binary, &url, &uuid, &token_file, &dir),
            ProbeRunner::Container => docker::time_probe_container(&url, &uuid, &token_file, &dir),
        })
        .await??;
        times.push(elapsed.as_secs_f64());
    }
    Ok(summarize(&mut times))
}

fn time_one_job(
    binary: &Path,
    url: &str,
    uuid: &str,
    token_file: &Path,
    dir: &Path,
) -> anyhow::Result<Duration> {
    let log = std::fs::File::create(dir.join("one-job.log"))?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args([
            "one-job",
            "--url",
            url,
            "--uuid",
            uuid,
            "--label",
            "bench-probe:host",
        ])
        .arg("--token-url")
        .arg(format!("file:{}", token_file.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the probe runner did not exit within {PROBE_TIMEOUT:?}; see {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn summarize(times: &mut [f64]) -> StartTime {
    times.sort_by(|a, b| a.total_cmp(b));
    let n = times.len();
    if n == 0 {
        return StartTime::default();
    }
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    StartTime {
        median_s: median,
        min_s: times[0],
        max_s: times[n - 1],
        samples: n,
    }
}

/// Writes a file only its owner can read (it holds a credential).
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        let s = summarize(&mut [0.3, 0.1, 0.2]);
        assert_eq!(
            (s.median_s, s.min_s, s.max_s, s.samples),
            (0.2, 0.1, 0.3, 3)
        );
        let s = summarize(&mut [0.4, 0.1, 0.2, 0.3]);
        assert!((s.median_s - 0.25).abs() < 1e-9);
    }

    #[test]
    fn private_files_are_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        write_private(&path, "x").expect("written");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
