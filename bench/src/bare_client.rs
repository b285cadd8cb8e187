//! The bare client: what the upstream alone allows. It pages a type through
//! the fixture with the exporter's page size, follows `next` links and
//! discards the bytes, so the exporter's throughput can be read as a share
//! of it (the upstream-bound ratio).

use crate::error::BenchError;
use std::time::Instant;

/// One bare-client measurement.
#[derive(Debug, Clone, Default)]
pub struct Bare {
    /// Seconds for all pages.
    pub elapsed: f64,
    pub pages: u64,
    /// Response body bytes (JSON Bundles, larger than the NDJSON they hold).
    pub wire_bytes: u64,
}

/// The `next` link of a search Bundle. The fixture writes `link` before the entries, so
/// only the first 8 KiB are searched instead of parsing the page.
fn next_link(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(8192)];
    let pat = br#""relation":"next","url":""#;
    let i = head.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let end = head[i..].iter().position(|b| *b == b'"')? + i;
    std::str::from_utf8(&head[i..end]).ok().map(str::to_string)
}

/// Pages one type to the end; returns (pages, wire bytes).
async fn page_type(
    http: &reqwest::Client,
    base: &str,
    ty: &str,
    count: usize,
) -> Result<(u64, u64), BenchError> {
    let mut url = Some(format!("{base}/{ty}?_count={count}&_pretty=false"));
    let (mut pages, mut bytes) = (0u64, 0u64);
    while let Some(u) = url {
        let resp = http
            .get(&u)
            .send()
            .await
            .map_err(BenchError::http("bare client page"))?;
        if !resp.status().is_success() {
            return Err(BenchError::Upstream {
                resource_type: ty.to_string(),
                status: resp.status(),
            });
        }
        let body = resp
            .bytes()
            .await
            .map_err(BenchError::http("bare client page body"))?;
        pages += 1;
        bytes += body.len() as u64;
        url = next_link(&body);
    }
    Ok((pages, bytes))
}

/// Pages every type through the fixture, discarding the bytes: one type after
/// another (`parallel` false) or all types at once.
async fn bare_client(
    base: &str,
    types: &[String],
    count: usize,
    parallel: bool,
) -> Result<Bare, BenchError> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(BenchError::http("client"))?;
    let t0 = Instant::now();
    let mut out = Bare::default();
    if parallel {
        let mut set = tokio::task::JoinSet::new();
        for ty in types {
            let (http, base, ty) = (http.clone(), base.to_string(), ty.clone());
            set.spawn(async move { page_type(&http, &base, &ty, count).await });
        }
        while let Some(r) = set.join_next().await {
            let (p, b) = r??;
            out.pages += p;
            out.wire_bytes += b;
        }
    } else {
        for ty in types {
            let (p, b) = page_type(&http, base, ty, count).await?;
            out.pages += p;
            out.wire_bytes += b;
        }
    }
    out.elapsed = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The median by time of `repeat` bare-client measurements.
pub async fn bare_median(
    base: &str,
    types: &[String],
    count: usize,
    parallel: bool,
    repeat: usize,
) -> Result<Bare, BenchError> {
    let mut all = Vec::new();
    for _ in 0..repeat.max(1) {
        all.push(bare_client(base, types, count, parallel).await?);
    }
    all.sort_by(|a, b| a.elapsed.total_cmp(&b.elapsed));
    Ok(all.swap_remove(all.len() / 2))
}
