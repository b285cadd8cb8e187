//! Scheduled exports: an EventBridge Scheduler event starts an export with no
//! HTTP caller. `since: "last-success"` continues from the transaction time of
//! the schedule's last successful export, so consecutive runs have no gaps
//! (`_since` is exclusive) and no overlaps (`transactionTime` is inclusive).

use crate::export::request::parse_export_request;
use crate::export::start::{start_export, status_url};
use crate::fhir::outcome::{ApiError, quote};
use crate::model::ExportLevel;
use crate::ports::services::{
    LogSchedules, ReadJobs, ReadSource, RecordFiles, ScheduleSteps, Settings, StoreObjects,
    WriteJobs,
};
use serde::{Deserialize, Serialize};

/// The `scheduledExport` object of a scheduler event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduledExport {
    /// Schedule name; keys the last-success record.
    pub name: String,
    /// `system` (default), `patient` or `group`.
    #[serde(default)]
    pub level: Option<String>,
    /// Group id for `group` level.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Resource types (`_type`).
    #[serde(default)]
    pub types: Vec<String>,
    /// `_container`.
    #[serde(default)]
    pub container: Option<String>,
    /// An instant, or `last-success`.
    #[serde(default)]
    pub since: Option<String>,
    /// Client id that owns the resulting jobs (default `scheduler`).
    #[serde(default)]
    pub owner: Option<String>,
}

/// What a scheduled run started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledRun {
    /// The new job.
    pub job_id: String,
    /// Its status URL.
    pub status_url: String,
    /// The `_since` used (none for a first full export).
    pub since: Option<String>,
    /// Its transaction time.
    pub transaction_time: String,
}

fn valid_schedule_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Starts the export a scheduler event describes.
pub async fn run_scheduled_export(
    svc: &(
         impl LogSchedules
         + ReadJobs
         + ReadSource
         + RecordFiles
         + ScheduleSteps
         + Settings
         + StoreObjects
         + WriteJobs
     ),
    ev: &ScheduledExport,
) -> Result<ScheduledRun, ApiError> {
    if !valid_schedule_name(&ev.name) {
        return Err(ApiError::BadRequest(format!(
            "schedule name {} is invalid",
            quote(&ev.name)
        )));
    }
    let level = schedule_level(ev)?;
    let since = schedule_since(svc, ev).await?;
    let pairs = request_pairs(ev, since.as_deref());
    let request = parse_export_request(pairs.clone(), &level, false, false)?;
    if level != ExportLevel::System {
        return Err(ApiError::NotSupported(
            "scheduled Patient and Group exports are not supported yet".into(),
        ));
    }
    let url = request_url(svc.config().base(), &pairs);
    let owner = ev.owner.clone().unwrap_or_else(|| "scheduler".into());
    let job = start_export(
        svc,
        &owner,
        level,
        request,
        url,
        Some(ev.name.clone()),
        crate::model::PatientScope::None,
    )
    .await?;
    Ok(ScheduledRun {
        status_url: status_url(svc.config().base(), &job.id),
        job_id: job.id,
        since,
        transaction_time: job.transaction_time,
    })
}

/// The export level a schedule names (`system` when it names none).
fn schedule_level(ev: &ScheduledExport) -> Result<ExportLevel, ApiError> {
    Ok(match ev.level.as_deref().unwrap_or("system") {
        "system" => ExportLevel::System,
        "patient" => ExportLevel::Patient,
        "group" => ExportLevel::Group(
            ev.group_id
                .clone()
                .ok_or_else(|| ApiError::BadRequest("a group schedule needs groupId".into()))?,
        ),
        other => {
            return Err(ApiError::BadRequest(format!(
                "level {} is not system, patient or group",
                quote(other)
            )));
        }
    })
}

/// The run's `_since`: `last-success` continues from the transaction time of
/// the schedule's last successful export (none before the first one).
async fn schedule_since(
    svc: &impl LogSchedules,
    ev: &ScheduledExport,
) -> Result<Option<String>, ApiError> {
    Ok(match ev.since.as_deref() {
        Some("last-success") => svc.schedules().last_schedule_success(&ev.name).await?,
        other => other.map(str::to_string),
    })
}

/// The kick-off parameters the schedule stands for, so a scheduled export is
/// validated exactly like an HTTP one.
fn request_pairs(ev: &ScheduledExport, since: Option<&str>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    if !ev.types.is_empty() {
        pairs.push(("_type".to_string(), ev.types.join(",")));
    }
    if let Some(s) = since {
        pairs.push(("_since".to_string(), s.to_string()));
    }
    if let Some(c) = &ev.container {
        pairs.push(("_container".to_string(), c.clone()));
    }
    pairs
}

/// The kick-off URL the job records as its request (the manifest's
/// `request`), as if the parameters had been sent in a GET.
fn request_url(base: &str, pairs: &[(String, String)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    let mut url = format!("{base}/$export");
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    url
}
