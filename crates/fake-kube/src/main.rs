//! `fake-kube`: runs the fake Kubernetes API server until SIGTERM/SIGINT (see README.md).

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use fake_kube::{FakeKube, KubeletOptions, Options};

#[derive(Parser, Debug)]
#[command(
    name = "fake-kube",
    version,
    about = "In-memory fake Kubernetes API server for tests"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Run each pod's first container as a local process.
    #[arg(long)]
    kubelet: bool,
    /// Directory searched first for container commands (repeatable; kubelet mode).
    #[arg(long = "kubelet-path")]
    kubelet_path: Vec<PathBuf>,
    /// Change events kept for watches (older resumes get 410 Expired).
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// File holding a bearer token every API request must carry.
    #[arg(long = "token-file")]
    token_file: Option<PathBuf>,
    /// Namespaces that exist at start (repeatable; default: default, kube-system).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Seconds between watch bookmarks.
    #[arg(long = "bookmark-seconds", default_value_t = 5)]
    bookmark_seconds: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let token = match &args.token_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) => {
                eprintln!("fake-kube: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let mut options = Options {
        history_limit: args.history,
        token,
        bookmark_interval: Duration::from_secs(args.bookmark_seconds.max(1)),
        kubelet: args.kubelet.then(|| KubeletOptions {
            path: args.kubelet_path.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if !args.namespaces.is_empty() {
        options.namespaces = args.namespaces.clone();
    }
    let kube = match FakeKube::start_with(args.listen, options).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("fake-kube: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    println!("fake-kube listening on {}", kube.url());
    let _ = std::io::stdout().flush();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-kube: signals: {e}");
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    kube.shutdown().await;
    ExitCode::SUCCESS
}
