//! snakey-runner (PyPI, pure Python, speaks the runner protocol as Connect JSON) runs a job end to
//! end against the simulator in Forgejo 15 mode: a runner client the simulator's authors did not
//! write.
//!
//! What snakey-runner 0.1.0 does (read from its source in the venv):
//! - configuration is `$XDG_CONFIG_HOME/snakey-runner/config.ini`, section `[context.default]`,
//!   keys `url`, `uuid`, `token`, `labels` (comma separated). The test writes that file itself
//!   (mode 0600) instead of passing the runner token to `snakey_runner setup --token` in argv;
//! - `snakey_runner setup` (no flags) re-writes the file and calls `Declare` with the labels;
//! - `snakey_runner run` loops forever: `FetchSingleTask {tasks_version: 0}` every 2.4 s (never
//!   `FetchTask`, never a handle or request key); for a task it base64-decodes `workflowPayload`,
//!   reads `context.server_url` and `secrets`, runs each `run:` step with bash, and every second
//!   sends `UpdateLog` then `UpdateTask` (snake_case field names, int64 ids echoed as strings,
//!   RFC 3339 timestamps, `null` for unset `stopped_at`). It stops only on SIGINT.
//!
//! The venv is created under `target/` by `tests/support/python-venv.sh` when missing (needs
//! python3-venv and PyPI; `.ci/run` prepares it beforehand).

#[path = "support/client_harness.rs"]
mod client_harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use client_harness::{
    base64_of, request_count, start_sim, target_dir, workspace_root, write_private_file, Auth,
    Client, ADMIN_PASSWORD, ADMIN_USER,
};
use forgejo_sim::ForgejoVersion;
use serde_json::{json, Value};

const LABEL: &str = "snakey-test";
const REPO: &str = "snakey";
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

const WORKFLOW: &str = r#"name: snakey
on: push
jobs:
  greet:
    runs-on: snakey-test
    steps:
      - run: echo "hello from snakey-runner"
      - run: echo "repository=${{ github.repository }}"
      - run: sleep 2.5 && echo "slept"
"#;

/// Returns the `snakey_runner` executable, creating the venv first if needed.
fn snakey_runner_executable() -> PathBuf {
    let venv = target_dir().join("snakey-venv");
    let output = std::process::Command::new("bash")
        .arg(workspace_root().join("tests/support/python-venv.sh"))
        .arg(&venv)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "could not create the snakey-runner venv at {} (needs python3-venv and access to PyPI)",
        venv.display()
    );
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    PathBuf::from(path)
}

/// A `snakey_runner` command with a clean environment: its own config directory, no proxies,
/// so it talks to the loopback simulator and nothing else.
fn snakey_command(exe: &Path, home: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(exe);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_PROXY", "*")
        .current_dir(home)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn write_snakey_config(home: &Path, url: &str, uuid: &str, token: &str) {
    let dir = home.join("config").join("snakey-runner");
    std::fs::create_dir_all(&dir).expect("config directory");
    let config = format!(
        "[context.default]\nurl = {url}\nuuid = {uuid}\ntoken = {token}\nlabels = {LABEL}\n"
    );
    write_private_file(&dir.join("config.ini"), &config);
}

/// Sum of the request counters whose route ends with `/runner.v1.RunnerService/{method}`.
fn runner_calls(stats: &Value, method: &str) -> u64 {
    let suffix = format!("/runner.v1.RunnerService/{method}");
    stats["requests"]
        .as_object()
        .map(|routes| {
            routes
                .keys()
                .filter(|route| route.ends_with(&suffix))
                .map(|route| request_count(stats, route))
                .sum()
        })
        .unwrap_or(0)
}

async fn run_to_completion(command: &mut tokio::process::Command, what: &str) -> String {
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("snakey_runner {what} timed out"))
        .expect("snakey_runner starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "snakey_runner {what} failed: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snakey_runner_runs_a_job_created_through_the_forgejo_15_runners_api() {
    let exe = snakey_runner_executable();
    let sim = start_sim(ForgejoVersion::V15, 1.0).await;
    let client = Client::new(sim.url());
    let home = tempfile::tempdir().expect("temporary directory");

    let token = client
        .create_token(
            ADMIN_USER,
            ADMIN_PASSWORD,
            "snakey-test",
            &["write:repository"],
        )
        .await;
    let auth = Auth::Token(token);
    let repo = client
        .post("/api/v1/user/repos", &auth, &json!({ "name": REPO }))
        .await;
    assert_eq!(repo.status, 201, "create repository: {}", repo.text);

    let runners_path = format!("/api/v1/repos/{ADMIN_USER}/{REPO}/actions/runners");
    let created = client
        .post(&runners_path, &auth, &json!({ "name": "snakey" }))
        .await;
    assert_eq!(created.status, 201, "create runner: {}", created.text);
    let created = created.json();
    let runner_id = created["id"].as_i64().expect("runner id");
    let uuid = created["uuid"].as_str().expect("runner uuid");
    let runner_token = created["token"].as_str().expect("runner token");
    write_snakey_config(home.path(), &sim.url(), uuid, runner_token);

    // Ping, then Declare (setup without flags declares the labels of the config file).
    run_to_completion(snakey_command(&exe, home.path()).arg("check"), "check").await;
    run_to_completion(snakey_command(&exe, home.path()).arg("setup"), "setup").await;
    let declared = client
        .get(&format!("{runners_path}/{runner_id}"), &auth)
        .await;
    assert_eq!(declared.status, 200, "get runner: {}", declared.text);
    assert_eq!(
        declared.json()["labels"],
        json!([LABEL]),
        "Declare stored the labels"
    );

    let commit = client
        .post(
            &format!("/api/v1/repos/{ADMIN_USER}/{REPO}/contents/.forgejo/workflows/snakey.yml"),
            &auth,
            &json!({ "content": base64_of(WORKFLOW.as_bytes()), "message": "snakey workflow" }),
        )
        .await;
    assert_eq!(commit.status, 201, "commit workflow: {}", commit.text);

    let started = Instant::now();
    let stdout_path = home.path().join("run.log");
    let stdout = std::fs::File::create(&stdout_path).expect("log file");
    let stderr = stdout.try_clone().expect("log file handle");
    let mut run = snakey_command(&exe, home.path())
        .arg("run")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("snakey_runner run starts");

    let jobs = client
        .wait_for_jobs(JOB_TIMEOUT, |jobs| {
            jobs.iter().any(|job| {
                matches!(
                    job["status"].as_str(),
                    Some("success" | "failure" | "cancelled")
                )
            })
        })
        .await;
    let elapsed = started.elapsed();

    // Stop the runner the way its author intends (KeyboardInterrupt), then make sure.
    if let Some(pid) = run.id() {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .is_err()
    {
        let _ = run.kill().await;
    }
    let runner_log = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    eprintln!("snakey_runner run output:\n{runner_log}");
    assert!(
        !runner_log.contains(runner_token),
        "snakey-runner printed its token"
    );

    assert_eq!(jobs.len(), 1, "one job from the push: {jobs:#?}");
    let job = &jobs[0];
    assert_eq!(job["status"], "success", "job result: {job}");
    assert_eq!(job["runner_id"].as_i64(), Some(runner_id), "{job}");
    eprintln!("snakey-runner: job done in {elapsed:?}");

    let stats = client.sim_stats().await;
    eprintln!("stats: {stats:#}");
    for method in ["Declare", "FetchSingleTask", "UpdateLog", "UpdateTask"] {
        assert!(
            runner_calls(&stats, method) >= 1,
            "no {method} call recorded: {stats}"
        );
    }
    assert_eq!(
        runner_calls(&stats, "FetchTask"),
        0,
        "snakey-runner only uses FetchSingleTask"
    );
    // The 2.5 s step spans at least one of snakey-runner's 1 s reports: a heartbeat
    // (`result: 0`, `stopped_at: null`) before the final result.
    assert!(
        runner_calls(&stats, "UpdateTask") >= 2,
        "heartbeat and final UpdateTask: {stats}"
    );
    let failed: Vec<(&String, &Value)> = stats["responses"]
        .as_object()
        .map(|codes| {
            codes
                .iter()
                .filter(|(code, count)| {
                    code.parse::<u16>().is_ok_and(|c| c >= 400) && count.as_u64() != Some(0)
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        failed.is_empty(),
        "every call succeeded, but these statuses were answered: {failed:?}"
    );

    let job_id = job["id"].as_i64().expect("job id");
    let log = client
        .get(&format!("/_sim/jobs/{job_id}/log"), &Auth::None)
        .await;
    assert_eq!(log.status, 200, "job log: {}", log.text);
    let log = log.json();
    let rows: Vec<&str> = log["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        rows.contains(&"hello from snakey-runner"),
        "log rows: {rows:?}"
    );
    assert!(
        rows.contains(&format!("repository={ADMIN_USER}/{REPO}").as_str()),
        "the task context carried `repository`: {rows:?}"
    );
    assert!(rows.contains(&"slept"), "log rows: {rows:?}");
    assert_eq!(
        log["archived"], true,
        "UpdateLog with no_more archived the log: {log}"
    );

    sim.shutdown().await;
}
