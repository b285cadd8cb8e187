//! At-least-once delivery: every step delivered twice concurrently and once
//! more afterwards gives exactly the output of a clean run.

use crate::common::wrappers::{HookedObjects, ObjectCall, ObjectHooks};
use crate::common::*;
use bulk_export_core::adapters::memory::MIN_PART_SIZE;
use bulk_export_core::model::config::ExportConfig;
use bulk_export_core::ports::object_store::{ObjectError, ObjectStore};
use bulk_export_core::ports::services::ExportServices;
use bulk_export_core::worker::outcome::StepOutcome;
use bulk_export_core::worker::step::run_step;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_replayed_gives_identical_output() {
    let (_dir, src, stack) = ndjson_stack("dup", 500, 9, small_config(), 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "").await;
    let (mut steps, mut stale) = (0, 0);
    while let Some(ev) = stack.queue.try_next().await {
        let (a, b) = tokio::join!(run_step(&svc, &ev, None), run_step(&svc, &ev, None));
        let (a, b) = (a.unwrap(), b.unwrap());
        let c = run_step(&svc, &ev, None).await.unwrap();
        for r in [a, b, c] {
            if r == StepOutcome::Stale {
                stale += 1;
            }
        }
        steps += 1;
    }
    println!(
        "ran {steps} steps three times each; {stale} deliveries were recognised as duplicates"
    );
    assert!(stale >= steps, "each replay after a commit is recognised");
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let exported = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    assert!(exported.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(exported, source_multiset(&src, false), "no loss");
}

/// Part uploads wait at a gate when `gated` (the delivery making them
/// stalls mid-step, as a slow or frozen Lambda invocation does);
/// completions refused with InvalidPart are counted.
struct GatedUploads {
    gated: bool,
    arrived: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
    invalid_parts: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl ObjectHooks for GatedUploads {
    async fn before(&self, call: ObjectCall) -> Result<(), ObjectError> {
        if self.gated && call == ObjectCall::UploadPart {
            self.arrived.notify_one();
            let _pass = self.release.acquire().await;
        }
        Ok(())
    }
    fn after_complete(&self, result: Result<(), ObjectError>) -> Result<(), ObjectError> {
        if matches!(result, Err(ObjectError::InvalidPart(_))) {
            self.invalid_parts.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// (type, id) → the resource, from NDJSON bodies.
fn resources<'a>(bodies: impl Iterator<Item = &'a [u8]>) -> BTreeMap<(String, String), Value> {
    let mut m = BTreeMap::new();
    for line in bodies
        .flat_map(|b| b.split(|c| *c == b'\n'))
        .filter(|l| !l.is_empty())
    {
        let v: Value = serde_json::from_slice(line).unwrap();
        let key = (
            v["resourceType"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        );
        assert!(m.insert(key, v).is_none(), "a resource exported twice");
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_duplicate_never_replaces_a_committed_part() {
    // Delivery A of a step reads the first part and stalls before its upload
    // lands; the source changes; delivery B of the same step reads the new
    // bytes and commits them as part 1 of an open file; then A's upload
    // lands. A must not replace B's committed part (before part numbers per
    // attempt, it did: S3 then refuses the file's completion with
    // InvalidPart forever, and a store that does not compare ETags ships
    // A's stale bytes under B's counts).
    let config = ExportConfig {
        parts_per_invocation: 1,
        ..small_config()
    };
    let (_dir, src, stack) = ndjson_stack("dup-stale", 2500, 3, config, 0).await;
    let observations = src.join("Observation.ndjson");
    assert!(
        std::fs::metadata(&observations).unwrap().len() > 2 * MIN_PART_SIZE as u64,
        "the first part of Observation must not end its file"
    );
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    let ev = stack.queue.try_next().await.unwrap();
    assert!(stack.queue.try_next().await.is_none(), "one chain");

    let (arrived, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let invalid_parts = Arc::new(AtomicU64::new(0));
    let wrap = |gated| -> Arc<dyn ObjectStore> {
        Arc::new(HookedObjects {
            inner: stack.services.objects.clone(),
            hooks: GatedUploads {
                gated,
                arrived: arrived.clone(),
                release: release.clone(),
                invalid_parts: invalid_parts.clone(),
            },
        })
    };
    let stalled = ExportServices {
        objects: wrap(true),
        ..stack.services.clone()
    };
    let svc = ExportServices {
        objects: wrap(false),
        ..stack.services.clone()
    };
    let a = tokio::spawn({
        let ev = ev.clone();
        async move { run_step(&stalled, &ev, None).await }
    });
    arrived.notified().await;
    // The source changes under the export (same ids, new content).
    let changed = std::fs::read_to_string(&observations)
        .unwrap()
        .replace("\"status\":\"final\"", "\"status\":\"amended\"");
    assert!(changed.contains("amended"));
    std::fs::write(&observations, changed).unwrap();

    let b = run_step(&svc, &ev, None).await.unwrap();
    assert_eq!(b, StepOutcome::Continued, "B commits part 1 and hands over");
    release.add_permits(1000);
    assert_eq!(
        a.await.unwrap().unwrap(),
        StepOutcome::Stale,
        "A lost its claim"
    );

    drain(&stack, &svc).await;
    assert_eq!(
        invalid_parts.load(Ordering::SeqCst),
        0,
        "A's late upload did not touch B's committed part"
    );
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let exported = resources(files.iter().map(|(_, _, b)| b.as_slice()));
    let source = std::fs::read(&observations).unwrap();
    assert_eq!(
        exported.len(),
        resources(std::iter::once(source.as_slice())).len()
    );
    assert!(
        exported == resources(std::iter::once(source.as_slice())),
        "every resource exactly as B read it"
    );
}
