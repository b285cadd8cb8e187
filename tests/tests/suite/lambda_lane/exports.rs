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
            "export did not complete in 5 min\nworker log:\n{}\nstatus log:\n{}",
            lane.log_tail("chunk-worker"),
            lane.log_tail("status")
        );
    }

    async fn download(&self, manifest: &Value) -> Multiset {
        let mut bodies = Vec::new();
        for item in manifest["output"].as_array().unwrap() {
            let url = item["url"].as_str().unwrap();
            let resp = self.http.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "download of {url}");
            let body = resp.bytes().await.unwrap().to_vec();
            let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
            assert_eq!(item["count"].as_u64(), Some(lines), "count of {item}");
            bodies.push(body);
        }
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
    let dir = TempDir::new("lane-src");
    let src = dir.0.join("src");
    generate(&src, 400, 17).unwrap();
    let fixture = start_fixture(&src, FixtureOptions::default())
        .await
        .unwrap();
    let lane = Lane::start(LaneOptions::new(fixture.base_url().to_string())).await;
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
}
