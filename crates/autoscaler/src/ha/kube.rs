//! The lease on a real API server: kube-rs `Api<Lease>` (get, create, replace), mapped onto
//! [`LeaseApi`]. The connection is the `[ha] kubeconfig` file, or, without one, the one the
//! kubernetes backend uses (`[kubernetes]` kubeconfig, context, in_cluster), whose default is
//! what kube-rs infers: the pod's service account in a cluster, else `$KUBECONFIG` or
//! `~/.kube/config`.

use std::{path::Path, sync::Arc};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::api::{Api, PostParams};

use super::{LeaseApi, LeaseError, LeaseRecord};
use crate::{
    backend::BoxFuture,
    config::{HaConfig, KubernetesConfig},
};

pub struct KubeLease {
    api: Api<Lease>,
    namespace: String,
    name: String,
}

/// Connects to the API server and returns the lease and its namespace (the configured one, or
/// the connection's default namespace). `cluster`: the `[kubernetes]` table, whose connection
/// is used unless `[ha]` names its own kubeconfig.
pub async fn connect(
    ha: &HaConfig,
    cluster: &KubernetesConfig,
) -> anyhow::Result<(Arc<dyn LeaseApi>, String)> {
    let config = match (&ha.kubeconfig, &cluster.kubeconfig) {
        (Some(path), _) => from_file(path, None).await?,
        (None, _) if cluster.in_cluster => kube::Config::incluster().map_err(|e| {
            anyhow::anyhow!("[ha]: [kubernetes] in_cluster = true, but this is not a pod with a service account: {e}")
        })?,
        (None, Some(path)) => from_file(path, cluster.context.clone()).await?,
        (None, None) if cluster.context.is_some() => {
            let options = kube::config::KubeConfigOptions {
                context: cluster.context.clone(),
                ..Default::default()
            };
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| anyhow::anyhow!("[ha]: the [kubernetes] context is not usable: {e}"))?
        }
        (None, None) => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("[ha]: cannot find the Kubernetes API server ({e}); run in a pod with a service account, set KUBECONFIG, or give [ha] kubeconfig = \"PATH\"")
        })?,
    };
    let namespace = ha
        .lease_namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("[ha]: cannot build a Kubernetes client: {e}"))?;
    let lease = KubeLease {
        api: Api::namespaced(client, &namespace),
        namespace: namespace.clone(),
        name: ha.lease_name.clone(),
    };
    Ok((Arc::new(lease), namespace))
}

async fn from_file(path: &Path, context: Option<String>) -> anyhow::Result<kube::Config> {
    let file = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| anyhow::anyhow!("[ha] kubeconfig {}: {e}", path.display()))?;
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|e| anyhow::anyhow!("[ha] kubeconfig {}: {e}", path.display()))
}

impl KubeLease {
    fn to_lease(&self, record: &LeaseRecord) -> Lease {
        let time = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map(MicroTime)
        };
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: (!record.resource_version.is_empty())
                    .then(|| record.resource_version.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.holder.clone(),
                lease_duration_seconds: record.lease_duration_s,
                acquire_time: time(&record.acquire_time),
                renew_time: time(&record.renew_time),
                lease_transitions: Some(record.transitions),
                ..Default::default()
            }),
        }
    }
}

fn to_record(lease: Lease) -> LeaseRecord {
    let spec = lease.spec.unwrap_or_default();
    let time = |t: Option<MicroTime>| t.map(|t| t.0.to_string());
    LeaseRecord {
        holder: spec.holder_identity,
        lease_duration_s: spec.lease_duration_seconds,
        acquire_time: time(spec.acquire_time),
        renew_time: time(spec.renew_time),
        transitions: spec.lease_transitions.unwrap_or(0),
        resource_version: lease.metadata.resource_version.unwrap_or_default(),
    }
}

/// 409 and 404 mean something to the election; everything else is "could not talk".
fn to_error(e: kube::Error) -> LeaseError {
    match e {
        kube::Error::Api(status) if status.code == 409 => LeaseError::Conflict,
        kube::Error::Api(status) if status.code == 404 => LeaseError::NotFound,
        kube::Error::Api(status) if status.code == 403 => LeaseError::Other(format!(
            "forbidden (403): {}; the service account needs get, create and update on leases.coordination.k8s.io (docs/high-availability.md)",
            status.message
        )),
        kube::Error::Api(status) => {
            LeaseError::Other(format!("{} ({}): {}", status.reason, status.code, status.message))
        }
        other => LeaseError::Other(other.to_string()),
    }
}

impl LeaseApi for KubeLease {
    fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<LeaseRecord>, LeaseError>> {
        Box::pin(async move {
            self.api
                .get_opt(&self.name)
                .await
                .map(|lease| lease.map(to_record))
                .map_err(to_error)
        })
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>> {
        Box::pin(async move {
            let mut lease = self.to_lease(record);
            lease.metadata.resource_version = None;
            self.api
                .create(&PostParams::default(), &lease)
                .await
                .map(to_record)
                .map_err(to_error)
        })
    }

    fn replace<'a>(
        &'a self,
        record: &'a LeaseRecord,
    ) -> BoxFuture<'a, Result<LeaseRecord, LeaseError>> {
        Box::pin(async move {
            self.api
                .replace(&self.name, &PostParams::default(), &self.to_lease(record))
                .await
                .map(to_record)
                .map_err(to_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ha::{micro_time_now, Elector, Leadership, Timing};

    async fn fake() -> (fake_kube::FakeKube, tempfile::TempDir, HaConfig) {
        let kube = fake_kube::FakeKube::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, kube.kubeconfig("default")).unwrap();
        let ha = HaConfig {
            lease_name: "forgejo-autoscaler".into(),
            lease_namespace: None,
            identity: None,
            owner_id: None,
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
            kubeconfig: Some(path),
        };
        (kube, dir, ha)
    }

    #[tokio::test]
    async fn get_create_and_replace_keep_the_api_servers_rules() {
        let (kube, _dir, ha) = fake().await;
        let (lease, namespace) = connect(&ha, &KubernetesConfig::default()).await.unwrap();
        assert_eq!(namespace, "default", "the kubeconfig context's namespace");
        assert_eq!(lease.name(), "default/forgejo-autoscaler");
        assert_eq!(lease.get().await, Ok(None));
        let record = LeaseRecord {
            holder: Some("a".into()),
            lease_duration_s: Some(3),
            acquire_time: Some(micro_time_now()),
            renew_time: Some(micro_time_now()),
            transitions: 0,
            resource_version: String::new(),
        };
        let created = lease.create(&record).await.unwrap();
        assert!(!created.resource_version.is_empty());
        assert_eq!(created.holder(), Some("a"));
        assert_eq!(lease.create(&record).await, Err(LeaseError::Conflict));
        let mut next = created.clone();
        next.holder = Some("b".into());
        next.transitions = 1;
        let replaced = lease.replace(&next).await.unwrap();
        assert_eq!((replaced.holder(), replaced.transitions), (Some("b"), 1));
        // A write with the version already replaced: 409, as the election relies on.
        assert_eq!(lease.replace(&next).await, Err(LeaseError::Conflict));
        let stored = kube
            .object("leases", "default", "forgejo-autoscaler")
            .unwrap();
        assert_eq!(stored["spec"]["holderIdentity"], "b");
        assert_eq!(stored["spec"]["leaseDurationSeconds"], 3);
        assert!(stored["spec"]["renewTime"].as_str().is_some());
        assert_eq!(lease.get().await.unwrap().unwrap(), replaced);
    }

    /// Without its own kubeconfig, [ha] uses the kubernetes backend's connection.
    #[tokio::test]
    async fn the_kubernetes_connection_is_reused() {
        let (_kube, dir, mut ha) = fake().await;
        let cluster = KubernetesConfig {
            kubeconfig: ha.kubeconfig.take(),
            ..KubernetesConfig::default()
        };
        ha.lease_namespace = Some("kube-system".into());
        let (lease, namespace) = connect(&ha, &cluster).await.unwrap();
        assert_eq!(namespace, "kube-system");
        assert_eq!(lease.get().await, Ok(None));
        let missing = KubernetesConfig {
            kubeconfig: Some(dir.path().join("missing")),
            ..KubernetesConfig::default()
        };
        let err = connect(&ha, &missing)
            .await
            .err()
            .expect("an error")
            .to_string();
        assert!(
            err.contains("kubeconfig") && err.contains("missing"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn two_electors_on_fake_kube_take_turns() {
        let (_kube, _dir, ha) = fake().await;
        let timing = Timing {
            lease_duration: ha.lease_duration,
            renew_deadline: ha.renew_deadline,
            retry_period: ha.retry_period,
        };
        let (lease_a, _) = connect(&ha, &KubernetesConfig::default()).await.unwrap();
        let (lease_b, _) = connect(&ha, &KubernetesConfig::default()).await.unwrap();
        let la = Leadership::new("a", &lease_a.name());
        let lb = Leadership::new("b", &lease_b.name());
        let mut a = Elector::new(lease_a, "a", timing, la.clone());
        let b = Elector::new(lease_b, "b", timing, lb.clone());
        a.step().await;
        assert!(la.acting());
        let (stop_b, stopped_b) = tokio::sync::oneshot::channel();
        let b_task = tokio::spawn(b.run(stopped_b));
        // a stops renewing (as if killed); b takes over after the lease duration.
        let stopped = tokio::time::Instant::now();
        let mut took_over = None;
        while stopped.elapsed() < Duration::from_secs(8) {
            assert!(!(la.acting() && lb.acting()));
            if lb.acting() {
                took_over = Some(stopped.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took_over = took_over.expect("b took over");
        assert!(
            took_over >= ha.renew_deadline,
            "b acted {took_over:?} after a's last renew"
        );
        assert_eq!(lb.view().generation, Some(1));
        let _ = stop_b.send(());
        b_task.await.unwrap();
        assert!(!lb.acting(), "released on stop");
    }
}
