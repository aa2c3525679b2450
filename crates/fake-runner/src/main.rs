//! fake-forgejo-runner (see README.md).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fake_forgejo_runner::cli::Cli::parse();
    fake_forgejo_runner::logging::init();
    fake_forgejo_runner::run(cli)
}
