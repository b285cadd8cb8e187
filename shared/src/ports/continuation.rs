//! The continuation port: how a chain's next step gets run.

use crate::model::StepEvent;
use async_trait::async_trait;

/// A step could not be handed off.
#[derive(Debug, thiserror::Error)]
#[error("continuation failed: {0}")]
pub struct ContinuationError(pub String);

/// Schedules chain steps.
#[async_trait]
pub trait Continuation: Send + Sync {
    /// Arranges for `event` to run once (at least once) soon.
    async fn schedule(&self, event: StepEvent) -> Result<(), ContinuationError>;

    /// True if `event` is known to be waiting for a worker or running, so
    /// the watchdog does not count queueing as a stall. Lambda's async queue
    /// is opaque, so by default nothing is known to be pending.
    async fn is_pending(&self, _event: &StepEvent) -> bool {
        false
    }
}
