//! `/_sim/`: the simulator's own control API for tests and benchmarks (not Forgejo's).
//! Unauthenticated, so it only answers loopback clients. Shapes are the ones of issue 2;
//! the extensions (clock, cron, config, registration-token reset, secret runners, actions
//! unit) are documented in README.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::FaultRule;
use crate::http::{json_response, ok_json};
use crate::scheduler::CronJob;
use crate::server::App;
use crate::state::{RerunError, Scope, State as SimState};

pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/stats", get(stats))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}/log", get(job_log))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/runs/{id}/rerun", post(rerun))
        .route("/dispatch", post(dispatch))
        .route("/runners", get(runners).post(register_secret_runner))
        .route(
            "/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
        .route("/clock/advance", post(advance_clock))
        .route("/cron/{name}", post(run_cron))
        .route(
            "/config/cleanup_offline_runners",
            put(configure_offline_cleanup),
        )
        .route("/registration-token/reset", post(reset_registration_token))
        .route("/repos/{owner}/{repo}/actions", put(set_actions_enabled))
        .layer(middleware::from_fn(loopback_only))
        .with_state(app)
}

async fn loopback_only(request: Request, next: Next) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if remote.is_some_and(|ip| !ip.is_loopback()) {
        return error(
            StatusCode::FORBIDDEN,
            "the control API only answers loopback clients",
        );
    }
    next.run(request).await
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({"message": message}))
}

async fn body_json<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    let (jobs, runners) = {
        let state = app.lock();
        let jobs: serde_json::Map<String, Value> = state
            .job_counts()
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
            .collect();
        let live = state.runners.values().filter(|r| !r.deleted);
        let active = live.clone().count();
        let ephemeral = live.filter(|r| r.ephemeral).count();
        let deleted = state.runners.len() - active;
        (
            jobs,
            json!({"active": active, "deleted": deleted, "ephemeral_active": ephemeral}),
        )
    };
    let counters = app.stats.snapshot();
    ok_json(
        &json!({"jobs": jobs, "runners": runners, "requests": counters.requests, "responses": counters.responses}),
    )
}

fn opt(ms: Option<i64>) -> Value {
    ms.map(Value::from).unwrap_or(Value::Null)
}

async fn jobs(State(app): State<Arc<App>>) -> Response {
    let list: Vec<Value> = {
        let state = app.lock();
        state
            .jobs
            .values()
            .map(|j| {
                let repo = state.repos.get(&j.repo_id);
                let owner = repo
                    .and_then(|r| state.account(r.owner_id))
                    .map(|a| a.name.as_str())
                    .unwrap_or("");
                let runner_id = state.tasks.get(&j.task_id).map(|t| t.runner_id);
                json!({
                    "id": j.id,
                    "run_id": j.run_id,
                    "repo": format!("{owner}/{}", repo.map(|r| r.name.as_str()).unwrap_or("")),
                    "name": j.name,
                    "attempt": j.attempt,
                    "handle": j.handle,
                    "status": j.status.as_str(),
                    "runs_on": j.runs_on,
                    "runner_id": runner_id,
                    "task_id": (j.task_id != 0).then_some(j.task_id),
                    "created": j.created_ms,
                    "started": opt(j.started_ms),
                    "stopped": opt(j.stopped_ms),
                })
            })
            .collect()
    };
    ok_json(&list)
}

async fn job_log(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, "job not found");
    };
    match app.lock().job_log(id) {
        Some((rows, archived)) => ok_json(&json!({"rows": rows, "archived": archived})),
        None => error(StatusCode::NOT_FOUND, "job not found"),
    }
}

async fn cancel_job(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, "job not found");
    };
    let now = app.now_ms();
    let mut state = app.lock();
    if !state.jobs.contains_key(&id) {
        return error(StatusCode::NOT_FOUND, "job not found");
    }
    if state.cancel_job(id, now) {
        ok_json(&json!({"cancelled": true}))
    } else {
        error(StatusCode::CONFLICT, "job is already done")
    }
}

async fn rerun(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, "run not found");
    };
    let now = app.now_ms();
    let mut state = app.lock();
    match state.rerun(id, now) {
        Ok(()) => {
            let jobs = state
                .runs
                .get(&id)
                .map(|r| r.job_ids.clone())
                .unwrap_or_default();
            ok_json(&json!({"run_id": id, "jobs": jobs}))
        }
        Err(RerunError::NotFound) => error(StatusCode::NOT_FOUND, "run not found"),
        Err(RerunError::NotDone) => error(StatusCode::CONFLICT, "run is not done"),
    }
}

#[derive(Deserialize)]
struct DispatchRequest {
    owner: String,
    repo: String,
    workflow: String,
}

async fn dispatch(State(app): State<Arc<App>>, body: Body) -> Response {
    let req: DispatchRequest = match body_json(body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let now = app.now_ms();
    let mut state = app.lock();
    let Some(repo_id) = state.repo_by_name(&req.owner, &req.repo).map(|r| r.id) else {
        return error(StatusCode::NOT_FOUND, "repository not found");
    };
    match state.dispatch(repo_id, &req.workflow, now) {
        Ok(run_id) => {
            let jobs = state
                .runs
                .get(&run_id)
                .map(|r| r.job_ids.clone())
                .unwrap_or_default();
            json_response(
                StatusCode::CREATED,
                &json!({"run_id": run_id, "jobs": jobs}),
            )
        }
        Err(message) => error(StatusCode::UNPROCESSABLE_ENTITY, &message),
    }
}

async fn runners(State(app): State<Arc<App>>) -> Response {
    let list: Vec<Value> = {
        let state = app.lock();
        state
            .runners
            .values()
            .map(|r| {
                json!({
                    "id": r.id,
                    "uuid": r.uuid,
                    "name": r.name,
                    "labels": r.labels.clone().unwrap_or_default(),
                    "ephemeral": r.ephemeral,
                    "deleted": r.deleted,
                    "created": r.created_ms,
                    "last_online": opt(r.last_online_ms),
                })
            })
            .collect()
    };
    ok_json(&list)
}

/// Scope of a control request: `owner` and/or `repo` names; neither = instance.
#[derive(Deserialize, Default)]
struct ScopeNames {
    owner: Option<String>,
    repo: Option<String>,
}

fn resolve_scope(
    state: &SimState,
    names: &ScopeNames,
) -> Result<Scope, (StatusCode, &'static str)> {
    match (&names.owner, &names.repo) {
        (Some(owner), Some(repo)) => state
            .repo_by_name(owner, repo)
            .map(|r| Scope::Repo(r.id))
            .ok_or((StatusCode::NOT_FOUND, "repository not found")),
        (Some(owner), None) => state
            .account_by_name(owner)
            .map(|a| Scope::Owner(a.id))
            .ok_or((StatusCode::NOT_FOUND, "owner not found")),
        (None, Some(_)) => Err((StatusCode::BAD_REQUEST, "repo needs owner")),
        (None, None) => Ok(Scope::Global),
    }
}

#[derive(Deserialize)]
struct SecretRunner {
    secret: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(flatten)]
    scope: ScopeNames,
}

/// `forgejo-cli actions register --secret`: a runner whose uuid/token derive from a secret.
async fn register_secret_runner(State(app): State<Arc<App>>, body: Body) -> Response {
    let req: SecretRunner = match body_json(body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let now = app.now_ms();
    let mut state = app.lock();
    let scope = match resolve_scope(&state, &req.scope) {
        Ok(s) => s,
        Err((status, message)) => return error(status, message),
    };
    let name = if req.name.is_empty() {
        "runner"
    } else {
        req.name.as_str()
    };
    match state.register_runner_with_secret(scope, name, &req.secret, req.labels, now) {
        Ok(id) => json_response(StatusCode::CREATED, &json!({"id": id})),
        Err(message) => error(StatusCode::UNPROCESSABLE_ENTITY, &message),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FaultBody {
    Many { rules: Vec<FaultRule> },
    One(FaultRule),
}

async fn add_faults(State(app): State<Arc<App>>, body: Body) -> Response {
    let rules = match body_json::<FaultBody>(body).await {
        Ok(FaultBody::Many { rules }) => rules,
        Ok(FaultBody::One(rule)) => vec![rule],
        Err(e) => return e,
    };
    if let Some(message) = rules.iter().find_map(|r| r.validate().err()) {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    let total = app.faults.add(rules);
    ok_json(&json!({"rules": total}))
}

async fn list_faults(State(app): State<Arc<App>>) -> Response {
    ok_json(&json!({"rules": app.faults.list()}))
}

async fn clear_faults(State(app): State<Arc<App>>) -> Response {
    app.faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Advance {
    seconds: f64,
}

async fn advance_clock(State(app): State<Arc<App>>, body: Body) -> Response {
    let req: Advance = match body_json(body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if !(req.seconds.is_finite() && req.seconds >= 0.0) {
        return error(
            StatusCode::BAD_REQUEST,
            "seconds must be a non-negative number",
        );
    }
    app.clock.advance(Duration::from_secs_f64(req.seconds));
    ok_json(&json!({"now": app.now_ms()}))
}

async fn run_cron(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match CronJob::from_name(&name) {
        Some(job) => ok_json(&json!({"changed": job.run(&app)})),
        None => error(StatusCode::NOT_FOUND, "unknown cron job"),
    }
}

#[derive(Deserialize)]
struct OfflineCleanupBody {
    enabled: bool,
    #[serde(default)]
    older_than_secs: Option<u64>,
    #[serde(default)]
    global_scope_only: Option<bool>,
}

async fn configure_offline_cleanup(State(app): State<Arc<App>>, body: Body) -> Response {
    let req: OfflineCleanupBody = match body_json(body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut state = app.lock();
    let cfg = &mut state.offline_cleanup;
    cfg.enabled = req.enabled;
    if let Some(secs) = req.older_than_secs {
        // Forgejo's minimum for OLDER_THAN is one minute.
        cfg.older_than_ms = (secs.max(60) as i64).saturating_mul(1000);
    }
    if let Some(global) = req.global_scope_only {
        cfg.global_scope_only = global;
    }
    ok_json(
        &json!({"enabled": cfg.enabled, "older_than_secs": cfg.older_than_ms / 1000, "global_scope_only": cfg.global_scope_only}),
    )
}

/// The web UI's "reset registration token": a new token; older ones of the scope stop working.
async fn reset_registration_token(State(app): State<Arc<App>>, body: Body) -> Response {
    let names: ScopeNames = match body_json(body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut state = app.lock();
    match resolve_scope(&state, &names) {
        Ok(scope) => ok_json(&json!({"token": state.new_registration_token(scope)})),
        Err((status, message)) => error(status, message),
    }
}

#[derive(Deserialize)]
struct ActionsUnit {
    enabled: bool,
}

async fn set_actions_enabled(
    State(app): State<Arc<App>>,
    Path((owner, repo)): Path<(String, String)>,
    body: Body,
) -> Response {
    let req: ActionsUnit = match body_json(body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut state = app.lock();
    let Some(id) = state.repo_by_name(&owner, &repo).map(|r| r.id) else {
        return error(StatusCode::NOT_FOUND, "repository not found");
    };
    if let Some(r) = state.repos.get_mut(&id) {
        r.actions_enabled = req.enabled;
    }
    ok_json(&json!({"enabled": req.enabled}))
}
