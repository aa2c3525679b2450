//! The exact call sequence and headers of `one-job`, observed by a minimal Connect server
//! written here (independent of the simulator): request-key reuse after an error and renewal
//! after a success, Declare with label names, heartbeats, then the final log and state.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use runner_proto::connect::{Code, Codec, ConnectError};
use runner_proto::runner::v1::{
    DeclareRequest, DeclareResponse, FetchTaskResponse, Result as TaskResult, Runner, Task,
    TaskState, UpdateLogRequest, UpdateLogResponse, UpdateTaskRequest, UpdateTaskResponse,
};

const TOKEN: &str = "feedfacefeedfacefeedfacefeedfacefeedface";

#[derive(Debug, Clone)]
enum Call {
    Declare {
        labels: Vec<String>,
        user_agent: String,
        content_type: String,
    },
    Fetch {
        key: String,
    },
    Log {
        index: i64,
        rows: Vec<String>,
        no_more: bool,
    },
    Task {
        result: i32,
        steps: usize,
        stopped: bool,
    },
}

#[derive(Default)]
struct Server {
    calls: Mutex<Vec<Call>>,
    fetches: Mutex<u32>,
    log_rows: Mutex<Vec<String>>,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn reply(codec: Codec, body: Vec<u8>) -> Response {
    ([("content-type", codec.content_type())], body).into_response()
}

async fn handle(server: Arc<Server>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let codec = Codec::from_content_type(&header(&headers, "content-type")).unwrap_or(Codec::Proto);
    if header(&headers, "x-runner-token") != TOKEN {
        let err = ConnectError::new(Code::Unauthenticated, "unregistered runner");
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            err.to_json(),
        )
            .into_response();
    }
    let record = |call| server.calls.lock().unwrap().push(call);
    match uri.path() {
        "/api/actions/runner.v1.RunnerService/Declare" => {
            let req: DeclareRequest = codec.decode(&body).unwrap();
            record(Call::Declare {
                labels: req.labels.clone(),
                user_agent: header(&headers, "user-agent"),
                content_type: header(&headers, "content-type"),
            });
            reply(
                codec,
                codec.encode(&DeclareResponse {
                    runner: Some(Runner {
                        id: 1,
                        name: "r".into(),
                        labels: req.labels,
                        ..Default::default()
                    }),
                }),
            )
        }
        "/api/actions/runner.v1.RunnerService/FetchTask" => {
            record(Call::Fetch {
                key: header(&headers, "x-runner-request-key"),
            });
            let n = {
                let mut fetches = server.fetches.lock().unwrap();
                *fetches += 1;
                *fetches
            };
            match n {
                1 => {
                    let err = ConnectError::new(Code::Unavailable, "try later");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("content-type", "application/json")],
                        err.to_json(),
                    )
                        .into_response()
                }
                2 => reply(
                    codec,
                    codec.encode(&FetchTaskResponse {
                        tasks_version: 1,
                        ..Default::default()
                    }),
                ),
                _ => {
                    let payload = "jobs:\n  j:\n    runs-on: x\n    steps:\n      - run: echo one\n      - run: sleep 1; echo two\n";
                    let task = Task {
                        id: 77,
                        workflow_payload: Some(payload.as_bytes().to_vec()),
                        ..Default::default()
                    };
                    reply(
                        codec,
                        codec.encode(&FetchTaskResponse {
                            task: Some(task),
                            tasks_version: 1,
                            ..Default::default()
                        }),
                    )
                }
            }
        }
        "/api/actions/runner.v1.RunnerService/UpdateLog" => {
            let req: UpdateLogRequest = codec.decode(&body).unwrap();
            let rows: Vec<String> = req.rows.iter().map(|r| r.content.clone()).collect();
            record(Call::Log {
                index: req.index,
                rows: rows.clone(),
                no_more: req.no_more,
            });
            let mut stored = server.log_rows.lock().unwrap();
            let ack = stored.len() as i64;
            if req.index <= ack && req.index + rows.len() as i64 > ack {
                stored.extend(rows[(ack - req.index) as usize..].iter().cloned());
            }
            reply(
                codec,
                codec.encode(&UpdateLogResponse {
                    ack_index: stored.len() as i64,
                }),
            )
        }
        "/api/actions/runner.v1.RunnerService/UpdateTask" => {
            let req: UpdateTaskRequest = codec.decode(&body).unwrap();
            let state = req.state.unwrap_or_default();
            record(Call::Task {
                result: state.result,
                steps: state.steps.len(),
                stopped: state.stopped_at.is_some(),
            });
            reply(
                codec,
                codec.encode(&UpdateTaskResponse {
                    state: Some(TaskState {
                        id: state.id,
                        result: state.result,
                        ..Default::default()
                    }),
                    sent_outputs: vec![],
                }),
            )
        }
        _ => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_call_sequence_and_request_keys() {
    let server = Arc::new(Server::default());
    let state = Arc::clone(&server);
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        handle(Arc::clone(&state), uri, headers, body)
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "runner:\n  report_interval: 300ms\n",
    )
    .unwrap();
    let token_url = format!("file:{}", dir.path().join("token").display());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-forgejo-runner"))
        .args([
            "-c",
            "c.yaml",
            "one-job",
            "--url",
            &url,
            "--uuid",
            "u-1",
            "--token-url",
            &token_url,
        ])
        .args([
            "--label",
            "a:docker://node:lts",
            "--label",
            "b:host",
            "--wait",
            "--fetch-interval",
            "100ms",
        ])
        .current_dir(dir.path())
        .env_remove("FAKE_RUNNER_CODEC")
        .env_remove("FAKE_RUNNER_COMPAT")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("task 77 picked"), "{stderr}");
    assert!(stderr.contains("failed to fetch task"), "{stderr}");

    let calls = server.calls.lock().unwrap().clone();
    let Call::Declare {
        labels,
        user_agent,
        content_type,
    } = &calls[0]
    else {
        panic!("Declare first: {calls:?}")
    };
    assert_eq!(labels, &["a", "b"], "Declare sends label names only");
    assert_eq!(user_agent, "forgejo-runner/v12.8.2-fake");
    assert_eq!(content_type, "application/proto");

    let keys: Vec<&String> = calls
        .iter()
        .filter_map(|c| {
            if let Call::Fetch { key } = c {
                Some(key)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(keys.len(), 3, "{calls:?}");
    assert!(
        uuid::Uuid::parse_str(keys[0]).is_ok(),
        "the key is a UUID: {}",
        keys[0]
    );
    assert_eq!(keys[0], keys[1], "reused after an error");
    assert_ne!(keys[1], keys[2], "renewed after a successful response");

    // After the task: heartbeats (UNSPECIFIED), then UpdateLog(no_more) then the final UpdateTask.
    let after: Vec<&Call> = calls
        .iter()
        .skip_while(|c| !matches!(c, Call::Log { .. }))
        .collect();
    let heartbeats = after
        .iter()
        .filter(|c| {
            matches!(
                c,
                Call::Task {
                    result: 0,
                    steps: 2,
                    stopped: false
                }
            )
        })
        .count();
    assert!(
        heartbeats >= 2,
        "a 1 s job with a 300 ms interval heartbeats: {after:?}"
    );
    let n = after.len();
    assert!(
        matches!(after[n - 2], Call::Log { no_more: true, .. }),
        "{after:?}"
    );
    assert!(
        matches!(after[n - 1], Call::Task { result, steps: 2, stopped: true } if *result == TaskResult::Success as i32),
        "{after:?}"
    );
    assert!(!after[..n - 2]
        .iter()
        .any(|c| matches!(c, Call::Log { no_more: true, .. })));
    let rows = server.log_rows.lock().unwrap().clone();
    let one = rows
        .iter()
        .position(|r| r == "one")
        .expect("step output stored");
    let two = rows
        .iter()
        .position(|r| r == "two")
        .expect("step output stored");
    assert!(one < two, "{rows:?}");
    assert_eq!(rows.last().map(String::as_str), Some("Job succeeded"));
    // Indexes continue where the acknowledged rows ended.
    let mut expected_index = 0;
    for call in &after {
        if let Call::Log { index, rows, .. } = call {
            assert_eq!(*index, expected_index, "{after:?}");
            expected_index += rows.len() as i64;
        }
    }
}
