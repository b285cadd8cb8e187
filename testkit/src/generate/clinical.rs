//! One patient's record: the Patient, its Encounters (each with
//! Observations and a Claim), Conditions, Procedures, MedicationRequests,
//! DiagnosticReports, Immunizations and a DocumentReference. Every function
//! draws from the generator in a fixed order, so a seed always gives the same
//! bytes.

use super::{FAMILY, GIVEN, Population, Rng, Writers, instant, random_instant, random_unix};
use std::io::Result;

const LOINC: &[(&str, &str, &str)] = &[
    ("8867-4", "Heart rate", "/min"),
    ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]"),
    ("29463-7", "Body weight", "kg"),
    ("8302-2", "Body height", "cm"),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL"),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "mg/dL",
    ),
];
const CATEGORY: &[&str] = &["vital-signs", "laboratory"];

/// The patient a record belongs to.
struct Subject {
    /// Index of the patient (`pt-<i>`).
    i: u64,
    pid: String,
    org: String,
}

/// One encounter, shared by its Observations and its Claim.
struct Visit {
    /// Index of the encounter within the patient.
    e: u64,
    eid: String,
    start: i64,
    practitioner: String,
}

/// Writes patient `i` and every resource of its record.
pub(super) fn write_patient_record(
    w: &mut Writers,
    rng: &mut Rng,
    population: &Population,
    i: u64,
) -> Result<()> {
    let subject = Subject {
        i,
        pid: format!("pt-{i}"),
        org: format!("org-{}", rng.range(0, population.organizations - 1)),
    };
    write_patient(w, rng, &subject)?;
    let encounters = rng.range(3, 8);
    for e in 0..encounters {
        write_encounter(w, rng, population, &subject, e)?;
    }
    write_conditions(w, rng, &subject)?;
    write_procedures(w, rng, &subject)?;
    write_medication_requests(w, rng, population, &subject)?;
    write_diagnostic_reports(w, rng, &subject)?;
    write_immunizations(w, rng, &subject)?;
    write_document_reference(w, rng, &subject)
}

fn write_patient(w: &mut Writers, rng: &mut Rng, s: &Subject) -> Result<()> {
    let (pid, org) = (&s.pid, &s.org);
    let json = format!(
        r#"{{"resourceType":"Patient","id":"{pid}","meta":{{"lastUpdated":"{}"}},"identifier":[{{"system":"urn:oid:2.16.840.1.113883.4.3.25","value":"{:09}"}}],"active":true,"name":[{{"use":"official","family":"{}","given":["{}"]}}],"gender":"{}","birthDate":"{}-{:02}-{:02}","address":[{{"line":["{} Main St"],"city":"Springfield","state":"MA","postalCode":"01101"}}],"managingOrganization":{{"reference":"Organization/{org}"}}}}"#,
        random_instant(rng),
        rng.range(0, 999_999_999),
        rng.pick(FAMILY),
        rng.pick(GIVEN),
        rng.pick(&["female", "male"]),
        rng.range(1930, 2020),
        rng.range(1, 12),
        rng.range(1, 28),
        rng.range(1, 999)
    );
    w.line("Patient", &json)
}

/// Writes encounter `e` of the subject, then its Observations and its Claim.
fn write_encounter(
    w: &mut Writers,
    rng: &mut Rng,
    population: &Population,
    s: &Subject,
    e: u64,
) -> Result<()> {
    let visit = Visit {
        e,
        eid: format!("enc-{}-{e}", s.i),
        start: random_unix(rng),
        practitioner: format!("pr-{}", rng.range(0, population.practitioners - 1)),
    };
    let (eid, pid, org, pr) = (&visit.eid, &s.pid, &s.org, &visit.practitioner);
    let json = format!(
        r#"{{"resourceType":"Encounter","id":"{eid}","meta":{{"lastUpdated":"{}"}},"status":"finished","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"}},"type":[{{"coding":[{{"system":"http://snomed.info/sct","code":"185349003","display":"Encounter for check up"}}]}}],"subject":{{"reference":"Patient/{pid}"}},"participant":[{{"individual":{{"reference":"Practitioner/{pr}"}}}}],"period":{{"start":"{}","end":"{}"}},"serviceProvider":{{"reference":"Organization/{org}"}}}}"#,
        random_instant(rng),
        instant(visit.start),
        instant(visit.start + 1800)
    );
    w.line("Encounter", &json)?;
    write_observations(w, rng, s, &visit)?;
    write_claim(w, rng, s, &visit)
}

fn write_observations(w: &mut Writers, rng: &mut Rng, s: &Subject, v: &Visit) -> Result<()> {
    let (i, e, pid, eid, pr) = (s.i, v.e, &s.pid, &v.eid, &v.practitioner);
    for o in 0..rng.range(4, 10) {
        let (code, display, unit) = LOINC[(rng.next_u64() % LOINC.len() as u64) as usize];
        let json = format!(
            r#"{{"resourceType":"Observation","id":"obs-{i}-{e}-{o}","meta":{{"lastUpdated":"{}"}},"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{}"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{code}","display":"{display}"}}],"text":"{display}"}},"subject":{{"reference":"Patient/{pid}"}},"encounter":{{"reference":"Encounter/{eid}"}},"effectiveDateTime":"{}","issued":"{}","performer":[{{"reference":"Practitioner/{pr}"}}],"valueQuantity":{{"value":{}.{},"unit":"{unit}","system":"http://unitsofmeasure.org","code":"{unit}"}}}}"#,
            random_instant(rng),
            rng.pick(CATEGORY),
            instant(v.start),
            instant(v.start + 600),
            rng.range(1, 250),
            rng.range(0, 9)
        );
        w.line("Observation", &json)?;
    }
    Ok(())
}

fn write_claim(w: &mut Writers, rng: &mut Rng, s: &Subject, v: &Visit) -> Result<()> {
    let (i, e, pid, eid, pr) = (s.i, v.e, &s.pid, &v.eid, &v.practitioner);
    let json = format!(
        r#"{{"resourceType":"Claim","id":"claim-{i}-{e}","meta":{{"lastUpdated":"{}"}},"status":"active","type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"professional"}}]}},"use":"claim","patient":{{"reference":"Patient/{pid}"}},"created":"{}","provider":{{"reference":"Practitioner/{pr}"}},"priority":{{"coding":[{{"code":"normal"}}]}},"insurance":[{{"sequence":1,"focal":true,"coverage":{{"display":"Medicare"}}}}],"item":[{{"sequence":1,"productOrService":{{"coding":[{{"system":"http://snomed.info/sct","code":"185349003"}}]}},"encounter":[{{"reference":"Encounter/{eid}"}}],"net":{{"value":{},"currency":"USD"}}}}],"total":{{"value":{},"currency":"USD"}}}}"#,
        random_instant(rng),
        instant(v.start),
        rng.range(50, 900),
        rng.range(50, 900)
    );
    w.line("Claim", &json)
}

fn write_conditions(w: &mut Writers, rng: &mut Rng, s: &Subject) -> Result<()> {
    let (i, pid) = (s.i, &s.pid);
    for c in 0..rng.range(1, 4) {
        let json = format!(
            r#"{{"resourceType":"Condition","id":"cond-{i}-{c}","meta":{{"lastUpdated":"{}"}},"clinicalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"{}"}}]}},"verificationStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}}]}},"code":{{"coding":[{{"system":"http://snomed.info/sct","code":"{}"}}]}},"subject":{{"reference":"Patient/{pid}"}},"onsetDateTime":"{}"}}"#,
            random_instant(rng),
            rng.pick(&["active", "resolved"]),
            rng.pick(&["44054006", "38341003", "195662009", "10509002"]),
            random_instant(rng)
        );
        w.line("Condition", &json)?;
    }
    Ok(())
}

fn write_procedures(w: &mut Writers, rng: &mut Rng, s: &Subject) -> Result<()> {
    let (i, pid) = (s.i, &s.pid);
    for x in 0..rng.range(1, 3) {
        let json = format!(
            r#"{{"resourceType":"Procedure","id":"proc-{i}-{x}","meta":{{"lastUpdated":"{}"}},"status":"completed","code":{{"coding":[{{"system":"http://snomed.info/sct","code":"{}"}}]}},"subject":{{"reference":"Patient/{pid}"}},"performedDateTime":"{}"}}"#,
            random_instant(rng),
            rng.pick(&["430193006", "73761001", "117015009"]),
            random_instant(rng)
        );
        w.line("Procedure", &json)?;
    }
    Ok(())
}

fn write_medication_requests(
    w: &mut Writers,
    rng: &mut Rng,
    population: &Population,
    s: &Subject,
) -> Result<()> {
    let (i, pid) = (s.i, &s.pid);
    for m in 0..rng.range(1, 4) {
        let json = format!(
            r#"{{"resourceType":"MedicationRequest","id":"medreq-{i}-{m}","meta":{{"lastUpdated":"{}"}},"status":"active","intent":"order","medicationCodeableConcept":{{"coding":[{{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"{}"}}]}},"subject":{{"reference":"Patient/{pid}"}},"authoredOn":"{}","requester":{{"reference":"Practitioner/pr-{}"}},"dosageInstruction":[{{"text":"Take one tablet daily"}}]}}"#,
            random_instant(rng),
            rng.pick(&["314076", "197361", "860975"]),
            random_instant(rng),
            rng.range(0, population.practitioners - 1)
        );
        w.line("MedicationRequest", &json)?;
    }
    Ok(())
}

fn write_diagnostic_reports(w: &mut Writers, rng: &mut Rng, s: &Subject) -> Result<()> {
    let (i, pid) = (s.i, &s.pid);
    for d in 0..rng.range(1, 2) {
        let json = format!(
            r#"{{"resourceType":"DiagnosticReport","id":"dr-{i}-{d}","meta":{{"lastUpdated":"{}"}},"status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"58410-2","display":"CBC panel"}}]}},"subject":{{"reference":"Patient/{pid}"}},"effectiveDateTime":"{}","result":[{{"reference":"Observation/obs-{i}-0-0"}}]}}"#,
            random_instant(rng),
            random_instant(rng)
        );
        w.line("DiagnosticReport", &json)?;
    }
    Ok(())
}

fn write_immunizations(w: &mut Writers, rng: &mut Rng, s: &Subject) -> Result<()> {
    let (i, pid) = (s.i, &s.pid);
    for m in 0..rng.range(1, 3) {
        let json = format!(
            r#"{{"resourceType":"Immunization","id":"imm-{i}-{m}","meta":{{"lastUpdated":"{}"}},"status":"completed","vaccineCode":{{"coding":[{{"system":"http://hl7.org/fhir/sid/cvx","code":"{}"}}]}},"patient":{{"reference":"Patient/{pid}"}},"occurrenceDateTime":"{}","primarySource":true}}"#,
            random_instant(rng),
            rng.pick(&["140", "208", "133"]),
            random_instant(rng)
        );
        w.line("Immunization", &json)?;
    }
    Ok(())
}

fn write_document_reference(w: &mut Writers, rng: &mut Rng, s: &Subject) -> Result<()> {
    let (i, pid) = (s.i, &s.pid);
    let note: String = (0..rng.range(40, 120))
        .map(|k| if k % 4 == 3 { 'Q' } else { 'A' })
        .collect();
    let json = format!(
        r#"{{"resourceType":"DocumentReference","id":"doc-{i}","meta":{{"lastUpdated":"{}"}},"status":"current","type":{{"coding":[{{"system":"http://loinc.org","code":"34117-2"}}]}},"subject":{{"reference":"Patient/{pid}"}},"date":"{}","content":[{{"attachment":{{"contentType":"text/plain","data":"{note}"}}}}]}}"#,
        random_instant(rng),
        random_instant(rng)
    );
    w.line("DocumentReference", &json)
}
