//! `GET <status URL>`: progress while running, the manifest when complete.

use crate::export::admission::queue_position;
use crate::export::manifest::build_manifest;
use crate::fhir::outcome::{ApiError, Severity, fhir_json, json_response, operation_outcome};
use crate::model::Caller;
use crate::model::{ChainState, Job, JobStatus};
use crate::ports::services::{CountPolls, LifecycleServices, ReadJobs};
use crate::worker::lifecycle::maybe_complete_job;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::time::SystemTime;

/// Polls allowed within one `Retry-After` window before 429.
pub const POLL_BURST: u64 = 20;

/// True if `id` looks like one of our job ids (32 lowercase hex digits).
pub fn is_job_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Loads a job the caller may see; anything else is the same 404.
pub async fn load_visible_job(
    svc: &impl ReadJobs,
    caller: &Caller,
    job_id: &str,
) -> Result<Job, ApiError> {
    let not_found = || {
        ApiError::NotFound("no export with this id exists (or it was cancelled or expired)".into())
    };
    if !is_job_id(job_id) {
        return Err(not_found());
    }
    let job = svc.jobs().get_job(job_id).await?.ok_or_else(not_found)?;
    let expired = job.expires_at <= crate::fhir::instant::unix_now();
    if job.owner != caller.client_id || job.status == JobStatus::Cancelled || expired {
        return Err(not_found());
    }
    Ok(job)
}

/// Progress as (percent, exported resources, finished chains, chains). A
/// chain counts fully when finished, by exported/expected while running with
/// a known total, and as nothing before its total is known.
async fn progress(svc: &impl ReadJobs, job: &Job) -> Result<(u64, u64, usize, usize), ApiError> {
    let chains = svc.jobs().list_chains(&job.id).await?;
    let exported: u64 = chains.iter().map(|c| c.exported).sum();
    let done = chains.iter().filter(|c| c.state.is_finished()).count();
    let fraction: f64 = chains
        .iter()
        .map(|c| match (c.state, c.total) {
            (ChainState::Running, Some(t)) if t > 0 => (c.exported as f64 / t as f64).min(0.99),
            (ChainState::Running | ChainState::Waiting, _) => 0.0,
            _ => 1.0,
        })
        .sum();
    let pct = if chains.is_empty() {
        0
    } else {
        ((fraction * 100.0) / chains.len() as f64).floor() as u64
    };
    Ok((pct.min(99), exported, done, chains.len()))
}

/// Answers a status poll.
pub async fn status(
    svc: &(impl LifecycleServices + CountPolls),
    caller: &Caller,
    job_id: &str,
) -> Result<Response<Bytes>, ApiError> {
    let mut job = load_visible_job(svc, caller, job_id).await?;
    if matches!(job.status, JobStatus::Running | JobStatus::Queued) && job.all_chains_finished() {
        // The last chain finished but its completion write was lost; finish it here.
        maybe_complete_job(svc, &job.id)
            .await
            .map_err(|e| ApiError::Unavailable(format!("could not complete the job: {e}")))?;
        job = load_visible_job(svc, caller, job_id).await?;
    }
    match job.status {
        JobStatus::Queued | JobStatus::Running => {
            // Sustained polling faster than Retry-After gets 429; the job is unaffected.
            let window = svc.config().retry_after_secs.max(1) as i64;
            let now = crate::fhir::instant::unix_now();
            let polls = svc.polls().record_poll(&job.id, now, window).await?;
            if polls > POLL_BURST {
                return Err(ApiError::TooManyRequests {
                    message: format!(
                        "polled {polls} times in {window} s; wait Retry-After seconds between polls"
                    ),
                    retry_after: svc.config().retry_after_secs,
                });
            }
            let (pct, exported, done, total) = progress(svc, &job).await?;
            let text = if job.status == JobStatus::Queued {
                let position = queue_position(svc, &job).await?;
                format!("0% complete: queued, position {position}")
            } else {
                format!("{pct}% complete: {exported} resources, {done}/{total} types done")
            };
            let body = operation_outcome(Severity::Information, "informational", &text);
            let mut resp = fhir_json(StatusCode::ACCEPTED, &body);
            let h = resp.headers_mut();
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(svc.config().retry_after_secs),
            );
            let progress: String = text.chars().take(99).collect();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                h.insert("x-progress", v);
            }
            Ok(resp)
        }
        JobStatus::Complete => {
            let manifest = build_manifest(svc, &job)
                .await
                .map_err(|e| ApiError::Unavailable(format!("could not build the manifest: {e}")))?;
            let mut resp = json_response(StatusCode::OK, &manifest, "application/json");
            let expires = httpdate::fmt_http_date(SystemTime::now() + svc.config().url_ttl);
            if let Ok(v) = HeaderValue::from_str(&expires) {
                resp.headers_mut().insert(header::EXPIRES, v);
            }
            Ok(resp)
        }
        JobStatus::Failed => {
            let reason = job.failure.as_deref().unwrap_or("the export failed");
            let body = operation_outcome(Severity::Error, "exception", reason);
            Ok(fhir_json(StatusCode::INTERNAL_SERVER_ERROR, &body))
        }
        JobStatus::Cancelled => Err(ApiError::NotFound("this export was cancelled".into())),
    }
}
