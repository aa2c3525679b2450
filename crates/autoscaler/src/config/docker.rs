//! Settings of pools whose runners start in Docker (or Podman) containers.
//!
//! Parsed and checked here; `backend/docker/` uses them.

use std::path::PathBuf;

use serde::Deserialize;

/// How a docker pool's runner containers are created.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerPoolConfig {
    /// Image of the container the runner runs in (it must contain the runner binary).
    pub image: String,
    /// Docker daemon to talk to (`unix://`, `tcp://`, `ssh://`, `npipe://`); `None` means the
    /// usual `DOCKER_HOST` / default socket.
    pub docker_host: Option<String>,
    /// Several engines for this pool (`docker_hosts`), in the order given; containers are
    /// spread over them by free capacity. Empty: the one engine of `docker_host`. The two
    /// keys are mutually exclusive, so at most one of them is set.
    pub docker_hosts: Vec<String>,
    /// CPU limit per container, in CPUs (e.g. 1.5).
    pub cpus: Option<f64>,
    /// Memory limit per container, in bytes.
    pub memory: Option<u64>,
    /// Process limit per container (fork bombs stay inside).
    pub pids_limit: Option<u32>,
    pub network: DockerNetwork,
    pub volumes: Vec<VolumeMount>,
    /// `USER[:GROUP]` the container runs as; `None` keeps the image's.
    pub user: Option<String>,
    /// Mount the container's root filesystem read-only.
    pub read_only: bool,
    pub pull_policy: PullPolicy,
}

/// The network a runner container joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DockerNetwork {
    /// Docker's default bridge: outbound access, no access to the host's ports by name.
    #[default]
    Bridge,
    /// No network at all (the runner cannot reach Forgejo: only for special images).
    #[serde(rename = "none")]
    Disabled,
    /// The host's network stack: the job can reach everything the host can.
    Host,
}

/// When the image is pulled before a container starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Never pull: the admin provides the image (nothing unexpected is fetched at job time).
    #[default]
    Never,
    /// Pull when the image is not present locally.
    Missing,
    /// Pull before every container.
    Always,
}

/// One `SOURCE:TARGET[:ro|rw]` mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// A host path (absolute, after resolving relative to the config file) or a volume name.
    pub source: String,
    /// Absolute path inside the container.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Parses a volume written `SOURCE:TARGET[:ro|rw]`.
pub(super) fn parse_volume(text: &str) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => {
            return Err(format!(
                "volume \"{text}\": write \"SOURCE:TARGET\" or \"SOURCE:TARGET:ro\""
            ))
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "volume \"{text}\": unknown mode \"{other}\"; use \"ro\" or \"rw\""
            ))
        }
    };
    if source.is_empty() {
        return Err(format!(
            "volume \"{text}\": the source is empty; name a host path or a volume"
        ));
    }
    if !target.starts_with('/') {
        return Err(format!(
            "volume \"{text}\": the target \"{target}\" must be an absolute path inside the container"
        ));
    }
    Ok(VolumeMount {
        source: source.to_string(),
        target: PathBuf::from(target),
        read_only,
    })
}

/// Parses a memory size as Docker writes it: `"512m"`, `"2g"`, `"1073741824"` (bytes),
/// with an optional `b`/`ib` suffix.
pub(super) fn parse_memory(text: &str) -> Result<u64, String> {
    const MINIMUM: u64 = 6 * 1024 * 1024;
    let hint = "write a number and a unit, e.g. \"512m\" or \"2g\"";
    let lowered = text.trim().to_ascii_lowercase();
    let unitless = lowered
        .strip_suffix("ib")
        .or_else(|| lowered.strip_suffix('b'))
        .unwrap_or(&lowered);
    let split = unitless
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(unitless.len());
    let (digits, unit) = unitless.split_at(split);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("invalid memory size \"{text}\"; {hint}")),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid memory size \"{text}\"; {hint}"))?;
    if bytes < MINIMUM {
        return Err(format!(
            "memory \"{text}\" is below Docker's minimum of 6m; {hint}"
        ));
    }
    Ok(bytes)
}

/// Checks an engine address; `key` names the setting in the message (`docker_host`,
/// `docker_hosts`).
pub(super) fn check_docker_host(key: &str, text: &str) -> Result<(), String> {
    let known = ["unix://", "tcp://", "ssh://", "npipe://"];
    if known
        .iter()
        .any(|p| text.starts_with(p) && text.len() > p.len())
    {
        Ok(())
    } else {
        Err(format!(
            "{key} \"{text}\" is not a Docker address; write e.g. \"unix:///var/run/docker.sock\" or \"tcp://10.0.0.5:2376\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert_eq!(parse_memory("1gib"), Ok(1 << 30));
        assert_eq!(parse_memory("1073741824"), Ok(1 << 30));
        assert!(parse_memory("1m").unwrap_err().contains("minimum"));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("99999999999999t").is_err());
    }

    #[test]
    fn volumes() {
        let v = parse_volume("/srv/cache:/cache:ro").unwrap();
        assert!(v.read_only);
        assert_eq!(v.target, PathBuf::from("/cache"));
        assert!(!parse_volume("cache:/cache").unwrap().read_only);
        assert!(parse_volume("/a:relative").is_err());
        assert!(parse_volume("/a:/b:rx").is_err());
        assert!(parse_volume("/a").is_err());
    }

    #[test]
    fn docker_hosts() {
        assert!(check_docker_host("docker_host", "unix:///var/run/docker.sock").is_ok());
        assert!(check_docker_host("docker_host", "/var/run/docker.sock").is_err());
        assert!(check_docker_host("docker_host", "tcp://").is_err());
        assert!(check_docker_host("docker_hosts", "tcp:/x")
            .unwrap_err()
            .starts_with("docker_hosts \"tcp:/x\""));
    }
}
