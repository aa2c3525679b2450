//! The backend on its own against the fake API server without a kubelet (the test drives the
//! pods): create, list, delete, adoption of a lost create response, a cluster it cannot reach.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use fake_kube::{FakeKube, Options};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::*;
use crate::backend::{InstanceFile, InstanceStatus};

async fn fake() -> (FakeKube, tempfile::TempDir, Config) {
    let kube = FakeKube::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Options {
            token: Some("t0k".into()),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kc"), kube.kubeconfig("default")).unwrap();
    let config = config_with(dir.path(), "kubeconfig = \"kc\"");
    (kube, dir, config)
}

fn config_with(dir: &Path, cluster: &str) -> Config {
    let text = format!(
        "[forgejo]\nurl = \"https://f.example\"\ntoken_env = \"T\"\nscopes = [\"org:acme\"]\n[kubernetes]\n{cluster}\nrequest_timeout = \"2s\"\n[[pools]]\nname = \"k\"\nlabels = [\"trixie:docker://debian:trixie\"]\nbackend = \"kubernetes\"\n[pools.kubernetes]\nimage = \"runner:1\"\n"
    );
    crate::config::parse(&text, &dir.join("autoscaler.toml")).unwrap()
}

fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        pool: "k".into(),
        program: "forgejo-runner".into(),
        args: vec!["one-job".into(), "--handle".into(), "h1".into()],
        files: vec![InstanceFile {
            name: "runner-token".into(),
            contents: b"the-runner-token".to_vec(),
            secret: true,
        }],
        env: BTreeMap::new(),
    }
}

async fn drive(kube: &FakeKube, pod: &str, body: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_fake/pods/default/{pod}/phase", kube.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

async fn listed(backend: &KubernetesBackend, id: &str, status: InstanceStatus) -> bool {
    for _ in 0..100 {
        if let Ok(list) = backend.list().await {
            if list.iter().any(|i| i.id == id && i.status == status) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn create_list_and_delete_through_the_api() {
    let (kube, _dir, config) = fake().await;
    let backend = KubernetesBackend::new(&config, "owner-1".into(), Arc::new(Notify::new()));
    let reference = backend.create(spec("k-0001")).await.unwrap();
    let reference: Value = serde_json::from_str(&reference).unwrap();
    assert_eq!(reference["namespace"], "default");
    let pod = kube
        .object("pods", "default", "forgejo-runner-k-0001")
        .expect("the pod");
    assert_eq!(reference["uid"], pod["metadata"]["uid"]);
    let secret = kube
        .object("secrets", "default", "forgejo-runner-k-0001-credentials")
        .expect("the secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        pod["metadata"]["uid"]
    );
    assert!(listed(&backend, "k-0001", InstanceStatus::Running).await);

    drive(&kube, "forgejo-runner-k-0001", json!({"phase": "Running"})).await;
    drive(
        &kube,
        "forgejo-runner-k-0001",
        json!({"phase": "Failed", "exitCode": 3}),
    )
    .await;
    assert!(listed(&backend, "k-0001", InstanceStatus::Exited { code: Some(3) }).await);
    let removal = backend
        .delete("k-0001", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(removal.exit_code, Some(3));
    assert!(!removal.stopped_by_us);
    assert!(kube
        .object("pods", "default", "forgejo-runner-k-0001")
        .is_none());
    assert!(kube.objects("secrets", Some("default")).is_empty());
    // Deleting again is fine, and nothing is listed.
    assert_eq!(
        backend
            .delete("k-0001", Duration::from_secs(1))
            .await
            .unwrap(),
        Removal::default()
    );
    assert!(backend.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_running_pod_is_stopped_and_an_other_owner_s_pod_is_not_listed() {
    let (kube, _dir, config) = fake().await;
    let backend = KubernetesBackend::new(&config, "owner-1".into(), Arc::new(Notify::new()));
    let other = KubernetesBackend::new(&config, "owner-2".into(), Arc::new(Notify::new()));
    backend.create(spec("k-0002")).await.unwrap();
    other.create(spec("k-0003")).await.unwrap();
    drive(&kube, "forgejo-runner-k-0002", json!({"phase": "Running"})).await;
    assert!(listed(&backend, "k-0002", InstanceStatus::Running).await);
    let mine = backend.list().await.unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    // Another owner's instance is not found, so not deleted.
    assert_eq!(
        backend
            .delete("k-0003", Duration::from_secs(1))
            .await
            .unwrap(),
        Removal::default()
    );
    assert!(kube
        .object("pods", "default", "forgejo-runner-k-0003")
        .is_some());
    let removal = backend
        .delete("k-0002", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(removal.stopped_by_us);
    assert!(kube
        .object("pods", "default", "forgejo-runner-k-0002")
        .is_none());
}

#[tokio::test]
async fn a_lost_create_response_is_adopted_after_409() {
    let (kube, _dir, config) = fake().await;
    let backend = KubernetesBackend::new(&config, "owner-1".into(), Arc::new(Notify::new()));
    let fault = json!({"status": 504, "method": "POST", "pathPrefix": "/api/v1/namespaces/default/pods", "afterProcessing": true});
    reqwest::Client::new()
        .post(format!("{}/_fake/faults", kube.url()))
        .json(&fault)
        .send()
        .await
        .unwrap();
    backend.create(spec("k-0004")).await.unwrap();
    assert_eq!(kube.objects("pods", Some("default")).len(), 1);
    assert_eq!(kube.objects("secrets", Some("default")).len(), 1);
}

#[tokio::test]
async fn an_unusable_kubeconfig_is_reported_not_hung_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "kubeconfig = \"missing-kubeconfig\"");
    let backend = KubernetesBackend::new(&config, "o".into(), Arc::new(Notify::new()));
    let started = std::time::Instant::now();
    let error = backend.list().await.unwrap_err().message;
    assert!(error.contains("missing-kubeconfig"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = backend.create(spec("k-0005")).await.unwrap_err().message;
    assert!(error.contains("cannot read the kubeconfig"), "{error}");
    // Later listings fail at once.
    let again = std::time::Instant::now();
    assert!(backend.list().await.is_err());
    assert!(again.elapsed() < Duration::from_millis(500));
}
