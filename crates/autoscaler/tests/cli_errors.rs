//! Issue 3, test 8 and the command line's error paths, through the real binary:
//!
//! * every broken configuration file in `data/broken/` (each named after its mistake) makes
//!   `validate -c FILE` print `FILE:LINE:COL: message` on stderr with its own message and exit
//!   2, and makes `run -c FILE` exit 2 too, having started nothing (no store, no state dir);
//! * unknown subcommands and flags exit 2, `--version` and `--help` exit 0, `run` with neither
//!   `-c` nor `--url` exits 2, a missing `--password-file` exits 2 with a clear message;
//! * the seed's mode (`run --url --user --password-file`) never shows the password: not in
//!   any process's argv, not in the output.
//!
//! Field notes, bug log: #20 (myoung34#459: a misread setting created hundreds of runners; an
//! invalid value must stop the start) and §5 item 10 (a strict configuration that refuses
//! mistakes).

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use support::*;

fn broken_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/broken exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Runs the autoscaler in `dir`; kills it (and fails) if it does not exit within `limit`.
fn run_in(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(AUTOSCALER)
        .args(args)
        .current_dir(dir)
        .env_remove("FORGEJO_AUTOSCALER_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("autoscaler starts");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    panic!(
        "{args:?} did not exit within {limit:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `FILE:LINE:COL: message` line for `file` in `stderr`: (line, col, message).
fn located_error(stderr: &str, file: &Path) -> Option<(usize, usize, String)> {
    let prefix = format!("{}:", file.display());
    stderr.lines().find_map(|line| {
        let rest = line.strip_prefix(&prefix)?;
        let mut parts = rest.splitn(3, ':');
        let line_no = parts.next()?.parse().ok()?;
        let col = parts.next()?.parse().ok()?;
        let message = parts.next()?.strip_prefix(' ')?.to_string();
        Some((line_no, col, message))
    })
}

/// Names of everything in `dir` (to prove a command created nothing there).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn each_broken_file_is_refused_with_its_own_located_message_and_exit_2() {
    let files = broken_files();
    assert!(
        files.len() >= 10,
        "the issue asks for ten broken files, found {}",
        files.len()
    );
    let mut messages: BTreeMap<String, String> = BTreeMap::new();
    for original in files {
        let name = original.file_name().unwrap().to_string_lossy().into_owned();
        // A private copy, so that `run` could not touch the repository and anything it
        // created would show up in the directory.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(&name);
        std::fs::copy(&original, &file).unwrap();

        let validate = run_in(
            dir.path(),
            &["validate", "-c", file.to_str().unwrap()],
            Duration::from_secs(20),
        );
        let stderr = text(&validate.stderr);
        assert_eq!(validate.status.code(), Some(2), "validate {name}: {stderr}");
        let Some((line, col, message)) = located_error(&stderr, &file) else {
            panic!("validate {name}: no `FILE:LINE:COL: message` line on stderr: {stderr:?}");
        };
        assert!(
            line >= 1 && col >= 1,
            "validate {name}: position {line}:{col}"
        );
        assert!(
            message.len() >= 20,
            "validate {name}: message too short to be clear: {message:?}"
        );
        assert!(
            validate.stdout.is_empty(),
            "validate {name} printed on stdout: {}",
            text(&validate.stdout)
        );
        if let Some(other) = messages.insert(message.clone(), name.clone()) {
            panic!("{name} and {other} share the message {message:?}");
        }

        let run = run_in(
            dir.path(),
            &["run", "-c", file.to_str().unwrap()],
            Duration::from_secs(20),
        );
        let run_stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "run {name}: {run_stderr}");
        assert_eq!(
            located_error(&run_stderr, &file),
            Some((line, col, message)),
            "run {name} must report the same mistake: {run_stderr}"
        );
        assert_eq!(
            entries(dir.path()),
            vec![name.clone()],
            "run {name} created files (a store or a state dir)"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_help_and_version_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(20);

    let unknown_command = run_in(dir.path(), &["frobnicate"], limit);
    assert_eq!(
        unknown_command.status.code(),
        Some(2),
        "{}",
        text(&unknown_command.stderr)
    );
    assert!(
        text(&unknown_command.stderr).contains("frobnicate"),
        "{}",
        text(&unknown_command.stderr)
    );

    let unknown_flag = run_in(
        dir.path(),
        &["validate", "--frobnicate", "-c", "x.toml"],
        limit,
    );
    assert_eq!(
        unknown_flag.status.code(),
        Some(2),
        "{}",
        text(&unknown_flag.stderr)
    );
    assert!(
        text(&unknown_flag.stderr).contains("--frobnicate"),
        "{}",
        text(&unknown_flag.stderr)
    );

    let version = run_in(dir.path(), &["--version"], limit);
    assert_eq!(version.status.code(), Some(0), "{}", text(&version.stderr));
    assert!(
        text(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&version.stdout)
    );

    let help = run_in(dir.path(), &["--help"], limit);
    assert_eq!(help.status.code(), Some(0), "{}", text(&help.stderr));
    for command in ["run", "validate", "plan", "cleanup", "demo"] {
        assert!(
            text(&help.stdout).contains(command),
            "--help does not list {command}: {}",
            text(&help.stdout)
        );
    }

    let run_help = run_in(dir.path(), &["run", "--help"], limit);
    assert_eq!(run_help.status.code(), Some(0));
    assert!(
        text(&run_help.stdout).contains("--password-file"),
        "{}",
        text(&run_help.stdout)
    );

    let bare_run = run_in(dir.path(), &["run"], limit);
    let stderr = text(&bare_run.stderr);
    assert_eq!(bare_run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("-c") && stderr.contains("--url"),
        "run without a source must say what to give: {stderr}"
    );

    let missing_config = run_in(
        dir.path(),
        &["validate", "-c", "does-not-exist.toml"],
        limit,
    );
    let stderr = text(&missing_config.stderr);
    assert_eq!(missing_config.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does-not-exist.toml"),
        "the message must name the file: {stderr}"
    );

    assert!(
        entries(dir.path()).is_empty(),
        "usage errors created files: {:?}",
        entries(dir.path())
    );
}

#[test]
fn a_missing_password_file_exits_2_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-password");
    let output = run_in(
        dir.path(),
        &[
            "run",
            "--url",
            "http://127.0.0.1:9",
            "--user",
            "root",
            "--password-file",
            missing.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the message must name the file: {stderr}"
    );

    let empty = dir.path().join("empty-password");
    std::fs::write(&empty, "\n").unwrap();
    let output = run_in(
        dir.path(),
        &[
            "run",
            "--url",
            "http://127.0.0.1:9",
            "--user",
            "root",
            "--password-file",
            empty.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("empty"),
        "an empty password file must be called empty: {stderr}"
    );

    let no_value = run_in(
        dir.path(),
        &[
            "run",
            "--url",
            "http://127.0.0.1:9",
            "--user",
            "root",
            "--password-file",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        no_value.status.code(),
        Some(2),
        "{}",
        text(&no_value.stderr)
    );
}

/// Command lines of the processes working under `dir` (the daemon and its runners), to look
/// for a secret in argv. Other processes on the machine are not ours to judge.
fn cmdlines_under(dir: &Path) -> Vec<String> {
    runner_processes_under(dir)
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .collect()
}

/// The seed's way against the simulator: one job, `--max-jobs 1`. The password is read from
/// its file only: it is in no process's argv while the daemon and its runner run, not in the
/// output, and not in the files the seed mode writes; a wrong password is refused (exit 1)
/// without being echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_mode_never_shows_the_password() {
    let env = Env::start("15").await;
    let password = "admin1234";
    let password_file = env.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    env.commit_workflow(
        "seed.yml",
        "on: [push]\njobs:\n  first-job:\n    runs-on: trixie\n    steps:\n      - run: sleep 2\n",
    )
    .await;
    let state_dir = env.path().join("seed-state");
    let url = env.url();
    let args = [
        "run",
        "--url",
        url.as_str(),
        "--user",
        "root",
        "--password-file",
        password_file.to_str().unwrap(),
        "--scope",
        "repo:root/on-demand",
        "--max-jobs",
        "1",
        "--runner-binary",
        env.runner.to_str().unwrap(),
        "--state-dir",
        state_dir.to_str().unwrap(),
    ];
    let mut daemon = env.spawn_autoscaler(&args);
    let mut seen_in_argv = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        seen_in_argv.extend(
            cmdlines_under(env.path())
                .into_iter()
                .filter(|c| c.contains(password)),
        );
        if let Ok(Some(status)) = daemon.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break terminate(&mut daemon, Duration::from_secs(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logs = env.logs();
    assert!(
        status.is_some_and(|s| s.success()),
        "seed run: {status:?}\n{logs}"
    );
    assert!(
        seen_in_argv.is_empty(),
        "the password is in argv: {seen_in_argv:?}"
    );
    assert!(
        !logs.contains(password),
        "the password is in the output:\n{logs}"
    );
    let job = env.job_named("first-job").await;
    assert_eq!(job.status, "success", "{job:?}\n{logs}");
    for entry in walk(&state_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(password),
            "{} holds the password",
            entry.display()
        );
    }

    let wrong = env.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password-7f3a\n").unwrap();
    let output = run_in(
        env.path(),
        &[
            "run",
            "--url",
            url.as_str(),
            "--user",
            "root",
            "--password-file",
            wrong.to_str().unwrap(),
            "--state-dir",
            state_dir.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(1),
        "a refused password is a runtime failure: {all}"
    );
    assert!(
        !all.contains("not-the-password-7f3a"),
        "the wrong password is echoed: {all}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `status` with no daemon and a `[store] path` that does not exist (a typo, or a config that
/// never ran) fails, naming the path, instead of creating an empty store and showing a
/// reassuring empty status.
#[test]
fn status_without_daemon_or_store_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "0123456789abcdef\n").unwrap();
    let config = dir.path().join("autoscaler.toml");
    std::fs::write(
        &config,
        "[forgejo]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"token\"\nscopes = [\"instance\"]\n\
         [store]\npath = \"stat/autoscaler.db\"\n[http]\nlisten = \"127.0.0.1:9\"\n\
         [[pools]]\nname = \"p\"\nlabels = [\"trixie:docker://debian:trixie\"]\n",
    )
    .unwrap();
    let output = run_in(
        dir.path(),
        &["status", "-c", config.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let stderr = text(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("no store at") && stderr.contains("stat/autoscaler.db"),
        "the message names the missing store: {stderr}"
    );
    assert!(
        !dir.path().join("stat").exists(),
        "status created the store directory"
    );
}
