//! One step of a chain: read the committed cursor, pull source pages into one
//! part, upload it, commit the new cursor with a conditional write, and hand
//! the next step to the continuation. A duplicated or retried step re-reads
//! the same cursor and overwrites the same part, so nothing is lost or doubled.

use crate::fhir::instant::parse_instant;
use crate::model::TypeFilter;
use crate::model::config::MIN_PART_SIZE;
use crate::model::effective_until;
use crate::model::{Chain, ChainState, Job, JobStatus, StepEvent};
use crate::ports::job_store::won;
use crate::ports::services::{
    LifecycleServices, ReadJobs, ScheduleSteps, StepServices, StoreObjects, WriteChains,
};
use crate::ports::source::SourceError;
use crate::worker::file_closing::Closing;
use crate::worker::lifecycle::{cancel_chain, fail_chain};
use crate::worker::outcome::{StepError, StepOutcome};
use crate::worker::page_pipeline::{PageQuery, Prefetch};
use crate::worker::part_writer::{self, PartData, PendingPart};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument;

/// Time kept in reserve before a Lambda deadline to upload and commit.
const DEADLINE_RESERVE: Duration = Duration::from_secs(20);
/// Most source pages one step reads (bounds work on long runs of empty pages).
const MAX_PAGES_PER_STEP: usize = 10_000;

/// FNV-1a: a hash that is stable across builds (cursors are stored).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
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
    svc: &impl StepServices,
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
            match svc.continuation().schedule(at(committed)).await {
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
    svc: &(impl ReadJobs + ScheduleSteps + StoreObjects + WriteChains),
    ev: &StepEvent,
    key: &str,
) -> Result<StepOutcome, StepError> {
    let Some(mut chain) = svc.jobs().get_chain(&ev.job_id, &ev.chain_id).await? else {
        return Ok(StepOutcome::Stale);
    };
    if chain.step != ev.step {
        return Ok(StepOutcome::Stale);
    }
    let lost = match (&chain.closing, &chain.open_file) {
        (Some(closing), _) if closing.key == key => closing.clone(),
        (_, Some(open)) if open.key == key => open.clone(),
        _ => return Ok(StepOutcome::Stale),
    };
    tracing::warn!(job_id = %ev.job_id, chain = %ev.chain_id, file = lost.number, "upload lost; exporting the file again from its start");
    chain.cursor = lost.start_cursor;
    chain.skip = lost.start_skip;
    // The file's pages are followed again: that is a rewind, not a loop.
    chain.visited.clear();
    let mut rewound = lost.count;
    if chain.closing.take().is_some()
        && let Some(open) = chain.open_file.take()
    {
        // The file after the lost one is exported again too (its number
        // stays unused).
        rewound += open.count;
        if let Err(e) = svc.objects().abort_upload(&open.key, &open.upload_id).await {
            tracing::warn!(job_id = %ev.job_id, error = %e, "could not abort a rewound upload");
        }
    }
    chain.exported = chain.exported.saturating_sub(rewound);
    chain.open_file = None;
    chain.reserved_number = Some(lost.number);
    chain.step += 1;
    if !won(svc.chains().save_chain(&mut chain).await)? {
        return Ok(StepOutcome::Stale);
    }
    svc.continuation().schedule(chain.event()).await?;
    Ok(StepOutcome::Continued)
}

async fn run_step_once(
    svc: &impl StepServices,
    ev: &StepEvent,
    deadline: Option<Instant>,
    committed: &mut u64,
) -> Result<StepOutcome, StepError> {
    let Some(job) = svc.jobs().get_job(&ev.job_id).await? else {
        return Ok(StepOutcome::Stale);
    };
    let Some(chain) = svc.jobs().get_chain(&ev.job_id, &ev.chain_id).await? else {
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
    export_parts(svc, job, chain, deadline, committed)
        .instrument(span)
        .await
}

/// Commits the pending part, if any; `Some` ends the step with that outcome.
async fn settle(
    svc: &impl LifecycleServices,
    job: &Job,
    chain: &mut Chain,
    pending: &mut Option<PendingPart>,
    total: Option<u64>,
    committed: &mut u64,
) -> Result<Option<StepOutcome>, StepError> {
    let Some(part) = pending.take() else {
        return Ok(None);
    };
    let out = part_writer::commit(svc, job, chain, part, total).await?;
    if out.is_none() {
        *committed = chain.step;
    }
    Ok(out)
}

/// Ends a chain on a source failure, after committing the part in flight.
async fn fail_after(
    svc: &impl LifecycleServices,
    job: &Job,
    mut chain: Chain,
    pending: &mut Option<PendingPart>,
    total: Option<u64>,
    committed: &mut u64,
    err: &SourceError,
) -> Result<StepOutcome, StepError> {
    if let Some(out) = settle(svc, job, &mut chain, pending, total, committed).await? {
        return Ok(out);
    }
    fail_chain(svc, job, chain, err).await
}

/// The body of a step: parts of source pages, uploaded and committed.
async fn export_parts(
    svc: &impl StepServices,
    job: Job,
    mut chain: Chain,
    deadline: Option<Instant>,
    committed: &mut u64,
) -> Result<StepOutcome, StepError> {
    let cfg = &svc.config();
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
        source: svc.source().clone(),
        resource_type: Arc::from(resource_type.as_str()),
        window: (since, until),
        filters: Arc::from(filters.as_slice()),
        page_size: cfg.page_size,
        scope: Arc::new(job.scope.clone()),
        batch: chain.batch.as_deref().map(Arc::from),
    };
    let total = if chain.step == 0 && chain.total.is_none() && !chain.referenced {
        svc.source()
            .estimate(&query.request(None, 0))
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
        && svc.source().supports_time_partitions()
        && let Some(total) = total.filter(|t| *t > cfg.partition_target)
    {
        return crate::worker::partition::split_chain(svc, &job, chain, (since, until), total)
            .await;
    }

    // Several parts per invocation, pipelined: while part k uploads on its
    // own task, part k+1's pages are read (the next page is always fetched
    // while the current one is copied); part k is committed as soon as its
    // upload is done, and always before part k+1 starts uploading. A crash
    // loses at most the two parts in memory, which the retry reads again.
    let mut prefetched: Option<Prefetch> = None;
    let mut pending: Option<PendingPart> = None;
    let mut parts_started = 0usize;
    // A file left closing by an earlier invocation is completed again
    // (completion is idempotent), alongside this step's pages.
    let mut closing: Option<Closing> = chain
        .closing
        .clone()
        .map(|file| Closing::start(svc, &job, &chain.resource_type, file));
    // What the loop promises the source: it reads past a page whose body
    // leaves the part under `part_size` (the open file always has at least
    // that much room), so the source may request the following page early.
    let reads_ahead = !chain.referenced;
    let read_ahead_below = |after: usize| {
        let near_deadline = deadline.is_some_and(|d| Instant::now() + 2 * DEADLINE_RESERVE >= d);
        if reads_ahead && !near_deadline {
            cfg.part_size.saturating_sub(after)
        } else {
            0
        }
    };
    loop {
        let file_bytes = chain.open_file.as_ref().map_or(0, |o| o.bytes)
            + pending.as_ref().map_or(0, PendingPart::bytes);
        // Roll before appending: a file never grows past the limit.
        let roll =
            chain.open_file.is_some() && file_bytes as usize + cfg.part_size > cfg.max_file_size;
        let room = if roll {
            cfg.max_file_size
        } else {
            cfg.max_file_size.saturating_sub(file_bytes as usize)
        };
        // A resource that does not fit the open file's room starts a new file.
        let mut oversized = false;

        let mut buf: Vec<u8> = Vec::with_capacity(cfg.part_size + cfg.part_size / 4);
        let mut count = 0u64;
        let (mut cursor, mut skip) = match &pending {
            Some(p) => p.position(),
            None => (chain.cursor.clone(), chain.skip),
        };
        let mut exhausted = false;
        let mut visited: Vec<u64> = Vec::new();
        for _ in 0..MAX_PAGES_PER_STEP {
            let fetched = if let Some(p) = prefetched.take() {
                p.page().await
            } else if chain.referenced {
                crate::worker::referenced::fetch_page(svc, &job, &resource_type, cursor.as_deref())
                    .await
            } else {
                query
                    .fetch(cursor.as_deref(), read_ahead_below(buf.len()))
                    .await
            };
            let page = match fetched {
                Ok(p) => p,
                Err(e) => {
                    return fail_after(svc, &job, chain, &mut pending, total, committed, &e).await;
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
                prefetched = Some(query.spawn(next.clone(), read_ahead_below(after)));
            }
            // The previous part is committed as soon as its upload is done,
            // while the next page is on its way.
            if pending.as_ref().is_some_and(PendingPart::is_uploaded)
                && let Some(out) =
                    settle(svc, &job, &mut chain, &mut pending, total, committed).await?
            {
                return Ok(out);
            }
            if closing.as_ref().is_some_and(Closing::is_done)
                && let Some(c) = closing.take()
            {
                c.finish(&mut chain).await?;
            }
            if buf.len() + data.len() <= room {
                buf.extend_from_slice(data);
                count += lines;
                skip = 0;
                match page.next {
                    Some(next) => {
                        // A `next` link that returns to any earlier page would loop forever.
                        let h = fnv1a(next.as_bytes());
                        if chain.visited.contains(&h)
                            || visited.contains(&h)
                            || pending.as_ref().is_some_and(|p| p.visited(h))
                        {
                            let e = SourceError::Permanent(
                                "upstream next link loops back to an earlier page".into(),
                            );
                            return fail_after(
                                svc,
                                &job,
                                chain,
                                &mut pending,
                                total,
                                committed,
                                &e,
                            )
                            .await;
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
                // Take the lines that fit; the rest of this page starts the next part.
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
                    if room < cfg.max_file_size {
                        oversized = true;
                        break;
                    }
                    let e = SourceError::Permanent(format!(
                        "a {} resource is larger than the file size limit",
                        chain.resource_type
                    ));
                    return fail_after(svc, &job, chain, &mut pending, total, committed, &e).await;
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
        let another_part = parts_started + 1 < cfg.parts_per_invocation
            && deadline.is_none_or(|d| Instant::now() + 2 * DEADLINE_RESERVE < d);
        if another_part
            && !exhausted
            && prefetched.is_none()
            && !chain.referenced
            && let Some(c) = &cursor
        {
            prefetched = Some(query.spawn(c.clone(), read_ahead_below(0)));
        }

        // Parts are committed in order: the previous one first.
        if let Some(out) = settle(svc, &job, &mut chain, &mut pending, total, committed).await? {
            return Ok(out);
        }
        if (roll || oversized)
            && let Some(open) = chain.open_file.take()
        {
            // The full file completes on its own task while the next one
            // fills; the chain keeps it as `closing` until it is recorded.
            if let Some(c) = closing.take() {
                c.finish(&mut chain).await?;
            }
            chain.closing = Some(open.clone());
            closing = Some(Closing::start(svc, &job, &chain.resource_type, open));
        }

        // Before anything of this part is committed, so a committed step's
        // references are always on record.
        crate::worker::referenced::record_step(svc, &job, &chain, &buf).await?;

        if !buf.is_empty()
            && chain.open_file.is_none()
            && !part_writer::open_new_file(svc, &job, &mut chain).await?
        {
            return Ok(StepOutcome::Stale);
        }
        // A part under 5 MiB ends its file, so it is committed right away.
        let short = !buf.is_empty() && buf.len() < MIN_PART_SIZE;
        let part = PendingPart::start(
            svc,
            chain.open_file.as_ref(),
            PartData {
                buf,
                count,
                cursor,
                skip,
                visited,
                exhausted,
            },
        )?;
        pending = Some(part);
        parts_started += 1;
        if another_part && !exhausted && !short {
            match svc.jobs().get_job(&job.id).await? {
                Some(j) if j.status == JobStatus::Cancelled => {
                    // Dropping the pending part stops its upload.
                    drop(pending);
                    return cancel_chain(svc, &j, chain).await;
                }
                Some(_) => continue,
                None => return Ok(StepOutcome::Stale),
            }
        }
        // A chain finishes with no file closing; a hand-over leaves a
        // closing file to the next step unless it is done already.
        if (exhausted || closing.as_ref().is_some_and(Closing::is_done))
            && let Some(c) = closing.take()
        {
            c.finish(&mut chain).await?;
        }
        if let Some(out) = settle(svc, &job, &mut chain, &mut pending, total, committed).await? {
            return Ok(out);
        }
        drop(prefetched);
        svc.continuation().schedule(chain.event()).await?;
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
