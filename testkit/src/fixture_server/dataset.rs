//! The data directory in memory: every resource as its raw line, with `id`
//! and `meta.lastUpdated` parsed, sorted per type by `(lastUpdated, id)`.

use super::error::LoadError;
use bulk_export_core::fhir::framing::read_head;
use bulk_export_core::fhir::instant::parse_instant;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One loaded resource.
pub(crate) struct Resource {
    /// `meta.lastUpdated` in Unix nanoseconds (`i128::MIN` when absent).
    pub(crate) t: i128,
    pub(crate) id: Box<str>,
    pub(crate) raw: Bytes,
}

/// The resources of one type.
pub(crate) struct TypeData {
    /// Sorted by `(t, id)`.
    pub(crate) resources: Vec<Resource>,
    pub(crate) by_id: HashMap<Box<str>, usize>,
    /// Patient-compartment links per resource, computed on first use.
    links: OnceLock<Vec<Vec<(usize, String)>>>,
    /// Indices of `resources` in id order, computed on first use.
    id_order: OnceLock<Vec<usize>>,
}

impl TypeData {
    /// Sorts `resources` and indexes them by id.
    fn new(mut resources: Vec<Resource>) -> Self {
        resources.sort_by(|a, b| (a.t, &a.id).cmp(&(b.t, &b.id)));
        let by_id = resources
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        Self {
            resources,
            by_id,
            links: OnceLock::new(),
            id_order: OnceLock::new(),
        }
    }

    /// The patient-compartment links (parameter index, patient id) of each
    /// resource, in resource order.
    pub(crate) fn links(&self) -> &[Vec<(usize, String)>] {
        self.links.get_or_init(|| {
            self.resources
                .iter()
                .map(|r| {
                    serde_json::from_slice::<serde_json::Value>(&r.raw)
                        .map(|v| bulk_export_core::fhir::compartment::patient_links(&v))
                        .unwrap_or_default()
                })
                .collect()
        })
    }

    /// Indices of the resources in ascending (byte) order of id.
    pub(crate) fn id_order(&self) -> &[usize] {
        self.id_order.get_or_init(|| {
            let mut order: Vec<usize> = (0..self.resources.len()).collect();
            order.sort_by(|a, b| self.resources[*a].id.cmp(&self.resources[*b].id));
            order
        })
    }

    /// The raw line of the resource with this id.
    pub(crate) fn read(&self, id: &str) -> Option<Bytes> {
        self.by_id
            .get(id)
            .and_then(|i| self.resources.get(*i))
            .map(|r| r.raw.clone())
    }
}

/// Loaded resources per type.
pub(crate) struct Dataset {
    pub(crate) types: BTreeMap<String, TypeData>,
}

impl Dataset {
    /// The resources of `ty`; none for a type the directory does not hold.
    pub(crate) fn type_data(&self, ty: &str) -> &TypeData {
        static EMPTY: OnceLock<TypeData> = OnceLock::new();
        self.types
            .get(ty)
            .unwrap_or_else(|| EMPTY.get_or_init(|| TypeData::new(Vec::new())))
    }
}

/// Loads every `*.ndjson` file of `dir`.
pub(crate) fn load(dir: &Path) -> Result<Dataset, LoadError> {
    let mut per_type: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for path in ndjson_files(dir)? {
        load_file(&path, &mut per_type)?;
    }
    let types = per_type
        .into_iter()
        .map(|(ty, resources)| (ty, TypeData::new(resources)))
        .collect();
    Ok(Dataset { types })
}

/// The `*.ndjson` files directly in `dir`, sorted.
fn ndjson_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| LoadError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Adds the resources of one file to `per_type`; blank lines are skipped.
fn load_file(path: &Path, per_type: &mut BTreeMap<String, Vec<Resource>>) -> Result<(), LoadError> {
    let data = Bytes::from(std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?);
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < data.len() {
        line_no += 1;
        let end = memchr_nl(&data[start..]).map_or(data.len(), |i| start + i);
        let mut stop = end;
        while stop > start && matches!(data[stop - 1], b'\r' | b' ' | b'\t') {
            stop -= 1;
        }
        let line = data.slice(start..stop);
        start = end + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (ty, resource) = parse_line(path, line_no, line)?;
        per_type.entry(ty).or_default().push(resource);
    }
    Ok(())
}

/// The type and the indexed resource of one line.
fn parse_line(path: &Path, line_no: usize, line: Bytes) -> Result<(String, Resource), LoadError> {
    let head = read_head(&line).map_err(|source| LoadError::NotJson {
        path: path.to_path_buf(),
        line: line_no,
        source,
    })?;
    let id = head.id.ok_or_else(|| LoadError::MissingId {
        path: path.to_path_buf(),
        line: line_no,
    })?;
    let t = match head.meta.as_ref().and_then(|m| m.last_updated) {
        None => i128::MIN,
        Some(lu) => parse_instant(lu)
            .ok_or_else(|| LoadError::BadLastUpdated {
                path: path.to_path_buf(),
                line: line_no,
                value: lu.to_string(),
            })?
            .unix_timestamp_nanos(),
    };
    let ty = head.resource_type.to_string();
    let resource = Resource {
        t,
        id: id.into(),
        raw: line.clone(),
    };
    Ok((ty, resource))
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|b| *b == b'\n')
}
