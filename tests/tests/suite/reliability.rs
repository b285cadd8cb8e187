//! Reliability: admission control and queueing, lost handoffs and stalls
//! recovered by the watchdog, storage faults retried without loss, expiry.
//! Each test prints what it injected and what it checked.

use crate::common::wrappers::{
    HookedObjects, HookedStore, ObjectCall, ObjectHooks, StoreCall, StoreHooks,
};
use crate::common::*;
use async_trait::async_trait;
use bulk_export_core::ports::job_store::StoreError;
use bulk_export_core::ports::object_store::ObjectError;
use bulk_export_core::ports::services::ExportServices;
use bulk_export_core::worker::step::run_step;
use bulk_export_core::worker::watchdog::sweep;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

async fn verify_complete(status_url: &str, src: &std::path::Path, types: &[&str]) {
    let manifest = wait_complete(status_url).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let expected: std::collections::BTreeMap<_, _> = source_multiset(src, false)
        .into_iter()
        .filter(|((t, _), _)| types.is_empty() || types.contains(&t.as_str()))
        .collect();
    assert_eq!(got, expected, "output equals the source exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_beyond_the_limit_queue_then_get_429() {
    let mut config = small_config();
    config.max_running_jobs = 1;
    config.max_queued_jobs = 1;
    let (_dir, src, stack) = ndjson_stack("queue", 20, 1, config, 0).await;
    let svc = stack.services.clone();

    let a = kickoff(&stack.base_url, "_type=Patient").await;
    let b = kickoff(&stack.base_url, "_type=Condition").await;
    let resp = http().get(&b).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        resp.headers()["x-progress"],
        "0% complete: queued, position 1"
    );
    let c = http()
        .get(format!("{}/$export", stack.base_url))
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 429, "third export exceeds the queue");
    assert!(
        c.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(c.headers()["content-type"], "application/fhir+json");

    // Finishing A starts B.
    drain(&stack, &svc).await;
    verify_complete(&a, &src, &["Patient"]).await;
    drain(&stack, &svc).await;
    verify_complete(&b, &src, &["Condition"]).await;
    println!(
        "injected: limit 1 running + 1 queued; checked: queued position, 429, promotion on completion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_handoff_is_recovered_by_the_watchdog() {
    // One part per invocation, so the first invocation hands over.
    let mut config = small_config();
    config.parts_per_invocation = 1;
    let (_dir, src, stack) = ndjson_stack("lost", 300, 2, config, 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    // Run the first step, then lose the handoff it scheduled.
    let first = stack.queue.try_next().await.unwrap();
    run_step(&svc, &first, None).await.unwrap();
    let lost = stack
        .queue
        .try_next()
        .await
        .expect("the first step handed off the next one");
    assert!(stack.queue.try_next().await.is_none());
    assert_eq!(
        sweep(&svc, Duration::from_secs(1)).await.unwrap().restarted,
        0,
        "not stalled yet"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let report = sweep(&svc, Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.restarted, 1);
    let again = stack.queue.try_next().await.unwrap();
    assert_eq!(
        again, lost,
        "the watchdog re-delivers exactly the lost step"
    );
    run_step(&svc, &again, None).await.unwrap();
    drain(&stack, &svc).await;
    verify_complete(&status_url, &src, &["Observation"]).await;
    println!(
        "injected: dropped handoff of step {}; checked: watchdog restart and exact output",
        lost.step
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_keeps_stalling_fails_into_the_error_file() {
    let (_dir, _src, stack) = ndjson_stack("stall", 50, 2, small_config(), 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Patient,Condition").await;
    // Patient runs; Condition's steps are always lost.
    let mut restarts = 0;
    for round in 0..8 {
        while let Some(ev) = stack.queue.try_next().await {
            if ev.chain_id == "Patient" {
                run_step(&svc, &ev, None).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let report = sweep(&svc, Duration::from_secs(1)).await.unwrap();
        restarts += report.restarted;
        if report.failed == 1 {
            println!("chain failed after {restarts} restarts in round {round}");
            break;
        }
    }
    assert_eq!(restarts, 3);
    let manifest = wait_complete(&status_url).await;
    let types: Vec<_> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["Patient"],
        "partial success keeps what was exported"
    );
    let err = manifest["error"].as_array().unwrap();
    assert_eq!(err.len(), 1);
    let body = fetch_text(err[0]["url"].as_str().unwrap()).await;
    assert!(
        body.contains("Condition") && body.contains("restarts"),
        "{body}"
    );
}

/// Seeded fault decisions: `1 in every` calls fails.
struct Faults {
    rng: std::sync::Mutex<bulk_export_testkit::generate::Rng>,
    every: u64,
}

impl Faults {
    fn new(seed: u64, every: u64) -> Self {
        Faults {
            rng: std::sync::Mutex::new(bulk_export_testkit::generate::Rng::new(seed)),
            every,
        }
    }
    fn hit(&self) -> bool {
        self.rng
            .lock()
            .unwrap()
            .next_u64()
            .is_multiple_of(self.every)
    }
}

/// S3 `SlowDown`-like errors on a seeded share of UploadPart and
/// CompleteMultipartUpload calls, also after a completion that applied.
struct FlakyObjects {
    faults: Faults,
    injected: AtomicU64,
}

impl FlakyObjects {
    fn fault(&self) -> Result<(), ObjectError> {
        if self.faults.hit() {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(ObjectError::Backend(
                "injected SlowDown: Please reduce your request rate".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectHooks for FlakyObjects {
    async fn before(&self, _call: ObjectCall) -> Result<(), ObjectError> {
        self.fault()
    }
    fn after_complete(&self, result: Result<(), ObjectError>) -> Result<(), ObjectError> {
        // Also fail after a successful completion: the retry must cope.
        self.fault()?;
        result
    }
}

/// DynamoDB throttling on a seeded share of chain reads and writes, and
/// chain commits whose answer is lost after they applied.
struct ThrottledStore {
    faults: Faults,
    injected: AtomicU64,
}

impl ThrottledStore {
    fn fault(&self) -> Result<(), StoreError> {
        if self.faults.hit() {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Backend(
                "injected ProvisionedThroughputExceededException".into(),
            ));
        }
        Ok(())
    }
}

impl StoreHooks for ThrottledStore {
    fn before(&self, _call: StoreCall) -> Result<(), StoreError> {
        self.fault()
    }
    fn after(&self, call: StoreCall) -> Result<(), StoreError> {
        if call == StoreCall::SaveChain {
            return self.fault();
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_are_retried_without_loss() {
    let (_dir, src, stack) = ndjson_stack("faults", 500, 6, small_config(), 0).await;
    for seed in [11, 23, 37] {
        let objects = Arc::new(HookedObjects {
            inner: stack.services.objects.clone(),
            hooks: FlakyObjects {
                faults: Faults::new(seed, 4),
                injected: 0.into(),
            },
        });
        let store = Arc::new(HookedStore {
            inner: stack.services.store.clone(),
            hooks: ThrottledStore {
                faults: Faults::new(seed + 1, 6),
                injected: 0.into(),
            },
        });
        let svc = ExportServices {
            objects: objects.clone(),
            store: store.clone(),
            ..stack.services.clone()
        };
        let status_url = kickoff(&stack.base_url, "").await;
        let (steps, retries) = drain(&stack, &svc).await;
        let s3_faults = objects.hooks.injected.load(Ordering::SeqCst);
        let db_faults = store.hooks.injected.load(Ordering::SeqCst);
        println!(
            "seed {seed}: injected {s3_faults} S3 faults and {db_faults} DynamoDB faults over {steps} steps ({retries} step retries)"
        );
        assert!(s3_faults > 3 && db_faults > 3);
        verify_complete(&status_url, &src, &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_exports_answer_404() {
    let mut config = small_config();
    config.retention = Duration::from_secs(6);
    let (_dir, _src, stack) = ndjson_stack("expiry", 2, 1, config, 2).await;
    let started = std::time::Instant::now();
    let status_url = kickoff(&stack.base_url, "_type=Patient").await;
    wait_complete(&status_url).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the export finished within its retention"
    );
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    assert_eq!(http().get(&status_url).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_too_fast_gets_429_and_the_job_goes_on() {
    // A window wide enough for the burst to land in it on a slow store too.
    let mut config = small_config();
    config.retry_after_secs = 5;
    let (_dir, src, stack) = ndjson_stack("polls", 10, 1, config, 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Patient").await;
    let mut codes = Vec::new();
    for _ in 0..(bulk_export_core::api::status::POLL_BURST + 5) {
        codes.push(http().get(&status_url).send().await.unwrap());
    }
    let last = codes.pop().unwrap();
    assert_eq!(last.status(), 429, "a burst of polls within Retry-After");
    assert!(
        last.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(last.headers()["content-type"], "application/fhir+json");
    assert!(
        codes
            .iter()
            .take(bulk_export_core::api::status::POLL_BURST as usize)
            .all(|r| r.status() == 202)
    );
    drain(&stack, &svc).await;
    verify_complete(&status_url, &src, &["Patient"]).await;
    println!(
        "injected {} rapid polls; checked 429 after {} and a complete export",
        bulk_export_core::api::status::POLL_BURST + 5,
        bulk_export_core::api::status::POLL_BURST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_export_can_be_cancelled() {
    let mut config = small_config();
    config.max_running_jobs = 1;
    let (_dir, src, stack) = ndjson_stack("cancel-queued", 5, 1, config, 0).await;
    let svc = stack.services.clone();
    let a = kickoff(&stack.base_url, "_type=Patient").await;
    let b = kickoff(&stack.base_url, "_type=Patient").await;
    assert!(
        http().get(&b).send().await.unwrap().headers()["x-progress"]
            .to_str()
            .unwrap()
            .contains("queued")
    );
    assert_eq!(
        http().delete(&b).send().await.unwrap().status(),
        202,
        "cancel while queued"
    );
    assert_eq!(http().get(&b).send().await.unwrap().status(), 404);
    assert_eq!(http().delete(&b).send().await.unwrap().status(), 404);
    drain(&stack, &svc).await;
    verify_complete(&a, &src, &["Patient"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_upload_is_exported_again_from_the_file_start() {
    // One part per invocation, so the test can lose the upload between parts.
    let mut config = small_config();
    config.parts_per_invocation = 1;
    let (_dir, src, stack) = ndjson_stack("lostupload", 400, 3, config, 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_string();
    let first = stack.queue.try_next().await.unwrap();
    run_step(&svc, &first, None).await.unwrap();
    let chain = svc
        .store
        .get_chain(&job_id, "Observation")
        .await
        .unwrap()
        .unwrap();
    let open = chain
        .open_file
        .clone()
        .expect("the first part left its file open");
    assert!(
        chain.visited.len() > 1,
        "several pages were followed before the loss"
    );
    // A lifecycle rule (or an interrupted completion) removes the upload.
    svc.objects
        .abort_upload(&open.key, &open.upload_id)
        .await
        .unwrap();
    let (steps, _) = drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    assert_eq!(
        manifest["error"],
        serde_json::json!([]),
        "re-following the file's pages is not a loop"
    );
    verify_complete(&status_url, &src, &["Observation"]).await;
    println!(
        "injected: aborted upload of {} after part 1 ({} pages followed); checked: exact output after {steps} more steps",
        open.key,
        chain.visited.len()
    );
}

/// Runs the first step of an Observation export, then leaves its file as a
/// full file still closing (as an invocation that handed over mid-completion
/// does), its upload lost or not; the rest of the export must be exact.
async fn closing_file_left_over(prefix: &str, lose_upload: bool) {
    let mut config = small_config();
    config.parts_per_invocation = 1;
    let (_dir, src, stack) = ndjson_stack(prefix, 400, 5, config, 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_string();
    let first = stack.queue.try_next().await.unwrap();
    run_step(&svc, &first, None).await.unwrap();
    let mut chain = svc
        .store
        .get_chain(&job_id, "Observation")
        .await
        .unwrap()
        .unwrap();
    let file = chain
        .open_file
        .take()
        .expect("the first part left its file open");
    if lose_upload {
        svc.objects
            .abort_upload(&file.key, &file.upload_id)
            .await
            .unwrap();
    }
    chain.closing = Some(file.clone());
    svc.store.save_chain(&mut chain).await.unwrap();
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    assert_eq!(manifest["error"], serde_json::json!([]));
    verify_complete(&status_url, &src, &["Observation"]).await;
    let files = svc.store.list_files(&job_id).await.unwrap();
    assert!(
        files.iter().any(|f| f.key == file.key && f.count > 0),
        "the closing file is in the manifest, completed or exported again"
    );
    let done = svc
        .store
        .get_chain(&job_id, "Observation")
        .await
        .unwrap()
        .unwrap();
    assert!(done.closing.is_none() && done.open_file.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_left_closing_is_completed_by_the_next_step() {
    closing_file_left_over("closing", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_left_closing_whose_upload_was_lost_is_exported_again() {
    closing_file_left_over("closinglost", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_before_the_referenced_phase_still_cleans_up_everything() {
    // A Patient-level export holds waiting referenced-resources chains from
    // the start; no step of theirs will ever run to count them finished.
    let (_dir, _src, stack) = ndjson_stack("cancel-ref", 20, 2, small_config(), 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff_at(&stack.base_url, "/Patient/$export").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_string();
    let chains = svc.store.list_chains(&job_id).await.unwrap();
    assert!(
        chains.iter().any(|c| c.referenced),
        "the export has a referenced phase"
    );
    // One step runs before the cancel, so a file exists.
    let ev = stack.queue.try_next().await.unwrap();
    run_step(&svc, &ev, None).await.unwrap();
    assert_eq!(
        http().delete(&status_url).send().await.unwrap().status(),
        202
    );
    // A step in flight during the cancel writes after its deletion.
    let job = svc.store.get_job(&job_id).await.unwrap().unwrap();
    let late = format!("{}/Observation-99.ndjson", job.folder);
    svc.objects
        .put_object(&late, Bytes::from_static(b"{}\n"))
        .await
        .unwrap();
    drain(&stack, &svc).await;
    let chains = svc.store.list_chains(&job_id).await.unwrap();
    assert!(
        chains.iter().all(|c| c.state.is_finished()),
        "every chain, waiting ones included, ended: {:?}",
        chains
            .iter()
            .map(|c| (&c.chain_id, c.state))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        svc.objects
            .list_keys(&format!("{}/", job.folder))
            .await
            .unwrap(),
        Vec::<String>::new(),
        "nothing of the cancelled export remains"
    );
    assert_eq!(http().get(&status_url).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_chains_all_ended_is_completed_by_the_watchdog_whatever_its_counter() {
    // A chain's end counted on the job can be lost (moto loses concurrent
    // ADDs): the watchdog completes a job whose chains are all finished.
    let (_dir, _src, stack) = ndjson_stack("lost-count", 5, 2, small_config(), 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Patient").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_string();
    let mut chain = svc.store.list_chains(&job_id).await.unwrap().remove(0);
    chain.state = bulk_export_core::model::ChainState::Done;
    // Ended without counting on the job.
    svc.store.save_chain(&mut chain).await.unwrap();
    let job = svc.store.get_job(&job_id).await.unwrap().unwrap();
    assert_eq!(job.chains_remaining, 1);
    sweep(&svc, Duration::from_secs(600)).await.unwrap();
    let job = svc.store.get_job(&job_id).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "complete");
}
