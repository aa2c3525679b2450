//! `[ha]` in the configuration file: defaults, paths, and each mistake with its own message at
//! the value to change.

use std::{path::Path, time::Duration};

use forgejo_autoscaler::config::{self, derived_owner_id, ha_defaults, Config, ConfigError};

fn parse(ha: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "[forgejo]\nurl = \"https://forgejo.example.org/\"\ntoken_file = \"token\"\nscopes = [\"org:acme\"]\n\n[[pools]]\nname = \"debian\"\nlabels = [\"trixie:docker://debian:trixie\"]\n\n[ha]\n{ha}"
    );
    config::parse(&text, Path::new("/etc/fa/autoscaler.toml"))
}

/// The message and the line of the error (`[ha]` starts on line 10).
fn error(ha: &str) -> (usize, String) {
    let err = parse(ha).expect_err("must not validate");
    (err.line, err.message)
}

#[test]
fn an_empty_table_turns_the_election_on_with_the_defaults() {
    let config = parse("").unwrap();
    let ha = config.ha.expect("[ha] present");
    assert_eq!(ha.lease_name, "forgejo-autoscaler");
    assert_eq!(ha.lease_namespace, None);
    assert_eq!(ha.identity, None);
    assert_eq!(ha.owner_id, None);
    assert_eq!(ha.lease_duration, ha_defaults::LEASE_DURATION);
    assert_eq!(ha.renew_deadline, ha_defaults::RENEW_DEADLINE);
    assert_eq!(ha.retry_period, ha_defaults::RETRY_PERIOD);
    assert_eq!(
        (ha.lease_duration, ha.renew_deadline, ha.retry_period),
        (
            Duration::from_secs(15),
            Duration::from_secs(10),
            Duration::from_secs(2)
        )
    );
    assert_eq!(ha.kubeconfig, None);
    // Replicas agree on the owner id without being told.
    assert_eq!(
        ha.owner_id_in("ci"),
        derived_owner_id("ci", "forgejo-autoscaler")
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Without the table there is no election.
    let text = "[forgejo]\nurl = \"https://forgejo.example.org/\"\ntoken_file = \"token\"\nscopes = [\"org:acme\"]\n\n[[pools]]\nname = \"debian\"\nlabels = [\"trixie:docker://debian:trixie\"]\n";
    assert_eq!(
        config::parse(text, Path::new("/etc/fa/autoscaler.toml"))
            .unwrap()
            .ha,
        None
    );
}

#[test]
fn every_setting_is_read() {
    let config = parse(
        "lease_name = \"ci.autoscaler\"\nlease_namespace = \"ci\"\nidentity = \"replica-a\"\nowner_id = \"team_a.1\"\nlease_duration = \"20s\"\nrenew_deadline = \"12s\"\nretry_period = \"3s\"\nkubeconfig = \"kube/config\"\n",
    )
    .unwrap();
    let ha = config.ha.unwrap();
    assert_eq!(ha.lease_name, "ci.autoscaler");
    assert_eq!(ha.lease_namespace.as_deref(), Some("ci"));
    assert_eq!(ha.identity.as_deref(), Some("replica-a"));
    assert_eq!(ha.owner_id_in("anything"), "team_a.1");
    assert_eq!(ha.lease_duration, Duration::from_secs(20));
    assert_eq!(ha.renew_deadline, Duration::from_secs(12));
    assert_eq!(ha.retry_period, Duration::from_secs(3));
    // Relative to the file's directory.
    assert_eq!(
        ha.kubeconfig.as_deref(),
        Some(Path::new("/etc/fa/kube/config"))
    );
}

#[test]
fn each_mistake_has_its_own_message_at_its_value() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "renew_deadline = \"15s\"\n",
            11,
            "renew_deadline \"15s\" must be shorter than lease_duration \"15s\": a leader must stop acting before a follower may take over (defaults \"10s\" and \"15s\")",
        ),
        (
            "lease_duration = \"2500ms\"\n",
            11,
            "lease_duration \"2s 500ms\" is not a whole number of seconds; a Lease stores leaseDurationSeconds, write e.g. \"15s\"",
        ),
        (
            "retry_period = \"6s\"\n",
            11,
            "retry_period \"6s\" must be at most half of renew_deadline \"10s\", so a leader gets at least two tries to renew before it stops (default \"2s\")",
        ),
        (
            "lease_namespace = \"CI\"\n",
            11,
            "lease_namespace \"CI\" is not a valid Kubernetes name: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        ),
        (
            "lease_name = \"-x\"\n",
            11,
            "lease_name \"-x\" is not a valid Kubernetes name: at most 253 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit",
        ),
        (
            "owner_id = \"a b\"\n",
            11,
            "owner_id \"a b\" must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (it becomes a label value); leave it out to derive one from the lease",
        ),
        (
            "identity = \"\"\n",
            11,
            "identity must be 1 to 128 characters without spaces; leave it out to use the host name and process id",
        ),
        (
            "retry_period = \"0s\"\n",
            11,
            "retry_period is zero; give a positive duration (default \"2s\")",
        ),
    ];
    for (ha, line, message) in cases {
        assert_eq!(error(ha), (*line, message.to_string()), "{ha}");
    }
    let (_, unknown) = error("lease = \"x\"\n");
    assert!(unknown.contains("unknown key `lease`"), "{unknown}");
}

#[test]
fn a_thin_margin_is_warned_about() {
    let config =
        parse("lease_duration = \"3s\"\nrenew_deadline = \"2500ms\"\nretry_period = \"1s\"\n")
            .unwrap();
    let [warning] = config.warnings.as_slice() else {
        panic!("one warning expected: {:?}", config.warnings)
    };
    assert!(
        warning
            .to_string()
            .contains("lease_duration - renew_deadline is only 500ms"),
        "{warning}"
    );
}
