//! Where the Forgejo API token comes from, and reading it at run time.
//!
//! The config file names a file or an environment variable, never the token itself, so the
//! file can be shared and committed. A token's value never appears in an error or a warning.

use std::{io, path::Path, path::PathBuf};

use crate::secret::Secret;

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding only the token (resolved relative to the config file), mode 0600.
    File(PathBuf),
    /// An environment variable of the autoscaler's process.
    Env(String),
}

/// Why a token could not be read. Messages name the file or variable, never the value.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {}: {source}; create it holding only the token, with mode 0600", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("the token file {} is empty; put the API token in it", path.display())]
    EmptyFile { path: PathBuf },
    #[error("the token file {} holds more than the token (it has spaces or several lines); keep only the token", path.display())]
    NotOneWordFile { path: PathBuf },
    #[error("the environment variable {name} is not set or empty; export it with the API token, or use token_file")]
    EnvMissing { name: String },
    #[error("the environment variable {name} is not valid UTF-8 or holds more than the token; keep only the token")]
    EnvInvalid { name: String },
}

/// A token read from its source, with a warning when the file is readable by others.
#[derive(Debug)]
pub struct ReadToken {
    pub token: Secret,
    pub warning: Option<String>,
}

impl TokenSource {
    /// Reads the token and trims surrounding whitespace (a trailing newline is normal).
    pub fn read(&self) -> Result<ReadToken, TokenError> {
        match self {
            TokenSource::File(path) => read_file(path),
            TokenSource::Env(name) => {
                let value = std::env::var(name).map_err(|e| match e {
                    std::env::VarError::NotPresent => TokenError::EnvMissing { name: name.clone() },
                    std::env::VarError::NotUnicode(_) => {
                        TokenError::EnvInvalid { name: name.clone() }
                    }
                })?;
                let token = value.trim();
                if token.is_empty() {
                    return Err(TokenError::EnvMissing { name: name.clone() });
                }
                if token.chars().any(char::is_whitespace) {
                    return Err(TokenError::EnvInvalid { name: name.clone() });
                }
                Ok(ReadToken {
                    token: Secret::new(token),
                    warning: None,
                })
            }
        }
    }
}

/// Reads a one-token file (the Forgejo API token, the HTTP endpoint's bearer token).
pub(super) fn read_file(path: &Path) -> Result<ReadToken, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    if token.chars().any(char::is_whitespace) {
        return Err(TokenError::NotOneWordFile {
            path: path.to_path_buf(),
        });
    }
    Ok(ReadToken {
        token: Secret::new(token),
        warning: permission_problem(path),
    })
}

/// A warning when a secret file can be read by anyone but its owner (mode other than 0600 /
/// 0400). `None` also when the file does not exist: that is reported when it is read.
pub(super) fn permission_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return None;
    }
    let who = if mode & 0o004 != 0 {
        "every user of this machine"
    } else {
        "its group"
    };
    Some(format!(
        "the token file {} has mode {mode:03o}, so {who} can read the token; run `chmod 600 {}`",
        path.display(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token_file(contents: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_private_file_is_read_and_trimmed_without_warning() {
        let (_dir, path) = token_file("  s3cret-value\n", 0o600);
        let read = TokenSource::File(path).read().unwrap();
        assert_eq!(read.token.expose(), "s3cret-value");
        assert_eq!(read.warning, None);
    }

    #[test]
    fn a_world_readable_file_warns_without_the_value() {
        let (_dir, path) = token_file("s3cret-value\n", 0o644);
        let read = TokenSource::File(path).read().unwrap();
        let warning = read.warning.unwrap();
        assert!(
            warning.contains("mode 644") && warning.contains("chmod 600"),
            "{warning}"
        );
        assert!(!warning.contains("s3cret"));
    }

    #[test]
    fn bad_files_are_explained_without_the_value() {
        let (_dir, path) = token_file("two\nlines-s3cret\n", 0o600);
        let err = TokenSource::File(path).read().unwrap_err().to_string();
        assert!(
            err.contains("more than the token") && !err.contains("s3cret"),
            "{err}"
        );
        let (_dir, path) = token_file("\n", 0o600);
        assert!(matches!(
            TokenSource::File(path).read(),
            Err(TokenError::EmptyFile { .. })
        ));
        let missing = TokenSource::File(PathBuf::from("/nonexistent/token"));
        let err = missing.read().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/token") && err.contains("0600"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_variable_is_named() {
        let source = TokenSource::Env("FORGEJO_AUTOSCALER_TEST_SURELY_UNSET".into());
        let err = source.read().unwrap_err().to_string();
        assert!(
            err.contains("FORGEJO_AUTOSCALER_TEST_SURELY_UNSET is not set"),
            "{err}"
        );
    }
}
