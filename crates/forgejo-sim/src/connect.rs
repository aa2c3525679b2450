//! `/api/actions`: the Connect (unary, HTTP/1.1) runner protocol, contract §2.5–§2.6.
//!
//! Every call goes through [`unary`]: content type → body (size limit, optional gzip) →
//! decode → runner authentication (all RunnerService methods but Register) → the state
//! transition → encode, gzip-compressed when ≥ 1 KiB and the client accepts gzip.

use std::io::{Read, Write};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use prost_reflect::ReflectMessage;
use runner_proto::connect::{Code, Codec, ConnectError};
use runner_proto::ping::v1::{PingRequest, PingResponse};
use runner_proto::runner::v1 as pb;
use runner_proto::{headers as h, procedures as p};

use crate::server::App;
use crate::state::{FetchRequest, Id, Runner, TaskUpdate};

/// Largest accepted request body, before and after decompression (UpdateLog chunks are the
/// big ones). Larger bodies get `resource_exhausted`, like connect-go's `WithReadMaxBytes`.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Responses of at least this size are gzip-compressed (Forgejo: `WithCompressMinBytes(1024)`).
pub const COMPRESS_MIN_BYTES: usize = 1024;

pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    let mut router = Router::new()
        .route(p::PING, post(ping))
        .route(p::REGISTER, post(register))
        .route(p::DECLARE, post(declare))
        .route(p::FETCH_TASK, post(fetch_task))
        .route(p::UPDATE_TASK, post(update_task))
        .route(p::UPDATE_LOG, post(update_log));
    // Forgejo 13/14 use actions-proto versions without FetchSingleTask: the generated mux
    // does not know the path, so it is the plain 404 clients map to `unimplemented`.
    if app.version.has_fetch_single_task() {
        router = router.route(p::FETCH_SINGLE_TASK, post(fetch_single_task));
    }
    router
        .route_layer(middleware::from_fn_with_state(
            app,
            crate::faults::apply_faults,
        ))
        .fallback(unknown_procedure)
}

/// What the mux answers for a path it does not serve.
async fn unknown_procedure() -> Response {
    let mut response = Response::new(Body::from("404 page not found\n"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A Connect error response: JSON body, status from the code.
pub fn error_response(error: &ConnectError) -> Response {
    let mut response = Response::new(Body::from(error.to_json()));
    *response.status_mut() =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The request codec; `None` for content types Connect unary does not define.
pub fn request_codec(headers: &HeaderMap) -> Option<Codec> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Codec::from_content_type(content_type)
}

/// What connect-go answers for another content type.
fn unsupported_media_type() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response.headers_mut().insert(
        "accept-post",
        HeaderValue::from_static("application/json, application/proto"),
    );
    response
}

/// Reads the body within [`MAX_REQUEST_BYTES`], undoing `Content-Encoding: gzip`.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ConnectError> {
    let too_large = || {
        ConnectError::new(
            Code::ResourceExhausted,
            format!("request body larger than {MAX_REQUEST_BYTES} bytes"),
        )
    };
    let raw = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| too_large())?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding.trim() {
        "" | "identity" => Ok(raw.to_vec()),
        "gzip" => {
            let mut out = Vec::new();
            let mut decoder =
                flate2::read::GzDecoder::new(raw.as_ref()).take(MAX_REQUEST_BYTES as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                ConnectError::new(Code::InvalidArgument, format!("decompress request: {e}"))
            })?;
            if out.len() > MAX_REQUEST_BYTES {
                return Err(too_large());
            }
            Ok(out)
        }
        other => Err(ConnectError::new(
            Code::Unimplemented,
            format!("unknown compression {other:?}: supported encodings are gzip"),
        )),
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            e.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("gzip")
        })
}

fn success_response<M: ReflectMessage>(codec: Codec, gzip_ok: bool, message: &M) -> Response {
    let body = codec.encode(message);
    let mut compressed = None;
    if gzip_ok && body.len() >= COMPRESS_MIN_BYTES {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if encoder.write_all(&body).is_ok() {
            compressed = encoder.finish().ok();
        }
    }
    let is_gzip = compressed.is_some();
    let mut response = Response::new(Body::from(compressed.unwrap_or(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.content_type()),
    );
    if is_gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// Whether a call authenticates, and whether it counts as runner activity (`last_active`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    Runner { active: bool },
}

/// The runner headers of a call: `(uuid, token)` when both are present.
pub fn runner_headers(headers: &HeaderMap) -> Option<(String, String)> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    Some((
        get(h::RUNNER_UUID)?.to_owned(),
        get(h::RUNNER_TOKEN)?.to_owned(),
    ))
}

/// Runs one unary call; `handle` gets the app, the authenticated runner id (0 without auth),
/// the request headers and the decoded message.
async fn unary<Req, Resp>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    auth: Auth,
    handle: impl FnOnce(&App, Id, &HeaderMap, Req) -> Result<Resp, ConnectError>,
) -> Response
where
    Req: ReflectMessage + Default,
    Resp: ReflectMessage,
{
    let Some(codec) = request_codec(headers) else {
        return unsupported_media_type();
    };
    let bytes = match read_body(headers, body).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let request: Req = match codec.decode(&bytes) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let runner_id = match auth {
        Auth::None => 0,
        Auth::Runner { active } => {
            let now = app.now_ms();
            let found = runner_headers(headers).and_then(|(uuid, token)| {
                app.lock().authenticate_runner(&uuid, &token, active, now)
            });
            match found {
                Some(id) => id,
                None => {
                    return error_response(&ConnectError::new(
                        Code::Unauthenticated,
                        "unregistered runner",
                    ))
                }
            }
        }
    };
    match handle(app, runner_id, headers, request) {
        Ok(message) => success_response(codec, accepts_gzip(headers), &message),
        Err(e) => error_response(&e),
    }
}

async fn ping(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    unary(
        &app,
        &headers,
        body,
        Auth::None,
        |_, _, _, req: PingRequest| {
            Ok(PingResponse {
                data: format!("Hello, {}!", req.data),
            })
        },
    )
    .await
}

/// `Runner` as Register/Declare answer it; `ephemeral` only exists in 15.
#[allow(deprecated)]
fn runner_message(app: &App, runner: &Runner, token: String) -> pb::Runner {
    pb::Runner {
        id: runner.id,
        uuid: runner.uuid.clone(),
        token,
        name: runner.name.clone(),
        status: 0,
        agent_labels: vec![],
        custom_labels: vec![],
        version: runner.version.clone(),
        labels: runner.labels.clone().unwrap_or_default(),
        ephemeral: runner.ephemeral && app.version.has_ephemeral_runners(),
    }
}

async fn register(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    unary(
        &app,
        &headers,
        body,
        Auth::None,
        |app, _, _, req: pb::RegisterRequest| {
            #[allow(deprecated)]
            let labels = if req.labels.is_empty() {
                req.agent_labels
            } else {
                req.labels
            };
            let now = app.now_ms();
            let (runner, token) = app.lock().register_runner(
                &req.name,
                &req.token,
                &req.version,
                labels,
                req.ephemeral,
                now,
            )?;
            Ok(pb::RegisterResponse {
                runner: Some(runner_message(app, &runner, token)),
            })
        },
    )
    .await
}

async fn declare(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    unary(
        &app,
        &headers,
        body,
        Auth::Runner { active: false },
        |app, runner_id, _, req: pb::DeclareRequest| {
            let runner = app
                .lock()
                .declare(runner_id, &req.version, req.labels)
                .ok_or_else(|| ConnectError::new(Code::Unauthenticated, "unregistered runner"))?;
            Ok(pb::DeclareResponse {
                runner: Some(runner_message(app, &runner, String::new())),
            })
        },
    )
    .await
}

fn request_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(h::REQUEST_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn fetch_task(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    unary(
        &app,
        &headers,
        body,
        Auth::Runner { active: false },
        |app, runner_id, headers, req: pb::FetchTaskRequest| {
            let fetch = FetchRequest {
                tasks_version: req.tasks_version,
                capacity: req.task_capacity,
                request_key: request_key(headers),
                handle: None,
                single: false,
            };
            let now = app.now_ms();
            let outcome = app.lock().fetch_tasks(runner_id, &fetch, now)?;
            let mut tasks = outcome.tasks.into_iter();
            Ok(pb::FetchTaskResponse {
                task: tasks.next(),
                tasks_version: outcome.tasks_version,
                additional_tasks: tasks.collect(),
            })
        },
    )
    .await
}

async fn fetch_single_task(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    unary(
        &app,
        &headers,
        body,
        Auth::Runner { active: false },
        |app, runner_id, headers, req: pb::FetchSingleTaskRequest| {
            let fetch = FetchRequest {
                tasks_version: req.tasks_version,
                capacity: Some(1),
                request_key: request_key(headers),
                handle: req.handle,
                single: true,
            };
            let now = app.now_ms();
            let outcome = app.lock().fetch_tasks(runner_id, &fetch, now)?;
            Ok(pb::FetchSingleTaskResponse {
                tasks_version: outcome.tasks_version,
                task: outcome.tasks.into_iter().next(),
            })
        },
    )
    .await
}

fn timestamp_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

async fn update_task(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    unary(
        &app,
        &headers,
        body,
        Auth::Runner { active: true },
        |app, runner_id, _, req: pb::UpdateTaskRequest| {
            let state = req
                .state
                .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "missing task state"))?;
            let update = TaskUpdate {
                task_id: state.id,
                result: state.result,
                stopped_ms: state
                    .stopped_at
                    .as_ref()
                    .map(timestamp_ms)
                    .filter(|ms| *ms > 0),
                outputs: req.outputs,
            };
            let now = app.now_ms();
            let (id, result, sent_outputs) = app.lock().update_task(runner_id, update, now)?;
            Ok(pb::UpdateTaskResponse {
                state: Some(pb::TaskState {
                    id,
                    result,
                    ..Default::default()
                }),
                sent_outputs,
            })
        },
    )
    .await
}

async fn update_log(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    unary(
        &app,
        &headers,
        body,
        Auth::Runner { active: true },
        |app, runner_id, _, req: pb::UpdateLogRequest| {
            let rows = req.rows.into_iter().map(|r| r.content).collect();
            let ack_index =
                app.lock()
                    .update_log(runner_id, req.task_id, req.index, rows, req.no_more)?;
            Ok(pb::UpdateLogResponse { ack_index })
        },
    )
    .await
}
