//! Pools as the planner sees them, and Forgejo's label rule for fitting a job to a pool.

use std::{collections::BTreeSet, time::Duration};

use crate::forgejo::ApiScope;

/// Deadlines of an instance's states (design.md: "every state has a deadline").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Record written -> backend reports the instance started.
    pub boot: Duration,
    /// Instance started -> its runner picked a job.
    pub pickup: Duration,
    /// Job picked -> instance gone.
    pub job: Duration,
    /// Removal requested -> removal confirmed (after that, removal is retried).
    pub teardown: Duration,
    /// How long an unknown (orphan) instance or runner must have been seen before removal.
    pub orphan_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    /// Label names the pool's runners declare (the part before the first `:`).
    pub label_names: BTreeSet<String>,
    /// Full label strings (`name:docker://image`) passed to the runner.
    pub labels: Vec<String>,
    pub max_runners: u32,
    pub warm_spares: u32,
    /// Scopes this pool serves; `None` = every configured scope.
    pub scopes: Option<Vec<ApiScope>>,
    pub deadlines: Deadlines,
}

impl PoolSpec {
    /// Forgejo's `ItRunsOn` (contract §1.4, §3.1): a job fits when it has labels and every one of
    /// them is among the pool's label names. Exact, case-sensitive.
    pub fn fits(&self, runs_on: &[String]) -> bool {
        !runs_on.is_empty() && runs_on.iter().all(|label| self.label_names.contains(label))
    }

    pub fn serves(&self, scope: &ApiScope) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(scope))
    }
}

/// The pool a job goes to: among the pools that serve its scope and fit its labels, the most
/// specific one (fewest labels beyond the job's), earlier in the configuration on a tie.
pub fn best_pool<'a>(
    pools: &'a [PoolSpec],
    scope: &ApiScope,
    runs_on: &[String],
) -> Option<&'a PoolSpec> {
    pools
        .iter()
        .enumerate()
        .filter(|(_, pool)| pool.serves(scope) && pool.fits(runs_on))
        .min_by_key(|(index, pool)| (pool.label_names.len(), *index))
        .map(|(_, pool)| pool)
}

/// Every label name that any pool serving `scope` offers, sorted: the `labels=` query Forgejo 13
/// needs to list the jobs those pools could take (contract §4 quirk 1).
pub fn label_query(pools: &[PoolSpec], scope: &ApiScope) -> Vec<String> {
    let names: BTreeSet<&String> = pools
        .iter()
        .filter(|p| p.serves(scope))
        .flat_map(|p| &p.label_names)
        .collect();
    names.into_iter().cloned().collect()
}

/// The name part of a runner label `name[:schema[:arg]]`.
pub fn label_name(label: &str) -> &str {
    label.split(':').next().unwrap_or(label)
}

#[cfg(test)]
pub(crate) fn test_pool(name: &str, labels: &[&str], max_runners: u32) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        label_names: labels.iter().map(|l| label_name(l).to_string()).collect(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        max_runners,
        warm_spares: 0,
        scopes: None,
        deadlines: Deadlines {
            boot: Duration::from_secs(60),
            pickup: Duration::from_secs(300),
            job: Duration::from_secs(3600),
            teardown: Duration::from_secs(60),
            orphan_grace: Duration::from_secs(120),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn forgejo_label_rule() {
        let pool = test_pool(
            "debian",
            &[
                "trixie:docker://debian:trixie",
                "bookworm:docker://debian:bookworm",
                "test",
            ],
            4,
        );
        assert!(pool.fits(&labels(&["trixie"])));
        assert!(pool.fits(&labels(&["bookworm", "test"])));
        assert!(!pool.fits(&labels(&["bookworm", "arm64"])));
        assert!(
            !pool.fits(&labels(&[])),
            "a job without runs-on never matches"
        );
        assert!(!pool.fits(&labels(&["Trixie"])), "case-sensitive");
        assert!(!pool.fits(&labels(&[" test"])), "no trimming");
    }

    #[test]
    fn most_specific_pool_wins() {
        let pools = vec![
            test_pool("big", &["linux", "docker", "amd64", "gpu"], 4),
            test_pool("small", &["linux", "docker"], 4),
            test_pool("same-size", &["linux", "amd64"], 4),
        ];
        let scope = ApiScope::User;
        assert_eq!(
            best_pool(&pools, &scope, &labels(&["linux"])).unwrap().name,
            "small"
        );
        assert_eq!(
            best_pool(&pools, &scope, &labels(&["gpu"])).unwrap().name,
            "big"
        );
        assert!(best_pool(&pools, &scope, &labels(&["windows"])).is_none());
        assert_eq!(
            label_query(&pools, &scope),
            labels(&["amd64", "docker", "gpu", "linux"])
        );
    }

    #[test]
    fn pools_only_serve_their_scopes() {
        let mut pool = test_pool("p", &["x"], 1);
        pool.scopes = Some(vec![ApiScope::Org("a".into())]);
        assert!(best_pool(
            std::slice::from_ref(&pool),
            &ApiScope::Org("b".into()),
            &labels(&["x"])
        )
        .is_none());
        assert!(best_pool(
            std::slice::from_ref(&pool),
            &ApiScope::Org("a".into()),
            &labels(&["x"])
        )
        .is_some());
    }
}
