//! A Bulk Data client: kick-off, polling with `Retry-After`, progress,
//! parallel downloads with count verification, and DELETE on Ctrl-C.

use futures::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportArgs {
    /// FHIR base URL.
    pub base_url: String,
    /// `_type` values.
    pub types: Vec<String>,
    /// `_since`.
    pub since: Option<String>,
    /// Group id for a Group-level export.
    pub group: Option<String>,
    /// Download directory.
    pub out: PathBuf,
    /// Bearer token for the server.
    pub token: Option<String>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Per-type results of a finished export.
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    /// Resources downloaded per type (verified against the manifest counts).
    pub per_type: BTreeMap<String, (u64, u64, usize)>,
    /// Lines of error files.
    pub errors: u64,
    /// The manifest.
    pub manifest: Value,
}

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// HTTP failure.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered something unexpected.
    #[error("{0}")]
    Protocol(String),
    /// Writing files failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Interrupted; the job was cancelled.
    #[error("interrupted; export cancelled")]
    Cancelled,
}

fn authed(rb: reqwest::RequestBuilder, token: &Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

/// Runs an export to completion and downloads every file.
pub async fn run_export(args: &ExportArgs) -> Result<ExportSummary, ClientError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let base = args.base_url.trim_end_matches('/');
    let mut url = match &args.group {
        Some(g) => format!("{base}/Group/{g}/$export"),
        None => format!("{base}/$export"),
    };
    let mut query = Vec::new();
    if !args.types.is_empty() {
        query.push(format!("_type={}", args.types.join(",")));
    }
    if let Some(s) = &args.since {
        query.push(format!("_since={}", s.replace('+', "%2B")));
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let resp = authed(http.get(&url), &args.token)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await?;
    if resp.status().as_u16() != 202 {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(ClientError::Protocol(format!(
            "kick-off answered {status}: {body}"
        )));
    }
    let status_url = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ClientError::Protocol("kick-off response has no Content-Location".into()))?
        .to_string();

    let poll = poll_until_done(&http, &status_url, args);
    let manifest = tokio::select! {
        m = poll => m?,
        _ = tokio::signal::ctrl_c() => {
            let _ = authed(http.delete(&status_url), &args.token).send().await;
            return Err(ClientError::Cancelled);
        }
    };
    download_all(&http, &manifest, args).await
}

async fn poll_until_done(
    http: &reqwest::Client,
    status_url: &str,
    args: &ExportArgs,
) -> Result<Value, ClientError> {
    loop {
        let resp = authed(http.get(status_url), &args.token)
            .header("Accept", "application/json")
            .send()
            .await?;
        let code = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        match code {
            200 => {
                if args.progress {
                    eprintln!("\r[{}] 100% complete{:40}", "#".repeat(40), "");
                }
                return Ok(resp.json().await?);
            }
            202 | 429 => {
                if args.progress {
                    let progress = resp
                        .headers()
                        .get("x-progress")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let pct: usize = progress
                        .split('%')
                        .next()
                        .and_then(|p| p.trim().parse().ok())
                        .unwrap_or(0);
                    let filled = pct.min(100) * 40 / 100;
                    eprint!(
                        "\r[{}{}] {progress:<70}",
                        "#".repeat(filled),
                        ".".repeat(40 - filled)
                    );
                    let _ = std::io::stderr().flush();
                }
                tokio::time::sleep(Duration::from_secs(retry.clamp(1, 60))).await;
            }
            _ => {
                let body = resp.text().await.unwrap_or_default();
                return Err(ClientError::Protocol(format!(
                    "status answered {code}: {body}"
                )));
            }
        }
    }
}

async fn download_one(
    http: &reqwest::Client,
    url: &str,
    dest: &Path,
    token: &Option<String>,
    with_token: bool,
) -> Result<u64, ClientError> {
    let rb = http.get(url).header("Accept", "application/fhir+ndjson");
    let rb = if with_token { authed(rb, token) } else { rb };
    let resp = rb.send().await?;
    if !resp.status().is_success() {
        return Err(ClientError::Protocol(format!(
            "download answered {}",
            resp.status()
        )));
    }
    let mut file = tokio::fs::File::create(dest).await?;
    let mut lines = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    Ok(lines)
}

async fn download_all(
    http: &reqwest::Client,
    manifest: &Value,
    args: &ExportArgs,
) -> Result<ExportSummary, ClientError> {
    std::fs::create_dir_all(&args.out)?;
    let with_token = manifest["requiresAccessToken"].as_bool().unwrap_or(false);
    let mut jobs = Vec::new();
    for (section, items) in [
        ("output", &manifest["output"]),
        ("error", &manifest["error"]),
    ] {
        // Files are numbered per type, as the server names them.
        let mut per_type: std::collections::HashMap<String, usize> = Default::default();
        for item in items.as_array().into_iter().flatten() {
            let ty = item["type"].as_str().unwrap_or("Unknown").to_string();
            // The type becomes part of a local file name: never a path.
            if ty.is_empty() || !ty.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(ClientError::Protocol(
                    "manifest lists a file whose type is not a resource type name".into(),
                ));
            }
            let url = item["url"].as_str().unwrap_or("").to_string();
            let expected = item["count"].as_u64();
            let n = per_type.entry(ty.clone()).or_default();
            *n += 1;
            let name = if section == "error" {
                format!("error-{ty}-{n}.ndjson")
            } else {
                format!("{ty}-{n}.ndjson")
            };
            jobs.push((section, ty, url, expected, args.out.join(name)));
        }
    }
    let results: Vec<_> = futures::stream::iter(jobs)
        .map(|(section, ty, url, expected, dest)| async move {
            let lines = download_one(http, &url, &dest, &args.token, with_token).await?;
            if let Some(exp) = expected
                && exp != lines
            {
                return Err(ClientError::Protocol(format!(
                    "{ty}: manifest count {exp} but file has {lines} lines"
                )));
            }
            let bytes = std::fs::metadata(&dest)?.len();
            Ok::<_, ClientError>((section, ty, lines, bytes))
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut summary = ExportSummary {
        manifest: manifest.clone(),
        ..Default::default()
    };
    for r in results {
        let (section, ty, lines, bytes) = r?;
        if section == "error" {
            summary.errors += lines;
        } else {
            let e = summary.per_type.entry(ty).or_default();
            e.0 += lines;
            e.1 += bytes;
            e.2 += 1;
        }
    }
    Ok(summary)
}

/// Formats the per-type summary table.
pub fn summary_table(s: &ExportSummary) -> String {
    let mut out = format!(
        "{:<22} {:>10} {:>12} {:>6}\n",
        "type", "resources", "bytes", "files"
    );
    let (mut tr, mut tb, mut tf) = (0, 0, 0);
    for (ty, (r, b, f)) in &s.per_type {
        out.push_str(&format!("{ty:<22} {r:>10} {b:>12} {f:>6}\n"));
        tr += r;
        tb += b;
        tf += f;
    }
    out.push_str(&format!("{:<22} {tr:>10} {tb:>12} {tf:>6}\n", "total"));
    if s.errors > 0 {
        out.push_str(&format!(
            "errors: {} OperationOutcome(s) in error files\n",
            s.errors
        ));
    }
    out
}
