//! The seed-style script (`tests/seed-style.sh`, bash + curl + jq, written from the contract)
//! drives the simulator in Forgejo 13 mode (and, unchanged, 15) with the runner stand-in: a client of the simulator
//! that its authors did not write.
//!
//! Finding the runner binary: `CARGO_BIN_EXE_*` only exists for binaries of the package under
//! test, and a dev-dependency builds only the library of `fake-forgejo-runner`, not its binary.
//! So the test asks cargo to build the binary (`cargo build -p fake-forgejo-runner --bin
//! fake-forgejo-runner`, a no-op when up to date; cargo does not hold its build lock while tests
//! run) and takes the executable path from cargo's JSON messages. `FAKE_FORGEJO_RUNNER_BIN`
//! overrides this with a ready binary.

#[path = "support/client_harness.rs"]
mod client_harness;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use client_harness::{start_sim, workspace_root, write_private_file, Client, ADMIN_PASSWORD};
use forgejo_sim::ForgejoVersion;
use serde_json::Value;

/// Jobs the script must run before it exits (two scheduled runs of two jobs).
const JOBS_TO_RUN: usize = 4;
/// 30 simulated seconds per real second: the `* * * * *` schedule fires every 2 s.
const TIME_SCALE: f64 = 30.0;
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

fn fake_runner_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FAKE_FORGEJO_RUNNER_BIN") {
        return PathBuf::from(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "fake-forgejo-runner",
            "--bin",
            "fake-forgejo-runner",
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit());
    let profile_dir = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .nth(2)
            .and_then(|p| p.file_name())
            .map(|n| n.to_owned())
    });
    if profile_dir.as_deref() == Some(std::ffi::OsStr::new("release")) {
        command.arg("--release");
    }
    let output = command.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "building fake-forgejo-runner failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter(|msg| msg["target"]["name"] == "fake-forgejo-runner")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the fake-forgejo-runner executable")
}

fn jobs_named<'a>(jobs: &'a [Value], status: &str) -> Vec<&'a Value> {
    jobs.iter().filter(|job| job["status"] == status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_style_script_runs_four_jobs_against_forgejo_13() {
    run_seed_script(ForgejoVersion::V13).await;
}

/// The same script unchanged against 15 (jobs carry `attempt`/`handle`, which it ignores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_style_script_runs_four_jobs_against_forgejo_15() {
    run_seed_script(ForgejoVersion::V15).await;
}

async fn run_seed_script(version: ForgejoVersion) {
    let runner_bin = fake_runner_binary();
    let sim = start_sim(version, TIME_SCALE).await;
    let client = Client::new(sim.url());

    let scratch = tempfile::tempdir().expect("temporary directory");
    let password_file = scratch.path().join("password");
    write_private_file(&password_file, ADMIN_PASSWORD);

    let started = Instant::now();
    let mut script = tokio::process::Command::new("bash");
    script
        .arg(workspace_root().join("tests/seed-style.sh"))
        .env("FORGEJO_URL", sim.url())
        .env("FORGEJO_USER", client_harness::ADMIN_USER)
        .env("FORGEJO_PASSWORD_FILE", &password_file)
        .env_remove("FORGEJO_PASSWORD")
        .env("RUNNER_BIN", &runner_bin)
        .env("POLL_INTERVAL", "0.5")
        .env("MAX_JOBS", JOBS_TO_RUN.to_string())
        .env("TIMEOUT", "120")
        .env("WORK_DIR", scratch.path().join("work"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, script.output())
        .await
        .expect("seed-style.sh finishes in time")
        .expect("bash runs");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("Forgejo {version}: seed-style.sh took {elapsed:?}; its log:\n{stderr}");

    assert!(
        output.status.success(),
        "seed-style.sh failed: {:?}",
        output.status
    );
    assert!(
        stderr.contains(&format!("done: {JOBS_TO_RUN} job(s) processed")),
        "the script did not report {JOBS_TO_RUN} processed jobs"
    );
    assert!(
        !stderr.contains(ADMIN_PASSWORD),
        "the password appears in the script's output"
    );

    // The script exits right after its last one-job, so the last result is already stored.
    let jobs = client.sim_jobs().await;
    let succeeded = jobs_named(&jobs, "success");
    assert_eq!(
        succeeded.len(),
        JOBS_TO_RUN,
        "jobs that ended success: {jobs:#?}"
    );
    for job in &succeeded {
        assert_eq!(job["repo"], "root/on-demand", "{job}");
        assert!(
            job["runner_id"].is_u64(),
            "a successful job names its runner: {job}"
        );
        let expected_runs_on = match job["name"].as_str() {
            Some("first-job") => serde_json::json!(["trixie"]),
            Some("second-job") => serde_json::json!(["bookworm", "test"]),
            other => panic!("unexpected job name {other:?}"),
        };
        assert_eq!(job["runs_on"], expected_runs_on, "{job}");
    }
    for name in ["first-job", "second-job"] {
        let count = succeeded.iter().filter(|job| job["name"] == name).count();
        assert_eq!(
            count, 2,
            "two scheduled runs, so two successful {name} jobs"
        );
    }
    for failed in ["failure", "cancelled"] {
        assert!(
            jobs_named(&jobs, failed).is_empty(),
            "no job may end {failed}: {jobs:#?}"
        );
    }

    // One runner registered per job, none of them deleted (13 has no ephemeral runners).
    let runners = client
        .get("/_sim/runners", &client_harness::Auth::None)
        .await
        .json();
    let runners = runners.as_array().cloned().unwrap_or_default();
    assert_eq!(
        runners.len(),
        JOBS_TO_RUN,
        "one runner per job: {runners:#?}"
    );

    let stats = client.sim_stats().await;
    let polls = client_harness::request_count(
        &stats,
        "GET /api/v1/repos/{owner}/{repo}/actions/runners/jobs",
    );
    assert!(polls >= 2, "the script polled the jobs endpoint: {stats}");
    eprintln!(
        "seed-style on Forgejo {version}: {JOBS_TO_RUN} jobs in {elapsed:?}, {polls} polls of the jobs endpoint, \
         {} jobs created in total",
        jobs.len()
    );
    sim.shutdown().await;
}
