//! Organizations, repositories and committed files (`/user/repos`, `/orgs`,
//! `/orgs/{org}/repos`, `/repos/{owner}/{repo}`, `/repos/{owner}/{repo}/contents/{path}`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::caller;
use super::scope::{org_json, repo_json, rfc3339};
use crate::auth::{check_scope, require_caller, ScopeCategory};
use crate::http::{json_response, ok_json, read_json, required, ApiError, ApiResult};
use crate::server::App;
use crate::state::{AccountKind, Id};

#[derive(Deserialize)]
pub struct CreateRepoOption {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    default_branch: String,
}

#[derive(Deserialize)]
pub struct CreateOrgOption {
    username: Option<String>,
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
pub struct FileOptions {
    content: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    sha: Option<String>,
}

async fn create_repo_for(app: &App, owner_id: Id, body: Body) -> ApiResult {
    let option: CreateRepoOption = read_json(body).await?;
    let name = required("Name", option.name)?;
    let now = app.now_ms();
    let mut state = app.lock();
    let id = state
        .create_repo(
            owner_id,
            &name,
            &option.description,
            option.private,
            &option.default_branch,
            now,
        )
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
    let repo = state.repos.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(json_response(
        StatusCode::CREATED,
        &repo_json(&state, repo, true),
    ))
}

pub async fn create_user_repo(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    check_scope(caller.as_ref(), ScopeCategory::Repository, true)?;
    let caller = require_caller(caller)?;
    create_repo_for(&app, caller.user_id, body).await
}

pub async fn create_org_repo(
    State(app): State<Arc<App>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    check_scope(caller.as_ref(), ScopeCategory::Organization, true)?;
    let org_id = {
        let state = app.lock();
        let org = state
            .account_by_name(&org)
            .filter(|a| a.kind == AccountKind::Org)
            .ok_or_else(ApiError::not_found)?;
        let caller = require_caller(caller)?;
        if !state.can_own(caller.user_id, org.id) {
            return Err(ApiError::forbidden(
                "Given user is not owner of organization.",
            ));
        }
        org.id
    };
    create_repo_for(&app, org_id, body).await
}

pub async fn create_org(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    check_scope(caller.as_ref(), ScopeCategory::Organization, true)?;
    let caller = require_caller(caller)?;
    let option: CreateOrgOption = read_json(body).await?;
    let name = required("UserName", option.username)?;
    let now = app.now_ms();
    let mut state = app.lock();
    let id = state
        .create_org(
            &name,
            caller.user_id,
            &option.full_name,
            &option.description,
            now,
        )
        .map_err(ApiError::unprocessable)?;
    let org = state.account(id).ok_or_else(ApiError::not_found)?;
    Ok(json_response(StatusCode::CREATED, &org_json(&state, org)))
}

pub async fn get_repo(
    State(app): State<Arc<App>>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    check_scope(caller.as_ref(), ScopeCategory::Repository, false)?;
    let state = app.lock();
    let repo = state
        .repo_by_name(&owner, &repo)
        .ok_or_else(ApiError::not_found)?;
    let is_owner = caller
        .as_ref()
        .is_some_and(|c| state.can_own(c.user_id, repo.owner_id));
    if repo.private && !is_owner {
        return Err(ApiError::not_found());
    }
    Ok(ok_json(&repo_json(&state, repo, is_owner)))
}

pub async fn create_file(
    State(app): State<Arc<App>>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    write_file(app, owner, repo, path, headers, q, body, false).await
}

pub async fn update_file(
    State(app): State<Arc<App>>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    write_file(app, owner, repo, path, headers, q, body, true).await
}

/// POST creates (422 if the file exists), PUT updates (needs `sha`). Either way the commit
/// goes to the default branch and acts as a push (workflows re-read, `on: push` runs start).
#[allow(clippy::too_many_arguments)]
async fn write_file(
    app: Arc<App>,
    owner: String,
    repo: String,
    path: String,
    headers: HeaderMap,
    q: Option<String>,
    body: Body,
    update: bool,
) -> ApiResult {
    let caller = caller(&app, &headers, q.as_deref())?;
    check_scope(caller.as_ref(), ScopeCategory::Repository, true)?;
    let repo_id = {
        let state = app.lock();
        let repo = state
            .repo_by_name(&owner, &repo)
            .ok_or_else(ApiError::not_found)?;
        let caller = require_caller(caller)?;
        if !state.can_own(caller.user_id, repo.owner_id) {
            return Err(ApiError::forbidden(
                "user should have a permission to write to a repo",
            ));
        }
        repo.id
    };
    let option: FileOptions = read_json(body).await?;
    let content_b64 = required("Content", option.content)?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(content_b64.trim())
        .map_err(|_| ApiError::unprocessable("Invalid base64 content"))?;
    let path = path.trim_start_matches('/').to_owned();
    if path.is_empty() || path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(ApiError::unprocessable(format!(
            "path is invalid [path: {path}]"
        )));
    }
    let now = app.now_ms();
    let mut state = app.lock();
    let exists = state
        .repos
        .get(&repo_id)
        .is_some_and(|r| r.files.contains_key(&path));
    if !update && exists {
        return Err(ApiError::unprocessable(format!(
            "repository file already exists [path: {path}]"
        )));
    }
    if update && option.sha.as_deref().unwrap_or("").is_empty() {
        return Err(ApiError::unprocessable("[SHA]: Required"));
    }
    let text = String::from_utf8_lossy(&content).into_owned();
    let (commit_sha, _runs) = state
        .commit_file(repo_id, &path, text, now)
        .ok_or_else(ApiError::not_found)?;
    let full_name = format!("{owner}/{repo}");
    let blob_sha = hex::encode(&Sha256::digest(&content)[..20]);
    let body = file_response(
        &state.app_url,
        &full_name,
        &path,
        &content,
        &blob_sha,
        &commit_sha,
        &option.message,
        now,
    );
    let status = if update {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &body))
}

/// How Go marshals a zero `time.Time`. Forgejo's `GetFileCommitResponse` (services/repository/
/// files) never sets `CommitMeta.Created` of the commit or of its tree, and the field has no
/// `omitempty`, so the real server always writes this value for both.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[allow(clippy::too_many_arguments)]
fn file_response(
    app_url: &str,
    full_name: &str,
    path: &str,
    content: &[u8],
    blob_sha: &str,
    commit_sha: &str,
    message: &str,
    now: i64,
) -> Value {
    let api = format!("{app_url}api/v1/repos/{full_name}");
    let name = path.rsplit('/').next().unwrap_or(path);
    let person = json!({"name": "", "email": "", "date": rfc3339(now)});
    json!({
        "content": {
            "name": name,
            "path": path,
            "sha": blob_sha,
            "last_commit_sha": commit_sha,
            "last_commit_when": rfc3339(now),
            "type": "file",
            "size": content.len(),
            "encoding": "base64",
            "content": base64::engine::general_purpose::STANDARD.encode(content),
            "target": null,
            "url": format!("{api}/contents/{path}"),
            "html_url": format!("{app_url}{full_name}/src/branch/main/{path}"),
            "git_url": format!("{api}/git/blobs/{blob_sha}"),
            "download_url": format!("{app_url}{full_name}/raw/branch/main/{path}"),
            "submodule_git_url": null,
            "_links": {
                "self": format!("{api}/contents/{path}"),
                "git": format!("{api}/git/blobs/{blob_sha}"),
                "html": format!("{app_url}{full_name}/src/branch/main/{path}"),
            },
        },
        "commit": {
            "url": format!("{api}/git/commits/{commit_sha}"),
            "sha": commit_sha,
            "created": GO_ZERO_TIME,
            "html_url": format!("{app_url}{full_name}/commit/{commit_sha}"),
            "author": person,
            "committer": person,
            "parents": [],
            "message": if message.is_empty() { format!("Add {path}\n") } else { format!("{message}\n") },
            "tree": {"url": format!("{api}/git/trees/{commit_sha}"), "sha": commit_sha, "created": GO_ZERO_TIME},
        },
        "verification": {"verified": false, "reason": "gpg.error.not_signed_commit", "signature": "", "signer": null, "payload": ""},
    })
}
