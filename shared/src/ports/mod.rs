//! The capabilities the export talks to, as traits with typed errors: job
//! records, output objects, the resource source and step continuation.
//! Implementations live in `adapters` (and `worker::in_process`).

pub mod continuation;
pub mod failed_steps;
pub mod job_store;
pub mod object_store;
pub mod services;
pub mod source;

/// The source of a backend failure, kept whole (its own sources included).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and all its sources, `outer: inner: innermost`, so a log line
/// shows why an SDK call failed and not just that it did.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
