//! Every JSON body the simulator returns on the `/api/v1` endpoints of issue 2 validates against
//! Forgejo's own swagger file of the simulated version (`../shared/forgejo-api/`, beside the
//! repository; `FORGEJO_API_DIR` overrides). Without those files the check is skipped, saying so.
//!
//! Where the swagger file and the contract disagree, the contract wins and the test says so in
//! its notes: the jobs endpoints answer `null` (swagger: an array), `ActionRunJob.needs`,
//! `ActionRunner.labels` and `AccessToken.repositories` may be `null`, and operations answer
//! statuses their swagger entry does not list (401/403/422 from shared middleware), which are
//! validated against Forgejo's generic responses of that status. The real server also writes
//! `User.username`, which the swagger `User` lacks (a hand-written `MarshalJSON`), and leaves
//! out the `omitempty` fields `Repository.external_tracker`/`external_wiki` when they are empty.

#[path = "support/client_harness.rs"]
mod client_harness;
#[path = "support/swagger.rs"]
mod swagger;

use std::collections::BTreeSet;
use std::path::PathBuf;

use client_harness::{base64_of, start_sim, workspace_root, Auth, Client, Reply, ADMIN_USER};
use forgejo_sim::ForgejoVersion;
use serde_json::{json, Value};
use swagger::{check_headers, Documented, Findings, Policy, Swagger};

const ORG: &str = "conforg";
const REPO: &str = "conf";
const ORG_REPO: &str = "orgrepo";
const LABELS: &str = "l1,l2";

const WORKFLOW: &str = "on: push\njobs:\n  build:\n    runs-on: l1\n    steps:\n      - run: echo hi\n  \
                        test:\n    runs-on: [l1, l2]\n    needs: build\n    steps:\n      - run: echo hi\n  \
                        lint:\n    runs-on: [l2]\n    steps:\n      - run: echo hi\n";

fn api_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FORGEJO_API_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root()
                .join("..")
                .join("shared")
                .join("forgejo-api")
        });
    dir.is_dir().then_some(dir)
}

fn swagger_file(version: ForgejoVersion) -> &'static str {
    match version {
        ForgejoVersion::V13 => "forgejo-13.0.5-swagger.json",
        ForgejoVersion::V14 => "forgejo-14.0.5-swagger.json",
        ForgejoVersion::V15 => "forgejo-15.0.3-swagger.json",
    }
}

/// The `null`s the contract announces, and the shapes it lists field by field.
fn contract_policy() -> Policy {
    Policy::new(
        &[
            "ActionRunJob.needs",
            "ActionRunner.labels",
            "AccessToken.repositories",
        ],
        &[
            "ActionRunJob",
            "ActionRunner",
            "RegisterRunnerResponse",
            "RegistrationToken",
            "AccessToken",
            "APIError",
            "APIForbiddenError",
            "APIUnauthorizedError",
            "APIValidationError",
            "ServerVersion",
            // Checked against Forgejo's source: modules/structs/repo.go (`Repository`) and
            // services/repository/files (the file-creation reply's commit and tree).
            "Repository",
            "CommitMeta",
        ],
    )
    // Forgejo's modules/structs/user.go `User.MarshalJSON` adds `username` (= `login`) for
    // backward compatibility; go-swagger does not see it, so the file lacks it.
    .with_extra_properties(&["User.username"])
    // modules/structs/repo.go: `*ExternalTracker`/`*ExternalWiki` tagged `omitempty`, absent
    // for a repository without an external tracker or wiki.
    .with_omitempty_properties(&["Repository.external_tracker", "Repository.external_wiki"])
}

/// Calls endpoints and validates every answer against the swagger file.
struct Conformance {
    swagger: Swagger,
    client: Client,
    version: ForgejoVersion,
    policy: Policy,
    findings: Findings,
    notes: BTreeSet<String>,
    operations: BTreeSet<String>,
    calls: usize,
}

impl Conformance {
    /// Sends the request, checks the status is `expected`, validates the answer; returns it.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        auth: &Auth,
        body: Option<Value>,
        expected: u16,
    ) -> Reply {
        let reply = self
            .client
            .send(method, &format!("/api/v1{path}"), auth, body.as_ref())
            .await;
        let at = format!("{method} {path} -> {}", reply.status);
        if reply.status != expected {
            self.findings.errors.push(format!(
                "{at}: expected status {expected}; body {}",
                reply.text
            ));
        }
        self.calls += 1;
        self.operations
            .insert(format!("{method} {template} {}", reply.status));
        self.validate(method, template, &reply, &at);
        reply
    }

    fn validate(&mut self, method: &str, template: &str, reply: &Reply, at: &str) {
        let exists = self.swagger.has_operation(method, template);
        if !exists && reply.status != 404 {
            self.findings.errors.push(format!(
                "{at}: {method} {template} is not in the {} swagger file",
                self.version
            ));
            return;
        }
        let Some(lookup) = self.swagger.response(method, template, reply.status) else {
            self.findings.errors.push(format!(
                "{at}: status not documented for {method} {template}"
            ));
            return;
        };
        if exists && !lookup.listed_by_operation {
            self.notes.insert(format!(
                "swagger {}: {method} {template} does not list {}; validated against the generic response",
                self.version, reply.status
            ));
        }
        match lookup.documented {
            Documented::NoBody { headers } => {
                self.findings
                    .extend(check_headers(&headers, &reply.headers, at));
                if reply.text.trim().is_empty() {
                    return;
                }
                if reply.status < 400 {
                    self.findings.errors.push(format!(
                        "{at}: swagger documents no body, got {}",
                        reply.text
                    ));
                    return;
                }
                // Forgejo's ctx.Error always writes an APIError body, even where swagger shows none.
                self.notes.insert(format!(
                    "swagger {}: {method} {template} {} has no schema; the body was checked as APIError",
                    self.version, reply.status
                ));
                let schema = json!({ "$ref": "#/definitions/APIError" });
                self.check_json(&schema, reply, at);
            }
            Documented::Body {
                schema,
                headers,
                response_name,
            } => {
                self.findings
                    .extend(check_headers(&headers, &reply.headers, at));
                if response_name.as_deref() == Some("RunJobList") && reply.text.trim() == "null" {
                    self.notes.insert(format!(
                        "contract over swagger {}: jobs endpoints answer `null` when nothing matches \
                         (swagger RunJobList is an array)",
                        self.version
                    ));
                    return;
                }
                self.check_json(&schema, reply, at);
            }
        }
    }

    fn check_json(&mut self, schema: &Value, reply: &Reply, at: &str) {
        let content_type = reply.header("content-type").unwrap_or_default();
        if !content_type.starts_with("application/json") {
            self.findings
                .errors
                .push(format!("{at}: content-type {content_type:?}, not JSON"));
        }
        match serde_json::from_str::<Value>(&reply.text) {
            Ok(body) => {
                let findings = self.swagger.validate(schema, &body, &self.policy, at);
                self.findings.extend(findings);
            }
            Err(e) => self
                .findings
                .errors
                .push(format!("{at}: body is not JSON ({e}): {}", reply.text)),
        }
    }

    fn report(&self) {
        eprintln!(
            "swagger conformance, Forgejo {}: {} calls, {} distinct (operation, status) pairs",
            self.version,
            self.calls,
            self.operations.len()
        );
        for operation in &self.operations {
            eprintln!("  checked {operation}");
        }
        for note in &self.notes {
            eprintln!("  note: {note}");
        }
        let warnings: BTreeSet<String> = self
            .findings
            .warnings
            .iter()
            .map(|w| strip_place(w))
            .collect();
        for warning in &warnings {
            eprintln!("  warning: {warning}");
        }
        for error in &self.findings.errors {
            eprintln!("  ERROR: {error}");
        }
    }
}

/// `GET /x -> 200.a.b: msg` -> `msg` with the definition name, to de-duplicate warnings.
fn strip_place(warning: &str) -> String {
    warning
        .rsplit_once(": ")
        .map(|(_, m)| m.to_owned())
        .unwrap_or_else(|| warning.to_owned())
}

/// The jobs endpoints of this version: (swagger template, concrete path without query).
fn jobs_endpoints(version: ForgejoVersion) -> Vec<(&'static str, String)> {
    let mut endpoints = vec![
        (
            "/repos/{owner}/{repo}/actions/runners/jobs",
            format!("/repos/{ADMIN_USER}/{REPO}/actions/runners/jobs"),
        ),
        (
            "/orgs/{org}/actions/runners/jobs",
            format!("/orgs/{ORG}/actions/runners/jobs"),
        ),
        (
            "/user/actions/runners/jobs",
            "/user/actions/runners/jobs".to_owned(),
        ),
        ("/admin/runners/jobs", "/admin/runners/jobs".to_owned()),
    ];
    if version == ForgejoVersion::V15 {
        endpoints.push((
            "/admin/actions/runners/jobs",
            "/admin/actions/runners/jobs".to_owned(),
        ));
    }
    endpoints
}

fn registration_token_endpoints(version: ForgejoVersion) -> Vec<(&'static str, String)> {
    let mut endpoints = vec![
        (
            "/repos/{owner}/{repo}/actions/runners/registration-token",
            format!("/repos/{ADMIN_USER}/{REPO}/actions/runners/registration-token"),
        ),
        (
            "/orgs/{org}/actions/runners/registration-token",
            format!("/orgs/{ORG}/actions/runners/registration-token"),
        ),
        (
            "/user/actions/runners/registration-token",
            "/user/actions/runners/registration-token".to_owned(),
        ),
        (
            "/admin/runners/registration-token",
            "/admin/runners/registration-token".to_owned(),
        ),
    ];
    if version == ForgejoVersion::V15 {
        endpoints.push((
            "/admin/actions/runners/registration-token",
            "/admin/actions/runners/registration-token".to_owned(),
        ));
    }
    endpoints
}

/// The runner API scopes: (swagger template prefix, concrete prefix).
fn runner_scopes() -> Vec<(&'static str, String)> {
    vec![
        (
            "/repos/{owner}/{repo}/actions/runners",
            format!("/repos/{ADMIN_USER}/{REPO}/actions/runners"),
        ),
        (
            "/orgs/{org}/actions/runners",
            format!("/orgs/{ORG}/actions/runners"),
        ),
        ("/user/actions/runners", "/user/actions/runners".to_owned()),
        (
            "/admin/actions/runners",
            "/admin/actions/runners".to_owned(),
        ),
    ]
}

async fn tokens(c: &mut Conformance) -> Auth {
    let basic = Auth::admin_basic();
    let tokens = "/users/{username}/tokens";
    let path = format!("/users/{ADMIN_USER}/tokens");
    let scopes = [
        "write:repository",
        "write:organization",
        "write:user",
        "write:admin",
    ];
    let created = c
        .call(
            "POST",
            tokens,
            &path,
            &basic,
            Some(json!({"name": "conformance", "scopes": scopes})),
            201,
        )
        .await;
    let token = Auth::Token(
        created.json()["sha1"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );

    c.call(
        "POST",
        tokens,
        &path,
        &basic,
        Some(json!({"name": "conformance", "scopes": scopes})),
        400,
    )
    .await;
    c.call(
        "POST",
        tokens,
        &path,
        &basic,
        Some(json!({"scopes": scopes})),
        422,
    )
    .await;
    c.call(
        "POST",
        tokens,
        &path,
        &basic,
        Some(json!({"name": "bad-scope", "scopes": ["write:nothing"]})),
        400,
    )
    .await;
    c.call(
        "POST",
        tokens,
        &path,
        &token,
        Some(json!({"name": "via-token", "scopes": scopes})),
        401,
    )
    .await;
    let listed = c.call("GET", tokens, &path, &basic, None, 200).await;
    // ListAccessTokens sets X-Total-Count in every version, although only the 15 swagger file
    // documents it (and the header check above only warns when a documented header is absent).
    let count = listed.json().as_array().map(Vec::len);
    assert_eq!(
        listed
            .header("x-total-count")
            .and_then(|n| n.parse::<usize>().ok()),
        count,
        "GET {path}: X-Total-Count is the number of tokens; body {}",
        listed.text
    );
    assert_eq!(count, Some(1), "GET {path}: one token so far");

    let throwaway = c
        .call(
            "POST",
            tokens,
            &path,
            &basic,
            Some(json!({"name": "throwaway", "scopes": ["read:user"]})),
            201,
        )
        .await;
    let id = throwaway.json()["id"].as_i64().unwrap_or_default();
    let one = "/users/{username}/tokens/{token}";
    c.call("DELETE", one, &format!("{path}/{id}"), &basic, None, 204)
        .await;
    c.call("DELETE", one, &format!("{path}/{id}"), &basic, None, 404)
        .await;
    token
}

async fn repositories(c: &mut Conformance, token: &Auth) {
    c.call("GET", "/version", "/version", &Auth::None, None, 200)
        .await;
    c.call(
        "POST",
        "/user/repos",
        "/user/repos",
        token,
        Some(json!({"name": REPO})),
        201,
    )
    .await;
    c.call(
        "POST",
        "/user/repos",
        "/user/repos",
        token,
        Some(json!({"name": REPO})),
        409,
    )
    .await;
    c.call(
        "GET",
        "/repos/{owner}/{repo}",
        &format!("/repos/{ADMIN_USER}/{REPO}"),
        token,
        None,
        200,
    )
    .await;
    c.call(
        "GET",
        "/repos/{owner}/{repo}",
        &format!("/repos/{ADMIN_USER}/missing"),
        token,
        None,
        404,
    )
    .await;
    c.call(
        "POST",
        "/orgs",
        "/orgs",
        token,
        Some(json!({"username": ORG})),
        201,
    )
    .await;
    c.call(
        "POST",
        "/orgs/{org}/repos",
        &format!("/orgs/{ORG}/repos"),
        token,
        Some(json!({"name": ORG_REPO})),
        201,
    )
    .await;
}

async fn commit_workflow(c: &mut Conformance, token: &Auth, owner: &str, repo: &str) {
    let body = json!({"content": base64_of(WORKFLOW.as_bytes()), "message": "workflow"});
    c.call(
        "POST",
        "/repos/{owner}/{repo}/contents/{filepath}",
        &format!("/repos/{owner}/{repo}/contents/.forgejo/workflows/ci.yml"),
        token,
        Some(body),
        201,
    )
    .await;
}

async fn jobs(c: &mut Conformance, token: &Auth, expect_jobs: bool) {
    for (template, path) in jobs_endpoints(c.version) {
        let reply = c
            .call(
                "GET",
                template,
                &format!("{path}?labels={LABELS}"),
                token,
                None,
                200,
            )
            .await;
        let listed = reply.text.trim() != "null";
        assert_eq!(
            listed, expect_jobs,
            "GET {path}?labels={LABELS}: {}",
            reply.text
        );
        if c.version != ForgejoVersion::V13 {
            let all = c.call("GET", template, &path, token, None, 200).await;
            assert_eq!(
                all.text.trim() != "null",
                expect_jobs,
                "GET {path} (14+: all jobs): {}",
                all.text
            );
        }
    }
}

async fn error_bodies(c: &mut Conformance, weak_token: &Auth) {
    let jobs = format!("/repos/{ADMIN_USER}/{REPO}/actions/runners/jobs?labels={LABELS}");
    c.call(
        "GET",
        "/user/actions/runners/jobs",
        "/user/actions/runners/jobs",
        &Auth::None,
        None,
        401,
    )
    .await;
    c.call(
        "GET",
        "/admin/runners/jobs",
        "/admin/runners/jobs",
        weak_token,
        None,
        403,
    )
    .await;
    c.call(
        "GET",
        "/orgs/{org}/actions/runners/jobs",
        &format!("/orgs/{ORG}/actions/runners/jobs"),
        weak_token,
        None,
        403,
    )
    .await;
    c.call(
        "GET",
        "/repos/{owner}/{repo}/actions/runners/jobs",
        &jobs.replace(REPO, "missing"),
        weak_token,
        None,
        404,
    )
    .await;
    let wrong_password = Auth::Basic {
        user: ADMIN_USER.to_owned(),
        password: "wrong".to_owned(),
    };
    c.call(
        "GET",
        "/repos/{owner}/{repo}/actions/runners/jobs",
        &jobs,
        &wrong_password,
        None,
        401,
    )
    .await;
}

async fn runners_api(c: &mut Conformance, token: &Auth) {
    for (template, path) in runner_scopes() {
        let one = format!("{template}/{{runner_id}}");
        if c.version != ForgejoVersion::V15 {
            // Contract §4.8: no runner list/create/delete API before 15.
            c.call("GET", template, &path, token, None, 404).await;
            c.call(
                "POST",
                template,
                &path,
                token,
                Some(json!({"name": "r"})),
                404,
            )
            .await;
            c.call("GET", &one, &format!("{path}/1"), token, None, 404)
                .await;
            c.call("DELETE", &one, &format!("{path}/1"), token, None, 404)
                .await;
            continue;
        }
        let empty = c.call("GET", template, &path, token, None, 200).await;
        assert_eq!(
            empty.text.trim(),
            "[]",
            "GET {path} with no runner: {}",
            empty.text
        );
        c.call(
            "POST",
            template,
            &path,
            token,
            Some(json!({"description": "no name"})),
            422,
        )
        .await;
        let first = c
            .call(
                "POST",
                template,
                &path,
                token,
                Some(json!({"name": "r1"})),
                201,
            )
            .await;
        c.call(
            "POST",
            template,
            &path,
            token,
            Some(json!({"name": "r2", "ephemeral": true})),
            201,
        )
        .await;
        let id = first.json()["id"].as_i64().unwrap_or_default();

        let page = c
            .call(
                "GET",
                template,
                &format!("{path}?limit=1&page=1"),
                token,
                None,
                200,
            )
            .await;
        assert_eq!(
            page.header("x-total-count").as_deref(),
            Some("2"),
            "GET {path}?limit=1"
        );
        assert!(
            page.header("link").is_some(),
            "GET {path}?limit=1 has a Link header"
        );
        c.call(
            "GET",
            template,
            &format!("{path}?visible=true"),
            token,
            None,
            200,
        )
        .await;
        c.call("GET", &one, &format!("{path}/{id}"), token, None, 200)
            .await;
        c.call("GET", &one, &format!("{path}/999999"), token, None, 404)
            .await;
        c.call("DELETE", &one, &format!("{path}/{id}"), token, None, 204)
            .await;
        c.call("DELETE", &one, &format!("{path}/{id}"), token, None, 404)
            .await;
        c.call("GET", &one, &format!("{path}/{id}"), token, None, 404)
            .await;
    }
}

async fn check_version(version: ForgejoVersion) {
    let Some(dir) = api_dir() else {
        eprintln!(
            "swagger conformance skipped: ../shared/forgejo-api/ not found (set FORGEJO_API_DIR)"
        );
        return;
    };
    let swagger = Swagger::load(&dir.join(swagger_file(version))).expect("swagger file loads");
    let sim = start_sim(version, 1.0).await;
    let mut c = Conformance {
        swagger,
        client: Client::new(sim.url()),
        version,
        policy: contract_policy(),
        findings: Findings::default(),
        notes: BTreeSet::new(),
        operations: BTreeSet::new(),
        calls: 0,
    };

    let token = tokens(&mut c).await;
    repositories(&mut c, &token).await;
    for (template, path) in registration_token_endpoints(version) {
        c.call("GET", template, &path, &token, None, 200).await;
    }
    jobs(&mut c, &token, false).await;
    commit_workflow(&mut c, &token, ADMIN_USER, REPO).await;
    commit_workflow(&mut c, &token, ORG, ORG_REPO).await;
    jobs(&mut c, &token, true).await;

    let weak = c
        .client
        .create_token(
            ADMIN_USER,
            client_harness::ADMIN_PASSWORD,
            "weak",
            &["read:repository"],
        )
        .await;
    error_bodies(&mut c, &Auth::Token(weak)).await;
    runners_api(&mut c, &token).await;

    c.report();
    assert!(
        c.findings.errors.is_empty(),
        "{} swagger/contract mismatches (listed above)",
        c.findings.errors.len()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgejo_13_bodies_match_the_13_swagger_file() {
    check_version(ForgejoVersion::V13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgejo_14_bodies_match_the_14_swagger_file() {
    check_version(ForgejoVersion::V14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgejo_15_bodies_match_the_15_swagger_file() {
    check_version(ForgejoVersion::V15).await;
}
