//! The configuration file: the issue's example and the reference file validate, real-world
//! label sets are accepted, and each broken file in `data/broken/` fails with its own message
//! at its own `LINE:COL` (the CLI test reuses those files for `validate`'s exit code 2).

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use forgejo_autoscaler::config::{
    self, defaults, BackendKind, Config, ConfigError, DockerNetwork, LabelSchema, PullPolicy,
    Scope, TokenSource, VersionSetting,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/reference.toml")
}

/// A small valid file, with `extra` appended (TOML allows tables in any order).
fn minimal(extra: &str) -> String {
    format!(
        "[forgejo]\nurl = \"https://forgejo.example.org/\"\ntoken_file = \"token\"\nscopes = [\"org:acme\"]\n\n[[pools]]\nname = \"debian\"\nlabels = [\"trixie:docker://debian:trixie\"]\n{extra}"
    )
}

fn parse_at(text: &str, dir: &Path) -> Result<Config, ConfigError> {
    config::parse(text, &dir.join("autoscaler.toml"))
}

#[test]
fn the_issue_example_validates_with_the_values_it_states() {
    let path = data("issue-3.toml");
    let config = config::load(&path).expect("the issue's example must validate");
    let dir = path.parent().unwrap();
    assert_eq!(config.forgejo.url, "http://127.0.0.1:3000");
    assert_eq!(config.forgejo.token, TokenSource::File(dir.join("token")));
    assert_eq!(
        config.forgejo.scopes,
        vec![Scope::Repo {
            owner: "root".into(),
            name: "on-demand".into()
        }]
    );
    assert_eq!(config.forgejo.version, VersionSetting::Auto);
    assert_eq!(config.forgejo.poll_interval, Duration::from_secs(2));
    assert_eq!(config.forgejo.request_timeout, Duration::from_secs(15));
    // A bare command name is looked up in PATH, not next to the file.
    assert_eq!(config.runner.binary, PathBuf::from("forgejo-runner"));
    assert_eq!(config.limits.max_runners, 20);
    assert_eq!(config.store.path, dir.join("state/autoscaler.db"));
    assert_eq!(config.http.listen, Some("127.0.0.1:9464".parse().unwrap()));
    let [pool] = config.pools.as_slice() else {
        panic!("one pool expected, got {:?}", config.pools)
    };
    assert_eq!(pool.name, "debian");
    assert_eq!(pool.backend, BackendKind::Process);
    assert_eq!(pool.max_runners, 10);
    assert_eq!(pool.warm_spares, 0);
    assert_eq!(pool.scopes, None);
    assert_eq!(pool.timeouts, defaults::TIMEOUTS);
    assert_eq!(
        pool.label_names().collect::<Vec<_>>(),
        ["trixie", "bookworm", "test"]
    );
    assert_eq!(
        pool.labels[2].schema,
        LabelSchema::Docker("debian:bookworm".into())
    );
    assert_eq!(pool.labels[0].raw, "trixie:docker://debian:trixie");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Its token file does not exist: fine for validate, an error naming the file for run.
    let err = config.read_token().unwrap_err().to_string();
    assert!(
        err.contains(&dir.join("token").display().to_string()),
        "{err}"
    );
}

#[test]
fn the_reference_file_validates_without_warnings() {
    let config = config::load(&reference_path()).expect("config/reference.toml must validate");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.pools.len(), 2);
    let docker = config.pools[1]
        .docker
        .as_ref()
        .expect("the docker pool's settings");
    assert_eq!(config.pools[1].backend, BackendKind::Docker);
    assert_eq!(docker.image, "data.forgejo.org/forgejo/runner:12");
    assert_eq!(docker.memory, Some(4 << 30));
    assert_eq!(docker.cpus, Some(2.0));
    assert_eq!(docker.pids_limit, Some(4096));
    assert_eq!(docker.network, DockerNetwork::Bridge);
    assert_eq!(docker.pull_policy, PullPolicy::Never);
    assert_eq!(docker.volumes[0].source, "runner-cache");
}

/// The reference file writes each optional key with its default: what it states must be
/// what a file without those keys gets.
#[test]
fn the_reference_file_states_the_real_defaults() {
    let reference = config::load(&reference_path()).unwrap();
    let dir = reference_path().parent().unwrap().to_path_buf();
    let bare = parse_at(&minimal(""), &dir).unwrap();
    assert_eq!(reference.runner, bare.runner);
    assert_eq!(reference.limits, bare.limits);
    assert_eq!(reference.timeouts, bare.timeouts);
    assert_eq!(reference.store, bare.store);
    assert_eq!(reference.http, bare.http);
    assert_eq!(reference.forgejo.version, bare.forgejo.version);
    assert_eq!(reference.forgejo.poll_interval, bare.forgejo.poll_interval);
    assert_eq!(
        reference.forgejo.request_timeout,
        bare.forgejo.request_timeout
    );
    assert_eq!(reference.pools[0].warm_spares, bare.pools[0].warm_spares);
    assert_eq!(reference.pools[0].timeouts, bare.pools[0].timeouts);
    // The bare file's pool takes the global cap.
    assert_eq!(bare.pools[0].max_runners, defaults::MAX_RUNNERS);
}

/// Each broken file, the position of its mistake and the whole message.
const BROKEN: &[(&str, usize, usize, &str)] = &[
    ("unknown-key-typo.toml", 4, 1,
     "unknown key `tokn_file`; did you mean `token_file`? (allowed: url, token_file, token_env, scopes, version, poll_interval, request_timeout, ca_file)"),
    ("unknown-table.toml", 7, 3,
     "unknown key `pool`; did you mean `pools`? (allowed: forgejo, runner, limits, timeouts, store, http, pools, kubernetes, ha)"),
    ("wrong-type-max-runners.toml", 8, 15,
     "`max_runners`: wrong type: found string \"ten\", expected a whole number of 0 or more, without quotes (e.g. 10)"),
    ("bad-duration.toml", 6, 17,
     "`poll_interval`: invalid duration \"2\" (time unit needed, for example 2sec or 2ms); write a number and a unit, e.g. \"30s\", \"5m\", \"1h 30m\""),
    ("bad-scope.toml", 5, 19,
     "`scopes`: unknown scope \"organization:acme\"; did you mean \"org:acme\"? (write \"instance\", \"org:NAME\", \"user\" or \"repo:OWNER/NAME\")"),
    ("duplicate-pool-name.toml", 12, 8,
     "duplicate pool name \"debian\" (first used on line 7); give each pool its own name"),
    ("unknown-backend.toml", 10, 11,
     "unknown value \"dokcer\" for `backend`; did you mean \"docker\"? (allowed: \"process\", \"docker\", \"swarm\", \"kubernetes\")"),
    ("bad-label-schema.toml", 9, 50,
     "`labels`: label \"ubuntu-22.04:ubuntu:22.04\": unsupported schema \"ubuntu\"; use docker://IMAGE, host or lxc://DIST:RELEASE (an image is written \"ubuntu-22.04:docker://IMAGE\")"),
    ("host-label-with-argument.toml", 9, 11,
     "`labels`: label \"native:host:bash\": the host schema takes no argument; write \"native:host\""),
    ("pool-cap-above-global.toml", 13, 15,
     "max_runners = 50 is above the global cap [limits] max_runners = 20; lower it or raise the global cap"),
    ("both-token-sources.toml", 5, 13,
     "both token_file and token_env are set; keep only one of them"),
    ("no-token-source.toml", 2, 1,
     "[forgejo] has no token source; add token_file = \"PATH\" (a file holding only the API token, mode 0600) or token_env = \"VARIABLE\""),
    ("public-listen-without-token.toml", 8, 10,
     "listen \"0.0.0.0:9464\" exposes status and metrics to other machines without authentication; set token_file = \"PATH\" in [http] or listen on 127.0.0.1"),
    ("pool-scope-not-served.toml", 10, 23,
     "scope \"org:other\" is not among [forgejo] scopes; add it there or remove it here"),
    ("docker-settings-on-process-pool.toml", 11, 1,
     "docker settings on a pool whose backend is \"process\"; set backend = \"docker\" or remove the docker table"),
    ("poll-interval-too-short.toml", 6, 17,
     "poll_interval \"100ms\" is shorter than 1s and would load Forgejo for little gain; use at least \"1s\" (default \"2s\")"),
    ("url-not-http.toml", 3, 7,
     "url must start with http:// or https://, not ssh://; write e.g. \"https://forgejo.example.org\""),
    ("duplicate-label-name.toml", 9, 44,
     "label name \"debian\" appears twice in pool \"debian\"; keep one (a name can map to one place only)"),
    ("pool-without-labels.toml", 7, 1,
     "pool \"debian\" has no `labels`; add e.g. labels = [\"trixie:docker://debian:trixie\"]"),
    ("docker-host-and-docker-hosts.toml", 15, 16,
     "both docker_host and docker_hosts are set; keep docker_hosts (several engines) or docker_host (one engine), not both"),
    ("toml-syntax-error.toml", 3, 35,
     "TOML syntax error: invalid basic string, expected `\"`; check the quotes, brackets and `key = value` form"),
];

#[test]
fn each_broken_file_fails_with_its_own_message_and_position() {
    for &(name, line, col, message) in BROKEN {
        let path = data("broken").join(name);
        let err = match config::load(&path) {
            Ok(_) => panic!("{name} validated but must not"),
            Err(err) => err,
        };
        assert_eq!(
            (err.line, err.col, err.message.as_str()),
            (line, col, message),
            "{name}"
        );
        assert_eq!(err.file, path);
        assert_eq!(
            err.to_string(),
            format!("{}:{line}:{col}: {message}", path.display())
        );
    }
    let messages: BTreeSet<&str> = BROKEN.iter().map(|b| b.3).collect();
    assert_eq!(
        messages.len(),
        BROKEN.len(),
        "each mistake needs its own message"
    );
}

#[test]
fn every_broken_file_has_an_expectation() {
    let listed: BTreeSet<String> = BROKEN.iter().map(|b| b.0.to_string()).collect();
    let present: BTreeSet<String> = std::fs::read_dir(data("broken"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    assert_eq!(listed, present);
    assert!(present.len() >= 10);
}

/// The label sets of `labels.txt`: one set per data line, comma-separated, `#` comments.
fn workflow_label_sets() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(data("workflow-labels.txt")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn every_real_world_label_set_is_accepted_as_a_pools_labels() {
    let sets = workflow_label_sets();
    assert!(sets.len() >= 20, "labels.txt has {} sets", sets.len());
    let dir = tempfile::tempdir().unwrap();
    for set in &sets {
        let list = set
            .iter()
            .map(|l| toml::Value::String(l.clone()).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "[forgejo]\nurl = \"https://forgejo.example.org\"\ntoken_env = \"FORGEJO_TOKEN\"\nscopes = [\"instance\"]\n\n[[pools]]\nname = \"shapes\"\nlabels = [{list}]\n"
        );
        let config = parse_at(&text, dir.path())
            .unwrap_or_else(|e| panic!("label set {set:?} refused: {e}"));
        let pool = &config.pools[0];
        let expected_names: Vec<&str> = set.iter().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(pool.label_names().collect::<Vec<_>>(), expected_names);
        let raws: Vec<&str> = pool.labels.iter().map(|l| l.raw.as_str()).collect();
        assert_eq!(raws, set.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// The copy in `tests/data` keeps the test self-contained in a fresh clone; when the team's
/// shared folder is next to the checkout, the copy must not have drifted from it.
#[test]
fn the_label_sets_copy_matches_the_shared_file_when_present() {
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/workflow-shapes/labels.txt");
    if let Ok(original) = std::fs::read_to_string(&shared) {
        let copy = std::fs::read_to_string(data("workflow-labels.txt")).unwrap();
        assert_eq!(
            copy,
            original,
            "refresh tests/data/workflow-labels.txt from {}",
            shared.display()
        );
    }
}

#[test]
fn paths_are_resolved_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal("").replace("token_file = \"token\"", "token_file = \"secrets/token\"")
        + "\n[runner]\nbinary = \"./bin/runner\"\n\n[http]\ntoken_file = \"/etc/abs-token\"\n";
    let config = parse_at(&text, dir.path()).unwrap();
    assert_eq!(
        config.forgejo.token,
        TokenSource::File(dir.path().join("secrets/token"))
    );
    assert_eq!(config.runner.binary, dir.path().join("./bin/runner"));
    assert_eq!(config.store.path, dir.path().join("state/autoscaler.db"));
    assert_eq!(
        config.http.token_file,
        Some(PathBuf::from("/etc/abs-token"))
    );
    assert_eq!(config.forgejo.url, "https://forgejo.example.org");
}

#[test]
fn a_token_file_others_can_read_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-s3cret-value\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = parse_at(&minimal(""), dir.path()).unwrap();
    let [warning] = config.warnings.as_slice() else {
        panic!("one warning expected: {:?}", config.warnings)
    };
    assert_eq!((warning.line, warning.col), (3, 14));
    assert!(warning.message.contains("mode 644"), "{warning}");
    assert!(!warning.to_string().contains("s3cret"));
    // At run time the token is read and trimmed.
    assert_eq!(config.read_token().unwrap().expose(), "tok-s3cret-value");

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(parse_at(&minimal(""), dir.path())
        .unwrap()
        .warnings
        .is_empty());
}

#[test]
fn the_token_can_come_from_the_environment() {
    let var = "FORGEJO_AUTOSCALER_CONFIG_TEST_TOKEN";
    std::env::set_var(var, " env-s3cret \n");
    let text = minimal("").replace("token_file = \"token\"", &format!("token_env = \"{var}\""));
    let config = parse_at(&text, Path::new("/etc/fa")).unwrap();
    assert_eq!(config.forgejo.token, TokenSource::Env(var.into()));
    assert_eq!(config.read_token().unwrap().expose(), "env-s3cret");
}

#[test]
fn credentials_in_the_url_are_refused_without_being_repeated() {
    let text = minimal("").replace(
        "https://forgejo.example.org/",
        "https://admin:hunter2-s3cret@forgejo.example.org",
    );
    let err = parse_at(&text, Path::new("/etc/fa"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("user name or password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn pool_timeouts_override_the_global_ones_key_by_key() {
    let text = minimal("\n[pools.timeouts]\njob = \"6h\"\n\n[timeouts]\nboot = \"1m\"\n");
    let config = parse_at(&text, Path::new("/etc/fa")).unwrap();
    assert_eq!(config.timeouts.boot, Duration::from_secs(60));
    assert_eq!(config.timeouts.job, defaults::TIMEOUTS.job);
    let pool = &config.pools[0].timeouts;
    assert_eq!(pool.boot, Duration::from_secs(60));
    assert_eq!(pool.job, Duration::from_secs(6 * 3600));
    assert_eq!(pool.pickup, defaults::TIMEOUTS.pickup);
}

#[test]
fn the_http_endpoint_can_be_disabled_or_opened_with_a_token() {
    let off = parse_at(
        &minimal("\n[http]\nlisten = \"off\"\n"),
        Path::new("/etc/fa"),
    )
    .unwrap();
    assert_eq!(off.http.listen, None);
    let open = minimal("\n[http]\nlisten = \"0.0.0.0:9464\"\ntoken_file = \"http-token\"\n");
    let open = parse_at(&open, Path::new("/etc/fa")).unwrap();
    assert_eq!(open.http.listen, Some("0.0.0.0:9464".parse().unwrap()));
    assert_eq!(
        open.http.token_file,
        Some(PathBuf::from("/etc/fa/http-token"))
    );
}

#[test]
fn pool_scopes_and_versions_parse() {
    let text = minimal("scopes = [\"org:acme\"]\n").replace(
        "scopes = [\"org:acme\"]\n\n",
        "scopes = [\"org:acme\", \"user\"]\nversion = 14\n\n",
    );
    let config = parse_at(&text, Path::new("/etc/fa")).unwrap();
    assert_eq!(config.forgejo.version, VersionSetting::V14);
    let pool = &config.pools[0];
    assert_eq!(pool.scopes, Some(vec![Scope::Org("acme".into())]));
    assert!(pool.serves(&Scope::Org("acme".into())));
    assert!(!pool.serves(&Scope::User));
}

#[test]
fn an_unreadable_file_is_reported_without_a_position() {
    let path = Path::new("/nonexistent/autoscaler.toml");
    let err = config::load(path).unwrap_err();
    assert_eq!((err.line, err.col), (0, 0));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/autoscaler.toml: cannot read"),
        "{err}"
    );
}

/// `docker_hosts`: several engines for one pool, each checked like `docker_host`, listed once,
/// never empty, never together with `docker_host`; each mistake located on its value.
#[test]
fn docker_hosts_lists_several_engines_once_each() {
    let docker_pool = |hosts: &str| {
        minimal(&format!(
            "backend = \"docker\"\n\n[pools.docker]\nimage = \"runner:1\"\n{hosts}\n"
        ))
    };
    let dir = Path::new("/etc/fa");
    let config = parse_at(
        &docker_pool("docker_hosts = [\"unix:///var/run/docker.sock\", \"tcp://10.0.0.5:2375\"]"),
        dir,
    )
    .unwrap();
    let docker = config.pools[0].docker.as_ref().unwrap();
    assert_eq!(
        docker.docker_hosts,
        ["unix:///var/run/docker.sock", "tcp://10.0.0.5:2375"]
    );
    assert_eq!(docker.docker_host, None);
    let one = parse_at(&docker_pool(""), dir).unwrap();
    let one_docker = one.pools[0].docker.as_ref().unwrap();
    assert!(one_docker.docker_hosts.is_empty());

    let line = 13; // the docker_hosts line of `docker_pool`
    for (hosts, col, message) in [
        (
            "docker_hosts = [\"unix:///a.sock\", \"unix:///a.sock\"]",
            35,
            "docker_hosts lists \"unix:///a.sock\" twice; list each engine once",
        ),
        (
            "docker_hosts = [\"unix:///a.sock\", \"/b.sock\"]",
            35,
            "docker_hosts \"/b.sock\" is not a Docker address; write e.g. \"unix:///var/run/docker.sock\" or \"tcp://10.0.0.5:2376\"",
        ),
        (
            "docker_hosts = []",
            16,
            "docker_hosts is empty; list at least one engine, e.g. [\"unix:///var/run/docker.sock\"], or remove it to use docker_host",
        ),
    ] {
        let err = parse_at(&docker_pool(hosts), dir).unwrap_err();
        assert_eq!(
            (err.line, err.col, err.message.as_str()),
            (line, col, message),
            "{hosts}"
        );
    }
}
