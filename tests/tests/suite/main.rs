//! The integration suite as one test binary: each module is one area, all of
//! them share one link of the AWS SDK and the embedded servers.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod changing_source;
mod compartment;
mod conformance;
mod duplicate_delivery;
mod export_e2e;
mod failed_steps_and_secrets;
mod fhir_source;
mod hostile_input;
mod lambda_events;
mod lambda_lane;
mod lost_replies;
mod model_check;
mod partitions;
mod reliability;
mod s3_source;
mod template;
mod upstream_auth;
mod upstream_faults;
