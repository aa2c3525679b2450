//! `[ha]`: several replicas, one leader elected on a `coordination.k8s.io/v1` Lease
//! (docs/high-availability.md). The table's presence turns the election on.
//!
//! The raw table and its check live here so that the shared files only gain a line each.

use std::{
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    duration::{show, ConfigDuration},
    error::{ConfigError, ConfigWarning, Source},
};

/// Defaults of `[ha]` (client-go's leader election uses the same three durations).
pub mod ha_defaults {
    use std::time::Duration;

    pub const LEASE_NAME: &str = "forgejo-autoscaler";
    pub const LEASE_DURATION: Duration = Duration::from_secs(15);
    pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
    pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
}

/// The election and where its lease lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// `metadata.name` of the Lease.
    pub lease_name: String,
    /// Its namespace; `None`: the namespace of the connection (in a pod, the pod's own).
    pub lease_namespace: Option<String>,
    /// `holderIdentity` of this replica; `None`: host name and process id.
    pub identity: Option<String>,
    /// The owner id every replica tags runners with (it must be the same on all of them so a
    /// new leader sees the old leader's instances as its own); `None`: derived from the
    /// lease's namespace and name.
    pub owner_id: Option<String>,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// A kubeconfig file for the API server; `None`: the `[kubernetes]` connection (whose
    /// default is the pod's service account, else `$KUBECONFIG` or `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
}

impl HaConfig {
    /// The owner id for a lease in `namespace`: the configured one, or one derived from the
    /// namespace and lease name (12 hex digits, the shape of a store's random owner id), so
    /// that replicas agree without being told.
    pub fn owner_id_in(&self, namespace: &str) -> String {
        self.owner_id
            .clone()
            .unwrap_or_else(|| derived_owner_id(namespace, &self.lease_name))
    }
}

/// FNV-1a (64 bit) of `namespace/name`, as 12 hex digits. Not a security measure: it only has
/// to be stable and differ between leases.
pub fn derived_owner_id(namespace: &str, lease_name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{namespace}/{lease_name}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")[..12].to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    pub lease_name: Option<Spanned<String>>,
    pub lease_namespace: Option<Spanned<String>>,
    pub identity: Option<Spanned<String>>,
    pub owner_id: Option<Spanned<String>>,
    pub lease_duration: Option<Spanned<ConfigDuration>>,
    pub renew_deadline: Option<Spanned<ConfigDuration>>,
    pub retry_period: Option<Spanned<ConfigDuration>>,
    pub kubeconfig: Option<Spanned<PathBuf>>,
}

/// Checks an `[ha]` table and applies its defaults.
pub(super) fn build(
    table: Spanned<RawHa>,
    source: &Source<'_>,
    base_dir: &Path,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<HaConfig, ConfigError> {
    let span = table.span();
    let raw = table.into_inner();
    let error = |span: &Range<usize>, message: String| source.error(span, message);
    let lease_name = match &raw.lease_name {
        None => ha_defaults::LEASE_NAME.to_string(),
        Some(name) => {
            check_dns_name(name.get_ref(), 253, true)
                .map_err(|e| error(&name.span(), format!("lease_name {e}")))?;
            name.get_ref().clone()
        }
    };
    let lease_namespace = match &raw.lease_namespace {
        None => None,
        Some(ns) => {
            check_dns_name(ns.get_ref(), 63, false)
                .map_err(|e| error(&ns.span(), format!("lease_namespace {e}")))?;
            Some(ns.get_ref().clone())
        }
    };
    let identity = match &raw.identity {
        None => None,
        Some(id) => {
            let text = id.get_ref();
            if text.is_empty()
                || text.len() > 128
                || text.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(error(
                    &id.span(),
                    "identity must be 1 to 128 characters without spaces; leave it out to use the host name and process id".into(),
                ));
            }
            Some(text.clone())
        }
    };
    let owner_id = match &raw.owner_id {
        None => None,
        Some(owner) => {
            check_owner_id(owner.get_ref()).map_err(|e| error(&owner.span(), e))?;
            Some(owner.get_ref().clone())
        }
    };
    let duration =
        |value: &Option<Spanned<ConfigDuration>>, default: Duration, key: &str| match value {
            None => Ok(default),
            Some(v) if v.get_ref().0.is_zero() => Err(error(
                &v.span(),
                format!(
                    "{key} is zero; give a positive duration (default \"{}\")",
                    show(default)
                ),
            )),
            Some(v) => Ok(v.get_ref().0),
        };
    let lease_duration = duration(
        &raw.lease_duration,
        ha_defaults::LEASE_DURATION,
        "lease_duration",
    )?;
    let renew_deadline = duration(
        &raw.renew_deadline,
        ha_defaults::RENEW_DEADLINE,
        "renew_deadline",
    )?;
    let retry_period = duration(&raw.retry_period, ha_defaults::RETRY_PERIOD, "retry_period")?;
    let span_of = |value: &Option<Spanned<ConfigDuration>>| {
        value.as_ref().map(|v| v.span()).unwrap_or(span.clone())
    };
    if lease_duration.subsec_nanos() != 0 {
        return Err(error(
            &span_of(&raw.lease_duration),
            format!(
                "lease_duration \"{}\" is not a whole number of seconds; a Lease stores leaseDurationSeconds, write e.g. \"15s\"",
                show(lease_duration)
            ),
        ));
    }
    if renew_deadline >= lease_duration {
        return Err(error(
            &span_of(&raw.renew_deadline),
            format!(
                "renew_deadline \"{}\" must be shorter than lease_duration \"{}\": a leader must stop acting before a follower may take over (defaults \"10s\" and \"15s\")",
                show(renew_deadline),
                show(lease_duration)
            ),
        ));
    }
    if retry_period * 2 > renew_deadline {
        return Err(error(
            &span_of(&raw.retry_period),
            format!(
                "retry_period \"{}\" must be at most half of renew_deadline \"{}\", so a leader gets at least two tries to renew before it stops (default \"2s\")",
                show(retry_period),
                show(renew_deadline)
            ),
        ));
    }
    if lease_duration - renew_deadline < Duration::from_secs(1) {
        warnings.push(source.warning(
            &span_of(&raw.renew_deadline),
            format!(
                "lease_duration - renew_deadline is only {}: that margin absorbs clock drift and calls still in flight when a leader stops; keep it at 1s or more",
                show(lease_duration - renew_deadline)
            ),
        ));
    }
    Ok(HaConfig {
        lease_name,
        lease_namespace,
        identity,
        owner_id,
        lease_duration,
        renew_deadline,
        retry_period,
        kubeconfig: raw.kubeconfig.map(|p| base_dir.join(p.get_ref())),
    })
}

/// A Kubernetes object name: a DNS-1123 subdomain (`dots`) or label.
fn check_dns_name(text: &str, max: usize, dots: bool) -> Result<(), String> {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if text.is_empty()
        || text.len() > max
        || !text.chars().all(ok_char)
        || !edge(text.chars().next())
        || !edge(text.chars().last())
    {
        return Err(format!(
            "\"{text}\" is not a valid Kubernetes name: at most {max} lowercase letters, digits{} and '-', starting and ending with a letter or digit",
            if dots { ", '.'" } else { "" }
        ));
    }
    Ok(())
}

/// The owner id ends up in label values (63 characters, `[A-Za-z0-9._-]`) and in Forgejo
/// runner descriptions.
fn check_owner_id(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && text
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "owner_id \"{text}\" must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (it becomes a label value); leave it out to derive one from the lease"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_owner_ids_are_stable_and_differ_per_lease() {
        let a = derived_owner_id("ci", "forgejo-autoscaler");
        assert_eq!(a, derived_owner_id("ci", "forgejo-autoscaler"));
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, derived_owner_id("ci", "forgejo-autoscaler-2"));
        assert_ne!(a, derived_owner_id("ci2", "forgejo-autoscaler"));
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(check_dns_name("forgejo-autoscaler", 253, true).is_ok());
        assert!(check_dns_name("a.b-c", 253, true).is_ok());
        assert!(check_dns_name("a.b", 63, false).is_err());
        assert!(check_dns_name("Upper", 63, false).is_err());
        assert!(check_dns_name("-edge", 63, false).is_err());
        assert!(check_dns_name("", 63, false).is_err());
        assert!(check_owner_id("team-a_1.x").is_ok());
        assert!(check_owner_id("has space").is_err());
        assert!(check_owner_id(&"x".repeat(64)).is_err());
    }
}
