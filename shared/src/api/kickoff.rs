//! `$export` kick-off: validate the request, create the job and its chains,
//! fan out the first steps and answer 202 with the status URL.

use crate::export::group::resolve_scope;
use crate::export::request::{
    check_accept, parameters_pairs, parse_export_request, parse_prefer, query_pairs,
};
use crate::export::start::{apply_scopes, restrict_to_compartment, start_export, status_url};
use crate::fhir::instant::now_millis;
use crate::fhir::outcome::{ApiError, Severity, fhir_json, operation_outcome, quote};
use crate::fhir::smart_scopes::readable_types;
use crate::model::Caller;
use crate::model::ExportLevel;
use crate::ports::services::{
    ReadJobs, ReadSource, RecordFiles, ScheduleSteps, Settings, StoreObjects, WriteJobs,
};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

fn header_str(req: &Request<Bytes>, name: header::HeaderName) -> Result<Option<&str>, ApiError> {
    match req.headers().get(name.clone()) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("header {name} is not visible ASCII"))),
    }
}

/// Handles a kick-off request at `level`. `request_url` is the absolute URL
/// the client called (built from the configured base, never the Host header).
pub async fn kickoff(
    svc: &(
         impl ReadJobs + ReadSource + RecordFiles + ScheduleSteps + Settings + StoreObjects + WriteJobs
     ),
    caller: &Caller,
    level: ExportLevel,
    req: &Request<Bytes>,
    request_url: String,
) -> Result<Response<Bytes>, ApiError> {
    check_accept(header_str(req, header::ACCEPT)?)?;
    let prefs = parse_prefer(
        header_str(req, http::header::HeaderName::from_static("prefer"))?.unwrap_or(""),
    );
    if !prefs.respond_async {
        return Err(ApiError::BadRequest(
            "the Prefer header must include respond-async".into(),
        ));
    }
    let is_post = req.method() == http::Method::POST;
    let pairs = if is_post {
        post_pairs(svc, req)?
    } else {
        query_pairs(req.uri().query().unwrap_or(""))?
    };
    let mut request = parse_export_request(pairs, &level, is_post, prefs.lenient)?;

    if !request.type_filters.is_empty() && !svc.source().supports_type_filter() {
        return Err(ApiError::NotSupported(
            "_typeFilter is not supported by this server's NDJSON source".into(),
        ));
    }
    let scope = resolve_scope(svc, &level, &request.patients, now_millis()).await?;
    if scope.is_compartment() {
        restrict_to_compartment(&mut request, prefs.lenient)?;
    }
    apply_scopes(&mut request, &readable_types(&caller.scopes), prefs.lenient)?;
    let job = start_export(
        svc,
        &caller.client_id,
        level,
        request,
        request_url,
        None,
        scope,
    )
    .await?;
    accepted(svc, &job.id)
}

/// The parameters of a POST kick-off: a `Parameters` body only (parameters
/// in the query string too would be ambiguous), of bounded size.
fn post_pairs(
    svc: &impl Settings,
    req: &Request<Bytes>,
) -> Result<Vec<(String, String)>, ApiError> {
    let ct = header_str(req, header::CONTENT_TYPE)?.unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/fhir+json" && media != "application/json" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {} is not supported; send a Parameters resource as application/fhir+json",
            quote(ct)
        )));
    }
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::BadRequest(
            "a POST kick-off takes its parameters from the body, not the query string".into(),
        ));
    }
    if req.body().len() > svc.config().max_body_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "request body exceeds {} bytes",
            svc.config().max_body_bytes
        )));
    }
    parameters_pairs(req.body())
}

/// The 202 answer: the client polls the status URL in `Content-Location`.
fn accepted(svc: &impl Settings, job_id: &str) -> Result<Response<Bytes>, ApiError> {
    let body = operation_outcome(
        Severity::Information,
        "informational",
        "Export accepted; poll the Content-Location URL for status.",
    );
    let mut resp = fhir_json(StatusCode::ACCEPTED, &body);
    let location = status_url(svc.config().base(), job_id);
    let value = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::Internal("invalid status URL".into()))?;
    resp.headers_mut().insert(header::CONTENT_LOCATION, value);
    Ok(resp)
}
