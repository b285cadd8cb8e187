//! [`Source`] over `<Type>*.ndjson[.gz]` files in a directory or under an S3
//! prefix. The cursor is `<file name>:<byte offset>`, so a page can be
//! re-read exactly, and files added to the location meanwhile never move it.

pub mod location;

use crate::adapters::ndjson::location::{Location, Opened, S3Prefix};
use crate::fhir::framing::{minify_into, read_head};
use crate::fhir::instant::parse_instant;
use crate::fhir::resource_types::is_resource_type;
use crate::model::{PatientScope, compartment_owner};
use crate::ports::source::{Page, PageRequest, Source, SourceError};
use async_trait::async_trait;
use std::io::{BufRead, Read};
use std::path::PathBuf;

/// Most bytes one page scans, so a filter that rejects everything still
/// returns control to the step regularly.
const MAX_SCAN_BYTES: u64 = 16 * 1024 * 1024;

/// Reads resources from NDJSON files in one directory or S3 prefix.
#[derive(Debug, Clone)]
pub struct NdjsonSource {
    location: Location,
    max_line: u64,
}

/// Longest NDJSON line read (the default file size limit: a longer resource
/// could not be exported anyway). A longer line fails its type with a clear
/// error instead of growing the step's memory with it.
pub const MAX_LINE_BYTES: u64 = 64 * 1024 * 1024;

fn io_err(e: std::io::Error) -> SourceError {
    SourceError::Permanent(format!("reading NDJSON source: {}", e.kind()))
}

/// Runs blocking file or S3 reads off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SourceError::Permanent(e.to_string()))?
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

/// Where a `<file name>:<byte offset>` cursor points in the current listing
/// of the type's files: by name, so a file added to or removed from the
/// location meanwhile never shifts it onto another file. (Cursors stored by
/// earlier versions name the file by its index in the listing.)
fn resume_at(files: &[String], cursor: &str) -> Result<(usize, u64), SourceError> {
    let malformed = || SourceError::Permanent("malformed NDJSON cursor".into());
    let (file, offset) = cursor.rsplit_once(':').ok_or_else(malformed)?;
    let offset: u64 = offset.parse().map_err(|_| malformed())?;
    if let Ok(index) = file.parse::<usize>() {
        return Ok((index, offset));
    }
    let index = files.iter().position(|f| f == file).ok_or_else(|| {
        SourceError::Permanent(
            "an NDJSON source file was removed while it was being exported".into(),
        )
    })?;
    Ok((index, offset))
}

/// Whether a resource line belongs in the page: it must be a resource of the
/// requested type (a file of another type's resources is refused, not
/// skipped), inside the `_lastUpdated` window and, for Patient- and
/// Group-level exports, in a requested compartment. `offset` is where the
/// line ends, for the error message.
fn is_wanted(
    req: &PageRequest<'_>,
    line: &[u8],
    file: &str,
    offset: u64,
) -> Result<bool, SourceError> {
    let head = read_head(line).map_err(|_| {
        SourceError::Permanent(format!(
            "{file} line ending at byte {offset} is not a JSON resource"
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
            return Ok(false);
        }
    }
    if req.scope.is_compartment() {
        // Compartment membership needs the reference elements; only
        // Patient- and Group-level exports pay for this parse.
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|_| SourceError::Permanent("resource is not valid JSON".into()))?;
        if compartment_owner(&value, req.scope).is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Appends a resource line to the page as one NDJSON line.
fn append_line(page: &mut Page, line: &[u8]) {
    if line.contains(&b'\r') {
        // A bare CR inside a line would break NDJSON framing downstream.
        minify_into(&mut page.ndjson, line);
    } else {
        page.ndjson.extend_from_slice(line);
    }
    page.ndjson.push(b'\n');
    page.count += 1;
}

impl NdjsonSource {
    /// A source over the local directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            location: Location::Dir(dir.into()),
            max_line: MAX_LINE_BYTES,
        }
    }

    /// The same source refusing lines longer than `bytes`.
    pub fn with_max_line_bytes(mut self, bytes: u64) -> Self {
        self.max_line = bytes;
        self
    }

    /// A source over the objects directly under an S3 prefix.
    pub fn s3(prefix: S3Prefix) -> Self {
        Self {
            location: Location::S3(prefix),
            max_line: MAX_LINE_BYTES,
        }
    }

    fn files_of(&self, resource_type: &str) -> Result<Vec<String>, SourceError> {
        let mut files = self.location.list()?;
        files.retain(|name| type_of_file(name) == Some(resource_type));
        Ok(files)
    }

    fn read_page(&self, req: &PageRequest<'_>) -> Result<Page, SourceError> {
        let files = self.files_of(req.resource_type)?;
        let (mut file_idx, mut offset) = match req.cursor {
            None => (0usize, 0u64),
            Some(c) => resume_at(&files, c)?,
        };
        let mut page = Page::default();
        let mut scanned = 0u64;
        let mut line = Vec::with_capacity(8 * 1024);
        while file_idx < files.len() {
            let file = &files[file_idx];
            let mut opened = self.location.open_at(file, offset)?;
            let mut window_start = offset;
            loop {
                if page.count as usize >= req.page_size || scanned >= MAX_SCAN_BYTES {
                    page.next = Some(format!("{file}:{offset}"));
                    return Ok(page);
                }
                let n = self.read_line(file, &mut opened, &mut window_start, offset, &mut line)?;
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
                if is_wanted(req, &line, file, offset)? {
                    append_line(&mut page, &line);
                }
            }
            file_idx += 1;
            offset = 0;
        }
        page.next = None;
        Ok(page)
    }

    /// Reads the whole line of `file` at `offset` into `line` and returns its
    /// length in bytes (0 at the end of the file). A ranged read that ends,
    /// or ends inside the line, is reopened at the line's start (unbounded
    /// when the line is longer than a whole range), so a cursor always falls
    /// on a line boundary.
    fn read_line(
        &self,
        file: &str,
        opened: &mut Opened,
        window_start: &mut u64,
        offset: u64,
        line: &mut Vec<u8>,
    ) -> Result<u64, SourceError> {
        loop {
            line.clear();
            // One byte over the limit tells a line that is too long from one
            // that is exactly as long as the limit.
            let n = (&mut opened.reader)
                .take(self.max_line + 1)
                .read_until(b'\n', line)
                .map_err(io_err)? as u64;
            if n > self.max_line {
                return Err(SourceError::Permanent(format!(
                    "{file} has a line longer than {} bytes at byte {offset}",
                    self.max_line
                )));
            }
            if n == 0 {
                if opened.window_end.is_some_and(|end| offset >= end) {
                    // The ranged read ended, not the object.
                    *opened = self.location.open_at(file, offset)?;
                    *window_start = offset;
                    continue;
                }
                return Ok(0);
            }
            if opened
                .window_end
                .is_some_and(|end| offset + n >= end && line.last() != Some(&b'\n'))
            {
                // The line runs past a ranged read: re-read it in full.
                if offset == *window_start {
                    *opened = self.location.open_unbounded(file, offset)?;
                } else {
                    *opened = self.location.open_at(file, offset)?;
                    *window_start = offset;
                }
                continue;
            }
            return Ok(n);
        }
    }

    fn count_lines(&self, resource_type: &str) -> Result<Option<u64>, SourceError> {
        let files = self.files_of(resource_type)?;
        self.location.estimate_lines(&files)
    }

    /// Every line of a type, page by page, until `visit` returns false.
    async fn scan(
        &self,
        resource_type: &str,
        mut visit: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), SourceError> {
        let mut req = OwnedRequest {
            resource_type: resource_type.into(),
            cursor: None,
            since: None,
            until: time::OffsetDateTime::now_utc() + time::Duration::days(36500),
            page_size: 10_000,
            scope: PatientScope::None,
        };
        loop {
            let this = self.clone();
            let r = req.clone();
            let page = blocking(move || this.read_page(&r.as_request())).await?;
            for line in page.ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if !visit(line) {
                    return Ok(());
                }
            }
            match page.next {
                Some(next) => req.cursor = Some(next),
                None => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl Source for NdjsonSource {
    async fn resource_types(&self) -> Result<Vec<String>, SourceError> {
        let location = self.location.clone();
        let mut types: Vec<String> = blocking(move || location.list())
            .await?
            .iter()
            .filter_map(|name| type_of_file(name).map(str::to_string))
            .collect();
        types.sort();
        types.dedup();
        // Group resources are data like any other at system level (Patient
        // and Group exports leave them out: Group is not in the compartment).
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
        blocking(move || this.read_page(&owned.as_request())).await
    }

    async fn estimate(&self, req: &PageRequest<'_>) -> Result<Option<u64>, SourceError> {
        let this = self.clone();
        let ty = req.resource_type.to_string();
        blocking(move || this.count_lines(&ty)).await
    }

    async fn read_resource(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let mut found = None;
        self.scan(resource_type, |line| {
            if read_head(line).ok().and_then(|h| h.id) == Some(id) {
                found = Some(line.to_vec());
                return false;
            }
            true
        })
        .await?;
        Ok(found)
    }

    async fn fetch_by_ids(&self, resource_type: &str, ids: &[String]) -> Result<Page, SourceError> {
        let mut wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut page = Page::default();
        self.scan(resource_type, |line| {
            if let Some(id) = read_head(line).ok().and_then(|h| h.id)
                && wanted.remove(id)
            {
                page.ndjson.extend_from_slice(line);
                page.ndjson.push(b'\n');
                page.count += 1;
            }
            !wanted.is_empty()
        })
        .await?;
        Ok(page)
    }

    async fn patient_ids(&self) -> Result<Vec<String>, SourceError> {
        let mut ids = Vec::new();
        self.scan("Patient", |line| {
            if let Some(id) = read_head(line).ok().and_then(|h| h.id) {
                ids.push(id.to_string());
            }
            true
        })
        .await?;
        Ok(ids)
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
            read_ahead_below: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_names_its_file_whatever_the_listing_gained_or_lost() {
        let before = vec![
            "Observation-1.ndjson".to_string(),
            "Observation-2.ndjson".into(),
        ];
        let cursor = "Observation-2.ndjson:4096";
        assert_eq!(resume_at(&before, cursor).unwrap(), (1, 4096));
        // A file that sorts first appeared meanwhile: still the same file.
        let grown = vec![
            "Observation-0.ndjson".to_string(),
            "Observation-1.ndjson".into(),
            "Observation-2.ndjson".into(),
        ];
        assert_eq!(resume_at(&grown, cursor).unwrap(), (2, 4096));
        // The file is gone: a clear error, never another file's bytes.
        let shrunk = vec!["Observation-1.ndjson".to_string()];
        assert!(resume_at(&shrunk, cursor).is_err());
        // Cursors stored by earlier versions give the index.
        assert_eq!(resume_at(&before, "1:10").unwrap(), (1, 10));
        assert!(resume_at(&before, "Observation-2.ndjson").is_err());
        assert!(resume_at(&before, "Observation-2.ndjson:x").is_err());
    }
}

#[cfg(test)]
mod line_limit_tests {
    use super::*;

    #[tokio::test]
    async fn a_line_over_the_limit_fails_its_type_without_being_read_whole() {
        let dir = std::env::temp_dir().join(format!("ndjson-line-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = r#"{"resourceType":"Basic","id":"a"}"#;
        let long = format!(
            r#"{{"resourceType":"Basic","id":"b","x":"{}"}}"#,
            "y".repeat(500)
        );
        std::fs::write(dir.join("Basic.ndjson"), format!("{ok}\n{long}\n")).unwrap();
        let source = NdjsonSource::new(&dir).with_max_line_bytes(100);
        let req = PageRequest {
            resource_type: "Basic",
            cursor: None,
            since: None,
            until: time::OffsetDateTime::now_utc(),
            type_filters: &[],
            page_size: 10,
            scope: &PatientScope::None,
            batch: None,
            read_ahead_below: 0,
        };
        let err = source.fetch_page(&req).await.unwrap_err();
        assert!(err.to_string().contains("longer than 100 bytes"), "{err}");
        let roomy = NdjsonSource::new(&dir).with_max_line_bytes(1000);
        assert_eq!(roomy.fetch_page(&req).await.unwrap().count, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
