//! One measured export, driven like a Bulk Data client: kick-off, status
//! polls until the manifest, then the chain and file records read back for
//! what the export did (chains, steps, files, per-type completion times).

use crate::MB;
use crate::dataset::Summary;
use crate::error::BenchError;
use bulk_export::aws_clients::Endpoints;
use bulk_export::http_server::no_auth;
use bulk_export::stack::{SourceSpec, Stack, StackOptions, start};
use bulk_export_core::model::config::ExportConfig;
use bulk_export_core::model::{ChainState, FileKind};
use bulk_export_core::ports::services::ExportServices;
use bulk_export_testkit::fixture_server::{FixtureHandle, FixtureStats};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Status poll and chain sampling interval: the resolution of every export
/// time and per-type completion time.
pub const POLL: Duration = Duration::from_millis(50);
/// An export still running after this is reported as failed.
const EXPORT_LIMIT: Duration = Duration::from_secs(900);

/// Starts an exporter stack on 127.0.0.1 with its data in `dir`: embedded
/// DynamoDB and S3 unless `endpoints` points elsewhere (the counting proxies).
pub async fn start_stack(
    dir: &Path,
    source: SourceSpec,
    workers: usize,
    endpoints: Option<Endpoints>,
    config: ExportConfig,
) -> Result<Stack, BenchError> {
    std::fs::create_dir_all(dir).map_err(BenchError::io(format!("creating {}", dir.display())))?;
    let (endpoints, use_embedded) = match endpoints {
        Some(e) => (e, false),
        None => (Endpoints::default(), true),
    };
    Ok(start(StackOptions {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_path_buf(),
        source,
        base_url: None,
        endpoints,
        use_embedded,
        config,
        workers,
        stall_timeout: Duration::from_secs(600),
        auth: no_auth(),
    })
    .await?)
}

/// What one measured export asks for and with which settings.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Kick-off query string (empty: every type).
    pub query: String,
    /// Exporter settings.
    pub config: ExportConfig,
}

impl Shape {
    /// Only Observation, as one chain (`max_partitions = 1`).
    pub fn observation_one_chain() -> Self {
        Self {
            query: "_type=Observation".into(),
            config: ExportConfig {
                max_partitions: 1,
                ..ExportConfig::default()
            },
        }
    }

    /// Only Observation, split into up to 8 partitions of about
    /// `resources / 8` each.
    pub fn observation_partitioned(resources: u64) -> Self {
        Self {
            query: "_type=Observation".into(),
            config: ExportConfig {
                partition_target: resources.div_ceil(8),
                max_partitions: 8,
                ..ExportConfig::default()
            },
        }
    }
}

/// One measured export (or the median of several).
#[derive(Debug, Clone, Default)]
pub struct ExportRun {
    pub label: String,
    pub workers: usize,
    /// Seconds from kick-off until the manifest.
    pub elapsed: f64,
    pub resources: u64,
    /// NDJSON bytes written.
    pub bytes: u64,
    /// type → (resources, bytes, seconds from kick-off until its chains finished)
    pub per_type: BTreeMap<String, (u64, u64, f64)>,
    pub files: usize,
    pub chains: usize,
    /// Chunk-worker steps over all chains.
    pub steps: u64,
    /// Entries of the manifest's `error` array.
    pub errors: usize,
    /// `yes`, `not checked`, or what differed from the dataset.
    pub verified: String,
    /// The fixture's counters for this export (default for NDJSON sources).
    pub upstream: FixtureStats,
    /// Fastest and slowest of the repetitions, seconds.
    pub spread: (f64, f64),
    pub repeats: usize,
}

impl ExportRun {
    /// Resources per second.
    pub fn rps(&self) -> f64 {
        self.resources as f64 / self.elapsed.max(1e-9)
    }
    /// NDJSON MB (10^6 bytes) per second.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / MB / self.elapsed.max(1e-9)
    }
    /// Marks a single measurement: its spread is itself.
    pub fn single(mut self, label: &str, workers: usize) -> Self {
        self.label = label.to_string();
        self.workers = workers;
        self.spread = (self.elapsed, self.elapsed);
        self.repeats = 1;
        self
    }
}

/// Kick-off at `kick_base`, poll the status URL (rewritten to `poll_base`)
/// every [`POLL`] like a client, and watch chain records through `monitor`.
/// `expected` is the dataset the manifest's counts are checked against.
pub async fn drive_export(
    kick_base: &str,
    poll_base: &str,
    monitor: &ExportServices,
    expected: Option<&Summary>,
    query: &str,
) -> Result<ExportRun, BenchError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .map_err(BenchError::http("client"))?;
    let t0 = Instant::now();
    tracing::debug!("kick-off");
    let loc = kick_off(&http, kick_base, query).await?;
    let job_id = loc.rsplit('/').next().unwrap_or_default().to_string();
    let status_url = loc.replacen(kick_base, poll_base, 1);
    let (manifest, done_at) = await_manifest(&http, &status_url, monitor, &job_id, t0).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    tracing::debug!("manifest received");
    let mut run = tally(monitor, &job_id, &manifest, &done_at, elapsed).await?;
    run.verified = verify(expected, &manifest, run.errors);
    Ok(run)
}

/// Sends the kick-off; returns the status URL from `Content-Location`.
async fn kick_off(http: &reqwest::Client, base: &str, query: &str) -> Result<String, BenchError> {
    let resp = http
        .get(if query.is_empty() {
            format!("{base}/$export")
        } else {
            format!("{base}/$export?{query}")
        })
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .map_err(BenchError::http("kick-off"))?;
    if resp.status().as_u16() != 202 {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(BenchError::Exporter {
            what: "kick-off",
            status,
            body,
        });
    }
    Ok(resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or(BenchError::NoStatusUrl)?
        .to_string())
}

/// chain id → (resource type, seconds from kick-off until the chain was
/// first seen no longer running).
type ChainDone = BTreeMap<String, (String, f64)>;

/// Polls until the manifest arrives, sampling chain records before every poll.
async fn await_manifest(
    http: &reqwest::Client,
    status_url: &str,
    monitor: &ExportServices,
    job_id: &str,
    t0: Instant,
) -> Result<(Value, ChainDone), BenchError> {
    let mut done_at = ChainDone::new();
    loop {
        tokio::time::sleep(POLL).await;
        if let Ok(chains) = monitor.store.list_chains(job_id).await {
            for c in chains {
                if c.state != ChainState::Running && !done_at.contains_key(&c.chain_id) {
                    done_at.insert(c.chain_id, (c.resource_type, t0.elapsed().as_secs_f64()));
                }
            }
        }
        let resp = http
            .get(status_url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(BenchError::http("status"))?;
        match resp.status().as_u16() {
            200 => {
                let manifest = resp.json().await.map_err(BenchError::http("manifest"))?;
                return Ok((manifest, done_at));
            }
            202 | 429 => {}
            _ => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(BenchError::Exporter {
                    what: "status",
                    status,
                    body,
                });
            }
        }
        if t0.elapsed() > EXPORT_LIMIT {
            return Err(BenchError::ExportTimeout(EXPORT_LIMIT));
        }
    }
}

/// What the finished export did, from its chain and output file records.
async fn tally(
    monitor: &ExportServices,
    job_id: &str,
    manifest: &Value,
    done_at: &ChainDone,
    elapsed: f64,
) -> Result<ExportRun, BenchError> {
    let chains = monitor
        .store
        .list_chains(job_id)
        .await
        .map_err(BenchError::store)?;
    let files = monitor
        .store
        .list_files(job_id)
        .await
        .map_err(BenchError::store)?;
    let mut run = ExportRun {
        elapsed,
        chains: chains.len(),
        steps: chains.iter().map(|c| c.step).sum(),
        errors: manifest["error"].as_array().map_or(0, Vec::len),
        ..ExportRun::default()
    };
    for c in &chains {
        let t = done_at.get(&c.chain_id).map_or(elapsed, |(_, t)| *t);
        let e = run
            .per_type
            .entry(c.resource_type.clone())
            .or_insert((0, 0, 0.0));
        e.2 = e.2.max(t);
    }
    for f in files.iter().filter(|f| f.kind == FileKind::Output) {
        let e = run
            .per_type
            .entry(f.resource_type.clone())
            .or_insert((0, 0, elapsed));
        e.0 += f.count;
        e.1 += f.bytes;
        run.files += 1;
    }
    run.resources = run.per_type.values().map(|v| v.0).sum();
    run.bytes = run.per_type.values().map(|v| v.1).sum();
    Ok(run)
}

/// `yes` when the manifest's per-type counts equal the dataset's and it
/// lists no errors.
fn verify(expected: Option<&Summary>, manifest: &Value, errors: usize) -> String {
    let Some(exp) = expected else {
        return "not checked".into();
    };
    let mut manifest_counts: BTreeMap<String, u64> = BTreeMap::new();
    for o in manifest["output"].as_array().into_iter().flatten() {
        *manifest_counts
            .entry(o["type"].as_str().unwrap_or("?").to_string())
            .or_default() += o["count"].as_u64().unwrap_or(0);
    }
    let want: BTreeMap<String, u64> = exp.iter().map(|(t, (n, _))| (t.clone(), *n)).collect();
    if want == manifest_counts && errors == 0 {
        "yes".into()
    } else {
        format!("NO: manifest {manifest_counts:?}, errors {errors}")
    }
}

/// Where the exports of one scenario run and what they are checked against.
pub struct Target<'a> {
    /// Scratch directory; every repetition gets its own subdirectory.
    pub dir: &'a Path,
    pub source: SourceSpec,
    pub expected: &'a Summary,
    /// The fixture serving `source`, whose counters are reset and read per export.
    pub fixture: Option<&'a FixtureHandle>,
}

/// `repeat` exports, each on a fresh stack; the median by time, with the spread.
pub async fn export_runs(
    label: &str,
    target: &Target<'_>,
    (workers, shape): (usize, &Shape),
    repeat: usize,
) -> Result<ExportRun, BenchError> {
    let mut runs = Vec::new();
    for i in 0..repeat.max(1) {
        let d = target.dir.join(format!("rep-{i}"));
        runs.push(export_run(label, &d, target, (workers, shape)).await?);
    }
    runs.sort_by(|a, b| a.elapsed.total_cmp(&b.elapsed));
    let spread = (runs[0].elapsed, runs[runs.len() - 1].elapsed);
    let mut median = runs.swap_remove(runs.len() / 2);
    median.spread = spread;
    median.repeats = repeat.max(1);
    Ok(median)
}

/// One export on a fresh stack in `dir`, removed afterwards.
async fn export_run(
    label: &str,
    dir: &Path,
    target: &Target<'_>,
    (workers, shape): (usize, &Shape),
) -> Result<ExportRun, BenchError> {
    let stack = start_stack(
        dir,
        target.source.clone(),
        workers,
        None,
        shape.config.clone(),
    )
    .await?;
    if let Some(f) = target.fixture {
        f.reset_stats();
    }
    let mut run = drive_export(
        &stack.base_url,
        &stack.base_url,
        &stack.services,
        Some(target.expected),
        &shape.query,
    )
    .await?
    .single(label, workers);
    if let Some(f) = target.fixture {
        run.upstream = f.stats();
    }
    let _ = std::fs::remove_dir_all(dir);
    eprintln!(
        "  {label:<28} workers={workers} {:>7.2}s {:>9.0} res/s {:>6.1} MB/s verified={}",
        run.elapsed,
        run.rps(),
        run.mbps(),
        run.verified
    );
    Ok(run)
}
