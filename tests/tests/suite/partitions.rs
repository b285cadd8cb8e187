//! A large type split into `_lastUpdated` partitions, one chain each: the
//! union of the partitions is exactly the type, even when every step
//! (including the split itself) is delivered three times.

use crate::common::wrappers::{HookedStore, StoreCall, StoreHooks};
use crate::common::*;
use bulk_export_core::ports::job_store::StoreError;
use bulk_export_core::ports::services::ExportServices;
use bulk_export_core::worker::step::run_step;
use bulk_export_testkit::fixture_server::FixtureOptions;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fixture FHIR server over 150 generated patients and a stack with no
/// workers (the test delivers every step) whose Observations split into 4-6
/// partitions.
async fn partitioning_stack(
    prefix: &str,
) -> (
    TempDir,
    bulk_export_testkit::fixture_server::FixtureHandle,
    bulk_export::stack::Stack,
) {
    let mut config = small_config();
    config.page_size = 400;
    config.partition_target = 1_200;
    config.max_partitions = 6;
    fixture_stack(prefix, (150, 21), FixtureOptions::default(), config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cover_a_type_exactly_under_duplicate_delivery() {
    let (dir, _fixture, stack) = partitioning_stack("parts").await;
    let src = dir.0.join("src");
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Observation,Patient").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_string();
    while let Some(ev) = stack.queue.try_next().await {
        let (a, b) = tokio::join!(run_step(&svc, &ev, None), run_step(&svc, &ev, None));
        a.unwrap();
        b.unwrap();
        run_step(&svc, &ev, None).await.unwrap();
    }
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let want: BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((ty, _), _)| ty == "Observation" || ty == "Patient")
        .collect();
    assert!(got.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(got, want, "no loss");

    let chains = svc.store.list_chains(&job_id).await.unwrap();
    let obs: Vec<_> = chains
        .iter()
        .filter(|c| c.resource_type == "Observation")
        .collect();
    let observations = want.keys().filter(|(t, _)| t == "Observation").count() as u64;
    println!(
        "{observations} Observations in {} partitions: {:?}",
        obs.len(),
        obs.iter().map(|c| c.exported).collect::<Vec<_>>()
    );
    assert!(obs.len() >= 4, "{} Observation chains", obs.len());
    assert!(obs.len() <= 6, "at most max_partitions");
    assert_eq!(obs.iter().map(|c| c.exported).sum::<u64>(), observations);
    let patients: Vec<_> = chains
        .iter()
        .filter(|c| c.resource_type == "Patient")
        .collect();
    assert_eq!(patients.len(), 1, "150 Patients stay one chain");
    // Partitions write files of one type with distinct numbers.
    let mut names: Vec<&str> = files
        .iter()
        .map(|(_, url, _)| url.split('?').next().unwrap().rsplit('/').next().unwrap())
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "file names are unique");
}

/// Loses the reply of the first split after it applied, and of every fourth
/// chain finish after it applied: the split's sibling chains still run
/// without a watchdog, and the output is exact.
struct LoseSplitReply {
    splits: Arc<AtomicU64>,
    finishes: Arc<AtomicU64>,
}

impl StoreHooks for LoseSplitReply {
    fn after(&self, call: StoreCall) -> Result<(), StoreError> {
        let lost = match call {
            StoreCall::SplitChain => self.splits.fetch_add(1, Ordering::SeqCst) == 0,
            StoreCall::FinishChain => self
                .finishes
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(4),
            _ => false,
        };
        if lost {
            return Err(StoreError::Backend(
                "reply lost after the write applied".into(),
            ));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_whose_reply_was_lost_still_starts_every_partition() {
    let (dir, _fixture, stack) = partitioning_stack("parts-lost").await;
    let src = dir.0.join("src");
    let splits = Arc::new(AtomicU64::new(0));
    let svc = ExportServices {
        store: Arc::new(HookedStore {
            inner: stack.services.store.clone(),
            hooks: LoseSplitReply {
                splits: splits.clone(),
                finishes: Arc::default(),
            },
        }),
        ..stack.services.clone()
    };
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_string();
    // No watchdog: siblings nobody scheduled would never run.
    let (steps, retries) = drain(&stack, &svc).await;
    assert_eq!(splits.load(Ordering::SeqCst), 1, "one split");
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let want: BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((ty, _), _)| ty == "Observation")
        .collect();
    assert!(got.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(got, want, "no loss");
    let chains = svc.store.list_chains(&job_id).await.unwrap();
    println!(
        "{} partitions, {steps} steps, {retries} retried after lost replies",
        chains.len()
    );
    assert!(chains.len() >= 4, "{} chains", chains.len());
}
