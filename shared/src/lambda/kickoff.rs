//! The kick-off function's two kinds of event: HTTP API requests and
//! EventBridge Scheduler events (`{"scheduledExport": {...}}`), each typed.

use crate::export::schedule::{ScheduledExport, ScheduledRun, run_scheduled_export};
use crate::lambda::http::api_gateway_handler;
use crate::ports::services::ExportServices;
use lambda_http::aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A scheduler event: the export to start. The object is validated by the
/// handler, so a malformed one is refused with a reason instead of being
/// taken for an HTTP request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleEvent {
    /// What to export, as sent.
    pub scheduled_export: Box<RawValue>,
}

/// What the kick-off function receives. A scheduler event names
/// `scheduledExport`, which no HTTP API event has.
#[derive(Debug, Clone)]
pub enum KickoffEvent {
    /// From EventBridge Scheduler.
    Schedule(ScheduleEvent),
    /// From the HTTP API.
    Http(Box<ApiGatewayV2httpRequest>),
}

/// Just the field that tells the two kinds apart.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kind {
    scheduled_export: Option<Box<RawValue>>,
}

// Not `#[serde(untagged)]`: the HTTP event's own deserializers need the JSON
// itself, not serde's buffered copy, so the event is read once as raw JSON
// and then parsed as the kind it is.
impl<'de> Deserialize<'de> for KickoffEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        let kind: Kind = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
        Ok(match kind.scheduled_export {
            Some(scheduled_export) => KickoffEvent::Schedule(ScheduleEvent { scheduled_export }),
            None => KickoffEvent::Http(Box::new(
                serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?,
            )),
        })
    }
}

/// What the kick-off function answers.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum KickoffReply {
    /// The scheduled export that was started.
    Started {
        /// Its job and status URL.
        started: ScheduledRun,
    },
    /// Why the scheduled export could not start.
    Refused {
        /// The reason (no request content).
        error: String,
        /// The HTTP status the same failure would have at kick-off.
        status: u16,
    },
    /// The HTTP API response.
    Http(Box<ApiGatewayV2httpResponse>),
}

/// Handles one kick-off function event.
pub async fn kickoff_handler(svc: &ExportServices, event: KickoffEvent) -> KickoffReply {
    match event {
        KickoffEvent::Http(request) => {
            KickoffReply::Http(Box::new(api_gateway_handler(svc, *request).await))
        }
        KickoffEvent::Schedule(ev) => {
            match serde_json::from_str::<ScheduledExport>(ev.scheduled_export.get()) {
                Ok(export) => start_scheduled(svc, &export).await,
                Err(e) => KickoffReply::Refused {
                    error: format!("invalid scheduledExport event: {e}"),
                    status: 400,
                },
            }
        }
    }
}

async fn start_scheduled(svc: &ExportServices, export: &ScheduledExport) -> KickoffReply {
    match run_scheduled_export(svc, export).await {
        Ok(started) => KickoffReply::Started { started },
        Err(e) => {
            tracing::error!(error = %e, "scheduled export failed to start");
            KickoffReply::Refused {
                error: e.to_string(),
                status: e.status().as_u16(),
            }
        }
    }
}
