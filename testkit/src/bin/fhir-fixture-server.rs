//! `fhir-fixture-server`: serves a directory of NDJSON files (as written by
//! `bulk-export generate`) as a fast FHIR search API on a loopback address,
//! for tests and benchmarks. Prints exactly one line, `listening on
//! <fhir-base-url>`, when ready, and runs until Ctrl-C.

use bulk_export_testkit::fixture_server::{FixtureError, FixtureOptions, start_fixture_on};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "fhir-fixture-server",
    version,
    about = "Serve a directory of NDJSON files as a FHIR search API (test fixture)"
)]
struct Cli {
    /// Directory of `<Type>.ndjson` files (as written by `bulk-export generate`).
    #[arg(long)]
    data: PathBuf,
    /// Loopback address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Latency added to every search page, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

/// Why the server did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum CliError {
    /// `--listen` is not a loopback address.
    #[error("the fixture server binds loopback addresses only")]
    NotLoopback(SocketAddr),
    /// The server could not start.
    #[error(transparent)]
    Start(#[from] FixtureError),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULK_EXPORT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<(), CliError> {
    if !cli.listen.ip().is_loopback() {
        return Err(CliError::NotLoopback(cli.listen));
    }
    let opts = FixtureOptions {
        latency: Duration::from_millis(cli.latency_ms),
        ..FixtureOptions::default()
    };
    let fixture = start_fixture_on(cli.listen, &cli.data, opts).await?;
    println!("listening on {}", fixture.base_url());
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
