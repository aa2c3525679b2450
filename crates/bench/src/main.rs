//! `cargo run --release -p bench -- SCENARIO [--systems seed,autoscaler-process,...]`

use std::{path::PathBuf, process::ExitCode};

use bench::{binaries, markdown, plot, report, scenario::Scenario, system::SystemKind};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmarks the autoscaler against the seed's sequential loop on the Forgejo simulator"
)]
struct Cli {
    /// seed-example, burst, steady, idle, large-queue or smoke.
    #[arg(value_parser = Scenario::NAMES)]
    scenario: String,
    /// Comma-separated systems under test.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "seed,autoscaler-process,autoscaler-docker"
    )]
    systems: Vec<String>,
    /// Jobs of the scenario instead of issue 5's number (a reduced run; said so in the report).
    #[arg(long)]
    jobs: Option<u32>,
    /// Longest a system may work on the scenario, in seconds (default: the scenario's).
    #[arg(long)]
    deadline: Option<u64>,
    /// Forgejo version the simulator imitates.
    #[arg(long, default_value = "15", value_parser = ["13", "14", "15"])]
    forgejo_version: String,
    /// Use the binaries already built instead of running cargo build first.
    #[arg(long)]
    no_build: bool,
    /// Do not regenerate BENCHMARKS.md and the plots.
    #[arg(long)]
    no_markdown: bool,
    /// Run nothing: regenerate the plot of SCENARIO and BENCHMARKS.md from target/bench/*.json.
    #[arg(long)]
    render_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cli_render_only = cli.render_only;
    let Some(mut scenario) = Scenario::named(&cli.scenario) else {
        anyhow::bail!("unknown scenario {}", cli.scenario)
    };
    let mut systems = Vec::new();
    for name in &cli.systems {
        let kind = SystemKind::parse(name).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown system {name} (known: seed, autoscaler-process, autoscaler-docker)"
            )
        })?;
        systems.push(kind);
    }
    let mut reduced = Vec::new();
    if let Some(jobs) = cli.jobs {
        let issue = scenario.total_jobs();
        scenario = scenario.with_jobs(jobs);
        if scenario.total_jobs() != issue {
            reduced.push(format!("{} jobs instead of {issue}", scenario.total_jobs()));
        }
    }
    if let Some(deadline) = cli.deadline {
        scenario.deadline = std::time::Duration::from_secs(deadline);
    }
    if !binaries::release_profile() {
        eprintln!("bench: warning: built without optimizations; use cargo run --release -p bench for real numbers");
    }
    let binaries = binaries::Binaries::locate(!cli.no_build && !cli.render_only)?;
    let target = binaries::target_dir()?;
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = tempfile::Builder::new()
        .prefix(&format!("bench-{}-", scenario.name))
        .tempdir_in(std::env::temp_dir())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = bench::Options {
        scenario,
        systems,
        forgejo_version: cli.forgejo_version,
        binaries,
        json_dir: target.join("bench"),
        work_dir: work.path().to_path_buf(),
        command: format!("cargo run --release -p bench -- {}", args.join(" ")),
        reduced: (!reduced.is_empty()).then(|| reduced.join("; ")),
    };
    if cli_render_only {
        let report = report::ScenarioReport::read_json(
            &options
                .json_dir
                .join(format!("{}.json", options.scenario.name)),
        )?;
        return write_markdown(&report, &repo_root, &target);
    }
    let report = bench::run_scenario(&options).await?;
    println!("\nscenario {}: {}\n", report.scenario, report.description);
    print!("{}", report::table(&report));
    println!();
    print!("{}", report::details(&report));
    println!(
        "\nwrote {}",
        target
            .join("bench")
            .join(format!("{}.json", report.scenario))
            .display()
    );
    if !cli.no_markdown && report.scenario != "smoke" {
        write_markdown(&report, &repo_root, &target)?;
    }
    Ok(())
}

/// The scenario's plot and the whole BENCHMARKS.md.
fn write_markdown(
    report: &report::ScenarioReport,
    repo_root: &std::path::Path,
    target: &std::path::Path,
) -> anyhow::Result<()> {
    let svg = repo_root
        .join(markdown::PLOTS_DIR)
        .join(format!("{}-wait.svg", report.scenario));
    if plot::write_wait_svg(report, &svg)? {
        println!("wrote {}", svg.display());
    }
    let notes = std::fs::read_to_string(repo_root.join("crates/bench/NOTES.md")).ok();
    let text = markdown::render(&target.join("bench"), notes.as_deref())?;
    std::fs::write(repo_root.join("BENCHMARKS.md"), text)?;
    println!("wrote {}", repo_root.join("BENCHMARKS.md").display());
    Ok(())
}
