//! Runs one task in host mode: parse the single-job workflow, run its `run:` steps with a
//! shell in a fresh temporary directory, skip `uses:` steps, stream the log and report the
//! result (see `reporter`).

pub mod context;
pub mod env;
pub mod expr;
pub mod mask;
pub mod reporter;
pub mod step;
pub mod workflow;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runner_proto::client::RunnerClient;
use runner_proto::runner::v1::{Result as TaskResult, Task};
use serde_json::{json, Map, Value};

use self::env::Workspace;
use self::expr::JobStatus;
use self::reporter::{CancelCause, CancelSender, Reporter};
use self::step::StepOutcome;
use self::workflow::{JobSpec, StepAction, StepSpec};
use crate::config::ReportRetry;

/// Settings of one job run, from the configuration file.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub report_interval: Duration,
    pub report_retry: ReportRetry,
    pub job_timeout: Duration,
    /// Version string shown in the job log.
    pub version: String,
}

/// Runs `task` to the end and reports it; returns the result that was reported.
/// `cancel` stops it early (SIGTERM); the reporter fires it too when Forgejo cancels the task.
pub async fn run_task(
    task: Task,
    client: RunnerClient,
    settings: &JobSettings,
    cancel: Arc<CancelSender>,
) -> TaskResult {
    let parsed = workflow::parse(task.workflow_payload.as_deref().unwrap_or_default());
    let steps = parsed.as_ref().map(|j| j.steps.len()).unwrap_or(0);
    let reporter = Arc::new(Reporter::new(
        client,
        &task,
        steps,
        settings.report_retry.clone(),
        Arc::clone(&cancel),
    ));
    reporter.log(&format!(
        "fake-forgejo-runner {} (host mode) received task {}",
        settings.version, task.id
    ));
    let heartbeat = reporter.spawn_heartbeat(settings.report_interval);

    let timeout = {
        let cancel = Arc::clone(&cancel);
        let limit = settings.job_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            cancel.send_if_modified(|cause| {
                let first = cause.is_none();
                if first {
                    *cause = Some(CancelCause::Timeout);
                }
                first
            });
        })
    };

    let (result, last_words) = match parsed {
        Err(message) => (
            TaskResult::Failure,
            Some(format!("cannot run the job: {message}")),
        ),
        Ok(job) => match TempDir::create(task.id) {
            Err(e) => (
                TaskResult::Failure,
                Some(format!("cannot create the job directory: {e}")),
            ),
            Ok(dir) => {
                let outcome = JobRun::new(&task, &job, &reporter, dir.path())
                    .run(&cancel)
                    .await;
                outcome.map_or_else(
                    |message| (TaskResult::Failure, Some(message)),
                    |r| (r, None),
                )
            }
        },
    };
    timeout.abort();
    let verdict = match result {
        TaskResult::Success => "Job succeeded",
        TaskResult::Cancelled => "Job cancelled",
        TaskResult::Skipped => "Job skipped",
        _ => "Job failed",
    };
    heartbeat.stop().await;
    if let Some(words) = last_words {
        reporter.log(&words);
    }
    reporter.close(result, Some(verdict)).await;
    result
}

/// A job's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(task_id: i64) -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "fake-forgejo-runner-task{task_id}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// State of one job while its steps run.
struct JobRun<'a> {
    task: &'a Task,
    job: &'a JobSpec,
    reporter: &'a Reporter,
    home: &'a Path,
    context: Value,
    /// Job environment after workflow/job `env:` and every `GITHUB_ENV` write so far.
    env: Vec<(String, String)>,
    steps_context: Map<String, Value>,
    status: JobStatus,
    /// Process groups of the steps run so far, killed when the job ends.
    groups: Vec<i32>,
}

impl<'a> JobRun<'a> {
    fn new(task: &'a Task, job: &'a JobSpec, reporter: &'a Reporter, home: &'a Path) -> Self {
        let context = task
            .context
            .as_ref()
            .map(context::struct_to_json)
            .unwrap_or_else(|| json!({}));
        JobRun {
            task,
            job,
            reporter,
            home,
            context,
            env: Vec::new(),
            steps_context: Map::new(),
            status: JobStatus::Success,
            groups: Vec::new(),
        }
    }

    /// Expression root for the current point of the job.
    fn root(&self, ws: &Workspace) -> Value {
        let env: Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let needs: Map<String, Value> = self
            .task
            .needs
            .iter()
            .map(|(name, need)| {
                let result = TaskResult::try_from(need.result).unwrap_or_default();
                let result = result
                    .as_str_name()
                    .trim_start_matches("RESULT_")
                    .to_lowercase();
                (
                    name.clone(),
                    json!({"result": result, "outputs": need.outputs}),
                )
            })
            .collect();
        let status = match self.status {
            JobStatus::Success => "success",
            JobStatus::Failure => "failure",
            JobStatus::Cancelled => "cancelled",
        };
        json!({
            "github": env::github_context(&self.context, self.job, ws),
            "env": env,
            "secrets": self.task.secrets,
            "vars": self.task.vars,
            "matrix": self.job.matrix,
            "needs": needs,
            "steps": self.steps_context,
            "runner": {"os": "Linux", "temp": ws.temp.to_string_lossy()},
            "job": {"status": status},
        })
    }

    fn substitute(&self, text: &str, ws: &Workspace) -> String {
        let done = expr::substitute(text, &self.root(ws));
        for unsupported in &done.unsupported {
            self.reporter.log(&format!("warning: expression not supported by the stand-in, replaced by an empty string: ${{{{ {unsupported} }}}}"));
        }
        done.text
    }

    /// Runs the steps, then kills whatever the steps left running.
    async fn run(mut self, cancel: &Arc<CancelSender>) -> Result<TaskResult, String> {
        let result = self.run_steps(cancel).await;
        for group in self.groups.drain(..) {
            step::kill_group(Some(group));
        }
        result
    }

    async fn run_steps(&mut self, cancel: &Arc<CancelSender>) -> Result<TaskResult, String> {
        let ws = Workspace::create(self.home)
            .map_err(|e| format!("cannot create the workspace: {e}"))?;
        let event = self
            .context
            .get("event")
            .cloned()
            .unwrap_or_else(|| json!({}));
        std::fs::write(&ws.event_path, event.to_string())
            .map_err(|e| format!("cannot write the event file: {e}"))?;
        self.env = env::base_env(&self.context, self.job, &ws);
        for (key, value) in &self.job.env {
            let value = self.substitute(value, &ws);
            set_var(&mut self.env, key, value);
        }
        let mut cancel_rx = cancel.subscribe();
        let mut cancelled = None;
        for (index, spec) in self.job.steps.iter().enumerate() {
            if let Some(cause) = *cancel_rx.borrow() {
                cancelled = Some(cause);
                break;
            }
            let (run, understood) =
                expr::should_run(spec.condition.as_deref(), self.status, &self.root(&ws));
            if !understood {
                self.reporter.log(&format!(
                    "warning: condition not supported by the stand-in, evaluated as success(): {}",
                    spec.condition.as_deref().unwrap_or("")
                ));
            }
            if !run {
                self.reporter.step_finished(index, TaskResult::Skipped);
                continue;
            }
            match self.run_step(index, spec, &ws, &mut cancel_rx).await {
                StepOutcome::Cancelled(cause) => {
                    self.reporter.step_finished(index, TaskResult::Cancelled);
                    cancelled = Some(cause);
                    break;
                }
                StepOutcome::Success => {}
                _ if spec.continue_on_error => {}
                _ => self.status = JobStatus::Failure,
            }
        }
        if let Some(cause) = cancelled {
            self.reporter.log(&match cause {
                CancelCause::Server(_) => "the task was cancelled by Forgejo".to_string(),
                CancelCause::Shutdown => {
                    "the runner is shutting down; the job was cancelled".to_string()
                }
                CancelCause::Timeout => {
                    "the job exceeded the runner's maximum run time (runner.timeout)".to_string()
                }
            });
            return Ok(TaskResult::Cancelled);
        }
        if self.status == JobStatus::Failure {
            return Ok(TaskResult::Failure);
        }
        let outputs = self
            .job
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), self.substitute(v, &ws)))
            .collect();
        self.reporter.set_outputs(outputs);
        Ok(TaskResult::Success)
    }

    async fn run_step(
        &mut self,
        index: usize,
        spec: &StepSpec,
        ws: &Workspace,
        cancel: &mut tokio::sync::watch::Receiver<Option<CancelCause>>,
    ) -> StepOutcome {
        self.reporter.step_started(index);
        let name = self.substitute(&spec.display_name(), ws);
        self.reporter
            .step_log(index, &format!("--- step {}: {name}", index + 1));
        let script = match &spec.action {
            StepAction::Uses(action) => {
                self.reporter.step_log(
                    index,
                    &format!("skipped: the stand-in does not run actions (uses: {action})"),
                );
                self.reporter.step_finished(index, TaskResult::Skipped);
                return StepOutcome::Success;
            }
            StepAction::Invalid => {
                self.reporter
                    .step_log(index, "invalid step: it has neither run nor uses");
                self.reporter.step_finished(index, TaskResult::Failure);
                return StepOutcome::Failure(None);
            }
            StepAction::Run(script) => self.substitute(script, ws),
        };
        let files = StepFiles::new(ws, index);
        let mut env = self.env.clone();
        for (key, value) in &spec.env {
            let value = self.substitute(value, ws);
            set_var(&mut env, key, value);
        }
        for (key, path) in [("GITHUB_OUTPUT", &files.output), ("GITHUB_ENV", &files.env)] {
            let _ = std::fs::write(path, "");
            let path = path.to_string_lossy().into_owned();
            set_var(&mut env, key, path.clone());
            set_var(&mut env, &key.replace("GITHUB_", "FORGEJO_"), path);
        }
        let cwd = match &spec.working_directory {
            Some(dir) => ws.workspace.join(self.substitute(dir, ws)),
            None => ws.workspace.clone(),
        };
        let shell = spec.shell.as_deref().or(self.job.default_shell.as_deref());
        let argv = match step::shell_command(
            shell,
            &script,
            &ws.temp.join(format!("step-{index}.script")),
        ) {
            Ok(argv) => argv,
            Err(e) => return self.fail(index, format!("cannot write the step script: {e}")),
        };
        let outcome = step::run(
            &argv,
            &env,
            &cwd,
            index,
            self.reporter,
            cancel,
            &mut self.groups,
        )
        .await;
        let result = match &outcome {
            StepOutcome::Success => TaskResult::Success,
            StepOutcome::Failure(code) => {
                let code =
                    code.map_or_else(|| "a signal".to_string(), |c| format!("exit code {c}"));
                self.reporter
                    .step_log(index, &format!("step failed with {code}"));
                TaskResult::Failure
            }
            StepOutcome::SpawnError(message) => {
                self.reporter.step_log(index, message);
                TaskResult::Failure
            }
            StepOutcome::Cancelled(_) => return outcome,
        };
        self.collect_files(spec, &files, result);
        self.reporter.step_finished(index, result);
        outcome
    }

    fn fail(&self, index: usize, message: String) -> StepOutcome {
        self.reporter.step_log(index, &message);
        self.reporter.step_finished(index, TaskResult::Failure);
        StepOutcome::SpawnError(message)
    }

    /// Applies what the step wrote to `GITHUB_ENV` and `GITHUB_OUTPUT`.
    fn collect_files(&mut self, spec: &StepSpec, files: &StepFiles, result: TaskResult) {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|t| parse_key_values(&t))
                .unwrap_or_default()
        };
        for (key, value) in read(&files.env) {
            set_var(&mut self.env, &key, value);
        }
        if let Some(id) = &spec.id {
            let outputs: Map<String, Value> = read(&files.output)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let outcome = if result == TaskResult::Success {
                "success"
            } else {
                "failure"
            };
            self.steps_context.insert(
                id.clone(),
                json!({"outputs": outputs, "outcome": outcome, "conclusion": outcome}),
            );
        }
    }
}

/// Per-step files behind `GITHUB_OUTPUT` and `GITHUB_ENV`.
struct StepFiles {
    output: PathBuf,
    env: PathBuf,
}

impl StepFiles {
    fn new(ws: &Workspace, index: usize) -> StepFiles {
        StepFiles {
            output: ws.temp.join(format!("step-{index}.output")),
            env: ws.temp.join(format!("step-{index}.env")),
        }
    }
}

fn set_var(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// `key=value` lines and `key<<DELIM` … `DELIM` blocks, the `GITHUB_OUTPUT` / `GITHUB_ENV` format.
pub fn parse_key_values(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((key, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            for next in lines.by_ref() {
                if next == delimiter {
                    break;
                }
                value.push(next);
            }
            out.push((key.to_string(), value.join("\n")));
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((key.to_string(), value.to_string()));
        }
    }
    out.retain(|(k, _)| !k.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_files() {
        let parsed = parse_key_values("a=1\nb=x=y\nmulti<<EOF\nl1\nl2\nEOF\n=ignored\nnoequals\n");
        assert_eq!(
            parsed,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x=y".into()),
                ("multi".into(), "l1\nl2".into())
            ]
        );
    }

    #[test]
    fn set_var_replaces_in_place() {
        let mut env = vec![("A".to_string(), "1".to_string())];
        set_var(&mut env, "A", "2".into());
        set_var(&mut env, "B", "3".into());
        assert_eq!(
            env,
            vec![("A".into(), "2".into()), ("B".into(), "3".into())]
        );
    }
}
