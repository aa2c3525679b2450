//! The Connect runner service, contract §2.5–§2.6, per version and in both codecs.

mod common;

use std::io::Read;

use common::*;
use forgejo_sim::ForgejoVersion::{V13, V14, V15};
use reqwest::Method;
use runner_proto::connect::{Code, Codec};
use runner_proto::ping::v1::{PingRequest, PingResponse};
use runner_proto::procedures as p;
use runner_proto::runner::v1 as pb;

#[tokio::test]
async fn ping_needs_no_auth_in_both_codecs() {
    let sim = start(V13).await;
    for codec in [Codec::Proto, Codec::Json] {
        let response: PingResponse = sim
            .call_with(
                codec,
                p::PING,
                None,
                &[],
                &PingRequest {
                    data: "runner".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(response.data, "Hello, runner!");
    }
}

#[tokio::test]
async fn json_codec_uses_camel_case_and_accepts_snake_case() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let runner = sim.register("r", &["x"], false).await;
    let (status, headers, body) = sim
        .raw_call(
            Codec::Json,
            p::FETCH_TASK,
            Some(&runner),
            &[],
            br#"{"tasks_version": 0}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["tasksVersion"].is_string(),
        "int64 as string, camelCase: {json}"
    );
    assert!(json["task"]["workflowPayload"].is_string());
}

#[tokio::test]
async fn full_job_cycle_per_version() {
    for version in ALL_VERSIONS {
        let sim = start(version).await;
        sim.create_repo("r").await;
        sim.commit(
            "r",
            ".forgejo/workflows/ci.yml",
            "on: push\njobs:\n  build:\n    runs-on: x\n    steps: [{run: 'echo hi'}]\n  test:\n    needs: build\n    runs-on: x\n    steps: [{run: 'true'}]\n",
        )
        .await;
        let jobs = sim.sim_jobs().await;
        assert_eq!(jobs[0]["status"], "waiting");
        assert_eq!(jobs[1]["status"], "blocked");
        let runner = sim.register("r", &["x"], false).await;
        sim.declare(&runner, &["x"]).await;
        let task = sim.fetch(&runner).await.unwrap().task.expect("a task");
        let payload = String::from_utf8(task.workflow_payload.clone().unwrap()).unwrap();
        assert!(payload.contains("build"), "{payload}");
        let context = task.context.clone().unwrap().fields;
        for key in [
            "repository",
            "repository_owner",
            "event_name",
            "ref",
            "sha",
            "run_id",
            "token",
            "server_url",
            "forgejo_server_version",
            "gitea_runtime_token",
        ] {
            assert!(context.contains_key(key), "{version}: context key {key}");
        }
        let token = &task.secrets["FORGEJO_TOKEN"];
        assert_eq!(token.len(), 40);
        assert_eq!(&task.secrets["GITHUB_TOKEN"], token);
        assert_eq!(&task.secrets["GITEA_TOKEN"], token);

        let ack = sim
            .update_log(&runner, task.id, 0, &["one", "two"], false)
            .await
            .unwrap();
        assert_eq!(ack.ack_index, 2);
        let heartbeat = sim.update_task(&runner, task.id, 0).await.unwrap();
        assert_eq!(heartbeat.state.unwrap().result, 0);
        sim.update_log(&runner, task.id, 2, &["three"], true)
            .await
            .unwrap();
        let done = sim
            .update_task(&runner, task.id, pb::Result::Success as i32)
            .await
            .unwrap();
        assert_eq!(done.state.unwrap().result, pb::Result::Success as i32);

        let jobs = sim.sim_jobs().await;
        assert_eq!(jobs[0]["status"], "success");
        assert_eq!(
            jobs[1]["status"], "waiting",
            "{version}: needs done, dependent waits"
        );
        let expected_attempt = 1;
        assert_eq!(jobs[0]["attempt"], expected_attempt);
        let log = sim
            .control(Method::GET, &format!("/jobs/{}/log", jobs[0]["id"]), None)
            .await
            .json();
        assert_eq!(log["rows"], serde_json::json!(["one", "two", "three"]));
        assert_eq!(log["archived"], true);
    }
}

#[tokio::test]
async fn failed_need_skips_dependent_unless_it_has_if() {
    let sim = start(V14).await;
    sim.create_repo("r").await;
    let yaml = "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'false'}]\n  b:\n    needs: a\n    runs-on: x\n    steps: [{run: 'true'}]\n  c:\n    needs: a\n    if: always()\n    runs-on: x\n    steps: [{run: 'true'}]\n  d:\n    needs: b\n    runs-on: x\n    steps: [{run: 'true'}]\n";
    sim.commit("r", ".forgejo/workflows/ci.yml", yaml).await;
    let runner = sim.register("r", &["x"], false).await;
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    sim.update_task(&runner, task.id, pb::Result::Failure as i32)
        .await
        .unwrap();
    let statuses: Vec<String> = sim
        .sim_jobs()
        .await
        .iter()
        .map(|j| j["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, vec!["failure", "skipped", "waiting", "skipped"]);
}

#[tokio::test]
async fn attempt_counts_per_version_and_rerun_gives_new_handle() {
    for version in ALL_VERSIONS {
        let sim = start(version).await;
        sim.repo_with_jobs("r", &[("a", &["x"])]).await;
        let before = sim.sim_jobs().await[0].clone();
        let fresh_attempt = if version == V15 { 1 } else { 0 };
        assert_eq!(before["attempt"], fresh_attempt, "{version}");
        let runner = sim.register("r", &["x"], false).await;
        let task = sim.fetch(&runner).await.unwrap().task.unwrap();
        assert_eq!(sim.sim_jobs().await[0]["attempt"], 1);
        sim.update_task(&runner, task.id, pb::Result::Failure as i32)
            .await
            .unwrap();
        let rerun = sim
            .control(
                Method::POST,
                &format!("/runs/{}/rerun", before["run_id"]),
                None,
            )
            .await;
        assert_eq!(rerun.status, 200, "{}", rerun.text);
        let after = sim.sim_jobs().await[0].clone();
        assert_eq!(after["status"], "waiting");
        assert_ne!(after["handle"], before["handle"]);
        assert_eq!(after["task_id"], serde_json::Value::Null);
        let task = sim.fetch(&runner).await.unwrap().task.unwrap();
        assert_eq!(sim.sim_jobs().await[0]["attempt"], 2, "{version}");
        assert_eq!(
            task.context.unwrap().fields["run_attempt"].kind,
            Some(prost_types::value::Kind::StringValue("2".into()))
        );
    }
}

#[tokio::test]
async fn task_capacity_only_from_14() {
    for (version, expected) in [(V13, 0usize), (V14, 2), (V15, 2)] {
        let sim = start(version).await;
        sim.repo_with_jobs("r", &[("a", &["x"]), ("b", &["x"]), ("c", &["x"])])
            .await;
        let runner = sim.register("r", &["x"], false).await;
        let request = pb::FetchTaskRequest {
            tasks_version: 0,
            task_capacity: Some(3),
        };
        let response: pb::FetchTaskResponse = sim
            .call(p::FETCH_TASK, Some(&runner), &request)
            .await
            .unwrap();
        assert!(response.task.is_some());
        assert_eq!(response.additional_tasks.len(), expected, "{version}");
    }
}

#[tokio::test]
async fn request_key_replay_in_15_only() {
    for version in ALL_VERSIONS {
        let sim = start(version).await;
        sim.repo_with_jobs("r", &[("a", &["x"]), ("b", &["x"])])
            .await;
        let runner = sim.register("r", &["x"], false).await;
        let key = [(
            "x-runner-request-key",
            "5f0c6f3e-1111-4222-8333-444455556666",
        )];
        let request = pb::FetchTaskRequest {
            tasks_version: 0,
            task_capacity: None,
        };
        let first: pb::FetchTaskResponse = sim
            .call_with(Codec::Proto, p::FETCH_TASK, Some(&runner), &key, &request)
            .await
            .unwrap();
        let second: pb::FetchTaskResponse = sim
            .call_with(Codec::Proto, p::FETCH_TASK, Some(&runner), &key, &request)
            .await
            .unwrap();
        let (a, b) = (first.task.unwrap(), second.task.unwrap());
        if version == V15 {
            assert_eq!(a.id, b.id, "same task again");
            assert_ne!(
                a.secrets["FORGEJO_TOKEN"], b.secrets["FORGEJO_TOKEN"],
                "with a fresh token"
            );
            assert_eq!(second.tasks_version, 0);
        } else {
            assert_ne!(
                a.id, b.id,
                "{version}: the key means nothing, a second job is picked"
            );
        }
    }
}

#[tokio::test]
async fn fetch_single_task_with_handle() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"]), ("b", &["y"])])
        .await;
    let jobs = sim.sim_jobs().await;
    let runner = sim.register("r", &["x"], false).await;
    // A handle of a job whose labels the runner lacks gives nothing.
    let other = pb::FetchSingleTaskRequest {
        tasks_version: 0,
        handle: Some(jobs[1]["handle"].as_str().unwrap().into()),
    };
    let none: pb::FetchSingleTaskResponse = sim
        .call(p::FETCH_SINGLE_TASK, Some(&runner), &other)
        .await
        .unwrap();
    assert!(none.task.is_none());
    let unknown = pb::FetchSingleTaskRequest {
        tasks_version: 0,
        handle: Some("no-such-handle".into()),
    };
    let none: pb::FetchSingleTaskResponse = sim
        .call(p::FETCH_SINGLE_TASK, Some(&runner), &unknown)
        .await
        .unwrap();
    assert!(none.task.is_none());
    let own = pb::FetchSingleTaskRequest {
        tasks_version: 0,
        handle: Some(jobs[0]["handle"].as_str().unwrap().into()),
    };
    let got: pb::FetchSingleTaskResponse = sim
        .call(p::FETCH_SINGLE_TASK, Some(&runner), &own)
        .await
        .unwrap();
    assert_eq!(
        job_of_task(&sim, got.task.unwrap().id).await["id"],
        jobs[0]["id"]
    );
}

#[tokio::test]
async fn ephemeral_runner_gets_one_task_and_is_deleted_on_final_result() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"]), ("b", &["x"])])
        .await;
    let runner = sim.register("r", &["x"], true).await;
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    assert!(
        sim.fetch(&runner).await.unwrap().task.is_none(),
        "one task ever"
    );
    sim.update_log(&runner, task.id, 0, &["done"], true)
        .await
        .unwrap();
    sim.update_task(&runner, task.id, pb::Result::Success as i32)
        .await
        .unwrap();
    let err = sim.fetch(&runner).await.unwrap_err();
    assert_eq!(err.code, Code::Unauthenticated);
    let runners = sim.control(Method::GET, "/runners", None).await.json();
    assert_eq!(runners[0]["deleted"], true);
    assert!(runners[0]["uuid"]
        .as_str()
        .unwrap()
        .starts_with("ffffffff-ffff-ffff-"));
    let stats = sim.control(Method::GET, "/stats", None).await.json();
    assert_eq!(stats["runners"]["deleted"], 1);
    assert_eq!(stats["runners"]["ephemeral_active"], 0);
}

#[tokio::test]
async fn cancelled_result_is_echoed_to_the_runner() {
    let sim = start(V14).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let runner = sim.register("r", &["x"], false).await;
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    let job = job_of_task(&sim, task.id).await;
    sim.control(Method::POST, &format!("/jobs/{}/cancel", job["id"]), None)
        .await;
    let echo = sim.update_task(&runner, task.id, 0).await.unwrap();
    assert_eq!(echo.state.unwrap().result, pb::Result::Cancelled as i32);
    // A later final result does not change the stored one.
    let late = sim
        .update_task(&runner, task.id, pb::Result::Success as i32)
        .await
        .unwrap();
    assert_eq!(late.state.unwrap().result, pb::Result::Cancelled as i32);
    assert_eq!(
        sim.sim_job(job["id"].as_i64().unwrap()).await["status"],
        "cancelled"
    );
}

#[tokio::test]
async fn update_log_ack_rules() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let runner = sim.register("r", &["x"], false).await;
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    assert_eq!(
        sim.update_log(&runner, task.id, 0, &[], false)
            .await
            .unwrap()
            .ack_index,
        0,
        "empty rows"
    );
    assert_eq!(
        sim.update_log(&runner, task.id, 5, &["gap"], false)
            .await
            .unwrap()
            .ack_index,
        0,
        "index beyond ack"
    );
    assert_eq!(
        sim.update_log(&runner, task.id, 0, &["a", "b"], false)
            .await
            .unwrap()
            .ack_index,
        2
    );
    assert_eq!(
        sim.update_log(&runner, task.id, 0, &["a"], false)
            .await
            .unwrap()
            .ack_index,
        2,
        "already stored"
    );
    assert_eq!(
        sim.update_log(&runner, task.id, 1, &["b", "c"], true)
            .await
            .unwrap()
            .ack_index,
        3,
        "overlap appended once"
    );
    let err = sim
        .update_log(&runner, task.id, 3, &["d"], false)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::AlreadyExists);
    assert_eq!(err.message, "log file has been archived");
}

#[tokio::test]
async fn task_of_another_runner_is_internal() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let owner = sim.register("r", &["x"], false).await;
    let stranger = sim.register("r", &["x"], false).await;
    let task = sim.fetch(&owner).await.unwrap().task.unwrap();
    let err = sim.update_task(&stranger, task.id, 0).await.unwrap_err();
    assert_eq!(err.code, Code::Internal);
    assert_eq!(err.message, "update task: invalid runner for task");
    assert_eq!(
        sim.update_log(&stranger, task.id, 0, &["x"], false)
            .await
            .unwrap_err()
            .code,
        Code::Internal
    );
}

#[tokio::test]
async fn runner_scope_limits_picking() {
    let sim = start(V15).await;
    sim.repo_with_jobs("one", &[("a", &["x"])]).await;
    sim.repo_with_jobs("two", &[("b", &["x"])]).await;
    let repo_runner = sim.register("two", &["x"], false).await;
    let task = sim.fetch(&repo_runner).await.unwrap().task.unwrap();
    assert_eq!(job_of_task(&sim, task.id).await["repo"], "root/two");
    assert!(
        sim.fetch(&repo_runner).await.unwrap().task.is_none(),
        "the job of repo one is out of scope"
    );
    let admin_token = sim.get("/admin/runners/registration-token").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = pb::RegisterRequest {
        name: "g".into(),
        token: admin_token,
        labels: vec!["x".into()],
        ..Default::default()
    };
    let global: pb::RegisterResponse = sim.call(p::REGISTER, None, &request).await.unwrap();
    let global = Runner {
        id: 0,
        uuid: global.runner.clone().unwrap().uuid,
        token: global.runner.unwrap().token,
        ephemeral: false,
    };
    let task = sim.fetch(&global).await.unwrap().task.unwrap();
    assert_eq!(job_of_task(&sim, task.id).await["repo"], "root/one");
}

#[tokio::test]
async fn large_responses_are_gzipped_when_accepted() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let long_step: String = "echo padding; ".repeat(200);
    sim.commit(
        "r",
        ".forgejo/workflows/big.yml",
        &format!(
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: \"{long_step}\"\n"
        ),
    )
    .await;
    let runner = sim.register("r", &["x"], false).await;
    let request = Codec::Proto.encode(&pb::FetchTaskRequest {
        tasks_version: 0,
        task_capacity: None,
    });
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let response = raw
        .post(format!("{}/api/actions{}", sim.url, p::FETCH_TASK))
        .header("content-type", "application/proto")
        .header("accept-encoding", "gzip")
        .header("x-runner-uuid", &runner.uuid)
        .header("x-runner-token", &runner.token)
        .body(request.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let body = response.bytes().await.unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body.as_ref())
        .read_to_end(&mut plain)
        .unwrap();
    let decoded: pb::FetchTaskResponse = Codec::Proto.decode(&plain).unwrap();
    assert!(
        String::from_utf8(decoded.task.unwrap().workflow_payload.unwrap())
            .unwrap()
            .contains("padding")
    );
    // Small answers and clients without gzip get identity.
    let small = raw
        .post(format!("{}/api/actions{}", sim.url, p::PING))
        .header("content-type", "application/proto")
        .header("accept-encoding", "gzip")
        .body(vec![])
        .send()
        .await
        .unwrap();
    assert!(small.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn deleted_api_runner_credentials_stop_working() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let created = sim
        .post(
            "/repos/root/r/actions/runners",
            serde_json::json!({"name": "n"}),
        )
        .await
        .json();
    let runner = Runner {
        id: created["id"].as_i64().unwrap(),
        uuid: created["uuid"].as_str().unwrap().into(),
        token: created["token"].as_str().unwrap().into(),
        ephemeral: false,
    };
    assert_eq!(runner.token.len(), 40);
    sim.declare(&runner, &["x"]).await;
    let delete = sim
        .api(
            Method::DELETE,
            &format!("/repos/root/r/actions/runners/{}", runner.id),
            None,
        )
        .await;
    assert_eq!(delete.status, 204);
    assert_eq!(delete.text, "");
    assert_eq!(
        sim.fetch(&runner).await.unwrap_err().code,
        Code::Unauthenticated
    );
    assert_eq!(
        sim.get(&format!("/repos/root/r/actions/runners/{}", runner.id))
            .await
            .status,
        404
    );
    let _ = (V13, V14);
}
