//! The completion manifest, built from stored file records at request time
//! with freshly presigned download URLs.

use crate::model::{FileKind, FileRecord, Job};
use crate::ports::object_store::ObjectError;
use crate::ports::services::{RecordFiles, Settings, StoreObjects};
use serde_json::{Value, json};

/// Builds the manifest of a complete job.
pub async fn build_manifest(
    svc: &(impl RecordFiles + Settings + StoreObjects),
    job: &Job,
) -> Result<Value, ObjectError> {
    let mut files: Vec<FileRecord> = svc
        .files()
        .list_files(&job.id)
        .await
        .map_err(|e| ObjectError::Backend(e.to_string().into()))?;
    files.retain(|f| f.count > 0);
    files.sort_by(|a, b| (&a.resource_type, a.number).cmp(&(&b.resource_type, b.number)));
    let mut output = Vec::new();
    let mut error = Vec::new();
    for f in &files {
        let url = if svc.config().requires_access_token {
            file_url(svc.config().base(), &job.id, f)
        } else {
            svc.objects()
                .presign_get(&f.key, svc.config().url_ttl)
                .await?
        };
        let item = json!({ "type": f.resource_type, "url": url, "count": f.count });
        match f.kind {
            FileKind::Output => output.push(item),
            FileKind::Error => error.push(item),
        }
    }
    Ok(json!({
        "transactionTime": job.transaction_time,
        "request": job.request_url,
        "requiresAccessToken": svc.config().requires_access_token,
        "output": output,
        "error": error,
    }))
}

/// The authenticated download URL of a file (`requiresAccessToken` mode).
pub fn file_url(base: &str, job_id: &str, f: &FileRecord) -> String {
    format!(
        "{base}/$export-file/{job_id}/{}",
        crate::model::file_name(&f.resource_type, f.number)
    )
}
