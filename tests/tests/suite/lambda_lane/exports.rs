//! Exports through the function processes: system, Patient and Group level
//! from a FHIR-server source, status polling and cancel through API Gateway
//! events, a worker process killed mid-step, output exact, IAM clean.

use super::{Lane, LaneOptions};
use crate::common::{TempDir, multiset, source_multiset};
use bulk_export_testkit::fixture_server::{FixtureOptions, start_fixture};
use bulk_export_testkit::generate::generate;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

type Multiset = BTreeMap<(String, String), u32>;

struct Client {
    http: reqwest::Client,
    token: String,
}

impl Client {
    async fn kickoff(&self, url: &str) -> String {
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let location = resp
            .headers()
            .get("content-location")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(status, 202, "kick-off: {}", resp.text().await.unwrap());
        location.unwrap()
    }

    async fn wait(&self, lane: &Lane, status_url: &str) -> Value {
        for _ in 0..1200 {
            let resp = self
                .http
                .get(status_url)
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                200 => return resp.json().await.unwrap(),
                202 | 429 => tokio::time::sleep(Duration::from_millis(250)).await,
                s => panic!(
                    "status {s}: {}\nworker log:\n{}",
                    resp.text().await.unwrap(),
                    lane.log_tail("chunk-worker")
                ),
            }
        }
        panic!(
            "export did not complete in 5 min\n{}\nworker log:\n{}\nstatus log:\n{}",
            lane.iam.report(),
            lane.log_tail("chunk-worker"),
            lane.log_tail("status")
        );
    }

    /// Every output file, 16 downloads at a time; counts checked.
    async fn download(&self, manifest: &Value) -> Multiset {
        use futures::StreamExt;
        let items = manifest["output"].as_array().unwrap().clone();
        let bodies: Vec<Vec<u8>> = futures::stream::iter(items)
            .map(|item| async move {
                let url = item["url"].as_str().unwrap();
                let resp = self.http.get(url).send().await.unwrap();
                assert_eq!(resp.status(), 200, "download of {url}");
                let body = resp.bytes().await.unwrap().to_vec();
                let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
                assert_eq!(item["count"].as_u64(), Some(lines), "count of {item}");
                body
            })
            .buffer_unordered(16)
            .collect()
            .await;
        multiset(bodies.iter().map(Vec::as_slice))
    }
}

fn only_types(m: &Multiset, types: &[&str]) -> Multiset {
    m.iter()
        .filter(|((t, _), _)| types.contains(&t.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_complete_through_the_function_processes() {
    exports_through_the_functions(false, 400).await;
}

/// The same with `KmsKeyArn` set: every S3 write then needs the key's data
/// key and every read (presigned downloads included) its decryption, under
/// the role of the function that makes (or signed) the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_complete_with_a_kms_key() {
    exports_through_the_functions(true, 120).await;
}

async fn exports_through_the_functions(kms: bool, patients: u64) {
    let dir = TempDir::new("lane-src");
    let src = dir.0.join("src");
    generate(&src, patients, 17).unwrap();
    let fixture = start_fixture(&src, FixtureOptions::default())
        .await
        .unwrap();
    let mut opts = LaneOptions::new(fixture.base_url().to_string());
    opts.kms = kms;
    let lane = Lane::start(opts).await;
    assert_eq!(lane.kms_key.is_some(), kms);
    let resp = reqwest::get(format!("{}/metadata", lane.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the public CapabilityStatement");
    let client = Client {
        http: reqwest::Client::new(),
        token: lane.token("system/*.read"),
    };
    let everything = source_multiset(&src, false);

    // System level, with one worker process killed while it runs a step.
    let status = client.kickoff(&format!("{}/$export", lane.url)).await;
    let worker = lane.lambda.pool("chunk-worker").clone();
    let mut killed = false;
    for _ in 0..400 {
        if worker.kill_one_busy() {
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(killed, "a worker process was running a step");
    let manifest = client.wait(&lane, &status).await;
    assert_eq!(manifest["error"].as_array().unwrap().len(), 0, "{manifest}");
    let got = client.download(&manifest).await;
    assert!(got.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(got, everything, "system export exact");

    // Patient and Group level.
    let types = ["Patient", "Observation", "Condition"];
    let q = "_type=Patient,Observation,Condition";
    for path in ["/Patient/$export", "/Group/all-patients/$export"] {
        let status = client.kickoff(&format!("{}{path}?{q}", lane.url)).await;
        let manifest = client.wait(&lane, &status).await;
        let got = client.download(&manifest).await;
        assert_eq!(got, only_types(&everything, &types), "{path} exact");
    }

    // Cancel through the API: 202, then the status URL is gone.
    let status = client.kickoff(&format!("{}/$export", lane.url)).await;
    let resp = client
        .http
        .delete(&status)
        .bearer_auth(&client.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let resp = client
        .http
        .get(&status)
        .bearer_auth(&client.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The API Gateway authorizer refuses a request without a token.
    let resp = client
        .http
        .get(format!("{}/$export", lane.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let stats = &lane.lambda.stats;
    println!(
        "lane: {} worker invocations in {} processes, {} killed mid-invocation; async events {}, delivered twice {}, retried {}, to destinations {}",
        worker.invocations.load(Ordering::SeqCst),
        worker.started.load(Ordering::SeqCst),
        worker.killed_mid_invocation.load(Ordering::SeqCst),
        stats.events.load(Ordering::SeqCst),
        stats.duplicated.load(Ordering::SeqCst),
        stats.retried.load(Ordering::SeqCst),
        stats.sent_to_destination.load(Ordering::SeqCst),
    );
    assert!(worker.killed_mid_invocation.load(Ordering::SeqCst) >= 1);
    lane.assert_iam_clean();
    if kms {
        let calls = lane.iam.calls.lock().unwrap();
        for (function, action) in [
            ("chunk-worker", "kms:GenerateDataKey"),
            ("chunk-worker", "kms:Decrypt"),
            ("StatusFunction", "kms:Decrypt"),
        ] {
            assert!(
                calls
                    .keys()
                    .any(|(f, a, _)| f.ends_with(function) && a == action),
                "{function} calls {action}"
            );
        }
    }
}

/// 20,000 patients, one Group of all of them, and per other type one
/// resource for every 50th patient: a Group export queried 50 members at a
/// time writes one file per type and batch.
fn large_group_source(dir: &std::path::Path, patients: usize, types: &[&str]) -> Multiset {
    use std::fmt::Write;
    std::fs::create_dir_all(dir).unwrap();
    let meta = r#""meta":{"lastUpdated":"2024-01-01T00:00:00.000Z"}"#;
    let mut expected = Multiset::new();
    let mut patient_lines = String::new();
    let mut members = Vec::new();
    for i in 0..patients {
        let id = format!("p{i:05}");
        writeln!(
            patient_lines,
            r#"{{"resourceType":"Patient","id":"{id}",{meta}}}"#
        )
        .unwrap();
        members.push(format!(r#"{{"entity":{{"reference":"Patient/{id}"}}}}"#));
        expected.insert(("Patient".into(), id), 1);
    }
    std::fs::write(dir.join("Patient.ndjson"), patient_lines).unwrap();
    let group = format!(
        r#"{{"resourceType":"Group","id":"large","type":"person","actual":true,{meta},"member":[{}]}}"#,
        members.join(",")
    );
    std::fs::write(dir.join("Group.ndjson"), group + "\n").unwrap();
    for ty in types.iter().filter(|t| **t != "Patient") {
        let field = match *ty {
            "Immunization" | "AllergyIntolerance" => "patient",
            _ => "subject",
        };
        let mut lines = String::new();
        for i in (0..patients).step_by(50) {
            let id = format!("{}-{i:05}", ty.to_lowercase());
            writeln!(
                lines,
                r#"{{"resourceType":"{ty}","id":"{id}",{meta},"{field}":{{"reference":"Patient/p{i:05}"}}}}"#
            )
            .unwrap();
            expected.insert((ty.to_string(), id), 1);
        }
        std::fs::write(dir.join(format!("{ty}.ndjson")), lines).unwrap();
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_20000_members_exports_over_5000_files_through_the_functions() {
    let types = [
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "Procedure",
        "Immunization",
        "AllergyIntolerance",
        "MedicationRequest",
        "DiagnosticReport",
        "CarePlan",
        "Goal",
        "DocumentReference",
        "ServiceRequest",
        "CareTeam",
    ];
    let dir = TempDir::new("lane-group");
    let src = dir.0.join("src");
    let expected = large_group_source(&src, 20_000, &types);
    let fixture = start_fixture(&src, FixtureOptions::default())
        .await
        .unwrap();
    let mut opts = LaneOptions::new(fixture.base_url().to_string());
    opts.worker_concurrency = 8;
    let lane = Lane::start(opts).await;
    let client = Client {
        http: reqwest::Client::new(),
        token: lane.token("system/*.read"),
    };
    let started = std::time::Instant::now();
    let status = client
        .kickoff(&format!(
            "{}/Group/large/$export?_type={}",
            lane.url,
            types.join(",")
        ))
        .await;
    let kickoff_secs = started.elapsed().as_secs_f64();
    let manifest = client.wait(&lane, &status).await;
    let export_secs = started.elapsed().as_secs_f64();
    let files = manifest["output"].as_array().unwrap().len();
    assert!(files > 5_000, "{files} files");
    let manifest_bytes = manifest.to_string().len();
    let got = client.download(&manifest).await;
    assert_eq!(got, expected, "every member's resources exactly once");
    println!(
        "lane: Group of 20,000 members, {} resources in {files} files; kick-off {kickoff_secs:.1} s, export {export_secs:.1} s, manifest {manifest_bytes} bytes",
        got.len()
    );
    lane.assert_iam_clean();
}
