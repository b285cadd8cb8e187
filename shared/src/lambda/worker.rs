//! The chunk-worker's event (one step of one chain) and its failures as
//! Lambda error types, so retries and the on-failure destination name the
//! kind of failure.

use crate::model::StepEvent;
use crate::ports::services::ExportServices;
use crate::worker::outcome::StepError;
use crate::worker::step::run_step;
use lambda_runtime::Diagnostic;
use std::time::Duration;

/// A step failure reported to Lambda: its `errorType` names the kind, so
/// metrics and the destination records tell a throttled store from a lost
/// upload; the message carries no resource content.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StepFailure(#[from] pub StepError);

impl From<StepFailure> for Diagnostic {
    fn from(f: StepFailure) -> Self {
        let error_type = match &f.0 {
            StepError::Store(_) => "JobStoreUnavailable",
            StepError::Objects(_) => "ObjectStoreUnavailable",
            StepError::Continuation(_) => "ContinuationFailed",
            StepError::UploadLost(_) => "UploadLost",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: f.to_string(),
        }
    }
}

/// Handles one chunk-worker invocation; `deadline_ms` is the Lambda deadline
/// in epoch milliseconds.
pub async fn worker_handler(
    svc: &ExportServices,
    event: StepEvent,
    deadline_ms: u64,
) -> Result<String, StepFailure> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    let outcome = run_step(svc, &event, Some(deadline)).await?;
    Ok(format!("{outcome:?}"))
}
