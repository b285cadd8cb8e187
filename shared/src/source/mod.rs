//! The source port: where exported resources come from, one page at a time.

pub mod fhir_server;
pub mod ndjson;

use crate::export_request::TypeFilter;
use async_trait::async_trait;
use time::OffsetDateTime;

/// Why a source could not deliver a page.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Failed after the bounded retries (throttling, 5xx, timeouts, bad bodies).
    #[error("source unavailable after retries: {0}")]
    Exhausted(String),
    /// A permanent failure (4xx, a body that is not FHIR, a looping `next` link).
    #[error("source error: {0}")]
    Permanent(String),
}

/// What one page request asks for.
#[derive(Debug, Clone)]
pub struct PageRequest<'a> {
    /// Resource type to read.
    pub resource_type: &'a str,
    /// Cursor returned by the previous page; `None` for the first page.
    pub cursor: Option<&'a str>,
    /// Only resources with `meta.lastUpdated` after this.
    pub since: Option<OffsetDateTime>,
    /// Only resources with `meta.lastUpdated` at or before this.
    pub until: OffsetDateTime,
    /// `_typeFilter` queries for this type (OR-combined); empty for none.
    pub type_filters: &'a [TypeFilter],
    /// Resources per page.
    pub page_size: usize,
}

/// One page of resources, already framed as NDJSON (one compact resource per
/// `\n`-terminated line, every line of the requested type).
#[derive(Debug, Default)]
pub struct Page {
    /// NDJSON bytes.
    pub ndjson: Vec<u8>,
    /// Lines in `ndjson`.
    pub count: u64,
    /// Cursor of the next page; `None` when the type is exhausted.
    pub next: Option<String>,
}

/// A source of FHIR resources.
#[async_trait]
pub trait Source: Send + Sync {
    /// Resource types a system-level export without `_type` covers.
    async fn resource_types(&self) -> Result<Vec<String>, SourceError>;
    /// Fetches one page.
    async fn fetch_page(&self, req: &PageRequest<'_>) -> Result<Page, SourceError>;
    /// Expected number of resources for a type, if cheaply known.
    async fn estimate(&self, req: &PageRequest<'_>) -> Result<Option<u64>, SourceError>;
    /// True if the Group exists.
    async fn group_exists(&self, id: &str) -> Result<bool, SourceError>;
    /// True if `_typeFilter` queries can be evaluated by this source.
    fn supports_type_filter(&self) -> bool;
}
