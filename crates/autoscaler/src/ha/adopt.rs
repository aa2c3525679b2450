//! Adoption after a failover: each replica has its own store, so a new leader finds the old
//! leader's instances in the backend (same owner id, so they are listed as ours) without a
//! record. Rather than collecting them as orphans (which would kill running jobs and start a
//! second runner for their job attempts), it rebuilds their records:
//!
//! * from the backend listing: the instance id, its pool and its status;
//! * from Forgejo: the runner registration whose description names the instance
//!   (`provision::runner_description`): runner id and name, the scope it was listed in, and
//!   the job id, attempt and handle the instance was made for.
//!
//! An instance whose registration is gone and which still runs is left to the orphan
//! collection (its runner was cancelled or has finished); one that exited is adopted without
//! a runner so that its removal is recorded with the reason its exit code gives.

use crate::{
    backend::{InstanceStatus, ObservedInstance},
    forgejo::{ApiScope, RunnerInfo},
    store::{InstanceRecord, InstanceState},
};

/// What a runner's description says about the instance it was made for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerTag {
    pub instance: String,
    pub pool: Option<String>,
    pub job_id: Option<i64>,
    pub attempt: Option<i64>,
    pub handle: Option<String>,
}

/// Parses `DESCRIPTION` written by `runner_description` under `owner_tag`; `None` when the
/// runner is not ours or names no instance.
pub fn parse_description(description: &str, owner_tag: &str) -> Option<RunnerTag> {
    let rest = description.strip_prefix(owner_tag)?;
    // The tag must end where a new field starts: `owner=ab` is not `owner=abc`.
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    let mut tag = RunnerTag::default();
    for field in rest.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "instance" => tag.instance = value.to_string(),
            "pool" => tag.pool = Some(value.to_string()),
            "job" => tag.job_id = value.parse().ok(),
            "attempt" => tag.attempt = value.parse().ok(),
            "handle" => tag.handle = Some(value.to_string()),
            _ => {}
        }
    }
    (!tag.instance.is_empty()).then_some(tag)
}

/// The record to adopt `instance` (listed by backend `kind`, no record in this store) with,
/// given every runner of ours listed in every scope; `None` when it is to be left to the
/// orphan collection. `pools`: the configured pool names (an instance of a pool no longer
/// configured is not adopted).
pub fn adoption_record(
    kind: &str,
    instance: &ObservedInstance,
    runners: &[(ApiScope, RunnerInfo)],
    owner_tag: &str,
    pools: &[(&str, ApiScope)],
    now_ms: u64,
) -> Option<InstanceRecord> {
    let found = runners.iter().find_map(|(scope, runner)| {
        parse_description(&runner.description, owner_tag)
            .filter(|tag| tag.instance == instance.id)
            .map(|tag| (scope, runner, tag))
    });
    let pool = instance
        .pool
        .clone()
        .or_else(|| found.as_ref().and_then(|(_, _, tag)| tag.pool.clone()))?;
    let default_scope = pools
        .iter()
        .find(|(name, _)| *name == pool)
        .map(|(_, scope)| scope.clone())?;
    let mut record = InstanceRecord {
        id: instance.id.clone(),
        pool,
        scope: default_scope.to_string(),
        backend: kind.to_string(),
        state: InstanceState::Running,
        job_id: None,
        job_handle: None,
        job_attempt: None,
        runner_id: None,
        runner_name: None,
        backend_ref: Some(instance.backend_ref.clone()),
        created_ms: now_ms,
        state_since_ms: now_ms,
        busy_since_ms: None,
        reason: None,
        exit_code: None,
        detail: Some("adopted from a previous leader".into()),
    };
    match found {
        Some((scope, runner, tag)) => {
            record.scope = scope.to_string();
            record.runner_id = Some(runner.id);
            record.runner_name = Some(runner.name.clone());
            record.job_id = tag.job_id;
            record.job_attempt = tag.attempt;
            record.job_handle = tag.handle;
        }
        // No registration: a running runner without one was cancelled or is finishing (the
        // orphan collection stops it after its grace); an exited one is recorded so that its
        // exit code decides the reason of its removal.
        None if instance.status == InstanceStatus::Running => return None,
        None => {}
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan::JobRef, provision::runner_description};

    const TAG: &str = "forgejo-autoscaler owner=0123456789ab";

    fn runner(id: i64, description: &str) -> RunnerInfo {
        RunnerInfo {
            id,
            uuid: format!("uuid-{id}"),
            name: format!("name-{id}"),
            status: "active".into(),
            labels: None,
            ephemeral: true,
            description: description.into(),
        }
    }

    fn observed(id: &str, pool: Option<&str>, status: InstanceStatus) -> ObservedInstance {
        ObservedInstance {
            id: id.into(),
            pool: pool.map(str::to_string),
            status,
            backend_ref: "{\"pod\":\"x\"}".into(),
        }
    }

    #[test]
    fn descriptions_round_trip() {
        let job = JobRef {
            id: 42,
            handle: Some("h-7f".into()),
            attempt: Some(2),
            name: "build".into(),
            runs_on: vec![],
        };
        let text = runner_description(TAG, "debian-1a2b", "debian", Some(&job));
        assert_eq!(
            parse_description(&text, TAG),
            Some(RunnerTag {
                instance: "debian-1a2b".into(),
                pool: Some("debian".into()),
                job_id: Some(42),
                attempt: Some(2),
                handle: Some("h-7f".into()),
            })
        );
        let spare = runner_description(TAG, "debian-9", "debian", None);
        let tag = parse_description(&spare, TAG).unwrap();
        assert_eq!((tag.job_id, tag.handle), (None, None));
        // Another owner whose id starts with ours, and foreign runners, are not ours.
        assert_eq!(
            parse_description(&text.replace("0123456789ab", "0123456789abc"), TAG),
            None
        );
        assert_eq!(parse_description("someone's runner", TAG), None);
        // Written before pools and jobs were added: still the instance.
        assert_eq!(
            parse_description(&format!("{TAG} instance=old-1"), TAG).map(|t| t.instance),
            Some("old-1".into())
        );
    }

    #[test]
    fn a_running_instance_is_adopted_with_its_runner_job_and_scope() {
        let scope: ApiScope = "repo:root/on-demand".parse().unwrap();
        let job = JobRef {
            id: 42,
            handle: Some("h-42".into()),
            attempt: Some(1),
            name: "build".into(),
            runs_on: vec![],
        };
        let runners = vec![
            (
                scope.clone(),
                runner(7, &runner_description(TAG, "debian-other", "debian", None)),
            ),
            (
                scope.clone(),
                runner(
                    8,
                    &runner_description(TAG, "debian-1", "debian", Some(&job)),
                ),
            ),
        ];
        let pools = [("debian", ApiScope::User)];
        let record = adoption_record(
            "kubernetes",
            &observed("debian-1", Some("debian"), InstanceStatus::Running),
            &runners,
            TAG,
            &pools,
            1000,
        )
        .expect("adopted");
        assert_eq!(record.state, InstanceState::Running);
        assert_eq!(record.backend, "kubernetes");
        assert_eq!(record.scope, "repo:root/on-demand");
        assert_eq!(
            (record.runner_id, record.runner_name.as_deref()),
            (Some(8), Some("name-8"))
        );
        assert_eq!((record.job_id, record.job_attempt), (Some(42), Some(1)));
        assert_eq!(record.job_handle.as_deref(), Some("h-42"));
        assert_eq!(record.backend_ref.as_deref(), Some("{\"pod\":\"x\"}"));
    }

    #[test]
    fn without_a_registration_only_exited_instances_are_adopted() {
        let pools = [("debian", ApiScope::User)];
        let running = observed("debian-1", Some("debian"), InstanceStatus::Running);
        assert_eq!(
            adoption_record("docker", &running, &[], TAG, &pools, 0),
            None
        );
        let exited = observed(
            "debian-1",
            Some("debian"),
            InstanceStatus::Exited { code: Some(0) },
        );
        let record = adoption_record("docker", &exited, &[], TAG, &pools, 0).unwrap();
        assert_eq!((record.runner_id, record.job_id), (None, None));
        assert_eq!(record.scope, "user");
        // A pool that is not configured (any more) is left to the orphan collection.
        let elsewhere = observed("gpu-1", Some("gpu"), InstanceStatus::Exited { code: None });
        assert_eq!(
            adoption_record("docker", &elsewhere, &[], TAG, &pools, 0),
            None
        );
    }
}
