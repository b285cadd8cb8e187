//! `bench`: an end-to-end benchmark of the exporter on the local runner stack
//! (embedded dynoxide + s3s-fs, in-process continuation) reading from the
//! in-process fixture FHIR server, everything on 127.0.0.1.
//!
//! `cargo run --release -p bulk-export-bench -- [--patients N] [--out bench/RESULTS.md]`
//!
//! [`suite`] runs the [`scenarios`] in order and [`report`] renders
//! RESULTS.md; with `--child` the binary is instead one measured exporter
//! process of the peak-RSS scenario ([`rss`]).

mod bare_client;
mod cli;
mod cost;
mod dataset;
mod error;
mod export;
mod machine;
mod proxy;
mod report;
mod rss;
mod scenarios;
mod suite;
mod tables;

use clap::Parser;
use cli::Args;
use std::path::Path;
use std::process::ExitCode;

/// The report's megabyte: 10^6 bytes.
const MB: f64 = 1e6;

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
        return match rss::child_main(&args).await {
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
    match suite::run(&args).await {
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
