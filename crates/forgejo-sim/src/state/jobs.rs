//! Runs and jobs: creation from a workflow, the status flow of contract §3.2, the jobs
//! listing of §1.4, cancellation and rerun.

use super::labels::{listing_matches, LabelsQuery};
use super::{next, Id, Job, Run, Scope, State, Status};
use crate::workflow::{expand_incomplete_job, parse_workflow_with, JobKind, JobSpec};

/// One row of the jobs endpoint, copied out of the lock for serialization.
#[derive(Debug, Clone)]
pub struct JobListing {
    pub id: Id,
    pub attempt: i64,
    pub handle: String,
    pub repo_id: Id,
    pub owner_id: Id,
    pub name: String,
    pub needs: Vec<String>,
    pub runs_on: Vec<String>,
    pub task_id: Id,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunError {
    NotFound,
    NotDone,
}

impl State {
    /// Parses the workflow file as it is now and inserts a run with its jobs: `waiting`
    /// without `needs`, `blocked` with. An invalid file is recorded and starts nothing.
    pub fn start_run(
        &mut self,
        repo_id: Id,
        file: &str,
        event: &str,
        now_ms: i64,
    ) -> Result<Id, String> {
        let repo = self.repos.get(&repo_id).ok_or("repository not found")?;
        let content = repo
            .files
            .get(file)
            .cloned()
            .ok_or("workflow file not found")?;
        let resolve = |p: &str| repo.files.get(p.trim_start_matches("./")).cloned();
        let workflow = parse_workflow_with(file, &content, &resolve, self.version.parse_options())
            .map_err(|e| e.to_string())?;
        let (owner_id, sha) = (repo.owner_id, repo.head_sha.clone());
        let trigger_user = self
            .accounts
            .get(&owner_id)
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let run_id = next(&mut self.ids.run);
        let index = match self.repos.get_mut(&repo_id) {
            Some(repo) => {
                repo.run_number += 1;
                repo.run_number
            }
            None => return Err("repository not found".into()),
        };
        let attempt = if self.version.attempt_set_on_create() {
            1
        } else {
            0
        };
        let mut job_ids = Vec::with_capacity(workflow.jobs.len());
        for spec in workflow.jobs {
            job_ids.push(self.insert_job(run_id, repo_id, owner_id, attempt, spec, now_ms));
        }
        self.runs.insert(
            run_id,
            Run {
                id: run_id,
                repo_id,
                workflow_file: file.to_owned(),
                title: workflow.name,
                index,
                event: event.to_owned(),
                trigger_user,
                sha,
                created_ms: now_ms,
                job_ids,
            },
        );
        self.increase_tasks_version(owner_id, repo_id);
        Ok(run_id)
    }

    /// Inserts one job of a run: `waiting` without `needs`, `blocked` with needs or while it
    /// waits for other jobs' outputs.
    fn insert_job(
        &mut self,
        run_id: Id,
        repo_id: Id,
        owner_id: Id,
        attempt: i64,
        spec: JobSpec,
        now_ms: i64,
    ) -> Id {
        let id = next(&mut self.ids.job);
        let incomplete = spec.incomplete_matrix.is_some() || spec.incomplete_runs_on;
        let status = if spec.needs.is_empty() && !incomplete {
            Status::Waiting
        } else {
            Status::Blocked
        };
        let job = Job {
            id,
            run_id,
            repo_id,
            owner_id,
            key: spec.key.clone(),
            name: spec.name.clone(),
            runs_on: spec.runs_on.clone(),
            needs: spec.needs.clone(),
            if_condition: spec.if_condition.clone(),
            concurrency: spec.concurrency.clone(),
            timeout_minutes: spec.timeout_minutes,
            payload: spec.payload.clone(),
            workflow_call_outer: matches!(spec.kind, JobKind::WorkflowCallOuter { .. }),
            incomplete: incomplete.then(|| Box::new(spec)),
            status: Status::Unknown,
            attempt,
            handle: uuid::Uuid::new_v4().to_string(),
            task_id: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
            started_ms: None,
            stopped_ms: None,
        };
        self.jobs.insert(id, job);
        self.set_job_status(id, status, now_ms);
        id
    }

    /// Replaces a job that waited for outputs by the jobs its matrix now expands to; a job
    /// that still cannot be expanded fails.
    fn expand_incomplete(&mut self, job_id: Id, now_ms: i64) -> Status {
        let Some(job) = self.jobs.get(&job_id) else {
            return Status::Failure;
        };
        let Some(spec) = job.incomplete.clone() else {
            return Status::Waiting;
        };
        let (run_id, repo_id, owner_id, attempt) =
            (job.run_id, job.repo_id, job.owner_id, job.attempt);
        let Some(run) = self.runs.get(&run_id) else {
            return Status::Failure;
        };
        let mut outputs = std::collections::HashMap::new();
        for other in run.job_ids.iter().filter_map(|id| self.jobs.get(id)) {
            if let Some(task) = self.tasks.get(&other.task_id) {
                let map = task
                    .outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                outputs.insert(other.key.clone(), map);
            }
        }
        let file = run.workflow_file.clone();
        let Some(repo) = self.repos.get(&repo_id) else {
            return Status::Failure;
        };
        let resolve = |p: &str| repo.files.get(p.trim_start_matches("./")).cloned();
        let expanded = expand_incomplete_job(
            &file,
            &spec,
            &outputs,
            &resolve,
            self.version.parse_options(),
        );
        let Ok(specs) = expanded else {
            return Status::Failure;
        };
        let mut specs = specs.into_iter();
        let Some(first) = specs.next() else {
            return Status::Skipped;
        };
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.name = first.name;
            job.runs_on = first.runs_on;
            job.payload = first.payload;
            job.if_condition = first.if_condition;
            job.concurrency = first.concurrency;
            job.timeout_minutes = first.timeout_minutes;
            job.incomplete = None;
        }
        let extra: Vec<Id> = specs
            .map(|mut s| {
                s.incomplete_matrix = None;
                s.incomplete_runs_on = false;
                s.needs.clear();
                self.insert_job(run_id, repo_id, owner_id, attempt, s, now_ms)
            })
            .collect();
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.job_ids.extend(extra);
        }
        Status::Waiting
    }

    /// The only place a job's status changes; keeps the `waiting`/`listed` indexes right.
    pub(super) fn set_job_status(&mut self, job_id: Id, status: Status, now_ms: i64) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.status == Status::Waiting {
            self.waiting.remove(&(job.updated_ms, job_id));
        }
        job.status = status;
        job.updated_ms = now_ms;
        if status == Status::Waiting {
            self.waiting.insert((now_ms, job_id));
        }
        if matches!(status, Status::Waiting | Status::Running) {
            self.listed.insert(job_id);
        } else {
            self.listed.remove(&job_id);
        }
    }

    /// Forgejo's `IncreaseTaskVersion`: global, owner and repository rows.
    pub(super) fn increase_tasks_version(&mut self, owner_id: Id, repo_id: Id) {
        for key in [(0, 0), (owner_id, 0), (0, repo_id)] {
            *self.tasks_versions.entry(key).or_insert(0) += 1;
        }
    }

    /// The tasks version a runner of `(owner_id, repo_id)` compares against (1 if never set).
    pub(super) fn tasks_version(&mut self, owner_id: Id, repo_id: Id) -> i64 {
        let version = self.tasks_versions.entry((owner_id, repo_id)).or_insert(0);
        if *version == 0 {
            *version = 1;
        }
        *version
    }

    /// The job emitter (`jobStatusResolver`): blocked jobs of the run whose needs are all done
    /// become `waiting` (all succeeded, or the job has an `if:` for the runner to evaluate) or
    /// `skipped`; repeated until nothing changes, since a skip can unblock further jobs.
    pub(super) fn resolve_blocked_jobs(&mut self, run_id: Id, now_ms: i64) {
        loop {
            let Some(run) = self.runs.get(&run_id) else {
                return;
            };
            let by_key: std::collections::HashMap<&str, Status> = run
                .job_ids
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .map(|j| (j.key.as_str(), j.status))
                .collect();
            let mut changes = Vec::new();
            for job in run.job_ids.iter().filter_map(|id| self.jobs.get(id)) {
                if job.status != Status::Blocked {
                    continue;
                }
                // A need naming no job of the run counts as done and successful.
                let need_states: Vec<Status> = job
                    .needs
                    .iter()
                    .map(|n| by_key.get(n.as_str()).copied().unwrap_or(Status::Success))
                    .collect();
                if !need_states.iter().all(|s| s.is_done()) {
                    continue;
                }
                let all_succeeded = need_states.iter().all(|s| *s == Status::Success);
                let next_status = if all_succeeded || job.if_condition.is_some() {
                    Status::Waiting
                } else {
                    Status::Skipped
                };
                changes.push((job.id, next_status));
            }
            if changes.is_empty() {
                return;
            }
            for (job_id, mut status) in changes {
                if status == Status::Waiting
                    && self
                        .jobs
                        .get(&job_id)
                        .is_some_and(|j| j.incomplete.is_some())
                {
                    status = self.expand_incomplete(job_id, now_ms);
                }
                self.set_job_status(job_id, status, now_ms);
                if status != Status::Waiting {
                    if let Some(job) = self.jobs.get_mut(&job_id) {
                        job.stopped_ms = Some(now_ms);
                    }
                } else if let Some((o, r)) = self.jobs.get(&job_id).map(|j| (j.owner_id, j.repo_id))
                {
                    self.increase_tasks_version(o, r);
                }
            }
        }
    }

    /// Jobs of the endpoint `GET {scope}/actions/runners/jobs`: waiting and running, in
    /// scope, matching the label rule of the version, `id DESC`.
    pub fn list_jobs(&self, scope: Scope, labels: &LabelsQuery) -> Vec<JobListing> {
        self.listed
            .iter()
            .rev()
            .filter_map(|id| self.jobs.get(id))
            .filter(|job| match scope {
                Scope::Global => true,
                Scope::Owner(owner) => job.owner_id == owner,
                Scope::Repo(repo) => job.repo_id == repo,
            })
            .filter(|job| listing_matches(self.version, labels, &job.runs_on))
            .map(|job| JobListing {
                id: job.id,
                attempt: job.attempt,
                handle: job.handle.clone(),
                repo_id: job.repo_id,
                owner_id: job.owner_id,
                name: job.name.clone(),
                needs: job.needs.clone(),
                runs_on: job.runs_on.clone(),
                task_id: job.task_id,
                status: job.status,
            })
            .collect()
    }

    /// Cancels one job (UI "cancel"): a running job's task is stopped (and, in 15, its
    /// ephemeral runner deleted); a waiting or blocked job is cancelled directly.
    /// Returns false if the job does not exist or is already done.
    pub fn cancel_job(&mut self, job_id: Id, now_ms: i64) -> bool {
        let Some(job) = self.jobs.get(&job_id) else {
            return false;
        };
        match job.status {
            Status::Running if job.task_id != 0 => {
                let task_id = job.task_id;
                self.stop_task(task_id, Status::Cancelled, now_ms);
                true
            }
            Status::Waiting | Status::Blocked | Status::Running => {
                let run_id = job.run_id;
                self.set_job_status(job_id, Status::Cancelled, now_ms);
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.stopped_ms = Some(now_ms);
                }
                self.resolve_blocked_jobs(run_id, now_ms);
                true
            }
            _ => false,
        }
    }

    /// Reruns every job of a finished run: a new attempt with a new handle, `task_id = 0`,
    /// `waiting` or `blocked` again.
    pub fn rerun(&mut self, run_id: Id, now_ms: i64) -> Result<(), RerunError> {
        let run = self.runs.get(&run_id).ok_or(RerunError::NotFound)?;
        let job_ids = run.job_ids.clone();
        if job_ids
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .any(|j| !j.status.is_done())
        {
            return Err(RerunError::NotDone);
        }
        let bump_attempt = self.version.attempt_set_on_create();
        let mut scope = (0, 0);
        for job_id in job_ids {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            if bump_attempt {
                job.attempt += 1;
            }
            job.handle = uuid::Uuid::new_v4().to_string();
            job.task_id = 0;
            job.started_ms = None;
            job.stopped_ms = None;
            scope = (job.owner_id, job.repo_id);
            let status = if job.needs.is_empty() {
                Status::Waiting
            } else {
                Status::Blocked
            };
            self.set_job_status(job_id, status, now_ms);
        }
        self.increase_tasks_version(scope.0, scope.1);
        Ok(())
    }

    /// Waiting job ids, oldest first (`updated ASC, id ASC`), the order runners pick in.
    pub(super) fn waiting_oldest_first(&self) -> impl Iterator<Item = Id> + '_ {
        self.waiting.iter().map(|(_, id)| *id)
    }

    pub fn job_counts(&self) -> [(Status, u64); 7] {
        let mut counts = Status::ALL.map(|s| (s, 0u64));
        for job in self.jobs.values() {
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == job.status) {
                slot.1 += 1;
            }
        }
        counts
    }
}
