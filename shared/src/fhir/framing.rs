//! The hot path: turning source bytes into NDJSON lines without building a
//! DOM of whole resources. Only `resourceType`, `id` and `meta.lastUpdated`
//! are read, borrowed from the input.

use crate::fhir::json_scan::{Scan, ScanError};
use serde::Deserialize;

/// The few fields a step reads from a resource.
#[derive(Debug, Deserialize)]
pub struct ResourceHead<'a> {
    /// `resourceType`.
    #[serde(rename = "resourceType", borrow)]
    pub resource_type: &'a str,
    /// `id`.
    #[serde(default, borrow)]
    pub id: Option<&'a str>,
    /// `meta`.
    #[serde(default, borrow)]
    pub meta: Option<MetaHead<'a>>,
}

/// The part of `meta` a step reads.
#[derive(Debug, Deserialize)]
pub struct MetaHead<'a> {
    /// `meta.lastUpdated`.
    #[serde(rename = "lastUpdated", default, borrow)]
    pub last_updated: Option<&'a str>,
}

/// Reads the head of one JSON resource.
pub fn read_head(json: &[u8]) -> Result<ResourceHead<'_>, serde_json::Error> {
    serde_json::from_slice(json)
}

/// Copies valid JSON without the whitespace between tokens, keeping key order
/// and every value byte for byte (JSON strings cannot hold raw newlines, so
/// every newline is between tokens).
pub fn minify_into(out: &mut Vec<u8>, json: &[u8]) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
        }
    }
}

/// Why a search page could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The body is not a JSON Bundle (HTML page, truncated body, other resource).
    #[error("response is not a FHIR Bundle: {0}")]
    NotABundle(String),
    /// A `match` entry holds a resource of another type or without an id.
    #[error("entry is not a {0} with an id")]
    WrongType(String),
}

/// A framed search page.
#[derive(Debug, Default)]
pub struct FramedPage {
    /// NDJSON lines.
    pub ndjson: Vec<u8>,
    /// Number of lines.
    pub count: u64,
    /// `link[relation=next].url`, if any.
    pub next: Option<String>,
}

/// Reads a Bundle's `link` array; returns the first `next` URL.
fn next_link(s: &mut Scan<'_>) -> Result<Option<String>, ScanError> {
    let mut next = None;
    s.array(|s| {
        let (mut relation, mut url) = (None, None);
        s.object(|s, key| match key {
            "relation" => {
                relation = Some(s.string_value()?);
                Ok(())
            }
            "url" => {
                url = Some(s.string_value()?);
                Ok(())
            }
            _ => s.skip_value(),
        })?;
        if relation.as_deref() == Some("next") && next.is_none() {
            next = url.map(|u| u.into_owned());
        }
        Ok(())
    })?;
    Ok(next)
}

/// A search Bundle's `next` link read without framing its entries, when
/// `link` comes before `entry`; `None` when that cannot be told cheaply.
pub fn early_next_link(body: &[u8]) -> Option<Option<String>> {
    let mut s = Scan::new(body);
    let mut found = None;
    // The scan stops (with an error nobody reads) at `entry` or after `link`.
    let _ = s.object(|s, key| match key {
        "link" => {
            found = Some(next_link(s)?);
            Err(ScanError::Syntax)
        }
        "entry" => Err(ScanError::Syntax),
        _ => s.skip_value(),
    });
    found
}

/// Frames the `match` entries of a search Bundle as NDJSON in one pass over
/// the body, which is checked to be valid JSON throughout; each resource is
/// copied as it arrived (re-minified only if it holds line breaks).
pub fn frame_search_bundle(body: &[u8], resource_type: &str) -> Result<FramedPage, FrameError> {
    let not_a_bundle = |e: ScanError| FrameError::NotABundle(e.to_string());
    std::str::from_utf8(body).map_err(|_| FrameError::NotABundle("invalid UTF-8".into()))?;
    let mut s = Scan::new(body);
    let mut page = FramedPage {
        ndjson: Vec::with_capacity(body.len()),
        ..FramedPage::default()
    };
    let mut bundle_type: Option<String> = None;
    let mut wrong_type = false;
    s.object(|s, key| match key {
        "resourceType" => {
            bundle_type = Some(s.string_value()?.into_owned());
            Ok(())
        }
        "link" => {
            page.next = next_link(s)?;
            Ok(())
        }
        "entry" => s.array(|s| frame_entry(s, body, resource_type, &mut page, &mut wrong_type)),
        _ => s.skip_value(),
    })
    .map_err(not_a_bundle)?;
    if !s.at_end() {
        return Err(not_a_bundle(ScanError::Syntax));
    }
    check_bundle_type(bundle_type.as_deref())?;
    if wrong_type {
        return Err(FrameError::WrongType(resource_type.into()));
    }
    Ok(page)
}

/// Where an entry's resource lies in the body, and whether it is what the
/// search asked for.
struct EntryResource {
    start: usize,
    end: usize,
    /// Its whitespace holds a line break, so it must be re-minified.
    newline: bool,
    /// It is a `resource_type` with an id.
    head_ok: bool,
}

/// Frames one `entry`: a `match` entry's resource becomes one line, other
/// entries (`include`, `outcome`) are only checked. A `match` entry of the
/// wrong type sets `wrong_type`: the page fails once its syntax is checked.
#[inline]
fn frame_entry(
    s: &mut Scan<'_>,
    body: &[u8],
    resource_type: &str,
    page: &mut FramedPage,
    wrong_type: &mut bool,
) -> Result<(), ScanError> {
    let mut resource: Option<EntryResource> = None;
    let mut is_match = true;
    s.object(|s, key| match key {
        "resource" => {
            if resource.is_some() {
                return Err(ScanError::Syntax);
            }
            resource = Some(scan_resource(s, resource_type)?);
            Ok(())
        }
        "search" => s.object(|s, key| match key {
            "mode" => {
                is_match = s.string_value()? == "match";
                Ok(())
            }
            _ => s.skip_value(),
        }),
        _ => s.skip_value(),
    })?;
    let Some(resource) = resource else {
        return Ok(());
    };
    if !is_match {
        return Ok(());
    }
    if !resource.head_ok {
        *wrong_type = true;
        return Ok(());
    }
    let raw = &body[resource.start..resource.end];
    if resource.newline {
        minify_into(&mut page.ndjson, raw);
    } else {
        page.ndjson.extend_from_slice(raw);
    }
    page.ndjson.push(b'\n');
    page.count += 1;
    Ok(())
}

/// Scans an entry's `resource`, reading only its `resourceType` and whether
/// it has an `id`: the bytes are copied from the body, never rebuilt.
#[inline]
fn scan_resource(s: &mut Scan<'_>, resource_type: &str) -> Result<EntryResource, ScanError> {
    s.peek();
    let start = s.i;
    s.newline = false;
    let (mut ty, mut has_id) = (None, false);
    s.object(|s, key| match key {
        "resourceType" => {
            ty = Some(s.string_value()?);
            Ok(())
        }
        "id" => {
            has_id = true;
            s.string().map(|_| ())
        }
        _ => s.skip_value(),
    })?;
    Ok(EntryResource {
        start,
        end: s.i,
        newline: s.newline,
        head_ok: has_id && ty.as_deref() == Some(resource_type),
    })
}

/// A body that scans as JSON is still no search page unless it is a Bundle
/// (an OperationOutcome or another resource sent with status 200).
fn check_bundle_type(bundle_type: Option<&str>) -> Result<(), FrameError> {
    match bundle_type {
        Some("Bundle") => Ok(()),
        Some(other) => Err(FrameError::NotABundle(format!(
            "resourceType is {}",
            other.chars().take(40).collect::<String>()
        ))),
        None => Err(FrameError::NotABundle("no resourceType".into())),
    }
}

/// Names a JSON error's category without quoting the offending content.
pub trait Classify {
    /// A short category name.
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "invalid JSON syntax",
            serde_json::error::Category::Data => "unexpected JSON structure",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_only_match_entries_compactly() {
        let body = br#"{"resourceType":"Bundle","link":[{"relation":"next","url":"http://x/next"}],
          "entry":[{"resource":{"resourceType":"Patient",
             "id":"a"},"search":{"mode":"match"}},
            {"resource":{"resourceType":"Organization","id":"o"},"search":{"mode":"include"}}]}"#;
        let page = frame_search_bundle(body, "Patient").unwrap();
        assert_eq!(page.count, 1);
        assert_eq!(
            page.ndjson,
            b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n"
        );
        assert_eq!(page.next.as_deref(), Some("http://x/next"));
    }

    /// What framing must produce, computed the slow way with a DOM.
    fn reference(body: &[u8], ty: &str) -> Option<(Vec<serde_json::Value>, Option<String>)> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        if v["resourceType"] != "Bundle" {
            return None;
        }
        let next = v["link"].as_array().and_then(|l| {
            l.iter()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str().map(str::to_string))
        });
        let mut out = Vec::new();
        for e in v["entry"].as_array().into_iter().flatten() {
            let mode = e["search"]["mode"].as_str().unwrap_or("match");
            if e.get("resource").is_none() || mode != "match" {
                continue;
            }
            let r = &e["resource"];
            if r["resourceType"] != ty || !r["id"].is_string() {
                return None;
            }
            out.push(r.clone());
        }
        Some((out, next))
    }

    #[test]
    fn framing_agrees_with_a_dom_on_every_prefix_and_byte_flip() {
        let body = br#"{"resourceType":"Bundle","type":"searchset","total":3,
          "link":[{"relation":"self","url":"http://x/a"},{"relation":"next","url":"http:\/\/x\/b?p=1&q=\u00e9"}],
          "entry":[
            {"fullUrl":"http://x/Observation/1","resource":{"resourceType":"Observation","id":"1",
              "valueQuantity":{"value":-1.5e3,"unit":"mg"},"note":[{"text":"a \"quoted\"\nline"}],
              "status":"final","flag":true,"gone":null}},
            {"resource":{"resourceType":"Observation","id":"2","component":[]},"search":{"mode":"match","score":1}},
            {"resource":{"resourceType":"Patient","id":"p"},"search":{"mode":"include"}}
          ]}"#;
        let whole = frame_search_bundle(body, "Observation").unwrap();
        assert_eq!(whole.count, 2);
        assert_eq!(whole.next.as_deref(), Some("http://x/b?p=1&q=\u{e9}"));
        // The first resource arrived with a line break between tokens.
        assert_eq!(whole.ndjson.iter().filter(|b| **b == b'\n').count(), 2);
        let check = |doc: &[u8], what: &str| {
            let ours = frame_search_bundle(doc, "Observation");
            match (reference(doc, "Observation"), ours) {
                (None, Err(_)) => {}
                (Some((want, next)), Ok(page)) => {
                    let got: Vec<serde_json::Value> = page
                        .ndjson
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| serde_json::from_slice(l).unwrap())
                        .collect();
                    assert_eq!(got, want, "{what}");
                    assert_eq!(page.count as usize, want.len(), "{what}");
                    assert_eq!(page.next, next, "{what}");
                }
                (want, got) => panic!("{what}: reference {want:?}, framing {got:?}"),
            }
        };
        for cut in 0..body.len() {
            check(&body[..cut], &format!("prefix of {cut} bytes"));
        }
        for (i, flip) in [
            b'"', b'{', b'}', b'[', b']', b',', b':', b'x', b'\\', b'0', b'\n',
        ]
        .iter()
        .flat_map(|f| (0..body.len()).map(move |i| (i, *f)))
        {
            let mut doc = body.to_vec();
            doc[i] = flip;
            check(&doc, &format!("byte {i} set to {flip}"));
        }
    }

    #[test]
    fn next_link_is_read_early_only_before_the_entries() {
        let early = br#"{"resourceType":"Bundle","link":[{"relation":"self","url":"a"},{"relation":"next","url":"b"}],"entry":[{"resource":{"resourceType":"Patient","id":"x"}}]}"#;
        assert_eq!(early_next_link(early), Some(Some("b".into())));
        let last =
            br#"{"resourceType":"Bundle","link":[{"relation":"self","url":"a"}],"entry":[]}"#;
        assert_eq!(early_next_link(last), Some(None));
        let late =
            br#"{"resourceType":"Bundle","entry":[],"link":[{"relation":"next","url":"b"}]}"#;
        assert_eq!(early_next_link(late), None);
        assert_eq!(early_next_link(b"<html>"), None);
    }

    #[test]
    fn minify_keeps_strings_and_order() {
        let mut out = Vec::new();
        minify_into(&mut out, b"{ \"b\" : \"x y\\\" z\",\n  \"a\": [1, 2] }");
        assert_eq!(out, b"{\"b\":\"x y\\\" z\",\"a\":[1,2]}");
    }

    #[test]
    fn rejects_html_and_truncated_bodies() {
        assert!(frame_search_bundle(b"<html>502 Bad Gateway</html>", "Patient").is_err());
        assert!(
            frame_search_bundle(
                br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Pat"#,
                "Patient"
            )
            .is_err()
        );
        assert!(frame_search_bundle(br#"{"resourceType":"OperationOutcome"}"#, "Patient").is_err());
    }
}
