//! At-least-once delivery: every step delivered twice concurrently and once
//! more afterwards gives exactly the output of a clean run.

use crate::common::*;
use bulk_export_core::worker::outcome::StepOutcome;
use bulk_export_core::worker::step::run_step;

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
    assert_eq!(exported, source_multiset(&src, true), "no loss");
}
