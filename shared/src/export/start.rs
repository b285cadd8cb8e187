//! Starting an export: the types it covers, the job record and its chains,
//! admission, and the first steps. Shared by HTTP kick-off and schedules.

use crate::export::admission::{Admission, admit};
use crate::fhir::compartment::in_compartment;
use crate::fhir::instant::{format_instant, now_millis};
use crate::fhir::outcome::{ApiError, quote};
use crate::fhir::smart_scopes::ReadableTypes;
use crate::model::PatientScope;
use crate::model::new_chain;
use crate::model::{ChainState, Job, JobStatus};
use crate::model::{ExportLevel, ExportRequest};
use crate::ports::services::{
    ReadJobs, ReadSource, RecordFiles, ScheduleSteps, Settings, StoreObjects, WriteJobs,
};
use crate::worker::lifecycle::write_error_file;
use crate::worker::referenced::{REFERENCED_TYPES, is_referenced_type};
use rand::RngCore;

/// A new unguessable job id (128 random bits, hex).
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The status URL of a job.
pub fn status_url(base: &str, job_id: &str) -> String {
    format!("{base}/$export-status/{job_id}")
}

/// One chain per type; for sources queried by patient, one per type and batch
/// of member patients, so no query names more than `patient_batch_size` of them.
fn plan_chains(
    svc: &(impl ReadSource + Settings),
    job_id: &str,
    types: &[String],
    scope: &PatientScope,
) -> Vec<crate::model::Chain> {
    let mut chains = Vec::new();
    for t in types {
        match scope {
            PatientScope::Members(ids) if svc.source().queries_by_patient_batch() => {
                for (n, batch) in ids
                    .chunks(svc.config().patient_batch_size.max(1))
                    .enumerate()
                {
                    let mut chain = new_chain(job_id, &format!("{t}.{n}"), t);
                    chain.batch = Some(batch.to_vec());
                    chains.push(chain);
                }
            }
            _ => chains.push(new_chain(job_id, t, t)),
        }
    }
    chains
}

/// True for the types a Patient- or Group-level export can contain.
fn compartment_type(t: &str) -> bool {
    t == "Patient" || in_compartment(t)
}

/// Patient- and Group-level exports cover the Patient compartment and the
/// resources it references ([`REFERENCED_TYPES`]): any other `_type` is
/// refused (lenient: skipped with an OperationOutcome).
pub fn restrict_to_compartment(request: &mut ExportRequest, lenient: bool) -> Result<(), ApiError> {
    let outside: Vec<String> = request
        .types
        .iter()
        .filter(|t| !compartment_type(t) && !is_referenced_type(t))
        .cloned()
        .collect();
    if let Some(f) = request
        .type_filters
        .iter()
        .find(|f| is_referenced_type(&f.resource_type))
    {
        return Err(ApiError::BadRequest(format!(
            "_typeFilter for {}: at Patient and Group level {} resources are exported because exported resources reference them, and cannot be filtered",
            quote(&f.resource_type),
            quote(&f.resource_type)
        )));
    }
    if let Some(f) = request
        .type_filters
        .iter()
        .find(|f| !compartment_type(&f.resource_type))
    {
        return Err(ApiError::BadRequest(format!(
            "_typeFilter for {} is outside the Patient compartment",
            quote(&f.resource_type)
        )));
    }
    if outside.is_empty() {
        return Ok(());
    }
    if !lenient || outside.len() == request.types.len() {
        return Err(ApiError::BadRequest(format!(
            "{} not in the Patient compartment; Patient- and Group-level exports cannot include them",
            outside
                .iter()
                .map(|t| quote(t))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    request
        .types
        .retain(|t| compartment_type(t) || is_referenced_type(t));
    for t in outside {
        request.ignored.push(format!(
            "_type {} is not in the Patient compartment; skipped under handling=lenient",
            quote(&t)
        ));
    }
    Ok(())
}

/// Limits the export to the types the caller's scopes can read: explicitly
/// requested types outside the scopes are refused (403; lenient: skipped and
/// recorded), `_typeFilter` cannot widen access, and an export without `_type`
/// covers only the granted types.
pub fn apply_scopes(
    request: &mut ExportRequest,
    readable: &ReadableTypes,
    lenient: bool,
) -> Result<(), ApiError> {
    if readable.is_empty() {
        return Err(ApiError::Forbidden(
            "the access token grants no system-level read scope (system/<Type>.read or system/<Type>.rs)".into(),
        ));
    }
    if let Some(f) = request
        .type_filters
        .iter()
        .find(|f| !readable.allows(&f.resource_type))
    {
        return Err(ApiError::Forbidden(format!(
            "_typeFilter for {} is outside the access token's scopes",
            quote(&f.resource_type)
        )));
    }
    if request.types.is_empty() {
        if !readable.all {
            request.types = readable.types.clone();
        }
        return Ok(());
    }
    let denied: Vec<String> = request
        .types
        .iter()
        .filter(|t| !readable.allows(t))
        .cloned()
        .collect();
    if denied.is_empty() {
        return Ok(());
    }
    if !lenient || denied.len() == request.types.len() {
        return Err(ApiError::Forbidden(format!(
            "the access token does not allow reading {}",
            denied
                .iter()
                .map(|t| quote(t))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    request.types.retain(|t| readable.allows(t));
    for t in denied {
        request.ignored.push(format!(
            "_type {} is outside the access token's scopes; skipped under handling=lenient",
            quote(&t)
        ));
    }
    Ok(())
}

/// Creates a validated export job with one chain per type and starts its
/// chains. Shared by HTTP kick-off and scheduled exports.
pub async fn start_export(
    svc: &(
         impl ReadJobs + ReadSource + RecordFiles + ScheduleSteps + Settings + StoreObjects + WriteJobs
     ),
    owner: &str,
    level: ExportLevel,
    request: crate::model::ExportRequest,
    request_url: String,
    schedule: Option<String>,
    scope: PatientScope,
) -> Result<Job, ApiError> {
    let mut types = if request.types.is_empty() {
        svc.source().resource_types().await.map_err(|e| {
            ApiError::Unavailable(format!("could not list the source's resource types: {e}"))
        })?
    } else {
        request.types.clone()
    };
    let mut referenced_types = Vec::new();
    if scope.is_compartment() {
        referenced_types = types
            .iter()
            .filter(|t| is_referenced_type(t))
            .cloned()
            .collect();
        if request.types.is_empty() {
            // By default every referenced type the source holds and the
            // caller may read (types already reflects the scopes).
            referenced_types = REFERENCED_TYPES
                .iter()
                .map(|t| t.to_string())
                .filter(|t| types.contains(t))
                .collect();
        }
        types.retain(|t| compartment_type(t));
        if types.is_empty() {
            // Nothing exported from the compartment references anything.
            referenced_types.clear();
        }
    }

    let admission = admit(svc, owner).await?;
    let job_id = new_job_id();
    let now = now_millis();
    let container = match &request.container {
        Some(c) => c.clone(),
        None => format!(
            "export-{:04}{:02}{:02}t{:02}{:02}{:02}",
            now.year(),
            now.month() as u8,
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        ),
    };
    let folder = format!("{container}/{job_id}");
    let mut chains = plan_chains(svc, &job_id, &types, &scope);
    for t in &referenced_types {
        let mut chain = new_chain(&job_id, &format!("referenced.{t}"), t);
        chain.referenced = true;
        chain.state = ChainState::Waiting;
        chains.push(chain);
    }
    let mut job = Job {
        id: job_id.clone(),
        owner: owner.to_string(),
        request_url,
        transaction_time: format_instant(now),
        level,
        request,
        folder,
        expires_at: now.unix_timestamp() + svc.config().retention.as_secs() as i64,
        failure: None,
        scope,
        schedule,
        referenced_types,
        status: if chains.is_empty() {
            JobStatus::Complete
        } else if admission == Admission::Queue {
            JobStatus::Queued
        } else {
            JobStatus::Running
        },
        version: 0,
        chains_remaining: chains.len() as i64,
    };
    if !job.request.ignored.is_empty() {
        let msgs = job.request.ignored.clone();
        write_error_file(svc, &job, &msgs).await.map_err(|e| {
            ApiError::Unavailable(format!("could not record ignored parameters: {e}"))
        })?;
    }
    svc.job_writes()
        .create_job(&job, &chains)
        .await
        .map_err(|e| ApiError::Unavailable(format!("could not store the job: {e}")))?;
    job.version = 0;
    for chain in chains
        .iter()
        .filter(|c| job.status == JobStatus::Running && c.state == ChainState::Running)
    {
        let ev = chain.event();
        if let Err(e) = svc.continuation().schedule(ev).await {
            // The watchdog restarts chains that never made progress.
            tracing::error!(job_id = %job.id, chain = %chain.chain_id, error = %e, "could not start chain");
        }
    }
    tracing::info!(job_id = %job.id, chains = chains.len(), "export accepted");
    Ok(job)
}
