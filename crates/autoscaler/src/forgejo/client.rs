//! The `/api/v1` client: typed calls, per-request timeouts, retries, request accounting.
//!
//! Architecture invariant: the API token only ever travels in the `Authorization` header;
//! errors and logs name the route template (`GET /repos/{owner}/{repo}/...`), never a URL with
//! credentials or a response body that could echo one.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{header, Method, StatusCode};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{ApiScope, CreatedRunner, ForgejoError, ForgejoVersion, Job, RetryPolicy, RunnerInfo};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct ForgejoClientOptions {
    /// Instance URL without trailing slash, e.g. `https://forgejo.example.org`.
    pub url: String,
    pub token: Option<Secret>,
    pub request_timeout: Duration,
    /// Extra PEM CA bundle for a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    pub retry: RetryPolicy,
}

/// Counts of requests by `"METHOD /route/template"` and status (`"200"`, `"error"`), for metrics
/// and for the benchmark's requests-per-job figures.
pub type RequestCounts = BTreeMap<(String, String), u64>;

#[derive(Clone)]
pub struct ForgejoClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    retry: RetryPolicy,
    counts: Arc<Mutex<RequestCounts>>,
}

impl std::fmt::Debug for ForgejoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgejoClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One API call: the concrete path plus the template used in errors and metrics.
struct Call<'a> {
    method: Method,
    path: String,
    template: String,
    query: Vec<(&'a str, String)>,
}

impl ForgejoClient {
    pub fn new(options: ForgejoClientOptions) -> anyhow::Result<ForgejoClient> {
        let mut builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("forgejo-autoscaler/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &options.ca_file {
            builder = builder.add_root_certificate(load_ca(ca)?);
        }
        Ok(ForgejoClient {
            http: builder.build()?,
            base: format!("{}/api/v1", options.url.trim_end_matches('/')),
            token: options.token,
            retry: options.retry,
            counts: Arc::default(),
        })
    }

    pub fn with_token(&self, token: Secret) -> ForgejoClient {
        ForgejoClient {
            token: Some(token),
            ..self.clone()
        }
    }

    pub fn request_counts(&self) -> RequestCounts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// `GET /version`: the raw version string.
    pub async fn server_version(&self) -> Result<String, ForgejoError> {
        #[derive(Deserialize)]
        struct V {
            version: String,
        }
        let call = Call::get("/version", "/version");
        let v: V = self.json(call, None::<&()>, Retry::Idempotent).await?;
        Ok(v.version)
    }

    pub async fn detect_version(&self) -> Result<ForgejoVersion, ForgejoError> {
        let raw = self.server_version().await?;
        ForgejoVersion::from_server_string(&raw).ok_or_else(|| ForgejoError::Decode {
            endpoint: "GET /version".into(),
            detail: format!("cannot read a Forgejo version from {raw:?}; set forgejo.version"),
        })
    }

    /// Creates an access token with HTTP Basic auth (`POST /users/{username}/tokens`), as the
    /// seed does. The name must be unique per user.
    pub async fn create_access_token(
        &self,
        user: &str,
        password: &Secret,
        name: &str,
        scopes: &[&str],
    ) -> Result<Secret, ForgejoError> {
        #[derive(Serialize)]
        struct Body<'a> {
            name: &'a str,
            scopes: &'a [&'a str],
        }
        #[derive(Deserialize)]
        struct Token {
            sha1: String,
        }
        let call = Call::new(
            Method::POST,
            format!("/users/{}/tokens", seg(user)),
            "/users/{username}/tokens",
        );
        let basic = (user.to_string(), password.clone());
        let token: Token = self
            .send_json(
                call,
                Some(&Body { name, scopes }),
                Retry::Rejected,
                Some(basic),
            )
            .await?;
        Ok(Secret::new(token.sha1))
    }

    /// Deletes an access token by name (`DELETE /users/{username}/tokens/{token}`, HTTP Basic
    /// like its creation). A token already gone is fine.
    pub async fn delete_access_token(
        &self,
        user: &str,
        password: &Secret,
        name: &str,
    ) -> Result<(), ForgejoError> {
        let call = Call::new(
            Method::DELETE,
            format!("/users/{}/tokens/{}", seg(user), seg(name)),
            "/users/{username}/tokens/{token}",
        );
        let basic = (user.to_string(), password.clone());
        match self
            .send(call, None::<&()>, Retry::Idempotent, Some(basic))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET {scope}/actions/runners/jobs`: waiting and running jobs, `null` read as empty.
    /// `labels`: `None` omits the parameter (14+: all jobs); Forgejo 13 needs every label.
    pub async fn list_jobs(
        &self,
        scope: &ApiScope,
        version: ForgejoVersion,
        labels: Option<&[String]>,
    ) -> Result<Vec<Job>, ForgejoError> {
        let (path, template) = match scope {
            ApiScope::Instance if version >= ForgejoVersion::V15 => (
                "/admin/actions/runners/jobs".to_string(),
                "/admin/actions/runners/jobs".to_string(),
            ),
            ApiScope::Instance => ("/admin/runners/jobs".into(), "/admin/runners/jobs".into()),
            _ => scoped(scope, "/actions/runners/jobs"),
        };
        let mut call = Call::new(Method::GET, path, &template);
        if let Some(labels) = labels {
            call.query.push(("labels", labels.join(",")));
        }
        let jobs: Option<Vec<Job>> = self.json(call, None::<&()>, Retry::Idempotent).await?;
        Ok(jobs.unwrap_or_default())
    }

    /// `GET {scope}/actions/runners/registration-token` (may create one server-side).
    pub async fn registration_token(&self, scope: &ApiScope) -> Result<Secret, ForgejoError> {
        #[derive(Deserialize)]
        struct T {
            token: String,
        }
        let (path, template) = match scope {
            ApiScope::Instance => (
                "/admin/runners/registration-token".to_string(),
                "/admin/runners/registration-token".to_string(),
            ),
            _ => scoped(scope, "/actions/runners/registration-token"),
        };
        let t: T = self
            .json(
                Call::new(Method::GET, path, &template),
                None::<&()>,
                Retry::Idempotent,
            )
            .await?;
        Ok(Secret::new(t.token))
    }

    /// Forgejo 15: `POST {scope}/actions/runners`.
    pub async fn create_runner(
        &self,
        scope: &ApiScope,
        name: &str,
        description: &str,
        ephemeral: bool,
    ) -> Result<CreatedRunner, ForgejoError> {
        #[derive(Serialize)]
        struct Body<'a> {
            name: &'a str,
            description: &'a str,
            ephemeral: bool,
        }
        #[derive(Deserialize)]
        struct Created {
            id: i64,
            uuid: String,
            token: String,
        }
        let (path, template) = runners_path(scope, "");
        let created: Created = self
            .json(
                Call::new(Method::POST, path, &template),
                Some(&Body {
                    name,
                    description,
                    ephemeral,
                }),
                Retry::Rejected,
            )
            .await?;
        Ok(CreatedRunner {
            id: created.id,
            uuid: created.uuid,
            token: Secret::new(created.token),
        })
    }

    /// Forgejo 15: every runner directly owned by `scope`, all pages.
    pub async fn list_runners(&self, scope: &ApiScope) -> Result<Vec<RunnerInfo>, ForgejoError> {
        const LIMIT: usize = 50;
        let mut all = Vec::new();
        for page in 1..=1000 {
            let (path, template) = runners_path(scope, "");
            let mut call = Call::new(Method::GET, path, &template);
            call.query.push(("page", page.to_string()));
            call.query.push(("limit", LIMIT.to_string()));
            let batch: Option<Vec<RunnerInfo>> =
                self.json(call, None::<&()>, Retry::Idempotent).await?;
            let batch = batch.unwrap_or_default();
            let done = batch.len() < LIMIT;
            all.extend(batch);
            if done {
                break;
            }
        }
        Ok(all)
    }

    /// Forgejo 15: `GET {scope}/actions/runners/{id}`; `None` when it does not exist (404).
    pub async fn get_runner(
        &self,
        scope: &ApiScope,
        id: i64,
    ) -> Result<Option<RunnerInfo>, ForgejoError> {
        let (path, template) = runners_path(scope, &format!("/{id}"));
        match self
            .json(
                Call::new(Method::GET, path, &template),
                None::<&()>,
                Retry::Idempotent,
            )
            .await
        {
            Ok(runner) => Ok(Some(runner)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forgejo 15: `DELETE {scope}/actions/runners/{id}`. `Ok(false)` when it was already gone.
    pub async fn delete_runner(&self, scope: &ApiScope, id: i64) -> Result<bool, ForgejoError> {
        let (path, template) = runners_path(scope, &format!("/{id}"));
        let call = Call::new(Method::DELETE, path, &template);
        match self.send(call, None::<&()>, Retry::Idempotent, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A JSON call for callers outside this module (the demo creates repositories and files).
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        template: &str,
        body: &B,
    ) -> Result<T, ForgejoError> {
        self.json(
            Call::new(Method::POST, path.to_string(), template),
            Some(body),
            Retry::Rejected,
        )
        .await
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        body: Option<&B>,
        retry: Retry,
    ) -> Result<T, ForgejoError> {
        self.send_json(call, body, retry, None).await
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        body: Option<&B>,
        retry: Retry,
        basic: Option<(String, Secret)>,
    ) -> Result<T, ForgejoError> {
        let endpoint = format!("{} {}", call.method, call.template);
        let bytes = self.send(call, body, retry, basic).await?;
        serde_json::from_slice(&bytes).map_err(|e| ForgejoError::Decode {
            endpoint,
            detail: e.to_string(),
        })
    }

    async fn send<B: Serialize>(
        &self,
        call: Call<'_>,
        body: Option<&B>,
        retry: Retry,
        basic: Option<(String, Secret)>,
    ) -> Result<bytes::Bytes, ForgejoError> {
        let endpoint = format!("{} {}", call.method, call.template);
        let policy = if retry == Retry::Never {
            RetryPolicy::none()
        } else {
            self.retry
        };
        let retryable = |e: &ForgejoError| match retry {
            Retry::Idempotent => e.is_transient(),
            // A POST that may have been processed must not be repeated: only statuses that
            // say the server refused it before doing anything are retried.
            Retry::Rejected => matches!(e.status(), Some(429) | Some(503)),
            Retry::Never => false,
        };
        policy
            .run(retryable, || async {
                let mut request = self
                    .http
                    .request(call.method.clone(), format!("{}{}", self.base, call.path))
                    .header(header::ACCEPT, "application/json");
                if !call.query.is_empty() {
                    request = request.query(&call.query);
                }
                if let Some((user, password)) = &basic {
                    request = request.basic_auth(user, Some(password.expose()));
                } else if let Some(token) = &self.token {
                    request =
                        request.header(header::AUTHORIZATION, format!("token {}", token.expose()));
                }
                if let Some(body) = body {
                    request = request.json(body);
                }
                let result = self.execute(&endpoint, request).await;
                self.count(&endpoint, &result);
                result
            })
            .await
    }

    async fn execute(
        &self,
        endpoint: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, ForgejoError> {
        let transport = |e: reqwest::Error| ForgejoError::Transport {
            endpoint: endpoint.to_string(),
            detail: describe_transport_error(&e),
            timed_out: e.is_timeout(),
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(ForgejoError::Status {
            endpoint: endpoint.to_string(),
            status: status.as_u16(),
            message: error_message(status, &bytes),
            retry_after,
        })
    }

    fn count(&self, endpoint: &str, result: &Result<bytes::Bytes, ForgejoError>) {
        let status = match result {
            Ok(_) => "2xx".to_string(),
            Err(e) => e
                .status()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "error".into()),
        };
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Idempotent,
    Rejected,
    #[allow(dead_code)]
    Never,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: String, template: &str) -> Call<'a> {
        Call {
            method,
            path,
            template: template.to_string(),
            query: Vec::new(),
        }
    }
    fn get(path: &str, template: &str) -> Call<'a> {
        Call::new(Method::GET, path.to_string(), template)
    }
}

/// Path and template of a scope's route below its prefix.
fn scoped(scope: &ApiScope, suffix: &str) -> (String, String) {
    match scope {
        ApiScope::Instance => (format!("/admin{suffix}"), format!("/admin{suffix}")),
        ApiScope::Org(org) => (
            format!("/orgs/{}{suffix}", seg(org)),
            format!("/orgs/{{org}}{suffix}"),
        ),
        ApiScope::User => (format!("/user{suffix}"), format!("/user{suffix}")),
        ApiScope::Repo { owner, name } => (
            format!("/repos/{}/{}{suffix}", seg(owner), seg(name)),
            format!("/repos/{{owner}}/{{repo}}{suffix}"),
        ),
    }
}

fn runners_path(scope: &ApiScope, rest: &str) -> (String, String) {
    let (path, template) = match scope {
        ApiScope::Instance => (
            "/admin/actions/runners".to_string(),
            "/admin/actions/runners".to_string(),
        ),
        _ => scoped(scope, "/actions/runners"),
    };
    let template_rest = if rest.is_empty() { "" } else { "/{runner_id}" };
    (
        format!("{path}{rest}"),
        format!("{template}{template_rest}"),
    )
}

/// Percent-encodes one path segment.
fn seg(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `message` of a Forgejo error body, or a short excerpt of whatever came back.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        message: Option<String>,
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(ApiError { message: Some(m) }) if !m.is_empty() => m,
        _ => {
            let text = String::from_utf8_lossy(body);
            let excerpt: String = text.trim().chars().take(160).collect();
            if excerpt.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_string()
            } else {
                excerpt
            }
        }
    }
}

/// reqwest's error text includes the URL; ours never does (the URL may carry a query).
fn describe_transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body interrupted"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

fn load_ca(path: &Path) -> anyhow::Result<reqwest::Certificate> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?;
    reqwest::Certificate::from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("CA file {} is not a PEM certificate: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_scope_and_version() {
        let repo = ApiScope::Repo {
            owner: "root".into(),
            name: "on demand".into(),
        };
        assert_eq!(
            scoped(&repo, "/actions/runners/jobs").0,
            "/repos/root/on%20demand/actions/runners/jobs"
        );
        assert_eq!(
            runners_path(&ApiScope::Instance, "/5"),
            (
                "/admin/actions/runners/5".into(),
                "/admin/actions/runners/{runner_id}".into()
            )
        );
        assert_eq!(
            runners_path(&ApiScope::Org("o".into()), "").1,
            "/orgs/{org}/actions/runners"
        );
    }

    #[test]
    fn error_messages_prefer_the_api_message() {
        assert_eq!(
            error_message(
                StatusCode::FORBIDDEN,
                br#"{"message":"token does not have at least one of required scope(s)","url":"x"}"#
            ),
            "token does not have at least one of required scope(s)"
        );
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
    }
}
