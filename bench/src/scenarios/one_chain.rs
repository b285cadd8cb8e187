//! One chain against the upstream: the Observations of the chain dataset
//! exported as a single sequential chain, timed against the bare client
//! paging the same type (the upstream-bound ratio, target ≥ 0.9), and the
//! same type split into partitions.

use crate::MB;
use crate::bare_client::{Bare, bare_median};
use crate::cli::Args;
use crate::dataset::{Datasets, Summary, only, totals};
use crate::error::BenchError;
use crate::export::{ExportRun, Shape, Target, export_runs};
use bulk_export::stack::SourceSpec;
use bulk_export_testkit::fixture_server::{FixtureHandle, FixtureOptions, start_fixture};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Which upstream the scenario pages: the fixture as fast as it answers,
/// or slowed down by `--latency-ms` per search page.
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    Instant,
    Slow(u64),
}

impl Upstream {
    fn latency_ms(self) -> u64 {
        match self {
            Self::Instant => 0,
            Self::Slow(ms) => ms,
        }
    }

    /// Appended to run labels.
    fn label_suffix(self) -> String {
        match self {
            Self::Instant => String::new(),
            Self::Slow(ms) => format!(", {ms} ms"),
        }
    }

    /// Part of the scratch directory names.
    fn dir_tag(self) -> &'static str {
        match self {
            Self::Instant => "fast",
            Self::Slow(_) => "slow",
        }
    }

    async fn serve(self, dir: &Path) -> Result<FixtureHandle, BenchError> {
        let options = FixtureOptions {
            latency: Duration::from_millis(self.latency_ms()),
            ..FixtureOptions::default()
        };
        start_fixture(dir, options)
            .await
            .map_err(BenchError::Fixture)
    }
}

/// One chain against the bare client, and the same type split into partitions.
pub struct ChainScenario {
    pub latency_ms: u64,
    pub bare: Bare,
    pub one: ExportRun,
    pub split: ExportRun,
}

impl ChainScenario {
    /// Exporter throughput ÷ bare-client throughput for one chain.
    pub fn ratio(&self) -> f64 {
        self.bare.elapsed / self.one.elapsed.max(1e-9)
    }
    /// One chain's time ÷ the partitioned export's time.
    pub fn speed_up(&self) -> f64 {
        self.one.elapsed / self.split.elapsed.max(1e-9)
    }
}

/// The bare client's Observation paging and the one-chain export, 8 workers.
async fn bare_and_one_chain(
    fixture: &FixtureHandle,
    target: &Target<'_>,
    label: &str,
    page_size: usize,
    repeat: usize,
) -> Result<(Bare, ExportRun), BenchError> {
    let types = ["Observation".to_string()];
    let bare = bare_median(fixture.base_url(), &types, page_size, false, repeat).await?;
    let shape = Shape::observation_one_chain();
    let one = export_runs(label, target, (8, &shape), repeat).await?;
    Ok((bare, one))
}

fn fhir(fixture: &FixtureHandle) -> SourceSpec {
    SourceSpec::Fhir {
        base: fixture.base_url().to_string(),
        token: None,
    }
}

/// The full scenario at one upstream latency.
pub async fn measure(
    args: &Args,
    work: &Path,
    data: &Datasets,
    page_size: usize,
    upstream: Upstream,
) -> Result<ChainScenario, BenchError> {
    let obs = only(&data.chain, "Observation");
    let fixture = upstream.serve(&data.chain_dir).await?;
    let (tag, suffix) = (upstream.dir_tag(), upstream.label_suffix());
    let one_dir = work.join(format!("run-obs-one-{tag}"));
    let one_target = Target {
        dir: &one_dir,
        source: fhir(&fixture),
        expected: &obs,
        fixture: Some(&fixture),
    };
    let label = format!("Observation, 1 chain{suffix}");
    let (bare, one) =
        bare_and_one_chain(&fixture, &one_target, &label, page_size, args.repeat).await?;
    let split_dir = work.join(format!("run-obs-split-{tag}"));
    let split_target = Target {
        dir: &split_dir,
        ..one_target
    };
    let split = Shape::observation_partitioned(totals(&obs).0);
    let label = format!("Observation, 8 partitions{suffix}");
    let split = export_runs(&label, &split_target, (8, &split), args.repeat).await?;
    Ok(ChainScenario {
        latency_ms: upstream.latency_ms(),
        bare,
        one,
        split,
    })
}

/// `--chain-only`: one Observation chain vs the bare client at
/// `--latency-ms`, printed to stderr (no partitions, no report).
pub async fn chain_only(
    args: &Args,
    work: &Path,
    data: &Datasets,
    page_size: usize,
) -> Result<(), BenchError> {
    let fixture = Upstream::Slow(args.latency_ms)
        .serve(&data.chain_dir)
        .await?;
    let obs = only(&data.chain, "Observation");
    let target = Target {
        dir: &work.join("run-chain-only"),
        source: fhir(&fixture),
        expected: &obs,
        fixture: Some(&fixture),
    };
    let (bare, one) = bare_and_one_chain(
        &fixture,
        &target,
        "Observation, 1 chain",
        page_size,
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
    Ok(())
}

/// A headline bullet per scenario.
pub fn headline(rows: &[&ChainScenario]) -> String {
    let mut r = String::new();
    for c in rows {
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
    r
}

/// The report's one-chain section: one row per scenario; `observations`
/// is the Observation part of the chain dataset.
pub fn section(rows: &[&ChainScenario], observations: &Summary, page_size: usize) -> String {
    let (n, bytes) = totals(observations);
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
