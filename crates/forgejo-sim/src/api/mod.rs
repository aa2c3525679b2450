//! `/api/v1`: the subset of Forgejo's HTTP API an autoscaler and its tests use.
//!
//! Routes that a version does not have are simply not registered, so they get the same
//! 404 as any unknown path (quirk 8: no runners API in 13/14).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::{authenticate, Caller};
use crate::http::{api_not_found, render_api_errors, ApiError};
use crate::server::App;

mod misc;
mod repos;
mod runners;
pub mod scope;
mod tokens;

use runners::RouteScope;

/// Who is calling (anonymous is `None`); wrong credentials are a 401.
pub(crate) fn caller(
    app: &App,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Option<Caller>, ApiError> {
    authenticate(&app.lock(), headers, raw_query)
}

pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    let mut r = Router::new()
        .route("/version", get(misc::version))
        .route("/user", get(misc::current_user))
        .route("/admin/users", post(misc::create_user))
        .route(
            "/users/{username}/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/users/{username}/tokens/{token}",
            axum::routing::delete(tokens::delete),
        )
        .route("/user/repos", post(repos::create_user_repo))
        .route("/orgs", post(repos::create_org))
        .route("/orgs/{org}/repos", post(repos::create_org_repo))
        .route("/repos/{owner}/{repo}", get(repos::get_repo))
        .route(
            "/repos/{owner}/{repo}/contents/{*filepath}",
            post(repos::create_file).put(repos::update_file),
        );
    r = runners::routes(
        r,
        RouteScope::Repo,
        "/repos/{owner}/{repo}/actions/runners",
        app.version,
    );
    r = runners::routes(
        r,
        RouteScope::Org,
        "/orgs/{org}/actions/runners",
        app.version,
    );
    r = runners::routes(r, RouteScope::User, "/user/actions/runners", app.version);
    r = runners::admin_routes(r, app.version);
    r.route_layer(middleware::from_fn_with_state(
        app.clone(),
        render_api_errors,
    ))
    .route_layer(middleware::from_fn_with_state(
        app.clone(),
        crate::faults::apply_faults,
    ))
    .fallback(not_found)
}

/// Unknown `/api/v1` path: Forgejo's JSON 404 (rendered here, the route layers do not run).
async fn not_found(State(app): State<Arc<App>>, request: Request) -> Response {
    let _ = request;
    let error = api_not_found().await;
    let body = serde_json::json!({"errors": error.errors, "message": error.message, "url": app.swagger_url});
    crate::http::json_response(error.status, &body).into_response()
}
