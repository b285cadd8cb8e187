//! `bulk-export generate`: a deterministic, Synthea-like synthetic dataset in
//! NDJSON, one file per type, with references as `Type/id`, `meta.lastUpdated`
//! spread over five years, and a few Groups.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Deterministic pseudo-random numbers (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// Counts of generated resources per type.
pub type Counts = BTreeMap<String, u64>;

const START: i64 = 1_577_836_800; // 2020-01-01T00:00:00Z
const SPAN: u64 = 5 * 365 * 24 * 3600;

fn instant(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

struct Writers {
    files: BTreeMap<&'static str, BufWriter<File>>,
    counts: Counts,
    dir: std::path::PathBuf,
}

impl Writers {
    fn line(&mut self, ty: &'static str, json: &str) -> std::io::Result<()> {
        if !self.files.contains_key(ty) {
            let f = File::create(self.dir.join(format!("{ty}.ndjson")))?;
            self.files.insert(ty, BufWriter::with_capacity(1 << 20, f));
        }
        if let Some(w) = self.files.get_mut(ty) {
            w.write_all(json.as_bytes())?;
            w.write_all(b"\n")?;
        }
        *self.counts.entry(ty.to_string()).or_default() += 1;
        Ok(())
    }
}

const GIVEN: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivan", "Jun", "Kai", "Lena",
];
const FAMILY: &[&str] = &[
    "Smith", "Okafor", "Nguyen", "Garcia", "Muller", "Rossi", "Tanaka", "Kowalski", "Haddad",
];
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

/// Writes a dataset of `patients` patients into `out`; returns counts per type.
pub fn generate(out: &Path, patients: u64, seed: u64) -> std::io::Result<Counts> {
    std::fs::create_dir_all(out)?;
    let mut rng = Rng::new(seed);
    let mut w = Writers {
        files: BTreeMap::new(),
        counts: Counts::new(),
        dir: out.to_path_buf(),
    };
    let orgs = patients / 50 + 1;
    let practitioners = patients / 10 + 1;
    let lu = |rng: &mut Rng| instant(START + rng.range(0, SPAN) as i64);
    for o in 0..orgs {
        let json = format!(
            r#"{{"resourceType":"Organization","id":"org-{o}","meta":{{"lastUpdated":"{}"}},"active":true,"name":"General Hospital {o}","address":[{{"city":"Springfield","state":"MA"}}]}}"#,
            lu(&mut rng)
        );
        w.line("Organization", &json)?;
    }
    for p in 0..practitioners {
        let json = format!(
            r#"{{"resourceType":"Practitioner","id":"pr-{p}","meta":{{"lastUpdated":"{}"}},"active":true,"name":[{{"family":"{}","given":["{}"],"prefix":["Dr."]}}]}}"#,
            lu(&mut rng),
            rng.pick(FAMILY),
            rng.pick(GIVEN)
        );
        w.line("Practitioner", &json)?;
    }
    for i in 0..patients {
        let pid = format!("pt-{i}");
        let org = format!("org-{}", rng.range(0, orgs - 1));
        let json = format!(
            r#"{{"resourceType":"Patient","id":"{pid}","meta":{{"lastUpdated":"{}"}},"identifier":[{{"system":"urn:oid:2.16.840.1.113883.4.3.25","value":"{:09}"}}],"active":true,"name":[{{"use":"official","family":"{}","given":["{}"]}}],"gender":"{}","birthDate":"{}-{:02}-{:02}","address":[{{"line":["{} Main St"],"city":"Springfield","state":"MA","postalCode":"01101"}}],"managingOrganization":{{"reference":"Organization/{org}"}}}}"#,
            lu(&mut rng),
            rng.range(0, 999_999_999),
            rng.pick(FAMILY),
            rng.pick(GIVEN),
            rng.pick(&["female", "male"]),
            rng.range(1930, 2020),
            rng.range(1, 12),
            rng.range(1, 28),
            rng.range(1, 999)
        );
        w.line("Patient", &json)?;
        let encounters = rng.range(3, 8);
        for e in 0..encounters {
            let eid = format!("enc-{i}-{e}");
            let start = START + rng.range(0, SPAN) as i64;
            let pr = format!("pr-{}", rng.range(0, practitioners - 1));
            let json = format!(
                r#"{{"resourceType":"Encounter","id":"{eid}","meta":{{"lastUpdated":"{}"}},"status":"finished","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"}},"type":[{{"coding":[{{"system":"http://snomed.info/sct","code":"185349003","display":"Encounter for check up"}}]}}],"subject":{{"reference":"Patient/{pid}"}},"participant":[{{"individual":{{"reference":"Practitioner/{pr}"}}}}],"period":{{"start":"{}","end":"{}"}},"serviceProvider":{{"reference":"Organization/{org}"}}}}"#,
                lu(&mut rng),
                instant(start),
                instant(start + 1800)
            );
            w.line("Encounter", &json)?;
            for o in 0..rng.range(4, 10) {
                let (code, display, unit) = LOINC[(rng.next_u64() % LOINC.len() as u64) as usize];
                let json = format!(
                    r#"{{"resourceType":"Observation","id":"obs-{i}-{e}-{o}","meta":{{"lastUpdated":"{}"}},"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{}"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{code}","display":"{display}"}}],"text":"{display}"}},"subject":{{"reference":"Patient/{pid}"}},"encounter":{{"reference":"Encounter/{eid}"}},"effectiveDateTime":"{}","issued":"{}","performer":[{{"reference":"Practitioner/{pr}"}}],"valueQuantity":{{"value":{}.{},"unit":"{unit}","system":"http://unitsofmeasure.org","code":"{unit}"}}}}"#,
                    lu(&mut rng),
                    rng.pick(CATEGORY),
                    instant(start),
                    instant(start + 600),
                    rng.range(1, 250),
                    rng.range(0, 9)
                );
                w.line("Observation", &json)?;
            }
            let json = format!(
                r#"{{"resourceType":"Claim","id":"claim-{i}-{e}","meta":{{"lastUpdated":"{}"}},"status":"active","type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"professional"}}]}},"use":"claim","patient":{{"reference":"Patient/{pid}"}},"created":"{}","provider":{{"reference":"Practitioner/{pr}"}},"priority":{{"coding":[{{"code":"normal"}}]}},"insurance":[{{"sequence":1,"focal":true,"coverage":{{"display":"Medicare"}}}}],"item":[{{"sequence":1,"productOrService":{{"coding":[{{"system":"http://snomed.info/sct","code":"185349003"}}]}},"encounter":[{{"reference":"Encounter/{eid}"}}],"net":{{"value":{},"currency":"USD"}}}}],"total":{{"value":{},"currency":"USD"}}}}"#,
                lu(&mut rng),
                instant(start),
                rng.range(50, 900),
                rng.range(50, 900)
            );
            w.line("Claim", &json)?;
        }
        for c in 0..rng.range(1, 4) {
            let json = format!(
                r#"{{"resourceType":"Condition","id":"cond-{i}-{c}","meta":{{"lastUpdated":"{}"}},"clinicalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"{}"}}]}},"verificationStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}}]}},"code":{{"coding":[{{"system":"http://snomed.info/sct","code":"{}"}}]}},"subject":{{"reference":"Patient/{pid}"}},"onsetDateTime":"{}"}}"#,
                lu(&mut rng),
                rng.pick(&["active", "resolved"]),
                rng.pick(&["44054006", "38341003", "195662009", "10509002"]),
                lu(&mut rng)
            );
            w.line("Condition", &json)?;
        }
        for x in 0..rng.range(1, 3) {
            let json = format!(
                r#"{{"resourceType":"Procedure","id":"proc-{i}-{x}","meta":{{"lastUpdated":"{}"}},"status":"completed","code":{{"coding":[{{"system":"http://snomed.info/sct","code":"{}"}}]}},"subject":{{"reference":"Patient/{pid}"}},"performedDateTime":"{}"}}"#,
                lu(&mut rng),
                rng.pick(&["430193006", "73761001", "117015009"]),
                lu(&mut rng)
            );
            w.line("Procedure", &json)?;
        }
        for m in 0..rng.range(1, 4) {
            let json = format!(
                r#"{{"resourceType":"MedicationRequest","id":"medreq-{i}-{m}","meta":{{"lastUpdated":"{}"}},"status":"active","intent":"order","medicationCodeableConcept":{{"coding":[{{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"{}"}}]}},"subject":{{"reference":"Patient/{pid}"}},"authoredOn":"{}","requester":{{"reference":"Practitioner/pr-{}"}},"dosageInstruction":[{{"text":"Take one tablet daily"}}]}}"#,
                lu(&mut rng),
                rng.pick(&["314076", "197361", "860975"]),
                lu(&mut rng),
                rng.range(0, practitioners - 1)
            );
            w.line("MedicationRequest", &json)?;
        }
        for d in 0..rng.range(1, 2) {
            let json = format!(
                r#"{{"resourceType":"DiagnosticReport","id":"dr-{i}-{d}","meta":{{"lastUpdated":"{}"}},"status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"58410-2","display":"CBC panel"}}]}},"subject":{{"reference":"Patient/{pid}"}},"effectiveDateTime":"{}","result":[{{"reference":"Observation/obs-{i}-0-0"}}]}}"#,
                lu(&mut rng),
                lu(&mut rng)
            );
            w.line("DiagnosticReport", &json)?;
        }
        for m in 0..rng.range(1, 3) {
            let json = format!(
                r#"{{"resourceType":"Immunization","id":"imm-{i}-{m}","meta":{{"lastUpdated":"{}"}},"status":"completed","vaccineCode":{{"coding":[{{"system":"http://hl7.org/fhir/sid/cvx","code":"{}"}}]}},"patient":{{"reference":"Patient/{pid}"}},"occurrenceDateTime":"{}","primarySource":true}}"#,
                lu(&mut rng),
                rng.pick(&["140", "208", "133"]),
                lu(&mut rng)
            );
            w.line("Immunization", &json)?;
        }
        let note: String = (0..rng.range(40, 120))
            .map(|k| if k % 4 == 3 { 'Q' } else { 'A' })
            .collect();
        let json = format!(
            r#"{{"resourceType":"DocumentReference","id":"doc-{i}","meta":{{"lastUpdated":"{}"}},"status":"current","type":{{"coding":[{{"system":"http://loinc.org","code":"34117-2"}}]}},"subject":{{"reference":"Patient/{pid}"}},"date":"{}","content":[{{"attachment":{{"contentType":"text/plain","data":"{note}"}}}}]}}"#,
            lu(&mut rng),
            lu(&mut rng)
        );
        w.line("DocumentReference", &json)?;
    }
    // Groups: all patients, every third patient (with an inactive member and a
    // nested group), and a small one.
    let members = |ids: &mut dyn Iterator<Item = u64>| -> String {
        ids.map(|i| format!(r#"{{"entity":{{"reference":"Patient/pt-{i}"}}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let groups = [
        ("all-patients", members(&mut (0..patients))),
        ("every-third", {
            let mut m = members(&mut (0..patients).step_by(3));
            if patients > 1 {
                m.push_str(r#",{"entity":{"reference":"Patient/pt-1"},"inactive":true}"#);
            }
            m.push_str(r#",{"entity":{"reference":"Group/small"}}"#);
            m
        }),
        ("small", members(&mut (0..patients.min(10)))),
    ];
    for (id, m) in groups {
        let json = format!(
            r#"{{"resourceType":"Group","id":"{id}","meta":{{"lastUpdated":"{}"}},"type":"person","actual":true,"member":[{m}]}}"#,
            instant(START)
        );
        w.line("Group", &json)?;
    }
    for (_, f) in w.files.iter_mut() {
        f.flush()?;
    }
    Ok(w.counts)
}
