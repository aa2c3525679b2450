//! `seed`: the sequential baseline, `tests/seed-style.sh` (bash + curl + jq), polling every
//! 5 s and running one job at a time with a fresh `register` + `one-job` of the stand-in.
//! The harness seeds the repository and the token itself, so the script runs with `--no-seed`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use std::os::unix::process::CommandExt;

use super::Launch;
use crate::{probe::write_private, sim};

/// The seed's poll interval (its script's default).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// `tests/seed-style.sh` in the workspace.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/seed-style.sh")
}

pub fn spawn(launch: &Launch<'_>) -> anyhow::Result<Child> {
    let token_file = launch.work_dir.join("token");
    write_private(&token_file, launch.token)?;
    let log = std::fs::File::create(launch.work_dir.join("seed-style.log"))?;
    let script = script_path();
    Command::new("bash")
        .arg(&script)
        .args([
            "--no-seed",
            "--url",
            launch.url,
            "--user",
            sim::ADMIN_USER,
            "--repo",
            sim::REPO,
        ])
        .args([
            "--interval",
            &POLL_INTERVAL.as_secs().to_string(),
            "--max-jobs",
            &launch.max_jobs.to_string(),
        ])
        .arg("--work-dir")
        .arg(launch.work_dir.join("runners"))
        .env("FORGEJO_TOKEN_FILE", &token_file)
        .env("RUNNER_BIN", launch.runner_binary)
        .env("LABELS", "trixie,bookworm,test")
        .current_dir(launch.work_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so stopping it reaches the runner it is waiting for.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting bash {}", script.display()))
}
