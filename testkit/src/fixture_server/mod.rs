//! A fast, fault-injecting FHIR search server over a directory of NDJSON
//! files (as written by [`crate::generate::generate`]), for tests and
//! benchmarks of the FHIR-server source.
//!
//! Every resource is loaded into memory as its raw line, with `id` and
//! `meta.lastUpdated` parsed, sorted per type by `(lastUpdated, id)`. Searches
//! answer compact searchset Bundles whose entries carry the raw line bytes;
//! paging is by `_offset`. Faults (error statuses, HTML pages, truncated
//! bodies, dropped connections, slow answers and broken paging) are injected
//! on the Nth search or with a probability drawn from a seeded generator.
//!
//! Supported requests:
//! - `GET /fhir/metadata`: a CapabilityStatement listing the loaded types
//!   (Group is left out of the list but can still be read).
//! - `GET /fhir/<Type>?_count=N&_lastUpdated=gtX&_lastUpdated=leY[&_offset=K]
//!   [&_summary=count][&_id=a,b][&<compartment param>=Patient/a,Patient/b]
//!   [&_sort=_id|_lastUpdated]` (`_pretty`, `_format` and `_elements` are
//!   accepted and ignored; any other parameter is a 400 OperationOutcome).
//! - `GET /fhir/<Type>/<id>`: a read.
//! - `GET /__stats`: request counters as JSON.

mod dataset;
mod error;
mod faults;
mod http;
mod options;
mod query;
mod search;
mod state;

pub use error::{FixtureError, LoadError};
pub use faults::{Fault, FaultRule, Trigger};
pub use options::{FixtureOptions, FixtureStats};

use state::State;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running fixture server; stops when dropped.
pub struct FixtureHandle {
    base_url: String,
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FixtureHandle {
    /// The FHIR base URL, `http://127.0.0.1:<port>/fhir`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FixtureStats {
        self.state.stats()
    }

    /// Deletes a loaded resource, as a client of the upstream would while an
    /// export reads it: later searches and reads leave it out. False if it
    /// was not loaded or is deleted already.
    pub fn delete(&self, resource_type: &str, id: &str) -> bool {
        self.state.delete(resource_type, id)
    }

    /// Resets the counters (fault rules keep their own numbering).
    pub fn reset_stats(&self) {
        self.state.bump(|s| *s = FixtureStats::default());
    }

    /// Loaded resources per type: (count, NDJSON bytes including newlines).
    pub fn dataset_summary(&self) -> BTreeMap<String, (u64, u64)> {
        self.state
            .data
            .types
            .iter()
            .map(|(ty, d)| {
                let bytes = d.resources.iter().map(|r| r.raw.len() as u64 + 1).sum();
                (ty.clone(), (d.resources.len() as u64, bytes))
            })
            .collect()
    }

    /// Waits until the server stops (it runs until the handle is dropped).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for FixtureHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

/// Loads `dir` and serves it on an ephemeral loopback port.
pub async fn start_fixture(
    dir: &Path,
    opts: FixtureOptions,
) -> Result<FixtureHandle, FixtureError> {
    start_fixture_on(SocketAddr::from(([127, 0, 0, 1], 0)), dir, opts).await
}

/// Loads `dir` and serves it on `listen`.
pub async fn start_fixture_on(
    listen: SocketAddr,
    dir: &Path,
    opts: FixtureOptions,
) -> Result<FixtureHandle, FixtureError> {
    let dir = dir.to_path_buf();
    let data = tokio::task::spawn_blocking(move || dataset::load(&dir)).await??;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| FixtureError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(FixtureError::LocalAddr)?;
    let origin = format!("http://{addr}");
    let state = Arc::new(State::new(data, opts, origin.clone()));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(http::accept_loop(listener, state.clone(), shutdown_rx));
    Ok(FixtureHandle {
        base_url: format!("{origin}/fhir"),
        addr,
        state,
        shutdown,
        task,
    })
}

// A test reads best top to bottom, however long.
#[cfg(test)]
#[allow(clippy::too_many_lines)]
mod tests {
    use super::query::{decode, encode};
    use super::*;
    use crate::generate::generate;
    use bulk_export_core::adapters::fhir_server::{FhirServerSource, RetryPolicy};
    use bulk_export_core::fhir::framing::read_head;
    use bulk_export_core::fhir::instant::parse_instant;
    use bulk_export_core::model::PatientScope;
    use bulk_export_core::ports::source::{PageRequest, Source};
    use serde_json::Value;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dataset(patients: u64) -> Tmp {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fixture-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        generate(&dir, patients, 7).unwrap();
        Tmp(dir)
    }

    fn lines_of(dir: &Path, ty: &str) -> Vec<Value> {
        std::fs::read_to_string(dir.join(format!("{ty}.ndjson")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn get(url: &str) -> (u16, Value) {
        let resp = reqwest::get(url).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn next_of(bundle: &Value) -> Option<String> {
        bundle["link"]
            .as_array()?
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string)
    }

    #[tokio::test]
    async fn pages_through_every_resource_once_in_order() {
        let tmp = dataset(12);
        let fx = start_fixture(&tmp.0, FixtureOptions::default())
            .await
            .unwrap();
        let expected = lines_of(&tmp.0, "Observation");
        let mut url = Some(format!(
            "{}/Observation?_count=37&_pretty=false",
            fx.base_url()
        ));
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut last_key = (String::new(), String::new());
        while let Some(u) = url {
            let (status, b) = get(&u).await;
            assert_eq!(status, 200);
            assert_eq!(b["type"], "searchset");
            assert_eq!(b["total"].as_u64(), Some(expected.len() as u64));
            for e in b["entry"].as_array().unwrap() {
                assert_eq!(e["search"]["mode"], "match");
                let r = &e["resource"];
                let id = r["id"].as_str().unwrap().to_string();
                assert_eq!(
                    e["fullUrl"].as_str().unwrap(),
                    format!("{}/Observation/{id}", fx.base_url())
                );
                let key = (
                    r["meta"]["lastUpdated"].as_str().unwrap().to_string(),
                    id.clone(),
                );
                assert!(key > last_key, "sorted by (lastUpdated, id)");
                last_key = key;
                seen.push(id);
            }
            pages += 1;
            url = next_of(&b);
            if let Some(n) = &url {
                assert!(
                    n.starts_with(fx.base_url()),
                    "absolute next link on the same host"
                );
            }
        }
        assert_eq!(pages, expected.len().div_ceil(37));
        let mut want: Vec<String> = expected
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
        let stats = fx.stats();
        assert_eq!(stats.searches["Observation"], pages as u64);
        assert_eq!(stats.resources_served, want.len() as u64);

        // Page size cap, raw bytes, reads and metadata.
        let capped = start_fixture(
            &tmp.0,
            FixtureOptions {
                page_size_cap: Some(5),
                ..FixtureOptions::default()
            },
        )
        .await
        .unwrap();
        let (_, b) = get(&format!("{}/Patient?_count=1000", capped.base_url())).await;
        assert_eq!(b["entry"].as_array().unwrap().len(), 5);
        let body = reqwest::get(format!("{}/Patient?_count=1", capped.base_url()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let first_patient = std::fs::read_to_string(tmp.0.join("Patient.ndjson")).unwrap();
        assert!(
            first_patient
                .lines()
                .any(|l| body.windows(l.len()).any(|w| w == l.as_bytes())),
            "resources are the raw source lines"
        );
        let (status, g) = get(&format!("{}/Group/small", fx.base_url())).await;
        assert_eq!((status, g["id"].as_str()), (200, Some("small")));
        let (status, _) = get(&format!("{}/Group/nope", fx.base_url())).await;
        assert_eq!(status, 404);
        let (_, cs) = get(&format!("{}/metadata", fx.base_url())).await;
        let types: Vec<&str> = cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert!(types.contains(&"Observation") && types.contains(&"Group"));
        let (status, oo) = get(&format!("{}/Patient?bogus=1", fx.base_url())).await;
        assert_eq!(
            (status, oo["resourceType"].as_str()),
            (400, Some("OperationOutcome"))
        );
        let raw = reqwest::get(format!("http://{}/__stats", fx.addr()))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert!(raw["searches"]["Observation"].as_u64().unwrap() >= pages as u64);
    }

    #[tokio::test]
    async fn filters_by_last_updated_window() {
        let tmp = dataset(10);
        let fx = start_fixture(&tmp.0, FixtureOptions::default())
            .await
            .unwrap();
        let all = lines_of(&tmp.0, "Encounter");
        let (gt, le) = ("2021-03-01T00:00:00Z", "2023-07-15T12:00:00.000Z");
        let t = |s: &str| parse_instant(s).unwrap();
        let want = all
            .iter()
            .filter(|v| {
                let lu = t(v["meta"]["lastUpdated"].as_str().unwrap());
                lu > t(gt) && lu <= t(le)
            })
            .count();
        assert!(want > 0 && want < all.len());
        let q = format!(
            "_lastUpdated=gt{}&_lastUpdated=le{}",
            encode(gt),
            encode(le)
        );
        let (_, b) = get(&format!("{}/Encounter?_summary=count&{q}", fx.base_url())).await;
        assert_eq!(b["total"].as_u64(), Some(want as u64));
        assert!(b.get("entry").is_none());
        // Paging keeps the window.
        let mut url = Some(format!("{}/Encounter?_count=7&{q}", fx.base_url()));
        let mut got = 0;
        while let Some(u) = url {
            let (_, b) = get(&u).await;
            for e in b["entry"].as_array().unwrap() {
                let lu = t(e["resource"]["meta"]["lastUpdated"].as_str().unwrap());
                assert!(lu > t(gt) && lu <= t(le));
                got += 1;
            }
            url = next_of(&b);
        }
        assert_eq!(got, want);
        // An exact boundary: gt excludes, ge includes.
        let first = all
            .iter()
            .map(|v| v["meta"]["lastUpdated"].as_str().unwrap().to_string())
            .min()
            .unwrap();
        let count_with = |p: &str| {
            let url = format!(
                "{}/Encounter?_summary=count&_lastUpdated={p}{}",
                fx.base_url(),
                encode(&first)
            );
            async move { get(&url).await.1["total"].as_u64().unwrap() }
        };
        assert_eq!(count_with("ge").await, all.len() as u64);
        assert_eq!(count_with("gt").await, all.len() as u64 - 1);
        assert_eq!(count_with("lt").await, 0);
        let stats = fx.stats();
        assert_eq!(stats.counts["Encounter"], 4);
    }

    #[tokio::test]
    async fn injects_faults_on_the_nth_search() {
        let tmp = dataset(4);
        let opts = FixtureOptions {
            faults: vec![
                FaultRule::nth(1, Fault::Status(503, Some(2))),
                FaultRule::nth(2, Fault::HtmlErrorPage),
                FaultRule::nth(3, Fault::TruncatedBody),
                FaultRule::nth(4, Fault::ConnectionReset),
                FaultRule::nth(5, Fault::NextLinkLoop),
                FaultRule::nth(6, Fault::EmptyPageWithNext),
                FaultRule::nth(8, Fault::Delay(Duration::from_millis(300))),
            ],
            ..FixtureOptions::default()
        };
        let fx = start_fixture(&tmp.0, opts).await.unwrap();
        let url = format!("{}/Patient?_count=2", fx.base_url());
        let client = reqwest::Client::new();

        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");

        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );

        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert!(
            serde_json::from_slice::<Value>(&body).is_err(),
            "truncated JSON"
        );
        assert!(body.starts_with(b"{\"resourceType\":\"Bundle\""));

        let err = client.get(&url).send().await;
        assert!(err.is_err(), "connection dropped without a response");

        let (_, b) = get(&url).await;
        assert_eq!(
            next_of(&b).as_deref(),
            Some(url.as_str()),
            "next link loops"
        );

        let (_, b) = get(&url).await;
        assert_eq!(b["entry"].as_array().unwrap().len(), 0);
        let n = next_of(&b).unwrap();
        assert_ne!(n, url);
        let (_, cont) = get(&n).await;
        let first = cont["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_string();

        let t = std::time::Instant::now();
        let (status, b) = get(&url).await;
        assert_eq!(status, 200);
        assert!(t.elapsed() >= Duration::from_millis(300), "delayed");
        assert_eq!(
            b["entry"][0]["resource"]["id"].as_str(),
            Some(first.as_str()),
            "the empty page's next link continues at the first resource"
        );

        let stats = fx.stats();
        for kind in [
            "status_503",
            "html_error_page",
            "truncated_body",
            "connection_reset",
            "next_link_loop",
            "empty_page_with_next",
            "delay",
        ] {
            assert_eq!(stats.faults.get(kind), Some(&1), "{kind}: {stats:?}");
        }
    }

    #[tokio::test]
    async fn the_fhir_source_rides_out_random_faults() {
        let tmp = dataset(20);
        let faults = [
            Fault::Status(429, Some(0)),
            Fault::Status(500, None),
            Fault::Status(502, None),
            Fault::HtmlErrorPage,
            Fault::TruncatedBody,
            Fault::ConnectionReset,
            Fault::EmptyPageWithNext,
        ];
        let opts = FixtureOptions {
            faults: faults
                .iter()
                .map(|f| FaultRule::probability(0.04, f.clone()).for_type("Observation"))
                .collect(),
            seed: 42,
            ..FixtureOptions::default()
        };
        let fx = start_fixture(&tmp.0, opts).await.unwrap();
        let retry = RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        };
        let source = FhirServerSource::new(fx.base_url(), None, retry).unwrap();
        let scope = PatientScope::None;
        let mut cursor: Option<String> = None;
        let mut ids = Vec::new();
        loop {
            let req = PageRequest {
                resource_type: "Observation",
                cursor: cursor.as_deref(),
                since: None,
                until: time::OffsetDateTime::now_utc(),
                type_filters: &[],
                page_size: 50,
                scope: &scope,
                batch: None,
                read_ahead_below: 0,
            };
            let page = source.fetch_page(&req).await.unwrap();
            for line in page.ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                ids.push(read_head(line).unwrap().id.unwrap().to_string());
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut want: Vec<String> = lines_of(&tmp.0, "Observation")
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        want.sort();
        ids.sort();
        assert_eq!(ids, want, "every resource exactly once despite the faults");
        let stats = fx.stats();
        let injected: u64 = stats.faults.values().sum();
        assert!(injected >= 3, "faults were injected: {stats:?}");
    }

    #[test]
    fn query_coding_round_trips() {
        let v = "gt2021-01-01T00:00:00.000+01:00";
        assert_eq!(decode(&encode(v)), v);
        assert_eq!(decode("a+b%2Cc"), "a b,c");
        assert_eq!(decode("bad%zz%"), "bad%zz%");
    }
}
