//! A small async Connect client for the Forgejo runner protocol (feature `client`).
//!
//! It speaks to `{instance}/api/actions` the way forgejo-runner does (contract §2.5): unary
//! Connect over HTTP/1.1, `Content-Type` of the chosen [`Codec`], `Connect-Protocol-Version: 1`,
//! `Accept-Encoding: gzip`, the `x-runner-uuid` / `x-runner-token` pair once credentials are
//! known, `x-runner-request-key` on fetches, and a `Connect-Timeout-Ms` header whenever a call
//! has a deadline.
//!
//! Users: the runner stand-in (every method, binary protobuf by default) and the autoscaler
//! (for example `Register` with [`Codec::Json`]). Every method returns the decoded response or a
//! [`ConnectError`]; transport failures are mapped to [`Code::Unavailable`], timeouts to
//! [`Code::DeadlineExceeded`], so callers only ever match on Connect codes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runner_proto::connect::ConnectError> {
//! use runner_proto::client::RunnerClient;
//! use runner_proto::connect::Codec;
//! use runner_proto::runner::v1::FetchTaskRequest;
//!
//! let client = RunnerClient::new("http://127.0.0.1:3000", Codec::Proto)?
//!     .with_credentials("2b1f...uuid", "40-hex-runner-token");
//! let key = uuid::Uuid::new_v4().to_string();
//! let response = client.fetch_task(&FetchTaskRequest::default(), Some(&key)).await?;
//! println!("task: {:?}", response.task.map(|t| t.id));
//! # Ok(()) }
//! ```
//!
//! Secrets: the runner token is kept in a [`RunnerToken`] whose `Debug` prints `***`, the header
//! value is marked sensitive, and no error message is built from it.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use prost_reflect::ReflectMessage;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::connect::{Code, Codec, ConnectError};
use crate::ping::v1::{PingRequest, PingResponse};
use crate::runner::v1::{
    DeclareRequest, DeclareResponse, FetchSingleTaskRequest, FetchSingleTaskResponse,
    FetchTaskRequest, FetchTaskResponse, RegisterRequest, RegisterResponse, UpdateLogRequest,
    UpdateLogResponse, UpdateTaskRequest, UpdateTaskResponse,
};
use crate::{headers, procedures};

/// Largest response body accepted after gzip decoding; a task payload is a few KiB, so this only
/// guards against a broken or hostile server.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// forgejo-runner's default HTTP client timeout (`FORGEJO_CLIENT_TIMEOUT`, contract §2.3).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A runner token (the runner's secret). `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct RunnerToken(String);

impl RunnerToken {
    pub fn new(token: impl Into<String>) -> Self {
        RunnerToken(token.into())
    }

    /// The secret itself, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RunnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunnerToken(***)")
    }
}

/// Runner identity sent on authenticated calls.
#[derive(Clone, Debug)]
struct Credentials {
    uuid: String,
    token: RunnerToken,
}

/// Async client of `ping.v1.PingService` and `runner.v1.RunnerService`. Cheap to clone.
#[derive(Clone)]
pub struct RunnerClient {
    http: reqwest::Client,
    /// `{instance without trailing /}/api/actions`.
    base: String,
    codec: Codec,
    user_agent: String,
    credentials: Option<Credentials>,
    /// Deadline of every call unless a method says otherwise; `None` means no deadline.
    call_timeout: Option<Duration>,
    /// Deadline of FetchTask / FetchSingleTask (forgejo-runner's `runner.fetch_timeout`).
    fetch_timeout: Option<Duration>,
}

impl fmt::Debug for RunnerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerClient")
            .field("base", &self.base)
            .field("codec", &self.codec)
            .field("user_agent", &self.user_agent)
            .field("credentials", &self.credentials)
            .field("call_timeout", &self.call_timeout)
            .field("fetch_timeout", &self.fetch_timeout)
            .finish()
    }
}

impl RunnerClient {
    /// A client for the Forgejo instance at `instance_url` (e.g. `https://forgejo.example.org/`);
    /// `/api/actions` is appended. Calls time out after [`DEFAULT_CALL_TIMEOUT`] unless
    /// changed with [`RunnerClient::with_timeout`].
    pub fn new(instance_url: &str, codec: Codec) -> Result<Self, ConnectError> {
        let trimmed = instance_url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(trimmed).map_err(|e| {
            ConnectError::new(Code::InvalidArgument, format!("invalid instance URL: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!(
                    "invalid instance URL: unsupported scheme {:?}",
                    parsed.scheme()
                ),
            ));
        }
        // gzip is decoded here rather than by reqwest so the size limit also covers the
        // decompressed body and the header we send is exactly the runner's.
        let http = reqwest::Client::builder().no_gzip().build().map_err(|e| {
            ConnectError::new(Code::Internal, format!("cannot build HTTP client: {e}"))
        })?;
        Ok(RunnerClient {
            http,
            base: format!("{trimmed}/api/actions"),
            codec,
            user_agent: concat!("runner-proto/", env!("CARGO_PKG_VERSION")).to_string(),
            credentials: None,
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            fetch_timeout: None,
        })
    }

    /// Authenticate every call from now on with `x-runner-uuid` / `x-runner-token`.
    pub fn with_credentials(mut self, uuid: impl Into<String>, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials {
            uuid: uuid.into(),
            token: RunnerToken::new(token),
        });
        self
    }

    /// The `User-Agent` header; forgejo-runner sends `forgejo-runner/<version>`.
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Deadline of each call (`None`: wait forever). Also sent as `Connect-Timeout-Ms`.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Deadline of FetchTask / FetchSingleTask; falls back to the call timeout when `None`.
    pub fn with_fetch_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// `{instance}/api/actions`, the base every procedure path is appended to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub async fn ping(&self, req: &PingRequest) -> Result<PingResponse, ConnectError> {
        self.call(procedures::PING, req, None, self.call_timeout)
            .await
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ConnectError> {
        self.call(procedures::REGISTER, req, None, self.call_timeout)
            .await
    }

    pub async fn declare(&self, req: &DeclareRequest) -> Result<DeclareResponse, ConnectError> {
        self.call(procedures::DECLARE, req, None, self.call_timeout)
            .await
    }

    /// FetchTask. `request_key` (a UUID) makes the fetch idempotent on Forgejo 15: reuse it
    /// after an error, take a new one after any successful response.
    pub async fn fetch_task(
        &self,
        req: &FetchTaskRequest,
        request_key: Option<&str>,
    ) -> Result<FetchTaskResponse, ConnectError> {
        self.call(
            procedures::FETCH_TASK,
            req,
            request_key,
            self.fetch_deadline(),
        )
        .await
    }

    /// FetchSingleTask (Forgejo ≥ 15; older servers answer `unimplemented`).
    pub async fn fetch_single_task(
        &self,
        req: &FetchSingleTaskRequest,
        request_key: Option<&str>,
    ) -> Result<FetchSingleTaskResponse, ConnectError> {
        self.call(
            procedures::FETCH_SINGLE_TASK,
            req,
            request_key,
            self.fetch_deadline(),
        )
        .await
    }

    pub async fn update_task(
        &self,
        req: &UpdateTaskRequest,
    ) -> Result<UpdateTaskResponse, ConnectError> {
        self.call(procedures::UPDATE_TASK, req, None, self.call_timeout)
            .await
    }

    pub async fn update_log(
        &self,
        req: &UpdateLogRequest,
    ) -> Result<UpdateLogResponse, ConnectError> {
        self.call(procedures::UPDATE_LOG, req, None, self.call_timeout)
            .await
    }

    fn fetch_deadline(&self) -> Option<Duration> {
        self.fetch_timeout.or(self.call_timeout)
    }

    /// One unary call of `procedure` (a path of [`crate::procedures`]). Public so that a caller
    /// can reach a procedure this client has no method for, or choose its own deadline.
    pub async fn call<Req, Resp>(
        &self,
        procedure: &str,
        req: &Req,
        request_key: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Resp, ConnectError>
    where
        Req: ReflectMessage,
        Resp: ReflectMessage + Default,
    {
        let url = format!("{}{}", self.base, procedure);
        let mut request = self
            .http
            .post(&url)
            .headers(self.request_headers(request_key, timeout)?)
            .body(self.codec.encode(req));
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(procedure, &e))?;
        let status = response.status().as_u16();
        let response_headers = response.headers().clone();
        let raw = response
            .bytes()
            .await
            .map_err(|e| transport_error(procedure, &e))?;
        let body = decode_content_encoding(&response_headers, &raw)?;
        if status != 200 {
            return Err(ConnectError::from_response(status, &body));
        }
        // A server may answer in the other codec; trust its Content-Type when it names one.
        let codec = response_headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Codec::from_content_type)
            .unwrap_or(self.codec);
        codec.decode(&body).map_err(|e| {
            // Decoding errors of a response are the server's fault, not the caller's argument.
            ConnectError::new(
                Code::Internal,
                format!("{procedure}: bad response: {}", e.message),
            )
        })
    }

    fn request_headers(
        &self,
        request_key: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<HeaderMap, ConnectError> {
        let mut map = HeaderMap::new();
        map.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static(self.codec.content_type()),
        );
        map.insert(
            HeaderName::from_static(headers::PROTOCOL_VERSION),
            HeaderValue::from_static("1"),
        );
        map.insert(
            reqwest::header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
        map.insert(
            reqwest::header::USER_AGENT,
            header_value("user agent", &self.user_agent)?,
        );
        if let Some(credentials) = &self.credentials {
            map.insert(
                HeaderName::from_static(headers::RUNNER_UUID),
                header_value("runner uuid", &credentials.uuid)?,
            );
            let mut token = HeaderValue::from_str(credentials.token.expose()).map_err(|_| {
                ConnectError::new(
                    Code::InvalidArgument,
                    "runner token is not a valid header value",
                )
            })?;
            token.set_sensitive(true);
            map.insert(HeaderName::from_static(headers::RUNNER_TOKEN), token);
        }
        if let Some(key) = request_key {
            map.insert(
                HeaderName::from_static(headers::REQUEST_KEY),
                header_value("request key", key)?,
            );
        }
        if let Some(timeout) = timeout {
            // The Connect spec allows at most 10 digits.
            let millis = timeout.as_millis().clamp(1, 9_999_999_999);
            map.insert(
                HeaderName::from_static("connect-timeout-ms"),
                HeaderValue::from(millis as u64),
            );
        }
        Ok(map)
    }
}

fn header_value(what: &str, value: &str) -> Result<HeaderValue, ConnectError> {
    HeaderValue::from_str(value).map_err(|_| {
        ConnectError::new(
            Code::InvalidArgument,
            format!("{what} is not a valid header value: {value:?}"),
        )
    })
}

/// Maps a reqwest failure to the Connect code a connect-go client would report. The URL is left
/// out of the message (it is the caller's own) and the cause chain is kept for diagnosis.
fn transport_error(procedure: &str, error: &reqwest::Error) -> ConnectError {
    let code = if error.is_timeout() {
        Code::DeadlineExceeded
    } else {
        Code::Unavailable
    };
    let mut message = format!("{procedure}: {}", without_url(error));
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ConnectError::new(code, message)
}

fn without_url(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "request timed out".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else if error.is_body() || error.is_decode() {
        "error reading the response body".to_string()
    } else {
        "error sending the request".to_string()
    }
}

/// Undo `Content-Encoding: gzip` (the only encoding forgejo-runner accepts), with a size cap.
fn decode_content_encoding(headers: &HeaderMap, raw: &[u8]) -> Result<Vec<u8>, ConnectError> {
    let encoding = headers
        .get(reqwest::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(raw.to_vec()),
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw)
                .take(MAX_RESPONSE_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ConnectError::new(Code::Internal, format!("bad gzip response body: {e}"))
                })?;
            if out.len() as u64 > MAX_RESPONSE_BYTES {
                return Err(ConnectError::new(
                    Code::ResourceExhausted,
                    "response body too large",
                ));
            }
            Ok(out)
        }
        other => Err(ConnectError::new(
            Code::Internal,
            format!("unsupported response Content-Encoding {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests;
