//! TEMPORARY stand-in for `workflow.rs` (being written by a colleague) with the agreed
//! interface: `runs-on` as a string or list, `needs`, `if`, `steps`; no matrix, no reusable
//! workflows. Deleted as soon as the real parser lands.

#![allow(dead_code)]

use std::fmt;

use serde_norway::Value;

#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub on: Triggers,
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct Triggers {
    pub push: bool,
    pub schedules: Vec<String>,
    pub workflow_dispatch: bool,
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub key: String,
    pub name: String,
    pub runs_on: Vec<String>,
    pub needs: Vec<String>,
    pub if_condition: Option<String>,
    pub timeout_minutes: Option<u64>,
    pub concurrency: Option<String>,
    pub steps: Vec<StepSpec>,
    pub payload: String,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: Option<String>,
    pub run: Option<String>,
    pub uses: Option<String>,
}

#[derive(Debug, Clone)]
pub enum WorkflowError {
    Invalid(String),
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkflowError::Invalid(m) => write!(f, "invalid workflow: {m}"),
        }
    }
}

impl std::error::Error for WorkflowError {}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

pub fn parse_workflow(
    path: &str,
    content: &str,
    _resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<Workflow, WorkflowError> {
    let doc: Value =
        serde_norway::from_str(content).map_err(|e| WorkflowError::Invalid(e.to_string()))?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| WorkflowError::Invalid("not a mapping".into()))?;
    let name = map
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(path)
        .to_owned();
    let on_value = map.get("on").or_else(|| map.get(Value::Bool(true)));
    let mut on = Triggers::default();
    match on_value {
        Some(Value::String(s)) => {
            on.push = s == "push";
            on.workflow_dispatch = s == "workflow_dispatch";
        }
        Some(Value::Sequence(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                on.push |= item == "push";
                on.workflow_dispatch |= item == "workflow_dispatch";
            }
        }
        Some(Value::Mapping(m)) => {
            on.push = m.contains_key("push");
            on.workflow_dispatch = m.contains_key("workflow_dispatch");
            if let Some(Value::Sequence(items)) = m.get("schedule") {
                for item in items {
                    if let Some(cron) = item.get("cron").and_then(Value::as_str) {
                        on.schedules.push(cron.to_owned());
                    }
                }
            }
        }
        _ => return Err(WorkflowError::Invalid("missing on".into())),
    }
    let jobs_map = map
        .get("jobs")
        .and_then(Value::as_mapping)
        .ok_or_else(|| WorkflowError::Invalid("no jobs".into()))?;
    let mut jobs = Vec::new();
    for (key, job) in jobs_map {
        let key = key
            .as_str()
            .ok_or_else(|| WorkflowError::Invalid("job key".into()))?
            .to_owned();
        let steps = match job.get("steps") {
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|s| StepSpec {
                    name: s.get("name").and_then(Value::as_str).map(str::to_owned),
                    run: s.get("run").and_then(Value::as_str).map(str::to_owned),
                    uses: s.get("uses").and_then(Value::as_str).map(str::to_owned),
                })
                .collect(),
            _ => vec![],
        };
        let mut single = serde_norway::Mapping::new();
        single.insert("name".into(), Value::String(name.clone()));
        if let Some(on) = on_value {
            single.insert("on".into(), on.clone());
        }
        let mut jobs_single = serde_norway::Mapping::new();
        jobs_single.insert(Value::String(key.clone()), job.clone());
        single.insert("jobs".into(), Value::Mapping(jobs_single));
        jobs.push(JobSpec {
            name: job
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(&key)
                .to_owned(),
            runs_on: strings(job.get("runs-on")),
            needs: strings(job.get("needs")),
            if_condition: job.get("if").and_then(Value::as_str).map(str::to_owned),
            timeout_minutes: job.get("timeout-minutes").and_then(Value::as_u64),
            concurrency: job
                .get("concurrency")
                .and_then(Value::as_str)
                .map(str::to_owned),
            steps,
            payload: serde_norway::to_string(&Value::Mapping(single)).unwrap_or_default(),
            key,
        });
    }
    Ok(Workflow { name, on, jobs })
}
