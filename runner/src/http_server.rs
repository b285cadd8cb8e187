//! The runner's HTTP server: hyper in front of the shared `api::handle`.

use bulk_export_core::api::handle;
use bulk_export_core::fhir::outcome::ApiError;
use bulk_export_core::model::Caller;
use bulk_export_core::ports::services::ExportServices;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Authenticates a request; `Err` is the response to send instead.
pub type Authenticator =
    Arc<dyn Fn(&http::request::Parts) -> Result<Caller, ApiError> + Send + Sync>;

async fn serve_one(
    svc: ExportServices,
    auth: Authenticator,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // The CapabilityStatement and signed download links are public, as on
    // API Gateway; everything else (kick-off, status, cancel, `$export-file`)
    // needs the authenticator's approval.
    let public = bulk_export_core::api::is_public_request(&svc, &parts.method, parts.uri.path());
    let caller = if public {
        Ok(Caller {
            client_id: String::new(),
            scopes: vec![],
        })
    } else {
        auth(&parts)
    };
    let resp = match caller {
        Err(e) => e.into_response(),
        Ok(caller) => {
            let limit = svc.config.max_body_bytes;
            match Limited::new(body, limit).collect().await {
                Ok(collected) => {
                    let req = http::Request::from_parts(parts, collected.to_bytes());
                    handle(&svc, &caller, req).await
                }
                Err(_) => ApiError::PayloadTooLarge(format!("request body exceeds {limit} bytes"))
                    .into_response(),
            }
        }
    };
    resp.map(Full::new)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, svc: ExportServices, auth: Authenticator) {
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let svc = svc.clone();
        let auth = auth.clone();
        let service = hyper::service::service_fn(move |req| {
            let svc = svc.clone();
            let auth = auth.clone();
            async move { Ok::<_, Infallible>(serve_one(svc, auth, req).await) }
        });
        let conn = http
            .serve_connection(TokioIo::new(socket), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// The authenticator used when no auth is configured: everyone is the same local caller.
pub fn no_auth() -> Authenticator {
    Arc::new(|_| Ok(Caller::anonymous()))
}
