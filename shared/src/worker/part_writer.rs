//! The parts of a chain's open file. A part uploads on its own task while the
//! next part's pages are read (so at most two parts are in memory), and is
//! committed, with the cursor after it, only once its upload has finished and
//! every earlier part is committed: the chain record never lists a part that
//! is not stored, and never a cursor past bytes that are not.

use crate::fhir::instant::unix_now;
use crate::model::config::ExportConfig;
use crate::model::{Chain, ChainState, Job, OpenFile, UploadedPart, file_name};
use crate::ports::job_store::won;
use crate::ports::object_store::ObjectError;
use crate::ports::services::{LifecycleServices, RecordFiles, Settings, StoreObjects, WriteChains};
use crate::worker::file_closing::{complete_file, object_appears};
use crate::worker::lifecycle::finish;
use crate::worker::outcome::{StepError, StepOutcome};
use bytes::Bytes;
use tokio::task::JoinHandle;

/// Page cursors remembered per chain to detect `next` links that loop.
const MAX_VISITED: usize = 2000;
/// S3 part numbers are 1..=10000.
const MAX_PART_NUMBER: u32 = 10_000;

/// The S3 part number of part `index` (0-based) of a file written by
/// delivery `attempt`. Each index owns a range of numbers, ascending with the
/// index, and each attempt a slot in it: a delivery that lost the chain to a
/// later one may still finish an upload, but never under a number the
/// winner commits, so a committed part's bytes are never replaced.
pub(crate) fn part_number(index: usize, attempt: u64, cfg: &ExportConfig) -> u32 {
    // Every part but a file's last has at least the minimum part size.
    let parts_per_file = (cfg.max_file_size / cfg.min_part_size.max(1)) as u32 + 1;
    let slots = (MAX_PART_NUMBER / parts_per_file).max(1);
    index as u32 * slots + (attempt % u64::from(slots)) as u32 + 1
}

/// What one part read from the source, and where the chain stands after it.
pub(crate) struct PartData {
    /// NDJSON lines of the part.
    pub buf: Vec<u8>,
    /// Lines in `buf`.
    pub count: u64,
    /// Cursor of the next page to read.
    pub cursor: Option<String>,
    /// Lines of that page already exported.
    pub skip: u64,
    /// Id of the last of them.
    pub skip_through: Option<String>,
    /// Hashes of the page cursors followed.
    pub visited: Vec<u64>,
    /// The source has no more pages.
    pub exhausted: bool,
}

/// A part whose upload may still be running.
pub(crate) struct PendingPart {
    upload: Option<JoinHandle<Result<String, ObjectError>>>,
    number: u32,
    bytes: u64,
    count: u64,
    cursor: Option<String>,
    skip: u64,
    skip_through: Option<String>,
    visited: Vec<u64>,
    exhausted: bool,
}

impl PendingPart {
    /// Starts uploading `data` as the next part of `open` (the chain's open
    /// file; a part with bytes needs one).
    pub(crate) fn start(
        svc: &(impl RecordFiles + StoreObjects + Settings + Clone + Send + Sync + 'static),
        chain: &Chain,
        data: PartData,
    ) -> Result<Self, StepError> {
        let bytes = data.buf.len() as u64;
        let mut number = 0;
        let upload = if data.buf.is_empty() {
            None
        } else {
            let open = chain.open_file.as_ref().ok_or_else(|| {
                ObjectError::Backend("a part has bytes but its chain has no open file".into())
            })?;
            let objects = svc.objects().clone();
            let (key, upload_id) = (open.key.clone(), open.upload_id.clone());
            number = part_number(open.parts.len(), chain.attempt, svc.config());
            let body = Bytes::from(data.buf);
            Some(tokio::spawn(async move {
                objects.upload_part(&key, &upload_id, number, body).await
            }))
        };
        Ok(Self {
            upload,
            number,
            bytes,
            count: data.count,
            cursor: data.cursor,
            skip: data.skip,
            skip_through: data.skip_through,
            visited: data.visited,
            exhausted: data.exhausted,
        })
    }

    /// Bytes of the part.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the upload has finished (successfully or not).
    pub(crate) fn is_uploaded(&self) -> bool {
        self.upload.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Where the chain stands after this part: cursor, lines to skip and
    /// the id of the last of them.
    pub(crate) fn position(&self) -> (Option<String>, u64, Option<String>) {
        (self.cursor.clone(), self.skip, self.skip_through.clone())
    }

    /// Whether the part followed the page cursor hashed to `h`.
    pub(crate) fn visited(&self, h: u64) -> bool {
        self.visited.contains(&h)
    }
}

impl Drop for PendingPart {
    /// A part that is never committed need not finish uploading: the retry
    /// uploads it again.
    fn drop(&mut self) {
        if let Some(upload) = &self.upload {
            upload.abort();
        }
    }
}

/// Waits for a part's upload and commits it: the chain's part list, cursor
/// and counts in one conditional write; the file is completed if the part
/// ends it, and the chain finished if the source is exhausted. `Some` ends
/// the step with that outcome.
pub(crate) async fn commit(
    svc: &impl LifecycleServices,
    job: &Job,
    chain: &mut Chain,
    mut part: PendingPart,
    total: Option<u64>,
) -> Result<Option<StepOutcome>, StepError> {
    let mut already_completed = false;
    if let Some(upload) = part.upload.take() {
        let uploaded = upload.await.unwrap_or_else(|e| {
            Err(ObjectError::Backend(
                format!("part upload task: {e}").into(),
            ))
        });
        let Some((key, bytes)) = chain.open_file.as_ref().map(|o| (o.key.clone(), o.bytes)) else {
            return Err(ObjectError::Backend("an uploaded part's file is not open".into()).into());
        };
        let etag = match uploaded {
            Ok(etag) => etag,
            Err(ObjectError::NoSuchUpload) => {
                // Only an earlier attempt or a concurrent duplicate of this
                // very step completes this upload: if the chain moved on,
                // this delivery is stale; if the object holds exactly the
                // committed bytes plus this part, the file is done.
                let now = svc.jobs().get_chain(&job.id, &chain.chain_id).await?;
                if now.is_some_and(|c| c.version != chain.version) {
                    return Ok(Some(StepOutcome::Stale));
                }
                if !object_appears(svc, &key, Some(bytes + part.bytes)).await? {
                    return Err(StepError::UploadLost(key));
                }
                already_completed = true;
                String::new()
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(open) = chain.open_file.as_mut() {
            open.parts.push(UploadedPart {
                number: part.number,
                etag,
            });
            open.bytes += part.bytes;
            open.count += part.count;
        }
    }
    chain.cursor = part.cursor.take();
    chain.skip = part.skip;
    chain.skip_through = part.skip_through.take();
    chain.visited.append(&mut part.visited);
    let excess = chain.visited.len().saturating_sub(MAX_VISITED);
    chain.visited.drain(..excess);
    chain.exported += part.count;
    chain.total = total;
    chain.step += 1;
    chain.heartbeat = unix_now();
    // Progress: stalls before this one say nothing about the chain's health.
    chain.restarts = 0;
    tracing::info!(
        resources = part.count,
        bytes = part.bytes,
        exhausted = part.exhausted,
        "part uploaded"
    );

    // A part under 5 MiB may only be the last of its file.
    let small_tail = part.bytes > 0 && part.bytes < svc.config().min_part_size as u64;
    let ends_file = part.exhausted || small_tail || already_completed;
    if ends_file && let Some(open) = chain.open_file.take() {
        if let Some(previous) = chain.closing.take() {
            // The file before it may still be completing on its own task;
            // completion is idempotent, and the chain holds one closing file.
            complete_file(svc, job, &chain.resource_type, &previous).await?;
        }
        // Committed as closing first: only the delivery holding the claim
        // completes the upload (a stale one would complete it with its own
        // part), and a crash before the completion leaves it to the next
        // step. Then completed and recorded, and the chain moves on.
        chain.closing = Some(open.clone());
        if !won(svc.chains().save_chain(chain).await)? {
            return Ok(Some(StepOutcome::Stale));
        }
        complete_file(svc, job, &chain.resource_type, &open).await?;
        chain.closing = None;
    }
    if part.exhausted {
        chain.state = ChainState::Done;
        return finish(svc, job, chain).await.map(Some);
    }
    if !won(svc.chains().save_chain(chain).await)? {
        return Ok(Some(StepOutcome::Stale));
    }
    Ok(None)
}

/// Reserves a file number and opens its multipart upload, committing each
/// so a retried step reuses them. Returns false if another writer won.
pub(crate) async fn open_new_file(
    svc: &(impl RecordFiles + StoreObjects + WriteChains),
    job: &Job,
    chain: &mut Chain,
) -> Result<bool, StepError> {
    let number = match chain.reserved_number {
        Some(n) => n,
        None => {
            let n = svc
                .files()
                .next_file_number(&job.id, &chain.resource_type, job.expires_at)
                .await?;
            chain.reserved_number = Some(n);
            if !won(svc.chains().save_chain(chain).await)? {
                return Ok(false);
            }
            n
        }
    };
    let key = format!("{}/{}", job.folder, file_name(&chain.resource_type, number));
    let upload_id = svc.objects().create_upload(&key).await?;
    chain.open_file = Some(OpenFile {
        start_cursor: chain.cursor.clone(),
        start_skip: chain.skip,
        start_skip_through: chain.skip_through.clone(),
        number,
        key: key.clone(),
        upload_id: upload_id.clone(),
        parts: vec![],
        bytes: 0,
        count: 0,
    });
    chain.reserved_number = None;
    // On an error other than a lost race the write may have landed: keep the
    // upload (an orphan is aborted by the bucket's lifecycle rule), never
    // abort one the chain may own.
    if won(svc.chains().save_chain(chain).await)? {
        return Ok(true);
    }
    let _ = svc.objects().abort_upload(&key, &upload_id).await;
    Ok(false)
}
