//! Where an NDJSON source's files live: a local directory or an S3 prefix.
//! Both hand the page reader a blocking `BufRead` positioned at a byte offset
//! of a file's (decompressed) content, so one reader serves both.

use crate::ports::source::SourceError;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Bytes one ranged S3 read asks for: more than a page scans
/// (`MAX_SCAN_BYTES`), so a page normally ends inside its window, while a
/// dropped connection never wastes more than this.
const S3_WINDOW: u64 = 32 * 1024 * 1024;

/// Bytes sampled from the first file to estimate the average line length.
const ESTIMATE_SAMPLE: u64 = 64 * 1024;

/// An S3 bucket and key prefix holding `<Type>*.ndjson[.gz]` objects.
#[derive(Debug, Clone)]
pub struct S3Prefix {
    client: Client,
    bucket: String,
    prefix: String,
    window: u64,
}

impl S3Prefix {
    /// Parses `s3://bucket/prefix` (the prefix may be empty; a trailing `/` is
    /// implied, so `s3://lake/2026` reads `2026/<Type>.ndjson`).
    pub fn parse(client: Client, url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("'{url}' is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("'{url}' names no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        Ok(Self {
            client,
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            window: S3_WINDOW,
        })
    }

    /// Sets the bytes one ranged read asks for (default 32 MiB): smaller
    /// windows bound memory per page at the cost of more GET requests.
    pub fn with_window(mut self, bytes: u64) -> Self {
        self.window = bytes.max(1);
        self
    }
}

/// Where the files are.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// An S3 prefix (only objects directly under it; deeper keys are ignored).
    S3(S3Prefix),
}

/// A reader over one file from an offset; `window_end` is set when the
/// reader stops at an artificial boundary (a ranged read) rather than the
/// file's end, so a line cut there is incomplete, not the file's last line.
pub struct Opened {
    /// The content from the requested offset.
    pub reader: Box<dyn BufRead + Send>,
    /// Offset at which the reader ends early, if it does.
    pub window_end: Option<u64>,
}

fn io_err(e: std::io::Error) -> SourceError {
    SourceError::Permanent(format!("reading NDJSON source: {}", e.kind()))
}

fn s3_err(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Exhausted(format!("S3 source {what}: {e}"))
}

fn is_gz(name: &str) -> bool {
    name.ends_with(".gz")
}

/// Skips `offset` bytes of a decompressed stream: a `.gz` file cannot seek.
fn gz_reader_at(
    raw: impl Read + Send + 'static,
    offset: u64,
) -> Result<Box<dyn BufRead + Send>, SourceError> {
    let mut reader = BufReader::with_capacity(
        256 * 1024,
        flate2::read::MultiGzDecoder::new(BufReader::new(raw)),
    );
    std::io::copy(&mut reader.by_ref().take(offset), &mut std::io::sink()).map_err(io_err)?;
    Ok(Box::new(reader))
}

impl Location {
    /// File names (not paths) directly in the location, sorted.
    /// Blocking: call from a blocking task.
    pub fn list(&self) -> Result<Vec<String>, SourceError> {
        let mut names = match self {
            Location::Dir(dir) => std::fs::read_dir(dir)
                .map_err(io_err)?
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect(),
            Location::S3(s3) => {
                let handle = tokio::runtime::Handle::current();
                let mut names = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let out = handle
                        .block_on(
                            s3.client
                                .list_objects_v2()
                                .bucket(&s3.bucket)
                                .prefix(&s3.prefix)
                                .delimiter("/")
                                .set_continuation_token(token.take())
                                .send(),
                        )
                        .map_err(|e| {
                            s3_err("listing", aws_sdk_s3::error::DisplayErrorContext(e))
                        })?;
                    names.extend(
                        out.contents()
                            .iter()
                            .filter_map(|o| o.key()?.strip_prefix(&s3.prefix))
                            .filter(|n| !n.is_empty() && !n.contains('/'))
                            .map(str::to_string),
                    );
                    match out.next_continuation_token() {
                        Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                        _ => break,
                    }
                }
                names
            }
        };
        names.sort();
        Ok(names)
    }

    /// Opens `name` at byte `offset` of its decompressed content.
    /// Blocking: call from a blocking task.
    pub fn open_at(&self, name: &str, offset: u64) -> Result<Opened, SourceError> {
        match self {
            Location::Dir(dir) => {
                let file = std::fs::File::open(dir.join(name)).map_err(io_err)?;
                let reader: Box<dyn BufRead + Send> = if is_gz(name) {
                    gz_reader_at(file, offset)?
                } else {
                    let mut reader = BufReader::with_capacity(256 * 1024, file);
                    reader.seek(SeekFrom::Start(offset)).map_err(io_err)?;
                    Box::new(reader)
                };
                Ok(Opened {
                    reader,
                    window_end: None,
                })
            }
            Location::S3(s3) if is_gz(name) => {
                // Compressed objects are streamed from their start each page:
                // correct, but plain objects (ranged reads) are much cheaper.
                let reader: Box<dyn BufRead + Send> = match self.s3_get(s3, name, None) {
                    Ok(body) => gz_reader_at(BlockingBody::new(body), offset)?,
                    Err(RangeError::NotSatisfiable) => Box::new(std::io::empty()),
                    Err(RangeError::Other(e)) => return Err(e),
                };
                Ok(Opened {
                    reader,
                    window_end: None,
                })
            }
            Location::S3(s3) => self.open_s3_window(s3, name, offset, s3.window),
        }
    }

    /// Opens `name` at `offset` with no window: for a single line longer
    /// than the window.
    pub fn open_unbounded(&self, name: &str, offset: u64) -> Result<Opened, SourceError> {
        match self {
            Location::S3(s3) if !is_gz(name) => self.open_s3_window(s3, name, offset, u64::MAX),
            _ => self.open_at(name, offset),
        }
    }

    fn open_s3_window(
        &self,
        s3: &S3Prefix,
        name: &str,
        offset: u64,
        window: u64,
    ) -> Result<Opened, SourceError> {
        let end = offset.saturating_add(window);
        let range = if end == u64::MAX {
            format!("bytes={offset}-")
        } else {
            format!("bytes={offset}-{}", end - 1)
        };
        match self.s3_get(s3, name, Some(range)) {
            Ok(body) => Ok(Opened {
                reader: Box::new(BufReader::with_capacity(
                    256 * 1024,
                    BlockingBody::new(body),
                )),
                window_end: (end != u64::MAX).then_some(end),
            }),
            // A cursor at the very end of an object: nothing left to read.
            Err(RangeError::NotSatisfiable) => Ok(Opened {
                reader: Box::new(std::io::empty()),
                window_end: None,
            }),
            Err(RangeError::Other(e)) => Err(e),
        }
    }

    fn s3_get(
        &self,
        s3: &S3Prefix,
        name: &str,
        range: Option<String>,
    ) -> Result<ByteStream, RangeError> {
        let handle = tokio::runtime::Handle::current();
        let key = format!("{}{name}", s3.prefix);
        handle
            .block_on(
                s3.client
                    .get_object()
                    .bucket(&s3.bucket)
                    .key(&key)
                    .set_range(range)
                    .send(),
            )
            .map(|out| out.body)
            .map_err(|e| {
                if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) {
                    RangeError::NotSatisfiable
                } else {
                    RangeError::Other(s3_err(
                        "reading an object",
                        aws_sdk_s3::error::DisplayErrorContext(e),
                    ))
                }
            })
    }

    /// Estimated lines in `names`: exact for a directory (counts newlines),
    /// from object sizes and a sampled average line length for plain S3
    /// objects, unknown for compressed S3 objects (counting would download
    /// them). Blocking: call from a blocking task.
    pub fn estimate_lines(&self, names: &[String]) -> Result<Option<u64>, SourceError> {
        match self {
            Location::Dir(_) => {
                let mut total = 0u64;
                let mut buf = vec![0u8; 1024 * 1024];
                for name in names {
                    let mut f = self.open_at(name, 0)?.reader;
                    loop {
                        let n = f.read(&mut buf).map_err(io_err)?;
                        if n == 0 {
                            break;
                        }
                        total += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                    }
                }
                Ok(Some(total))
            }
            Location::S3(s3) => {
                if names.iter().any(|n| is_gz(n)) {
                    return Ok(None);
                }
                let Some(first) = names.first() else {
                    return Ok(Some(0));
                };
                let mut sample = Vec::new();
                self.open_s3_window(s3, first, 0, ESTIMATE_SAMPLE)?
                    .reader
                    .read_to_end(&mut sample)
                    .map_err(io_err)?;
                let lines = sample.iter().filter(|b| **b == b'\n').count() as u64;
                if lines == 0 {
                    return Ok(None);
                }
                let handle = tokio::runtime::Handle::current();
                let mut bytes = 0u64;
                for name in names {
                    let head = handle
                        .block_on(
                            s3.client
                                .head_object()
                                .bucket(&s3.bucket)
                                .key(format!("{}{name}", s3.prefix))
                                .send(),
                        )
                        .map_err(|e| {
                            s3_err(
                                "sizing an object",
                                aws_sdk_s3::error::DisplayErrorContext(e),
                            )
                        })?;
                    bytes += head.content_length().unwrap_or(0).max(0) as u64;
                }
                let avg = (sample.len() as u64 / lines).max(1);
                Ok(Some(bytes / avg))
            }
        }
    }
}

enum RangeError {
    NotSatisfiable,
    Other(SourceError),
}

/// A blocking `Read` over an S3 body, for readers running in a blocking task.
struct BlockingBody {
    handle: tokio::runtime::Handle,
    body: ByteStream,
    chunk: Bytes,
}

impl BlockingBody {
    fn new(body: ByteStream) -> Self {
        Self {
            handle: tokio::runtime::Handle::current(),
            body,
            chunk: Bytes::new(),
        }
    }
}

impl Read for BlockingBody {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.body.try_next()) {
                Ok(Some(chunk)) => self.chunk = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .build(),
        )
    }

    #[test]
    fn parses_s3_urls() {
        let p = S3Prefix::parse(client(), "s3://lake/exports/2026/").unwrap();
        assert_eq!(
            (p.bucket.as_str(), p.prefix.as_str()),
            ("lake", "exports/2026/")
        );
        let p = S3Prefix::parse(client(), "s3://lake").unwrap();
        assert_eq!((p.bucket.as_str(), p.prefix.as_str()), ("lake", ""));
        assert!(S3Prefix::parse(client(), "s3:///x").is_err());
        assert!(S3Prefix::parse(client(), "https://lake/x").is_err());
    }
}
