//! `cleanup`: removes every instance and runner registration this autoscaler owns.

use std::fmt;

use crate::{plan::Reason, plan::Strategy, reconcile::remove_instance, runtime::Runtime};

#[derive(Debug, Default)]
pub struct CleanupReport {
    pub instances_removed: u32,
    pub orphan_instances_removed: u32,
    pub runners_deleted: u32,
    /// Forgejo 13/14 identities: there is no API to delete them (contract §4 quirk 8).
    pub identities_left: Vec<(i64, String)>,
    pub failures: u32,
}

impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "removed {} instance(s) from the store's records",
            self.instances_removed
        )?;
        writeln!(
            f,
            "removed {} instance(s) found on the backend without a record",
            self.orphan_instances_removed
        )?;
        writeln!(
            f,
            "deleted {} runner registration(s) in Forgejo",
            self.runners_deleted
        )?;
        if !self.identities_left.is_empty() {
            writeln!(
                f,
                "{} runner identit{} stay registered: Forgejo 13/14 has no API to delete runners; remove them in the web UI (Site administration > Actions > Runners, or the repository's/organisation's Actions settings):",
                self.identities_left.len(),
                if self.identities_left.len() == 1 { "y" } else { "ies" }
            )?;
            for (id, name) in &self.identities_left {
                writeln!(f, "  runner {id} {name}")?;
            }
        }
        if self.failures > 0 {
            writeln!(f, "{} removal(s) failed (see the log)", self.failures)?;
        }
        Ok(())
    }
}

pub async fn remove_everything(rt: &Runtime) -> anyhow::Result<CleanupReport> {
    let mut report = CleanupReport::default();
    for record in rt.store.live_instances()? {
        if remove_instance(rt, &record.id, Reason::Uninstall, None).await {
            report.instances_removed += 1;
        } else {
            report.failures += 1;
        }
    }
    for (kind, listed) in rt.backends.list_all().await {
        let backend = rt.backends.get(kind)?;
        match listed {
            Ok(list) => {
                // Parts that could not be listed (an engine of several is down) may hold ours.
                for part in backend.unlisted_parts() {
                    tracing::warn!(backend = kind, error = %part, "cannot list part of the backend");
                    report.failures += 1;
                }
                for instance in list {
                    match backend
                        .delete(&instance.id, std::time::Duration::from_secs(10))
                        .await
                    {
                        Ok(_) => report.orphan_instances_removed += 1,
                        Err(e) => {
                            tracing::warn!(instance = %instance.id, error = %e, "cannot remove");
                            report.failures += 1;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(backend = kind, error = %e, "cannot list the backend's instances");
                report.failures += 1;
            }
        }
    }
    if rt.strategy == Strategy::Ephemeral {
        let tag = rt.provisioner.owner_tag();
        for scope in &rt.scopes {
            match rt.client.list_runners(scope).await {
                Ok(runners) => {
                    for runner in runners
                        .into_iter()
                        .filter(|r| r.description.starts_with(&tag))
                    {
                        match rt.client.delete_runner(scope, runner.id).await {
                            Ok(_) => report.runners_deleted += 1,
                            Err(e) => {
                                tracing::warn!(runner = runner.id, error = %e, "cannot delete");
                                report.failures += 1;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%scope, error = %e, "cannot list runners");
                    report.failures += 1;
                }
            }
        }
    } else {
        report.identities_left = rt
            .store
            .all_identities()?
            .into_iter()
            .map(|(id, pool, scope, _)| (id, format!("(pool {pool}, {scope})")))
            .collect();
    }
    Ok(report)
}
