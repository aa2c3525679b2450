//! Repositories, committed files, and the workflow triggers a commit sets up.

use super::{next, random_hex, Id, Repo, Schedule, State, WorkflowEntry};

/// Workflow directories in Forgejo's order of preference: the first one that holds a
/// workflow file is the only one used.
const WORKFLOW_DIRS: &[&str] = &[
    ".forgejo/workflows/",
    ".gitea/workflows/",
    ".github/workflows/",
];

/// Whether `path` is a workflow file in `dir` (direct child, `.yml`/`.yaml`).
fn is_workflow_in(dir: &str, path: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|name| {
        !name.contains('/') && (name.ends_with(".yml") || name.ends_with(".yaml"))
    })
}

impl State {
    pub fn repo_by_name(&self, owner: &str, name: &str) -> Option<&Repo> {
        let owner_id = self.account_by_name(owner)?.id;
        self.repo_by_name
            .get(&(owner_id, name.to_lowercase()))
            .and_then(|id| self.repos.get(id))
    }

    pub fn create_repo(
        &mut self,
        owner_id: Id,
        name: &str,
        description: &str,
        private: bool,
        default_branch: &str,
        now_ms: i64,
    ) -> Result<Id, String> {
        let key = (owner_id, name.to_lowercase());
        if name.is_empty() || self.repo_by_name.contains_key(&key) {
            return Err("The repository with the same name already exists.".into());
        }
        let id = next(&mut self.ids.repo);
        self.repos.insert(
            id,
            Repo {
                id,
                owner_id,
                name: name.to_owned(),
                description: description.to_owned(),
                private,
                default_branch: if default_branch.is_empty() {
                    "main".into()
                } else {
                    default_branch.to_owned()
                },
                actions_enabled: true,
                files: Default::default(),
                workflows: Default::default(),
                schedules: Vec::new(),
                run_number: 0,
                commit_count: 0,
                head_sha: String::new(),
                created_ms: now_ms,
                updated_ms: now_ms,
            },
        );
        self.repo_by_name.insert(key, id);
        Ok(id)
    }

    /// The workflow files Forgejo would read, from the one directory it uses.
    pub fn workflow_files(&self, repo_id: Id) -> Vec<String> {
        let Some(repo) = self.repos.get(&repo_id) else {
            return vec![];
        };
        for dir in WORKFLOW_DIRS {
            let files: Vec<String> = repo
                .files
                .keys()
                .filter(|p| is_workflow_in(dir, p))
                .cloned()
                .collect();
            if !files.is_empty() {
                return files;
            }
        }
        vec![]
    }

    /// Commits a file to the default branch. Re-reads every workflow of the repository (its
    /// triggers and schedules) and, like a push, starts a run of every `on: push` workflow.
    /// Returns the commit sha and the runs started.
    pub fn commit_file(
        &mut self,
        repo_id: Id,
        path: &str,
        content: String,
        now_ms: i64,
    ) -> Option<(String, Vec<Id>)> {
        let repo = self.repos.get_mut(&repo_id)?;
        repo.files.insert(path.to_owned(), content);
        repo.commit_count += 1;
        repo.head_sha = random_hex(20);
        repo.updated_ms = now_ms;
        let sha = repo.head_sha.clone();
        self.refresh_workflows(repo_id, now_ms);
        let push_files: Vec<String> = self
            .repos
            .get(&repo_id)
            .map(|r| {
                r.workflows
                    .iter()
                    .filter(|(_, w)| matches!(w, WorkflowEntry::Valid { push: true, .. }))
                    .map(|(f, _)| f.clone())
                    .collect()
            })
            .unwrap_or_default();
        let runs = push_files
            .iter()
            .filter_map(|f| self.start_run(repo_id, f, "push", now_ms).ok())
            .collect();
        Some((sha, runs))
    }

    /// Parses the repository's workflow files again and replaces its schedules.
    fn refresh_workflows(&mut self, repo_id: Id, now_ms: i64) {
        let files = self.workflow_files(repo_id);
        let Some(repo) = self.repos.get(&repo_id) else {
            return;
        };
        let mut entries = std::collections::BTreeMap::new();
        let mut schedules = Vec::new();
        for file in files {
            let content = repo.files.get(&file).cloned().unwrap_or_default();
            let resolve = |p: &str| repo.files.get(p.trim_start_matches("./")).cloned();
            let entry = match crate::workflow::parse_workflow_with(
                &file,
                &content,
                &resolve,
                self.version.parse_options(),
            ) {
                Ok(w) => {
                    for spec in &w.on.schedules {
                        if let Some(next_ms) = crate::scheduler::next_fire_ms(spec, now_ms) {
                            schedules.push(Schedule {
                                workflow_file: file.clone(),
                                spec: spec.clone(),
                                next_ms,
                            });
                        }
                    }
                    WorkflowEntry::Valid {
                        push: w.on.push,
                        workflow_dispatch: w.on.workflow_dispatch,
                        schedules: w.on.schedules.clone(),
                    }
                }
                Err(e) => WorkflowEntry::Invalid {
                    error: e.to_string(),
                },
            };
            entries.insert(file, entry);
        }
        if let Some(repo) = self.repos.get_mut(&repo_id) {
            repo.workflows = entries;
            repo.schedules = schedules;
        }
    }

    /// Starts every schedule that is due; returns the runs started.
    pub fn fire_due_schedules(&mut self, now_ms: i64) -> Vec<Id> {
        let mut due = Vec::new();
        for repo in self.repos.values_mut() {
            for schedule in repo.schedules.iter_mut().filter(|s| s.next_ms <= now_ms) {
                due.push((repo.id, schedule.workflow_file.clone()));
                schedule.next_ms =
                    crate::scheduler::next_fire_ms(&schedule.spec, now_ms).unwrap_or(i64::MAX);
            }
        }
        due.into_iter()
            .filter_map(|(repo, file)| self.start_run(repo, &file, "schedule", now_ms).ok())
            .collect()
    }

    /// `workflow_dispatch` through the control API. `workflow` is a file name in the
    /// repository's workflow directory (or a full path).
    pub fn dispatch(&mut self, repo_id: Id, workflow: &str, now_ms: i64) -> Result<Id, String> {
        let file = self
            .workflow_files(repo_id)
            .into_iter()
            .find(|f| f == workflow || f.rsplit('/').next() == Some(workflow))
            .ok_or_else(|| format!("workflow {workflow} not found"))?;
        self.start_run(repo_id, &file, "workflow_dispatch", now_ms)
    }

    /// The error recorded for an invalid workflow file, if any.
    pub fn workflow_error(&self, repo_id: Id, file: &str) -> Option<String> {
        match self.repos.get(&repo_id)?.workflows.get(file)? {
            WorkflowEntry::Invalid { error } => Some(error.clone()),
            WorkflowEntry::Valid { .. } => None,
        }
    }
}
