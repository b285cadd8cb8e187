//! The stuck-chain watchdog: finds running chains whose last committed step
//! is older than the stall timeout and schedules their current step again.

use crate::model::{Chain, ChainState, Job};
use crate::ports::job_store::won;
use crate::ports::services::LifecycleServices;
use crate::worker::lifecycle::fail_chain;
use crate::worker::outcome::{StepError, StepOutcome};
use std::time::Duration;

/// Restarts after which a stalled chain is failed instead.
pub const MAX_RESTARTS: u32 = 3;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Active jobs examined.
    pub jobs: usize,
    /// Chains whose current step was scheduled again.
    pub restarted: usize,
    /// Chains failed after stalling more than [`MAX_RESTARTS`] times.
    pub failed: usize,
    /// Jobs or chains the sweep could not handle this time (logged; the
    /// next sweep tries them again, and every other one is still handled).
    pub errors: usize,
}

/// Schedules the current step of every running chain that has made no
/// progress for `stall` (all running chains when `stall` is zero, which is
/// how the local runner resumes after a restart). One job or chain that
/// fails to be handled never stops the sweep of the others.
pub async fn sweep(
    svc: &impl LifecycleServices,
    stall: Duration,
) -> Result<SweepReport, StepError> {
    let now = crate::fhir::instant::unix_now();
    let mut report = SweepReport::default();
    if let Err(e) = crate::worker::lifecycle::promote_queued(svc).await {
        tracing::error!(error = %e, "watchdog could not promote queued jobs");
        report.errors += 1;
    }
    for job in svc.jobs().active_jobs().await? {
        if job.status == crate::model::JobStatus::Cancelled {
            if let Err(e) = end_cancelled_chains(svc, &job, stall, now).await {
                tracing::error!(job_id = %job.id, error = %e, "watchdog could not end a cancelled export's chains");
                report.errors += 1;
            }
            continue;
        }
        if job.status != crate::model::JobStatus::Running {
            continue;
        }
        report.jobs += 1;
        if let Err(e) = sweep_job(svc, &job, stall, now, &mut report).await {
            tracing::error!(job_id = %job.id, error = %e, "watchdog could not check a job");
            report.errors += 1;
        }
    }
    Ok(report)
}

/// Ends the chains of a cancelled job that no step will end (their step
/// was lost, or they were waiting), so the last one runs the cancel's final
/// clean-up: uploads aborted, files written after the cancel deleted.
async fn end_cancelled_chains(
    svc: &impl LifecycleServices,
    job: &Job,
    stall: Duration,
    now: i64,
) -> Result<(), StepError> {
    for chain in svc.jobs().list_chains(&job.id).await? {
        if chain.state.is_finished()
            || now - chain.heartbeat < stall.as_secs() as i64
            || svc.continuation().is_pending(&chain.event()).await
        {
            continue;
        }
        crate::worker::lifecycle::cancel_chain(svc, job, chain).await?;
    }
    Ok(())
}

/// Checks one running job's chains.
async fn sweep_job(
    svc: &impl LifecycleServices,
    job: &Job,
    stall: Duration,
    now: i64,
    report: &mut SweepReport,
) -> Result<(), StepError> {
    // A finisher that died before completing the job or starting its
    // waiting chains left that undone: do it now.
    if job.chains_remaining as usize <= job.referenced_types.len() {
        crate::worker::lifecycle::maybe_complete_job(svc, &job.id).await?;
    }
    let chains = svc.jobs().list_chains(&job.id).await?;
    if !chains.is_empty() && chains.iter().all(|c| c.state.is_finished()) {
        tracing::warn!(job_id = %job.id, remaining = job.chains_remaining, "every chain ended but the job is still running; completing it");
        return crate::worker::lifecycle::complete_listed_job(svc, &job.id).await;
    }
    for chain in chains {
        if chain.state != ChainState::Running || now - chain.heartbeat < stall.as_secs() as i64 {
            continue;
        }
        let id = chain.chain_id.clone();
        if let Err(e) = restart_chain(svc, job, chain, stall, now, report).await {
            tracing::error!(job_id = %job.id, chain = %id, error = %e, "watchdog could not restart a chain");
            report.errors += 1;
        }
    }
    Ok(())
}

/// Schedules a stalled chain's step again, or fails it after too many
/// restarts without progress.
async fn restart_chain(
    svc: &impl LifecycleServices,
    job: &Job,
    mut chain: Chain,
    stall: Duration,
    now: i64,
    report: &mut SweepReport,
) -> Result<(), StepError> {
    let current = chain.event();
    if svc.continuation().is_pending(&current).await {
        // Waiting for a worker (or running) is not a stall.
        return Ok(());
    }
    if !stall.is_zero() && chain.restarts >= MAX_RESTARTS {
        let reason = format!(
            "no progress after {} restarts by the watchdog",
            chain.restarts
        );
        if fail_chain(svc, job, chain, &reason).await? != StepOutcome::Stale {
            report.failed += 1;
        }
        return Ok(());
    }
    if !stall.is_zero() {
        chain.restarts += 1;
        chain.heartbeat = now;
        if !won(svc.chains().save_chain(&mut chain).await)? {
            return Ok(());
        }
        tracing::warn!(job_id = %job.id, chain = %chain.chain_id, step = chain.step, restarts = chain.restarts, "restarting stalled chain");
    } else {
        tracing::info!(job_id = %job.id, chain = %chain.chain_id, step = chain.step, "resuming chain");
    }
    svc.continuation().schedule(chain.event()).await?;
    report.restarted += 1;
    Ok(())
}
