//! s3s-fs with S3's completion rules. s3s-fs 0.14.1 completes a multipart
//! upload from parts numbered exactly 1..=n and never compares ETags; S3
//! accepts any ascending part numbers (the exporter gives each delivery
//! attempt numbers of its own) and answers `InvalidPart` when a named part's
//! ETag is not the stored one. This layer checks a completion as S3 does,
//! then renumbers the named parts' files to 1..=n for s3s-fs, which drops the
//! rest as S3 does. It relies on s3s-fs's part file layout, which is why
//! s3s-fs is pinned to one version.

use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use std::path::PathBuf;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

/// S3's smallest part but a file's last.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// s3s-fs behind S3's multipart completion rules.
pub struct S3Rules {
    fs: FileSystem,
    root: PathBuf,
    /// Completions run one at a time: renumbering is not atomic.
    completing: Mutex<()>,
}

impl S3Rules {
    pub fn new(fs: FileSystem, root: PathBuf) -> Self {
        Self {
            fs,
            root,
            completing: Mutex::new(()),
        }
    }

    fn part_path(&self, upload_id: &str, number: i32) -> PathBuf {
        self.root
            .join(format!(".upload_id-{upload_id}.part-{number}"))
    }

    /// Checks the named parts (ascending numbers, stored ETags, sizes) and
    /// renames their files to 1..=n; returns the renumbered request.
    async fn renumber(
        &self,
        mut req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Request<CompleteMultipartUploadInput>> {
        let upload_id = req.input.upload_id.clone();
        let Some(parts) = req
            .input
            .multipart_upload
            .as_mut()
            .and_then(|m| m.parts.as_mut())
        else {
            return Ok(req);
        };
        let mut previous = 0;
        for (i, part) in parts.iter().enumerate() {
            let number = part
                .part_number
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no number"))?;
            if number <= previous {
                return Err(s3_error!(InvalidPartOrder));
            }
            previous = number;
            let (md5, size) = digest(&self.part_path(&upload_id, number))
                .await
                .ok_or_else(|| s3_error!(InvalidPart, "part {number} was not uploaded"))?;
            if part.e_tag.as_ref().map(ETag::value) != Some(md5.as_str()) {
                return Err(s3_error!(InvalidPart, "part {number}: ETag does not match"));
            }
            if i + 1 < parts.len() && size < MIN_PART_SIZE {
                return Err(s3_error!(EntityTooSmall));
            }
        }
        for (i, part) in parts.iter_mut().enumerate() {
            let (from, to) = (part.part_number.unwrap_or_default(), i as i32 + 1);
            if from != to {
                let moved = tokio::fs::rename(
                    self.part_path(&upload_id, from),
                    self.part_path(&upload_id, to),
                )
                .await;
                moved.map_err(|e| s3_error!(e, InternalError))?;
                part.part_number = Some(to);
            }
        }
        self.remove_unnamed(&upload_id, parts.len() as i32).await;
        Ok(req)
    }

    /// Removes the upload's part files numbered above `named` (S3 discards
    /// parts a completion does not name).
    async fn remove_unnamed(&self, upload_id: &str, named: i32) {
        let prefix = format!(".upload_id-{upload_id}.part-");
        let Ok(mut dir) = tokio::fs::read_dir(&self.root).await else {
            return;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.parse::<i32>().ok());
            if number.is_some_and(|n| n > named) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }

    async fn complete(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let _one_at_a_time = self.completing.lock().await;
        let known = self
            .root
            .join(format!(".upload-{}.json", req.input.upload_id))
            .exists();
        // An unknown upload is s3s-fs's to answer (it says AccessDenied).
        let req = if known {
            self.renumber(req).await?
        } else {
            req
        };
        self.fs.complete_multipart_upload(req).await
    }
}

/// Hex MD5 and size of a file, `None` if it cannot be read.
async fn digest(path: &PathBuf) -> Option<(String, u64)> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let (mut md5, mut size, mut buf) = (Md5::new(), 0u64, vec![0u8; 64 * 1024]);
    loop {
        let n = file.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        size += n as u64;
    }
    let hex = md5
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Some((hex, size))
}

/// Every operation s3s-fs implements goes to it; completion goes through
/// [`S3Rules::complete`] first.
macro_rules! s3_rules {
    ($($op:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl S3 for S3Rules {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$op(req).await
                }
            )*

            async fn complete_multipart_upload(
                &self,
                req: S3Request<CompleteMultipartUploadInput>,
            ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
                self.complete(req).await
            }
        }
    };
}

s3_rules! {
    create_bucket: CreateBucketInput => CreateBucketOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    delete_bucket: DeleteBucketInput => DeleteBucketOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    put_object: PutObjectInput => PutObjectOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
    list_parts: ListPartsInput => ListPartsOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
}
