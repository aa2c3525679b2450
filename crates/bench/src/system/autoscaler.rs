//! `autoscaler-process` and `autoscaler-docker`: the release `forgejo-autoscaler` binary as a
//! child process, with a generated configuration (one pool on the process or the docker
//! backend, the runner stand-in, the scenario's cap, its defaults otherwise) and `/metrics` on
//! a free loopback port.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;

use super::Launch;
use crate::{probe::write_private, sim};

/// The autoscaler's default `poll_interval`, which the generated configuration keeps.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What the harness varies in the autoscaler's configuration.
#[derive(Debug, Clone)]
pub struct AutoscalerSettings {
    pub binary: PathBuf,
    pub max_runners: u32,
}

/// Where the pool's runners run.
#[derive(Debug, Clone, Copy)]
pub enum PoolBackend<'a> {
    /// A child process of the autoscaler: the stand-in binary at this path.
    Process { runner: &'a Path },
    /// A container of this image (the stand-in as `forgejo-runner` on its PATH) on the host
    /// network, the only mode in which it reaches the simulator on loopback. It runs as the
    /// numeric user 1000:1000 (as the backend's e2e tests do): with the image's default user
    /// (`USER 0:0`) the backend's credential upload fails (the engine looks `0:0` up as a name:
    /// `getent unable to find entry "0:0" in passwd database`), reported to the backend's owners.
    Docker { image: &'a str },
}

impl PoolBackend<'_> {
    /// `[runner] binary`: a path for processes, a file name on the image's PATH for docker.
    fn runner_binary(&self) -> String {
        match self {
            PoolBackend::Process { runner } => runner.display().to_string(),
            PoolBackend::Docker { .. } => "forgejo-runner".into(),
        }
    }

    /// The pool's `backend` line and, for docker, its `[pools.docker]` table.
    fn pool_settings(&self) -> String {
        match self {
            PoolBackend::Process { .. } => "backend = \"process\"\n".into(),
            PoolBackend::Docker { image } => format!(
                "backend = \"docker\"\n\n[pools.docker]\nimage = \"{image}\"\nnetwork = \"host\"\nuser = \"1000:1000\"\n"
            ),
        }
    }
}

/// The configuration file: defaults everywhere except the scope, the runner binary, the cap,
/// host-mode labels (the same the seed registers), a short drain (a stop at the deadline
/// should not wait 10 minutes for jobs) and the metrics endpoint.
pub fn config_text(
    url: &str,
    backend: PoolBackend<'_>,
    pool: &str,
    max_runners: u32,
    http_listen: &str,
) -> String {
    format!(
        r#"[forgejo]
url = "{url}"
token_file = "token"
scopes = ["repo:{owner}/{repo}"]
version = "auto"
poll_interval = "{poll}s"

[runner]
binary = "{runner}"

[limits]
max_runners = {max_runners}

[timeouts]
drain = "15s"

[store]
path = "state/autoscaler.db"

[http]
listen = "{http_listen}"

[[pools]]
name = "{pool}"
labels = ["trixie:host", "bookworm:host", "test:host"]
max_runners = {max_runners}
{pool_settings}"#,
        owner = sim::ADMIN_USER,
        repo = sim::REPO,
        poll = POLL_INTERVAL.as_secs(),
        runner = backend.runner_binary(),
        pool_settings = backend.pool_settings(),
    )
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub fn spawn(
    launch: &Launch<'_>,
    backend: PoolBackend<'_>,
    pool: &str,
) -> anyhow::Result<(Child, Option<String>)> {
    write_private(&launch.work_dir.join("token"), launch.token)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = launch.work_dir.join("autoscaler.toml");
    std::fs::write(
        &config,
        config_text(
            launch.url,
            backend,
            pool,
            launch.autoscaler.max_runners,
            &listen,
        ),
    )?;
    let log = std::fs::File::create(launch.work_dir.join("autoscaler.log"))?;
    let child = Command::new(&launch.autoscaler.binary)
        .arg("run")
        .arg("-c")
        .arg(&config)
        .current_dir(launch.work_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", launch.autoscaler.binary.display()))?;
    Ok((child, Some(format!("http://{listen}/metrics"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_cap_twice_and_the_metrics_address() {
        let text = config_text(
            "http://127.0.0.1:1",
            PoolBackend::Process {
                runner: Path::new("/bin/runner"),
            },
            "bench",
            7,
            "127.0.0.1:9999",
        );
        assert_eq!(text.matches("max_runners = 7").count(), 2);
        assert!(text.contains("listen = \"127.0.0.1:9999\""));
        assert!(text.contains("scopes = [\"repo:root/bench\"]"));
        assert!(text.contains("binary = \"/bin/runner\""));
        assert!(text.contains("backend = \"process\""));
        assert!(!text.contains("[pools.docker]"));
    }

    #[test]
    fn docker_config_runs_the_image_on_the_host_network() {
        let text = config_text(
            "http://127.0.0.1:1",
            PoolBackend::Docker { image: "img:1" },
            "bench-abc",
            3,
            "127.0.0.1:9999",
        );
        assert!(text.contains("name = \"bench-abc\""));
        assert!(text.contains("binary = \"forgejo-runner\""));
        assert!(text.contains("backend = \"docker\""));
        let docker = text
            .split_once("[pools.docker]")
            .map(|(_, t)| t)
            .expect("a [pools.docker] table");
        assert!(docker.contains("image = \"img:1\""));
        assert!(docker.contains("network = \"host\""));
        assert_eq!(text.matches("max_runners = 3").count(), 2);
    }
}
