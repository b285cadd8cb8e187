//! The HTTP surface: one function from `http::Request` to `http::Response`,
//! shared by the Lambda functions, the local runner and the tests.

pub mod cancel;
pub mod capability;
pub mod download;
pub mod kickoff;
pub mod status;

use crate::api::cancel::cancel;
use crate::api::capability::capability_statement;
use crate::api::download::{download, download_signed};
use crate::api::kickoff::kickoff;
use crate::api::status::status;
use crate::fhir::ids::is_fhir_id;
use crate::fhir::outcome::{ApiError, fhir_json, quote};
use crate::model::Caller;
use crate::model::ExportLevel;
use crate::ports::services::{CountPolls, Settings, StepServices};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

/// A route of the API, resolved from method-independent path matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `[base]/metadata`
    Metadata,
    /// A kick-off at some level.
    Kickoff(ExportLevel),
    /// `[base]/$export-status/<job>`
    Status(String),
    /// `[base]/$export-file/<job>/<file>` (`requiresAccessToken` mode)
    File(String, String),
    /// `[base]/$export-download/<job>/<file>`: a compact signed link
    SignedFile(String, String),
}

impl Route {
    /// Routes answered without a bearer token: the CapabilityStatement and
    /// signed links (their signature is the credential).
    pub fn is_public(&self) -> bool {
        matches!(self, Route::Metadata | Route::SignedFile(..))
    }
}

/// Resolves the path below the base path (already percent-decoded).
pub fn route(rel: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["metadata"] => Ok(Route::Metadata),
        ["$export"] => Ok(Route::Kickoff(ExportLevel::System)),
        ["Patient", "$export"] => Ok(Route::Kickoff(ExportLevel::Patient)),
        ["Group", id, "$export"] => {
            if is_fhir_id(id) {
                Ok(Route::Kickoff(ExportLevel::Group((*id).to_string())))
            } else {
                Err(ApiError::BadRequest(format!(
                    "Group id {} is not a valid FHIR id",
                    quote(id)
                )))
            }
        }
        ["$export-status", id] => Ok(Route::Status((*id).to_string())),
        ["$export-file", id, name] => Ok(Route::File((*id).to_string(), (*name).to_string())),
        ["$export-download", id, name] => {
            Ok(Route::SignedFile((*id).to_string(), (*name).to_string()))
        }
        _ => Err(ApiError::NotFound(format!("no route for {}", quote(rel)))),
    }
}

/// Whether a GET of `raw_path` (not yet decoded) is a public route, so the
/// HTTP layers may serve it without a caller.
pub fn is_public_request(svc: &impl Settings, method: &Method, raw_path: &str) -> bool {
    let Ok(decoded) = percent_encoding::percent_decode_str(raw_path).decode_utf8() else {
        return false;
    };
    *method == Method::GET
        && relative_path(svc, &decoded)
            .and_then(|rel| route(rel).ok())
            .is_some_and(|r| r.is_public())
}

fn relative_path<'a>(svc: &impl Settings, path: &'a str) -> Option<&'a str> {
    let base = svc.config().base_path();
    let rest = path.strip_prefix(base)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Handles one API request. Never panics on any input; every error is an
/// OperationOutcome.
pub async fn handle(
    svc: &(impl StepServices + CountPolls),
    caller: &Caller,
    req: Request<Bytes>,
) -> Response<Bytes> {
    match dispatch(svc, caller, &req).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(status = %e.status(), error = %e, "request failed");
            } else {
                tracing::info!(status = %e.status(), "request rejected");
            }
            e.into_response()
        }
    }
}

async fn dispatch(
    svc: &(impl StepServices + CountPolls),
    caller: &Caller,
    req: &Request<Bytes>,
) -> Result<Response<Bytes>, ApiError> {
    let raw_len = req.uri().path().len() + req.uri().query().map_or(0, |q| q.len() + 1);
    if raw_len > svc.config().max_url_bytes {
        return Err(ApiError::UriTooLong(format!(
            "request URL exceeds {} bytes",
            svc.config().max_url_bytes
        )));
    }
    let decoded = percent_encoding::percent_decode_str(req.uri().path())
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("request path is not valid UTF-8".into()))?;
    if decoded.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "request path contains control characters".into(),
        ));
    }
    let rel = relative_path(svc, &decoded)
        .ok_or_else(|| ApiError::NotFound(format!("no route for {}", quote(&decoded))))?;
    let route = route(rel)?;
    let method = req.method();
    match route {
        Route::Metadata => {
            if method != Method::GET {
                return Err(ApiError::MethodNotAllowed { allow: "GET" });
            }
            Ok(fhir_json(
                StatusCode::OK,
                &capability_statement(svc.config().base()),
            ))
        }
        Route::Kickoff(level) => {
            if method != Method::GET && method != Method::POST {
                return Err(ApiError::MethodNotAllowed { allow: "GET, POST" });
            }
            let mut url = format!("{}{}", svc.config().base(), rel);
            if method == Method::GET
                && let Some(q) = req.uri().query()
            {
                url.push('?');
                url.push_str(q);
            }
            kickoff(svc, caller, level, req, url).await
        }
        Route::File(id, name) => {
            if method != Method::GET {
                return Err(ApiError::MethodNotAllowed { allow: "GET" });
            }
            download(svc, caller, &id, &name).await
        }
        Route::SignedFile(id, name) => {
            if method != Method::GET {
                return Err(ApiError::MethodNotAllowed { allow: "GET" });
            }
            download_signed(svc, &id, &name, req.uri().query()).await
        }
        Route::Status(id) => match *method {
            Method::GET => status(svc, caller, &id).await,
            Method::DELETE => cancel(svc, caller, &id).await,
            _ => Err(ApiError::MethodNotAllowed {
                allow: "GET, DELETE",
            }),
        },
    }
}
