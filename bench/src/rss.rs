//! Peak RSS of one export in a fresh child process (`bench --child`), so the
//! number holds only the exporter stack: the fixture server and its copy of
//! the data stay in the parent. The child prints one `BENCH_CHILD <json>`
//! line on stdout; everything else it writes goes to the inherited stderr.

use crate::cli::Args;
use crate::error::BenchError;
use crate::export::{drive_export, start_stack};
use crate::machine::read_proc;
use bulk_export::stack::SourceSpec;
use bulk_export_core::model::config::ExportConfig;
use bulk_export_testkit::fixture_server::FixtureHandle;
use serde_json::{Value, json};
use std::path::Path;

const CHILD_LINE: &str = "BENCH_CHILD ";

/// One child's export and its peak RSS.
#[derive(Debug, Clone, Default)]
pub struct ChildRss {
    pub patients: u64,
    pub workers: usize,
    pub resources: u64,
    /// NDJSON bytes exported.
    pub bytes: u64,
    /// Seconds from kick-off to manifest.
    pub elapsed: f64,
    /// VmHWM once the stack had started, kB.
    pub hwm_start_kb: u64,
    /// VmHWM after the manifest arrived, kB: the export's peak.
    pub hwm_end_kb: u64,
}

/// This process's peak resident set (VmHWM), kB; 0 if unreadable.
fn vm_hwm_kb() -> u64 {
    read_proc("/proc/self/status", "VmHWM")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// `--child`: one system export from `--child-source` with the default
/// settings, reported on stdout.
pub async fn child_main(args: &Args) -> Result<(), BenchError> {
    let base = args
        .child_source
        .clone()
        .ok_or(BenchError::MissingChildArg("child-source"))?;
    let dir = args
        .child_dir
        .clone()
        .ok_or(BenchError::MissingChildArg("child-dir"))?;
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
        "{CHILD_LINE}{}",
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

/// Runs a child exporting `fixture` with `workers` in `dir` (removed
/// afterwards); `patients` only labels the result.
pub async fn rss_child(
    fixture: &FixtureHandle,
    dir: &Path,
    patients: u64,
    workers: usize,
) -> Result<ChildRss, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::io("locating the bench binary"))?;
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
        .map_err(BenchError::io("spawning child"))?;
    let _ = std::fs::remove_dir_all(dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix(CHILD_LINE)) else {
        return Err(BenchError::Child {
            status: out.status,
            stdout: stdout.into_owned(),
        });
    };
    let v: Value = serde_json::from_str(line)?;
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
