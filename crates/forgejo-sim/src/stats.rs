//! Request counters for `/_sim/stats`: by route template and by response status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::server::App;

/// The route template a request matched, e.g.
/// `GET /api/v1/repos/{owner}/{repo}/actions/runners/jobs`.
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub String);

#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub requests: BTreeMap<String, u64>,
    pub responses: BTreeMap<String, u64>,
}

impl Stats {
    pub fn record(&self, route: &str, status: u16) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *c.requests.entry(route.to_owned()).or_insert(0) += 1;
        *c.responses.entry(status.to_string()).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> Counters {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Template of a matched route (inner `route_layer`), for [`count_requests`].
pub fn template_of(request: &Request) -> String {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    format!(
        "{} {}",
        request.method(),
        path.unwrap_or_else(|| "<unmatched>".into())
    )
}

/// Outer middleware: counts every non-`/_sim/` request by the template the inner layer
/// recorded (or `<unmatched>`), and every response by status.
pub async fn count_requests(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/_sim/") {
        return next.run(request).await;
    }
    let fallback = format!("{} <unmatched>", request.method());
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map(|t| t.0.clone())
        .unwrap_or(fallback);
    app.stats.record(&route, response.status().as_u16());
    response
}
