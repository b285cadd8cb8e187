//! The failed-step inbox port: records of steps whose asynchronous
//! invocation Lambda gave up on (the chunk-worker's on-failure destination).

use async_trait::async_trait;

/// The inbox could not be read or a record not removed.
#[derive(Debug, thiserror::Error)]
#[error("failed-step inbox: {0}")]
pub struct InboxError(pub String);

/// One record as the inbox holds it.
#[derive(Debug, Clone)]
pub struct FailedRecord {
    /// The record body (a Lambda destination record or a bare step event).
    pub body: String,
    /// What removes the record once handled.
    pub receipt: Option<String>,
}

/// Where failed steps wait to be delivered again.
#[async_trait]
pub trait FailedStepInbox: Send + Sync {
    /// Up to `max` records, without waiting for new ones.
    async fn receive(&self, max: usize) -> Result<Vec<FailedRecord>, InboxError>;
    /// Removes a handled record.
    async fn delete(&self, receipt: &str) -> Result<(), InboxError>;
}
