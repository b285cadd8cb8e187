//! The composition root: settings and backends into one [`ExportServices`]
//! per process. The Lambda functions build it from their environment
//! ([`aws::services_from_env`]); the local runner builds it against embedded
//! servers; both parse the source setting with [`SourceSpec`].
//!
//! [`ExportServices`]: crate::ports::services::ExportServices

#[cfg(feature = "lambda")]
pub mod aws;
pub mod heap;
mod source;

pub use source::SourceSpec;

/// Why the services could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
    /// A required environment variable is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// The source setting cannot be used.
    #[error("source: {0}")]
    Source(String),
    /// Upstream credentials could not be read.
    #[error("upstream credentials: {0}")]
    Credentials(String),
}
