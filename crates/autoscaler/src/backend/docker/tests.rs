//! The backend's bookkeeping for several engines, without an engine: the addresses are
//! sockets that do not exist, so any attempt to contact one fails (and shows in the result).

use std::{collections::BTreeMap, path::Path, sync::Arc};

use tokio::sync::Notify;

use super::{engine::Failure, DockerBackend, Placed};
use crate::backend::{Backend, BackendError, InstanceSpec};

/// A backend whose pool `p` uses the engines `a` and `b` (in that order), both missing.
fn backend(dir: &Path) -> (DockerBackend, String, String) {
    let a = format!("unix://{}/a.sock", dir.display());
    let b = format!("unix://{}/b.sock", dir.display());
    let text = format!(
        "[forgejo]\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"token\"\nscopes = [\"org:acme\"]\n\n\
         [[pools]]\nname = \"p\"\nlabels = [\"trixie:docker://debian:trixie\"]\nbackend = \"docker\"\n\n\
         [pools.docker]\nimage = \"runner:1\"\ndocker_hosts = [\"{a}\", \"{b}\"]\n"
    );
    let config = crate::config::parse(&text, &dir.join("autoscaler.toml")).expect("valid config");
    let backend = DockerBackend::new(&config, "owner-1".into(), Arc::new(Notify::new()));
    (backend, a, b)
}

fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        pool: "p".into(),
        program: "forgejo-runner".into(),
        args: Vec::new(),
        files: Vec::new(),
        env: BTreeMap::new(),
    }
}

fn unreachable(message: &str) -> Failure {
    Failure {
        error: BackendError {
            backend: "docker",
            message: message.into(),
        },
        unreachable: true,
    }
}

#[test]
fn reservations_spread_a_pool_over_its_engines() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, a, b) = backend(dir.path());
    assert_eq!(backend.placement("p"), [a.clone(), b.clone()]);
    backend.reserve(&spec("p-1"), &a);
    assert_eq!(backend.placement("p"), [b.clone(), a.clone()]);
    backend.reserve(&spec("p-2"), &b);
    backend.reserve(&spec("p-3"), &a);
    assert_eq!(backend.placement("p"), [b.clone(), a.clone()]);
    // A container of another pool on `b` does not count for `p`.
    backend.state().placed.insert(
        "q-1".into(),
        Placed::On {
            engine: b.clone(),
            pool: "q".into(),
            created: true,
        },
    );
    assert_eq!(backend.placement("p"), [b, a]);
    assert!(backend.placement("unknown").is_empty());
}

#[tokio::test]
async fn an_engine_that_failed_is_skipped_until_its_backoff_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, a, b) = backend(dir.path());
    backend.reserve(&spec("p-1"), &b);
    backend.engines[&a].failed(&unreachable("gone")).await;
    // `a` is emptier but backing off.
    assert_eq!(backend.placement("p"), vec![b.clone()]);
    backend.engines[&b].failed(&unreachable("gone too")).await;
    // Both back off: only the one whose backoff ends first is probed.
    assert_eq!(backend.placement("p"), vec![a.clone()]);
    backend.engines[&a].succeeded(true);
    assert_eq!(backend.placement("p"), [a]);
}

#[tokio::test]
async fn a_creation_tries_the_next_engine_and_fails_only_when_all_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, a, b) = backend(dir.path());
    let error = backend
        .create_instance(spec("p-1"))
        .await
        .expect_err("no engine exists");
    // Both engines were tried, in placement order, each named with its own cause.
    let at_a = error.message.find(&a).expect("engine a was tried");
    let at_b = error.message.find(&b).expect("engine b was tried");
    assert!(at_a < at_b, "{}", error.message);
    assert!(
        error.message.contains("cannot reach the engine"),
        "{}",
        error.message
    );
    assert_eq!(backend.state().placed.get("p-1"), Some(&Placed::Nowhere));
    // Now both back off: the next creation probes one engine only, not both.
    let error = backend
        .create_instance(spec("p-2"))
        .await
        .expect_err("still no engine");
    assert!(
        error.message.contains(&a) != error.message.contains(&b),
        "{}",
        error.message
    );
    // Nothing was created: removing the instances needs no engine.
    assert_eq!(
        backend
            .delete_instance("p-1", std::time::Duration::from_secs(1))
            .await
            .unwrap(),
        Default::default()
    );
    assert!(!backend.state().placed.contains_key("p-1"));
}

#[tokio::test]
async fn a_removal_goes_to_the_engine_of_the_instance_only() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, a, b) = backend(dir.path());
    backend.state().placed.insert(
        "p-1".into(),
        Placed::On {
            engine: b.clone(),
            pool: "p".into(),
            created: true,
        },
    );
    let error = backend
        .delete_instance("p-1", std::time::Duration::from_secs(1))
        .await
        .expect_err("its engine is down");
    assert!(
        error.message.contains(&b) && !error.message.contains(&a),
        "{}",
        error.message
    );
    // The record stays: the removal is retried, and not sent elsewhere.
    assert!(backend.state().placed.contains_key("p-1"));
    // While `b` backs off, it is not even asked (a dead tcp:// engine would make it wait).
    let error = backend
        .delete_instance("p-1", std::time::Duration::from_secs(1))
        .await
        .expect_err("still down");
    assert!(
        error.message.contains("is unreachable (next try in"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_listing_leaves_out_an_unreachable_engine_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, a, b) = backend(dir.path());
    let on = |engine: &str| format!("{{\"engine\":\"{engine}\",\"container\":\"c1\"}}");
    // Neither engine answers: the listing as a whole fails (everything is unknown).
    let error = backend.list().await.expect_err("nothing could be listed");
    assert!(
        error.message.contains(&a) && error.message.contains(&b),
        "{}",
        error.message
    );
    assert!(backend.unlisted(&on(&a)) && backend.unlisted(&on(&b)));
    assert_eq!(backend.unlisted_parts().len(), 2);
    assert!(!backend.unlisted("not json"));
    assert!(!backend.unlisted(&on("unix:///elsewhere.sock")));
}

#[test]
fn a_copy_left_by_a_failed_attempt_is_not_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, a, b) = backend(dir.path());
    let engine_a = backend.engines[&a].clone();
    let engine_b = backend.engines[&b].clone();
    backend.state().placed.insert(
        "p-1".into(),
        Placed::On {
            engine: a.clone(),
            pool: "p".into(),
            created: true,
        },
    );
    // The instance's own container.
    assert!(!backend.is_leftover(&engine_a, "p-1", "c-a", true, None));
    // A never-started copy on `b` from an attempt that failed there: removed, not reported.
    assert!(backend.is_leftover(&engine_b, "p-1", "c-b", false, None));
    // A running copy is reported (the reconciler sees the running one first).
    assert!(!backend.is_leftover(&engine_b, "p-1", "c-b", true, None));
    // A container remembered as left by a failed creation.
    backend
        .state()
        .stale
        .insert((b.clone(), "c-old".to_string()));
    assert!(backend.is_leftover(&engine_b, "p-9", "c-old", false, None));
    // An instance this process did not know (after a restart): its engine is learnt.
    let pool = "p".to_string();
    assert!(!backend.is_leftover(&engine_b, "p-2", "c-2", true, Some(&pool)));
    assert_eq!(
        backend.state().placed.get("p-2"),
        Some(&Placed::On {
            engine: b,
            pool,
            created: false,
        })
    );
}
