//! `/api/v1` authentication (contract §1.1): HTTP Basic with a password, or an access token
//! in `Authorization: token|Bearer` (or the `token`/`access_token` query parameters, which
//! win), and the token scope check of each route group.

use axum::http::HeaderMap;
use base64::Engine;

use crate::http::ApiError;
use crate::state::labels::query_unescape;
use crate::state::{Id, State};

/// Credentials as sent, before they are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { user: String, password: String },
    Token(String),
}

/// Parses an `Authorization` header value. Scheme words are case-insensitive; anything
/// unparseable is `None` (treated as anonymous, like Forgejo's auth chain).
pub fn parse_authorization(value: &str) -> Option<Credentials> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| Credentials::Token(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    None
}

/// `?token=` / `?access_token=` from a raw query string.
pub fn query_token(raw_query: Option<&str>) -> Option<String> {
    raw_query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        let k = query_unescape(k)?;
        (k == "token" || k == "access_token")
            .then(|| query_unescape(v))
            .flatten()
            .filter(|v| !v.is_empty())
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Basic,
    Token { scopes: Vec<String> },
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Id,
    pub method: AuthMethod,
}

/// Token scope categories of the route groups (contract §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeCategory {
    Admin,
    Organization,
    User,
    Repository,
}

impl ScopeCategory {
    fn as_str(self) -> &'static str {
        match self {
            ScopeCategory::Admin => "admin",
            ScopeCategory::Organization => "organization",
            ScopeCategory::User => "user",
            ScopeCategory::Repository => "repository",
        }
    }
}

/// Who is calling: `Ok(None)` for anonymous requests; 401 for wrong credentials.
pub fn authenticate(
    state: &State,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Option<Caller>, ApiError> {
    let from_header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_authorization);
    let credentials = query_token(raw_query)
        .map(Credentials::Token)
        .or(from_header);
    match credentials {
        None => Ok(None),
        Some(Credentials::Token(secret)) => match state.find_access_token(&secret) {
            Some(token) => Ok(Some(Caller {
                user_id: token.user_id,
                method: AuthMethod::Token {
                    scopes: token.scopes.clone(),
                },
            })),
            None => Err(ApiError::unauthorized(
                "user does not exist [uid: 0, name: ]",
            )),
        },
        Some(Credentials::Basic { user, password }) => {
            // A token may also be sent as the basic-auth user name or password.
            if let Some(token) = state
                .find_access_token(&user)
                .or_else(|| state.find_access_token(&password))
            {
                return Ok(Some(Caller {
                    user_id: token.user_id,
                    method: AuthMethod::Token {
                        scopes: token.scopes.clone(),
                    },
                }));
            }
            match state.check_password(&user, &password) {
                Some(user_id) => Ok(Some(Caller {
                    user_id,
                    method: AuthMethod::Basic,
                })),
                None => Err(ApiError::unauthorized(format!(
                    "user's password is invalid [name: {user}]"
                ))),
            }
        }
    }
}

/// `reqToken()`: the request must be signed in.
pub fn require_caller(caller: Option<Caller>) -> Result<Caller, ApiError> {
    caller.ok_or_else(|| ApiError::unauthorized("token is required"))
}

/// `tokenRequiresScopes(category)`: read for GET, write for everything else; only scoped
/// tokens are checked.
pub fn check_scope(
    caller: Option<&Caller>,
    category: ScopeCategory,
    write: bool,
) -> Result<(), ApiError> {
    let Some(Caller {
        method: AuthMethod::Token { scopes },
        ..
    }) = caller
    else {
        return Ok(());
    };
    let cat = category.as_str();
    let granted = scopes.iter().any(|s| {
        s == "all" || *s == format!("write:{cat}") || (!write && *s == format!("read:{cat}"))
    });
    if granted {
        return Ok(());
    }
    let needed = format!("{}:{cat}", if write { "write" } else { "read" });
    Err(ApiError::forbidden(format!(
        "token does not have at least one of required scope(s): [{needed}]"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(
            parse_authorization("token abc"),
            Some(Credentials::Token("abc".into()))
        );
        assert_eq!(
            parse_authorization("BEARER abc"),
            Some(Credentials::Token("abc".into()))
        );
        assert_eq!(
            parse_authorization("Basic cm9vdDphZG1pbjEyMzQ="),
            Some(Credentials::Basic {
                user: "root".into(),
                password: "admin1234".into()
            })
        );
        assert_eq!(parse_authorization("Basic !!!"), None);
        assert_eq!(parse_authorization("token"), None);
        assert_eq!(
            query_token(Some("a=1&access_token=x%20y")),
            Some("x y".into())
        );
    }

    #[test]
    fn scope_levels() {
        let c = Caller {
            user_id: 1,
            method: AuthMethod::Token {
                scopes: vec!["read:repository".into()],
            },
        };
        assert!(check_scope(Some(&c), ScopeCategory::Repository, false).is_ok());
        let err = check_scope(Some(&c), ScopeCategory::Repository, true).unwrap_err();
        assert_eq!(
            err.message,
            "token does not have at least one of required scope(s): [write:repository]"
        );
        assert!(check_scope(Some(&c), ScopeCategory::Admin, false).is_err());
        let basic = Caller {
            user_id: 1,
            method: AuthMethod::Basic,
        };
        assert!(check_scope(Some(&basic), ScopeCategory::Admin, true).is_ok());
    }
}
