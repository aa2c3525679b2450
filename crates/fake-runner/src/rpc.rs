//! Builds the Connect client the way forgejo-runner configures its own.

use std::time::Duration;

use runner_proto::client::{RunnerClient, DEFAULT_CALL_TIMEOUT};
use runner_proto::connect::{Code, Codec, ConnectError};

use crate::compat::Compat;

/// Environment variable (seconds) that overrides the HTTP client timeout, as in forgejo-runner.
pub const CLIENT_TIMEOUT_ENV: &str = "FORGEJO_CLIENT_TIMEOUT";

/// A client without credentials (Ping, Register).
pub fn client(instance: &str, codec: Codec, compat: Compat) -> Result<RunnerClient, ConnectError> {
    Ok(RunnerClient::new(instance, codec)?
        .with_user_agent(format!("forgejo-runner/{}", compat.version()))
        .with_timeout(Some(client_timeout())))
}

fn client_timeout() -> Duration {
    std::env::var(CLIENT_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_CALL_TIMEOUT)
}

/// Whether an error means "this Forgejo does not have the procedure".
pub fn is_unimplemented(error: &ConnectError) -> bool {
    error.code == Code::Unimplemented
}
