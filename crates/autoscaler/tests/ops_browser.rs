//! Issue 6, test 2: the status page in a real headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs): loaded from a running daemon during a burst, its DOM checked for the
//! expected elements and a screenshot kept under `target/ops/` as a CI artifact; and a page of
//! a thousand (synthetic) instances, which must stay one readable page of 100 rows.

mod ops_support;
mod support;

use std::{sync::Arc, time::Duration};

use forgejo_autoscaler::http::page::{render_page, synthetic_status, PageQuery, PAGE_SIZE};
use ops_support::*;
use support::*;

const GPU_WORKFLOW: &str = "on: [push]\njobs:\n  needs-gpu:\n    runs-on: [trixie, gpu]\n    steps:\n      - run: echo never\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium_during_a_burst() {
    let env = Arc::new(Env::start("15").await);
    let config = env.write_config(&ConfigOpts {
        max_runners: 10,
        pool_max_runners: 4,
        http_listen: "127.0.0.1:0".into(),
        timeouts: "drain = \"1s\"",
        ..ConfigOpts::default()
    });
    env.commit_workflow("gpu.yml", GPU_WORKFLOW).await;
    env.commit_workflow("burst.yml", &Env::burst_yaml(16, "sleep 6"))
        .await;
    let mut child = env.spawn_autoscaler(&["run", "-c", &config.display().to_string()]);
    let address = http_address(&env, Duration::from_secs(30)).await;

    // Mid-burst: a first wave done (cleanups to show), a second one running.
    let mid_burst = wait_until(Duration::from_secs(90), || {
        let env = env.clone();
        async move {
            let jobs = env.sim_jobs().await;
            jobs.iter().filter(|j| j.status == "success").count() >= 4
                && jobs.iter().filter(|j| j.status == "running").count() >= 3
        }
    })
    .await;
    assert!(
        mid_burst,
        "the burst reaches its second wave\n{}",
        env.logs()
    );

    let url = format!("http://{address}/");
    let profile = tempfile::tempdir().expect("profile dir");
    let dom = chromium(&["--dump-dom", &url], profile.path());
    for needle in [
        "<title>forgejo-autoscaler: ",
        "<h1>forgejo-autoscaler ",
        "<p id=\"forgejo\">Forgejo 15 at http://127.0.0.1:",
        "<b class=\"ok\">reachable</b>",
        "<table id=\"pools\">",
        "data-pool=\"debian\"",
        "<table id=\"instances\">",
        "<table id=\"unmatched\">",
        "needs-gpu",
        "lacks <b>gpu</b>",
        "<table id=\"removals\">",
        "<td>job_done</td>",
        "<table id=\"events\">",
        "<nav id=\"instance-filter\">",
    ] {
        assert!(
            dom.contains(needle),
            "the page in Chromium lacks {needle:?}:\n{dom}"
        );
    }
    let rows = dom.matches("<tr class=\"instance\">").count();
    assert!(
        (1..=4).contains(&rows),
        "{rows} instance rows for a pool capped at 4"
    );
    assert!(
        dom.contains("class=\"state-busy\">busy</td>"),
        "a busy runner is shown:\n{dom}"
    );
    assert!(!dom.contains("<script"), "no JavaScript on the page");

    let shot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().expect("profile dir");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
            &url,
        ],
        profile.path(),
    );
    assert_eq!(
        png_size(&shot),
        Some((1280, 900)),
        "a 1280x900 PNG at {}",
        shot.display()
    );
    assert!(
        std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 20_000,
        "the screenshot has content"
    );
    eprintln!("screenshot: {}", shot.display());

    let exit = terminate(&mut child, Duration::from_secs(60));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", env.logs());
}

#[test]
fn a_thousand_instances_stay_one_readable_page_in_chromium() {
    let status = synthetic_status(1000);
    let dir = artifacts_dir();
    let page = dir.join("status-page-1000.html");
    std::fs::write(
        &page,
        render_page(&status, &PageQuery::parse(Some("page=3"))),
    )
    .expect("page written");
    let url = format!("file://{}", page.display());

    let profile = tempfile::tempdir().expect("profile dir");
    let dom = chromium(&["--dump-dom", &url], profile.path());
    assert_eq!(
        dom.matches("<tr class=\"instance\">").count(),
        PAGE_SIZE,
        "one page of rows"
    );
    assert!(
        dom.contains("Showing 201–300 of 1000 (page 3 of 10)."),
        "{dom}"
    );
    assert!(
        dom.contains("<b>1000</b> / 1050 runners"),
        "the totals summarise all of them"
    );
    assert!(
        dom.contains("rel=\"prev\" href=\"?page=2\"")
            && dom.contains("rel=\"next\" href=\"?page=4\"")
    );
    let busy = status
        .instances
        .iter()
        .filter(|i| i.state == "busy")
        .count();
    assert!(
        dom.contains(&format!(">busy ({busy})</a>")),
        "the state filter counts every instance"
    );
    assert!(dom.contains("build &lt;gpu&gt;"), "outside text stays text");

    let shot = dir.join("status-page-1000.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().expect("profile dir");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
            &url,
        ],
        profile.path(),
    );
    assert_eq!(png_size(&shot), Some((1280, 900)));
}
