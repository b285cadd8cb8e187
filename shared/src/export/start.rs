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
use time::OffsetDateTime;

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
    let types = export_types(svc, &request).await?;
    let (types, referenced_types) = split_referenced(types, &request, &scope);

    let admission = admit(svc, owner).await?;
    let job_id = new_job_id();
    let now = now_millis();
    let folder = format!("{}/{job_id}", container_name(&request, now));
    let mut chains = plan_chains(svc, &job_id, &types, &scope);
    chains.extend(referenced_chains(&job_id, &referenced_types));
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
        download_key: format!("{:032x}", rand::random::<u128>()),
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
    start_chains(svc, &job, &chains).await;
    tracing::info!(job_id = %job.id, chains = chains.len(), "export accepted");
    Ok(job)
}

/// The types an export covers: those requested, or without `_type` every
/// type the source holds.
async fn export_types(
    svc: &impl ReadSource,
    request: &ExportRequest,
) -> Result<Vec<String>, ApiError> {
    if request.types.is_empty() {
        svc.source().resource_types().await.map_err(|e| {
            ApiError::Unavailable(format!("could not list the source's resource types: {e}"))
        })
    } else {
        Ok(request.types.clone())
    }
}

/// Splits a compartment export's types into those read from the compartment
/// and the referenced types, which are read afterwards by the ids the
/// compartment's resources point to: `(compartment, referenced)`.
fn split_referenced(
    mut types: Vec<String>,
    request: &ExportRequest,
    scope: &PatientScope,
) -> (Vec<String>, Vec<String>) {
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
    (types, referenced_types)
}

/// The output container: `_container`, else one named after the kick-off
/// time.
fn container_name(request: &ExportRequest, now: OffsetDateTime) -> String {
    match &request.container {
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
    }
}

/// One chain per referenced type, waiting until every compartment chain has
/// finished (they record the references it reads).
fn referenced_chains(job_id: &str, referenced_types: &[String]) -> Vec<crate::model::Chain> {
    referenced_types
        .iter()
        .map(|t| {
            let mut chain = new_chain(job_id, &format!("referenced.{t}"), t);
            chain.referenced = true;
            chain.state = ChainState::Waiting;
            chain
        })
        .collect()
}

/// Schedules the first step of each running chain of a running job (a
/// queued job's chains start when admission lets it run).
/// Several at once: a Group of many patient batches has a chain per type
/// and batch, and one invocation after another would outlast API Gateway's
/// 29 seconds.
async fn start_chains(svc: &impl ScheduleSteps, job: &Job, chains: &[crate::model::Chain]) {
    use futures::StreamExt;
    let running = chains
        .iter()
        .filter(|c| job.status == JobStatus::Running && c.state == ChainState::Running);
    futures::stream::iter(running)
        .for_each_concurrent(STARTS_AT_ONCE, |chain| async move {
            if let Err(e) = svc.continuation().schedule(chain.event()).await {
                // The watchdog restarts chains that never made progress.
                tracing::error!(job_id = %job.id, chain = %chain.chain_id, error = %e, "could not start chain");
            }
        })
        .await;
}

/// Chain starts (worker invocations) in flight at once at kick-off.
const STARTS_AT_ONCE: usize = 16;
