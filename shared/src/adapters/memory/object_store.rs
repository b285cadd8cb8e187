//! [`ObjectStore`] in memory, with S3's multipart semantics.
//!
//! Presigned URLs are `memory://<key>?expires=<secs>`: the key
//! percent-encoded (all but ASCII letters, digits, `-`, `.`, `_`, `~` and
//! `/`) and the validity in whole seconds. Nothing serves them; a test reads
//! the object behind one with [`MemoryObjectStore::fetch_presigned`].

use super::lock;
use crate::model::UploadedPart;
use crate::ports::object_store::{ObjectError, ObjectStore};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// S3's smallest part but the last of a multipart upload (5 MiB).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// S3's highest part number.
const MAX_PART_NUMBER: u32 = 10_000;

/// The longest validity of a presigned URL (SigV4: one week).
const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Bytes of a key left as they are in a presigned URL.
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

const URL_SCHEME: &str = "memory://";

#[derive(Debug)]
struct Upload {
    key: String,
    /// Part number → (ETag, body); a re-upload replaces the part.
    parts: BTreeMap<u32, (String, Bytes)>,
}

#[derive(Debug, Default)]
struct State {
    /// Completed objects by key (key order is list order).
    objects: BTreeMap<String, Bytes>,
    /// Multipart uploads in progress by upload id.
    uploads: HashMap<String, Upload>,
    /// Uploads created so far (upload ids are never reused).
    created: u64,
}

/// In-memory object store (one bucket); clones share the same state.
///
/// Like S3 and unlike s3s-fs and moto, an upload id belongs to its key
/// (another key's request on it finds no upload), completion checks every
/// part's ETag and size and leaves the upload intact when it fails, and only
/// the parts named on completion make up the object.
#[derive(Debug, Clone)]
pub struct MemoryObjectStore {
    state: Arc<Mutex<State>>,
    min_part_size: usize,
    random_etags: bool,
}

impl Default for MemoryObjectStore {
    fn default() -> Self {
        Self::new()
    }
}

fn etag_of(body: &[u8]) -> String {
    let mut h = DefaultHasher::new();
    h.write(body);
    h.write_usize(body.len());
    format!("\"{:016x}\"", h.finish())
}

fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

impl MemoryObjectStore {
    /// An empty store enforcing S3's 5 MiB minimum part size.
    pub fn new() -> Self {
        Self::with_min_part_size(MIN_PART_SIZE)
    }

    /// An empty store whose completions accept parts (but the last) from
    /// `min_part_size` bytes, for tests with small parts. S3 and the
    /// conformance suite use [`MIN_PART_SIZE`].
    pub fn with_min_part_size(min_part_size: usize) -> Self {
        Self {
            state: Arc::default(),
            min_part_size,
            random_etags: false,
        }
    }

    /// The same store answering every part upload with a fresh random
    /// ETag, as S3 does under SSE-KMS (an ETag is then no content hash: the
    /// same bytes uploaded twice have two ETags).
    pub fn with_random_etags(mut self) -> Self {
        self.random_etags = true;
        self
    }

    /// Multipart uploads in progress, as (key, upload id), in key order.
    pub fn open_uploads(&self) -> Vec<(String, String)> {
        let state = lock(&self.state);
        let mut open: Vec<(String, String)> = state
            .uploads
            .iter()
            .map(|(id, u)| (u.key.clone(), id.clone()))
            .collect();
        open.sort();
        open
    }

    /// The object a `memory://` URL from [`ObjectStore::presign_get`] names,
    /// `None` if the URL is not one or the object does not exist. The
    /// expiry is not checked (the store has no clock).
    pub fn fetch_presigned(&self, url: &str) -> Option<Bytes> {
        let rest = url.strip_prefix(URL_SCHEME)?;
        let encoded = rest.split_once('?').map_or(rest, |(k, _)| k);
        let key = percent_decode_str(encoded).decode_utf8().ok()?;
        lock(&self.state).objects.get(key.as_ref()).cloned()
    }
}

/// The upload `upload_id` of `key`, if it is in progress.
fn upload_of<'a>(
    state: &'a mut State,
    key: &str,
    upload_id: &str,
) -> Result<&'a mut Upload, ObjectError> {
    state
        .uploads
        .get_mut(upload_id)
        .filter(|u| u.key == key)
        .ok_or(ObjectError::NoSuchUpload)
}

#[async_trait]
impl ObjectStore for MemoryObjectStore {
    async fn create_upload(&self, key: &str) -> Result<String, ObjectError> {
        let mut state = lock(&self.state);
        state.created += 1;
        let id = format!("memory-upload-{}", state.created);
        state.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(ObjectError::Backend(
                format!(
                    "InvalidArgument: part number {part_number} is not in 1..={MAX_PART_NUMBER}"
                )
                .into(),
            ));
        }
        let mut state = lock(&self.state);
        let upload = upload_of(&mut state, key, upload_id)?;
        let etag = if self.random_etags {
            format!("\"{:032x}\"", rand::random::<u128>())
        } else {
            etag_of(&body)
        };
        upload.parts.insert(part_number, (etag.clone(), body));
        Ok(etag)
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<(), ObjectError> {
        let mut state = lock(&self.state);
        let upload = upload_of(&mut state, key, upload_id)?;
        if parts.is_empty() {
            return Err(ObjectError::Backend(
                "MalformedXML: a completion names at least one part".into(),
            ));
        }
        let mut object = BytesMut::new();
        let mut previous = 0;
        for (i, part) in parts.iter().enumerate() {
            if part.number <= previous {
                return Err(ObjectError::InvalidPart(format!(
                    "InvalidPartOrder: part {} after part {previous}",
                    part.number
                )));
            }
            previous = part.number;
            let body = match upload.parts.get(&part.number) {
                Some((stored, body)) if same_etag(stored, &part.etag) => body,
                _ => {
                    return Err(ObjectError::InvalidPart(format!(
                        "part {} with ETag {} was not uploaded",
                        part.number, part.etag
                    )));
                }
            };
            if i + 1 < parts.len() && body.len() < self.min_part_size {
                return Err(ObjectError::Backend(
                    format!(
                        "EntityTooSmall: part {} has {} bytes",
                        part.number,
                        body.len()
                    )
                    .into(),
                ));
            }
            object.extend_from_slice(body);
        }
        state.uploads.remove(upload_id);
        state.objects.insert(key.to_string(), object.freeze());
        Ok(())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        let mut state = lock(&self.state);
        if upload_of(&mut state, key, upload_id).is_ok() {
            state.uploads.remove(upload_id);
        }
        Ok(())
    }

    async fn put_object(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        lock(&self.state).objects.insert(key.to_string(), body);
        Ok(())
    }

    async fn object_size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        Ok(lock(&self.state)
            .objects
            .get(key)
            .map(|body| body.len() as u64))
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, ObjectError> {
        if ttl > MAX_PRESIGN_TTL {
            return Err(ObjectError::Backend(
                "a presigned URL is valid for at most one week".into(),
            ));
        }
        Ok(format!(
            "{URL_SCHEME}{}?expires={}",
            utf8_percent_encode(key, KEY_ESCAPES),
            ttl.as_secs()
        ))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), ObjectError> {
        lock(&self.state)
            .objects
            .retain(|key, _| !key.starts_with(prefix));
        Ok(())
    }

    async fn get_object(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        Ok(lock(&self.state).objects.get(key).cloned())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let state = lock(&self.state);
        Ok(state
            .objects
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .cloned()
            .collect())
    }
}
