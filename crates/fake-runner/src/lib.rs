//! fake-forgejo-runner: a stand-in for forgejo-runner that an autoscaler can start where the
//! real binary goes (see README.md). It registers runners, writes `.runner` files, and runs
//! one job in host mode while speaking the real runner protocol to Forgejo (or the simulator).

pub mod cli;
pub mod commands;
pub mod compat;
pub mod config;
pub mod duration;
pub mod host;
pub mod job;
pub mod labels;
pub mod logging;
pub mod registration;
pub mod rpc;
pub mod shutdown;

use std::process::ExitCode;

use cli::{Cli, Command};
use commands::one_job::Outcome;
use commands::Env;
use compat::Compat;
use config::Config;

/// Exit code of errors other than "no task" (configuration, Declare failure, ...).
pub const EXIT_ERROR: u8 = 1;

/// Exit code of `one-job` for an outcome under the imitated release.
pub fn exit_code(outcome: Outcome, compat: Compat) -> u8 {
    match outcome {
        Outcome::TaskRun(_) => 0,
        Outcome::NoTask => compat.no_task_exit_code(),
    }
}

/// Runs a parsed command line to its exit code. Logging must be set up by the caller.
pub fn run(cli: Cli) -> ExitCode {
    let compat = match Compat::from_env() {
        Ok(compat) => compat,
        Err(e) => return fail(anyhow::Error::msg(e)),
    };
    if cli.version {
        println!("fake-forgejo-runner version {}", compat.version());
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!(
            "Error: a command is required (register, create-runner-file, one-job); see --help"
        );
        return ExitCode::from(EXIT_ERROR);
    };
    match &cli.config {
        Some(path) => tracing::info!("using configuration file {}", path.display()),
        None => tracing::info!("no configuration file specified; using default settings"),
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(e.into()),
    };
    let env = Env {
        config,
        codec: cli.codec.into(),
        compat,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(e.into()),
    };
    runtime.block_on(async move {
        let result = match command {
            Command::Register(args) => commands::register::run(args, &env).await.map(|()| 0),
            Command::CreateRunnerFile(args) => commands::create_runner_file::run(args, &env)
                .await
                .map(|()| 0),
            Command::OneJob(args) => match shutdown::listen() {
                Ok(signals) => commands::one_job::run(args, &env, signals)
                    .await
                    .map(|o| exit_code(o, compat)),
                Err(e) => Err(e.into()),
            },
        };
        match result {
            Ok(code) => ExitCode::from(code),
            Err(e) => fail(e),
        }
    })
}

/// Prints the error like forgejo-runner (`Error: ...` on stderr) and exits 1.
fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("Error: {error:#}");
    ExitCode::from(EXIT_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_proto::runner::v1::Result as TaskResult;

    #[test]
    fn exit_code_table_per_release() {
        let table = [
            (Compat::V12_7, Outcome::NoTask, 1),
            (Compat::V12_8_0, Outcome::NoTask, 0),
            (Compat::V12_8_2, Outcome::NoTask, 2),
            (Compat::V12_7, Outcome::TaskRun(TaskResult::Failure), 0),
            (Compat::V12_8_2, Outcome::TaskRun(TaskResult::Cancelled), 0),
            (Compat::V12_8_0, Outcome::TaskRun(TaskResult::Success), 0),
        ];
        for (compat, outcome, code) in table {
            assert_eq!(exit_code(outcome, compat), code, "{compat:?} {outcome:?}");
        }
    }
}
