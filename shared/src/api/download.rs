//! File downloads by redirect (302) to a short-lived presigned URL of one
//! object:
//! - `GET [base]/$export-file/<job>/<file>` (`requiresAccessToken` mode):
//!   checks the bearer's ownership of the job. Clients must not forward
//!   `Authorization` across the redirect.
//! - `GET [base]/$export-download/<job>/<file>?expires=…&signature=…`: the
//!   compact links of large manifests (see `export::file_links`), valid
//!   without a token until they expire, like presigned URLs.

use crate::api::status::load_visible_job;
use crate::export::file_links::verify;
use crate::fhir::outcome::ApiError;
use crate::model::{Caller, Job};
use crate::model::{JobStatus, parse_file_name};
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
    let job = load_visible_job(svc, caller, job_id).await?;
    redirect(svc, &job, name).await
}

/// Redirects the holder of a valid compact link to its file. Unknown jobs,
/// wrong signatures and expired links answer alike (403), so a link reveals
/// nothing about other jobs.
pub async fn download_signed(
    svc: &(impl ReadJobs + RecordFiles + Settings + StoreObjects),
    job_id: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response<Bytes>, ApiError> {
    let refused = || ApiError::Forbidden("the download link is invalid or has expired".into());
    let mut expires = None;
    let mut signature = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "expires" => expires = v.parse::<i64>().ok(),
            "signature" => signature = Some(v.into_owned()),
            _ => {}
        }
    }
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return Err(refused());
    };
    let job = svc.jobs().get_job(job_id).await?.ok_or_else(refused)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if !verify(&job.id, &job.download_key, name, expires, &signature, now) {
        return Err(refused());
    }
    redirect(svc, &job, name).await
}

async fn redirect(
    svc: &(impl RecordFiles + Settings + StoreObjects),
    job: &Job,
    name: &str,
) -> Result<Response<Bytes>, ApiError> {
    let not_found = || ApiError::NotFound("no such export file".into());
    if job.status != JobStatus::Complete {
        return Err(not_found());
    }
    let (ty, number) = parse_file_name(name).ok_or_else(not_found)?;
    let file = svc
        .files()
        .get_file(&job.id, ty, number)
        .await?
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
