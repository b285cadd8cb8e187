//! The watchdog's scheduled tick: failed steps from the on-failure
//! destination first, then the stall sweep.

use crate::adapters::sqs::FailedStepQueue;
use crate::ports::services::ExportServices;
use crate::worker::redelivery::{DrainError, DrainReport, drain};
use crate::worker::watchdog::{SweepReport, sweep};
use serde::Serialize;
use std::time::Duration;

/// What one tick did.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickReport {
    /// Running jobs looked at.
    pub jobs: usize,
    /// Chains restarted.
    pub restarted: usize,
    /// Failed steps delivered again.
    pub redelivered: usize,
    /// Failed-step records of steps their chain had moved past.
    pub stale_failed_steps: usize,
}

/// Handles one watchdog tick.
pub async fn watchdog_handler(
    svc: &ExportServices,
    failed: Option<&FailedStepQueue>,
) -> Result<(SweepReport, DrainReport), DrainError> {
    let stall = std::env::var("BULK_EXPORT_STALL_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    // Failed steps first: delivered again now, they are not stalls later.
    let drained = match failed {
        Some(q) => drain(svc, q).await?,
        None => DrainReport::default(),
    };
    Ok((sweep(svc, Duration::from_secs(stall)).await?, drained))
}

/// One tick, summarised for the function's response.
pub async fn tick(
    svc: &ExportServices,
    failed: Option<&FailedStepQueue>,
) -> Result<TickReport, DrainError> {
    let (report, drained) = watchdog_handler(svc, failed).await?;
    Ok(TickReport {
        jobs: report.jobs,
        restarted: report.restarted,
        redelivered: drained.redelivered,
        stale_failed_steps: drained.stale,
    })
}
