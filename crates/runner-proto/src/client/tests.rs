//! Client tests against a tiny in-process axum server that records what it receives.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::*;
use crate::runner::v1::Runner;

/// What the server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn last(&self) -> Seen {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request was received")
    }
}

/// Behaviour per procedure, chosen by the path so one server serves every test.
async fn handler(recorder: Recorder, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    recorder.0.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: headers.clone(),
        body: body.to_vec(),
    });
    let codec = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(Codec::from_content_type)
        .unwrap_or(Codec::Proto);
    let ok = |bytes: Vec<u8>| ([("content-type", codec.content_type())], bytes).into_response();
    match path.as_str() {
        "/api/actions/ping.v1.PingService/Ping" => {
            let req: PingRequest = codec.decode(&body).unwrap();
            ok(codec.encode(&PingResponse {
                data: format!("Hello, {}!", req.data),
            }))
        }
        "/api/actions/runner.v1.RunnerService/Register" => {
            let req: RegisterRequest = codec.decode(&body).unwrap();
            let runner = Runner {
                id: 9,
                uuid: "u-9".into(),
                token: "t".repeat(40),
                name: req.name,
                labels: req.labels,
                ..Default::default()
            };
            ok(codec.encode(&RegisterResponse {
                runner: Some(runner),
            }))
        }
        "/api/actions/runner.v1.RunnerService/Declare" => {
            // A large response, gzip-compressed as Forgejo does for >= 1 KiB.
            let runner = Runner {
                id: 1,
                name: "n".repeat(4000),
                ..Default::default()
            };
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&codec.encode(&DeclareResponse {
                runner: Some(runner),
            }))
            .unwrap();
            (
                [
                    ("content-type", codec.content_type()),
                    ("content-encoding", "gzip"),
                ],
                gz.finish().unwrap(),
            )
                .into_response()
        }
        "/api/actions/runner.v1.RunnerService/FetchTask" => ok(codec.encode(&FetchTaskResponse {
            tasks_version: 4,
            ..Default::default()
        })),
        "/api/actions/runner.v1.RunnerService/UpdateTask" => {
            let err = ConnectError::new(Code::Unauthenticated, "unregistered runner");
            (
                StatusCode::UNAUTHORIZED,
                [("content-type", "application/json")],
                err.to_json(),
            )
                .into_response()
        }
        "/api/actions/runner.v1.RunnerService/UpdateLog" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok(codec.encode(&UpdateLogResponse::default()))
        }
        _ => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

async fn serve() -> (String, Recorder) {
    let recorder = Recorder::default();
    let state = recorder.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        handler(state.clone(), uri, headers, body)
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/"), recorder)
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";

#[tokio::test]
async fn sends_the_runner_headers_and_decodes_proto() {
    let (url, seen) = serve().await;
    let client = RunnerClient::new(&url, Codec::Proto)
        .unwrap()
        .with_credentials("uuid-1", TOKEN)
        .with_user_agent("forgejo-runner/v12.8.2")
        .with_fetch_timeout(Some(Duration::from_millis(1500)));
    let resp = client
        .fetch_task(&FetchTaskRequest::default(), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(resp.tasks_version, 4);
    let req = seen.last();
    assert_eq!(req.path, "/api/actions/runner.v1.RunnerService/FetchTask");
    let h = |name: &str| {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(h("content-type").as_deref(), Some("application/proto"));
    assert_eq!(h("connect-protocol-version").as_deref(), Some("1"));
    assert_eq!(h("accept-encoding").as_deref(), Some("gzip"));
    assert_eq!(h("user-agent").as_deref(), Some("forgejo-runner/v12.8.2"));
    assert_eq!(h("x-runner-uuid").as_deref(), Some("uuid-1"));
    assert_eq!(h("x-runner-token").as_deref(), Some(TOKEN));
    assert_eq!(h("x-runner-request-key").as_deref(), Some("key-1"));
    assert_eq!(h("connect-timeout-ms").as_deref(), Some("1500"));
    let decoded: FetchTaskRequest = Codec::Proto.decode(&req.body).unwrap();
    assert_eq!(decoded, FetchTaskRequest::default());
}

#[tokio::test]
async fn json_register_without_credentials() {
    let (url, seen) = serve().await;
    let client = RunnerClient::new(&url, Codec::Json)
        .unwrap()
        .with_timeout(None);
    let req = RegisterRequest {
        name: "r1".into(),
        token: "reg".into(),
        labels: vec!["a".into()],
        ..Default::default()
    };
    let resp = client.register(&req).await.unwrap();
    let runner = resp.runner.unwrap();
    assert_eq!(
        (runner.id, runner.name.as_str(), runner.labels.clone()),
        (9, "r1", vec!["a".to_string()])
    );
    let req = seen.last();
    assert_eq!(req.headers.get("content-type").unwrap(), "application/json");
    assert!(req.headers.get("x-runner-uuid").is_none());
    assert!(req.headers.get("x-runner-token").is_none());
    assert!(req.headers.get("x-runner-request-key").is_none());
    assert!(req.headers.get("connect-timeout-ms").is_none());
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["name"], "r1");
}

#[tokio::test]
async fn ping_appends_api_actions_to_a_base_without_slash() {
    let (url, seen) = serve().await;
    let client = RunnerClient::new(url.trim_end_matches('/'), Codec::Proto).unwrap();
    let resp = client
        .ping(&PingRequest { data: "x".into() })
        .await
        .unwrap();
    assert_eq!(resp.data, "Hello, x!");
    assert_eq!(seen.last().path, "/api/actions/ping.v1.PingService/Ping");
}

#[tokio::test]
async fn gzip_responses_are_decoded() {
    let (url, _) = serve().await;
    for codec in [Codec::Proto, Codec::Json] {
        let client = RunnerClient::new(&url, codec)
            .unwrap()
            .with_credentials("u", TOKEN);
        let resp = client.declare(&DeclareRequest::default()).await.unwrap();
        assert_eq!(resp.runner.unwrap().name.len(), 4000);
    }
}

#[tokio::test]
async fn connect_error_bodies_keep_their_code_and_hide_the_token() {
    let (url, _) = serve().await;
    let client = RunnerClient::new(&url, Codec::Proto)
        .unwrap()
        .with_credentials("u", TOKEN);
    let err = client
        .update_task(&UpdateTaskRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ConnectError::new(Code::Unauthenticated, "unregistered runner")
    );
    // An unknown procedure gets a plain 404, which Connect clients read as unimplemented.
    let err = client
        .fetch_single_task(&FetchSingleTaskRequest::default(), Some("k"))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
    assert!(!err.to_string().contains(TOKEN));
    let debug = format!("{client:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(debug.contains("***"), "{debug}");
}

#[tokio::test]
async fn deadline_maps_to_deadline_exceeded() {
    let (url, seen) = serve().await;
    let client = RunnerClient::new(&url, Codec::Proto)
        .unwrap()
        .with_credentials("u", TOKEN)
        .with_timeout(Some(Duration::from_millis(200)));
    let started = std::time::Instant::now();
    let err = client
        .update_log(&UpdateLogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!err.message.contains(TOKEN));
    assert_eq!(
        seen.last().headers.get("connect-timeout-ms").unwrap(),
        "200"
    );
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    // Bind then drop a listener to get a port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = RunnerClient::new(&format!("http://{addr}"), Codec::Proto)
        .unwrap()
        .with_credentials("u", TOKEN);
    let err = client.ping(&PingRequest::default()).await.unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err}");
    assert!(!err.message.contains(TOKEN));
}

#[test]
fn rejects_bad_base_urls_and_bad_header_values() {
    assert_eq!(
        RunnerClient::new("not a url", Codec::Proto)
            .unwrap_err()
            .code,
        Code::InvalidArgument
    );
    assert_eq!(
        RunnerClient::new("ftp://host", Codec::Proto)
            .unwrap_err()
            .code,
        Code::InvalidArgument
    );
    let client = RunnerClient::new("http://h:1/", Codec::Proto)
        .unwrap()
        .with_credentials("u", "bad\ntoken");
    assert_eq!(client.base_url(), "http://h:1/api/actions");
    let err = client.request_headers(None, None).unwrap_err();
    assert!(!err.message.contains("bad\ntoken"));
}

#[test]
fn runner_token_debug_is_redacted() {
    let token = RunnerToken::new(TOKEN);
    assert_eq!(format!("{token:?}"), "RunnerToken(***)");
    assert_eq!(token.expose(), TOKEN);
}

#[test]
fn unknown_content_encoding_is_an_error() {
    let mut headers = HeaderMap::new();
    headers.insert("content-encoding", HeaderValue::from_static("br"));
    assert_eq!(
        decode_content_encoding(&headers, b"x").unwrap_err().code,
        Code::Internal
    );
    headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    assert_eq!(
        decode_content_encoding(&headers, b"not gzip")
            .unwrap_err()
            .code,
        Code::Internal
    );
}
