//! The records kept in the job store: jobs, work chains and finished files.

use crate::fhir::instant::{now_millis, parse_instant};
use crate::model::{ExportLevel, ExportRequest};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Lifecycle of an export job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, waiting for a free slot.
    Queued,
    /// Chains are running.
    Running,
    /// Every chain finished; the manifest is available.
    Complete,
    /// The export failed as a whole.
    Failed,
    /// The client cancelled it.
    Cancelled,
}

impl JobStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Complete => "complete",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "complete" => JobStatus::Complete,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// True once no chain will run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Complete | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One export job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// 128-bit random id, hex.
    pub id: String,
    /// Client id of the caller that started it.
    pub owner: String,
    /// The kick-off URL as the client sent it (query included for GET).
    pub request_url: String,
    /// Kick-off instant; also the `_lastUpdated` upper bound of every query.
    pub transaction_time: String,
    /// Level of the export.
    pub level: ExportLevel,
    /// Validated parameters.
    pub request: ExportRequest,
    /// S3 key prefix of this job's files: `<container>/<job-folder>`.
    pub folder: String,
    /// Unix seconds after which the job and its files may be removed.
    pub expires_at: i64,
    /// Why the job failed, when it did.
    pub failure: Option<String>,
    /// Patient compartments covered (Patient- and Group-level exports).
    #[serde(default)]
    pub scope: crate::model::PatientScope,
    /// Name of the schedule that started it, for scheduled exports.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Types exported as resources referenced from the compartment's
    /// resources (Patient- and Group-level exports), in a second phase.
    #[serde(default)]
    pub referenced_types: Vec<String>,
    /// Secret (128-bit, hex) that signs this job's compact download links;
    /// never leaves the job store. Empty for jobs created before it existed.
    #[serde(default)]
    pub download_key: String,
    /// Status (authoritative copy is a top-level attribute).
    #[serde(skip, default = "default_status")]
    pub status: JobStatus,
    /// Optimistic-locking version.
    #[serde(skip)]
    pub version: u64,
    /// Chains not yet finished.
    #[serde(skip)]
    pub chains_remaining: i64,
}

fn default_status() -> JobStatus {
    JobStatus::Queued
}

impl Job {
    /// True once every chain of the job has finished (the counter the last
    /// chain's final write brings to zero): the job is then complete.
    pub fn all_chains_finished(&self) -> bool {
        self.chains_remaining <= 0
    }
}

/// State of one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainState {
    /// Waits for the job's other chains (a referenced-resources chain starts
    /// once every compartment chain has finished).
    Waiting,
    /// More steps to run.
    Running,
    /// The source is exhausted and every file is complete.
    Done,
    /// Stopped with an error recorded in the job's error file.
    Failed,
    /// Stopped because the job was cancelled.
    Cancelled,
}

impl ChainState {
    /// True once the chain will run no more steps.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ChainState::Done | ChainState::Failed | ChainState::Cancelled
        )
    }
}

/// A `_lastUpdated` range `(after, upto]` of one partition of a type; `None`
/// bounds are the job's own (`_since`, and `_until` or the transaction time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Exclusive lower bound (instant), if narrower than the job's.
    pub after: Option<String>,
    /// Inclusive upper bound (instant), if narrower than the job's.
    pub upto: Option<String>,
}

/// One committed part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    /// S3 part number (ascending within a file, not necessarily consecutive:
    /// each delivery attempt of a step has numbers of its own).
    pub number: u32,
    /// ETag S3 answered for the part.
    pub etag: String,
}

/// Chains stored before part numbers were recorded list bare ETags, part
/// numbers 1..=n.
fn parts_compat<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<UploadedPart>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Part(UploadedPart),
        Etag(String),
    }
    let stored = Vec::<Stored>::deserialize(d)?;
    Ok(stored
        .into_iter()
        .enumerate()
        .map(|(i, p)| match p {
            Stored::Part(p) => p,
            Stored::Etag(etag) => UploadedPart {
                number: i as u32 + 1,
                etag,
            },
        })
        .collect())
}

/// A multipart upload a chain is appending to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// File number n in `<Type>-<n>.ndjson`.
    pub number: u32,
    /// S3 key.
    pub key: String,
    /// S3 multipart upload id.
    pub upload_id: String,
    /// Committed parts, in order.
    #[serde(deserialize_with = "parts_compat")]
    pub parts: Vec<UploadedPart>,
    /// Bytes uploaded so far.
    pub bytes: u64,
    /// Lines (resources) uploaded so far.
    pub count: u64,
    /// Chain cursor when the file was opened, to re-export it if its upload is lost.
    #[serde(default)]
    pub start_cursor: Option<String>,
    /// Chain skip when the file was opened.
    #[serde(default)]
    pub start_skip: u64,
    /// Chain skip-through id when the file was opened.
    #[serde(default)]
    pub start_skip_through: Option<String>,
}

/// One chain of steps exporting one resource type (or one partition of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chain {
    /// Owning job.
    pub job_id: String,
    /// Chain id, unique within the job.
    pub chain_id: String,
    /// Resource type exported.
    pub resource_type: String,
    /// Member patients this chain covers, when the source is queried in
    /// batches of patients.
    #[serde(default)]
    pub batch: Option<Vec<String>>,
    /// Source cursor of the next page; `None` before the first page.
    pub cursor: Option<String>,
    /// Lines of the page at `cursor` already exported (a step that filled a
    /// file mid-page resumes there).
    #[serde(default)]
    pub skip: u64,
    /// Id of the last line of the page at `cursor` already exported: where
    /// a re-read of that page resumes (see `worker::page_skip`).
    #[serde(default)]
    pub skip_through: Option<String>,
    /// Number of committed steps.
    pub step: u64,
    /// Current state.
    pub state: ChainState,
    /// File being written, if any.
    pub open_file: Option<OpenFile>,
    /// A full file whose completion runs while the next one fills; it stays
    /// here until it is complete and recorded, so a crash cannot lose it.
    #[serde(default)]
    pub closing: Option<OpenFile>,
    /// A file number allocated for the next file but not yet opened.
    pub reserved_number: Option<u32>,
    /// Resources exported so far by this chain.
    pub exported: u64,
    /// Expected total from the source, when known.
    pub total: Option<u64>,
    /// Unix seconds of the last committed step.
    pub heartbeat: i64,
    /// Times the watchdog restarted this chain since its last progress.
    pub restarts: u32,
    /// Delivery attempts that claimed the chain (each invocation claims it
    /// with a versioned write before it uploads anything, so an earlier
    /// delivery of the same step can no longer commit).
    #[serde(default)]
    pub attempt: u64,
    /// Hashes of the page cursors followed (most recent last), to detect loops.
    #[serde(default)]
    pub visited: Vec<u64>,
    /// The `_lastUpdated` range this chain covers when its type was split
    /// into partitions.
    #[serde(default)]
    pub partition: Option<Partition>,
    /// Exports the resources of its type referenced from the job's other
    /// chains' output, instead of a search of the source.
    #[serde(default)]
    pub referenced: bool,
    /// Why the chain is failing, once a failure claimed it; its side effects
    /// (files completed, the error file written) are then redone by any
    /// delivery until the chain is `Failed`.
    #[serde(default)]
    pub failure: Option<ChainFailure>,
    /// Optimistic-locking version.
    #[serde(skip)]
    pub version: u64,
}

/// A chain's failure, recorded before its side effects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainFailure {
    /// The OperationOutcome's text.
    pub message: String,
    /// The number of the error file that holds it.
    pub error_file: u32,
}

/// What a finished file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Exported resources (`output`).
    Output,
    /// OperationOutcomes (`error`).
    Error,
}

/// A completed file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Resource type of every line.
    pub resource_type: String,
    /// File number.
    pub number: u32,
    /// S3 key.
    pub key: String,
    /// Exact line count.
    pub count: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Output or error.
    pub kind: FileKind,
    /// Unix seconds after which the record may be removed (the job's expiry).
    #[serde(default)]
    pub expires_at: i64,
}

/// The file name of file `number` of `resource_type`.
pub fn file_name(resource_type: &str, number: u32) -> String {
    format!("{resource_type}-{number}.ndjson")
}

/// The (type, number) a [`file_name`] names; `None` for anything else.
pub fn parse_file_name(name: &str) -> Option<(&str, u32)> {
    let (ty, number) = name.strip_suffix(".ndjson")?.rsplit_once('-')?;
    let n: u32 = number.parse().ok()?;
    (!ty.is_empty() && file_name(ty, n) == name).then_some((ty, n))
}

impl Chain {
    /// The event that runs this chain's current step.
    pub fn event(&self) -> StepEvent {
        StepEvent {
            job_id: self.job_id.clone(),
            chain_id: self.chain_id.clone(),
            step: self.step,
        }
    }
}

/// Event that runs one step of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepEvent {
    /// Job id.
    pub job_id: String,
    /// Chain id.
    pub chain_id: String,
    /// The chain's committed step count this event expects to find.
    pub step: u64,
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

/// A fresh chain for one resource type.
pub fn new_chain(job_id: &str, chain_id: &str, resource_type: &str) -> Chain {
    Chain {
        job_id: job_id.into(),
        chain_id: chain_id.into(),
        resource_type: resource_type.into(),
        batch: None,
        cursor: None,
        skip: 0,
        skip_through: None,
        step: 0,
        state: ChainState::Running,
        open_file: None,
        closing: None,
        reserved_number: None,
        exported: 0,
        total: None,
        heartbeat: now_millis().unix_timestamp(),
        restarts: 0,
        attempt: 0,
        visited: Vec::new(),
        partition: None,
        referenced: false,
        failure: None,
        version: 0,
    }
}

#[cfg(test)]
mod file_name_tests {
    use super::*;

    #[test]
    fn file_names_parse_back_and_nothing_else_does() {
        assert_eq!(
            parse_file_name(&file_name("Observation", 12)),
            Some(("Observation", 12))
        );
        for bad in [
            "Observation-012.ndjson",
            "Observation-1.json",
            "Observation.ndjson",
            "-1.ndjson",
            "x-+1.ndjson",
            "x-1.ndjson/..",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
