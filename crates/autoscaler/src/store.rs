//! The local store: embedded SQLite (WAL) with what the autoscaler did and when.
//!
//! Architecture invariant: an instance record is written *before* any side effect that
//! creates something (a runner registration, a process), and marked `gone` only after
//! everything it owned was removed. So after a crash (even `kill -9`) a restart finds every
//! resource it may have created through a record, adopts what still runs and cleans the rest.

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

use crate::secret::Secret;

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: instances, identities (Forgejo 13/14), events, meta.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        scope TEXT NOT NULL,
        backend TEXT NOT NULL,
        state TEXT NOT NULL,
        job_id INTEGER,
        job_handle TEXT,
        job_attempt INTEGER,
        runner_id INTEGER,
        runner_name TEXT,
        backend_ref TEXT,
        created_ms INTEGER NOT NULL,
        state_since_ms INTEGER NOT NULL,
        busy_since_ms INTEGER,
        reason TEXT,
        exit_code INTEGER,
        detail TEXT
     );
     CREATE INDEX instances_live ON instances(state) WHERE state != 'gone';
     CREATE TABLE identities (
        runner_id INTEGER PRIMARY KEY,
        pool TEXT NOT NULL,
        scope TEXT NOT NULL,
        uuid TEXT NOT NULL,
        token TEXT NOT NULL,
        name TEXT NOT NULL,
        instance_id TEXT,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        instance_id TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
     );",
];

/// Lifecycle of an instance record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Record written; credentials and the backend instance are being created.
    Starting,
    /// The backend reported the instance started; its runner waits for or runs a job.
    Running,
    /// Removal requested; the instance and its registration are being removed.
    Deleting,
    /// Everything it owned is removed. Kept for history.
    Gone,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Deleting => "deleting",
            InstanceState::Gone => "gone",
        }
    }

    fn parse(s: &str) -> InstanceState {
        match s {
            "starting" => InstanceState::Starting,
            "running" => InstanceState::Running,
            "deleting" => InstanceState::Deleting,
            _ => InstanceState::Gone,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub pool: String,
    /// The scope string (`repo:OWNER/NAME`, ...) whose credentials the runner uses.
    pub scope: String,
    pub backend: String,
    pub state: InstanceState,
    pub job_id: Option<i64>,
    pub job_handle: Option<String>,
    pub job_attempt: Option<i64>,
    /// Forgejo runner id: the ephemeral runner (15) or the identity lent to it (13/14).
    pub runner_id: Option<i64>,
    pub runner_name: Option<String>,
    /// Backend-specific handle (JSON), e.g. pid and start time of a process.
    pub backend_ref: Option<String>,
    pub created_ms: u64,
    pub state_since_ms: u64,
    pub busy_since_ms: Option<u64>,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub detail: Option<String>,
}

/// A Forgejo 13/14 runner registration kept for reuse (design.md "13/14" strategy).
#[derive(Debug, Clone)]
pub struct Identity {
    pub runner_id: i64,
    pub pool: String,
    pub scope: String,
    pub uuid: String,
    pub token: Secret,
    pub name: String,
    pub instance_id: Option<String>,
}

/// (runner id, pool, scope, instance it is lent to).
pub type IdentityRow = (i64, String, String, Option<String>);

#[derive(Debug, Clone)]
pub struct Event {
    pub ts_ms: u64,
    pub instance_id: Option<String>,
    pub kind: String,
    pub detail: String,
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`; the file is private (0600) because
    /// it holds the tokens of Forgejo 13/14 runner identities.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the store directory {}", dir.display()))?;
        }
        if !path.exists() {
            crate::secret::write_private_file(path, b"")
                .with_context(|| format!("cannot create the store {}", path.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the store {}", path.display()))?;
        Store::init(conn).with_context(|| format!("store {}", path.display()))
    }

    pub fn open_in_memory() -> anyhow::Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> anyhow::Result<Store> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if applied as usize > MIGRATIONS.len() {
            anyhow::bail!(
                "the store was written by a newer forgejo-autoscaler (schema {applied}, this build knows {}); upgrade the binary",
                MIGRATIONS.len()
            );
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)
                .with_context(|| format!("migration {}", index + 1))?;
            tx.pragma_update(None, "user_version", (index + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each call is one
        // statement or one transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stable random id of this autoscaler installation, written on first use. It tags
    /// everything we create in Forgejo so that two autoscalers never collect each other's runners.
    pub fn owner_id(&self) -> anyhow::Result<String> {
        let conn = self.lock();
        if let Some(id) = conn
            .query_row("SELECT value FROM meta WHERE key = 'owner_id'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        {
            return Ok(id);
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('owner_id', ?1)",
            [&id],
        )?;
        Ok(id)
    }

    pub fn insert_instance(&self, r: &InstanceRecord) -> anyhow::Result<()> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO instances (id, pool, scope, backend, state, job_id, job_handle, job_attempt,
                runner_id, runner_name, backend_ref, created_ms, state_since_ms, busy_since_ms, reason, exit_code, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                r.id, r.pool, r.scope, r.backend, r.state.as_str(), r.job_id, r.job_handle, r.job_attempt,
                r.runner_id, r.runner_name, r.backend_ref, r.created_ms as i64, r.state_since_ms as i64,
                r.busy_since_ms.map(|v| v as i64), r.reason, r.exit_code, r.detail
            ],
        )?;
        insert_event(
            &conn,
            r.created_ms,
            Some(&r.id),
            "created",
            &format!("pool {} scope {} job {:?}", r.pool, r.scope, r.job_id),
        )?;
        Ok(())
    }

    /// Moves an instance to `state`, recording the reason (for deletions) as an event.
    pub fn set_state(
        &self,
        id: &str,
        state: InstanceState,
        now_ms: u64,
        reason: Option<&str>,
        detail: Option<&str>,
    ) -> anyhow::Result<()> {
        let conn = self.lock();
        conn.execute(
            "UPDATE instances SET state = ?2, state_since_ms = ?3,
                reason = COALESCE(?4, reason), detail = COALESCE(?5, detail) WHERE id = ?1",
            params![id, state.as_str(), now_ms as i64, reason, detail],
        )?;
        let text = match (reason, detail) {
            (Some(r), Some(d)) => format!("{r}: {d}"),
            (Some(r), None) => r.to_string(),
            (None, Some(d)) => d.to_string(),
            (None, None) => String::new(),
        };
        insert_event(&conn, now_ms, Some(id), state.as_str(), &text)?;
        Ok(())
    }

    pub fn set_runner(&self, id: &str, runner_id: i64, runner_name: &str) -> anyhow::Result<()> {
        self.lock().execute(
            "UPDATE instances SET runner_id = ?2, runner_name = ?3 WHERE id = ?1",
            params![id, runner_id, runner_name],
        )?;
        Ok(())
    }

    pub fn set_backend_ref(&self, id: &str, backend_ref: &str) -> anyhow::Result<()> {
        self.lock().execute(
            "UPDATE instances SET backend_ref = ?2 WHERE id = ?1",
            params![id, backend_ref],
        )?;
        Ok(())
    }

    pub fn set_busy(&self, id: &str, since_ms: u64) -> anyhow::Result<()> {
        let conn = self.lock();
        let changed = conn.execute(
            "UPDATE instances SET busy_since_ms = ?2 WHERE id = ?1 AND busy_since_ms IS NULL",
            params![id, since_ms as i64],
        )?;
        if changed > 0 {
            insert_event(&conn, since_ms, Some(id), "busy", "runner picked its job")?;
        }
        Ok(())
    }

    pub fn set_exit(
        &self,
        id: &str,
        exit_code: Option<i32>,
        log_tail: Option<&str>,
    ) -> anyhow::Result<()> {
        self.lock().execute(
            "UPDATE instances SET exit_code = COALESCE(?2, exit_code), detail = COALESCE(?3, detail) WHERE id = ?1",
            params![id, exit_code, log_tail],
        )?;
        Ok(())
    }

    /// Every instance that is not `gone`.
    pub fn live_instances(&self) -> anyhow::Result<Vec<InstanceRecord>> {
        self.query_instances("WHERE state != 'gone' ORDER BY created_ms", [])
    }

    /// The most recent `limit` removed instances, newest first.
    pub fn recent_gone(&self, limit: u32) -> anyhow::Result<Vec<InstanceRecord>> {
        self.query_instances(
            "WHERE state = 'gone' ORDER BY state_since_ms DESC LIMIT ?1",
            [limit],
        )
    }

    pub fn instance(&self, id: &str) -> anyhow::Result<Option<InstanceRecord>> {
        Ok(self
            .query_instances("WHERE id = ?1", [id])?
            .into_iter()
            .next())
    }

    /// Counts of removed instances by reason (for the summary and tests).
    pub fn gone_by_reason(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT COALESCE(reason, 'unknown'), COUNT(*) FROM instances WHERE state = 'gone' GROUP BY 1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn total_instances(&self) -> anyhow::Result<u64> {
        Ok(self
            .lock()
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    fn query_instances<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> anyhow::Result<Vec<InstanceRecord>> {
        let conn = self.lock();
        let sql = format!(
            "SELECT id, pool, scope, backend, state, job_id, job_handle, job_attempt, runner_id, runner_name,
                    backend_ref, created_ms, state_since_ms, busy_since_ms, reason, exit_code, detail
             FROM instances {filter}"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok(InstanceRecord {
                id: r.get(0)?,
                pool: r.get(1)?,
                scope: r.get(2)?,
                backend: r.get(3)?,
                state: InstanceState::parse(&r.get::<_, String>(4)?),
                job_id: r.get(5)?,
                job_handle: r.get(6)?,
                job_attempt: r.get(7)?,
                runner_id: r.get(8)?,
                runner_name: r.get(9)?,
                backend_ref: r.get(10)?,
                created_ms: r.get::<_, i64>(11)? as u64,
                state_since_ms: r.get::<_, i64>(12)? as u64,
                busy_since_ms: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
                reason: r.get(14)?,
                exit_code: r.get(15)?,
                detail: r.get(16)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_identity(&self, identity: &Identity, now_ms: u64) -> anyhow::Result<()> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO identities (runner_id, pool, scope, uuid, token, name, instance_id, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                identity.runner_id, identity.pool, identity.scope, identity.uuid, identity.token.expose(),
                identity.name, identity.instance_id, now_ms as i64
            ],
        )?;
        insert_event(
            &conn,
            now_ms,
            identity.instance_id.as_deref(),
            "identity_registered",
            &format!("runner {} ({})", identity.runner_id, identity.name),
        )?;
        Ok(())
    }

    /// Lends a free identity of (pool, scope) to `instance_id`, atomically.
    pub fn acquire_identity(
        &self,
        pool: &str,
        scope: &str,
        instance_id: &str,
    ) -> anyhow::Result<Option<Identity>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let found = tx
            .query_row(
                "SELECT runner_id, pool, scope, uuid, token, name FROM identities
                 WHERE pool = ?1 AND scope = ?2 AND instance_id IS NULL ORDER BY runner_id LIMIT 1",
                params![pool, scope],
                |r| {
                    Ok(Identity {
                        runner_id: r.get(0)?,
                        pool: r.get(1)?,
                        scope: r.get(2)?,
                        uuid: r.get(3)?,
                        token: Secret::new(r.get::<_, String>(4)?),
                        name: r.get(5)?,
                        instance_id: Some(instance_id.to_string()),
                    })
                },
            )
            .optional()?;
        if let Some(identity) = &found {
            tx.execute(
                "UPDATE identities SET instance_id = ?2 WHERE runner_id = ?1",
                params![identity.runner_id, instance_id],
            )?;
        }
        tx.commit()?;
        Ok(found)
    }

    /// Returns the identity lent to `instance_id` (if any) to the free set.
    pub fn release_identity(&self, instance_id: &str) -> anyhow::Result<()> {
        self.lock().execute(
            "UPDATE identities SET instance_id = NULL WHERE instance_id = ?1",
            [instance_id],
        )?;
        Ok(())
    }

    /// Identities per pool: (total, in use).
    pub fn identity_counts(&self) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT pool, COUNT(*), COUNT(instance_id) FROM identities GROUP BY pool ORDER BY pool",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn all_identities(&self) -> anyhow::Result<Vec<IdentityRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT runner_id, pool, scope, instance_id FROM identities ORDER BY runner_id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn forget_identity(&self, runner_id: i64) -> anyhow::Result<()> {
        self.lock()
            .execute("DELETE FROM identities WHERE runner_id = ?1", [runner_id])?;
        Ok(())
    }

    pub fn record_event(
        &self,
        now_ms: u64,
        instance_id: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        insert_event(&self.lock(), now_ms, instance_id, kind, detail)
    }

    pub fn recent_events(&self, limit: u32) -> anyhow::Result<Vec<Event>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT ts_ms, instance_id, kind, detail FROM events ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(Event {
                ts_ms: r.get::<_, i64>(0)? as u64,
                instance_id: r.get(1)?,
                kind: r.get(2)?,
                detail: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn insert_event(
    conn: &Connection,
    ts_ms: u64,
    instance_id: Option<&str>,
    kind: &str,
    detail: &str,
) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO events (ts_ms, instance_id, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![ts_ms as i64, instance_id, kind, detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            pool: "debian".into(),
            scope: "repo:root/on-demand".into(),
            backend: "process".into(),
            state: InstanceState::Starting,
            job_id: Some(7),
            job_handle: None,
            job_attempt: None,
            runner_id: None,
            runner_name: None,
            backend_ref: None,
            created_ms: 1,
            state_since_ms: 1,
            busy_since_ms: None,
            reason: None,
            exit_code: None,
            detail: None,
        }
    }

    #[test]
    fn instance_lifecycle_is_recorded() {
        let store = Store::open_in_memory().unwrap();
        store.insert_instance(&record("a")).unwrap();
        store
            .set_state("a", InstanceState::Running, 5, None, None)
            .unwrap();
        assert_eq!(store.live_instances().unwrap().len(), 1);
        store
            .set_state("a", InstanceState::Gone, 9, Some("job_done"), None)
            .unwrap();
        assert!(store.live_instances().unwrap().is_empty());
        assert_eq!(
            store.gone_by_reason().unwrap(),
            vec![("job_done".to_string(), 1)]
        );
        let kinds: Vec<_> = store
            .recent_events(10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["gone", "running", "created"]);
    }

    #[test]
    fn identities_are_lent_once() {
        let store = Store::open_in_memory().unwrap();
        let identity = Identity {
            runner_id: 3,
            pool: "p".into(),
            scope: "s".into(),
            uuid: "u".into(),
            token: Secret::new("t"),
            name: "n".into(),
            instance_id: None,
        };
        store.insert_identity(&identity, 0).unwrap();
        assert!(store.acquire_identity("p", "s", "i1").unwrap().is_some());
        assert!(store.acquire_identity("p", "s", "i2").unwrap().is_none());
        store.release_identity("i1").unwrap();
        assert_eq!(
            store
                .acquire_identity("p", "s", "i2")
                .unwrap()
                .unwrap()
                .token
                .expose(),
            "t"
        );
    }

    #[test]
    fn reopening_keeps_data_and_owner_and_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/autoscaler.db");
        let owner = {
            let store = Store::open(&path).unwrap();
            store.insert_instance(&record("a")).unwrap();
            store.owner_id().unwrap()
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.owner_id().unwrap(), owner);
        assert_eq!(store.live_instances().unwrap().len(), 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
