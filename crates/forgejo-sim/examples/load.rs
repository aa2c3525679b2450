//! Load benchmark: 1,000 waiting jobs and 200 runners polling FetchTask every 2 s, plus an
//! autoscaler-like poller of the jobs endpoint and a trickle of jobs that runners do take.
//!
//! The simulator runs in this process on its own 2-worker tokio runtime (threads named
//! `sim-server`), so its CPU time is read per thread from /proc and kept apart from the load
//! generator's.
//!
//! `cargo run --release -p forgejo-sim --example load` (LOAD_SECONDS, LOAD_RUNNERS,
//! LOAD_WAITING_JOBS override the defaults 30, 200, 1000).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use forgejo_sim::{ForgejoVersion, SimConfig, SimServer};
use runner_proto::connect::Codec;
use runner_proto::procedures as p;
use runner_proto::runner::v1 as pb;
use serde_json::json;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sum of user+system CPU ticks of this process's threads whose name starts with `prefix`.
fn thread_cpu_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let name = &stat[open + 1..close];
            if !name.starts_with(prefix) {
                return None;
            }
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

#[derive(Default)]
struct Latencies {
    fetch: Vec<Duration>,
    jobs: Vec<Duration>,
    errors: u64,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let seconds = env_or("LOAD_SECONDS", 30);
    let runners = env_or("LOAD_RUNNERS", 200) as usize;
    let waiting_jobs = env_or("LOAD_WAITING_JOBS", 1000) as usize;

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sim-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let config = SimConfig {
        version: ForgejoVersion::V15,
        admin_user: "root".into(),
        admin_password: "admin1234".into(),
        time_scale: 1.0,
    };
    let server = server_rt
        .block_on(SimServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            config,
        ))
        .expect("start simulator");
    let url = server.url();

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("client runtime");
    client_rt.block_on(run(url, seconds, runners, waiting_jobs));
    server_rt.block_on(server.shutdown());
}

async fn run(url: String, seconds: u64, runners: usize, waiting_jobs: usize) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(runners + 8)
        .build()
        .expect("client");
    let api = format!("{url}/api/v1");
    let token: String = http
        .post(format!("{api}/users/root/tokens"))
        .basic_auth("root", Some("admin1234"))
        .json(&json!({"name": "load", "scopes": ["all"]}))
        .send()
        .await
        .expect("token")
        .json::<serde_json::Value>()
        .await
        .expect("token json")["sha1"]
        .as_str()
        .expect("sha1")
        .to_owned();
    let auth = format!("token {token}");
    http.post(format!("{api}/user/repos"))
        .header("authorization", &auth)
        .json(&json!({"name": "load"}))
        .send()
        .await
        .expect("repo");

    // Waiting jobs no runner can take: 100 per dispatched run.
    let mut big = String::from("on: workflow_dispatch\njobs:\n");
    for i in 0..100 {
        big.push_str(&format!(
            "  j{i}:\n    runs-on: [big, gpu]\n    steps: [{{run: 'true'}}]\n"
        ));
    }
    let small = "on: workflow_dispatch\njobs:\n  quick:\n    runs-on: small\n    steps: [{run: 'echo hi'}]\n";
    for (path, content) in [("big.yml", big.as_str()), ("small.yml", small)] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        http.post(format!(
            "{api}/repos/root/load/contents/.forgejo/workflows/{path}"
        ))
        .header("authorization", &auth)
        .json(&json!({"content": b64}))
        .send()
        .await
        .expect("commit");
    }
    for _ in 0..waiting_jobs.div_ceil(100) {
        http.post(format!("{url}/_sim/dispatch"))
            .json(&json!({"owner": "root", "repo": "load", "workflow": "big.yml"}))
            .send()
            .await
            .expect("dispatch");
    }
    let reg_token = http
        .get(format!(
            "{api}/repos/root/load/actions/runners/registration-token"
        ))
        .header("authorization", &auth)
        .send()
        .await
        .expect("registration token")
        .json::<serde_json::Value>()
        .await
        .expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();

    let mut credentials = Vec::with_capacity(runners);
    for i in 0..runners {
        let request = pb::RegisterRequest {
            name: format!("r{i}"),
            token: reg_token.clone(),
            labels: vec!["small".into()],
            ..Default::default()
        };
        let body = http
            .post(format!("{url}/api/actions{}", p::REGISTER))
            .header("content-type", "application/proto")
            .body(Codec::Proto.encode(&request))
            .send()
            .await
            .expect("register")
            .bytes()
            .await
            .expect("register body");
        let runner = Codec::Proto
            .decode::<pb::RegisterResponse>(&body)
            .expect("decode")
            .runner
            .expect("runner");
        credentials.push((runner.uuid, runner.token));
    }

    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = thread_cpu_ticks("sim-server");
    let started = Instant::now();
    let mut handles = Vec::new();

    for (i, (uuid, token)) in credentials.into_iter().enumerate() {
        let (http, url, latencies) = (http.clone(), url.clone(), latencies.clone());
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i as u64 * 2000) / runners as u64)).await;
            while Instant::now() < deadline {
                let tick = Instant::now();
                let request = Codec::Proto.encode(&pb::FetchTaskRequest {
                    tasks_version: 0,
                    task_capacity: None,
                });
                let sent = Instant::now();
                let response = http
                    .post(format!("{url}/api/actions{}", p::FETCH_TASK))
                    .header("content-type", "application/proto")
                    .header("x-runner-uuid", &uuid)
                    .header("x-runner-token", &token)
                    .header("x-runner-request-key", uuid::Uuid::new_v4().to_string())
                    .body(request)
                    .send()
                    .await;
                let body = match response {
                    Ok(r) if r.status().is_success() => r.bytes().await.ok(),
                    _ => None,
                };
                let elapsed = sent.elapsed();
                let task = body
                    .as_deref()
                    .and_then(|b| Codec::Proto.decode::<pb::FetchTaskResponse>(b).ok())
                    .and_then(|r| r.task);
                {
                    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
                    l.fetch.push(elapsed);
                    if body.is_none() {
                        l.errors += 1;
                    }
                }
                if let Some(task) = task {
                    // Run it: one log chunk, then the final result.
                    for (procedure, payload) in [
                        (
                            p::UPDATE_LOG,
                            Codec::Proto.encode(&pb::UpdateLogRequest {
                                task_id: task.id,
                                index: 0,
                                rows: vec![pb::LogRow {
                                    time: None,
                                    content: "hi".into(),
                                }],
                                no_more: true,
                            }),
                        ),
                        (
                            p::UPDATE_TASK,
                            Codec::Proto.encode(&pb::UpdateTaskRequest {
                                state: Some(pb::TaskState {
                                    id: task.id,
                                    result: 1,
                                    ..Default::default()
                                }),
                                outputs: Default::default(),
                            }),
                        ),
                    ] {
                        let _ = http
                            .post(format!("{url}/api/actions{procedure}"))
                            .header("content-type", "application/proto")
                            .header("x-runner-uuid", &uuid)
                            .header("x-runner-token", &token)
                            .body(payload)
                            .send()
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2).saturating_sub(tick.elapsed())).await;
            }
        }));
    }

    // Two autoscaler-like pollers of the jobs endpoint (all labels, every 2 s), and a feeder
    // of 5 takeable jobs per second.
    for _ in 0..2 {
        let (http, api, auth, latencies) =
            (http.clone(), api.clone(), auth.clone(), latencies.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let sent = Instant::now();
                let ok = http
                    .get(format!(
                        "{api}/repos/root/load/actions/runners/jobs?labels=big,gpu,small"
                    ))
                    .header("authorization", &auth)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success());
                let ok = match ok {
                    Some(r) => r.bytes().await.is_ok(),
                    None => false,
                };
                {
                    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
                    l.jobs.push(sent.elapsed());
                    if !ok {
                        l.errors += 1;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    {
        let (http, url) = (http.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let _ = http
                    .post(format!("{url}/_sim/dispatch"))
                    .json(&json!({"owner": "root", "repo": "load", "workflow": "small.yml"}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    for handle in handles {
        let _ = handle.await;
    }
    let wall = started.elapsed();
    let cpu_ticks = thread_cpu_ticks("sim-server").saturating_sub(cpu_before);
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let cpu_seconds = cpu_ticks as f64 / ticks_per_second;

    let stats: serde_json::Value = http
        .get(format!("{url}/_sim/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
    l.fetch.sort();
    l.jobs.sort();
    let total_requests: u64 = stats["requests"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    println!("duration            {:.1} s", wall.as_secs_f64());
    println!(
        "runners             {runners} polling FetchTask every 2 s (tasks_version 0, request key)"
    );
    println!(
        "waiting jobs        {} unpickable + a trickle of 5 takeable jobs/s",
        stats["jobs"]["waiting"]
    );
    println!("jobs finished       {}", stats["jobs"]["success"]);
    println!(
        "requests (all)      {total_requests} = {:.0} req/s",
        total_requests as f64 / wall.as_secs_f64()
    );
    println!(
        "FetchTask           n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        l.fetch.len(),
        percentile(&l.fetch, 0.5).as_secs_f64() * 1e3,
        percentile(&l.fetch, 0.99).as_secs_f64() * 1e3,
        l.fetch.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "jobs endpoint       n={} p50={:.2} ms p99={:.2} ms (body lists ~{} jobs)",
        l.jobs.len(),
        percentile(&l.jobs, 0.5).as_secs_f64() * 1e3,
        percentile(&l.jobs, 0.99).as_secs_f64() * 1e3,
        stats["jobs"]["waiting"]
    );
    println!("errors              {}", l.errors);
    println!(
        "server CPU          {:.2} s = {:.1} % of one core",
        cpu_seconds,
        100.0 * cpu_seconds / wall.as_secs_f64()
    );
}
