//! What FHIR R4 and the Bulk Data IG define, independent of how we export:
//! resource types, the Patient compartment, ids and instants, SMART scopes,
//! OperationOutcomes, and the byte-level scanning and framing of resources.
//! The bottom layer: it imports nothing else from this crate.

pub mod compartment;
pub mod framing;
pub mod ids;
pub mod instant;
pub mod json_scan;
pub mod outcome;
pub mod resource_types;
pub mod smart_scopes;
