//! A fast, fault-injecting FHIR search server over a directory of NDJSON
//! files (as written by [`crate::generate::generate`]), for tests and
//! benchmarks of the FHIR-server source.
//!
//! Every resource is loaded into memory as its raw line, with `id` and
//! `meta.lastUpdated` parsed, sorted per type by `(lastUpdated, id)`. Searches
//! answer compact searchset Bundles whose entries carry the raw line bytes;
//! paging is by `_offset`. Faults (error statuses, HTML pages, truncated
//! bodies, dropped connections, slow answers and broken paging) are injected
//! on the Nth search or with a probability drawn from a seeded generator.
//!
//! Supported requests:
//! - `GET /fhir/metadata`: a CapabilityStatement listing the loaded types
//!   (Group is left out of the list but can still be read).
//! - `GET /fhir/<Type>?_count=N&_lastUpdated=gtX&_lastUpdated=leY[&_offset=K]
//!   [&_summary=count][&_id=a,b][&<compartment param>=Patient/a,Patient/b]`
//!   (`_pretty`, `_format` and `_elements` are accepted and ignored; any other
//!   parameter is a 400 OperationOutcome).
//! - `GET /fhir/<Type>/<id>`: a read.
//! - `GET /__stats`: request counters as JSON.

use crate::generate::Rng;
use bulk_export_core::fhir::framing::read_head;
use bulk_export_core::fhir::instant::parse_instant;
use bulk_export_core::fhir::resource_types::is_resource_type;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// A fault the server can inject into a search response.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// An error status (429/500/502/503/504) with an optional `Retry-After` in seconds.
    Status(u16, Option<u64>),
    /// `200 OK` with an HTML body, like a misconfigured proxy's error page.
    HtmlErrorPage,
    /// `200 OK` with the JSON cut off half-way (a consistent `Content-Length`).
    TruncatedBody,
    /// The connection is dropped without any response.
    ConnectionReset,
    /// The normal response, after this long (for client timeouts).
    Delay(Duration),
    /// The `next` link points to the very same page.
    NextLinkLoop,
    /// An empty page whose `next` link continues where this page should have started.
    EmptyPageWithNext,
}

impl Fault {
    /// A short name used in the counters.
    pub fn kind(&self) -> String {
        match self {
            Fault::Status(code, _) => format!("status_{code}"),
            Fault::HtmlErrorPage => "html_error_page".into(),
            Fault::TruncatedBody => "truncated_body".into(),
            Fault::ConnectionReset => "connection_reset".into(),
            Fault::Delay(_) => "delay".into(),
            Fault::NextLinkLoop => "next_link_loop".into(),
            Fault::EmptyPageWithNext => "empty_page_with_next".into(),
        }
    }
}

/// When a fault rule fires. Search requests are numbered from 1 per rule,
/// counting only the searches the rule applies to (page searches, not
/// `_summary=count`; of one type if the rule names one).
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// On exactly the Nth search.
    Nth(u64),
    /// On every search from the Nth on (a persistently broken upstream).
    From(u64),
    /// On each search with this probability (seeded, so runs repeat when
    /// requests arrive in the same order).
    Probability(f64),
}

/// One fault-injection rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// What to inject.
    pub fault: Fault,
    /// When.
    pub trigger: Trigger,
    /// Only searches of this type count and are affected; `None` for all types.
    pub resource_type: Option<String>,
}

impl FaultRule {
    /// `fault` on the Nth search (1-based).
    pub fn nth(n: u64, fault: Fault) -> Self {
        Self {
            fault,
            trigger: Trigger::Nth(n),
            resource_type: None,
        }
    }

    /// `fault` on every search from the Nth on.
    pub fn from(n: u64, fault: Fault) -> Self {
        Self {
            fault,
            trigger: Trigger::From(n),
            resource_type: None,
        }
    }

    /// `fault` on each search with probability `p`.
    pub fn probability(p: f64, fault: Fault) -> Self {
        Self {
            fault,
            trigger: Trigger::Probability(p),
            resource_type: None,
        }
    }

    /// Restricts the rule to searches of one type.
    pub fn for_type(mut self, resource_type: &str) -> Self {
        self.resource_type = Some(resource_type.to_string());
        self
    }
}

/// Knobs of a fixture server.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// Added to every page search (not `_summary=count`, reads or metadata).
    pub latency: Duration,
    /// Most entries per page, whatever `_count` asks for.
    pub page_size_cap: Option<usize>,
    /// `_count` when a search gives none.
    pub default_count: usize,
    /// Fault rules; the first that fires for a search applies.
    pub faults: Vec<FaultRule>,
    /// Seed of the generator behind `Trigger::Probability`.
    pub seed: u64,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            page_size_cap: None,
            default_count: 100,
            faults: Vec::new(),
            seed: 1,
        }
    }
}

/// Request counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FixtureStats {
    /// Every request except `/__stats`.
    pub requests: u64,
    /// Page searches per type (`_summary=count` not included).
    pub searches: BTreeMap<String, u64>,
    /// `_summary=count` searches per type.
    pub counts: BTreeMap<String, u64>,
    /// Reads (`GET /fhir/<Type>/<id>`).
    pub reads: u64,
    /// `metadata` requests.
    pub metadata: u64,
    /// Injected faults per kind.
    pub faults: BTreeMap<String, u64>,
    /// Entries served in search pages.
    pub resources_served: u64,
    /// Response body bytes of search pages.
    pub bytes_served: u64,
}

struct Resource {
    /// `meta.lastUpdated` in Unix nanoseconds (`i128::MIN` when absent).
    t: i128,
    id: Box<str>,
    raw: Bytes,
}

struct TypeData {
    /// Sorted by `(t, id)`.
    resources: Vec<Resource>,
    by_id: HashMap<Box<str>, usize>,
    /// Patient-compartment links per resource, computed on first use.
    links: OnceLock<Vec<Vec<(usize, String)>>>,
}

impl TypeData {
    fn links(&self) -> &[Vec<(usize, String)>] {
        self.links.get_or_init(|| {
            self.resources
                .iter()
                .map(|r| {
                    serde_json::from_slice::<serde_json::Value>(&r.raw)
                        .map(|v| bulk_export_core::fhir::compartment::patient_links(&v))
                        .unwrap_or_default()
                })
                .collect()
        })
    }
}

/// Loaded resources per type.
struct Dataset {
    types: BTreeMap<String, TypeData>,
}

fn load(dir: &Path) -> Result<Dataset, String> {
    let mut per_type: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    paths.sort();
    for path in paths {
        let data = Bytes::from(
            std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?,
        );
        let mut start = 0usize;
        let mut line_no = 0usize;
        while start < data.len() {
            line_no += 1;
            let end = memchr_nl(&data[start..]).map_or(data.len(), |i| start + i);
            let mut stop = end;
            while stop > start && matches!(data[stop - 1], b'\r' | b' ' | b'\t') {
                stop -= 1;
            }
            let line = data.slice(start..stop);
            start = end + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let bad = |what: &str| format!("{} line {line_no}: {what}", path.display());
            let head = read_head(&line).map_err(|_| bad("not a JSON resource"))?;
            let id = head.id.ok_or_else(|| bad("resource without id"))?;
            let t = match head.meta.as_ref().and_then(|m| m.last_updated) {
                None => i128::MIN,
                Some(lu) => parse_instant(lu)
                    .ok_or_else(|| bad("meta.lastUpdated is not an instant"))?
                    .unix_timestamp_nanos(),
            };
            let ty = head.resource_type.to_string();
            let resource = Resource {
                t,
                id: id.into(),
                raw: line.clone(),
            };
            per_type.entry(ty).or_default().push(resource);
        }
    }
    let types = per_type
        .into_iter()
        .map(|(ty, mut resources)| {
            resources.sort_by(|a, b| (a.t, &a.id).cmp(&(b.t, &b.id)));
            let by_id = resources
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id.clone(), i))
                .collect();
            (
                ty,
                TypeData {
                    resources,
                    by_id,
                    links: OnceLock::new(),
                },
            )
        })
        .collect();
    Ok(Dataset { types })
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|b| *b == b'\n')
}

struct State {
    data: Dataset,
    opts: FixtureOptions,
    /// `http://127.0.0.1:<port>`.
    origin: String,
    stats: Mutex<FixtureStats>,
    rule_hits: Vec<AtomicU64>,
    rng: Mutex<Rng>,
    nonce: AtomicU64,
}

impl State {
    fn base(&self) -> String {
        format!("{}/fhir", self.origin)
    }

    fn stats(&self) -> FixtureStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn bump(&self, f: impl FnOnce(&mut FixtureStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// The first rule that fires for a page search of `ty`, counting it.
    fn pick_fault(&self, ty: &str) -> Option<Fault> {
        let mut chosen = None;
        for (rule, hits) in self.opts.faults.iter().zip(&self.rule_hits) {
            if rule.resource_type.as_deref().is_some_and(|t| t != ty) {
                continue;
            }
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            let fires = match rule.trigger {
                Trigger::Nth(k) => n == k,
                Trigger::From(k) => n >= k,
                Trigger::Probability(p) => {
                    let draw = self.rng.lock().map(|mut r| r.next_u64()).unwrap_or(0);
                    (draw >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
                }
            };
            if fires && chosen.is_none() {
                chosen = Some(rule.fault.clone());
            }
        }
        if let Some(f) = &chosen {
            let kind = f.kind();
            self.bump(|s| *s.faults.entry(kind).or_default() += 1);
        }
        chosen
    }
}

/// A running fixture server; stops when dropped.
pub struct FixtureHandle {
    base_url: String,
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FixtureHandle {
    /// The FHIR base URL, `http://127.0.0.1:<port>/fhir`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FixtureStats {
        self.state.stats()
    }

    /// Resets the counters (fault rules keep their own numbering).
    pub fn reset_stats(&self) {
        self.state.bump(|s| *s = FixtureStats::default());
    }

    /// Loaded resources per type: (count, NDJSON bytes including newlines).
    pub fn dataset_summary(&self) -> BTreeMap<String, (u64, u64)> {
        self.state
            .data
            .types
            .iter()
            .map(|(ty, d)| {
                let bytes = d.resources.iter().map(|r| r.raw.len() as u64 + 1).sum();
                (ty.clone(), (d.resources.len() as u64, bytes))
            })
            .collect()
    }

    /// Waits until the server stops (it runs until the handle is dropped).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for FixtureHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

/// Loads `dir` and serves it on an ephemeral loopback port.
pub async fn start_fixture(dir: &Path, opts: FixtureOptions) -> Result<FixtureHandle, String> {
    start_fixture_on(SocketAddr::from(([127, 0, 0, 1], 0)), dir, opts).await
}

/// Loads `dir` and serves it on `listen`.
pub async fn start_fixture_on(
    listen: SocketAddr,
    dir: &Path,
    opts: FixtureOptions,
) -> Result<FixtureHandle, String> {
    let dir = dir.to_path_buf();
    let data = tokio::task::spawn_blocking(move || load(&dir))
        .await
        .map_err(|e| format!("loading fixture data: {e}"))??;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let origin = format!("http://{addr}");
    let state = Arc::new(State {
        data,
        rule_hits: opts.faults.iter().map(|_| AtomicU64::new(0)).collect(),
        rng: Mutex::new(Rng::new(opts.seed)),
        opts,
        origin: origin.clone(),
        stats: Mutex::new(FixtureStats::default()),
        nonce: AtomicU64::new(0),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
    Ok(FixtureHandle {
        base_url: format!("{origin}/fhir"),
        addr,
        state,
        shutdown,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "fixture accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = socket.set_nodelay(true);
        let reset = Arc::new(Notify::new());
        let st = state.clone();
        let rs = reset.clone();
        let service = hyper::service::service_fn(move |req| {
            let st = st.clone();
            let rs = rs.clone();
            async move { Ok::<_, Infallible>(respond(&st, &rs, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(socket), service);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                // Dropping the connection closes the socket mid-request.
                _ = reset.notified() => {}
                _ = stop.changed() => {}
            }
        });
    }
}

type Resp = http::Response<Full<Bytes>>;

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = http::Response::new(Full::new(body.into()));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn outcome(status: u16, code: &str, diagnostics: &str) -> Resp {
    let body = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]
    });
    response(status, "application/fhir+json", body.to_string())
}

async fn respond(state: &State, reset: &Notify, req: http::Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/__stats" {
        let body = serde_json::to_vec(&state.stats()).unwrap_or_default();
        return response(200, "application/json", body);
    }
    state.bump(|s| s.requests += 1);
    if req.method() != http::Method::GET {
        return outcome(405, "not-supported", "only GET is supported");
    }
    let Some(rest) = path.strip_prefix("/fhir/") else {
        return outcome(404, "not-found", "unknown path");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["metadata"] => {
            state.bump(|s| s.metadata += 1);
            response(200, "application/fhir+json", capability(state))
        }
        [ty] => search(state, reset, ty, &query).await,
        [ty, id] => {
            state.bump(|s| s.reads += 1);
            match state.data.types.get(*ty).and_then(|d| {
                d.by_id
                    .get(*id)
                    .and_then(|i| d.resources.get(*i))
                    .map(|r| r.raw.clone())
            }) {
                Some(raw) => response(200, "application/fhir+json", raw),
                None => outcome(404, "not-found", &format!("{ty}/{id} is not known")),
            }
        }
        _ => outcome(404, "not-found", "unknown path"),
    }
}

fn capability(state: &State) -> Vec<u8> {
    let resources: Vec<serde_json::Value> = state
        .data
        .types
        .keys()
        .filter(|t| t.as_str() != "Group")
        .map(|t| {
            serde_json::json!({
                "type": t,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": "_lastUpdated", "type": "date"},
                    {"name": "_id", "type": "token"}
                ]
            })
        })
        .collect();
    let cs = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "resource": resources}]
    });
    serde_json::to_vec(&cs).unwrap_or_default()
}

/// `%XX` and `+` decoding of one query component.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters and `,`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b',') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A parsed search.
struct Search {
    count: usize,
    offset: usize,
    summary_count: bool,
    /// (prefix, instant) pairs, re-emitted in `next` links.
    last_updated: Vec<(String, String)>,
    lo: i128,
    lo_inclusive: bool,
    hi: i128,
    hi_inclusive: bool,
    ids: Option<Vec<String>>,
    /// (parameter index, parameter name, patient ids).
    compartment: Vec<(usize, String, Vec<String>)>,
}

fn parse_search(state: &State, ty: &str, query: &str) -> Result<Search, String> {
    let mut s = Search {
        count: state.opts.default_count,
        offset: 0,
        summary_count: false,
        last_updated: Vec::new(),
        lo: i128::MIN,
        lo_inclusive: true,
        hi: i128::MAX,
        hi_inclusive: true,
        ids: None,
        compartment: Vec::new(),
    };
    let params = bulk_export_core::fhir::compartment::compartment_params(ty).unwrap_or(&[]);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), decode(v));
        match k.as_str() {
            "_count" => {
                s.count = v
                    .parse()
                    .map_err(|_| format!("_count '{v}' is not a number"))?
            }
            "_offset" => {
                s.offset = v
                    .parse()
                    .map_err(|_| format!("_offset '{v}' is not a number"))?
            }
            "_summary" => match v.as_str() {
                "count" => s.summary_count = true,
                "false" => {}
                _ => return Err(format!("_summary={v} is not supported")),
            },
            "_lastUpdated" => {
                let (prefix, value) =
                    if v.len() > 2 && v.as_bytes()[..2].iter().all(u8::is_ascii_lowercase) {
                        v.split_at(2)
                    } else {
                        ("eq", v.as_str())
                    };
                let t = parse_instant(value)
                    .ok_or_else(|| format!("_lastUpdated value '{value}' is not an instant"))?
                    .unix_timestamp_nanos();
                let raise_lo = |s: &mut Search, t: i128, incl: bool| {
                    if t > s.lo || (t == s.lo && !incl) {
                        s.lo = t;
                        s.lo_inclusive = incl;
                    }
                };
                let lower_hi = |s: &mut Search, t: i128, incl: bool| {
                    if t < s.hi || (t == s.hi && !incl) {
                        s.hi = t;
                        s.hi_inclusive = incl;
                    }
                };
                match prefix {
                    "gt" => raise_lo(&mut s, t, false),
                    "ge" => raise_lo(&mut s, t, true),
                    "lt" => lower_hi(&mut s, t, false),
                    "le" => lower_hi(&mut s, t, true),
                    "eq" => {
                        raise_lo(&mut s, t, true);
                        lower_hi(&mut s, t, true);
                    }
                    _ => return Err(format!("_lastUpdated prefix '{prefix}' is not supported")),
                }
                s.last_updated.push((prefix.to_string(), value.to_string()));
            }
            "_id" => {
                let ids: Vec<String> = v.split(',').map(str::to_string).collect();
                s.ids = Some(match s.ids.take() {
                    None => ids,
                    // Repeated parameters are ANDed.
                    Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
                });
            }
            "_pretty" | "_format" | "_elements" | "_nonce" => {}
            other => match params.iter().position(|p| p.name == other) {
                Some(idx) => {
                    let ids = v
                        .split(',')
                        .map(|r| r.strip_prefix("Patient/").unwrap_or(r).to_string())
                        .collect();
                    s.compartment.push((idx, other.to_string(), ids));
                }
                None => {
                    return Err(format!("unknown search parameter '{other}' for {ty}"));
                }
            },
        }
    }
    if let Some(cap) = state.opts.page_size_cap {
        s.count = s.count.min(cap);
    }
    Ok(s)
}

/// Indices (into the sorted resources) of the matches, in order.
enum Matches {
    Range(usize, usize),
    List(Vec<usize>),
}

impl Matches {
    fn len(&self) -> usize {
        match self {
            Matches::Range(a, b) => b - a,
            Matches::List(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> usize {
        match self {
            Matches::Range(a, _) => a + i,
            Matches::List(v) => v[i],
        }
    }
}

fn matches(data: &TypeData, s: &Search) -> Matches {
    let rs = &data.resources;
    let lo = if s.lo_inclusive {
        rs.partition_point(|r| r.t < s.lo)
    } else {
        rs.partition_point(|r| r.t <= s.lo)
    };
    let hi = if s.hi_inclusive {
        rs.partition_point(|r| r.t <= s.hi)
    } else {
        rs.partition_point(|r| r.t < s.hi)
    };
    let hi = hi.max(lo);
    if s.ids.is_none() && s.compartment.is_empty() {
        return Matches::Range(lo, hi);
    }
    let ids: Option<HashSet<&str>> = s
        .ids
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect());
    let links = if s.compartment.is_empty() {
        &[][..]
    } else {
        data.links()
    };
    let list = (lo..hi)
        .filter(|i| ids.as_ref().is_none_or(|ids| ids.contains(&*rs[*i].id)))
        .filter(|i| {
            s.compartment.iter().all(|(idx, _, pats)| {
                links
                    .get(*i)
                    .is_some_and(|l| l.iter().any(|(p, id)| p == idx && pats.contains(id)))
            })
        })
        .collect();
    Matches::List(list)
}

fn page_url(base: &str, ty: &str, s: &Search, offset: usize, nonce: Option<u64>) -> String {
    let mut url = format!("{base}/{ty}?_count={}", s.count);
    for (prefix, value) in &s.last_updated {
        url.push_str("&_lastUpdated=");
        url.push_str(prefix);
        url.push_str(&encode(value));
    }
    if let Some(ids) = &s.ids {
        url.push_str("&_id=");
        url.push_str(&encode(&ids.join(",")));
    }
    for (_, name, pats) in &s.compartment {
        let refs: Vec<String> = pats.iter().map(|p| format!("Patient/{p}")).collect();
        url.push('&');
        url.push_str(name);
        url.push('=');
        url.push_str(&encode(&refs.join(",")));
    }
    url.push_str(&format!("&_offset={offset}"));
    if let Some(n) = nonce {
        url.push_str(&format!("&_nonce={n}"));
    }
    url
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

async fn search(state: &State, reset: &Notify, ty: &str, query: &str) -> Resp {
    if !is_resource_type(ty) {
        return outcome(
            404,
            "not-supported",
            &format!("'{ty}' is not a resource type"),
        );
    }
    let s = match parse_search(state, ty, query) {
        Ok(s) => s,
        Err(e) => return outcome(400, "not-supported", &e),
    };
    static EMPTY: OnceLock<TypeData> = OnceLock::new();
    let data = state.data.types.get(ty).unwrap_or_else(|| {
        EMPTY.get_or_init(|| TypeData {
            resources: Vec::new(),
            by_id: HashMap::new(),
            links: OnceLock::new(),
        })
    });
    let m = matches(data, &s);
    let total = m.len();
    if s.summary_count {
        state.bump(|st| *st.counts.entry(ty.to_string()).or_default() += 1);
        let body = format!(r#"{{"resourceType":"Bundle","type":"searchset","total":{total}}}"#);
        return response(200, "application/fhir+json", body);
    }
    state.bump(|st| *st.searches.entry(ty.to_string()).or_default() += 1);
    tracing::debug!(resource_type = ty, "search page requested");
    if !state.opts.latency.is_zero() {
        tokio::time::sleep(state.opts.latency).await;
    }
    let fault = state.pick_fault(ty);
    match &fault {
        Some(Fault::Status(code, retry_after)) => {
            let mut resp = outcome(*code, "transient", &format!("injected status {code}"));
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(*secs));
            }
            return resp;
        }
        Some(Fault::HtmlErrorPage) => {
            return response(
                200,
                "text/html; charset=utf-8",
                "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\
                 <body><h1>Bad Gateway</h1><p>The upstream server is unavailable.</p></body></html>",
            );
        }
        Some(Fault::ConnectionReset) => {
            reset.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    let base = state.base();
    let self_url = if query.is_empty() {
        format!("{base}/{ty}")
    } else {
        format!("{base}/{ty}?{query}")
    };
    let start = s.offset.min(total);
    let empty = fault == Some(Fault::EmptyPageWithNext);
    let end = if empty {
        start
    } else {
        start.saturating_add(s.count).min(total)
    };
    let next = match fault {
        Some(Fault::NextLinkLoop) => Some(self_url.clone()),
        Some(Fault::EmptyPageWithNext) => {
            let n = state.nonce.fetch_add(1, Ordering::SeqCst);
            Some(page_url(&base, ty, &s, start, Some(n)))
        }
        _ if end < total && s.count > 0 => Some(page_url(&base, ty, &s, end, None)),
        _ => None,
    };
    let rs = &data.resources;
    let payload: usize = (start..end).map(|i| rs[m.get(i)].raw.len()).sum();
    let mut body = Vec::with_capacity(payload + (end - start) * (base.len() + 96) + 512);
    body.extend_from_slice(br#"{"resourceType":"Bundle","type":"searchset","total":"#);
    let _ = write!(body, "{total}");
    body.extend_from_slice(br#","link":[{"relation":"self","url":"#);
    json_str(&mut body, &self_url);
    body.push(b'}');
    if let Some(n) = &next {
        body.extend_from_slice(br#",{"relation":"next","url":"#);
        json_str(&mut body, n);
        body.push(b'}');
    }
    body.extend_from_slice(b"],\"entry\":[");
    for (k, i) in (start..end).enumerate() {
        let r = &rs[m.get(i)];
        if k > 0 {
            body.push(b',');
        }
        body.extend_from_slice(br#"{"fullUrl":""#);
        body.extend_from_slice(base.as_bytes());
        body.push(b'/');
        body.extend_from_slice(ty.as_bytes());
        body.push(b'/');
        // Ids are FHIR ids ([A-Za-z0-9.-]), safe inside a JSON string.
        body.extend_from_slice(r.id.as_bytes());
        body.extend_from_slice(br#"","resource":"#);
        body.extend_from_slice(&r.raw);
        body.extend_from_slice(br#","search":{"mode":"match"}}"#);
    }
    body.extend_from_slice(b"]}");
    if fault == Some(Fault::TruncatedBody) {
        body.truncate(body.len() / 2);
    }
    let served = (end - start) as u64;
    let len = body.len() as u64;
    state.bump(|st| {
        st.resources_served += served;
        st.bytes_served += len;
    });
    response(200, "application/fhir+json", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::generate;
    use bulk_export_core::adapters::fhir_server::{FhirServerSource, RetryPolicy};
    use bulk_export_core::model::PatientScope;
    use bulk_export_core::ports::source::{PageRequest, Source};
    use serde_json::Value;

    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dataset(patients: u64) -> Tmp {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fixture-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        generate(&dir, patients, 7).unwrap();
        Tmp(dir)
    }

    fn lines_of(dir: &Path, ty: &str) -> Vec<Value> {
        std::fs::read_to_string(dir.join(format!("{ty}.ndjson")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn get(url: &str) -> (u16, Value) {
        let resp = reqwest::get(url).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn next_of(bundle: &Value) -> Option<String> {
        bundle["link"]
            .as_array()?
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string)
    }

    #[tokio::test]
    async fn pages_through_every_resource_once_in_order() {
        let tmp = dataset(12);
        let fx = start_fixture(&tmp.0, FixtureOptions::default())
            .await
            .unwrap();
        let expected = lines_of(&tmp.0, "Observation");
        let mut url = Some(format!(
            "{}/Observation?_count=37&_pretty=false",
            fx.base_url()
        ));
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut last_key = (String::new(), String::new());
        while let Some(u) = url {
            let (status, b) = get(&u).await;
            assert_eq!(status, 200);
            assert_eq!(b["type"], "searchset");
            assert_eq!(b["total"].as_u64(), Some(expected.len() as u64));
            for e in b["entry"].as_array().unwrap() {
                assert_eq!(e["search"]["mode"], "match");
                let r = &e["resource"];
                let id = r["id"].as_str().unwrap().to_string();
                assert_eq!(
                    e["fullUrl"].as_str().unwrap(),
                    format!("{}/Observation/{id}", fx.base_url())
                );
                let key = (
                    r["meta"]["lastUpdated"].as_str().unwrap().to_string(),
                    id.clone(),
                );
                assert!(key > last_key, "sorted by (lastUpdated, id)");
                last_key = key;
                seen.push(id);
            }
            pages += 1;
            url = next_of(&b);
            if let Some(n) = &url {
                assert!(
                    n.starts_with(fx.base_url()),
                    "absolute next link on the same host"
                );
            }
        }
        assert_eq!(pages, expected.len().div_ceil(37));
        let mut want: Vec<String> = expected
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
        let stats = fx.stats();
        assert_eq!(stats.searches["Observation"], pages as u64);
        assert_eq!(stats.resources_served, want.len() as u64);

        // Page size cap, raw bytes, reads and metadata.
        let capped = start_fixture(
            &tmp.0,
            FixtureOptions {
                page_size_cap: Some(5),
                ..FixtureOptions::default()
            },
        )
        .await
        .unwrap();
        let (_, b) = get(&format!("{}/Patient?_count=1000", capped.base_url())).await;
        assert_eq!(b["entry"].as_array().unwrap().len(), 5);
        let body = reqwest::get(format!("{}/Patient?_count=1", capped.base_url()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let first_patient = std::fs::read_to_string(tmp.0.join("Patient.ndjson")).unwrap();
        assert!(
            first_patient
                .lines()
                .any(|l| body.windows(l.len()).any(|w| w == l.as_bytes())),
            "resources are the raw source lines"
        );
        let (status, g) = get(&format!("{}/Group/small", fx.base_url())).await;
        assert_eq!((status, g["id"].as_str()), (200, Some("small")));
        let (status, _) = get(&format!("{}/Group/nope", fx.base_url())).await;
        assert_eq!(status, 404);
        let (_, cs) = get(&format!("{}/metadata", fx.base_url())).await;
        let types: Vec<&str> = cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert!(types.contains(&"Observation") && !types.contains(&"Group"));
        let (status, oo) = get(&format!("{}/Patient?bogus=1", fx.base_url())).await;
        assert_eq!(
            (status, oo["resourceType"].as_str()),
            (400, Some("OperationOutcome"))
        );
        let raw = reqwest::get(format!("http://{}/__stats", fx.addr()))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert!(raw["searches"]["Observation"].as_u64().unwrap() >= pages as u64);
    }

    #[tokio::test]
    async fn filters_by_last_updated_window() {
        let tmp = dataset(10);
        let fx = start_fixture(&tmp.0, FixtureOptions::default())
            .await
            .unwrap();
        let all = lines_of(&tmp.0, "Encounter");
        let (gt, le) = ("2021-03-01T00:00:00Z", "2023-07-15T12:00:00.000Z");
        let t = |s: &str| parse_instant(s).unwrap();
        let want = all
            .iter()
            .filter(|v| {
                let lu = t(v["meta"]["lastUpdated"].as_str().unwrap());
                lu > t(gt) && lu <= t(le)
            })
            .count();
        assert!(want > 0 && want < all.len());
        let q = format!(
            "_lastUpdated=gt{}&_lastUpdated=le{}",
            encode(gt),
            encode(le)
        );
        let (_, b) = get(&format!("{}/Encounter?_summary=count&{q}", fx.base_url())).await;
        assert_eq!(b["total"].as_u64(), Some(want as u64));
        assert!(b.get("entry").is_none());
        // Paging keeps the window.
        let mut url = Some(format!("{}/Encounter?_count=7&{q}", fx.base_url()));
        let mut got = 0;
        while let Some(u) = url {
            let (_, b) = get(&u).await;
            for e in b["entry"].as_array().unwrap() {
                let lu = t(e["resource"]["meta"]["lastUpdated"].as_str().unwrap());
                assert!(lu > t(gt) && lu <= t(le));
                got += 1;
            }
            url = next_of(&b);
        }
        assert_eq!(got, want);
        // An exact boundary: gt excludes, ge includes.
        let first = all
            .iter()
            .map(|v| v["meta"]["lastUpdated"].as_str().unwrap().to_string())
            .min()
            .unwrap();
        let count_with = |p: &str| {
            let url = format!(
                "{}/Encounter?_summary=count&_lastUpdated={p}{}",
                fx.base_url(),
                encode(&first)
            );
            async move { get(&url).await.1["total"].as_u64().unwrap() }
        };
        assert_eq!(count_with("ge").await, all.len() as u64);
        assert_eq!(count_with("gt").await, all.len() as u64 - 1);
        assert_eq!(count_with("lt").await, 0);
        let stats = fx.stats();
        assert_eq!(stats.counts["Encounter"], 4);
    }

    #[tokio::test]
    async fn injects_faults_on_the_nth_search() {
        let tmp = dataset(4);
        let opts = FixtureOptions {
            faults: vec![
                FaultRule::nth(1, Fault::Status(503, Some(2))),
                FaultRule::nth(2, Fault::HtmlErrorPage),
                FaultRule::nth(3, Fault::TruncatedBody),
                FaultRule::nth(4, Fault::ConnectionReset),
                FaultRule::nth(5, Fault::NextLinkLoop),
                FaultRule::nth(6, Fault::EmptyPageWithNext),
                FaultRule::nth(8, Fault::Delay(Duration::from_millis(300))),
            ],
            ..FixtureOptions::default()
        };
        let fx = start_fixture(&tmp.0, opts).await.unwrap();
        let url = format!("{}/Patient?_count=2", fx.base_url());
        let client = reqwest::Client::new();

        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");

        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );

        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert!(
            serde_json::from_slice::<Value>(&body).is_err(),
            "truncated JSON"
        );
        assert!(body.starts_with(b"{\"resourceType\":\"Bundle\""));

        let err = client.get(&url).send().await;
        assert!(err.is_err(), "connection dropped without a response");

        let (_, b) = get(&url).await;
        assert_eq!(
            next_of(&b).as_deref(),
            Some(url.as_str()),
            "next link loops"
        );

        let (_, b) = get(&url).await;
        assert_eq!(b["entry"].as_array().unwrap().len(), 0);
        let n = next_of(&b).unwrap();
        assert_ne!(n, url);
        let (_, cont) = get(&n).await;
        let first = cont["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_string();

        let t = std::time::Instant::now();
        let (status, b) = get(&url).await;
        assert_eq!(status, 200);
        assert!(t.elapsed() >= Duration::from_millis(300), "delayed");
        assert_eq!(
            b["entry"][0]["resource"]["id"].as_str(),
            Some(first.as_str()),
            "the empty page's next link continues at the first resource"
        );

        let stats = fx.stats();
        for kind in [
            "status_503",
            "html_error_page",
            "truncated_body",
            "connection_reset",
            "next_link_loop",
            "empty_page_with_next",
            "delay",
        ] {
            assert_eq!(stats.faults.get(kind), Some(&1), "{kind}: {stats:?}");
        }
    }

    #[tokio::test]
    async fn the_fhir_source_rides_out_random_faults() {
        let tmp = dataset(20);
        let faults = [
            Fault::Status(429, Some(0)),
            Fault::Status(500, None),
            Fault::Status(502, None),
            Fault::HtmlErrorPage,
            Fault::TruncatedBody,
            Fault::ConnectionReset,
            Fault::EmptyPageWithNext,
        ];
        let opts = FixtureOptions {
            faults: faults
                .iter()
                .map(|f| FaultRule::probability(0.04, f.clone()).for_type("Observation"))
                .collect(),
            seed: 42,
            ..FixtureOptions::default()
        };
        let fx = start_fixture(&tmp.0, opts).await.unwrap();
        let retry = RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        };
        let source = FhirServerSource::new(fx.base_url(), None, retry).unwrap();
        let scope = PatientScope::None;
        let mut cursor: Option<String> = None;
        let mut ids = Vec::new();
        loop {
            let req = PageRequest {
                resource_type: "Observation",
                cursor: cursor.as_deref(),
                since: None,
                until: time::OffsetDateTime::now_utc(),
                type_filters: &[],
                page_size: 50,
                scope: &scope,
                batch: None,
                read_ahead_below: 0,
            };
            let page = source.fetch_page(&req).await.unwrap();
            for line in page.ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                ids.push(read_head(line).unwrap().id.unwrap().to_string());
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut want: Vec<String> = lines_of(&tmp.0, "Observation")
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        want.sort();
        ids.sort();
        assert_eq!(ids, want, "every resource exactly once despite the faults");
        let stats = fx.stats();
        let injected: u64 = stats.faults.values().sum();
        assert!(injected >= 3, "faults were injected: {stats:?}");
    }

    #[test]
    fn query_coding_round_trips() {
        let v = "gt2021-01-01T00:00:00.000+01:00";
        assert_eq!(decode(&encode(v)), v);
        assert_eq!(decode("a+b%2Cc"), "a b,c");
        assert_eq!(decode("bad%zz%"), "bad%zz%");
    }
}
