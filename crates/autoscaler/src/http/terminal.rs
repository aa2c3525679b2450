//! `forgejo-autoscaler status -c FILE`: the status page as a terminal table. It asks the
//! running daemon (`[http] listen`, with the bearer token when one is configured); when no
//! daemon answers it reads the store and says so, because then nothing is observed live.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use super::{
    page::age,
    status::{status_from_store, Status},
};
use crate::config::Config;

/// Instances listed in the terminal before the rest is summarised.
const MAX_INSTANCE_ROWS: usize = 40;
const MAX_REMOVAL_ROWS: usize = 10;

/// Where to reach the daemon: an unspecified listen address (`0.0.0.0`) is reached on loopback.
fn daemon_address(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(loopback, listen.port())
    } else {
        listen
    }
}

/// Asks the daemon; `Err` says why it could not (not listening, refused, unauthorised...).
async fn from_daemon(config: &Config) -> Result<Status, String> {
    let Some(listen) = config.http.listen else {
        return Err("[http] listen is off, so the daemon cannot be asked".into());
    };
    let address = daemon_address(listen);
    let mut request = reqwest::Client::new()
        .get(format!("http://{address}/api/status"))
        .timeout(Duration::from_secs(5));
    if let Some(token) = config.http.read_token().map_err(|e| e.to_string())? {
        request = request.bearer_auth(token.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|_| format!("no daemon answers on {address}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the daemon on {address} answered {}",
            response.status()
        ));
    }
    response
        .json::<Status>()
        .await
        .map_err(|e| format!("the answer of {address} is not a status: {e}"))
}

pub async fn status_command(config: Config) -> anyhow::Result<()> {
    match from_daemon(&config).await {
        Ok(status) => {
            let address = config
                .http
                .listen
                .map(daemon_address)
                .map(|a| a.to_string())
                .unwrap_or_default();
            println!("From the running daemon at {address}.");
            print!("{}", format_status(&status));
        }
        Err(why) => {
            // Opening a store creates it: a mistyped `[store] path` would then show an empty,
            // reassuring status. Without the daemon, only an existing store is evidence.
            if !config.store.path.exists() {
                anyhow::bail!(
                    "the daemon is not reachable ({why}) and there is no store at {} ([store] path in {}): \
                     the autoscaler has not run with this configuration, or the path is wrong",
                    config.store.path.display(),
                    config.file.display()
                );
            }
            println!(
                "The daemon is not running or not reachable ({why}); showing what the store {} recorded. \
                 Nothing below is observed live.",
                config.store.path.display()
            );
            let store = crate::store::Store::open(&config.store.path)?;
            print!("{}", format_status(&status_from_store(&config, &store)?));
        }
    }
    Ok(())
}

/// The status as plain text tables.
pub fn format_status(status: &Status) -> String {
    let mut out = String::new();
    let f = &status.forgejo;
    let reach = match f.reachable {
        Some(true) => "reachable",
        Some(false) => "NOT reachable",
        None => "not observed",
    };
    let tick = f
        .last_tick_age_s
        .map(|s| format!(", last tick {} ago", age(s)))
        .unwrap_or_default();
    if status.source == "store" {
        let _ = writeln!(
            out,
            "Forgejo at {} (version setting {}): {reach}",
            f.url, f.version
        );
    } else {
        let _ = writeln!(out, "Forgejo {} at {}: {reach}{tick}", f.version, f.url);
    }
    for e in &status.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    let t = &status.totals;
    let states: Vec<String> = t.by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let jobs = if status.source == "store" {
        "jobs not observed (the store does not record them)".to_string()
    } else {
        format!(
            "{} jobs waiting, {} blocked by a cap, {} fit no pool",
            t.waiting_jobs, t.blocked_by_cap, t.unmatched_jobs
        )
    };
    let _ = writeln!(
        out,
        "Runners: {} of {} ({}); {jobs}; {} removed so far",
        t.instances,
        t.cap,
        states.join(", "),
        t.removed
    );

    let _ = writeln!(
        out,
        "\n{:<16} {:>9} {:>8} {:>5} {:>5} {:>8} {:>8}  CAPACITY",
        "POOL", "USED/CAP", "STARTING", "IDLE", "BUSY", "DELETING", "WAITING"
    );
    for p in &status.pools {
        let n = |s: &str| p.by_state.get(s).copied().unwrap_or(0);
        let capacity = if p.at_capacity {
            format!("at capacity ({} jobs wait)", p.blocked_by_cap)
        } else {
            "room".to_string()
        };
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>8} {:>5} {:>5} {:>8} {:>8}  {capacity}",
            p.name,
            format!("{}/{}", p.used, p.cap),
            n("starting"),
            n("idle"),
            n("busy"),
            n("deleting"),
            p.waiting_jobs
        );
    }

    let _ = writeln!(
        out,
        "\n{:<36} {:<12} {:<9} {:>8} {:>8}  REASON",
        "INSTANCE", "POOL", "STATE", "AGE", "JOB"
    );
    for i in status.instances.iter().take(MAX_INSTANCE_ROWS) {
        let _ = writeln!(
            out,
            "{:<36} {:<12} {:<9} {:>8} {:>8}  {}",
            i.id,
            i.pool,
            i.state,
            age(i.age_s),
            i.job_id.map(|j| j.to_string()).unwrap_or_default(),
            i.reason
        );
    }
    if status.instances.is_empty() {
        let _ = writeln!(out, "(no instances)");
    } else if status.instances.len() > MAX_INSTANCE_ROWS {
        let _ = writeln!(
            out,
            "... and {} more (see /api/status)",
            status.instances.len() - MAX_INSTANCE_ROWS
        );
    }

    if !status.unmatched_jobs.is_empty() {
        let _ = writeln!(out, "\nJobs that fit no pool:");
        for u in &status.unmatched_jobs {
            let offers: Vec<String> = u
                .pools
                .iter()
                .map(|o| {
                    format!(
                        "{} offers [{}], lacks [{}]",
                        o.pool,
                        o.offers.join(", "),
                        o.missing.join(", ")
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  job {} {:?} ({}) needs [{}]: {}",
                u.job_id,
                u.name,
                u.scope,
                u.runs_on.join(", "),
                offers.join("; ")
            );
        }
    }

    let _ = writeln!(out, "\nRecent cleanups:");
    if status.recent_removals.is_empty() {
        let _ = writeln!(out, "  (none yet)");
    }
    for r in status.recent_removals.iter().take(MAX_REMOVAL_ROWS) {
        let when = age(status.generated_at_ms.saturating_sub(r.at_ms) as f64 / 1000.0);
        let job = r.job_id.map(|j| format!(" job {j}")).unwrap_or_default();
        let exit = r
            .exit_code
            .map(|c| format!(", exit {c}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {when:>7} ago  {} ({}){job}: {}{exit}",
            r.id, r.pool, r.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_status_stays_a_short_table() {
        let text = format_status(&crate::http::page::synthetic_status(1000));
        assert!(text.contains("Runners: 1000 of 1050"), "{text}");
        assert!(text.contains("... and 960 more"), "{text}");
        assert!(text.lines().count() < 90, "{} lines", text.lines().count());
        assert!(text.contains("job 9999 \"build <gpu>\" (org:infra) needs [gpu, trixie]: debian offers [trixie, bookworm], lacks [gpu]"), "{text}");
    }

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            daemon_address("0.0.0.0:9464".parse().unwrap()).to_string(),
            "127.0.0.1:9464"
        );
        assert_eq!(
            daemon_address("[::]:9464".parse().unwrap()).to_string(),
            "[::1]:9464"
        );
        assert_eq!(
            daemon_address("10.0.0.5:9464".parse().unwrap()).to_string(),
            "10.0.0.5:9464"
        );
    }
}
