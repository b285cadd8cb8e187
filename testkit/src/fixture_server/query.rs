//! Search query strings: percent-coding, parsing into a [`Search`], and the
//! `next` links that carry a search on.

use super::error::SearchError;
use super::options::FixtureOptions;
use bulk_export_core::fhir::compartment::CompartmentParam;
use bulk_export_core::fhir::instant::parse_instant;

/// `%XX` and `+` decoding of one query component.
pub(crate) fn decode(s: &str) -> String {
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
pub(crate) fn encode(s: &str) -> String {
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
pub(crate) struct Search {
    pub(crate) count: usize,
    pub(crate) offset: usize,
    pub(crate) summary_count: bool,
    /// (prefix, instant) pairs, re-emitted in `next` links.
    last_updated: Vec<(String, String)>,
    pub(crate) lo: i128,
    pub(crate) lo_inclusive: bool,
    pub(crate) hi: i128,
    pub(crate) hi_inclusive: bool,
    pub(crate) ids: Option<Vec<String>>,
    /// (parameter index, parameter name, patient ids).
    pub(crate) compartment: Vec<(usize, String, Vec<String>)>,
    /// `_sort=_id`: matches in id order instead of `(lastUpdated, id)`.
    pub(crate) sort_by_id: bool,
}

/// Parses the query of a search of `ty`; `_count` is capped by the options.
pub(crate) fn parse_search(
    opts: &FixtureOptions,
    ty: &str,
    query: &str,
) -> Result<Search, SearchError> {
    let mut s = Search::new(opts.default_count);
    let params = bulk_export_core::fhir::compartment::compartment_params(ty).unwrap_or(&[]);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k);
        if opts.ignored_params.contains(&k) {
            // A server that does not support a parameter and is lenient
            // answers as if it had not been sent.
            continue;
        }
        if k == "_sort" && !opts.sorts_by_id {
            return Err(SearchError::UnknownParameter {
                name: k,
                resource_type: ty.to_string(),
            });
        }
        s.apply(ty, params, &k, &decode(v))?;
    }
    if let Some(cap) = opts.page_size_cap {
        s.count = s.count.min(cap);
    }
    if let Some(cap) = opts.id_search_page_cap.filter(|_| s.ids.is_some()) {
        s.count = s.count.min(cap);
    }
    Ok(s)
}

/// A `_count` or `_offset` value.
fn number(param: &'static str, value: &str) -> Result<usize, SearchError> {
    value.parse().map_err(|source| SearchError::NotANumber {
        param,
        value: value.to_string(),
        source,
    })
}

impl Search {
    /// Everything of the type, `count` per page.
    fn new(count: usize) -> Self {
        Self {
            count,
            offset: 0,
            summary_count: false,
            last_updated: Vec::new(),
            lo: i128::MIN,
            lo_inclusive: true,
            hi: i128::MAX,
            hi_inclusive: true,
            ids: None,
            compartment: Vec::new(),
            sort_by_id: false,
        }
    }

    /// Applies one decoded query parameter.
    fn apply(
        &mut self,
        ty: &str,
        params: &[CompartmentParam],
        key: &str,
        value: &str,
    ) -> Result<(), SearchError> {
        match key {
            "_count" => self.count = number("_count", value)?,
            "_offset" => self.offset = number("_offset", value)?,
            "_summary" => self.set_summary(value)?,
            "_lastUpdated" => self.add_last_updated(value)?,
            "_id" => self.add_ids(value),
            "_sort" => {
                self.sort_by_id = match value {
                    "_id" => true,
                    "_lastUpdated" => false,
                    other => return Err(SearchError::UnsupportedSort(other.to_string())),
                }
            }
            "_pretty" | "_format" | "_elements" | "_nonce" => {}
            other => self.add_compartment(ty, params, other, value)?,
        }
        Ok(())
    }

    fn set_summary(&mut self, value: &str) -> Result<(), SearchError> {
        match value {
            "count" => self.summary_count = true,
            "false" => {}
            _ => return Err(SearchError::UnsupportedSummary(value.to_string())),
        }
        Ok(())
    }

    /// Narrows the window by one `_lastUpdated=<prefix><instant>` (`eq` when
    /// the value has no prefix); repeated parameters are ANDed.
    fn add_last_updated(&mut self, v: &str) -> Result<(), SearchError> {
        let (prefix, value) = if v.len() > 2 && v.as_bytes()[..2].iter().all(u8::is_ascii_lowercase)
        {
            v.split_at(2)
        } else {
            ("eq", v)
        };
        let t = parse_instant(value)
            .ok_or_else(|| SearchError::NotAnInstant(value.to_string()))?
            .unix_timestamp_nanos();
        match prefix {
            "gt" => self.raise_lo(t, false),
            "ge" => self.raise_lo(t, true),
            "lt" => self.lower_hi(t, false),
            "le" => self.lower_hi(t, true),
            "eq" => {
                self.raise_lo(t, true);
                self.lower_hi(t, true);
            }
            _ => return Err(SearchError::UnsupportedPrefix(prefix.to_string())),
        }
        self.last_updated
            .push((prefix.to_string(), value.to_string()));
        Ok(())
    }

    fn raise_lo(&mut self, t: i128, inclusive: bool) {
        if t > self.lo || (t == self.lo && !inclusive) {
            self.lo = t;
            self.lo_inclusive = inclusive;
        }
    }

    fn lower_hi(&mut self, t: i128, inclusive: bool) {
        if t < self.hi || (t == self.hi && !inclusive) {
            self.hi = t;
            self.hi_inclusive = inclusive;
        }
    }

    /// `_id=a,b`; repeated parameters are ANDed.
    fn add_ids(&mut self, v: &str) {
        let ids: Vec<String> = v.split(',').map(str::to_string).collect();
        self.ids = Some(match self.ids.take() {
            None => ids,
            Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
        });
    }

    /// A patient-compartment parameter of `ty` (`subject=Patient/a,Patient/b`).
    fn add_compartment(
        &mut self,
        ty: &str,
        params: &[CompartmentParam],
        name: &str,
        v: &str,
    ) -> Result<(), SearchError> {
        let idx = params.iter().position(|p| p.name == name).ok_or_else(|| {
            SearchError::UnknownParameter {
                name: name.to_string(),
                resource_type: ty.to_string(),
            }
        })?;
        let ids = v
            .split(',')
            .map(|r| r.strip_prefix("Patient/").unwrap_or(r).to_string())
            .collect();
        self.compartment.push((idx, name.to_string(), ids));
        Ok(())
    }

    /// The URL of this search's page at `offset`, with a `_nonce` when given.
    pub(crate) fn page_url(
        &self,
        base: &str,
        ty: &str,
        offset: usize,
        nonce: Option<u64>,
    ) -> String {
        let mut url = format!("{base}/{ty}?_count={}", self.count);
        for (prefix, value) in &self.last_updated {
            url.push_str("&_lastUpdated=");
            url.push_str(prefix);
            url.push_str(&encode(value));
        }
        if let Some(ids) = &self.ids {
            url.push_str("&_id=");
            url.push_str(&encode(&ids.join(",")));
        }
        for (_, name, pats) in &self.compartment {
            let refs: Vec<String> = pats.iter().map(|p| format!("Patient/{p}")).collect();
            url.push('&');
            url.push_str(name);
            url.push('=');
            url.push_str(&encode(&refs.join(",")));
        }
        if self.sort_by_id {
            url.push_str("&_sort=_id");
        }
        url.push_str(&format!("&_offset={offset}"));
        if let Some(n) = nonce {
            url.push_str(&format!("&_nonce={n}"));
        }
        url
    }
}
