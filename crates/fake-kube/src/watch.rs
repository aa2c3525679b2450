//! `?watch=true`: a chunked `application/json` stream of newline-delimited events
//! (`{"type":"ADDED","object":{...}}`).
//!
//! * Without `resourceVersion` (or with "0"): synthetic ADDED events for every matching
//!   object, then the changes after that ("get state and start at most recent").
//! * With `resourceVersion=N`: every change after N from the history, then live changes; when
//!   N is older than the history, one ERROR event with a 410 Expired Status, then the end.
//! * `allowWatchBookmarks=true`: a BOOKMARK every `bookmark_interval`, carrying only the
//!   kind, apiVersion and resourceVersion (the last version this stream has seen).
//! * `timeoutSeconds`: the server ends the stream after that long (default 30 minutes).
//! * A label or field selector turns an object's change into or out of the selection into
//!   ADDED or DELETED, as the watch cache does.
//!
//! The history snapshot and the live subscription are taken under one lock, so nothing is
//! lost or doubled between them. A consumer too slow for the live channel is disconnected,
//! as the API server does, and resumes from its last version.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{json, Value};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use crate::{
    api::Filter,
    resource::{Resource, Target},
    server::{is_true, Shared},
    status::ApiError,
    store::{Event, EventType},
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn watch(
    shared: Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response {
    let filter = match Filter::from_query(target, query) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(text) => match text.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return ApiError::bad_request(format!(
                    "invalid resourceVersion {text:?}: must be an integer"
                ))
                .into_response()
            }
        },
    };
    let bookmarks = is_true(query, "allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);

    // Snapshot and subscription under one lock.
    let (initial, live, last_rv, expired) = {
        let state = shared.state();
        let live = state.subscribe();
        let last_rv = state.rv;
        match since {
            None => {
                let added: Vec<String> = state
                    .list(filter.resource, filter.namespace.as_deref())
                    .into_iter()
                    .filter(|(k, o)| filter.matches(k, o))
                    .map(|(_, o)| line("ADDED", o))
                    .collect();
                (added, live, last_rv, None)
            }
            Some(n) => match state.events_since(n) {
                Ok(events) => (
                    events.iter().filter_map(|e| render(&filter, e)).collect(),
                    live,
                    last_rv,
                    None,
                ),
                Err(e) => (Vec::new(), live, last_rv, Some(e)),
            },
        }
    };

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut dropped = shared.drop_watches.subscribe();
    dropped.mark_unchanged();
    let interval = shared.options.bookmark_interval;
    let resource = filter.resource;
    let counter = shared.clone();
    shared.open_watch();
    tokio::spawn(async move {
        let _open = OpenWatch(counter);
        if let Some(error) = expired {
            let _ = tx
                .send(Bytes::from(
                    json!({"type": "ERROR", "object": error.to_status()}).to_string() + "\n",
                ))
                .await;
            return;
        }
        for text in initial {
            if tx.send(Bytes::from(text)).await.is_err() {
                return;
            }
        }
        let mut live = live;
        let mut last_rv = last_rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
        ticker.tick().await;
        loop {
            let text = tokio::select! {
                _ = &mut deadline => return,
                _ = dropped.changed() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => Some(bookmark(resource, last_rv)),
                event = live.recv() => match event {
                    Ok(event) => {
                        last_rv = event.rv;
                        render(&filter, &event)
                    }
                    // Too slow: end the stream; the client resumes from its last version.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
            };
            if let Some(text) = text {
                if tx.send(Bytes::from(text)).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<Bytes, Infallible>(bytes), rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Keeps the count of open watches right however the task ends.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.close_watch();
    }
}

fn line(kind: &str, object: &Value) -> String {
    json!({"type": kind, "object": object}).to_string() + "\n"
}

fn bookmark(resource: Resource, rv: u64) -> String {
    line(
        "BOOKMARK",
        &json!({
            "kind": resource.kind(),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        }),
    )
}

/// The line this watch sends for an event, if any.
fn render(filter: &Filter, event: &Event) -> Option<String> {
    let now = filter.matches(&event.key, &event.object);
    match event.kind {
        EventType::Added | EventType::Deleted => {
            now.then(|| line(event.kind.as_str(), &event.object))
        }
        EventType::Modified => {
            let before = event
                .prev
                .as_ref()
                .is_some_and(|p| filter.matches(&event.key, p));
            match (before, now) {
                (true, true) => Some(line("MODIFIED", &event.object)),
                (false, true) => Some(line("ADDED", &event.object)),
                (true, false) => Some(line("DELETED", &event.object)),
                (false, false) => None,
            }
        }
    }
}
