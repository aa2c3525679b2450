//! The simulated Forgejo database and every state transition.
//!
//! Architecture invariant: all mutation goes through methods of [`State`], which the server
//! keeps behind one mutex. Methods take the simulated time `now_ms` as an argument, never
//! read a clock, never block and never do I/O, so the lock is held for microseconds and the
//! transitions are testable without a server.
//!
//! Invariant of the indexes: `waiting` holds `(updated_ms, id)` of exactly the jobs whose
//! status is `waiting`, and `listed` the ids of the jobs that are `waiting` or `running`;
//! only [`State::set_job_status`] and [`State::touch_waiting_job`] change job status or
//! `updated_ms` of a waiting job, so they keep both in step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::version::ForgejoVersion;

pub mod accounts;
mod jobs;
pub mod labels;
pub mod model;
mod payload;
mod repos;
mod runners;
mod tasks;
mod timers;

pub use accounts::normalize_scopes;
pub use jobs::{JobListing, RerunError};
pub use model::*;
pub use runners::{RunnerCredentials, RunnerVisibility};
pub use tasks::{FetchOutcome, FetchRequest, TaskUpdate};
pub use timers::OfflineCleanup;

/// Per-table id counters (Forgejo ids are per table; users and orgs share one).
#[derive(Debug, Default)]
struct Ids {
    account: Id,
    token: Id,
    repo: Id,
    run: Id,
    job: Id,
    task: Id,
    runner: Id,
    registration_token: Id,
}

fn next(counter: &mut Id) -> Id {
    *counter += 1;
    *counter
}

#[derive(Debug)]
pub struct State {
    pub version: ForgejoVersion,
    /// Base URL of the instance with a trailing slash, as Forgejo's `AppURL`.
    pub app_url: String,
    salt: [u8; 16],
    ids: Ids,
    pub accounts: BTreeMap<Id, Account>,
    account_by_name: HashMap<String, Id>,
    pub tokens: BTreeMap<Id, AccessToken>,
    token_by_hash: HashMap<String, Id>,
    pub repos: BTreeMap<Id, Repo>,
    repo_by_name: HashMap<(Id, String), Id>,
    pub runs: BTreeMap<Id, Run>,
    pub jobs: BTreeMap<Id, Job>,
    pub tasks: BTreeMap<Id, Task>,
    pub runners: BTreeMap<Id, Runner>,
    runner_by_uuid: HashMap<String, Id>,
    pub registration_tokens: Vec<RegistrationToken>,
    waiting: BTreeSet<(i64, Id)>,
    listed: BTreeSet<Id>,
    tasks_versions: HashMap<(Id, Id), i64>,
    request_keys: HashMap<(Id, String), Vec<Id>>,
    pub offline_cleanup: OfflineCleanup,
}

impl State {
    pub fn new(version: ForgejoVersion, app_url: String) -> State {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        State {
            version,
            app_url,
            salt,
            ids: Ids::default(),
            accounts: BTreeMap::new(),
            account_by_name: HashMap::new(),
            tokens: BTreeMap::new(),
            token_by_hash: HashMap::new(),
            repos: BTreeMap::new(),
            repo_by_name: HashMap::new(),
            runs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            tasks: BTreeMap::new(),
            runners: BTreeMap::new(),
            runner_by_uuid: HashMap::new(),
            registration_tokens: Vec::new(),
            waiting: BTreeSet::new(),
            listed: BTreeSet::new(),
            tasks_versions: HashMap::new(),
            request_keys: HashMap::new(),
            offline_cleanup: OfflineCleanup::default(),
        }
    }

    /// Salted SHA-256 of a secret; secrets themselves are never stored.
    fn hash_secret(&self, secret: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        hasher.update(secret.as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// `n` random bytes as lowercase hex (runner tokens, task tokens, access tokens: 40 hex chars
/// for 20 bytes, like Forgejo).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A random string of `len` characters from a base64-style alphabet (registration tokens).
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut buf = vec![0u8; len];
    rand::rng().fill_bytes(&mut buf);
    buf.iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}
