//! Command line, spelled like forgejo-runner's (the autoscaler starts either binary the same way).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use runner_proto::connect::Codec;

#[derive(Debug, Parser)]
#[command(
    name = "fake-forgejo-runner",
    about = "A stand-in for forgejo-runner: register, create-runner-file and one-job, speaking the runner protocol",
    disable_version_flag = true
)]
pub struct Cli {
    /// Configuration file (YAML; keys runner.file, runner.labels, runner.fetch_interval,
    /// runner.fetch_timeout, runner.report_interval, runner.report_retry, runner.timeout).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Wire encoding of the runner protocol: binary protobuf like forgejo-runner, or protojson.
    #[arg(long, global = true, env = "FAKE_RUNNER_CODEC", value_enum, default_value_t = WireCodec::Proto)]
    pub codec: WireCodec,

    /// Print the version and exit.
    #[arg(short = 'v', long = "version")]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireCodec {
    Proto,
    Json,
}

impl From<WireCodec> for Codec {
    fn from(value: WireCodec) -> Codec {
        match value {
            WireCodec::Proto => Codec::Proto,
            WireCodec::Json => Codec::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register a runner with a registration token and write the registration file.
    Register(RegisterArgs),
    /// Write a registration file for a runner pre-registered with a shared secret.
    CreateRunnerFile(CreateRunnerFileArgs),
    /// Fetch at most one task, run it, and exit.
    OneJob(OneJobArgs),
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Forgejo instance URL.
    #[arg(long)]
    pub instance: Option<String>,
    /// Registration token.
    #[arg(long)]
    pub token: Option<String>,
    /// Runner name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Comma-separated labels, name[:schema[:arg]].
    #[arg(long)]
    pub labels: Option<String>,
    /// Do not ask questions (the stand-in never does; accepted for compatibility).
    #[arg(long)]
    pub no_interactive: bool,
    /// Ask for an ephemeral runner (Forgejo >= 15).
    #[arg(long)]
    pub ephemeral: bool,
}

#[derive(Debug, Args)]
pub struct CreateRunnerFileArgs {
    /// Forgejo instance URL.
    #[arg(long)]
    pub instance: String,
    /// Secret shared with the instance (40 hexadecimal characters).
    #[arg(long)]
    pub secret: String,
    /// Runner name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Also call Declare to check the secret works.
    #[arg(long)]
    pub connect: bool,
}

#[derive(Debug, Args)]
pub struct OneJobArgs {
    /// Forgejo instance URL (instead of a registration file).
    #[arg(long)]
    pub url: Option<String>,
    /// Runner UUID.
    #[arg(long)]
    pub uuid: Option<String>,
    /// Where to read the runner token: file:PATH ($CREDENTIALS_DIRECTORY is expanded).
    #[arg(long = "token-url")]
    pub token_url: Option<String>,
    /// Runner label, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Poll interval (Go duration, default runner.fetch_interval).
    #[arg(long = "fetch-interval")]
    pub fetch_interval: Option<String>,
    /// Only take the job with this handle (FetchSingleTask, Forgejo >= 15).
    #[arg(long)]
    pub handle: Option<String>,
    /// Keep asking until a task arrives.
    #[arg(short = 'w', long)]
    pub wait: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_agreed_command_lines() {
        let cli = Cli::try_parse_from([
            "fake-forgejo-runner",
            "register",
            "--instance",
            "http://h",
            "--token",
            "t",
            "--name",
            "n",
            "--labels",
            "a,b:host",
            "--no-interactive",
            "--ephemeral",
        ])
        .unwrap();
        let Some(Command::Register(r)) = cli.command else {
            panic!("register expected")
        };
        assert!(r.ephemeral && r.no_interactive);
        assert_eq!(r.labels.as_deref(), Some("a,b:host"));

        let cli = Cli::try_parse_from([
            "fake-forgejo-runner",
            "one-job",
            "--url",
            "http://h",
            "--uuid",
            "u",
            "--token-url",
            "file:/t",
            "--label",
            "a",
            "--label",
            "b:host",
            "--handle",
            "H",
            "--wait",
            "--fetch-interval",
            "2s",
            "-c",
            "cfg.yaml",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("cfg.yaml")));
        let Some(Command::OneJob(o)) = cli.command else {
            panic!("one-job expected")
        };
        assert_eq!(o.labels, vec!["a", "b:host"]);
        assert!(o.wait);
        assert_eq!(o.handle.as_deref(), Some("H"));

        let cli = Cli::try_parse_from([
            "fake-forgejo-runner",
            "-c",
            "x.yaml",
            "create-runner-file",
            "--instance",
            "http://h",
            "--secret",
            "s",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::CreateRunnerFile(_))));
        assert!(
            Cli::try_parse_from(["fake-forgejo-runner", "--version"])
                .unwrap()
                .version
        );
        assert!(Cli::try_parse_from(["fake-forgejo-runner", "daemon"]).is_err());
    }
}
