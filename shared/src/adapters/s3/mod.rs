//! [`ObjectStore`] over S3 (or any S3-compatible server).

use crate::model::UploadedPart;
use crate::ports::object_store::{ObjectError, ObjectStore};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use std::time::Duration;

/// S3-backed object store for one bucket.
#[derive(Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
    flavor: S3Flavor,
}

/// Where an S3-compatible server answers differently from S3 in a way the
/// adapter must know. Only the embedded server of local runs and tests
/// differs; everything else (S3 itself, moto) is [`S3Flavor::Aws`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum S3Flavor {
    /// Amazon S3's behaviour.
    #[default]
    Aws,
    /// s3s-fs: a request on an upload that is gone answers `AccessDenied`
    /// (on S3 that means a denied permission, never a gone upload), and a
    /// completion writes the object in place, so a reader may see it
    /// half-written.
    S3sFs,
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> ObjectError {
    ObjectError::Backend(Box::new(e))
}

fn code_of<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<String> {
    match e {
        SdkError::ServiceError(se) => se.err().code().map(str::to_string),
        _ => None,
    }
}

impl S3ObjectStore {
    /// Wraps a client and bucket name.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            flavor: S3Flavor::Aws,
        }
    }

    /// The same store talking to a server of `flavor`.
    pub fn with_flavor(mut self, flavor: S3Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// Whether `e` says the upload is gone: `NoSuchUpload` (and s3s-fs's
    /// `AccessDenied`). A denied permission on S3 stays an error, so a
    /// missing IAM action never passes for a lost upload. Callers verify
    /// what actually happened before trusting it.
    fn upload_gone<E: ProvideErrorMetadata, R>(&self, e: &SdkError<E, R>) -> bool {
        match code_of(e).as_deref() {
            Some("NoSuchUpload") => true,
            Some("AccessDenied") => self.flavor == S3Flavor::S3sFs,
            _ => false,
        }
    }

    /// Creates the bucket if it does not exist; for local runs and tests.
    pub async fn ensure_bucket(&self) -> Result<(), ObjectError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    code_of(&e).as_deref(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }

    /// Lists every key under `prefix` with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, ObjectError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(backend)?;
            for o in resp.contents() {
                if let Some(k) = o.key() {
                    out.push((k.to_string(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// The error of a request on a multipart upload that should hold
    /// `uploaded` parts. Some S3-compatible stores fail with a bare 500 (moto)
    /// or answer and close the connection before reading the body (s3s-fs)
    /// for an upload that is gone: then the store is asked whether it still
    /// exists.
    async fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E, HttpResponse>,
        key: &str,
        upload_id: &str,
        uploaded: u32,
    ) -> ObjectError {
        if self.upload_gone(&e) {
            return ObjectError::NoSuchUpload;
        }
        let server_side = matches!(e, SdkError::DispatchFailure(_))
            || e.raw_response()
                .is_some_and(|r| r.status().is_server_error());
        if server_side
            && matches!(
                self.upload_exists(key, upload_id, uploaded).await,
                Ok(false)
            )
        {
            return ObjectError::NoSuchUpload;
        }
        backend(e)
    }

    /// True if `upload_id` is still a usable multipart upload of `key` holding
    /// the `uploaded` parts before this one: by ListParts (S3 answers
    /// NoSuchUpload for a gone upload; s3s-fs lists no parts), else by
    /// ListMultipartUploads (moto fails ListParts with a 500).
    async fn upload_exists(
        &self,
        key: &str,
        upload_id: &str,
        uploaded: u32,
    ) -> Result<bool, ObjectError> {
        match self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(out) => Ok(out.parts().len() >= uploaded as usize),
            Err(e) if self.upload_gone(&e) => Ok(false),
            Err(_) => self.upload_listed(key, upload_id).await,
        }
    }

    /// True if ListMultipartUploads shows `upload_id` for `key`.
    async fn upload_listed(&self, key: &str, upload_id: &str) -> Result<bool, ObjectError> {
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(backend)?;
            if resp
                .uploads()
                .iter()
                .any(|u| u.key() == Some(key) && u.upload_id() == Some(upload_id))
            {
                return Ok(true);
            }
            if resp.is_truncated() != Some(true) {
                return Ok(false);
            }
            key_marker = resp.next_key_marker().map(str::to_string);
            id_marker = resp.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(false);
            }
        }
    }

    /// The underlying client (tests inspect uploads and parts with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn create_upload(&self, key: &str) -> Result<String, ObjectError> {
        let resp = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/fhir+ndjson")
            .send()
            .await
            .map_err(backend)?;
        resp.upload_id()
            .map(str::to_string)
            .ok_or_else(|| ObjectError::Backend("no upload id".into()))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        let resp = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .body(ByteStream::from(body))
            .send()
            .await;
        match resp {
            Ok(r) => r
                .e_tag()
                .map(str::to_string)
                .ok_or_else(|| ObjectError::Backend("no ETag".into())),
            // Part numbers have gaps (one range per delivery attempt), so
            // only the upload's existence is asked, not a part count.
            Err(e) => Err(self.classify(e, key, upload_id, 0).await),
        }
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        uploaded: &[UploadedPart],
    ) -> Result<(), ObjectError> {
        let parts = uploaded
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number as i32)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        let resp = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    code_of(&e).as_deref(),
                    Some("InvalidPart" | "InvalidPartOrder")
                ) =>
            {
                Err(ObjectError::InvalidPart(
                    e.as_service_error()
                        .and_then(|se| se.message())
                        .unwrap_or("a named part is not stored")
                        .to_string(),
                ))
            }
            Err(e) => Err(self
                .classify(e, key, upload_id, uploaded.len() as u32)
                .await),
        }
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if self.upload_gone(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn put_object(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/fhir+ndjson")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn shows_partial_objects(&self) -> bool {
        self.flavor == S3Flavor::S3sFs
    }

    async fn object_size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(r) => Ok(Some(r.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(se)) if se.err().is_not_found() => Ok(None),
            Err(e) if matches!(code_of(&e).as_deref(), Some("NotFound" | "NoSuchKey")) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, ObjectError> {
        let cfg = PresigningConfig::expires_in(ttl).map_err(backend)?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .response_content_type("application/fhir+ndjson")
            .presigned(cfg)
            .await
            .map_err(backend)?;
        Ok(req.uri().to_string())
    }

    async fn get_object(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(r) => Ok(Some(r.body.collect().await.map_err(backend)?.into_bytes())),
            Err(SdkError::ServiceError(se)) if se.err().is_no_such_key() => Ok(None),
            Err(e) if matches!(code_of(&e).as_deref(), Some("NotFound" | "NoSuchKey")) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let mut keys: Vec<String> = self
            .list(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), ObjectError> {
        let keys = self.list(prefix).await?;
        for batch in keys.chunks(1000) {
            let ids: Result<Vec<_>, _> = batch
                .iter()
                .map(|(k, _)| ObjectIdentifier::builder().key(k).build())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(ids.map_err(backend)?))
                .quiet(true)
                .build()
                .map_err(backend)?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(backend)?;
        }
        Ok(())
    }
}
