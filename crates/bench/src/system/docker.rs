//! `autoscaler-docker`: the same autoscaler as `autoscaler-process`, with a docker pool whose
//! containers run the stand-in image (`tests/support/build-runner-image.sh`) on the host
//! network, so they reach the simulator on loopback. This module holds what only the docker
//! system needs: whether the engine and image are there, the runner start time of a
//! container, and the containers a run left behind.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// The stand-in image the docker pool runs.
pub const IMAGE: &str = "local/forgejo-runner-stand-in:latest";
/// The container label that names a runner's pool (set by the docker backend).
const POOL_LABEL: &str = "org.forgejo.autoscaler.pool";
/// Longest a probe container may take (a cold engine can be slow to start the first one).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the docker system cannot run on this machine, if it cannot: the engine does not
/// answer or the image is missing. Checked with the docker client, as the backend's tests do.
pub fn unavailable_reason() -> Option<String> {
    if let Err(e) = docker_output(&["info", "--format", "{{.ServerVersion}}"]) {
        return Some(format!(
            "not available: the Docker engine does not answer (`docker info`: {e})"
        ));
    }
    match docker_output(&["image", "inspect", "--format", "{{.Id}}", IMAGE]) {
        Err(e) => Some(format!(
            "not available: image {IMAGE} is missing (build it with \
             tests/support/build-runner-image.sh): {e}"
        )),
        Ok(_) => None,
    }
}

/// Runs the docker client and returns its stdout, or its stderr's first line as the error.
fn docker_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run the docker client")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{}",
            stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed without a message")
                .trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wall time of one probe runner in a fresh container: `docker run` of the image's
/// `forgejo-runner one-job` with its token file mounted read-only, until the container has
/// exited. It includes what the autoscaler's backend also pays (create, start, the
/// process, exit) plus the docker client's own start-up.
pub fn time_probe_container(
    url: &str,
    uuid: &str,
    token_file: &Path,
    dir: &Path,
) -> anyhow::Result<Duration> {
    let log = std::fs::File::create(dir.join("one-job.log"))?;
    let mount = format!("{}:/probe/token:ro", token_file.display());
    let started = Instant::now();
    let mut child = Command::new("docker")
        .args(["run", "--rm", "--network", "host", "-v", &mount, IMAGE])
        .args([
            "forgejo-runner",
            "one-job",
            "--url",
            url,
            "--uuid",
            uuid,
            "--label",
            "bench-probe:host",
            "--token-url",
            "file:/probe/token",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting docker run")?;
    loop {
        if let Some(status) = child.try_wait()? {
            // The stand-in's `one-job` exits non-zero when it received no task, as a probe
            // must; 125-127 are docker's own failures (engine, image, command).
            if matches!(status.code(), Some(125..=127) | None) {
                let log = std::fs::read_to_string(dir.join("one-job.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "the probe container failed ({status}); its last output: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            return Ok(started.elapsed());
        }
        if started.elapsed() > PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the probe container did not exit within {PROBE_TIMEOUT:?}; see {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A pool name no other run (or colleague's test) on this engine uses, so the containers
/// left behind can be told apart by their pool label.
pub fn unique_pool_name() -> String {
    format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Removes the pool's containers still present after the autoscaler stopped, and returns how
/// many there were (they count as leaked).
pub fn remove_leftover_containers(pool: &str) -> u64 {
    let filter = format!("label={POOL_LABEL}={pool}");
    let Ok(ids) = docker_output(&["ps", "-aq", "--filter", &filter]) else {
        return 0;
    };
    let ids: Vec<&str> = ids.lines().filter(|l| !l.trim().is_empty()).collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().copied());
        let _ = docker_output(&args);
    }
    ids.len() as u64
}
