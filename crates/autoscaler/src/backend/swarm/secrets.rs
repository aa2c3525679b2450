//! The runner's files as Swarm secrets (docs/swarm-backend.md "Secrets").
//!
//! Swarm has no way to write a file into a task before it starts except secrets and configs,
//! which it mounts read-only under `/run/secrets/` (a tmpfs the engine fills). So every file of
//! the instance becomes one secret, mounted as `/run/secrets/NAME` with mode 0400 (0444 for a
//! file that is not secret) and owned by the task's user; the runner's arguments, built by the
//! provisioner with work-directory paths, are rewritten to point there. The credential never
//! travels in the service's environment or command line, which every manager client can read.
//!
//! Forgejo 13/14 hand the runner a `.runner` file, which forgejo-runner reads from its working
//! directory unless its configuration names another place (`runner.file`). The secret mount is
//! not the working directory, so a small configuration file saying `runner.file:
//! /run/secrets/.runner` is added (a secret too, 0444: it holds no credential) and given with
//! `--config`.

use std::collections::HashMap;

use base64::Engine as _;
use bollard::models::{SecretSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets};

use super::names;
use crate::{backend::InstanceSpec, provision::RUNNER_FILE};

/// Where Swarm mounts a task's secrets.
pub const SECRETS_DIR: &str = "/run/secrets";
/// The runner configuration added when the instance has a `.runner` file.
pub const RUNNER_CONFIG_FILE: &str = "runner-config.yaml";

/// Who owns the mounted files: the task's user, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// A numeric `UID[:GID]` (the group defaults to 0, as the engine does for a bare uid);
    /// `None` for a name, which only the container could resolve.
    pub fn parse(user: &str) -> Option<Owner> {
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user, None),
        };
        Some(Owner {
            uid: uid.trim().parse().ok()?,
            gid: match gid {
                Some(gid) => gid.trim().parse().ok()?,
                None => 0,
            },
        })
    }
}

/// One file of the instance as a secret.
pub struct SecretFile {
    /// The secret's name in the swarm.
    pub name: String,
    /// The file name under [`SECRETS_DIR`].
    pub target: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// The secrets of an instance and the runner arguments that use them.
#[derive(Debug)]
pub struct Mounted {
    pub files: Vec<SecretFile>,
    pub args: Vec<String>,
}

/// Turns the instance's files into secrets and points `args` (written for `work_dir`) at
/// their mounts. A `.runner` file gets host-mode labels (the runner runs the job in its own
/// container) and a configuration that names it.
pub fn mount(spec: &InstanceSpec, work_dir: &str, args: &[String]) -> Result<Mounted, String> {
    let mut files = Vec::new();
    let mut args = args.to_vec();
    for file in &spec.files {
        check_name(&file.name)?;
        let contents = if file.name == RUNNER_FILE {
            crate::backend::docker::host_mode_runner_file(&file.contents)?
        } else {
            file.contents.clone()
        };
        let from = format!("{}/{}", work_dir.trim_end_matches('/'), file.name);
        let to = format!("{SECRETS_DIR}/{}", file.name);
        for arg in &mut args {
            if arg.contains(&from) {
                *arg = arg.replace(&from, &to);
            }
        }
        files.push(SecretFile {
            name: names::secret_name(&spec.id, &file.name),
            target: file.name.clone(),
            contents,
            mode: if file.secret { 0o400 } else { 0o444 },
        });
    }
    if spec.files.iter().any(|f| f.name == RUNNER_FILE) {
        let config = format!("runner:\n  file: {SECRETS_DIR}/{RUNNER_FILE}\n");
        files.push(SecretFile {
            name: names::secret_name(&spec.id, RUNNER_CONFIG_FILE),
            target: RUNNER_CONFIG_FILE.to_string(),
            contents: config.into_bytes(),
            mode: 0o444,
        });
        let mut with_config = vec![
            "--config".to_string(),
            format!("{SECRETS_DIR}/{RUNNER_CONFIG_FILE}"),
        ];
        with_config.append(&mut args);
        args = with_config;
    }
    Ok(Mounted { files, args })
}

/// The create request of a secret, labelled like the instance's service so that a secret
/// left by a crash is found and removed.
pub fn secret_spec(file: &SecretFile, labels: &HashMap<String, String>) -> SecretSpec {
    SecretSpec {
        name: Some(file.name.clone()),
        labels: Some(labels.clone()),
        data: Some(base64::engine::general_purpose::STANDARD.encode(&file.contents)),
        ..Default::default()
    }
}

/// How the service mounts a created secret.
pub fn reference(file: &SecretFile, secret_id: &str, owner: Owner) -> TaskSpecContainerSpecSecrets {
    TaskSpecContainerSpecSecrets {
        file: Some(TaskSpecContainerSpecFile {
            name: Some(file.target.clone()),
            uid: Some(owner.uid.to_string()),
            gid: Some(owner.gid.to_string()),
            mode: Some(file.mode),
        }),
        secret_id: Some(secret_id.to_string()),
        secret_name: Some(file.name.clone()),
    }
}

/// A plain file name: nothing that could point outside the secrets directory.
fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 64;
    if plain {
        Ok(())
    } else {
        Err(format!(
            "instance file name {name:?} is not a plain file name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use super::*;
    use crate::backend::InstanceFile;

    fn spec(files: Vec<InstanceFile>, args: &[&str]) -> InstanceSpec {
        InstanceSpec {
            id: "cluster-1a2b3c4d".into(),
            pool: "cluster".into(),
            program: PathBuf::from("forgejo-runner"),
            args: args.iter().map(|a| a.to_string()).collect(),
            files,
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn a_token_file_becomes_a_0400_secret_and_the_argument_follows_it() {
        let spec = spec(
            vec![InstanceFile {
                name: "runner-token".into(),
                contents: b"s3cret".to_vec(),
                secret: true,
            }],
            &["one-job", "--token-url", "file:/tmp/runner-token", "--wait"],
        );
        let mounted = mount(&spec, "/tmp", &spec.args).unwrap();
        assert_eq!(
            mounted.args,
            [
                "one-job",
                "--token-url",
                "file:/run/secrets/runner-token",
                "--wait"
            ]
        );
        let [file] = mounted.files.as_slice() else {
            panic!("{:?}", mounted.files)
        };
        assert_eq!(
            file.name,
            "forgejo-autoscaler-cluster-1a2b3c4d-runner-token"
        );
        assert_eq!((file.target.as_str(), file.mode), ("runner-token", 0o400));
        let labels = HashMap::from([("k".to_string(), "v".to_string())]);
        let request = secret_spec(file, &labels);
        assert_eq!(request.data.as_deref(), Some("czNjcmV0"));
        assert_eq!(request.labels, Some(labels));
        let mount = reference(
            file,
            "sid",
            Owner {
                uid: 1000,
                gid: 1001,
            },
        );
        let target = mount.file.unwrap();
        assert_eq!(target.name.as_deref(), Some("runner-token"));
        assert_eq!(
            (target.uid.as_deref(), target.gid.as_deref(), target.mode),
            (Some("1000"), Some("1001"), Some(0o400))
        );
        assert!(
            !format!("{file:?}").contains("s3cret"),
            "Debug hides the contents"
        );
    }

    #[test]
    fn a_runner_file_gets_host_labels_and_a_configuration_naming_it() {
        let runner = serde_json::json!({"name": "n", "token": "t", "labels": ["trixie:docker://debian:trixie"]});
        let spec = spec(
            vec![InstanceFile {
                name: RUNNER_FILE.into(),
                contents: runner.to_string().into_bytes(),
                secret: true,
            }],
            &["one-job"],
        );
        let mounted = mount(&spec, "/tmp", &spec.args).unwrap();
        assert_eq!(
            mounted.args,
            ["--config", "/run/secrets/runner-config.yaml", "one-job"]
        );
        let registration: serde_json::Value =
            serde_json::from_slice(&mounted.files[0].contents).unwrap();
        assert_eq!(registration["labels"], serde_json::json!(["trixie:host"]));
        assert_eq!(mounted.files[0].target, ".runner");
        let config = &mounted.files[1];
        assert_eq!(
            (config.target.as_str(), config.mode),
            (RUNNER_CONFIG_FILE, 0o444)
        );
        assert_eq!(
            String::from_utf8_lossy(&config.contents),
            "runner:\n  file: /run/secrets/.runner\n"
        );
    }

    #[test]
    fn names_that_climb_out_are_refused_and_owners_are_numeric() {
        let bad = spec(
            vec![InstanceFile {
                name: "../x".into(),
                contents: vec![],
                secret: true,
            }],
            &[],
        );
        assert!(mount(&bad, "/tmp", &[]).is_err());
        assert_eq!(
            Owner::parse("1000:1000"),
            Some(Owner {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(Owner::parse("0"), Some(Owner { uid: 0, gid: 0 }));
        assert_eq!(Owner::parse("runner"), None);
        assert_eq!(Owner::parse("1000:staff"), None);
    }
}
