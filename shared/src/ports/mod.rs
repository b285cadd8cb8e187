//! The capabilities the export talks to, as traits with typed errors: job
//! records, output objects, the resource source and step continuation.
//! Implementations live in `adapters` (and `worker::in_process`).

pub mod continuation;
pub mod failed_steps;
pub mod job_store;
pub mod object_store;
pub mod services;
pub mod source;
