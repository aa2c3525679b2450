//! One test per server-side quirk of forgejo-contract.md §4, named after it. For quirks of
//! the runner side (12, 13, 14) the test covers the part the server plays.

mod common;

use common::*;
use forgejo_sim::ForgejoVersion::{V13, V14, V15};
use reqwest::Method;
use runner_proto::connect::{Code, Codec};
use runner_proto::procedures as p;
use runner_proto::runner::v1 as pb;
use serde_json::json;

#[tokio::test]
async fn quirk_01_f13_label_filter() {
    let sim13 = start(V13).await;
    sim13.repo_with_jobs("r", &[("a", &["x", "y"])]).await;
    assert!(
        listed_ids(&sim13.jobs_listing("r", "").await).is_empty(),
        "13: absent labels list nothing"
    );
    assert!(listed_ids(&sim13.jobs_listing("r", "?labels=").await).is_empty());
    assert!(
        listed_ids(&sim13.jobs_listing("r", "?labels=x").await).is_empty(),
        "13: a subset is not enough"
    );
    assert_eq!(
        listed_ids(&sim13.jobs_listing("r", "?labels=z,y,x").await).len(),
        1,
        "13: a superset lists it"
    );

    let sim14 = start(V14).await;
    sim14.repo_with_jobs("r", &[("a", &["x", "y"])]).await;
    assert_eq!(
        listed_ids(&sim14.jobs_listing("r", "").await).len(),
        1,
        "14: absent labels mean all"
    );
    assert!(listed_ids(&sim14.jobs_listing("r", "?labels=x").await).is_empty());
}

#[tokio::test]
async fn quirk_02_null_body_when_no_jobs() {
    for version in ALL_VERSIONS {
        let sim = start(version).await;
        sim.create_repo("r").await;
        for path in [
            "/repos/root/r/actions/runners/jobs",
            "/user/actions/runners/jobs",
            "/admin/runners/jobs",
        ] {
            let answer = sim.get(path).await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.text, "null\n", "{version} {path}");
        }
        if version == V15 {
            let answer = sim.get("/repos/root/r/actions/runners").await;
            assert_eq!(answer.text, "[]\n", "runner lists are [] when empty");
        }
    }
}

#[tokio::test]
async fn quirk_03_running_jobs_listed_too() {
    let sim = start(V14).await;
    sim.repo_with_jobs("r", &[("a", &["x"]), ("b", &["x"])])
        .await;
    let runner = sim.register("r", &["x"], false).await;
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    let listing = sim.jobs_listing("r", "?labels=x").await.json();
    let statuses: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.contains(&"running") && statuses.contains(&"waiting"));
    let running = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["status"] == "running")
        .unwrap();
    assert_eq!(running["task_id"], task.id);
}

#[tokio::test]
async fn quirk_04_no_pagination_id_desc() {
    let sim = start(V15).await;
    let jobs: Vec<(String, Vec<&str>)> = (0..60).map(|i| (format!("j{i}"), vec!["x"])).collect();
    let refs: Vec<(&str, &[&str])> = jobs
        .iter()
        .map(|(n, l)| (n.as_str(), l.as_slice()))
        .collect();
    sim.repo_with_jobs("r", &refs).await;
    let ids = listed_ids(&sim.jobs_listing("r", "?labels=x&limit=10&page=2").await);
    assert_eq!(
        ids.len(),
        60,
        "page/limit are ignored: everything in one body"
    );
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "id DESC");
}

#[tokio::test]
async fn quirk_05_waiting_but_unpickable_listed() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("nobody", &["no-runner-has-this"])])
        .await;
    let listing = sim.jobs_listing("r", "").await.json();
    assert_eq!(listing[0]["status"], "waiting");
    // Concurrency: the second job of the group stays waiting and is not picked (14+).
    sim.create_repo("c").await;
    let yaml = "on: push\njobs:\n  one:\n    runs-on: x\n    concurrency: g\n    steps: [{run: 'true'}]\n  two:\n    runs-on: x\n    concurrency: g\n    steps: [{run: 'true'}]\n";
    sim.commit("c", ".forgejo/workflows/c.yml", yaml).await;
    let runner = sim.register("c", &["x"], false).await;
    assert!(sim.fetch(&runner).await.unwrap().task.is_some());
    let second = sim
        .call::<_, pb::FetchTaskResponse>(
            p::FETCH_TASK,
            Some(&runner),
            &pb::FetchTaskRequest {
                tasks_version: 0,
                task_capacity: None,
            },
        )
        .await
        .unwrap();
    assert!(second.task.is_none(), "the group is busy");
    let listing = sim.jobs_listing("c", "?labels=x").await.json();
    assert!(listing
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["status"] == "waiting"));
}

#[tokio::test]
async fn quirk_06_label_names_exact_untrimmed() {
    let sim = start(V14).await;
    sim.repo_with_jobs("r", &[("a", &["b"]), ("c", &["Linux"])])
        .await;
    assert!(
        listed_ids(&sim.jobs_listing("r", "?labels=a,%20b").await).is_empty(),
        "\" b\" is not \"b\""
    );
    assert_eq!(
        listed_ids(&sim.jobs_listing("r", "?labels=a,b").await).len(),
        1
    );
    assert!(
        listed_ids(&sim.jobs_listing("r", "?labels=linux").await).is_empty(),
        "case-sensitive"
    );
    // The runner matcher uses the same rule.
    let runner = sim.register("r", &[" b", "linux"], false).await;
    assert!(sim.fetch(&runner).await.unwrap().task.is_none());
}

#[tokio::test]
async fn quirk_07_no_job_runner_binding_before_f15() {
    for version in [V13, V14] {
        let sim = start(version).await;
        sim.repo_with_jobs("r", &[("first", &["x"]), ("second", &["x"])])
            .await;
        let jobs = sim.sim_jobs().await;
        let (first, second) = (
            jobs[0]["id"].as_i64().unwrap(),
            jobs[1]["id"].as_i64().unwrap(),
        );
        // A runner started "for" the second job takes the oldest matching one.
        let runner = sim.register("r", &["x"], false).await;
        let task = sim.fetch(&runner).await.unwrap().task.unwrap();
        assert_eq!(job_of_task(&sim, task.id).await["id"], first);
        assert_ne!(first, second);
    }
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("first", &["x"]), ("second", &["x"])])
        .await;
    let second = sim.sim_jobs().await[1].clone();
    let runner = sim.register("r", &["x"], false).await;
    let request = pb::FetchSingleTaskRequest {
        tasks_version: 0,
        handle: Some(second["handle"].as_str().unwrap().into()),
    };
    let response: pb::FetchSingleTaskResponse = sim
        .call(p::FETCH_SINGLE_TASK, Some(&runner), &request)
        .await
        .unwrap();
    assert_eq!(
        job_of_task(&sim, response.task.unwrap().id).await["id"],
        second["id"],
        "15: the handle binds"
    );
}

#[tokio::test]
async fn quirk_08_no_runners_api_in_13_14() {
    for version in [V13, V14] {
        let sim = start(version).await;
        sim.create_repo("r").await;
        for path in [
            "/repos/root/r/actions/runners",
            "/user/actions/runners",
            "/admin/actions/runners",
            "/repos/root/r/actions/runners/1",
        ] {
            let answer = sim.get(path).await;
            assert_eq!(answer.status, 404, "{version} GET {path}");
            assert!(answer.json()["message"].is_string());
        }
        let answer = sim
            .post("/repos/root/r/actions/runners", json!({"name": "x"}))
            .await;
        assert_eq!(answer.status, 404);
    }
    let sim = start(V15).await;
    sim.create_repo("r").await;
    assert_eq!(sim.get("/repos/root/r/actions/runners").await.status, 200);
}

#[tokio::test]
async fn quirk_09_offline_runner_cleanup_disabled_by_default() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let repo_runner = sim
        .post("/repos/root/r/actions/runners", json!({"name": "repo"}))
        .await
        .json();
    let global_runner = sim
        .post("/admin/actions/runners", json!({"name": "global"}))
        .await
        .json();
    sim.advance(2.0 * 86_400.0).await;
    assert_eq!(
        sim.run_cron("cleanup_offline_runners").await,
        0,
        "disabled by default"
    );
    let enable = sim
        .control(
            Method::PUT,
            "/config/cleanup_offline_runners",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(enable.json()["global_scope_only"], true);
    assert_eq!(
        sim.run_cron("cleanup_offline_runners").await,
        1,
        "global scope only"
    );
    let runners = sim.control(Method::GET, "/runners", None).await.json();
    let deleted = |id: &serde_json::Value| {
        runners
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == *id)
            .unwrap()["deleted"]
            .clone()
    };
    assert_eq!(deleted(&global_runner["id"]), true);
    assert_eq!(deleted(&repo_runner["id"]), false);
    sim.control(
        Method::PUT,
        "/config/cleanup_offline_runners",
        Some(json!({"enabled": true, "global_scope_only": false})),
    )
    .await;
    assert_eq!(sim.run_cron("cleanup_offline_runners").await, 1);
}

#[tokio::test]
async fn quirk_10_registration_token_reuse() {
    let sim = start(V13).await;
    sim.create_repo("r").await;
    let first = sim.registration_token("r").await;
    assert_eq!(
        sim.registration_token("r").await,
        first,
        "GET returns the same active token"
    );
    // A read-only token can create one.
    let ro = sim
        .http
        .post(format!("{}/api/v1/users/root/tokens", sim.url))
        .basic_auth(ADMIN, Some(PASSWORD))
        .json(&json!({"name": "ro", "scopes": ["read:organization"]}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["sha1"]
        .as_str()
        .unwrap()
        .to_owned();
    sim.post("/orgs", json!({"username": "org"})).await;
    let org_token = sim
        .api_as(
            Method::GET,
            "/orgs/org/actions/runners/registration-token",
            None,
            Some(&ro),
        )
        .await;
    assert_eq!(org_token.status, 200, "{}", org_token.text);
    // Reusable for many registrations, until a new one invalidates it.
    sim.register("r", &["x"], false).await;
    sim.register("r", &["x"], false).await;
    let reset = sim
        .control(
            Method::POST,
            "/registration-token/reset",
            Some(json!({"owner": "root", "repo": "r"})),
        )
        .await;
    let second = reset.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let request = pb::RegisterRequest {
        name: "n".into(),
        token: first,
        ..Default::default()
    };
    let err = sim
        .call::<_, pb::RegisterResponse>(p::REGISTER, None, &request)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(
        err.message,
        "runner registration token has been invalidated, please use the latest one"
    );
    assert_eq!(sim.registration_token("r").await, second);
}

#[tokio::test]
async fn quirk_11_register_ephemeral_against_13_14_creates_plain_runner() {
    for version in [V13, V14] {
        let sim = start(version).await;
        sim.create_repo("r").await;
        let runner = sim.register("r", &["x"], true).await;
        assert!(
            !runner.ephemeral,
            "{version}: the answer says not ephemeral"
        );
        let runners = sim.control(Method::GET, "/runners", None).await.json();
        assert_eq!(runners[0]["ephemeral"], false);
        assert_eq!(runners[0]["deleted"], false, "the stale runner stays");
    }
    let sim = start(V15).await;
    sim.create_repo("r").await;
    assert!(sim.register("r", &["x"], true).await.ephemeral);
}

#[tokio::test]
async fn quirk_12_no_task_is_an_empty_success() {
    // The runner's exit code when no task comes depends on its version; the server's part is
    // a successful FetchTask without a task, in every version.
    for version in ALL_VERSIONS {
        let sim = start(version).await;
        sim.create_repo("r").await;
        let runner = sim.register("r", &["x"], false).await;
        let response = sim.fetch(&runner).await.expect("FetchTask succeeds");
        assert!(response.task.is_none());
        assert!(response.additional_tasks.is_empty());
        assert!(response.tasks_version >= 1);
    }
}

#[tokio::test]
async fn quirk_13_single_fetch_after_job_taken_leaves_runner() {
    let sim = start(V14).await;
    sim.repo_with_jobs("r", &[("only", &["x"])]).await;
    let intended = sim.register("r", &["x"], false).await;
    let other = sim.register("r", &["x"], false).await;
    assert!(
        sim.fetch(&other).await.unwrap().task.is_some(),
        "another runner takes the job first"
    );
    assert!(sim.fetch(&intended).await.unwrap().task.is_none());
    let runners = sim.control(Method::GET, "/runners", None).await.json();
    let left = runners
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == intended.id)
        .unwrap();
    assert_eq!(left["deleted"], false, "the registered runner remains");
}

#[tokio::test]
async fn quirk_14_handle_against_13_14_is_unimplemented() {
    for version in [V13, V14] {
        let sim = start(version).await;
        sim.repo_with_jobs("r", &[("a", &["x"])]).await;
        let runner = sim.register("r", &["x"], false).await;
        let request = pb::FetchSingleTaskRequest {
            tasks_version: 0,
            handle: Some("h".into()),
        };
        let err = sim
            .call::<_, pb::FetchSingleTaskResponse>(p::FETCH_SINGLE_TASK, Some(&runner), &request)
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Unimplemented, "{version}");
        // Looping on it never assigns anything.
        let again = sim
            .call::<_, pb::FetchSingleTaskResponse>(p::FETCH_SINGLE_TASK, Some(&runner), &request)
            .await;
        assert!(again.is_err());
        assert_eq!(sim.sim_jobs().await[0]["status"], "waiting");
    }
}

#[tokio::test]
async fn quirk_15_api_created_runners_have_no_labels() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let created = sim
        .post(
            "/repos/root/r/actions/runners",
            json!({"name": "api", "ephemeral": true}),
        )
        .await;
    assert_eq!(created.status, 201);
    let body = created.json();
    let id = body["id"].as_i64().unwrap();
    let runner = sim
        .get(&format!("/repos/root/r/actions/runners/{id}"))
        .await
        .json();
    assert_eq!(runner["labels"], serde_json::Value::Null);
    assert_eq!(runner["version"], "");
    let handle = Runner {
        id,
        uuid: body["uuid"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
        ephemeral: true,
    };
    assert!(
        sim.fetch(&handle).await.unwrap().task.is_none(),
        "no labels, no job"
    );
    sim.declare(&handle, &["x"]).await;
    let runner = sim
        .get(&format!("/repos/root/r/actions/runners/{id}"))
        .await
        .json();
    assert_eq!(runner["labels"], json!(["x"]));
    assert_eq!(runner["version"], "v12.8.2");
}

#[tokio::test]
async fn quirk_16_ephemeral_cancel_deletes_runner_first() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let runner = sim.register("r", &["x"], true).await;
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    let job = job_of_task(&sim, task.id).await;
    let cancel = sim
        .control(Method::POST, &format!("/jobs/{}/cancel", job["id"]), None)
        .await;
    assert_eq!(cancel.status, 200);
    let err = sim.update_task(&runner, task.id, 0).await.unwrap_err();
    assert_eq!(err.code, Code::Unauthenticated);
    assert_eq!(err.message, "unregistered runner");
    assert!(sim
        .update_log(&runner, task.id, 0, &["x"], true)
        .await
        .is_err());
    assert_eq!(
        sim.sim_job(job["id"].as_i64().unwrap()).await["status"],
        "cancelled"
    );
}

#[tokio::test]
async fn quirk_17_admin_runner_list_default_global_only() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    sim.post(
        "/repos/root/r/actions/runners",
        json!({"name": "repo-level"}),
    )
    .await;
    sim.post("/admin/actions/runners", json!({"name": "global"}))
        .await;
    let default = sim.get("/admin/actions/runners").await.json();
    let names: Vec<&str> = default
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["global"]);
    let visible = sim.get("/admin/actions/runners?visible=true").await;
    assert_eq!(visible.json().as_array().unwrap().len(), 2);
    assert_eq!(visible.headers["x-total-count"], "2");
}

#[tokio::test]
async fn quirk_18_register_runner_errors_answer_once() {
    // F15 forgets a `return` after a failed create; the observable part is one error answer.
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let answer = sim
        .post(
            "/repos/root/r/actions/runners",
            json!({"description": "no name"}),
        )
        .await;
    assert_eq!(answer.status, 422);
    assert!(answer.json()["message"].as_str().unwrap().contains("Name"));
    assert_eq!(
        sim.control(Method::GET, "/runners", None).await.text,
        "[]\n"
    );
    let missing = sim.get("/repos/root/r/actions/runners/not-a-number").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn quirk_19_additional_tasks_never_without_task() {
    // 14.0.0/14.0.1 could send additional_tasks without task; the simulated 14.0.5 cannot.
    let sim = start(V14).await;
    sim.repo_with_jobs("r", &[("a", &["x"]), ("b", &["x"]), ("c", &["x"])])
        .await;
    let runner = sim.register("r", &["x"], false).await;
    let request = pb::FetchTaskRequest {
        tasks_version: 0,
        task_capacity: Some(5),
    };
    let response: pb::FetchTaskResponse = sim
        .call(p::FETCH_TASK, Some(&runner), &request)
        .await
        .unwrap();
    assert!(response.task.is_some());
    assert_eq!(response.additional_tasks.len(), 2);
    let empty: pb::FetchTaskResponse = sim
        .call(p::FETCH_TASK, Some(&runner), &request)
        .await
        .unwrap();
    assert!(empty.task.is_none() && empty.additional_tasks.is_empty());
}

#[tokio::test]
async fn quirk_20_runner_status_thresholds() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let runner = sim.register("r", &["x"], false).await;
    async fn status(sim: &Sim, id: i64) -> String {
        let url = format!("/repos/root/r/actions/runners/{id}");
        sim.get(&url).await.json()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }
    let status = |sim| status(sim, runner.id);
    assert_eq!(
        status(&sim).await,
        "offline",
        "registered but never called in"
    );
    let task = sim.fetch(&runner).await.unwrap().task.unwrap();
    assert_eq!(status(&sim).await, "idle", "a poll is online, not active");
    sim.update_task(&runner, task.id, 0).await.unwrap();
    assert_eq!(status(&sim).await, "active");
    sim.advance(11.0).await;
    assert_eq!(status(&sim).await, "idle");
    sim.advance(50.0).await;
    assert_eq!(status(&sim).await, "offline");
}

#[tokio::test]
async fn quirk_21_zombie_detection_needs_heartbeats() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("beating", &["x"]), ("silent", &["x"])])
        .await;
    let runner = sim.register("r", &["x"], false).await;
    let request = pb::FetchTaskRequest {
        tasks_version: 0,
        task_capacity: Some(2),
    };
    let response: pb::FetchTaskResponse = sim
        .call(p::FETCH_TASK, Some(&runner), &request)
        .await
        .unwrap();
    let beating = response.task.unwrap().id;
    let silent = response.additional_tasks[0].id;
    for _ in 0..3 {
        sim.advance(5.0 * 60.0).await;
        sim.update_task(&runner, beating, 0).await.unwrap();
    }
    assert_eq!(sim.run_cron("stop_zombie_tasks").await, 1);
    assert_eq!(job_of_task(&sim, silent).await["status"], "failure");
    assert_eq!(job_of_task(&sim, beating).await["status"], "running");
    let echoed = sim.update_task(&runner, silent, 0).await.unwrap();
    assert_eq!(
        echoed.state.unwrap().result,
        pb::Result::Failure as i32,
        "the runner learns the failure"
    );
}

#[tokio::test]
async fn quirk_22_tasks_version_short_circuit() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let runner = sim.register("r", &["x"], false).await;
    // A runner that matches nothing learns the scope's latest version without picking.
    let observer = sim.register("r", &["nothing"], false).await;
    let latest = sim.fetch(&observer).await.unwrap().tasks_version;
    let cached = pb::FetchTaskRequest {
        tasks_version: latest,
        task_capacity: None,
    };
    let short: pb::FetchTaskResponse = sim
        .call(p::FETCH_TASK, Some(&runner), &cached)
        .await
        .unwrap();
    assert!(
        short.task.is_none(),
        "tasks_version == latest never assigns, even with a job waiting"
    );
    assert_eq!(short.tasks_version, latest);
    let fresh = sim.fetch(&runner).await.unwrap();
    assert!(fresh.task.is_some(), "one-job sends 0 and gets the job");
    // A new run bumps the version, so a daemon with the old cache asks again.
    sim.commit(
        "r",
        ".forgejo/workflows/b.yml",
        "on: push\njobs:\n  b:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    )
    .await;
    let again: pb::FetchTaskResponse = sim
        .call(p::FETCH_TASK, Some(&runner), &cached)
        .await
        .unwrap();
    assert!(again.tasks_version > latest);
    assert!(again.task.is_some());
    let _ = Codec::Proto;
}
