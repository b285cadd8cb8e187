//! The generated NDJSON datasets and what they contain, read back from the
//! files so that exports can be verified against them.

use crate::error::BenchError;
use bulk_export_testkit::generate::generate;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Per type: (resources, NDJSON bytes), Group included: a system export
/// returns every type.
pub type Summary = BTreeMap<String, (u64, u64)>;

/// Counts the lines and bytes of every `<Type>.ndjson` in `dir`.
pub fn dataset_summary(dir: &Path) -> Result<Summary, BenchError> {
    let reading = || format!("reading {}", dir.display());
    let mut out = Summary::new();
    for e in std::fs::read_dir(dir).map_err(BenchError::io(reading()))? {
        let p = e.map_err(BenchError::io(reading()))?.path();
        let Some(ty) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ndjson"))
        else {
            continue;
        };
        let data = std::fs::read(&p).map_err(BenchError::io(format!("reading {}", p.display())))?;
        let lines = data.iter().filter(|b| **b == b'\n').count() as u64;
        out.insert(ty.to_string(), (lines, data.len() as u64));
    }
    Ok(out)
}

/// (resources, NDJSON bytes) over all types.
pub fn totals(s: &Summary) -> (u64, u64) {
    s.values().fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// The part of `s` for one resource type.
pub fn only(s: &Summary, resource_type: &str) -> Summary {
    s.iter()
        .filter(|(t, _)| t.as_str() == resource_type)
        .map(|(t, v)| (t.clone(), *v))
        .collect()
}

/// Generates `patients` patients into `dir` with `seed`; returns the
/// seconds it took.
pub fn generate_timed(dir: &Path, patients: u64, seed: u64) -> Result<f64, BenchError> {
    let t = Instant::now();
    generate(dir, patients, seed)
        .map_err(BenchError::io(format!("generating {}", dir.display())))?;
    Ok(t.elapsed().as_secs_f64())
}

/// The large dataset (system exports, requests, RSS) and the chain dataset
/// (one Observation chain against the upstream, partitions).
pub struct Datasets {
    pub large_dir: PathBuf,
    pub large: Summary,
    /// Seconds to generate the large dataset.
    pub large_gen_secs: f64,
    pub chain_dir: PathBuf,
    pub chain: Summary,
}

impl Datasets {
    /// Generates both under `work` (seeds 1 and 3, so they differ).
    pub fn generate(work: &Path, patients: u64, chain_patients: u64) -> Result<Self, BenchError> {
        let large_dir = work.join("large");
        let chain_dir = work.join("chain");
        let large_gen_secs = generate_timed(&large_dir, patients, 1)?;
        generate_timed(&chain_dir, chain_patients, 3)?;
        Ok(Self {
            large: dataset_summary(&large_dir)?,
            chain: dataset_summary(&chain_dir)?,
            large_dir,
            large_gen_secs,
            chain_dir,
        })
    }

    /// The resource types of the large dataset, in name order.
    pub fn types(&self) -> Vec<String> {
        self.large.keys().cloned().collect()
    }
}
