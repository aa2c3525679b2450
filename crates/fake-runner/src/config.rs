//! The `-c config.yaml` file: the `runner.*` keys of forgejo-runner's configuration that the
//! stand-in honours (contract §2.3). Unknown keys are ignored, as forgejo-runner ignores keys
//! of sections it does not use here (container, cache, ...).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration::serde_go;

/// Retry of the final log and state upload (`runner.report_retry`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRetry {
    pub max_retries: u32,
    pub initial_delay: Duration,
    /// Upper bound of one delay; zero means unbounded.
    pub max_delay: Duration,
}

impl Default for ReportRetry {
    fn default() -> Self {
        ReportRetry {
            max_retries: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::ZERO,
        }
    }
}

/// Effective settings after defaults are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Registration file (`runner.file`, default `.runner`).
    pub file: PathBuf,
    /// Labels that override the registration file's (`runner.labels`).
    pub labels: Vec<String>,
    pub fetch_interval: Duration,
    pub fetch_timeout: Duration,
    pub report_interval: Duration,
    pub report_retry: ReportRetry,
    /// Job timeout on the runner side (`runner.timeout`).
    pub job_timeout: Duration,
    /// Whether a configuration file was given (only for the log line the real runner prints).
    pub from_file: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: PathBuf::from(".runner"),
            labels: Vec::new(),
            fetch_interval: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(30),
            report_interval: Duration::from_secs(1),
            report_retry: ReportRetry::default(),
            job_timeout: Duration::from_secs(3 * 3600),
            from_file: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    runner: Option<RawRunner>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRunner {
    file: Option<String>,
    labels: Option<Vec<String>>,
    #[serde(default, with = "serde_go")]
    fetch_interval: Option<Duration>,
    #[serde(default, with = "serde_go")]
    fetch_timeout: Option<Duration>,
    #[serde(default, with = "serde_go")]
    report_interval: Option<Duration>,
    #[serde(default, with = "serde_go")]
    timeout: Option<Duration>,
    report_retry: Option<RawRetry>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRetry {
    max_retries: Option<u32>,
    #[serde(default, with = "serde_go")]
    initial_delay: Option<Duration>,
    #[serde(default, with = "serde_go")]
    max_delay: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Defaults, or the file's values over the defaults when `path` is given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses YAML text; zero or empty values fall back to the defaults, as forgejo-runner does.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_norway::from_str::<Option<RawConfig>>(text)
                .map_err(|e| e.to_string())?
                .unwrap_or_default()
        };
        let defaults = Config::default();
        let runner = raw.runner.unwrap_or_default();
        let nonzero = |value: Option<Duration>, default: Duration| {
            value.filter(|d| !d.is_zero()).unwrap_or(default)
        };
        let retry = runner.report_retry.unwrap_or_default();
        let default_retry = ReportRetry::default();
        Ok(Config {
            file: runner
                .file
                .filter(|f| !f.is_empty())
                .map(PathBuf::from)
                .unwrap_or(defaults.file),
            labels: runner.labels.unwrap_or_default(),
            fetch_interval: nonzero(runner.fetch_interval, defaults.fetch_interval),
            fetch_timeout: nonzero(runner.fetch_timeout, defaults.fetch_timeout),
            report_interval: nonzero(runner.report_interval, defaults.report_interval),
            job_timeout: nonzero(runner.timeout, defaults.job_timeout),
            report_retry: ReportRetry {
                max_retries: retry
                    .max_retries
                    .filter(|n| *n > 0)
                    .unwrap_or(default_retry.max_retries),
                initial_delay: nonzero(retry.initial_delay, default_retry.initial_delay),
                max_delay: retry.max_delay.unwrap_or(default_retry.max_delay),
            },
            from_file: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_forgejo_runner_12_8() {
        let c = Config::default();
        assert_eq!(c.file, PathBuf::from(".runner"));
        assert_eq!(c.fetch_interval, Duration::from_secs(2));
        assert_eq!(c.fetch_timeout, Duration::from_secs(30));
        assert_eq!(c.report_interval, Duration::from_secs(1));
        assert_eq!(
            c.report_retry,
            ReportRetry {
                max_retries: 10,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::ZERO
            }
        );
        assert!(c.labels.is_empty());
    }

    #[test]
    fn runner_keys_are_read() {
        let yaml = r#"
log:
  level: info
runner:
  file: /var/lib/runner/.runner
  capacity: 1
  labels:
    - "bookworm:docker://debian:bookworm"
    - "self:host"
  fetch_interval: 500ms
  fetch_timeout: 5s
  report_interval: 2s
  timeout: 1h
  report_retry:
    max_retries: 3
    initial_delay: 10ms
    max_delay: 1s
container:
  network: host
"#;
        let c = Config::parse(yaml).unwrap();
        assert_eq!(c.file, PathBuf::from("/var/lib/runner/.runner"));
        assert_eq!(
            c.labels,
            vec!["bookworm:docker://debian:bookworm", "self:host"]
        );
        assert_eq!(c.fetch_interval, Duration::from_millis(500));
        assert_eq!(c.fetch_timeout, Duration::from_secs(5));
        assert_eq!(c.report_interval, Duration::from_secs(2));
        assert_eq!(c.job_timeout, Duration::from_secs(3600));
        assert_eq!(c.report_retry.max_retries, 3);
        assert_eq!(c.report_retry.initial_delay, Duration::from_millis(10));
        assert_eq!(c.report_retry.max_delay, Duration::from_secs(1));
    }

    #[test]
    fn empty_and_partial_files_keep_defaults() {
        assert_eq!(
            Config::parse("").unwrap().fetch_interval,
            Duration::from_secs(2)
        );
        assert_eq!(
            Config::parse("runner:\n").unwrap().file,
            PathBuf::from(".runner")
        );
        let c = Config::parse("runner:\n  fetch_interval: 0s\n  file: ''\n").unwrap();
        assert_eq!(c.fetch_interval, Duration::from_secs(2));
        assert_eq!(c.file, PathBuf::from(".runner"));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::parse("runner:\n  fetch_interval: soon\n").is_err());
        assert!(Config::parse("runner: [1, 2]\n").is_err());
        assert!(Config::parse("runner:\n  labels: nope\n").is_err());
        assert!(Config::parse(": : :").is_err());
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Config::load(Some(Path::new("/nonexistent/config.yaml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
