//! The job store port: jobs, chains and file records with optimistic locking.

use crate::fhir::outcome::ApiError;
use crate::model::{Chain, FileRecord, Job, JobStatus};
use async_trait::async_trait;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A conditional write lost against a concurrent writer.
    #[error("conditional write conflict")]
    Conflict,
    /// The backing service failed (after the SDK's own retries).
    #[error("job store: {}", crate::ports::error_chain(.0.as_ref()))]
    Backend(#[source] crate::ports::BoxError),
    /// A stored item could not be decoded.
    #[error("job store item is corrupt: {0}")]
    Corrupt(String),
}

/// A store failure seen by a client: the one mapping to 503 "job store
/// unavailable" (the client may retry; the message names no item).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable(format!("job store unavailable: {e}"))
    }
}

/// Whether a conditional write won: `false` for a lost race (another writer
/// owns the record now), an error for anything else. The one place that
/// reads `Conflict`.
pub fn won(write: Result<(), StoreError>) -> Result<bool, StoreError> {
    match write {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads jobs and their chains (status, cancel, the worker, the watchdog).
#[async_trait]
pub trait JobReads: Send + Sync {
    /// Reads a job.
    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError>;
    /// Jobs that are queued or running, and cancelled jobs some of whose
    /// chains have not ended (admission, restart recovery, and the watchdog,
    /// which ends those chains so the cancel's final clean-up runs).
    async fn active_jobs(&self) -> Result<Vec<Job>, StoreError>;
    /// Reads a chain.
    async fn get_chain(&self, job_id: &str, chain_id: &str) -> Result<Option<Chain>, StoreError>;
    /// Reads every chain of a job.
    async fn list_chains(&self, job_id: &str) -> Result<Vec<Chain>, StoreError>;
}

/// Creates jobs and moves them between states (kick-off, completion, cancel).
#[async_trait]
pub trait JobWrites: Send + Sync {
    /// Stores a new job and its chains.
    async fn create_job(&self, job: &Job, chains: &[Chain]) -> Result<(), StoreError>;
    /// Moves a job to `status` if its version is still `job.version`.
    async fn set_job_status(
        &self,
        job: &Job,
        status: JobStatus,
        failure: Option<String>,
    ) -> Result<(), StoreError>;
    /// Marks a job cancelled unless it already is; returns false if it was.
    async fn cancel_job(&self, job_id: &str) -> Result<bool, StoreError>;
    /// Removes every item of a job.
    async fn delete_job(&self, job_id: &str) -> Result<(), StoreError>;
}

/// Commits a chain's progress (the worker and the watchdog).
#[async_trait]
pub trait ChainWrites: Send + Sync {
    /// Writes `chain` if the stored version is `chain.version`; bumps the version.
    async fn save_chain(&self, chain: &mut Chain) -> Result<(), StoreError>;
    /// Like `save_chain`, and atomically counts the chain as finished on its job.
    async fn finish_chain(&self, chain: &mut Chain) -> Result<(), StoreError>;
    /// Atomically saves `chain` (narrowed to its first partition; version
    /// checked), creates `new` sibling chains (none may exist yet) and counts
    /// them on the job; `expires_at` is the job's expiry.
    async fn split_chain(
        &self,
        chain: &mut Chain,
        new: &[Chain],
        expires_at: i64,
    ) -> Result<(), StoreError>;
}

/// Completed files and their numbering (the worker writes, the manifest reads).
#[async_trait]
pub trait FileRecords: Send + Sync {
    /// Records a completed file (idempotent).
    async fn put_file(&self, job_id: &str, file: &FileRecord) -> Result<(), StoreError>;
    /// Every completed file of a job.
    async fn list_files(&self, job_id: &str) -> Result<Vec<FileRecord>, StoreError>;
    /// One completed file of a job (a download reads one record, not all).
    async fn get_file(
        &self,
        job_id: &str,
        resource_type: &str,
        number: u32,
    ) -> Result<Option<FileRecord>, StoreError>;
    /// Atomically allocates the next file number (from 1) for a type; the
    /// counter expires with the job (`expires_at`, Unix seconds).
    async fn next_file_number(
        &self,
        job_id: &str,
        resource_type: &str,
        expires_at: i64,
    ) -> Result<u32, StoreError>;
}

/// Counts status polls, the one write a status poll makes by itself.
#[async_trait]
pub trait PollCounter: Send + Sync {
    /// Counts a status poll in a window of `window_secs` starting at the
    /// first poll after the previous window; returns the polls in the window.
    async fn record_poll(
        &self,
        job_id: &str,
        now: i64,
        window_secs: i64,
    ) -> Result<u64, StoreError>;
}

/// Remembers each schedule's last successful export.
#[async_trait]
pub trait ScheduleLog: Send + Sync {
    /// Records the transaction time of a schedule's successful export
    /// (only ever moving forward).
    async fn record_schedule_success(
        &self,
        schedule: &str,
        transaction_time: &str,
    ) -> Result<(), StoreError>;
    /// Transaction time of a schedule's last successful export.
    async fn last_schedule_success(&self, schedule: &str) -> Result<Option<String>, StoreError>;
}

/// Persistent export state: every capability, as one DynamoDB table holds
/// them. Every state change is a conditional write. Implemented for any type
/// that has all the capabilities; callers ask for the narrow traits.
pub trait JobStore:
    JobReads + JobWrites + ChainWrites + FileRecords + PollCounter + ScheduleLog
{
}

impl<T> JobStore for T where
    T: JobReads + JobWrites + ChainWrites + FileRecords + PollCounter + ScheduleLog
{
}
