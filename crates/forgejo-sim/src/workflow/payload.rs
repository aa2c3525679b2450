//! The single-job workflow YAML that Forgejo stores per job and sends to the runner as
//! `Task.workflow_payload`: `jobparser.SingleWorkflow` (forgejo/runner `act/jobparser/model.go`)
//! marshalled after `InsertRunJobs` (Forgejo `models/actions/run.go`) erased its `needs`.
//!
//! Field set and order follow the Go structs, so keys that `jobparser.Job`/`Step` do not know
//! (`permissions`, job-level `continue-on-error`, `environment`, ...) are dropped like Forgejo drops
//! them. The job's `name` is the computed display name, `runs-on` the evaluated labels (a string
//! for one label, a list otherwise) and `strategy.matrix` the job's own combination as
//! `{dimension: [value]}`.

use serde_norway::{Mapping, Value};

use super::matrix::Combination;
use super::value::{as_mapping, get, untagged};

/// Keys of `jobparser.Job`, in struct order (`needs` is erased before storage).
const JOB_KEYS: &[&str] = &[
    "name",
    "runs-on",
    "env",
    "if",
    "steps",
    "timeout-minutes",
    "services",
    "strategy",
    "container",
    "defaults",
    "outputs",
    "uses",
    "with",
    "secrets",
    "concurrency",
];
/// Keys of `jobparser.Step`, in struct order.
const STEP_KEYS: &[&str] = &[
    "id",
    "if",
    "name",
    "uses",
    "run",
    "working-directory",
    "shell",
    "env",
    "with",
    "continue-on-error",
    "timeout-minutes",
];
/// Keys of `jobparser.ContainerSpec` (services).
const SERVICE_KEYS: &[&str] = &[
    "image",
    "env",
    "ports",
    "volumes",
    "options",
    "credentials",
    "cmd",
];

/// What the matrix of one job looks like in its payload.
pub enum PayloadMatrix<'a> {
    /// A resolved combination (empty when the job has no matrix).
    Resolved(&'a Combination),
    /// Still unresolved: the original matrix is kept so Forgejo can expand it later.
    Raw(Option<&'a Value>),
}

/// The computed parts of one job that replace what the YAML said.
pub struct JobOverrides<'a> {
    pub name: &'a str,
    pub runs_on: &'a [String],
    pub matrix: PayloadMatrix<'a>,
    /// Replaces `if:` (the sentinel job of an expanded reusable workflow gets `false`).
    pub if_override: Option<Value>,
    /// Removes `uses`/`with` (the sentinel job of an expanded reusable workflow).
    pub drop_call: bool,
}

/// Builds `jobs.<key>` of the payload from the job's YAML mapping.
pub fn job_mapping(source: &Mapping, overrides: &JobOverrides<'_>) -> Mapping {
    let mut out = Mapping::new();
    for key in JOB_KEYS {
        let value = match *key {
            "name" => Some(Value::String(overrides.name.to_string())),
            "runs-on" => Some(runs_on_value(overrides.runs_on)),
            "if" => overrides
                .if_override
                .clone()
                .or_else(|| source.get(*key).cloned()),
            "uses" | "with" if overrides.drop_call => None,
            "steps" => source.get(*key).map(steps_value),
            "services" => source.get(*key).map(services_value),
            "strategy" => strategy_value(source.get(*key), &overrides.matrix),
            _ => source.get(*key).cloned(),
        };
        if let Some(value) = value.filter(|v| !is_empty(v) || *key == "runs-on" || *key == "if") {
            out.insert(Value::String((*key).to_string()), value);
        }
    }
    out
}

fn runs_on_value(labels: &[String]) -> Value {
    match labels {
        [one] => Value::String(one.clone()),
        many => Value::Sequence(many.iter().cloned().map(Value::String).collect()),
    }
}

fn steps_value(steps: &Value) -> Value {
    let Value::Sequence(items) = untagged(steps) else {
        return steps.clone();
    };
    Value::Sequence(
        items
            .iter()
            .filter_map(|step| as_mapping(step).map(|m| Value::Mapping(filtered(m, STEP_KEYS))))
            .collect(),
    )
}

fn services_value(services: &Value) -> Value {
    let Some(map) = as_mapping(services) else {
        return services.clone();
    };
    Value::Mapping(
        map.iter()
            .map(|(name, spec)| {
                let spec = as_mapping(spec)
                    .map_or(Value::Null, |m| Value::Mapping(filtered(m, SERVICE_KEYS)));
                (name.clone(), spec)
            })
            .collect(),
    )
}

fn strategy_value(strategy: Option<&Value>, matrix: &PayloadMatrix<'_>) -> Option<Value> {
    let mut out = Mapping::new();
    for key in ["fail-fast", "max-parallel"] {
        if let Some(v) = strategy.and_then(|s| get(s, key)) {
            out.insert(Value::String(key.to_string()), v.clone());
        }
    }
    let matrix_value = match matrix {
        PayloadMatrix::Resolved(combination) if !combination.is_empty() => Some(Value::Mapping(
            combination
                .iter()
                .map(|(k, v)| (Value::String(k.clone()), Value::Sequence(vec![v.clone()])))
                .collect(),
        )),
        PayloadMatrix::Resolved(_) => None,
        PayloadMatrix::Raw(raw) => raw.cloned(),
    };
    if let Some(m) = matrix_value {
        out.insert(Value::String("matrix".to_string()), m);
    }
    (!out.is_empty()).then_some(Value::Mapping(out))
}

fn filtered(map: &Mapping, keys: &[&str]) -> Mapping {
    keys.iter()
        .filter_map(|k| {
            map.get(*k)
                .map(|v| (Value::String((*k).to_string()), v.clone()))
        })
        .filter(|(_, v)| !is_empty(v))
        .collect()
}

/// Go's `omitempty`: null, empty strings and empty collections are left out.
fn is_empty(value: &Value) -> bool {
    match untagged(value) {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.is_empty(),
        _ => false,
    }
}

/// Workflow-level parts copied into every payload.
pub struct DocumentParts {
    pub name: Option<String>,
    pub on: Value,
    pub env: Option<Value>,
    pub defaults: Option<Value>,
}

/// Forgejo bookkeeping stored next to the job (`IncompleteMatrix*`, `IncompleteRunsOn`,
/// `__metadata` of reusable workflow calls).
#[derive(Default)]
pub struct PayloadExtras {
    pub incomplete_matrix: Option<(String, String)>,
    pub incomplete_runs_on: bool,
    pub workflow_call_inputs: Option<Mapping>,
    pub workflow_call_id: Option<String>,
    pub workflow_call_parent: Option<String>,
}

/// Assembles and serialises the single-job workflow.
pub fn render(
    doc: &DocumentParts,
    on_override: Option<&Value>,
    key: &str,
    job: Mapping,
    extras: &PayloadExtras,
) -> String {
    let mut out = Mapping::new();
    let mut put = |k: &str, v: Value| {
        out.insert(Value::String(k.to_string()), v);
    };
    if let Some(name) = doc.name.as_ref().filter(|n| !n.is_empty()) {
        put("name", Value::String(name.clone()));
    }
    put("on", on_override.unwrap_or(&doc.on).clone());
    if let Some(env) = doc.env.as_ref().filter(|v| !is_empty(v)) {
        put("env", env.clone());
    }
    let mut jobs = Mapping::new();
    jobs.insert(Value::String(key.to_string()), Value::Mapping(job));
    put("jobs", Value::Mapping(jobs));
    if let Some(defaults) = doc.defaults.as_ref().filter(|v| !is_empty(v)) {
        put("defaults", defaults.clone());
    }
    if let Some((job, output)) = &extras.incomplete_matrix {
        put("incomplete_matrix", Value::Bool(true));
        let mut needs = Mapping::new();
        needs.insert("job".into(), Value::String(job.clone()));
        needs.insert("output".into(), Value::String(output.clone()));
        put("incomplete_matrix_needs", Value::Mapping(needs));
    }
    if extras.incomplete_runs_on {
        put("incomplete_runs_on", Value::Bool(true));
    }
    let mut meta = Mapping::new();
    if let Some(inputs) = extras
        .workflow_call_inputs
        .as_ref()
        .filter(|m| !m.is_empty())
    {
        meta.insert(
            "workflow_call_inputs".into(),
            Value::Mapping(inputs.clone()),
        );
    }
    if let Some(id) = &extras.workflow_call_id {
        meta.insert("workflow_call_id".into(), Value::String(id.clone()));
    }
    if let Some(parent) = &extras.workflow_call_parent {
        meta.insert("workflow_call_parent".into(), Value::String(parent.clone()));
    }
    if !meta.is_empty() {
        put("__metadata", Value::Mapping(meta));
    }
    // Serialising a tree of plain YAML values cannot fail; an empty payload would be refused
    // by the runner stand-in rather than crash anything.
    let text = serde_norway::to_string(&Value::Mapping(out)).unwrap_or_default();
    quote_on_key(&text)
}

/// Writes the top-level `on` key as `"on"`, as Go's yaml.v3 does: a YAML 1.1 reader (PyYAML,
/// used by Python runners) would otherwise read the bare key as the boolean `true`. Only a line
/// starting in column 0 can be a top-level key, so block-scalar content is never touched.
fn quote_on_key(text: &str) -> String {
    if let Some(rest) = text.strip_prefix("on:") {
        return format!("\"on\":{rest}");
    }
    text.replacen("\non:", "\n\"on\":", 1)
}
