//! Mistakes an admin makes in production, found by trying the README as a newcomer: each must
//! fail fast with a message that says what to fix, or back off, never loop or stay silent.

mod support;

use std::{process::Command, time::Duration};

use support::{terminate, wait_until, ConfigOpts, Env, AUTOSCALER};

fn run_once(env: &Env, config: &std::path::Path) -> std::process::Output {
    Command::new(AUTOSCALER)
        .args(["run", "-c", config.to_str().unwrap()])
        .current_dir(env.path())
        .output()
        .expect("autoscaler runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_runner_binary_is_refused_at_start() {
    let env = Env::start("15").await;
    let config = env.write_config(&ConfigOpts::default());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &env.runner.display().to_string(),
        "/nonexistent/forgejo-runner",
    );
    std::fs::write(&config, text).unwrap();
    let output = tokio::task::spawn_blocking({
        let config = config.clone();
        let env_path = env.path().to_path_buf();
        move || {
            Command::new(AUTOSCALER)
                .args(["run", "-c", config.to_str().unwrap()])
                .current_dir(env_path)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/forgejo-runner") && stderr.contains("not an executable file"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_reported_at_start() {
    let env = Env::start("15").await;
    let config = env.write_config(&ConfigOpts::default());
    std::fs::write(
        env.path().join("token"),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    let output = tokio::task::block_in_place(|| run_once(&env, &config));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Forgejo refused to list the jobs of scope repo:root/on-demand"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("0123456789abcdef"),
        "the token leaked: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_state_is_refused() {
    let env = Env::start("15").await;
    let config = env.write_config(&ConfigOpts::default());
    let mut first = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            env.path().join("state/autoscaler.lock").exists()
        })
        .await,
        "the first daemon did not start: {}",
        env.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = tokio::task::block_in_place(|| run_once(&env, &config));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another forgejo-autoscaler"), "{stderr}");
    // It names the process that holds the store, and where replicas are explained.
    assert!(
        stderr.contains(&format!("locked by process {}", first.id())),
        "{stderr}"
    );
    assert!(stderr.contains("docs/high-availability.md"), "{stderr}");
    let cleanup = Command::new(AUTOSCALER)
        .args(["cleanup", "-c", config.to_str().unwrap()])
        .current_dir(env.path())
        .output()
        .unwrap();
    assert_eq!(
        cleanup.status.code(),
        Some(1),
        "cleanup must not run under a live daemon"
    );
    assert_eq!(
        terminate(&mut first, Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
}

/// A runner that exits at once (a broken binary or image) must not be recreated on every tick:
/// the pool backs off (2 s, 4 s, 8 s, ...).
#[tokio::test(flavor = "multi_thread")]
async fn runners_that_exit_at_once_make_the_pool_back_off() {
    let env = Env::start("15").await;
    let broken = env.path().join("broken-runner");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'cannot start: missing library' >&2\nexit 127\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = env.write_config(&ConfigOpts::default());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &env.runner.display().to_string(),
        &broken.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    env.commit_workflow("w.yml", &Env::burst_yaml(3, "true"))
        .await;
    let mut daemon = env.spawn_autoscaler(&["run", "-c", config.to_str().unwrap()]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let created = env.sim_runners().await.len();
    assert_eq!(
        terminate(&mut daemon, Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
    // Without backoff this is hundreds (one per exit, several per second); with it, the first
    // tick's 3 plus a handful of retries.
    assert!(
        (3..=12).contains(&created),
        "{created} runners created in 12 s\n{}",
        env.logs()
    );
    let logs = env.logs();
    assert!(
        logs.contains("the runner could not run; the pool backs off"),
        "{logs}"
    );
    assert!(
        logs.contains("missing library"),
        "the runner's own output is shown: {logs}"
    );
    assert!(
        env.live_runners().await.is_empty(),
        "registrations left behind"
    );
}

/// Seed mode creates an API token with the password; every start must not leave one behind.
#[tokio::test(flavor = "multi_thread")]
async fn seed_mode_revokes_the_token_it_created() {
    let env = Env::start("15").await;
    env.commit_workflow("w.yml", &Env::burst_yaml(1, "true"))
        .await;
    let password = env.path().join("password");
    std::fs::write(&password, "admin1234\n").unwrap();
    let output = tokio::task::block_in_place(|| {
        Command::new(AUTOSCALER)
            .args([
                "run",
                "--url",
                &env.url(),
                "--user",
                "root",
                "--password-file",
            ])
            .arg(&password)
            .args([
                "--scope",
                "repo:root/on-demand",
                "--max-jobs",
                "1",
                "--runner-binary",
            ])
            .arg(&env.runner)
            .args(["--state-dir", "seed-state"])
            .current_dir(env.path())
            .output()
            .unwrap()
    });
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tokens: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{}/api/v1/users/root/tokens", env.url()))
        .basic_auth("root", Some("admin1234"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = tokens.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["tests"], "only the harness's own token is left");
    assert!(
        !env.path().join("seed-state/token").exists(),
        "the token file is removed"
    );
}
