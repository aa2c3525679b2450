//! The HTTP endpoints of the daemon (`[http] listen`): `/healthz`, `/readyz`, `/metrics`,
//! `/api/status` and a status page at `/`; plus the `status` and `explain` commands, which read
//! the same status.
//!
//! The listener binds to loopback by default. When a bearer token file is configured (the
//! configuration requires one for any other address), `/api/status` and `/` need it.
//! No secret is ever part of a status answer or a metric.

use std::sync::{Arc, Mutex};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;

use crate::{
    clock::now_ms,
    config::Config,
    plan::{self, is_busy},
    reconcile::{Reconciler, Snapshot},
    runtime::Runtime,
    secret::Secret,
    store::InstanceState,
};

#[derive(Clone)]
struct AppState {
    rt: Arc<Runtime>,
    snapshot: Arc<Mutex<Snapshot>>,
    token: Option<Secret>,
}

/// Starts the listener when one is configured.
pub async fn serve(rt: Arc<Runtime>, snapshot: Arc<Mutex<Snapshot>>) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = rt.config.http.listen else { return Ok(None) };
    let token = rt.config.http.read_token()?;
    let state = AppState { rt, snapshot, token };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status_json))
        .route("/", get(status_page))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} ([http] listen): {e}"))?;
    tracing::info!(address = %listen, "serving /metrics, /healthz, /readyz, /api/status and the status page");
    Ok(Some(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })))
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else { return true };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshot.lock().map(|s| (s.at_ms, s.forgejo_reachable)).unwrap_or((0, false));
    let max_age = state.rt.config.forgejo.poll_interval.as_millis() as u64 * 3 + 5_000;
    let fresh = now_ms().saturating_sub(snapshot.0) <= max_age;
    if snapshot.1 && fresh {
        (StatusCode::OK, "ready\n").into_response()
    } else if !snapshot.1 {
        (StatusCode::SERVICE_UNAVAILABLE, "Forgejo not reachable in the last tick\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no recent reconcile tick\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.rt.metrics.encode(),
    )
        .into_response()
}

async fn status_json(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
    }
    Json(build_status(&state.rt, &state.snapshot)).into_response()
}

async fn status_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
    }
    Html(render_page(&build_status(&state.rt, &state.snapshot))).into_response()
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub source: String,
    pub forgejo: ForgejoStatus,
    pub pools: Vec<PoolStatus>,
    pub instances: Vec<InstanceStatus>,
    pub recent_removals: Vec<Removal>,
    pub unmatched_jobs: Vec<UnmatchedJob>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ForgejoStatus {
    pub url: String,
    pub version: String,
    pub reachable: bool,
    pub last_tick_age_s: Option<f64>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub labels: Vec<String>,
    pub used: u32,
    pub cap: u32,
    pub waiting_jobs: u32,
    pub blocked_by_cap: u32,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub pool: String,
    pub state: String,
    pub age_s: f64,
    pub job_id: Option<i64>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Removal {
    pub id: String,
    pub pool: String,
    pub reason: String,
    pub at_ms: u64,
    pub job_id: Option<i64>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct UnmatchedJob {
    pub job_id: i64,
    pub name: String,
    pub runs_on: Vec<String>,
    pub scope: String,
}

fn build_status(rt: &Runtime, snapshot: &Mutex<Snapshot>) -> Status {
    let snapshot = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    let now = now_ms();
    let pools = rt
        .pools
        .iter()
        .map(|p| {
            let usage = snapshot.plan.pools.get(&p.name).cloned().unwrap_or_default();
            PoolStatus {
                name: p.name.clone(),
                labels: p.labels.clone(),
                used: usage.used,
                cap: p.max_runners,
                waiting_jobs: usage.waiting_jobs,
                blocked_by_cap: usage.blocked_by_cap,
            }
        })
        .collect();
    let instances = snapshot
        .instances
        .iter()
        .map(|i| InstanceStatus {
            id: i.id.clone(),
            pool: i.pool.clone(),
            state: match i.state {
                InstanceState::Running if is_busy(rt.strategy, i) => "busy".into(),
                InstanceState::Running => "idle".into(),
                other => other.as_str().into(),
            },
            age_s: now.saturating_sub(i.created_ms) as f64 / 1000.0,
            job_id: i.job.as_ref().map(|j| j.id),
        })
        .collect();
    let recent_removals = rt
        .store
        .recent_gone(50)
        .unwrap_or_default()
        .into_iter()
        .map(|r| Removal {
            id: r.id,
            pool: r.pool,
            reason: r.reason.unwrap_or_default(),
            at_ms: r.state_since_ms,
            job_id: r.job_id,
            exit_code: r.exit_code,
        })
        .collect();
    let unmatched_jobs = snapshot
        .plan
        .unmatched
        .iter()
        .map(|u| UnmatchedJob { job_id: u.job_id, name: u.name.clone(), runs_on: u.runs_on.clone(), scope: u.scope.to_string() })
        .collect();
    Status {
        source: "daemon".into(),
        forgejo: ForgejoStatus {
            url: rt.config.forgejo.url.clone(),
            version: rt.version.to_string(),
            reachable: snapshot.forgejo_reachable,
            last_tick_age_s: (snapshot.at_ms > 0).then(|| now.saturating_sub(snapshot.at_ms) as f64 / 1000.0),
        },
        pools,
        instances,
        recent_removals,
        unmatched_jobs,
        errors: snapshot.errors,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Server-rendered, refreshed every 5 s, no JavaScript. Long instance lists are summarised.
fn render_page(status: &Status) -> String {
    const MAX_ROWS: usize = 200;
    let mut html = String::with_capacity(8192);
    html.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\"><title>forgejo-autoscaler</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}.bad{color:#a00}</style></head><body>");
    html.push_str(&format!(
        "<h1>forgejo-autoscaler</h1><p id=\"forgejo\">Forgejo {} at {}: <b class=\"{}\">{}</b></p>",
        escape(&status.forgejo.version),
        escape(&status.forgejo.url),
        if status.forgejo.reachable { "ok" } else { "bad" },
        if status.forgejo.reachable { "reachable" } else { "not reachable" }
    ));
    html.push_str("<h2>Pools</h2><table id=\"pools\"><tr><th>pool</th><th>used / cap</th><th>waiting jobs</th><th>blocked by cap</th><th>labels</th></tr>");
    for p in &status.pools {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.name), p.used, p.cap, p.waiting_jobs, p.blocked_by_cap, escape(&p.labels.join(", "))
        ));
    }
    html.push_str("</table>");
    html.push_str(&format!("<h2>Instances ({})</h2><table id=\"instances\"><tr><th>instance</th><th>pool</th><th>state</th><th>age</th><th>job</th></tr>", status.instances.len()));
    for i in status.instances.iter().take(MAX_ROWS) {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}s</td><td>{}</td></tr>",
            escape(&i.id), escape(&i.pool), escape(&i.state), i.age_s, i.job_id.map(|j| j.to_string()).unwrap_or_default()
        ));
    }
    if status.instances.len() > MAX_ROWS {
        html.push_str(&format!("<tr><td colspan=\"5\">... and {} more (see /api/status)</td></tr>", status.instances.len() - MAX_ROWS));
    }
    html.push_str("</table><h2>Jobs that fit no pool</h2><table id=\"unmatched\"><tr><th>job</th><th>name</th><th>needs labels</th><th>scope</th></tr>");
    for u in &status.unmatched_jobs {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            u.job_id, escape(&u.name), escape(&u.runs_on.join(", ")), escape(&u.scope)
        ));
    }
    html.push_str("</table><h2>Recent removals</h2><table id=\"removals\"><tr><th>instance</th><th>pool</th><th>reason</th><th>job</th><th>exit code</th></tr>");
    for r in status.recent_removals.iter().take(50) {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.id), escape(&r.pool), escape(&r.reason),
            r.job_id.map(|j| j.to_string()).unwrap_or_default(),
            r.exit_code.map(|c| c.to_string()).unwrap_or_default()
        ));
    }
    html.push_str("</table>");
    if !status.errors.is_empty() {
        html.push_str("<h2>Errors in the last tick</h2><ul id=\"errors\">");
        for e in &status.errors {
            html.push_str(&format!("<li class=\"bad\">{}</li>", escape(e)));
        }
        html.push_str("</ul>");
    }
    html.push_str("</body></html>");
    html
}

/// `status`: asks the running daemon; falls back to the store and says so.
pub async fn status_command(config: Config) -> anyhow::Result<()> {
    if let Some(listen) = config.http.listen {
        let mut request = reqwest::Client::new()
            .get(format!("http://{listen}/api/status"))
            .timeout(std::time::Duration::from_secs(3));
        if let Some(token) = config.http.read_token()? {
            request = request.bearer_auth(token.expose());
        }
        if let Ok(response) = request.send().await {
            if let Ok(status) = response.error_for_status()?.json::<Status>().await {
                print_status(&status);
                return Ok(());
            }
        }
    }
    println!("(the daemon is not running or not reachable; showing what the store recorded)");
    let store = crate::store::Store::open(&config.store.path)?;
    let live = store.live_instances()?;
    println!("{:<28} {:<12} {:<10} {:>8}", "INSTANCE", "POOL", "STATE", "JOB");
    for r in &live {
        println!("{:<28} {:<12} {:<10} {:>8}", r.id, r.pool, r.state.as_str(), r.job_id.map(|j| j.to_string()).unwrap_or_default());
    }
    println!("removed so far, by reason: {:?}", store.gone_by_reason()?);
    Ok(())
}

fn print_status(status: &Status) {
    println!(
        "Forgejo {} at {}: {}",
        status.forgejo.version,
        status.forgejo.url,
        if status.forgejo.reachable { "reachable" } else { "NOT reachable" }
    );
    println!("{:<16} {:>9} {:>8} {:>8}", "POOL", "USED/CAP", "WAITING", "BLOCKED");
    for p in &status.pools {
        println!("{:<16} {:>9} {:>8} {:>8}", p.name, format!("{}/{}", p.used, p.cap), p.waiting_jobs, p.blocked_by_cap);
    }
    println!("\n{:<28} {:<12} {:<10} {:>7} {:>8}", "INSTANCE", "POOL", "STATE", "AGE", "JOB");
    for i in &status.instances {
        println!("{:<28} {:<12} {:<10} {:>6.0}s {:>8}", i.id, i.pool, i.state, i.age_s, i.job_id.map(|j| j.to_string()).unwrap_or_default());
    }
    if !status.unmatched_jobs.is_empty() {
        println!("\nJobs that fit no pool:");
        for u in &status.unmatched_jobs {
            println!("  job {} {:?} needs {:?}", u.job_id, u.name, u.runs_on);
        }
    }
    println!("\nRecent removals:");
    for r in status.recent_removals.iter().take(10) {
        println!("  {} ({}) job {:?}: {}", r.id, r.pool, r.job_id, r.reason);
    }
}

/// `explain`: one observation, then for each waiting job (or the one asked for) why it does or
/// does not get a runner.
pub async fn explain_command(config: Config, job_id: Option<i64>) -> anyhow::Result<()> {
    let rt = Arc::new(Runtime::start(config).await?);
    let mut reconciler = Reconciler::new(rt.clone());
    let (observed, errors) = reconciler.observe(false, None).await;
    let plan = plan::plan(&observed, &rt.pools, plan::Limits { max_runners: rt.config.limits.max_runners });
    for error in &errors {
        println!("Forgejo or the backend could not be read: {error}");
    }
    let mut found = false;
    for scope_jobs in &observed.jobs {
        for job in scope_jobs.jobs.iter().flatten() {
            if job_id.is_some_and(|id| id != job.id) {
                continue;
            }
            found = true;
            println!("{}", explain_job(&rt, &observed, &plan, &scope_jobs.scope, job));
        }
    }
    if !found {
        match job_id {
            Some(id) => println!(
                "job {id}: not in the queue of any configured scope (it is blocked on `needs`, finished, or in a scope this autoscaler does not watch)"
            ),
            None => println!("no waiting or running jobs in the configured scopes"),
        }
    }
    Ok(())
}

fn explain_job(rt: &Runtime, observed: &plan::Observed, plan: &plan::Plan, scope: &crate::forgejo::ApiScope, job: &crate::forgejo::Job) -> String {
    let head = format!("job {} {:?} (runs-on {:?}, {scope}):", job.id, job.name, job.runs_on);
    let instance = observed.instances.iter().find(|i| i.job.as_ref().is_some_and(|k| k.id == job.id));
    if job.status == crate::forgejo::JobStatus::Running {
        return match instance {
            Some(i) => format!("{head} running on our instance {} (pool {})", i.id, i.pool),
            None => format!("{head} running (on a runner this autoscaler did not start, or one already reused)"),
        };
    }
    let Some(pool) = crate::pools::best_pool(&rt.pools, scope, &job.runs_on) else {
        let offers: Vec<String> = rt.pools.iter().map(|p| format!("{} offers [{}]", p.name, p.label_names.iter().cloned().collect::<Vec<_>>().join(", "))).collect();
        return format!("{head} fits no pool: every runs-on label must be among a pool's label names; {}", offers.join("; "));
    };
    if let Some(i) = instance {
        return format!("{head} waiting; instance {} (pool {}, {}) was started for it", i.id, pool.name, i.state.as_str());
    }
    if plan.actions.iter().any(|a| matches!(a, plan::Action::Create { job: Some(j), .. } if j.id == job.id)) {
        return format!("{head} fits pool {}; an instance will be created on the next tick", pool.name);
    }
    let usage = plan.pools.get(&pool.name).cloned().unwrap_or_default();
    if observed.backoff_pools.contains(&pool.name) {
        return format!("{head} fits pool {}, which is backing off after failed creations", pool.name);
    }
    format!(
        "{head} fits pool {} but it is at capacity ({}/{} instances, global cap {}); it gets a runner when a slot frees",
        pool.name, usage.used, usage.cap, rt.config.limits.max_runners
    )
}
