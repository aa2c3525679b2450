//! Settings of pools whose runners start as Docker Swarm services (`backend = "swarm"`,
//! table `[pools.swarm]`; docs/swarm-backend.md).
//!
//! The raw table lives here rather than in `raw.rs`, and so does its check, so that the
//! shared files only gain one line each. Like every table, unknown keys are errors and the
//! values that later checks point at keep their spans.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{
    docker::{parse_memory, PullPolicy},
    error::{ConfigError, ConfigWarning, Source},
};

/// How a swarm pool's runner services are created.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmPoolConfig {
    /// Image of the task container (it must contain the runner binary). Every node that may
    /// run the task needs it (or a registry it can pull from).
    pub image: String,
    /// A manager of the swarm (`unix://`, `tcp://`); `None`: `DOCKER_HOST` or the default
    /// socket.
    pub docker_host: Option<String>,
    pub network: SwarmNetwork,
    /// Placement constraints as Swarm writes them, e.g. `node.role == worker`.
    pub constraints: Vec<String>,
    /// What the scheduler sets aside for a task: a node without this much free is not chosen.
    pub reservations: SwarmResources,
    /// The most a task may use.
    pub limits: SwarmResources,
    /// Numeric `UID[:GID]` the task runs as; `None` keeps the image's user (which must then
    /// be numeric or root). Numeric because the credential secret is given to this owner by
    /// number when the service is created, before any container exists to look a name up in.
    pub user: Option<String>,
    pub pull_policy: PullPolicy,
}

/// CPUs and memory, for reservations or limits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SwarmResources {
    pub cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
}

/// The network a runner's task joins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SwarmNetwork {
    /// No network named: the node's default bridge.
    #[default]
    Default,
    /// The node's own network stack (`host`): the job reaches everything the node can.
    Host,
    /// A network of the swarm, normally an overlay network (`docker network create -d overlay`).
    Named(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwarm {
    pub image: Option<Spanned<String>>,
    pub docker_host: Option<Spanned<String>>,
    pub network: Option<Spanned<String>>,
    #[serde(default)]
    pub constraints: Vec<Spanned<String>>,
    pub reservations: Option<Spanned<RawResources>>,
    pub limits: Option<Spanned<RawResources>>,
    pub user: Option<Spanned<String>>,
    pub pull_policy: Option<PullPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    pub cpus: Option<Spanned<f64>>,
    pub memory: Option<Spanned<String>>,
}

/// Checks a `[pools.swarm]` table and applies its defaults.
pub(super) fn build(
    table: Spanned<RawSwarm>,
    source: &Source<'_>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<SwarmPoolConfig, ConfigError> {
    let span = table.span();
    let raw = table.into_inner();
    let error = |span: &Range<usize>, message: String| source.error(span, message);
    let Some(image) = raw.image else {
        return Err(error(
            &span,
            "the swarm table has no `image`; add image = \"IMAGE\" (an image containing forgejo-runner, present on the nodes)".into(),
        ));
    };
    let image_text = image.get_ref().trim();
    if image_text.is_empty() || image_text.chars().any(char::is_whitespace) {
        return Err(error(
            &image.span(),
            "image is empty or has spaces; name an image, e.g. \"data.forgejo.org/forgejo/runner:12\"".into(),
        ));
    }
    if let Some(host) = &raw.docker_host {
        check_manager_address(host.get_ref()).map_err(|e| error(&host.span(), e))?;
    }
    let network = match &raw.network {
        None => SwarmNetwork::Default,
        Some(name) => {
            let network = parse_network(name.get_ref()).map_err(|e| error(&name.span(), e))?;
            if network == SwarmNetwork::Host {
                warnings.push(source.warning(
                    &name.span(),
                    "network = \"host\" lets jobs reach every service of the node; prefer an overlay network",
                ));
            }
            network
        }
    };
    let mut constraints = Vec::new();
    for constraint in &raw.constraints {
        check_constraint(constraint.get_ref()).map_err(|e| error(&constraint.span(), e))?;
        constraints.push(constraint.get_ref().trim().to_string());
    }
    let reservations = resources(raw.reservations.as_ref(), "reservations", source)?;
    let limits = resources(raw.limits.as_ref(), "limits", source)?;
    for (reserved, limit, key) in [
        (reservations.cpus, limits.cpus, "cpus"),
        (
            reservations.memory.map(|m| m as f64),
            limits.memory.map(|m| m as f64),
            "memory",
        ),
    ] {
        if let (Some(reserved), Some(limit), Some(at)) = (reserved, limit, &raw.reservations) {
            if reserved > limit {
                return Err(error(
                    &at.span(),
                    format!("reservations.{key} is above limits.{key}: a task could never get what it reserves; lower the reservation or raise the limit"),
                ));
            }
        }
    }
    let user = match &raw.user {
        None => None,
        Some(user) => Some(check_numeric_user(user.get_ref()).map_err(|e| error(&user.span(), e))?),
    };
    Ok(SwarmPoolConfig {
        image: image_text.to_string(),
        docker_host: raw.docker_host.map(Spanned::into_inner),
        network,
        constraints,
        reservations,
        limits,
        user,
        pull_policy: raw.pull_policy.unwrap_or_default(),
    })
}

fn resources(
    raw: Option<&Spanned<RawResources>>,
    key: &str,
    source: &Source<'_>,
) -> Result<SwarmResources, ConfigError> {
    let Some(raw) = raw else {
        return Ok(SwarmResources::default());
    };
    let raw = raw.get_ref();
    if let Some(cpus) = &raw.cpus {
        let n = *cpus.get_ref();
        if !(n.is_finite() && n > 0.0) {
            return Err(source.error(
                &cpus.span(),
                format!("{key}.cpus = {n} must be a positive number, e.g. 2 or 0.5"),
            ));
        }
    }
    let memory = match &raw.memory {
        None => None,
        Some(m) => Some(parse_memory(m.get_ref()).map_err(|e| source.error(&m.span(), e))?),
    };
    Ok(SwarmResources {
        cpus: raw.cpus.as_ref().map(|c| *c.get_ref()),
        memory,
    })
}

/// The manager's API address: a unix socket or plain TCP (what the engine client speaks; a
/// remote manager is reached through a forwarded socket, see docs/swarm-backend.md).
fn check_manager_address(text: &str) -> Result<(), String> {
    let known = ["unix://", "tcp://"];
    if known
        .iter()
        .any(|p| text.starts_with(p) && text.len() > p.len())
    {
        Ok(())
    } else {
        Err(format!(
            "docker_host \"{text}\" is not a Docker address this backend speaks; write e.g. \"unix:///var/run/docker.sock\" or \"tcp://127.0.0.1:2375\" (forward a remote manager's socket with ssh -L)"
        ))
    }
}

/// `"host"`, or the name of a swarm network.
fn parse_network(text: &str) -> Result<SwarmNetwork, String> {
    let name = text.trim();
    match name {
        "host" => Ok(SwarmNetwork::Host),
        "" => Err("network is empty; name an overlay network of the swarm, write \"host\", or remove the key for the node's default bridge".into()),
        "none" | "bridge" => Err(format!(
            "network \"{name}\" cannot be given to a Swarm service; name an overlay network (docker network create -d overlay NAME), write \"host\", or remove the key for the node's default bridge"
        )),
        _ if name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && name.len() <= 64 => Ok(SwarmNetwork::Named(name.to_string())),
        _ => Err(format!(
            "network \"{name}\" is not a network name; use letters, digits, '-', '_' and '.'"
        )),
    }
}

/// A placement constraint as `docker service create --constraint` takes it:
/// `ATTRIBUTE == VALUE` or `ATTRIBUTE != VALUE`.
fn check_constraint(text: &str) -> Result<(), String> {
    let hint = "write e.g. \"node.role == worker\" or \"node.labels.runners != false\"";
    let (attribute, value) = text
        .split_once("==")
        .or_else(|| text.split_once("!="))
        .ok_or_else(|| format!("constraint \"{text}\" has no == or !=; {hint}"))?;
    let attribute = attribute.trim();
    let known = ["node.", "engine.labels."];
    let attribute_known = known.iter().any(|prefix| {
        attribute
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty())
    });
    if !attribute_known {
        return Err(format!(
            "constraint \"{text}\": \"{attribute}\" is not a node attribute (node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.NAME, engine.labels.NAME); {hint}"
        ));
    }
    if value.trim().is_empty() || value.contains("==") || value.contains("!=") {
        return Err(format!(
            "constraint \"{text}\" has no single value to compare with; {hint}"
        ));
    }
    Ok(())
}

/// `UID` or `UID:GID`, digits only.
fn check_numeric_user(text: &str) -> Result<String, String> {
    let user = text.trim();
    let numeric = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let valid = match user.split_once(':') {
        Some((uid, gid)) => numeric(uid) && numeric(gid),
        None => numeric(user),
    };
    if valid && user.split(':').all(|p| p.parse::<u32>().is_ok()) {
        Ok(user.to_string())
    } else {
        Err(format!(
            "user \"{user}\" is not numeric; write \"UID\" or \"UID:GID\" (e.g. \"1000:1000\"): the credential secret is handed to this owner by number, so names cannot be used"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, BackendKind};

    fn file(pool: &str) -> String {
        format!(
            "[forgejo]\nurl = \"https://forgejo.example.org\"\ntoken_file = \"token\"\nscopes = [\"org:acme\"]\n\n[[pools]]\nname = \"cluster\"\nlabels = [\"trixie:docker://debian:trixie\"]\n{pool}"
        )
    }

    fn load(pool: &str) -> Result<crate::config::Config, ConfigError> {
        parse(&file(pool), Path::new("/etc/autoscaler.toml"))
    }

    #[test]
    fn a_full_table() {
        let config = load(
            r#"backend = "swarm"
[pools.swarm]
image = "local/runner:1"
docker_host = "unix:///run/manager.sock"
network = "runners"
constraints = ["node.role == worker", "node.labels.ci != false"]
user = "1000:1000"
pull_policy = "missing"
reservations = { cpus = 0.5, memory = "256m" }
limits = { cpus = 2, memory = "1g" }
"#,
        )
        .unwrap();
        let pool = &config.pools[0];
        assert_eq!(pool.backend, BackendKind::Swarm);
        assert!(pool.docker.is_none());
        let swarm = pool.swarm.as_ref().unwrap();
        assert_eq!(swarm.image, "local/runner:1");
        assert_eq!(
            swarm.docker_host.as_deref(),
            Some("unix:///run/manager.sock")
        );
        assert_eq!(swarm.network, SwarmNetwork::Named("runners".into()));
        assert_eq!(swarm.constraints.len(), 2);
        assert_eq!(swarm.user.as_deref(), Some("1000:1000"));
        assert_eq!(swarm.pull_policy, PullPolicy::Missing);
        assert_eq!(
            swarm.reservations,
            SwarmResources {
                cpus: Some(0.5),
                memory: Some(256 << 20)
            }
        );
        assert_eq!(swarm.limits.memory, Some(1 << 30));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn defaults_and_the_host_network_warning() {
        let config =
            load("backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\nnetwork = \"host\"\n")
                .unwrap();
        let swarm = config.pools[0].swarm.as_ref().unwrap();
        assert_eq!(swarm.network, SwarmNetwork::Host);
        assert_eq!(swarm.pull_policy, PullPolicy::Never);
        assert_eq!(swarm.limits, SwarmResources::default());
        assert!(swarm.constraints.is_empty() && swarm.user.is_none());
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].message.contains("host"));
        let bare = load("backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\n").unwrap();
        assert_eq!(
            bare.pools[0].swarm.as_ref().unwrap().network,
            SwarmNetwork::Default
        );
    }

    /// Each mistake is reported at its line and column with what to do.
    #[test]
    fn mistakes_point_at_the_value() {
        let cases: &[(&str, usize, &str)] = &[
            ("backend = \"swarm\"\n", 9, "needs a [pools.swarm] table"),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\nreplicas = 2\n",
                12,
                "unknown key `replicas`",
            ),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\n[pools.swarm.limits]\ncpu = 1\n",
                13,
                "did you mean `cpus`",
            ),
            (
                "backend = \"docker\"\n[pools.docker]\nimage = \"i\"\n[pools.swarm]\nimage = \"i\"\n",
                12,
                "swarm settings on a pool whose backend is \"docker\"",
            ),
            (
                "backend = \"swarm\"\n[pools.docker]\nimage = \"i\"\n",
                10,
                "docker settings on a pool whose backend is \"swarm\"",
            ),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\nuser = \"runner\"\n",
                12,
                "not numeric",
            ),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\nconstraints = [\"node.role = worker\"]\n",
                12,
                "no == or !=",
            ),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\nreservations = { memory = \"2g\" }\nlimits = { memory = \"1g\" }\n",
                12,
                "reservations.memory is above limits.memory",
            ),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\nlimits = { cpus = 0 }\n",
                12,
                "limits.cpus = 0 must be a positive number",
            ),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\nnetwork = \"bridge\"\n",
                12,
                "cannot be given to a Swarm service",
            ),
            (
                "backend = \"swarm\"\n[pools.swarm]\nimage = \"i\"\ndocker_host = \"/var/run/docker.sock\"\n",
                12,
                "is not a Docker address this backend speaks",
            ),
        ];
        for (pool, line, says) in cases {
            let error = load(pool).expect_err(pool);
            assert_eq!(error.line, *line, "{pool}: {error}");
            assert!(error.message.contains(says), "{pool}: {error}");
        }
    }

    /// The commented example in config/reference.toml, uncommented, is a valid swarm pool.
    #[test]
    fn the_reference_example_validates() {
        let reference = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/reference.toml"),
        )
        .unwrap();
        let start = reference
            .find("# [[pools]]  # swarm example")
            .expect("the swarm example in config/reference.toml");
        let example: String = reference[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = format!(
            "[forgejo]\nurl = \"https://forgejo.example.org\"\ntoken_file = \"token\"\nscopes = [\"org:acme\"]\n\n{example}"
        );
        let config = parse(&text, Path::new("/etc/autoscaler.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let swarm = config.pools[0].swarm.as_ref().expect("a swarm pool");
        assert_eq!(swarm.network, SwarmNetwork::Named("runners".into()));
        assert!(!swarm.constraints.is_empty());
        assert!(swarm.limits.memory.is_some() && swarm.reservations.cpus.is_some());
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn networks() {
        assert_eq!(parse_network("host"), Ok(SwarmNetwork::Host));
        assert_eq!(
            parse_network("runners"),
            Ok(SwarmNetwork::Named("runners".into()))
        );
        assert!(parse_network("bridge").unwrap_err().contains("overlay"));
        assert!(parse_network("").is_err());
        assert!(parse_network("a b").is_err());
    }

    #[test]
    fn constraints() {
        assert!(check_constraint("node.role == worker").is_ok());
        assert!(check_constraint("node.labels.runners!=false").is_ok());
        assert!(check_constraint("engine.labels.os == linux").is_ok());
        assert!(check_constraint("node.role = worker")
            .unwrap_err()
            .contains("no == or !="));
        assert!(check_constraint("role == worker")
            .unwrap_err()
            .contains("not a node attribute"));
        assert!(check_constraint("node.role == ").is_err());
    }

    #[test]
    fn users() {
        assert_eq!(check_numeric_user(" 1000:1000 "), Ok("1000:1000".into()));
        assert_eq!(check_numeric_user("0"), Ok("0".into()));
        assert!(check_numeric_user("runner")
            .unwrap_err()
            .contains("numeric"));
        assert!(check_numeric_user("1000:runner").is_err());
        assert!(check_numeric_user("99999999999").is_err());
        assert!(check_numeric_user("1000:").is_err());
    }
}
