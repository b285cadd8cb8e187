//! Closing a file: completing its multipart upload (on its own task while the
//! next file fills) and recording it, idempotently, so a duplicate step or a
//! crash between completion and record never loses or doubles a file.

use crate::model::{Chain, FileKind, FileRecord, Job, OpenFile};
use crate::ports::object_store::ObjectError;
use crate::ports::services::{RecordFiles, StoreObjects};
use crate::worker::outcome::StepError;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Waits briefly for an object a concurrent completion is writing; true once
/// it exists (with `size`, when given).
pub(crate) async fn object_appears(
    svc: &impl StoreObjects,
    key: &str,
    size: Option<u64>,
) -> Result<bool, StepError> {
    // A store that writes the object in place (s3s-fs) shows it growing
    // while a completion runs: wait for the whole size, not just the key.
    // Elsewhere an object of another size is someone else's bytes.
    for attempt in 0..6u64 {
        match svc.objects().object_size(key).await? {
            Some(found) if size.is_none_or(|s| s == found) => return Ok(true),
            Some(_) if !svc.objects().shows_partial_objects() => return Ok(false),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    Ok(false)
}

/// A full file's completion, running on its own task.
pub(crate) struct Closing(JoinHandle<Result<(), StepError>>);

impl Closing {
    /// Starts completing `file` (already moved to `chain.closing`).
    pub(crate) fn start(
        svc: &(impl RecordFiles + StoreObjects + Clone + Send + Sync + 'static),
        job: &Job,
        resource_type: &str,
        file: OpenFile,
    ) -> Self {
        let (svc, job, ty) = (svc.clone(), job.clone(), resource_type.to_string());
        Self(tokio::spawn(async move {
            complete_file(&svc, &job, &ty, &file).await
        }))
    }

    /// Whether the completion has ended (successfully or not).
    pub(crate) fn is_done(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the completion; on success the chain forgets the file
    /// (recorded by the chain's next write).
    pub(crate) async fn finish(self, chain: &mut Chain) -> Result<(), StepError> {
        self.0
            .await
            .map_err(|e| ObjectError::Backend(format!("file completion task: {e}").into()))??;
        chain.closing = None;
        Ok(())
    }
}

/// Completes a file (idempotently) and records it. A file with no committed
/// part is aborted instead and never listed: S3 completes no upload without
/// parts, and a source can turn out empty after the read that opened the
/// file (its resources deleted before a retry read them again).
pub(crate) async fn complete_file(
    svc: &(impl RecordFiles + StoreObjects),
    job: &Job,
    resource_type: &str,
    open: &OpenFile,
) -> Result<(), StepError> {
    if open.parts.is_empty() {
        svc.objects()
            .abort_upload(&open.key, &open.upload_id)
            .await?;
        return Ok(());
    }
    if let Err(e) = svc
        .objects()
        .complete_upload(&open.key, &open.upload_id, &open.parts)
        .await
    {
        // A duplicate of this step may have completed it already (or be doing
        // so right now): the file counts as complete only if it is whole.
        if !object_appears(svc, &open.key, Some(open.bytes)).await? {
            // Gone, or not holding the committed parts: either way the
            // committed bytes are not in the store, so the file is exported
            // again from its start.
            if matches!(e, ObjectError::NoSuchUpload | ObjectError::InvalidPart(_)) {
                tracing::warn!(file = %open.key, error = %e, "upload does not hold the committed parts");
                return Err(StepError::UploadLost(open.key.clone()));
            }
            return Err(e.into());
        }
    }
    let record = FileRecord {
        resource_type: resource_type.to_string(),
        number: open.number,
        key: open.key.clone(),
        count: open.count,
        bytes: open.bytes,
        kind: FileKind::Output,
        expires_at: job.expires_at,
    };
    svc.files().put_file(&job.id, &record).await?;
    Ok(())
}
