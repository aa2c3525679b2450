//! Reports a running task to Forgejo the way forgejo-runner's reporter does (contract §2.6):
//! every report interval `UpdateLog(no_more=false)` then a heartbeat `UpdateTask(result
//! UNSPECIFIED)` with the step states; at the end `UpdateLog(no_more=true)` then the final
//! `UpdateTask(result, stopped_at)`, both retried with backoff. A heartbeat answered with
//! CANCELLED or FAILURE while the job still runs asks the job to stop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use runner_proto::client::RunnerClient;
use runner_proto::connect::{Code, ConnectError};
use runner_proto::runner::v1::{
    LogRow, Result as TaskResult, StepState, Task, TaskState, UpdateLogRequest, UpdateTaskRequest,
};
use tokio::sync::watch;

use super::context::struct_to_json;
use super::mask::Masker;
use crate::config::ReportRetry;

/// Why a running job must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// UpdateTask answered with this final result (a cancel in the UI, a zombie timeout, ...).
    Server(TaskResult),
    /// The stand-in got SIGTERM or SIGINT.
    Shutdown,
    /// `runner.timeout` elapsed.
    Timeout,
}

/// Sender side of a job's cancellation; `None` while it may run.
pub type CancelSender = watch::Sender<Option<CancelCause>>;

struct Inner {
    /// Rows not yet acknowledged; `pending[0]` has index `offset`.
    pending: Vec<LogRow>,
    offset: i64,
    state: TaskState,
    outputs: HashMap<String, String>,
    sent_outputs: HashSet<String>,
    remote_cancel_seen: bool,
}

pub struct Reporter {
    client: RunnerClient,
    masker: Masker,
    retry: ReportRetry,
    cancel: Arc<CancelSender>,
    inner: Mutex<Inner>,
    /// Serializes calls so a heartbeat and the final report never interleave.
    sending: tokio::sync::Mutex<()>,
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

impl Reporter {
    pub fn new(
        client: RunnerClient,
        task: &Task,
        steps: usize,
        retry: ReportRetry,
        cancel: Arc<CancelSender>,
    ) -> Reporter {
        let mut masker = Masker::default();
        if let Some(context) = &task.context {
            let json = struct_to_json(context);
            for key in [
                "token",
                "gitea_runtime_token",
                "forgejo_runtime_token",
                "runtime_token",
                "forgejo_actions_id_token_request_token",
            ] {
                if let Some(value) = json.get(key).and_then(|v| v.as_str()) {
                    masker.add(value);
                }
            }
        }
        for value in task.secrets.values() {
            masker.add(value);
        }
        let state = TaskState {
            id: task.id,
            started_at: Some(now()),
            steps: (0..steps as i64)
                .map(|id| StepState {
                    id,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Reporter {
            client,
            masker,
            retry,
            cancel,
            inner: Mutex::new(Inner {
                pending: Vec::new(),
                offset: 0,
                state,
                outputs: HashMap::new(),
                sent_outputs: HashSet::new(),
                remote_cancel_seen: false,
            }),
            sending: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the data inconsistent in a way that
        // matters for a report; keep reporting.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a job-level log row (secrets masked).
    pub fn log(&self, content: &str) {
        let row = LogRow {
            time: Some(now()),
            content: self.masker.mask(content),
        };
        self.lock().pending.push(row);
    }

    pub fn step_started(&self, step: usize) {
        if let Some(s) = self.lock().state.steps.get_mut(step) {
            s.started_at = Some(now());
        }
    }

    /// Adds a row to the log section of `step`.
    pub fn step_log(&self, step: usize, content: &str) {
        let row = LogRow {
            time: Some(now()),
            content: self.masker.mask(content),
        };
        let mut inner = self.lock();
        let index = inner.offset + inner.pending.len() as i64;
        inner.pending.push(row);
        if let Some(s) = inner.state.steps.get_mut(step) {
            if s.log_length == 0 {
                s.log_index = index;
            }
            s.log_length += 1;
        }
    }

    pub fn step_finished(&self, step: usize, result: TaskResult) {
        let mut inner = self.lock();
        let index = inner.offset + inner.pending.len() as i64;
        if let Some(s) = inner.state.steps.get_mut(step) {
            if s.log_length == 0 {
                s.log_index = index;
            }
            s.result = result as i32;
            s.stopped_at = Some(now());
        }
    }

    /// Job outputs, sent with the final state.
    pub fn set_outputs(&self, outputs: HashMap<String, String>) {
        self.lock().outputs = outputs;
    }

    /// Sends the unacknowledged rows. With `no_more`, every row must be acknowledged.
    pub async fn report_log(&self, no_more: bool) -> Result<(), ConnectError> {
        let _sending = self.sending.lock().await;
        let (task_id, index, rows) = {
            let inner = self.lock();
            (inner.state.id, inner.offset, inner.pending.clone())
        };
        let sent = rows.len() as i64;
        let response = self
            .client
            .update_log(&UpdateLogRequest {
                task_id,
                index,
                rows,
                no_more,
            })
            .await?;
        let ack = response.ack_index;
        if ack < index {
            return Err(ConnectError::new(
                Code::DataLoss,
                format!("submitted logs are lost: ack {ack} < {index}"),
            ));
        }
        let mut inner = self.lock();
        let acknowledged = ((ack - index).min(sent) as usize).min(inner.pending.len());
        inner.pending.drain(..acknowledged);
        inner.offset = index + acknowledged as i64;
        if no_more && !inner.pending.is_empty() {
            return Err(ConnectError::new(
                Code::Aborted,
                format!("{} log rows not acknowledged", inner.pending.len()),
            ));
        }
        Ok(())
    }

    /// Sends the task state; a remote CANCELLED/FAILURE on a running job triggers cancellation.
    pub async fn report_state(&self) -> Result<(), ConnectError> {
        let _sending = self.sending.lock().await;
        let (state, outputs) = {
            let inner = self.lock();
            let unsent = inner
                .outputs
                .iter()
                .filter(|(k, _)| !inner.sent_outputs.contains(*k));
            (
                inner.state.clone(),
                unsent
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            )
        };
        let local = state.result;
        let response = self
            .client
            .update_task(&UpdateTaskRequest {
                state: Some(state),
                outputs,
            })
            .await?;
        let remote = response.state.map(|s| s.result).unwrap_or_default();
        let mut inner = self.lock();
        inner.sent_outputs.extend(response.sent_outputs);
        let remote_final =
            [TaskResult::Cancelled as i32, TaskResult::Failure as i32].contains(&remote);
        if remote_final && local == TaskResult::Unspecified as i32 {
            if !inner.remote_cancel_seen {
                inner.remote_cancel_seen = true;
                let name = TaskResult::try_from(remote)
                    .map(|r| r.as_str_name())
                    .unwrap_or("?");
                tracing::info!(
                    "UpdateTask answered {name} for task {} while it runs: stopping it",
                    inner.state.id
                );
            }
            let result = TaskResult::try_from(remote).unwrap_or(TaskResult::Cancelled);
            self.cancel.send_if_modified(|cause| {
                let first = cause.is_none();
                if first {
                    *cause = Some(CancelCause::Server(result));
                }
                first
            });
        }
        Ok(())
    }

    /// Starts the periodic heartbeat; the first report goes out at once.
    pub fn spawn_heartbeat(self: &Arc<Self>, interval: Duration) -> Heartbeat {
        let (stop, mut stopped) = watch::channel(false);
        let reporter = Arc::clone(self);
        let handle = tokio::spawn(async move {
            loop {
                if let Err(e) = reporter.report_log(false).await {
                    tracing::warn!("UpdateLog failed: {e}");
                }
                if let Err(e) = reporter.report_state().await {
                    tracing::warn!("UpdateTask failed: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Heartbeat { stop, handle }
    }

    /// Records the final result and uploads the rest of the log and the final state, retried
    /// per `runner.report_retry`. Returns whether the upload succeeded.
    pub async fn close(&self, result: TaskResult, last_words: Option<&str>) -> bool {
        if let Some(words) = last_words {
            self.log(words);
        }
        {
            let mut inner = self.lock();
            inner.state.result = result as i32;
            inner.state.stopped_at = Some(now());
            let leftover = if result == TaskResult::Skipped {
                TaskResult::Skipped
            } else {
                TaskResult::Cancelled
            };
            for step in &mut inner.state.steps {
                if step.result == TaskResult::Unspecified as i32 {
                    step.result = leftover as i32;
                }
            }
        }
        let mut delay = self.retry.initial_delay;
        for attempt in 1..=self.retry.max_retries.max(1) {
            let outcome = match self.report_log(true).await {
                Ok(()) => self
                    .report_state()
                    .await
                    .map_err(|e| format!("uploading final status failed: {e}")),
                Err(e) => Err(format!("uploading final logs failed: {e}")),
            };
            match outcome {
                Ok(()) => return true,
                Err(message) if attempt < self.retry.max_retries => {
                    tracing::warn!("{message}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = next_delay(delay, self.retry.max_delay);
                }
                Err(message) => tracing::error!("{message}; giving up after {attempt} attempts"),
            }
        }
        false
    }
}

/// Doubling backoff, capped by `max` unless it is zero.
fn next_delay(delay: Duration, max: Duration) -> Duration {
    let doubled = delay.saturating_mul(2);
    if max.is_zero() {
        doubled
    } else {
        doubled.min(max)
    }
}

/// Handle of the heartbeat task.
pub struct Heartbeat {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Stops after the report in flight, if any, so the final report follows it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let ms = Duration::from_millis;
        assert_eq!(next_delay(ms(100), Duration::ZERO), ms(200));
        assert_eq!(next_delay(ms(800), ms(1000)), ms(1000));
    }
}
