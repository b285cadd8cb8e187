//! Search pages requested before a step asks for them. When a page's body
//! arrives, its `next` link is often readable before the page is framed (FHIR
//! servers write `link` before `entry`); if the step will certainly go on to
//! that page, asking for it right away keeps the upstream as busy as a bare
//! client paging on its own. Entries are keyed by URL and taken once. A run
//! of pages read ahead for one reader (a lineage) has at most one page not
//! yet taken, so read-ahead holds at most one extra page per chain.

use crate::fhir::framing::FramedPage;
use crate::ports::source::SourceError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Most pages in flight ahead across all chains of a process.
const MAX_PAGES: usize = 64;
/// A page nobody took within this long is dropped (its step went elsewhere).
const MAX_AGE: Duration = Duration::from_secs(120);

/// A search page's fetch running ahead of its step.
pub type PageTask = JoinHandle<Result<FramedPage, SourceError>>;

/// Pages of one reader started ahead and not yet taken.
pub type Lineage = std::sync::Arc<AtomicUsize>;

/// A page started ahead.
struct Entry {
    started: Instant,
    task: PageTask,
    lineage: Lineage,
}

/// Pages fetched ahead, by URL.
#[derive(Default)]
pub struct ReadAhead {
    pages: Mutex<HashMap<String, Entry>>,
}

impl ReadAhead {
    /// The fetch of `url` started ahead, if any.
    pub fn take(&self, url: &str) -> Option<PageTask> {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages.remove(url).map(|e| {
            e.lineage.fetch_sub(1, Ordering::SeqCst);
            e.task
        })
    }

    /// Starts `fetch` for `url`, the next page of `lineage`, unless that
    /// reader has not taken its last page yet, the page is already running,
    /// or too many are.
    pub fn start(&self, url: String, lineage: &Lineage, fetch: impl FnOnce() -> PageTask) {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages.retain(|_, e| {
            let keep = e.started.elapsed() < MAX_AGE;
            if !keep {
                e.task.abort();
            }
            keep
        });
        if lineage.load(Ordering::SeqCst) == 0
            && pages.len() < MAX_PAGES
            && !pages.contains_key(&url)
        {
            lineage.fetch_add(1, Ordering::SeqCst);
            pages.insert(
                url,
                Entry {
                    started: Instant::now(),
                    task: fetch(),
                    lineage: lineage.clone(),
                },
            );
        }
    }
}
