//! Retries with exponential backoff and full jitter, honouring `Retry-After`.

use std::{future::Future, time::Duration};

use rand::Rng;

use super::ForgejoError;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` we wait for inside one call; longer ones fail the call and
    /// leave the waiting to the next reconcile tick.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Delay before try number `attempt` (1 = the first retry).
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }

    /// Runs `call` until it succeeds, fails permanently, or the tries are used up.
    /// `retryable` decides which errors are worth another try for this call.
    pub async fn run<T, F, Fut>(
        &self,
        retryable: impl Fn(&ForgejoError) -> bool,
        mut call: F,
    ) -> Result<T, ForgejoError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ForgejoError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if attempt < self.attempts && retryable(&err) => {
                    let delay = match err.retry_after() {
                        Some(after) if after > self.max_retry_after => return Err(err),
                        Some(after) => after,
                        None => self.backoff(attempt),
                    };
                    tracing::debug!(error = %err, attempt, ?delay, "retrying Forgejo request");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: u16, retry_after: Option<Duration>) -> ForgejoError {
        ForgejoError::Status {
            endpoint: "GET /x".into(),
            status: code,
            message: String::new(),
            retry_after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let result = RetryPolicy::default()
            .run(ForgejoError::is_transient, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(status(503, None))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_client_errors() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = RetryPolicy::default()
            .run(ForgejoError::is_transient, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(status(403, None))
            })
            .await;
        assert_eq!(result.unwrap_err().status(), Some(403));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let start = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let _ = RetryPolicy::default()
            .run(ForgejoError::is_transient, || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(status(429, Some(Duration::from_secs(3))))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy::default();
        for attempt in 1..40 {
            assert!(p.backoff(attempt) <= p.max_delay);
        }
    }
}
