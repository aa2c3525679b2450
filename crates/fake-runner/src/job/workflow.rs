//! The single-job workflow Forgejo sends in `Task.workflow_payload`, reduced to what the
//! stand-in executes: environment, steps (`run:` / `uses:`), `if:` conditions and job outputs.

use serde_json::Value;
use serde_norway::Value as Yaml;

#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Key of the job under `jobs:`.
    pub job_id: String,
    /// Workflow `name:` (or the job id when absent).
    pub workflow_name: String,
    /// Workflow-level then job-level `env:`, in file order, values unevaluated.
    pub env: Vec<(String, String)>,
    pub steps: Vec<StepSpec>,
    /// Job `outputs:` (name, expression).
    pub outputs: Vec<(String, String)>,
    /// `strategy.matrix` of this combination, as JSON (`matrix.x` in expressions).
    pub matrix: Value,
    /// `defaults.run.shell` of the job or workflow.
    pub default_shell: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// A shell script.
    Run(String),
    /// An action reference; logged and skipped.
    Uses(String),
    /// Neither `run` nor `uses`: an invalid step.
    Invalid,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    pub id: Option<String>,
    pub name: Option<String>,
    pub action: StepAction,
    pub condition: Option<String>,
    pub env: Vec<(String, String)>,
    pub shell: Option<String>,
    pub working_directory: Option<String>,
    pub continue_on_error: bool,
}

impl StepSpec {
    /// Name shown in the log, as GitHub-style runners derive it.
    pub fn display_name(&self) -> String {
        if let Some(name) = self.name.as_deref().filter(|n| !n.trim().is_empty()) {
            return name.to_string();
        }
        match &self.action {
            StepAction::Run(script) => {
                format!("Run {}", script.lines().next().unwrap_or("").trim())
            }
            StepAction::Uses(action) => format!("Run {action}"),
            StepAction::Invalid => "Invalid step".to_string(),
        }
    }
}

/// Parses the payload; an error message says what is wrong (it becomes a job log row).
pub fn parse(payload: &[u8]) -> Result<JobSpec, String> {
    let text =
        std::str::from_utf8(payload).map_err(|_| "workflow payload is not UTF-8".to_string())?;
    let doc: Yaml =
        serde_norway::from_str(text).map_err(|e| format!("invalid workflow YAML: {e}"))?;
    let jobs = doc
        .get("jobs")
        .and_then(Yaml::as_mapping)
        .ok_or("workflow has no jobs")?;
    let (job_key, job) = jobs.iter().next().ok_or("workflow has no jobs")?;
    let job_id = scalar(job_key).ok_or("job id is not a string")?;
    let workflow_name = doc
        .get("name")
        .and_then(scalar)
        .unwrap_or_else(|| job_id.clone());

    let mut env = string_map(doc.get("env"));
    env.extend(string_map(job.get("env")));
    let steps = match job.get("steps") {
        None | Some(Yaml::Null) => Vec::new(),
        Some(Yaml::Sequence(items)) => items.iter().map(parse_step).collect::<Result<_, _>>()?,
        Some(_) => return Err("steps is not a list".to_string()),
    };
    let default_shell = shell_default(job).or_else(|| shell_default(&doc));
    let matrix = job
        .get("strategy")
        .and_then(|s| s.get("matrix"))
        .map(yaml_to_json)
        .map(single_combination)
        .unwrap_or(Value::Null);
    Ok(JobSpec {
        job_id,
        workflow_name,
        env,
        steps,
        outputs: string_map(job.get("outputs")),
        matrix,
        default_shell,
    })
}

fn parse_step(step: &Yaml) -> Result<StepSpec, String> {
    if !step.is_mapping() {
        return Err("a step is not a mapping".to_string());
    }
    let action = match (
        step.get("run").and_then(scalar),
        step.get("uses").and_then(scalar),
    ) {
        (Some(run), _) => StepAction::Run(run),
        (None, Some(uses)) => StepAction::Uses(uses),
        (None, None) => StepAction::Invalid,
    };
    Ok(StepSpec {
        id: step.get("id").and_then(scalar),
        name: step.get("name").and_then(scalar),
        action,
        condition: step.get("if").and_then(scalar),
        env: string_map(step.get("env")),
        shell: step.get("shell").and_then(scalar),
        working_directory: step.get("working-directory").and_then(scalar),
        continue_on_error: step
            .get("continue-on-error")
            .and_then(Yaml::as_bool)
            .unwrap_or(false),
    })
}

fn shell_default(node: &Yaml) -> Option<String> {
    node.get("defaults")?
        .get("run")?
        .get("shell")
        .and_then(scalar)
}

/// A YAML scalar as text (`true`, `3`, `"x"`); `None` for null, lists and maps.
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn string_map(v: Option<&Yaml>) -> Vec<(String, String)> {
    let Some(map) = v.and_then(Yaml::as_mapping) else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
        .collect()
}

fn yaml_to_json(v: &Yaml) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Forgejo sends a job's matrix combination as one-element lists (`{python: ["3.10"]}`), as its
/// jobparser writes them; like forgejo-runner, a job sees each dimension's single value.
fn single_combination(matrix: Value) -> Value {
    match matrix {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| match value {
                    Value::Array(mut items) if items.len() == 1 => (key, items.remove(0)),
                    other => (key, other),
                })
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"
name: ci
on: push
env:
  A: workflow
  N: 3
jobs:
  build:
    name: build (trixie)
    runs-on: trixie
    strategy:
      matrix:
        os: trixie
    env:
      A: job
    defaults:
      run:
        shell: bash
    outputs:
      out: ${{ steps.s1.outputs.value }}
    steps:
      - uses: actions/checkout@v4
      - id: s1
        name: first
        run: |
          echo one
          echo two
        env:
          B: step
      - run: exit 1
        if: always()
        continue-on-error: true
        working-directory: sub
"#;

    #[test]
    fn parses_a_single_job_payload() {
        let job = parse(PAYLOAD.as_bytes()).unwrap();
        assert_eq!(job.job_id, "build");
        assert_eq!(job.workflow_name, "ci");
        assert_eq!(
            job.env,
            vec![
                ("A".into(), "workflow".into()),
                ("N".into(), "3".into()),
                ("A".into(), "job".into())
            ]
        );
        assert_eq!(job.default_shell.as_deref(), Some("bash"));
        assert_eq!(job.matrix["os"], "trixie");
        let listed = "on: push\njobs:\n  t:\n    runs-on: x\n    strategy:\n      matrix:\n        python: [\"3.10\"]\n    steps:\n      - run: echo\n";
        assert_eq!(parse(listed.as_bytes()).unwrap().matrix["python"], "3.10");
        assert_eq!(
            job.outputs,
            vec![("out".into(), "${{ steps.s1.outputs.value }}".into())]
        );
        assert_eq!(job.steps.len(), 3);
        assert_eq!(
            job.steps[0].action,
            StepAction::Uses("actions/checkout@v4".into())
        );
        assert_eq!(job.steps[0].display_name(), "Run actions/checkout@v4");
        assert_eq!(job.steps[1].id.as_deref(), Some("s1"));
        assert_eq!(job.steps[1].display_name(), "first");
        assert_eq!(job.steps[1].env, vec![("B".into(), "step".into())]);
        assert_eq!(job.steps[2].display_name(), "Run exit 1");
        assert_eq!(job.steps[2].condition.as_deref(), Some("always()"));
        assert!(job.steps[2].continue_on_error);
        assert_eq!(job.steps[2].working_directory.as_deref(), Some("sub"));
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        for payload in [
            &b"\xff\xfe"[..],
            b"jobs: [",
            b"name: x",
            b"jobs: {}",
            b"jobs:\n  a:\n    steps: 3",
            b"jobs:\n  a:\n    steps: [1]",
        ] {
            assert!(parse(payload).is_err(), "{payload:?}");
        }
        let job = parse(b"jobs:\n  a:\n    runs-on: x\n").unwrap();
        assert!(job.steps.is_empty());
        assert_eq!(
            parse(b"jobs:\n  a:\n    steps: [{name: n}]").unwrap().steps[0].action,
            StepAction::Invalid
        );
    }
}
