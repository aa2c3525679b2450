//! Authorization of the four runner scopes (contract §1.3) and JSON conversions shared by
//! the route modules.

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};

use crate::auth::{check_scope, require_caller, Caller, ScopeCategory};
use crate::http::ApiError;
use crate::state::{Account, AccountKind, Repo, Scope, State};

/// The scope named by a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopePath {
    Repo { owner: String, repo: String },
    Org(String),
    User,
    Admin,
}

/// Checks token scope, existence and ownership in Forgejo's middleware order and returns the
/// scope's `(owner_id, repo_id)` for the shared handlers.
pub fn resolve(
    state: &State,
    path: &ScopePath,
    caller: Option<Caller>,
    write: bool,
) -> Result<(Scope, Caller), ApiError> {
    match path {
        ScopePath::Repo { owner, repo } => {
            check_scope(caller.as_ref(), ScopeCategory::Repository, write)?;
            let repo = state
                .repo_by_name(owner, repo)
                .ok_or_else(ApiError::not_found)?;
            let caller = require_caller(caller)?;
            if !state.can_own(caller.user_id, repo.owner_id) {
                return Err(ApiError::forbidden("user should be the owner of the repo"));
            }
            if state.version.has_runners_api() && !repo.actions_enabled {
                return Err(ApiError::not_found());
            }
            Ok((Scope::Repo(repo.id), caller))
        }
        ScopePath::Org(name) => {
            check_scope(caller.as_ref(), ScopeCategory::Organization, write)?;
            let org = state
                .account_by_name(name)
                .filter(|a| a.kind == AccountKind::Org)
                .ok_or_else(ApiError::not_found)?;
            let caller = require_caller(caller)?;
            if !state.can_own(caller.user_id, org.id) {
                return Err(ApiError::forbidden("must be an organization owner"));
            }
            Ok((Scope::Owner(org.id), caller))
        }
        ScopePath::User => {
            check_scope(caller.as_ref(), ScopeCategory::User, write)?;
            let caller = require_caller(caller)?;
            Ok((Scope::Owner(caller.user_id), caller))
        }
        ScopePath::Admin => {
            check_scope(caller.as_ref(), ScopeCategory::Admin, write)?;
            let caller = require_caller(caller)?;
            if !state.is_admin(caller.user_id) {
                return Err(ApiError::forbidden("user should be the site admin"));
            }
            Ok((Scope::Global, caller))
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// `User` of the swagger file.
pub fn user_json(state: &State, account: &Account) -> Value {
    let html_url = format!("{}{}", state.app_url, account.name);
    json!({
        "id": account.id,
        "login": account.name,
        "login_name": "",
        "source_id": 0,
        "full_name": account.full_name,
        "email": account.email,
        "avatar_url": format!("{}avatars/{}", state.app_url, account.id),
        "html_url": html_url,
        "language": "",
        "is_admin": account.is_admin,
        "last_login": rfc3339(account.created_ms),
        "created": rfc3339(account.created_ms),
        "restricted": false,
        "active": true,
        "prohibit_login": false,
        "location": "",
        "pronouns": "",
        "website": "",
        "description": account.description,
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        "username": account.name,
    })
}

/// `Organization` of the swagger file.
pub fn org_json(state: &State, org: &Account) -> Value {
    json!({
        "id": org.id,
        "name": org.name,
        "username": org.name,
        "full_name": org.full_name,
        "email": "",
        "avatar_url": format!("{}avatars/{}", state.app_url, org.id),
        "description": org.description,
        "website": "",
        "location": "",
        "visibility": "public",
        "repo_admin_change_team_access": false,
    })
}

/// `Repository` of the swagger file (the fields a client can rely on, with plausible values).
pub fn repo_json(state: &State, repo: &Repo, caller_is_owner: bool) -> Value {
    let owner = state.account(repo.owner_id);
    let owner_name = owner.map(|a| a.name.clone()).unwrap_or_default();
    let full_name = format!("{owner_name}/{}", repo.name);
    let html_url = format!("{}{full_name}", state.app_url);
    let host = state
        .app_url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let mut repo_json = json!({
        "id": repo.id,
        "owner": owner.map(|a| user_json(state, a)),
        "name": repo.name,
        "full_name": full_name,
        "description": repo.description,
        "empty": repo.files.is_empty(),
        "private": repo.private,
        "fork": false,
        "template": false,
        "parent": null,
        "mirror": false,
        "size": 0,
        "language": "",
        "languages_url": format!("{}api/v1/repos/{full_name}/languages", state.app_url),
        "html_url": html_url,
        "url": format!("{}api/v1/repos/{full_name}", state.app_url),
        "link": "",
        "ssh_url": format!("git@{host}:{full_name}.git"),
        "clone_url": format!("{html_url}.git"),
        "original_url": "",
        "website": "",
        "stars_count": 0,
        "forks_count": 0,
        "watchers_count": 1,
        "open_issues_count": 0,
        "open_pr_counter": 0,
        "release_counter": 0,
        "default_branch": repo.default_branch,
        "archived": false,
        "created_at": rfc3339(repo.created_ms),
        "updated_at": rfc3339(repo.updated_ms),
        "archived_at": rfc3339(0),
        "permissions": {"admin": caller_is_owner, "push": caller_is_owner, "pull": true},
        "has_issues": true,
        "internal_tracker": {"enable_time_tracker": true, "allow_only_contributors_to_track_time": true, "enable_issue_dependencies": true},
        "has_wiki": true,
        "wiki_branch": repo.default_branch,
        "globally_editable_wiki": false,
        "has_pull_requests": true,
        "has_projects": true,
        "has_releases": true,
        "has_packages": true,
        "has_actions": repo.actions_enabled,
        "ignore_whitespace_conflicts": false,
        "allow_merge_commits": true,
        "allow_rebase": true,
        "allow_rebase_explicit": true,
        "allow_squash_merge": true,
        "allow_fast_forward_only_merge": true,
        "allow_rebase_update": true,
        "default_delete_branch_after_merge": false,
        "default_merge_style": "merge",
        "default_allow_maintainer_edit": false,
        "default_update_style": "merge",
        "avatar_url": "",
        "internal": false,
        "mirror_interval": "",
        "object_format_name": "sha1",
        "mirror_updated": rfc3339(0),
        "repo_transfer": null,
        "topics": [],
    });
    if state.version.has_wiki_repository_fields() {
        // modules/structs/repo.go (15) writes these without `omitempty`; a simulated
        // repository never has wiki pages.
        repo_json["has_wiki_contents"] = json!(false);
        repo_json["wiki_clone_url"] = json!(format!("{html_url}.wiki.git"));
        repo_json["wiki_ssh_url"] = json!(format!("git@{host}:{full_name}.wiki.git"));
    }
    repo_json
}
