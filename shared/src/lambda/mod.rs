//! Lambda entry points: build services from the environment once, then
//! translate API Gateway and worker events into library calls.

use crate::adapters::dynamo::DynamoJobStore;
use crate::adapters::fhir_server::{FhirServerSource, RetryPolicy};
use crate::adapters::lambda_invoke::LambdaContinuation;
use crate::adapters::ndjson::NdjsonSource;
use crate::adapters::s3::S3ObjectStore;
use crate::adapters::sqs::FailedStepQueue;
use crate::api::handle;
use crate::export::schedule::{ScheduledExport, run_scheduled_export};
use crate::fhir::outcome::ApiError;
use crate::model::Caller;
use crate::model::StepEvent;
use crate::model::config::ExportConfig;
use crate::ports::services::ExportServices;
use crate::ports::source::Source;
use crate::worker::redelivery::DrainReport;
use crate::worker::redelivery::{DrainError, drain};
use crate::worker::step::run_step;
use crate::worker::watchdog::{SweepReport, sweep};
use bytes::Bytes;
use lambda_http::request::RequestContext;
use lambda_http::{Body, RequestExt};
use std::sync::Arc;
use std::time::Duration;

/// A failure building services at cold start.
#[derive(Debug, thiserror::Error)]
#[error("startup: {0}")]
pub struct StartupError(pub String);

/// JSON logs with the span fields (job id, chain, step) on every line.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_env_filter(filter)
        .without_time()
        .try_init();
}

/// Builds services from `BULK_EXPORT_*` variables and the SDK's default
/// configuration (endpoints honour `AWS_ENDPOINT_URL_*`).
pub async fn services_from_env() -> Result<ExportServices, StartupError> {
    crate::compose::heap::return_freed_blocks();
    let mut config = ExportConfig::from_env().map_err(|e| StartupError(e.to_string()))?;
    if let Ok(public) = std::env::var("BULK_EXPORT_PUBLIC_BASE_URL")
        && !public.is_empty()
    {
        config.base_url = public;
    }
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3_conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(std::env::var("BULK_EXPORT_S3_PATH_STYLE").is_ok_and(|v| v == "true"))
        .build();
    let store = DynamoJobStore::new(aws_sdk_dynamodb::Client::new(&sdk), &config.table);
    let s3 = aws_sdk_s3::Client::from_conf(s3_conf);
    let objects = S3ObjectStore::new(s3.clone(), &config.bucket);
    let source: Arc<dyn Source> = match std::env::var("BULK_EXPORT_SOURCE") {
        Ok(s) if s.starts_with("ndjson:") => Arc::new(NdjsonSource::new(&s["ndjson:".len()..])),
        Ok(s) if s.starts_with("s3://") => Arc::new(NdjsonSource::s3(
            crate::adapters::ndjson::location::S3Prefix::parse(s3, &s).map_err(StartupError)?,
        )),
        Ok(s) if s.starts_with("http://") || s.starts_with("https://") => {
            let ssm = aws_sdk_ssm::Client::new(&sdk);
            let auth = crate::adapters::ssm::upstream_auth(&ssm, &|k| std::env::var(k).ok())
                .await
                .map_err(StartupError)?;
            Arc::new(
                FhirServerSource::new(s, None, RetryPolicy::default())
                    .map_err(|e| StartupError(e.to_string()))?
                    .with_auth(auth),
            )
        }
        _ => {
            return Err(StartupError(
                "BULK_EXPORT_SOURCE must be an http(s) FHIR base URL, s3://bucket/prefix or ndjson:<dir>".into(),
            ));
        }
    };
    let worker = std::env::var("BULK_EXPORT_WORKER_FUNCTION")
        .map_err(|_| StartupError("BULK_EXPORT_WORKER_FUNCTION is not set".into()))?;
    let continuation = LambdaContinuation::new(aws_sdk_lambda::Client::new(&sdk), worker);
    Ok(ExportServices {
        config: Arc::new(config),
        store: Arc::new(store),
        objects: Arc::new(objects),
        source,
        continuation: Arc::new(continuation),
    })
}

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

/// Handles one API Gateway HTTP API request (kick-off, status or cancel).
pub async fn http_handler(
    svc: &ExportServices,
    event: lambda_http::Request,
) -> lambda_http::Response<Body> {
    let ctx = event.request_context_ref().cloned();
    let derived = derived_services(svc, ctx.as_ref());
    let svc = derived.as_ref().unwrap_or(svc);
    let (parts, body) = event.into_parts();
    let resp = match caller_from_context(ctx) {
        Err(e) => e.into_response(),
        Ok(caller) => {
            let bytes = match body {
                Body::Empty => Bytes::new(),
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

/// Handles one raw API Gateway HTTP API (payload 2.0) event and returns the
/// proxy response JSON. The kick-off function also accepts a scheduler event
/// (`{"scheduledExport": {...}}`) and starts that export.
pub async fn api_event_handler(
    svc: &ExportServices,
    event: serde_json::Value,
) -> serde_json::Value {
    if let Some(scheduled) = event.get("scheduledExport") {
        return match serde_json::from_value::<ScheduledExport>(scheduled.clone()) {
            Ok(ev) => match run_scheduled_export(svc, &ev).await {
                Ok(run) => serde_json::json!({ "started": run }),
                Err(e) => {
                    tracing::error!(error = %e, "scheduled export failed to start");
                    serde_json::json!({ "error": e.to_string(), "status": e.status().as_u16() })
                }
            },
            Err(e) => {
                serde_json::json!({ "error": format!("invalid scheduledExport event: {e}"), "status": 400 })
            }
        };
    }
    let response = match lambda_http::request::from_str(&event.to_string()) {
        Ok(request) => http_handler(svc, request).await,
        Err(_) => {
            let resp = ApiError::BadRequest("unrecognised event".into()).into_response();
            let (parts, body) = resp.into_parts();
            lambda_http::Response::from_parts(
                parts,
                Body::Text(String::from_utf8_lossy(&body).into_owned()),
            )
        }
    };
    proxy_response(response)
}

/// The API Gateway HTTP API proxy response for an HTTP response.
fn proxy_response(resp: lambda_http::Response<Body>) -> serde_json::Value {
    let (parts, body) = resp.into_parts();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(
                name.as_str().to_string(),
                serde_json::Value::String(v.to_string()),
            );
        }
    }
    let (body, base64) = match body {
        Body::Text(t) => (t, false),
        Body::Binary(b) => (base64_encode(&b), true),
        _ => (String::new(), false),
    };
    serde_json::json!({
        "statusCode": parts.status.as_u16(),
        "headers": headers,
        "body": body,
        "isBase64Encoded": base64,
    })
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Handles one chunk-worker invocation; `deadline_ms` is the Lambda deadline
/// in epoch milliseconds.
pub async fn worker_handler(
    svc: &ExportServices,
    event: StepEvent,
    deadline_ms: u64,
) -> Result<String, crate::worker::outcome::StepError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    let outcome = run_step(svc, &event, Some(deadline)).await?;
    Ok(format!("{outcome:?}"))
}

/// Handles one watchdog tick.
pub async fn watchdog_handler(
    svc: &ExportServices,
    failed: Option<&FailedStepQueue>,
) -> Result<(SweepReport, DrainReport), DrainError> {
    let stall = std::env::var("BULK_EXPORT_STALL_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    // Failed steps first: delivered again now, they are not stalls later.
    let drained = match failed {
        Some(q) => drain(svc, q).await?,
        None => DrainReport::default(),
    };
    Ok((sweep(svc, Duration::from_secs(stall)).await?, drained))
}

/// The worker's on-failure destination queue named by
/// `BULK_EXPORT_FAILED_STEPS_QUEUE_URL`, if set.
pub async fn failed_step_queue_from_env() -> Option<FailedStepQueue> {
    let url = std::env::var("BULK_EXPORT_FAILED_STEPS_QUEUE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Some(FailedStepQueue::new(aws_sdk_sqs::Client::new(&sdk), url))
}

/// Runs an API function (kick-off, status or cancel): services are built once
/// at cold start and every event goes to [`api_event_handler`].
pub async fn run_api_function() -> Result<(), lambda_runtime::Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            Ok::<_, lambda_runtime::Error>(api_event_handler(services, event.payload).await)
        },
    ))
    .await
}
