//! Which source an export reads, from one setting (`BULK_EXPORT_SOURCE`,
//! the runner's `--source`), parsed by one rule for Lambda and the runner.

use crate::adapters::fhir_server::upstream_auth::UpstreamAuth;
use crate::adapters::fhir_server::{FhirServerSource, RetryPolicy};
use crate::adapters::ndjson::NdjsonSource;
use crate::adapters::ndjson::location::S3Prefix;
use crate::compose::ComposeError;
use crate::ports::source::Source;
use std::path::PathBuf;
use std::sync::Arc;

/// Where resources come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A directory of NDJSON files (`ndjson:<dir>`).
    Ndjson(PathBuf),
    /// NDJSON objects under an `s3://bucket/prefix`.
    S3(String),
    /// A FHIR server base URL (`http(s)://…`), with an optional static token.
    Fhir {
        /// Base URL.
        base: String,
        /// Bearer token for the upstream.
        token: Option<String>,
    },
}

impl SourceSpec {
    /// Parses `ndjson:<dir>`, `s3://bucket/prefix` or an `http(s)://` URL; a
    /// FHIR server's static token comes from `BULK_EXPORT_UPSTREAM_TOKEN`.
    pub fn parse(s: &str) -> Result<Self, ComposeError> {
        if let Some(dir) = s.strip_prefix("ndjson:") {
            Ok(SourceSpec::Ndjson(PathBuf::from(dir)))
        } else if s.starts_with("s3://") {
            Ok(SourceSpec::S3(s.to_string()))
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(SourceSpec::Fhir {
                base: s.to_string(),
                token: std::env::var("BULK_EXPORT_UPSTREAM_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            })
        } else {
            Err(ComposeError::Source(format!(
                "source '{s}' must be ndjson:<dir>, s3://bucket/prefix or an http(s):// FHIR base URL"
            )))
        }
    }

    /// The source, reading S3 through `s3` and authenticating to a FHIR
    /// server with `auth` when it is not [`UpstreamAuth::None`].
    pub fn build(
        &self,
        s3: &aws_sdk_s3::Client,
        auth: UpstreamAuth,
    ) -> Result<Arc<dyn Source>, ComposeError> {
        Ok(match self {
            SourceSpec::Ndjson(dir) => Arc::new(NdjsonSource::new(dir)),
            SourceSpec::S3(url) => Arc::new(NdjsonSource::s3(
                S3Prefix::parse(s3.clone(), url).map_err(ComposeError::Source)?,
            )),
            SourceSpec::Fhir { base, token } => {
                let source = FhirServerSource::new(base, token.clone(), RetryPolicy::default())
                    .map_err(|e| ComposeError::Source(e.to_string()))?;
                match auth {
                    UpstreamAuth::None => Arc::new(source),
                    auth => Arc::new(source.with_auth(auth)),
                }
            }
        })
    }
}
