//! System exports of the large dataset at several worker counts, from the
//! fixture FHIR server and from NDJSON files, against the bare client paging
//! the same fixture at 0 ms latency.

use crate::MB;
use crate::bare_client::{Bare, bare_median};
use crate::cli::Args;
use crate::dataset::{Datasets, totals};
use crate::error::BenchError;
use crate::export::{ExportRun, Shape, Target, export_runs};
use crate::tables::{export_table, fmt_secs, per_type_table};
use bulk_export::stack::SourceSpec;
use bulk_export_testkit::fixture_server::FixtureHandle;
use std::fmt::Write as _;
use std::path::Path;

/// The bare-client baseline and the exports measured against it.
pub struct SystemExports {
    /// One type after another.
    pub bare: Bare,
    /// All types at once.
    pub bare_parallel: Bare,
    /// Resources in the large dataset, for bare-client rates.
    resources: u64,
    ndjson_bytes: u64,
    /// FHIR-source runs, then NDJSON-source runs.
    pub runs: Vec<ExportRun>,
    /// Types in the dataset: at most this many chains run at once.
    types: usize,
}

/// Measures the bare client (both modes), then every FHIR-source and
/// NDJSON-source export.
pub async fn measure(
    args: &Args,
    work: &Path,
    data: &Datasets,
    fixture: &FixtureHandle,
    page_size: usize,
) -> Result<SystemExports, BenchError> {
    let types = data.types();
    let (resources, ndjson_bytes) = totals(&data.large);
    fixture.reset_stats();
    let bare = bare_median(fixture.base_url(), &types, page_size, false, args.repeat).await?;
    let bare_parallel =
        bare_median(fixture.base_url(), &types, page_size, true, args.repeat).await?;
    let out = SystemExports {
        bare,
        bare_parallel,
        resources,
        ndjson_bytes,
        runs: Vec::new(),
        types: types.len(),
    };
    eprintln!(
        "bare client: {:.2}s ({:.0} res/s); all types in parallel {:.2}s ({:.0} res/s)",
        out.bare.elapsed,
        out.bare_rps(),
        out.bare_parallel.elapsed,
        out.bare_parallel_rps()
    );
    let runs = exports(args, work, data, fixture).await?;
    Ok(SystemExports { runs, ..out })
}

async fn exports(
    args: &Args,
    work: &Path,
    data: &Datasets,
    fixture: &FixtureHandle,
) -> Result<Vec<ExportRun>, BenchError> {
    let system = Shape::default();
    let mut runs = Vec::new();
    for &w in &args.workers {
        let target = Target {
            dir: &work.join(format!("run-fhir-{w}")),
            source: SourceSpec::Fhir {
                base: fixture.base_url().to_string(),
                token: None,
            },
            expected: &data.large,
            fixture: Some(fixture),
        };
        runs.push(export_runs("FHIR source", &target, (w, &system), args.repeat).await?);
    }
    for &w in &args.ndjson_workers {
        let target = Target {
            dir: &work.join(format!("run-ndjson-{w}")),
            source: SourceSpec::Ndjson(data.large_dir.clone()),
            expected: &data.large,
            fixture: None,
        };
        runs.push(export_runs("NDJSON source", &target, (w, &system), args.repeat).await?);
    }
    Ok(runs)
}

impl SystemExports {
    /// Bare client resources/s, one type after another.
    pub fn bare_rps(&self) -> f64 {
        self.resources as f64 / self.bare.elapsed
    }

    /// Bare client resources/s, all types in parallel.
    pub fn bare_parallel_rps(&self) -> f64 {
        self.resources as f64 / self.bare_parallel.elapsed
    }

    /// The fastest FHIR-source run (NDJSON runs have no upstream).
    pub fn best(&self) -> Option<&ExportRun> {
        self.runs
            .iter()
            .filter(|x| x.upstream.requests > 0)
            .max_by(|a, b| a.rps().total_cmp(&b.rps()))
    }

    /// The report's bare-client section.
    pub fn bare_section(&self, page_size: usize) -> String {
        let mut r = String::new();
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
            ("one type after another (1 stream)", &self.bare),
            ("all types in parallel", &self.bare_parallel),
        ] {
            let _ = writeln!(
                r,
                "| {name} | {} | {} | {:.0} | {:.1} | {:.1} |",
                fmt_secs(b.elapsed),
                b.pages,
                self.resources as f64 / b.elapsed,
                self.ndjson_bytes as f64 / MB / b.elapsed,
                b.wire_bytes as f64 / MB / b.elapsed
            );
        }
        let _ = writeln!(r);
        r
    }

    /// The report's export section with its per-type table.
    pub fn exports_section(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "## Exports (large dataset)\n");
        let _ = writeln!(
            r,
            "Upstream-bound ratio = exporter resources/s ÷ bare client resources/s (FHIR-source runs \
             only). One chain per resource type (the measured configuration has no partitioning \
             within a type), so at most {} chains run at once whatever the worker count.\n",
            self.types
        );
        r.push_str(&export_table(
            &self.runs,
            self.bare_rps(),
            self.bare_parallel_rps(),
        ));
        let _ = writeln!(r, "\n### Per type\n");
        let _ = writeln!(
            r,
            "Per-type rate = the type's resources ÷ time from kick-off until its chain finished \
             (chains run concurrently, so per-type rates do not add up to the total).\n"
        );
        r.push_str(&per_type_table(&self.runs));
        r
    }
}
