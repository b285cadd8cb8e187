//! Search pages requested before a step asks for them. When a page's body
//! arrives, its `next` link is often readable before the page is framed (FHIR
//! servers write `link` before `entry`); if the step will certainly go on to
//! that page, asking for it right away keeps the upstream as busy as a bare
//! client paging on its own. Entries are keyed by URL and taken once.

use super::SourceError;
use crate::ndjson_page::FramedPage;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Most pages in flight ahead across all chains of a process.
const MAX_PAGES: usize = 64;
/// A page nobody took within this long is dropped (its step went elsewhere).
const MAX_AGE: Duration = Duration::from_secs(120);

/// A search page's fetch running ahead of its step.
pub type PageTask = JoinHandle<Result<FramedPage, SourceError>>;

/// Pages fetched ahead, by URL.
#[derive(Default)]
pub struct ReadAhead {
    pages: Mutex<HashMap<String, (Instant, PageTask)>>,
}

impl ReadAhead {
    /// The fetch of `url` started ahead, if any.
    pub fn take(&self, url: &str) -> Option<PageTask> {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages.remove(url).map(|(_, task)| task)
    }

    /// Starts `fetch` for `url` unless it is already running or too many are.
    pub fn start(&self, url: String, fetch: impl FnOnce() -> PageTask) {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages.retain(|_, (started, task)| {
            let keep = started.elapsed() < MAX_AGE;
            if !keep {
                task.abort();
            }
            keep
        });
        if pages.len() < MAX_PAGES && !pages.contains_key(&url) {
            pages.insert(url, (Instant::now(), fetch()));
        }
    }
}
