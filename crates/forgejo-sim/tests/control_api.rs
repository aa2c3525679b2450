//! The `/_sim/` control API: shapes of issue 2, request counting, faults, clock and timers.

mod common;

use std::time::Instant;

use common::*;
use forgejo_sim::ForgejoVersion::{V13, V15};
use reqwest::Method;
use runner_proto::runner::v1 as pb;
use serde_json::json;

#[tokio::test]
async fn stats_count_requests_by_route_template() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"]), ("b", &["y"])])
        .await;
    sim.jobs_listing("r", "?labels=x").await;
    sim.jobs_listing("r", "?labels=y").await;
    sim.get("/no/such").await;
    let stats = sim.control(Method::GET, "/stats", None).await.json();
    assert_eq!(
        stats["requests"]["GET /api/v1/repos/{owner}/{repo}/actions/runners/jobs"],
        2
    );
    assert_eq!(stats["requests"]["GET <unmatched>"], 1);
    assert_eq!(stats["responses"]["404"], 1);
    assert_eq!(stats["jobs"]["waiting"], 2);
    for key in [
        "blocked",
        "waiting",
        "running",
        "success",
        "failure",
        "cancelled",
        "skipped",
    ] {
        assert!(stats["jobs"][key].is_u64(), "jobs.{key}");
    }
    for key in ["active", "deleted", "ephemeral_active"] {
        assert!(stats["runners"][key].is_u64(), "runners.{key}");
    }
}

#[tokio::test]
async fn jobs_and_runners_shapes() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let runner = sim.register("r", &["x"], false).await;
    sim.fetch(&runner).await.unwrap();
    let job = &sim.sim_jobs().await[0];
    let mut keys: Vec<&str> = job
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "attempt",
            "created",
            "handle",
            "id",
            "name",
            "repo",
            "run_id",
            "runner_id",
            "runs_on",
            "started",
            "status",
            "stopped",
            "task_id"
        ]
    );
    assert_eq!(job["repo"], "root/r");
    assert_eq!(job["runner_id"], runner.id);
    assert!(job["started"].as_i64().unwrap() >= job["created"].as_i64().unwrap());
    let runners = sim.control(Method::GET, "/runners", None).await.json();
    let mut keys: Vec<&str> = runners[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created",
            "deleted",
            "ephemeral",
            "id",
            "labels",
            "last_online",
            "name",
            "uuid"
        ]
    );
}

#[tokio::test]
async fn faults_per_route_and_clear() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let route = "GET /api/v1/repos/{owner}/{repo}/actions/runners/jobs";
    let add = sim.control(Method::POST, "/faults", Some(json!({"route": route, "kind": "status", "status": 429, "retry_after_secs": 7, "times": 1}))).await;
    assert_eq!(add.status, 200, "{}", add.text);
    let limited = sim.jobs_listing("r", "").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "7");
    assert_eq!(sim.jobs_listing("r", "").await.status, 200, "times: 1");
    assert_eq!(
        sim.get("/version").await.status,
        200,
        "other routes untouched"
    );

    sim.control(
        Method::POST,
        "/faults",
        Some(json!({"rules": [{"route": route, "kind": "null"}]})),
    )
    .await;
    assert_eq!(sim.jobs_listing("r", "").await.text, "null\n");
    sim.control(Method::DELETE, "/faults", None).await;
    sim.control(
        Method::POST,
        "/faults",
        Some(json!({"route": route, "kind": "empty_array"})),
    )
    .await;
    assert_eq!(sim.jobs_listing("r", "").await.text, "[]\n");
    sim.control(Method::DELETE, "/faults", None).await;
    sim.control(
        Method::POST,
        "/faults",
        Some(json!({"route": route, "kind": "truncate"})),
    )
    .await;
    let cut = sim.jobs_listing("r", "").await;
    assert!(serde_json::from_str::<serde_json::Value>(&cut.text).is_err());
    sim.control(Method::DELETE, "/faults", None).await;
    sim.control(Method::POST, "/faults", Some(json!({"kind": "malformed"})))
        .await;
    assert!(serde_json::from_str::<serde_json::Value>(&sim.get("/version").await.text).is_err());
    sim.control(Method::DELETE, "/faults", None).await;
    sim.control(Method::POST, "/faults", Some(json!({"kind": "reset"})))
        .await;
    let reset = sim
        .http
        .get(format!("{}/api/v1/version", sim.url))
        .send()
        .await;
    let failed = match reset {
        Err(_) => true,
        Ok(response) => response.bytes().await.is_err(),
    };
    assert!(failed, "the connection is dropped");
    sim.control(Method::DELETE, "/faults", None).await;
    sim.control(
        Method::POST,
        "/faults",
        Some(json!({"kind": "latency", "latency_ms": 150})),
    )
    .await;
    let started = Instant::now();
    assert_eq!(sim.get("/version").await.status, 200);
    assert!(started.elapsed().as_millis() >= 150);
    sim.control(Method::DELETE, "/faults", None).await;
    assert_eq!(
        sim.control(Method::GET, "/faults", None).await.json()["rules"],
        json!([])
    );
}

#[tokio::test]
async fn connect_routes_take_faults_too() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let runner = sim.register("r", &["x"], false).await;
    sim.control(Method::POST, "/faults", Some(json!({"route": "POST /api/actions/runner.v1.RunnerService/FetchTask", "kind": "status", "status": 503}))).await;
    let err = sim.fetch(&runner).await.unwrap_err();
    assert_eq!(err.code, runner_proto::connect::Code::Unavailable);
    let stats = sim.control(Method::GET, "/stats", None).await.json();
    assert_eq!(stats["responses"]["503"], 1);
}

#[tokio::test]
async fn schedules_fire_in_simulated_time() {
    let sim = start(V13).await;
    sim.create_repo("r").await;
    sim.commit("r", ".forgejo/workflows/cron.yml", "on:\n  schedule:\n    - cron: '* * * * *'\njobs:\n  a:\n    runs-on: trixie\n    steps: [{run: 'true'}]\n  b:\n    runs-on: [bookworm, test]\n    steps: [{run: 'true'}]\n").await;
    assert!(
        sim.sim_jobs().await.is_empty(),
        "a schedule does not run on push"
    );
    sim.advance(61.0).await;
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while sim.sim_jobs().await.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sim.sim_jobs().await.len(), 2);
    let listing = sim.jobs_listing("r", "?labels=trixie,bookworm,test").await;
    assert_eq!(listed_ids(&listing).len(), 2);
}

#[tokio::test]
async fn endless_and_abandoned_timers() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("long", &["x"]), ("never", &["nobody"])])
        .await;
    let runner = sim.register("r", &["x"], false).await;
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    for _ in 0..19 {
        sim.advance(600.0).await;
        sim.update_task(&runner, task.id, 0).await.unwrap();
    }
    assert_eq!(sim.run_cron("stop_zombie_tasks").await, 0);
    assert_eq!(sim.run_cron("stop_endless_tasks").await, 1, "over 3 h");
    assert_eq!(job_of_task(&sim, task.id).await["status"], "failure");
    assert_eq!(sim.run_cron("cancel_abandoned_jobs").await, 0);
    sim.advance(24.0 * 3600.0).await;
    assert_eq!(sim.run_cron("cancel_abandoned_jobs").await, 1);
    let statuses: Vec<String> = sim
        .sim_jobs()
        .await
        .iter()
        .map(|j| j["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["failure", "cancelled"]);
    let _ = pb::Result::Success;
}

#[tokio::test]
async fn secret_runner_like_forgejo_cli_register() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let secret = "0123456789abcdef0123456789abcdef01234567";
    let created = sim
        .control(
            Method::POST,
            "/runners",
            Some(json!({"secret": secret, "name": "cli", "labels": ["x"]})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let runner = Runner {
        id: 0,
        uuid: "30313233-3435-3637-3839-616263646566".into(),
        token: secret.into(),
        ephemeral: false,
    };
    assert!(sim.fetch(&runner).await.unwrap().task.is_some());
}

#[tokio::test]
async fn binary_prints_listening_line_and_exits_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_forgejo-sim");
    let mut child = std::process::Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--forgejo-version",
            "14",
            "--admin-user",
            "root",
        ])
        .env("FORGEJO_SIM_ADMIN_PASSWORD", "admin1234")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("the listening line")
        .to_owned();
    let version: serde_json::Value = reqwest::get(format!("{url}/api/v1/version"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(version["version"].as_str().unwrap().starts_with("14."));
    // SAFETY: plain libc call on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
