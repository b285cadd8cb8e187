//! Credentials for the upstream FHIR server: none, a static bearer token, or
//! SMART Backend Services client credentials (`private_key_jwt`, RS384 or
//! ES384), with the access token cached until shortly before it expires.

use crate::ports::source::SourceError;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How requests to the upstream authenticate.
pub enum UpstreamAuth {
    /// No `Authorization` header.
    None,
    /// A static bearer token.
    Bearer(String),
    /// SMART Backend Services client credentials.
    ClientCredentials(Box<ClientCredentials>),
}

/// A SMART Backend Services client.
pub struct ClientCredentials {
    token_url: String,
    client_id: String,
    scope: String,
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
    cached: Mutex<Option<(String, Instant)>>,
}

/// Seconds before expiry at which a cached token is renewed.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

impl ClientCredentials {
    /// A client signing its assertions with the PEM private key (RSA → RS384, EC → ES384).
    pub fn new(
        token_url: &str,
        client_id: &str,
        scope: &str,
        pem: &[u8],
        kid: Option<String>,
    ) -> Result<Self, String> {
        let (key, alg) = match EncodingKey::from_rsa_pem(pem) {
            Ok(k) => (k, Algorithm::RS384),
            Err(_) => (
                EncodingKey::from_ec_pem(pem).map_err(|_| {
                    "the upstream private key is not an RSA or EC PEM key".to_string()
                })?,
                Algorithm::ES384,
            ),
        };
        Ok(Self {
            token_url: token_url.to_string(),
            client_id: client_id.to_string(),
            scope: scope.to_string(),
            key,
            alg,
            kid,
            cached: Mutex::new(None),
        })
    }

    /// A valid access token, from the cache or the token endpoint.
    pub async fn token(&self, http: &reqwest::Client) -> Result<String, SourceError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let (token, ttl) = self.fetch(http).await?;
        let renew_at = Instant::now() + ttl.saturating_sub(RENEW_MARGIN).max(ttl / 2);
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }

    /// Forgets the cached token (after the upstream rejected it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<(String, Duration), SourceError> {
        let mut jti = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut jti);
        let now = crate::fhir::instant::unix_now().max(0) as u64;
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + 300,
            "iat": now,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        });
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|_| SourceError::Permanent("could not sign the client assertion".into()))?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.scope.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let resp = http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|_| SourceError::Exhausted("token endpoint unreachable".into()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(SourceError::Permanent(format!(
                "token endpoint answered {}",
                status.as_u16()
            )));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|_| SourceError::Permanent("token endpoint answered no JSON".into()))?;
        let token = body["access_token"].as_str().ok_or_else(|| {
            SourceError::Permanent("token endpoint answered no access_token".into())
        })?;
        let ttl = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300));
        Ok((token.to_string(), ttl))
    }
}

/// Where the upstream's private key comes from when it is not a file.
pub type KeySource<'a> = &'a dyn Fn() -> Option<Result<Vec<u8>, String>>;

impl UpstreamAuth {
    /// Reads `BULK_EXPORT_UPSTREAM_TOKEN`, or the client-credentials set
    /// `BULK_EXPORT_UPSTREAM_TOKEN_URL`, `_CLIENT_ID`, `_PRIVATE_KEY_FILE`
    /// (PEM), `_SCOPE` (default `system/*.read`) and `_KID`.
    pub fn from_env() -> Result<Self, String> {
        Self::from_settings(&|k| std::env::var(k).ok(), &|| None)
    }

    /// Like [`UpstreamAuth::from_env`] over any variable lookup; `key` supplies
    /// the private key (PEM) when `BULK_EXPORT_UPSTREAM_PRIVATE_KEY_FILE` is
    /// not set (on AWS: from SSM Parameter Store).
    pub fn from_settings(
        get: &dyn Fn(&str) -> Option<String>,
        key: KeySource<'_>,
    ) -> Result<Self, String> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        if let Some(token_url) = var("BULK_EXPORT_UPSTREAM_TOKEN_URL") {
            let client_id = var("BULK_EXPORT_UPSTREAM_CLIENT_ID")
                .ok_or("BULK_EXPORT_UPSTREAM_CLIENT_ID is not set")?;
            let pem = match var("BULK_EXPORT_UPSTREAM_PRIVATE_KEY_FILE") {
                Some(key_file) => std::fs::read(&key_file)
                    .map_err(|e| format!("cannot read the upstream private key: {}", e.kind()))?,
                None => key().ok_or(
                    "BULK_EXPORT_UPSTREAM_PRIVATE_KEY_FILE (or _PRIVATE_KEY_PARAMETER) is not set",
                )??,
            };
            let scope = var("BULK_EXPORT_UPSTREAM_SCOPE").unwrap_or_else(|| "system/*.read".into());
            let cc = ClientCredentials::new(
                &token_url,
                &client_id,
                &scope,
                &pem,
                var("BULK_EXPORT_UPSTREAM_KID"),
            )?;
            return Ok(UpstreamAuth::ClientCredentials(Box::new(cc)));
        }
        Ok(match var("BULK_EXPORT_UPSTREAM_TOKEN") {
            Some(t) => UpstreamAuth::Bearer(t),
            None => UpstreamAuth::None,
        })
    }
}
