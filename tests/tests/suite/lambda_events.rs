//! Every sample event in events/ through the real Lambda handler functions
//! (the ones each function's main.rs runs), against the embedded DynamoDB
//! and S3; plus scheduled incremental exports.

use crate::common::*;
use bulk_export::stack::SourceSpec;
use bulk_export_core::lambda::{KickoffEvent, kickoff_handler, watchdog_handler, worker_handler};
use bulk_export_core::ports::services::ExportServices;
/// An event's JSON through the kick-off function's typed handler (HTTP API
/// events and scheduler events), as the Lambda runtime would deliver it, and
/// its reply as the runtime would send it back.
async fn api_event_handler(svc: &ExportServices, event: Value) -> Value {
    let event: KickoffEvent = serde_json::from_value(event).expect("a kick-off function event");
    serde_json::to_value(kickoff_handler(svc, event).await).unwrap()
}
use bulk_export_core::model::StepEvent;
use bulk_export_testkit::generate::generate;
use serde_json::Value;
use std::path::Path;

fn event(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn with_job(mut ev: Value, job_id: &str) -> Value {
    let text = ev
        .to_string()
        .replace("00000000000000000000000000000000", job_id);
    ev = serde_json::from_str(&text).unwrap();
    ev
}

fn header<'a>(resp: &'a Value, name: &str) -> &'a str {
    resp["headers"][name].as_str().unwrap_or("")
}

fn job_id_of(resp: &Value) -> String {
    header(resp, "content-location")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

fn far_deadline_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    now + 300_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_event_runs_through_its_handler() {
    let dir = TempDir::new("events");
    let src = dir.0.join("src");
    generate(&src, 20, 2).unwrap();
    // No workers: the test itself plays the chunk-worker function.
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(src),
        small_config(),
        0,
    )
    .await;
    let svc = &stack.services;

    let resp = api_event_handler(svc, event("kickoff-get.json")).await;
    assert_eq!(resp["statusCode"], 202, "{resp}");
    let location = header(&resp, "content-location");
    assert!(
        location.starts_with("https://abc123.execute-api.us-east-1.amazonaws.com/$export-status/"),
        "{location}"
    );
    let job_id = job_id_of(&resp);

    // The worker event drives the chain, exactly as the chunk-worker function does.
    let worker_ev: StepEvent =
        serde_json::from_value(with_job(event("worker-step.json"), &job_id)).unwrap();
    assert_eq!(
        worker_handler(svc, worker_ev.clone(), far_deadline_ms())
            .await
            .unwrap(),
        "Finished"
    );
    assert_eq!(
        worker_handler(svc, worker_ev, far_deadline_ms())
            .await
            .unwrap(),
        "Stale",
        "a replay is a no-op"
    );
    while let Some(ev) = stack.queue.try_next().await {
        worker_handler(svc, ev, far_deadline_ms()).await.unwrap();
    }

    let resp = api_event_handler(svc, with_job(event("status.json"), &job_id)).await;
    assert_eq!(resp["statusCode"], 200, "{resp}");
    assert!(header(&resp, "content-type").starts_with("application/json"));
    let manifest: Value = serde_json::from_str(resp["body"].as_str().unwrap()).unwrap();
    let types: Vec<_> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["Observation", "Patient"]);
    assert_eq!(
        manifest["request"],
        "https://abc123.execute-api.us-east-1.amazonaws.com/$export?_type=Patient,Observation&_since=2020-01-01T00:00:00Z"
    );

    let resp = api_event_handler(svc, with_job(event("cancel.json"), &job_id)).await;
    assert_eq!(resp["statusCode"], 202, "{resp}");
    let resp = api_event_handler(svc, with_job(event("status.json"), &job_id)).await;
    assert_eq!(resp["statusCode"], 404);
    assert_eq!(header(&resp, "content-type"), "application/fhir+json");

    let resp = api_event_handler(svc, event("kickoff-post.json")).await;
    assert_eq!(resp["statusCode"], 202, "{resp}");

    let resp = api_event_handler(svc, event("kickoff-unauthenticated.json")).await;
    assert_eq!(resp["statusCode"], 401, "{resp}");
    assert_eq!(header(&resp, "www-authenticate"), "Bearer");

    // The watchdog tick finds the POST job's chain waiting; nothing has stalled yet.
    let (report, _) = watchdog_handler(svc, None).await.unwrap();
    assert!(report.jobs >= 1);
    assert_eq!(report.restarted, 0);

    let resp = api_event_handler(svc, event("scheduled-export.json")).await;
    assert!(resp["started"]["jobId"].as_str().is_some(), "{resp}");
    assert!(
        resp["started"]["since"].is_null(),
        "first run of a schedule is a full export"
    );
}

/// Appends resources updated "now" to the NDJSON source.
fn append_changes(src: &Path, tag: &str, n: usize) -> Vec<(String, String)> {
    use std::io::Write;
    let now = bulk_export_core::fhir::instant::format_instant(time::OffsetDateTime::now_utc());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("Patient.ndjson"))
        .unwrap();
    (0..n)
        .map(|i| {
            let id = format!("new-{tag}-{i}");
            writeln!(f, r#"{{"resourceType":"Patient","id":"{id}","meta":{{"lastUpdated":"{now}"}},"active":true}}"#).unwrap();
            ("Patient".to_string(), id)
        })
        .collect()
}

async fn run_schedule(stack: &bulk_export::stack::Stack) -> (Value, Value) {
    let ev: Value = serde_json::json!({"scheduledExport": {"name": "nightly", "types": ["Patient", "Observation"], "since": "last-success"}});
    let resp = api_event_handler(&stack.services, ev).await;
    let started = resp["started"].clone();
    assert!(started["jobId"].is_string(), "{resp}");
    // Scheduled jobs belong to the "scheduler" client; the local API caller is
    // "anonymous", so read the manifest through the library directly.
    let job_id = started["jobId"].as_str().unwrap().to_string();
    let svc = &stack.services;
    for _ in 0..600 {
        let job = svc.store.get_job(&job_id).await.unwrap().unwrap();
        if job.status == bulk_export_core::model::JobStatus::Complete {
            let manifest = bulk_export_core::export::manifest::build_manifest(svc, &job)
                .await
                .unwrap();
            return (started, manifest);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("scheduled export did not complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_scheduled_exports_have_no_gaps_and_no_overlaps() {
    let (_dir, src, stack) = ndjson_stack("sched", 30, 4, small_config(), 2).await;

    let (first, manifest) = run_schedule(&stack).await;
    assert!(first["since"].is_null());
    let files = download_outputs(&manifest).await;
    let full = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let expected: usize = source_multiset(&src, false)
        .keys()
        .filter(|(t, _)| t == "Patient" || t == "Observation")
        .count();
    assert_eq!(full.len(), expected, "first run exports everything");

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let changed = append_changes(&src, "a", 7);
    let (second, manifest) = run_schedule(&stack).await;
    assert_eq!(
        second["since"], first["transactionTime"],
        "second run starts at the first's transactionTime"
    );
    let files = download_outputs(&manifest).await;
    let got: Vec<_> = multiset(files.iter().map(|(_, _, b)| b.as_slice()))
        .into_keys()
        .collect();
    assert_eq!(
        got, changed,
        "exactly the resources changed since the first run"
    );

    let (third, manifest) = run_schedule(&stack).await;
    assert_eq!(third["since"], second["transactionTime"]);
    assert!(
        manifest["output"].as_array().unwrap().is_empty(),
        "nothing changed since: {manifest}"
    );
    println!(
        "three scheduled runs: full {}, incremental {}, empty",
        full.len(),
        changed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_export_with_a_failed_type_is_not_a_success() {
    let (_dir, src, stack) = ndjson_stack("sched-fail", 10, 4, small_config(), 2).await;
    // A Patient in the Observation file: the Observation chain fails.
    let observations = src.join("Observation.ndjson");
    let good = std::fs::read(&observations).unwrap();
    let mut bad = good.clone();
    bad.extend_from_slice(b"{\"resourceType\":\"Patient\",\"id\":\"stray\"}\n");
    std::fs::write(&observations, &bad).unwrap();
    let (first, manifest) = run_schedule(&stack).await;
    assert!(first["since"].is_null());
    assert_eq!(
        manifest["error"].as_array().unwrap().len(),
        1,
        "the failed type is reported: {manifest}"
    );
    std::fs::write(&observations, &good).unwrap();
    let (second, manifest) = run_schedule(&stack).await;
    assert!(
        second["since"].is_null(),
        "a run with a failed type is no success to continue from: {second}"
    );
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let want: std::collections::BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((t, _), _)| t == "Patient" || t == "Observation")
        .collect();
    assert_eq!(got, want, "the next run exports everything again");
}
