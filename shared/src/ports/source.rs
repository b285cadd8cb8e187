//! The source port: where exported resources come from, one page at a time.

use crate::model::{PatientScope, TypeFilter};

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
    /// A response body over the reader's limit (bytes), never read whole.
    #[error("source response larger than {0} bytes")]
    TooLarge(usize),
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
    /// Patient-compartment restriction (Patient- and Group-level exports).
    pub scope: &'a PatientScope,
    /// Member patients whose compartments this chain covers (FHIR-server
    /// source, which queries the upstream in batches of patients).
    pub batch: Option<&'a [String]>,
    /// The caller will certainly read the next page if this page's body is
    /// under this many bytes (0: no promise), so a source may request it as
    /// soon as it knows the link.
    pub read_ahead_below: usize,
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
    /// The upstream was asked for ascending id order and pages follow it
    /// (ids compared as bytes), so a page re-read at its cursor resumes
    /// after the last exported id whatever was deleted since.
    pub ordered_by_id: bool,
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
    /// Reads one resource (compact JSON), `None` if it does not exist.
    async fn read_resource(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, SourceError>;
    /// The resources of a type with these ids (at most once each; ids that
    /// do not exist are left out), as one page with no `next`.
    async fn fetch_by_ids(&self, resource_type: &str, ids: &[String]) -> Result<Page, SourceError>;
    /// Ids of every Patient (for Patient-level exports from sources that
    /// query in batches of patients).
    async fn patient_ids(&self) -> Result<Vec<String>, SourceError>;
    /// True if `_typeFilter` queries can be evaluated by this source.
    fn supports_type_filter(&self) -> bool;
    /// True if compartment exports run one chain per batch of patients.
    fn queries_by_patient_batch(&self) -> bool;
    /// True if `_lastUpdated` ranges are cheap to count and query separately
    /// (a search index), so large types can be split into parallel chains.
    fn supports_time_partitions(&self) -> bool {
        false
    }
}
