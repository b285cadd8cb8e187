//! The SQS adapter of the failed-step inbox: the chunk-worker's on-failure
//! destination queue, drained by the watchdog.

use crate::ports::failed_steps::{FailedRecord, FailedStepInbox, InboxError};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;

/// SQS returns at most ten messages per receive call.
const MAX_PER_RECEIVE: usize = 10;

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
}

#[async_trait]
impl FailedStepInbox for FailedStepQueue {
    async fn receive(&self, max: usize) -> Result<Vec<FailedRecord>, InboxError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_PER_RECEIVE) as i32)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(|e| InboxError(DisplayErrorContext(e).to_string()))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| FailedRecord {
                body: m.body().unwrap_or_default().to_string(),
                receipt: m.receipt_handle().map(str::to_string),
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), InboxError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| InboxError(DisplayErrorContext(e).to_string()))?;
        Ok(())
    }
}
