//! Bad input never panics and gets the contract's error shapes; the request parsers are
//! fuzzed with proptest.

mod common;

use common::*;
use forgejo_sim::auth::{parse_authorization, query_token, Credentials};
use forgejo_sim::state::labels::{parse_labels_query, split_labels, LabelsQuery};
use forgejo_sim::ForgejoVersion::{V13, V15};
use proptest::prelude::*;
use reqwest::Method;
use runner_proto::connect::{Code, Codec, ConnectError};
use runner_proto::procedures as p;
use runner_proto::runner::v1 as pb;

fn connect_error(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> ConnectError {
    assert_eq!(headers["content-type"], "application/json");
    let error: ConnectError = serde_json::from_slice(body).expect("a Connect error body");
    assert_eq!(status, error.code.http_status());
    error
}

#[tokio::test]
async fn malformed_connect_bodies_are_invalid_argument() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let runner = sim.register("r", &["x"], false).await;
    for (codec, body) in [
        (Codec::Json, b"{".to_vec()),
        (Codec::Json, b"[1,2]".to_vec()),
        (Codec::Json, br#"{"tasksVersion": {}}"#.to_vec()),
        (Codec::Proto, vec![0xff, 0xff, 0xff, 0xff]),
        (Codec::Proto, vec![0x0a, 0x10, 0x01]),
    ] {
        let (status, headers, body) = sim
            .raw_call(codec, p::FETCH_TASK, Some(&runner), &[], body)
            .await;
        assert_eq!(
            connect_error(status, &headers, &body).code,
            Code::InvalidArgument
        );
    }
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let sim = start(V15).await;
    let response = sim
        .http
        .post(format!("{}/api/actions{}", sim.url, p::PING))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let missing = sim
        .http
        .post(format!("{}/api/actions{}", sim.url, p::PING))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 415);
}

#[tokio::test]
async fn unknown_procedure_is_plain_404() {
    let sim = start(V13).await;
    let (status, _, body) = sim
        .raw_call(
            Codec::Proto,
            "/runner.v1.RunnerService/Nope",
            None,
            &[],
            vec![],
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        ConnectError::from_response(status, &body).code,
        Code::Unimplemented
    );
    let get = sim
        .http
        .get(format!("{}/api/actions{}", sim.url, p::PING))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
}

#[tokio::test]
async fn oversized_body_is_resource_exhausted() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let runner = sim.register("r", &["x"], false).await;
    let huge = vec![b' '; forgejo_sim::connect::MAX_REQUEST_BYTES + 10];
    let (status, headers, body) = sim
        .raw_call(Codec::Json, p::UPDATE_LOG, Some(&runner), &[], huge)
        .await;
    assert_eq!(
        connect_error(status, &headers, &body).code,
        Code::ResourceExhausted
    );
    let api = sim
        .http
        .post(format!("{}/api/v1/user/repos", sim.url))
        .header("authorization", format!("token {}", sim.token))
        .header("content-type", "application/json")
        .body(vec![b' '; forgejo_sim::http::API_BODY_LIMIT + 10])
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 413);
}

#[tokio::test]
async fn bad_runner_auth_is_unauthenticated() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let runner = sim.register("r", &["x"], false).await;
    let request = pb::FetchTaskRequest {
        tasks_version: 0,
        task_capacity: None,
    };
    let cases = [
        Runner {
            token: "wrong".into(),
            ..runner.clone()
        },
        Runner {
            uuid: "not-a-uuid".into(),
            ..runner.clone()
        },
        Runner {
            uuid: String::new(),
            token: String::new(),
            ..runner.clone()
        },
    ];
    for bad in cases {
        let err = sim
            .call::<_, pb::FetchTaskResponse>(p::FETCH_TASK, Some(&bad), &request)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ConnectError::new(Code::Unauthenticated, "unregistered runner")
        );
    }
    let err = sim
        .call::<_, pb::DeclareResponse>(p::DECLARE, None, &pb::DeclareRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Unauthenticated);
    let register = pb::RegisterRequest {
        name: String::new(),
        token: "x".into(),
        ..Default::default()
    };
    let err = sim
        .call::<_, pb::RegisterResponse>(p::REGISTER, None, &register)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ConnectError::new(Code::InvalidArgument, "missing runner token, name")
    );
    let register = pb::RegisterRequest {
        name: "n".into(),
        token: "unknown".into(),
        ..Default::default()
    };
    let err = sim
        .call::<_, pb::RegisterResponse>(p::REGISTER, None, &register)
        .await
        .unwrap_err();
    assert_eq!(err.message, "runner registration token not found");
}

#[tokio::test]
async fn malformed_api_bodies_and_auth_headers() {
    let sim = start(V15).await;
    let garbage = sim
        .http
        .post(format!("{}/api/v1/user/repos", sim.url))
        .header("authorization", format!("token {}", sim.token))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 422);
    let body: serde_json::Value = garbage.json().await.unwrap();
    assert!(body["message"].is_string() && body["url"].is_string());
    for header in [
        "Basic !!!",
        "Basic",
        "token",
        "Digest abc",
        "Bearer ",
        "\u{7f}",
    ] {
        let answer = sim
            .http
            .get(format!("{}/api/v1/user", sim.url))
            .header("authorization", header)
            .send()
            .await;
        if let Ok(answer) = answer {
            assert_eq!(answer.status(), 401, "{header:?}");
        }
    }
    let unknown = sim.get("/no/such/route").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["message"], "not found");
    let bad_control = sim
        .control(
            Method::POST,
            "/faults",
            Some(serde_json::json!({"kind": "explode"})),
        )
        .await;
    assert_eq!(bad_control.status, 400);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn connect_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Codec::Proto.decode::<pb::UpdateTaskRequest>(&bytes);
        let _ = Codec::Json.decode::<pb::UpdateTaskRequest>(&bytes);
        let _ = Codec::Proto.decode::<pb::RegisterRequest>(&bytes);
        let _ = Codec::Json.decode::<pb::FetchTaskRequest>(&bytes);
    }

    #[test]
    fn connect_json_round_trips(task_id in any::<i64>(), index in any::<i64>(), no_more in any::<bool>(), rows in proptest::collection::vec(".{0,20}", 0..5)) {
        let request = pb::UpdateLogRequest {
            task_id,
            index,
            rows: rows.into_iter().map(|content| pb::LogRow { time: None, content }).collect(),
            no_more,
        };
        for codec in [Codec::Json, Codec::Proto] {
            let back: pb::UpdateLogRequest = codec.decode(&codec.encode(&request)).unwrap();
            prop_assert_eq!(&back, &request);
        }
    }

    #[test]
    fn authorization_parsing_never_panics(value in ".{0,80}") {
        let _ = parse_authorization(&value);
        let _ = query_token(Some(&value));
    }

    #[test]
    fn basic_credentials_round_trip(user in "[a-z]{1,10}", password in "[ -~]{0,20}") {
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{password}"));
        prop_assert_eq!(
            parse_authorization(&format!("Basic {encoded}")),
            Some(Credentials::Basic { user, password })
        );
    }

    #[test]
    fn labels_query_parsing(raw in ".{0,60}") {
        match parse_labels_query(Some(&raw)) {
            LabelsQuery::Absent => prop_assert!(!raw.contains("labels")),
            LabelsQuery::Present(labels) => prop_assert!(!labels.is_empty()),
        }
    }

    #[test]
    fn labels_pieces_keep_inner_spaces(pieces in proptest::collection::vec("[a-z ]{0,6}", 1..5)) {
        let joined = pieces.join(",");
        let parsed = split_labels(&joined);
        prop_assert_eq!(parsed.len(), pieces.len());
        prop_assert_eq!(parsed.join(","), joined.trim());
    }
}
