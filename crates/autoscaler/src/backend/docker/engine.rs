//! One container engine (a Docker daemon, or Podman's Docker-compatible service): its address,
//! a client whose API version was negotiated, and errors that carry the engine's own message.
//!
//! Why negotiate: bollard speaks a newer API than Debian's Docker and Podman (1.41); without
//! negotiation every request fails with "client version is too new".
//!
//! Each engine also keeps its health (placement.rs): a failing engine backs off, and each change
//! of state is logged once (warn when it fails, info when it is back), not on every attempt.

use std::time::{Duration, Instant};

use bollard::Docker;
use tokio::sync::Mutex;

use super::placement::{Change, Health};
use crate::backend::BackendError;

/// The socket used when neither the pool nor `DOCKER_HOST` names one.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Per-request timeout (a create with a slow pull must fit in it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Engine {
    pub address: String,
    client: Mutex<Option<Docker>>,
    health: std::sync::Mutex<Health>,
    /// The last failure's message, for the "not listed" report while the engine backs off.
    last_error: std::sync::Mutex<String>,
}

/// A failed request to an engine: the error, and whether the engine could not be reached at
/// all (as opposed to an engine that answered with a refusal).
#[derive(Debug)]
pub struct Failure {
    pub error: BackendError,
    pub unreachable: bool,
}

impl From<BackendError> for Failure {
    /// An error of ours (not the engine's), e.g. building the credential archive.
    fn from(error: BackendError) -> Failure {
        Failure {
            error,
            unreachable: false,
        }
    }
}

impl Engine {
    pub fn new(address: String) -> Engine {
        Engine {
            address,
            client: Mutex::new(None),
            health: std::sync::Mutex::new(Health::default()),
            last_error: std::sync::Mutex::new(String::new()),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time left in the engine's backoff, if it is backing off.
    pub fn backing_off_for(&self, now: Instant) -> Option<Duration> {
        self.health().backing_off_for(now)
    }

    /// Whether the engine could not be reached and is left alone until its backoff ends.
    pub fn skip_listing(&self, now: Instant) -> bool {
        self.health().skip_listing(now)
    }

    /// Whether the engine's last failure was that it could not be reached.
    pub fn is_unreachable(&self) -> bool {
        self.health().is_unreachable()
    }

    /// The last failure's message (empty when none).
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Records a failure: backoff, and a warning when the engine's state changed.
    pub async fn failed(&self, failure: &Failure) {
        if failure.unreachable {
            // Negotiate again next time: the engine may come back restarted or replaced.
            self.reset().await;
        }
        if let Ok(mut last) = self.last_error.lock() {
            last.clone_from(&failure.error.message);
        }
        let change = self.health().failed(Instant::now(), failure.unreachable);
        let error = &failure.error.message;
        match change {
            Change::Unreachable(wait) => tracing::warn!(
                engine = %self.address,
                backoff_s = wait.as_secs(),
                %error,
                "engine {} unreachable, backing off {} s",
                self.address,
                wait.as_secs()
            ),
            Change::Refusing(wait) => tracing::warn!(
                engine = %self.address,
                backoff_s = wait.as_secs(),
                %error,
                "engine {} refused a container, backing off {} s",
                self.address,
                wait.as_secs()
            ),
            Change::None | Change::Recovered => {
                tracing::debug!(engine = %self.address, %error, "engine failed again")
            }
        }
    }

    /// Records a success (`listing_only`: a listing, which does not clear a refusal).
    pub fn succeeded(&self, listing_only: bool) {
        if self.health().succeeded(listing_only) == Change::Recovered {
            tracing::info!(engine = %self.address, "engine {} is usable again", self.address);
        }
    }

    /// The engine for a pool's `docker_host`: the setting, else `DOCKER_HOST`, else the default
    /// socket.
    pub fn address_for(docker_host: Option<&str>) -> String {
        docker_host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.to_string())
    }

    /// A client, connecting and negotiating on first use (and again after a failure, so an
    /// engine that comes back is used again).
    pub async fn client(&self) -> Result<Docker, BackendError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = self.connect()?;
        let client = client.negotiate_version().await.map_err(|e| {
            self.error(
                "cannot reach the engine (is it running? check docker_host)",
                &e,
            )
        })?;
        tracing::debug!(engine = %self.address, api = %client.client_version(), "connected to the container engine");
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets the client after a connection failure, so the next call negotiates again (the
    /// engine may have been restarted, or replaced by one speaking another version).
    pub async fn reset(&self) {
        *self.client.lock().await = None;
    }

    fn connect(&self) -> Result<Docker, BackendError> {
        let timeout = REQUEST_TIMEOUT.as_secs();
        let address = self.address.as_str();
        let client = if let Some(path) = address.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
        } else if address.starts_with("tcp://") && std::env::var_os("DOCKER_TLS_VERIFY").is_none() {
            Docker::connect_with_http(address, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(BackendError {
                backend: "docker",
                message: format!(
                    "engine {address}: this build speaks to unix:// sockets and plain tcp:// engines only; forward a remote engine's socket to a local unix socket (ssh -L /run/remote.sock:/var/run/docker.sock HOST) and use that"
                ),
            });
        };
        client.map_err(|e| {
            self.error(
                "cannot reach the engine (is it running? check docker_host)",
                &e,
            )
        })
    }

    /// A failure that names the engine, carries its message and says whether it was reached.
    pub fn failure(&self, doing: &str, error: &bollard::errors::Error) -> Failure {
        Failure {
            error: self.error(doing, error),
            unreachable: is_transport(error),
        }
    }

    /// An error that names the engine and carries its message.
    pub fn error(&self, doing: &str, error: &bollard::errors::Error) -> BackendError {
        BackendError {
            backend: "docker",
            message: format!("engine {}: {doing}: {}", self.address, describe(error)),
        }
    }
}

/// The engine's own message for a server error; the innermost cause for a transport error
/// (e.g. "No such file or directory" for a missing socket).
pub fn describe(error: &bollard::errors::Error) -> String {
    use bollard::errors::Error;
    match error {
        Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim()),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text = format!("{text}: {cause_text}");
                }
                source = cause.source();
            }
            text
        }
    }
}

/// Whether the engine answered "no such container / image" (the thing is already gone).
pub fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether the request never reached a working engine (so the client should reconnect).
pub fn is_transport(error: &bollard::errors::Error) -> bool {
    !matches!(
        error,
        bollard::errors::Error::DockerResponseServerError { .. }
            | bollard::errors::Error::DockerContainerWaitError { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_or_dead_socket_is_reported_with_its_address_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = format!("unix://{}/nothing.sock", dir.path().display());
        let error = Engine::new(missing.clone())
            .client()
            .await
            .expect_err("no engine there");
        assert!(error.message.contains(&missing), "{}", error.message);
        assert!(
            error.message.contains("cannot reach the engine"),
            "{}",
            error.message
        );
        assert!(
            error.message.to_lowercase().contains("not found"),
            "the cause is kept: {}",
            error.message
        );
        // A socket file nobody listens on any more (a stopped daemon).
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let stale = format!("unix://{}", path.display());
        let error = Engine::new(stale.clone())
            .client()
            .await
            .expect_err("nobody listens");
        assert!(error.message.contains(&stale), "{}", error.message);
        assert!(
            error.message.to_lowercase().contains("connection refused"),
            "the OS cause is kept: {}",
            error.message
        );
    }

    #[test]
    fn unsupported_schemes_say_what_to_do() {
        let engine = Engine::new("ssh://ci@build-2".into());
        let error = engine.connect().expect_err("ssh is not built in");
        assert!(error.message.contains("ssh -L"), "{}", error.message);
    }

    #[test]
    fn server_errors_keep_the_engine_message() {
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: "No such image: x:1\n".into(),
        };
        assert_eq!(describe(&e), "No such image: x:1 (HTTP 404)");
        assert!(is_not_found(&e) && !is_transport(&e));
    }
}
