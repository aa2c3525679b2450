//! Tasks: picking a job for a runner (contract §3.1), FetchTask/FetchSingleTask semantics,
//! UpdateTask and UpdateLog (§2.6), and stopping a task server-side.

use std::collections::HashMap;

use runner_proto::connect::{Code, ConnectError};
use runner_proto::runner::v1::Task as TaskMessage;

use super::labels::it_runs_on;
use super::{next, random_hex, Id, State, Status, Task};

/// Outputs larger than this are not stored (contract §2.6).
const MAX_OUTPUT_KEY: usize = 255;
const MAX_OUTPUT_VALUE: usize = 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct FetchRequest {
    pub tasks_version: i64,
    /// `task_capacity` (FetchTask, 14+); `None`/≤1 means one task.
    pub capacity: Option<i64>,
    pub request_key: Option<String>,
    /// FetchSingleTask's `handle` (15).
    pub handle: Option<String>,
    /// FetchSingleTask: at most one task, request-key replay of more is an error.
    pub single: bool,
}

#[derive(Debug, Clone, Default)]
pub struct FetchOutcome {
    pub tasks: Vec<TaskMessage>,
    pub tasks_version: i64,
}

/// A runner's UpdateTask request, reduced to what the server uses.
#[derive(Debug, Clone, Default)]
pub struct TaskUpdate {
    pub task_id: Id,
    pub result: i32,
    pub stopped_ms: Option<i64>,
    pub outputs: HashMap<String, String>,
}

impl State {
    /// FetchTask / FetchSingleTask for an authenticated runner.
    pub fn fetch_tasks(
        &mut self,
        runner_id: Id,
        request: &FetchRequest,
        now_ms: i64,
    ) -> Result<FetchOutcome, ConnectError> {
        if self.version.has_request_key_replay() {
            if let Some(key) = request.request_key.as_deref().filter(|k| !k.is_empty()) {
                if let Some(task_ids) = self.request_keys.get(&(runner_id, key.to_owned())).cloned()
                {
                    if request.single && task_ids.len() > 1 {
                        return Err(ConnectError::new(
                            Code::Internal,
                            "more than one task for this request key",
                        ));
                    }
                    let tasks = task_ids
                        .iter()
                        .filter_map(|t| self.reissue_task(*t))
                        .collect();
                    return Ok(FetchOutcome {
                        tasks,
                        tasks_version: 0,
                    });
                }
            }
        }
        let (owner_id, repo_id) = match self.runners.get(&runner_id) {
            Some(r) => (r.owner_id, r.repo_id),
            None => {
                return Err(ConnectError::new(
                    Code::Unauthenticated,
                    "unregistered runner",
                ))
            }
        };
        let latest = self.tasks_version(owner_id, repo_id);
        let mut tasks = Vec::new();
        if request.tasks_version != latest {
            let handle = request
                .handle
                .as_deref()
                .filter(|h| !h.is_empty() && self.version.has_fetch_single_task());
            let capacity = if request.single || !self.version.has_task_capacity() {
                1
            } else {
                request.capacity.unwrap_or(1).max(1)
            };
            for i in 0..capacity {
                let picked = self.pick_job(runner_id, if i == 0 { handle } else { None });
                let Some(job_id) = picked else { break };
                let (task_id, token) =
                    self.assign(runner_id, job_id, request.request_key.clone(), now_ms);
                if let Some(task) = self.task_message(task_id, &token) {
                    tasks.push(task);
                }
            }
        }
        if self.version.has_request_key_replay() && !tasks.is_empty() {
            if let Some(key) = request.request_key.as_deref().filter(|k| !k.is_empty()) {
                self.request_keys.insert(
                    (runner_id, key.to_owned()),
                    tasks.iter().map(|t| t.id).collect(),
                );
            }
        }
        Ok(FetchOutcome {
            tasks,
            tasks_version: latest,
        })
    }

    /// The first waiting job (oldest first) this runner may take, if any.
    fn pick_job(&self, runner_id: Id, handle: Option<&str>) -> Option<Id> {
        let runner = self.runners.get(&runner_id)?;
        if runner.deleted
            || (self.version.has_ephemeral_runners() && runner.ephemeral && runner.tasks_taken > 0)
        {
            return None;
        }
        let labels = runner.labels.as_deref().unwrap_or(&[]);
        self.waiting_oldest_first().find(|job_id| {
            let Some(job) = self.jobs.get(job_id) else {
                return false;
            };
            let in_scope = if runner.repo_id != 0 {
                job.repo_id == runner.repo_id
            } else if runner.owner_id != 0 {
                job.owner_id == runner.owner_id
                    && self
                        .repos
                        .get(&job.repo_id)
                        .is_some_and(|r| r.actions_enabled)
            } else {
                true
            };
            in_scope
                && job.task_id == 0
                && it_runs_on(labels, &job.runs_on)
                && handle.is_none_or(|h| job.handle == h)
                && !self.blocked_by_concurrency(job.id)
        })
    }

    /// 14+: a job whose concurrency group already has a running job in the repo waits.
    fn blocked_by_concurrency(&self, job_id: Id) -> bool {
        if !self.version.has_concurrency_queue() {
            return false;
        }
        let Some(job) = self.jobs.get(&job_id) else {
            return false;
        };
        let Some(group) = job.concurrency.as_deref() else {
            return false;
        };
        self.listed
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .any(|other| {
                other.id != job.id
                    && other.status == Status::Running
                    && other.repo_id == job.repo_id
                    && other.concurrency.as_deref() == Some(group)
            })
    }

    /// Creates the task for a picked job; returns its id and (clear) token.
    fn assign(
        &mut self,
        runner_id: Id,
        job_id: Id,
        request_key: Option<String>,
        now_ms: i64,
    ) -> (Id, String) {
        let task_id = next(&mut self.ids.task);
        let token = random_hex(20);
        let token_hash = self.hash_secret(&token);
        self.set_job_status(job_id, Status::Running, now_ms);
        let bump_attempt = !self.version.attempt_set_on_create();
        let attempt = match self.jobs.get_mut(&job_id) {
            Some(job) => {
                if bump_attempt {
                    job.attempt += 1;
                }
                job.task_id = task_id;
                job.started_ms = Some(now_ms);
                job.stopped_ms = None;
                job.attempt
            }
            None => 0,
        };
        if let Some(runner) = self.runners.get_mut(&runner_id) {
            runner.tasks_taken += 1;
        }
        self.tasks.insert(
            task_id,
            Task {
                id: task_id,
                job_id,
                runner_id,
                attempt,
                status: Status::Running,
                token_hash,
                started_ms: now_ms,
                updated_ms: now_ms,
                stopped_ms: None,
                log_rows: Vec::new(),
                log_archived: false,
                outputs: Default::default(),
                request_key,
            },
        );
        (task_id, token)
    }

    /// Request-key replay: the same task with a fresh token.
    fn reissue_task(&mut self, task_id: Id) -> Option<TaskMessage> {
        let token = random_hex(20);
        let hash = self.hash_secret(&token);
        self.tasks.get_mut(&task_id)?.token_hash = hash;
        self.task_message(task_id, &token)
    }

    /// UpdateTask: heartbeat or final result; returns the task id, the server's result and
    /// the stored output keys.
    pub fn update_task(
        &mut self,
        runner_id: Id,
        update: TaskUpdate,
        now_ms: i64,
    ) -> Result<(Id, i32, Vec<String>), ConnectError> {
        let task = self.tasks.get_mut(&update.task_id).ok_or_else(|| {
            ConnectError::new(
                Code::Internal,
                format!(
                    "can't find the task: task {} does not exist",
                    update.task_id
                ),
            )
        })?;
        if task.runner_id != runner_id {
            return Err(ConnectError::new(
                Code::Internal,
                "update task: invalid runner for task",
            ));
        }
        for (key, value) in update.outputs {
            if key.len() <= MAX_OUTPUT_KEY && value.len() <= MAX_OUTPUT_VALUE {
                task.outputs.entry(key).or_insert(value);
            }
        }
        let final_result = Status::from_result(update.result);
        if update.result != 0 && final_result.is_none() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("unknown result {}", update.result),
            ));
        }
        let already_done = task.status.is_done();
        match final_result {
            Some(status) if !already_done => {
                let stopped = update.stopped_ms.unwrap_or(now_ms);
                self.finish_task(update.task_id, status, stopped, now_ms);
            }
            None if !already_done => task.updated_ms = now_ms,
            _ => {}
        }
        if final_result.is_some() {
            self.after_final_result(update.task_id, now_ms);
        }
        let task = self
            .tasks
            .get(&update.task_id)
            .ok_or_else(|| ConnectError::new(Code::Internal, "task vanished"))?;
        Ok((
            task.id,
            task.status.as_result(),
            task.outputs.keys().cloned().collect(),
        ))
    }

    /// Sets the final status of a task and its job, then unblocks dependent jobs.
    fn finish_task(&mut self, task_id: Id, status: Status, stopped_ms: i64, now_ms: i64) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.status = status;
        task.stopped_ms = Some(stopped_ms);
        task.updated_ms = now_ms;
        let job_id = task.job_id;
        let is_current = self
            .jobs
            .get(&job_id)
            .is_some_and(|j| j.task_id == task_id && !j.status.is_done());
        if !is_current {
            return;
        }
        self.set_job_status(job_id, status, now_ms);
        let run_id = match self.jobs.get_mut(&job_id) {
            Some(job) => {
                job.stopped_ms = Some(stopped_ms);
                job.run_id
            }
            None => return,
        };
        self.resolve_blocked_jobs(run_id, now_ms);
    }

    /// Post-processing of a final UpdateTask: (14+) bump the tasks version, (15) delete the
    /// runner if it is ephemeral — within the same request.
    fn after_final_result(&mut self, task_id: Id, _now_ms: i64) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let runner_id = task.runner_id;
        if self.version.has_concurrency_queue() {
            if let Some((o, r)) = self.jobs.get(&task.job_id).map(|j| (j.owner_id, j.repo_id)) {
                self.increase_tasks_version(o, r);
            }
        }
        if self.version.has_ephemeral_runners()
            && self.runners.get(&runner_id).is_some_and(|r| r.ephemeral)
        {
            self.delete_runner(runner_id);
        }
    }

    /// `StopTask`: user cancel or a timer. The task and its job get `status`; an ephemeral
    /// runner (15) is deleted at once (quirk 16).
    pub fn stop_task(&mut self, task_id: Id, status: Status, now_ms: i64) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.status.is_done() {
            return;
        }
        let runner_id = task.runner_id;
        self.finish_task(task_id, status, now_ms, now_ms);
        if self.version.has_ephemeral_runners()
            && self.runners.get(&runner_id).is_some_and(|r| r.ephemeral)
        {
            self.delete_runner(runner_id);
        }
    }

    /// UpdateLog: rows stored so far is the ack; duplicate or out-of-order chunks only get the
    /// ack; an archived log refuses more rows.
    pub fn update_log(
        &mut self,
        runner_id: Id,
        task_id: Id,
        index: i64,
        rows: Vec<String>,
        no_more: bool,
    ) -> Result<i64, ConnectError> {
        let task = self.tasks.get_mut(&task_id).ok_or_else(|| {
            ConnectError::new(
                Code::Internal,
                format!("can't find the task: task {task_id} does not exist"),
            )
        })?;
        if task.runner_id != runner_id {
            return Err(ConnectError::new(
                Code::Internal,
                "update log: invalid runner for task",
            ));
        }
        let ack = task.log_rows.len() as i64;
        if rows.is_empty() || index > ack || index.saturating_add(rows.len() as i64) <= ack {
            return Ok(ack);
        }
        if task.log_archived {
            return Err(ConnectError::new(
                Code::AlreadyExists,
                "log file has been archived",
            ));
        }
        let skip = (ack - index).max(0) as usize;
        task.log_rows.extend(rows.into_iter().skip(skip));
        if no_more {
            task.log_archived = true;
        }
        Ok(task.log_rows.len() as i64)
    }

    /// The log of a job's current (or latest) task.
    pub fn job_log(&self, job_id: Id) -> Option<(Vec<String>, bool)> {
        let job = self.jobs.get(&job_id)?;
        let task = self
            .tasks
            .get(&job.task_id)
            .or_else(|| self.tasks.values().rev().find(|t| t.job_id == job_id));
        Some(
            task.map(|t| (t.log_rows.clone(), t.log_archived))
                .unwrap_or_default(),
        )
    }
}
