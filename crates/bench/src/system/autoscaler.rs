//! `autoscaler-process`: the release `forgejo-autoscaler` binary as a child process, with a
//! generated configuration (process backend, the runner stand-in, the scenario's cap, its
//! defaults otherwise) and `/metrics` on a free loopback port.

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

/// The configuration file: defaults everywhere except the scope, the runner binary, the cap,
/// host-mode labels (the same the seed registers), a short drain (a stop at the deadline
/// should not wait 10 minutes for jobs) and the metrics endpoint.
pub fn config_text(url: &str, runner: &Path, max_runners: u32, http_listen: &str) -> String {
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
name = "bench"
labels = ["trixie:host", "bookworm:host", "test:host"]
backend = "process"
max_runners = {max_runners}
"#,
        owner = sim::ADMIN_USER,
        repo = sim::REPO,
        poll = POLL_INTERVAL.as_secs(),
        runner = runner.display(),
    )
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub fn spawn(launch: &Launch<'_>) -> anyhow::Result<(Child, Option<String>)> {
    write_private(&launch.work_dir.join("token"), launch.token)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = launch.work_dir.join("autoscaler.toml");
    std::fs::write(
        &config,
        config_text(
            launch.url,
            launch.runner_binary,
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
            Path::new("/bin/runner"),
            7,
            "127.0.0.1:9999",
        );
        assert_eq!(text.matches("max_runners = 7").count(), 2);
        assert!(text.contains("listen = \"127.0.0.1:9999\""));
        assert!(text.contains("scopes = [\"repo:root/bench\"]"));
        assert!(text.contains("binary = \"/bin/runner\""));
    }
}
