//! Upstream faults from the fault-injecting fixture FHIR server: transient
//! ones are retried with backoff and never show in the output; permanent ones
//! end that type with an OperationOutcome in `error`. No fault ever produces a
//! malformed output line.

use crate::common::wrappers::{HookedObjects, ObjectCall, ObjectHooks};
use crate::common::*;
use bulk_export_core::adapters::fhir_server::{FhirServerSource, RetryPolicy};
use bulk_export_core::ports::object_store::ObjectError;
use bulk_export_core::ports::services::ExportServices;
use bulk_export_core::worker::step::run_step;
use bulk_export_testkit::fixture_server::{Fault, FaultRule, FixtureOptions, start_fixture};
use bulk_export_testkit::generate::generate;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(1500),
        request_timeout: Duration::from_millis(700),
    }
}

async fn run(
    src: &std::path::Path,
    faults: Vec<FaultRule>,
    query: &str,
) -> (
    Value,
    Vec<(String, String, Vec<u8>)>,
    bulk_export_testkit::fixture_server::FixtureStats,
    Vec<String>,
) {
    let opts = FixtureOptions {
        faults,
        default_count: 100,
        ..FixtureOptions::default()
    };
    let fixture = start_fixture(src, opts).await.unwrap();
    let dir = TempDir::new("upstream");
    let mut config = small_config();
    config.page_size = 150;
    let spec = fhir_source(fixture.base_url());
    let stack = running_stack(&dir.0, spec, config, 0).await;
    let source = FhirServerSource::new(fixture.base_url(), None, fast_retries()).unwrap();
    let svc = ExportServices {
        source: Arc::new(source),
        ..stack.services.clone()
    };
    let status_url = kickoff(&stack.base_url, query).await;
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    for (ty, _, body) in &files {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value =
                serde_json::from_slice(line).expect("every output line is one JSON resource");
            assert_eq!(&v["resourceType"], ty.as_str());
        }
    }
    // Error files are read here: the stack's data directory goes with `dir`.
    let mut errors = Vec::new();
    for item in manifest["error"].as_array().unwrap() {
        errors.push(
            http()
                .get(item["url"].as_str().unwrap())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    (manifest, files, fixture.stats(), errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_upstream_faults_are_retried_invisibly() {
    let dir = TempDir::new("faulty-src");
    let src = dir.0.join("src");
    generate(&src, 40, 5).unwrap();
    let expected = source_multiset(&src, false);
    let transient = [
        Fault::Status(429, Some(1)),
        Fault::Status(429, None),
        Fault::Status(500, None),
        Fault::Status(502, None),
        Fault::Status(503, Some(0)),
        Fault::Status(504, None),
        Fault::HtmlErrorPage,
        Fault::TruncatedBody,
        Fault::ConnectionReset,
        Fault::Delay(Duration::from_secs(2)),
        Fault::EmptyPageWithNext,
    ];
    for fault in transient {
        let kind = fault.kind();
        let rules = vec![
            FaultRule::nth(2, fault.clone()),
            FaultRule::probability(0.15, fault),
        ];
        let (manifest, files, stats, _) = run(&src, rules, "").await;
        assert_eq!(
            manifest["error"].as_array().unwrap().len(),
            0,
            "{kind}: {manifest}"
        );
        let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
        assert_eq!(got, expected, "{kind}: output equals the source");
        let injected = stats.faults.get(&kind).copied().unwrap_or(0);
        assert!(injected >= 1, "{kind} was injected");
        println!(
            "{kind}: injected {injected} times over {} requests; output exact",
            stats.requests
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_upstream_faults_become_partial_success() {
    let dir = TempDir::new("broken-src");
    let src = dir.0.join("src");
    generate(&src, 40, 5).unwrap();
    let cases = [
        (
            FaultRule::from(2, Fault::NextLinkLoop).for_type("Observation"),
            "same page",
        ),
        (
            FaultRule::from(1, Fault::Status(503, None)).for_type("Observation"),
            "503",
        ),
        (
            FaultRule::from(1, Fault::HtmlErrorPage).for_type("Observation"),
            "not a FHIR",
        ),
    ];
    for (rule, needle) in cases {
        let kind = rule.fault.kind();
        let (manifest, files, stats, errors) =
            run(&src, vec![rule], "_type=Patient,Observation").await;
        let types: Vec<_> = files.iter().map(|(t, _, _)| t.as_str()).collect();
        assert!(
            types.contains(&"Patient"),
            "{kind}: the healthy type completes"
        );
        let err = manifest["error"].as_array().unwrap();
        assert_eq!(err.len(), 1, "{kind}: {manifest}");
        let body = &errors[0];
        let oo: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        let diag = oo["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(
            diag.contains("Observation") && diag.contains(needle),
            "{kind}: {diag}"
        );
        println!(
            "{kind}: {} faults injected; error file says: {diag}",
            stats.faults.values().sum::<u64>()
        );
    }
}

/// Pages one type with `read_ahead_below` on every request; returns the
/// lines read and, for each page asked for, how many searches the upstream
/// had seen just before.
async fn page_through(
    source: &FhirServerSource,
    fixture: &bulk_export_testkit::fixture_server::FixtureHandle,
    budget: usize,
) -> (Vec<Vec<u8>>, Vec<u64>) {
    use bulk_export_core::ports::source::Source;
    let (mut cursor, mut lines, mut seen) = (None::<String>, Vec::new(), Vec::new());
    loop {
        seen.push(fixture.stats().searches.values().sum());
        let page = source
            .fetch_page(&observation_page(cursor.as_deref(), 40, budget))
            .await
            .unwrap();
        lines.extend(
            page.ndjson
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
        match page.next {
            Some(n) => {
                cursor = Some(n);
                // Time for a read-ahead to reach the upstream.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            None => return (lines, seen),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_page_is_requested_early_only_when_promised() {
    let dir = TempDir::new("readahead");
    let src = dir.0.join("src");
    generate(&src, 8, 11).unwrap();
    let fixture = start_fixture(&src, FixtureOptions::default())
        .await
        .unwrap();
    let pages_needed = |n: usize| n.div_ceil(40) as u64;

    // No promise: one search per page, each asked for when needed.
    let source = FhirServerSource::new(fixture.base_url(), None, fast_retries()).unwrap();
    fixture.reset_stats();
    let (plain, seen) = page_through(&source, &fixture, 0).await;
    let pages = pages_needed(plain.len());
    assert!(pages >= 4, "several pages: {}", plain.len());
    assert_eq!(seen, (0..pages).collect::<Vec<_>>(), "never ahead");
    assert_eq!(fixture.stats().searches.values().sum::<u64>(), pages);

    // A promise every body meets: page 2 is requested as soon as page 1's
    // body arrives, before anyone asks; never more than one page ahead of
    // what was taken (this reader sleeps between pages, so the read-ahead
    // waits for it), none twice and none past the end.
    let source = FhirServerSource::new(fixture.base_url(), None, fast_retries()).unwrap();
    fixture.reset_stats();
    let (ahead, seen) = page_through(&source, &fixture, 64 * 1024 * 1024).await;
    assert_eq!(ahead, plain, "the same lines in the same order");
    assert_eq!(
        seen[..2],
        [0, 2],
        "page 2 was requested before it was asked for"
    );
    assert!(
        seen.iter().enumerate().all(|(i, s)| *s <= i as u64 + 1),
        "at most one page ahead: {seen:?}"
    );
    assert_eq!(fixture.stats().searches.values().sum::<u64>(), pages);

    // A promise smaller than the first two bodies: only page 2 is read ahead.
    let body = http()
        .get(format!("{}/Observation?_count=40", fixture.base_url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let source = FhirServerSource::new(fixture.base_url(), None, fast_retries()).unwrap();
    fixture.reset_stats();
    let (some, seen) = page_through(&source, &fixture, body + body / 2).await;
    assert_eq!(some, plain);
    assert_eq!(seen[..3], [0, 2, 2], "{seen:?}");
    assert_eq!(fixture.stats().searches.values().sum::<u64>(), pages);

    // A promise smaller than a body: nothing is read ahead.
    let source = FhirServerSource::new(fixture.base_url(), None, fast_retries()).unwrap();
    fixture.reset_stats();
    let (small, seen) = page_through(&source, &fixture, 1024).await;
    assert_eq!(small, plain);
    assert_eq!(seen, (0..pages).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_ignoring_a_compartment_parameter_leaks_no_other_patient() {
    // The upstream silently ignores `subject` (as a lenient server ignores a
    // parameter it does not support): a Group export's Observation search
    // by subject answers with every patient's Observations.
    let dir = TempDir::new("ignored-param");
    let src = dir.0.join("src");
    generate(&src, 24, 8).unwrap();
    let opts = FixtureOptions {
        ignored_params: vec!["subject".into()],
        ..FixtureOptions::default()
    };
    let fixture = start_fixture(&src, opts).await.unwrap();
    let spec = fhir_source(fixture.base_url());
    let stack = running_stack(&dir.0.join("data"), spec, small_config(), 2).await;
    let status_url = kickoff_at(
        &stack.base_url,
        "/Group/every-third/$export?_type=Observation",
    )
    .await;
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    // The members as kick-off resolved them (nested Groups, exclusions).
    let job_id = status_url.rsplit('/').next().unwrap();
    let job = stack.services.store.get_job(job_id).await.unwrap().unwrap();
    let bulk_export_core::model::PatientScope::Members(members) = &job.scope else {
        panic!("a Group export's scope is its members");
    };
    assert!(members.len() < 24, "some patients are not members");
    let linked = |v: &Value| {
        bulk_export_core::fhir::compartment::patient_links(v)
            .iter()
            .any(|(_, id)| members.binary_search(id).is_ok())
    };
    let mut exported = 0;
    for (_, _, body) in &files {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            assert!(linked(&v), "a non-member's {} was exported", v["id"]);
            exported += 1;
        }
    }
    let observations = std::fs::read_to_string(src.join("Observation.ndjson")).unwrap();
    let (all, expected) = observations
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .fold((0, 0), |(a, e), v| (a + 1, e + usize::from(linked(&v))));
    assert!(
        expected < all,
        "the upstream's answers held non-members' resources"
    );
    // The ignored search answered with everything, members' Observations too.
    assert_eq!(exported, expected, "every member's Observation, once");
    println!("{exported} of {expected} member Observations exported; {all} in the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_over_the_body_limit_are_asked_again_smaller_and_a_giant_resource_fails_its_type() {
    // A page of 100 is ~2 MB against a 256 KiB limit.
    body_limit_case(20_000, 60, 400_000, Some(256 * 1024)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_page_and_a_100_mb_resource_under_the_default_body_limit() {
    // The sizes hostile upstreams send (HAPI's count-bounded pages of inline
    // attachments), against the production limit of 64 MiB.
    body_limit_case(5_000_000, 40, 100_000_000, None).await;
}

/// Observations of `note` bytes each, `notes` of them, and one Condition of
/// `giant` bytes, read through a body limit (`None`: the default).
async fn body_limit_case(note: usize, notes: usize, giant: usize, limit: Option<usize>) {
    use std::io::Write;
    let dir = TempDir::new("body-limit");
    let src = dir.0.join("src");
    generate(&src, 6, 3).unwrap();
    let lu = "2024-01-01T00:00:00.000Z";
    let append = |file: &str, lines: Vec<String>| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(src.join(file))
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    };
    let text = "n".repeat(note);
    append(
        "Observation.ndjson",
        (0..notes)
            .map(|i| {
                serde_json::json!({"resourceType": "Observation", "id": format!("big-{i}"),
                "meta": {"lastUpdated": lu}, "status": "final", "code": {"text": "note"},
                "subject": {"reference": "Patient/pt-0"}, "note": [{"text": text}]})
                .to_string()
            })
            .collect(),
    );
    // One Condition larger than the limit on its own.
    append(
        "Condition.ndjson",
        vec![serde_json::json!({"resourceType": "Condition", "id": "giant", "meta": {"lastUpdated": lu},
            "subject": {"reference": "Patient/pt-0"}, "note": [{"text": "g".repeat(giant)}]})
        .to_string()],
    );
    let fixture = start_fixture(&src, FixtureOptions::default())
        .await
        .unwrap();
    let spec = fhir_source(fixture.base_url());
    let stack = running_stack(&dir.0.join("data"), spec, small_config(), 0).await;
    // Pages of tens of MB take longer than the fast policy's timeout in a
    // debug build.
    let policy = RetryPolicy {
        request_timeout: Duration::from_secs(120),
        ..fast_retries()
    };
    let source = FhirServerSource::new(fixture.base_url(), None, policy).unwrap();
    let source = match limit {
        Some(bytes) => source.with_max_body_bytes(bytes),
        None => source,
    };
    let svc = ExportServices {
        source: Arc::new(source),
        ..stack.services.clone()
    };
    let status_url = kickoff(&stack.base_url, "_type=Observation,Condition").await;
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let want: std::collections::BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((t, _), _)| t == "Observation")
        .collect();
    let got_obs: std::collections::BTreeMap<_, _> = got
        .iter()
        .filter(|((t, _), _)| t == "Observation")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        got_obs, want,
        "every Observation once, through smaller pages"
    );
    assert!(!got.contains_key(&("Condition".to_string(), "giant".to_string())));
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    let body = fetch_text(errors[0]["url"].as_str().unwrap()).await;
    assert!(
        body.contains("Condition") && body.contains("_count=1"),
        "the type's error says why: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn or_typefilters_stay_exact_when_the_upstream_caps_its_pages() {
    // Two `_typeFilter`s of one type overlap (pt-1's Observations match
    // both). The second filter's results drop what the first matched, by an
    // `_id` probe; the upstream answers searches by `_id` with at most 2
    // entries a page whatever `_count` asks, so the probe must follow its
    // `next` links.
    let dir = TempDir::new("probe-pages");
    let src = dir.0.join("src");
    generate(&src, 6, 3).unwrap();
    let opts = FixtureOptions {
        id_search_page_cap: Some(2),
        ..FixtureOptions::default()
    };
    let fixture = start_fixture(&src, opts).await.unwrap();
    let spec = fhir_source(fixture.base_url());
    let stack = running_stack(&dir.0.join("data"), spec, small_config(), 2).await;
    let q = "_type=Observation&_typeFilter=Observation%3Fsubject%3DPatient/pt-1,Observation%3Fsubject%3DPatient/pt-1%2CPatient/pt-2";
    let manifest = wait_complete(&kickoff(&stack.base_url, q).await).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let observations = std::fs::read_to_string(src.join("Observation.ndjson")).unwrap();
    let want: std::collections::BTreeMap<_, _> = observations
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| {
            let s = v["subject"]["reference"].as_str().unwrap_or_default();
            s == "Patient/pt-1" || s == "Patient/pt-2"
        })
        .map(|v| {
            (
                (
                    "Observation".to_string(),
                    v["id"].as_str().unwrap().to_string(),
                ),
                1,
            )
        })
        .collect();
    let shared = want
        .keys()
        .filter(|(_, id)| id.starts_with("obs-1-"))
        .count();
    assert!(shared > 2, "more overlapping matches than one capped page");
    assert_eq!(got, want, "each matching Observation exactly once");
}

/// Fails the first error-file write (after the failure was claimed).
struct FailFirstPut(Arc<std::sync::atomic::AtomicU64>);

#[async_trait::async_trait]
impl ObjectHooks for FailFirstPut {
    async fn before(&self, call: ObjectCall) -> Result<(), ObjectError> {
        if call == ObjectCall::PutObject && self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(ObjectError::Backend("injected: put failed".into()));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_delivered_three_times_and_retried_writes_one_error_file() {
    let dir = TempDir::new("fail-once");
    let src = dir.0.join("src");
    generate(&src, 30, 8).unwrap();
    let opts = FixtureOptions {
        faults: vec![FaultRule::from(1, Fault::HtmlErrorPage).for_type("Observation")],
        ..FixtureOptions::default()
    };
    let fixture = start_fixture(&src, opts).await.unwrap();
    let spec = fhir_source(fixture.base_url());
    let stack = running_stack(&dir.0.join("data"), spec, small_config(), 0).await;
    let puts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let svc = ExportServices {
        source: Arc::new(FhirServerSource::new(fixture.base_url(), None, fast_retries()).unwrap()),
        objects: Arc::new(HookedObjects {
            inner: stack.services.objects.clone(),
            hooks: FailFirstPut(puts.clone()),
        }),
        ..stack.services.clone()
    };
    let status_url = kickoff(&stack.base_url, "_type=Patient,Observation").await;
    // Every step twice at once and once more after; a failed delivery is
    // delivered again, as Lambda retries it.
    while let Some(ev) = stack.queue.try_next().await {
        let (a, b) = tokio::join!(run_step(&svc, &ev, None), run_step(&svc, &ev, None));
        let mut failed = a.is_err() as u32 + b.is_err() as u32;
        while run_step(&svc, &ev, None).await.is_err() {
            failed += 1;
            assert!(failed < 20, "step {ev:?} never succeeded");
        }
    }
    assert!(
        puts.load(Ordering::SeqCst) >= 2,
        "the error file was written again"
    );
    let manifest = wait_complete(&status_url).await;
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "one error file: {manifest}");
    let body = fetch_text(errors[0]["url"].as_str().unwrap()).await;
    assert_eq!(body.lines().count(), 1, "one OperationOutcome: {body}");
    assert!(body.contains("Observation"), "{body}");
    let got = multiset(
        download_outputs(&manifest)
            .await
            .iter()
            .map(|(_, _, b)| b.as_slice()),
    );
    let patients: BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((ty, _), _)| ty == "Patient")
        .collect();
    assert_eq!(got, patients, "the healthy type is exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_ndjson_line_fails_its_type_and_the_rest_is_exact() {
    use std::io::Write;
    let (_dir, src, stack) = ndjson_stack("line-limit", 20, 4, small_config(), 0).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("Condition.ndjson"))
        .unwrap();
    let giant = serde_json::json!({"resourceType": "Condition", "id": "giant",
        "meta": {"lastUpdated": "2024-01-01T00:00:00.000Z"},
        "subject": {"reference": "Patient/pt-0"}, "note": [{"text": "g".repeat(100_000_000)}]});
    writeln!(f, "{giant}").unwrap();
    drop(f);
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Patient,Condition").await;
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    let got = multiset(
        download_outputs(&manifest)
            .await
            .iter()
            .map(|(_, _, b)| b.as_slice()),
    );
    assert!(!got.contains_key(&("Condition".to_string(), "giant".to_string())));
    let patients: BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((t, _), _)| t == "Patient")
        .collect();
    let got_patients: BTreeMap<_, _> = got
        .into_iter()
        .filter(|((t, _), _)| t == "Patient")
        .collect();
    assert_eq!(got_patients, patients, "the other type is exact");
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    let body = fetch_text(errors[0]["url"].as_str().unwrap()).await;
    assert!(
        body.contains("Condition") && body.contains("longer than"),
        "{body}"
    );
}
