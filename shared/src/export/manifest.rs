//! The completion manifest, built from stored file records at request time
//! with freshly presigned download URLs, or compact signed links when there
//! are too many files for presigned URLs to fit a Lambda response.

use crate::export::file_links::signed_link;
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
    let compact = files.len() > svc.config().presigned_files_max && !job.download_key.is_empty();
    let expires =
        time::OffsetDateTime::now_utc().unix_timestamp() + svc.config().url_ttl.as_secs() as i64;
    for f in &files {
        let url = if svc.config().requires_access_token {
            file_url(svc.config().base(), &job.id, f)
        } else if compact {
            let name = crate::model::file_name(&f.resource_type, f.number);
            signed_link(
                svc.config().base(),
                &job.id,
                &job.download_key,
                &name,
                expires,
            )
            .ok_or_else(|| ObjectError::Backend("cannot sign a download link".into()))?
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
