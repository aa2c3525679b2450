//! Names of the Swarm objects of one instance: its service and its secrets.
//!
//! Names are for people reading `docker service ls`; lookups always go by label. Swarm limits
//! a service name to 63 characters (a DNS label) and a secret name to 64, and instance ids can
//! be longer (a pool name may have 63 characters), so a long name is cut and given a hash of
//! the whole, which keeps it unique.

const PREFIX: &str = "forgejo-autoscaler";
const SERVICE_MAX: usize = 63;
const SECRET_MAX: usize = 64;

/// The service of an instance.
pub fn service_name(instance_id: &str) -> String {
    bounded(format!("{PREFIX}-{}", plain(instance_id)), SERVICE_MAX)
}

/// The secret that carries the instance file `file` (e.g. `runner-token`, `.runner`).
pub fn secret_name(instance_id: &str, file: &str) -> String {
    bounded(
        format!("{PREFIX}-{}-{}", plain(instance_id), plain(file)),
        SECRET_MAX,
    )
}

/// Letters, digits and `-` only, without leading or trailing `-` (Swarm wants names that
/// start and end with a letter or digit).
fn plain(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    mapped.trim_matches('-').to_string()
}

fn bounded(name: String, max: usize) -> String {
    if name.len() <= max {
        return name;
    }
    let hash = format!("{:016x}", fnv1a(name.as_bytes()));
    let keep = max - hash.len() - 1;
    let head = name[..keep].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// FNV-1a, 64 bits: a stable hash (the standard library's is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_kept_readable() {
        assert_eq!(
            service_name("debian-1a2b3c4d"),
            "forgejo-autoscaler-debian-1a2b3c4d"
        );
        assert_eq!(
            secret_name("debian-1a2b3c4d", ".runner"),
            "forgejo-autoscaler-debian-1a2b3c4d-runner"
        );
        assert_eq!(
            secret_name("debian-1a2b3c4d", "runner-config.yaml"),
            "forgejo-autoscaler-debian-1a2b3c4d-runner-config-yaml"
        );
    }

    #[test]
    fn long_ids_are_cut_and_stay_unique() {
        let pool = "p".repeat(63);
        let a = format!("{pool}-1a2b3c4d");
        let b = format!("{pool}-9f8e7d6c");
        assert_eq!(service_name(&a).len(), 63);
        assert_ne!(service_name(&a), service_name(&b));
        assert!(secret_name(&a, "runner-token").len() <= 64);
        assert_ne!(
            secret_name(&a, "runner-token"),
            secret_name(&b, "runner-token")
        );
        assert_ne!(secret_name(&a, "runner-token"), secret_name(&a, ".runner"));
        for name in [service_name(&a), secret_name(&a, ".runner")] {
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            assert!(!name.ends_with('-') && !name.starts_with('-'));
        }
        // Stable across runs (a restart finds the same names).
        assert_eq!(service_name(&a), service_name(&a.clone()));
    }
}
