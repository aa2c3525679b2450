//! The connection to the API server: the kube-rs client (built on first use from a
//! kubeconfig, the pod's service account, or the usual inference), a token bucket that bounds
//! the requests per second, and retries of throttled (429, honouring Retry-After) and failed
//! (5xx, timeouts) requests.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    Client,
};

use crate::{backend::BackendError, config::KubernetesConfig};

/// Tries per request (the first and three retries).
const ATTEMPTS: u32 = 4;
/// Longest wait between two tries, whatever Retry-After says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

pub fn err(message: impl Into<String>) -> BackendError {
    BackendError {
        backend: "kubernetes",
        message: message.into(),
    }
}

/// A token bucket: `qps` tokens per second, at most `burst` saved up.
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            qps: qps.max(0.001),
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for a token. Waiters are served in turn (the mutex is fair).
    pub async fn acquire(&self) {
        let mut state = self.state.lock().await;
        loop {
            let now = Instant::now();
            let (tokens, since) = *state;
            let tokens =
                (tokens + now.duration_since(since).as_secs_f64() * self.qps).min(self.burst);
            if tokens >= 1.0 {
                *state = (tokens - 1.0, now);
                return;
            }
            *state = (tokens, now);
            tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / self.qps)).await;
        }
    }
}

pub struct Connection {
    settings: KubernetesConfig,
    client: tokio::sync::Mutex<Option<Client>>,
    pub limiter: RateLimiter,
}

/// The status code of an API error, if the server answered.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub fn is_not_found(error: &kube::Error) -> bool {
    status_code(error) == Some(404)
}

/// The API's own words for an error (its Status message and reason), else the client's.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "{} ({} {})",
            status.message,
            status.code,
            if status.reason.is_empty() {
                "error"
            } else {
                &status.reason
            }
        ),
        other => other.to_string(),
    }
}

impl Connection {
    pub fn new(settings: KubernetesConfig) -> Connection {
        let limiter = RateLimiter::new(settings.qps, settings.burst);
        Connection {
            settings,
            client: tokio::sync::Mutex::new(None),
            limiter,
        }
    }

    pub fn settings(&self) -> &KubernetesConfig {
        &self.settings
    }

    /// The client, built on first use; a failure is reported and tried again next time.
    pub async fn client(&self) -> Result<Client, BackendError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let mut config = self.load_config().await?;
        config.connect_timeout = Some(self.settings.request_timeout);
        // Watches run up to WATCH_TIMEOUT; other requests have their own deadline (`call`).
        config.read_timeout = Some(super::watch::WATCH_TIMEOUT + Duration::from_secs(30));
        let client = Client::try_from(config)
            .map_err(|e| err(format!("cannot build the Kubernetes client: {e}")))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn load_config(&self) -> Result<kube::Config, BackendError> {
        let s = &self.settings;
        if s.in_cluster {
            return kube::Config::incluster().map_err(|e| {
                err(format!(
                    "in_cluster = true, but this is not a pod with a service account: {e}"
                ))
            });
        }
        let options = KubeConfigOptions {
            context: s.context.clone(),
            ..Default::default()
        };
        if let Some(path) = &s.kubeconfig {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                err(format!(
                    "cannot read the kubeconfig {}: {e}",
                    path.display()
                ))
            })?;
            return kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| {
                    err(format!(
                        "the kubeconfig {} is not usable: {e}",
                        path.display()
                    ))
                });
        }
        if s.context.is_some() {
            return kube::Config::from_kubeconfig(&options).await.map_err(|e| {
                err(format!(
                    "the kubeconfig ($KUBECONFIG or ~/.kube/config) is not usable: {e}"
                ))
            });
        }
        kube::Config::infer().await.map_err(|e| {
            err(format!("no Kubernetes connection: not in a pod, and no usable kubeconfig ($KUBECONFIG or ~/.kube/config): {e}; set [kubernetes] kubeconfig"))
        })
    }

    /// One API request under the rate limit and the request deadline, retried when throttled
    /// (429: after Retry-After) or when the server failed (5xx) or did not answer in time.
    pub async fn call<T, F, Fut>(&self, what: &str, mut request: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.limiter.acquire().await;
            let result = match tokio::time::timeout(self.settings.request_timeout, request()).await
            {
                Ok(result) => result,
                Err(_) => Err(kube::Error::Service(
                    format!(
                        "{what}: no answer within {:?}",
                        self.settings.request_timeout
                    )
                    .into(),
                )),
            };
            let retry_after = match &result {
                Err(kube::Error::Api(status)) if status.code == 429 => Some(
                    status
                        .details
                        .as_ref()
                        .map(|d| d.retry_after_seconds)
                        .filter(|s| *s > 0)
                        .map(|s| Duration::from_secs(u64::from(s)))
                        .unwrap_or(wait),
                ),
                Err(kube::Error::Api(status)) if status.code >= 500 => Some(wait),
                Err(kube::Error::Service(_)) | Err(kube::Error::HyperError(_)) => Some(wait),
                _ => None,
            };
            match retry_after {
                Some(pause) if attempt < ATTEMPTS => {
                    if let Err(e) = &result {
                        tracing::debug!(request = what, error = %describe(e), retry_in = ?pause, "Kubernetes request failed; retrying");
                    }
                    tokio::time::sleep(pause.min(MAX_RETRY_WAIT)).await;
                    wait = (wait * 2).min(MAX_RETRY_WAIT);
                }
                _ => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_qps() {
        let limiter = RateLimiter::new(10.0, 5);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "the burst is free"
        );
        for _ in 0..10 {
            limiter.acquire().await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(950) && waited <= Duration::from_millis(1100),
            "ten more at 10 per second take a second: {waited:?}"
        );
    }
}
