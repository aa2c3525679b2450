//! `create-runner-file`: offline registration from a secret shared with
//! `forgejo-cli actions register --secret` (contract §2.1).

use anyhow::{bail, Context};
use runner_proto::ping::v1::PingRequest;
use runner_proto::runner::v1::DeclareRequest;

use super::Env;
use crate::cli::CreateRunnerFileArgs;
use crate::registration::Registration;
use crate::{host, labels, rpc};

/// The secret must be exactly 40 hexadecimal characters.
pub fn validate_secret(secret: &str) -> anyhow::Result<()> {
    if secret.len() != 40 {
        bail!(
            "the secret must be exactly 40 characters long, not {}",
            secret.len()
        );
    }
    if !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the secret must be a hexadecimal string");
    }
    Ok(())
}

/// The runner UUID Forgejo derives from the secret: its first 16 characters, taken as the
/// 16 bytes of a UUID.
pub fn uuid_from_secret(secret: &str) -> anyhow::Result<String> {
    let bytes = secret
        .as_bytes()
        .get(..16)
        .context("the secret is shorter than 16 characters")?;
    Ok(uuid::Uuid::from_slice(bytes)?.hyphenated().to_string())
}

pub async fn run(args: CreateRunnerFileArgs, env: &Env) -> anyhow::Result<()> {
    tracing::info!("creating runner file");
    validate_secret(&args.secret)?;
    let uuid = uuid_from_secret(&args.secret)?;
    let name = match args.name.filter(|n| !n.is_empty()) {
        Some(name) => name,
        None => {
            let name = host::hostname();
            tracing::info!("runner name is empty, using the host name {name:?}");
            name
        }
    };
    labels::parse_all(&env.config.labels).context("invalid label in runner.labels")?;

    let client = rpc::client(&args.instance, env.codec, env.compat)?;
    client
        .ping(&PingRequest { data: uuid.clone() })
        .await
        .with_context(|| format!("ping {} failed", args.instance))?;

    let registration = Registration::new(
        0,
        uuid,
        name,
        args.secret,
        args.instance,
        env.config.labels.clone(),
    );
    registration.save(&env.config.file)?;

    if args.connect {
        let names = labels::names(&labels::parse_all(&registration.labels)?);
        let client = client.with_credentials(registration.uuid.clone(), registration.token.clone());
        let request = DeclareRequest {
            version: env.compat.version().to_string(),
            labels: names,
        };
        match client.declare(&request).await {
            Ok(response) => {
                let runner = response.runner.unwrap_or_default();
                tracing::info!(
                    "connection successful: {}, with version: {}, with labels: {:?}",
                    runner.name,
                    runner.version,
                    runner.labels
                );
            }
            Err(e) if rpc::is_unimplemented(&e) => tracing::warn!(
                "cannot verify the connection: Declare is not implemented by this instance"
            ),
            Err(e) => return Err(e).context("Declare failed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rules() {
        assert!(validate_secret(&"a".repeat(40)).is_ok());
        assert!(validate_secret(&"a".repeat(39)).is_err());
        assert!(validate_secret(&"g".repeat(40)).is_err());
    }

    #[test]
    fn uuid_is_the_first_16_characters_as_bytes() {
        // "0123456789abcdef" as ASCII bytes 0x30 0x31 ... 0x66.
        let uuid = uuid_from_secret("0123456789abcdef0123456789abcdef01234567").unwrap();
        assert_eq!(uuid, "30313233-3435-3637-3839-616263646566");
    }
}
