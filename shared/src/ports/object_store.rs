//! The object store port: multipart NDJSON uploads, small puts, presigned GETs.

use crate::model::UploadedPart;
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// Why an object store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// The multipart upload no longer exists (completed or aborted).
    #[error("no such upload")]
    NoSuchUpload,
    /// A completion named a part that is not stored under that number with
    /// that ETag (S3's `InvalidPart`/`InvalidPartOrder`): the upload does
    /// not hold the committed bytes.
    #[error("invalid part: {0}")]
    InvalidPart(String),
    /// The backing service failed (after the SDK's own retries).
    #[error("object store: {}", crate::ports::error_chain(.0.as_ref()))]
    Backend(#[source] crate::ports::BoxError),
}

/// Output storage for export files.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Starts a multipart upload; returns its id.
    async fn create_upload(&self, key: &str) -> Result<String, ObjectError>;
    /// Uploads (or re-uploads) one part; returns its ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError>;
    /// Completes an upload from its parts (ascending part numbers, gaps
    /// allowed; parts not named are dropped).
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<(), ObjectError>;
    /// Aborts an upload; succeeds if it is already gone.
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), ObjectError>;
    /// Writes a small object in one request.
    async fn put_object(&self, key: &str, body: Bytes) -> Result<(), ObjectError>;
    /// Size of an object, or `None` if it does not exist.
    async fn object_size(&self, key: &str) -> Result<Option<u64>, ObjectError>;
    /// A presigned GET URL valid for `ttl`.
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, ObjectError>;
    /// Deletes every object under `prefix`.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), ObjectError>;
    /// Reads a small object whole, `None` if it does not exist.
    async fn get_object(&self, key: &str) -> Result<Option<Bytes>, ObjectError>;
    /// Keys under `prefix`, in key order.
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, ObjectError>;
    /// Whether a completed object may be seen half-written while its
    /// completion runs (a server that writes it in place). False where an
    /// object appears whole or not at all, as on S3: an object of another
    /// size is then never going to become the one expected.
    fn shows_partial_objects(&self) -> bool {
        false
    }
}
