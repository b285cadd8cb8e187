//! Logging as Lambda's log configuration asks: `AWS_LAMBDA_LOG_FORMAT`
//! (`JSON`, the default here, or `Text`) and `AWS_LAMBDA_LOG_LEVEL`
//! (`TRACE` … `FATAL`); `RUST_LOG`, when set, filters more finely.

use tracing_subscriber::EnvFilter;

/// The filter: `RUST_LOG` if set, else Lambda's log level, else `info`.
fn filter() -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_default_env() {
        return f;
    }
    let level = match std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .unwrap_or_default()
        .to_ascii_uppercase()
        .as_str()
    {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => "info",
    };
    EnvFilter::new(level)
}

/// Installs the subscriber once per process; span fields (job id, chain,
/// step) are on every line.
pub fn init_logging() {
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .without_time();
    let _ = if text {
        builder.with_ansi(false).try_init()
    } else {
        builder.json().with_current_span(true).try_init()
    };
}
