//! The HTTP endpoints of the daemon (`[http] listen`): `/healthz`, `/readyz`, `/metrics`,
//! `/api/status` and a status page at `/`; plus the `status` and `explain` commands, which show
//! the same information in a terminal.
//!
//! The listener binds to loopback by default. When a bearer token file is configured (the
//! configuration requires one for any other address), `/api/status` and `/` need
//! `Authorization: Bearer TOKEN`; the probes and `/metrics` stay open because they carry no
//! names of jobs or instances and a scraper or a load balancer must reach them. No secret is
//! ever part of a status answer or a metric.

pub mod explain;
pub mod page;
pub mod status;
pub mod terminal;

use std::sync::{Arc, Mutex};

use axum::{
    extract::{RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};

pub use explain::explain_command;
pub use status::Status;
pub use terminal::status_command;

use crate::{clock::now_ms, plan::Strategy, reconcile::Snapshot, runtime::Runtime, secret::Secret};

#[derive(Clone)]
struct AppState {
    rt: Arc<Runtime>,
    snapshot: Arc<Mutex<Snapshot>>,
    token: Option<Secret>,
}

/// Starts the listener when one is configured. Logs the address actually bound (which differs
/// from the configured one when the port is 0).
pub async fn serve(
    rt: Arc<Runtime>,
    snapshot: Arc<Mutex<Snapshot>>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = rt.config.http.listen else {
        return Ok(None);
    };
    let token = rt.config.http.read_token()?;
    let strategy = match rt.strategy {
        Strategy::Ephemeral => "ephemeral",
        Strategy::Identities => "identities",
    };
    rt.metrics
        .set_forgejo_info(&rt.version.to_string(), strategy);
    let protected = token.is_some();
    let state = AppState {
        rt,
        snapshot,
        token,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status_json))
        .route("/", get(status_page))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} ([http] listen): {e}"))?;
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| listen.to_string());
    tracing::info!(%address, bearer_token_required = protected, "serving /metrics, /healthz, /readyz, /api/status and the status page");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP listener stopped");
        }
    })))
}

/// Whether the request carries the bearer token (or none is required).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
}

/// Compares without an early exit on the first differing byte, so timing tells nothing about
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "bearer token required: send Authorization: Bearer <the contents of [http] token_file>\n",
    )
        .into_response()
}

fn snapshot_of(state: &AppState) -> Snapshot {
    state.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
}

/// How old the last tick may be for `/readyz`: three poll intervals plus slack for a slow
/// Forgejo (a tick waits for its requests and their retries).
fn max_tick_age_ms(state: &AppState) -> u64 {
    state.rt.config.forgejo.poll_interval.as_millis() as u64 * 3 + 5_000
}

/// Ready when the last tick could read Forgejo's job lists and is recent. Not ready before
/// the first tick, when Forgejo failed in the last tick, or when the loop is stuck.
///
/// With `[ha]`, a follower (which does not tick) is ready when it can read the lease, i.e.
/// it would be able to take over; a leader answers as above.
async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(leadership) = state.rt.fence.leadership() {
        if leadership.view().role == crate::ha::Role::Follower {
            let limit = state
                .rt
                .config
                .ha
                .as_ref()
                .map(|ha| ha.lease_duration)
                .unwrap_or(std::time::Duration::from_secs(15));
            return match leadership.since_contact() {
                Some(age) if age <= limit && leadership.view().lease_readable => {
                    (StatusCode::OK, "ready (follower)\n").into_response()
                }
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: follower that cannot read the lease from the API server\n",
                )
                    .into_response(),
            };
        }
    }
    let (at_ms, reachable) = state
        .snapshot
        .lock()
        .map(|s| (s.at_ms, s.forgejo_reachable))
        .unwrap_or((0, false));
    let age_ms = now_ms().saturating_sub(at_ms);
    if at_ms == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no reconcile tick yet\n",
        )
            .into_response()
    } else if age_ms > max_tick_age_ms(&state) {
        let text = format!(
            "not ready: the last reconcile tick was {:.1} s ago\n",
            age_ms as f64 / 1000.0
        );
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    } else if !reachable {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Forgejo could not be read in the last tick\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// The text format; request counters and scrape-time gauges are brought up to date first.
async fn metrics(State(state): State<AppState>) -> Response {
    let rt = &state.rt;
    rt.metrics.sync_requests(&rt.client.request_counts());
    let reachable = state
        .snapshot
        .lock()
        .map(|s| s.forgejo_reachable)
        .unwrap_or(false);
    rt.metrics.refresh_at_scrape(now_ms(), reachable);
    if rt.strategy == Strategy::Identities {
        if let Ok(counts) = rt.store.identity_counts() {
            rt.metrics.set_identities(&counts);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        rt.metrics.encode(),
    )
        .into_response()
}

async fn status_json(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    Json(status::build_status(&state.rt, &snapshot_of(&state))).into_response()
}

async fn status_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let status = status::build_status(&state.rt, &snapshot_of(&state));
    let query = page::PageQuery::parse(query.as_deref());
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(page::render_page(&status, &query)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison_needs_the_whole_token() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
        assert!(!super::constant_time_eq(b"", b"secret"));
    }
}
