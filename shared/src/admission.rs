//! Admission control: at most `max_running_jobs` exports run at once (and
//! `max_running_per_client` per client); further kick-offs wait queued, in
//! kick-off order, up to `max_queued_jobs`, after which they get 429.

use crate::job::{Job, JobStatus};
use crate::job_store::StoreError;
use crate::outcome::ApiError;
use crate::services::ExportServices;

/// Whether a new job may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start it.
    Run,
    /// Queue it.
    Queue,
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::Unavailable(format!("job store unavailable: {e}"))
}

/// Decides whether `owner`'s new export runs now, waits, or is refused.
pub async fn admit(svc: &ExportServices, owner: &str) -> Result<Admission, ApiError> {
    let active = svc.store.active_jobs().await.map_err(unavailable)?;
    let queued = active
        .iter()
        .filter(|j| j.status == JobStatus::Queued)
        .count();
    let running: Vec<&Job> = active
        .iter()
        .filter(|j| j.status == JobStatus::Running)
        .collect();
    let mine = running.iter().filter(|j| j.owner == owner).count();
    let cfg = &svc.config;
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
pub async fn queue_position(svc: &ExportServices, job: &Job) -> Result<usize, StoreError> {
    let active = svc.store.active_jobs().await?;
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

/// Starts queued jobs while slots are free, oldest first. Safe to call from
/// anywhere at any time: each start is a conditional status change.
pub async fn promote_queued(svc: &ExportServices) -> Result<usize, StoreError> {
    let active = svc.store.active_jobs().await?;
    let mut running: Vec<String> = active
        .iter()
        .filter(|j| j.status == JobStatus::Running)
        .map(|j| j.owner.clone())
        .collect();
    let mut queued: Vec<&Job> = active
        .iter()
        .filter(|j| j.status == JobStatus::Queued)
        .collect();
    queued.sort_by(|a, b| (&a.transaction_time, &a.id).cmp(&(&b.transaction_time, &b.id)));
    let mut started = 0;
    for job in queued {
        if running.len() >= svc.config.max_running_jobs {
            break;
        }
        if running.iter().filter(|o| **o == job.owner).count() >= svc.config.max_running_per_client
        {
            continue;
        }
        match svc
            .store
            .set_job_status(job, JobStatus::Running, None)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
        for chain in svc.store.list_chains(&job.id).await? {
            if chain.state != crate::job::ChainState::Running {
                continue;
            }
            let ev = chain.event();
            if let Err(e) = svc.continuation.schedule(ev).await {
                tracing::error!(job_id = %job.id, error = %e, "could not start a queued chain; the watchdog will");
            }
        }
        tracing::info!(job_id = %job.id, "queued export started");
        running.push(job.owner.clone());
        started += 1;
    }
    Ok(started)
}
