//! Port conformance: every case is written once against the `JobStore` and
//! `ObjectStore` ports and run against every backend, so the in-memory
//! adapters (`adapters::memory`, feature `test-util`) are held to the same
//! semantics as the production adapters:
//!
//! * `conformance::memory::<case>`: `MemoryJobStore` + `MemoryObjectStore`;
//! * `conformance::sdk::<case>`: `DynamoJobStore` + `S3ObjectStore` over the
//!   lane's servers, embedded dynoxide + s3s-fs, or moto when
//!   `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_S3` are set (the moto
//!   lane of scripts/test.sh).
//!
//! The cases are adversarial: stale versions, duplicate and concurrent
//! writers, transactions that must fail whole, stale ETags, prefix
//! boundaries. Where an emulator departs from AWS, the case says so and
//! asserts what that emulator does, so a change on either side shows up.

use crate::common::{TempDir, bare_stack, http, lane, small_config};
use bulk_export::stack::{SourceSpec, Stack};
use bulk_export_core::adapters::memory::{MIN_PART_SIZE, MemoryJobStore, MemoryObjectStore};
use bulk_export_core::model::{
    Chain, ChainState, ExportLevel, ExportRequest, FileKind, FileRecord, Job, JobStatus, Partition,
    PatientScope, UploadedPart, new_chain,
};
use bulk_export_core::ports::job_store::{JobStore, StoreError};
use bulk_export_core::ports::object_store::{ObjectError, ObjectStore};
use bytes::Bytes;
use serde_json::{Value, json};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    /// dynoxide + s3s-fs, in process.
    Embedded,
    /// Whatever `AWS_ENDPOINT_URL_*` points at (moto in scripts/test.sh).
    External,
}

/// One job store and one object store, fresh for each case.
struct Backend {
    kind: Kind,
    store: Arc<dyn JobStore>,
    objects: Arc<dyn ObjectStore>,
    memory_objects: Option<MemoryObjectStore>,
    // Dropped in this order: the services, then their data directory.
    _stack: Option<Stack>,
    _dir: Option<TempDir>,
}

impl Backend {
    fn memory() -> Self {
        let objects = MemoryObjectStore::new();
        Backend {
            kind: Kind::Memory,
            store: Arc::new(MemoryJobStore::new()),
            objects: Arc::new(objects.clone()),
            memory_objects: Some(objects),
            _stack: None,
            _dir: None,
        }
    }

    /// The production adapters on a fresh table and bucket of the lane.
    async fn sdk() -> Self {
        let dir = TempDir::new("conformance");
        let stack = bare_stack(
            &dir.0.join("data"),
            SourceSpec::Ndjson(dir.0.join("src")),
            small_config(),
        )
        .await;
        let kind = if lane() == "external" {
            Kind::External
        } else {
            Kind::Embedded
        };
        Backend {
            kind,
            store: stack.services.store.clone(),
            objects: stack.services.objects.clone(),
            memory_objects: None,
            _stack: Some(stack),
            _dir: Some(dir),
        }
    }

    /// GETs a presigned URL: through the memory store's resolver, or over
    /// HTTP from the server that signed it. `None` unless it answers 200.
    async fn fetch(&self, url: &str) -> Option<Bytes> {
        if let Some(memory) = &self.memory_objects {
            return memory.fetch_presigned(url);
        }
        let resp = http().get(url).send().await.unwrap();
        if resp.status() == 200 {
            Some(resp.bytes().await.unwrap())
        } else {
            None
        }
    }
}

/// Runs each named case once per backend: `memory::<case>` and `sdk::<case>`.
macro_rules! on_every_backend {
    ($($case:ident),+ $(,)?) => {
        /// The in-memory adapters.
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Backend::memory()).await;
                }
            )+
        }

        /// The DynamoDB and S3 adapters over the lane's servers.
        mod sdk {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Backend::sdk().await).await;
                }
            )+
        }
    };
}

on_every_backend!(
    // job store
    create_job_stores_the_job_and_its_chains_at_version_zero,
    create_job_over_an_existing_job_conflicts_and_keeps_it,
    create_job_stores_every_chain_of_a_large_group,
    a_job_of_20000_members_round_trips_under_the_item_limit,
    set_job_status_with_a_stale_version_conflicts_and_changes_nothing,
    cancel_job_wins_once_and_fences_stale_writers,
    active_jobs_are_the_queued_running_and_unfinished_cancelled_ones,
    delete_job_removes_every_item_of_that_job_only,
    save_chain_commits_only_on_the_stored_version,
    finish_chain_counts_the_job_once_per_version,
    concurrent_finish_chain_of_one_version_has_one_winner,
    split_chain_adds_siblings_and_counts_them,
    split_chain_with_an_existing_sibling_fails_whole,
    split_chain_naming_a_chain_twice_fails_whole,
    next_file_number_counts_from_one_per_job_and_type,
    concurrent_next_file_number_never_repeats,
    put_file_is_idempotent_and_the_last_write_wins,
    record_poll_counts_within_a_window_and_restarts_after_it,
    schedule_success_only_moves_forward,
    // object store
    multipart_upload_concatenates_its_parts_in_order,
    a_reuploaded_part_replaces_the_earlier_one,
    completing_with_a_stale_etag_fails,
    part_numbers_may_have_gaps_and_must_ascend,
    a_small_part_before_the_last_fails_completion,
    completion_takes_only_the_named_parts,
    abort_ends_the_upload_and_is_idempotent,
    uploads_are_invisible_until_complete_and_independent,
    an_upload_id_belongs_to_its_key,
    list_keys_is_in_key_order_within_the_prefix,
    delete_prefix_removes_objects_under_the_prefix_only,
    put_object_replaces_and_reads_back,
    presigned_urls_read_the_object_for_their_validity,
);

// ---------------------------------------------------------------------------
// Fixtures and assertions
// ---------------------------------------------------------------------------

const EXPIRES_AT: i64 = 4_102_444_800;

fn job(id: &str, status: JobStatus) -> Job {
    Job {
        id: id.to_string(),
        owner: "conformance-client".into(),
        request_url: format!("http://localhost/fhir/$export?_type=Observation&job={id}"),
        transaction_time: "2024-05-01T12:00:00.000Z".into(),
        level: ExportLevel::System,
        request: ExportRequest {
            types: vec!["Observation".into(), "Patient".into()],
            ..ExportRequest::default()
        },
        folder: format!("out/{id}"),
        expires_at: EXPIRES_AT,
        failure: None,
        scope: PatientScope::None,
        schedule: None,
        referenced_types: Vec::new(),
        download_key: String::new(),
        status,
        version: 0,
        chains_remaining: 0,
    }
}

fn chain(job_id: &str, chain_id: &str) -> Chain {
    new_chain(job_id, chain_id, "Observation")
}

fn file(resource_type: &str, number: u32, count: u64) -> FileRecord {
    FileRecord {
        resource_type: resource_type.to_string(),
        number,
        key: format!("out/j/{resource_type}-{number}.ndjson"),
        count,
        bytes: count * 100,
        kind: FileKind::Output,
        expires_at: EXPIRES_AT,
    }
}

/// A job as stored, including the fields kept beside its document.
fn job_value(job: &Job) -> Value {
    json!({
        "doc": serde_json::to_value(job).unwrap(),
        "status": job.status.as_str(),
        "version": job.version,
        "remaining": job.chains_remaining,
    })
}

fn chain_value(chain: &Chain) -> Value {
    json!({ "doc": serde_json::to_value(chain).unwrap(), "version": chain.version })
}

/// Everything the store holds for a job, in a canonical order.
async fn snapshot(b: &Backend, job_id: &str) -> Value {
    let job = b.store.get_job(job_id).await.unwrap();
    let mut chains = b.store.list_chains(job_id).await.unwrap();
    chains.sort_by(|x, y| x.chain_id.cmp(&y.chain_id));
    let mut files = b.store.list_files(job_id).await.unwrap();
    files.sort_by(|x, y| (&x.resource_type, x.number).cmp(&(&y.resource_type, y.number)));
    json!({
        "job": job.as_ref().map(job_value),
        "chains": chains.iter().map(chain_value).collect::<Vec<_>>(),
        "files": serde_json::to_value(&files).unwrap(),
    })
}

async fn stored_job(b: &Backend, job_id: &str) -> Job {
    b.store
        .get_job(job_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {job_id} is stored"))
}

async fn stored_chain(b: &Backend, job_id: &str, chain_id: &str) -> Chain {
    b.store
        .get_chain(job_id, chain_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("chain {chain_id} of {job_id} is stored"))
}

#[track_caller]
fn assert_conflict<T: Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Conflict) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

#[track_caller]
fn assert_no_such_upload<T: Debug>(result: Result<T, ObjectError>, what: &str) {
    match result {
        Err(ObjectError::NoSuchUpload) => {}
        other => panic!("{what}: expected NoSuchUpload, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_part<T: Debug>(result: Result<T, ObjectError>, what: &str) {
    match result {
        Err(ObjectError::InvalidPart(_)) => {}
        other => panic!("{what}: expected InvalidPart, got {other:?}"),
    }
}

#[track_caller]
fn assert_backend_error<T: Debug>(result: Result<T, ObjectError>, what: &str) {
    match result {
        Err(ObjectError::Backend(_)) => {}
        other => panic!("{what}: expected a backend error, got {other:?}"),
    }
}

/// A job with `chains` chains `c0`, `c1`, … stored.
async fn job_with_chains(b: &Backend, id: &str, chains: usize) -> (Job, Vec<Chain>) {
    let chains: Vec<Chain> = (0..chains).map(|i| chain(id, &format!("c{i}"))).collect();
    b.store
        .create_job(&job(id, JobStatus::Running), &chains)
        .await
        .unwrap();
    (stored_job(b, id).await, chains)
}

// ---------------------------------------------------------------------------
// Job store
// ---------------------------------------------------------------------------

async fn create_job_stores_the_job_and_its_chains_at_version_zero(b: &Backend) {
    // The caller's version and counter are not what is stored: a new job is
    // at version 0 and counts the chains it was created with.
    let mut j = job("j1", JobStatus::Queued);
    j.version = 7;
    j.chains_remaining = 99;
    j.failure = Some("carried in the document".into());
    let mut a = chain("j1", "a");
    a.version = 5;
    a.cursor = Some("page-2".into());
    let c = chain("j1", "c");
    b.store
        .create_job(&j, &[a.clone(), c.clone()])
        .await
        .unwrap();

    let got = stored_job(b, "j1").await;
    assert_eq!(got.version, 0);
    assert_eq!(got.chains_remaining, 2);
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.request_url, j.request_url);
    assert_eq!(got.request, j.request);
    assert_eq!(got.failure.as_deref(), Some("carried in the document"));
    assert_eq!(got.expires_at, EXPIRES_AT);

    let got_a = stored_chain(b, "j1", "a").await;
    assert_eq!(got_a.version, 0, "a new chain is at version 0");
    a.version = 0;
    assert_eq!(chain_value(&got_a), chain_value(&a));
    let mut ids: Vec<String> = b
        .store
        .list_chains("j1")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.chain_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "c"]);

    assert!(b.store.get_job("j2").await.unwrap().is_none());
    assert!(b.store.get_chain("j1", "b").await.unwrap().is_none());
    assert!(b.store.get_chain("j2", "a").await.unwrap().is_none());
    assert!(b.store.list_chains("j2").await.unwrap().is_empty());
    assert!(b.store.list_files("j1").await.unwrap().is_empty());
}

async fn create_job_stores_every_chain_of_a_large_group(b: &Backend) {
    // A Group of 20,000 members queried in batches of 100, 6 types: 1,200
    // chains, each naming its batch (written 25 to a BatchWriteItem).
    let chains: Vec<Chain> = (0..1_200)
        .map(|i| {
            let mut c = chain("j1", &format!("Observation.{i}"));
            c.batch = Some((0..100).map(|p| format!("patient-{i}-{p}")).collect());
            c
        })
        .collect();
    b.store
        .create_job(&job("j1", JobStatus::Running), &chains)
        .await
        .unwrap();
    let stored = b.store.list_chains("j1").await.unwrap();
    assert_eq!(stored.len(), 1_200);
    assert!(
        stored
            .iter()
            .all(|c| c.version == 0 && c.batch.as_ref().is_some_and(|b| b.len() == 100))
    );
    assert_eq!(stored_job(b, "j1").await.chains_remaining, 1_200);
}

async fn a_job_of_20000_members_round_trips_under_the_item_limit(b: &Backend) {
    // 20,000 ids of FHIR's maximum length (64): ~1.3 MB of ids, more than
    // three times DynamoDB's 400 KB item limit.
    let ids: Vec<String> = (0..20_000).map(|i| format!("{i:064}")).collect();
    let mut j = job("j1", JobStatus::Running);
    j.scope = PatientScope::Members(ids.clone());
    b.store
        .create_job(&j, &[chain("j1", "Observation.0")])
        .await
        .unwrap();
    let stored = stored_job(b, "j1").await;
    assert_eq!(stored.scope, PatientScope::Members(ids.clone()));
    b.store
        .set_job_status(&stored, JobStatus::Failed, Some("x".into()))
        .await
        .unwrap();
    let failed = stored_job(b, "j1").await;
    assert_eq!(failed.failure.as_deref(), Some("x"));
    assert_eq!(failed.scope, PatientScope::Members(ids.clone()));
    let mut queued = job("j2", JobStatus::Queued);
    queued.scope = PatientScope::Members(ids.clone());
    b.store.create_job(&queued, &[]).await.unwrap();
    let active = b.store.active_jobs().await.unwrap();
    let j2 = active.iter().find(|j| j.id == "j2").unwrap();
    assert_eq!(j2.scope, PatientScope::Members(ids));
    b.store.delete_job("j1").await.unwrap();
    assert!(b.store.get_job("j1").await.unwrap().is_none());
}

async fn create_job_over_an_existing_job_conflicts_and_keeps_it(b: &Backend) {
    let (first, _) = job_with_chains(b, "j1", 2).await;
    let mut second = job("j1", JobStatus::Queued);
    second.request_url = "http://localhost/fhir/$export?second".into();
    // No chains: DynamoDB puts a job's chains before its item, so chains of
    // a colliding create would overwrite the existing ones (ids are random
    // 128-bit values, so that never happens in practice).
    assert_conflict(
        b.store.create_job(&second, &[]).await,
        "a second create of the same id",
    );
    let got = stored_job(b, "j1").await;
    assert_eq!(job_value(&got), job_value(&first), "the first job is kept");
}

async fn set_job_status_with_a_stale_version_conflicts_and_changes_nothing(b: &Backend) {
    let (v0, _) = job_with_chains(b, "j1", 2).await;
    assert_eq!(v0.version, 0);

    // The counter in the caller's copy is not written back.
    let mut caller = v0.clone();
    caller.chains_remaining = 42;
    b.store
        .set_job_status(&caller, JobStatus::Failed, Some("boom".into()))
        .await
        .unwrap();
    let v1 = stored_job(b, "j1").await;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.status, JobStatus::Failed);
    assert_eq!(v1.failure.as_deref(), Some("boom"));
    assert_eq!(v1.chains_remaining, 2, "the stored counter is untouched");

    let before = snapshot(b, "j1").await;
    assert_conflict(
        b.store.set_job_status(&v0, JobStatus::Complete, None).await,
        "a write at the replaced version 0",
    );
    let mut ahead = v1.clone();
    ahead.version = 5;
    assert_conflict(
        b.store
            .set_job_status(&ahead, JobStatus::Complete, None)
            .await,
        "a write at a version never stored",
    );
    assert_eq!(snapshot(b, "j1").await, before, "losers change nothing");

    // The current version wins, and the failure can be cleared.
    b.store
        .set_job_status(&v1, JobStatus::Running, None)
        .await
        .unwrap();
    let v2 = stored_job(b, "j1").await;
    assert_eq!((v2.version, v2.status), (2, JobStatus::Running));
    assert_eq!(v2.failure, None);

    // A missing job is a failed condition, and is not created.
    assert_conflict(
        b.store
            .set_job_status(&job("ghost", JobStatus::Queued), JobStatus::Running, None)
            .await,
        "a status write to a missing job",
    );
    assert!(b.store.get_job("ghost").await.unwrap().is_none());
}

async fn cancel_job_wins_once_and_fences_stale_writers(b: &Backend) {
    let (read_before, _) = job_with_chains(b, "j1", 1).await;
    assert!(b.store.cancel_job("j1").await.unwrap(), "first cancel");
    let cancelled = stored_job(b, "j1").await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert_eq!(cancelled.version, read_before.version + 1);

    assert!(!b.store.cancel_job("j1").await.unwrap(), "second cancel");
    assert_eq!(
        stored_job(b, "j1").await.version,
        cancelled.version,
        "a repeated cancel writes nothing"
    );

    // A completion decided on the job as read before the cancel loses.
    assert_conflict(
        b.store
            .set_job_status(&read_before, JobStatus::Complete, None)
            .await,
        "completing a job read before its cancel",
    );
    assert_eq!(stored_job(b, "j1").await.status, JobStatus::Cancelled);

    assert!(!b.store.cancel_job("ghost").await.unwrap(), "missing job");
    assert!(b.store.get_job("ghost").await.unwrap().is_none());
}

async fn active_jobs_are_the_queued_running_and_unfinished_cancelled_ones(b: &Backend) {
    for (id, status) in [
        ("q", JobStatus::Queued),
        ("r", JobStatus::Running),
        ("c", JobStatus::Complete),
        ("f", JobStatus::Failed),
        ("x", JobStatus::Cancelled),
        ("r2", JobStatus::Running),
    ] {
        b.store
            .create_job(&job(id, status), &[chain(id, "c0")])
            .await
            .unwrap();
    }
    assert!(b.store.cancel_job("r2").await.unwrap());
    // A cancelled job whose chains have all ended.
    b.store
        .create_job(&job("x0", JobStatus::Cancelled), &[])
        .await
        .unwrap();
    let q = stored_job(b, "q").await;
    b.store
        .set_job_status(&q, JobStatus::Running, None)
        .await
        .unwrap();

    let mut active: Vec<(String, JobStatus, u64)> = b
        .store
        .active_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.id, j.status, j.version))
        .collect();
    active.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        active,
        [
            ("q".to_string(), JobStatus::Running, 1),
            ("r".to_string(), JobStatus::Running, 0),
            // Cancelled with a chain that has not ended: the watchdog ends it.
            ("r2".to_string(), JobStatus::Cancelled, 1),
            ("x".to_string(), JobStatus::Cancelled, 0),
        ]
    );
}

async fn delete_job_removes_every_item_of_that_job_only(b: &Backend) {
    // `j1` and `j10` share a prefix; a schedule record lives beside them.
    for id in ["j1", "j10"] {
        job_with_chains(b, id, 2).await;
        b.store.put_file(id, &file("Patient", 1, 3)).await.unwrap();
        assert_eq!(
            b.store
                .next_file_number(id, "Patient", EXPIRES_AT)
                .await
                .unwrap(),
            1
        );
    }
    b.store
        .record_schedule_success("nightly", "2024-05-01T00:00:00.000Z")
        .await
        .unwrap();
    let other = snapshot(b, "j10").await;

    b.store.delete_job("j1").await.unwrap();
    assert_eq!(
        snapshot(b, "j1").await,
        json!({ "job": null, "chains": [], "files": [] })
    );
    assert_eq!(
        b.store
            .next_file_number("j1", "Patient", EXPIRES_AT)
            .await
            .unwrap(),
        1,
        "the file-number counter went with the job"
    );
    assert_eq!(snapshot(b, "j10").await, other, "the other job is intact");
    assert_eq!(
        b.store
            .next_file_number("j10", "Patient", EXPIRES_AT)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        b.store.last_schedule_success("nightly").await.unwrap(),
        Some("2024-05-01T00:00:00.000Z".into())
    );
    b.store.delete_job("never-was").await.unwrap();
}

async fn save_chain_commits_only_on_the_stored_version(b: &Backend) {
    let (_, chains) = job_with_chains(b, "j1", 2).await;
    let mut mine = chains[0].clone();
    let stale = mine.clone();

    mine.cursor = Some("page-2".into());
    mine.step = 1;
    mine.exported = 500;
    b.store.save_chain(&mut mine).await.unwrap();
    assert_eq!(mine.version, 1, "the caller's copy takes the new version");
    assert_eq!(
        chain_value(&stored_chain(b, "j1", "c0").await),
        chain_value(&mine)
    );

    // A duplicate delivery of the same step, from the old version.
    let before = snapshot(b, "j1").await;
    let mut dup = stale.clone();
    dup.cursor = Some("page-2-from-a-duplicate".into());
    dup.step = 1;
    assert_conflict(b.store.save_chain(&mut dup).await, "a stale save");
    assert_eq!(dup.version, 0, "a loser's copy keeps its version");
    let mut ahead = mine.clone();
    ahead.version = 9;
    assert_conflict(b.store.save_chain(&mut ahead).await, "a future version");
    assert_eq!(snapshot(b, "j1").await, before, "losers change nothing");

    // Saving a chain that was never created does not create it.
    let mut ghost = chain("j1", "ghost");
    assert_conflict(b.store.save_chain(&mut ghost).await, "a missing chain");
    assert!(b.store.get_chain("j1", "ghost").await.unwrap().is_none());

    // The winner goes on from its new version.
    mine.step = 2;
    b.store.save_chain(&mut mine).await.unwrap();
    assert_eq!(stored_chain(b, "j1", "c0").await.version, 2);
}

async fn finish_chain_counts_the_job_once_per_version(b: &Backend) {
    let (job0, chains) = job_with_chains(b, "j1", 2).await;
    let mut first = chains[0].clone();
    let retry = first.clone();
    first.state = ChainState::Done;
    b.store.finish_chain(&mut first).await.unwrap();
    assert_eq!(first.version, 1);
    let stored = stored_chain(b, "j1", "c0").await;
    assert_eq!((stored.version, stored.state), (1, ChainState::Done));
    let j = stored_job(b, "j1").await;
    assert_eq!(j.chains_remaining, 1);
    assert_eq!(
        j.version, job0.version,
        "counting a chain does not move the job's version"
    );

    // A retried finish of the same step, and a finish of a missing chain,
    // change neither the chain nor the counter.
    let before = snapshot(b, "j1").await;
    let mut again = retry.clone();
    again.state = ChainState::Done;
    assert_conflict(b.store.finish_chain(&mut again).await, "a retried finish");
    let mut ghost = chain("j1", "ghost");
    assert_conflict(b.store.finish_chain(&mut ghost).await, "a missing chain");
    assert_eq!(snapshot(b, "j1").await, before);

    // The last chain brings the counter to zero, and the job read before any
    // chain finished can still be completed.
    let mut last = chains[1].clone();
    b.store.finish_chain(&mut last).await.unwrap();
    assert_eq!(stored_job(b, "j1").await.chains_remaining, 0);
    b.store
        .set_job_status(&job0, JobStatus::Complete, None)
        .await
        .unwrap();
}

async fn concurrent_finish_chain_of_one_version_has_one_winner(b: &Backend) {
    const RACERS: usize = 8;
    let (_, chains) = job_with_chains(b, "j1", 3).await;
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = b.store.clone();
            let mut c = chains[0].clone();
            c.state = ChainState::Done;
            c.exported = i as u64;
            tokio::spawn(async move {
                let r = store.finish_chain(&mut c).await;
                (r, c)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, t) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        match t.unwrap() {
            (Ok(()), c) => winners.push((i, c)),
            (Err(StoreError::Conflict), c) => assert_eq!(c.version, 0),
            (other, _) => panic!("racer {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of {RACERS} finishes wins");
    let (i, winner) = &winners[0];
    let stored = stored_chain(b, "j1", "c0").await;
    assert_eq!(stored.version, 1);
    assert_eq!(stored.exported, *i as u64, "the winner's write is stored");
    assert_eq!(chain_value(&stored), chain_value(winner));
    assert_eq!(
        stored_job(b, "j1").await.chains_remaining,
        2,
        "the counter moved once"
    );
}

fn partition(after: Option<&str>, upto: Option<&str>) -> Option<Partition> {
    Some(Partition {
        after: after.map(str::to_string),
        upto: upto.map(str::to_string),
    })
}

async fn split_chain_adds_siblings_and_counts_them(b: &Backend) {
    let (_, chains) = job_with_chains(b, "j1", 1).await;
    let retry = chains[0].clone();
    let mut narrowed = chains[0].clone();
    narrowed.partition = partition(None, Some("2020-01-01T00:00:00.000Z"));
    let mut s1 = chain("j1", "c0-p1");
    s1.partition = partition(
        Some("2020-01-01T00:00:00.000Z"),
        Some("2022-01-01T00:00:00.000Z"),
    );
    s1.version = 9;
    let mut s2 = chain("j1", "c0-p2");
    s2.partition = partition(Some("2022-01-01T00:00:00.000Z"), None);
    b.store
        .split_chain(&mut narrowed, &[s1.clone(), s2.clone()], EXPIRES_AT)
        .await
        .unwrap();

    assert_eq!(narrowed.version, 1);
    assert_eq!(
        chain_value(&stored_chain(b, "j1", "c0").await),
        chain_value(&narrowed)
    );
    let got_s1 = stored_chain(b, "j1", "c0-p1").await;
    assert_eq!(got_s1.version, 0, "siblings start at version 0");
    assert_eq!(got_s1.partition, s1.partition);
    assert_eq!(stored_chain(b, "j1", "c0-p2").await.partition, s2.partition);
    assert_eq!(stored_job(b, "j1").await.chains_remaining, 3);

    // The same split delivered again loses its version check, whole.
    let before = snapshot(b, "j1").await;
    let mut again = retry.clone();
    again.partition = narrowed.partition.clone();
    assert_conflict(
        b.store
            .split_chain(&mut again, &[chain("j1", "c0-p3")], EXPIRES_AT)
            .await,
        "a retried split",
    );
    assert_eq!(again.version, 0);
    assert_eq!(snapshot(b, "j1").await, before, "no sibling, no count");
}

async fn split_chain_with_an_existing_sibling_fails_whole(b: &Backend) {
    let (_, chains) = job_with_chains(b, "j1", 2).await;
    // `c1` exists (and has moved on); a split that would create it again
    // must not create its other siblings, narrow `c0` or count anything.
    let mut c1 = chains[1].clone();
    c1.cursor = Some("c1-page-3".into());
    b.store.save_chain(&mut c1).await.unwrap();
    let before = snapshot(b, "j1").await;

    let mut c0 = chains[0].clone();
    c0.partition = partition(None, Some("2020-01-01T00:00:00.000Z"));
    let result = b
        .store
        .split_chain(
            &mut c0,
            &[chain("j1", "c0-p1"), chain("j1", "c1")],
            EXPIRES_AT,
        )
        .await;
    assert_conflict(result, "a split onto an existing chain");
    assert_eq!(c0.version, 0);
    assert_eq!(
        snapshot(b, "j1").await,
        before,
        "nothing of the split is applied"
    );
    assert!(b.store.get_chain("j1", "c0-p1").await.unwrap().is_none());
}

async fn split_chain_naming_a_chain_twice_fails_whole(b: &Backend) {
    let (_, chains) = job_with_chains(b, "j1", 1).await;
    let before = snapshot(b, "j1").await;

    // Two new chains with one id, and a new chain with the split chain's
    // own id: DynamoDB refuses both transactions (two operations on one
    // item), so the store must refuse them too. The error kind is not
    // pinned; that nothing is applied is.
    let mut c0 = chains[0].clone();
    let twice = b
        .store
        .split_chain(
            &mut c0,
            &[chain("j1", "c0-p1"), chain("j1", "c0-p1")],
            EXPIRES_AT,
        )
        .await;
    assert!(twice.is_err(), "a sibling named twice: {twice:?}");
    assert_eq!(c0.version, 0);
    let itself = b
        .store
        .split_chain(&mut c0, &[chain("j1", "c0")], EXPIRES_AT)
        .await;
    assert!(itself.is_err(), "a sibling named as the chain: {itself:?}");
    assert_eq!(c0.version, 0);
    assert_eq!(snapshot(b, "j1").await, before);
}

async fn next_file_number_counts_from_one_per_job_and_type(b: &Backend) {
    // No job item is needed: the counters are items of their own.
    let next = |job: &'static str, ty: &'static str| {
        let store = b.store.clone();
        async move { store.next_file_number(job, ty, EXPIRES_AT).await.unwrap() }
    };
    assert_eq!(next("j1", "Observation").await, 1);
    assert_eq!(next("j1", "Observation").await, 2);
    assert_eq!(next("j1", "Patient").await, 1);
    assert_eq!(next("j1", "Observation").await, 3);
    assert_eq!(next("j2", "Observation").await, 1);
    assert_eq!(next("j1", "Patient").await, 2);
}

/// Real DynamoDB applies an `ADD` update atomically, and so do dynoxide and
/// memory. moto does not under concurrent requests (seen: two callers both
/// got 2), so on the external lane the same calls run one after another:
/// the numbering is checked there, the atomicity where the backend has it.
async fn concurrent_next_file_number_never_repeats(b: &Backend) {
    if b.kind == Kind::External {
        let mut got = Vec::new();
        for _ in 0..16 {
            got.push(
                b.store
                    .next_file_number("j1", "Observation", EXPIRES_AT)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(got, (1..=16).collect::<Vec<u32>>());
        return;
    }
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = b.store.clone();
            tokio::spawn(async move {
                store
                    .next_file_number("j1", "Observation", EXPIRES_AT)
                    .await
            })
        })
        .collect();
    let mut got: Vec<u32> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.unwrap().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=16).collect::<Vec<u32>>());
}

async fn put_file_is_idempotent_and_the_last_write_wins(b: &Backend) {
    job_with_chains(b, "j1", 1).await;
    let p1 = file("Patient", 1, 10);
    b.store.put_file("j1", &p1).await.unwrap();
    b.store.put_file("j1", &p1).await.unwrap();
    assert_eq!(
        b.store.list_files("j1").await.unwrap(),
        std::slice::from_ref(&p1)
    );

    let mut p1b = p1.clone();
    p1b.count = 11;
    p1b.bytes = 1_111;
    b.store.put_file("j1", &p1b).await.unwrap();
    let o2 = file("Observation", 2, 5);
    let o10 = file("Observation", 10, 7);
    let mut err1 = file("OperationOutcome", 1, 1);
    err1.kind = FileKind::Error;
    for f in [&o10, &o2, &err1] {
        b.store.put_file("j1", f).await.unwrap();
    }
    let mut got = b.store.list_files("j1").await.unwrap();
    got.sort_by(|x, y| (&x.resource_type, x.number).cmp(&(&y.resource_type, y.number)));
    let one = |t: &'static str, n: u32| async move { b.store.get_file("j1", t, n).await.unwrap() };
    assert_eq!(one("Patient", 1).await.as_ref(), Some(&p1b));
    assert_eq!(one("Observation", 10).await.as_ref(), Some(&o10));
    assert_eq!(one("OperationOutcome", 1).await.as_ref(), Some(&err1));
    assert_eq!(one("Observation", 1).await, None);
    assert_eq!(b.store.get_file("j2", "Patient", 1).await.unwrap(), None);
    assert_eq!(got, [o2, o10, err1, p1b]);
    assert!(b.store.list_files("j2").await.unwrap().is_empty());
}

async fn record_poll_counts_within_a_window_and_restarts_after_it(b: &Backend) {
    // A missing job counts as a first poll and is not created.
    assert_eq!(b.store.record_poll("ghost", 1_000, 10).await.unwrap(), 1);
    assert!(b.store.get_job("ghost").await.unwrap().is_none());

    let (j, _) = job_with_chains(b, "j1", 1).await;
    let poll = |now: i64| {
        let store = b.store.clone();
        async move { store.record_poll("j1", now, 10).await.unwrap() }
    };
    assert_eq!(poll(1_000).await, 1, "the first poll opens a window");
    assert_eq!(poll(1_005).await, 2);
    assert_eq!(poll(1_009).await, 3, "the window's last second");
    assert_eq!(poll(1_010).await, 1, "a poll at its end opens the next");
    assert_eq!(poll(1_019).await, 2);

    // Polls are not state changes: the job's version is unchanged, and a
    // status write keeps the window.
    let now = stored_job(b, "j1").await;
    assert_eq!((now.version, now.status), (j.version, j.status));
    b.store
        .set_job_status(&now, JobStatus::Running, None)
        .await
        .unwrap();
    assert_eq!(poll(1_019).await, 3);
    assert_eq!(poll(1_045).await, 1, "a long pause opens a new window");
    assert_eq!(poll(1_046).await, 2);
}

async fn schedule_success_only_moves_forward(b: &Backend) {
    let (t1, t2, t3) = (
        "2024-05-01T00:00:00.000Z",
        "2024-05-02T00:00:00.000Z",
        "2024-05-03T00:00:00.000Z",
    );
    assert_eq!(
        b.store.last_schedule_success("nightly").await.unwrap(),
        None
    );
    b.store
        .record_schedule_success("nightly", t2)
        .await
        .unwrap();
    b.store
        .record_schedule_success("nightly", t1)
        .await
        .unwrap();
    assert_eq!(
        b.store.last_schedule_success("nightly").await.unwrap(),
        Some(t2.into()),
        "an older success does not move it back"
    );
    b.store
        .record_schedule_success("nightly", t2)
        .await
        .unwrap();
    b.store
        .record_schedule_success("nightly", t3)
        .await
        .unwrap();
    assert_eq!(
        b.store.last_schedule_success("nightly").await.unwrap(),
        Some(t3.into())
    );
    b.store.record_schedule_success("weekly", t1).await.unwrap();
    assert_eq!(
        b.store.last_schedule_success("weekly").await.unwrap(),
        Some(t1.into())
    );
    assert_eq!(
        b.store.last_schedule_success("nightly").await.unwrap(),
        Some(t3.into()),
        "schedules are independent"
    );
    assert_eq!(b.store.last_schedule_success("hourly").await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// Object store
// ---------------------------------------------------------------------------

/// A full-size (5 MiB) part of one repeated byte.
fn big_part(byte: u8) -> Bytes {
    Bytes::from(vec![byte; MIN_PART_SIZE])
}

/// Parts numbered 1..=n with these ETags.
fn numbered(etags: &[String]) -> Vec<UploadedPart> {
    etags
        .iter()
        .enumerate()
        .map(|(i, etag)| UploadedPart {
            number: i as u32 + 1,
            etag: etag.clone(),
        })
        .collect()
}

fn concat(parts: &[&Bytes]) -> Bytes {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

async fn multipart_upload_concatenates_its_parts_in_order(b: &Backend) {
    let key = "out/j1/Observation-1.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let (p1, p2) = (big_part(b'a'), Bytes::from_static(b"{\"last\":true}\n"));
    // Parts may arrive out of order; their numbers decide the order.
    let e2 = b
        .objects
        .upload_part(key, &id, 2, p2.clone())
        .await
        .unwrap();
    let e1 = b
        .objects
        .upload_part(key, &id, 1, p1.clone())
        .await
        .unwrap();
    assert_ne!(e1, e2);
    b.objects
        .complete_upload(key, &id, &numbered(&[e1.clone(), e2.clone()]))
        .await
        .unwrap();

    let expected = concat(&[&p1, &p2]);
    assert_eq!(
        b.objects.object_size(key).await.unwrap(),
        Some(expected.len() as u64)
    );
    assert!(b.objects.get_object(key).await.unwrap() == Some(expected.clone()));

    // The upload is gone once complete.
    assert_no_such_upload(
        b.objects
            .upload_part(key, &id, 3, Bytes::from_static(b"late\n"))
            .await,
        "a part after completion",
    );
    // A repeated completion either answers NoSuchUpload or, as S3 may for a
    // retry of a completion that succeeded (and moto does), succeeds again;
    // either way the object stays as completed.
    match b
        .objects
        .complete_upload(key, &id, &numbered(&[e1, e2]))
        .await
    {
        Ok(()) | Err(ObjectError::NoSuchUpload) => {}
        Err(e) => panic!("a second completion: expected Ok or NoSuchUpload, got {e:?}"),
    }
    assert!(b.objects.get_object(key).await.unwrap() == Some(expected));
}

async fn a_reuploaded_part_replaces_the_earlier_one(b: &Backend) {
    let key = "out/j1/Patient-1.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let first = b
        .objects
        .upload_part(key, &id, 1, big_part(b'x'))
        .await
        .unwrap();
    // A retried step re-uploads the part under the same number.
    let (p1, p2) = (big_part(b'y'), Bytes::from_static(b"tail\n"));
    let e1 = b
        .objects
        .upload_part(key, &id, 1, p1.clone())
        .await
        .unwrap();
    assert_ne!(first, e1, "different bytes, different ETag");
    // The same bytes again give the same ETag.
    assert_eq!(
        b.objects
            .upload_part(key, &id, 1, p1.clone())
            .await
            .unwrap(),
        e1
    );
    let e2 = b
        .objects
        .upload_part(key, &id, 2, p2.clone())
        .await
        .unwrap();
    b.objects
        .complete_upload(key, &id, &numbered(&[e1, e2]))
        .await
        .unwrap();
    let got = b.objects.get_object(key).await.unwrap().unwrap();
    assert_eq!(got.len(), p1.len() + p2.len());
    assert!(
        got == concat(&[&p1, &p2]),
        "only the latest part 1 is in the object"
    );
}

async fn completing_with_a_stale_etag_fails(b: &Backend) {
    let key = "out/j1/Condition-1.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let stale = b
        .objects
        .upload_part(key, &id, 1, Bytes::from_static(b"old\n"))
        .await
        .unwrap();
    let current = b
        .objects
        .upload_part(key, &id, 1, Bytes::from_static(b"new\n"))
        .await
        .unwrap();
    let with_stale = b
        .objects
        .complete_upload(key, &id, &numbered(&[stale]))
        .await;
    assert_invalid_part(with_stale, "completion with a replaced part's ETag");
    // A part that was never uploaded.
    let never = UploadedPart {
        number: 2,
        etag: "\"0123\"".to_string(),
    };
    assert_invalid_part(
        b.objects.complete_upload(key, &id, &[never]).await,
        "completion naming a part never uploaded",
    );
    assert_eq!(b.objects.object_size(key).await.unwrap(), None);
    // A failed completion leaves the upload usable.
    b.objects
        .complete_upload(key, &id, &numbered(&[current]))
        .await
        .unwrap();
    assert!(b.objects.get_object(key).await.unwrap().unwrap() == "new\n");
}

async fn part_numbers_may_have_gaps_and_must_ascend(b: &Backend) {
    // Each delivery attempt of a step uploads under numbers of its own: a
    // completion names the committed ones, gaps between them allowed.
    let key = "out/j1/Device-1.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let (p1, p2) = (big_part(b'g'), Bytes::from_static(b"{\"gap\":true}\n"));
    let e1 = b
        .objects
        .upload_part(key, &id, 4, p1.clone())
        .await
        .unwrap();
    // A losing attempt's part of the same index, never committed.
    b.objects
        .upload_part(key, &id, 5, big_part(b'l'))
        .await
        .unwrap();
    let e2 = b
        .objects
        .upload_part(key, &id, 9, p2.clone())
        .await
        .unwrap();
    let part = |number, etag: &String| UploadedPart {
        number,
        etag: etag.clone(),
    };
    b.objects
        .complete_upload(key, &id, &[part(4, &e1), part(9, &e2)])
        .await
        .unwrap();
    let got = b.objects.get_object(key).await.unwrap().unwrap();
    assert!(got == concat(&[&p1, &p2]), "only the named parts, in order");

    let key = "out/j1/Device-2.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let e4 = b
        .objects
        .upload_part(key, &id, 4, big_part(b'4'))
        .await
        .unwrap();
    let e5 = b
        .objects
        .upload_part(key, &id, 5, big_part(b'5'))
        .await
        .unwrap();
    let descending = b
        .objects
        .complete_upload(key, &id, &[part(5, &e5), part(4, &e4)])
        .await;
    if b.kind == Kind::External {
        // moto completes parts named in descending order (S3 answers
        // InvalidPartOrder); the exporter always names them ascending.
        descending.unwrap();
        return;
    }
    assert_invalid_part(descending, "descending part numbers");
    assert_eq!(b.objects.object_size(key).await.unwrap(), None);
}

async fn a_small_part_before_the_last_fails_completion(b: &Backend) {
    let key = "out/j1/Encounter-1.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let small = Bytes::from(vec![b's'; MIN_PART_SIZE - 1]);
    let e1 = b
        .objects
        .upload_part(key, &id, 1, small.clone())
        .await
        .unwrap();
    let e2 = b
        .objects
        .upload_part(key, &id, 2, Bytes::from_static(b"tail\n"))
        .await
        .unwrap();
    let result = b
        .objects
        .complete_upload(key, &id, &numbered(&[e1.clone(), e2]))
        .await;
    assert!(result.is_err(), "EntityTooSmall expected, got {result:?}");
    assert_eq!(b.objects.object_size(key).await.unwrap(), None);
    // A small part is fine as the last one.
    b.objects
        .complete_upload(key, &id, &numbered(&[e1]))
        .await
        .unwrap();
    assert!(b.objects.get_object(key).await.unwrap() == Some(small));
}

async fn completion_takes_only_the_named_parts(b: &Backend) {
    // A step that uploaded part 3 and crashed before committing it leaves
    // an orphan part: completing with the committed ETags excludes it.
    let key = "out/j1/Procedure-1.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let (p1, p2) = (big_part(b'1'), big_part(b'2'));
    let e1 = b
        .objects
        .upload_part(key, &id, 1, p1.clone())
        .await
        .unwrap();
    let e2 = b
        .objects
        .upload_part(key, &id, 2, p2.clone())
        .await
        .unwrap();
    b.objects
        .upload_part(key, &id, 3, Bytes::from_static(b"orphan\n"))
        .await
        .unwrap();
    b.objects
        .complete_upload(key, &id, &numbered(&[e1, e2]))
        .await
        .unwrap();
    let got = b.objects.get_object(key).await.unwrap().unwrap();
    assert_eq!(got.len(), 2 * MIN_PART_SIZE);
    assert!(got == concat(&[&p1, &p2]));
}

async fn abort_ends_the_upload_and_is_idempotent(b: &Backend) {
    let key = "out/j1/Immunization-1.ndjson";
    let id = b.objects.create_upload(key).await.unwrap();
    let e1 = b
        .objects
        .upload_part(key, &id, 1, Bytes::from_static(b"one\n"))
        .await
        .unwrap();
    b.objects.abort_upload(key, &id).await.unwrap();
    b.objects.abort_upload(key, &id).await.unwrap();
    assert_no_such_upload(
        b.objects
            .upload_part(key, &id, 2, Bytes::from_static(b"two\n"))
            .await,
        "a part after abort",
    );
    assert_no_such_upload(
        b.objects.complete_upload(key, &id, &numbered(&[e1])).await,
        "completion after abort",
    );
    assert_eq!(b.objects.object_size(key).await.unwrap(), None);
    assert!(b.objects.list_keys("out/").await.unwrap().is_empty());
    // Aborting a completed upload succeeds and keeps the object.
    let done = b.objects.create_upload(key).await.unwrap();
    let e = b
        .objects
        .upload_part(key, &done, 1, Bytes::from_static(b"kept\n"))
        .await
        .unwrap();
    b.objects
        .complete_upload(key, &done, &numbered(&[e]))
        .await
        .unwrap();
    b.objects.abort_upload(key, &done).await.unwrap();
    assert_eq!(b.objects.object_size(key).await.unwrap(), Some(5));
}

async fn uploads_are_invisible_until_complete_and_independent(b: &Backend) {
    let key = "out/j1/Observation-7.ndjson";
    let a = b.objects.create_upload(key).await.unwrap();
    let c = b.objects.create_upload(key).await.unwrap();
    assert_ne!(a, c, "two uploads of one key have their own ids");
    let ea = b
        .objects
        .upload_part(key, &a, 1, Bytes::from_static(b"from a\n"))
        .await
        .unwrap();
    let ec = b
        .objects
        .upload_part(key, &c, 1, Bytes::from_static(b"from c, longer\n"))
        .await
        .unwrap();
    assert_eq!(b.objects.object_size(key).await.unwrap(), None);
    assert!(b.objects.get_object(key).await.unwrap().is_none());
    assert!(b.objects.list_keys("").await.unwrap().is_empty());

    b.objects
        .complete_upload(key, &a, &numbered(&[ea]))
        .await
        .unwrap();
    assert!(b.objects.get_object(key).await.unwrap().unwrap() == "from a\n");
    // The other upload of the key is untouched and replaces the object.
    b.objects
        .complete_upload(key, &c, &numbered(&[ec]))
        .await
        .unwrap();
    assert!(b.objects.get_object(key).await.unwrap().unwrap() == "from c, longer\n");
    assert_eq!(b.objects.list_keys("").await.unwrap(), [key]);
}

async fn an_upload_id_belongs_to_its_key(b: &Backend) {
    let (key, other) = ("out/j1/Patient-1.ndjson", "out/j1/Patient-2.ndjson");
    let id = b.objects.create_upload(key).await.unwrap();
    let wrong = b
        .objects
        .upload_part(other, &id, 1, Bytes::from_static(b"misdirected\n"))
        .await;
    if b.kind != Kind::Memory {
        // Neither s3s-fs nor moto ties an upload id to its key (S3 answers
        // NoSuchUpload): the part lands in the upload whatever key it names.
        wrong.unwrap();
        return;
    }
    assert_no_such_upload(wrong, "a part sent to another key");
    let e = b
        .objects
        .upload_part(key, &id, 1, Bytes::from_static(b"right\n"))
        .await
        .unwrap();
    assert_no_such_upload(
        b.objects
            .complete_upload(other, &id, &numbered(std::slice::from_ref(&e)))
            .await,
        "completion under another key",
    );
    b.objects.abort_upload(other, &id).await.unwrap();
    b.objects
        .complete_upload(key, &id, &numbered(&[e]))
        .await
        .unwrap();
    assert_eq!(b.objects.object_size(other).await.unwrap(), None);
    assert_eq!(b.objects.object_size(key).await.unwrap(), Some(6));
}

/// Keys around the prefix `a/bc`: before, inside and after it in key order.
/// (No key is also a "directory" of another: s3s-fs stores keys as files.)
const KEYS: &[&str] = &["ab", "a/bcd/e", "a/b", "a/bc-1", "a/B", "a/bc", "a/bd", "b"];

async fn put_keys(b: &Backend) {
    for k in KEYS {
        b.objects
            .put_object(k, Bytes::from(k.as_bytes().to_vec()))
            .await
            .unwrap();
    }
}

async fn list_keys_is_in_key_order_within_the_prefix(b: &Backend) {
    put_keys(b).await;
    let list = |prefix: &'static str| {
        let objects = b.objects.clone();
        async move { objects.list_keys(prefix).await.unwrap() }
    };
    assert_eq!(list("a/bc").await, ["a/bc", "a/bc-1", "a/bcd/e"]);
    assert_eq!(
        list("a/b").await,
        ["a/b", "a/bc", "a/bc-1", "a/bcd/e", "a/bd"],
        "a prefix is a string prefix, not a folder"
    );
    assert_eq!(
        list("a/").await,
        ["a/B", "a/b", "a/bc", "a/bc-1", "a/bcd/e", "a/bd"]
    );
    assert_eq!(
        list("").await,
        ["a/B", "a/b", "a/bc", "a/bc-1", "a/bcd/e", "a/bd", "ab", "b"]
    );
    assert!(list("a/bc/").await.is_empty());
    assert!(list("a/bce").await.is_empty());
    assert!(list("c").await.is_empty());
}

async fn delete_prefix_removes_objects_under_the_prefix_only(b: &Backend) {
    put_keys(b).await;
    // An upload in progress under the prefix is not an object: it survives.
    let open = "a/bc-2";
    let id = b.objects.create_upload(open).await.unwrap();
    let e = b
        .objects
        .upload_part(open, &id, 1, Bytes::from_static(b"open\n"))
        .await
        .unwrap();

    b.objects.delete_prefix("a/bc").await.unwrap();
    assert_eq!(
        b.objects.list_keys("").await.unwrap(),
        ["a/B", "a/b", "a/bd", "ab", "b"]
    );
    assert!(b.objects.get_object("a/b").await.unwrap().unwrap() == "a/b");
    b.objects.delete_prefix("a/bc").await.unwrap();
    b.objects.delete_prefix("nothing/").await.unwrap();

    b.objects
        .complete_upload(open, &id, &numbered(&[e]))
        .await
        .unwrap();
    assert_eq!(b.objects.list_keys("a/bc").await.unwrap(), [open]);
}

async fn put_object_replaces_and_reads_back(b: &Backend) {
    let key = "out/j1/OperationOutcome-1.ndjson";
    assert_eq!(b.objects.object_size(key).await.unwrap(), None);
    assert!(b.objects.get_object(key).await.unwrap().is_none());
    b.objects
        .put_object(key, Bytes::from_static(b"first, the longer body\n"))
        .await
        .unwrap();
    b.objects
        .put_object(key, Bytes::from_static(b"second\n"))
        .await
        .unwrap();
    assert_eq!(b.objects.object_size(key).await.unwrap(), Some(7));
    assert!(b.objects.get_object(key).await.unwrap().unwrap() == "second\n");
    b.objects.put_object("empty", Bytes::new()).await.unwrap();
    assert_eq!(b.objects.object_size("empty").await.unwrap(), Some(0));
    assert_eq!(
        b.objects
            .get_object("empty")
            .await
            .unwrap()
            .map(|x| x.len()),
        Some(0)
    );
    assert_eq!(b.objects.list_keys("").await.unwrap(), ["empty", key]);
}

async fn presigned_urls_read_the_object_for_their_validity(b: &Backend) {
    let key = "out/j1/Patient-1.ndjson";
    b.objects
        .put_object(key, Bytes::from_static(b"{\"resourceType\":\"Patient\"}\n"))
        .await
        .unwrap();
    let url = b
        .objects
        .presign_get(key, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(url.contains("/out/j1/Patient-1.ndjson"), "{url}");
    assert!(url.to_ascii_lowercase().contains("expires=3600"), "{url}");
    assert!(
        b.fetch(&url).await.unwrap() == "{\"resourceType\":\"Patient\"}\n",
        "the URL reads the object"
    );

    // Signing does not look the key up; the URL reads nothing.
    let missing = b
        .objects
        .presign_get("out/j1/none.ndjson", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(b.fetch(&missing).await.is_none());

    // SigV4 caps validity at one week.
    let week = Duration::from_secs(7 * 24 * 3600);
    let url = b.objects.presign_get(key, week).await.unwrap();
    assert!(url.to_ascii_lowercase().contains("expires=604800"), "{url}");
    assert_backend_error(
        b.objects
            .presign_get(key, week + Duration::from_secs(1))
            .await,
        "a URL valid for over a week",
    );
}

/// Every item a job leaves in DynamoDB (the job, its chains and their
/// split siblings, file records, file-number counters, the poll counter on
/// the job item) carries the job's `ttl`, so DynamoDB's TTL removes all of
/// it: nothing of an export outlives its retention. Schedule records are the
/// one exception on purpose (a schedule's last success must outlive any
/// single export).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_every_item_of_a_job_expires_with_it() {
    let b = Backend::sdk().await;
    let (_, chains) = job_with_chains(&b, "j1", 2).await;
    let mut narrowed = chains[0].clone();
    narrowed.partition = partition(None, Some("2020-01-01T00:00:00.000Z"));
    let mut sibling = chain("j1", "c0-p1");
    sibling.partition = partition(Some("2020-01-01T00:00:00.000Z"), None);
    b.store
        .split_chain(&mut narrowed, &[sibling], EXPIRES_AT)
        .await
        .unwrap();
    let mut second = chains[1].clone();
    second.step = 1;
    b.store.save_chain(&mut second).await.unwrap();
    b.store
        .put_file("j1", &file("Patient", 1, 10))
        .await
        .unwrap();
    b.store
        .next_file_number("j1", "Patient", EXPIRES_AT)
        .await
        .unwrap();
    b.store.record_poll("j1", 1_000, 10).await.unwrap();
    b.store
        .record_schedule_success("nightly", "2026-01-01T00:00:00.000Z")
        .await
        .unwrap();

    let stack = b._stack.as_ref().unwrap();
    let client = bulk_export::aws_clients::dynamodb_client(&stack.endpoints).await;
    let items = client
        .scan()
        .table_name(&stack.services.config.table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let key =
        |item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>| {
            format!(
                "{} {}",
                item["pk"].as_s().unwrap(),
                item["sk"].as_s().unwrap()
            )
        };
    let of_job: Vec<_> = items
        .iter()
        // Schedule records and the active-job registry outlive jobs.
        .filter(|i| {
            let pk = i["pk"].as_s().unwrap();
            !pk.starts_with("SCHEDULE#") && pk != "ACTIVE"
        })
        .collect();
    assert!(
        of_job.len() >= 6,
        "job, 3 chains, a file, a counter: {}",
        of_job.len()
    );
    for item in of_job {
        assert_eq!(
            item.get("ttl")
                .and_then(|t| t.as_n().ok())
                .map(String::as_str),
            Some(EXPIRES_AT.to_string().as_str()),
            "{} expires with its job",
            key(item)
        );
    }
}
