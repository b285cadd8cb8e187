//! Why a fixture server could not start, and why a search is refused.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A fixture server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// The data directory could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The loading task panicked or was cancelled.
    #[error("loading fixture data: {0}")]
    LoadTask(#[from] tokio::task::JoinError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The bound socket has no local address.
    #[error("{0}")]
    LocalAddr(#[source] std::io::Error),
}

/// A file of the data directory could not be read or holds a line that is
/// not a resource the server can index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The directory or one of its files could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A line is not a JSON resource.
    #[error("{} line {line}: not a JSON resource", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why the line did not parse.
        source: serde_json::Error,
    },
    /// A resource has no `id`.
    #[error("{} line {line}: resource without id", path.display())]
    MissingId {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// `meta.lastUpdated` is not a FHIR instant.
    #[error("{} line {line}: meta.lastUpdated is not an instant", path.display())]
    BadLastUpdated {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The value found.
        value: String,
    },
}

/// A search the server refuses with a 400 OperationOutcome (the message is
/// its `diagnostics`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SearchError {
    /// `_count` or `_offset` is not a non-negative integer.
    #[error("{param} '{value}' is not a number")]
    NotANumber {
        /// The parameter.
        param: &'static str,
        /// Its value.
        value: String,
        /// Why it did not parse.
        source: std::num::ParseIntError,
    },
    /// `_summary` other than `count` or `false`.
    #[error("_summary={0} is not supported")]
    UnsupportedSummary(String),
    /// A `_lastUpdated` value that is not an instant.
    #[error("_lastUpdated value '{0}' is not an instant")]
    NotAnInstant(String),
    /// A `_lastUpdated` prefix other than `gt`, `ge`, `lt`, `le`, `eq`.
    #[error("_lastUpdated prefix '{0}' is not supported")]
    UnsupportedPrefix(String),
    /// A `_sort` other than `_id` or `_lastUpdated`.
    #[error("_sort={0} is not supported")]
    UnsupportedSort(String),
    /// A parameter the server does not know for this type.
    #[error("unknown search parameter '{name}' for {resource_type}")]
    UnknownParameter {
        /// The parameter.
        name: String,
        /// The searched type.
        resource_type: String,
    },
}
