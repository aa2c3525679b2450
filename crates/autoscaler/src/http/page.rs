//! The status page at `/`: server-rendered HTML that reloads itself every few seconds (a meta
//! refresh, no JavaScript). It must stay readable with a thousand instances, so instances are
//! summarised per pool and state, and the list is paged (`?page=N`) and can be filtered by
//! state (`?state=busy`). Every value that comes from outside (job names, labels, errors) is
//! HTML-escaped.

use std::fmt::Write as _;

use super::status::{InstanceStatus, Status};

/// Instance rows per page.
pub const PAGE_SIZE: usize = 100;
/// Removals and events shown (the API carries more).
const RECENT_ROWS: usize = 20;
/// Seconds between reloads.
const REFRESH_SECONDS: u32 = 5;

/// Which part of the instance list to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// 1-based page number.
    pub page: usize,
    /// Only instances in this state.
    pub state: Option<String>,
}

impl PageQuery {
    /// Reads `page` and `state` from a query string; anything unreadable means the default.
    pub fn parse(query: Option<&str>) -> PageQuery {
        let mut out = PageQuery {
            page: 1,
            state: None,
        };
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "page" => out.page = value.parse().unwrap_or(1).max(1),
                "state"
                    if crate::metrics::INSTANCE_STATES.contains(&value) || value == "running" =>
                {
                    out.state = Some(value.to_string())
                }
                _ => {}
            }
        }
        out
    }

    fn link(&self, page: usize, state: Option<&str>) -> String {
        match state {
            Some(state) => format!("?state={state}&amp;page={page}"),
            None => format!("?page={page}"),
        }
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `95s`, `12m 5s`, `3h 2m`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn ago(status: &Status, at_ms: u64) -> String {
    age(status.generated_at_ms.saturating_sub(at_ms) as f64 / 1000.0)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:80em}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.2em .7em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.num{text-align:right}.ok{color:#176a21}.bad{color:#a00;font-weight:bold}.muted{color:#777}\
.cap{font-weight:bold;color:#8a5a00}.bar{display:inline-block;height:.7em;background:#4a7fd0;vertical-align:middle}\
.barbox{display:inline-block;width:8em;height:.7em;background:#e4e4e4;margin-right:.5em}\
.state-busy{color:#176a21}.state-starting{color:#4a7fd0}.state-deleting{color:#a00}.state-idle{color:#8a5a00}\
nav a{margin-right:.8em}.summary span{margin-right:1.2em}";

/// The whole page.
pub fn render_page(status: &Status, query: &PageQuery) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>forgejo-autoscaler: {} of {} runners</title><style>{STYLE}</style></head><body>",
        status.totals.instances, status.totals.cap
    );
    header(&mut html, status);
    pools(&mut html, status);
    unmatched(&mut html, status);
    instances(&mut html, status, query);
    removals(&mut html, status);
    events(&mut html, status);
    html.push_str("</body></html>\n");
    html
}

fn header(html: &mut String, status: &Status) {
    let f = &status.forgejo;
    let reach = match f.reachable {
        Some(true) => "<b class=\"ok\">reachable</b>".to_string(),
        Some(false) => "<b class=\"bad\">NOT reachable</b>".to_string(),
        None if status.ha.as_ref().is_some_and(|h| h.role == "follower") => {
            "<span class=\"muted\">not observed (this replica is a follower)</span>".to_string()
        }
        None => "<span class=\"muted\">not observed (read from the store)</span>".to_string(),
    };
    let tick = f
        .last_tick_age_s
        .map(|s| format!(", last tick {} ago", age(s)))
        .unwrap_or_default();
    let _ = write!(
        html,
        "<h1>forgejo-autoscaler {}</h1><p id=\"forgejo\">Forgejo {} at {}: {reach}{tick}. \
         <span class=\"muted\">Source: {}; this page reloads every {REFRESH_SECONDS} s; JSON at \
         <a href=\"/api/status\">/api/status</a>, metrics at <a href=\"/metrics\">/metrics</a>.</span></p>",
        escape(&status.autoscaler_version),
        escape(&f.version),
        escape(&f.url),
        escape(&status.source),
    );
    if let Some(ha) = &status.ha {
        ha_line(html, ha);
    }
    let t = &status.totals;
    let _ = write!(
        html,
        "<p class=\"summary\" id=\"totals\"><span><b>{}</b> / {} runners</span>",
        t.instances, t.cap
    );
    for (state, n) in &t.by_state {
        let _ = write!(
            html,
            "<span class=\"state-{0}\">{n} {0}</span>",
            escape(state)
        );
    }
    let _ = write!(
        html,
        "<span>{} jobs waiting</span><span class=\"{}\">{} blocked by a cap</span><span class=\"{}\">{} fit no pool</span><span>{} removed so far</span></p>",
        t.waiting_jobs,
        if t.blocked_by_cap > 0 { "cap" } else { "muted" },
        t.blocked_by_cap,
        if t.unmatched_jobs > 0 { "bad" } else { "muted" },
        t.unmatched_jobs,
        t.removed,
    );
    if !status.errors.is_empty() {
        html.push_str("<h2 class=\"bad\">Errors in the last tick</h2><ul id=\"errors\">");
        for e in &status.errors {
            let _ = write!(html, "<li class=\"bad\">{}</li>", escape(e));
        }
        html.push_str("</ul>");
    }
}

/// `[ha]`: which replica this is and who leads. A follower observes nothing, so its page
/// shows no instances: it points at the leader.
fn ha_line(html: &mut String, ha: &super::status::HaStatus) {
    let generation = ha
        .generation
        .map(|g| format!(", generation {g}"))
        .unwrap_or_default();
    let role = if ha.role == "leader" && ha.acting {
        "<b class=\"ok\">leader</b> (creates and removes runners)".to_string()
    } else if ha.role == "leader" {
        "<b class=\"bad\">leader, NOT acting</b> (the lease could not be renewed)".to_string()
    } else {
        "<b>follower</b> (observes nothing, creates and removes nothing; the leader's page has the runners)".to_string()
    };
    let leader = match &ha.leader {
        Some(leader) => format!("leader <b>{}</b>", escape(leader)),
        None => "no leader".to_string(),
    };
    let lease = if ha.lease_readable {
        String::new()
    } else {
        " <span class=\"bad\">the API server could not be reached about the lease</span>"
            .to_string()
    };
    let _ = write!(
        html,
        "<p id=\"ha\">This replica, {}: {role}, for {}. Lease {}: {leader}{generation}.{lease}</p>",
        escape(&ha.identity),
        age(ha.role_age_s),
        escape(&ha.lease),
    );
}

fn pools(html: &mut String, status: &Status) {
    html.push_str(
        "<h2>Pools</h2><table id=\"pools\"><tr><th>pool</th><th>used / cap</th><th class=\"num\">starting</th>\
         <th class=\"num\">idle</th><th class=\"num\">busy</th><th class=\"num\">deleting</th>\
         <th class=\"num\">waiting jobs</th><th>capacity</th><th>labels</th></tr>",
    );
    for p in &status.pools {
        let width = (p.used.min(p.cap) * 100).checked_div(p.cap).unwrap_or(0);
        let count = |s: &str| p.by_state.get(s).copied().unwrap_or(0);
        let capacity = if p.at_capacity {
            format!(
                "<span class=\"cap\">at capacity: {} jobs wait for a slot</span>",
                p.blocked_by_cap
            )
        } else {
            "<span class=\"muted\">room</span>".to_string()
        };
        let _ = write!(
            html,
            "<tr class=\"pool\" data-pool=\"{name}\"><td>{name}</td><td><span class=\"barbox\"><span class=\"bar\" style=\"width:{width}%\"></span></span>{} / {}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{capacity}</td><td>{}</td></tr>",
            p.used,
            p.cap,
            count("starting"),
            count("idle"),
            count("busy"),
            count("deleting"),
            p.waiting_jobs,
            escape(&p.labels.join(", ")),
            name = escape(&p.name),
        );
    }
    html.push_str("</table>");
}

fn unmatched(html: &mut String, status: &Status) {
    let _ = write!(
        html,
        "<h2>Jobs that fit no pool ({})</h2>",
        status.unmatched_jobs.len()
    );
    if status.unmatched_jobs.is_empty() {
        let text = if status.source == "store" {
            "unknown: jobs are not recorded in the store"
        } else {
            "none"
        };
        let _ = write!(html, "<p id=\"unmatched\" class=\"muted\">{text}</p>");
        return;
    }
    html.push_str("<table id=\"unmatched\"><tr><th>job</th><th>name</th><th>needs labels</th><th>scope</th><th>what the pools offer</th></tr>");
    for u in &status.unmatched_jobs {
        let offers: Vec<String> = u
            .pools
            .iter()
            .map(|o| {
                let scope = if o.serves_scope {
                    String::new()
                } else {
                    " (not this scope)".into()
                };
                format!(
                    "{}: [{}] lacks <b>{}</b>{scope}",
                    escape(&o.pool),
                    escape(&o.offers.join(", ")),
                    escape(&o.missing.join(", "))
                )
            })
            .collect();
        let _ = write!(
            html,
            "<tr class=\"unmatched-job\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            u.job_id,
            escape(&u.name),
            escape(&u.runs_on.join(", ")),
            escape(&u.scope),
            offers.join("<br>")
        );
    }
    html.push_str("</table>");
}

fn instances(html: &mut String, status: &Status, query: &PageQuery) {
    let selected: Vec<&InstanceStatus> = status
        .instances
        .iter()
        .filter(|i| query.state.as_deref().is_none_or(|s| i.state == s))
        .collect();
    let pages = selected.len().div_ceil(PAGE_SIZE).max(1);
    let page = query.page.clamp(1, pages);
    let _ = write!(
        html,
        "<h2>Instances ({})</h2><nav id=\"instance-filter\">",
        status.instances.len()
    );
    let _ = write!(html, "<a href=\"{}\">all</a>", query.link(1, None));
    for state in crate::metrics::INSTANCE_STATES {
        let n = status.instances.iter().filter(|i| i.state == state).count();
        let _ = write!(
            html,
            "<a href=\"{}\">{state} ({n})</a>",
            query.link(1, Some(state))
        );
    }
    html.push_str("</nav>");
    if selected.is_empty() {
        html.push_str("<p id=\"instances\" class=\"muted\">none</p>");
        return;
    }
    let first = (page - 1) * PAGE_SIZE;
    let shown = &selected[first..(first + PAGE_SIZE).min(selected.len())];
    let _ = write!(
        html,
        "<p id=\"instance-page\">Showing {}–{} of {}{} (page {page} of {pages}).</p>",
        first + 1,
        first + shown.len(),
        selected.len(),
        query
            .state
            .as_deref()
            .map(|s| format!(" {}", escape(s)))
            .unwrap_or_default(),
    );
    html.push_str(
        "<table id=\"instances\"><tr><th>instance</th><th>pool</th><th>state</th><th class=\"num\">age</th>\
         <th class=\"num\">in state</th><th class=\"num\">job</th><th>reason</th></tr>",
    );
    for i in shown {
        let _ = write!(
            html,
            "<tr class=\"instance\"><td>{}</td><td>{}</td><td class=\"state-{state}\">{state}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&i.id),
            escape(&i.pool),
            age(i.age_s),
            age(i.state_age_s),
            i.job_id.map(|j| j.to_string()).unwrap_or_default(),
            escape(&i.reason),
            state = escape(&i.state),
        );
    }
    html.push_str("</table>");
    if pages > 1 {
        html.push_str("<nav id=\"pages\">");
        let state = query.state.as_deref();
        if page > 1 {
            let _ = write!(
                html,
                "<a rel=\"prev\" href=\"{}\">&larr; previous</a>",
                query.link(page - 1, state)
            );
        }
        if page < pages {
            let _ = write!(
                html,
                "<a rel=\"next\" href=\"{}\">next &rarr;</a>",
                query.link(page + 1, state)
            );
        }
        html.push_str("</nav>");
    }
}

fn removals(html: &mut String, status: &Status) {
    html.push_str("<h2>Recent cleanups</h2>");
    if status.recent_removals.is_empty() {
        html.push_str("<p id=\"removals\" class=\"muted\">none yet</p>");
        return;
    }
    html.push_str(
        "<table id=\"removals\"><tr><th>when</th><th>instance</th><th>pool</th><th>reason</th><th class=\"num\">job</th>\
         <th class=\"num\">exit</th><th>detail</th></tr>",
    );
    for r in status.recent_removals.iter().take(RECENT_ROWS) {
        let _ = write!(
            html,
            "<tr class=\"removal\"><td>{} ago</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"muted\">{}</td></tr>",
            ago(status, r.at_ms),
            escape(&r.id),
            escape(&r.pool),
            escape(&r.reason),
            r.job_id.map(|j| j.to_string()).unwrap_or_default(),
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            escape(r.detail.as_deref().unwrap_or("")),
        );
    }
    html.push_str("</table>");
}

fn events(html: &mut String, status: &Status) {
    html.push_str("<h2>Recent events</h2>");
    if status.events.is_empty() {
        html.push_str("<p id=\"events\" class=\"muted\">none yet</p>");
        return;
    }
    html.push_str(
        "<table id=\"events\"><tr><th>when</th><th>instance</th><th>event</th><th>detail</th></tr>",
    );
    for e in status.events.iter().take(RECENT_ROWS) {
        let _ = write!(
            html,
            "<tr class=\"event\"><td>{} ago</td><td>{}</td><td>{}</td><td class=\"muted\">{}</td></tr>",
            ago(status, e.at_ms),
            escape(e.instance.as_deref().unwrap_or("")),
            escape(&e.kind),
            escape(&e.detail),
        );
    }
    html.push_str("</table>");
}

/// A made-up status of `n` instances across two pools, for tests and screenshots of a large
/// installation.
pub fn synthetic_status(n: usize) -> Status {
    use super::status::*;
    let states = ["busy", "busy", "busy", "idle", "starting", "deleting"];
    let now = 1_800_000_000_000u64;
    let instances: Vec<InstanceStatus> = (0..n)
        .map(|k| {
            let state = states[k % states.len()];
            InstanceStatus {
                id: format!("{}-{k:05}", if k % 4 == 0 { "arm" } else { "debian" }),
                pool: if k % 4 == 0 { "arm" } else { "debian" }.into(),
                state: state.into(),
                age_s: (k % 900) as f64,
                state_age_s: (k % 300) as f64,
                job_id: (state != "idle").then_some(10_000 + k as i64),
                reason: match state {
                    "busy" => format!("running job {}", 10_000 + k),
                    "deleting" => "job_done".into(),
                    "starting" => "credentials and instance being created".into(),
                    _ => "warm spare, waiting for any job".into(),
                },
            }
        })
        .collect();
    let pool = |name: &str, cap: u32, labels: &[&str]| {
        let mine: Vec<&InstanceStatus> = instances.iter().filter(|i| i.pool == name).collect();
        let mut by_state = std::collections::BTreeMap::new();
        for s in crate::metrics::INSTANCE_STATES {
            by_state.insert(
                s.to_string(),
                mine.iter().filter(|i| i.state == s).count() as u32,
            );
        }
        PoolStatus {
            name: name.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            used: mine.len() as u32,
            cap,
            by_state,
            waiting_jobs: 40,
            blocked_by_cap: if mine.len() as u32 >= cap { 40 } else { 0 },
            at_capacity: mine.len() as u32 >= cap,
        }
    };
    let arm = instances.iter().filter(|i| i.pool == "arm").count() as u32;
    let pools = vec![
        pool(
            "debian",
            n as u32 - arm,
            &[
                "trixie:docker://debian:trixie",
                "bookworm:docker://debian:bookworm",
            ],
        ),
        pool("arm", arm + 50, &["arm64:docker://debian:trixie"]),
    ];
    let mut by_state = std::collections::BTreeMap::new();
    for s in crate::metrics::INSTANCE_STATES {
        by_state.insert(
            s.to_string(),
            instances.iter().filter(|i| i.state == s).count() as u32,
        );
    }
    let offers = |runs_on: &[&str]| -> Vec<PoolOffer> {
        pools
            .iter()
            .map(|p| {
                let names: Vec<String> = p
                    .labels
                    .iter()
                    .map(|l| crate::pools::label_name(l).to_string())
                    .collect();
                PoolOffer {
                    pool: p.name.clone(),
                    missing: runs_on
                        .iter()
                        .filter(|l| !names.iter().any(|n| n == *l))
                        .map(|l| l.to_string())
                        .collect(),
                    offers: names,
                    serves_scope: true,
                }
            })
            .collect()
    };
    let unmatched_offers = offers(&["gpu", "trixie"]);
    Status {
        source: "daemon".into(),
        generated_at_ms: now,
        autoscaler_version: env!("CARGO_PKG_VERSION").into(),
        forgejo: ForgejoStatus {
            url: "https://forgejo.example.org".into(),
            version: "15".into(),
            reachable: Some(true),
            last_tick_age_s: Some(0.8),
        },
        totals: Totals {
            instances: n as u32,
            cap: n as u32 + 50,
            by_state,
            waiting_jobs: 80,
            blocked_by_cap: 40,
            unmatched_jobs: 1,
            removed: 52_113,
        },
        pools,
        unmatched_jobs: vec![UnmatchedJob {
            job_id: 9_999,
            name: "build <gpu>".into(),
            runs_on: vec!["gpu".into(), "trixie".into()],
            scope: "org:infra".into(),
            pools: unmatched_offers,
        }],
        recent_removals: (0..50)
            .map(|k| Removal {
                id: format!("debian-old-{k:03}"),
                pool: "debian".into(),
                reason: [
                    "job_done",
                    "job_done",
                    "cancelled",
                    "pickup_timeout",
                    "boot_timeout",
                ][k % 5]
                    .into(),
                at_ms: now - 1_000 * k as u64,
                job_id: Some(9_000 + k as i64),
                exit_code: Some(0),
                detail: None,
            })
            .collect(),
        events: (0..50)
            .map(|k| EventStatus {
                at_ms: now - 700 * k as u64,
                instance: Some(format!("debian-{k:05}")),
                kind: "busy".into(),
                detail: "runner picked its job".into(),
            })
            .collect(),
        instances,
        errors: Vec::new(),
        ha: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_instances_are_summarised_and_paged() {
        let status = synthetic_status(1000);
        let html = render_page(&status, &PageQuery::parse(None));
        assert_eq!(html.matches("<tr class=\"instance\">").count(), PAGE_SIZE);
        assert!(html.contains("<b>1000</b> / 1050 runners"), "totals line");
        assert!(html.contains("Showing 1–100 of 1000 (page 1 of 10)"));
        assert!(html.contains("rel=\"next\" href=\"?page=2\""));
        assert!(!html.contains("rel=\"prev\""));
        assert_eq!(html.matches("<tr class=\"removal\">").count(), RECENT_ROWS);
        assert_eq!(html.matches("<tr class=\"pool\"").count(), 2);
        assert!(
            html.len() < 100_000,
            "page stays small: {} bytes",
            html.len()
        );
        let summary_busy = status
            .instances
            .iter()
            .filter(|i| i.state == "busy")
            .count();
        assert!(html.contains(&format!("busy ({summary_busy})")));
    }

    #[test]
    fn the_last_page_and_a_state_filter() {
        let status = synthetic_status(1000);
        let last = render_page(&status, &PageQuery::parse(Some("page=10")));
        assert!(last.contains("Showing 901–1000 of 1000 (page 10 of 10)"));
        assert!(last.contains("rel=\"prev\" href=\"?page=9\""));
        assert!(!last.contains("rel=\"next\""));
        let beyond = render_page(&status, &PageQuery::parse(Some("page=99")));
        assert!(
            beyond.contains("(page 10 of 10)"),
            "a page past the end shows the last one"
        );
        let starting = render_page(&status, &PageQuery::parse(Some("state=starting&page=1")));
        let rows = starting.matches("<tr class=\"instance\">").count();
        assert_eq!(rows, 100);
        assert_eq!(
            starting
                .matches("class=\"state-starting\">starting</td>")
                .count(),
            rows
        );
        let expected = status
            .instances
            .iter()
            .filter(|i| i.state == "starting")
            .count();
        assert!(
            starting.contains(&format!(
                "Showing 1–100 of {expected} starting (page 1 of 2)"
            )),
            "{expected}"
        );
    }

    #[test]
    fn outside_text_is_escaped() {
        let html = render_page(&synthetic_status(3), &PageQuery::default());
        assert!(html.contains("build &lt;gpu&gt;"));
        assert!(!html.contains("<gpu>"));
        assert!(html.contains("lacks <b>gpu</b>"));
    }

    #[test]
    fn unreadable_queries_fall_back_to_the_first_page() {
        assert_eq!(
            PageQuery::parse(Some("page=x&state=<script>")),
            PageQuery {
                page: 1,
                state: None
            }
        );
        assert_eq!(PageQuery::parse(Some("page=0")).page, 1);
        assert_eq!(
            PageQuery::parse(Some("state=busy")).state.as_deref(),
            Some("busy")
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(5.4), "5s");
        assert_eq!(age(725.0), "12m 5s");
        assert_eq!(age(3.0 * 3600.0 + 120.0), "3h 2m");
    }
}
