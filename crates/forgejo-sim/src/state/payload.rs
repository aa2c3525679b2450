//! The `Task` message a runner receives (contract §2.6 "Task payload").

use std::collections::{BTreeMap, HashMap};

use prost_types::{value::Kind, Struct, Value};
use runner_proto::runner::v1::{Task as TaskMessage, TaskNeed};

use super::{random_hex, Id, State};

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn object(fields: BTreeMap<String, Value>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

impl State {
    /// Builds the message for `task_id`, carrying the (clear) task `token` in the context and
    /// in the secrets `GITHUB_TOKEN`, `GITEA_TOKEN` and `FORGEJO_TOKEN`.
    pub(super) fn task_message(&self, task_id: Id, token: &str) -> Option<TaskMessage> {
        let task = self.tasks.get(&task_id)?;
        let job = self.jobs.get(&task.job_id)?;
        let run = self.runs.get(&job.run_id)?;
        let repo = self.repos.get(&job.repo_id)?;
        let owner = self
            .accounts
            .get(&repo.owner_id)
            .map(|a| a.name.as_str())
            .unwrap_or("");
        let full_name = format!("{owner}/{}", repo.name);
        let server_url = self.app_url.trim_end_matches('/').to_owned();
        let git_ref = format!("refs/heads/{}", repo.default_branch);

        let mut event = BTreeMap::new();
        let mut repository = BTreeMap::new();
        repository.insert("full_name".into(), string(full_name.clone()));
        repository.insert("name".into(), string(repo.name.clone()));
        repository.insert("default_branch".into(), string(repo.default_branch.clone()));
        event.insert("repository".into(), object(repository));
        event.insert("ref".into(), string(git_ref.clone()));

        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        let mut put = |k: &str, v: Value| {
            ctx.insert(k.to_owned(), v);
        };
        put("repository", string(full_name.clone()));
        put("repository_owner", string(owner));
        put("event_name", string(run.event.clone()));
        put("event", object(event));
        put("ref", string(git_ref.clone()));
        put("ref_name", string(repo.default_branch.clone()));
        put("ref_type", string("branch"));
        put("sha", string(run.sha.clone()));
        put("head_ref", string(""));
        put("base_ref", string(""));
        put("run_id", string(run.id.to_string()));
        put("run_number", string(run.index.to_string()));
        put("run_attempt", string(task.attempt.max(1).to_string()));
        put("actor", string(run.trigger_user.clone()));
        put("token", string(token));
        put("retention_days", string("90"));
        put("workflow", string(run.title.clone()));
        put(
            "workflow_ref",
            string(format!("{full_name}/{}@{git_ref}", run.workflow_file)),
        );
        put("job", string(job.key.clone()));
        put("server_url", string(server_url.clone()));
        put("api_url", string(format!("{server_url}/api/v1")));
        put(
            "gitea_default_actions_url",
            string("https://data.forgejo.org"),
        );
        put(
            "forgejo_default_actions_url",
            string("https://data.forgejo.org"),
        );
        put(
            "forgejo_server_version",
            string(self.version.version_string()),
        );
        put("gitea_runtime_token", string(random_hex(20)));

        let secrets: HashMap<String, String> = ["GITHUB_TOKEN", "GITEA_TOKEN", "FORGEJO_TOKEN"]
            .into_iter()
            .map(|k| (k.to_owned(), token.to_owned()))
            .collect();

        let mut needs = HashMap::new();
        for need in &job.needs {
            let needed = run
                .job_ids
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .find(|j| &j.key == need);
            if let Some(needed) = needed {
                let outputs = self
                    .tasks
                    .get(&needed.task_id)
                    .map(|t| {
                        t.outputs
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                needs.insert(
                    need.clone(),
                    TaskNeed {
                        outputs,
                        result: needed.status.as_result(),
                    },
                );
            }
        }

        #[allow(deprecated)]
        Some(TaskMessage {
            id: task_id,
            workflow_payload: Some(job.payload.clone().into_bytes()),
            context: Some(Struct { fields: ctx }),
            secrets,
            machine: String::new(),
            needs,
            vars: HashMap::new(),
        })
    }
}
