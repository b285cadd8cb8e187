//! `DELETE <status URL>`: cancel a job, abort its uploads, delete its files.

use crate::api::status::load_visible_job;
use crate::fhir::outcome::{ApiError, Severity, fhir_json, operation_outcome};
use crate::model::{Caller, ChainState};
use crate::ports::services::{
    LogSchedules, ReadJobs, ScheduleSteps, Settings, StoreObjects, WriteChains, WriteJobs,
};
use bytes::Bytes;
use http::{Response, StatusCode};

/// Cancels a queued, running or complete job.
pub async fn cancel(
    svc: &(
         impl LogSchedules + ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs
     ),
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
    for mut chain in chains {
        for open in [&chain.open_file, &chain.closing].into_iter().flatten() {
            if let Err(e) = svc.objects().abort_upload(&open.key, &open.upload_id).await {
                tracing::warn!(job_id = %job.id, error = %e, "could not abort upload on cancel");
            }
        }
        if chain.state == ChainState::Waiting {
            // No step of a waiting chain will run to finish it: count it
            // finished here, so the last running chain's end (or the check
            // below) runs the final clean-up.
            chain.state = ChainState::Cancelled;
            if let Err(e) = svc.chains().finish_chain(&mut chain).await {
                tracing::warn!(job_id = %job.id, chain = %chain.chain_id, error = %e, "could not cancel a waiting chain");
            }
        }
    }
    svc.objects()
        .delete_prefix(&format!("{}/", job.folder))
        .await
        .map_err(|e| unavailable(&e))?;
    // With no chain left running, nothing else would remove what in-flight
    // steps wrote after the deletion above, nor start the next queued job.
    if let Err(e) = crate::worker::lifecycle::maybe_complete_job(svc, &job.id).await {
        tracing::warn!(job_id = %job.id, error = %e, "could not finish a cancelled export's clean-up");
    }
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
