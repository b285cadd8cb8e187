//! FHIR OperationOutcome bodies and the error type every API handler returns.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

/// Media type of every FHIR JSON body we send.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Severity of an OperationOutcome issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The request failed.
    Error,
    /// Something was skipped or degraded.
    Warning,
    /// Informational only.
    Information,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// Builds an OperationOutcome with one issue.
pub fn operation_outcome(severity: Severity, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": severity.as_str(),
            "code": code,
            "diagnostics": diagnostics,
        }]
    })
}

/// Makes a request value safe to quote in a diagnostic: control characters are
/// escaped and long values are cut, so hostile input is never echoed raw.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(120) + 2);
    out.push('\'');
    for (i, c) in value.chars().enumerate() {
        if i >= 100 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// An error a client can see; every variant maps to a status code and an
/// OperationOutcome `issue.code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or names something invalid.
    #[error("{0}")]
    BadRequest(String),
    /// 400 with `issue.code = not-supported`: valid FHIR we do not implement.
    #[error("{0}")]
    NotSupported(String),
    /// 401: missing or invalid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown (or not the caller's) job, group or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: wrong method; carries the allowed methods.
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// 406: the `Accept` header names nothing we can produce.
    #[error("{0}")]
    NotAcceptable(String),
    /// 413: body too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 414: URL too long.
    #[error("{0}")]
    UriTooLong(String),
    /// 415: unsupported request body media type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: too many requests or exports; retry after the given seconds.
    #[error("{message}")]
    TooManyRequests {
        /// Human-readable reason.
        message: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// 503: a backing service failed transiently; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// 500: an internal fault (never for bad input).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::NotSupported(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// FHIR `issue.code` for this error.
    pub fn issue_code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid",
            ApiError::NotSupported(_) => "not-supported",
            ApiError::Unauthorized(_) => "login",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed { .. } => "not-supported",
            ApiError::NotAcceptable(_) => "not-supported",
            ApiError::PayloadTooLarge(_) | ApiError::UriTooLong(_) => "too-long",
            ApiError::UnsupportedMediaType(_) => "not-supported",
            ApiError::TooManyRequests { .. } => "throttled",
            ApiError::Unavailable(_) => "transient",
            ApiError::Internal(_) => "exception",
        }
    }

    /// The response a client sees for this error.
    pub fn into_response(self) -> Response<Bytes> {
        let body = operation_outcome(Severity::Error, self.issue_code(), &self.to_string());
        let mut resp = fhir_json(self.status(), &body);
        let headers = resp.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

/// A response with a FHIR JSON body.
pub fn fhir_json(status: StatusCode, body: &Value) -> Response<Bytes> {
    json_response(status, body, FHIR_JSON)
}

/// A response with a JSON body of the given media type.
pub fn json_response(
    status: StatusCode,
    body: &Value,
    content_type: &'static str,
) -> Response<Bytes> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Bytes::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
