//! Fault injection for `/api/v1` and `/api/actions` (`POST /_sim/faults`, see README.md).
//!
//! Applied as an inner `route_layer`, after routing, so rules can name a route template; it
//! also tags every response with its [`RouteTemplate`] for the request counters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::server::App;
use crate::stats::{template_of, RouteTemplate};

/// What a matching rule does to the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer `status` (500, 502, 503 or 429; `Retry-After` for 429/503) without handling.
    Status,
    /// Close the connection without a response.
    Reset,
    /// Handle the request, then cut the body in half.
    Truncate,
    /// Handle the request, then replace the body with invalid JSON.
    Malformed,
    /// Answer 200 with the body `null\n`.
    Null,
    /// Answer 200 with the body `[]\n`.
    EmptyArray,
    /// Only the added latency.
    Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// A route template such as `GET /api/v1/repos/{owner}/{repo}/actions/runners/jobs` or
    /// `POST /api/actions/runner.v1.RunnerService/FetchTask`; `*` (default) for every route.
    #[serde(default = "any_route")]
    pub route: String,
    pub kind: FaultKind,
    /// Chance that a matching request is affected (default 1).
    #[serde(default = "always")]
    pub probability: f64,
    /// For `status`: 500, 502, 503 or 429 (default 503).
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` seconds sent with 429/503 (default 1).
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Delay added before answering (real milliseconds), with any kind.
    #[serde(default)]
    pub latency_ms: u64,
    /// Stop after this many applications (default unlimited).
    #[serde(default)]
    pub times: Option<u64>,
}

fn any_route() -> String {
    "*".into()
}

fn always() -> f64 {
    1.0
}

impl FaultRule {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err("probability must be between 0 and 1".into());
        }
        if self.kind == FaultKind::Status
            && !matches!(self.status.unwrap_or(503), 429 | 500 | 502 | 503)
        {
            return Err("status must be one of 429, 500, 502, 503".into());
        }
        Ok(())
    }
}

/// The active rules, checked in order; the first matching rule that fires wins.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<FaultRule>>,
}

impl Faults {
    pub fn add(&self, rules: Vec<FaultRule>) -> usize {
        let mut current = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        current.extend(rules);
        current.len()
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn list(&self) -> Vec<FaultRule> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rule to apply to a request on `route`, consuming one of its `times`.
    fn pick(&self, route: &str) -> Option<FaultRule> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if rules.is_empty() {
            return None;
        }
        let mut rng = rand::rng();
        let index = rules.iter().position(|r| {
            (r.route == "*" || r.route == route)
                && r.times != Some(0)
                && rng.random_bool(r.probability.clamp(0.0, 1.0))
        })?;
        let rule = &mut rules[index];
        if let Some(times) = rule.times.as_mut() {
            *times -= 1;
        }
        Some(rule.clone())
    }
}

fn with_route(mut response: Response, route: String) -> Response {
    response.extensions_mut().insert(RouteTemplate(route));
    response
}

fn body_response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A response whose body fails at once: hyper drops the connection without a valid reply.
fn reset_response() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        ))
    });
    Response::new(Body::from_stream(failing))
}

/// Inner route layer: tags the route template and applies a fault rule if one fires.
pub async fn apply_faults(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = template_of(&request);
    let Some(rule) = app.faults.pick(&route) else {
        return with_route(next.run(request).await, route);
    };
    if rule.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(rule.latency_ms)).await;
    }
    let response = match rule.kind {
        FaultKind::Latency => next.run(request).await,
        FaultKind::Reset => reset_response(),
        FaultKind::Null => body_response(
            StatusCode::OK,
            crate::http::JSON_CONTENT_TYPE,
            b"null\n".to_vec(),
        ),
        FaultKind::EmptyArray => body_response(
            StatusCode::OK,
            crate::http::JSON_CONTENT_TYPE,
            b"[]\n".to_vec(),
        ),
        FaultKind::Status => {
            let status = StatusCode::from_u16(rule.status.unwrap_or(503))
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let body = format!("{}\n", status.canonical_reason().unwrap_or("error")).into_bytes();
            let mut response = body_response(status, "text/plain; charset=utf-8", body);
            if matches!(status.as_u16(), 429 | 503) {
                let secs = rule.retry_after_secs.unwrap_or(1).to_string();
                if let Ok(value) = HeaderValue::from_str(&secs) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            response
        }
        FaultKind::Truncate | FaultKind::Malformed => {
            let response = next.run(request).await;
            let (mut parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let new_body = if rule.kind == FaultKind::Truncate {
                bytes[..bytes.len() / 2].to_vec()
            } else {
                b"{\"message\": oops,]\n".to_vec()
            };
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::CONTENT_ENCODING);
            Response::from_parts(parts, Body::from(new_body))
        }
    };
    with_route(response, route)
}
