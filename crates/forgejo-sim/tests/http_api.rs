//! `/api/v1` behaviour per version: conventions, tokens, scopes, repos, registration tokens,
//! jobs and (15) runners.

mod common;

use common::*;
use forgejo_sim::ForgejoVersion::{V13, V14, V15};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn version_string_and_json_conventions() {
    for (version, prefix) in [(V13, "13.0."), (V14, "14.0."), (V15, "15.0.")] {
        let sim = start(version).await;
        let answer = sim.api_as(Method::GET, "/version", None, None).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.headers["content-type"],
            "application/json;charset=utf-8"
        );
        assert!(
            answer.text.ends_with("}\n"),
            "Go's Encoder adds a newline: {:?}",
            answer.text
        );
        assert!(answer.json()["version"]
            .as_str()
            .unwrap()
            .starts_with(prefix));
    }
}

#[tokio::test]
async fn jobs_json_fields_per_version() {
    for version in ALL_VERSIONS {
        let sim = start(version).await;
        sim.repo_with_jobs("r", &[("build", &["x"])]).await;
        let listing = sim.jobs_listing("r", "?labels=x").await.json();
        let job = listing[0].as_object().unwrap();
        let mut keys: Vec<&str> = job.keys().map(String::as_str).collect();
        keys.sort();
        let mut expected = vec![
            "id", "name", "needs", "owner_id", "repo_id", "runs_on", "status", "task_id",
        ];
        if version == V15 {
            expected.extend(["attempt", "handle"]);
            expected.sort();
            assert_eq!(job["attempt"], 1);
            assert_eq!(job["handle"].as_str().unwrap().len(), 36);
        }
        assert_eq!(keys, expected, "{version}");
        assert_eq!(job["needs"], serde_json::Value::Null);
        assert_eq!(job["task_id"], 0);
    }
}

#[tokio::test]
async fn jobs_in_every_scope() {
    let sim = start(V15).await;
    sim.post("/orgs", json!({"username": "acme"})).await;
    let repo = sim.post("/orgs/acme/repos", json!({"name": "app"})).await;
    assert_eq!(repo.status, 201, "{}", repo.text);
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let commit = sim
        .post(
            "/repos/acme/app/contents/.forgejo/workflows/a.yml",
            json!({"content": b64}),
        )
        .await;
    assert_eq!(commit.status, 201);
    sim.repo_with_jobs("mine", &[("b", &["x"])]).await;
    assert_eq!(
        listed_ids(&sim.get("/orgs/acme/actions/runners/jobs").await).len(),
        1
    );
    assert_eq!(
        listed_ids(&sim.get("/user/actions/runners/jobs").await).len(),
        1,
        "user scope = the doer's repos"
    );
    assert_eq!(listed_ids(&sim.get("/admin/runners/jobs").await).len(), 2);
    assert_eq!(
        listed_ids(&sim.get("/admin/actions/runners/jobs").await).len(),
        2,
        "15 path"
    );
    assert_eq!(
        sim.get("/repos/acme/nope/actions/runners/jobs")
            .await
            .status,
        404
    );
    assert_eq!(sim.get("/orgs/nope/actions/runners/jobs").await.status, 404);
    let sim13 = start(V13).await;
    assert_eq!(
        sim13.get("/admin/actions/runners/jobs").await.status,
        404,
        "no /admin/actions in 13"
    );
}

#[tokio::test]
async fn token_creation_needs_basic_auth() {
    let sim = start(V14).await;
    let with_token = sim
        .post(
            "/users/root/tokens",
            json!({"name": "x", "scopes": ["all"]}),
        )
        .await;
    assert_eq!(with_token.status, 401);
    assert_eq!(with_token.json()["message"], "auth method not allowed");
    let basic = |body: serde_json::Value| {
        sim.http
            .post(format!("{}/api/v1/users/root/tokens", sim.url))
            .basic_auth(ADMIN, Some(PASSWORD))
            .json(&body)
            .send()
    };
    let missing = basic(json!({"scopes": ["all"]})).await.unwrap();
    assert_eq!(missing.status(), 422);
    let no_scope = basic(json!({"name": "a"})).await.unwrap();
    assert_eq!(no_scope.status(), 400);
    assert_eq!(
        no_scope.json::<serde_json::Value>().await.unwrap()["message"],
        "access token must have a scope"
    );
    let created = basic(json!({"name": "a", "scopes": ["read:repository"]}))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = created.json().await.unwrap();
    let sha1 = body["sha1"].as_str().unwrap();
    assert_eq!(sha1.len(), 40);
    assert_eq!(body["token_last_eight"], &sha1[32..]);
    assert!(
        body.get("repositories").is_none(),
        "14 has no fine-grained tokens"
    );
    let duplicate = basic(json!({"name": "a", "scopes": ["all"]}))
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 400);
    let wrong = sim
        .http
        .get(format!("{}/api/v1/user", sim.url))
        .basic_auth(ADMIN, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let list = sim.get("/users/root/tokens").await.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["sha1"], "", "secrets are only shown once");
}

#[tokio::test]
async fn token_scopes_per_route_group() {
    let sim = start(V15).await;
    sim.repo_with_jobs("r", &[("a", &["x"])]).await;
    let make = |name: &'static str, scopes: serde_json::Value| {
        let sim = &sim;
        async move {
            let r = sim
                .http
                .post(format!("{}/api/v1/users/root/tokens", sim.url))
                .basic_auth(ADMIN, Some(PASSWORD))
                .json(&json!({"name": name, "scopes": scopes}))
                .send()
                .await
                .unwrap();
            r.json::<serde_json::Value>().await.unwrap()["sha1"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let read_repo = make("rr", json!(["read:repository"])).await;
    let jobs = sim
        .api_as(
            Method::GET,
            "/repos/root/r/actions/runners/jobs",
            None,
            Some(&read_repo),
        )
        .await;
    assert_eq!(jobs.status, 200);
    let create = sim
        .api_as(
            Method::POST,
            "/repos/root/r/actions/runners",
            Some(json!({"name": "n"})),
            Some(&read_repo),
        )
        .await;
    assert_eq!(create.status, 403);
    assert_eq!(
        create.json()["message"],
        "token does not have at least one of required scope(s): [write:repository]"
    );
    assert!(create.json()["url"]
        .as_str()
        .unwrap()
        .ends_with("/api/swagger"));
    let admin = sim
        .api_as(Method::GET, "/admin/runners/jobs", None, Some(&read_repo))
        .await;
    assert_eq!(admin.status, 403);
    let user = sim
        .api_as(
            Method::GET,
            "/user/actions/runners/jobs",
            None,
            Some(&read_repo),
        )
        .await;
    assert_eq!(user.status, 403);
    let anonymous = sim
        .api_as(
            Method::GET,
            "/repos/root/r/actions/runners/jobs",
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["message"], "token is required");
    let bogus = sim
        .api_as(
            Method::GET,
            "/repos/root/r/actions/runners/jobs",
            None,
            Some("0000"),
        )
        .await;
    assert_eq!(bogus.status, 401);
}

#[tokio::test]
async fn owner_and_admin_checks() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let user = sim
        .post(
            "/admin/users",
            json!({"username": "bob", "password": "bobpass12", "email": "bob@example.com"}),
        )
        .await;
    assert_eq!(user.status, 201, "{}", user.text);
    let bob = sim
        .http
        .post(format!("{}/api/v1/users/bob/tokens", sim.url))
        .basic_auth("bob", Some("bobpass12"))
        .json(&json!({"name": "t", "scopes": ["all"]}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["sha1"]
        .as_str()
        .unwrap()
        .to_owned();
    let not_owner = sim
        .api_as(
            Method::GET,
            "/repos/root/r/actions/runners/jobs",
            None,
            Some(&bob),
        )
        .await;
    assert_eq!(not_owner.status, 403);
    let not_admin = sim
        .api_as(
            Method::GET,
            "/admin/runners/registration-token",
            None,
            Some(&bob),
        )
        .await;
    assert_eq!(not_admin.status, 403);
    let own = sim
        .api_as(
            Method::GET,
            "/user/actions/runners/registration-token",
            None,
            Some(&bob),
        )
        .await;
    assert_eq!(own.status, 200);
    let other_tokens = sim
        .api_as(Method::GET, "/users/root/tokens", None, Some(&bob))
        .await;
    assert_eq!(other_tokens.status, 403);
}

#[tokio::test]
async fn registration_tokens_per_scope_are_distinct() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    sim.post("/orgs", json!({"username": "o"})).await;
    let mut tokens = vec![
        sim.registration_token("r").await,
        sim.get("/orgs/o/actions/runners/registration-token")
            .await
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned(),
        sim.get("/user/actions/runners/registration-token")
            .await
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned(),
        sim.get("/admin/runners/registration-token").await.json()["token"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    assert_eq!(
        sim.get("/admin/actions/runners/registration-token")
            .await
            .json()["token"],
        tokens[3]
    );
    assert!(tokens.iter().all(|t| t.len() == 43), "F15 token length");
    tokens.dedup();
    assert_eq!(tokens.len(), 4);
}

#[tokio::test]
async fn runners_list_paging_and_links() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    for i in 0..5 {
        let answer = sim
            .post(
                "/repos/root/r/actions/runners",
                json!({"name": format!("r{i}")}),
            )
            .await;
        assert_eq!(answer.status, 201);
        assert_eq!(
            answer.json().as_object().unwrap().len(),
            3,
            "{{id, uuid, token}}"
        );
    }
    let page = sim
        .get("/repos/root/r/actions/runners?limit=2&page=2")
        .await;
    assert_eq!(page.json().as_array().unwrap().len(), 2);
    assert_eq!(page.headers["x-total-count"], "5");
    let link = page.headers["link"].to_str().unwrap();
    assert!(link.contains("page=3>; rel=\"next\""), "{link}");
    assert!(
        link.contains("rel=\"last\"")
            && link.contains("rel=\"prev\"")
            && link.contains("rel=\"first\"")
    );
    let runner = &page.json()[0];
    for key in [
        "id",
        "uuid",
        "owner_id",
        "repo_id",
        "name",
        "status",
        "version",
        "labels",
        "description",
        "ephemeral",
    ] {
        assert!(runner.get(key).is_some(), "ActionRunner.{key}");
    }
    let clamp = sim.get("/repos/root/r/actions/runners?limit=500").await;
    assert_eq!(clamp.json().as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn runner_visibility_and_delete_permissions() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    let owner_level = sim
        .post("/user/actions/runners", json!({"name": "user-level"}))
        .await
        .json();
    let global = sim
        .post("/admin/actions/runners", json!({"name": "global"}))
        .await
        .json();
    let list = sim
        .get("/repos/root/r/actions/runners?visible=true")
        .await
        .json();
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "repo sees owner-level and global runners"
    );
    assert_eq!(sim.get("/repos/root/r/actions/runners").await.text, "[]\n");
    let path = format!("/repos/root/r/actions/runners/{}", global["id"]);
    assert_eq!(sim.get(&path).await.status, 200, "visible from the repo");
    let delete = sim.api(Method::DELETE, &path, None).await;
    assert_eq!(delete.status, 404, "not owned by the repo");
    assert_eq!(
        delete.json()["message"],
        "No permission to delete this runner"
    );
    let delete = sim
        .api(
            Method::DELETE,
            &format!("/user/actions/runners/{}", owner_level["id"]),
            None,
        )
        .await;
    assert_eq!(delete.status, 204);
    let delete = sim
        .api(
            Method::DELETE,
            &format!("/admin/actions/runners/{}", global["id"]),
            None,
        )
        .await;
    assert_eq!(delete.status, 204);
    assert_eq!(sim.get(&path).await.status, 404);
}

#[tokio::test]
async fn invalid_workflow_is_recorded_without_jobs() {
    let sim = start(V14).await;
    sim.create_repo("r").await;
    sim.commit(
        "r",
        ".forgejo/workflows/bad.yml",
        "stages: [build]\nbuild:\n  script: make\n",
    )
    .await;
    // An empty `content` fails binding like in Forgejo; a blank file is the empty workflow.
    sim.commit("r", ".forgejo/workflows/empty.yml", "\n").await;
    sim.commit("r", ".forgejo/workflows/broken.yml", "on: push\njobs: [\n")
        .await;
    assert!(sim.sim_jobs().await.is_empty());
    let dispatch = sim
        .control(
            Method::POST,
            "/dispatch",
            Some(json!({"owner": "root", "repo": "r", "workflow": "bad.yml"})),
        )
        .await;
    assert_eq!(dispatch.status, 422);
    let repo = sim.get("/repos/root/r").await;
    assert_eq!(repo.status, 200);
    assert_eq!(repo.json()["full_name"], "root/r");
}

#[tokio::test]
async fn push_reruns_every_push_workflow_and_dispatch_starts_one() {
    let sim = start(V15).await;
    sim.create_repo("r").await;
    sim.commit(
        "r",
        ".forgejo/workflows/a.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    )
    .await;
    sim.commit("r", "README.md", "hello").await;
    assert_eq!(
        sim.sim_jobs().await.len(),
        2,
        "each push starts the push workflows"
    );
    sim.commit(
        "r",
        ".forgejo/workflows/d.yml",
        "on: workflow_dispatch\njobs:\n  d:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    )
    .await;
    assert_eq!(sim.sim_jobs().await.len(), 3);
    let dispatch = sim
        .control(
            Method::POST,
            "/dispatch",
            Some(json!({"owner": "root", "repo": "r", "workflow": "d.yml"})),
        )
        .await;
    assert_eq!(dispatch.status, 201, "{}", dispatch.text);
    let jobs = sim.sim_jobs().await;
    assert_eq!(jobs.len(), 4);
    assert_eq!(jobs[3]["name"], "d");
}
