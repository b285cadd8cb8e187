//! Peak RSS of exports of the large dataset and of the xlarge one (10x the
//! patients) in child processes: whether memory grows with the data or
//! stays bounded by the part size.

use crate::MB;
use crate::cli::Args;
use crate::dataset::{dataset_summary, generate_timed, totals};
use crate::error::BenchError;
use crate::rss::{ChildRss, rss_child};
use crate::tables::fmt_secs;
use bulk_export_core::model::config::ExportConfig;
use bulk_export_testkit::fixture_server::{FixtureHandle, FixtureOptions, start_fixture};
use std::fmt::Write as _;
use std::path::Path;

/// The child measurements and the xlarge dataset they used.
pub struct PeakRss {
    /// Large-dataset runs per worker count, then xlarge ones.
    pub runs: Vec<ChildRss>,
    /// Seconds to generate the xlarge dataset.
    pub gen_secs: f64,
    /// Resources of the xlarge dataset.
    pub n: u64,
    /// NDJSON bytes of the xlarge dataset.
    pub bytes: u64,
}

/// Generates the xlarge dataset (removed afterwards), then exports the
/// large one (served by `fixture`) and the xlarge one with each worker count.
pub async fn measure(
    args: &Args,
    work: &Path,
    fixture: &FixtureHandle,
    worker_counts: &[usize],
) -> Result<PeakRss, BenchError> {
    // Both datasets fill many parts, so the comparison shows whether memory
    // grows with the data rather than with the part size.
    let xlarge_patients = args.xlarge_patients();
    let mut runs = Vec::new();
    let xlarge_dir = work.join("xlarge");
    let gen_secs = generate_timed(&xlarge_dir, xlarge_patients, 2)?;
    let (n, bytes) = totals(&dataset_summary(&xlarge_dir)?);
    for &workers in worker_counts {
        runs.push(rss_child(fixture, &work.join("child-large"), args.patients, workers).await?);
    }
    {
        let xlarge_fixture = start_fixture(&xlarge_dir, FixtureOptions::default())
            .await
            .map_err(BenchError::Fixture)?;
        let dir = work.join("child-xlarge");
        for &workers in worker_counts {
            runs.push(rss_child(&xlarge_fixture, &dir, xlarge_patients, workers).await?);
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
pub fn rss_bound_mib(cfg: &ExportConfig) -> f64 {
    (3 * cfg.part_size) as f64 / (1024.0 * 1024.0) + 64e6 / (1024.0 * 1024.0)
}

/// `s` when `n` is not 1.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl PeakRss {
    /// (large, xlarge) measurements with the same worker count.
    pub fn pairs(&self) -> Vec<(&ChildRss, &ChildRss)> {
        let rss = &self.runs;
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

    /// Headline bullets, one per worker count.
    pub fn headline(&self, cfg: &ExportConfig) -> String {
        let mut r = String::new();
        for (s, l) in self.pairs() {
            let _ = writeln!(
                r,
                "- Peak RSS of the exporter process with {} worker{}: {:.1} MiB for {:.0} MB of data, \
                 {:.1} MiB for {:.0} MB (data {:.1}×, RSS {:.2}×; bound 3 × part + 64 MB = {:.0} MiB).",
                s.workers,
                plural(s.workers),
                s.hwm_end_kb as f64 / 1024.0,
                s.bytes as f64 / MB,
                l.hwm_end_kb as f64 / 1024.0,
                l.bytes as f64 / MB,
                l.bytes as f64 / s.bytes.max(1) as f64,
                l.hwm_end_kb as f64 / s.hwm_end_kb.max(1) as f64,
                rss_bound_mib(cfg)
            );
        }
        r
    }

    /// The report's peak-RSS section; `large_patients` tells the datasets apart.
    pub fn section(&self, cfg: &ExportConfig, large_patients: u64) -> String {
        let mut r = String::new();
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
            rss_bound_mib(cfg)
        );
        let _ = writeln!(
            r,
            "| dataset | workers | patients | resources | NDJSON MB | time (s) | VmHWM after start (MiB) | VmHWM at end (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &self.runs {
            let name = if c.patients == large_patients {
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
        self.growth(&mut r);
        r
    }

    /// One line per worker count: how much data and peak RSS grew.
    fn growth(&self, r: &mut String) {
        for (s, l) in self.pairs() {
            let _ = writeln!(
                r,
                "\n{} worker{}: data grew {:.1}×; peak RSS grew {:.2}× ({:+.1} MiB).",
                s.workers,
                plural(s.workers),
                l.bytes as f64 / s.bytes.max(1) as f64,
                l.hwm_end_kb as f64 / s.hwm_end_kb.max(1) as f64,
                (l.hwm_end_kb as f64 - s.hwm_end_kb as f64) / 1024.0
            );
        }
    }
}
