//! Which patients a Patient- or Group-level export covers: Group members
//! (nested Groups expanded; inactive members and members whose `period` has
//! ended excluded), all patients, or the `patient` parameter's subset.

use crate::fhir::ids::is_fhir_id;
use crate::fhir::outcome::{ApiError, quote};
use crate::model::ExportLevel;
use crate::model::PatientScope;
use crate::ports::services::ReadSource;
use serde_json::Value;
use time::OffsetDateTime;

/// Most member patients one export covers (beyond 1,000 the list is stored
/// beside the job item, see the DynamoDB adapter).
pub const MAX_MEMBERS: usize = 20_000;
/// Deepest Group nesting followed.
const MAX_DEPTH: usize = 8;

fn source_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("could not read from the FHIR source: {e}"))
}

fn member_is_current(member: &Value, now: OffsetDateTime) -> bool {
    if member.get("inactive").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    let end = member.pointer("/period/end").and_then(Value::as_str);
    match end {
        None => true,
        // A date-only end covers that whole day.
        Some(e) if e.len() == 10 => {
            format!("{e}T23:59:59.999Z") >= crate::fhir::instant::format_instant(now)
        }
        Some(e) => crate::fhir::instant::parse_instant(e).is_none_or(|t| t >= now),
    }
}

/// Resolves a Group's current member patients (sorted, deduplicated).
pub async fn group_members(
    svc: &impl ReadSource,
    group_id: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, ApiError> {
    let mut members = Vec::new();
    let mut visited = vec![group_id.to_string()];
    let mut pending = vec![(group_id.to_string(), 0usize)];
    while let Some((id, depth)) = pending.pop() {
        let Some(raw) = svc
            .source()
            .read_resource("Group", &id)
            .await
            .map_err(source_error)?
        else {
            if id == group_id {
                return Err(ApiError::NotFound(format!(
                    "Group {} is not known",
                    quote(group_id)
                )));
            }
            continue;
        };
        let group: Value =
            serde_json::from_slice(&raw).map_err(|_| source_error("Group is not JSON"))?;
        for member in group
            .get("member")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !member_is_current(member, now) {
                continue;
            }
            let reference = member
                .pointer("/entity/reference")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(pid) = reference.strip_prefix("Patient/").filter(|p| is_fhir_id(p)) {
                members.push(pid.to_string());
            } else if let Some(gid) = reference.strip_prefix("Group/").filter(|g| is_fhir_id(g))
                && depth < MAX_DEPTH
                && !visited.iter().any(|v| v == gid)
            {
                visited.push(gid.to_string());
                pending.push((gid.to_string(), depth + 1));
            }
        }
        if members.len() > MAX_MEMBERS {
            return Err(ApiError::NotSupported(format!(
                "Groups of more than {MAX_MEMBERS} patients are not supported"
            )));
        }
    }
    members.sort();
    members.dedup();
    Ok(members)
}

/// The patient scope of an export at `level`, restricted by `patient`.
pub async fn resolve_scope(
    svc: &impl ReadSource,
    level: &ExportLevel,
    patients: &[String],
    now: OffsetDateTime,
) -> Result<PatientScope, ApiError> {
    let requested: Vec<String> = patients
        .iter()
        .filter_map(|p| p.strip_prefix("Patient/").map(str::to_string))
        .collect();
    match level {
        ExportLevel::System => Ok(PatientScope::None),
        ExportLevel::Patient => {
            if !requested.is_empty() {
                for id in &requested {
                    if svc
                        .source()
                        .read_resource("Patient", id)
                        .await
                        .map_err(source_error)?
                        .is_none()
                    {
                        return Err(ApiError::BadRequest(format!(
                            "patient Patient/{} is not known",
                            quote(id)
                        )));
                    }
                }
                let mut ids = requested;
                ids.sort();
                ids.dedup();
                return Ok(PatientScope::Members(ids));
            }
            if svc.source().queries_by_patient_batch() {
                let mut ids = svc.source().patient_ids().await.map_err(source_error)?;
                if ids.len() > MAX_MEMBERS {
                    return Err(ApiError::NotSupported(format!(
                        "Patient-level exports of more than {MAX_MEMBERS} patients are not supported; use a Group"
                    )));
                }
                ids.sort();
                ids.dedup();
                Ok(PatientScope::Members(ids))
            } else {
                Ok(PatientScope::All)
            }
        }
        ExportLevel::Group(id) => {
            let members = group_members(svc, id, now).await?;
            if requested.is_empty() {
                return Ok(PatientScope::Members(members));
            }
            for p in &requested {
                if members.binary_search(p).is_err() {
                    return Err(ApiError::BadRequest(format!(
                        "patient Patient/{} is not a member of Group {}",
                        quote(p),
                        quote(id)
                    )));
                }
            }
            let mut ids = requested;
            ids.sort();
            ids.dedup();
            Ok(PatientScope::Members(ids))
        }
    }
}
