//! `GET [base]/$export-file/<job>/<file>`: in `requiresAccessToken` mode the
//! manifest lists these URLs; each checks the bearer's ownership of the job
//! and redirects (302) to a short-lived presigned URL of that one object.
//! Clients must not forward `Authorization` across the redirect.

use crate::api::status::load_visible_job;
use crate::fhir::outcome::ApiError;
use crate::model::Caller;
use crate::model::{JobStatus, file_name};
use crate::ports::services::{ReadJobs, RecordFiles, Settings, StoreObjects};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Redirects the owner of a complete job to one of its files.
pub async fn download(
    svc: &(impl ReadJobs + RecordFiles + Settings + StoreObjects),
    caller: &Caller,
    job_id: &str,
    name: &str,
) -> Result<Response<Bytes>, ApiError> {
    let not_found = || ApiError::NotFound("no such export file".into());
    let job = load_visible_job(svc, caller, job_id).await?;
    if job.status != JobStatus::Complete {
        return Err(not_found());
    }
    let files = svc.files().list_files(&job.id).await?;
    let file = files
        .iter()
        .find(|f| file_name(&f.resource_type, f.number) == name)
        .ok_or_else(not_found)?;
    let url = svc
        .objects()
        .presign_get(&file.key, svc.config().url_ttl)
        .await
        .map_err(|e| ApiError::Unavailable(format!("could not sign the download: {e}")))?;
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::FOUND;
    let location = HeaderValue::from_str(&url)
        .map_err(|_| ApiError::Internal("invalid download URL".into()))?;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
