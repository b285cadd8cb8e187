//! System exports of the large dataset when every upstream search page
//! takes `--latency-ms`: how far more workers hide the latency when each
//! type is one serial chain of pages.

use crate::bare_client::{Bare, bare_median};
use crate::cli::Args;
use crate::dataset::{Datasets, totals};
use crate::error::BenchError;
use crate::export::{ExportRun, Shape, Target, export_runs};
use crate::tables::{export_table, per_type_table};
use bulk_export::stack::SourceSpec;
use bulk_export_testkit::fixture_server::{FixtureOptions, start_fixture};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The bare client and the exports at one upstream latency.
pub struct UpstreamLatency {
    pub latency_ms: u64,
    /// One type after another.
    pub bare: Bare,
    /// One per `--workers` count.
    pub runs: Vec<ExportRun>,
    /// Resources of the large dataset.
    resources: u64,
    /// Observations in it: the longest chain.
    observations: u64,
}

/// Serves the large dataset with `--latency-ms` per page; measures the bare
/// client, then an export per worker count.
pub async fn measure(
    args: &Args,
    work: &Path,
    data: &Datasets,
    page_size: usize,
) -> Result<UpstreamLatency, BenchError> {
    let slow = start_fixture(
        &data.large_dir,
        FixtureOptions {
            latency: Duration::from_millis(args.latency_ms),
            ..FixtureOptions::default()
        },
    )
    .await
    .map_err(BenchError::Fixture)?;
    let bare = bare_median(
        slow.base_url(),
        &data.types(),
        page_size,
        false,
        args.repeat,
    )
    .await?;
    eprintln!(
        "bare client at {} ms/page: {:.2}s",
        args.latency_ms, bare.elapsed
    );
    let label = format!("FHIR source, {} ms/page", args.latency_ms);
    let mut runs = Vec::new();
    for &w in &args.workers {
        let target = Target {
            dir: &work.join(format!("run-slow-{w}")),
            source: SourceSpec::Fhir {
                base: slow.base_url().to_string(),
                token: None,
            },
            expected: &data.large,
            fixture: Some(&slow),
        };
        runs.push(export_runs(&label, &target, (w, &Shape::default()), args.repeat).await?);
    }
    Ok(UpstreamLatency {
        latency_ms: args.latency_ms,
        bare,
        runs,
        resources: totals(&data.large).0,
        observations: data.large.get("Observation").map_or(0, |v| v.0),
    })
}

/// (seconds at 1 worker, seconds at 8 workers) of the runs, if both exist.
fn speed_up(runs: &[ExportRun]) -> Option<(f64, f64)> {
    let at = |w: usize| runs.iter().find(|r| r.workers == w).map(|r| r.elapsed);
    Some((at(1)?, at(8)?))
}

impl UpstreamLatency {
    /// The headline bullet, if 1 and 8 workers were both measured.
    pub fn headline(&self) -> String {
        let Some((one, eight)) = speed_up(&self.runs) else {
            return String::new();
        };
        format!(
            "- With {} ms upstream latency per page: 1 → 8 workers speeds the export up {:.2}× \
             ({one:.2} s → {eight:.2} s); one chain per type, so the Observation chain bounds it.\n",
            self.latency_ms,
            one / eight
        )
    }

    /// The report's latency section with its per-type table.
    pub fn section(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "\n## Upstream latency {} ms per page\n", self.latency_ms);
        let _ = writeln!(
            r,
            "The fixture sleeps {} ms before answering every search page. Bare client (1 stream): \
             {:.2} s for {} pages. Same page size; one chain per type, so the Observation chain \
             ({} of {} resources) is a serial run of pages whatever the worker count.\n",
            self.latency_ms, self.bare.elapsed, self.bare.pages, self.observations, self.resources
        );
        r.push_str(&export_table(
            &self.runs,
            self.resources as f64 / self.bare.elapsed,
            0.0,
        ));
        if let Some((one, eight)) = speed_up(&self.runs) {
            let _ = writeln!(
                r,
                "\n**Speed-up 1 → 8 workers: {:.2}×** ({:.2} s → {:.2} s).",
                one / eight,
                one,
                eight
            );
        }
        let _ = writeln!(r, "\n### Per type at {} ms/page\n", self.latency_ms);
        r.push_str(&per_type_table(&self.runs));
        r
    }
}
