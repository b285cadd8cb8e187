//! The invocation's deadline: work that waits on the source (a page fetch,
//! a count probe) never outlives it, so an invocation always ends by handing
//! its committed step over, not by being killed with only a stale retry left.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Time kept in reserve before a Lambda deadline to upload and commit.
pub(crate) const DEADLINE_RESERVE: Duration = Duration::from_secs(20);

/// Runs `work` until the reserve before `deadline` begins; `None` if it did
/// not finish by then (no deadline: runs to the end).
pub(crate) async fn before_deadline<T>(
    deadline: Option<Instant>,
    work: impl Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(d) => {
            let cutoff = d.checked_sub(DEADLINE_RESERVE).unwrap_or(d);
            tokio::time::timeout_at(cutoff, work).await.ok()
        }
        None => Some(work.await),
    }
}
