//! Shared helpers of the integration tests: a simulator on port 0, an admin token, repos
//! with workflows, and hand-built Connect calls (runner_proto's codec, no client library).
#![allow(dead_code)]

use std::net::SocketAddr;

use base64::Engine;
use forgejo_sim::{ForgejoVersion, SimConfig, SimServer};
use prost_reflect::ReflectMessage;
use runner_proto::connect::{Codec, ConnectError};
use runner_proto::runner::v1 as pb;
use serde_json::{json, Value};

pub const ADMIN: &str = "root";
pub const PASSWORD: &str = "admin1234";

pub struct Sim {
    pub server: SimServer,
    pub url: String,
    pub http: reqwest::Client,
    pub token: String,
}

pub async fn start(version: ForgejoVersion) -> Sim {
    let config = SimConfig {
        version,
        admin_user: ADMIN.into(),
        admin_password: PASSWORD.into(),
        time_scale: 1.0,
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = SimServer::start(addr, config)
        .await
        .expect("start simulator");
    let url = server.url();
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{url}/api/v1/users/{ADMIN}/tokens"))
        .basic_auth(ADMIN, Some(PASSWORD))
        .json(&json!({"name": "tests", "scopes": ["all"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let token = response.json::<Value>().await.unwrap()["sha1"]
        .as_str()
        .unwrap()
        .to_owned();
    Sim {
        server,
        url,
        http,
        token,
    }
}

pub const ALL_VERSIONS: [ForgejoVersion; 3] = [
    ForgejoVersion::V13,
    ForgejoVersion::V14,
    ForgejoVersion::V15,
];

/// A raw HTTP answer: status, headers, body text.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

impl Sim {
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        self.api_as(method, path, body, Some(&self.token)).await
    }

    pub async fn api_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url));
        if let Some(token) = token {
            request = request.header("authorization", format!("token {token}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Answer {
            status,
            headers,
            text: response.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.api(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.api(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}/_sim{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Answer {
            status,
            headers,
            text: response.text().await.unwrap(),
        }
    }

    pub async fn create_repo(&self, name: &str) {
        let answer = self.post("/user/repos", json!({"name": name})).await;
        assert_eq!(answer.status, 201, "{}", answer.text);
    }

    /// Commits a workflow file to `root/{repo}`.
    pub async fn commit(&self, repo: &str, path: &str, content: &str) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        let answer = self
            .post(
                &format!("/repos/{ADMIN}/{repo}/contents/{path}"),
                json!({"content": b64}),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
    }

    /// A repository with one `on: push` workflow whose jobs run on the given label lists.
    pub async fn repo_with_jobs(&self, repo: &str, jobs: &[(&str, &[&str])]) {
        self.create_repo(repo).await;
        let mut yaml = String::from("on: push\njobs:\n");
        for (name, labels) in jobs {
            let list = labels
                .iter()
                .map(|l| format!("\"{l}\""))
                .collect::<Vec<_>>()
                .join(", ");
            yaml.push_str(&format!(
                "  {name}:\n    runs-on: [{list}]\n    steps:\n      - run: echo {name}\n"
            ));
        }
        self.commit(repo, ".forgejo/workflows/ci.yml", &yaml).await;
    }

    pub async fn jobs_listing(&self, repo: &str, query: &str) -> Answer {
        self.get(&format!(
            "/repos/{ADMIN}/{repo}/actions/runners/jobs{query}"
        ))
        .await
    }

    pub async fn sim_jobs(&self) -> Vec<Value> {
        self.control(reqwest::Method::GET, "/jobs", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    pub async fn sim_job(&self, id: i64) -> Value {
        self.sim_jobs()
            .await
            .into_iter()
            .find(|j| j["id"] == id)
            .unwrap()
    }

    pub async fn registration_token(&self, repo: &str) -> String {
        let answer = self
            .get(&format!(
                "/repos/{ADMIN}/{repo}/actions/runners/registration-token"
            ))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.json()["token"].as_str().unwrap().to_owned()
    }

    /// Registers a runner with the repository's registration token.
    pub async fn register(&self, repo: &str, labels: &[&str], ephemeral: bool) -> Runner {
        let token = self.registration_token(repo).await;
        let request = pb::RegisterRequest {
            name: "runner".into(),
            token,
            version: "v12.8.2".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ephemeral,
            ..Default::default()
        };
        let response: pb::RegisterResponse = self
            .call(runner_proto::procedures::REGISTER, None, &request)
            .await
            .expect("register");
        let runner = response.runner.unwrap();
        Runner {
            id: runner.id,
            uuid: runner.uuid,
            token: runner.token,
            ephemeral: runner.ephemeral,
        }
    }

    /// A Connect call with the proto codec; `Err` carries the decoded Connect error.
    pub async fn call<Req: ReflectMessage, Resp: ReflectMessage + Default>(
        &self,
        procedure: &str,
        runner: Option<&Runner>,
        request: &Req,
    ) -> Result<Resp, ConnectError> {
        self.call_with(Codec::Proto, procedure, runner, &[], request)
            .await
    }

    pub async fn call_with<Req: ReflectMessage, Resp: ReflectMessage + Default>(
        &self,
        codec: Codec,
        procedure: &str,
        runner: Option<&Runner>,
        extra_headers: &[(&str, &str)],
        request: &Req,
    ) -> Result<Resp, ConnectError> {
        let raw = self
            .raw_call(
                codec,
                procedure,
                runner,
                extra_headers,
                codec.encode(request),
            )
            .await;
        if raw.0 == 200 {
            codec
                .decode(&raw.2)
                .map_err(|e| panic!("undecodable answer: {e}"))
        } else {
            Err(ConnectError::from_response(raw.0, &raw.2))
        }
    }

    /// Status, headers and body of a Connect request built by hand.
    pub async fn raw_call(
        &self,
        codec: Codec,
        procedure: &str,
        runner: Option<&Runner>,
        extra_headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = self
            .http
            .post(format!("{}/api/actions{procedure}", self.url))
            .header("content-type", codec.content_type())
            .header("connect-protocol-version", "1")
            .body(body);
        if let Some(runner) = runner {
            request = request
                .header("x-runner-uuid", &runner.uuid)
                .header("x-runner-token", &runner.token);
        }
        for (k, v) in extra_headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.bytes().await.unwrap().to_vec())
    }

    pub async fn declare(&self, runner: &Runner, labels: &[&str]) -> pb::DeclareResponse {
        let request = pb::DeclareRequest {
            version: "v12.8.2".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        };
        self.call(runner_proto::procedures::DECLARE, Some(runner), &request)
            .await
            .expect("declare")
    }

    pub async fn fetch(&self, runner: &Runner) -> Result<pb::FetchTaskResponse, ConnectError> {
        self.call(
            runner_proto::procedures::FETCH_TASK,
            Some(runner),
            &pb::FetchTaskRequest {
                tasks_version: 0,
                task_capacity: None,
            },
        )
        .await
    }

    pub async fn update_task(
        &self,
        runner: &Runner,
        task_id: i64,
        result: i32,
    ) -> Result<pb::UpdateTaskResponse, ConnectError> {
        let request = pb::UpdateTaskRequest {
            state: Some(pb::TaskState {
                id: task_id,
                result,
                ..Default::default()
            }),
            outputs: Default::default(),
        };
        self.call(
            runner_proto::procedures::UPDATE_TASK,
            Some(runner),
            &request,
        )
        .await
    }

    pub async fn update_log(
        &self,
        runner: &Runner,
        task_id: i64,
        index: i64,
        rows: &[&str],
        no_more: bool,
    ) -> Result<pb::UpdateLogResponse, ConnectError> {
        let request = pb::UpdateLogRequest {
            task_id,
            index,
            rows: rows
                .iter()
                .map(|r| pb::LogRow {
                    time: None,
                    content: r.to_string(),
                })
                .collect(),
            no_more,
        };
        self.call(runner_proto::procedures::UPDATE_LOG, Some(runner), &request)
            .await
    }

    pub async fn advance(&self, seconds: f64) {
        let answer = self
            .control(
                reqwest::Method::POST,
                "/clock/advance",
                Some(json!({"seconds": seconds})),
            )
            .await;
        assert_eq!(answer.status, 200);
    }

    pub async fn run_cron(&self, name: &str) -> i64 {
        let answer = self
            .control(reqwest::Method::POST, &format!("/cron/{name}"), None)
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.json()["changed"].as_i64().unwrap()
    }
}

#[derive(Debug, Clone)]
pub struct Runner {
    pub id: i64,
    pub uuid: String,
    pub token: String,
    pub ephemeral: bool,
}

/// Ids of the jobs of a listing body.
pub fn listed_ids(answer: &Answer) -> Vec<i64> {
    match answer.json() {
        Value::Null => vec![],
        Value::Array(items) => items.iter().map(|j| j["id"].as_i64().unwrap()).collect(),
        other => panic!("unexpected listing {other}"),
    }
}

/// The job id behind a task, from `/_sim/jobs`.
pub async fn job_of_task(sim: &Sim, task_id: i64) -> Value {
    sim.sim_jobs()
        .await
        .into_iter()
        .find(|j| j["task_id"] == task_id)
        .unwrap()
}
