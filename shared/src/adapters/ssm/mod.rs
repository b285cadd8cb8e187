//! Upstream credentials on AWS: the static bearer token and the SMART client
//! private key may live in SSM Parameter Store (SecureString, decrypted with
//! the function's role; a Secrets Manager secret is reachable through its
//! `/aws/reference/secretsmanager/<id>` parameter name). They are read once at
//! cold start and never logged.

use crate::adapters::fhir_server::upstream_auth::UpstreamAuth;
use aws_sdk_ssm::Client;

/// Reads one SecureString parameter.
async fn parameter(ssm: &Client, name: &str) -> Result<String, String> {
    let out = ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| {
            // The error names the parameter and the failure, never a value.
            format!(
                "cannot read SSM parameter {name}: {}",
                aws_sdk_ssm::error::DisplayErrorContext(e)
            )
        })?;
    out.parameter()
        .and_then(|p| p.value())
        .map(str::to_string)
        .ok_or_else(|| format!("SSM parameter {name} has no value"))
}

/// Upstream authentication from the variables `get` reads, where
/// `BULK_EXPORT_UPSTREAM_TOKEN_PARAMETER` names an SSM parameter holding the
/// static token and `BULK_EXPORT_UPSTREAM_PRIVATE_KEY_PARAMETER` one holding
/// the client-credentials private key (PEM); literal variables win.
pub async fn upstream_auth(
    ssm: &Client,
    get: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<UpstreamAuth, String> {
    let var = |k: &str| get(k).filter(|v| !v.is_empty());
    let token = match (
        var("BULK_EXPORT_UPSTREAM_TOKEN"),
        var("BULK_EXPORT_UPSTREAM_TOKEN_PARAMETER"),
    ) {
        (Some(t), _) => Some(t),
        (None, Some(name)) => Some(parameter(ssm, &name).await?),
        (None, None) => None,
    };
    let key = match (
        var("BULK_EXPORT_UPSTREAM_PRIVATE_KEY_FILE"),
        var("BULK_EXPORT_UPSTREAM_PRIVATE_KEY_PARAMETER"),
    ) {
        (None, Some(name)) => Some(parameter(ssm, &name).await?.into_bytes()),
        _ => None,
    };
    let lookup = |k: &str| {
        if k == "BULK_EXPORT_UPSTREAM_TOKEN" {
            token.clone()
        } else {
            get(k)
        }
    };
    UpstreamAuth::from_settings(&lookup, &|| key.clone().map(Ok))
}
