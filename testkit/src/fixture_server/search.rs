//! `GET /fhir/<Type>?...`: matching, `_summary=count`, latency, faults and
//! the searchset Bundle built from the raw resource lines.

use super::dataset::TypeData;
use super::faults::Fault;
use super::http::{Resp, outcome, response};
use super::query::{Search, parse_search};
use super::state::State;
use bulk_export_core::fhir::resource_types::is_resource_type;
use std::collections::HashSet;
use std::io::Write;
use tokio::sync::Notify;

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

/// The resources of `data` that match `s` and are not `deleted`.
fn matches(data: &TypeData, s: &Search, deleted: &HashSet<String>) -> Matches {
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
    if s.ids.is_none() && s.compartment.is_empty() && deleted.is_empty() && !s.sort_by_id {
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
    let keep = |i: &usize| {
        ids.as_ref().is_none_or(|ids| ids.contains(&*rs[*i].id))
            && !deleted.contains(&*rs[*i].id)
            && s.compartment.iter().all(|(idx, _, pats)| {
                links
                    .get(*i)
                    .is_some_and(|l| l.iter().any(|(p, id)| p == idx && pats.contains(id)))
            })
    };
    let list = if s.sort_by_id {
        let in_window = |i: &usize| (lo..hi).contains(i);
        data.id_order()
            .iter()
            .copied()
            .filter(|i| in_window(i) && keep(i))
            .collect()
    } else {
        (lo..hi).filter(keep).collect()
    };
    Matches::List(list)
}

/// Answers one search of `ty`.
pub(crate) async fn search(state: &State, reset: &Notify, ty: &str, query: &str) -> Resp {
    if !is_resource_type(ty) {
        return outcome(
            404,
            "not-supported",
            &format!("'{ty}' is not a resource type"),
        );
    }
    let s = match parse_search(&state.opts, ty, query) {
        Ok(s) => s,
        Err(e) => return outcome(400, "not-supported", &e.to_string()),
    };
    let data = state.data.type_data(ty);
    let m = matches(data, &s, &state.deleted(ty));
    if s.summary_count {
        state.bump(|st| *st.counts.entry(ty.to_string()).or_default() += 1);
        let total = m.len();
        let body = format!(r#"{{"resourceType":"Bundle","type":"searchset","total":{total}}}"#);
        return response(200, "application/fhir+json", body);
    }
    state.bump(|st| *st.searches.entry(ty.to_string()).or_default() += 1);
    tracing::debug!(resource_type = ty, "search page requested");
    if !state.opts.latency.is_zero() {
        tokio::time::sleep(state.opts.latency).await;
    }
    let fault = state.pick_fault(ty);
    if let Some(resp) = fault_response(fault.as_ref(), reset).await {
        return resp;
    }
    let page = Page::plan(state, ty, query, &s, m.len(), fault.as_ref());
    let mut body = page.bundle(data, &m);
    if fault == Some(Fault::TruncatedBody) {
        body.truncate(body.len() / 2);
    }
    let served = (page.end - page.start) as u64;
    let len = body.len() as u64;
    state.bump(|st| {
        st.resources_served += served;
        st.bytes_served += len;
    });
    response(200, "application/fhir+json", body)
}

/// The answer that replaces the page for faults that replace it (an error
/// status, an HTML page, a dropped connection, which never answers); waits
/// out a `Delay`. `None` when the page is to be served.
async fn fault_response(fault: Option<&Fault>, reset: &Notify) -> Option<Resp> {
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let mut resp = outcome(*code, "transient", &format!("injected status {code}"));
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(*secs));
            }
            Some(resp)
        }
        Some(Fault::HtmlErrorPage) => Some(response(
            200,
            "text/html; charset=utf-8",
            "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\
             <body><h1>Bad Gateway</h1><p>The upstream server is unavailable.</p></body></html>",
        )),
        Some(Fault::ConnectionReset) => {
            reset.notify_one();
            Some(std::future::pending().await)
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(*d).await;
            None
        }
        _ => None,
    }
}

/// One page of a search: its links and which matches it holds.
struct Page<'a> {
    base: String,
    ty: &'a str,
    self_url: String,
    next: Option<String>,
    total: usize,
    /// First match on the page.
    start: usize,
    /// One past the last match on the page.
    end: usize,
}

impl<'a> Page<'a> {
    /// The page at the search's `_offset`, shaped by a paging fault.
    fn plan(
        state: &State,
        ty: &'a str,
        query: &str,
        s: &Search,
        total: usize,
        fault: Option<&Fault>,
    ) -> Self {
        let base = state.base();
        let self_url = if query.is_empty() {
            format!("{base}/{ty}")
        } else {
            format!("{base}/{ty}?{query}")
        };
        let start = s.offset.min(total);
        let end = if fault == Some(&Fault::EmptyPageWithNext) {
            start
        } else {
            start.saturating_add(s.count).min(total)
        };
        let next = match fault {
            Some(Fault::NextLinkLoop) => Some(self_url.clone()),
            Some(Fault::EmptyPageWithNext) => {
                Some(s.page_url(&base, ty, start, Some(state.next_nonce())))
            }
            _ if end < total && s.count > 0 => Some(s.page_url(&base, ty, end, None)),
            _ => None,
        };
        Self {
            base,
            ty,
            self_url,
            next,
            total,
            start,
            end,
        }
    }

    /// The searchset Bundle, entries carrying the raw resource lines.
    fn bundle(&self, data: &TypeData, m: &Matches) -> Vec<u8> {
        let rs = &data.resources;
        let payload: usize = (self.start..self.end).map(|i| rs[m.get(i)].raw.len()).sum();
        let entries = self.end - self.start;
        let mut body = Vec::with_capacity(payload + entries * (self.base.len() + 96) + 512);
        body.extend_from_slice(br#"{"resourceType":"Bundle","type":"searchset","total":"#);
        let _ = write!(body, "{}", self.total);
        body.extend_from_slice(br#","link":[{"relation":"self","url":"#);
        json_str(&mut body, &self.self_url);
        body.push(b'}');
        if let Some(n) = &self.next {
            body.extend_from_slice(br#",{"relation":"next","url":"#);
            json_str(&mut body, n);
            body.push(b'}');
        }
        body.extend_from_slice(b"],\"entry\":[");
        for (k, i) in (self.start..self.end).enumerate() {
            if k > 0 {
                body.push(b',');
            }
            let r = &rs[m.get(i)];
            self.entry(&mut body, &r.id, &r.raw);
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// One `match` entry.
    fn entry(&self, body: &mut Vec<u8>, id: &str, raw: &[u8]) {
        body.extend_from_slice(br#"{"fullUrl":""#);
        body.extend_from_slice(self.base.as_bytes());
        body.push(b'/');
        body.extend_from_slice(self.ty.as_bytes());
        body.push(b'/');
        // Ids are FHIR ids ([A-Za-z0-9.-]), safe inside a JSON string.
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(br#"","resource":"#);
        body.extend_from_slice(raw);
        body.extend_from_slice(br#","search":{"mode":"match"}}"#);
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}
