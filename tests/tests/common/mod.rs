//! Shared fixtures: a full export stack per test on ephemeral loopback ports.
//! Storage is the embedded dynoxide + s3s-fs pair, or, when
//! `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_S3` are set (the moto lane),
//! those servers, each test using its own table and bucket.
#![allow(dead_code)]

pub mod lossy;
pub mod wrappers;

use bulk_export::aws_clients::Endpoints;
use bulk_export::http_server::no_auth;
use bulk_export::stack::{SourceSpec, Stack, StackOptions, build, start};
use bulk_export_core::model::config::ExportConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique lowercase name for tables, buckets and directories.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{t:x}")
}

/// Which storage lane this run uses.
pub fn lane() -> &'static str {
    if std::env::var("AWS_ENDPOINT_URL_S3").is_ok() {
        "external"
    } else {
        "embedded"
    }
}

fn endpoints() -> (Endpoints, bool) {
    let d = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok();
    let s = std::env::var("AWS_ENDPOINT_URL_S3").ok();
    if d.is_some() || s.is_some() {
        let creds = Some(("testing".to_string(), "testing".to_string()));
        (
            Endpoints {
                dynamodb: d,
                s3: s,
                static_credentials: creds,
            },
            false,
        )
    } else {
        (Endpoints::default(), true)
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test config: small parts and files unless a test overrides them.
pub fn small_config() -> ExportConfig {
    ExportConfig {
        table: unique("jobs"),
        bucket: unique("out"),
        part_size: 5 * 1024 * 1024,
        max_file_size: 12 * 1024 * 1024,
        page_size: 500,
        retry_after_secs: 1,
        ..ExportConfig::default()
    }
}

pub fn options(
    data_dir: &Path,
    source: SourceSpec,
    config: ExportConfig,
    workers: usize,
) -> StackOptions {
    let (endpoints, use_embedded) = endpoints();
    StackOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        source,
        base_url: None,
        endpoints,
        use_embedded,
        config,
        workers,
        stall_timeout: Duration::from_secs(600),
        auth: no_auth(),
    }
}

/// A FHIR-server source at `base`, without a token.
pub fn fhir_source(base: &str) -> SourceSpec {
    SourceSpec::Fhir {
        base: base.to_string(),
        token: None,
    }
}

/// `patients` generated patients (`seed`) behind a fixture FHIR server with
/// `opts`, and a stack over it with no workers (the test delivers every
/// step). The directory lives as long as the returned `TempDir`.
pub async fn fixture_stack(
    prefix: &str,
    (patients, seed): (u64, u64),
    opts: bulk_export_testkit::fixture_server::FixtureOptions,
    config: ExportConfig,
) -> (
    TempDir,
    bulk_export_testkit::fixture_server::FixtureHandle,
    Stack,
) {
    let dir = TempDir::new(prefix);
    let src = dir.0.join("src");
    bulk_export_testkit::generate::generate(&src, patients, seed).unwrap();
    let fixture = bulk_export_testkit::fixture_server::start_fixture(&src, opts)
        .await
        .unwrap();
    let stack = running_stack(
        &dir.0.join("data"),
        fhir_source(fixture.base_url()),
        config,
        0,
    )
    .await;
    (dir, fixture, stack)
}

/// A running stack with workers and an HTTP server.
pub async fn running_stack(
    data_dir: &Path,
    source: SourceSpec,
    config: ExportConfig,
    workers: usize,
) -> Stack {
    start(options(data_dir, source, config, workers))
        .await
        .unwrap()
}

/// Services without workers or HTTP, for driving steps by hand.
pub async fn bare_stack(data_dir: &Path, source: SourceSpec, config: ExportConfig) -> Stack {
    build(
        &options(data_dir, source, config, 0),
        "http://127.0.0.1:9/fhir".into(),
    )
    .await
    .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Kick-off GET of `[base]/$export` with the standard headers; returns the
/// status URL.
pub async fn kickoff(base: &str, query: &str) -> String {
    if query.is_empty() {
        kickoff_at(base, "/$export").await
    } else {
        kickoff_at(base, &format!("/$export?{query}")).await
    }
}

/// The value of query parameter `name` in `url`, parsed.
pub fn query_param<T: std::str::FromStr>(url: &str, name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    url.split(&format!("{name}="))
        .nth(1)
        .unwrap_or_else(|| panic!("{url} has no {name}"))
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The body of a GET of `url`, as text.
pub async fn fetch_text(url: &str) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// Kick-off GET of `[base]<path>` (e.g. `/Patient/$export?_type=Condition`)
/// with the standard headers; returns the status URL.
pub async fn kickoff_at(base: &str, path: &str) -> String {
    let url = format!("{base}{path}");
    let resp = http()
        .get(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let loc = resp
        .headers()
        .get("content-location")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        status,
        202,
        "kick-off failed: {}",
        resp.text().await.unwrap_or_default()
    );
    loc.expect("Content-Location")
}

/// Polls until 200; returns the manifest.
pub async fn wait_complete(status_url: &str) -> Value {
    for _ in 0..3000 {
        let resp = http()
            .get(status_url)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {
                assert!(
                    resp.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .starts_with("application/json")
                );
                assert!(resp.headers().contains_key("expires"));
                return resp.json().await.unwrap();
            }
            202 => {
                let p = resp
                    .headers()
                    .get("x-progress")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                assert!(
                    p.len() < 100 && p.split('%').next().unwrap().parse::<u32>().is_ok(),
                    "X-Progress {p:?}"
                );
                assert!(
                    resp.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .is_ok()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            429 => {
                let wait: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            s => panic!(
                "status answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }
    panic!("export did not complete in time");
}

/// Downloads every output file: (type, url, lines).
pub async fn download_outputs(manifest: &Value) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for item in manifest["output"].as_array().unwrap() {
        let ty = item["type"].as_str().unwrap().to_string();
        let url = item["url"].as_str().unwrap().to_string();
        let resp = http().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "download of {url}");
        let body = resp.bytes().await.unwrap().to_vec();
        let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
        assert_eq!(
            item["count"].as_u64(),
            Some(lines),
            "manifest count of {ty}"
        );
        out.push((ty, url, body));
    }
    out
}

/// (type, id) → occurrences, from NDJSON bodies.
pub fn multiset<'a>(bodies: impl Iterator<Item = &'a [u8]>) -> BTreeMap<(String, String), u32> {
    let mut m = BTreeMap::new();
    for body in bodies {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).expect("every line is JSON");
            let key = (
                v["resourceType"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            );
            *m.entry(key).or_insert(0) += 1;
        }
    }
    m
}

/// The multiset of a source directory's resources.
pub fn source_multiset(dir: &Path, skip_group: bool) -> BTreeMap<(String, String), u32> {
    let mut bodies = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if skip_group && p.file_name().unwrap() == "Group.ndjson" {
            continue;
        }
        bodies.push(std::fs::read(p).unwrap());
    }
    multiset(bodies.iter().map(|b| b.as_slice()))
}

/// The real third-party FHIR search engine (medplum's in-memory repository
/// behind tests/fhir-fixture/server.mjs), loaded with `data`. Killed on drop.
pub struct FhirFixture {
    child: tokio::process::Child,
    /// Its FHIR base URL.
    pub base: String,
}

impl FhirFixture {
    pub async fn start(data: &Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-fixture/server.mjs");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fhir-fixture/node_modules/@medplum/fhir-router")
                .exists(),
            "run `npm ci --prefix tests/fhir-fixture` first (scripts/test.sh does)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .arg("--data")
            .arg(data)
            .arg("--port")
            .arg("0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run the FHIR fixture");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("fixture did not start in time")
            .unwrap()
            .expect("fixture exited before listening");
        let base = line
            .strip_prefix("listening on ")
            .expect("listening line")
            .trim()
            .to_string();
        FhirFixture { child, base }
    }

    /// Upstream request counters.
    pub async fn stats(&self) -> Value {
        http()
            .get(format!("{}/__stats", self.base.trim_end_matches("/fhir")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for FhirFixture {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs queued chain steps until none are left, playing the chunk-worker; a
/// failed step is delivered again, as Lambda retries a failed async
/// invocation. Returns (steps, retries).
pub async fn drain(
    stack: &Stack,
    svc: &bulk_export_core::ports::services::ExportServices,
) -> (u64, u64) {
    let (mut steps, mut retries) = (0, 0);
    while let Some(ev) = stack.queue.try_next().await {
        steps += 1;
        let mut attempts = 0;
        while let Err(e) = bulk_export_core::worker::step::run_step(svc, &ev, None).await {
            attempts += 1;
            retries += 1;
            assert!(attempts < 50, "step {ev:?} never succeeded: {e}");
        }
    }
    (steps, retries)
}

/// A generated NDJSON dataset of `patients` and a running stack over it
/// (`workers` step workers; 0 lets the test run steps itself). The
/// directory lives as long as the returned `TempDir`.
pub async fn ndjson_stack(
    prefix: &str,
    patients: u64,
    seed: u64,
    config: ExportConfig,
    workers: usize,
) -> (TempDir, PathBuf, Stack) {
    let dir = TempDir::new(prefix);
    let src = dir.0.join("src");
    bulk_export_testkit::generate::generate(&src, patients, seed).unwrap();
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(src.clone()),
        config,
        workers,
    )
    .await;
    (dir, src, stack)
}

/// A `moto_server` of its own (SQS, SSM …), from the `.venv-test` that
/// scripts/test.sh installs. Killed on drop.
pub struct Moto {
    _child: tokio::process::Child,
    /// Its endpoint URL.
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Self {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run ./scripts/test.sh, which installs moto[server] there",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..150 {
            if let Ok(r) = http().get(format!("{endpoint}/moto-api/")).send().await
                && r.status().is_success()
            {
                return Moto {
                    _child: child,
                    endpoint,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not answer on {endpoint}");
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .endpoint_url(&self.endpoint)
                .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                    "testing", "testing", None, None, "moto",
                ))
                .build(),
        )
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::from_conf(
            aws_sdk_ssm::Config::builder()
                .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
                .region(aws_sdk_ssm::config::Region::new("us-east-1"))
                .endpoint_url(&self.endpoint)
                .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                    "testing", "testing", None, None, "moto",
                ))
                .build(),
        )
    }
}

/// A system-level request for a page of Observations at `cursor`.
pub fn observation_page(
    cursor: Option<&str>,
    page_size: usize,
    read_ahead_below: usize,
) -> bulk_export_core::ports::source::PageRequest<'_> {
    bulk_export_core::ports::source::PageRequest {
        resource_type: "Observation",
        cursor,
        since: None,
        until: time::OffsetDateTime::now_utc(),
        type_filters: &[],
        page_size,
        scope: &bulk_export_core::model::PatientScope::None,
        batch: None,
        read_ahead_below,
    }
}
