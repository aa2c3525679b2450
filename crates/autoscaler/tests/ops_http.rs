//! Issue 6: the HTTP endpoints and the `status` command against a real daemon.
//!
//! - Off loopback, `/api/status` and `/` answer 401 without the bearer token (and with a wrong
//!   one); the probes and `/metrics` stay open; no secret (the Forgejo API token, the HTTP
//!   token, the runners' tokens) appears in the page, the status or the metrics.
//! - `/api/status` carries pools, instances (state, age, job, reason), recent cleanups with
//!   reasons, and jobs that fit no pool with the labels they need and what each pool offers.
//! - `status` reads the running daemon (with the token); once the daemon is stopped it reads
//!   the store and says so.
//! - `/readyz` is ready only while Forgejo can be read and the loop ticks; `/healthz` always.

mod ops_support;
mod support;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ops_support::*;
use support::*;

const GPU_WORKFLOW: &str = "on: [push]\njobs:\n  needs-gpu:\n    runs-on: [trixie, gpu]\n    steps:\n      - run: echo never\n";

/// Every runner token the process backend wrote for the instances alive now.
fn runner_tokens(env: &Env) -> BTreeSet<String> {
    let mut tokens = BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir(env.path().join("state/instances")) else {
        return tokens;
    };
    for dir in dirs.flatten() {
        if let Ok(token) = std::fs::read_to_string(dir.path().join("runner-token")) {
            if !token.trim().is_empty() {
                tokens.insert(token.trim().to_string());
            }
        }
    }
    tokens
}

fn assert_no_secret(what: &str, text: &str, secrets: &BTreeSet<String>) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret ({} chars) appears in {what}",
            secret.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_status_needs_the_token_and_shows_no_secret() {
    let env = Arc::new(Env::start("15").await);
    let port = free_port();
    let config = env.write_config(&ConfigOpts {
        max_runners: 3,
        pool_max_runners: 3,
        http_listen: format!("0.0.0.0:{port}"),
        ..ConfigOpts::default()
    });
    let http_token = format!("ops-test-{}", uuid::Uuid::new_v4().simple());
    require_http_token(&config, &http_token);
    let config_arg = config.display().to_string();
    env.commit_workflow("gpu.yml", GPU_WORKFLOW).await;
    env.commit_workflow("burst.yml", &Env::burst_yaml(6, "sleep 3"))
        .await;
    let mut child = env.spawn_autoscaler(&["run", "-c", &config_arg]);
    let bound = http_address(&env, Duration::from_secs(30)).await;
    assert!(bound.ip().is_unspecified(), "bound to {bound}");
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Wait until the pool is full of busy runners.
    let busy = wait_until(Duration::from_secs(60), || {
        let env = env.clone();
        async move {
            env.sim_jobs()
                .await
                .iter()
                .filter(|j| j.status == "running")
                .count()
                >= 3
        }
    })
    .await;
    assert!(busy, "three jobs running\n{}", env.logs());
    let mut secrets = runner_tokens(&env);
    assert!(
        !secrets.is_empty(),
        "the running instances have runner tokens"
    );
    secrets.insert(env.token.clone());
    secrets.insert(http_token.clone());

    // Without the token (or with a wrong one): 401 for the status and the page.
    for path in ["/api/status", "/", "/?page=2"] {
        assert_eq!(
            get(address, path, None).await.0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            get(address, path, Some("wrong")).await.0,
            401,
            "{path} with a wrong token"
        );
        let prefix = &http_token[..http_token.len() - 1];
        assert_eq!(
            get(address, path, Some(prefix)).await.0,
            401,
            "{path} with a prefix of the token"
        );
    }
    let (code, body) = get(address, "/api/status", None).await;
    assert_eq!(code, 401);
    assert_no_secret("the 401 answer", &body, &secrets);
    // The probes and the metrics need none.
    assert_eq!(
        get(address, "/healthz", None).await,
        (200, "ok\n".to_string())
    );
    assert_eq!(get(address, "/readyz", None).await.0, 200);
    let (code, metrics) = get(address, "/metrics", None).await;
    assert_eq!(code, 200);
    assert_no_secret("/metrics", &metrics, &secrets);

    // With the token: the status document.
    let (code, body) = get(address, "/api/status", Some(&http_token)).await;
    assert_eq!(code, 200, "{body}");
    assert_no_secret("/api/status", &body, &secrets);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(status["source"], "daemon");
    assert_eq!(status["forgejo"]["reachable"], true);
    assert_eq!(status["forgejo"]["version"], "15");
    let pool = &status["pools"][0];
    assert_eq!(pool["name"], "debian");
    assert_eq!(pool["cap"], 3);
    assert_eq!(pool["used"], 3, "{pool}");
    assert_eq!(pool["at_capacity"], true, "{pool}");
    assert!(pool["waiting_jobs"].as_u64().unwrap_or(0) >= 3, "{pool}");
    let instances = status["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 3, "{body}");
    let running: BTreeSet<i64> = env
        .sim_jobs()
        .await
        .iter()
        .filter(|j| j.status == "running")
        .map(|j| j.id)
        .collect();
    for i in instances {
        assert!(
            i["id"].as_str().is_some_and(|id| id.starts_with("debian-")),
            "{i}"
        );
        assert!(
            ["starting", "idle", "busy", "deleting"].contains(&i["state"].as_str().unwrap_or("")),
            "{i}"
        );
        assert!(i["age_s"].as_f64().is_some_and(|a| a >= 0.0), "{i}");
        assert!(!i["reason"].as_str().unwrap_or("").is_empty(), "{i}");
        if i["state"] == "busy" {
            let job = i["job_id"].as_i64().expect("a busy instance has its job");
            assert!(
                running.contains(&job),
                "busy with job {job}, which the simulator runs: {running:?}"
            );
            assert_eq!(i["reason"], format!("running job {job}"));
        }
    }
    assert!(instances.iter().any(|i| i["state"] == "busy"), "{body}");
    let unmatched = status["unmatched_jobs"].as_array().expect("unmatched jobs");
    assert!(!unmatched.is_empty(), "{body}");
    for u in unmatched {
        assert_eq!(u["name"], "needs-gpu");
        assert_eq!(u["runs_on"], serde_json::json!(["trixie", "gpu"]));
        assert_eq!(u["pools"][0]["pool"], "debian");
        assert_eq!(
            u["pools"][0]["offers"],
            serde_json::json!(["bookworm", "test", "trixie"])
        );
        assert_eq!(u["pools"][0]["missing"], serde_json::json!(["gpu"]));
    }

    // The page, with the token.
    let (code, page) = get(address, "/", Some(&http_token)).await;
    assert_eq!(code, 200);
    assert_no_secret("the status page", &page, &secrets);
    for needle in [
        "id=\"pools\"",
        "id=\"instances\"",
        "id=\"unmatched\"",
        "needs-gpu",
        "at capacity",
        "http-equiv=\"refresh\"",
    ] {
        assert!(page.contains(needle), "page lacks {needle}");
    }
    assert!(!page.contains("<script"), "no JavaScript");

    // `status` asks the daemon (with the token from the configuration).
    let text = cli_stdout(&env, &["status", "-c", &config_arg]);
    assert!(
        text.starts_with(&format!("From the running daemon at 127.0.0.1:{port}.")),
        "{text}"
    );
    assert!(text.contains("Forgejo 15 at http://127.0.0.1:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("debian") && l.contains("3/3") && l.contains("at capacity")),
        "{text}"
    );
    assert!(
        text.contains("job ") && text.contains("\"needs-gpu\"") && text.contains("lacks [gpu]"),
        "{text}"
    );
    assert_no_secret("the status command", &text, &secrets);

    // After the burst: the cleanups, with their reasons, match the jobs the simulator ran.
    let done = wait_until(Duration::from_secs(120), || {
        let env = env.clone();
        async move {
            env.sim_jobs()
                .await
                .iter()
                .filter(|j| j.status == "success")
                .count()
                >= 6
                && env.store_instances().iter().all(|i| i.state == "gone")
        }
    })
    .await;
    assert!(done, "the burst finished\n{}", env.logs());
    let (_, body) = get(address, "/api/status", Some(&http_token)).await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    let cleaned: BTreeSet<i64> = status["recent_removals"]
        .as_array()
        .expect("removals")
        .iter()
        .filter(|r| r["reason"] == "job_done" && r["pool"] == "debian")
        .filter_map(|r| r["job_id"].as_i64())
        .collect();
    let succeeded: BTreeSet<i64> = env
        .sim_jobs()
        .await
        .iter()
        .filter(|j| j.status == "success")
        .map(|j| j.id)
        .collect();
    assert_eq!(
        cleaned, succeeded,
        "one job_done cleanup per job the simulator saw succeed"
    );
    assert_eq!(status["totals"]["removed"], 6);

    let exit = terminate(&mut child, Duration::from_secs(60));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", env.logs());

    // `status` with the daemon stopped: from the store, saying so.
    let text = cli_stdout(&env, &["status", "-c", &config_arg]);
    assert!(
        text.starts_with("The daemon is not running or not reachable"),
        "{text}"
    );
    assert!(text.contains("Nothing below is observed live"), "{text}");
    assert!(
        text.contains("Forgejo at http://127.0.0.1:")
            && text.contains("(version setting auto): not observed"),
        "{text}"
    );
    assert!(
        text.contains("Runners: 0 of 3 (0 busy, 0 deleting, 0 idle, 0 starting); jobs not observed (the store does not record them); 6 removed so far"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains(": job_done")).count(),
        6,
        "{text}"
    );
    assert!(text.contains("(no instances)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_forgejo_and_healthz_stays_up() {
    let env = Arc::new(Env::start("15").await);
    let config = env.write_config(&ConfigOpts {
        http_listen: "127.0.0.1:0".into(),
        ..ConfigOpts::default()
    });
    let mut child = env.spawn_autoscaler(&["run", "-c", &config.display().to_string()]);
    let address = http_address(&env, Duration::from_secs(30)).await;
    let ready = |expected: u16| async move {
        wait_until(Duration::from_secs(30), || async move {
            get(address, "/readyz", None).await.0 == expected
        })
        .await
    };
    assert!(
        ready(200).await,
        "ready once a tick read Forgejo\n{}",
        env.logs()
    );

    // Forgejo answers 500 to every jobs listing: not ready, and the status says why.
    env.add_faults(serde_json::json!([{
        "route": "GET /api/v1/repos/{owner}/{repo}/actions/runners/jobs",
        "kind": "status",
        "status": 500
    }]))
    .await;
    assert!(
        ready(503).await,
        "not ready while Forgejo fails\n{}",
        env.logs()
    );
    let (code, body) = get(address, "/readyz", None).await;
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            "not ready: Forgejo could not be read in the last tick\n"
        )
    );
    assert_eq!(
        get(address, "/healthz", None).await.0,
        200,
        "the process is alive all the same"
    );
    let (_, metrics) = get(address, "/metrics", None).await;
    let s = samples(&metrics);
    assert_eq!(sum(&s, "forgejo_autoscaler_forgejo_reachable", &[]), 0.0);
    let failed: f64 = s
        .iter()
        .filter(|x| x.name == "forgejo_autoscaler_forgejo_requests_total")
        .filter(|x| x.labels.get("status").map(String::as_str) == Some("500"))
        .map(|x| x.value)
        .sum();
    assert!(
        failed >= 1.0,
        "the failed listings are counted by status\n{metrics}"
    );
    let (_, body) = get(address, "/api/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(status["forgejo"]["reachable"], false);
    assert!(
        status["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e.as_str().unwrap_or("").contains("500"))),
        "{body}"
    );
    let (_, page) = get(address, "/", None).await;
    assert!(
        page.contains("NOT reachable") && page.contains("id=\"errors\""),
        "the page shows the outage"
    );

    // Forgejo is back: ready again.
    env.clear_faults().await;
    assert!(
        ready(200).await,
        "ready again after the outage\n{}",
        env.logs()
    );
    let exit = terminate(&mut child, Duration::from_secs(60));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", env.logs());
}
