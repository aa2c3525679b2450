//! Access tokens: `POST/GET /users/{username}/tokens`, `DELETE .../{id}` (contract §1.2).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller;
use crate::auth::{check_scope, require_caller, AuthMethod, Caller, ScopeCategory};
use crate::http::{
    json_response, ok_json, read_json, required, set_total_count, ApiError, ApiResult,
};
use crate::server::App;
use crate::state::{normalize_scopes, AccessToken, Id, State as SimState};

#[derive(Deserialize)]
pub struct CreateAccessTokenOption {
    name: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

fn token_json(state: &SimState, token: &AccessToken, secret: &str) -> Value {
    let mut v = json!({
        "id": token.id,
        "name": token.name,
        "sha1": secret,
        "token_last_eight": token.last_eight,
        "scopes": token.scopes,
    });
    if state.version.has_runners_api() {
        v["repositories"] = Value::Null;
    }
    v
}

/// `{username}` resolved, with `reqSelfOrAdmin`; `basic_only` for create/delete.
fn target_user(
    state: &SimState,
    username: &str,
    caller: Option<Caller>,
    write: bool,
    basic_only: bool,
) -> Result<Id, ApiError> {
    check_scope(caller.as_ref(), ScopeCategory::User, write)?;
    let caller = require_caller(caller)?;
    if basic_only && caller.method != AuthMethod::Basic {
        return Err(ApiError::unauthorized("auth method not allowed"));
    }
    let user = state
        .account_by_name(username)
        .ok_or_else(ApiError::not_found)?;
    if user.id != caller.user_id && !state.is_admin(caller.user_id) {
        return Err(ApiError::forbidden(
            "doer should be the site admin or the user itself",
        ));
    }
    Ok(user.id)
}

pub async fn create(
    State(app): State<Arc<App>>,
    Path(username): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let user_id = target_user(&app.lock(), &username, caller, true, true)?;
    let option: CreateAccessTokenOption = read_json(body).await?;
    let name = required("Name", option.name)?;
    let scopes = normalize_scopes(&option.scopes).map_err(ApiError::bad_request)?;
    let mut state = app.lock();
    let (token, secret) = state
        .create_access_token(user_id, &name, scopes)
        .map_err(ApiError::bad_request)?;
    Ok(json_response(
        StatusCode::CREATED,
        &token_json(&state, &token, &secret),
    ))
}

pub async fn list(
    State(app): State<Arc<App>>,
    Path(username): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let state = app.lock();
    let user_id = target_user(&state, &username, caller, false, false)?;
    let list: Vec<Value> = state
        .tokens
        .values()
        .filter(|t| t.user_id == user_id)
        .map(|t| token_json(&state, t, ""))
        .collect();
    // routers/api/v1/user/app.go ListAccessTokens sets it in every version (the 13 and 14
    // swagger files just do not document it). The list is not paged, so it is the length.
    let mut response = ok_json(&list);
    set_total_count(&mut response, list.len());
    Ok(response)
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path((username, token)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    let mut state = app.lock();
    let user_id = target_user(&state, &username, caller, true, true)?;
    if !state.delete_access_token(user_id, &token) {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
