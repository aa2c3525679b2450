//! Unit tests and property tests of the planner's invariants.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::{
    any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig,
};
use proptest::strategy::Strategy as Gen;

use super::*;
use crate::pools::test_pool;

const MIN: u64 = 60_000;

fn job(id: i64, labels: &[&str], status: JobStatus, handle: Option<&str>) -> Job {
    Job {
        id,
        attempt: handle.map(|_| 1),
        handle: handle.map(str::to_string),
        repo_id: 1,
        owner_id: 1,
        name: format!("job-{id}"),
        runs_on: labels.iter().map(|s| s.to_string()).collect(),
        task_id: 0,
        status,
    }
}

fn scope() -> ApiScope {
    ApiScope::Repo {
        owner: "root".into(),
        name: "on-demand".into(),
    }
}

fn instance(id: &str, job_id: Option<i64>, state: InstanceState) -> InstanceView {
    InstanceView {
        id: id.into(),
        pool: "debian".into(),
        scope: scope(),
        state,
        job: job_id.map(|id| JobKey { id, handle: None }),
        created_ms: 0,
        state_since_ms: 0,
        busy_since_ms: None,
        backend: BackendObs::Running,
        runner: RunnerObs::NotTracked,
        job_obs: JobObs::Waiting,
        idle_while_job_running: 0,
        idle_while_job_running_ms: 0,
        in_flight: false,
    }
}

fn observed(strategy: Strategy, jobs: Vec<Job>, instances: Vec<InstanceView>) -> Observed {
    Observed {
        now_ms: MIN,
        strategy,
        jobs: vec![ScopeJobs {
            scope: scope(),
            jobs: Some(jobs),
        }],
        instances,
        orphan_instances: vec![],
        orphan_runners: vec![],
        backoff_pools: BTreeSet::new(),
        draining: false,
        create_budget: None,
    }
}

fn pools() -> Vec<PoolSpec> {
    vec![test_pool("debian", &["trixie", "bookworm", "test"], 3)]
}

fn creates(plan: &Plan) -> Vec<i64> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { job: Some(j), .. } => Some(j.id),
            _ => None,
        })
        .collect()
}

fn deletes(plan: &Plan) -> Vec<(String, Reason)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { id, reason } => Some((id.clone(), *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn one_instance_per_waiting_job_oldest_first_up_to_the_cap() {
    let jobs = (1..=5)
        .rev()
        .map(|id| job(id, &["trixie"], JobStatus::Waiting, None))
        .collect();
    let plan = plan(
        &observed(Strategy::Identities, jobs, vec![]),
        &pools(),
        Limits { max_runners: 10 },
    );
    assert_eq!(creates(&plan), vec![1, 2, 3]);
    assert_eq!(plan.pools["debian"].blocked_by_cap, 2);
}

#[test]
fn running_jobs_and_covered_jobs_get_nothing() {
    let jobs = vec![
        job(1, &["trixie"], JobStatus::Running, None),
        job(2, &["trixie"], JobStatus::Waiting, None),
    ];
    let plan = plan(
        &observed(
            Strategy::Identities,
            jobs,
            vec![instance("a", Some(2), InstanceState::Starting)],
        ),
        &pools(),
        Limits { max_runners: 10 },
    );
    assert!(creates(&plan).is_empty());
}

#[test]
fn unmatched_jobs_are_reported_not_served() {
    let jobs = vec![job(1, &["windows"], JobStatus::Waiting, None)];
    let plan = plan(
        &observed(Strategy::Identities, jobs, vec![]),
        &pools(),
        Limits { max_runners: 10 },
    );
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.unmatched.len(), 1);
    assert_eq!(plan.unmatched[0].runs_on, vec!["windows".to_string()]);
}

#[test]
fn global_cap_counts_starting_and_deleting_instances() {
    let jobs = (1..=3)
        .map(|id| job(id, &["trixie"], JobStatus::Waiting, None))
        .collect();
    let existing = vec![
        instance("a", None, InstanceState::Deleting),
        instance("b", Some(9), InstanceState::Starting),
    ];
    let plan = plan(
        &observed(Strategy::Identities, jobs, existing),
        &pools(),
        Limits { max_runners: 3 },
    );
    assert_eq!(creates(&plan).len(), 1);
}

#[test]
fn a_job_gone_once_is_not_gone() {
    let mut i = instance("a", Some(1), InstanceState::Running);
    i.job_obs = JobObs::Absent { count: 1 };
    let o = observed(Strategy::Ephemeral, vec![], vec![i.clone()]);
    assert!(deletes(&plan(&o, &pools(), Limits { max_runners: 5 })).is_empty());
    i.job_obs = JobObs::Absent { count: 2 };
    let o = observed(Strategy::Ephemeral, vec![], vec![i]);
    assert_eq!(
        deletes(&plan(&o, &pools(), Limits { max_runners: 5 })),
        vec![("a".into(), Reason::JobGone)]
    );
}

#[test]
fn failed_listing_creates_nothing_and_removes_nothing() {
    let mut o = observed(Strategy::Ephemeral, vec![], vec![]);
    o.jobs[0].jobs = None;
    let mut i = instance("a", Some(1), InstanceState::Running);
    i.job_obs = JobObs::Unknown;
    o.instances.push(i);
    let plan = plan(&o, &pools(), Limits { max_runners: 5 });
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
}

#[test]
fn deadlines_have_reasons() {
    let mut starting = instance("boot", Some(1), InstanceState::Starting);
    starting.state_since_ms = 0;
    let mut idle = instance("idle", Some(2), InstanceState::Running);
    idle.runner = RunnerObs::Idle;
    let mut busy = instance("busy", Some(3), InstanceState::Running);
    busy.busy_since_ms = Some(0);
    let mut o = observed(Strategy::Ephemeral, vec![], vec![starting, idle, busy]);
    o.now_ms = 4 * 3600 * 1000;
    let got: BTreeMap<_, _> = deletes(&plan(&o, &pools(), Limits { max_runners: 5 }))
        .into_iter()
        .collect();
    assert_eq!(got["boot"], Reason::BootTimeout);
    assert_eq!(got["idle"], Reason::PickupTimeout);
    assert_eq!(got["busy"], Reason::JobTimeout);
}

#[test]
fn exit_codes_of_one_job() {
    let mut i = instance("a", Some(1), InstanceState::Running);
    for (code, busy, reason) in [
        (Some(0), true, Reason::JobDone),
        (Some(2), false, Reason::NoTask),
        // 13/14: the job left the queue because it was cancelled, not because we took it.
        (Some(2), true, Reason::NoTask),
        (Some(1), false, Reason::NoTask),
        (Some(137), false, Reason::RunnerFailed),
        // Killed mid-job (SIGKILL, OOM): a failure, not a done job.
        (Some(137), true, Reason::RunnerFailed),
        (Some(1), true, Reason::RunnerFailed),
        (None, true, Reason::JobDone),
    ] {
        i.backend = BackendObs::Exited { code };
        i.busy_since_ms = busy.then_some(1);
        let o = observed(Strategy::Ephemeral, vec![], vec![i.clone()]);
        assert_eq!(
            deletes(&plan(&o, &pools(), Limits { max_runners: 5 })),
            vec![("a".into(), reason)],
            "{code:?}"
        );
    }
}

#[test]
fn ephemeral_runner_deleted_under_a_running_job_stops_the_instance() {
    let mut i = instance("a", Some(1), InstanceState::Running);
    i.busy_since_ms = Some(1);
    i.job_obs = JobObs::Absent { count: 2 };
    i.runner = RunnerObs::Gone { count: 2 };
    let o = observed(Strategy::Ephemeral, vec![], vec![i]);
    assert_eq!(
        deletes(&plan(&o, &pools(), Limits { max_runners: 5 })),
        vec![("a".into(), Reason::RunnerGone)]
    );
}

#[test]
fn job_taken_by_another_runner_releases_ours_after_confirmation() {
    let mut i = instance("a", Some(1), InstanceState::Running);
    i.job_obs = JobObs::Running;
    i.runner = RunnerObs::Idle;
    i.idle_while_job_running = 2;
    i.idle_while_job_running_ms = 40_000;
    let o = observed(Strategy::Ephemeral, vec![], vec![i.clone()]);
    assert!(deletes(&plan(&o, &pools(), Limits { max_runners: 5 })).is_empty());
    i.idle_while_job_running = 3;
    i.idle_while_job_running_ms = 20_000;
    let o = observed(Strategy::Ephemeral, vec![], vec![i.clone()]);
    assert!(
        deletes(&plan(&o, &pools(), Limits { max_runners: 5 })).is_empty(),
        "idle between heartbeats is not taken"
    );
    i.idle_while_job_running_ms = 31_000;
    let o = observed(Strategy::Ephemeral, vec![], vec![i]);
    assert_eq!(
        deletes(&plan(&o, &pools(), Limits { max_runners: 5 })),
        vec![("a".into(), Reason::TakenByOther)]
    );
}

#[test]
fn draining_creates_nothing_and_keeps_busy_instances() {
    let mut busy = instance("busy", Some(1), InstanceState::Running);
    busy.busy_since_ms = Some(1);
    let idle = instance("idle", Some(2), InstanceState::Running);
    let mut o = observed(
        Strategy::Ephemeral,
        vec![job(3, &["trixie"], JobStatus::Waiting, Some("h"))],
        vec![busy, idle],
    );
    o.draining = true;
    let plan = plan(&o, &pools(), Limits { max_runners: 5 });
    assert!(creates(&plan).is_empty());
    assert_eq!(deletes(&plan), vec![("idle".into(), Reason::Shutdown)]);
}

#[test]
fn create_budget_limits_creates() {
    let jobs = (1..=3)
        .map(|id| job(id, &["trixie"], JobStatus::Waiting, None))
        .collect();
    let mut o = observed(Strategy::Identities, jobs, vec![]);
    o.create_budget = Some(2);
    assert_eq!(
        creates(&plan(&o, &pools(), Limits { max_runners: 5 })),
        vec![1, 2]
    );
}

#[test]
fn warm_spares_fill_up_to_the_setting() {
    let mut p = pools();
    p[0].warm_spares = 2;
    let o = observed(
        Strategy::Identities,
        vec![],
        vec![instance("s", None, InstanceState::Running)],
    );
    let plan = plan(&o, &p, Limits { max_runners: 5 });
    let spares = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Create { job: None, .. }))
        .count();
    assert_eq!(spares, 1);
}

#[test]
fn orphans_need_two_sightings_and_the_grace_period() {
    let mut o = observed(Strategy::Ephemeral, vec![], vec![]);
    o.orphan_instances = vec![
        OrphanView {
            key: "young".into(),
            backend: Some("process".into()),
            scope: None,
            first_seen_ms: 2 * MIN,
            seen_count: 5,
        },
        OrphanView {
            key: "once".into(),
            backend: Some("process".into()),
            scope: None,
            first_seen_ms: 0,
            seen_count: 1,
        },
    ];
    o.now_ms = 3 * MIN;
    o.orphan_instances.push(OrphanView {
        key: "old".into(),
        backend: Some("process".into()),
        scope: None,
        first_seen_ms: 0,
        seen_count: 2,
    });
    let plan = plan(&o, &pools(), Limits { max_runners: 5 });
    assert_eq!(
        plan.actions,
        vec![Action::DeleteOrphanInstance {
            backend: "process".into(),
            key: "old".into()
        }]
    );
}

// ---- property tests -------------------------------------------------------------------------

fn arb_backend() -> impl Gen<Value = BackendObs> {
    prop_oneof![
        Just(BackendObs::Running),
        proptest::option::of(0i32..3).prop_map(|code| BackendObs::Exited { code }),
        (0u32..4).prop_map(|count| BackendObs::Missing { count }),
        Just(BackendObs::Unknown),
    ]
}

fn arb_runner() -> impl Gen<Value = RunnerObs> {
    prop_oneof![
        Just(RunnerObs::Active),
        Just(RunnerObs::Idle),
        Just(RunnerObs::Offline),
        (0u32..4).prop_map(|count| RunnerObs::Gone { count }),
        Just(RunnerObs::Unknown),
        Just(RunnerObs::NotTracked),
    ]
}

fn arb_job_obs() -> impl Gen<Value = JobObs> {
    prop_oneof![
        Just(JobObs::Waiting),
        Just(JobObs::Running),
        (0u32..4).prop_map(|count| JobObs::Absent { count }),
        Just(JobObs::Unknown),
    ]
}

fn arb_state() -> impl Gen<Value = InstanceState> {
    prop_oneof![
        Just(InstanceState::Starting),
        Just(InstanceState::Running),
        Just(InstanceState::Deleting),
        Just(InstanceState::Gone),
    ]
}

const POOL_NAMES: [&str; 3] = ["small", "big", "other"];
const LABELS: [&str; 4] = ["a", "b", "c", "d"];

fn arb_pools() -> impl Gen<Value = Vec<PoolSpec>> {
    (1u32..6, 1u32..6, 0u32..4, 0u32..3).prop_map(|(cap_small, cap_big, cap_other, spares)| {
        let mut small = test_pool("small", &["a"], cap_small);
        small.warm_spares = spares.min(cap_small);
        vec![
            small,
            test_pool("big", &["a", "b", "c"], cap_big),
            test_pool("other", &["d"], cap_other),
        ]
    })
}

fn arb_observed() -> impl Gen<Value = Observed> {
    let job = (
        1i64..60,
        proptest::sample::subsequence(LABELS.to_vec(), 0..3),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(id, labels, waiting, handle)| {
            let status = if waiting {
                JobStatus::Waiting
            } else {
                JobStatus::Running
            };
            let handle = format!("h{id}-{handle}");
            job(id, &labels, status, Some(&handle))
        });
    let instance = (
        0usize..3,
        proptest::option::of((1i64..60, 0u8..3)),
        arb_state(),
        0u64..20,
        proptest::option::of(0u64..20),
        arb_backend(),
        arb_runner(),
        arb_job_obs(),
        0u32..5,
        any::<bool>(),
    )
        .prop_map(
            |(pool, job, state, since, busy, backend, runner, job_obs, idle, in_flight)| {
                InstanceView {
                    id: String::new(),
                    pool: POOL_NAMES[pool].into(),
                    scope: scope(),
                    state,
                    job: job.map(|(id, h)| JobKey {
                        id,
                        handle: Some(format!("h{id}-{h}")),
                    }),
                    created_ms: since * MIN,
                    state_since_ms: since * MIN,
                    busy_since_ms: busy.map(|b| b * MIN),
                    backend,
                    runner,
                    job_obs,
                    idle_while_job_running: idle,
                    idle_while_job_running_ms: idle as u64 * 15_000,
                    in_flight,
                }
            },
        );
    (
        proptest::collection::vec(job, 0..40),
        proptest::collection::vec(instance, 0..25),
        prop_oneof![Just(Strategy::Ephemeral), Just(Strategy::Identities)],
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0u32..10),
        0u64..400,
    )
        .prop_map(
            |(jobs, mut instances, strategy, draining, fetch_failed, budget, now_min)| {
                for (index, instance) in instances.iter_mut().enumerate() {
                    instance.id = format!("i{index}");
                }
                Observed {
                    now_ms: now_min * MIN,
                    strategy,
                    jobs: vec![ScopeJobs {
                        scope: scope(),
                        jobs: (!fetch_failed).then_some(jobs),
                    }],
                    instances,
                    orphan_instances: vec![],
                    orphan_runners: vec![],
                    backoff_pools: BTreeSet::new(),
                    draining,
                    create_budget: budget,
                }
            },
        )
}

fn counts_after(observed: &Observed, plan: &Plan) -> BTreeMap<String, u32> {
    let mut per_pool: BTreeMap<String, u32> = BTreeMap::new();
    for i in observed
        .instances
        .iter()
        .filter(|i| i.state != InstanceState::Gone)
    {
        *per_pool.entry(i.pool.clone()).or_default() += 1;
    }
    for action in &plan.actions {
        if let Action::Create { pool, .. } = action {
            *per_pool.entry(pool.clone()).or_default() += 1;
        }
    }
    per_pool
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn caps_are_never_exceeded_by_creates(observed in arb_observed(), pools in arb_pools(), global in 1u32..12) {
        let plan = plan(&observed, &pools, Limits { max_runners: global });
        let before: u32 = observed.instances.iter().filter(|i| i.state != InstanceState::Gone).count() as u32;
        let created = plan.actions.iter().filter(|a| matches!(a, Action::Create { .. })).count() as u32;
        if created > 0 {
            prop_assert!(before + created <= global, "global cap {}: {} + {}", global, before, created);
            let after = counts_after(&observed, &plan);
            for pool in &pools {
                let n = after.get(&pool.name).copied().unwrap_or(0);
                let had = observed.instances.iter().filter(|i| i.pool == pool.name && i.state != InstanceState::Gone).count() as u32;
                prop_assert!(n <= pool.max_runners.max(had), "pool {} cap {}: {}", pool.name, pool.max_runners, n);
            }
        }
    }

    #[test]
    fn never_two_serving_instances_for_one_attempt(observed in arb_observed(), pools in arb_pools()) {
        let plan = plan(&observed, &pools, Limits { max_runners: 50 });
        let mut created = std::collections::HashSet::new();
        for action in &plan.actions {
            if let Action::Create { job: Some(job), .. } = action {
                prop_assert!(created.insert((job.id, job.handle.clone())), "two creates for {:?}", job.id);
                let deleted: Vec<&str> = plan.actions.iter().filter_map(|a| match a { Action::Delete { id, .. } => Some(id.as_str()), _ => None }).collect();
                let serving = observed.instances.iter().any(|i| {
                    matches!(i.state, InstanceState::Starting | InstanceState::Running)
                        && !deleted.contains(&i.id.as_str())
                        && i.job.as_ref().is_some_and(|k| k.id == job.id && (observed.strategy == Strategy::Identities || k.handle == job.handle))
                });
                prop_assert!(!serving, "job {} already has a serving instance", job.id);
            }
        }
    }

    #[test]
    fn creates_never_exceed_demand(observed in arb_observed(), pools in arb_pools()) {
        let plan = plan(&observed, &pools, Limits { max_runners: 50 });
        let waiting = observed.jobs.iter().flat_map(|s| s.jobs.iter().flatten()).filter(|j| j.status == JobStatus::Waiting).map(|j| j.id).collect::<BTreeSet<_>>().len();
        let job_creates = plan.actions.iter().filter(|a| matches!(a, Action::Create { job: Some(_), .. })).count();
        let spare_creates = plan.actions.iter().filter(|a| matches!(a, Action::Create { job: None, .. })).count() as u32;
        prop_assert!(job_creates <= waiting);
        prop_assert!(spare_creates <= pools.iter().map(|p| p.warm_spares).sum::<u32>());
        if let Some(budget) = observed.create_budget {
            prop_assert!(job_creates as u32 <= budget);
        }
        if observed.draining {
            prop_assert_eq!(job_creates + spare_creates as usize, 0);
        }
    }

    #[test]
    fn busy_instances_are_only_removed_for_cause(observed in arb_observed(), pools in arb_pools()) {
        let plan = plan(&observed, &pools, Limits { max_runners: 50 });
        for (id, reason) in deletes(&plan) {
            let instance = observed.instances.iter().find(|i| i.id == id).expect("deletes name known instances");
            prop_assert!(!instance.in_flight, "in-flight instance {} touched", id);
            let busy = is_busy(observed.strategy, instance) && instance.state == InstanceState::Running;
            if busy {
                let for_cause = matches!(reason, Reason::JobDone | Reason::JobTimeout | Reason::RunnerGone | Reason::InstanceLost | Reason::RunnerFailed | Reason::NoTask);
                prop_assert!(for_cause, "busy instance {} removed for {:?}", id, reason);
                if reason == Reason::RunnerGone {
                    prop_assert!(matches!(instance.runner, RunnerObs::Gone { count } if count >= CONFIRMATIONS), "runner not gone twice");
                }
                if reason == Reason::InstanceLost {
                    prop_assert!(matches!(instance.backend, BackendObs::Missing { count } if count >= CONFIRMATIONS), "instance not missing twice");
                }
                if matches!(reason, Reason::JobDone | Reason::RunnerFailed | Reason::NoTask) {
                    prop_assert!(matches!(instance.backend, BackendObs::Exited { .. }), "instance did not exit");
                }
            }
        }
    }

    #[test]
    fn gone_is_never_decided_from_one_observation(observed in arb_observed(), pools in arb_pools()) {
        let plan = plan(&observed, &pools, Limits { max_runners: 50 });
        for (id, reason) in deletes(&plan) {
            let instance = observed.instances.iter().find(|i| i.id == id).unwrap();
            match reason {
                Reason::JobGone => prop_assert!(
                    matches!(instance.job_obs, JobObs::Absent { count } if count >= CONFIRMATIONS)
                        || matches!(instance.runner, RunnerObs::Gone { count } if count >= CONFIRMATIONS),
                    "job not absent twice"
                ),
                Reason::InstanceLost => prop_assert!(matches!(instance.backend, BackendObs::Missing { count } if count >= CONFIRMATIONS), "not missing twice"),
                _ => {}
            }
        }
    }

    #[test]
    fn planning_is_deterministic(observed in arb_observed(), pools in arb_pools()) {
        prop_assert_eq!(plan(&observed, &pools, Limits { max_runners: 7 }), plan(&observed, &pools, Limits { max_runners: 7 }));
    }
}
