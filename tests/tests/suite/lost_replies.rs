//! Writes whose reply is lost after DynamoDB applied them. The SDK retries
//! such a write, and the retry's condition fails against the write's own
//! result: the exporter must recognise its own write, not read it as a lost
//! race (a commit that never hands over, a cancel answering 404, a kick-off
//! answering 503 for a job that exists).

use crate::common::lossy::{LoseRule, LossyProxy};
use crate::common::*;
use bulk_export::stack::{SourceSpec, Stack, start};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A stack whose DynamoDB requests pass through a proxy losing the replies
/// `rule` picks, over a generated dataset of `patients`.
async fn lossy_stack(
    prefix: &str,
    patients: u64,
    rule: LoseRule,
) -> (TempDir, PathBuf, Stack, LossyProxy) {
    let dir = TempDir::new(prefix);
    let src = dir.0.join("src");
    bulk_export_testkit::generate::generate(&src, patients, 13).unwrap();
    let upstream = match std::env::var("AWS_ENDPOINT_URL_DYNAMODB") {
        Ok(url) => url,
        Err(_) => bulk_export::embedded::start_dynamodb(None).await.unwrap(),
    };
    let proxy = LossyProxy::start(upstream, rule).await;
    let mut opts = options(
        &dir.0.join("data"),
        SourceSpec::Ndjson(src.clone()),
        small_config(),
        0,
    );
    opts.endpoints.dynamodb = Some(proxy.endpoint.clone());
    let stack = start(opts).await.unwrap();
    (dir, src, stack, proxy)
}

/// Loses the reply of every `n`th request of operation `op` whose body
/// contains `needle` (a retry is the next such request, so it gets through).
fn every_nth(op: &'static str, needle: &'static str, n: u64) -> LoseRule {
    let seen = Arc::new(AtomicU64::new(0));
    Arc::new(move |o: &str, body: &[u8]| {
        o == op
            && body.windows(needle.len()).any(|w| w == needle.as_bytes())
            && (seen.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(n)
    })
}

/// Loses the reply of the first request of `op` whose body contains `needle`.
fn first(op: &'static str, needle: &'static str) -> LoseRule {
    let seen = Arc::new(AtomicU64::new(0));
    Arc::new(move |o: &str, body: &[u8]| {
        o == op
            && body.windows(needle.len()).any(|w| w == needle.as_bytes())
            && seen.fetch_add(1, Ordering::SeqCst) == 0
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_commits_whose_replies_were_lost_still_hand_over() {
    // Every third chain write (claims, part commits, file openings) applies
    // but its reply is lost; the SDK's retry finds the write already there.
    let (_dir, src, stack, proxy) =
        lossy_stack("lost-commit", 300, every_nth("UpdateItem", "CHAIN#", 3)).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "").await;
    // No watchdog runs: a commit read as a lost race would end its chain's
    // steps here and the export would never complete.
    let (steps, retries) = drain(&stack, &svc).await;
    println!(
        "{steps} steps, {retries} retried, {} replies lost",
        proxy.lost()
    );
    assert!(
        proxy.lost() >= 5,
        "the proxy lost replies ({})",
        proxy.lost()
    );
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let exported = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    assert!(exported.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(exported, source_multiset(&src, false), "no loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_reply_was_lost_is_still_a_cancel() {
    let (_dir, _src, stack, proxy) =
        lossy_stack("lost-cancel", 20, first("UpdateItem", "\"cancelled\"")).await;
    let status_url = kickoff(&stack.base_url, "").await;
    let resp = http().delete(&status_url).send().await.unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(proxy.lost(), 1, "the cancel's reply was lost once");
    assert_eq!(status, 202, "the cancel applied: {body}");
    let job_id = status_url.rsplit('/').next().unwrap();
    let job = stack.services.store.get_job(job_id).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "cancelled");
    // A second cancel is told it was cancelled already.
    let again = http().delete(&status_url).send().await.unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kickoff_whose_reply_was_lost_answers_202_for_the_job_it_made() {
    // The job item is the kick-off's last write (its chains come first).
    let (_dir, src, stack, proxy) =
        lossy_stack("lost-kickoff", 30, first("PutItem", "\"remaining\"")).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "").await;
    assert_eq!(proxy.lost(), 1, "the job item's reply was lost once");
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let exported = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    assert_eq!(
        exported,
        source_multiset(&src, false),
        "the job runs as any other"
    );
}
