//! One step of a chain: read the committed cursor, pull source pages into one
//! part, upload it, commit the new cursor with a conditional write, and hand
//! the next step to the continuation. A duplicated or retried step re-reads
//! the same cursor and overwrites the same part, so nothing is lost or doubled.

use crate::fhir::instant::parse_instant;
use crate::model::TypeFilter;
use crate::model::effective_until;
use crate::model::{Chain, ChainState, Job, JobStatus, StepEvent};
use crate::ports::job_store::won;
use crate::ports::services::{
    LifecycleServices, ReadJobs, ReadSource, ScheduleSteps, Settings, StepServices, StoreObjects,
    WriteChains,
};
use crate::ports::source::{Page, SourceError};
use crate::worker::deadline::{DEADLINE_RESERVE, before_deadline};
use crate::worker::file_closing::Closing;
use crate::worker::lifecycle::{cancel_chain, fail_chain, finish_failure};
use crate::worker::outcome::{StepError, StepOutcome};
use crate::worker::page_pipeline::{PageQuery, Prefetch};
use crate::worker::page_skip::{Exported, exported_prefix, last_id};
use crate::worker::part_writer::{self, PartData, PendingPart};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument;

/// Most source pages one step reads (bounds work on long runs of empty pages).
const MAX_PAGES_PER_STEP: usize = 10_000;

/// FNV-1a: a hash that is stable across builds (cursors are stored).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs one step of one chain.
pub async fn run_step(
    svc: &impl StepServices,
    ev: &StepEvent,
    deadline: Option<Instant>,
) -> Result<StepOutcome, StepError> {
    // The step the chain is committed at as far as this invocation knows
    // (an invocation may commit several parts before it hands over), and
    // the attempt its claim took.
    let mut committed = ev.step;
    let mut claimed = None;
    let at = |step| StepEvent { step, ..ev.clone() };
    match run_step_once(svc, ev, deadline, &mut committed, &mut claimed).await {
        Err(StepError::UploadLost(key)) => recover_lost_upload(svc, &at(committed), &key).await,
        Err(e) => hand_over_after_error(svc, ev, committed, claimed, e).await,
        ok => ok,
    }
}

/// After a failed step. A write whose every reply was lost may have applied,
/// so the stored chain decides: while it still carries this delivery's claim
/// (no later delivery took it), whatever step it is at is this delivery's to
/// hand over (a finished chain's job is completed); a later claim owns the
/// chain. Only a step that committed nothing is left to the retry of this
/// event.
async fn hand_over_after_error(
    svc: &impl StepServices,
    ev: &StepEvent,
    committed: u64,
    claimed: Option<u64>,
    e: StepError,
) -> Result<StepOutcome, StepError> {
    let stored = read_chain_back(svc, ev).await;
    let next = match (&stored, claimed) {
        // Whoever finished the chain (a cancel's end included, which runs
        // before any claim), the job's end may be due now.
        (Some(chain), _) if chain.state.is_finished() => {
            crate::worker::lifecycle::maybe_complete_job(svc, &ev.job_id).await?;
            return Ok(StepOutcome::Finished);
        }
        (Some(chain), Some(attempt)) if chain.attempt != attempt => {
            return Ok(StepOutcome::Stale);
        }
        (Some(chain), Some(_)) => chain.event(),
        // The chain could not be read, or this delivery never claimed it:
        // what this invocation knows it committed.
        _ => StepEvent {
            step: committed,
            ..ev.clone()
        },
    };
    if next.step == ev.step {
        return Err(e);
    }
    tracing::warn!(job_id = %ev.job_id, chain = %ev.chain_id, step = next.step, error = %e, "step failed after committing; handing over");
    match svc.continuation().schedule(next).await {
        Ok(()) => Ok(StepOutcome::Continued),
        Err(_) => Err(e),
    }
}

/// The stored chain, read a few times over before giving up: guessing its
/// step from this invocation's view hands over a stale step when a write
/// whose reply was lost had applied.
async fn read_chain_back(svc: &impl ReadJobs, ev: &StepEvent) -> Option<Chain> {
    for _ in 0..4 {
        if let Ok(chain) = svc.jobs().get_chain(&ev.job_id, &ev.chain_id).await {
            return chain;
        }
    }
    None
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
    chain.skip_through = lost.start_skip_through;
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
    claimed: &mut Option<u64>,
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
    let Some(chain) = claim(svc, chain).await? else {
        return Ok(StepOutcome::Stale);
    };
    *claimed = Some(chain.attempt);
    if chain.failure.is_some() {
        // A failure was claimed and its side effects did not all finish.
        return finish_failure(svc, &job, chain).await;
    }
    let span =
        tracing::info_span!("step", job_id = %job.id, chain = %chain.chain_id, step = chain.step);
    export_parts(svc, job, chain, deadline, committed)
        .instrument(span)
        .await
}

/// Claims the chain for this delivery with a versioned write before anything
/// is uploaded: an earlier delivery of the same step then loses every later
/// write, and this one uploads under part numbers of its own (see
/// `part_writer::part_number`). `None` if another delivery claimed it first.
async fn claim(svc: &impl WriteChains, mut chain: Chain) -> Result<Option<Chain>, StepError> {
    chain.attempt += 1;
    if won(svc.chains().save_chain(&mut chain).await)? {
        Ok(Some(chain))
    } else {
        Ok(None)
    }
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
    chain: Chain,
    deadline: Option<Instant>,
    committed: &mut u64,
) -> Result<StepOutcome, StepError> {
    let window = chain_window(&job, &chain);
    let filters = chain_filters(&job, &chain);
    let query = page_query(svc, &job, &chain, window, &filters);
    let total = before_deadline(deadline, chain_total(svc, &chain, &query))
        .await
        .flatten();
    if let Some(total) = partition_total(svc, &chain, &filters, total) {
        return crate::worker::partition::split_chain(svc, &job, chain, window, total, deadline)
            .await;
    }
    PartsRun::new(svc, job, chain, deadline, committed, query, total)
        .run()
        .await
}

/// The job's `_typeFilter` queries that apply to this chain's type.
fn chain_filters(job: &Job, chain: &Chain) -> Vec<TypeFilter> {
    job.request
        .type_filters
        .iter()
        .filter(|f| f.resource_type == chain.resource_type)
        .cloned()
        .collect()
}

/// The query every page of this step shares, owned so a page can be fetched
/// on its own task.
fn page_query(
    svc: &(impl ReadSource + Settings),
    job: &Job,
    chain: &Chain,
    window: (Option<OffsetDateTime>, OffsetDateTime),
    filters: &[TypeFilter],
) -> PageQuery {
    PageQuery {
        source: svc.source().clone(),
        resource_type: Arc::from(chain.resource_type.as_str()),
        window,
        filters: Arc::from(filters),
        page_size: svc.config().page_size,
        scope: Arc::new(job.scope.clone()),
        batch: chain.batch.as_deref().map(Arc::from),
    }
}

/// The chain's resource count: estimated by the source on a chain's first
/// step (it decides partitioning and shows progress), then the committed one.
async fn chain_total(svc: &impl ReadSource, chain: &Chain, query: &PageQuery) -> Option<u64> {
    if chain.step == 0 && chain.total.is_none() && !chain.referenced {
        svc.source()
            .estimate(&query.request(None, 0))
            .await
            .ok()
            .flatten()
    } else {
        chain.total
    }
}

/// The total to split by when this chain should be split into `_lastUpdated`
/// partitions: only a fresh, unpartitioned, unfiltered chain of a large type
/// whose source can count time ranges, so a split is never attempted twice.
fn partition_total(
    svc: &(impl ReadSource + Settings),
    chain: &Chain,
    filters: &[TypeFilter],
    total: Option<u64>,
) -> Option<u64> {
    let cfg = svc.config();
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
        return Some(total);
    }
    None
}

/// How reading one part's pages ended.
enum PartRead {
    /// The part is read (it may be empty). `oversized`: a resource did not
    /// fit the open file's room, so it starts a new file.
    Read { data: PartData, oversized: bool },
    /// A part committed meanwhile ended the step with this outcome.
    Ended(StepOutcome),
    /// The source failed: the chain fails, after the part in flight commits.
    Failed(SourceError),
}

/// One invocation's parts of one chain, pipelined: while part k uploads on
/// its own task, part k+1's pages are read (the next page is always fetched
/// while the current one is copied); part k is committed as soon as its
/// upload is done, and always before part k+1 starts uploading. A crash
/// loses at most the two parts in memory, which the retry reads again.
struct PartsRun<'a, S> {
    svc: &'a S,
    job: Job,
    chain: Chain,
    deadline: Option<Instant>,
    /// The step committed so far (a hand-over after a failure needs it).
    committed: &'a mut u64,
    query: PageQuery,
    total: Option<u64>,
    /// The next page to export, fetched on its own task.
    prefetched: Option<Prefetch>,
    /// The part uploading, committed once its upload is done.
    pending: Option<PendingPart>,
    parts_started: usize,
    /// A full file completing on its own task while the next one fills.
    closing: Option<Closing>,
    /// Whether the source may be promised read-ahead (see `read_ahead_below`).
    reads_ahead: bool,
}

impl<'a, S: StepServices> PartsRun<'a, S> {
    fn new(
        svc: &'a S,
        job: Job,
        chain: Chain,
        deadline: Option<Instant>,
        committed: &'a mut u64,
        query: PageQuery,
        total: Option<u64>,
    ) -> Self {
        // A file left closing by an earlier invocation is completed again
        // (completion is idempotent), alongside this step's pages.
        let closing = chain
            .closing
            .clone()
            .map(|file| Closing::start(svc, &job, &chain.resource_type, file));
        let reads_ahead = !chain.referenced;
        Self {
            svc,
            job,
            chain,
            deadline,
            committed,
            query,
            total,
            prefetched: None,
            pending: None,
            parts_started: 0,
            closing,
            reads_ahead,
        }
    }

    /// Reads, uploads and commits parts until the invocation hands over.
    async fn run(mut self) -> Result<StepOutcome, StepError> {
        loop {
            let (roll, room) = self.room();
            let (part, oversized) = match self.read_part(room).await? {
                PartRead::Read { data, oversized } => (data, oversized),
                PartRead::Ended(out) => return Ok(out),
                PartRead::Failed(e) => return self.fail(&e).await,
            };
            let another_part = self.another_part_fits();
            self.prefetch_next_part(another_part, &part);
            // Parts are committed in order: the previous one first.
            if let Some(out) = self.commit_pending().await? {
                return Ok(out);
            }
            if roll || oversized {
                self.close_open_file().await?;
            }
            let exhausted = part.exhausted;
            // A part under 5 MiB ends its file, so it is committed right away.
            let short = !part.buf.is_empty() && part.buf.len() < self.svc.config().min_part_size;
            if !self.start_part(part).await? {
                return Ok(StepOutcome::Stale);
            }
            if another_part && !exhausted && !short {
                match self.svc.jobs().get_job(&self.job.id).await? {
                    Some(j) if j.status == JobStatus::Cancelled => {
                        // Dropping the pending part stops its upload.
                        self.pending = None;
                        return cancel_chain(self.svc, &j, self.chain).await;
                    }
                    Some(_) => continue,
                    None => return Ok(StepOutcome::Stale),
                }
            }
            return self.hand_over(exhausted).await;
        }
    }

    /// Whether the open file rolls before the next part (a file never grows
    /// past the limit), and the room the part may fill.
    fn room(&self) -> (bool, usize) {
        let cfg = self.svc.config();
        let file_bytes = self.chain.open_file.as_ref().map_or(0, |o| o.bytes)
            + self.pending.as_ref().map_or(0, PendingPart::bytes);
        // Roll before appending: a file never grows past the limit.
        let roll = self.chain.open_file.is_some()
            && file_bytes as usize + cfg.part_size > cfg.max_file_size;
        let room = if roll {
            cfg.max_file_size
        } else {
            cfg.max_file_size.saturating_sub(file_bytes as usize)
        };
        (roll, room)
    }

    /// Pulls source pages into one part until it is full, the page does not
    /// fit the room, the source is exhausted or the deadline nears.
    async fn read_part(&mut self, room: usize) -> Result<PartRead, StepError> {
        let cfg = self.svc.config();
        let (cursor, skip, skip_through) = match &self.pending {
            Some(p) => p.position(),
            None => (
                self.chain.cursor.clone(),
                self.chain.skip,
                self.chain.skip_through.clone(),
            ),
        };
        let mut part = PartData {
            buf: Vec::with_capacity(cfg.part_size + cfg.part_size / 4),
            count: 0,
            cursor,
            skip,
            skip_through,
            visited: Vec::new(),
            exhausted: false,
        };
        for _ in 0..MAX_PAGES_PER_STEP {
            let deadline = self.deadline;
            let fetch = self.next_page(part.cursor.as_deref(), part.buf.len());
            let page = match before_deadline(deadline, fetch).await {
                Some(Ok(p)) => p,
                Some(Err(e)) => return Ok(PartRead::Failed(e)),
                None => {
                    // The part ends where it is; the step hands over.
                    tracing::warn!(resource_type = %self.chain.resource_type, "a page fetch ran into the invocation's deadline");
                    break;
                }
            };
            let done = skipped(&page, &part);
            let data = &page.ndjson[done.offset..];
            let lines = page.count.saturating_sub(done.lines);
            self.prefetch_following(&page, part.buf.len() + data.len(), room);
            if let Some(out) = self.catch_up().await? {
                return Ok(PartRead::Ended(out));
            }
            if part.buf.len() + data.len() > room {
                return Ok(self.take_fitting(part, data, done.lines, room));
            }
            part.buf.extend_from_slice(data);
            part.count += lines;
            if done.carry {
                // This shorter page was all exported; the rest of the skip
                // is on the pages after it (an id-ordered page may lose more).
                part.skip = part.skip.saturating_sub(done.lines).max(1);
            } else {
                part.skip = 0;
                part.skip_through = None;
            }
            let Some(next) = page.next else {
                // The cursor stays at the last page, all of it taken: a step
                // re-run after this one committed finds nothing left.
                (part.skip, part.skip_through) = (page.count, last_id(&page.ndjson));
                part.exhausted = true;
                break;
            };
            // A `next` link that returns to any earlier page would loop forever.
            let h = fnv1a(next.as_bytes());
            if self.loops_back(&part.visited, h) {
                return Ok(PartRead::Failed(SourceError::Permanent(
                    "upstream next link loops back to an earlier page".into(),
                )));
            }
            part.visited.push(h);
            part.cursor = Some(next);
            if part.buf.len() >= cfg.part_size {
                break;
            }
            if self
                .deadline
                .is_some_and(|d| Instant::now() + DEADLINE_RESERVE >= d)
            {
                break;
            }
        }
        Ok(PartRead::Read {
            data: part,
            oversized: false,
        })
    }

    /// The page at `cursor`: the one fetched on its own task if there is one
    /// (a fetch in flight is always for `cursor`).
    async fn next_page(
        &mut self,
        cursor: Option<&str>,
        buffered: usize,
    ) -> Result<Page, SourceError> {
        if let Some(p) = self.prefetched.take() {
            p.page().await
        } else if self.chain.referenced {
            crate::worker::referenced::fetch_page(
                self.svc,
                &self.job,
                &self.chain.resource_type,
                cursor,
            )
            .await
        } else {
            self.query
                .fetch(cursor, self.read_ahead_below(buffered))
                .await
        }
    }

    /// The loop goes on after this page exactly when it fits whole and the
    /// part is not full yet: fetch the next one meanwhile.
    fn prefetch_following(&mut self, page: &Page, after: usize, room: usize) {
        if !self.chain.referenced
            && after <= room
            && after < self.svc.config().part_size
            && self
                .deadline
                .is_none_or(|d| Instant::now() + DEADLINE_RESERVE < d)
            && let Some(next) = &page.next
        {
            self.prefetched = Some(self.query.spawn(next.clone(), self.read_ahead_below(after)));
        }
    }

    /// The previous part is committed as soon as its upload is done, and a
    /// closing file finished as soon as it is complete, while the next page
    /// is on its way. `Some` ends the step with that outcome.
    async fn catch_up(&mut self) -> Result<Option<StepOutcome>, StepError> {
        if self.pending.as_ref().is_some_and(PendingPart::is_uploaded)
            && let Some(out) = self.commit_pending().await?
        {
            return Ok(Some(out));
        }
        if self.closing.as_ref().is_some_and(Closing::is_done) {
            self.finish_closing().await?;
        }
        Ok(None)
    }

    /// Whether the `next` link hashed to `h` returns to a page this chain
    /// has already followed.
    fn loops_back(&self, visited: &[u64], h: u64) -> bool {
        self.chain.visited.contains(&h)
            || visited.contains(&h)
            || self.pending.as_ref().is_some_and(|p| p.visited(h))
    }

    /// Takes the lines of a page that fit the room; the rest of the page
    /// starts the next part. A resource that fits no file fails the chain.
    fn take_fitting(&self, mut part: PartData, data: &[u8], skipped: u64, room: usize) -> PartRead {
        let (take, end) = lines_that_fit(data, part.buf.len(), room);
        if take == 0 && part.buf.is_empty() {
            if room < self.svc.config().max_file_size {
                return PartRead::Read {
                    data: part,
                    oversized: true,
                };
            }
            return PartRead::Failed(SourceError::Permanent(format!(
                "a {} resource is larger than the file size limit",
                self.chain.resource_type
            )));
        }
        part.buf.extend_from_slice(&data[..end]);
        part.count += take;
        part.skip = skipped + take;
        if take > 0 {
            part.skip_through = last_id(&data[..end]);
        }
        PartRead::Read {
            data: part,
            oversized: false,
        }
    }

    /// What the step promises the source: it reads past a page whose body
    /// leaves the part under `part_size` (the open file always has at least
    /// that much room), so the source may request the following page early.
    fn read_ahead_below(&self, after: usize) -> usize {
        let near_deadline = self
            .deadline
            .is_some_and(|d| Instant::now() + 2 * DEADLINE_RESERVE >= d);
        if self.reads_ahead && !near_deadline {
            self.svc.config().part_size.saturating_sub(after)
        } else {
            0
        }
    }

    /// Whether the next part will run in this invocation.
    fn another_part_fits(&self) -> bool {
        self.parts_started + 1 < self.svc.config().parts_per_invocation
            && self
                .deadline
                .is_none_or(|d| Instant::now() + 2 * DEADLINE_RESERVE < d)
    }

    /// A fetch still in flight is for the part's cursor, the next page to
    /// export. Start one if the next part will run in this invocation.
    fn prefetch_next_part(&mut self, another_part: bool, part: &PartData) {
        if another_part
            && !part.exhausted
            && self.prefetched.is_none()
            && !self.chain.referenced
            && let Some(c) = &part.cursor
        {
            self.prefetched = Some(self.query.spawn(c.clone(), self.read_ahead_below(0)));
        }
    }

    /// The full file completes on its own task while the next one fills; the
    /// chain keeps it as `closing` until it is recorded.
    async fn close_open_file(&mut self) -> Result<(), StepError> {
        if let Some(open) = self.chain.open_file.take() {
            self.finish_closing().await?;
            self.chain.closing = Some(open.clone());
            self.closing = Some(Closing::start(
                self.svc,
                &self.job,
                &self.chain.resource_type,
                open,
            ));
        }
        Ok(())
    }

    /// Records the part's references, opens a file for it if it has bytes
    /// and none is open, and starts its upload; false if the chain moved on.
    async fn start_part(&mut self, part: PartData) -> Result<bool, StepError> {
        // Before anything of this part is committed, so a committed step's
        // references are always on record.
        crate::worker::referenced::record_step(self.svc, &self.job, &self.chain, &part.buf).await?;
        if !part.buf.is_empty()
            && self.chain.open_file.is_none()
            && !part_writer::open_new_file(self.svc, &self.job, &mut self.chain).await?
        {
            return Ok(false);
        }
        self.pending = Some(PendingPart::start(self.svc, &self.chain, part)?);
        self.parts_started += 1;
        Ok(true)
    }

    /// Commits the last part and hands the chain to the next step. A chain
    /// finishes with no file closing; a hand-over leaves a closing file to
    /// the next step unless it is done already.
    async fn hand_over(mut self, exhausted: bool) -> Result<StepOutcome, StepError> {
        if exhausted || self.closing.as_ref().is_some_and(Closing::is_done) {
            self.finish_closing().await?;
        }
        if let Some(out) = self.commit_pending().await? {
            return Ok(out);
        }
        self.prefetched = None;
        self.svc.continuation().schedule(self.chain.event()).await?;
        Ok(StepOutcome::Continued)
    }

    /// Ends the chain on a source failure, after committing the part in flight.
    async fn fail(mut self, err: &SourceError) -> Result<StepOutcome, StepError> {
        fail_after(
            self.svc,
            &self.job,
            self.chain,
            &mut self.pending,
            self.total,
            self.committed,
            err,
        )
        .await
    }

    /// Commits the pending part, if any; `Some` ends the step.
    async fn commit_pending(&mut self) -> Result<Option<StepOutcome>, StepError> {
        settle(
            self.svc,
            &self.job,
            &mut self.chain,
            &mut self.pending,
            self.total,
            self.committed,
        )
        .await
    }

    /// Waits for the closing file's completion, if one is running.
    async fn finish_closing(&mut self) -> Result<(), StepError> {
        if let Some(c) = self.closing.take() {
            c.finish(&mut self.chain).await?;
        }
        Ok(())
    }
}

/// The lines at the start of `data` that fit in `room` after `used` bytes:
/// their count and the byte offset just past them.
fn lines_that_fit(data: &[u8], used: usize, room: usize) -> (u64, usize) {
    let mut take = 0u64;
    let mut end = 0usize;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            if used + i + 1 > room {
                break;
            }
            take += 1;
            end = i + 1;
        }
    }
    (take, end)
}

/// What of `page` the part (resuming at its cursor) exported already.
fn skipped(page: &Page, part: &PartData) -> Exported {
    exported_prefix(
        &page.ndjson,
        page.count,
        part.skip,
        part.skip_through.as_deref(),
        page.ordered_by_id,
    )
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
