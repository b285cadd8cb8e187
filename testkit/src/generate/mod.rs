//! A deterministic, Synthea-like synthetic dataset in NDJSON, one file per
//! type, with references as `Type/id`, `meta.lastUpdated` spread over five
//! years, and a few Groups. `bulk-export generate` is a thin command over
//! [`generate`].

mod clinical;
mod rng;

pub use rng::Rng;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Counts of generated resources per type.
pub type Counts = BTreeMap<String, u64>;

const START: i64 = 1_577_836_800; // 2020-01-01T00:00:00Z
const SPAN: u64 = 5 * 365 * 24 * 3600;

const GIVEN: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivan", "Jun", "Kai", "Lena",
];
const FAMILY: &[&str] = &[
    "Smith", "Okafor", "Nguyen", "Garcia", "Muller", "Rossi", "Tanaka", "Kowalski", "Haddad",
];

/// An instant as FHIR writes it, with milliseconds, in UTC.
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

/// A random instant in the dataset's five years.
fn random_instant(rng: &mut Rng) -> String {
    instant(random_unix(rng))
}

/// A random Unix time in the dataset's five years.
fn random_unix(rng: &mut Rng) -> i64 {
    START + rng.range(0, SPAN) as i64
}

/// One buffered NDJSON file per type, opened on its first line.
struct Writers {
    files: BTreeMap<&'static str, BufWriter<File>>,
    counts: Counts,
    dir: PathBuf,
}

impl Writers {
    fn new(dir: &Path) -> Self {
        Self {
            files: BTreeMap::new(),
            counts: Counts::new(),
            dir: dir.to_path_buf(),
        }
    }

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

    /// Flushes every file; returns the counts per type.
    fn finish(mut self) -> std::io::Result<Counts> {
        for f in self.files.values_mut() {
            f.flush()?;
        }
        Ok(self.counts)
    }
}

/// How many of the shared resources every patient can reference.
struct Population {
    organizations: u64,
    practitioners: u64,
}

/// Writes a dataset of `patients` patients into `out`; returns counts per type.
pub fn generate(out: &Path, patients: u64, seed: u64) -> std::io::Result<Counts> {
    std::fs::create_dir_all(out)?;
    let mut rng = Rng::new(seed);
    let mut w = Writers::new(out);
    let population = Population {
        organizations: patients / 50 + 1,
        practitioners: patients / 10 + 1,
    };
    write_organizations(&mut w, &mut rng, population.organizations)?;
    write_practitioners(&mut w, &mut rng, population.practitioners)?;
    for i in 0..patients {
        clinical::write_patient_record(&mut w, &mut rng, &population, i)?;
    }
    write_groups(&mut w, patients)?;
    w.finish()
}

fn write_organizations(w: &mut Writers, rng: &mut Rng, organizations: u64) -> std::io::Result<()> {
    for o in 0..organizations {
        let json = format!(
            r#"{{"resourceType":"Organization","id":"org-{o}","meta":{{"lastUpdated":"{}"}},"active":true,"name":"General Hospital {o}","address":[{{"city":"Springfield","state":"MA"}}]}}"#,
            random_instant(rng)
        );
        w.line("Organization", &json)?;
    }
    Ok(())
}

fn write_practitioners(w: &mut Writers, rng: &mut Rng, practitioners: u64) -> std::io::Result<()> {
    for p in 0..practitioners {
        let json = format!(
            r#"{{"resourceType":"Practitioner","id":"pr-{p}","meta":{{"lastUpdated":"{}"}},"active":true,"name":[{{"family":"{}","given":["{}"],"prefix":["Dr."]}}]}}"#,
            random_instant(rng),
            rng.pick(FAMILY),
            rng.pick(GIVEN)
        );
        w.line("Practitioner", &json)?;
    }
    Ok(())
}

/// `member` entries for patients with these indices.
fn members(ids: impl Iterator<Item = u64>) -> String {
    ids.map(|i| format!(r#"{{"entity":{{"reference":"Patient/pt-{i}"}}}}"#))
        .collect::<Vec<_>>()
        .join(",")
}

/// Groups: all patients, every third patient (with an inactive member and a
/// nested group), and a small one.
fn write_groups(w: &mut Writers, patients: u64) -> std::io::Result<()> {
    let mut every_third = members((0..patients).step_by(3));
    if patients > 1 {
        every_third.push_str(r#",{"entity":{"reference":"Patient/pt-1"},"inactive":true}"#);
    }
    every_third.push_str(r#",{"entity":{"reference":"Group/small"}}"#);
    let groups = [
        ("all-patients", members(0..patients)),
        ("every-third", every_third),
        ("small", members(0..patients.min(10))),
    ];
    for (id, m) in groups {
        let json = format!(
            r#"{{"resourceType":"Group","id":"{id}","meta":{{"lastUpdated":"{}"}},"type":"person","actual":true,"member":[{m}]}}"#,
            instant(START)
        );
        w.line("Group", &json)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a over every file, in type order.
    fn digest(dir: &Path, counts: &Counts) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for ty in counts.keys() {
            for b in std::fs::read(dir.join(format!("{ty}.ndjson"))).unwrap() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    fn generated(patients: u64, seed: u64) -> (Counts, u64) {
        let dir = std::env::temp_dir().join(format!(
            "generate-test-{}-{patients}-{seed}",
            std::process::id()
        ));
        let counts = generate(&dir, patients, seed).unwrap();
        let h = digest(&dir, &counts);
        std::fs::remove_dir_all(&dir).unwrap();
        (counts, h)
    }

    /// The datasets behind the tests and the benchmark must not drift: a
    /// change of this digest is a change of every generated dataset.
    #[test]
    fn a_seed_always_gives_the_same_bytes() {
        let (counts, h) = generated(25, 3);
        assert_eq!(counts["Patient"], 25);
        assert_eq!(counts["Group"], 3);
        assert_eq!(counts["Organization"], 1);
        assert_eq!(counts["Practitioner"], 3);
        assert_eq!(h, GOLDEN_25_3, "{h:#x}");
        assert_ne!(generated(25, 4).1, h, "another seed, another dataset");
    }

    const GOLDEN_25_3: u64 = 0x604c_d1be_1905_e130;
}
