//! Workflow files to jobs, the way Forgejo does it.
//!
//! Forgejo turns a workflow file into jobs with `jobparser.Parse` of forgejo/runner
//! (`act/jobparser/jobparser.go`, read at runner commit b93a918a of April 2026, v12.8.x; Forgejo
//! 14.0.5 pins runner v12.6.4, 15.0.3 pins v12.10.2) wrapped by `JobParser` (Forgejo
//! `modules/actions/job_parser.go`), then stores one row per job with `InsertRunJobs`
//! (`models/actions/run.go`). This module reproduces what an autoscaler can observe of that:
//! how many jobs, their ids, display names, `runs-on` labels, `needs`, and the single-job YAML
//! each job hands to a runner. It evaluates only the expressions the server evaluates for those
//! (see [`expr`]); `if:` and everything inside steps is the runner's business and is carried as text.
//!
//! Naming, as the Go code does it:
//! * A job without `name:` is called by its key; with a matrix, `key (v1, v2)` where the values are
//!   listed in dimension-name order and rendered like Go's `fmt.Sprint` (`nameWithMatrix`).
//! * A job with `name:` gets that name with `${{ matrix.* }}` substituted and nothing appended.
//! * Equal names within one workflow get `-1`, `-2`, ... appended to the later ones (`JobParser`).
//! * The stored name is cut at 255 bytes (`InsertRunJobs`).
//!
//! Reusable workflows (`jobs.<id>.uses: ./.forgejo/workflows/x.yml`): Forgejo 15 expands a local
//! call on the server **only when the calling job has no `runs-on`** (`expandForJob` in Forgejo
//! `services/actions/reusable_workflows.go`). The called workflow's jobs become jobs with key
//! `<caller>.<callee-key>` and their own names; their `needs` are qualified the same way and also
//! get the caller's `needs`. The caller stays as a placeholder job ([`JobKind::WorkflowCallOuter`])
//! with `if: false`, no labels, and `needs` = its own plus all inner keys; Forgejo completes it
//! itself (success when every inner job succeeded or was skipped, else failure) and never sends it
//! to a runner (Forgejo `services/actions/job_emitter.go`; fixture
//! `services/actions/TestRerun_RerunAllJobs/action_run_job.yml` shows `caller` / `caller.callee`).
//! A call that has `runs-on`, every call in Forgejo 13 and 14, and calls to other repositories stay
//! one job ([`JobKind::ReusableCall`]) that the runner expands. See [`ParseOptions`].
//!
//! A matrix computed from another job's outputs (`${{ fromJSON(needs.a.outputs.b) }}`) cannot be
//! expanded yet: Forgejo 14+ stores one job named `key (incomplete matrix)` that stays blocked until
//! its needs are done, then replaces it by the real combinations; see [`expand_incomplete_job`].

mod expr;
mod matrix;
mod payload;
mod runs_on;
mod triggers;
mod value;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_norway::{Mapping, Value};
use sha2::{Digest, Sha256};

use expr::{evaluate_node, interpolate, ExprContext, ExprError};
use matrix::{name_with_matrix, Combination};
use payload::{DocumentParts, JobOverrides, PayloadExtras, PayloadMatrix};
use value::{as_mapping, get, key_string, scalar_string, string_or_list, untagged};

pub use matrix::MAX_MATRIX_COMBINATIONS;
pub use triggers::Triggers;

/// Upper bound of jobs one workflow file may produce (matrices and reusable calls included).
pub const MAX_JOBS_PER_WORKFLOW: usize = 2048;
/// Upper bound of the summed size of all job payloads of one workflow file, so a large file
/// multiplied by a matrix cannot exhaust memory.
pub const MAX_PAYLOAD_BYTES_PER_WORKFLOW: usize = 32 * 1024 * 1024;
/// Reusable workflows may nest this deep (Forgejo: "exceeding the workflow recursion limit (5)").
pub const MAX_REUSABLE_DEPTH: usize = 5;
/// Forgejo stores at most this many bytes of a job name (`InsertRunJobs`).
pub const MAX_JOB_NAME_BYTES: usize = 255;

/// A parsed workflow file.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// `name:` of the file, or the file name when it has none (what Forgejo's UI shows).
    pub name: String,
    pub on: Triggers,
    /// In Forgejo's order: jobs in file order, each matrix's combinations sorted by display
    /// string, jobs of expanded reusable workflows last.
    pub jobs: Vec<JobSpec>,
}

/// One job, i.e. one matrix combination of one `jobs.<key>` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job id in YAML (same for every matrix combination); `needs` refers to keys.
    pub key: String,
    /// Display name, matrix values substituted, e.g. `test (3.11)`.
    pub name: String,
    /// Evaluated labels; a runner must declare every one of them.
    pub runs_on: Vec<String>,
    /// Keys of the jobs this one waits for.
    pub needs: Vec<String>,
    /// `if:` as written (the runner evaluates it).
    pub if_condition: Option<String>,
    pub timeout_minutes: Option<u64>,
    /// Concurrency group (`concurrency: group` or `concurrency: {group: ...}`).
    pub concurrency: Option<String>,
    pub concurrency_cancel_in_progress: Option<bool>,
    pub container: Option<ContainerSpec>,
    pub services: Vec<ServiceSpec>,
    pub outputs: BTreeMap<String, String>,
    /// This job's matrix combination (empty without matrix).
    pub matrix: BTreeMap<String, Value>,
    pub steps: Vec<StepSpec>,
    pub kind: JobKind,
    /// Set when the matrix needs another job's output first; the job is blocked until then.
    pub incomplete_matrix: Option<MissingOutput>,
    /// Set when `runs-on` refers to something not known yet (a missing output or matrix
    /// dimension); Forgejo keeps such a job blocked and fails the run if it stays so.
    pub incomplete_runs_on: bool,
    /// The single-job workflow YAML sent to the runner as `Task.workflow_payload`.
    pub payload: String,
}

/// What kind of work a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// A normal job with `steps`.
    Steps,
    /// A job-level `uses:` that is not expanded on the server: one task, the runner runs the
    /// called workflow itself.
    ReusableCall { uses: String },
    /// The placeholder left by an expanded reusable workflow call. No runner ever gets it; the
    /// server completes it when its `needs` (the inner jobs) are done.
    WorkflowCallOuter { uses: String },
}

/// `container:` of a job (string form or mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub image: String,
}

/// One entry of `services:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    pub id: Option<String>,
    pub name: Option<String>,
    pub run: Option<String>,
    pub uses: Option<String>,
}

/// `needs.<job>.outputs.<output>` that a job is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingOutput {
    pub job: String,
    pub output: String,
}

/// Which Forgejo behaviour to reproduce where versions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Expand local reusable workflow calls without `runs-on` on the server (Forgejo 15).
    pub expand_local_reusable_workflows: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            expand_local_reusable_workflows: true,
        }
    }
}

impl ParseOptions {
    /// The behaviour of a Forgejo major version (13, 14, 15, ...).
    pub fn for_forgejo_major(major: u32) -> Self {
        Self {
            expand_local_reusable_workflows: major >= 15,
        }
    }
}

/// Why a file is not a usable workflow. Displays as `<path>: <what is wrong>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowError {
    /// Not parseable as YAML.
    Yaml { path: String, message: String },
    /// The file has no content.
    Empty { path: String },
    /// The top level is not a mapping.
    NotAMapping { path: String },
    /// `on:` is missing or malformed.
    Triggers { path: String, message: String },
    /// No `jobs:` key (another CI's file, for instance).
    MissingJobs { path: String },
    /// `jobs:` is not a mapping of job ids to jobs.
    JobsNotMapping { path: String },
    /// `jobs:` is an empty mapping.
    NoJobs { path: String },
    /// One job is malformed.
    InvalidJob {
        path: String,
        job: String,
        message: String,
    },
    /// `strategy.matrix` of a job cannot be expanded (too large, bad include/exclude, bad expression).
    Matrix {
        path: String,
        job: String,
        message: String,
    },
    /// A reusable workflow call cannot be expanded.
    Reusable {
        path: String,
        job: String,
        message: String,
    },
    /// The file would produce more jobs or payload bytes than the simulator accepts.
    TooLarge { path: String, message: String },
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkflowError::Yaml { path, message } => write!(f, "{path}: not valid YAML: {message}"),
            WorkflowError::Empty { path } => write!(f, "{path}: the workflow file is empty"),
            WorkflowError::NotAMapping { path } => {
                write!(
                    f,
                    "{path}: a workflow must be a YAML mapping with `on:` and `jobs:`"
                )
            }
            WorkflowError::Triggers { path, message } => {
                write!(f, "{path}: invalid `on:`: {message}")
            }
            WorkflowError::MissingJobs { path } => {
                write!(
                    f,
                    "{path}: no `jobs:` section; this is not a Forgejo Actions workflow"
                )
            }
            WorkflowError::JobsNotMapping { path } => {
                write!(f, "{path}: `jobs:` must be a mapping of job ids to jobs")
            }
            WorkflowError::NoJobs { path } => write!(f, "{path}: `jobs:` is empty"),
            WorkflowError::InvalidJob { path, job, message } => {
                write!(f, "{path}: job {job:?}: {message}")
            }
            WorkflowError::Matrix { path, job, message } => {
                write!(f, "{path}: job {job:?}: invalid strategy.matrix: {message}")
            }
            WorkflowError::Reusable { path, job, message } => {
                write!(f, "{path}: job {job:?}: reusable workflow: {message}")
            }
            WorkflowError::TooLarge { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for WorkflowError {}

/// Parses a workflow file with Forgejo 15 behaviour. `resolve(path)` returns the content of
/// another file of the same repository (path relative to the repository root, without `./`),
/// for job-level `uses: ./.forgejo/workflows/x.yml`.
pub fn parse_workflow(
    path: &str,
    content: &str,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<Workflow, WorkflowError> {
    parse_workflow_with(path, content, resolve, ParseOptions::default())
}

/// [`parse_workflow`] with explicit version behaviour.
pub fn parse_workflow_with(
    path: &str,
    content: &str,
    resolve: &dyn Fn(&str) -> Option<String>,
    options: ParseOptions,
) -> Result<Workflow, WorkflowError> {
    let doc = load_document(path, content)?;
    let on = triggers::parse_triggers(doc.raw_on.as_ref()).map_err(|message| {
        WorkflowError::Triggers {
            path: path.to_string(),
            message,
        }
    })?;
    let no_outputs = HashMap::new();
    let parser = JobParser {
        path,
        resolve,
        options,
        job_outputs: &no_outputs,
        job_count: Cell::new(0),
    };
    let mut drafts = parser.parse_jobs(&doc, &Scope::default())?;
    dedup_names(&mut drafts);
    let name = doc
        .parts
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| file_name(path));
    let jobs = finish(path, &doc.parts, drafts)?;
    Ok(Workflow { name, on, jobs })
}

/// Re-parses a job whose matrix waited for other jobs' outputs ([`JobSpec::incomplete_matrix`]),
/// now that `outputs` (job key to output name to value) are known, as Forgejo's
/// `tryHandleIncompleteMatrix` does: the result replaces the job, each new job keeping its
/// `needs`. A job whose matrix or `runs-on` is still incomplete afterwards is an error (Forgejo
/// fails the run with a pre-execution error).
pub fn expand_incomplete_job(
    path: &str,
    job: &JobSpec,
    outputs: &HashMap<String, HashMap<String, String>>,
    resolve: &dyn Fn(&str) -> Option<String>,
    options: ParseOptions,
) -> Result<Vec<JobSpec>, WorkflowError> {
    let doc = load_document(path, &job.payload)?;
    let parser = JobParser {
        path,
        resolve,
        options,
        job_outputs: outputs,
        job_count: Cell::new(0),
    };
    let mut drafts = parser.parse_jobs(&doc, &Scope::default())?;
    for draft in &mut drafts {
        if draft.key == job.key {
            let still_missing = match &draft.incomplete_matrix {
                Some((job_id, output)) => Some(format!(
                    "output {output:?} of job {job_id:?} is still missing"
                )),
                None if draft.incomplete_runs_on => Some(
                    "`runs-on` still refers to an unknown output or matrix dimension".to_string(),
                ),
                None => None,
            };
            if let Some(message) = still_missing {
                return Err(WorkflowError::Matrix {
                    path: path.to_string(),
                    job: job.key.clone(),
                    message,
                });
            }
        }
        draft.needs.extend(job.needs.iter().cloned());
    }
    finish(path, &doc.parts, drafts)
}

/// The top-level pieces of a workflow document.
struct Document {
    parts: DocumentParts,
    raw_on: Option<Value>,
    jobs: Vec<(String, Mapping)>,
}

fn load_document(path: &str, content: &str) -> Result<Document, WorkflowError> {
    let path_owned = || path.to_string();
    if content.trim().is_empty() {
        return Err(WorkflowError::Empty { path: path_owned() });
    }
    let mut root: Value = serde_norway::from_str(content).map_err(|e| WorkflowError::Yaml {
        path: path_owned(),
        message: e.to_string(),
    })?;
    root.apply_merge().map_err(|e| WorkflowError::Yaml {
        path: path_owned(),
        message: e.to_string(),
    })?;
    let root = untagged(&root);
    let map = match root {
        Value::Null => return Err(WorkflowError::Empty { path: path_owned() }),
        Value::Mapping(map) => map,
        _ => return Err(WorkflowError::NotAMapping { path: path_owned() }),
    };
    let jobs_value = match map.get("jobs").map(untagged) {
        None | Some(Value::Null) => return Err(WorkflowError::MissingJobs { path: path_owned() }),
        Some(v) => v,
    };
    let Value::Mapping(jobs_map) = jobs_value else {
        return Err(WorkflowError::JobsNotMapping { path: path_owned() });
    };
    if jobs_map.is_empty() {
        return Err(WorkflowError::NoJobs { path: path_owned() });
    }
    let mut jobs = Vec::with_capacity(jobs_map.len());
    for (key, job) in jobs_map {
        let Some(key) = key_string(key) else {
            return Err(WorkflowError::JobsNotMapping { path: path_owned() });
        };
        let Some(job) = as_mapping(job) else {
            return Err(WorkflowError::InvalidJob {
                path: path_owned(),
                job: key,
                message: "a job must be a mapping (with `runs-on` and `steps`, or `uses`)"
                    .to_string(),
            });
        };
        validate_job(job).map_err(|message| WorkflowError::InvalidJob {
            path: path_owned(),
            job: key.clone(),
            message,
        })?;
        jobs.push((key, job.clone()));
    }
    let name = match map.get("name").map(untagged) {
        None | Some(Value::Null) => None,
        Some(v) => Some(scalar_string(v).ok_or_else(|| WorkflowError::InvalidJob {
            path: path_owned(),
            job: String::new(),
            message: "the workflow `name:` must be a string".to_string(),
        })?),
    };
    Ok(Document {
        parts: DocumentParts {
            name,
            on: map.get("on").cloned().unwrap_or(Value::Null),
            env: map.get("env").cloned(),
            defaults: map.get("defaults").cloned(),
        },
        raw_on: map.get("on").cloned(),
        jobs,
    })
}

/// Type checks that make Go's decoder reject a job (`jobparser.Job`, `model.Job`).
fn validate_job(job: &Mapping) -> Result<(), String> {
    let field = |k: &str| job.get(k).map(untagged).filter(|v| !v.is_null());
    let scalar = |k: &str| match field(k) {
        Some(Value::Mapping(_) | Value::Sequence(_)) => Err(format!("`{k}` must be a string")),
        _ => Ok(()),
    };
    let mapping = |k: &str| match field(k) {
        Some(Value::Mapping(_)) | None => Ok(()),
        _ => Err(format!("`{k}` must be a mapping")),
    };
    scalar("name")?;
    scalar("uses")?;
    scalar("timeout-minutes")?;
    mapping("strategy")?;
    mapping("with")?;
    if let Some(Value::Mapping(outputs)) = field("outputs") {
        if outputs
            .values()
            .any(|v| matches!(untagged(v), Value::Mapping(_) | Value::Sequence(_)))
        {
            return Err("every value of `outputs` must be a string".to_string());
        }
    } else {
        mapping("outputs")?;
    }
    if let Some(Value::Mapping(services)) = field("services") {
        if let Some((name, _)) = services
            .iter()
            .find(|(_, v)| !matches!(untagged(v), Value::Mapping(_) | Value::Null))
        {
            return Err(format!(
                "service {:?} must be a mapping",
                key_string(name).unwrap_or_default()
            ));
        }
    } else {
        mapping("services")?;
    }
    match field("steps") {
        None => {}
        Some(Value::Sequence(steps)) => {
            for (i, step) in steps.iter().enumerate() {
                if !matches!(untagged(step), Value::Mapping(_) | Value::Null) {
                    return Err(format!("steps[{i}] must be a mapping"));
                }
            }
        }
        Some(_) => return Err("`steps` must be a list".to_string()),
    }
    if let Some(Value::Sequence(_)) = field("container") {
        return Err("`container` must be an image name or a mapping".to_string());
    }
    if let Some(Value::Sequence(_)) = field("concurrency") {
        return Err("`concurrency` must be a group name or a mapping".to_string());
    }
    Ok(())
}

/// Where a set of jobs is being parsed: the top-level file or a called workflow.
#[derive(Default)]
struct Scope {
    depth: usize,
    parent_call_id: String,
    inputs: Option<Mapping>,
}

/// A job before its payload is rendered.
struct Draft {
    key: String,
    name: String,
    needs: Vec<String>,
    source: Mapping,
    combination: Combination,
    raw_matrix: Option<Value>,
    incomplete_matrix: Option<(String, String)>,
    runs_on: Vec<String>,
    incomplete_runs_on: bool,
    kind: JobKind,
    if_override: Option<Value>,
    on_override: Option<Value>,
    call_id: Option<String>,
    call_parent: Option<String>,
    call_inputs: Option<Mapping>,
}

/// Forgejo's `jobparser.Parse` for one document.
struct JobParser<'a> {
    path: &'a str,
    resolve: &'a dyn Fn(&str) -> Option<String>,
    options: ParseOptions,
    job_outputs: &'a HashMap<String, HashMap<String, String>>,
    job_count: Cell<usize>,
}

const INCOMPLETE_SUFFIX: &str = " (incomplete matrix)";

impl JobParser<'_> {
    fn parse_jobs(&self, doc: &Document, scope: &Scope) -> Result<Vec<Draft>, WorkflowError> {
        let mut drafts = Vec::new();
        for (key, job) in &doc.jobs {
            self.expand_matrix(key, job, scope, &mut drafts)?;
        }
        if self.options.expand_local_reusable_workflows {
            let mut inner_jobs = Vec::new();
            for draft in drafts.iter_mut() {
                inner_jobs.extend(self.expand_reusable(draft, scope)?);
            }
            drafts.extend(inner_jobs);
        }
        Ok(drafts)
    }

    fn matrix_error(&self, key: &str, message: String) -> WorkflowError {
        WorkflowError::Matrix {
            path: self.path.to_string(),
            job: key.to_string(),
            message,
        }
    }

    /// One draft per matrix combination of `jobs.<key>`.
    fn expand_matrix(
        &self,
        key: &str,
        job: &Mapping,
        scope: &Scope,
        out: &mut Vec<Draft>,
    ) -> Result<(), WorkflowError> {
        let needs = job
            .get("needs")
            .and_then(string_or_list)
            .unwrap_or_default();
        let raw_matrix = job.get("strategy").and_then(|s| get(s, "matrix")).cloned();
        let base_ctx = ExprContext {
            job_outputs: Some(self.job_outputs),
            inputs: scope.inputs.as_ref(),
            ..Default::default()
        };
        let (combinations, incomplete_matrix) = match &raw_matrix {
            None => (vec![Combination::new()], None),
            Some(raw) => match evaluate_node(raw, &base_ctx) {
                Ok(evaluated) => (
                    matrix::expand(Some(&evaluated)).map_err(|m| self.matrix_error(key, m))?,
                    None,
                ),
                Err(ExprError::MissingJobOutput { job, output }) => {
                    (vec![Combination::new()], Some((job, output)))
                }
                Err(other) => return Err(self.matrix_error(key, other.to_string())),
            },
        };
        let raw_name = job.get("name").and_then(scalar_string).unwrap_or_default();
        let uses = job
            .get("uses")
            .and_then(scalar_string)
            .filter(|u| !u.is_empty());
        for combination in combinations {
            let count = self.job_count.get() + 1;
            if count > MAX_JOBS_PER_WORKFLOW {
                return Err(WorkflowError::TooLarge {
                    path: self.path.to_string(),
                    message: format!(
                        "the workflow produces more than {MAX_JOBS_PER_WORKFLOW} jobs"
                    ),
                });
            }
            self.job_count.set(count);
            let ctx = ExprContext {
                matrix: Some(&combination),
                ..base_ctx
            };
            let name = if incomplete_matrix.is_some() {
                if raw_name.is_empty() {
                    format!("{}{INCOMPLETE_SUFFIX}", name_with_matrix(key, &combination))
                } else {
                    format!("{raw_name}{INCOMPLETE_SUFFIX}")
                }
            } else if raw_name.is_empty() {
                name_with_matrix(key, &combination)
            } else if let Some(original) = raw_name.strip_suffix(INCOMPLETE_SUFFIX) {
                name_with_matrix(
                    &interpolate(original, &ctx).unwrap_or_else(|_| original.to_string()),
                    &combination,
                )
            } else {
                interpolate(&raw_name, &ctx).unwrap_or_else(|_| raw_name.clone())
            };
            let strict = ExprContext {
                strict_matrix: true,
                ..ctx
            };
            let (runs_on, runs_on_error) = runs_on::evaluate_runs_on(job.get("runs-on"), &strict);
            let incomplete_runs_on = matches!(
                runs_on_error,
                Some(ExprError::MissingJobOutput { .. } | ExprError::MissingMatrixDimension(_))
            );
            out.push(Draft {
                key: key.to_string(),
                name,
                needs: needs.clone(),
                source: job.clone(),
                combination,
                raw_matrix: raw_matrix.clone(),
                incomplete_matrix: incomplete_matrix.clone(),
                runs_on,
                incomplete_runs_on,
                kind: match &uses {
                    Some(uses) => JobKind::ReusableCall { uses: uses.clone() },
                    None => JobKind::Steps,
                },
                if_override: None,
                on_override: None,
                call_id: None,
                call_parent: None,
                call_inputs: None,
            });
        }
        Ok(())
    }

    /// Expands a local reusable workflow call (Forgejo 15 `expandReusableWorkflows`): returns the
    /// inner jobs and turns `caller` into the placeholder job.
    fn expand_reusable(
        &self,
        caller: &mut Draft,
        scope: &Scope,
    ) -> Result<Vec<Draft>, WorkflowError> {
        let JobKind::ReusableCall { uses } = &caller.kind else {
            return Ok(Vec::new());
        };
        if caller.incomplete_matrix.is_some() {
            return Ok(Vec::new());
        }
        let uses = uses.clone();
        let error = |message: String| WorkflowError::Reusable {
            path: self.path.to_string(),
            job: caller.key.clone(),
            message,
        };
        match classify_uses(&uses) {
            UsesKind::Invalid => {
                return Err(error(format!(
                    "`uses` references invalid workflow path {uses:?}: it must start with './' for a local \
                     workflow, or be '<org>/<repo>/<path>.yml@<ref>' for a remote one"
                )))
            }
            UsesKind::Remote => return Ok(Vec::new()),
            UsesKind::Local => {}
        }
        // Forgejo keeps the legacy single-task behaviour for calls that name their runner.
        let raw_runs_on = caller
            .source
            .get("runs-on")
            .map(runs_on::flatten)
            .unwrap_or_default();
        if !raw_runs_on.is_empty() {
            return Ok(Vec::new());
        }
        if scope.depth + 1 > MAX_REUSABLE_DEPTH {
            return Err(error(format!(
                "failed to parse workflow due to exceeding the workflow recursion limit ({MAX_REUSABLE_DEPTH})"
            )));
        }
        let target = uses.trim_start_matches("./");
        let content = (self.resolve)(target)
            .ok_or_else(|| error(format!("unable to read local workflow {uses:?}")))?;
        let callee = load_document(target, &content)
            .map_err(|e| error(format!("error expanding {uses:?}: {e}")))?;

        let call_id = workflow_call_id(&scope.parent_call_id, &caller.key, &caller.combination);
        let caller_ctx = ExprContext {
            matrix: Some(&caller.combination),
            job_outputs: Some(self.job_outputs),
            inputs: scope.inputs.as_ref(),
            strict_matrix: false,
        };
        let (inputs, rebuilt_on) = call_inputs(&callee, &caller.source, &caller_ctx)
            .map_err(|e| error(format!("failure to evaluate workflow inputs: {e}")))?;
        let inner_scope = Scope {
            depth: scope.depth + 1,
            parent_call_id: call_id.clone(),
            inputs: Some(inputs.clone()),
        };
        let mut inner = self.parse_jobs(&callee, &inner_scope)?;
        for job in inner.iter_mut() {
            job.key = format!("{}.{}", caller.key, job.key);
            let mut needs: Vec<String> = job
                .needs
                .iter()
                .map(|n| format!("{}.{n}", caller.key))
                .collect();
            needs.extend(caller.needs.iter().cloned());
            job.needs = needs;
            if let Some((needed, _)) = job.incomplete_matrix.as_mut() {
                *needed = format!("{}.{needed}", caller.key);
            }
            if job.call_parent.is_none() {
                job.call_parent = Some(call_id.clone());
                job.on_override = rebuilt_on.clone();
            } else if job.on_override.is_none() {
                job.on_override = Some(callee.parts.on.clone());
            }
        }
        caller.needs.extend(inner.iter().map(|j| j.key.clone()));
        caller.if_override = Some(Value::Bool(false));
        caller.kind = JobKind::WorkflowCallOuter { uses };
        caller.call_id = Some(call_id);
        caller.call_inputs = Some(inputs).filter(|i| !i.is_empty());
        Ok(inner)
    }
}

enum UsesKind {
    Local,
    Remote,
    Invalid,
}

/// act's `Job.Type()`: a `.yml`/`.yaml` path, local when it starts with `./`, remote when it is
/// `org/repo/.../file.yml@ref`.
fn classify_uses(uses: &str) -> UsesKind {
    let yaml_end = [".yml", ".yaml"]
        .iter()
        .any(|ext| uses.ends_with(ext) || uses.contains(&format!("{ext}@")));
    if !yaml_end {
        return UsesKind::Invalid;
    }
    if uses.starts_with("./") {
        return UsesKind::Local;
    }
    let has_version = uses.contains(".yml@") || uses.contains(".yaml@");
    let segments = uses
        .split('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .count();
    if !uses.starts_with('.') && segments >= 3 && has_version {
        UsesKind::Remote
    } else {
        UsesKind::Invalid
    }
}

/// Inputs of a call (`with:` evaluated, else the callee's default) and the rebuilt
/// `on: {workflow_call: {inputs: {name: {default, type}}}}` Forgejo stores in the inner payloads.
fn call_inputs(
    callee: &Document,
    caller: &Mapping,
    ctx: &ExprContext<'_>,
) -> Result<(Mapping, Option<Value>), ExprError> {
    let declared = get(&callee.parts.on, "workflow_call")
        .and_then(|c| get(c, "inputs"))
        .and_then(as_mapping)
        .cloned()
        .unwrap_or_default();
    let with = caller
        .get("with")
        .and_then(as_mapping)
        .cloned()
        .unwrap_or_default();
    let mut inputs = Mapping::new();
    let mut rebuilt = Mapping::new();
    for (name, spec) in &declared {
        let mut value = match with.get(name) {
            Some(v) if !v.is_null() => evaluate_node(v, ctx)?,
            _ => Value::Null,
        };
        if value.is_null() {
            if let Some(default) = get(spec, "default") {
                value = evaluate_node(default, &ExprContext::default())?;
            }
        }
        let mut entry = Mapping::new();
        entry.insert("default".into(), value.clone());
        entry.insert(
            "type".into(),
            get(spec, "type").cloned().unwrap_or(Value::Null),
        );
        rebuilt.insert(name.clone(), Value::Mapping(entry));
        inputs.insert(name.clone(), value);
    }
    if inputs.is_empty() {
        return Ok((inputs, None));
    }
    let mut inputs_node = Mapping::new();
    inputs_node.insert("inputs".into(), Value::Mapping(rebuilt));
    let mut on = Mapping::new();
    on.insert("workflow_call".into(), Value::Mapping(inputs_node));
    Ok((inputs, Some(Value::Mapping(on))))
}

/// A unique id per expanded call, as `generateWorkflowCallID` (sha256 over parent id, job id and
/// the matrix in key order).
fn workflow_call_id(parent: &str, job: &str, combination: &Combination) -> String {
    let mut hash = Sha256::new();
    hash.update(parent.as_bytes());
    hash.update([0]);
    hash.update(job.as_bytes());
    hash.update([0]);
    for (k, v) in combination {
        hash.update(k.as_bytes());
        hash.update([0]);
        hash.update(serde_norway::to_string(v).unwrap_or_default().as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

/// Forgejo's `JobParser`: later jobs with an already used name get `-1`, `-2`, ...
fn dedup_names(drafts: &mut [Draft]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for draft in drafts.iter_mut() {
        let count = seen.entry(draft.name.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            draft.name = format!("{}-{}", draft.name, *count - 1);
        }
    }
}

/// Renders payloads and builds the public job list.
fn finish(
    path: &str,
    parts: &DocumentParts,
    drafts: Vec<Draft>,
) -> Result<Vec<JobSpec>, WorkflowError> {
    let mut total_bytes = 0usize;
    let mut jobs = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let matrix = if draft.incomplete_matrix.is_some() {
            PayloadMatrix::Raw(draft.raw_matrix.as_ref())
        } else {
            PayloadMatrix::Resolved(&draft.combination)
        };
        let job_yaml = payload::job_mapping(
            &draft.source,
            &JobOverrides {
                name: &draft.name,
                runs_on: &draft.runs_on,
                matrix,
                if_override: draft.if_override.clone(),
                drop_call: matches!(draft.kind, JobKind::WorkflowCallOuter { .. }),
            },
        );
        let extras = PayloadExtras {
            incomplete_matrix: draft.incomplete_matrix.clone(),
            incomplete_runs_on: draft.incomplete_runs_on,
            workflow_call_inputs: draft.call_inputs.clone(),
            workflow_call_id: draft.call_id.clone(),
            workflow_call_parent: draft.call_parent.clone(),
        };
        let payload = payload::render(
            parts,
            draft.on_override.as_ref(),
            &draft.key,
            job_yaml,
            &extras,
        );
        total_bytes = total_bytes.saturating_add(payload.len());
        if total_bytes > MAX_PAYLOAD_BYTES_PER_WORKFLOW {
            return Err(WorkflowError::TooLarge {
                path: path.to_string(),
                message: format!("the job payloads exceed {MAX_PAYLOAD_BYTES_PER_WORKFLOW} bytes"),
            });
        }
        jobs.push(job_spec(draft, payload));
    }
    Ok(jobs)
}

fn job_spec(draft: Draft, payload: String) -> JobSpec {
    let source = &draft.source;
    let (concurrency, cancel) = concurrency(source.get("concurrency"), &draft.combination);
    let if_condition = match &draft.if_override {
        Some(v) => scalar_string(v),
        None => source.get("if").and_then(scalar_string),
    };
    JobSpec {
        name: truncate_bytes(&draft.name, MAX_JOB_NAME_BYTES),
        runs_on: draft.runs_on,
        if_condition,
        timeout_minutes: source.get("timeout-minutes").and_then(timeout_minutes),
        concurrency,
        concurrency_cancel_in_progress: cancel,
        container: source.get("container").and_then(container),
        services: source.get("services").map(services).unwrap_or_default(),
        outputs: source.get("outputs").map(outputs).unwrap_or_default(),
        steps: source.get("steps").map(steps).unwrap_or_default(),
        matrix: draft.combination,
        kind: draft.kind,
        incomplete_matrix: draft
            .incomplete_matrix
            .map(|(job, output)| MissingOutput { job, output }),
        incomplete_runs_on: draft.incomplete_runs_on,
        key: draft.key,
        needs: draft.needs,
        payload,
    }
}

fn truncate_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn timeout_minutes(value: &Value) -> Option<u64> {
    match untagged(value) {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Job-level `concurrency`: a group string or `{group, cancel-in-progress}`; matrix values are
/// substituted in the group (Forgejo 14+ evaluates job concurrency on the server).
fn concurrency(value: Option<&Value>, combination: &Combination) -> (Option<String>, Option<bool>) {
    let ctx = ExprContext {
        matrix: Some(combination),
        ..Default::default()
    };
    let eval = |s: String| interpolate(&s, &ctx).unwrap_or(s);
    match value.map(untagged) {
        Some(Value::Mapping(_)) => {
            let value = value.unwrap_or(&Value::Null);
            let group = get(value, "group").and_then(scalar_string).map(eval);
            let cancel = get(value, "cancel-in-progress").and_then(|c| match untagged(c) {
                Value::Bool(b) => Some(*b),
                Value::String(s) => Some(s == "true"),
                _ => None,
            });
            (group, cancel)
        }
        Some(other) => (scalar_string(other).map(eval), None),
        None => (None, None),
    }
}

fn container(value: &Value) -> Option<ContainerSpec> {
    match untagged(value) {
        Value::Mapping(_) => Some(ContainerSpec {
            image: get(value, "image")
                .and_then(scalar_string)
                .unwrap_or_default(),
        }),
        other => scalar_string(other).map(|image| ContainerSpec { image }),
    }
}

fn services(value: &Value) -> Vec<ServiceSpec> {
    as_mapping(value)
        .map(|map| {
            map.iter()
                .map(|(name, spec)| ServiceSpec {
                    name: key_string(name).unwrap_or_default(),
                    image: get(spec, "image")
                        .and_then(scalar_string)
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn outputs(value: &Value) -> BTreeMap<String, String> {
    as_mapping(value)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((key_string(k)?, scalar_string(v).unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default()
}

fn steps(value: &Value) -> Vec<StepSpec> {
    let Value::Sequence(items) = untagged(value) else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|s| !untagged(s).is_null())
        .map(|step| StepSpec {
            id: get(step, "id").and_then(scalar_string),
            name: get(step, "name").and_then(scalar_string),
            run: get(step, "run").and_then(scalar_string),
            uses: get(step, "uses").and_then(scalar_string),
        })
        .collect()
}

#[cfg(test)]
mod tests;
