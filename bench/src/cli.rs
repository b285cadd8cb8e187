//! Command-line options. The hidden `--child*` options are the protocol
//! between the parent and the child processes whose peak RSS is measured.

use clap::Parser;
use std::path::PathBuf;

/// Patients of the default dataset (about 50 MB of NDJSON).
const DEFAULT_PATIENTS: u64 = 1280;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "End-to-end benchmark of the FHIR Bulk Data exporter (loopback only)"
)]
pub struct Args {
    /// Patients in the large dataset (the RSS comparison also uses one 10x larger).
    #[arg(long, default_value_t = DEFAULT_PATIENTS)]
    pub patients: u64,
    /// Patients of the dataset whose Observations the one-chain comparison
    /// pages (long enough that a chain's fixed start and end costs do not
    /// dominate; default 4x `--patients`).
    #[arg(long)]
    pub chain_patients: Option<u64>,
    /// Report file (default: RESULTS.md next to the bench crate's Cargo.toml).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Scratch directory (default: a fresh one under the system temp dir, removed at the end).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Worker counts of the FHIR-source runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub workers: Vec<usize>,
    /// Worker counts of the NDJSON-source runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub ndjson_workers: Vec<usize>,
    /// Repetitions of every export and bare-client measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Per-page upstream latency of the latency scenario, milliseconds.
    #[arg(long, default_value_t = 30)]
    pub latency_ms: u64,
    /// Only measure one Observation chain against the bare client at the
    /// configured latency, print the ratio, and write no report (for tuning).
    #[arg(long)]
    pub chain_only: bool,
    /// Only measure the peak RSS of one-worker exports of the large and
    /// xlarge datasets, print them, and write no report (for tuning).
    #[arg(long)]
    pub rss_only: bool,
    /// Run as a measured child process (internal).
    #[arg(long, hide = true)]
    pub child: bool,
    /// Child: FHIR base URL to export from.
    #[arg(long, hide = true)]
    pub child_source: Option<String>,
    /// Child: workers.
    #[arg(long, hide = true, default_value_t = 4)]
    pub child_workers: usize,
    /// Child: data directory.
    #[arg(long, hide = true)]
    pub child_dir: Option<PathBuf>,
}

impl Args {
    /// Patients of the xlarge dataset: 10x the large one, so RSS that grows
    /// with the data shows as a clear difference.
    pub fn xlarge_patients(&self) -> u64 {
        self.patients * 10
    }

    /// Patients of the chain dataset.
    pub fn chain_patients(&self) -> u64 {
        self.chain_patients.unwrap_or(self.patients * 4)
    }

    /// Repetitions actually run (at least one).
    pub fn repeats(&self) -> usize {
        self.repeat.max(1)
    }
}
