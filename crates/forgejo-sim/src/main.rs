//! `forgejo-sim`: runs the simulator until SIGTERM/SIGINT (see README.md).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use forgejo_sim::{ForgejoVersion, SimConfig, SimServer};

#[derive(Parser, Debug)]
#[command(
    name = "forgejo-sim",
    version,
    about = "Forgejo 13/14/15 Actions simulator"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Forgejo major version to behave like: 13, 14 or 15.
    #[arg(long = "forgejo-version")]
    forgejo_version: ForgejoVersion,
    #[arg(long = "admin-user", default_value = "root")]
    admin_user: String,
    /// Password of the admin user. Prefer FORGEJO_SIM_ADMIN_PASSWORD over the flag.
    #[arg(
        long = "admin-password",
        env = "FORGEJO_SIM_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    admin_password: String,
    /// Simulated seconds per real second (cron schedules, timers, runner status).
    #[arg(long = "time-scale", default_value_t = 1.0)]
    time_scale: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        eprintln!("error: --time-scale must be a positive number");
        return ExitCode::from(2);
    }
    let config = SimConfig {
        version: args.forgejo_version,
        admin_user: args.admin_user,
        admin_password: args.admin_password,
        time_scale: args.time_scale,
    };
    // Handlers first, so a SIGTERM right after the listening line is a clean stop.
    let signals = Signals::install();
    let server = match SimServer::start(args.listen, config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.url());
    let _ = std::io::stdout().flush();
    signals.wait().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, listened to from start-up.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(self) {
        match (self.term, self.int) {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
