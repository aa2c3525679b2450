//! The environment of a step: built from scratch, never inherited. It holds PATH, HOME (the
//! job's temporary directory), the GITHUB_* / FORGEJO_* variables a job expects, derived from
//! the task context, and the workflow's own `env:`. It never holds the runner token, the task
//! token (a job reaches it only through `${{ secrets.GITHUB_TOKEN }}`, as with forgejo-runner)
//! or anything from the stand-in's own environment but PATH.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::context::{first_text, text};
use super::workflow::JobSpec;

/// PATH used when the stand-in itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Directories of one job, all inside a fresh temporary directory.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The temporary directory; also HOME.
    pub home: PathBuf,
    /// Working directory of steps (`GITHUB_WORKSPACE`).
    pub workspace: PathBuf,
    /// `RUNNER_TEMP` and `TMPDIR`.
    pub temp: PathBuf,
    /// `GITHUB_EVENT_PATH`: the event payload as JSON.
    pub event_path: PathBuf,
}

impl Workspace {
    pub fn create(home: &Path) -> std::io::Result<Workspace> {
        let ws = Workspace {
            home: home.to_path_buf(),
            workspace: home.join("workspace"),
            temp: home.join("tmp"),
            event_path: home.join("event.json"),
        };
        std::fs::create_dir_all(&ws.workspace)?;
        std::fs::create_dir_all(&ws.temp)?;
        Ok(ws)
    }
}

/// (variable suffix, context keys tried in order).
const CONTEXT_VARIABLES: &[(&str, &[&str])] = &[
    ("REPOSITORY", &["repository"]),
    ("REPOSITORY_OWNER", &["repository_owner"]),
    ("EVENT_NAME", &["event_name"]),
    ("REF", &["ref"]),
    ("REF_NAME", &["ref_name"]),
    ("REF_TYPE", &["ref_type"]),
    ("SHA", &["sha"]),
    ("HEAD_REF", &["head_ref"]),
    ("BASE_REF", &["base_ref"]),
    ("RUN_ID", &["run_id"]),
    ("RUN_NUMBER", &["run_number"]),
    ("RUN_ATTEMPT", &["run_attempt"]),
    ("ACTOR", &["actor"]),
    ("SERVER_URL", &["server_url"]),
    ("WORKFLOW_REF", &["workflow_ref"]),
    ("RETENTION_DAYS", &["retention_days"]),
];

/// Variables every step gets before the workflow's `env:`.
pub fn base_env(context: &Value, job: &JobSpec, ws: &Workspace) -> Vec<(String, String)> {
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let dir = |p: &Path| p.to_string_lossy().into_owned();
    let mut env = vec![
        ("PATH".to_string(), path),
        ("HOME".to_string(), dir(&ws.home)),
        ("CI".to_string(), "true".to_string()),
        ("RUNNER_OS".to_string(), "Linux".to_string()),
        ("RUNNER_ARCH".to_string(), runner_arch().to_string()),
        ("RUNNER_TEMP".to_string(), dir(&ws.temp)),
        ("TMPDIR".to_string(), dir(&ws.temp)),
    ];
    let server_url = text(context, "server_url");
    let mut github = vec![
        ("ACTIONS".to_string(), "true".to_string()),
        ("JOB".to_string(), job.job_id.clone()),
        ("WORKFLOW".to_string(), job.workflow_name.clone()),
        ("WORKSPACE".to_string(), dir(&ws.workspace)),
        ("EVENT_PATH".to_string(), dir(&ws.event_path)),
        (
            "API_URL".to_string(),
            format!("{}/api/v1", server_url.trim_end_matches('/')),
        ),
    ];
    for (suffix, keys) in CONTEXT_VARIABLES {
        github.push((suffix.to_string(), first_text(context, keys)));
    }
    for prefix in ["GITHUB_", "FORGEJO_"] {
        env.extend(
            github
                .iter()
                .map(|(k, v)| (format!("{prefix}{k}"), v.clone())),
        );
    }
    env.push(("GITEA_ACTIONS".to_string(), "true".to_string()));
    env
}

fn runner_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "X64",
        "aarch64" => "ARM64",
        "arm" => "ARM",
        "x86" => "X86",
        other => other,
    }
}

/// The `github` expression context: the task context plus the job-derived fields.
pub fn github_context(context: &Value, job: &JobSpec, ws: &Workspace) -> Value {
    let mut github = match context {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    github.insert("job".into(), Value::String(job.job_id.clone()));
    github.insert("workflow".into(), Value::String(job.workflow_name.clone()));
    github.insert(
        "workspace".into(),
        Value::String(ws.workspace.to_string_lossy().into_owned()),
    );
    github.insert(
        "event_path".into(),
        Value::String(ws.event_path.to_string_lossy().into_owned()),
    );
    Value::Object(github)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> JobSpec {
        super::super::workflow::parse(b"name: wf\njobs:\n  build:\n    steps: []\n").unwrap()
    }

    #[test]
    fn derives_github_and_forgejo_variables_without_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::create(dir.path()).unwrap();
        let context = json!({
            "repository": "o/r", "repository_owner": "o", "run_id": 7, "sha": "abc",
            "server_url": "http://h:3000/", "token": "task-token-value", "gitea_runtime_token": "rt",
        });
        let env = base_env(&context, &job(), &ws);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("GITHUB_REPOSITORY").as_deref(), Some("o/r"));
        assert_eq!(get("FORGEJO_REPOSITORY_OWNER").as_deref(), Some("o"));
        assert_eq!(get("GITHUB_RUN_ID").as_deref(), Some("7"));
        assert_eq!(get("GITHUB_JOB").as_deref(), Some("build"));
        assert_eq!(get("GITHUB_WORKFLOW").as_deref(), Some("wf"));
        assert_eq!(
            get("GITHUB_API_URL").as_deref(),
            Some("http://h:3000/api/v1")
        );
        assert_eq!(get("HOME").as_deref(), Some(dir.path().to_str().unwrap()));
        assert!(ws.workspace.is_dir() && ws.temp.is_dir());
        for (name, value) in &env {
            assert!(
                !value.contains("task-token-value") && value != "rt",
                "{name} leaks a token"
            );
            assert!(!name.contains("TOKEN"), "{name}");
        }
    }
}
