//! Admission control: at most `max_running_jobs` exports run at once (and
//! `max_running_per_client` per client); further kick-offs wait queued, in
//! kick-off order, up to `max_queued_jobs`, after which they get 429.

use crate::fhir::outcome::ApiError;
use crate::model::{Job, JobStatus};
use crate::ports::job_store::StoreError;
use crate::ports::services::{ReadJobs, Settings};

/// Whether a new job may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start it.
    Run,
    /// Queue it.
    Queue,
}

/// Decides whether `owner`'s new export runs now, waits, or is refused.
pub async fn admit(svc: &(impl ReadJobs + Settings), owner: &str) -> Result<Admission, ApiError> {
    let active = svc.jobs().active_jobs().await?;
    let queued = active
        .iter()
        .filter(|j| j.status == JobStatus::Queued)
        .count();
    let running: Vec<&Job> = active
        .iter()
        .filter(|j| j.status == JobStatus::Running)
        .collect();
    let mine = running.iter().filter(|j| j.owner == owner).count();
    let cfg = &svc.config();
    if running.len() < cfg.max_running_jobs && mine < cfg.max_running_per_client && queued == 0 {
        return Ok(Admission::Run);
    }
    if queued >= cfg.max_queued_jobs {
        return Err(ApiError::TooManyRequests {
            message: format!(
                "{} exports are running and {queued} are queued; retry later",
                running.len()
            ),
            retry_after: 30,
        });
    }
    Ok(Admission::Queue)
}

/// The 1-based position of a queued job, by kick-off order.
pub async fn queue_position(svc: &impl ReadJobs, job: &Job) -> Result<usize, StoreError> {
    let active = svc.jobs().active_jobs().await?;
    let ahead = active
        .iter()
        .filter(|j| {
            j.status == JobStatus::Queued
                && (j.transaction_time.as_str(), j.id.as_str())
                    < (job.transaction_time.as_str(), job.id.as_str())
        })
        .count();
    Ok(ahead + 1)
}
