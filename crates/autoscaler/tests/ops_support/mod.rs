//! Helpers of the operations tests (issue 6): finding the daemon's HTTP address in its log,
//! reading `/metrics` samples, running the `status` and `explain` commands, headless Chromium.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::support::{Env, AUTOSCALER};

/// A TCP port nobody listens on right now (for configurations that need a fixed port, which
/// the `status` command reads to find the daemon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// The address the daemon logged as bound (`address=HOST:PORT` on the "serving" line).
pub async fn http_address(env: &Env, timeout: Duration) -> SocketAddr {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for entry in std::fs::read_dir(env.path()).expect("work dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("autoscaler-") && name.ends_with(".log")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let found = text
                .lines()
                .rev()
                .filter(|l| l.contains("serving /metrics"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                })
                .filter_map(|a| a.parse::<SocketAddr>().ok())
                .next();
            if let Some(address) = found {
                return address;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the daemon never logged its HTTP address\n{}", env.logs());
}

/// `GET http://ADDRESS/PATH`, with a bearer token if given: status code and body.
pub async fn get(address: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .get(format!("http://{address}{path}"))
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// One sample of the text format: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a `/metrics` answer (comments skipped). Label values may contain
/// spaces and braces (route templates), so the label set is read up to the closing `"}`.
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line.rfind("} ").expect("label set closes");
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 2..],
                )
            }
            None => {
                let (name, rest) = line.split_once(' ').expect("name and value");
                (name, BTreeMap::new(), rest)
            }
        };
        let value = rest.split_whitespace().next().expect("value");
        let value = if value == "NaN" {
            f64::NAN
        } else {
            value.parse().unwrap_or_else(|_| panic!("value of {line}"))
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').to_string();
        let after = &rest[eq + 2..];
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        labels.insert(key, after[..end].to_string());
        rest = &after[(end + 1).min(after.len())..];
    }
    labels
}

/// Sum of the samples named `name` whose labels include every `(key, value)` of `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Runs `forgejo-autoscaler ARGS` to completion in the work directory.
pub fn run_cli(env: &Env, args: &[&str]) -> Output {
    let mut child = Command::new(AUTOSCALER)
        .args(args)
        .current_dir(env.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("forgejo-autoscaler {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// stdout of a command that must succeed.
pub fn cli_stdout(env: &Env, args: &[&str]) -> String {
    let output = run_cli(env, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "forgejo-autoscaler {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Adds `token_file = FILE` to the `[http]` table of a configuration written by
/// `Env::write_config`, and writes the token to FILE (mode 0600).
pub fn require_http_token(config: &Path, token: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = config.parent().expect("config dir");
    let file = dir.join("http-token");
    std::fs::write(&file, format!("{token}\n")).expect("token written");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("mode");
    let text = std::fs::read_to_string(config).expect("config readable");
    let replaced: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("listen = ") {
                format!("{line}\ntoken_file = \"http-token\"")
            } else {
                line.to_string()
            }
        })
        .collect();
    std::fs::write(config, replaced.join("\n") + "\n").expect("config written");
}

/// Where artifacts of these tests go: `target/ops/` of the workspace (kept by CI).
pub fn artifacts_dir() -> PathBuf {
    let exe = Path::new(AUTOSCALER);
    // target/<profile>/forgejo-autoscaler
    let target = exe.parent().and_then(Path::parent).expect("target dir");
    let dir = target.join("ops");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium with the flags that work in a closed sandbox (no background networking,
/// no first-run tasks, a fresh profile). Returns stdout; panics with stderr on failure.
pub fn chromium(args: &[&str], profile: &Path) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)"
    );
    let mut command = Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("chromium output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Whether `path` is a PNG image of plausible size, and its width and height.
pub fn png_size(path: &Path) -> Option<(u32, u32)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((width, height))
}

/// Every line every autoscaler process of this environment logged.
pub fn full_logs(env: &Env) -> String {
    let mut entries: Vec<_> = std::fs::read_dir(env.path())
        .expect("work dir")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    entries
        .iter()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("autoscaler-") && name.ends_with(".log")
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}
