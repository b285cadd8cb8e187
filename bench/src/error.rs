//! Why a benchmark run stopped. Every failure aborts the run: a partial
//! RESULTS.md would mix measured and missing numbers.

use bulk_export::embedded::EmbeddedError;
use bulk_export::stack::StackError;
use bulk_export_core::fhir::framing::FrameError;
use std::process::ExitStatus;

/// A failed step of the benchmark, with the error that caused it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A file, directory, socket or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation, e.g. `reading /tmp/x/large`.
        what: String,
        source: std::io::Error,
    },
    /// An HTTP request of the bench's own client failed before an answer.
    #[error("{what}: {source}")]
    Http {
        /// The request, e.g. `kick-off`.
        what: &'static str,
        source: reqwest::Error,
    },
    /// The exporter answered a kick-off or status request with an unexpected status.
    #[error("{what} answered {status}: {body}")]
    Exporter {
        /// `kick-off` or `status`.
        what: &'static str,
        status: reqwest::StatusCode,
        body: String,
    },
    /// The fixture server answered a bare-client page with an error status.
    #[error("{resource_type}: upstream answered {status}")]
    Upstream {
        resource_type: String,
        status: reqwest::StatusCode,
    },
    /// The kick-off answer had no `Content-Location` to poll.
    #[error("kick-off without Content-Location")]
    NoStatusUrl,
    /// The export did not produce a manifest within the limit.
    #[error("export did not finish in {} minutes", .0.as_secs() / 60)]
    ExportTimeout(std::time::Duration),
    /// The exporter stack did not start.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// Embedded DynamoDB or S3 did not start.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The fixture FHIR server did not start.
    #[error("fixture server: {0}")]
    Fixture(#[source] bulk_export_testkit::fixture_server::FixtureError),
    /// Reading chain or file records for the measurement failed. Boxed so
    /// the bench names no job-store type beyond what it already imports.
    #[error("job store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The fixture's Observation page could not be framed for the hot-path measurement.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A bare-client paging task panicked or was cancelled.
    #[error("paging task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A measured child process exited without its `BENCH_CHILD` line.
    #[error("child failed ({status}): {stdout}")]
    Child { status: ExitStatus, stdout: String },
    /// The child's `BENCH_CHILD` line is not JSON.
    #[error("child report: {0}")]
    ChildReport(#[from] serde_json::Error),
    /// A hidden child-mode option is missing (the parent always passes it).
    #[error("--{0} is required")]
    MissingChildArg(&'static str),
}

impl BenchError {
    /// Wraps an I/O error with the operation that failed.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Wraps a reqwest error with the request that failed.
    pub fn http(what: &'static str) -> impl FnOnce(reqwest::Error) -> Self {
        move |source| Self::Http { what, source }
    }

    /// Wraps a job-store error.
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Store(Box::new(e))
    }
}
