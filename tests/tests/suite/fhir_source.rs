//! The FHIR-server source against a real third-party search engine (medplum's
//! in-memory repository served by tests/fhir-fixture): paging through `next`
//! links, `_typeFilter`, `_since`, and exact output.

use crate::common::*;
use bulk_export_testkit::generate::generate;
use serde_json::Value;
use std::collections::BTreeMap;

type Multiset = BTreeMap<(String, String), u32>;

fn expected_where(src: &std::path::Path, keep: impl Fn(&Value) -> bool) -> Multiset {
    let mut m = Multiset::new();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if keep(&v) {
                let k = (
                    v["resourceType"].as_str().unwrap().to_string(),
                    v["id"].as_str().unwrap().to_string(),
                );
                *m.entry(k).or_insert(0) += 1;
            }
        }
    }
    m
}

async fn export(base: &str, query: &str) -> (Value, Multiset) {
    let status_url = kickoff(base, query).await;
    let manifest = wait_complete(&status_url).await;
    assert_eq!(manifest["error"].as_array().unwrap().len(), 0, "{manifest}");
    let files = download_outputs(&manifest).await;
    for (ty, _, body) in &files {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            assert_eq!(&v["resourceType"], ty.as_str());
        }
    }
    (
        manifest,
        multiset(files.iter().map(|(_, _, b)| b.as_slice())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_from_a_real_fhir_server_exactly() {
    let dir = TempDir::new("fhir");
    let src = dir.0.join("src");
    generate(&src, 60, 5).unwrap();
    let fixture = FhirFixture::start(&src).await;
    let mut config = small_config();
    config.page_size = 200;
    let source = fhir_source(&fixture.base);
    let stack = running_stack(&dir.0.join("data"), source, config, 3).await;

    // System level, all types the upstream's CapabilityStatement lists.
    let (_, got) = export(&stack.base_url, "").await;
    assert!(got.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(
        got,
        expected_where(&src, |_| true),
        "every resource exactly once"
    );
    let stats = fixture.stats().await;
    let obs_pages = stats["searches"]["Observation"].as_u64().unwrap();
    let obs_total = got.keys().filter(|(t, _)| t == "Observation").count() as u64;
    assert!(
        obs_pages >= obs_total / 200,
        "paged through next links: {stats}"
    );
    println!(
        "system export of {} resources; upstream stats {stats}",
        got.len()
    );

    // _typeFilter: two filters on one type combine with OR; other types unfiltered.
    let q = "_type=Observation,Patient&_typeFilter=Observation%3Fcategory%3Dlaboratory,Observation%3Fcode%3Dhttp://loinc.org%7C8867-4";
    let (_, got) = export(&stack.base_url, q).await;
    let expected = expected_where(&src, |v| match v["resourceType"].as_str() {
        Some("Patient") => true,
        Some("Observation") => {
            v["category"][0]["coding"][0]["code"] == "laboratory"
                || v["code"]["coding"][0]["code"] == "8867-4"
        }
        _ => false,
    });
    let lab_and_hr: usize = expected.keys().filter(|(t, _)| t == "Observation").count();
    assert!(lab_and_hr > 0);
    assert!(
        got.values().all(|n| *n == 1),
        "a resource matching both filters appears once"
    );
    assert_eq!(
        got, expected,
        "_typeFilter selects exactly the matching Observations"
    );

    // _since: only resources updated after the instant.
    let since = "2023-06-01T00:00:00Z";
    let (manifest, got) = export(
        &stack.base_url,
        &format!("_type=Condition,Encounter&_since={since}"),
    )
    .await;
    let cutoff = bulk_export_core::fhir::instant::parse_instant(since).unwrap();
    let expected = expected_where(&src, |v| {
        matches!(v["resourceType"].as_str(), Some("Condition" | "Encounter"))
            && bulk_export_core::fhir::instant::parse_instant(
                v["meta"]["lastUpdated"].as_str().unwrap(),
            )
            .unwrap()
                > cutoff
    });
    assert_eq!(got, expected, "_since is exclusive and exact");
    assert!(manifest["transactionTime"].as_str().unwrap().ends_with('Z'));

    // _until, and a single _typeFilter, at the system level.
    let until = "2022-01-01T00:00:00Z";
    let (_, got) = export(
        &stack.base_url,
        &format!("_type=Condition,Procedure&_until={until}"),
    )
    .await;
    let before = bulk_export_core::fhir::instant::parse_instant(until).unwrap();
    let expected = expected_where(&src, |v| {
        matches!(v["resourceType"].as_str(), Some("Condition" | "Procedure"))
            && bulk_export_core::fhir::instant::parse_instant(
                v["meta"]["lastUpdated"].as_str().unwrap(),
            )
            .unwrap()
                <= before
    });
    assert_eq!(got, expected, "_until is inclusive and exact");
    let (_, got) = export(
        &stack.base_url,
        "_type=Condition&_typeFilter=Condition%3Fclinical-status%3Dactive",
    )
    .await;
    let expected = expected_where(&src, |v| {
        v["resourceType"] == "Condition" && v["clinicalStatus"]["coding"][0]["code"] == "active"
    });
    assert_eq!(got, expected, "one _typeFilter");
}

/// A stack over the FHIR test upstream loaded with `patients` (kept alive by
/// the returned directory and fixture).
async fn erring_upstream(
    prefix: &str,
    patients: u64,
) -> (TempDir, FhirFixture, bulk_export::stack::Stack) {
    let dir = TempDir::new(prefix);
    let src = dir.0.join("src");
    generate(&src, patients, 5).unwrap();
    let fixture = FhirFixture::start(&src).await;
    let source = fhir_source(&fixture.base);
    let stack = running_stack(&dir.0.join("data"), source, small_config(), 2).await;
    (dir, fixture, stack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_for_one_type_is_a_partial_success() {
    let (_dir, _fixture, stack) = erring_upstream("fhir-err", 5).await;
    // The fixture refuses an unknown search parameter with 400.
    let status_url = kickoff(
        &stack.base_url,
        "_type=Patient,Observation&_typeFilter=Observation%3Fnot-a-param%3D1",
    )
    .await;
    let manifest = wait_complete(&status_url).await;
    let types: Vec<_> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["Patient"]);
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    let body = fetch_text(errors[0]["url"].as_str().unwrap()).await;
    let oo: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Observation"),
        "{oo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_every_type_failed_is_a_failed_export() {
    let (_dir, _fixture, stack) = erring_upstream("fhir-all-err", 3).await;
    let status_url = kickoff(
        &stack.base_url,
        "_type=Observation&_typeFilter=Observation%3Fnot-a-param%3D1",
    )
    .await;
    for _ in 0..600 {
        let resp = http().get(&status_url).send().await.unwrap();
        match resp.status().as_u16() {
            202 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            500 => {
                let oo: Value = resp.json().await.unwrap();
                assert_eq!(oo["resourceType"], "OperationOutcome");
                let text = oo["issue"][0]["diagnostics"].as_str().unwrap();
                assert!(
                    text.contains("No resource type could be exported")
                        && text.contains("Observation"),
                    "{oo}"
                );
                return;
            }
            s => panic!("status {s}: {}", resp.text().await.unwrap()),
        }
    }
    panic!("the export did not end");
}
