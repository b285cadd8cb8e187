//! [`Source`] over a directory of `<Type>*.ndjson` files. The cursor is
//! `<file index>:<byte offset>`, so a page can be re-read exactly.

use super::{Page, PageRequest, PatientScope, Source, SourceError, compartment_owner};
use crate::instant::parse_instant;
use crate::ndjson_page::{minify_into, read_head};
use crate::resource_types::is_resource_type;
use async_trait::async_trait;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Most bytes one page scans, so a filter that rejects everything still
/// returns control to the step regularly.
const MAX_SCAN_BYTES: u64 = 16 * 1024 * 1024;

/// Reads resources from NDJSON files in one directory.
#[derive(Debug, Clone)]
pub struct NdjsonSource {
    dir: PathBuf,
}

fn io_err(e: std::io::Error) -> SourceError {
    SourceError::Permanent(format!("reading NDJSON source: {}", e.kind()))
}

/// Opens a source file positioned at `offset` bytes of its (decompressed)
/// content. A `.gz` file cannot seek, so its offset is reached by
/// decompressing and discarding: fine for data-lake drops, slower than plain
/// files for very large ones.
fn open_at(path: &Path, offset: u64) -> Result<Box<dyn BufRead + Send>, SourceError> {
    let file = std::fs::File::open(path).map_err(io_err)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut reader = BufReader::with_capacity(
            256 * 1024,
            flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        );
        std::io::copy(&mut reader.by_ref().take(offset), &mut std::io::sink()).map_err(io_err)?;
        Ok(Box::new(reader))
    } else {
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        reader.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        Ok(Box::new(reader))
    }
}

/// The resource type a file name belongs to (`Observation.ndjson`,
/// `Observation-2.ndjson`, `Observation.000.ndjson`, `Observation.ndjson.gz`).
pub fn type_of_file(name: &str) -> Option<&str> {
    let stem = name
        .strip_suffix(".ndjson")
        .or_else(|| name.strip_suffix(".ndjson.gz"))?;
    let ty = stem.split(['-', '.']).next()?;
    is_resource_type(ty).then_some(ty)
}

impl NdjsonSource {
    /// A source over `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn files_of(&self, resource_type: &str) -> Result<Vec<PathBuf>, SourceError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io_err)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().and_then(type_of_file) == Some(resource_type))
            .map(|e| e.path())
            .collect();
        files.sort();
        Ok(files)
    }

    fn read_page(&self, req: &PageRequest<'_>) -> Result<Page, SourceError> {
        let files = self.files_of(req.resource_type)?;
        let (mut file_idx, mut offset) = match req.cursor {
            None => (0usize, 0u64),
            Some(c) => {
                let (f, o) = c
                    .split_once(':')
                    .and_then(|(f, o)| Some((f.parse().ok()?, o.parse().ok()?)))
                    .ok_or_else(|| SourceError::Permanent("malformed NDJSON cursor".into()))?;
                (f, o)
            }
        };
        let mut page = Page::default();
        let mut scanned = 0u64;
        let mut line = Vec::with_capacity(8 * 1024);
        while file_idx < files.len() {
            let mut reader = open_at(&files[file_idx], offset)?;
            loop {
                if page.count as usize >= req.page_size || scanned >= MAX_SCAN_BYTES {
                    page.next = Some(format!("{file_idx}:{offset}"));
                    return Ok(page);
                }
                line.clear();
                let n = reader
                    .by_ref()
                    .read_until(b'\n', &mut line)
                    .map_err(io_err)? as u64;
                if n == 0 {
                    break;
                }
                offset += n;
                scanned += n;
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let head = read_head(&line).map_err(|_| {
                    SourceError::Permanent(format!(
                        "{} line ending at byte {offset} is not a JSON resource",
                        files[file_idx]
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or("?")
                    ))
                })?;
                if head.resource_type != req.resource_type {
                    return Err(SourceError::Permanent(format!(
                        "a {} file holds a resource of another type",
                        req.resource_type
                    )));
                }
                if let Some(lu) = head.meta.as_ref().and_then(|m| m.last_updated) {
                    let Some(t) = parse_instant(lu) else {
                        return Err(SourceError::Permanent(
                            "meta.lastUpdated is not an instant".into(),
                        ));
                    };
                    if req.since.is_some_and(|s| t <= s) || t > req.until {
                        continue;
                    }
                }
                if req.scope.is_compartment() {
                    // Compartment membership needs the reference elements; only
                    // Patient- and Group-level exports pay for this parse.
                    let value: serde_json::Value = serde_json::from_slice(&line)
                        .map_err(|_| SourceError::Permanent("resource is not valid JSON".into()))?;
                    if compartment_owner(&value, req.scope).is_none() {
                        continue;
                    }
                }
                if line.contains(&b'\r') {
                    // A bare CR inside a line would break NDJSON framing downstream.
                    minify_into(&mut page.ndjson, &line);
                } else {
                    page.ndjson.extend_from_slice(&line);
                }
                page.ndjson.push(b'\n');
                page.count += 1;
            }
            file_idx += 1;
            offset = 0;
        }
        page.next = None;
        Ok(page)
    }

    fn count_lines(&self, resource_type: &str) -> Result<u64, SourceError> {
        let mut total = 0u64;
        let mut buf = vec![0u8; 1024 * 1024];
        for path in self.files_of(resource_type)? {
            let mut f = open_at(&path, 0)?;
            loop {
                let n = f.read(&mut buf).map_err(io_err)?;
                if n == 0 {
                    break;
                }
                total += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
        Ok(total)
    }
}

#[async_trait]
impl Source for NdjsonSource {
    async fn resource_types(&self) -> Result<Vec<String>, SourceError> {
        let dir = self.dir.clone();
        let mut types: Vec<String> =
            tokio::task::spawn_blocking(move || -> Result<Vec<String>, SourceError> {
                Ok(std::fs::read_dir(&dir)
                    .map_err(io_err)?
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(type_of_file)
                            .map(str::to_string)
                    })
                    .collect())
            })
            .await
            .map_err(|e| SourceError::Permanent(e.to_string()))??;
        types.sort();
        types.dedup();
        // Group definitions are read for Group exports; they are not exported.
        types.retain(|t| t != "Group");
        Ok(types)
    }

    async fn fetch_page(&self, req: &PageRequest<'_>) -> Result<Page, SourceError> {
        if !req.type_filters.is_empty() {
            return Err(SourceError::Permanent(
                "_typeFilter is not supported by the NDJSON source".into(),
            ));
        }
        let this = self.clone();
        let owned = OwnedRequest::from(req);
        tokio::task::spawn_blocking(move || this.read_page(&owned.as_request()))
            .await
            .map_err(|e| SourceError::Permanent(e.to_string()))?
    }

    async fn estimate(&self, req: &PageRequest<'_>) -> Result<Option<u64>, SourceError> {
        let this = self.clone();
        let ty = req.resource_type.to_string();
        let n = tokio::task::spawn_blocking(move || this.count_lines(&ty))
            .await
            .map_err(|e| SourceError::Permanent(e.to_string()))??;
        Ok(Some(n))
    }

    async fn read_resource(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let mut req = OwnedRequest {
            resource_type: resource_type.into(),
            cursor: None,
            since: None,
            until: time::OffsetDateTime::now_utc() + time::Duration::days(36500),
            page_size: 10_000,
            scope: PatientScope::None,
        };
        loop {
            let page = {
                let this = self.clone();
                let r = req.clone();
                tokio::task::spawn_blocking(move || this.read_page(&r.as_request()))
                    .await
                    .map_err(|e| SourceError::Permanent(e.to_string()))??
            };
            for line in page.ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if read_head(line).ok().and_then(|h| h.id) == Some(id) {
                    return Ok(Some(line.to_vec()));
                }
            }
            match page.next {
                Some(next) => req.cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    async fn patient_ids(&self) -> Result<Vec<String>, SourceError> {
        let mut req = OwnedRequest {
            resource_type: "Patient".into(),
            cursor: None,
            since: None,
            until: time::OffsetDateTime::now_utc() + time::Duration::days(36500),
            page_size: 10_000,
            scope: PatientScope::None,
        };
        let mut ids = Vec::new();
        loop {
            let this = self.clone();
            let r = req.clone();
            let page = tokio::task::spawn_blocking(move || this.read_page(&r.as_request()))
                .await
                .map_err(|e| SourceError::Permanent(e.to_string()))??;
            for line in page.ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Some(id) = read_head(line).ok().and_then(|h| h.id) {
                    ids.push(id.to_string());
                }
            }
            match page.next {
                Some(next) => req.cursor = Some(next),
                None => return Ok(ids),
            }
        }
    }

    fn queries_by_patient_batch(&self) -> bool {
        false
    }

    fn supports_type_filter(&self) -> bool {
        false
    }
}

/// A [`PageRequest`] that can move into a blocking task.
#[derive(Debug, Clone)]
struct OwnedRequest {
    resource_type: String,
    cursor: Option<String>,
    since: Option<time::OffsetDateTime>,
    until: time::OffsetDateTime,
    page_size: usize,
    scope: PatientScope,
}

impl OwnedRequest {
    fn from(r: &PageRequest<'_>) -> Self {
        Self {
            resource_type: r.resource_type.to_string(),
            cursor: r.cursor.map(str::to_string),
            since: r.since,
            until: r.until,
            page_size: r.page_size,
            scope: r.scope.clone(),
        }
    }

    fn as_request(&self) -> PageRequest<'_> {
        PageRequest {
            resource_type: &self.resource_type,
            cursor: self.cursor.as_deref(),
            since: self.since,
            until: self.until,
            type_filters: &[],
            page_size: self.page_size,
            scope: &self.scope,
            batch: None,
        }
    }
}
