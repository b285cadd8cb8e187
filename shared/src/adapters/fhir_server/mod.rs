//! [`Source`] over a FHIR R4 server's search API. Pages are followed through
//! `link[relation=next]`; the cursor is `<query index>[s] <next url>`, the
//! `s` marking a search asked for `_sort=_id` (see `Page::ordered_by_id`).

pub mod read_ahead;
pub mod upstream_auth;

use crate::adapters::fhir_server::read_ahead::{Lineage, ReadAhead};
use crate::adapters::fhir_server::upstream_auth::UpstreamAuth;
use crate::fhir::framing::{FramedPage, early_next_link, frame_search_bundle, read_head};
use crate::fhir::instant::format_instant;
use crate::model::{PatientScope, compartment_owner};
use crate::ports::source::{Page, PageRequest, Source, SourceError};
use async_trait::async_trait;
use rand::Rng;
use reqwest::StatusCode;
use std::time::Duration;

/// Characters a `_typeFilter` query may not carry raw in a URL query string;
/// existing `%XX` escapes and the query's own `&`/`=` separators pass through.
const QUERY_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'[')
    .add(b']');

/// Retry policy for upstream requests.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, including the first.
    pub max_attempts: u32,
    /// First backoff delay; doubles each attempt, with full jitter.
    pub base_delay: Duration,
    /// Longest single wait (also caps `Retry-After`).
    pub max_delay: Duration,
    /// Timeout of one request, body included.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// Reads resources from a FHIR server.
#[derive(Clone)]
pub struct FhirServerSource {
    base: String,
    client: reqwest::Client,
    auth: std::sync::Arc<UpstreamAuth>,
    retry: RetryPolicy,
    ahead: std::sync::Arc<ReadAhead>,
    max_body: usize,
    /// Searches ask for `_sort=_id` until the upstream refuses it once.
    sort_by_id: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Largest upstream response body read: a bigger page is asked for again
/// with half its `_count`, so an upstream's inline attachments never grow
/// a step's memory past this (and a copy of it) however large they are.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

enum Attempt {
    Done(bytes::Bytes),
    NotFound,
    Retry(String, Option<Duration>),
    Fail(String),
    TooLarge,
}

impl FhirServerSource {
    /// A source reading from `base` (e.g. `https://fhir.example.org/r4`).
    pub fn new(
        base: impl Into<String>,
        bearer: Option<String>,
        retry: RetryPolicy,
    ) -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(retry.request_timeout)
            .build()
            .map_err(|e| SourceError::Permanent(format!("HTTP client: {e}")))?;
        let auth = match bearer {
            Some(t) => UpstreamAuth::Bearer(t),
            None => UpstreamAuth::None,
        };
        Ok(Self {
            base: base.into().trim_end_matches('/').to_string(),
            client,
            auth: std::sync::Arc::new(auth),
            retry,
            ahead: std::sync::Arc::default(),
            max_body: MAX_BODY_BYTES,
            sort_by_id: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        })
    }

    /// The same source reading bodies of at most `bytes`.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The same source authenticating with `auth` instead.
    pub fn with_auth(mut self, auth: UpstreamAuth) -> Self {
        self.auth = std::sync::Arc::new(auth);
        self
    }

    fn origin(url: &str) -> Option<&str> {
        let rest = url.split_once("://")?.1;
        let end = rest.find('/').unwrap_or(rest.len());
        Some(&url[..url.len() - rest.len() + end])
    }

    /// Only follow `next` links on the upstream's own origin and path.
    fn check_same_upstream(&self, url: &str) -> Result<(), SourceError> {
        if Self::origin(url) == Self::origin(&self.base) && url.starts_with(&self.base) {
            Ok(())
        } else {
            Err(SourceError::Permanent(
                "upstream next link points outside the upstream base URL".into(),
            ))
        }
    }

    fn first_url(&self, req: &PageRequest<'_>, filter: Option<&str>) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut url = format!(
            "{}/{}?_count={}&_pretty=false",
            self.base, req.resource_type, req.page_size
        );
        if let Some(since) = req.since {
            url.push_str(&format!("&_lastUpdated=gt{}", enc(&format_instant(since))));
        }
        url.push_str(&format!(
            "&_lastUpdated=le{}",
            enc(&format_instant(req.until))
        ));
        if let Some(q) = filter {
            url.push('&');
            url.push_str(&percent_encoding::utf8_percent_encode(q, QUERY_UNSAFE).to_string());
        }
        url
    }

    async fn attempt(&self, url: &str) -> Attempt {
        let mut rb = self
            .client
            .get(url)
            .header("Accept", "application/fhir+json")
            // A server that does not support a parameter we send (a
            // compartment parameter, `_lastUpdated`, a `_typeFilter`'s) must
            // refuse the search, not answer it without that restriction.
            .header("Prefer", "handling=strict");
        match self.auth.as_ref() {
            UpstreamAuth::None => {}
            UpstreamAuth::Bearer(token) => rb = rb.bearer_auth(token),
            UpstreamAuth::ClientCredentials(cc) => match cc.token(&self.client).await {
                Ok(token) => rb = rb.bearer_auth(token),
                Err(e) => return Attempt::Retry(format!("no upstream access token: {e}"), None),
            },
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("request failed: {}", classify(&e)), None),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Attempt::Retry(
                format!("upstream answered {}", status.as_u16()),
                retry_after,
            );
        }
        if status == StatusCode::UNAUTHORIZED
            && let UpstreamAuth::ClientCredentials(cc) = self.auth.as_ref()
        {
            // The token may have been revoked or expired early: fetch a new one.
            cc.invalidate().await;
            return Attempt::Retry("upstream answered 401".into(), None);
        }
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Attempt::NotFound;
        }
        if !status.is_success() {
            return Attempt::Fail(format!("upstream answered {}", status.as_u16()));
        }
        self.read_body(resp).await
    }

    /// The response body, read chunk by chunk up to the size limit.
    async fn read_body(&self, mut resp: reqwest::Response) -> Attempt {
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Attempt::TooLarge;
        }
        let mut body = bytes::BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > self.max_body => {
                    return Attempt::TooLarge;
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Attempt::Done(body.freeze()),
                Err(e) => {
                    return Attempt::Retry(format!("reading body failed: {}", classify(&e)), None);
                }
            }
        }
    }

    /// GET with bounded retries; `Ok(None)` for 404/410. A body `validate`
    /// refuses is retried like a failed request.
    async fn get(
        &self,
        url: &str,
        validate: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<bytes::Bytes>, SourceError> {
        self.get_parsed(url, |b| validate(b).then(|| b.clone()))
            .await
    }

    /// One search page from `url`, framed as NDJSON (parsed once: the framing
    /// is also what tells a good body from a truncated or foreign one). A
    /// body under `budget` bytes has its next page requested at once, with
    /// what is left of the budget (see `PageRequest::read_ahead_below`).
    async fn search_page(
        &self,
        url: &str,
        ty: &str,
        budget: usize,
    ) -> Result<FramedPage, SourceError> {
        match self.ahead.take(url) {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(SourceError::Exhausted(format!("read-ahead task: {e}")))),
            None => {
                self.fetch_search_page(url, ty, budget, &Lineage::default())
                    .await
            }
        }
    }

    /// The ids a membership probe from `url` matches, on every page of it (a
    /// server may cap a page below the `_count` asked for): a probe for `n`
    /// ids has at most `n` non-empty pages.
    async fn collect_matching_ids(
        &self,
        url: &str,
        ty: &str,
        n: usize,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<(), SourceError> {
        let mut next = Some(url.to_string());
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > n + 1 {
                return Err(SourceError::Permanent(format!(
                    "upstream paging of a {ty} _id probe does not end"
                )));
            }
            let framed = self.search_page_within_limit(&url, ty, 0).await?;
            for line in framed
                .ndjson
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                if let Some(id) = read_head(line).ok().and_then(|h| h.id) {
                    seen.insert(id.to_string());
                }
            }
            if let Some(link) = framed.next {
                if link == url {
                    return Err(SourceError::Permanent(
                        "upstream next link points back to the same page".into(),
                    ));
                }
                self.check_same_upstream(&link)?;
                next = Some(link);
            }
        }
        Ok(())
    }

    /// `search_page`, asking again with half the `_count` while the page is
    /// over the body limit (the upstream's `next` links then carry the
    /// smaller count on). A single resource over the limit fails the type.
    async fn search_page_within_limit(
        &self,
        url: &str,
        ty: &str,
        budget: usize,
    ) -> Result<FramedPage, SourceError> {
        let mut url = std::borrow::Cow::Borrowed(url);
        loop {
            match self.search_page(&url, ty, budget).await {
                Err(SourceError::TooLarge(limit)) => match halve_count(&url) {
                    Some(smaller) => {
                        tracing::warn!(
                            resource_type = ty,
                            limit,
                            "upstream page over the body limit; asking for fewer entries"
                        );
                        url = std::borrow::Cow::Owned(smaller);
                    }
                    None => {
                        return Err(SourceError::Permanent(format!(
                            "a {ty} search page is larger than {limit} bytes even with _count=1"
                        )));
                    }
                },
                other => return other,
            }
        }
    }

    /// The cursor after the page of query `q` (of `queries`) read from
    /// `url`, whose `next` link is `next`.
    fn next_cursor(
        &self,
        next: Option<String>,
        url: &str,
        (q, queries): (usize, usize),
        ordered: bool,
    ) -> Result<Option<String>, SourceError> {
        Ok(match next {
            Some(n) => {
                if n == url {
                    return Err(SourceError::Permanent(
                        "upstream next link points back to the same page".into(),
                    ));
                }
                self.check_same_upstream(&n)?;
                Some(format!("{q}{} {n}", if ordered { "s" } else { "" }))
            }
            None if q + 1 < queries => Some(format!("{} ", q + 1)),
            None => None,
        })
    }

    /// The search page at `url`, which asks for `_sort=_id`. Under strict
    /// handling an upstream that cannot sort by id refuses the search: then
    /// the page at `plain()` and that URL, and later searches stop asking.
    async fn sorted_search(
        &self,
        url: &str,
        plain: impl FnOnce() -> String,
        ty: &str,
        budget: usize,
    ) -> Result<(FramedPage, Option<String>), SourceError> {
        match self.search_page_within_limit(url, ty, budget).await {
            Err(SourceError::Permanent(reason)) => {
                let plain = plain();
                let framed = self.search_page_within_limit(&plain, ty, budget).await?;
                tracing::warn!(resource_type = ty, %reason, "upstream refuses _sort=_id; a re-read page resumes by position");
                self.sort_by_id
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                Ok((framed, Some(plain)))
            }
            other => Ok((other?, None)),
        }
    }

    /// `search_page` without looking for a page already read ahead (a
    /// read-ahead task must not find itself).
    async fn fetch_search_page(
        &self,
        url: &str,
        ty: &str,
        budget: usize,
        lineage: &Lineage,
    ) -> Result<FramedPage, SourceError> {
        self.get_parsed(url, |b| {
            if b.len() < budget {
                self.read_ahead(url, b, ty, budget - b.len(), lineage);
            }
            frame_search_bundle(b, ty).ok()
        })
        .await?
        .ok_or_else(|| SourceError::Permanent(format!("upstream has no {ty} search (404)")))
    }

    /// Requests the page after `body` now, if its link is known early and
    /// points back into the upstream (never to the same page).
    fn read_ahead(&self, url: &str, body: &[u8], ty: &str, budget: usize, lineage: &Lineage) {
        let Some(Some(next)) = early_next_link(body) else {
            return;
        };
        if next == url || self.check_same_upstream(&next).is_err() {
            return;
        }
        let (me, ty, at, line) = (self.clone(), ty.to_string(), next.clone(), lineage.clone());
        self.ahead.start(next, lineage, move || {
            tokio::spawn(async move { me.fetch_search_page(&at, &ty, budget, &line).await })
        });
    }

    /// GET with bounded retries; `Ok(None)` for 404/410. A body `parse`
    /// refuses is retried like a failed request.
    async fn get_parsed<T>(
        &self,
        url: &str,
        parse: impl Fn(&bytes::Bytes) -> Option<T>,
    ) -> Result<Option<T>, SourceError> {
        let mut last = String::new();
        for attempt in 0..self.retry.max_attempts {
            if attempt > 0 {
                tracing::debug!(attempt, reason = %last, "retrying upstream request");
            }
            let wait = match self.attempt(url).await {
                Attempt::Done(body) => {
                    if let Some(parsed) = parse(&body) {
                        return Ok(Some(parsed));
                    }
                    last = "upstream body is not a FHIR JSON resource".into();
                    None
                }
                Attempt::NotFound => return Ok(None),
                Attempt::Fail(reason) => return Err(SourceError::Permanent(reason)),
                Attempt::TooLarge => return Err(SourceError::TooLarge(self.max_body)),
                Attempt::Retry(reason, after) => {
                    last = reason;
                    after
                }
            };
            if attempt + 1 < self.retry.max_attempts {
                let backoff = self
                    .retry
                    .base_delay
                    .saturating_mul(1 << attempt.min(16))
                    .min(self.retry.max_delay);
                let jittered =
                    Duration::from_millis(rand::rng().random_range(0..=backoff.as_millis() as u64));
                let delay = wait
                    .map(|w| w.min(self.retry.max_delay))
                    .unwrap_or(jittered);
                tokio::time::sleep(delay).await;
            }
        }
        Err(SourceError::Exhausted(last))
    }
}

/// A cursor's query index, whether that search asked for `_sort=_id`, and
/// its next URL (empty for the first page of the query).
fn parse_cursor(cursor: &str, queries: usize) -> Result<(usize, bool, &str), SourceError> {
    let malformed = || SourceError::Permanent("malformed FHIR cursor".into());
    let (head, url) = cursor.split_once(' ').ok_or_else(malformed)?;
    let (index, sorted) = match head.strip_suffix('s') {
        Some(index) => (index, true),
        None => (head, false),
    };
    let index = index
        .parse::<usize>()
        .ok()
        .filter(|i| *i < queries)
        .ok_or_else(malformed)?;
    Ok((index, sorted, url))
}

/// `url` with its `_count` halved, `None` when it has none or it is 1.
fn halve_count(url: &str) -> Option<String> {
    let (path, query) = url.split_once('?')?;
    let mut halved = false;
    let params: Vec<String> = query
        .split('&')
        .map(|p| {
            match p
                .strip_prefix("_count=")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if n > 1 && !halved => {
                    halved = true;
                    format!("_count={}", n / 2)
                }
                _ => p.to_string(),
            }
        })
        .collect();
    halved.then(|| format!("{path}?{}", params.join("&")))
}

/// The patient restriction of each upstream query: `_id=` for Patient, one
/// query per compartment parameter for other types, none at system level.
fn compartment_queries(req: &PageRequest<'_>) -> Vec<Option<String>> {
    let Some(batch) = req.batch else {
        return vec![None];
    };
    if req.resource_type == "Patient" {
        return vec![Some(format!("_id={}", batch.join(",")))];
    }
    let refs: Vec<String> = batch.iter().map(|id| format!("Patient/{id}")).collect();
    let refs = refs.join(",");
    match crate::fhir::compartment::compartment_params(req.resource_type) {
        Some(params) => params
            .iter()
            .map(|p| Some(format!("{}={refs}", p.name)))
            .collect(),
        None => vec![None],
    }
}

/// A resource linked to several covered patients (or through several
/// parameters) comes back from several batch queries; it is kept only by the
/// batch holding its smallest covered patient, through the first parameter
/// linking that patient. Deterministic and stateless: each appears once.
fn keep_owned_by_batch(
    ndjson: Vec<u8>,
    scope: &PatientScope,
    batch: &[String],
    param: usize,
) -> Result<(Vec<u8>, u64), SourceError> {
    let mut out = Vec::with_capacity(ndjson.len());
    let (mut count, mut unlinked) = (0u64, 0u64);
    for line in ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|_| SourceError::Permanent("resource is not valid JSON".into()))?;
        // A resource of no covered patient (as far as the resource itself
        // shows) means the upstream ignored the compartment parameter and
        // answered with other patients' resources: never export those.
        let owner = compartment_owner(&value, scope);
        if owner.is_none() {
            unlinked += 1;
        }
        let keep =
            owner.is_some_and(|(owner, via)| via == param && batch.binary_search(&owner).is_ok());
        if keep {
            out.extend_from_slice(line);
            out.push(b'\n');
            count += 1;
        }
    }
    if unlinked > 0 {
        tracing::warn!(
            unlinked,
            "upstream answered a compartment search with resources of no covered patient; dropped"
        );
    }
    Ok((out, count))
}

/// Ids per `_id=` membership query, keeping URLs well under common limits.
const IDS_PER_QUERY: usize = 100;

impl FhirServerSource {
    /// Every line of a search from `url` on, following `next` links; a link
    /// back to any page already read is an error, not a loop.
    async fn search_lines(
        &self,
        mut url: String,
        resource_type: &str,
        mut visit: impl FnMut(&[u8]),
    ) -> Result<(), SourceError> {
        let mut seen = std::collections::HashSet::new();
        loop {
            let framed = self.search_page(&url, resource_type, 0).await?;
            framed
                .ndjson
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .for_each(&mut visit);
            seen.insert(url);
            match framed.next {
                None => return Ok(()),
                Some(n) if seen.contains(&n) => {
                    return Err(SourceError::Permanent(
                        "upstream next link loops back to an earlier page".into(),
                    ));
                }
                Some(n) => {
                    self.check_same_upstream(&n)?;
                    url = n;
                }
            }
        }
    }

    /// Several `_typeFilter` queries for one type combine with OR; a resource
    /// matching filter k is emitted only if no earlier filter matches it, so
    /// it appears once. Membership is asked of the upstream with `_id=` batches.
    async fn drop_earlier_matches(
        &self,
        req: &PageRequest<'_>,
        earlier: &[Option<&str>],
        ndjson: Vec<u8>,
    ) -> Result<(Vec<u8>, u64), SourceError> {
        let lines: Vec<&[u8]> = ndjson
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let ids: Vec<String> = lines
            .iter()
            .filter_map(|l| read_head(l).ok().and_then(|h| h.id.map(str::to_string)))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for filter in earlier.iter().flatten() {
            for batch in ids.chunks(IDS_PER_QUERY) {
                let mut url = self.first_url(
                    &PageRequest {
                        page_size: batch.len(),
                        ..req.clone()
                    },
                    Some(filter),
                );
                url.push_str("&_id=");
                url.push_str(
                    &percent_encoding::utf8_percent_encode(&batch.join(","), QUERY_UNSAFE)
                        .to_string(),
                );
                self.collect_matching_ids(&url, req.resource_type, batch.len(), &mut seen)
                    .await?;
            }
        }
        let mut out = Vec::with_capacity(ndjson.len());
        let mut count = 0u64;
        for line in lines {
            let id = read_head(line).ok().and_then(|h| h.id);
            if id.is_some_and(|id| seen.contains(id)) {
                continue;
            }
            out.extend_from_slice(line);
            out.push(b'\n');
            count += 1;
        }
        Ok((out, count))
    }
}

fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body interrupted"
    } else {
        "transport error"
    }
}

fn looks_like_json_resource(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

#[async_trait]
impl Source for FhirServerSource {
    async fn resource_types(&self) -> Result<Vec<String>, SourceError> {
        let url = format!("{}/metadata", self.base);
        let body = self
            .get(&url, looks_like_json_resource)
            .await?
            .ok_or_else(|| SourceError::Permanent("upstream has no CapabilityStatement".into()))?;
        let cs: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| SourceError::Permanent("bad CapabilityStatement".into()))?;
        let mut types: Vec<String> = cs["rest"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["resource"].as_array().cloned().unwrap_or_default())
            .filter(|r| {
                r["interaction"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|x| x["code"] == "search-type"))
            })
            .filter_map(|r| r["type"].as_str().map(str::to_string))
            .filter(|t| crate::fhir::resource_types::is_resource_type(t))
            .collect();
        types.sort();
        types.dedup();
        Ok(types)
    }

    async fn fetch_page(&self, req: &PageRequest<'_>) -> Result<Page, SourceError> {
        let filters: Vec<Option<&str>> = if req.type_filters.is_empty() {
            vec![None]
        } else {
            req.type_filters
                .iter()
                .map(|f| Some(f.query.as_str()))
                .collect()
        };
        let links = compartment_queries(req);
        // Query q runs filter q / links.len() restricted by link q % links.len().
        let query_url = |q: usize, sorted: bool| -> String {
            let (f, l) = (q / links.len(), q % links.len());
            let mut url = self.first_url(req, filters.get(f).copied().flatten());
            if let Some(link) = &links[l] {
                url.push('&');
                url.push_str(
                    &percent_encoding::utf8_percent_encode(link, QUERY_UNSAFE).to_string(),
                );
            }
            if sorted {
                url.push_str("&_sort=_id");
            }
            url
        };
        let queries = filters.len() * links.len();
        let sort = self.sort_by_id.load(std::sync::atomic::Ordering::Relaxed);
        let (q, mut url, built, mut ordered) = match req.cursor {
            None => (0usize, query_url(0, sort), true, sort),
            Some(c) => {
                let (i, sorted, u) = parse_cursor(c, queries)?;
                if u.is_empty() {
                    (i, query_url(i, sort), true, sort)
                } else {
                    self.check_same_upstream(u)?;
                    (i, u.to_string(), false, sorted)
                }
            }
        };
        let ty = req.resource_type;
        let framed = if built && ordered {
            let sorted = self.sorted_search(&url, || query_url(q, false), ty, req.read_ahead_below);
            match sorted.await? {
                (framed, None) => framed,
                (framed, Some(plain)) => {
                    (url, ordered) = (plain, false);
                    framed
                }
            }
        } else {
            self.search_page_within_limit(&url, ty, req.read_ahead_below)
                .await?
        };
        let next = self.next_cursor(framed.next, &url, (q, queries), ordered)?;
        let (mut ndjson, mut count) = (framed.ndjson, framed.count);
        let filter_idx = q / links.len();
        if filter_idx > 0 && count > 0 {
            (ndjson, count) = self
                .drop_earlier_matches(req, &filters[..filter_idx], ndjson)
                .await?;
        }
        if let Some(batch) = req.batch
            && ty != "Patient"
            && count > 0
        {
            (ndjson, count) = keep_owned_by_batch(ndjson, req.scope, batch, q % links.len())?;
        }
        Ok(Page {
            ndjson,
            count,
            next,
            ordered_by_id: ordered,
        })
    }

    async fn estimate(&self, req: &PageRequest<'_>) -> Result<Option<u64>, SourceError> {
        if !req.type_filters.is_empty() || req.batch.is_some() {
            return Ok(None);
        }
        let url = format!("{}&_summary=count", self.first_url(req, None));
        let Some(body) = self.get(&url, looks_like_json_resource).await? else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Ok(v["total"].as_u64())
    }

    async fn read_resource(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let url = format!("{}/{}/{}", self.base, resource_type, id);
        let is_it = |b: &[u8]| read_head(b).is_ok_and(|h| h.resource_type == resource_type);
        Ok(self.get(&url, is_it).await?.map(|b| {
            let mut out = Vec::with_capacity(b.len());
            crate::fhir::framing::minify_into(&mut out, &b);
            out
        }))
    }

    async fn fetch_by_ids(&self, resource_type: &str, ids: &[String]) -> Result<Page, SourceError> {
        let mut wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut page = Page::default();
        for batch in ids.chunks(IDS_PER_QUERY) {
            let url = format!(
                "{}/{resource_type}?_count={}&_pretty=false&_id={}",
                self.base,
                batch.len(),
                percent_encoding::utf8_percent_encode(&batch.join(","), QUERY_UNSAFE)
            );
            self.search_lines(url, resource_type, |line| {
                // Each id once, even if the upstream repeats one across pages.
                if read_head(line)
                    .ok()
                    .and_then(|h| h.id)
                    .is_some_and(|id| wanted.remove(id))
                {
                    page.ndjson.extend_from_slice(line);
                    page.ndjson.push(b'\n');
                    page.count += 1;
                }
            })
            .await?;
        }
        Ok(page)
    }

    async fn patient_ids(&self) -> Result<Vec<String>, SourceError> {
        let url = format!(
            "{}/Patient?_count=1000&_elements=id&_pretty=false",
            self.base
        );
        let mut ids = Vec::new();
        self.search_lines(url, "Patient", |line| {
            if let Some(id) = read_head(line).ok().and_then(|h| h.id) {
                ids.push(id.to_string());
            }
        })
        .await?;
        Ok(ids)
    }

    fn queries_by_patient_batch(&self) -> bool {
        true
    }

    fn supports_time_partitions(&self) -> bool {
        true
    }

    fn supports_type_filter(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod body_limit_tests {
    use super::halve_count;

    #[test]
    fn halving_the_count_keeps_the_rest_of_the_query() {
        assert_eq!(
            halve_count("https://h/fhir/Observation?_count=500&_pretty=false&_id=a").as_deref(),
            Some("https://h/fhir/Observation?_count=250&_pretty=false&_id=a")
        );
        assert_eq!(
            halve_count("https://h/fhir/Observation?_pretty=false&_count=3").as_deref(),
            Some("https://h/fhir/Observation?_pretty=false&_count=1")
        );
        assert_eq!(halve_count("https://h/fhir/Observation?_count=1"), None);
        assert_eq!(halve_count("https://h/fhir/Observation?page=7"), None);
        assert_eq!(halve_count("https://h/fhir/Observation"), None);
    }
}
