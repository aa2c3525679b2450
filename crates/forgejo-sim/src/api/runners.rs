//! The runner routes of every scope: registration tokens (§1.6), the jobs queue (§1.4) and,
//! in 15, list/get/create/delete of runners (§1.5).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::caller;
use super::scope::{resolve, ScopePath};
use crate::http::{json_response, ok_json, read_json, required, ApiError, ApiResult};
use crate::server::App;
use crate::state::labels::parse_labels_query;
use crate::state::{Runner, RunnerVisibility, State as SimState};
use crate::version::ForgejoVersion;

/// Contract §1.1 paging defaults.
const DEFAULT_PAGE_SIZE: usize = 30;
const MAX_PAGE_SIZE: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteScope {
    Repo,
    Org,
    User,
    Admin,
}

type Params = Path<HashMap<String, String>>;

fn scope_path(scope: RouteScope, params: &HashMap<String, String>) -> ScopePath {
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    match scope {
        RouteScope::Repo => ScopePath::Repo {
            owner: get("owner"),
            repo: get("repo"),
        },
        RouteScope::Org => ScopePath::Org(get("org")),
        RouteScope::User => ScopePath::User,
        RouteScope::Admin => ScopePath::Admin,
    }
}

/// Registers the routes under `prefix` (e.g. `/repos/{owner}/{repo}/actions/runners`).
pub fn routes(
    router: Router<Arc<App>>,
    scope: RouteScope,
    prefix: &str,
    version: ForgejoVersion,
) -> Router<Arc<App>> {
    let mut router = router
        .route(
            &format!("{prefix}/registration-token"),
            get(
                move |s: State<Arc<App>>, p: Params, h: HeaderMap, q: RawQuery| {
                    registration_token(s, scope, p, h, q)
                },
            ),
        )
        .route(
            &format!("{prefix}/jobs"),
            get(
                move |s: State<Arc<App>>, p: Params, h: HeaderMap, q: RawQuery| {
                    jobs(s, scope, p, h, q)
                },
            ),
        );
    if version.has_runners_api() {
        router = router
            .route(
                prefix,
                get(
                    move |s: State<Arc<App>>,
                          p: Params,
                          h: HeaderMap,
                          q: RawQuery,
                          u: OriginalUri| {
                        list_runners(s, scope, p, h, q, u)
                    },
                )
                .post(
                    move |s: State<Arc<App>>, p: Params, h: HeaderMap, q: RawQuery, b: Body| {
                        create_runner(s, scope, p, h, q, b)
                    },
                ),
            )
            .route(
                &format!("{prefix}/{{runner_id}}"),
                get(
                    move |s: State<Arc<App>>, p: Params, h: HeaderMap, q: RawQuery| {
                        get_runner(s, scope, p, h, q)
                    },
                )
                .delete(
                    move |s: State<Arc<App>>, p: Params, h: HeaderMap, q: RawQuery| {
                        delete_runner(s, scope, p, h, q)
                    },
                ),
            );
    }
    router
}

/// The instance-level routes: `/admin/runners/...` in every version, plus the 15 paths
/// under `/admin/actions/runners`.
pub fn admin_routes(router: Router<Arc<App>>, version: ForgejoVersion) -> Router<Arc<App>> {
    let scope = RouteScope::Admin;
    let router = router
        .route(
            "/admin/runners/registration-token",
            get(
                move |s: State<Arc<App>>, p: Params, h: HeaderMap, q: RawQuery| {
                    registration_token(s, scope, p, h, q)
                },
            ),
        )
        .route(
            "/admin/runners/jobs",
            get(
                move |s: State<Arc<App>>, p: Params, h: HeaderMap, q: RawQuery| {
                    jobs(s, scope, p, h, q)
                },
            ),
        );
    if version.has_runners_api() {
        routes(router, scope, "/admin/actions/runners", version)
    } else {
        router
    }
}

async fn registration_token(
    State(app): State<Arc<App>>,
    scope: RouteScope,
    Path(params): Params,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let mut state = app.lock();
    let (scope, _) = resolve(&state, &scope_path(scope, &params), caller, false)?;
    let token = state.registration_token(scope);
    Ok(ok_json(&json!({"token": token})))
}

/// `ActionRunJob`; `attempt`/`handle` only in 15, `needs` is `null` when empty.
#[derive(Serialize)]
struct ActionRunJob {
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<String>,
    repo_id: i64,
    owner_id: i64,
    name: String,
    needs: Option<Vec<String>>,
    runs_on: Vec<String>,
    task_id: i64,
    status: &'static str,
}

async fn jobs(
    State(app): State<Arc<App>>,
    scope: RouteScope,
    Path(params): Params,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let labels = parse_labels_query(q.as_deref());
    let listing = {
        let state = app.lock();
        let (scope, _) = resolve(&state, &scope_path(scope, &params), caller, false)?;
        state.list_jobs(scope, &labels)
    };
    let with_handle = app.version.jobs_have_handle();
    let items: Vec<ActionRunJob> = listing
        .into_iter()
        .map(|j| ActionRunJob {
            id: j.id,
            attempt: with_handle.then_some(j.attempt),
            handle: with_handle.then_some(j.handle),
            repo_id: j.repo_id,
            owner_id: j.owner_id,
            name: j.name,
            needs: (!j.needs.is_empty()).then_some(j.needs),
            runs_on: j.runs_on,
            task_id: j.task_id,
            status: j.status.as_str(),
        })
        .collect();
    // Go appends to a nil slice: no match is `null`, not `[]` (quirk 2).
    if items.is_empty() {
        return Ok(ok_json(&serde_json::Value::Null));
    }
    Ok(ok_json(&items))
}

/// `ActionRunner` of the swagger file.
fn runner_json(runner: &Runner, now_ms: i64) -> serde_json::Value {
    json!({
        "id": runner.id,
        "uuid": runner.uuid,
        "owner_id": runner.owner_id,
        "repo_id": runner.repo_id,
        "name": runner.name,
        "status": SimState::runner_status(runner, now_ms),
        "version": runner.version,
        "labels": runner.labels,
        "description": runner.description,
        "ephemeral": runner.ephemeral,
    })
}

/// Go's `strconv.ParseBool`; anything else is false.
fn parse_bool(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

fn query_param(q: Option<&str>, name: &str) -> Option<String> {
    q?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = crate::state::labels::query_unescape(k)?;
        (k == name)
            .then(|| crate::state::labels::query_unescape(v))
            .flatten()
    })
}

async fn list_runners(
    State(app): State<Arc<App>>,
    scope: RouteScope,
    Path(params): Params,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    OriginalUri(uri): OriginalUri,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let visibility = match query_param(q.as_deref(), "visible") {
        Some(v) if parse_bool(&v) => RunnerVisibility::Visible,
        _ => RunnerVisibility::Owned,
    };
    let page = query_param(q.as_deref(), "page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(1);
    let limit = match query_param(q.as_deref(), "limit").and_then(|l| l.parse::<i64>().ok()) {
        Some(l) if l > 0 => (l as usize).min(MAX_PAGE_SIZE),
        _ => DEFAULT_PAGE_SIZE,
    };
    let now = app.now_ms();
    let (total, items) = {
        let state = app.lock();
        let (scope, _) = resolve(&state, &scope_path(scope, &params), caller, false)?;
        let all = state.list_runners(scope, visibility);
        let items: Vec<serde_json::Value> = all
            .iter()
            .skip((page - 1).saturating_mul(limit))
            .take(limit)
            .map(|r| runner_json(r, now))
            .collect();
        (all.len(), items)
    };
    let mut response = ok_json(&items);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        headers.insert("x-total-count", v);
    }
    let link = link_header(&app.base_url, uri.path(), q.as_deref(), page, limit, total);
    if let Some(v) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LINK, v);
    }
    headers.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("X-Total-Count, Link"),
    );
    Ok(response)
}

/// `Link` with `next`/`last`/`first`/`prev` like Forgejo's `SetLinkHeader`.
fn link_header(
    base: &str,
    path: &str,
    query: Option<&str>,
    page: usize,
    limit: usize,
    total: usize,
) -> Option<String> {
    let pages = total.div_ceil(limit.max(1)).max(1);
    let other: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("page="))
        .collect();
    let url = |p: usize| {
        let mut q = other.join("&");
        if !q.is_empty() {
            q.push('&');
        }
        format!("<{base}{path}?{q}page={p}>")
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(pages)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    (!links.is_empty()).then(|| links.join(","))
}

fn runner_id(params: &HashMap<String, String>) -> i64 {
    // Documented as a string, parsed as int64: non-numeric is 0, which never exists.
    params
        .get("runner_id")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn get_runner(
    State(app): State<Arc<App>>,
    scope: RouteScope,
    Path(params): Params,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let now = app.now_ms();
    let state = app.lock();
    let (scope, _) = resolve(&state, &scope_path(scope, &params), caller, false)?;
    let runner = state
        .runners
        .get(&runner_id(&params))
        .filter(|r| state.runner_visible(r, scope, RunnerVisibility::Visible))
        .ok_or_else(ApiError::not_found)?;
    Ok(ok_json(&runner_json(runner, now)))
}

#[derive(Deserialize)]
struct RegisterRunnerOptions {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    ephemeral: bool,
}

async fn create_runner(
    State(app): State<Arc<App>>,
    scope: RouteScope,
    Path(params): Params,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let scope = {
        let state = app.lock();
        resolve(&state, &scope_path(scope, &params), caller, true)?.0
    };
    let option: RegisterRunnerOptions = read_json(body).await?;
    let name = required("Name", option.name)?;
    let now = app.now_ms();
    let creds = app
        .lock()
        .create_runner(scope, &name, &option.description, option.ephemeral, now);
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"id": creds.id, "uuid": creds.uuid, "token": creds.token}),
    ))
}

async fn delete_runner(
    State(app): State<Arc<App>>,
    scope: RouteScope,
    Path(params): Params,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let mut state = app.lock();
    let (scope, _) = resolve(&state, &scope_path(scope, &params), caller, true)?;
    let id = runner_id(&params);
    let runner = state
        .runners
        .get(&id)
        .filter(|r| state.runner_visible(r, scope, RunnerVisibility::Visible))
        .ok_or_else(ApiError::not_found)?;
    let owned = state.runner_visible(runner, scope, RunnerVisibility::Owned)
        || scope == crate::state::Scope::Global;
    if !owned {
        return Err(ApiError::not_found_msg(
            "No permission to delete this runner",
        ));
    }
    state.delete_runner(id);
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::NO_CONTENT.into_response()))
}
