//! BENCHMARKS.md, regenerated from every `target/bench/SCENARIO.json` after each run, so the
//! file always shows the latest run of each scenario. Hand-written findings live in
//! `crates/bench/NOTES.md` and are included verbatim.

use std::{fmt::Write as _, path::Path};

use crate::{
    report::{self, ScenarioReport},
    scenario::Scenario,
};

/// Where the plots go, relative to the repository root (BENCHMARKS.md links them).
pub const PLOTS_DIR: &str = "crates/bench/plots";

const METHOD: &str = r#"## What is measured, and how

* **Setup, the same for every system.** A fresh `forgejo-sim` process (release build, Forgejo
  15 behaviour unless stated) per system and scenario, listening on loopback; the harness
  creates an API token and the repository `root/bench`, commits the scenario's workflow files
  (all `workflow_dispatch`, so committing starts nothing) and starts the runs itself through
  `POST /_sim/dispatch`. Every system uses the same runner stand-in, the release
  `fake-forgejo-runner` of `crates/fake-runner`, with host-mode labels `trixie`, `bookworm`,
  `test`. The system under test gets 2 s to start, then a random pause of up to one poll
  interval, so the jobs arrive at a random point of its poll cycle.
* **Systems.** `seed`: `tests/seed-style.sh --no-seed --interval 5 --max-jobs N` (bash + curl +
  jq: poll the repository's jobs list every 5 s, then for each waiting job `register` a runner
  and run `one-job`, one at a time). `autoscaler-process`: the release `forgejo-autoscaler run -c
  FILE` with a generated configuration: the process backend, the scenario's cap as both
  `[limits] max_runners` and the pool's `max_runners`, `[timeouts] drain = "15s"`, `[http] listen`
  on a free loopback port for `/metrics`, and the defaults for everything else (poll interval
  2 s, runner fetch interval 2 s). `autoscaler-docker`: the same, with a docker pool instead
  (`[pools.docker] image = "local/forgejo-runner-stand-in:latest"`, built by
  `tests/support/build-runner-image.sh`, `network = "host"` so the containers reach the
  simulator on loopback, `user = "1000:1000"`); it runs when `docker info` answers and the
  image exists, and is otherwise listed with the reason. Its runner start time S is measured
  with `docker run --rm` of the same image (container create + start + the probe + exit).
* **Job wait** = `started - created` of every job in `GET /_sim/jobs` (simulator timestamps).
  A job that never started (the system was stopped at the deadline) counts with
  `end of run - created`, a lower bound; the table says how many. Percentiles are
  nearest-rank. **Makespan** = first job created -> last job stopped; when a system did not
  finish by the deadline the table shows `> elapsed (stopped)`.
* **Floor** = P/2 + S. P is the system's poll interval (seed 5 s, autoscaler 2 s). S is the
  runner start time, measured in the same run against the same simulator before the system
  starts: the median wall time (5 samples) of a stand-in `one-job` that finds no task
  (process start, read its token file, `Declare`, one `FetchTask`, exit). A job that arrives
  at a random time waits P/2 on average for the next poll, and then at least S for a fresh
  runner to ask for it. `mean/floor` is the system's mean wait divided by its floor.
* **Requests** are the simulator's counters by route template (`GET /_sim/stats`), from the
  start of the system to its stop: every call of the system and of its runners, REST API
  (`/api/v1`) and runner protocol (`/api/actions`) alike. `requests/job` divides by the jobs
  finished; `REST` counts only `/api/v1`. **Idle requests/min** (idle scenario) counts the
  requests inside the idle window, after the 2 s start-up, per minute of real time.
* **Peak RSS** is `VmHWM` of the system's top process from `/proc/PID/status`, sampled every
  200 ms: the `forgejo-autoscaler` process alone (its runners are separate processes), or the
  seed's `bash` process alone (its short-lived curl and jq processes are not included).
* **CPU s** is the system's orchestration cost without its runners. For the autoscaler: its
  own `utime + stime` from `/proc/PID/stat`, read from the exited process before it is reaped
  (`waitid(WNOWAIT)`), so it is exact. For the seed: `utime + stime + cutime + cstime` of the
  bash process (bash, every curl and jq, and the runners it waited for) minus the runner
  processes' own totals as last sampled (every 200 ms), i.e. bash + curl + jq, slightly
  overestimated by the runners' last < 200 ms. The details line gives the whole tree too.
* **Runners created / removed / leaked** come from `GET /_sim/runners` (probe runners left
  out): registrations made during the run, those deleted by the end, and leaked = registrations
  still live after the system stopped plus runner processes still running in its work
  directory. The seed registers a permanent runner per job and never deletes it, so every one
  of its registrations counts as leaked; that is what the seed leaves behind on a real Forgejo.
* **Reconcile ticks** come from the autoscaler's `/metrics` histogram
  `forgejo_autoscaler_reconcile_tick_seconds`, scraped just before the stop: count, mean
  (`_sum / _count`) and the bucket bounds holding the 50th and 95th percentile.
* **Time scale (idle scenario only).** The simulator runs with `--time-scale 5`, so its clock
  (job timestamps, cron schedules, server-side timers such as the offline-runner cleanup,
  runner `last_online`) advances 5 simulated seconds per real second, and the 5 simulated
  minutes pass in 60 real seconds. The systems under test are not scaled: they poll on their
  own real clocks, so their request rate is counted per real minute. Every other scenario runs
  at scale 1.
"#;

/// Rebuilds the whole file from the JSON reports in `json_dir`.
pub fn render(json_dir: &Path, notes: Option<&str>) -> anyhow::Result<String> {
    let mut reports = Vec::new();
    for name in Scenario::NAMES.iter().filter(|n| **n != "smoke") {
        let path = json_dir.join(format!("{name}.json"));
        if path.is_file() {
            reports.push(ScenarioReport::read_json(&path)?);
        }
    }
    let mut out = String::from("# Benchmarks\n\n");
    out.push_str(
        "The autoscaler side by side with the seed's sequential loop, in the same run on the same machine \
         (issue 5). Generated by the harness in `crates/bench` after every run; do not edit by hand (findings go \
         in `crates/bench/NOTES.md`, included at the end).\n\n",
    );
    if let Some(first) = reports.first() {
        let _ = writeln!(out, "**Machine:** {}.\n", first.machine.describe());
    }
    out.push_str("**Reproduce** (each scenario is one command; each writes `target/bench/SCENARIO.json` and regenerates this file):\n\n```sh\n");
    for r in &reports {
        let _ = writeln!(out, "{}", r.command);
    }
    out.push_str("```\n\n");
    out.push_str(
        "CI runs only `cargo test -p bench` (the `smoke` scenario with small numbers).\n\n",
    );
    out.push_str("## Summary\n\n| scenario | autoscaler / seed makespan | mean wait autoscaler vs seed (s) | autoscaler mean / floor | idle requests/min autoscaler vs seed |\n|---|---|---|---|---|\n");
    for r in &reports {
        let pair = r.ratios.get("autoscaler-process/seed");
        let get = |k: &str| pair.and_then(|p| p.get(k).copied().flatten());
        let (ours, seed) = (r.systems.get("autoscaler-process"), r.systems.get("seed"));
        let fmt =
            |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "-".into());
        let bound = if seed.is_some_and(|s| !s.completed) {
            " (seed stopped: at most)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {} | {}{} | {} vs {} | {} | {} vs {} |",
            r.scenario,
            fmt(get("makespan"), 3),
            if get("makespan").is_some() { bound } else { "" },
            fmt(ours.and_then(|s| s.wait_mean_s), 2),
            fmt(seed.and_then(|s| s.wait_mean_s), 2),
            fmt(ours.and_then(|s| s.wait_mean_over_floor), 2),
            fmt(ours.and_then(|s| s.idle_requests_per_minute), 1),
            fmt(seed.and_then(|s| s.idle_requests_per_minute), 1),
        );
    }
    out.push('\n');
    out.push_str(METHOD);
    out.push_str("\n## Results\n");
    for r in &reports {
        let _ = writeln!(out, "\n### {}\n\n{}.\n", r.scenario, r.description);
        if let Some(reduced) = &r.reduced {
            let _ = writeln!(out, "**Reduced run:** {reduced}\n");
        }
        let _ = writeln!(
            out,
            "Command: `{}` (Forgejo {}, simulator time scale {}).\n",
            r.command, r.forgejo_version, r.time_scale
        );
        out.push_str(&report::table(r));
        out.push('\n');
        let details = report::details(r);
        let (lines, endpoints) = details.split_once("\n\n").unwrap_or((&details, ""));
        out.push_str("```text\n");
        out.push_str(lines.trim_end());
        out.push_str("\n```\n\nRequests by endpoint (whole run):\n\n");
        out.push_str(endpoints);
        let plot = format!("{PLOTS_DIR}/{}-wait.svg", r.scenario);
        if r.systems.values().any(|s| !s.waits_s.is_empty()) {
            let _ = writeln!(out, "\n![job wait distribution, {}]({plot})", r.scenario);
        }
    }
    if let Some(notes) = notes {
        out.push_str("\n## Notes\n\n");
        out.push_str(notes.trim());
        out.push('\n');
    }
    Ok(out)
}
