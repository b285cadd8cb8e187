//! RESULTS.md: the run's context, the headline numbers, how everything was
//! measured, then each scenario's section in a fixed order.

use crate::MB;
use crate::cli::Args;
use crate::cost::RequestCost;
use crate::dataset::{Datasets, only, totals};
use crate::export::POLL;
use crate::machine::{command_output, machine_info};
use crate::scenarios::framing::FramingVsMemcpy;
use crate::scenarios::one_chain::{self, ChainScenario};
use crate::scenarios::peak_rss::PeakRss;
use crate::scenarios::request_counts::Counted;
use crate::scenarios::system_export::SystemExports;
use crate::scenarios::upstream_latency::UpstreamLatency;
use bulk_export_core::model::config::ExportConfig;
use std::fmt::Write as _;

/// When, how and where the bench ran; captured before the first
/// measurement.
pub struct RunContext {
    /// `date -u` output.
    date: String,
    /// The command line that reproduces the run.
    command: String,
    machine: String,
}

impl RunContext {
    pub fn capture() -> Self {
        let extra: String = std::env::args().skip(1).map(|a| format!(" {a}")).collect();
        let command = if extra.is_empty() {
            "cargo run --release -p bulk-export-bench".to_string()
        } else {
            format!("cargo run --release -p bulk-export-bench --{extra}")
        };
        Self {
            date: command_output("date", &["-u"]),
            command,
            machine: machine_info(),
        }
    }
}

/// Everything the report shows.
pub struct Results<'a> {
    pub args: &'a Args,
    pub context: RunContext,
    /// Wall time of the whole run, seconds.
    pub total_secs: f64,
    pub data: &'a Datasets,
    /// The exporter settings every export used.
    pub config: ExportConfig,
    pub framing: FramingVsMemcpy,
    pub system: SystemExports,
    pub counted: Counted,
    pub peak: PeakRss,
    pub latency: UpstreamLatency,
    /// One chain at 0 ms per page.
    pub chain_fast: ChainScenario,
    /// One chain at `--latency-ms` per page.
    pub chain_slow: ChainScenario,
}

impl Results<'_> {
    /// The Markdown document.
    pub fn render(&self) -> String {
        let c = &self.context;
        let mut r = String::new();
        let _ = writeln!(r, "# Bulk export benchmark\n");
        let _ = writeln!(r, "- date: {}", c.date);
        let _ = writeln!(r, "- command: `{}`", c.command);
        let _ = writeln!(r, "- total bench runtime: {:.0} s\n", self.total_secs);
        r.push_str(&self.headline());
        let _ = writeln!(r, "## Machine\n\n{}", c.machine);
        r.push_str(&self.method());
        r.push_str(&self.datasets());
        let page_size = self.config.page_size;
        r.push_str(&self.framing.section(page_size));
        r.push_str(&self.system.bare_section(page_size));
        r.push_str(&self.system.exports_section());
        r.push_str(&self.counted.section());
        r.push_str(&self.peak.section(&self.config, self.args.patients));
        r.push_str(&self.latency.section());
        r.push_str(&one_chain::section(
            &[&self.chain_fast, &self.chain_slow],
            &only(&self.data.chain, "Observation"),
            page_size,
        ));
        r
    }

    fn headline(&self) -> String {
        let mut r = String::from("## Headline\n\n");
        let (large_n, large_b) = totals(&self.data.large);
        if let Some(b) = self.system.best() {
            let ratio = b.rps() / self.system.bare_rps();
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
                ratio,
                if ratio < 0.5 {
                    " (at 0 ms latency the exporter, not the upstream, is the limit)"
                } else {
                    ""
                }
            );
        }
        r.push_str(&one_chain::headline(&[&self.chain_slow, &self.chain_fast]));
        r.push_str(&self.latency.headline());
        let hot = &self.framing;
        let _ = writeln!(
            r,
            "- Hot path: `frame_search_bundle` {:.0} MB/s vs memcpy {:.0} MB/s — memcpy is {:.0}× faster.",
            hot.frame_bps / MB,
            hot.memcpy_bps / MB,
            hot.memcpy_factor()
        );
        r.push_str(&self.peak.headline(&self.config));
        let _ = writeln!(
            r,
            "- AWS request cost ≈ ${:.4} per million resources (Lambda requests + DynamoDB + S3 \
             requests at list prices; derived/estimated parts are described below).\n",
            RequestCost::of(&self.counted).total()
        );
        r
    }

    /// What runs where, the exporter settings and how times are taken.
    fn method(&self) -> String {
        let cfg = &self.config;
        format!(
            "Everything runs in one process per measurement on 127.0.0.1 and shares the cores: the \
             fixture FHIR server (`bulk_export_testkit::fixture_server`), the exporter stack \
             (`bulk_export::stack::start`: HTTP API, in-process continuation with N worker tasks, \
             watchdog), embedded dynoxide (SQLite file) and s3s-fs (local files). Exporter settings: \
             `ExportConfig::default()` — page size (`_count`) {}, part size {} MiB, file size \
             limit {} MiB. Each export is a system-level `$export` of every type, timed from kick-off \
             until the status URL returns the manifest, polled every {} ms; per-type times come from \
             chain records sampled at the same rate. Every export runs on a fresh stack (new embedded \
             servers and data directory); each export and bare-client measurement is repeated {} \
             times and the median is reported. MB = 10^6 bytes of NDJSON.\n\n",
            cfg.page_size,
            cfg.part_size / (1024 * 1024),
            cfg.max_file_size / (1024 * 1024),
            POLL.as_millis(),
            self.args.repeats()
        )
    }

    fn datasets(&self) -> String {
        let a = self.args;
        let (large_n, large_b) = totals(&self.data.large);
        let (chain_n, chain_b) = totals(&self.data.chain);
        let mut r = String::from("## Datasets\n\n");
        let _ = writeln!(
            r,
            "| dataset | used for | patients | resources | NDJSON MB |\n|---|---|---:|---:|---:|\n\
             | large | system exports, requests, RSS | {} | {large_n} | {:.1} |\n\
             | chain | one chain vs the upstream, partitions | {} | {chain_n} | {:.1} |\n\
             | xlarge | RSS | {} | {} | {:.1} |\n",
            a.patients,
            large_b as f64 / MB,
            a.chain_patients(),
            chain_b as f64 / MB,
            a.xlarge_patients(),
            self.peak.n,
            self.peak.bytes as f64 / MB
        );
        let _ = writeln!(
            r,
            "Generating the large dataset took {:.2} s, the xlarge one {:.2} s.\n",
            self.data.large_gen_secs, self.peak.gen_secs
        );
        r
    }
}
