//! Connections and routing: the accept loop, `/__stats`, `metadata`, reads,
//! and the response helpers shared with the search handler.

use super::search::search;
use super::state::State;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

pub(crate) type Resp = http::Response<Full<Bytes>>;

/// Accepts connections until `shutdown` changes.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "fixture accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        serve_connection(socket, state.clone(), shutdown.clone());
    }
}

/// Serves one connection on its own task until it closes, a
/// `ConnectionReset` fault drops it, or the server shuts down.
fn serve_connection(socket: TcpStream, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let _ = socket.set_nodelay(true);
    let reset = Arc::new(Notify::new());
    let rs = reset.clone();
    let service = hyper::service::service_fn(move |req| {
        let st = state.clone();
        let rs = rs.clone();
        async move { Ok::<_, Infallible>(respond(&st, &rs, req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service);
    tokio::spawn(async move {
        tokio::select! {
            _ = conn => {}
            // Dropping the connection closes the socket mid-request.
            _ = reset.notified() => {}
            _ = stop.changed() => {}
        }
    });
}

pub(crate) fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = http::Response::new(Full::new(body.into()));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// An OperationOutcome with one error issue.
pub(crate) fn outcome(status: u16, code: &str, diagnostics: &str) -> Resp {
    let body = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]
    });
    response(status, "application/fhir+json", body.to_string())
}

/// Routes one request.
async fn respond(state: &State, reset: &Notify, req: http::Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/__stats" {
        let body = serde_json::to_vec(&state.stats()).unwrap_or_default();
        return response(200, "application/json", body);
    }
    state.bump(|s| s.requests += 1);
    if req.method() != http::Method::GET {
        return outcome(405, "not-supported", "only GET is supported");
    }
    let Some(rest) = path.strip_prefix("/fhir/") else {
        return outcome(404, "not-found", "unknown path");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["metadata"] => {
            state.bump(|s| s.metadata += 1);
            response(200, "application/fhir+json", capability(state))
        }
        [ty] => search(state, reset, ty, &query).await,
        [ty, id] => read(state, ty, id),
        _ => outcome(404, "not-found", "unknown path"),
    }
}

/// `GET /fhir/<Type>/<id>`.
fn read(state: &State, ty: &str, id: &str) -> Resp {
    state.bump(|s| s.reads += 1);
    let found = state.data.types.get(ty).and_then(|d| d.read(id));
    match found.filter(|_| !state.deleted(ty).contains(id)) {
        Some(raw) => response(200, "application/fhir+json", raw),
        None => outcome(404, "not-found", &format!("{ty}/{id} is not known")),
    }
}

/// The CapabilityStatement: every loaded type.
fn capability(state: &State) -> Vec<u8> {
    let resources: Vec<serde_json::Value> = state
        .data
        .types
        .keys()
        .map(|t| {
            serde_json::json!({
                "type": t,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": "_lastUpdated", "type": "date"},
                    {"name": "_id", "type": "token"}
                ]
            })
        })
        .collect();
    let cs = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "resource": resources}]
    });
    serde_json::to_vec(&cs).unwrap_or_default()
}
