//! Typed configuration shared by the Lambda functions and the local runner.
//! Every field has an environment-variable form (see README, "Configuration").

use std::time::Duration;

/// Smallest non-final part S3 accepts.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Largest file size (5 GiB): at most 1025 parts of a file, so each part
/// has at least 9 part numbers for its delivery attempts.
pub const MAX_FILE_SIZE: usize = 1024 * MIN_PART_SIZE;

/// Settings for exports, read once at startup.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Absolute FHIR base URL clients use (`Content-Location` and manifest URLs start with it).
    pub base_url: String,
    /// DynamoDB table holding jobs, chains and file records.
    pub table: String,
    /// S3 bucket for output files.
    pub bucket: String,
    /// Target size of one multipart part (one chain step), at least 5 MiB.
    pub part_size: usize,
    /// The object store's smallest part but a file's last: S3's 5 MiB (not
    /// settable from the environment; the in-memory store of the tests
    /// accepts smaller parts, so a test's files have many parts).
    pub min_part_size: usize,
    /// A file is completed before it would grow past this many bytes.
    pub max_file_size: usize,
    /// Resources requested per source page (`_count`).
    pub page_size: usize,
    /// Lifetime of presigned download URLs.
    pub url_ttl: Duration,
    /// Manifest URLs point at the authenticated file route (which redirects
    /// to a presigned URL) instead of being presigned URLs themselves.
    pub requires_access_token: bool,
    /// How long jobs and their files are kept after kick-off.
    pub retention: Duration,
    /// `Retry-After` advertised to pollers, in seconds.
    pub retry_after_secs: u64,
    /// Most exports running at once (all clients).
    pub max_running_jobs: usize,
    /// Most exports one client may have running at once.
    pub max_running_per_client: usize,
    /// Most exports waiting for a slot; beyond it kick-off answers 429.
    pub max_queued_jobs: usize,
    /// Member patients named in one upstream compartment query.
    pub patient_batch_size: usize,
    /// Resources per partition: a type whose count exceeds it is split into
    /// `_lastUpdated` ranges, one chain each (FHIR-server source).
    pub partition_target: u64,
    /// Most partitions (chains) one resource type is split into.
    pub max_partitions: usize,
    /// Most parts one chunk-worker invocation uploads (each committed on its
    /// own) before it hands the chain to a fresh invocation; the next part's
    /// first page is fetched while a part uploads.
    pub parts_per_invocation: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest accepted request URL.
    pub max_url_bytes: usize,
    /// Manifests of more files than this list compact signed links
    /// (`$export-download`, ~200 bytes) instead of ~1.5 KB presigned URLs,
    /// so they fit Lambda's 6 MB response.
    pub presigned_files_max: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080/fhir".into(),
            table: "bulk-export".into(),
            bucket: "bulk-export".into(),
            part_size: 8 * 1024 * 1024,
            min_part_size: MIN_PART_SIZE,
            max_file_size: 64 * 1024 * 1024,
            page_size: 1000,
            url_ttl: Duration::from_secs(300),
            requires_access_token: false,
            retention: Duration::from_secs(7 * 24 * 3600),
            retry_after_secs: 2,
            max_running_jobs: 64,
            max_running_per_client: 16,
            max_queued_jobs: 256,
            patient_batch_size: 50,
            partition_target: 100_000,
            max_partitions: 16,
            parts_per_invocation: 8,
            max_body_bytes: 1024 * 1024,
            max_url_bytes: 8 * 1024,
            presigned_files_max: 1_000,
        }
    }
}

/// A configuration value that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("configuration {name}: {message}")]
pub struct ConfigError {
    /// Environment variable or flag.
    pub name: String,
    /// What is wrong with it.
    pub message: String,
}

fn env_num<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, ConfigError> {
    match get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<T>().map(Some).map_err(|_| ConfigError {
            name: name.into(),
            message: format!("'{v}' is not a valid number"),
        }),
    }
}

impl ExportConfig {
    /// Reads overrides from environment variables (`BULK_EXPORT_*`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Reads overrides through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        if let Some(v) = get("BULK_EXPORT_BASE_URL") {
            c.base_url = v;
        }
        if let Some(v) = get("BULK_EXPORT_TABLE") {
            c.table = v;
        }
        if let Some(v) = get("BULK_EXPORT_BUCKET") {
            c.bucket = v;
        }
        if let Some(v) = get("BULK_EXPORT_REQUIRES_ACCESS_TOKEN") {
            c.requires_access_token = v == "true";
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_PART_SIZE")? {
            c.part_size = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_MAX_FILE_SIZE")? {
            c.max_file_size = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_PAGE_SIZE")? {
            c.page_size = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_URL_TTL_SECS")? {
            c.url_ttl = Duration::from_secs(v);
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_RETENTION_SECS")? {
            c.retention = Duration::from_secs(v);
        }
        if let Some(v) = env_num::<u64>(get, "BULK_EXPORT_RETENTION_DAYS")? {
            c.retention = Duration::from_secs(v * 86_400);
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_RETRY_AFTER_SECS")? {
            c.retry_after_secs = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_MAX_RUNNING_JOBS")? {
            c.max_running_jobs = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_MAX_RUNNING_PER_CLIENT")? {
            c.max_running_per_client = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_PATIENT_BATCH_SIZE")? {
            c.patient_batch_size = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_MAX_QUEUED_JOBS")? {
            c.max_queued_jobs = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_PARTITION_TARGET")? {
            c.partition_target = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_MAX_PARTITIONS")? {
            c.max_partitions = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_PARTS_PER_INVOCATION")? {
            c.parts_per_invocation = v;
        }
        if let Some(v) = env_num(get, "BULK_EXPORT_PRESIGNED_FILES_MAX")? {
            c.presigned_files_max = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the invariants the chain relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |name: &str, message: String| ConfigError {
            name: name.into(),
            message,
        };
        if self.part_size < MIN_PART_SIZE {
            return Err(err(
                "BULK_EXPORT_PART_SIZE",
                format!("must be at least {MIN_PART_SIZE}"),
            ));
        }
        if self.max_file_size < 2 * self.part_size {
            return Err(err(
                "BULK_EXPORT_MAX_FILE_SIZE",
                "must be at least twice the part size".into(),
            ));
        }
        // Each part of a file owns a range of S3's 10,000 part numbers, one
        // slot per delivery attempt: keep at least 8 slots per part.
        if self.max_file_size > MAX_FILE_SIZE {
            return Err(err(
                "BULK_EXPORT_MAX_FILE_SIZE",
                format!("must be at most {MAX_FILE_SIZE}"),
            ));
        }
        if self.page_size == 0 || self.page_size > 10_000 {
            return Err(err(
                "BULK_EXPORT_PAGE_SIZE",
                "must be between 1 and 10000".into(),
            ));
        }
        if self.partition_target == 0 {
            return Err(err(
                "BULK_EXPORT_PARTITION_TARGET",
                "must be at least 1".into(),
            ));
        }
        if !(1..=1000).contains(&self.parts_per_invocation) {
            return Err(err(
                "BULK_EXPORT_PARTS_PER_INVOCATION",
                "must be between 1 and 1000".into(),
            ));
        }
        if !(1..=64).contains(&self.max_partitions) {
            return Err(err(
                "BULK_EXPORT_MAX_PARTITIONS",
                "must be between 1 and 64".into(),
            ));
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(err(
                "BULK_EXPORT_BASE_URL",
                "must be an absolute http(s) URL".into(),
            ));
        }
        Ok(())
    }

    /// The base URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// The path part of the base URL (e.g. `/fhir`), without a trailing slash.
    pub fn base_path(&self) -> &str {
        let base = self.base();
        let after_scheme = base.split_once("://").map(|(_, r)| r).unwrap_or(base);
        match after_scheme.find('/') {
            Some(i) => &after_scheme[i..],
            None => "",
        }
    }
}
