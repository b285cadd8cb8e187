//! `GET [base]/metadata`: a CapabilityStatement declaring the export operations.

use serde_json::{Value, json};

/// The server's CapabilityStatement.
pub fn capability_statement(base: &str) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": { "name": "fhir-bulk-export-lambda", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Serverless FHIR Bulk Data $export", "url": base },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "resource": [
                {
                    "type": "Patient",
                    "operation": [{ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export" }]
                },
                {
                    "type": "Group",
                    "operation": [{ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export" }]
                }
            ],
            "operation": [{ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export" }]
        }]
    })
}
