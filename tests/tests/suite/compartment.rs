//! Patient- and Group-level exports: exactly the compartments of the right
//! patients, no duplicates even for resources linked to several members, and
//! upstream searches that grow with members / batch size, not members.

use crate::common::*;
use bulk_export::stack::SourceSpec;
use bulk_export_testkit::generate::generate;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

type Multiset = BTreeMap<(String, String), u32>;

/// Resources linked to several patients, appended to a generated dataset.
fn add_multi_patient_resources(src: &Path) {
    let lu = "2024-06-01T00:00:00.000Z";
    let mut obs = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("Observation.ndjson"))
        .unwrap();
    for (id, subject, performer) in [
        ("multi-1", "pt-3", "pt-6"),
        ("multi-2", "pt-4", "pt-9"),
        ("multi-3", "pt-12", "pt-3"),
    ] {
        let v = json!({"resourceType": "Observation", "id": id, "meta": {"lastUpdated": lu}, "status": "final",
            "code": {"text": "shared"}, "subject": {"reference": format!("Patient/{subject}")},
            "performer": [{"reference": "Practitioner/pr-0"}, {"reference": format!("Patient/{performer}")}]});
        writeln!(obs, "{v}").unwrap();
    }
    let mut cov = std::fs::File::create(src.join("Coverage.ndjson")).unwrap();
    for (id, beneficiary, subscriber) in [
        ("cov-1", "pt-0", "pt-3"),
        ("cov-2", "pt-13", "pt-6"),
        ("cov-3", "pt-14", "pt-14"),
    ] {
        let v = json!({"resourceType": "Coverage", "id": id, "meta": {"lastUpdated": lu}, "status": "active",
            "beneficiary": {"reference": format!("Patient/{beneficiary}")}, "subscriber": {"reference": format!("Patient/{subscriber}")},
            "payor": [{"reference": "Organization/org-0"}]});
        writeln!(cov, "{v}").unwrap();
    }
    // Referenced-only types: one referenced and one unreferenced resource each,
    // referenced in versioned and absolute form.
    let mut loc = std::fs::File::create(src.join("Location.ndjson")).unwrap();
    let mut med = std::fs::File::create(src.join("Medication.ndjson")).unwrap();
    for n in 1..=2 {
        let v = json!({"resourceType": "Location", "id": format!("loc-{n}"), "meta": {"lastUpdated": lu}, "name": format!("Ward {n}")});
        writeln!(loc, "{v}").unwrap();
        let v = json!({"resourceType": "Medication", "id": format!("med-{n}"), "meta": {"lastUpdated": lu},
            "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": format!("31407{n}")}]}});
        writeln!(med, "{v}").unwrap();
    }
    let mut enc = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("Encounter.ndjson"))
        .unwrap();
    let v = json!({"resourceType": "Encounter", "id": "enc-at-ward", "meta": {"lastUpdated": lu}, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/pt-3"}, "location": [{"location": {"reference": "Location/loc-1/_history/1"}}]});
    writeln!(enc, "{v}").unwrap();
    let mut mr = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("MedicationRequest.ndjson"))
        .unwrap();
    let v = json!({"resourceType": "MedicationRequest", "id": "medreq-coded", "meta": {"lastUpdated": lu}, "status": "active",
        "intent": "order", "subject": {"reference": "Patient/pt-6"},
        "medicationReference": {"reference": "https://ehr.example/fhir/Medication/med-1"}});
    writeln!(mr, "{v}").unwrap();
}

fn lines(src: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(src).unwrap() {
        for l in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            out.push(serde_json::from_str(l).unwrap());
        }
    }
    out
}

/// Every `reference` string anywhere in the resource.
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("reference").and_then(Value::as_str) {
                out.push(r.to_string());
            }
            m.values().for_each(|c| references(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| references(c, out)),
        _ => {}
    }
}

/// Every `Patient/<id>` in any `reference` anywhere in the resource.
fn referenced_patients(v: &Value, out: &mut BTreeSet<String>) {
    let mut refs = Vec::new();
    references(v, &mut refs);
    out.extend(
        refs.iter()
            .filter_map(|r| r.strip_prefix("Patient/"))
            .map(str::to_string),
    );
}

/// `(type, id)` a reference points to, for one of `types`, read the way a
/// person would: `Type/id`, `Type/id/_history/v` or `https://…/Type/id`.
fn reference_target(r: &str, types: &[&str]) -> Option<(String, String)> {
    let parts: Vec<&str> = r.split('/').collect();
    let at = parts.iter().position(|p| types.contains(p))?;
    Some((parts[at].to_string(), parts.get(at + 1)?.to_string()))
}

/// Group members computed from the raw Group file: inactive excluded, nested Groups expanded.
fn members_of(all: &[Value], group: &str) -> BTreeSet<String> {
    let g = all
        .iter()
        .find(|v| v["resourceType"] == "Group" && v["id"] == group)
        .unwrap();
    let mut out = BTreeSet::new();
    for m in g["member"].as_array().unwrap() {
        if m["inactive"] == true {
            continue;
        }
        let r = m["entity"]["reference"].as_str().unwrap();
        if let Some(p) = r.strip_prefix("Patient/") {
            out.insert(p.to_string());
        } else if let Some(sub) = r.strip_prefix("Group/") {
            out.extend(members_of(all, sub));
        }
    }
    out
}

const NON_COMPARTMENT: &[&str] = &[
    "Group",
    "Practitioner",
    "Organization",
    "Location",
    "Medication",
];

/// Referenced types included when `_type` is absent.
const ALL_REFERENCED: &[&str] = &["Location", "Medication", "Organization", "Practitioner"];

/// The compartment resources of `members` (all patients when `None`) that
/// `keep` accepts, plus every existing resource of `referenced` types those
/// resources reference.
fn expected(
    all: &[Value],
    members: Option<&BTreeSet<String>>,
    keep: impl Fn(&Value) -> bool,
    referenced: &[&str],
) -> Multiset {
    let mut m = Multiset::new();
    let mut targets = BTreeSet::new();
    for v in all {
        let ty = v["resourceType"].as_str().unwrap();
        if NON_COMPARTMENT.contains(&ty) || !keep(v) {
            continue;
        }
        let mut refs = BTreeSet::new();
        if ty == "Patient" {
            refs.insert(v["id"].as_str().unwrap().to_string());
        } else {
            referenced_patients(v, &mut refs);
        }
        if refs.iter().any(|p| members.is_none_or(|ms| ms.contains(p))) {
            *m.entry((ty.to_string(), v["id"].as_str().unwrap().to_string()))
                .or_insert(0) += 1;
            let mut all_refs = Vec::new();
            references(v, &mut all_refs);
            targets.extend(
                all_refs
                    .iter()
                    .filter_map(|r| reference_target(r, referenced)),
            );
        }
    }
    for v in all {
        let key = (
            v["resourceType"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        );
        if targets.contains(&key) {
            m.insert(key, 1);
        }
    }
    m
}

async fn export_at(base: &str, path: &str, query: &str, body: Option<Value>) -> Multiset {
    let url = if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    };
    let rb = match &body {
        Some(b) => http()
            .post(url)
            .header("Content-Type", "application/fhir+json")
            .body(b.to_string()),
        None => http().get(url),
    };
    let resp = rb.header("Prefer", "respond-async").send().await.unwrap();
    let status = resp.status();
    assert_eq!(
        status,
        202,
        "{path}?{query}: {}",
        resp.text().await.unwrap()
    );
    let manifest = wait_complete(resp.headers()["content-location"].to_str().unwrap()).await;
    assert_eq!(manifest["error"].as_array().unwrap().len(), 0, "{manifest}");
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    assert!(
        got.values().all(|n| *n == 1),
        "{path}?{query}: duplicates {:?}",
        got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    got
}

fn since_filter(since: &str) -> impl Fn(&Value) -> bool {
    let cutoff = bulk_export_core::fhir::instant::parse_instant(since).unwrap();
    move |v| {
        bulk_export_core::fhir::instant::parse_instant(v["meta"]["lastUpdated"].as_str().unwrap())
            .unwrap()
            > cutoff
    }
}

async fn run_matrix(base: &str, all: &[Value], with_filters: bool) {
    let group = members_of(all, "every-third");
    assert!(
        group.contains("pt-1"),
        "pt-1 is inactive in every-third but a member through the nested Group"
    );
    // Patient level, everything.
    let got = export_at(base, "/Patient/$export", "", None).await;
    assert_eq!(
        got,
        expected(all, None, |_| true, ALL_REFERENCED),
        "Patient level"
    );
    // Group level, with and without _type, with _since.
    let got = export_at(base, "/Group/every-third/$export", "", None).await;
    assert_eq!(
        got,
        expected(all, Some(&group), |_| true, ALL_REFERENCED),
        "Group level"
    );
    assert!(
        got.contains_key(&("Observation".into(), "multi-1".into()))
            && got.contains_key(&("Coverage".into(), "cov-2".into()))
    );
    assert!(
        !got.contains_key(&("Coverage".into(), "cov-3".into())),
        "pt-14 is not a member"
    );
    for (ty, id, present) in [
        ("Location", "loc-1", true),
        ("Medication", "med-1", true),
        ("Location", "loc-2", false),
        ("Medication", "med-2", false),
    ] {
        assert_eq!(
            got.contains_key(&(ty.into(), id.into())),
            present,
            "referenced {ty}/{id}"
        );
    }
    assert!(
        got.keys().any(|(ty, _)| ty == "Practitioner")
            && got.keys().any(|(ty, _)| ty == "Organization"),
        "referenced Practitioners and Organizations are included by default"
    );
    // A referenced type in _type: only that one, from the listed types.
    let got = export_at(
        base,
        "/Group/every-third/$export",
        "_type=Encounter,Practitioner",
        None,
    )
    .await;
    assert_eq!(
        got,
        expected(
            all,
            Some(&group),
            |v| v["resourceType"] == "Encounter",
            &["Practitioner"]
        ),
        "Group + _type with a referenced type"
    );
    let got = export_at(
        base,
        "/Group/every-third/$export",
        "_type=Observation,Coverage,Patient",
        None,
    )
    .await;
    let types = ["Observation", "Coverage", "Patient"];
    assert_eq!(
        got,
        expected(
            all,
            Some(&group),
            |v| types.contains(&v["resourceType"].as_str().unwrap()),
            &[]
        ),
        "Group + _type"
    );
    let since = "2023-01-01T00:00:00Z";
    let got = export_at(
        base,
        "/Group/every-third/$export",
        &format!("_since={since}"),
        None,
    )
    .await;
    assert_eq!(
        got,
        expected(all, Some(&group), since_filter(since), ALL_REFERENCED),
        "Group + _since"
    );
    let until = "2022-01-01T00:00:00Z";
    let got = export_at(
        base,
        "/Patient/$export",
        &format!("_type=Condition,Encounter&_until={until}"),
        None,
    )
    .await;
    let before = bulk_export_core::fhir::instant::parse_instant(until).unwrap();
    assert_eq!(
        got,
        expected(
            all,
            None,
            |v| matches!(v["resourceType"].as_str(), Some("Condition" | "Encounter"))
                && bulk_export_core::fhir::instant::parse_instant(
                    v["meta"]["lastUpdated"].as_str().unwrap()
                )
                .unwrap()
                    <= before,
            &[]
        ),
        "Patient + _until"
    );
    let got = export_at(
        base,
        "/Group/every-third/$export",
        &format!("_until={until}"),
        None,
    )
    .await;
    assert_eq!(
        got,
        expected(
            all,
            Some(&group),
            |v| bulk_export_core::fhir::instant::parse_instant(
                v["meta"]["lastUpdated"].as_str().unwrap()
            )
            .unwrap()
                <= before,
            ALL_REFERENCED
        ),
        "Group + _until"
    );
    let got = export_at(
        base,
        "/Patient/$export",
        &format!("_type=Observation,Coverage&_since={since}"),
        None,
    )
    .await;
    let since_ok = since_filter(since);
    assert_eq!(
        got,
        expected(
            all,
            None,
            |v| matches!(v["resourceType"].as_str(), Some("Observation" | "Coverage"))
                && since_ok(v),
            &[]
        ),
        "Patient + _type + _since"
    );
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": "Patient/pt-14"}}]});
    let got = export_at(base, "/Patient/$export", "", Some(body)).await;
    let one: BTreeSet<String> = ["pt-14".to_string()].into_iter().collect();
    assert_eq!(
        got,
        expected(all, Some(&one), |_| true, ALL_REFERENCED),
        "Patient + patient"
    );
    // The patient parameter restricts a Group export.
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/pt-3"}},
        {"name": "patient", "valueReference": {"reference": "Patient/pt-6"}}]});
    let got = export_at(base, "/Group/every-third/$export", "", Some(body)).await;
    let two: BTreeSet<String> = ["pt-3", "pt-6"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        got,
        expected(all, Some(&two), |_| true, ALL_REFERENCED),
        "Group + patient"
    );
    if with_filters {
        let q = "_type=Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory,Observation%3Fcode%3Dhttp://loinc.org%7C8867-4";
        let got = export_at(base, "/Group/every-third/$export", q, None).await;
        let exp = expected(
            all,
            Some(&group),
            |v| {
                v["resourceType"] == "Observation"
                    && (v["category"][0]["coding"][0]["code"] == "laboratory"
                        || v["code"]["coding"][0]["code"] == "8867-4")
            },
            &[],
        );
        assert_eq!(got, exp, "Group + two _typeFilters");
        let q = "_type=Condition,Patient&_typeFilter=Condition%3Fclinical-status%3Dactive";
        let got = export_at(base, "/Group/every-third/$export", q, None).await;
        let exp = expected(
            all,
            Some(&group),
            |v| {
                v["resourceType"] == "Patient"
                    || (v["resourceType"] == "Condition"
                        && v["clinicalStatus"]["coding"][0]["code"] == "active")
            },
            &[],
        );
        assert_eq!(got, exp, "Group + one _typeFilter; Patient unfiltered");
        let got = export_at(
            base,
            "/Patient/$export",
            "_type=Condition&_typeFilter=Condition%3Fclinical-status%3Dresolved",
            None,
        )
        .await;
        let exp = expected(
            all,
            None,
            |v| {
                v["resourceType"] == "Condition"
                    && v["clinicalStatus"]["coding"][0]["code"] == "resolved"
            },
            &[],
        );
        assert_eq!(got, exp, "Patient + one _typeFilter");
    }
    // Refusals.
    let bad = [
        ("/Group/every-third/$export", "_type=ValueSet", 400),
        (
            "/Group/every-third/$export",
            "_type=Encounter,Practitioner&_typeFilter=Practitioner%3Factive%3Dtrue",
            400,
        ),
        ("/Group/no-such-group/$export", "", 404),
    ];
    for (path, q, status) in bad {
        let resp = http()
            .get(format!("{base}{path}?{q}"))
            .header("Prefer", "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}?{q}");
    }
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": "Patient/pt-59"}}]});
    let resp = http()
        .post(format!("{base}/Group/every-third/$export"))
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a patient outside the Group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compartment_exports_from_ndjson_are_exact() {
    let dir = TempDir::new("comp-ndjson");
    let src = dir.0.join("src");
    generate(&src, 60, 8).unwrap();
    add_multi_patient_resources(&src);
    let all = lines(&src);
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(src),
        small_config(),
        2,
    )
    .await;
    run_matrix(&stack.base_url, &all, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compartment_exports_from_a_fhir_server_are_exact() {
    let dir = TempDir::new("comp-fhir");
    let src = dir.0.join("src");
    generate(&src, 60, 8).unwrap();
    add_multi_patient_resources(&src);
    let all = lines(&src);
    let fixture = FhirFixture::start(&src).await;
    let mut config = small_config();
    // Small batches: multi-patient resources come back from several batches.
    config.patient_batch_size = 4;
    let stack = running_stack(&dir.0.join("data"), fhir_source(&fixture.base), config, 2).await;
    run_matrix(&stack.base_url, &all, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_1000_searches_by_batch_not_by_patient() {
    let dir = TempDir::new("comp-1000");
    let src = dir.0.join("src");
    generate(&src, 1000, 3).unwrap();
    let all = lines(&src);
    let fixture = FhirFixture::start(&src).await;
    let config = small_config();
    let batch = config.patient_batch_size;
    let stack = running_stack(&dir.0.join("data"), fhir_source(&fixture.base), config, 2).await;
    http()
        .post(format!(
            "{}/__stats/reset",
            fixture.base.trim_end_matches("/fhir")
        ))
        .send()
        .await
        .unwrap();
    let got = export_at(
        &stack.base_url,
        "/Group/all-patients/$export",
        "_type=Patient,Condition",
        None,
    )
    .await;
    let members = members_of(&all, "all-patients");
    assert_eq!(members.len(), 1000);
    let types = ["Patient", "Condition"];
    assert_eq!(
        got,
        expected(
            &all,
            Some(&members),
            |v| types.contains(&v["resourceType"].as_str().unwrap()),
            &[]
        )
    );
    let stats = fixture.stats().await;
    let initial: u64 = stats["initialSearches"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let batches = 1000_u64.div_ceil(batch as u64);
    // Patient: one `_id=` query per batch; Condition: one per batch and compartment parameter (2).
    println!("1000 members, batch {batch}: {initial} searches started upstream ({stats})");
    assert!(
        initial <= batches * 3,
        "{initial} searches for {batches} batches"
    );
    assert!(initial < 1000, "not one search per patient");
}
