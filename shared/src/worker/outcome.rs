//! What a step reports: the outcome it reached, or an error worth a retry.

use crate::ports::continuation::ContinuationError;
use crate::ports::job_store::StoreError;
use crate::ports::object_store::ObjectError;

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Committed; the next step was scheduled.
    Continued,
    /// The chain finished (done, failed or cancelled).
    Finished,
    /// Nothing to do: a duplicate or outdated delivery, or a lost race.
    Stale,
}

/// A step failed in a way that may succeed on retry.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Job store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Object store failure.
    #[error(transparent)]
    Objects(#[from] ObjectError),
    /// The next step could not be scheduled.
    #[error(transparent)]
    Continuation(#[from] ContinuationError),
    /// An open multipart upload disappeared without becoming an object (an
    /// interrupted completion on a non-atomic store, or a lifecycle abort).
    #[error("multipart upload of {0} was lost")]
    UploadLost(String),
}
