//! A FHIR server that changes while the export reads it. A step that fills
//! a file mid-page commits the page's cursor with what it took of that page;
//! the next step reads the page again, and by then the upstream may have
//! deleted resources from it, the last exported one included. The export
//! asks for `_sort=_id`, so the re-read resumes after the last exported id
//! (by line count alone it would skip a live resource that was never
//! exported); an upstream that refuses `_sort` is asked again without it.

use crate::common::*;
use bulk_export_core::model::config::ExportConfig;
use bulk_export_core::worker::step::run_step;
use bulk_export_testkit::fixture_server::{FixtureHandle, FixtureOptions};
use std::collections::BTreeMap;

/// Resources per page.
const PAGE: usize = 1000;

/// Observations of 1,500 generated patients (about 40 MB) behind a fixture
/// server with `opts`, and a stack with no workers, one part per step, whose
/// files (two 5 MiB parts and a little) end in the middle of a page.
async fn rolling_stack(
    prefix: &str,
    opts: FixtureOptions,
) -> (TempDir, FixtureHandle, bulk_export::stack::Stack) {
    let config = ExportConfig {
        max_file_size: 10 * 1024 * 1024 + 320 * 1024,
        page_size: PAGE,
        parts_per_invocation: 1,
        ..small_config()
    };
    fixture_stack(prefix, (1500, 5), opts, config).await
}

/// The Observations the export wrote, per id.
async fn exported_observations(status_url: &str) -> BTreeMap<(String, String), u32> {
    let manifest = wait_complete(status_url).await;
    let files = download_outputs(&manifest).await;
    multiset(files.iter().map(|(_, _, b)| b.as_slice()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_deleted_after_it_was_exported_mid_page_costs_no_other() {
    let (dir, fixture, stack) = rolling_stack("changing", FixtureOptions::default()).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_string();
    let mut deleted = Vec::new();
    while let Some(ev) = stack.queue.try_next().await {
        run_step(&svc, &ev, None).await.unwrap();
        // The step ended its file inside a page: the upstream now deletes
        // the last resource the export took of that page, and the page
        // still holds more lines than were taken.
        for chain in svc.store.list_chains(&job_id).await.unwrap() {
            if let Some(id) = chain.skip_through.clone()
                && chain.skip + 1 < PAGE as u64
                && fixture.delete("Observation", &id)
            {
                deleted.push(id);
            }
        }
    }
    assert!(
        deleted.len() >= 2,
        "files rolled mid-page at least twice: {deleted:?}"
    );
    let exported = exported_observations(&status_url).await;
    assert!(exported.values().all(|n| *n == 1), "nothing twice");
    let source: BTreeMap<_, _> = source_multiset(&dir.0.join("src"), false)
        .into_iter()
        .filter(|((t, _), _)| t == "Observation")
        .collect();
    let missing: Vec<_> = source
        .keys()
        .filter(|k| !exported.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "every Observation was exported (the deleted ones before they were deleted); missing {missing:?}"
    );
    assert_eq!(exported.len(), source.len(), "nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_sort_by_id_is_asked_again_without_it() {
    let opts = FixtureOptions {
        sorts_by_id: false,
        ..FixtureOptions::default()
    };
    let (dir, fixture, stack) = rolling_stack("unsorted", opts).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    drain(&stack, &svc).await;
    let exported = exported_observations(&status_url).await;
    let source: BTreeMap<_, _> = source_multiset(&dir.0.join("src"), false)
        .into_iter()
        .filter(|((t, _), _)| t == "Observation")
        .collect();
    assert_eq!(exported, source, "exactly the source");
    let searches = fixture.stats().searches["Observation"];
    let pages = source.len().div_ceil(PAGE) as u64;
    // One refused search with `_sort`, then plain searches: each page once,
    // plus the re-reads of the pages files rolled in.
    assert!(
        searches > pages && searches < 2 * pages,
        "{searches} searches for {pages} pages"
    );
}
