//! The SQS adapter of the failed-step records: the chunk-worker's on-failure
//! destination queue, drained by the watchdog.

use crate::chain::StepError;
use crate::failed_steps::{DrainReport, handle_record};
use crate::services::ExportServices;
use aws_sdk_sqs::Client;

/// Most receive calls one drain makes (10 records each).
const MAX_BATCHES: usize = 20;

/// Why the queue could not be drained.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// SQS failed.
    #[error("failed-step queue: {0}")]
    Queue(String),
    /// Redelivering a step failed; the record stays in the queue.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// The on-failure destination queue of the chunk-worker.
#[derive(Debug, Clone)]
pub struct FailedStepQueue {
    client: Client,
    url: String,
}

impl FailedStepQueue {
    /// The queue at `url`.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Delivers every failed step again (or drops its record if the chain has
    /// moved on), deleting each record once handled.
    pub async fn drain(&self, svc: &ExportServices) -> Result<DrainReport, DrainError> {
        let mut report = DrainReport::default();
        for _ in 0..MAX_BATCHES {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(|e| {
                    DrainError::Queue(aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
                })?;
            let messages = out.messages();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                handle_record(svc, m.body().unwrap_or_default(), &mut report).await?;
                if let Some(handle) = m.receipt_handle() {
                    self.client
                        .delete_message()
                        .queue_url(&self.url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .map_err(|e| {
                            DrainError::Queue(
                                aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
                            )
                        })?;
                }
            }
        }
        if report.unreadable > 0 {
            tracing::warn!(
                unreadable = report.unreadable,
                "failed-step records without a step event were dropped"
            );
        }
        Ok(report)
    }
}
