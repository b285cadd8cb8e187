//! API Gateway HTTP API (payload 2.0) requests into the shared API: the
//! caller from the JWT authorizer's claims, the body as bytes, the response
//! as the typed proxy response.

use crate::api::handle;
use crate::fhir::outcome::ApiError;
use crate::model::Caller;
use crate::ports::services::ExportServices;
use bytes::Bytes;
use lambda_http::aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_http::request::{LambdaRequest, RequestContext};
use lambda_http::{Body, RequestExt};
use std::sync::Arc;

/// The caller from the HTTP API's JWT authorizer claims.
pub fn caller_from_context(ctx: Option<RequestContext>) -> Result<Caller, ApiError> {
    let unauthorized = || ApiError::Unauthorized("a valid bearer token is required".into());
    let Some(RequestContext::ApiGatewayV2(ctx)) = ctx else {
        return Err(unauthorized());
    };
    let claims = ctx
        .authorizer
        .and_then(|a| a.jwt)
        .map(|j| j.claims)
        .ok_or_else(unauthorized)?;
    Caller::from_claims(
        claims.get("client_id").map(String::as_str),
        claims.get("sub").map(String::as_str),
        claims.get("scope").map(String::as_str),
    )
    .ok_or_else(unauthorized)
}

/// Without a configured public base URL, URLs are built from the API
/// Gateway domain in the request context (set by AWS, not by the client).
fn derived_services(svc: &ExportServices, ctx: Option<&RequestContext>) -> Option<ExportServices> {
    if std::env::var("BULK_EXPORT_PUBLIC_BASE_URL").is_ok_and(|v| !v.is_empty()) {
        return None;
    }
    let Some(RequestContext::ApiGatewayV2(ctx)) = ctx else {
        return None;
    };
    let domain = ctx.domain_name.as_deref()?;
    let mut config = (*svc.config).clone();
    config.base_url = format!("https://{domain}");
    Some(ExportServices {
        config: Arc::new(config),
        ..svc.clone()
    })
}

/// Handles one HTTP API request (kick-off, status, cancel or download).
pub async fn http_handler(
    svc: &ExportServices,
    event: lambda_http::Request,
) -> lambda_http::Response<Body> {
    let ctx = event.request_context_ref().cloned();
    let derived = derived_services(svc, ctx.as_ref());
    let svc = derived.as_ref().unwrap_or(svc);
    let (parts, body) = event.into_parts();
    // Public routes have no authorizer on API Gateway, hence no claims.
    let public = crate::api::is_public_request(svc, &parts.method, parts.uri.path());
    let caller = match caller_from_context(ctx) {
        Err(_) if public => Ok(Caller::anonymous()),
        other => other,
    };
    let resp = match caller {
        Err(e) => e.into_response(),
        Ok(caller) => {
            let bytes = match body {
                Body::Text(t) => Bytes::from(t),
                Body::Binary(b) => Bytes::from(b),
                _ => Bytes::new(),
            };
            handle(svc, &caller, http::Request::from_parts(parts, bytes)).await
        }
    };
    let (parts, body) = resp.into_parts();
    let body = match String::from_utf8(body.to_vec()) {
        Ok(s) => Body::Text(s),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    lambda_http::Response::from_parts(parts, body)
}

/// Handles one typed HTTP API event and answers with the typed proxy
/// response (binary bodies base64-encoded by the event type itself).
pub async fn api_gateway_handler(
    svc: &ExportServices,
    event: ApiGatewayV2httpRequest,
) -> ApiGatewayV2httpResponse {
    let request: lambda_http::Request = LambdaRequest::ApiGatewayV2(event).into();
    let (parts, body) = http_handler(svc, request).await.into_parts();
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    out.is_base64_encoded = matches!(body, Body::Binary(_));
    out.body = Some(body);
    out
}
