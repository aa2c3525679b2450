//! Registration tokens and runners: Register, the 15 runners API, Declare, authentication by
//! uuid + token, soft deletion, and the status thresholds.

use runner_proto::connect::{Code, ConnectError};

use super::{next, random_hex, random_token, Id, RegistrationToken, Runner, Scope, State};

/// Contract §1.5: offline after 60 s without any RPC; active within 10 s of UpdateTask/UpdateLog.
pub const RUNNER_OFFLINE_MS: i64 = 60_000;
pub const RUNNER_IDLE_MS: i64 = 10_000;

/// What a newly created runner needs to authenticate (returned once).
#[derive(Debug, Clone)]
pub struct RunnerCredentials {
    pub id: Id,
    pub uuid: String,
    pub token: String,
}

/// Which runners a listing shows (contract §1.5 `visible`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerVisibility {
    /// Only runners owned directly by the scope.
    Owned,
    /// What the UI shows: repo → repo + owner + global; owner → own + global; admin → all.
    Visible,
}

/// The UUID a deleted runner gets: 8 bytes of 0xff, then the id little-endian.
pub fn deleted_runner_uuid(id: Id) -> String {
    let b = (id as u64).to_le_bytes();
    format!(
        "ffffffff-ffff-ffff-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
    )
}

impl State {
    /// `GET {scope}/actions/runners/registration-token`: the latest active token of exactly
    /// this scope, created when there is none (a GET can create state).
    pub fn registration_token(&mut self, scope: Scope) -> String {
        let (owner_id, repo_id) = scope.ids();
        let latest = self
            .registration_tokens
            .iter()
            .rev()
            .find(|t| t.owner_id == owner_id && t.repo_id == repo_id);
        match latest {
            Some(t) if t.active => t.token.clone(),
            _ => self.new_registration_token(scope),
        }
    }

    /// `NewRunnerToken`: a fresh token; every older token of the scope becomes inactive.
    pub fn new_registration_token(&mut self, scope: Scope) -> String {
        let (owner_id, repo_id) = scope.ids();
        for t in self
            .registration_tokens
            .iter_mut()
            .filter(|t| t.owner_id == owner_id && t.repo_id == repo_id)
        {
            t.active = false;
        }
        let token = random_token(self.version.registration_token_len());
        let id = next(&mut self.ids.registration_token);
        self.registration_tokens.push(RegistrationToken {
            id,
            token: token.clone(),
            owner_id,
            repo_id,
            active: true,
        });
        token
    }

    /// Connect `Register`: any existing active registration token, whatever its scope.
    pub fn register_runner(
        &mut self,
        name: &str,
        token: &str,
        version: &str,
        labels: Vec<String>,
        ephemeral: bool,
        now_ms: i64,
    ) -> Result<(Runner, String), ConnectError> {
        if token.is_empty() || name.is_empty() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "missing runner token, name",
            ));
        }
        let found = self
            .registration_tokens
            .iter()
            .find(|t| t.token == token)
            .cloned();
        let Some(reg) = found else {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "runner registration token not found",
            ));
        };
        if !reg.active {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "runner registration token has been invalidated, please use the latest one",
            ));
        }
        let owner_gone = reg.owner_id != 0 && !self.accounts.contains_key(&reg.owner_id);
        let repo_gone = reg.repo_id != 0 && !self.repos.contains_key(&reg.repo_id);
        if owner_gone || repo_gone {
            return Err(ConnectError::new(
                Code::Internal,
                "owner or repository of the registration token not found",
            ));
        }
        let ephemeral = ephemeral && self.version.has_ephemeral_runners();
        let creds = self.insert_runner(
            Scope::from_ids(reg.owner_id, reg.repo_id),
            name,
            "",
            ephemeral,
            now_ms,
        );
        let runner = self
            .runners
            .get_mut(&creds.id)
            .ok_or_else(|| ConnectError::new(Code::Internal, "runner vanished"))?;
        runner.version = version.to_owned();
        runner.labels = Some(labels);
        Ok((runner.clone(), creds.token))
    }

    /// `POST {scope}/actions/runners` (15): a runner without labels or version.
    pub fn create_runner(
        &mut self,
        scope: Scope,
        name: &str,
        description: &str,
        ephemeral: bool,
        now_ms: i64,
    ) -> RunnerCredentials {
        self.insert_runner(scope, name, description, ephemeral, now_ms)
    }

    /// Offline registration (`forgejo-cli actions register --secret`): uuid from the first
    /// 16 characters of the 40-hex secret, token = the secret. Used by the control API.
    pub fn register_runner_with_secret(
        &mut self,
        scope: Scope,
        name: &str,
        secret: &str,
        labels: Vec<String>,
        now_ms: i64,
    ) -> Result<Id, String> {
        if secret.len() != 40 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("secret must be 40 hexadecimal characters".into());
        }
        let raw: Vec<u8> = secret.as_bytes()[..16].to_vec();
        let uuid = uuid::Uuid::from_slice(&raw)
            .map_err(|e| e.to_string())?
            .to_string();
        if self.runner_by_uuid.contains_key(&uuid) {
            return Err("a runner with this secret exists".into());
        }
        let creds = self.insert_runner(scope, name, "", false, now_ms);
        let hash = self.hash_secret(secret);
        let runner = self.runners.get_mut(&creds.id).ok_or("runner vanished")?;
        self.runner_by_uuid.remove(&runner.uuid);
        runner.uuid = uuid.clone();
        runner.token_hash = hash;
        runner.labels = Some(labels);
        self.runner_by_uuid.insert(uuid, creds.id);
        Ok(creds.id)
    }

    fn insert_runner(
        &mut self,
        scope: Scope,
        name: &str,
        description: &str,
        ephemeral: bool,
        now_ms: i64,
    ) -> RunnerCredentials {
        let (owner_id, repo_id) = scope.ids();
        let id = next(&mut self.ids.runner);
        let uuid = uuid::Uuid::new_v4().to_string();
        let token = random_hex(20);
        let mut name = name.to_owned();
        truncate_utf8(&mut name, 255);
        let runner = Runner {
            id,
            uuid: uuid.clone(),
            name,
            token_hash: self.hash_secret(&token),
            owner_id,
            repo_id,
            version: String::new(),
            labels: None,
            description: description.to_owned(),
            ephemeral: ephemeral && self.version.has_ephemeral_runners(),
            deleted: false,
            created_ms: now_ms,
            last_online_ms: None,
            last_active_ms: None,
            tasks_taken: 0,
        };
        self.runners.insert(id, runner);
        self.runner_by_uuid.insert(uuid.clone(), id);
        RunnerCredentials { id, uuid, token }
    }

    /// Soft delete: the uuid is rewritten so the old credentials stop working at once.
    pub fn delete_runner(&mut self, runner_id: Id) -> bool {
        let Some(runner) = self.runners.get_mut(&runner_id) else {
            return false;
        };
        if runner.deleted {
            return false;
        }
        self.runner_by_uuid.remove(&runner.uuid);
        runner.uuid = deleted_runner_uuid(runner_id);
        runner.deleted = true;
        true
    }

    /// The auth interceptor: `Some(runner id)` for a live runner whose token matches; marks
    /// it online (and active for UpdateTask/UpdateLog).
    pub fn authenticate_runner(
        &mut self,
        uuid: &str,
        token: &str,
        active: bool,
        now_ms: i64,
    ) -> Option<Id> {
        let id = *self.runner_by_uuid.get(uuid)?;
        let hash = self.hash_secret(token);
        let runner = self.runners.get_mut(&id)?;
        if runner.deleted || runner.token_hash != hash {
            return None;
        }
        runner.last_online_ms = Some(now_ms);
        if active {
            runner.last_active_ms = Some(now_ms);
        }
        Some(id)
    }

    /// Connect `Declare`: the label names and version the runner process has.
    pub fn declare(&mut self, runner_id: Id, version: &str, labels: Vec<String>) -> Option<Runner> {
        let runner = self.runners.get_mut(&runner_id)?;
        runner.version = version.to_owned();
        runner.labels = Some(labels);
        Some(runner.clone())
    }

    /// `"offline"`, `"idle"` or `"active"` (contract §1.5).
    pub fn runner_status(runner: &Runner, now_ms: i64) -> &'static str {
        match runner.last_online_ms {
            Some(online) if now_ms - online <= RUNNER_OFFLINE_MS => match runner.last_active_ms {
                Some(active) if now_ms - active <= RUNNER_IDLE_MS => "active",
                _ => "idle",
            },
            _ => "offline",
        }
    }

    /// Whether `scope` sees `runner` with the given visibility.
    pub fn runner_visible(
        &self,
        runner: &Runner,
        scope: Scope,
        visibility: RunnerVisibility,
    ) -> bool {
        if runner.deleted {
            return false;
        }
        let owned = Scope::from_ids(runner.owner_id, runner.repo_id) == scope;
        if owned || visibility == RunnerVisibility::Owned {
            return owned;
        }
        let global = runner.owner_id == 0 && runner.repo_id == 0;
        match scope {
            Scope::Global => true,
            Scope::Owner(_) => global,
            Scope::Repo(repo_id) => {
                let repo_owner = self.repos.get(&repo_id).map(|r| r.owner_id);
                global || (runner.repo_id == 0 && Some(runner.owner_id) == repo_owner)
            }
        }
    }

    /// Runners of a listing, ordered `last_online DESC` (never-online last), then id.
    pub fn list_runners(&self, scope: Scope, visibility: RunnerVisibility) -> Vec<Runner> {
        let mut list: Vec<Runner> = self
            .runners
            .values()
            .filter(|r| self.runner_visible(r, scope, visibility))
            .cloned()
            .collect();
        list.sort_by(|a, b| {
            b.last_online_ms
                .cmp(&a.last_online_ms)
                .then(a.id.cmp(&b.id))
        });
        list
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::deleted_runner_uuid;

    #[test]
    fn deleted_uuid_is_little_endian_id() {
        assert_eq!(
            deleted_runner_uuid(1),
            "ffffffff-ffff-ffff-0100-000000000000"
        );
        assert_eq!(
            deleted_runner_uuid(0x0203),
            "ffffffff-ffff-ffff-0302-000000000000"
        );
    }
}
