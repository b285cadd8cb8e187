//! `DELETE <status URL>`: cancel a job, abort its uploads, delete its files.

use crate::api::status::load_visible_job;
use crate::fhir::outcome::{ApiError, Severity, fhir_json, operation_outcome};
use crate::model::Caller;
use crate::ports::services::{
    ReadJobs, ScheduleSteps, Settings, StoreObjects, WriteChains, WriteJobs,
};
use bytes::Bytes;
use http::{Response, StatusCode};

/// Cancels a queued, running or complete job.
pub async fn cancel(
    svc: &(impl ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs),
    caller: &Caller,
    job_id: &str,
) -> Result<Response<Bytes>, ApiError> {
    let job = load_visible_job(svc, caller, job_id).await?;
    let unavailable =
        |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("could not cancel: {e}"));
    if !svc
        .job_writes()
        .cancel_job(&job.id)
        .await
        .map_err(|e| unavailable(&e))?
    {
        return Err(ApiError::NotFound(
            "this export was already cancelled".into(),
        ));
    }
    // Running chains stop at their next step; open uploads are aborted here too
    // so nothing lingers if a chain never runs again.
    let chains = svc
        .jobs()
        .list_chains(&job.id)
        .await
        .map_err(|e| unavailable(&e))?;
    for chain in chains {
        for open in [&chain.open_file, &chain.closing].into_iter().flatten() {
            if let Err(e) = svc.objects().abort_upload(&open.key, &open.upload_id).await {
                tracing::warn!(job_id = %job.id, error = %e, "could not abort upload on cancel");
            }
        }
    }
    svc.objects()
        .delete_prefix(&format!("{}/", job.folder))
        .await
        .map_err(|e| unavailable(&e))?;
    if let Err(e) = crate::worker::lifecycle::promote_queued(svc).await {
        tracing::warn!(error = %e, "could not start queued exports after a cancel");
    }
    tracing::info!(job_id = %job.id, "export cancelled");
    let body = operation_outcome(
        Severity::Information,
        "informational",
        "Export cancelled; its files were deleted.",
    );
    Ok(fhir_json(StatusCode::ACCEPTED, &body))
}
