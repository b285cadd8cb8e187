//! When chains and jobs end: the one place that fails or cancels a chain,
//! completes a job once its last chain finished, starts the waiting
//! referenced-resources chains, and promotes queued jobs into free slots.

use crate::fhir::instant::unix_now;
use crate::fhir::outcome::{Severity, operation_outcome};
use crate::model::{
    Chain, ChainFailure, ChainState, FileKind, FileRecord, Job, JobStatus, file_name,
};
use crate::ports::job_store::StoreError;
use crate::ports::job_store::won;
use crate::ports::object_store::ObjectError;
use crate::ports::services::{
    LifecycleServices, LogSchedules, ReadJobs, RecordFiles, ScheduleSteps, Settings, StoreObjects,
    WriteChains, WriteJobs,
};
use crate::worker::file_closing::complete_file;
use crate::worker::outcome::{StepError, StepOutcome};
use bytes::Bytes;

/// Writes one OperationOutcome line per message into a new error file of the job.
pub async fn write_error_file(
    svc: &(impl RecordFiles + StoreObjects),
    job: &Job,
    messages: &[String],
) -> Result<(), StepError> {
    if messages.is_empty() {
        return Ok(());
    }
    let number = svc
        .files()
        .next_file_number(&job.id, "OperationOutcome", job.expires_at)
        .await?;
    write_error_file_numbered(svc, job, number, messages).await
}

/// Writes error file `number` (idempotently: the same object and record).
async fn write_error_file_numbered(
    svc: &(impl RecordFiles + StoreObjects),
    job: &Job,
    number: u32,
    messages: &[String],
) -> Result<(), StepError> {
    let mut body = Vec::new();
    for m in messages {
        let oo = operation_outcome(Severity::Error, "processing", m);
        serde_json::to_writer(&mut body, &oo)
            .map_err(|e| ObjectError::Backend(e.to_string().into()))?;
        body.push(b'\n');
    }
    let key = format!("{}/{}", job.folder, file_name("OperationOutcome", number));
    let bytes = body.len() as u64;
    svc.objects().put_object(&key, Bytes::from(body)).await?;
    let record = FileRecord {
        resource_type: "OperationOutcome".into(),
        number,
        key,
        count: messages.len() as u64,
        bytes,
        kind: FileKind::Error,
        expires_at: job.expires_at,
    };
    svc.files().put_file(&job.id, &record).await?;
    Ok(())
}

/// Ends a chain whose source failed permanently (or that stalled too often):
/// what it exported so far is kept, and an OperationOutcome explains the
/// rest. The failure is claimed first (a versioned write recording the
/// message and its error file's number), so a stale delivery touches
/// nothing, and a retried failure writes the same error file again instead
/// of a second one.
pub async fn fail_chain(
    svc: &impl LifecycleServices,
    job: &Job,
    mut chain: Chain,
    err: &(dyn std::fmt::Display + Sync),
) -> Result<StepOutcome, StepError> {
    if chain.failure.is_none() {
        tracing::warn!(job_id = %job.id, chain = %chain.chain_id, error = %err, "chain failed");
        let message = format!(
            "Export of {} stopped after {} resources: {}",
            chain.resource_type, chain.exported, err
        );
        let error_file = svc
            .files()
            .next_file_number(&job.id, "OperationOutcome", job.expires_at)
            .await?;
        chain.failure = Some(ChainFailure {
            message,
            error_file,
        });
        if !won(svc.chains().save_chain(&mut chain).await)? {
            return Ok(StepOutcome::Stale);
        }
    }
    finish_failure(svc, job, chain).await
}

/// The side effects of a claimed failure (each idempotent), then the chain's
/// end: its files completed, its error file written.
pub(crate) async fn finish_failure(
    svc: &impl LifecycleServices,
    job: &Job,
    mut chain: Chain,
) -> Result<StepOutcome, StepError> {
    let Some(failure) = chain.failure.clone() else {
        return Ok(StepOutcome::Stale);
    };
    if let Some(closing) = chain.closing.take() {
        complete_file(svc, job, &chain.resource_type, &closing).await?;
    }
    if let Some(open) = chain.open_file.take() {
        complete_file(svc, job, &chain.resource_type, &open).await?;
    }
    write_error_file_numbered(svc, job, failure.error_file, &[failure.message]).await?;
    chain.state = ChainState::Failed;
    chain.heartbeat = unix_now();
    finish(svc, job, &mut chain).await
}

pub(crate) async fn cancel_chain(
    svc: &(
         impl LogSchedules + ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs
     ),
    job: &Job,
    mut chain: Chain,
) -> Result<StepOutcome, StepError> {
    for open in [chain.open_file.take(), chain.closing.take()]
        .into_iter()
        .flatten()
    {
        svc.objects()
            .abort_upload(&open.key, &open.upload_id)
            .await?;
    }
    chain.state = ChainState::Cancelled;
    finish(svc, job, &mut chain).await
}

/// Writes a chain's final state (set by the caller), counting it on its job
/// in the same write; whoever finishes the last chain completes the job.
/// `Stale` if another delivery finished the chain first.
pub(crate) async fn finish(
    svc: &(
         impl LogSchedules + ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs
     ),
    job: &Job,
    chain: &mut Chain,
) -> Result<StepOutcome, StepError> {
    if !won(svc.chains().finish_chain(chain).await)? {
        return Ok(StepOutcome::Stale);
    }
    maybe_complete_job(svc, &job.id).await?;
    Ok(StepOutcome::Finished)
}

/// Marks a job complete once its last chain has finished (or cleans up a
/// cancelled one). Safe to call any number of times.
pub async fn maybe_complete_job(
    svc: &(
         impl LogSchedules + ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs
     ),
    job_id: &str,
) -> Result<(), StepError> {
    settle_job(svc, job_id, false).await
}

/// Like [`maybe_complete_job`], for a job whose chains the caller listed as
/// all finished: the listing decides even if the job's counter says
/// otherwise (a lost counter update must not leave a job running forever;
/// moto, the second test lane, loses concurrent ADDs).
pub async fn complete_listed_job(
    svc: &(
         impl LogSchedules + ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs
     ),
    job_id: &str,
) -> Result<(), StepError> {
    settle_job(svc, job_id, true).await
}

async fn settle_job(
    svc: &(
         impl LogSchedules + ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs
     ),
    job_id: &str,
    all_listed_finished: bool,
) -> Result<(), StepError> {
    for _ in 0..5 {
        let Some(job) = svc.jobs().get_job(job_id).await? else {
            return Ok(());
        };
        if !job.all_chains_finished() && !all_listed_finished {
            if job.status == JobStatus::Running
                && job.chains_remaining as usize <= job.referenced_types.len()
            {
                start_waiting_chains(svc, &job).await?;
            }
            return Ok(());
        }
        match job.status {
            JobStatus::Queued | JobStatus::Running => {
                let (ended, reasons) = chain_results(svc, &job).await?;
                let (status, failure) = match ended {
                    ChainResults::NoneSucceeded => (
                        JobStatus::Failed,
                        Some(format!("No resource type could be exported. {reasons}")),
                    ),
                    _ => (JobStatus::Complete, None),
                };
                let completed = svc.job_writes().set_job_status(&job, status, failure).await;
                if won(completed)? {
                    return on_complete(svc, &job, ended).await;
                }
            }
            JobStatus::Cancelled => {
                svc.objects()
                    .delete_prefix(&format!("{}/", job.folder))
                    .await?;
                promote_queued(svc).await?;
                return Ok(());
            }
            JobStatus::Complete | JobStatus::Failed => return Ok(()),
        }
    }
    Ok(())
}

/// How a job's chains ended, once every one has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainResults {
    /// Every chain exported its whole source.
    AllDone,
    /// Some chains failed, at least one exported its source.
    SomeFailed,
    /// Chains failed and none exported its source.
    NoneSucceeded,
}

/// How the chains ended, and the first failed chains' reasons.
async fn chain_results(
    svc: &impl ReadJobs,
    job: &Job,
) -> Result<(ChainResults, String), StepError> {
    /// Reasons quoted in a failed job's outcome (the rest are alike or in
    /// the logs).
    const QUOTED: usize = 3;
    let chains = svc.jobs().list_chains(&job.id).await?;
    let done = chains
        .iter()
        .filter(|c| c.state == ChainState::Done)
        .count();
    let reasons: Vec<&str> = chains
        .iter()
        .filter_map(|c| c.failure.as_ref().map(|f| f.message.as_str()))
        .take(QUOTED)
        .collect();
    let ended = if done == chains.len() {
        ChainResults::AllDone
    } else if done > 0 {
        ChainResults::SomeFailed
    } else {
        ChainResults::NoneSucceeded
    };
    Ok((ended, reasons.join(" ")))
}

/// What follows a job's end, once: the schedule's success (only when every
/// chain exported its whole source: the next `since: last-success` export
/// must not skip what a failed chain missed), the removal of working
/// objects, and the next queued job.
async fn on_complete(
    svc: &(
         impl LogSchedules + ReadJobs + ScheduleSteps + Settings + StoreObjects + WriteChains + WriteJobs
     ),
    job: &Job,
    ended: ChainResults,
) -> Result<(), StepError> {
    let job_id = job.id.as_str();
    if ended != ChainResults::AllDone {
        tracing::warn!(job_id, ?ended, "export ended with failed chains");
    }
    if let Some(schedule) = &job.schedule
        && ended == ChainResults::AllDone
    {
        svc.schedules()
            .record_schedule_success(schedule, &job.transaction_time)
            .await?;
    }
    if !job.referenced_types.is_empty()
        && let Err(e) = svc
            .objects()
            .delete_prefix(&crate::worker::referenced::working_prefix(job))
            .await
    {
        // Expires with the job's files anyway.
        tracing::warn!(job_id, error = %e, "could not remove working objects");
    }
    tracing::info!(job_id, "export complete");
    promote_queued(svc).await?;
    Ok(())
}

/// Starts the waiting (referenced-resources) chains once every other chain
/// of the job has finished. Concurrent callers race on each chain's version:
/// one of them starts it.
async fn start_waiting_chains(
    svc: &(impl ReadJobs + ScheduleSteps + WriteChains),
    job: &Job,
) -> Result<(), StepError> {
    let chains = svc.jobs().list_chains(&job.id).await?;
    if chains
        .iter()
        .any(|c| !c.referenced && !c.state.is_finished())
    {
        return Ok(());
    }
    for mut chain in chains
        .into_iter()
        .filter(|c| c.state == ChainState::Waiting)
    {
        chain.state = ChainState::Running;
        chain.heartbeat = unix_now();
        if !won(svc.chains().save_chain(&mut chain).await)? {
            continue;
        }
        tracing::info!(job_id = %job.id, chain = %chain.chain_id, "referenced-resources chain started");
        svc.continuation().schedule(chain.event()).await?;
    }
    Ok(())
}

/// Starts queued jobs while slots are free, oldest first. Safe to call from
/// anywhere at any time: each start is a conditional status change.
pub async fn promote_queued(
    svc: &(impl ReadJobs + ScheduleSteps + Settings + WriteChains + WriteJobs),
) -> Result<usize, StoreError> {
    let active = svc.jobs().active_jobs().await?;
    let mut running: Vec<String> = active
        .iter()
        .filter(|j| j.status == JobStatus::Running)
        .map(|j| j.owner.clone())
        .collect();
    let mut queued: Vec<&Job> = active
        .iter()
        .filter(|j| j.status == JobStatus::Queued)
        .collect();
    queued.sort_by(|a, b| (&a.transaction_time, &a.id).cmp(&(&b.transaction_time, &b.id)));
    let mut started = 0;
    for job in queued {
        if running.len() >= svc.config().max_running_jobs {
            break;
        }
        if running.iter().filter(|o| **o == job.owner).count()
            >= svc.config().max_running_per_client
        {
            continue;
        }
        if !won(svc
            .job_writes()
            .set_job_status(job, JobStatus::Running, None)
            .await)?
        {
            continue;
        }
        for mut chain in svc.jobs().list_chains(&job.id).await? {
            if chain.state != crate::model::ChainState::Running {
                continue;
            }
            // Time spent queued is not a stall: the watchdog measures from here.
            chain.heartbeat = unix_now();
            if !won(svc.chains().save_chain(&mut chain).await)? {
                continue;
            }
            let ev = chain.event();
            if let Err(e) = svc.continuation().schedule(ev).await {
                tracing::error!(job_id = %job.id, error = %e, "could not start a queued chain; the watchdog will");
            }
        }
        tracing::info!(job_id = %job.id, "queued export started");
        running.push(job.owner.clone());
        started += 1;
    }
    Ok(started)
}
