//! Runs one `run:` step: a shell in its own process group with a clean environment, output
//! streamed line by line to the reporter, killed (the whole group) on cancellation.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::reporter::{CancelCause, Reporter};

/// How long output of a finished step is still read (a background process may keep the pipe).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Success,
    /// Non-zero exit, or killed by a signal (`None`).
    Failure(Option<i32>),
    Cancelled(CancelCause),
    /// The shell could not be started.
    SpawnError(String),
}

/// The command line for a `shell:` value (GitHub's forms for sh and bash, or a template with
/// `{0}` standing for a script file).
pub fn shell_command(
    shell: Option<&str>,
    script: &str,
    script_file: &Path,
) -> std::io::Result<Vec<String>> {
    let file = script_file.to_string_lossy().into_owned();
    let words: Vec<String> = match shell.map(str::trim).filter(|s| !s.is_empty()) {
        None | Some("sh") => vec!["sh".into(), "-e".into(), "-c".into(), script.into()],
        Some("bash") => [
            "bash",
            "--noprofile",
            "--norc",
            "-eo",
            "pipefail",
            "-c",
            script,
        ]
        .map(String::from)
        .to_vec(),
        Some(template) => {
            std::fs::write(script_file, script)?;
            let mut words: Vec<String> = template
                .split_whitespace()
                .map(|w| w.replace("{0}", &file))
                .collect();
            if !template.contains("{0}") {
                words.push(file);
            }
            words
        }
    };
    Ok(words)
}

/// Runs `argv` and waits for it, or kills its process group when `cancel` fires. The process
/// group is added to `groups` so the job can kill what is left of it at the end.
pub async fn run(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    step: usize,
    reporter: &Reporter,
    cancel: &mut watch::Receiver<Option<CancelCause>>,
    groups: &mut Vec<i32>,
) -> StepOutcome {
    let Some((program, args)) = argv.split_first() else {
        return StepOutcome::SpawnError("empty shell command".into());
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return StepOutcome::SpawnError(format!("cannot start {program}: {e}")),
    };
    let group = child.id().map(|pid| pid as i32);
    // Background processes of a step may serve later steps; they are killed at the job's end.
    groups.extend(group);
    let (lines_tx, mut lines) = mpsc::channel::<String>(256);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, lines_tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, lines_tx.clone()));
    }
    drop(lines_tx);

    if let Some(cause) = *cancel.borrow() {
        kill_group(group);
        let _ = child.wait().await;
        return StepOutcome::Cancelled(cause);
    }
    let outcome = loop {
        tokio::select! {
            Some(line) = lines.recv() => reporter.step_log(step, &line),
            status = child.wait() => {
                break match status {
                    Ok(s) if s.success() => StepOutcome::Success,
                    Ok(s) => StepOutcome::Failure(s.code()),
                    Err(e) => StepOutcome::SpawnError(format!("waiting for the step failed: {e}")),
                };
            }
            changed = cancel.changed() => {
                let cause = match changed {
                    Ok(()) => *cancel.borrow(),
                    // The sender is gone: nobody can cancel any more; keep waiting.
                    Err(_) => None,
                };
                if let Some(cause) = cause {
                    kill_group(group);
                    let _ = child.wait().await;
                    break StepOutcome::Cancelled(cause);
                }
            }
        }
    };
    // Output written just before exit is still in the pipes.
    let drain = async {
        while let Some(line) = lines.recv().await {
            reporter.step_log(step, &line);
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
    outcome
}

async fn forward_lines<R: AsyncRead + Unpin>(reader: R, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).to_string();
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Kills a step's whole process group (the shell and everything it started).
pub fn kill_group(group: Option<i32>) {
    if let Some(pgid) = group.filter(|p| *p > 0) {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells() {
        let file = Path::new("/tmp/x/script");
        assert_eq!(
            shell_command(None, "echo hi", file).unwrap(),
            vec!["sh", "-e", "-c", "echo hi"]
        );
        assert_eq!(
            shell_command(Some("bash"), "x", file).unwrap()[..5],
            ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.py");
        assert_eq!(
            shell_command(Some("python3 {0}"), "print(1)", &file).unwrap(),
            vec!["python3".to_string(), file.to_string_lossy().into_owned()]
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "print(1)");
    }
}
