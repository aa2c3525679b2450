//! The scenario report: the JSON file of issue 5 and the table printed on stdout (and reused
//! in BENCHMARKS.md).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::{results::SystemResult, system::SystemKind};

/// `target/bench/SCENARIO.json`: `{"scenario": ..., "systems": {NAME: {...}}}` plus context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub systems: BTreeMap<String, SystemResult>,
    /// "autoscaler-process/seed" -> ratio name -> value.
    pub ratios: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    /// Systems asked for that this build cannot run, with the reason.
    pub unavailable: BTreeMap<String, String>,
    pub description: String,
    /// Set when the run used other parameters than issue 5's.
    pub reduced: Option<String>,
    pub command: String,
    pub forgejo_version: String,
    pub time_scale: f64,
    pub machine: Machine,
    /// Unix seconds at the end of the run.
    pub finished_at: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub cpu_model: String,
}

impl Machine {
    pub fn current() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_kib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu_model,
        }
    }

    pub fn describe(&self) -> String {
        let model = if self.cpu_model.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.cpu_model)
        };
        format!(
            "{} CPUs{model}, {:.1} GiB memory, Linux {}",
            self.nproc,
            self.memory_kib as f64 / 1024.0 / 1024.0,
            self.kernel
        )
    }
}

impl ScenarioReport {
    pub fn write_json(&self, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        Ok(path)
    }

    pub fn read_json(path: &Path) -> anyhow::Result<ScenarioReport> {
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// Systems in table order (seed first), as (name, result).
    pub fn ordered(&self) -> Vec<(&str, &SystemResult)> {
        SystemKind::ALL
            .iter()
            .filter_map(|k| self.systems.get(k.name()).map(|r| (k.name(), r)))
            .collect()
    }
}

fn secs(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// The main table (Markdown, readable as plain text too).
pub fn table(report: &ScenarioReport) -> String {
    let mut out = String::new();
    out.push_str("| system | jobs done | makespan s | wait p50 s | p95 | p99 | max | mean | floor P/2+S | mean/floor | requests/job (all / REST) | idle requests/min | peak RSS MiB | CPU s | runners created / removed / leaked |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (name, r) in report.ordered() {
        let makespan = match (r.makespan_s, r.makespan_lower_bound_s) {
            (Some(m), _) => secs(Some(m)),
            (None, Some(lb)) => format!("> {} (stopped)", secs(Some(lb))),
            _ => "-".into(),
        };
        let censored = if r.waits_censored > 0 {
            format!(" ({} never started: lower bounds)", r.waits_censored)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {name} | {}/{}{} | {makespan} | {} | {} | {} | {} | {} | {:.2} (P={:.0}, S={:.3}) | {} | {} / {} | {} | {:.1} | {:.2} | {} / {} / {} |",
            r.jobs_done,
            r.jobs_total,
            censored,
            secs(r.wait_p50_s),
            secs(r.wait_p95_s),
            secs(r.wait_p99_s),
            secs(r.wait_max_s),
            secs(r.wait_mean_s),
            r.floor_wait_s,
            r.poll_interval_s,
            r.runner_start_s,
            r.wait_mean_over_floor.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into()),
            r.api_requests_per_job.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            r.rest_requests_per_job.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            r.idle_requests_per_minute.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            r.peak_rss_kib as f64 / 1024.0,
            r.cpu_s,
            r.runners_created,
            r.runners_removed,
            r.runners_leaked,
        );
    }
    for (name, reason) in &report.unavailable {
        let _ = writeln!(out, "| {name} | {reason} |||||||||||||| ");
    }
    out
}

/// Ratio lines, the reconcile tick line, and the requests by endpoint.
pub fn details(report: &ScenarioReport) -> String {
    let mut out = String::new();
    for (pair, ratios) in &report.ratios {
        let parts: Vec<String> = ratios
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k} {v:.3}")))
            .collect();
        let _ = writeln!(out, "Ratios {pair}: {}", parts.join(", "));
        if let Some(m) = ratios.get("makespan").copied().flatten() {
            let _ = writeln!(out, "  ({pair} makespan: {:.1}x shorter)", 1.0 / m);
        }
    }
    for (name, r) in report.ordered() {
        if let Some(t) = &r.reconcile_tick {
            let le = |v: Option<f64>| {
                v.map(|v| format!("<= {v}s"))
                    .unwrap_or_else(|| "> 10s".into())
            };
            let _ = writeln!(
                out,
                "Reconcile ticks of {name}: {} ticks, mean {:.2} ms, p50 {}, p95 {}",
                t.ticks,
                t.mean_s * 1000.0,
                le(t.p50_le_s),
                le(t.p95_le_s)
            );
        }
        let _ = writeln!(
            out,
            "{name}: CPU s self {:.2}, whole tree {:.2}, runner processes {:.2}; simulator CPU {:.2} s; runner processes left running {}; exit: {}",
            r.cpu_self_s, r.cpu_tree_s, r.cpu_runners_s, r.sim_cpu_s, r.leftover_processes, r.exit
        );
    }
    out.push('\n');
    out.push_str(&endpoint_table(report));
    out
}

/// Requests by route template, one column per system.
pub fn endpoint_table(report: &ScenarioReport) -> String {
    let systems = report.ordered();
    let mut routes: Vec<&String> = systems
        .iter()
        .flat_map(|(_, r)| r.requests_by_endpoint.keys())
        .collect();
    routes.sort();
    routes.dedup();
    let mut out = format!(
        "| endpoint | {} |\n|---|{}\n",
        systems
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(systems.len())
    );
    for route in routes {
        let cells: Vec<String> = systems
            .iter()
            .map(|(_, r)| {
                r.requests_by_endpoint
                    .get(route)
                    .copied()
                    .unwrap_or(0)
                    .to_string()
            })
            .collect();
        let _ = writeln!(out, "| `{route}` | {} |", cells.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ScenarioReport {
        let seed = SystemResult {
            jobs_total: 4,
            jobs_done: 4,
            completed: true,
            makespan_s: Some(40.0),
            wait_mean_s: Some(12.0),
            requests_by_endpoint: BTreeMap::from([("GET /api/v1/a".into(), 3)]),
            ..Default::default()
        };
        let ours = SystemResult {
            jobs_total: 4,
            jobs_done: 2,
            makespan_lower_bound_s: Some(9.0),
            waits_censored: 2,
            requests_by_endpoint: BTreeMap::from([("POST /api/v1/b".into(), 5)]),
            ..Default::default()
        };
        ScenarioReport {
            scenario: "x".into(),
            systems: BTreeMap::from([("seed".into(), seed), ("autoscaler-process".into(), ours)]),
            ratios: BTreeMap::new(),
            unavailable: BTreeMap::from([(
                "autoscaler-docker".into(),
                "not available in this build".into(),
            )]),
            description: String::new(),
            reduced: None,
            command: String::new(),
            forgejo_version: "15".into(),
            time_scale: 1.0,
            machine: Machine::default(),
            finished_at: 0,
        }
    }

    #[test]
    fn table_lists_seed_first_and_marks_unfinished_runs() {
        let t = table(&report());
        let seed_at = t.find("| seed |").expect("seed row");
        let ours_at = t.find("| autoscaler-process |").expect("autoscaler row");
        assert!(seed_at < ours_at);
        assert!(t.contains("> 9.00 (stopped)"));
        assert!(t.contains("2 never started"));
        assert!(t.contains("not available in this build"));
    }

    #[test]
    fn endpoint_table_has_a_zero_where_a_system_never_called() {
        let t = endpoint_table(&report());
        assert!(t.contains("| `GET /api/v1/a` | 3 | 0 |"));
        assert!(t.contains("| `POST /api/v1/b` | 0 | 5 |"));
    }

    #[test]
    fn json_has_the_keys_of_the_issue() {
        let value = serde_json::to_value(report()).expect("serializes");
        let seed = &value["systems"]["seed"];
        for key in [
            "makespan_s",
            "wait_p50_s",
            "wait_p95_s",
            "wait_p99_s",
            "wait_mean_s",
            "floor_wait_s",
            "api_requests_per_job",
            "idle_requests_per_minute",
            "peak_rss_kib",
            "cpu_s",
            "runners_created",
            "runners_leaked",
        ] {
            assert!(seed.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["scenario"], "x");
    }
}
