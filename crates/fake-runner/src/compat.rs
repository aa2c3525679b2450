//! Which forgejo-runner release the stand-in imitates (`FAKE_RUNNER_COMPAT`).
//!
//! Releases differ in one observable way an autoscaler depends on: the exit code of `one-job`
//! when no task arrives (contract §2.2 item 5, §4 quirk 12).

use std::fmt;
use std::str::FromStr;

/// Environment variable that selects the imitated release.
pub const COMPAT_ENV: &str = "FAKE_RUNNER_COMPAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// Runner ≤ 12.7: no task is an error, exit 1.
    V12_7,
    /// Runner 12.8.0 / 12.8.1: no task accidentally exits 0.
    V12_8_0,
    /// Runner with #1477 (taken as 12.8.2): no task exits 2.
    #[default]
    V12_8_2,
}

impl Compat {
    /// Reads [`COMPAT_ENV`]; unset or empty means the default (12.8.2).
    pub fn from_env() -> Result<Compat, String> {
        match std::env::var(COMPAT_ENV) {
            Ok(value) if !value.trim().is_empty() => value.parse(),
            _ => Ok(Compat::default()),
        }
    }

    /// Exit code of `one-job` when no task was received.
    pub fn no_task_exit_code(self) -> u8 {
        match self {
            Compat::V12_7 => 1,
            Compat::V12_8_0 => 0,
            Compat::V12_8_2 => 2,
        }
    }

    /// Version reported by `--version`, in `Register`/`Declare` and in the user agent.
    pub fn version(self) -> &'static str {
        match self {
            Compat::V12_7 => "v12.7.0-fake",
            Compat::V12_8_0 => "v12.8.0-fake",
            Compat::V12_8_2 => "v12.8.2-fake",
        }
    }
}

impl FromStr for Compat {
    type Err = String;

    fn from_str(value: &str) -> Result<Compat, String> {
        match value.trim().trim_start_matches('v') {
            "12.7" | "12.7.0" => Ok(Compat::V12_7),
            "12.8.0" | "12.8.1" => Ok(Compat::V12_8_0),
            "12.8.2" => Ok(Compat::V12_8_2),
            other => Err(format!(
                "{COMPAT_ENV}={other:?} is not supported (use 12.7, 12.8.0 or 12.8.2)"
            )),
        }
    }
}

impl fmt::Display for Compat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_table() {
        let table = [
            ("12.7", 1),
            ("12.8.0", 0),
            ("12.8.1", 0),
            ("12.8.2", 2),
            ("v12.8.2", 2),
        ];
        for (name, code) in table {
            assert_eq!(
                name.parse::<Compat>().unwrap().no_task_exit_code(),
                code,
                "{name}"
            );
        }
        assert_eq!(Compat::default().no_task_exit_code(), 2);
    }

    #[test]
    fn unknown_release_is_rejected() {
        let err = "13.0".parse::<Compat>().unwrap_err();
        assert!(err.contains("13.0"), "{err}");
    }

    #[test]
    fn versions_look_like_forgejo_runner_versions() {
        assert_eq!(Compat::V12_8_2.version(), "v12.8.2-fake");
        assert_eq!(Compat::V12_7.to_string(), "v12.7.0-fake");
    }
}
