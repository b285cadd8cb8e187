//! FHIR Bulk Data `$export` on AWS Lambda: the shared library.
//!
//! The folders follow a request through the system, bottom layer first:
//! [`fhir`] (what the spec defines) ← [`model`] (jobs, chains, files) ←
//! [`ports`] (the capabilities) ← [`adapters`] (DynamoDB, S3, FHIR server,
//! NDJSON, Lambda) and [`worker`] (the chunk-worker pipeline) ← [`export`]
//! (use cases) ← [`api`] (HTTP) ← [`compose`] and [`lambda`] (entry points).
//! A module imports only from its own layer's folder or from layers below it
//! (checked by the layering test).

pub mod adapters;
pub mod api;
pub mod compose;
pub mod export;
pub mod fhir;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod model;
pub mod ports;
pub mod worker;
