//! The measured scenarios, one module each. Every module measures and
//! renders its own RESULTS.md section.

pub mod framing;
pub mod one_chain;
pub mod peak_rss;
pub mod request_counts;
pub mod system_export;
pub mod upstream_latency;
