//! `register`: Ping until the instance answers, Register with a registration token, write the
//! registration file (contract §2.1).

use std::time::Duration;

use anyhow::{bail, Context};
use runner_proto::ping::v1::PingRequest;
use runner_proto::runner::v1::RegisterRequest;

use super::Env;
use crate::cli::RegisterArgs;
use crate::labels::{self, DEFAULT_REGISTER_LABEL};
use crate::registration::Registration;
use crate::{host, rpc};

/// Labels to register: the config's if set (they win, as in forgejo-runner), else `--labels`,
/// else the default label.
pub fn choose_labels(flag: Option<&str>, config_labels: &[String]) -> Vec<String> {
    let from_flag = flag.map(labels::comma_split).unwrap_or_default();
    if !config_labels.is_empty() {
        if !from_flag.is_empty() {
            tracing::warn!("labels from the command line are ignored, the configuration file's runner.labels are used");
        }
        return config_labels.to_vec();
    }
    if from_flag.is_empty() {
        vec![DEFAULT_REGISTER_LABEL.to_string()]
    } else {
        from_flag
    }
}

// `agent_labels` is deprecated in the protocol, but forgejo-runner still fills it.
#[allow(deprecated)]
pub async fn run(args: RegisterArgs, env: &Env) -> anyhow::Result<()> {
    tracing::warn!("register with a registration token is deprecated in forgejo-runner 12.8; the stand-in supports it for Forgejo 13 and 14");
    tracing::info!("registering runner, version={}", env.compat.version());
    let instance = args
        .instance
        .filter(|i| !i.trim().is_empty())
        .context("instance address is empty")?;
    let token = args
        .token
        .filter(|t| !t.trim().is_empty())
        .context("token is empty")?;
    let full_labels = choose_labels(args.labels.as_deref(), &env.config.labels);
    let parsed = labels::parse_all(&full_labels).context("invalid label")?;
    let names = labels::names(&parsed);
    let name = match args.name.filter(|n| !n.is_empty()) {
        Some(name) => name,
        None => {
            let name = host::hostname();
            tracing::info!("runner name is empty, using the host name {name:?}");
            name
        }
    };

    let client = rpc::client(&instance, env.codec, env.compat)?;
    loop {
        match client.ping(&PingRequest { data: name.clone() }).await {
            Ok(_) => break,
            Err(e) => {
                tracing::error!("cannot ping the Forgejo instance: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::debug!("pinged the Forgejo instance");

    let request = RegisterRequest {
        name: name.clone(),
        token,
        version: env.compat.version().to_string(),
        agent_labels: names.clone(),
        labels: names,
        ephemeral: args.ephemeral,
        ..Default::default()
    };
    let response = client
        .register(&request)
        .await
        .context("cannot register the runner")?;
    let runner = response
        .runner
        .context("Register answered without a runner")?;
    if args.ephemeral && !runner.ephemeral {
        // Like forgejo-runner: the runner now exists on the server, but is not ephemeral.
        bail!("This Forgejo instance does not support ephemeral runners; requires Forgejo 15 or newer (runner {} was registered anyway)", runner.id);
    }
    let registration = Registration::new(
        runner.id,
        runner.uuid,
        runner.name,
        runner.token,
        instance,
        full_labels,
    );
    registration.save(&env.config.file)?;
    tracing::info!(
        "runner registered successfully (id {}, file {})",
        registration.id,
        env.config.file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_labels_win_then_flag_then_default() {
        let config = vec!["c:host".to_string()];
        assert_eq!(choose_labels(Some("a,b"), &config), config);
        assert_eq!(
            choose_labels(Some(" a , b:host "), &[]),
            vec!["a", "b:host"]
        );
        assert_eq!(choose_labels(None, &[]), vec![DEFAULT_REGISTER_LABEL]);
        assert_eq!(choose_labels(Some("  "), &[]), vec![DEFAULT_REGISTER_LABEL]);
    }
}
