//! Kubelet mode: pods run as local processes, with their Secret volumes as files, and their
//! status follows the process (exit codes, deletion, deadline, OOM kill, eviction).

use std::time::{Duration, Instant};

use fake_kube::{FakeKube, KubeletOptions, Options};
use serde_json::{json, Value};

const PODS: &str = "/api/v1/namespaces/default/pods";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";

struct Kube {
    kube: FakeKube,
    http: reqwest::Client,
}

impl Kube {
    async fn start(images: Option<Vec<String>>) -> Kube {
        let kube = FakeKube::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Options {
                kubelet: Some(KubeletOptions {
                    images,
                    ..Default::default()
                }),
                ..Options::default()
            },
        )
        .await
        .unwrap();
        Kube {
            kube,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(
            method.parse().unwrap(),
            format!("{}{path}", self.kube.url()),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits until the pod satisfies `check` (or is gone, when `check` accepts `Null`).
    async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pod = self
                .kube
                .object("pods", "default", name)
                .unwrap_or(Value::Null);
            if check(&pod) {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name}: {what}; last seen {pod:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn shell_pod(name: &str, script: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 2,
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "creds", "secret": {"secretName": format!("{name}-creds"), "defaultMode": 0o400}}
            ],
            "containers": [{
                "name": "runner",
                "image": "local/busybox:1",
                "command": ["sh", "-c"],
                "args": [script],
                "workingDir": "/work",
                "env": [{"name": "CRED", "value": "/work/token"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "creds", "mountPath": "/work/token", "subPath": "token", "readOnly": true}
                ]
            }]
        }
    })
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

fn terminated(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]["state"]["terminated"]
}

#[tokio::test]
async fn a_pod_waits_for_its_secret_runs_and_reports_its_exit_code() {
    let k = Kube::start(None).await;
    let (code, _) = k
        .send(
            "POST",
            PODS,
            Some(shell_pod(
                "job",
                "echo pod=$POD; cat token; echo; ls -lL $CRED | cut -c1-10; exit 3",
            )),
        )
        .await;
    assert_eq!(code, 201);
    // The Secret comes after the pod (as the autoscaler creates them): the pod waits.
    let waiting = k
        .wait_pod("job", "waits for its secret", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("secret \"job-creds\" not found"))
        })
        .await;
    assert_eq!(phase(&waiting), "Pending");
    assert_eq!(waiting["spec"]["nodeName"], "fake-node");
    k.send(
        "POST",
        SECRETS,
        Some(json!({"metadata": {"name": "job-creds"}, "stringData": {"token": "tok-123"}})),
    )
    .await;
    let done = k
        .wait_pod("job", "fails with exit 3", |p| phase(p) == "Failed")
        .await;
    assert_eq!(terminated(&done)["exitCode"], 3);
    assert_eq!(terminated(&done)["reason"], "Error");
    let (code, log) = k.send("GET", &format!("{PODS}/job/log"), None).await;
    assert_eq!(code, 200);
    let log = log.as_str().unwrap().to_string();
    assert!(log.contains("pod=job"), "{log}");
    assert!(
        log.contains("tok-123"),
        "the secret key is a file at the mount path: {log}"
    );
    assert!(log.contains("-r--------"), "with the volume's mode: {log}");
    let (_, tail) = k
        .send("GET", &format!("{PODS}/job/log?tailLines=1"), None)
        .await;
    assert_eq!(tail.as_str().unwrap().lines().count(), 1);
    // An ended pod is deleted at once.
    let (code, _) = k.send("DELETE", &format!("{PODS}/job"), None).await;
    assert_eq!(code, 200);
    assert!(k.kube.object("pods", "default", "job").is_none());
}

#[tokio::test]
async fn a_zero_exit_succeeds_and_deletion_stops_a_running_process() {
    let k = Kube::start(None).await;
    for name in ["ok-creds", "long-creds"] {
        k.send(
            "POST",
            SECRETS,
            Some(json!({"metadata": {"name": name}, "stringData": {"token": "x"}})),
        )
        .await;
    }
    k.send("POST", PODS, Some(shell_pod("ok", "exit 0"))).await;
    let ok = k
        .wait_pod("ok", "succeeds", |p| phase(p) == "Succeeded")
        .await;
    assert_eq!(terminated(&ok)["reason"], "Completed");

    k.send(
        "POST",
        PODS,
        Some(shell_pod(
            "long",
            "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done",
        )),
    )
    .await;
    let running = k.wait_pod("long", "runs", |p| phase(p) == "Running").await;
    assert_eq!(running["status"]["containerStatuses"][0]["ready"], true);
    let (_, process) = k
        .send("GET", "/_fake/pods/default/long/process", None)
        .await;
    let pid = process["pid"].as_u64().expect("a pid");
    let started = Instant::now();
    let (code, deleting) = k.send("DELETE", &format!("{PODS}/long"), None).await;
    assert_eq!(code, 200);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    k.wait_pod(
        "long",
        "is removed after its process stopped",
        Value::is_null,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "SIGTERM was enough"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} is gone"
    );
}

#[tokio::test]
async fn deadline_oom_and_eviction_end_running_processes() {
    let k = Kube::start(None).await;
    for name in ["deadline", "oom", "evict"] {
        k.send("POST", SECRETS, Some(json!({"metadata": {"name": format!("{name}-creds")}, "stringData": {"token": "x"}})))
            .await;
    }
    let mut p = shell_pod("deadline", "sleep 30");
    p["spec"]["activeDeadlineSeconds"] = json!(1);
    k.send("POST", PODS, Some(p)).await;
    k.send("POST", PODS, Some(shell_pod("oom", "sleep 30")))
        .await;
    k.send("POST", PODS, Some(shell_pod("evict", "sleep 30")))
        .await;
    for name in ["oom", "evict"] {
        k.wait_pod(name, "runs", |p| phase(p) == "Running").await;
    }
    let (code, _) = k.send("POST", "/_fake/pods/default/oom/oom", None).await;
    assert_eq!(code, 200);
    let (code, _) = k
        .send(
            "POST",
            "/_fake/pods/default/evict/evict",
            Some(json!({"message": "The node was low on resource: ephemeral-storage."})),
        )
        .await;
    assert_eq!(code, 200);
    let oom = k
        .wait_pod("oom", "is OOM-killed", |p| phase(p) == "Failed")
        .await;
    assert_eq!(
        (
            terminated(&oom)["exitCode"].as_i64(),
            terminated(&oom)["reason"].as_str()
        ),
        (Some(137), Some("OOMKilled"))
    );
    let evicted = k
        .wait_pod("evict", "is evicted", |p| phase(p) == "Failed")
        .await;
    assert_eq!(evicted["status"]["reason"], "Evicted");
    assert_eq!(
        evicted["status"]["message"],
        "The node was low on resource: ephemeral-storage."
    );
    let deadline = k
        .wait_pod("deadline", "passes its deadline", |p| phase(p) == "Failed")
        .await;
    assert_eq!(deadline["status"]["reason"], "DeadlineExceeded");
    assert_eq!(
        terminated(&deadline)["exitCode"],
        143,
        "stopped with SIGTERM"
    );
}

#[tokio::test]
async fn missing_images_and_commands_are_reported_like_the_kubelet_does() {
    let k = Kube::start(Some(vec!["local/busybox:1".into()])).await;
    for name in ["absent-creds", "nocmd-creds"] {
        k.send(
            "POST",
            SECRETS,
            Some(json!({"metadata": {"name": name}, "stringData": {"token": "x"}})),
        )
        .await;
    }
    let mut absent = shell_pod("absent", "true");
    absent["spec"]["containers"][0]["image"] = json!("registry.example/runner:2");
    k.send("POST", PODS, Some(absent)).await;
    let pod = k
        .wait_pod("absent", "cannot pull its image", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
        })
        .await;
    assert_eq!(phase(&pod), "Pending");
    let mut nocmd = shell_pod("nocmd", "true");
    nocmd["spec"]["containers"][0]["command"] = json!(["no-such-program-here"]);
    k.send("POST", PODS, Some(nocmd)).await;
    let pod = k
        .wait_pod("nocmd", "fails to start", |p| phase(p) == "Failed")
        .await;
    assert_eq!(terminated(&pod)["reason"], "StartError");
    assert_eq!(terminated(&pod)["exitCode"], 128);
    // A pending pod is deleted at once.
    k.send("DELETE", &format!("{PODS}/absent"), None).await;
    assert!(k.kube.object("pods", "default", "absent").is_none());
}
