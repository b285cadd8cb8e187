//! The full benchmark: every scenario in a fixed order, then the report.
//! The order matters: each fixture server holds a dataset in memory, so at
//! most one runs at a time besides the one being exported in a child.

use crate::MB;
use crate::cli::Args;
use crate::dataset::{Datasets, totals};
use crate::error::BenchError;
use crate::report::{Results, RunContext};
use crate::scenarios::one_chain::{self, Upstream};
use crate::scenarios::request_counts::counted_run;
use crate::scenarios::{framing, peak_rss, system_export, upstream_latency};
use bulk_export_core::model::config::ExportConfig;
use bulk_export_testkit::fixture_server::{FixtureOptions, start_fixture};
use std::path::Path;
use std::time::Instant;

/// Runs the mode `args` asks for; returns the report, or `None` for the
/// `--chain-only` and `--rss-only` modes, which only print to stderr.
pub async fn run(args: &Args) -> Result<Option<String>, BenchError> {
    let started = Instant::now();
    let work = match &args.work_dir {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("bulk-export-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)
        .map_err(BenchError::io(format!("creating {}", work.display())))?;
    let context = RunContext::capture();
    eprintln!(
        "generating datasets ({} patients; {} for RSS; {} for one chain)…",
        args.patients,
        args.xlarge_patients(),
        args.chain_patients()
    );
    let data = Datasets::generate(&work, args.patients, args.chain_patients())?;
    if args.chain_only {
        let page_size = ExportConfig::default().page_size;
        one_chain::chain_only(args, &work, &data, page_size).await?;
        return Ok(None);
    }
    if args.rss_only {
        let fixture = start_fixture(&data.large_dir, FixtureOptions::default())
            .await
            .map_err(BenchError::Fixture)?;
        peak_rss::measure(args, &work, &fixture, &[1]).await?;
        return Ok(None);
    }
    let report = measure_all(args, &work, &data, context, started).await?;
    Ok(Some(report))
}

/// Every scenario on the datasets, then the rendered report.
async fn measure_all(
    args: &Args,
    work: &Path,
    data: &Datasets,
    context: RunContext,
    started: Instant,
) -> Result<String, BenchError> {
    let config = ExportConfig::default();
    let page_size = config.page_size;
    let fixture = start_fixture(&data.large_dir, FixtureOptions::default())
        .await
        .map_err(BenchError::Fixture)?;
    let (large_n, large_b) = totals(&data.large);
    eprintln!(
        "fixture on {} with {large_n} resources ({:.1} MB)",
        fixture.base_url(),
        large_b as f64 / MB
    );
    let framing = framing::measure(&fixture, page_size).await?;
    let system = system_export::measure(args, work, data, &fixture, page_size).await?;
    let counted = counted_run(&work.join("run-counted"), &fixture, 4, &data.large).await?;
    let peak = peak_rss::measure(args, work, &fixture, &[1, 4]).await?;
    drop(fixture);
    let chain_fast = one_chain::measure(args, work, data, page_size, Upstream::Instant).await?;
    let latency = upstream_latency::measure(args, work, data, page_size).await?;
    let slow = Upstream::Slow(args.latency_ms);
    let chain_slow = one_chain::measure(args, work, data, page_size, slow).await?;
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(work);
    }
    let results = Results {
        args,
        context,
        total_secs: started.elapsed().as_secs_f64(),
        data,
        config,
        framing,
        system,
        counted,
        peak,
        latency,
        chain_fast,
        chain_slow,
    };
    Ok(results.render())
}
