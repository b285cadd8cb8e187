//! `bench`: an end-to-end benchmark of the exporter on the local runner stack
//! (embedded dynoxide + s3s-fs, in-process continuation) reading from the
//! in-process fixture FHIR server, everything on 127.0.0.1.
//!
//! `cargo run --release -p bulk-export-bench -- [--patients N] [--out bench/RESULTS.md]`

mod proxy;

use bulk_export::aws_clients::Endpoints;
use bulk_export::embedded::{LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, start_dynamodb, start_s3};
use bulk_export::http_server::{no_auth, serve};
use bulk_export::stack::{SourceSpec, Stack, StackOptions, build, start};
use bulk_export_core::config::ExportConfig;
use bulk_export_core::job::{ChainState, FileKind};
use bulk_export_core::ndjson_page::frame_search_bundle;
use bulk_export_core::services::ExportServices;
use bulk_export_testkit::fixture_server::{
    FixtureHandle, FixtureOptions, FixtureStats, start_fixture,
};
use bulk_export_testkit::generate::generate;
use clap::Parser;
use proxy::{Api, Counter, Counts, start_proxy};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Patients of the default dataset (about 50 MB of NDJSON).
const DEFAULT_PATIENTS: u64 = 1280;
const MB: f64 = 1e6;
/// Status poll and chain sampling interval.
const POLL: Duration = Duration::from_millis(50);

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "End-to-end benchmark of the FHIR Bulk Data exporter (loopback only)"
)]
struct Args {
    /// Patients in the large dataset (the RSS comparison also uses one 10x larger).
    #[arg(long, default_value_t = DEFAULT_PATIENTS)]
    patients: u64,
    /// Patients of the dataset whose Observations the one-chain comparison
    /// pages (long enough that a chain's fixed start and end costs do not
    /// dominate; default 4x `--patients`).
    #[arg(long)]
    chain_patients: Option<u64>,
    /// Report file (default: RESULTS.md next to the bench crate's Cargo.toml).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Scratch directory (default: a fresh one under the system temp dir, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Worker counts of the FHIR-source runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    workers: Vec<usize>,
    /// Worker counts of the NDJSON-source runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    ndjson_workers: Vec<usize>,
    /// Repetitions of every export and bare-client measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Per-page upstream latency of the latency scenario, milliseconds.
    #[arg(long, default_value_t = 30)]
    latency_ms: u64,
    /// Only measure one Observation chain against the bare client at the
    /// configured latency, print the ratio, and write no report (for tuning).
    #[arg(long)]
    chain_only: bool,
    /// Only measure the peak RSS of one-worker exports of the large and
    /// xlarge datasets, print them, and write no report (for tuning).
    #[arg(long)]
    rss_only: bool,
    /// Run as a measured child process (internal).
    #[arg(long, hide = true)]
    child: bool,
    /// Child: FHIR base URL to export from.
    #[arg(long, hide = true)]
    child_source: Option<String>,
    /// Child: workers.
    #[arg(long, hide = true, default_value_t = 4)]
    child_workers: usize,
    /// Child: data directory.
    #[arg(long, hide = true)]
    child_dir: Option<PathBuf>,
}

/// Per type: (resources, NDJSON bytes).
type Summary = BTreeMap<String, (u64, u64)>;

fn dataset_summary(dir: &Path) -> Result<Summary, String> {
    let mut out = Summary::new();
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        let Some(ty) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ndjson"))
        else {
            continue;
        };
        if ty == "Group" {
            continue;
        }
        let data = std::fs::read(&p).map_err(|e| e.to_string())?;
        let lines = data.iter().filter(|b| **b == b'\n').count() as u64;
        out.insert(ty.to_string(), (lines, data.len() as u64));
    }
    Ok(out)
}

fn totals(s: &Summary) -> (u64, u64) {
    s.values().fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

// ---------------------------------------------------------------- machine

fn read_proc(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    })
}

fn vm_hwm_kb() -> u64 {
    read_proc("/proc/self/status", "VmHWM")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine_info() -> String {
    let nproc = command_output("nproc", &[]);
    let model = read_proc("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let mem = read_proc("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".into());
    let kernel = command_output("uname", &["-sr"]);
    let rustc = command_output("rustc", &["--version"]);
    format!(
        "- nproc: {nproc}\n- CPU: {model}\n- memory: {mem}\n- kernel: {kernel}\n- {rustc}, release profile\n"
    )
}

// ---------------------------------------------------------------- stacks

async fn start_stack(
    dir: &Path,
    source: SourceSpec,
    workers: usize,
    endpoints: Option<Endpoints>,
    config: ExportConfig,
) -> Result<Stack, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let (endpoints, use_embedded) = match endpoints {
        Some(e) => (e, false),
        None => (Endpoints::default(), true),
    };
    start(StackOptions {
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
    .await
    .map_err(|e| e.to_string())
}

/// What one measured export asks for and with which settings.
#[derive(Debug, Clone, Default)]
struct Shape {
    /// Kick-off query string (empty: every type).
    query: String,
    /// Exporter settings.
    config: ExportConfig,
}

/// One measured export.
#[derive(Debug, Clone, Default)]
struct ExportRun {
    label: String,
    workers: usize,
    elapsed: f64,
    resources: u64,
    bytes: u64,
    /// type → (resources, bytes, seconds from kick-off until its chains finished)
    per_type: BTreeMap<String, (u64, u64, f64)>,
    files: usize,
    chains: usize,
    steps: u64,
    errors: usize,
    verified: String,
    upstream: FixtureStats,
    /// Fastest and slowest of the repetitions, seconds.
    spread: (f64, f64),
    repeats: usize,
}

impl ExportRun {
    fn rps(&self) -> f64 {
        self.resources as f64 / self.elapsed.max(1e-9)
    }
    fn mbps(&self) -> f64 {
        self.bytes as f64 / MB / self.elapsed.max(1e-9)
    }
}

/// Kick-off at `kick_base`, poll the status URL (rewritten to `poll_base`)
/// every 50 ms like a client, and watch chain records through `monitor`.
async fn drive_export(
    kick_base: &str,
    poll_base: &str,
    monitor: &ExportServices,
    expected: Option<&Summary>,
    query: &str,
) -> Result<ExportRun, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    tracing::debug!("kick-off");
    let resp = http
        .get(if query.is_empty() {
            format!("{kick_base}/$export")
        } else {
            format!("{kick_base}/$export?{query}")
        })
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .map_err(|e| format!("kick-off: {e}"))?;
    if resp.status().as_u16() != 202 {
        let s = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("kick-off answered {s}: {body}"));
    }
    let loc = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or("kick-off without Content-Location")?
        .to_string();
    let job_id = loc.rsplit('/').next().unwrap_or_default().to_string();
    let status_url = loc.replacen(kick_base, poll_base, 1);
    let mut done_at: BTreeMap<String, (String, f64)> = BTreeMap::new();
    let manifest: Value = loop {
        tokio::time::sleep(POLL).await;
        if let Ok(chains) = monitor.store.list_chains(&job_id).await {
            for c in chains {
                if c.state != ChainState::Running && !done_at.contains_key(&c.chain_id) {
                    done_at.insert(c.chain_id, (c.resource_type, t0.elapsed().as_secs_f64()));
                }
            }
        }
        let resp = http
            .get(&status_url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("status: {e}"))?;
        match resp.status().as_u16() {
            200 => break resp.json().await.map_err(|e| format!("manifest: {e}"))?,
            202 | 429 => {}
            s => {
                let body = resp.text().await.unwrap_or_default();
                return Err(format!("status answered {s}: {body}"));
            }
        }
        if t0.elapsed() > Duration::from_secs(900) {
            return Err("export did not finish in 15 minutes".into());
        }
    };
    let elapsed = t0.elapsed().as_secs_f64();
    tracing::debug!("manifest received");
    let chains = monitor
        .store
        .list_chains(&job_id)
        .await
        .map_err(|e| e.to_string())?;
    let files = monitor
        .store
        .list_files(&job_id)
        .await
        .map_err(|e| e.to_string())?;
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
    let mut manifest_counts: BTreeMap<String, u64> = BTreeMap::new();
    for o in manifest["output"].as_array().into_iter().flatten() {
        *manifest_counts
            .entry(o["type"].as_str().unwrap_or("?").to_string())
            .or_default() += o["count"].as_u64().unwrap_or(0);
    }
    run.verified = match expected {
        None => "not checked".into(),
        Some(exp) => {
            let want: BTreeMap<String, u64> =
                exp.iter().map(|(t, (n, _))| (t.clone(), *n)).collect();
            if want == manifest_counts && run.errors == 0 {
                "yes".into()
            } else {
                format!("NO: manifest {manifest_counts:?}, errors {}", run.errors)
            }
        }
    };
    Ok(run)
}

/// `repeat` exports, each on a fresh stack; the median by time, with the spread.
async fn export_runs(
    label: &str,
    dir: &Path,
    source: SourceSpec,
    (workers, shape): (usize, &Shape),
    expected: &Summary,
    fixture: Option<&FixtureHandle>,
    repeat: usize,
) -> Result<ExportRun, String> {
    let mut runs = Vec::new();
    for i in 0..repeat.max(1) {
        let d = dir.join(format!("rep-{i}"));
        runs.push(
            export_run(
                label,
                &d,
                source.clone(),
                (workers, shape),
                expected,
                fixture,
            )
            .await?,
        );
    }
    runs.sort_by(|a, b| a.elapsed.total_cmp(&b.elapsed));
    let spread = (runs[0].elapsed, runs[runs.len() - 1].elapsed);
    let mut median = runs.swap_remove(runs.len() / 2);
    median.spread = spread;
    median.repeats = repeat.max(1);
    Ok(median)
}

async fn export_run(
    label: &str,
    dir: &Path,
    source: SourceSpec,
    (workers, shape): (usize, &Shape),
    expected: &Summary,
    fixture: Option<&FixtureHandle>,
) -> Result<ExportRun, String> {
    let stack = start_stack(dir, source, workers, None, shape.config.clone()).await?;
    if let Some(f) = fixture {
        f.reset_stats();
    }
    let mut run = drive_export(
        &stack.base_url,
        &stack.base_url,
        &stack.services,
        Some(expected),
        &shape.query,
    )
    .await?;
    run.label = label.to_string();
    run.workers = workers;
    run.spread = (run.elapsed, run.elapsed);
    run.repeats = 1;
    if let Some(f) = fixture {
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

/// The fixture FHIR server over `dir`, its start error as a message.
async fn serve_fixture(dir: &Path, opts: FixtureOptions) -> Result<FixtureHandle, String> {
    start_fixture(dir, opts).await.map_err(|e| e.to_string())
}

/// `--chain-only`: one Observation chain vs the bare client at `--latency-ms`.
async fn chain_only(
    args: &Args,
    work: &Path,
    data: &Path,
    summary: &Summary,
    page_size: usize,
) -> Result<Option<String>, String> {
    let fixture = serve_fixture(
        data,
        FixtureOptions {
            latency: Duration::from_millis(args.latency_ms),
            ..FixtureOptions::default()
        },
    )
    .await?;
    let obs: Summary = summary
        .iter()
        .filter(|(t, _)| t.as_str() == "Observation")
        .map(|(t, v)| (t.clone(), *v))
        .collect();
    let bare = bare_median(
        fixture.base_url(),
        &["Observation".to_string()],
        page_size,
        false,
        args.repeat,
    )
    .await?;
    let shape = Shape {
        query: "_type=Observation".into(),
        config: ExportConfig {
            max_partitions: 1,
            ..ExportConfig::default()
        },
    };
    let source = SourceSpec::Fhir {
        base: fixture.base_url().to_string(),
        token: None,
    };
    let one = export_runs(
        "Observation, 1 chain",
        &work.join("run-chain-only"),
        source,
        (8, &shape),
        &obs,
        Some(&fixture),
        args.repeat,
    )
    .await?;
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(work);
    }
    eprintln!(
        "--chain-only (no report written): bare {:.3}s ({} pages), 1 chain {:.3}s, ratio {:.3}",
        bare.elapsed,
        bare.pages,
        one.elapsed,
        bare.elapsed / one.elapsed.max(1e-9)
    );
    Ok(None)
}

// ---------------------------------------------------------------- bare client

#[derive(Debug, Clone, Default)]
struct Bare {
    elapsed: f64,
    pages: u64,
    wire_bytes: u64,
}

fn next_link(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(8192)];
    let pat = br#""relation":"next","url":""#;
    let i = head.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let end = head[i..].iter().position(|b| *b == b'"')? + i;
    std::str::from_utf8(&head[i..end]).ok().map(str::to_string)
}

async fn page_type(
    http: &reqwest::Client,
    base: &str,
    ty: &str,
    count: usize,
) -> Result<(u64, u64), String> {
    let mut url = Some(format!("{base}/{ty}?_count={count}&_pretty=false"));
    let (mut pages, mut bytes) = (0u64, 0u64);
    while let Some(u) = url {
        let resp = http.get(&u).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{ty}: upstream answered {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        pages += 1;
        bytes += body.len() as u64;
        url = next_link(&body);
    }
    Ok((pages, bytes))
}

/// Pages every type through the fixture, discarding the bytes: one type after
/// another (`parallel` false) or all types at once.
async fn bare_client(
    base: &str,
    types: &[String],
    count: usize,
    parallel: bool,
) -> Result<Bare, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut out = Bare::default();
    if parallel {
        let mut set = tokio::task::JoinSet::new();
        for ty in types {
            let (http, base, ty) = (http.clone(), base.to_string(), ty.clone());
            set.spawn(async move { page_type(&http, &base, &ty, count).await });
        }
        while let Some(r) = set.join_next().await {
            let (p, b) = r.map_err(|e| e.to_string())??;
            out.pages += p;
            out.wire_bytes += b;
        }
    } else {
        for ty in types {
            let (p, b) = page_type(&http, base, ty, count).await?;
            out.pages += p;
            out.wire_bytes += b;
        }
    }
    out.elapsed = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The median of `repeat` bare-client measurements.
async fn bare_median(
    base: &str,
    types: &[String],
    count: usize,
    parallel: bool,
    repeat: usize,
) -> Result<Bare, String> {
    let mut all = Vec::new();
    for _ in 0..repeat.max(1) {
        all.push(bare_client(base, types, count, parallel).await?);
    }
    all.sort_by(|a, b| a.elapsed.total_cmp(&b.elapsed));
    Ok(all.swap_remove(all.len() / 2))
}

// ---------------------------------------------------------------- hot path

struct HotPath {
    bundle_bytes: usize,
    entries: u64,
    frame_bps: f64,
    memcpy_bps: f64,
}

fn hot_path(body: &[u8], ty: &str) -> Result<HotPath, String> {
    let entries = frame_search_bundle(body, ty)
        .map_err(|e| e.to_string())?
        .count;
    let budget = Duration::from_millis(1500);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < budget || n < 3 {
        let page = frame_search_bundle(black_box(body), ty);
        black_box(&page);
        n += 1;
    }
    let frame_bps = (n as f64 * body.len() as f64) / t.elapsed().as_secs_f64();
    let mut dst = vec![0u8; body.len()];
    let t = Instant::now();
    let mut m = 0u64;
    while t.elapsed() < budget || m < 3 {
        dst.copy_from_slice(black_box(body));
        black_box(&mut dst);
        m += 1;
    }
    let memcpy_bps = (m as f64 * body.len() as f64) / t.elapsed().as_secs_f64();
    Ok(HotPath {
        bundle_bytes: body.len(),
        entries,
        frame_bps,
        memcpy_bps,
    })
}

// ---------------------------------------------------------------- counted run

struct Counted {
    run: ExportRun,
    dynamo: Counts,
    s3: Counts,
}

/// An export whose DynamoDB and S3 traffic goes through counting proxies;
/// status polls and chain monitoring go to a second, unproxied stack on the
/// same table and bucket so they are not counted.
async fn counted_run(
    dir: &Path,
    fixture: &FixtureHandle,
    workers: usize,
    expected: &Summary,
) -> Result<Counted, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let dynamo_direct = start_dynamodb(Some(&dir.join("jobs.sqlite")))
        .await
        .map_err(|e| e.to_string())?;
    let s3_direct = start_s3(&dir.join("s3")).await.map_err(|e| e.to_string())?;
    let dc = Arc::new(Counter::default());
    let sc = Arc::new(Counter::default());
    let dynamo_proxy = start_proxy(dynamo_direct.clone(), Api::DynamoDb, dc.clone()).await?;
    let s3_proxy = start_proxy(s3_direct.clone(), Api::S3, sc.clone()).await?;
    let creds = Some((LOCAL_ACCESS_KEY.to_string(), LOCAL_SECRET_KEY.to_string()));
    let source = SourceSpec::Fhir {
        base: fixture.base_url().to_string(),
        token: None,
    };
    let counted = start_stack(
        dir,
        source.clone(),
        workers,
        Some(Endpoints {
            dynamodb: Some(dynamo_proxy),
            s3: Some(s3_proxy),
            static_credentials: creds.clone(),
        }),
        ExportConfig::default(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let poll_base = format!(
        "http://{}/fhir",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let poller = build(
        &StackOptions {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.to_path_buf(),
            source,
            base_url: Some(poll_base.clone()),
            endpoints: Endpoints {
                dynamodb: Some(dynamo_direct),
                s3: Some(s3_direct),
                static_credentials: creds,
            },
            use_embedded: false,
            config: ExportConfig::default(),
            workers: 0,
            stall_timeout: Duration::from_secs(600),
            auth: no_auth(),
        },
        poll_base.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(serve(listener, poller.services.clone(), no_auth()));
    fixture.reset_stats();
    let (d0, s0) = (dc.snapshot(), sc.snapshot());
    let mut run = drive_export(
        &counted.base_url,
        &poll_base,
        &poller.services,
        Some(expected),
        "",
    )
    .await?;
    let (d1, s1) = (dc.snapshot(), sc.snapshot());
    run.label = "FHIR, counted (via proxies)".into();
    run.workers = workers;
    run.spread = (run.elapsed, run.elapsed);
    run.repeats = 1;
    run.upstream = fixture.stats();
    let _ = std::fs::remove_dir_all(dir);
    eprintln!(
        "  counted run: {:.2}s, {} DynamoDB and {} S3 requests",
        run.elapsed,
        d1.since(&d0).total(),
        s1.since(&s0).total()
    );
    Ok(Counted {
        run,
        dynamo: d1.since(&d0),
        s3: s1.since(&s0),
    })
}

// ---------------------------------------------------------------- RSS children

#[derive(Debug, Clone, Default)]
struct ChildRss {
    patients: u64,
    workers: usize,
    resources: u64,
    bytes: u64,
    elapsed: f64,
    hwm_start_kb: u64,
    hwm_end_kb: u64,
}

/// Peak RSS of exports of the large dataset (served by `fixture`) and of
/// the xlarge one, 10x larger.
struct PeakRss {
    runs: Vec<ChildRss>,
    gen_secs: f64,
    n: u64,
    bytes: u64,
}

async fn peak_rss(
    args: &Args,
    work: &Path,
    fixture: &FixtureHandle,
    worker_counts: &[usize],
) -> Result<PeakRss, String> {
    // Both datasets fill many parts, so the comparison shows whether memory
    // grows with the data rather than with the part size.
    let xlarge_patients = args.patients * 10;
    let mut runs = Vec::new();
    let t = Instant::now();
    let xlarge_dir = work.join("xlarge");
    generate(&xlarge_dir, xlarge_patients, 2).map_err(|e| e.to_string())?;
    let gen_secs = t.elapsed().as_secs_f64();
    let (n, bytes) = totals(&dataset_summary(&xlarge_dir)?);
    for &workers in worker_counts {
        runs.push(rss_child(fixture, &work.join("child-large"), args.patients, workers).await?);
    }
    {
        let xlarge_fixture = serve_fixture(&xlarge_dir, FixtureOptions::default()).await?;
        for &workers in worker_counts {
            runs.push(
                rss_child(
                    &xlarge_fixture,
                    &work.join("child-xlarge"),
                    xlarge_patients,
                    workers,
                )
                .await?,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&xlarge_dir);
    for r in &runs {
        eprintln!(
            "  child {} patients, {} workers: {} resources, VmHWM {} kB (after start {} kB)",
            r.patients, r.workers, r.resources, r.hwm_end_kb, r.hwm_start_kb
        );
    }
    Ok(PeakRss {
        runs,
        gen_secs,
        n,
        bytes,
    })
}

/// The RSS target: three parts plus 64 MB, in MiB.
fn rss_bound_mib(cfg: &ExportConfig) -> f64 {
    (3 * cfg.part_size) as f64 / (1024.0 * 1024.0) + 64e6 / (1024.0 * 1024.0)
}

/// (large, xlarge) measurements with the same worker count.
fn rss_pairs(rss: &[ChildRss]) -> Vec<(&ChildRss, &ChildRss)> {
    rss.iter()
        .filter(|s| {
            !rss.iter()
                .any(|o| o.workers == s.workers && o.bytes < s.bytes)
        })
        .filter_map(|s| {
            rss.iter()
                .find(|l| l.workers == s.workers && l.bytes > s.bytes)
                .map(|l| (s, l))
        })
        .collect()
}

async fn child_main(args: &Args) -> Result<(), String> {
    let base = args
        .child_source
        .clone()
        .ok_or("--child-source is required")?;
    let dir = args.child_dir.clone().ok_or("--child-dir is required")?;
    let stack = start_stack(
        &dir,
        SourceSpec::Fhir { base, token: None },
        args.child_workers,
        None,
        ExportConfig::default(),
    )
    .await?;
    let hwm_start = vm_hwm_kb();
    let run = drive_export(&stack.base_url, &stack.base_url, &stack.services, None, "").await?;
    let hwm_end = vm_hwm_kb();
    println!(
        "BENCH_CHILD {}",
        json!({
            "resources": run.resources,
            "bytes": run.bytes,
            "elapsed": run.elapsed,
            "hwm_start_kb": hwm_start,
            "hwm_end_kb": hwm_end,
        })
    );
    Ok(())
}

async fn rss_child(
    fixture: &FixtureHandle,
    dir: &Path,
    patients: u64,
    workers: usize,
) -> Result<ChildRss, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(exe)
        .arg("--child")
        .arg("--child-source")
        .arg(fixture.base_url())
        .arg("--child-workers")
        .arg(workers.to_string())
        .arg("--child-dir")
        .arg(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("spawning child: {e}"))?;
    let _ = std::fs::remove_dir_all(dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_CHILD "))
        .ok_or_else(|| format!("child failed ({}): {stdout}", out.status))?;
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    Ok(ChildRss {
        patients,
        workers,
        resources: v["resources"].as_u64().unwrap_or(0),
        bytes: v["bytes"].as_u64().unwrap_or(0),
        elapsed: v["elapsed"].as_f64().unwrap_or(0.0),
        hwm_start_kb: v["hwm_start_kb"].as_u64().unwrap_or(0),
        hwm_end_kb: v["hwm_end_kb"].as_u64().unwrap_or(0),
    })
}

// ---------------------------------------------------------------- report

fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{s:.3}")
    } else {
        format!("{s:.2}")
    }
}

fn export_table(runs: &[ExportRun], bare_rps: f64, bare_par_rps: f64) -> String {
    let mut t = String::from(
        "| run | workers | time (s), median | min–max (s) | resources/s | MB/s | ÷ bare client (1 stream) | ÷ bare client (all types in parallel) | chains | steps | files | upstream searches | verified |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let searches: u64 = r.upstream.searches.values().sum();
        let ratio = |b: f64| {
            if b > 0.0 && r.upstream.requests > 0 {
                format!("{:.2}", r.rps() / b)
            } else {
                "n/a".into()
            }
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {}–{} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.workers,
            fmt_secs(r.elapsed),
            fmt_secs(r.spread.0),
            fmt_secs(r.spread.1),
            r.rps(),
            r.mbps(),
            ratio(bare_rps),
            ratio(bare_par_rps),
            r.chains,
            r.steps,
            r.files,
            if r.upstream.requests > 0 {
                searches.to_string()
            } else {
                "-".into()
            },
            r.verified
        );
    }
    t
}

fn per_type_table(runs: &[ExportRun]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut t = String::from("| type | resources | MB |");
    let mut sep = String::from("|---|---:|---:|");
    for r in runs {
        let _ = write!(t, " {} ×{} res/s | MB/s |", short(&r.label), r.workers);
        sep.push_str("---:|---:|");
    }
    t.push('\n');
    t.push_str(&sep);
    t.push('\n');
    for (ty, (n, b, _)) in &first.per_type {
        let _ = write!(t, "| {ty} | {n} | {:.2} |", *b as f64 / MB);
        for r in runs {
            match r.per_type.get(ty) {
                Some((n, b, secs)) => {
                    let _ = write!(
                        t,
                        " {:.0} | {:.1} |",
                        *n as f64 / secs.max(1e-9),
                        *b as f64 / MB / secs.max(1e-9)
                    );
                }
                None => t.push_str(" - | - |"),
            }
        }
        t.push('\n');
    }
    let _ = write!(
        t,
        "| **total** | {} | {:.2} |",
        first.resources,
        first.bytes as f64 / MB
    );
    for r in runs {
        let _ = write!(t, " **{:.0}** | **{:.1}** |", r.rps(), r.mbps());
    }
    t.push('\n');
    t
}

fn short(label: &str) -> &str {
    label.split(',').next().unwrap_or(label)
}

struct Prices;
impl Prices {
    const LAMBDA_PER_REQ: f64 = 0.20 / 1e6;
    const DDB_WRITE_UNIT: f64 = 1.25 / 1e6;
    const DDB_READ_UNIT: f64 = 0.25 / 1e6;
    const S3_PUT: f64 = 0.005 / 1000.0;
    const S3_GET: f64 = 0.0004 / 1000.0;
}

const S3_PUT_CLASS: &[&str] = &[
    "PutObject",
    "UploadPart",
    "CreateMultipartUpload",
    "CompleteMultipartUpload",
    "ListObjectsV2",
    "ListObjects",
    "ListParts",
    "ListMultipartUploads",
    "CreateBucket",
    "PutBucketLifecycleConfiguration",
    "DeleteObjects",
];
const S3_GET_CLASS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "GetBucketLifecycleConfiguration",
];

fn requests_section(c: &Counted) -> String {
    let per_m = 1e6 / c.run.resources.max(1) as f64;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Measured on one system export of {} resources ({} chains, {} workers, {:.2} s{}) whose \
         DynamoDB and S3 requests went through counting proxies on 127.0.0.1 (one request = one \
         proxied HTTP request, classified by `X-Amz-Target` or by S3 method/path/query). Status polls \
         and chain monitoring used a second, unproxied stack on the same table and bucket, so they \
         are not counted; kick-off is. Continuation (\"Lambda invoke\") requests are **derived** from \
         the chain records, counting one chunk-worker invocation per chain step plus the kick-off \
         function: an upper bound, since one invocation may run several steps \
         (`parts_per_invocation`). Upstream \
         requests are the fixture's own counters.\n",
        c.run.resources,
        c.run.chains,
        c.run.workers,
        c.run.elapsed,
        if c.run.verified == "yes" {
            ", output verified"
        } else {
            ""
        }
    );
    t.push_str("| service | operation | requests | per million resources |\n|---|---|---:|---:|\n");
    for (svc, counts) in [("DynamoDB", &c.dynamo), ("S3", &c.s3)] {
        for (op, n) in &counts.ops {
            let _ = writeln!(t, "| {svc} | {op} | {n} | {:.1} |", *n as f64 * per_m);
        }
        let _ = writeln!(
            t,
            "| {svc} | **all** | **{}** | **{:.1}** |",
            counts.total(),
            counts.total() as f64 * per_m
        );
    }
    let invokes = c.run.steps + 1;
    let _ = writeln!(
        t,
        "| Lambda (derived) | chunk-worker steps + kick-off | {invokes} | {:.1} |",
        invokes as f64 * per_m
    );
    let up = &c.run.upstream;
    let searches: u64 = up.searches.values().sum();
    let counts: u64 = up.counts.values().sum();
    let _ = writeln!(
        t,
        "| upstream FHIR | page searches | {searches} | {:.1} |",
        searches as f64 * per_m
    );
    let _ = writeln!(
        t,
        "| upstream FHIR | `_summary=count` + metadata + reads | {} | {:.1} |",
        counts + up.metadata + up.reads,
        (counts + up.metadata + up.reads) as f64 * per_m
    );
    let _ = writeln!(
        t,
        "| upstream FHIR | **all** | **{}** | **{:.1}** |\n",
        up.requests,
        up.requests as f64 * per_m
    );

    let s3_put: u64 = S3_PUT_CLASS.iter().map(|o| c.s3.get(o)).sum();
    let s3_get: u64 = S3_GET_CLASS.iter().map(|o| c.s3.get(o)).sum();
    let downloads = c.run.files as u64;
    let lambda_cost = invokes as f64 * per_m * Prices::LAMBDA_PER_REQ;
    let wcost = c.dynamo.write_units * per_m * Prices::DDB_WRITE_UNIT;
    let rcost = c.dynamo.read_units * per_m * Prices::DDB_READ_UNIT;
    let put_cost = s3_put as f64 * per_m * Prices::S3_PUT;
    let get_cost = (s3_get + downloads) as f64 * per_m * Prices::S3_GET;
    let total = lambda_cost + wcost + rcost + put_cost + get_cost;
    debug_assert!((total - request_cost(c)).abs() < 1e-12);
    let _ = writeln!(
        t,
        "Request cost per million exported resources at AWS list prices (us-east-1): Lambda \
         $0.20 per million requests; DynamoDB on-demand $1.25 per million write request units and \
         $0.25 per million read request units; S3 PUT/COPY/POST/LIST (incl. UploadPart, \
         Create/CompleteMultipartUpload) $0.005 per 1,000 and GET/HEAD $0.0004 per 1,000. \
         DynamoDB units are estimated from the proxied bodies: writes 1 WRU per started KB of the \
         request (×2 per item in TransactWriteItems), reads 1 RRU per started 4 KB of the response \
         (the store reads strongly consistently). Not included: Lambda GB-seconds, S3 storage and \
         data transfer, API Gateway, and the client's status polls.\n"
    );
    t.push_str(
        "| item | quantity per million resources | cost per million resources |\n|---|---:|---:|\n",
    );
    let _ = writeln!(
        t,
        "| Lambda invocations | {:.1} | ${lambda_cost:.6} |",
        invokes as f64 * per_m
    );
    let _ = writeln!(
        t,
        "| DynamoDB write units ({} write requests) | {:.1} | ${wcost:.6} |",
        ["PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"]
            .iter()
            .map(|o| c.dynamo.get(o))
            .sum::<u64>(),
        c.dynamo.write_units * per_m
    );
    let _ = writeln!(
        t,
        "| DynamoDB read units ({} read requests) | {:.1} | ${rcost:.6} |",
        ["GetItem", "Query", "Scan"]
            .iter()
            .map(|o| c.dynamo.get(o))
            .sum::<u64>(),
        c.dynamo.read_units * per_m
    );
    let _ = writeln!(
        t,
        "| S3 PUT-class requests | {:.1} | ${put_cost:.6} |",
        s3_put as f64 * per_m
    );
    let _ = writeln!(
        t,
        "| S3 GET-class requests (incl. {downloads} client downloads, one per file) | {:.1} | ${get_cost:.6} |",
        (s3_get + downloads) as f64 * per_m
    );
    let _ = writeln!(t, "| **total** | | **${total:.6}** |");
    let _ = writeln!(
        t,
        "\nCross-check: {} chunk-worker steps in the chain records vs {} UploadPart requests \
         counted (a step that uploads nothing, e.g. the last one of an exhausted chain, sends none).",
        c.run.steps,
        c.s3.get("UploadPart")
    );
    t
}

/// Total request cost per million resources (see `requests_section`).
fn request_cost(c: &Counted) -> f64 {
    let per_m = 1e6 / c.run.resources.max(1) as f64;
    let s3_put: u64 = S3_PUT_CLASS.iter().map(|o| c.s3.get(o)).sum();
    let s3_get: u64 = S3_GET_CLASS.iter().map(|o| c.s3.get(o)).sum::<u64>() + c.run.files as u64;
    per_m
        * ((c.run.steps + 1) as f64 * Prices::LAMBDA_PER_REQ
            + c.dynamo.write_units * Prices::DDB_WRITE_UNIT
            + c.dynamo.read_units * Prices::DDB_READ_UNIT
            + s3_put as f64 * Prices::S3_PUT
            + s3_get as f64 * Prices::S3_GET)
}

/// (seconds at 1 worker, seconds at 8 workers) of the runs, if both exist.
fn speed_up(runs: &[ExportRun]) -> Option<(f64, f64)> {
    let at = |w: usize| runs.iter().find(|r| r.workers == w).map(|r| r.elapsed);
    Some((at(1)?, at(8)?))
}

// ---------------------------------------------------------------- main

async fn parent_main(args: Args) -> Result<Option<String>, String> {
    let started = Instant::now();
    let work = match &args.work_dir {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("bulk-export-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let page_size = ExportConfig::default().page_size;
    let cfg = ExportConfig::default();
    let extra: String = std::env::args().skip(1).map(|a| format!(" {a}")).collect();
    let command = if extra.is_empty() {
        "cargo run --release -p bulk-export-bench".to_string()
    } else {
        format!("cargo run --release -p bulk-export-bench --{extra}")
    };
    let date = command_output("date", &["-u"]);
    let machine = machine_info();

    // 1. Datasets.
    let xlarge_patients = args.patients * 10;
    let chain_patients = args.chain_patients.unwrap_or(args.patients * 4);
    eprintln!(
        "generating datasets ({} patients; {xlarge_patients} for RSS; {chain_patients} for one chain)…",
        args.patients
    );
    let large_dir = work.join("large");
    let chain_dir = work.join("chain");
    let t = Instant::now();
    generate(&large_dir, args.patients, 1).map_err(|e| e.to_string())?;
    let gen_secs = t.elapsed().as_secs_f64();
    generate(&chain_dir, chain_patients, 3).map_err(|e| e.to_string())?;
    let large = dataset_summary(&large_dir)?;
    let chain_data = dataset_summary(&chain_dir)?;
    let (large_n, large_b) = totals(&large);
    let types: Vec<String> = large.keys().cloned().collect();
    if args.chain_only {
        return chain_only(&args, &work, &chain_dir, &chain_data, page_size).await;
    }

    // 2. Fixture.
    let fixture = serve_fixture(&large_dir, FixtureOptions::default()).await?;
    if args.rss_only {
        peak_rss(&args, &work, &fixture, &[1]).await?;
        return Ok(None);
    }
    eprintln!(
        "fixture on {} with {large_n} resources ({:.1} MB)",
        fixture.base_url(),
        large_b as f64 / MB
    );

    // Hot path, on a real page of the fixture.
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?
        .get(format!(
            "{}/Observation?_count={page_size}",
            fixture.base_url()
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let hot = hot_path(&body, "Observation")?;
    eprintln!(
        "hot path: frame {:.0} MB/s, memcpy {:.0} MB/s",
        hot.frame_bps / MB,
        hot.memcpy_bps / MB
    );

    // 3. Bare client.
    fixture.reset_stats();
    let bare = bare_median(fixture.base_url(), &types, page_size, false, args.repeat).await?;
    let bare_par = bare_median(fixture.base_url(), &types, page_size, true, args.repeat).await?;
    let bare_rps = large_n as f64 / bare.elapsed;
    let bare_par_rps = large_n as f64 / bare_par.elapsed;
    eprintln!(
        "bare client: {:.2}s ({:.0} res/s); all types in parallel {:.2}s ({:.0} res/s)",
        bare.elapsed, bare_rps, bare_par.elapsed, bare_par_rps
    );

    // 4. Exports.
    let system = Shape::default();
    let mut runs = Vec::new();
    for &w in &args.workers {
        let source = SourceSpec::Fhir {
            base: fixture.base_url().to_string(),
            token: None,
        };
        runs.push(
            export_runs(
                "FHIR source",
                &work.join(format!("run-fhir-{w}")),
                source,
                (w, &system),
                &large,
                Some(&fixture),
                args.repeat,
            )
            .await?,
        );
    }
    for &w in &args.ndjson_workers {
        runs.push(
            export_runs(
                "NDJSON source",
                &work.join(format!("run-ndjson-{w}")),
                SourceSpec::Ndjson(large_dir.clone()),
                (w, &system),
                &large,
                None,
                args.repeat,
            )
            .await?,
        );
    }

    // 7. Request counts.
    let counted = counted_run(&work.join("run-counted"), &fixture, 4, &large).await?;

    // 6. Peak RSS in fresh child processes.
    let peak = peak_rss(&args, &work, &fixture, &[1, 4]).await?;
    let (rss, xlarge_gen_secs, xlarge_n, xlarge_b) = (peak.runs, peak.gen_secs, peak.n, peak.bytes);
    let (chain_n, chain_b) = totals(&chain_data);
    // 9a. One chain against the bare client (0 ms), Observation only, on the
    // chain dataset.
    let obs_types = vec!["Observation".to_string()];
    let obs: Summary = chain_data
        .iter()
        .filter(|(t, _)| t.as_str() == "Observation")
        .map(|(t, v)| (t.clone(), *v))
        .collect();
    let (obs_n, obs_b) = totals(&obs);
    let one_chain = Shape {
        query: "_type=Observation".into(),
        config: ExportConfig {
            max_partitions: 1,
            ..ExportConfig::default()
        },
    };
    let split = Shape {
        query: "_type=Observation".into(),
        config: ExportConfig {
            partition_target: obs_n.div_ceil(8),
            max_partitions: 8,
            ..ExportConfig::default()
        },
    };
    drop(fixture);
    let chain_fast = serve_fixture(&chain_dir, FixtureOptions::default()).await?;
    let fast_source = SourceSpec::Fhir {
        base: chain_fast.base_url().to_string(),
        token: None,
    };
    let obs_fast = ChainScenario {
        latency_ms: 0,
        bare: bare_median(
            chain_fast.base_url(),
            &obs_types,
            page_size,
            false,
            args.repeat,
        )
        .await?,
        one: export_runs(
            "Observation, 1 chain",
            &work.join("run-obs-one-fast"),
            fast_source.clone(),
            (8, &one_chain),
            &obs,
            Some(&chain_fast),
            args.repeat,
        )
        .await?,
        split: export_runs(
            "Observation, 8 partitions",
            &work.join("run-obs-split-fast"),
            fast_source,
            (8, &split),
            &obs,
            Some(&chain_fast),
            args.repeat,
        )
        .await?,
    };
    drop(chain_fast);

    // 8. Latency scenario.
    let slow = serve_fixture(
        &large_dir,
        FixtureOptions {
            latency: Duration::from_millis(args.latency_ms),
            ..FixtureOptions::default()
        },
    )
    .await?;
    let slow_bare = bare_median(slow.base_url(), &types, page_size, false, args.repeat).await?;
    eprintln!(
        "bare client at {} ms/page: {:.2}s",
        args.latency_ms, slow_bare.elapsed
    );
    let mut slow_runs = Vec::new();
    for &w in &args.workers {
        let source = SourceSpec::Fhir {
            base: slow.base_url().to_string(),
            token: None,
        };
        slow_runs.push(
            export_runs(
                &format!("FHIR source, {} ms/page", args.latency_ms),
                &work.join(format!("run-slow-{w}")),
                source,
                (w, &system),
                &large,
                Some(&slow),
                args.repeat,
            )
            .await?,
        );
    }
    drop(slow);
    // 9b. The same at the realistic latency.
    let slow = serve_fixture(
        &chain_dir,
        FixtureOptions {
            latency: Duration::from_millis(args.latency_ms),
            ..FixtureOptions::default()
        },
    )
    .await?;
    let slow_source = SourceSpec::Fhir {
        base: slow.base_url().to_string(),
        token: None,
    };
    let obs_slow = ChainScenario {
        latency_ms: args.latency_ms,
        bare: bare_median(slow.base_url(), &obs_types, page_size, false, args.repeat).await?,
        one: export_runs(
            &format!("Observation, 1 chain, {} ms", args.latency_ms),
            &work.join("run-obs-one-slow"),
            slow_source.clone(),
            (8, &one_chain),
            &obs,
            Some(&slow),
            args.repeat,
        )
        .await?,
        split: export_runs(
            &format!("Observation, 8 partitions, {} ms", args.latency_ms),
            &work.join("run-obs-split-slow"),
            slow_source,
            (8, &split),
            &obs,
            Some(&slow),
            args.repeat,
        )
        .await?,
    };
    drop(slow);

    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    let total_secs = started.elapsed().as_secs_f64();

    // 9. Report.
    let mut r = String::new();
    let _ = writeln!(r, "# Bulk export benchmark\n");
    let _ = writeln!(r, "- date: {date}");
    let _ = writeln!(r, "- command: `{command}`");
    let _ = writeln!(r, "- total bench runtime: {total_secs:.0} s\n");
    let best = runs
        .iter()
        .filter(|x| x.upstream.requests > 0)
        .max_by(|a, b| a.rps().total_cmp(&b.rps()));
    let _ = writeln!(r, "## Headline\n");
    if let Some(b) = best {
        let _ = writeln!(
            r,
            "- System export of {large_n} resources ({:.1} MB) from the fixture FHIR server: best \
             {:.0} resources/s, {:.1} MB/s ({} workers, median {:.2} s); upstream-bound ratio \
             {:.3} of the bare client{}.",
            large_b as f64 / MB,
            b.rps(),
            b.mbps(),
            b.workers,
            b.elapsed,
            b.rps() / bare_rps,
            if b.rps() / bare_rps < 0.5 {
                " (at 0 ms latency the exporter, not the upstream, is the limit)"
            } else {
                ""
            }
        );
    }
    for c in [&obs_slow, &obs_fast] {
        let _ = writeln!(
            r,
            "- One chain vs a bare client paging the same upstream (Observation, {} ms/page): \
             upstream-bound ratio **{:.2}**; split into {} partitions: {:.2}× faster than one chain.",
            c.latency_ms,
            c.ratio(),
            c.split.chains,
            c.speed_up()
        );
    }
    if let Some((one, eight)) = speed_up(&slow_runs) {
        let _ = writeln!(
            r,
            "- With {} ms upstream latency per page: 1 → 8 workers speeds the export up {:.2}× \
             ({one:.2} s → {eight:.2} s); one chain per type, so the Observation chain bounds it.",
            args.latency_ms,
            one / eight
        );
    }
    let _ = writeln!(
        r,
        "- Hot path: `frame_search_bundle` {:.0} MB/s vs memcpy {:.0} MB/s — memcpy is {:.0}× faster.",
        hot.frame_bps / MB,
        hot.memcpy_bps / MB,
        hot.memcpy_bps / hot.frame_bps
    );
    for (s, l) in rss_pairs(&rss) {
        let _ = writeln!(
            r,
            "- Peak RSS of the exporter process with {} worker{}: {:.1} MiB for {:.0} MB of data, \
             {:.1} MiB for {:.0} MB (data {:.1}×, RSS {:.2}×; bound 3 × part + 64 MB = {:.0} MiB).",
            s.workers,
            if s.workers == 1 { "" } else { "s" },
            s.hwm_end_kb as f64 / 1024.0,
            s.bytes as f64 / MB,
            l.hwm_end_kb as f64 / 1024.0,
            l.bytes as f64 / MB,
            l.bytes as f64 / s.bytes.max(1) as f64,
            l.hwm_end_kb as f64 / s.hwm_end_kb.max(1) as f64,
            rss_bound_mib(&cfg)
        );
    }
    let _ = writeln!(
        r,
        "- AWS request cost ≈ ${:.4} per million resources (Lambda requests + DynamoDB + S3 \
         requests at list prices; derived/estimated parts are described below).\n",
        request_cost(&counted)
    );
    let _ = writeln!(r, "## Machine\n\n{machine}");
    let _ = writeln!(
        r,
        "Everything runs in one process per measurement on 127.0.0.1 and shares the cores: the \
         fixture FHIR server (`bulk_export_testkit::fixture_server`), the exporter stack \
         (`bulk_export::stack::start`: HTTP API, in-process continuation with N worker tasks, \
         watchdog), embedded dynoxide (SQLite file) and s3s-fs (local files). Exporter settings: \
         `ExportConfig::default()` — page size (`_count`) {page_size}, part size {} MiB, file size \
         limit {} MiB. Each export is a system-level `$export` of every type, timed from kick-off \
         until the status URL returns the manifest, polled every {} ms; per-type times come from \
         chain records sampled at the same rate. Every export runs on a fresh stack (new embedded \
         servers and data directory); each export and bare-client measurement is repeated {} \
         times and the median is reported. MB = 10^6 bytes of NDJSON.\n",
        cfg.part_size / (1024 * 1024),
        cfg.max_file_size / (1024 * 1024),
        POLL.as_millis(),
        args.repeat.max(1)
    );
    let _ = writeln!(r, "## Datasets\n");
    let _ = writeln!(
        r,
        "| dataset | used for | patients | resources (excl. Group) | NDJSON MB |\n|---|---|---:|---:|---:|\n\
         | large | system exports, requests, RSS | {} | {large_n} | {:.1} |\n\
         | chain | one chain vs the upstream, partitions | {chain_patients} | {chain_n} | {:.1} |\n\
         | xlarge | RSS | {xlarge_patients} | {xlarge_n} | {:.1} |\n",
        args.patients,
        large_b as f64 / MB,
        chain_b as f64 / MB,
        xlarge_b as f64 / MB
    );
    let _ = writeln!(
        r,
        "Generating the large dataset took {gen_secs:.2} s, the xlarge one {xlarge_gen_secs:.2} s.\n"
    );
    let _ = writeln!(r, "## Hot path: framing a search Bundle vs memcpy\n");
    let _ = writeln!(
        r,
        "`bulk_export_core::ndjson_page::frame_search_bundle` on one real {page_size}-entry \
         Observation page of the fixture ({} bytes, {} entries), repeated for 1.5 s, vs \
         `copy_from_slice` of the same bytes for 1.5 s (measured in the bench binary; criterion \
         was not used).\n",
        hot.bundle_bytes, hot.entries
    );
    let _ = writeln!(
        r,
        "| operation | MB/s |\n|---|---:|\n| frame_search_bundle | {:.0} |\n| memcpy | {:.0} |\n\n**memcpy ÷ framing = {:.1}×** (framing runs at {:.1}% of memcpy speed).\n",
        hot.frame_bps / MB,
        hot.memcpy_bps / MB,
        hot.memcpy_bps / hot.frame_bps,
        100.0 * hot.frame_bps / hot.memcpy_bps
    );
    let _ = writeln!(r, "## Bare client (upstream bound)\n");
    let _ = writeln!(
        r,
        "A client that pages every type through the fixture (latency 0) with `_count={page_size}`, \
         following `next` links and discarding the bytes.\n"
    );
    let _ = writeln!(
        r,
        "| mode | time (s) | pages | resources/s | NDJSON MB/s | wire MB/s |\n|---|---:|---:|---:|---:|---:|"
    );
    for (name, b) in [
        ("one type after another (1 stream)", &bare),
        ("all types in parallel", &bare_par),
    ] {
        let _ = writeln!(
            r,
            "| {name} | {} | {} | {:.0} | {:.1} | {:.1} |",
            fmt_secs(b.elapsed),
            b.pages,
            large_n as f64 / b.elapsed,
            large_b as f64 / MB / b.elapsed,
            b.wire_bytes as f64 / MB / b.elapsed
        );
    }
    let _ = writeln!(r);
    let _ = writeln!(r, "## Exports (large dataset)\n");
    let _ = writeln!(
        r,
        "Upstream-bound ratio = exporter resources/s ÷ bare client resources/s (FHIR-source runs \
         only). One chain per resource type (the measured configuration has no partitioning \
         within a type), so at most {} chains run at once whatever the worker count.\n",
        types.len()
    );
    r.push_str(&export_table(&runs, bare_rps, bare_par_rps));
    let _ = writeln!(r, "\n### Per type\n");
    let _ = writeln!(
        r,
        "Per-type rate = the type's resources ÷ time from kick-off until its chain finished \
         (chains run concurrently, so per-type rates do not add up to the total).\n"
    );
    r.push_str(&per_type_table(&runs));
    let _ = writeln!(r, "\n## Requests and cost per million resources\n");
    r.push_str(&requests_section(&counted));
    let _ = writeln!(r, "\n## Peak RSS\n");
    let _ = writeln!(
        r,
        "Each dataset exported (system level, FHIR source) by a fresh child process of the bench \
         binary (`bench --child`), which holds the exporter stack with embedded dynoxide and \
         s3s-fs; the fixture server stays in the parent, so its copy of the data is not counted. \
         VmHWM from /proc/self/status after the stack started and after the manifest arrived. \
         One worker is what one chunk-worker Lambda invocation holds (the target bound is \
         3 × part size + 64 MB = {:.0} MiB); with 4 workers four steps run at once in the \
         process. Both datasets are many parts long, so with one worker a difference between them \
         is memory that grows with the data. With 4 workers the peak is set by how many steps \
         hold full parts at the same moment, each at most two parts and a page: in the large \
         dataset only Observation is longer than a part, in the xlarge one several types are, so \
         four steps can hold their parts at once there.\n",
        rss_bound_mib(&cfg)
    );
    let _ = writeln!(
        r,
        "| dataset | workers | patients | resources | NDJSON MB | time (s) | VmHWM after start (MiB) | VmHWM at end (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in &rss {
        let name = if c.patients == args.patients {
            "large"
        } else {
            "xlarge"
        };
        let _ = writeln!(
            r,
            "| {name} | {} | {} | {} | {:.1} | {} | {:.1} | {:.1} |",
            c.workers,
            c.patients,
            c.resources,
            c.bytes as f64 / MB,
            fmt_secs(c.elapsed),
            c.hwm_start_kb as f64 / 1024.0,
            c.hwm_end_kb as f64 / 1024.0
        );
    }
    for (s, l) in rss_pairs(&rss) {
        let _ = writeln!(
            r,
            "\n{} worker{}: data grew {:.1}×; peak RSS grew {:.2}× ({:+.1} MiB).",
            s.workers,
            if s.workers == 1 { "" } else { "s" },
            l.bytes as f64 / s.bytes.max(1) as f64,
            l.hwm_end_kb as f64 / s.hwm_end_kb.max(1) as f64,
            (l.hwm_end_kb as f64 - s.hwm_end_kb as f64) / 1024.0
        );
    }
    let _ = writeln!(r, "\n## Upstream latency {} ms per page\n", args.latency_ms);
    let _ = writeln!(
        r,
        "The fixture sleeps {} ms before answering every search page. Bare client (1 stream): \
         {:.2} s for {} pages. Same page size; one chain per type, so the Observation chain \
         ({} of {} resources) is a serial run of pages whatever the worker count.\n",
        args.latency_ms,
        slow_bare.elapsed,
        slow_bare.pages,
        large.get("Observation").map_or(0, |v| v.0),
        large_n
    );
    r.push_str(&export_table(
        &slow_runs,
        large_n as f64 / slow_bare.elapsed,
        0.0,
    ));
    let speedup = speed_up(&slow_runs);
    if let Some((one, eight)) = speedup {
        let _ = writeln!(
            r,
            "\n**Speed-up 1 → 8 workers: {:.2}×** ({:.2} s → {:.2} s).",
            one / eight,
            one,
            eight
        );
    }
    let _ = writeln!(r, "\n### Per type at {} ms/page\n", args.latency_ms);
    r.push_str(&per_type_table(&slow_runs));
    r.push_str(&chain_section(
        &[&obs_fast, &obs_slow],
        obs_n,
        obs_b,
        page_size,
    ));
    Ok(Some(r))
}

/// One chain against the bare client, and the same type split into partitions.
struct ChainScenario {
    latency_ms: u64,
    bare: Bare,
    one: ExportRun,
    split: ExportRun,
}

impl ChainScenario {
    /// Exporter throughput ÷ bare-client throughput for one chain.
    fn ratio(&self) -> f64 {
        self.bare.elapsed / self.one.elapsed.max(1e-9)
    }
    /// One chain's time ÷ the partitioned export's time.
    fn speed_up(&self) -> f64 {
        self.one.elapsed / self.split.elapsed.max(1e-9)
    }
}

fn chain_section(rows: &[&ChainScenario], n: u64, bytes: u64, page_size: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n## One chain vs the upstream, and partitions\n\n\
         `_type=Observation` of the chain dataset ({n} resources, {:.1} MB), 8 workers. *Bare client*: one stream \
         paging `Observation?_count={page_size}` and discarding the bytes. *1 chain*: \
         `max_partitions = 1`, so the whole type is one sequential chain (kick-off to manifest, \
         including kick-off, the final file completion and the 50 ms status polling). \
         *Partitions*: `partition_target = {}`, `max_partitions = 8`: the first step probes \
         `_summary=count` over `_lastUpdated` ranges and splits the type into chains. \
         Upstream-bound ratio = bare-client time ÷ 1-chain time (target ≥ 0.9). The fixture's \
         latency applies to page searches only, not to the `_summary=count` probes, which a real \
         server also answers more slowly.\n",
        bytes as f64 / MB,
        n.div_ceil(8)
    );
    t.push_str(
        "| latency per page | bare client (s) | 1 chain (s) | **ratio** | partitions | partitioned (s) | speed-up | upstream searches (1 chain / partitioned) | verified |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for c in rows {
        let _ = writeln!(
            t,
            "| {} ms | {:.3} | {:.3} | **{:.2}** | {} | {:.3} | {:.2}× | {} / {} | {} / {} |",
            c.latency_ms,
            c.bare.elapsed,
            c.one.elapsed,
            c.ratio(),
            c.split.chains,
            c.split.elapsed,
            c.speed_up(),
            c.one.upstream.searches.values().sum::<u64>(),
            c.split.upstream.searches.values().sum::<u64>(),
            c.one.verified,
            c.split.verified
        );
    }
    t
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULK_EXPORT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dynoxide=error,s3s=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args = Args::parse();
    if args.child {
        return match child_main(&args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md"));
    match parent_main(args).await {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(report)) => {
            println!("{report}");
            if let Err(e) = std::fs::write(&out, &report) {
                eprintln!("cannot write {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
