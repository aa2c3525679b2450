//! The fake API server over HTTP: object shapes, status codes, watch semantics, garbage
//! collection, lease concurrency, faults and the control API (pods driven by hand).

use std::time::Duration;

use fake_kube::{FakeKube, Options};
use serde_json::{json, Value};

struct Api {
    kube: FakeKube,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    async fn start(options: Options) -> Api {
        let token = options.token.clone();
        let kube = FakeKube::start_with("127.0.0.1:0".parse().unwrap(), options)
            .await
            .expect("fake-kube starts");
        let api = Api {
            kube,
            http: reqwest::Client::new(),
            token,
        };
        let (code, _) = api
            .send(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": "ci"}})),
            )
            .await;
        assert_eq!(code, 201);
        api
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(
            method.parse().unwrap(),
            format!("{}{path}", self.kube.url()),
        );
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            let content_type = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let code = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Opens a watch and returns its event reader.
    async fn watch(&self, path: &str) -> Watch {
        let response = self
            .http
            .get(format!("{}{path}", self.kube.url()))
            .send()
            .await
            .expect("watch");
        assert_eq!(response.status().as_u16(), 200);
        Watch {
            response,
            buffer: String::new(),
        }
    }
}

struct Watch {
    response: reqwest::Response,
    buffer: String,
}

impl Watch {
    /// The next event, or `None` when the stream ended or nothing came within 5 s.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=at).collect();
                return Some(serde_json::from_str(line.trim()).expect("one JSON event per line"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "runner", "image": "local/runner:1"}]}
    })
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion is a string")
        .parse()
        .expect("resourceVersion is a number")
}

const PODS: &str = "/api/v1/namespaces/ci/pods";
const SECRETS: &str = "/api/v1/namespaces/ci/secrets";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ci/leases";

#[tokio::test]
async fn create_get_conflict_and_not_found_have_the_api_shapes() {
    let api = Api::start(Options::default()).await;
    let (code, created) = api
        .send("POST", PODS, Some(pod("p1", json!({"a": "b"}))))
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["kind"], "Pod");
    assert_eq!(created["apiVersion"], "v1");
    assert_eq!(created["metadata"]["namespace"], "ci");
    assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(created["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(rv(&created) > 0);
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["spec"]["terminationGracePeriodSeconds"], 30);

    let (code, got) = api.send("GET", &format!("{PODS}/p1"), None).await;
    assert_eq!((code, &got), (200, &created));

    let (code, status) = api.send("POST", PODS, Some(pod("p1", json!({})))).await;
    assert_eq!(code, 409);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "AlreadyExists");
    assert_eq!(status["code"], 409);
    assert_eq!(status["message"], "pods \"p1\" already exists");
    assert_eq!(status["details"], json!({"name": "p1", "kind": "pods"}));

    let (code, status) = api.send("GET", &format!("{PODS}/nope"), None).await;
    assert_eq!(code, 404);
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["message"], "pods \"nope\" not found");

    let (code, status) = api
        .send(
            "POST",
            "/api/v1/namespaces/absent/pods",
            Some(pod("p", json!({}))),
        )
        .await;
    assert_eq!(
        (code, status["message"].as_str()),
        (404, Some("namespaces \"absent\" not found"))
    );

    let (code, status) = api
        .send(
            "POST",
            PODS,
            Some(json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}})),
        )
        .await;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
    assert!(!status["details"]["causes"].as_array().unwrap().is_empty());

    let (code, status) = api
        .send("GET", "/api/v1/namespaces/ci/configmaps", None)
        .await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));

    let (code, generated) = api
        .send("POST", PODS, Some(json!({"metadata": {"generateName": "runner-"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})))
        .await;
    assert_eq!(code, 201);
    let name = generated["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("runner-") && name.len() == "runner-".len() + 5,
        "{name}"
    );
}

#[tokio::test]
async fn lists_filter_by_labels_and_fields_and_page() {
    let api = Api::start(Options::default()).await;
    for (name, labels) in [
        ("a", json!({"app": "runner", "pool": "x"})),
        ("b", json!({"app": "runner", "pool": "y"})),
        ("c", json!({"app": "other"})),
    ] {
        assert_eq!(api.send("POST", PODS, Some(pod(name, labels))).await.0, 201);
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (code, list) = api
        .send("GET", &format!("{PODS}?labelSelector=app%3Drunner"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(names(&list), ["a", "b"]);
    assert!(
        rv(&list) >= 4,
        "list resourceVersion is the store's: {list}"
    );
    assert!(
        list["items"][0].get("kind").is_none(),
        "items carry no kind"
    );
    let (_, list) = api
        .send(
            "GET",
            &format!("{PODS}?labelSelector=app%3Drunner,pool%20notin%20(x)"),
            None,
        )
        .await;
    assert_eq!(names(&list), ["b"]);
    let (_, list) = api
        .send("GET", &format!("{PODS}?labelSelector=pool"), None)
        .await;
    assert_eq!(names(&list), ["a", "b"]);
    let (_, list) = api
        .send(
            "GET",
            &format!("{PODS}?fieldSelector=metadata.name%3Dc"),
            None,
        )
        .await;
    assert_eq!(names(&list), ["c"]);
    let (code, _) = api
        .send("GET", &format!("{PODS}?labelSelector=a%20in%20b"), None)
        .await;
    assert_eq!(code, 400);
    let (_, page) = api.send("GET", &format!("{PODS}?limit=2"), None).await;
    assert_eq!(names(&page), ["a", "b"]);
    assert_eq!(page["metadata"]["remainingItemCount"], 1);
    let token = page["metadata"]["continue"].as_str().unwrap();
    let (_, rest) = api
        .send("GET", &format!("{PODS}?limit=2&continue={token}"), None)
        .await;
    assert_eq!(names(&rest), ["c"]);
    let (_, all) = api.send("GET", "/api/v1/pods", None).await;
    assert_eq!(names(&all).len(), 3);
}

#[tokio::test]
async fn deletes_answer_with_the_object_or_a_status() {
    let api = Api::start(Options::default()).await;
    api.send("POST", PODS, Some(pod("p", json!({})))).await;
    let secret = json!({"metadata": {"name": "s"}, "stringData": {"token": "t0ps3cret"}});
    let (code, created) = api.send("POST", SECRETS, Some(secret)).await;
    assert_eq!(code, 201);
    assert_eq!(created["data"]["token"], "dDBwczNjcmV0");
    assert!(created.get("stringData").is_none());
    assert_eq!(created["type"], "Opaque");

    // A pod that is on no node goes at once; the answer is the pod.
    let (code, deleted) = api.send("DELETE", &format!("{PODS}/p"), None).await;
    assert_eq!((code, deleted["kind"].as_str()), (200, Some("Pod")));
    let (code, status) = api.send("DELETE", &format!("{SECRETS}/s"), None).await;
    assert_eq!(code, 200);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Success");
    assert_eq!(status["details"]["name"], "s");
    assert_eq!(status["details"]["kind"], "secrets");
    let (code, status) = api.send("DELETE", &format!("{SECRETS}/s"), None).await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));

    // Preconditions.
    let (_, created) = api
        .send("POST", SECRETS, Some(json!({"metadata": {"name": "u"}})))
        .await;
    let (code, status) = api
        .send(
            "DELETE",
            &format!("{SECRETS}/u"),
            Some(json!({"preconditions": {"uid": "other"}})),
        )
        .await;
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
    let uid = created["metadata"]["uid"].clone();
    let (code, _) = api
        .send(
            "DELETE",
            &format!("{SECRETS}/u"),
            Some(json!({"preconditions": {"uid": uid}})),
        )
        .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn watches_deliver_changes_in_order_from_a_resource_version() {
    let api = Api::start(Options::default()).await;
    let (_, list) = api.send("GET", PODS, None).await;
    let start = rv(&list);
    let mut watch = api
        .watch(&format!("{PODS}?watch=true&resourceVersion={start}"))
        .await;
    api.send("POST", PODS, Some(pod("w", json!({"a": "1"}))))
        .await;
    api.send(
        "PATCH",
        &format!("{PODS}/w"),
        Some(json!({"metadata": {"labels": {"b": "2"}}})),
    )
    .await;
    api.send(
        "POST",
        SECRETS,
        Some(json!({"metadata": {"name": "unrelated"}})),
    )
    .await;
    api.send("DELETE", &format!("{PODS}/w"), None).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = watch.next().await.expect("an event");
        seen.push((
            event["type"].as_str().unwrap().to_string(),
            rv(&event["object"]),
        ));
        assert_eq!(event["object"]["kind"], "Pod");
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "versions increase: {seen:?}"
    );
    assert!(seen[0].1 > start);

    // Resuming from the first event replays the rest, in order.
    let mut resumed = api
        .watch(&format!("{PODS}?watch=1&resourceVersion={}", seen[0].1))
        .await;
    assert_eq!(resumed.next().await.unwrap()["type"], "MODIFIED");
    assert_eq!(resumed.next().await.unwrap()["type"], "DELETED");

    // Without a version: the current objects as ADDED first.
    api.send("POST", PODS, Some(pod("x", json!({})))).await;
    let mut fresh = api.watch(&format!("{PODS}?watch=true")).await;
    let event = fresh.next().await.unwrap();
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("x"))
    );
}

#[tokio::test]
async fn a_selector_watch_sees_objects_enter_and_leave_its_selection() {
    let api = Api::start(Options::default()).await;
    api.send("POST", PODS, Some(pod("s", json!({})))).await;
    let (_, list) = api.send("GET", PODS, None).await;
    let mut watch = api
        .watch(&format!(
            "{PODS}?watch=true&labelSelector=role%3Drunner&resourceVersion={}",
            rv(&list)
        ))
        .await;
    api.send(
        "PATCH",
        &format!("{PODS}/s"),
        Some(json!({"metadata": {"labels": {"role": "runner"}}})),
    )
    .await;
    api.send(
        "PATCH",
        &format!("{PODS}/s"),
        Some(json!({"metadata": {"labels": {"role": null}}})),
    )
    .await;
    assert_eq!(watch.next().await.unwrap()["type"], "ADDED");
    assert_eq!(watch.next().await.unwrap()["type"], "DELETED");
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_expired() {
    let api = Api::start(Options {
        history_limit: 5,
        ..Options::default()
    })
    .await;
    for i in 0..10 {
        api.send(
            "POST",
            SECRETS,
            Some(json!({"metadata": {"name": format!("s{i}")}})),
        )
        .await;
    }
    let mut watch = api
        .watch(&format!("{SECRETS}?watch=true&resourceVersion=2"))
        .await;
    let event = watch.next().await.expect("an ERROR event");
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["kind"], "Status");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
    assert!(event["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with("too old resource version: 2"));
    assert!(
        watch.next().await.is_none(),
        "the stream ends after the error"
    );

    // A recent version still works; /_fake/compact makes it too old as well.
    let (_, list) = api.send("GET", SECRETS, None).await;
    let recent = rv(&list);
    let mut ok = api
        .watch(&format!(
            "{SECRETS}?watch=true&resourceVersion={}",
            recent - 1
        ))
        .await;
    assert_eq!(ok.next().await.unwrap()["type"], "ADDED");
    api.send("POST", "/_fake/compact", None).await;
    let mut gone = api
        .watch(&format!(
            "{SECRETS}?watch=true&resourceVersion={}",
            recent - 1
        ))
        .await;
    assert_eq!(gone.next().await.unwrap()["object"]["code"], 410);
}

#[tokio::test]
async fn bookmarks_carry_the_latest_version_and_drops_end_streams() {
    let api = Api::start(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    api.send("POST", SECRETS, Some(json!({"metadata": {"name": "s"}})))
        .await;
    let (_, list) = api.send("GET", PODS, None).await;
    let mut watch = api
        .watch(&format!(
            "{PODS}?watch=true&allowWatchBookmarks=true&resourceVersion={}",
            rv(&list)
        ))
        .await;
    api.send("POST", SECRETS, Some(json!({"metadata": {"name": "t"}})))
        .await;
    let (_, secrets) = api.send("GET", SECRETS, None).await;
    let mut bookmark = watch.next().await.unwrap();
    while rv(&bookmark["object"]) < rv(&secrets) {
        bookmark = watch.next().await.unwrap();
    }
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "Pod");
    assert_eq!(
        rv(&bookmark["object"]),
        rv(&secrets),
        "a bookmark moves the version past unrelated changes"
    );

    let (_, dropped) = api.send("POST", "/_fake/watches/drop", None).await;
    assert!(dropped["dropped"].as_u64().unwrap() >= 1);
    let mut ended = false;
    for _ in 0..50 {
        match watch.next().await {
            None => {
                ended = true;
                break;
            }
            Some(e) => assert_eq!(e["type"], "BOOKMARK"),
        }
    }
    assert!(ended, "the watch stream ended");
}

#[tokio::test]
async fn secrets_owned_by_a_deleted_pod_are_collected() {
    let api = Api::start(Options::default()).await;
    let (_, p) = api.send("POST", PODS, Some(pod("owner", json!({})))).await;
    let owned = |name: &str, uid: &Value| json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "owner", "uid": uid, "controller": true}]}});
    assert_eq!(
        api.send("POST", SECRETS, Some(owned("creds", &p["metadata"]["uid"])))
            .await
            .0,
        201
    );
    assert_eq!(
        api.send(
            "POST",
            SECRETS,
            Some(owned("dangling", &json!("not-the-uid")))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        api.send("POST", SECRETS, Some(json!({"metadata": {"name": "free"}})))
            .await
            .0,
        201
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.send("GET", &format!("{SECRETS}/dangling"), None)
            .await
            .0,
        404,
        "an owner uid that does not exist makes the object garbage"
    );
    assert_eq!(
        api.send("GET", &format!("{SECRETS}/creds"), None).await.0,
        200
    );
    api.send("DELETE", &format!("{PODS}/owner"), None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.send("GET", &format!("{SECRETS}/creds"), None).await.0,
        404
    );
    assert_eq!(
        api.send("GET", &format!("{SECRETS}/free"), None).await.0,
        200
    );
}

#[tokio::test]
async fn leases_use_optimistic_concurrency() {
    let api = Api::start(Options::default()).await;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": "2025-01-01T00:00:00.000000Z", "renewTime": "2025-01-01T00:00:00.000000Z", "leaseTransitions": 0}
    });
    let (code, created) = api.send("POST", LEASES, Some(lease.clone())).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(created["metadata"]["generation"], 1);
    let (code, status) = api.send("POST", LEASES, Some(lease)).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    assert_eq!(status["details"]["group"], "coordination.k8s.io");

    // Two contenders read the same version; the first write wins, the second gets 409.
    let mut a = created.clone();
    a["spec"]["holderIdentity"] = json!("a");
    a["spec"]["renewTime"] = json!("2025-01-01T00:00:05.000000Z");
    let mut b = created.clone();
    b["spec"]["holderIdentity"] = json!("b");
    b["spec"]["leaseTransitions"] = json!(1);
    let (code, renewed) = api.send("PUT", &format!("{LEASES}/leader"), Some(a)).await;
    assert_eq!(code, 200);
    assert!(rv(&renewed) > rv(&created));
    assert_eq!(renewed["metadata"]["generation"], 2);
    let (code, status) = api
        .send("PUT", &format!("{LEASES}/leader"), Some(b.clone()))
        .await;
    assert_eq!(code, 409);
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(
        status["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // The loser re-reads and retries with the fresh version.
    b["metadata"]["resourceVersion"] = renewed["metadata"]["resourceVersion"].clone();
    let (code, taken) = api.send("PUT", &format!("{LEASES}/leader"), Some(b)).await;
    assert_eq!(
        (code, taken["spec"]["holderIdentity"].as_str()),
        (200, Some("b"))
    );
    // An update that changes nothing keeps the version.
    let (_, same) = api
        .send("PUT", &format!("{LEASES}/leader"), Some(taken.clone()))
        .await;
    assert_eq!(rv(&same), rv(&taken));
    let mut absent = taken.clone();
    absent["metadata"]["name"] = json!("absent");
    let (code, _) = api
        .send("PUT", &format!("{LEASES}/absent"), Some(absent))
        .await;
    assert_eq!(code, 404);
    let (_, list) = api.send("GET", LEASES, None).await;
    assert_eq!(list["kind"], "LeaseList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (code, status) = api.send("DELETE", &format!("{LEASES}/leader"), None).await;
    assert_eq!((code, status["status"].as_str()), (200, Some("Success")));
    assert_eq!(
        api.send("GET", &format!("{LEASES}/leader"), None).await.0,
        404
    );
}

#[tokio::test]
async fn faults_answer_with_statuses_and_retry_after() {
    let api = Api::start(Options::default()).await;
    api.send(
        "POST",
        "/_fake/faults",
        Some(json!([{"status": 500, "count": 1, "method": "POST"}, {"status": 429, "count": 1, "method": "GET", "retryAfterSeconds": 2}])),
    )
    .await;
    let (code, status) = api
        .send("POST", SECRETS, Some(json!({"metadata": {"name": "s"}})))
        .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (500, Some("InternalError"))
    );
    let response = api
        .http
        .get(format!("{}{SECRETS}", api.kube.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(status["details"]["retryAfterSeconds"], 2);
    // Each rule fired once.
    assert_eq!(
        api.send("POST", SECRETS, Some(json!({"metadata": {"name": "s"}})))
            .await
            .0,
        201
    );
    assert_eq!(api.send("GET", SECRETS, None).await.0, 200);
    // A lost response: the object was made, the client saw a 504, a retry gets 409.
    api.send(
        "POST",
        "/_fake/faults",
        Some(json!({"status": 504, "method": "POST", "pathPrefix": SECRETS, "afterProcessing": true})),
    )
    .await;
    let (code, status) = api
        .send("POST", SECRETS, Some(json!({"metadata": {"name": "lost"}})))
        .await;
    assert_eq!((code, status["reason"].as_str()), (504, Some("Timeout")));
    assert_eq!(
        api.send("GET", &format!("{SECRETS}/lost"), None).await.0,
        200
    );
    let (code, status) = api
        .send("POST", SECRETS, Some(json!({"metadata": {"name": "lost"}})))
        .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let (_, stats) = api.send("GET", "/_fake/stats", None).await;
    assert_eq!(stats["faultsInjected"], 3);
    assert_eq!(
        stats["requests"]["create secrets"], 4,
        "a failed attempt counts too"
    );
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let api = Api::start(Options {
        token: Some("s3cr3t".into()),
        ..Options::default()
    })
    .await;
    assert_eq!(api.send("GET", PODS, None).await.0, 200);
    for token in [None, Some("wrong")] {
        let mut request = api.http.get(format!("{}{PODS}", api.kube.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["reason"], "Unauthorized");
    }
    assert!(api.kube.kubeconfig("ci").contains("token: s3cr3t"));
}

#[tokio::test]
async fn pods_driven_by_hand_report_running_eviction_oom_and_graceful_deletion() {
    let api = Api::start(Options::default()).await;
    for name in ["run", "evicted", "oom", "done"] {
        api.send("POST", PODS, Some(pod(name, json!({})))).await;
    }
    let (code, running) = api
        .send(
            "POST",
            "/_fake/pods/ci/run/phase",
            Some(json!({"phase": "Running"})),
        )
        .await;
    assert_eq!(code, 200, "{running}");
    assert_eq!(running["status"]["phase"], "Running");
    assert_eq!(running["spec"]["nodeName"], "fake-node");
    assert!(running["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());

    let (_, evicted) = api
        .send("POST", "/_fake/pods/ci/evicted/evict", Some(json!({})))
        .await;
    assert_eq!(evicted["status"]["phase"], "Failed");
    assert_eq!(evicted["status"]["reason"], "Evicted");
    assert!(evicted["status"]["message"]
        .as_str()
        .unwrap()
        .contains("low on resource"));
    let (_, oom) = api.send("POST", "/_fake/pods/ci/oom/oom", None).await;
    let terminated = &oom["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (
            terminated["exitCode"].as_i64(),
            terminated["reason"].as_str()
        ),
        (Some(137), Some("OOMKilled"))
    );
    let (_, done) = api
        .send(
            "POST",
            "/_fake/pods/ci/done/phase",
            Some(json!({"phase": "Failed", "exitCode": 3})),
        )
        .await;
    assert_eq!(
        done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    let (code, _) = api
        .send(
            "POST",
            "/_fake/pods/ci/done/phase",
            Some(json!({"phase": "Running"})),
        )
        .await;
    assert_eq!(code, 400, "a pod never leaves Failed");

    // A running pod is deleted gracefully: MODIFIED with deletionTimestamp, then DELETED.
    let mut watch = api
        .watch(&format!(
            "{PODS}?watch=true&fieldSelector=metadata.name%3Drun&resourceVersion={}",
            rv(&done)
        ))
        .await;
    let (code, deleting) = api.send("DELETE", &format!("{PODS}/run"), None).await;
    assert_eq!(code, 200);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(deleting["metadata"]["deletionGracePeriodSeconds"], 30);
    let modified = watch.next().await.unwrap();
    assert_eq!(modified["type"], "MODIFIED");
    assert!(modified["object"]["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(watch.next().await.unwrap()["type"], "DELETED");
}

#[tokio::test]
async fn active_deadline_fails_a_running_pod() {
    let api = Api::start(Options::default()).await;
    let mut p = pod("slow", json!({}));
    p["spec"]["activeDeadlineSeconds"] = json!(1);
    api.send("POST", PODS, Some(p)).await;
    api.send(
        "POST",
        "/_fake/pods/ci/slow/phase",
        Some(json!({"phase": "Running"})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, pod) = api.send("GET", &format!("{PODS}/slow"), None).await;
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(pod["status"]["reason"], "DeadlineExceeded");
}
