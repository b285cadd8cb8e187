//! The FHIR R4 Patient compartment (CompartmentDefinition `Patient`) as data:
//! which resource types belong to it, through which search parameters, and
//! the element paths those parameters search (for sources evaluated here).

use serde_json::Value;

/// One search parameter linking a resource to a patient.
#[derive(Debug, Clone, Copy)]
pub struct CompartmentParam {
    /// Search parameter name (sent to a FHIR server).
    pub name: &'static str,
    /// Element paths it searches, dot-separated; arrays are flattened.
    pub paths: &'static [&'static str],
}

const fn p(name: &'static str, paths: &'static [&'static str]) -> CompartmentParam {
    CompartmentParam { name, paths }
}

/// Resource types of the R4 Patient compartment with their parameters.
pub const PATIENT_COMPARTMENT: &[(&str, &[CompartmentParam])] = &[
    ("Account", &[p("subject", &["subject"])]),
    ("AdverseEvent", &[p("subject", &["subject"])]),
    (
        "AllergyIntolerance",
        &[
            p("patient", &["patient"]),
            p("recorder", &["recorder"]),
            p("asserter", &["asserter"]),
        ],
    ),
    ("Appointment", &[p("actor", &["participant.actor"])]),
    ("AppointmentResponse", &[p("actor", &["actor"])]),
    ("AuditEvent", &[p("patient", &["agent.who", "entity.what"])]),
    (
        "Basic",
        &[p("patient", &["subject"]), p("author", &["author"])],
    ),
    ("BodyStructure", &[p("patient", &["patient"])]),
    (
        "CarePlan",
        &[
            p("patient", &["subject"]),
            p("performer", &["activity.detail.performer"]),
        ],
    ),
    (
        "CareTeam",
        &[
            p("patient", &["subject"]),
            p("participant", &["participant.member"]),
        ],
    ),
    ("ChargeItem", &[p("subject", &["subject"])]),
    (
        "Claim",
        &[p("patient", &["patient"]), p("payee", &["payee.party"])],
    ),
    ("ClaimResponse", &[p("patient", &["patient"])]),
    ("ClinicalImpression", &[p("subject", &["subject"])]),
    (
        "Communication",
        &[
            p("subject", &["subject"]),
            p("sender", &["sender"]),
            p("recipient", &["recipient"]),
        ],
    ),
    (
        "CommunicationRequest",
        &[
            p("subject", &["subject"]),
            p("sender", &["sender"]),
            p("recipient", &["recipient"]),
            p("requester", &["requester"]),
        ],
    ),
    (
        "Composition",
        &[
            p("subject", &["subject"]),
            p("author", &["author"]),
            p("attester", &["attester.party"]),
        ],
    ),
    (
        "Condition",
        &[p("patient", &["subject"]), p("asserter", &["asserter"])],
    ),
    ("Consent", &[p("patient", &["patient"])]),
    (
        "Coverage",
        &[
            p("policy-holder", &["policyHolder"]),
            p("subscriber", &["subscriber"]),
            p("beneficiary", &["beneficiary"]),
            p("payor", &["payor"]),
        ],
    ),
    ("CoverageEligibilityRequest", &[p("patient", &["patient"])]),
    ("CoverageEligibilityResponse", &[p("patient", &["patient"])]),
    ("DetectedIssue", &[p("patient", &["patient"])]),
    (
        "DeviceRequest",
        &[p("subject", &["subject"]), p("performer", &["performer"])],
    ),
    ("DeviceUseStatement", &[p("subject", &["subject"])]),
    ("DiagnosticReport", &[p("subject", &["subject"])]),
    (
        "DocumentManifest",
        &[
            p("subject", &["subject"]),
            p("author", &["author"]),
            p("recipient", &["recipient"]),
        ],
    ),
    (
        "DocumentReference",
        &[p("subject", &["subject"]), p("author", &["author"])],
    ),
    ("Encounter", &[p("patient", &["subject"])]),
    ("EnrollmentRequest", &[p("subject", &["candidate"])]),
    ("EpisodeOfCare", &[p("patient", &["patient"])]),
    (
        "ExplanationOfBenefit",
        &[p("patient", &["patient"]), p("payee", &["payee.party"])],
    ),
    ("FamilyMemberHistory", &[p("patient", &["patient"])]),
    ("Flag", &[p("patient", &["subject"])]),
    ("Goal", &[p("patient", &["subject"])]),
    ("ImagingStudy", &[p("patient", &["subject"])]),
    ("Immunization", &[p("patient", &["patient"])]),
    ("ImmunizationEvaluation", &[p("patient", &["patient"])]),
    ("ImmunizationRecommendation", &[p("patient", &["patient"])]),
    (
        "Invoice",
        &[
            p("subject", &["subject"]),
            p("patient", &["subject"]),
            p("recipient", &["recipient"]),
        ],
    ),
    (
        "List",
        &[p("subject", &["subject"]), p("source", &["source"])],
    ),
    ("MeasureReport", &[p("patient", &["subject"])]),
    ("Media", &[p("subject", &["subject"])]),
    (
        "MedicationAdministration",
        &[
            p("patient", &["subject"]),
            p("performer", &["performer.actor"]),
            p("subject", &["subject"]),
        ],
    ),
    (
        "MedicationDispense",
        &[
            p("subject", &["subject"]),
            p("patient", &["subject"]),
            p("receiver", &["receiver"]),
        ],
    ),
    ("MedicationRequest", &[p("subject", &["subject"])]),
    ("MedicationStatement", &[p("subject", &["subject"])]),
    ("MolecularSequence", &[p("patient", &["patient"])]),
    ("NutritionOrder", &[p("patient", &["patient"])]),
    (
        "Observation",
        &[p("subject", &["subject"]), p("performer", &["performer"])],
    ),
    ("Patient", &[p("link", &["link.other"])]),
    ("Person", &[p("patient", &["link.target"])]),
    (
        "Procedure",
        &[
            p("patient", &["subject"]),
            p("performer", &["performer.actor"]),
        ],
    ),
    ("Provenance", &[p("patient", &["target"])]),
    (
        "QuestionnaireResponse",
        &[p("subject", &["subject"]), p("author", &["author"])],
    ),
    ("RelatedPerson", &[p("patient", &["patient"])]),
    (
        "RequestGroup",
        &[
            p("subject", &["subject"]),
            p("participant", &["action.participant"]),
        ],
    ),
    ("ResearchSubject", &[p("individual", &["individual"])]),
    ("RiskAssessment", &[p("subject", &["subject"])]),
    ("Schedule", &[p("actor", &["actor"])]),
    (
        "ServiceRequest",
        &[p("subject", &["subject"]), p("performer", &["performer"])],
    ),
    ("Specimen", &[p("subject", &["subject"])]),
    ("SupplyDelivery", &[p("patient", &["patient"])]),
    ("SupplyRequest", &[p("subject", &["deliverTo"])]),
    ("VisionPrescription", &[p("patient", &["patient"])]),
];

/// The compartment parameters of a type, or `None` if it is not in the compartment.
pub fn compartment_params(resource_type: &str) -> Option<&'static [CompartmentParam]> {
    PATIENT_COMPARTMENT
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, ps)| *ps)
}

/// True if the type belongs to the Patient compartment.
pub fn in_compartment(resource_type: &str) -> bool {
    compartment_params(resource_type).is_some()
}

fn collect_refs<'a>(v: &'a Value, path: &[&str], out: &mut Vec<&'a str>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, path, out)),
        Value::Object(map) => match path.split_first() {
            None => {
                if let Some(r) = map.get("reference").and_then(Value::as_str) {
                    out.push(r);
                }
            }
            Some((head, rest)) => {
                if let Some(child) = map.get(*head) {
                    collect_refs(child, rest, out);
                }
            }
        },
        _ => {}
    }
}

/// Patient ids a resource references through each compartment parameter, as
/// (parameter index, patient id). A `Patient` is in its own compartment.
pub fn patient_links(resource: &Value) -> Vec<(usize, String)> {
    let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
        return vec![];
    };
    let mut out = Vec::new();
    if ty == "Patient"
        && let Some(id) = resource.get("id").and_then(Value::as_str)
    {
        out.push((usize::MAX, id.to_string()));
    }
    let Some(params) = compartment_params(ty) else {
        return out;
    };
    for (i, param) in params.iter().enumerate() {
        for path in param.paths {
            let segments: Vec<&str> = path.split('.').collect();
            let mut refs = Vec::new();
            collect_refs(resource, &segments, &mut refs);
            for r in refs {
                // Relative references and absolute ones ending in Patient/<id>.
                let tail = r
                    .rsplit_once("Patient/")
                    .map(|(before, id)| (before.is_empty() || before.ends_with('/'), id));
                if let Some((true, id)) = tail
                    && crate::fhir::ids::is_fhir_id(id)
                {
                    out.push((i, id.to_string()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn links_through_each_parameter() {
        let obs = json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/a"},
            "performer": [{"reference": "Practitioner/x"}, {"reference": "https://h/fhir/Patient/b"}]});
        assert_eq!(
            patient_links(&obs),
            vec![(0, "a".to_string()), (1, "b".to_string())]
        );
        let proc = json!({"resourceType": "Procedure", "subject": {"reference": "Patient/c"},
            "performer": [{"actor": {"reference": "Patient/d"}}]});
        assert_eq!(
            patient_links(&proc),
            vec![(0, "c".to_string()), (1, "d".to_string())]
        );
        assert!(patient_links(&json!({"resourceType": "Practitioner", "id": "p"})).is_empty());
        assert_eq!(
            patient_links(&json!({"resourceType": "Patient", "id": "z"})),
            vec![(usize::MAX, "z".to_string())]
        );
    }

    #[test]
    fn compartment_is_sorted_and_known() {
        let names: Vec<_> = PATIENT_COMPARTMENT.iter().map(|(t, _)| *t).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(
            names
                .iter()
                .all(|t| crate::fhir::resource_types::is_resource_type(t))
        );
    }
}
