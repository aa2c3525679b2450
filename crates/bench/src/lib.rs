//! Benchmark harness of issue 5: runs a scenario against each system under test, each with
//! its own simulator process, and reports the numbers side by side with the ratios
//! autoscaler/seed. `main.rs` is the command line; the smoke test calls [`run_scenario`].

pub mod binaries;
pub mod markdown;
pub mod plot;
pub mod probe;
pub mod procmon;
pub mod prom;
pub mod report;
pub mod results;
pub mod run;
pub mod scenario;
pub mod sim;
pub mod system;
pub mod workload;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use report::{Machine, ScenarioReport};
use scenario::Scenario;
use system::SystemKind;

/// Everything one invocation needs.
pub struct Options {
    pub scenario: Scenario,
    pub systems: Vec<SystemKind>,
    pub forgejo_version: String,
    pub binaries: binaries::Binaries,
    /// Where `SCENARIO.json` goes.
    pub json_dir: PathBuf,
    /// Where runs keep their logs and work directories.
    pub work_dir: PathBuf,
    /// The command line, for the report.
    pub command: String,
    /// Set when the parameters differ from issue 5's.
    pub reduced: Option<String>,
}

/// Runs every available system through the scenario and writes `SCENARIO.json`.
pub async fn run_scenario(options: &Options) -> anyhow::Result<ScenarioReport> {
    let settings = run::RunSettings {
        binaries: &options.binaries,
        forgejo_version: &options.forgejo_version,
        work_dir: &options.work_dir,
    };
    let mut systems = BTreeMap::new();
    let mut unavailable = BTreeMap::new();
    for kind in &options.systems {
        if let Some(reason) = kind.unavailable() {
            eprintln!("bench: {}: {reason}", kind.name());
            unavailable.insert(kind.name().to_string(), reason);
            continue;
        }
        eprintln!("bench: {} / {} ...", options.scenario.name, kind.name());
        let result = run::run_system(&options.scenario, *kind, &settings).await?;
        eprintln!(
            "bench: {} done: {}/{} jobs in {:.1}s",
            kind.name(),
            result.jobs_done,
            result.jobs_total,
            result.elapsed_s
        );
        systems.insert(kind.name().to_string(), result);
    }
    let mut ratios = BTreeMap::new();
    if let Some(seed) = systems.get(SystemKind::Seed.name()) {
        for (name, result) in systems
            .iter()
            .filter(|(n, _)| n.as_str() != SystemKind::Seed.name())
        {
            ratios.insert(format!("{name}/seed"), results::ratios(result, seed));
        }
    }
    let report = ScenarioReport {
        scenario: options.scenario.name.clone(),
        systems,
        ratios,
        unavailable,
        description: options.scenario.describe(),
        reduced: options.reduced.clone(),
        command: options.command.clone(),
        forgejo_version: options.forgejo_version.clone(),
        time_scale: options.scenario.time_scale,
        machine: Machine::current(),
        finished_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs(),
    };
    report.write_json(&options.json_dir)?;
    Ok(report)
}
