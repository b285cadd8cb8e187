//! The registry of active jobs: one item (`pk = ACTIVE`, `sk = JOBS`) whose
//! string set names every job that may be queued, running or cancelled with
//! chains left, as `<created unix seconds>#<job id>`. Kick-off adds a job
//! before its job item exists, so an active job is always listed; readers
//! read the listed jobs consistently and drop the entries of finished jobs
//! (terminal states never become active again) and of jobs whose item has
//! been gone for longer than any kick-off takes (expired). This replaces a
//! Scan of the whole table, whose cost grew with every retained item, on
//! every kick-off, queued poll and watchdog tick. The set stays small: at
//! most the running and queued limits (64 + 256 by default, ~45 bytes each).
//! The item itself carries no TTL: it is the one permanent item.

use super::Item;
use crate::model::{Job, JobStatus};

pub const REGISTRY_PK: &str = "ACTIVE";
pub const REGISTRY_SK: &str = "JOBS";
pub const IDS_ATTR: &str = "jobs";
/// An entry whose job item is missing is dropped only after this long:
/// kick-off writes the job item well within API Gateway's 29 s.
pub const MISSING_GRACE_SECS: i64 = 3_600;

pub fn entry(job: &Job, created: i64) -> String {
    format!("{created}#{}", job.id)
}

/// The entries of the registry item.
pub fn entries(item: Option<&Item>) -> Vec<String> {
    item.and_then(|i| i.get(IDS_ATTR))
        .and_then(|v| v.as_ss().ok())
        .cloned()
        .unwrap_or_default()
}

/// (created unix seconds, job id) of an entry.
pub fn parse(entry: &str) -> Option<(i64, &str)> {
    let (t, id) = entry.split_once('#')?;
    Some((t.parse().ok()?, id))
}

/// Whether a job being created with `chains` chains is active.
pub fn is_active_when_created(job: &Job, chains: usize) -> bool {
    match job.status {
        JobStatus::Queued | JobStatus::Running => true,
        JobStatus::Cancelled => chains > 0,
        _ => false,
    }
}

/// Whether a job still needs its chains run or its clean-up finished.
pub fn is_active(job: &Job) -> bool {
    match job.status {
        JobStatus::Queued | JobStatus::Running => true,
        JobStatus::Cancelled => job.chains_remaining > 0,
        _ => false,
    }
}
