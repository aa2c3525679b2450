//! A swarm manager: its address, a client whose API version was negotiated (bollard speaks a
//! newer API than Debian's Docker, 1.41), and errors that name the swarm backend and carry the
//! engine's own message, e.g. "This node is not a swarm manager. Use "docker swarm init" ...".

use std::time::Duration;

use bollard::{query_parameters::CreateImageOptions, Docker};
use futures_util::StreamExt;
use tokio::sync::Mutex;

use crate::{
    backend::{docker, BackendError},
    config::PullPolicy,
};

/// The socket used when neither the pool nor `DOCKER_HOST` names one.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Per-request timeout (a pull on the manager must fit in it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Manager {
    address: String,
    client: Mutex<Option<Docker>>,
}

impl Manager {
    /// The manager of a pool's `docker_host`: the setting, else `DOCKER_HOST`, else the
    /// default socket.
    pub fn new(docker_host: Option<&str>) -> Manager {
        let address = docker_host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Manager {
            address,
            client: Mutex::new(None),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// A client, connecting and negotiating on first use (and again after a transport
    /// failure, so a manager that comes back is used again).
    pub async fn client(&self) -> Result<Docker, BackendError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let unreachable = "cannot reach the manager (is it running? check docker_host)";
        let timeout = REQUEST_TIMEOUT.as_secs();
        let connected = if let Some(path) = self.address.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
        } else if self.address.starts_with("tcp://") {
            Docker::connect_with_http(&self.address, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(self.plain_error(
                "only unix:// sockets and plain tcp:// managers are supported; forward a remote manager's socket (ssh -L /run/manager.sock:/var/run/docker.sock HOST) and use that",
            ));
        };
        let client = match connected {
            Ok(client) => client,
            Err(e) => return Err(self.describe(unreachable, &e)),
        };
        let client = match client.negotiate_version().await {
            Ok(client) => client,
            Err(e) => return Err(self.describe(unreachable, &e)),
        };
        tracing::debug!(manager = %self.address, api = %client.client_version(), "connected to the swarm manager");
        *slot = Some(client.clone());
        Ok(client)
    }

    fn describe(&self, doing: &str, error: &bollard::errors::Error) -> BackendError {
        self.plain_error(format!("{doing}: {}", docker::describe(error)))
    }

    /// An engine error: the manager, what was being done, the engine's message. A transport
    /// failure also drops the client so that the next call reconnects.
    pub async fn error(&self, doing: &str, error: &bollard::errors::Error) -> BackendError {
        if docker::is_transport(error) {
            *self.client.lock().await = None;
        }
        self.describe(doing, error)
    }

    pub fn plain_error(&self, message: impl std::fmt::Display) -> BackendError {
        BackendError {
            backend: "swarm",
            message: format!("manager {}: {message}", self.address()),
        }
    }

    /// Applies the pull policy on the manager and returns the image's configured user (empty:
    /// root). The nodes that run the task get the image the way Swarm always does: each tries
    /// to pull it and keeps its local copy when that fails (docs/swarm-backend.md).
    pub async fn ensure_image(
        &self,
        client: &Docker,
        image: &str,
        policy: PullPolicy,
    ) -> Result<Option<String>, BackendError> {
        let inspected = match client.inspect_image(image).await {
            Ok(found) => Some(found),
            Err(e) if docker::is_not_found(&e) => None,
            Err(e) => return Err(self.error(&format!("looking up image {image}"), &e).await),
        };
        let pull = match policy {
            PullPolicy::Never if inspected.is_none() => {
                return Err(self.plain_error(format!(
                    "image {image} is not present on the manager and pull_policy = \"never\"; load it on the nodes (and the manager), or set pull_policy = \"missing\""
                )))
            }
            PullPolicy::Never => false,
            PullPolicy::Missing => inspected.is_none(),
            PullPolicy::Always => true,
        };
        if !pull {
            return Ok(inspected.and_then(|i| i.config).and_then(|c| c.user));
        }
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut progress = client.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                return Err(self.error(&format!("pulling image {image}"), &e).await);
            }
        }
        match client.inspect_image(image).await {
            Ok(found) => Ok(found.config.and_then(|c| c.user)),
            Err(e) => Err(self.error(&format!("looking up image {image}"), &e).await),
        }
    }
}

/// How long reading a service's log may take at removal (a node that is down never answers).
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);
