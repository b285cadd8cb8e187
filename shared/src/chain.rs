//! One step of a chain: read the committed cursor, pull source pages into one
//! part, upload it, commit the new cursor with a conditional write, and hand
//! the next step to the continuation. A duplicated or retried step re-reads
//! the same cursor and overwrites the same part, so nothing is lost or doubled.

use crate::config::MIN_PART_SIZE;
use crate::continuation::ContinuationError;
use crate::export_request::TypeFilter;
use crate::instant::{now_millis, parse_instant};
use crate::job::{
    Chain, ChainState, FileKind, FileRecord, Job, JobStatus, OpenFile, StepEvent, file_name,
};
use crate::job_store::StoreError;
use crate::object_store::ObjectError;
use crate::outcome::{Severity, operation_outcome};
use crate::prefetch::{PageQuery, Prefetch};
use crate::services::ExportServices;
use crate::source::SourceError;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;

/// Time kept in reserve before a Lambda deadline to upload and commit.
const DEADLINE_RESERVE: Duration = Duration::from_secs(20);
/// Most source pages one step reads (bounds work on long runs of empty pages).
const MAX_PAGES_PER_STEP: usize = 10_000;

/// Page cursors remembered per chain to detect `next` links that loop.
const MAX_VISITED: usize = 2000;

/// FNV-1a: a hash that is stable across builds (cursors are stored).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Committed; the next step was scheduled.
    Continued,
    /// The chain finished (done, failed or cancelled).
    Finished,
    /// Nothing to do: a duplicate or outdated delivery, or a lost race.
    Stale,
}

/// A step failed in a way that may succeed on retry.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Job store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Object store failure.
    #[error(transparent)]
    Objects(#[from] ObjectError),
    /// The next step could not be scheduled.
    #[error(transparent)]
    Continuation(#[from] ContinuationError),
    /// An open multipart upload disappeared without becoming an object (an
    /// interrupted completion on a non-atomic store, or a lifecycle abort).
    #[error("multipart upload of {0} was lost")]
    UploadLost(String),
}

/// Whether a conditional chain write won: a lost race means another
/// delivery of this step owns the chain now.
pub(crate) fn won(write: Result<(), StoreError>) -> Result<bool, StepError> {
    match write {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The `_lastUpdated` upper bound of a job: `_until` if earlier than the
/// transaction time, else the transaction time.
pub fn effective_until(job: &Job) -> OffsetDateTime {
    let tx = parse_instant(&job.transaction_time).unwrap_or_else(OffsetDateTime::now_utc);
    match job.request.until.as_deref().and_then(parse_instant) {
        Some(u) if u < tx => u,
        _ => tx,
    }
}

pub(crate) fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Byte offset just past the first `n` lines of `data`.
fn offset_after_lines(data: &[u8], n: u64) -> usize {
    if n == 0 {
        return 0;
    }
    let mut seen = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    data.len()
}

/// Runs one step of one chain.
pub async fn run_step(
    svc: &ExportServices,
    ev: &StepEvent,
    deadline: Option<Instant>,
) -> Result<StepOutcome, StepError> {
    // The step the chain is committed at as far as this invocation knows:
    // an invocation may commit several parts before it hands over.
    let mut committed = ev.step;
    let at = |step| StepEvent { step, ..ev.clone() };
    match run_step_once(svc, ev, deadline, &mut committed).await {
        Err(StepError::UploadLost(key)) => recover_lost_upload(svc, &at(committed), &key).await,
        // A retry of this event would find the chain moved on: hand the
        // committed step over instead (the watchdog backs this up).
        Err(e) if committed != ev.step => {
            tracing::warn!(job_id = %ev.job_id, chain = %ev.chain_id, step = committed, error = %e, "step failed after earlier parts committed; handing over");
            match svc.continuation.schedule(at(committed)).await {
                Ok(()) => Ok(StepOutcome::Continued),
                Err(_) => Err(e),
            }
        }
        other => other,
    }
}

/// Rewinds a chain whose open file's upload was lost to the cursor at which
/// that file was opened, so the file is exported again under the same number.
async fn recover_lost_upload(
    svc: &ExportServices,
    ev: &StepEvent,
    key: &str,
) -> Result<StepOutcome, StepError> {
    let Some(mut chain) = svc.store.get_chain(&ev.job_id, &ev.chain_id).await? else {
        return Ok(StepOutcome::Stale);
    };
    let lost = match &chain.open_file {
        Some(open) if open.key == key && chain.step == ev.step => open.clone(),
        _ => return Ok(StepOutcome::Stale),
    };
    tracing::warn!(job_id = %ev.job_id, chain = %ev.chain_id, file = lost.number, "upload lost; exporting the file again from its start");
    chain.cursor = lost.start_cursor;
    chain.skip = lost.start_skip;
    // The file's pages are followed again: that is a rewind, not a loop.
    chain.visited.clear();
    chain.exported = chain.exported.saturating_sub(lost.count);
    chain.open_file = None;
    chain.reserved_number = Some(lost.number);
    chain.step += 1;
    if !won(svc.store.save_chain(&mut chain).await)? {
        return Ok(StepOutcome::Stale);
    }
    svc.continuation.schedule(chain.event()).await?;
    Ok(StepOutcome::Continued)
}

async fn run_step_once(
    svc: &ExportServices,
    ev: &StepEvent,
    deadline: Option<Instant>,
    committed: &mut u64,
) -> Result<StepOutcome, StepError> {
    let Some(job) = svc.store.get_job(&ev.job_id).await? else {
        return Ok(StepOutcome::Stale);
    };
    let Some(mut chain) = svc.store.get_chain(&ev.job_id, &ev.chain_id).await? else {
        return Ok(StepOutcome::Stale);
    };
    if chain.state != ChainState::Running || chain.step != ev.step {
        return Ok(StepOutcome::Stale);
    }
    if job.status == JobStatus::Cancelled {
        return cancel_chain(svc, &job, chain).await;
    }
    if job.status.is_terminal() {
        return Ok(StepOutcome::Stale);
    }
    if job.status == JobStatus::Queued {
        // Queued jobs start only through admission control.
        return Ok(StepOutcome::Stale);
    }
    let span =
        tracing::info_span!("step", job_id = %job.id, chain = %chain.chain_id, step = chain.step);
    let _enter = span.enter();
    let cfg = &svc.config;
    let (since, until) = chain_window(&job, &chain);
    let filters: Vec<TypeFilter> = job
        .request
        .type_filters
        .iter()
        .filter(|f| f.resource_type == chain.resource_type)
        .cloned()
        .collect();
    let resource_type = chain.resource_type.clone();
    let query = PageQuery {
        source: svc.source.clone(),
        resource_type: Arc::from(resource_type.as_str()),
        window: (since, until),
        filters: Arc::from(filters.as_slice()),
        page_size: cfg.page_size,
        scope: Arc::new(job.scope.clone()),
        batch: chain.batch.as_deref().map(Arc::from),
    };
    let total = if chain.step == 0 && chain.total.is_none() && !chain.referenced {
        svc.source
            .estimate(&query.request(None))
            .await
            .ok()
            .flatten()
    } else {
        chain.total
    };
    if chain.step == 0
        && chain.cursor.is_none()
        && chain.partition.is_none()
        && chain.batch.is_none()
        && !chain.referenced
        && filters.is_empty()
        && cfg.max_partitions > 1
        && svc.source.supports_time_partitions()
        && let Some(total) = total.filter(|t| *t > cfg.partition_target)
    {
        drop(_enter);
        return crate::partition::split_chain(svc, &job, chain, (since, until), total).await;
    }

    // Several parts per invocation: the next part's first page is fetched
    // while this part uploads and commits. Each part is still committed on
    // its own, so a crash loses at most the part in flight.
    let mut prefetched: Option<Prefetch> = None;
    let mut parts_done = 0usize;
    loop {
        // Roll before appending: a file never grows past the limit.
        let roll = chain
            .open_file
            .as_ref()
            .is_some_and(|open| open.bytes as usize + cfg.part_size > cfg.max_file_size);
        let room_before =
            cfg.max_file_size - chain.open_file.as_ref().map_or(0, |o| o.bytes as usize);

        let mut buf: Vec<u8> = Vec::with_capacity(cfg.part_size + cfg.part_size / 4);
        let mut count = 0u64;
        let mut cursor = chain.cursor.clone();
        let mut skip = chain.skip;
        let mut exhausted = false;
        let mut visited: Vec<u64> = Vec::new();
        let room = if roll { cfg.max_file_size } else { room_before };
        for _ in 0..MAX_PAGES_PER_STEP {
            let fetched = if let Some(p) = prefetched.take() {
                p.page().await
            } else if chain.referenced {
                crate::referenced::fetch_page(svc, &job, &resource_type, cursor.as_deref()).await
            } else {
                query.fetch(cursor.as_deref()).await
            };
            let page = match fetched {
                Ok(p) => p,
                Err(e) => {
                    drop(_enter);
                    return fail_chain(svc, &job, chain, &e).await;
                }
            };
            let start = offset_after_lines(&page.ndjson, skip);
            let data = &page.ndjson[start..];
            let lines = page.count.saturating_sub(skip);
            // The loop goes on after this page exactly when it fits whole and the
            // part is not full yet: fetch the next one meanwhile.
            let after = buf.len() + data.len();
            if !chain.referenced
                && after <= room
                && after < cfg.part_size
                && deadline.is_none_or(|d| Instant::now() + DEADLINE_RESERVE < d)
                && let Some(next) = &page.next
            {
                prefetched = Some(query.spawn(next.clone()));
            }
            if buf.len() + data.len() <= room {
                buf.extend_from_slice(data);
                count += lines;
                skip = 0;
                match page.next {
                    Some(next) => {
                        // A `next` link that returns to any earlier page would loop forever.
                        let h = fnv1a(next.as_bytes());
                        if chain.visited.contains(&h) {
                            if let Some(p) = prefetched.take() {
                                p.cancel();
                            }
                            let e = SourceError::Permanent(
                                "upstream next link loops back to an earlier page".into(),
                            );
                            drop(_enter);
                            return fail_chain(svc, &job, chain, &e).await;
                        }
                        visited.push(h);
                        cursor = Some(next);
                    }
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            } else {
                // Take the lines that fit; the rest of this page starts the next step.
                let mut take = 0u64;
                let mut end = 0usize;
                for (i, b) in data.iter().enumerate() {
                    if *b == b'\n' {
                        if buf.len() + i + 1 > room {
                            break;
                        }
                        take += 1;
                        end = i + 1;
                    }
                }
                if take == 0 && buf.is_empty() {
                    let e = SourceError::Permanent(format!(
                        "a {} resource is larger than the file size limit",
                        chain.resource_type
                    ));
                    drop(_enter);
                    return fail_chain(svc, &job, chain, &e).await;
                }
                buf.extend_from_slice(&data[..end]);
                count += take;
                skip += take;
                break;
            }
            if buf.len() >= cfg.part_size {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() + DEADLINE_RESERVE >= d) {
                break;
            }
        }

        // A fetch still in flight is for `cursor`, the next page to export. Start
        // one if the next part will run in this invocation.
        let another_part = parts_done + 1 < cfg.parts_per_invocation
            && deadline.is_none_or(|d| Instant::now() + 2 * DEADLINE_RESERVE < d);
        if another_part
            && !exhausted
            && prefetched.is_none()
            && !chain.referenced
            && let Some(c) = &cursor
        {
            prefetched = Some(query.spawn(c.clone()));
        }

        if roll && let Some(open) = chain.open_file.take() {
            complete_file(svc, &job, &chain, &open).await?;
            if !won(svc.store.save_chain(&mut chain).await)? {
                return Ok(StepOutcome::Stale);
            }
        }

        // Before anything of this step is committed, so a committed step's
        // references are always on record.
        crate::referenced::record_step(svc, &job, &chain, &buf).await?;

        let mut last_part = 0usize;
        let mut already_completed = false;
        if !buf.is_empty() {
            if chain.open_file.is_none() && !open_new_file(svc, &job, &mut chain).await? {
                return Ok(StepOutcome::Stale);
            }
            if let Some(open) = chain.open_file.as_mut() {
                last_part = buf.len();
                let part_number = open.parts.len() as u32 + 1;
                let etag = match svc
                    .objects
                    .upload_part(&open.key, &open.upload_id, part_number, Bytes::from(buf))
                    .await
                {
                    Ok(etag) => etag,
                    Err(ObjectError::NoSuchUpload) => {
                        // Only an earlier attempt or a concurrent duplicate of this
                        // very step completes this upload: if the chain moved on,
                        // this delivery is stale; if the object holds exactly the
                        // committed bytes plus this part, the file is done.
                        let now = svc.store.get_chain(&job.id, &chain.chain_id).await?;
                        if now.is_some_and(|c| c.version != chain.version) {
                            return Ok(StepOutcome::Stale);
                        }
                        let whole = open.bytes + last_part as u64;
                        if !object_appears(svc, &open.key, Some(whole)).await? {
                            return Err(StepError::UploadLost(open.key.clone()));
                        }
                        already_completed = true;
                        String::new()
                    }
                    Err(e) => return Err(e.into()),
                };
                open.parts.push(etag);
                open.bytes += last_part as u64;
                open.count += count;
            }
        }
        chain.cursor = cursor;
        chain.skip = skip;
        chain.visited.extend(visited);
        let excess = chain.visited.len().saturating_sub(MAX_VISITED);
        chain.visited.drain(..excess);
        chain.exported += count;
        chain.total = total;
        chain.step += 1;
        chain.heartbeat = unix_now();
        tracing::info!(
            resources = count,
            bytes = last_part,
            exhausted,
            "step uploaded"
        );

        // A part under 5 MiB may only be the last of its file.
        let small_tail = last_part > 0 && last_part < MIN_PART_SIZE;
        if (exhausted || small_tail || already_completed)
            && let Some(open) = chain.open_file.take()
        {
            complete_file(svc, &job, &chain, &open).await?;
        }
        if exhausted {
            chain.state = ChainState::Done;
            if !won(svc.store.finish_chain(&mut chain).await)? {
                return Ok(StepOutcome::Stale);
            }
            maybe_complete_job(svc, &job.id).await?;
            return Ok(StepOutcome::Finished);
        }
        if !won(svc.store.save_chain(&mut chain).await)? {
            return Ok(StepOutcome::Stale);
        }
        *committed = chain.step;
        parts_done += 1;
        if another_part {
            match svc.store.get_job(&job.id).await? {
                Some(j) if j.status == JobStatus::Cancelled => {
                    if let Some(p) = prefetched.take() {
                        p.cancel();
                    }
                    return cancel_chain(svc, &j, chain).await;
                }
                Some(_) => continue,
                None => return Ok(StepOutcome::Stale),
            }
        }
        if let Some(p) = prefetched.take() {
            p.cancel();
        }
        svc.continuation.schedule(chain.event()).await?;
        return Ok(StepOutcome::Continued);
    }
}

/// The `_lastUpdated` window of a chain: the job's, narrowed to the chain's
/// partition.
fn chain_window(job: &Job, chain: &Chain) -> (Option<OffsetDateTime>, OffsetDateTime) {
    let mut since = job.request.since.as_deref().and_then(parse_instant);
    let mut until = effective_until(job);
    if let Some(p) = &chain.partition {
        if let Some(after) = p.after.as_deref().and_then(parse_instant) {
            since = Some(since.map_or(after, |s| s.max(after)));
        }
        if let Some(upto) = p.upto.as_deref().and_then(parse_instant) {
            until = until.min(upto);
        }
    }
    (since, until)
}

/// Reserves a file number and opens its multipart upload, committing each
/// so a retried step reuses them. Returns false if another writer won.
async fn open_new_file(
    svc: &ExportServices,
    job: &Job,
    chain: &mut Chain,
) -> Result<bool, StepError> {
    let number = match chain.reserved_number {
        Some(n) => n,
        None => {
            let n = svc
                .store
                .next_file_number(&job.id, &chain.resource_type, job.expires_at)
                .await?;
            chain.reserved_number = Some(n);
            match svc.store.save_chain(chain).await {
                Ok(()) => {}
                Err(StoreError::Conflict) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            n
        }
    };
    let key = format!("{}/{}", job.folder, file_name(&chain.resource_type, number));
    let upload_id = svc.objects.create_upload(&key).await?;
    chain.open_file = Some(OpenFile {
        start_cursor: chain.cursor.clone(),
        start_skip: chain.skip,
        number,
        key: key.clone(),
        upload_id: upload_id.clone(),
        parts: vec![],
        bytes: 0,
        count: 0,
    });
    chain.reserved_number = None;
    match svc.store.save_chain(chain).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict) => {
            let _ = svc.objects.abort_upload(&key, &upload_id).await;
            Ok(false)
        }
        // The write may have landed: keep the upload (an orphan is aborted by
        // the bucket's lifecycle rule), never abort one the chain may own.
        Err(e) => Err(e.into()),
    }
}

/// Waits briefly for an object a concurrent completion is writing; true if it
/// exists (with `size`, when given).
async fn object_appears(
    svc: &ExportServices,
    key: &str,
    size: Option<u64>,
) -> Result<bool, StepError> {
    for attempt in 0..6u64 {
        if let Some(found) = svc.objects.object_size(key).await? {
            return Ok(size.is_none_or(|s| s == found));
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    Ok(false)
}

/// Completes a file (idempotently) and records it.
async fn complete_file(
    svc: &ExportServices,
    job: &Job,
    chain: &Chain,
    open: &OpenFile,
) -> Result<(), StepError> {
    if let Err(e) = svc
        .objects
        .complete_upload(&open.key, &open.upload_id, &open.parts)
        .await
    {
        // A duplicate of this step may have completed it already (or be doing
        // so right now): the file counts as complete only if it is whole.
        if !object_appears(svc, &open.key, Some(open.bytes)).await? {
            if matches!(e, ObjectError::NoSuchUpload) {
                return Err(StepError::UploadLost(open.key.clone()));
            }
            return Err(e.into());
        }
    }
    let record = FileRecord {
        resource_type: chain.resource_type.clone(),
        number: open.number,
        key: open.key.clone(),
        count: open.count,
        bytes: open.bytes,
        kind: FileKind::Output,
        expires_at: job.expires_at,
    };
    svc.store.put_file(&job.id, &record).await?;
    Ok(())
}

/// Writes one OperationOutcome line into a new error file of the job.
pub async fn write_error_file(
    svc: &ExportServices,
    job: &Job,
    messages: &[String],
) -> Result<(), StepError> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut body = Vec::new();
    for m in messages {
        let oo = operation_outcome(Severity::Error, "processing", m);
        serde_json::to_writer(&mut body, &oo).map_err(|e| ObjectError::Backend(e.to_string()))?;
        body.push(b'\n');
    }
    let number = svc
        .store
        .next_file_number(&job.id, "OperationOutcome", job.expires_at)
        .await?;
    let key = format!("{}/{}", job.folder, file_name("OperationOutcome", number));
    let bytes = body.len() as u64;
    svc.objects.put_object(&key, Bytes::from(body)).await?;
    let record = FileRecord {
        resource_type: "OperationOutcome".into(),
        number,
        key,
        count: messages.len() as u64,
        bytes,
        kind: FileKind::Error,
        expires_at: job.expires_at,
    };
    svc.store.put_file(&job.id, &record).await?;
    Ok(())
}

/// Ends a chain whose source failed permanently (or that stalled too often): what it exported so far is
/// kept, and an OperationOutcome explains the rest.
pub async fn fail_chain(
    svc: &ExportServices,
    job: &Job,
    mut chain: Chain,
    err: &(dyn std::fmt::Display + Sync),
) -> Result<StepOutcome, StepError> {
    tracing::warn!(job_id = %job.id, chain = %chain.chain_id, error = %err, "chain failed");
    if let Some(open) = chain.open_file.take() {
        if open.parts.is_empty() {
            svc.objects.abort_upload(&open.key, &open.upload_id).await?;
        } else {
            complete_file(svc, job, &chain, &open).await?;
        }
    }
    let message = format!(
        "Export of {} stopped after {} resources: {}",
        chain.resource_type, chain.exported, err
    );
    write_error_file(svc, job, &[message]).await?;
    chain.state = ChainState::Failed;
    chain.heartbeat = unix_now();
    if !won(svc.store.finish_chain(&mut chain).await)? {
        return Ok(StepOutcome::Stale);
    }
    maybe_complete_job(svc, &job.id).await?;
    Ok(StepOutcome::Finished)
}

async fn cancel_chain(
    svc: &ExportServices,
    job: &Job,
    mut chain: Chain,
) -> Result<StepOutcome, StepError> {
    if let Some(open) = chain.open_file.take() {
        svc.objects.abort_upload(&open.key, &open.upload_id).await?;
    }
    chain.state = ChainState::Cancelled;
    if !won(svc.store.finish_chain(&mut chain).await)? {
        return Ok(StepOutcome::Stale);
    }
    maybe_complete_job(svc, &job.id).await?;
    Ok(StepOutcome::Finished)
}

/// Marks a job complete once its last chain has finished (or cleans up a
/// cancelled one). Safe to call any number of times.
pub async fn maybe_complete_job(svc: &ExportServices, job_id: &str) -> Result<(), StepError> {
    for _ in 0..5 {
        let Some(job) = svc.store.get_job(job_id).await? else {
            return Ok(());
        };
        if job.chains_remaining > 0 {
            if job.status == JobStatus::Running
                && job.chains_remaining as usize <= job.referenced_types.len()
            {
                start_waiting_chains(svc, &job).await?;
            }
            return Ok(());
        }
        match job.status {
            JobStatus::Queued | JobStatus::Running => {
                match svc
                    .store
                    .set_job_status(&job, JobStatus::Complete, None)
                    .await
                {
                    Ok(()) => {
                        if let Some(schedule) = &job.schedule {
                            svc.store
                                .record_schedule_success(schedule, &job.transaction_time)
                                .await?;
                        }
                        if !job.referenced_types.is_empty()
                            && let Err(e) = svc
                                .objects
                                .delete_prefix(&crate::referenced::working_prefix(&job))
                                .await
                        {
                            // Expires with the job's files anyway.
                            tracing::warn!(job_id, error = %e, "could not remove working objects");
                        }
                        tracing::info!(job_id, "export complete");
                        crate::admission::promote_queued(svc).await?;
                        return Ok(());
                    }
                    Err(StoreError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            JobStatus::Cancelled => {
                svc.objects
                    .delete_prefix(&format!("{}/", job.folder))
                    .await?;
                crate::admission::promote_queued(svc).await?;
                return Ok(());
            }
            JobStatus::Complete | JobStatus::Failed => return Ok(()),
        }
    }
    Ok(())
}

/// Starts the waiting (referenced-resources) chains once every other chain
/// of the job has finished. Concurrent callers race on each chain's version:
/// one of them starts it.
async fn start_waiting_chains(svc: &ExportServices, job: &Job) -> Result<(), StepError> {
    let chains = svc.store.list_chains(&job.id).await?;
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
        match svc.store.save_chain(&mut chain).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
        tracing::info!(job_id = %job.id, chain = %chain.chain_id, "referenced-resources chain started");
        svc.continuation.schedule(chain.event()).await?;
    }
    Ok(())
}

/// A fresh chain for one resource type.
pub fn new_chain(job_id: &str, chain_id: &str, resource_type: &str) -> Chain {
    Chain {
        job_id: job_id.into(),
        chain_id: chain_id.into(),
        resource_type: resource_type.into(),
        batch: None,
        cursor: None,
        skip: 0,
        step: 0,
        state: ChainState::Running,
        open_file: None,
        reserved_number: None,
        exported: 0,
        total: None,
        heartbeat: now_millis().unix_timestamp(),
        restarts: 0,
        visited: Vec::new(),
        partition: None,
        referenced: false,
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::offset_after_lines;

    #[test]
    fn skips_whole_lines() {
        let d = b"a\nbb\nccc\n";
        assert_eq!(offset_after_lines(d, 0), 0);
        assert_eq!(offset_after_lines(d, 1), 2);
        assert_eq!(offset_after_lines(d, 3), 9);
        assert_eq!(offset_after_lines(d, 5), 9);
    }
}
