//! Test infrastructure for the Bulk Data exporter, kept out of the product:
//! the synthetic dataset generator ([`generate`]) and, with the default
//! `fixture-server` feature, a fast fault-injecting FHIR search server over
//! the generated files ([`fixture_server`], also the `fhir-fixture-server`
//! binary). The `bulk-export` runner depends on this crate without default
//! features, for its `generate` command and its built-in demo dataset only.

#[cfg(feature = "fixture-server")]
pub mod fixture_server;
pub mod generate;
