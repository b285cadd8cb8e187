//! Parsing and validating a kick-off request (GET query or POST `Parameters`)
//! into an [`ExportRequest`].

use crate::fhir::framing::Classify;
use crate::fhir::ids::{is_container_name, is_fhir_id};
use crate::fhir::instant::parse_instant;
use crate::fhir::outcome::{ApiError, quote};
use crate::fhir::resource_types::is_resource_type;
use crate::model::{ExportLevel, ExportRequest, TypeFilter};
use serde_json::Value;

/// Most `_type` entries one request may name.
pub const MAX_TYPES: usize = 200;
/// Most `_typeFilter` queries one request may carry.
pub const MAX_TYPE_FILTERS: usize = 100;
/// Most `patient` references one request may carry.
pub const MAX_PATIENTS: usize = 1000;

/// Headers relevant to kick-off, already extracted from the request.
#[derive(Debug, Clone, Default)]
pub struct KickoffHeaders {
    /// `Accept`, if present.
    pub accept: Option<String>,
    /// `Prefer`, if present.
    pub prefer: Option<String>,
    /// `Content-Type`, if present.
    pub content_type: Option<String>,
}

/// What the `Prefer` header asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preferences {
    /// `respond-async` was present.
    pub respond_async: bool,
    /// `handling=lenient` was present.
    pub lenient: bool,
}

/// Parses `Prefer` as an RFC 7240 list: case- and whitespace-insensitive.
pub fn parse_prefer(value: &str) -> Preferences {
    let mut prefs = Preferences::default();
    for item in value.split([',', ';']) {
        let token: String = item.chars().filter(|c| !c.is_whitespace()).collect();
        let token = token.to_ascii_lowercase();
        if token == "respond-async" {
            prefs.respond_async = true;
        } else if token == "handling=lenient" || token == "handling=\"lenient\"" {
            prefs.lenient = true;
        }
    }
    prefs
}

/// Checks the `Accept` header: absent, `*/*`, `application/*`,
/// `application/fhir+json` or `application/json` are fine.
pub fn check_accept(accept: Option<&str>) -> Result<(), ApiError> {
    let Some(accept) = accept else { return Ok(()) };
    let ok = accept.split(',').any(|item| {
        let media = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*" | "application/*" | "application/fhir+json" | "application/json"
        )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(format!(
            "Accept {} is not supported; kick-off responses are application/fhir+json",
            quote(accept)
        )))
    }
}

fn is_single_valued(name: &str) -> bool {
    matches!(
        name,
        "_outputFormat"
            | "_since"
            | "_until"
            | "_container"
            | "allowPartialManifests"
            | "organizeOutputBy"
    )
}

/// Parameters this release does not implement; they are refused (strict) or
/// ignored with an OperationOutcome in the manifest (lenient).
fn unsupported_reason(name: &str) -> Option<&'static str> {
    match name {
        "_elements" => Some("_elements is not supported by this server"),
        "includeAssociatedData" => Some("includeAssociatedData is not supported by this server"),
        "organizeOutputBy" => Some("organizeOutputBy is not supported by this server"),
        _ => None,
    }
}

/// Raw parameter pairs in request order, with their origin for error messages.
type Pairs = Vec<(String, String)>;

/// Parses the query string of a GET kick-off into pairs (form-decoded, so `+` is a space).
pub fn query_pairs(query: &str) -> Result<Pairs, ApiError> {
    let mut pairs = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let k = decode_component(k)?;
        let v = decode_component(v)?;
        pairs.push((k, v));
    }
    Ok(pairs)
}

fn decode_component(raw: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::BadRequest("query string is not valid UTF-8 after percent-decoding".into())
        })
}

/// Reads a POST kick-off body (a FHIR `Parameters` resource) into pairs.
pub fn parameters_pairs(body: &[u8]) -> Result<Pairs, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "request body is not valid JSON: {}",
            e.classify_name()
        ))
    })?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::BadRequest(
            "request body must be a FHIR Parameters resource".into(),
        ));
    }
    let mut pairs = Vec::new();
    let Some(params) = value.get("parameter") else {
        return Ok(pairs);
    };
    let params = params
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("Parameters.parameter must be an array".into()))?;
    for p in params {
        let name = p.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::BadRequest("every Parameters.parameter needs a name".into())
        })?;
        let obj = p.as_object().ok_or_else(|| {
            ApiError::BadRequest("Parameters.parameter entries must be objects".into())
        })?;
        let values: Vec<(&String, &Value)> =
            obj.iter().filter(|(k, _)| k.starts_with("value")).collect();
        if values.len() != 1 {
            return Err(ApiError::BadRequest(format!(
                "parameter {} must have exactly one value[x]",
                quote(name)
            )));
        }
        let (kind, v) = values[0];
        let text = match (kind.as_str(), v) {
            ("valueReference", Value::Object(r)) => r
                .get("reference")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "parameter {} needs valueReference.reference",
                        quote(name)
                    ))
                })?
                .to_string(),
            ("valueBoolean", Value::Bool(b)) => b.to_string(),
            (_, Value::String(s)) => s.clone(),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "parameter {} has an unsupported {}",
                    quote(name),
                    kind
                )));
            }
        };
        pairs.push((name.to_string(), text));
    }
    Ok(pairs)
}

fn check_no_control(name: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().any(char::is_control) || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "parameter {} contains control characters",
            quote(name)
        )));
    }
    Ok(())
}

fn is_output_format(value: &str) -> bool {
    matches!(
        value,
        "application/fhir+ndjson" | "application/fhir ndjson" | "application/ndjson" | "ndjson"
    )
}

const FORBIDDEN_FILTER_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_sort",
    "_count",
    "_elements",
    "_summary",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
    "_total",
];

/// Splits a `_typeFilter` value into queries. Commas may occur inside a query
/// (`code=a,b`), so a new query starts only at a comma followed by `Type?`.
fn split_type_filters(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in value.match_indices(',') {
        let rest = &value[i + 1..];
        let starts_query = rest
            .split_once('?')
            .is_some_and(|(t, _)| is_resource_type(t.trim()));
        if starts_query {
            out.push(&value[start..i]);
            start = i + 1;
        }
    }
    out.push(&value[start..]);
    out
}

fn parse_type_filter(raw: &str) -> Result<TypeFilter, ApiError> {
    let raw = raw.trim();
    let (ty, query) = raw.split_once('?').ok_or_else(|| {
        ApiError::BadRequest(format!(
            "_typeFilter {} must have the form Type?query",
            quote(raw)
        ))
    })?;
    if !is_resource_type(ty) {
        return Err(ApiError::BadRequest(format!(
            "_typeFilter {} names an unknown resource type {}",
            quote(raw),
            quote(ty)
        )));
    }
    if query.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "_typeFilter {} has an empty query",
            quote(raw)
        )));
    }
    for piece in query.split('&') {
        let key = piece.split_once('=').map(|(k, _)| k).unwrap_or(piece);
        let base = key.split(':').next().unwrap_or(key);
        if base.is_empty() || piece.split_once('=').is_none() {
            return Err(ApiError::BadRequest(format!(
                "_typeFilter {} contains a malformed search parameter",
                quote(raw)
            )));
        }
        if FORBIDDEN_FILTER_PARAMS.contains(&base) {
            return Err(ApiError::BadRequest(format!(
                "_typeFilter {} may not use {}",
                quote(raw),
                quote(base)
            )));
        }
        if base == "_lastUpdated" {
            return Err(ApiError::BadRequest(format!(
                "_typeFilter {} may not use _lastUpdated; use _since and _until",
                quote(raw)
            )));
        }
    }
    if query.contains('#') {
        return Err(ApiError::BadRequest(format!(
            "_typeFilter {} must be a plain search query",
            quote(raw)
        )));
    }
    Ok(TypeFilter {
        resource_type: ty.to_string(),
        query: query.to_string(),
    })
}

/// Validates raw parameter pairs for the given level and method.
pub fn parse_export_request(
    pairs: Pairs,
    level: &ExportLevel,
    is_post: bool,
    lenient: bool,
) -> Result<ExportRequest, ApiError> {
    let mut parser = RequestParser {
        req: ExportRequest::default(),
        seen_single: Vec::new(),
        type_count: 0,
        level,
        is_post,
        lenient,
    };
    for (name, value) in pairs {
        parser.param(name, value)?;
    }
    parser.finish()
}

/// A kick-off request being parsed, parameter by parameter in request order:
/// the first offending parameter names the error, and the rules that span
/// parameters (single-valued names, the `_type` limit) remember what they saw.
struct RequestParser<'a> {
    req: ExportRequest,
    seen_single: Vec<String>,
    type_count: usize,
    level: &'a ExportLevel,
    is_post: bool,
    lenient: bool,
}

impl RequestParser<'_> {
    /// Takes one parameter: refused, ignored (lenient) or applied.
    fn param(&mut self, name: String, value: String) -> Result<(), ApiError> {
        check_no_control(&name, &value)?;
        // `_till` is an alias of `_until`: one name for the single-valued check.
        let canonical = if name == "_till" {
            "_until".to_string()
        } else {
            name.clone()
        };
        if is_single_valued(&canonical) {
            if self.seen_single.contains(&canonical) {
                return Err(ApiError::BadRequest(format!(
                    "parameter {} may appear only once",
                    quote(&name)
                )));
            }
            self.seen_single.push(canonical.clone());
        }
        if let Some(reason) = unsupported_reason(&canonical) {
            if self.lenient {
                self.req
                    .ignored
                    .push(format!("{reason}; ignored under handling=lenient"));
                return Ok(());
            }
            return Err(ApiError::NotSupported(reason.to_string()));
        }
        self.apply(&name, &canonical, value)
    }

    /// Applies a supported parameter to the request.
    fn apply(&mut self, name: &str, canonical: &str, value: String) -> Result<(), ApiError> {
        match canonical {
            "_outputFormat" => {
                if !is_output_format(&value) {
                    return Err(ApiError::BadRequest(format!(
                        "_outputFormat {} is not supported; use application/fhir+ndjson",
                        quote(&value)
                    )));
                }
            }
            "_since" | "_until" => {
                if parse_instant(&value).is_none() {
                    return Err(ApiError::BadRequest(format!(
                        "{} {} is not a FHIR instant (YYYY-MM-DDThh:mm:ss[.sss] with Z or +hh:mm)",
                        name,
                        quote(&value)
                    )));
                }
                if canonical == "_since" {
                    self.req.since = Some(value);
                } else {
                    self.req.until = Some(value);
                }
            }
            "_type" => self.types(&value)?,
            "_typeFilter" => self.type_filters(&value)?,
            "_container" => {
                if !is_container_name(&value) {
                    return Err(ApiError::BadRequest(format!(
                        "_container {} is invalid: use 3-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit",
                        quote(&value)
                    )));
                }
                self.req.container = Some(value);
            }
            "patient" => self.patients(&value)?,
            "allowPartialManifests" => match value.as_str() {
                "true" => self.req.allow_partial_manifests = true,
                "false" => self.req.allow_partial_manifests = false,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "allowPartialManifests {} must be true or false",
                        quote(&value)
                    )));
                }
            },
            _ => {
                if self.lenient {
                    self.req.ignored.push(format!(
                        "parameter {} is not recognised; ignored under handling=lenient",
                        quote(name)
                    ));
                    return Ok(());
                }
                return Err(ApiError::BadRequest(format!(
                    "parameter {} is not recognised by $export",
                    quote(name)
                )));
            }
        }
        Ok(())
    }

    /// Adds a `_type` list; the limit counts every entry named, repeats and
    /// ignored ones included, so a huge list is refused however it is spelt.
    fn types(&mut self, value: &str) -> Result<(), ApiError> {
        for ty in value.split(',').map(str::trim) {
            self.type_count += 1;
            if self.type_count > MAX_TYPES {
                return Err(ApiError::BadRequest(format!(
                    "_type may name at most {MAX_TYPES} types"
                )));
            }
            if ty.is_empty() {
                return Err(ApiError::BadRequest("_type contains an empty entry".into()));
            }
            if !is_resource_type(ty) {
                if self.lenient {
                    self.req.ignored.push(format!(
                        "_type {} is not a FHIR R4 resource type; ignored under handling=lenient",
                        quote(ty)
                    ));
                    continue;
                }
                return Err(ApiError::BadRequest(format!(
                    "_type {} is not a FHIR R4 resource type",
                    quote(ty)
                )));
            }
            if !self.req.types.iter().any(|t| t == ty) {
                self.req.types.push(ty.to_string());
            }
        }
        Ok(())
    }

    /// Adds a `_typeFilter` value's queries, each validated, without repeats.
    fn type_filters(&mut self, value: &str) -> Result<(), ApiError> {
        for raw in split_type_filters(value) {
            if self.req.type_filters.len() >= MAX_TYPE_FILTERS {
                return Err(ApiError::BadRequest(format!(
                    "at most {MAX_TYPE_FILTERS} _typeFilter queries are allowed"
                )));
            }
            let filter = parse_type_filter(raw)?;
            if !self.req.type_filters.contains(&filter) {
                self.req.type_filters.push(filter);
            }
        }
        Ok(())
    }

    /// Adds `patient` references: POST bodies at the Patient and Group
    /// levels only, normalised to `Patient/<id>` so repeats collapse.
    fn patients(&mut self, value: &str) -> Result<(), ApiError> {
        if !self.is_post {
            return Err(ApiError::BadRequest(
                "patient is only accepted in a POST kick-off body".into(),
            ));
        }
        if *self.level == ExportLevel::System {
            return Err(ApiError::BadRequest(
                "patient is only accepted at the Patient and Group levels".into(),
            ));
        }
        for reference in value.split(',').map(str::trim) {
            let id = reference.strip_prefix("Patient/").unwrap_or("");
            if !is_fhir_id(id) {
                return Err(ApiError::BadRequest(format!(
                    "patient {} must be a reference of the form Patient/<id>",
                    quote(reference)
                )));
            }
            if self.req.patients.len() >= MAX_PATIENTS {
                return Err(ApiError::BadRequest(format!(
                    "at most {MAX_PATIENTS} patient references are allowed"
                )));
            }
            let normalized = format!("Patient/{id}");
            if !self.req.patients.contains(&normalized) {
                self.req.patients.push(normalized);
            }
        }
        Ok(())
    }

    /// Checks what only the whole request can show: an empty window, and a
    /// `_typeFilter` for a type `_type` leaves out.
    fn finish(self) -> Result<ExportRequest, ApiError> {
        let req = self.req;
        if let (Some(since), Some(until)) = (&req.since, &req.until)
            && let (Some(s), Some(u)) = (parse_instant(since), parse_instant(until))
            && u < s
        {
            return Err(ApiError::BadRequest(format!(
                "_until {} is before _since {}",
                quote(until),
                quote(since)
            )));
        }
        if !req.types.is_empty() {
            for f in &req.type_filters {
                if !req.types.contains(&f.resource_type) {
                    return Err(ApiError::BadRequest(format!(
                        "_typeFilter for {} is excluded by _type",
                        quote(&f.resource_type)
                    )));
                }
            }
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ExportRequest, ApiError> {
        parse_export_request(query_pairs(q)?, &ExportLevel::System, false, false)
    }

    #[test]
    fn repeated_type_equals_comma_list() {
        let a = parse("_type=Patient&_type=Observation").unwrap();
        let b = parse("_type=Patient,Observation").unwrap();
        assert_eq!(a.types, b.types);
    }

    #[test]
    fn output_format_plus_decodes_to_space() {
        assert!(parse("_outputFormat=application/fhir+ndjson").is_ok());
        assert!(parse("_outputFormat=application%2Ffhir%2Bndjson").is_ok());
        assert!(parse("_outputFormat=text/csv").is_err());
    }

    #[test]
    fn type_filters_split_only_before_a_type() {
        let r = parse("_typeFilter=Observation%3Fcode%3Da,b,Condition%3Fclinical-status%3Dactive")
            .unwrap();
        assert_eq!(r.type_filters.len(), 2);
        assert_eq!(r.type_filters[0].query, "code=a,b");
    }

    #[test]
    fn prefer_is_a_list() {
        let p = parse_prefer("Respond-Async ,  handling=Lenient");
        assert!(p.respond_async && p.lenient);
        assert!(!parse_prefer("return=minimal").respond_async);
    }

    #[test]
    fn containers() {
        assert!(is_container_name("nightly-2024"));
        for bad in [
            "ab", "-abc", "abc-", "a.b.c", "a/b/c", "ABC", "a%2fb", "..x",
        ] {
            assert!(!is_container_name(bad), "{bad}");
        }
    }
}
