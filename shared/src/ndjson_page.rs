//! The hot path: turning source bytes into NDJSON lines without building a
//! DOM of whole resources. Only `resourceType`, `id` and `meta.lastUpdated`
//! are read, borrowed from the input.

use serde::Deserialize;
use serde_json::value::RawValue;

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

/// Appends one resource to `out` as a single compact line. A resource that
/// arrived pretty-printed is re-minified so no line ever contains a newline.
pub fn push_line(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), serde_json::Error> {
    let text = raw.get().as_bytes();
    if text.contains(&b'\n') || text.contains(&b'\r') {
        minify_into(out, text);
    } else {
        out.extend_from_slice(text);
    }
    out.push(b'\n');
    Ok(())
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

/// One entry of a search Bundle, with the resource kept raw.
#[derive(Debug, Deserialize)]
pub struct BundleEntry<'a> {
    /// The resource, unparsed.
    #[serde(default, borrow)]
    pub resource: Option<&'a RawValue>,
    /// `entry.search`.
    #[serde(default)]
    pub search: Option<EntrySearch>,
}

/// `Bundle.entry.search`.
#[derive(Debug, Deserialize)]
pub struct EntrySearch {
    /// `match`, `include` or `outcome`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `Bundle.link`.
#[derive(Debug, Deserialize)]
pub struct BundleLink {
    /// Link relation, e.g. `next`.
    pub relation: String,
    /// Target URL.
    pub url: String,
}

/// A search-set Bundle with raw entries.
#[derive(Debug, Deserialize)]
pub struct SearchBundle<'a> {
    /// Must be `Bundle`.
    #[serde(rename = "resourceType")]
    pub resource_type: &'a str,
    /// Paging links.
    #[serde(default)]
    pub link: Vec<BundleLink>,
    /// Entries.
    #[serde(default, borrow)]
    pub entry: Vec<BundleEntry<'a>>,
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

/// Frames the `match` entries of a search Bundle as NDJSON.
pub fn frame_search_bundle(body: &[u8], resource_type: &str) -> Result<FramedPage, FrameError> {
    let bundle: SearchBundle<'_> = serde_json::from_slice(body)
        .map_err(|e| FrameError::NotABundle(e.classify_name().to_string()))?;
    if bundle.resource_type != "Bundle" {
        return Err(FrameError::NotABundle(format!(
            "resourceType is {}",
            bundle.resource_type.chars().take(40).collect::<String>()
        )));
    }
    let mut page = FramedPage {
        ndjson: Vec::with_capacity(body.len()),
        next: bundle
            .link
            .into_iter()
            .find(|l| l.relation == "next")
            .map(|l| l.url),
        count: 0,
    };
    for entry in bundle.entry {
        let is_match = entry
            .search
            .as_ref()
            .and_then(|s| s.mode.as_deref())
            .is_none_or(|m| m == "match");
        let Some(raw) = entry.resource else { continue };
        if !is_match {
            continue;
        }
        let head = read_head(raw.get().as_bytes())
            .map_err(|_| FrameError::WrongType(resource_type.into()))?;
        if head.resource_type != resource_type || head.id.is_none() {
            return Err(FrameError::WrongType(resource_type.into()));
        }
        push_line(&mut page.ndjson, raw).map_err(|e| FrameError::NotABundle(e.to_string()))?;
        page.count += 1;
    }
    Ok(page)
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
