//! The source query of one chain step, owned so the next page can be fetched
//! on another task while the current one is copied into the part buffer.

use crate::model::PatientScope;
use crate::model::TypeFilter;
use crate::ports::source::{Page, PageRequest, Source, SourceError};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

/// Everything a step's page requests share but the cursor.
#[derive(Clone)]
pub struct PageQuery {
    /// The source read.
    pub source: Arc<dyn Source>,
    /// Resource type.
    pub resource_type: Arc<str>,
    /// `_lastUpdated` window `(since, until]`.
    pub window: (Option<OffsetDateTime>, OffsetDateTime),
    /// `_typeFilter` queries of the type.
    pub filters: Arc<[TypeFilter]>,
    /// Resources per page.
    pub page_size: usize,
    /// Compartment restriction.
    pub scope: Arc<PatientScope>,
    /// Member batch of a batched compartment chain.
    pub batch: Option<Arc<[String]>>,
}

/// A page being fetched in the background; dropping it stops the fetch.
pub struct Prefetch(JoinHandle<Result<Page, SourceError>>);

impl PageQuery {
    /// The request for the page at `cursor`; the caller will read the next
    /// page if this one's body is under `read_ahead_below` bytes.
    pub fn request<'a>(
        &'a self,
        cursor: Option<&'a str>,
        read_ahead_below: usize,
    ) -> PageRequest<'a> {
        PageRequest {
            resource_type: &self.resource_type,
            cursor,
            since: self.window.0,
            until: self.window.1,
            type_filters: &self.filters,
            page_size: self.page_size,
            scope: &self.scope,
            batch: self.batch.as_deref(),
            read_ahead_below,
        }
    }

    /// Fetches the page at `cursor`.
    pub async fn fetch(
        &self,
        cursor: Option<&str>,
        read_ahead_below: usize,
    ) -> Result<Page, SourceError> {
        self.source
            .fetch_page(&self.request(cursor, read_ahead_below))
            .await
    }

    /// Starts fetching the page at `cursor` on its own task.
    pub fn spawn(&self, cursor: String, read_ahead_below: usize) -> Prefetch {
        let query = self.clone();
        Prefetch(tokio::spawn(async move {
            query.fetch(Some(&cursor), read_ahead_below).await
        }))
    }
}

impl Prefetch {
    /// The fetched page.
    pub async fn page(mut self) -> Result<Page, SourceError> {
        (&mut self.0)
            .await
            .unwrap_or_else(|e| Err(SourceError::Exhausted(format!("page fetch task: {e}"))))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}
