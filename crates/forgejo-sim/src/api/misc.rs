//! `GET /version`, `GET /user`, `POST /admin/users`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::caller;
use super::scope::{resolve, user_json, ScopePath};
use crate::auth::{check_scope, require_caller, ScopeCategory};
use crate::http::{json_response, ok_json, read_json, required, ApiError, ApiResult};
use crate::server::App;

pub async fn version(State(app): State<Arc<App>>) -> ApiResult {
    Ok(ok_json(&json!({"version": app.version.version_string()})))
}

pub async fn current_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    check_scope(caller.as_ref(), ScopeCategory::User, false)?;
    let caller = require_caller(caller)?;
    let state = app.lock();
    let account = state
        .account(caller.user_id)
        .ok_or_else(ApiError::not_found)?;
    Ok(ok_json(&user_json(&state, account)))
}

#[derive(Deserialize)]
pub struct CreateUserOption {
    username: Option<String>,
    password: Option<String>,
    email: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// `POST /admin/users` (site admin): tests create non-admin users with it.
pub async fn create_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    {
        let state = app.lock();
        resolve(&state, &ScopePath::Admin, caller, true)?;
    }
    let option: CreateUserOption = read_json(body).await?;
    let username = required("Username", option.username)?;
    let email = required("Email", option.email)?;
    let password = option.password.unwrap_or_default();
    let now = app.now_ms();
    let mut state = app.lock();
    let id = state
        .create_user(&username, &password, &email, option.admin, now)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m))?;
    let account = state.account(id).ok_or_else(ApiError::not_found)?;
    Ok(json_response(
        StatusCode::CREATED,
        &user_json(&state, account),
    ))
}
