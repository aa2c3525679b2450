//! From the file as written ([`super::raw`]) to the validated [`Config`]: defaults, paths
//! relative to the file, and the checks that involve more than one value. Every error points
//! at the key or value to change.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

use super::{
    defaults,
    docker::{self, DockerPoolConfig},
    duration::{show, ConfigDuration},
    error::{ConfigError, ConfigWarning, Source},
    raw::{RawConfig, RawDocker, RawForgejo, RawHttp, RawLimits, RawPool, RawRunner, RawTimeouts},
    token, BackendKind, Config, ForgejoConfig, HttpConfig, Label, Limits, PoolConfig, RunnerConfig,
    Scope, StoreConfig, Timeouts, TokenSource,
};

type Result<T> = std::result::Result<T, ConfigError>;

/// The start of the file: where errors about something missing altogether point.
const FILE_START: Range<usize> = 0..0;

pub(super) fn build(raw: RawConfig, source: &Source<'_>, base_dir: &Path) -> Result<Config> {
    let mut checker = Checker {
        source,
        base_dir,
        warnings: Vec::new(),
    };
    let Some(raw_forgejo) = raw.forgejo else {
        return Err(source.error(
            &FILE_START,
            "missing [forgejo] table; add one with url, token_file (or token_env) and scopes",
        ));
    };
    let forgejo = checker.forgejo(raw_forgejo)?;
    let runner = checker.runner(raw.runner)?;
    let limits = checker.limits(raw.limits)?;
    let timeouts = checker.timeouts(raw.timeouts, &defaults::TIMEOUTS)?;
    let store = StoreConfig {
        path: checker.resolve(
            &raw.store
                .path
                .unwrap_or_else(|| defaults::STORE_PATH.into()),
        ),
    };
    let http = checker.http(raw.http)?;
    let pools = checker.pools(raw.pools, &forgejo, &limits, &timeouts)?;
    let kubernetes = super::kubernetes::build_cluster(raw.kubernetes, source, base_dir)?;
    let ha = match raw.ha {
        Some(table) => Some(super::ha::build(
            table,
            source,
            base_dir,
            &mut checker.warnings,
        )?),
        None => None,
    };
    Ok(Config {
        forgejo,
        runner,
        limits,
        timeouts,
        store,
        http,
        pools,
        kubernetes,
        ha,
        file: source.file.to_path_buf(),
        warnings: checker.warnings,
    })
}

struct Checker<'a> {
    source: &'a Source<'a>,
    base_dir: &'a Path,
    warnings: Vec<ConfigWarning>,
}

impl Checker<'_> {
    fn error(&self, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        self.source.error(span, message)
    }

    fn warn(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let warning = self.source.warning(span, message);
        self.warnings.push(warning);
    }

    /// A path relative to the config file's directory (absolute paths stay as they are).
    fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    fn forgejo(&mut self, table: Spanned<RawForgejo>) -> Result<ForgejoConfig> {
        let table_span = table.span();
        let raw = table.into_inner();
        let Some(url) = raw.url else {
            return Err(self.error(
                &table_span,
                "[forgejo] has no `url`; add e.g. url = \"https://forgejo.example.org\"",
            ));
        };
        let url = self.forgejo_url(&url)?;
        let token = match (raw.token_file, raw.token_env) {
            (Some(_), Some(env)) => {
                return Err(self.error(
                    &env.span(),
                    "both token_file and token_env are set; keep only one of them",
                ))
            }
            (None, None) => {
                return Err(self.error(
                    &table_span,
                    "[forgejo] has no token source; add token_file = \"PATH\" (a file holding only the API token, mode 0600) or token_env = \"VARIABLE\"",
                ))
            }
            (Some(file), None) => {
                let path = self.resolve(file.get_ref());
                if let Some(problem) = token::permission_problem(&path) {
                    self.warn(&file.span(), problem);
                }
                TokenSource::File(path)
            }
            (None, Some(env)) => {
                check_env_name(env.get_ref()).map_err(|e| self.error(&env.span(), e))?;
                TokenSource::Env(env.into_inner())
            }
        };
        let Some(scopes) = raw.scopes else {
            return Err(self.error(
                &table_span,
                "[forgejo] has no `scopes`; add e.g. scopes = [\"repo:OWNER/NAME\"] (or \"org:NAME\", \"user\", \"instance\")",
            ));
        };
        let scopes = self.scope_list(scopes, "scopes", "list at least one, e.g. [\"org:NAME\"]")?;
        let poll_interval = self.duration(
            raw.poll_interval.clone(),
            defaults::POLL_INTERVAL,
            "poll_interval",
        )?;
        if let Some(value) = &raw.poll_interval {
            if poll_interval < defaults::MIN_POLL_INTERVAL {
                return Err(self.error(
                    &value.span(),
                    format!(
                        "poll_interval \"{}\" is shorter than 1s and would load Forgejo for little gain; use at least \"1s\" (default \"2s\")",
                        show(poll_interval)
                    ),
                ));
            }
        }
        let request_timeout = self.duration(
            raw.request_timeout,
            defaults::REQUEST_TIMEOUT,
            "request_timeout",
        )?;
        Ok(ForgejoConfig {
            url,
            token,
            scopes,
            version: raw.version.unwrap_or_default(),
            poll_interval,
            request_timeout,
            ca_file: raw.ca_file.map(|p| self.resolve(&p)),
        })
    }

    /// The base URL of Forgejo, without a trailing slash. Never echoes a URL that carries
    /// credentials.
    fn forgejo_url(&mut self, url: &Spanned<String>) -> Result<String> {
        let span = url.span();
        let text = url.get_ref().trim();
        let parsed = reqwest::Url::parse(text).map_err(|e| {
            self.error(
                &span,
                format!("url is not a valid URL ({e}); write e.g. \"https://forgejo.example.org\""),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(self.error(
                &span,
                format!(
                    "url must start with http:// or https://, not {}://; write e.g. \"https://forgejo.example.org\"",
                    parsed.scheme()
                ),
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(self.error(
                &span,
                "url contains a user name or password; remove it and give the API token with token_file",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(self.error(
                &span,
                "url has a query or fragment; give only the address of Forgejo, e.g. \"https://forgejo.example.org\"",
            ));
        }
        let normalized = parsed.as_str().trim_end_matches('/').to_string();
        if normalized.ends_with("/api/v1") {
            return Err(self.error(
                &span,
                "url ends with /api/v1; give the address of Forgejo itself (remove /api/v1)",
            ));
        }
        let host = parsed.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if parsed.scheme() == "http" && !loopback {
            self.warn(
                &span,
                "url uses plain http to another machine, so the API token travels unencrypted; use https://",
            );
        }
        Ok(normalized)
    }

    /// A non-empty list of scopes without duplicates.
    fn scope_list(
        &self,
        list: Spanned<Vec<Spanned<Scope>>>,
        key: &str,
        if_empty: &str,
    ) -> Result<Vec<Scope>> {
        if list.get_ref().is_empty() {
            return Err(self.error(&list.span(), format!("`{key}` is empty; {if_empty}")));
        }
        let mut seen = BTreeSet::new();
        let mut scopes = Vec::new();
        for scope in list.into_inner() {
            if !seen.insert(scope.get_ref().clone()) {
                return Err(self.error(
                    &scope.span(),
                    format!("scope \"{}\" is listed twice; remove one", scope.get_ref()),
                ));
            }
            scopes.push(scope.into_inner());
        }
        Ok(scopes)
    }

    /// A positive duration, or `default` when absent.
    fn duration(
        &self,
        value: Option<Spanned<ConfigDuration>>,
        default: Duration,
        key: &str,
    ) -> Result<Duration> {
        match value {
            None => Ok(default),
            Some(v) if v.get_ref().0.is_zero() => Err(self.error(
                &v.span(),
                format!(
                    "{key} is zero; give a positive duration (default \"{}\")",
                    show(default)
                ),
            )),
            Some(v) => Ok(v.get_ref().0),
        }
    }

    fn runner(&mut self, raw: RawRunner) -> Result<RunnerConfig> {
        let binary = raw.binary.unwrap_or_else(|| defaults::RUNNER_BINARY.into());
        // A bare command name is looked up in PATH; anything with a slash is a path.
        let binary = if binary.as_os_str().as_encoded_bytes().contains(&b'/') {
            self.resolve(&binary)
        } else {
            binary
        };
        Ok(RunnerConfig {
            binary,
            fetch_interval: self.duration(
                raw.fetch_interval,
                defaults::FETCH_INTERVAL,
                "fetch_interval",
            )?,
            env: self.env(raw.env)?,
        })
    }

    fn env(&self, raw: BTreeMap<Spanned<String>, String>) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for (name, value) in raw {
            check_env_name(name.get_ref()).map_err(|e| self.error(&name.span(), e))?;
            env.insert(name.into_inner(), value);
        }
        Ok(env)
    }

    fn limits(&self, raw: RawLimits) -> Result<Limits> {
        Ok(Limits {
            max_runners: self.at_least_one(
                raw.max_runners,
                defaults::MAX_RUNNERS,
                "max_runners",
            )?,
            max_parallel_operations: self.at_least_one(
                raw.max_parallel_operations,
                defaults::MAX_PARALLEL_OPERATIONS,
                "max_parallel_operations",
            )?,
        })
    }

    fn at_least_one(&self, value: Option<Spanned<u32>>, default: u32, key: &str) -> Result<u32> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => Err(self.error(
                &v.span(),
                format!("{key} = 0 would never start a runner; use 1 or more (default {default})"),
            )),
            Some(v) => Ok(*v.get_ref()),
        }
    }

    /// The timeouts of a table, each falling back to `base` (the defaults for `[timeouts]`,
    /// the global `[timeouts]` for a pool).
    fn timeouts(&self, raw: RawTimeouts, base: &Timeouts) -> Result<Timeouts> {
        Ok(Timeouts {
            boot: self.duration(raw.boot, base.boot, "boot")?,
            pickup: self.duration(raw.pickup, base.pickup, "pickup")?,
            job: self.duration(raw.job, base.job, "job")?,
            teardown: self.duration(raw.teardown, base.teardown, "teardown")?,
            orphan_grace: self.duration(raw.orphan_grace, base.orphan_grace, "orphan_grace")?,
            drain: self.duration(raw.drain, base.drain, "drain")?,
        })
    }

    fn http(&mut self, raw: RawHttp) -> Result<HttpConfig> {
        let token_file = raw.token_file.map(|file| {
            let path = self.resolve(file.get_ref());
            if let Some(problem) = token::permission_problem(&path) {
                self.warn(&file.span(), problem);
            }
            path
        });
        let listen = match &raw.listen {
            None => Some(defaults::HTTP_LISTEN),
            Some(text) => match text.get_ref().trim() {
                "" | "off" => None,
                address => Some(address.parse::<SocketAddr>().map_err(|_| {
                    self.error(
                        &text.span(),
                        format!(
                            "listen \"{address}\" is not an IP address with a port; write e.g. \"127.0.0.1:9464\", or \"off\" to disable"
                        ),
                    )
                })?),
            },
        };
        if let (Some(address), Some(text), None) = (listen, &raw.listen, &token_file) {
            if !address.ip().is_loopback() {
                return Err(self.error(
                    &text.span(),
                    format!(
                        "listen \"{address}\" exposes status and metrics to other machines without authentication; set token_file = \"PATH\" in [http] or listen on 127.0.0.1"
                    ),
                ));
            }
        }
        Ok(HttpConfig { listen, token_file })
    }

    fn pools(
        &mut self,
        raw: Vec<Spanned<RawPool>>,
        forgejo: &ForgejoConfig,
        limits: &Limits,
        timeouts: &Timeouts,
    ) -> Result<Vec<PoolConfig>> {
        if raw.is_empty() {
            return Err(self.error(
                &FILE_START,
                "no [[pools]] defined; add at least one with a name and labels, e.g. [[pools]] name = \"debian\" labels = [\"trixie:docker://debian:trixie\"]",
            ));
        }
        let mut first_line_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut label_sets: BTreeMap<BTreeSet<String>, String> = BTreeMap::new();
        let mut pools = Vec::new();
        for entry in raw {
            let span = entry.span();
            let pool = self.pool(
                entry.into_inner(),
                &span,
                forgejo,
                limits,
                timeouts,
                &first_line_of,
            )?;
            first_line_of.insert(pool.name.clone(), self.source.position(span.start).0);
            let names: BTreeSet<String> = pool.label_names().map(str::to_string).collect();
            if let Some(other) = label_sets.get(&names) {
                self.warn(
                    &span,
                    format!(
                        "pools \"{other}\" and \"{}\" offer the same label names, so jobs for them always go to \"{other}\"; give one of them a distinct label",
                        pool.name
                    ),
                );
            } else {
                label_sets.insert(names, pool.name.clone());
            }
            pools.push(pool);
        }
        Ok(pools)
    }

    fn pool(
        &mut self,
        raw: RawPool,
        span: &Range<usize>,
        forgejo: &ForgejoConfig,
        limits: &Limits,
        timeouts: &Timeouts,
        first_line_of: &BTreeMap<String, usize>,
    ) -> Result<PoolConfig> {
        let Some(name) = raw.name else {
            return Err(self.error(span, "this pool has no `name`; add e.g. name = \"debian\""));
        };
        check_pool_name(name.get_ref()).map_err(|e| self.error(&name.span(), e))?;
        if let Some(line) = first_line_of.get(name.get_ref()) {
            return Err(self.error(
                &name.span(),
                format!(
                    "duplicate pool name \"{}\" (first used on line {line}); give each pool its own name",
                    name.get_ref()
                ),
            ));
        }
        let labels = self.labels(raw.labels, span, name.get_ref())?;
        let backend = raw
            .backend
            .as_ref()
            .map_or(BackendKind::Process, |b| *b.get_ref());
        let max_runners = match raw.max_runners {
            None => limits.max_runners,
            Some(value) => {
                let n =
                    self.at_least_one(Some(value.clone()), limits.max_runners, "max_runners")?;
                if n > limits.max_runners {
                    return Err(self.error(
                        &value.span(),
                        format!(
                            "max_runners = {n} is above the global cap [limits] max_runners = {}; lower it or raise the global cap",
                            limits.max_runners
                        ),
                    ));
                }
                n
            }
        };
        let warm_spares = match raw.warm_spares {
            None => 0,
            Some(value) if *value.get_ref() > max_runners => {
                return Err(self.error(
                    &value.span(),
                    format!(
                        "warm_spares = {} is more than this pool's max_runners = {max_runners}; lower it",
                        value.get_ref()
                    ),
                ))
            }
            Some(value) => *value.get_ref(),
        };
        let scopes = match raw.scopes {
            None => None,
            Some(list) => {
                for scope in list.get_ref() {
                    if !forgejo.scopes.contains(scope.get_ref()) {
                        return Err(self.error(
                            &scope.span(),
                            format!(
                                "scope \"{}\" is not among [forgejo] scopes; add it there or remove it here",
                                scope.get_ref()
                            ),
                        ));
                    }
                }
                Some(self.scope_list(
                    list,
                    "scopes",
                    "remove the key to serve every scope of [forgejo]",
                )?)
            }
        };
        let docker = match (backend, raw.docker) {
            (BackendKind::Swarm, Some(table)) => {
                return Err(self.error(
                    &table.span(),
                    "docker settings on a pool whose backend is \"swarm\"; put them in [pools.swarm] or set backend = \"docker\"",
                ))
            }
            (BackendKind::Swarm, None) => None,
            (BackendKind::Kubernetes, Some(table)) => {
                return Err(self.error(
                    &table.span(),
                    "docker settings on a pool whose backend is \"kubernetes\"; put them in [pools.kubernetes] or set backend = \"docker\"",
                ))
            }
            (BackendKind::Kubernetes, None) => None,
            (BackendKind::Process, Some(table)) => {
                return Err(self.error(
                    &table.span(),
                    "docker settings on a pool whose backend is \"process\"; set backend = \"docker\" or remove the docker table",
                ))
            }
            (BackendKind::Process, None) => None,
            (BackendKind::Docker, Some(table)) => Some(self.docker(table)?),
            (BackendKind::Docker, None) => {
                let at = raw.backend.as_ref().map_or(span.clone(), Spanned::span);
                return Err(self.error(
                    &at,
                    "backend = \"docker\" needs a [pools.docker] table with at least image = \"IMAGE\" (an image containing forgejo-runner)",
                ));
            }
        };
        let swarm = match (backend, raw.swarm) {
            (BackendKind::Swarm, Some(table)) => Some(super::swarm::build(
                table,
                self.source,
                &mut self.warnings,
            )?),
            (BackendKind::Swarm, None) => {
                let at = raw.backend.as_ref().map_or(span.clone(), Spanned::span);
                return Err(self.error(
                    &at,
                    "backend = \"swarm\" needs a [pools.swarm] table with at least image = \"IMAGE\" (an image containing forgejo-runner)",
                ));
            }
            (other, Some(table)) => {
                return Err(self.error(
                    &table.span(),
                    format!("swarm settings on a pool whose backend is \"{other}\"; set backend = \"swarm\" or remove the swarm table"),
                ))
            }
            (_, None) => None,
        };
        let kubernetes = match (backend, raw.kubernetes) {
            (BackendKind::Kubernetes, Some(table)) => Some(super::kubernetes::build_pool(
                table,
                self.source,
                &mut self.warnings,
            )?),
            (BackendKind::Kubernetes, None) => {
                let at = raw.backend.as_ref().map_or(span.clone(), Spanned::span);
                return Err(self.error(
                    &at,
                    "backend = \"kubernetes\" needs a [pools.kubernetes] table with at least image = \"IMAGE\" (an image with forgejo-runner on its PATH)",
                ));
            }
            (other, Some(table)) => {
                return Err(self.error(
                    &table.span(),
                    format!("kubernetes settings on a pool whose backend is \"{other}\"; set backend = \"kubernetes\" or remove the kubernetes table"),
                ))
            }
            (_, None) => None,
        };
        Ok(PoolConfig {
            name: name.into_inner(),
            labels,
            backend,
            max_runners,
            warm_spares,
            scopes,
            timeouts: self.timeouts(raw.timeouts, timeouts)?,
            env: self.env(raw.env)?,
            docker,
            swarm,
            kubernetes,
        })
    }

    fn labels(
        &self,
        raw: Option<Spanned<Vec<Spanned<Label>>>>,
        pool_span: &Range<usize>,
        pool: &str,
    ) -> Result<Vec<Label>> {
        let Some(list) = raw else {
            return Err(self.error(
                pool_span,
                format!("pool \"{pool}\" has no `labels`; add e.g. labels = [\"trixie:docker://debian:trixie\"]"),
            ));
        };
        if list.get_ref().is_empty() {
            return Err(self.error(
                &list.span(),
                format!(
                    "pool \"{pool}\" has an empty label list; list the labels its runners offer"
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut labels = Vec::new();
        for label in list.into_inner() {
            if !seen.insert(label.get_ref().name.clone()) {
                return Err(self.error(
                    &label.span(),
                    format!(
                        "label name \"{}\" appears twice in pool \"{pool}\"; keep one (a name can map to one place only)",
                        label.get_ref().name
                    ),
                ));
            }
            labels.push(label.into_inner());
        }
        Ok(labels)
    }

    fn docker(&mut self, table: Spanned<RawDocker>) -> Result<DockerPoolConfig> {
        let span = table.span();
        let raw = table.into_inner();
        let Some(image) = raw.image else {
            return Err(self.error(
                &span,
                "the docker table has no `image`; add image = \"IMAGE\" (an image containing forgejo-runner)",
            ));
        };
        let image_text = image.get_ref().trim();
        if image_text.is_empty() || image_text.chars().any(char::is_whitespace) {
            return Err(self.error(&image.span(), "image is empty or has spaces; name an image, e.g. \"data.forgejo.org/forgejo/runner:12\""));
        }
        if let Some(host) = &raw.docker_host {
            docker::check_docker_host("docker_host", host.get_ref())
                .map_err(|e| self.error(&host.span(), e))?;
        }
        let docker_hosts =
            self.docker_hosts(raw.docker_host.is_some(), raw.docker_hosts.as_ref())?;
        if let Some(cpus) = &raw.cpus {
            let n = *cpus.get_ref();
            if !(n.is_finite() && n > 0.0) {
                return Err(self.error(
                    &cpus.span(),
                    format!("cpus = {n} must be a positive number, e.g. 2 or 1.5"),
                ));
            }
        }
        let memory = match &raw.memory {
            None => None,
            Some(m) => {
                Some(docker::parse_memory(m.get_ref()).map_err(|e| self.error(&m.span(), e))?)
            }
        };
        if let Some(pids) = &raw.pids_limit {
            if *pids.get_ref() == 0 {
                return Err(self.error(&pids.span(), "pids_limit = 0 would forbid every process; use e.g. 1024, or remove it for no limit"));
            }
        }
        let mut volumes = Vec::new();
        for volume in &raw.volumes {
            let mut mount = docker::parse_volume(volume.get_ref())
                .map_err(|e| self.error(&volume.span(), e))?;
            if mount.source.contains('/') {
                mount.source = self.resolve(Path::new(&mount.source)).display().to_string();
            }
            if mount.source.ends_with("docker.sock") {
                self.warn(
                    &volume.span(),
                    "mounting the Docker socket gives every job control of the host's Docker (root on the host); use only for trusted repositories",
                );
            }
            volumes.push(mount);
        }
        let user = match &raw.user {
            Some(user) if user.get_ref().trim().is_empty() => {
                return Err(self.error(&user.span(), "user is empty; write \"USER\" or \"UID:GID\", or remove it to keep the image's user"))
            }
            other => other.as_ref().map(|u| u.get_ref().trim().to_string()),
        };
        let network = raw
            .network
            .as_ref()
            .map_or_else(Default::default, |n| *n.get_ref());
        if let Some(n) = &raw.network {
            if *n.get_ref() == docker::DockerNetwork::Host {
                self.warn(&n.span(), "network = \"host\" lets jobs reach every service of the host; prefer \"bridge\"");
            }
        }
        Ok(DockerPoolConfig {
            image: image_text.to_string(),
            docker_host: raw.docker_host.map(Spanned::into_inner),
            docker_hosts,
            cpus: raw.cpus.map(Spanned::into_inner),
            memory,
            pids_limit: raw.pids_limit.map(Spanned::into_inner),
            network,
            volumes,
            user,
            read_only: raw.read_only.unwrap_or(false),
            pull_policy: raw.pull_policy.unwrap_or_default(),
        })
    }
}

impl Checker<'_> {
    /// `docker_hosts`: several engines for one pool. Not together with `docker_host` (which
    /// one would win is not obvious), not empty, each address valid and listed once.
    fn docker_hosts(
        &mut self,
        with_docker_host: bool,
        list: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Vec<String>> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        if with_docker_host {
            return Err(self.error(
                &list.span(),
                "both docker_host and docker_hosts are set; keep docker_hosts (several engines) or docker_host (one engine), not both",
            ));
        }
        if list.get_ref().is_empty() {
            return Err(self.error(
                &list.span(),
                "docker_hosts is empty; list at least one engine, e.g. [\"unix:///var/run/docker.sock\"], or remove it to use docker_host",
            ));
        }
        let mut hosts: Vec<String> = Vec::new();
        for host in list.get_ref() {
            let text = host.get_ref().trim();
            docker::check_docker_host("docker_hosts", text)
                .map_err(|e| self.error(&host.span(), e))?;
            if hosts.iter().any(|h| h == text) {
                return Err(self.error(
                    &host.span(),
                    format!("docker_hosts lists \"{text}\" twice; list each engine once"),
                ));
            }
            hosts.push(text.to_string());
        }
        Ok(hosts)
    }
}

/// Pool names end up in instance names, directories and metric labels: keep them plain.
fn check_pool_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.len() <= 63;
    if valid {
        Ok(())
    } else {
        Err(format!(
            "pool name \"{name}\" is not usable; use up to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

fn check_env_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a valid environment variable name; use letters, digits and '_', not starting with a digit"
        ))
    }
}
