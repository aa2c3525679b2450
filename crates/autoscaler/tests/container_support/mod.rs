//! Helpers of the container-engine tests that are not about one engine: a command-line client
//! (`docker`, or `podman`), the autoscaler's containers found by label, a guard that removes
//! a test's containers whatever happens, a docker-pool configuration, and the store's exit
//! records. Used by `e2e_podman.rs` and `e2e_docker_cancel.rs` (with `support`).
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use crate::support::{wait_until, Env, OnePool, SimJob};

/// The stand-in image (tests/support/build-runner-image.sh).
pub const IMAGE: &str = "local/forgejo-runner-stand-in:latest";
pub const OWNER_LABEL: &str = "org.forgejo.autoscaler.owner";
pub const POOL_LABEL: &str = "org.forgejo.autoscaler.pool";
pub const INSTANCE_LABEL: &str = "org.forgejo.autoscaler.instance";

/// The command-line client of one engine. Checks go through it, not through the autoscaler's
/// own connection, so that they see what an admin would see.
#[derive(Debug, Clone, Copy)]
pub struct Cli(pub &'static str);

impl Cli {
    /// Runs the client; its output, or `Err` with its stderr.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.0)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.0))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} {args:?}: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs the client and fails the test when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Ids of the containers carrying every label filter (`key=value`); `all` includes stopped.
    pub fn containers(&self, filters: &[String], all: bool) -> Vec<String> {
        let mut args = vec!["ps".to_string(), "-q".into(), "--no-trunc".into()];
        if all {
            args.push("-a".into());
        }
        for filter in filters {
            args.push("--filter".into());
            args.push(format!("label={filter}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args).lines().map(str::to_string).collect()
    }
}

/// The autoscaler's owner id (from its store), once it has started.
pub fn owner_id(env: &Env) -> Option<String> {
    let db = rusqlite::Connection::open_with_flags(
        env.store_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    db.query_row("SELECT value FROM meta WHERE key = 'owner_id'", [], |r| {
        r.get(0)
    })
    .ok()
}

/// Containers of this autoscaler (its owner label) in `pool`: `all` or running only.
pub fn pool_containers(cli: Cli, env: &Env, pool: &str, all: bool) -> Vec<String> {
    let Some(owner) = owner_id(env) else {
        return Vec::new();
    };
    cli.containers(
        &[
            format!("{POOL_LABEL}={pool}"),
            format!("{OWNER_LABEL}={owner}"),
        ],
        all,
    )
}

/// Containers (any state) of one instance.
pub fn instance_containers(cli: Cli, instance: &str) -> Vec<String> {
    cli.containers(&[format!("{INSTANCE_LABEL}={instance}")], true)
}

/// Removes every container of the test's pool (its name is unique to the test) when the test
/// ends, passed or failed, so that a failed run leaves nothing running for the next one.
pub struct PoolGuard {
    pub cli: Cli,
    pub pool: String,
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let Ok(ids) = self.cli.try_run(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={POOL_LABEL}={}", self.pool),
        ]) else {
            return;
        };
        let ids: Vec<&str> = ids.lines().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            let _ = self.cli.try_run(&args);
        }
    }
}

/// The autoscaler under test. When the test ends while it still runs (a failed assertion),
/// it is killed, so that a failed test leaves no daemon behind creating containers for a
/// simulator that is gone. Declared after the `PoolGuard`, it is dropped first.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A pool name unique to this test run (`prefix` + time and pid).
pub fn unique_pool(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let tail = format!("{:x}{:x}", nanos, std::process::id());
    format!("{prefix}{}", &tail[tail.len() - 8..])
}

/// Settings of the generated docker pool.
pub struct DockerPool<'a> {
    pub name: &'a str,
    pub cap: u32,
    /// `docker_host`; `None` leaves the default (DOCKER_HOST or the standard socket).
    pub docker_host: Option<&'a str>,
    pub image: &'a str,
    /// `[runner] binary`: looked up by file name on the image's PATH.
    pub runner_binary: &'a str,
    /// Extra lines of `[timeouts]`.
    pub timeouts: &'a str,
}

impl DockerPool<'_> {
    /// Writes `autoscaler.toml`: one docker pool on the host network (the simulator listens on
    /// loopback), read-only root filesystem, a numeric user and limits, as in e2e_docker.rs.
    pub fn write(&self, env: &Env) -> PathBuf {
        let docker_host = self
            .docker_host
            .map(|h| format!("docker_host = {h:?}\n"))
            .unwrap_or_default();
        let tables = format!(
            r#"[pools.docker]
image = "{image}"
{docker_host}network = "host"
read_only = true
user = "1000:1000"
memory = "256m"
pids_limit = 512
cpus = 1.0
"#,
            image = self.image,
        );
        env.write_one_pool_config(&OnePool {
            name: self.name,
            backend: "docker",
            cap: self.cap,
            runner_binary: self.runner_binary,
            timeouts: self.timeouts,
            sections: "",
            pool_env: false,
            tables: &tables,
        })
    }
}

/// How an instance record ended, from the store.
#[derive(Debug, Clone)]
pub struct ExitRecord {
    pub id: String,
    pub state: String,
    pub reason: Option<String>,
    pub exit_code: Option<i64>,
    /// The last lines of the runner's output (read from the engine before removal).
    pub detail: Option<String>,
    pub job_id: Option<i64>,
    pub created_ms: i64,
    pub state_since_ms: i64,
}

/// Every instance record's ending, from the store.
pub fn exit_records(env: &Env) -> Vec<ExitRecord> {
    let db = rusqlite::Connection::open(env.store_path()).expect("store opens");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let mut query = db
        .prepare(
            "SELECT id, state, reason, exit_code, detail, job_id, created_ms, state_since_ms
             FROM instances ORDER BY created_ms",
        )
        .expect("query");
    query
        .query_map([], |row| {
            Ok(ExitRecord {
                id: row.get(0)?,
                state: row.get(1)?,
                reason: row.get(2)?,
                exit_code: row.get(3)?,
                detail: row.get(4)?,
                job_id: row.get(5)?,
                created_ms: row.get(6)?,
                state_since_ms: row.get(7)?,
            })
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("readable rows")
}

pub fn all_succeeded(jobs: &[SimJob]) -> bool {
    jobs.iter().all(|j| j.status == "success")
}

/// Nothing of the pool left: no container with our labels, no live record, no registration.
pub async fn assert_nothing_left(cli: Cli, env: &Env, pool: &str, cap: usize) {
    let clean = wait_until(Duration::from_secs(30), || async {
        pool_containers(cli, env, pool, true).is_empty() && env.leftovers(cap).await.is_empty()
    })
    .await;
    assert!(
        clean,
        "left behind: containers {:?}, {:?}\n{}",
        pool_containers(cli, env, pool, true),
        env.leftovers(cap).await,
        env.logs()
    );
}

/// The median of some millisecond values (0 for none).
pub fn median_ms(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}
