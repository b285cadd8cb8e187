//! FHIR Bulk Data `$export` on AWS Lambda: the shared library.
//!
//! Entry points translate events into calls of [`api::handle`] (kick-off,
//! status, cancel) and [`chain::run_step`] (the chunk-worker). Ports:
//! [`job_store::JobStore`], [`object_store::ObjectStore`],
//! [`source::Source`] and [`continuation::Continuation`].

pub mod admission;
pub mod api;
pub mod caller;
pub mod cancel;
pub mod capability;
pub mod chain;
pub mod compartment;
pub mod config;
pub mod continuation;
pub mod download;
pub mod export_request;
#[cfg(feature = "lambda")]
pub mod failed_step_queue;
pub mod failed_steps;
pub mod group;
pub mod heap;
pub mod instant;
pub mod job;
pub mod job_store;
pub mod json_scan;
pub mod kickoff;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod manifest;
pub mod ndjson_page;
pub mod object_store;
pub mod outcome;
pub mod part_writer;
pub mod partition;
pub mod prefetch;
pub mod referenced;
pub mod resource_types;
pub mod schedule;
pub mod scopes;
pub mod services;
pub mod source;
pub mod status;
#[cfg(feature = "lambda")]
pub mod upstream_secrets;
pub mod watchdog;
