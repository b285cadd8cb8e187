//! The stuck-chain watchdog: finds running chains whose last committed step
//! is older than the stall timeout and schedules their current step again.

use crate::model::ChainState;
use crate::ports::job_store::won;
use crate::ports::services::LifecycleServices;
use crate::worker::lifecycle::fail_chain;
use crate::worker::outcome::StepError;
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
}

/// Schedules the current step of every running chain that has made no
/// progress for `stall` (all running chains when `stall` is zero, which is
/// how the local runner resumes after a restart).
pub async fn sweep(
    svc: &impl LifecycleServices,
    stall: Duration,
) -> Result<SweepReport, StepError> {
    let now = crate::fhir::instant::unix_now();
    let mut report = SweepReport::default();
    crate::worker::lifecycle::promote_queued(svc).await?;
    for job in svc.jobs().active_jobs().await? {
        if job.status != crate::model::JobStatus::Running {
            continue;
        }
        report.jobs += 1;
        // A finisher that died before completing the job or starting its
        // waiting chains left that undone: do it now.
        if job.chains_remaining as usize <= job.referenced_types.len() {
            crate::worker::lifecycle::maybe_complete_job(svc, &job.id).await?;
        }
        for mut chain in svc.jobs().list_chains(&job.id).await? {
            if chain.state != ChainState::Running || now - chain.heartbeat < stall.as_secs() as i64
            {
                continue;
            }
            let current = chain.event();
            if svc.continuation().is_pending(&current).await {
                // Waiting for a worker (or running) is not a stall.
                continue;
            }
            if !stall.is_zero() && chain.restarts >= MAX_RESTARTS {
                let reason = format!(
                    "no progress after {} restarts by the watchdog",
                    chain.restarts
                );
                fail_chain(svc, &job, chain, &reason).await?;
                report.failed += 1;
                continue;
            }
            if !stall.is_zero() {
                chain.restarts += 1;
                chain.heartbeat = now;
                if !won(svc.chains().save_chain(&mut chain).await)? {
                    continue;
                }
            }
            if stall.is_zero() {
                tracing::info!(job_id = %job.id, chain = %chain.chain_id, step = chain.step, "resuming chain");
            } else {
                tracing::warn!(job_id = %job.id, chain = %chain.chain_id, step = chain.step, restarts = chain.restarts, "restarting stalled chain");
            }
            svc.continuation().schedule(chain.event()).await?;
            report.restarted += 1;
        }
    }
    Ok(report)
}
