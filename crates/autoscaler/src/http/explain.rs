//! `forgejo-autoscaler explain -c FILE [JOB_ID]`: why a job is or is not getting a runner.
//!
//! It makes one observation of its own (Forgejo's job lists, the backends, the store), runs the
//! same pure planner the daemon runs, and reads the answer off the plan: the job fits no pool
//! (and what each pool lacks), a runner was started for it, one will be on the next tick, its
//! pool is at a cap, its pool backs off after failed creations, or it is running (and where).
//! It changes nothing, so it is safe beside a running daemon.

use std::sync::Arc;

use super::{page::age, status::pool_offers};
use crate::{
    clock::now_ms,
    config::Config,
    forgejo::{ApiScope, Job, JobStatus},
    plan::{self, Action, Observed, Plan},
    pools::{best_pool, PoolSpec},
    reconcile::Reconciler,
    runtime::Runtime,
    store::InstanceState,
};

pub async fn explain_command(config: Config, job_id: Option<i64>) -> anyhow::Result<()> {
    let rt = Arc::new(Runtime::start(config).await?);
    let mut reconciler = Reconciler::new(rt.clone());
    let (observed, errors) = reconciler.observe(false, None).await;
    let plan = plan::plan(
        &observed,
        &rt.pools,
        plan::Limits {
            max_runners: rt.config.limits.max_runners,
        },
    );
    for error in &errors {
        println!("Could not read everything this time: {error}");
    }
    let context = Context {
        pools: &rt.pools,
        global_cap: rt.config.limits.max_runners,
        last_failure: &|pool: &str| last_create_failure(&rt, pool),
    };
    let mut found = false;
    for scope_jobs in &observed.jobs {
        for job in scope_jobs.jobs.iter().flatten() {
            if job_id.is_some_and(|id| id != job.id) {
                continue;
            }
            found = true;
            println!(
                "{}",
                explain_job(&context, &observed, &plan, &scope_jobs.scope, job)
            );
        }
    }
    if !found {
        let unread = observed.jobs.iter().any(|s| s.jobs.is_none());
        let text = match (job_id, unread) {
            (_, true) => "Forgejo's job list could not be read, so no job can be explained now (see the error above)".to_string(),
            (Some(id), false) => format!(
                "job {id}: not waiting or running in any configured scope (it is blocked on `needs`, already finished, \
                 or in a scope this autoscaler does not watch)"
            ),
            (None, false) => "no waiting or running jobs in the configured scopes".to_string(),
        };
        println!("{text}");
    }
    Ok(())
}

/// The newest `create_failed` removal of `pool`, for the backoff explanation.
fn last_create_failure(rt: &Runtime, pool: &str) -> Option<String> {
    rt.store
        .recent_gone(200)
        .ok()?
        .into_iter()
        .find(|r| {
            r.pool == pool && r.reason.as_deref() == Some(plan::Reason::CreateFailed.as_str())
        })
        .and_then(|r| r.detail)
        .map(|d| d.lines().next().unwrap_or("").chars().take(300).collect())
}

/// What explaining needs besides the observation and the plan.
pub struct Context<'a> {
    pub pools: &'a [PoolSpec],
    pub global_cap: u32,
    /// The last creation error of a pool, if any.
    pub last_failure: &'a dyn Fn(&str) -> Option<String>,
}

/// One job, one paragraph.
pub fn explain_job(
    context: &Context,
    observed: &Observed,
    plan: &Plan,
    scope: &ApiScope,
    job: &Job,
) -> String {
    let head = format!(
        "job {} {:?} (runs-on [{}], {scope}):",
        job.id,
        job.name,
        job.runs_on.join(", ")
    );
    let now = observed.now_ms.max(now_ms());
    let instance = observed.instances.iter().find(|i| {
        i.state != InstanceState::Gone
            && i.job
                .as_ref()
                .is_some_and(|k| k.id == job.id && (k.handle.is_none() || k.handle == job.handle))
    });
    if job.status == JobStatus::Running {
        return match instance {
            Some(i) => {
                let busy = i.busy_since_ms.map(|b| format!(", busy for {}", age(now.saturating_sub(b) as f64 / 1000.0)));
                format!(
                    "{head} running on our instance {} (pool {}, started {} ago{}). It is removed when the job ends.",
                    i.id,
                    i.pool,
                    age(now.saturating_sub(i.created_ms) as f64 / 1000.0),
                    busy.unwrap_or_default()
                )
            }
            None => format!("{head} running, on a runner this autoscaler did not start for it (or one that took it first)."),
        };
    }
    if job.status != JobStatus::Waiting {
        return format!("{head} neither waiting nor running; nothing to do.");
    }
    let Some(pool) = best_pool(context.pools, scope, &job.runs_on) else {
        return format!("{head} {}", no_pool(context.pools, scope, &job.runs_on));
    };
    if let Some(i) = instance {
        return format!(
            "{head} waiting; instance {} (pool {}) was started for it {} ago and is {}. The job starts when its runner picks it up.",
            i.id,
            pool.name,
            age(now.saturating_sub(i.created_ms) as f64 / 1000.0),
            i.state.as_str()
        );
    }
    if plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::Create { job: Some(j), .. } if j.id == job.id))
    {
        return format!(
            "{head} fits pool {}; an instance will be created for it on the next tick.",
            pool.name
        );
    }
    if observed.backoff_pools.contains(&pool.name) {
        let last = (context.last_failure)(&pool.name)
            .map(|d| format!(" Last error: {d}"))
            .unwrap_or_default();
        return format!(
            "{head} fits pool {}, which is backing off after failed creations (the backend or Forgejo refused); it retries when the backoff ends.{last}",
            pool.name
        );
    }
    if observed.draining {
        return format!(
            "{head} fits pool {}, but the autoscaler is shutting down and creates nothing.",
            pool.name
        );
    }
    let usage = plan.pools.get(&pool.name).cloned().unwrap_or_default();
    let global_used: u32 = plan.pools.values().map(|u| u.used).sum();
    if usage.used >= usage.cap {
        format!(
            "{head} fits pool {}, which is at capacity: {}/{} instances in use and {} jobs waiting for a slot. \
             This is normal under load; it gets a runner when one of the pool's instances is removed.",
            pool.name, usage.used, usage.cap, usage.blocked_by_cap
        )
    } else if global_used >= context.global_cap {
        format!(
            "{head} fits pool {} ({}/{} used), but the global cap is reached: {global_used}/{} instances across all pools. \
             It gets a runner when any instance is removed.",
            pool.name, usage.used, usage.cap, context.global_cap
        )
    } else {
        format!(
            "{head} fits pool {} ({}/{} used); older waiting jobs take the free slots first, it gets one on a coming tick.",
            pool.name, usage.used, usage.cap
        )
    }
}

/// Why no pool fits: every `runs-on` label must be among one pool's label names.
fn no_pool(pools: &[PoolSpec], scope: &ApiScope, runs_on: &[String]) -> String {
    if runs_on.is_empty() {
        return "fits no pool: it has no runs-on labels, and Forgejo gives such a job to no runner.".into();
    }
    let offers: Vec<String> = pool_offers(pools, scope, runs_on)
        .into_iter()
        .map(|o| {
            let lacks = if o.missing.is_empty() {
                String::new()
            } else {
                format!(", lacks [{}]", o.missing.join(", "))
            };
            let scope_note = if o.serves_scope {
                ""
            } else {
                ", does not serve this scope"
            };
            format!(
                "pool {} offers [{}]{lacks}{scope_note}",
                o.pool,
                o.offers.join(", ")
            )
        })
        .collect();
    format!(
        "fits no pool, so this autoscaler starts no runner for it (every runs-on label must be among one pool's label names): {}. \
         Add the missing labels to a pool or change the job's runs-on.",
        offers.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BackendObs, InstanceView, JobKey, JobObs, RunnerObs, ScopeJobs, Strategy};

    fn job(id: i64, status: JobStatus, runs_on: &[&str]) -> Job {
        Job {
            id,
            attempt: Some(1),
            handle: Some(format!("h{id}")),
            repo_id: 1,
            owner_id: 1,
            name: format!("job-{id}"),
            runs_on: runs_on.iter().map(|s| s.to_string()).collect(),
            task_id: 0,
            status,
        }
    }

    fn instance(id: &str, job_id: i64) -> InstanceView {
        InstanceView {
            id: id.into(),
            pool: "debian".into(),
            scope: ApiScope::User,
            state: InstanceState::Running,
            job: Some(JobKey {
                id: job_id,
                handle: Some(format!("h{job_id}")),
            }),
            created_ms: now_ms() - 30_000,
            state_since_ms: now_ms() - 25_000,
            busy_since_ms: Some(now_ms() - 20_000),
            backend: BackendObs::Running,
            runner: RunnerObs::Active,
            job_obs: JobObs::Running,
            idle_while_job_running: 0,
            idle_while_job_running_ms: 0,
            in_flight: false,
        }
    }

    fn scenario(jobs: Vec<Job>, instances: Vec<InstanceView>) -> (Vec<PoolSpec>, Observed) {
        let pools = vec![crate::pools::test_pool(
            "debian",
            &["trixie:docker://debian:trixie"],
            1,
        )];
        let observed = Observed {
            now_ms: now_ms(),
            strategy: Strategy::Ephemeral,
            jobs: vec![ScopeJobs {
                scope: ApiScope::User,
                jobs: Some(jobs),
            }],
            instances,
            orphan_instances: vec![],
            orphan_runners: vec![],
            backoff_pools: Default::default(),
            draining: false,
            create_budget: None,
        };
        (pools, observed)
    }

    fn explain(pools: &[PoolSpec], observed: &Observed, job: &Job) -> String {
        let plan = plan::plan(observed, pools, plan::Limits { max_runners: 10 });
        let context = Context {
            pools,
            global_cap: 10,
            last_failure: &|_| Some("engine refused".into()),
        };
        explain_job(&context, observed, &plan, &ApiScope::User, job)
    }

    #[test]
    fn running_at_capacity_and_no_pool() {
        let running = job(1, JobStatus::Running, &["trixie"]);
        let waiting = job(2, JobStatus::Waiting, &["trixie"]);
        let gpu = job(3, JobStatus::Waiting, &["trixie", "gpu"]);
        let (pools, observed) = scenario(
            vec![running.clone(), waiting.clone(), gpu.clone()],
            vec![instance("debian-a", 1)],
        );
        let text = explain(&pools, &observed, &running);
        assert!(text.starts_with("job 1 \"job-1\" (runs-on [trixie], user): running on our instance debian-a (pool debian"), "{text}");
        assert!(text.contains("busy for 20s"), "{text}");
        let text = explain(&pools, &observed, &waiting);
        assert!(
            text.contains("fits pool debian, which is at capacity: 1/1 instances in use"),
            "{text}"
        );
        let text = explain(&pools, &observed, &gpu);
        assert!(text.contains("fits no pool"), "{text}");
        assert!(
            text.contains("pool debian offers [trixie], lacks [gpu]"),
            "{text}"
        );
    }

    #[test]
    fn a_free_slot_and_a_backoff() {
        let waiting = job(2, JobStatus::Waiting, &["trixie"]);
        let (pools, mut observed) = scenario(vec![waiting.clone()], vec![]);
        let text = explain(&pools, &observed, &waiting);
        assert!(
            text.contains("an instance will be created for it on the next tick"),
            "{text}"
        );
        observed.backoff_pools.insert("debian".into());
        let text = explain(&pools, &observed, &waiting);
        assert!(
            text.contains("backing off after failed creations"),
            "{text}"
        );
        assert!(text.contains("Last error: engine refused"), "{text}");
    }
}
