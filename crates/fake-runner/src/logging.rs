//! Log lines on stderr, one per event, in a plain human format:
//! `2026-04-08T10:00:00.123Z  INFO task 17 picked`.

use tracing_subscriber::EnvFilter;

/// Variable holding a tracing filter (default `info`).
pub const LOG_ENV: &str = "FAKE_RUNNER_LOG";

pub fn init() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
