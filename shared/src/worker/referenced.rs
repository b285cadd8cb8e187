//! Referenced resources of Patient- and Group-level exports: the
//! `Practitioner`, `Organization`, `Location` and `Medication` resources that
//! exported compartment resources point to (what US Core and (g)(10) clients
//! need to make sense of the data; HAPI and Azure include them too).
//!
//! Every compartment step records the references in the bytes it uploads as a
//! small object keyed by its chain and step number, before it commits, so a
//! retried or duplicated step rewrites the same object. Once every
//! compartment chain has finished, one chain per referenced type merges
//! those objects into a sorted, deduplicated id list and pages through it,
//! reading the resources from the source by id. Each referenced resource is
//! therefore exported once, whatever the number of resources pointing to it,
//! and nothing grows in memory with the size of the export but that id list.

use crate::fhir::ids::is_fhir_id;
use crate::model::{Chain, Job};
use crate::ports::object_store::ObjectError;
use crate::ports::services::{ReadSource, StoreObjects};
use crate::ports::source::{Page, SourceError};
use bytes::Bytes;
use std::collections::BTreeSet;

/// Types a compartment export can include as referenced resources.
pub const REFERENCED_TYPES: &[&str] = &["Location", "Medication", "Organization", "Practitioner"];

/// Ids read from the source per page of a referenced-resources chain.
const IDS_PER_PAGE: usize = 500;

/// True for a type exported as referenced resources at Patient and Group level.
pub fn is_referenced_type(t: &str) -> bool {
    REFERENCED_TYPES.contains(&t)
}

fn steps_prefix(job: &Job) -> String {
    format!("{}/.refs/steps/", job.folder)
}

fn ids_key(job: &Job, resource_type: &str) -> String {
    format!("{}/.refs/ids/{resource_type}", job.folder)
}

/// Prefix of the job's working objects (removed when the job completes).
pub fn working_prefix(job: &Job) -> String {
    format!("{}/.refs/", job.folder)
}

/// The `Type/id` a reference string points to, for one of `types`: relative
/// (`Practitioner/1`), versioned (`Practitioner/1/_history/2`) or absolute
/// (`https://host/fhir/Practitioner/1`). Contained (`#x`) and logical
/// references have no such pair.
fn target<'a>(reference: &'a str, types: &[String]) -> Option<(&'a str, &'a str)> {
    let segments: Vec<&str> = reference.split('/').collect();
    segments
        .windows(2)
        .find(|w| types.iter().any(|t| t == w[0]) && is_fhir_id(w[1]))
        .map(|w| (w[0], w[1]))
}

/// References to `types` in NDJSON bytes, as sorted, unique `Type/id`.
pub fn collect(ndjson: &[u8], types: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(text) = std::str::from_utf8(ndjson) else {
        return out;
    };
    const KEY: &str = "\"reference\"";
    for (at, _) in text.match_indices(KEY) {
        let rest = text[at + KEY.len()..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(end) = rest.find('"') else {
            continue;
        };
        let value = &rest[..end];
        if value.contains('\\') {
            // Escapes do not occur in resolvable references.
            continue;
        }
        if let Some((ty, id)) = target(value, types) {
            out.insert(format!("{ty}/{id}"));
        }
    }
    out
}

/// Records the references in the bytes a compartment step is about to
/// upload, under the step's own key (a retry rewrites the same object).
pub async fn record_step(
    svc: &impl StoreObjects,
    job: &Job,
    chain: &Chain,
    ndjson: &[u8],
) -> Result<(), ObjectError> {
    if job.referenced_types.is_empty() || chain.referenced {
        return Ok(());
    }
    let refs = collect(ndjson, &job.referenced_types);
    if refs.is_empty() {
        return Ok(());
    }
    let mut body = refs.into_iter().collect::<Vec<_>>().join("\n");
    body.push('\n');
    let key = format!("{}{}/{:012}", steps_prefix(job), chain.chain_id, chain.step);
    svc.objects().put_object(&key, Bytes::from(body)).await
}

fn unavailable(e: ObjectError) -> SourceError {
    SourceError::Exhausted(format!("reading recorded references: {e}"))
}

/// Merges every step's references to `resource_type` into one sorted,
/// deduplicated id list, stored for the chain's later pages.
async fn build_ids(
    svc: &impl StoreObjects,
    job: &Job,
    resource_type: &str,
) -> Result<Vec<String>, SourceError> {
    let prefix = format!("{resource_type}/");
    let mut ids = BTreeSet::new();
    for key in svc
        .objects()
        .list_keys(&steps_prefix(job))
        .await
        .map_err(unavailable)?
    {
        let Some(body) = svc.objects().get_object(&key).await.map_err(unavailable)? else {
            continue;
        };
        let text = String::from_utf8_lossy(&body);
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .map(str::to_string),
        );
    }
    let ids: Vec<String> = ids.into_iter().collect();
    let body = ids.iter().fold(String::new(), |mut s, id| {
        s.push_str(id);
        s.push('\n');
        s
    });
    svc.objects()
        .put_object(&ids_key(job, resource_type), Bytes::from(body))
        .await
        .map_err(unavailable)?;
    Ok(ids)
}

/// One page of a referenced-resources chain. The cursor is the index of the
/// next id in the merged list; the first page builds that list.
pub async fn fetch_page(
    svc: &(impl ReadSource + StoreObjects),
    job: &Job,
    resource_type: &str,
    cursor: Option<&str>,
) -> Result<Page, SourceError> {
    let (ids, from) = match cursor {
        None => (build_ids(svc, job, resource_type).await?, 0),
        Some(c) => {
            let from: usize = c
                .parse()
                .map_err(|_| SourceError::Permanent("malformed referenced-ids cursor".into()))?;
            let ids = match svc
                .objects()
                .get_object(&ids_key(job, resource_type))
                .await
                .map_err(unavailable)?
            {
                Some(body) => String::from_utf8_lossy(&body)
                    .lines()
                    .map(str::to_string)
                    .collect(),
                // Rebuilt identically: the compartment chains are finished.
                None => build_ids(svc, job, resource_type).await?,
            };
            (ids, from)
        }
    };
    let to = (from + IDS_PER_PAGE).min(ids.len());
    let mut page = if from < to {
        svc.source()
            .fetch_by_ids(resource_type, &ids[from..to])
            .await?
    } else {
        Page::default()
    };
    page.next = (to < ids.len()).then(|| to.to_string());
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> Vec<String> {
        REFERENCED_TYPES.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn collects_each_reference_once_in_every_form() {
        let ndjson = br##"{"resourceType":"Encounter","participant":[{"individual":{"reference":"Practitioner/pr-1"}}],"serviceProvider":{"reference" : "Organization/org.2"}}
{"resourceType":"Observation","performer":[{"reference":"Practitioner/pr-1"},{"reference":"https://ehr.example/fhir/Practitioner/pr-9/_history/3"}],"subject":{"reference":"Patient/p1"}}
{"resourceType":"MedicationRequest","medicationReference":{"reference":"Medication/m1/_history/2"},"contained":[{"reference":"#loc"}],"note":"\"reference\": \"Location/in-text\""}
{"resourceType":"Encounter","location":[{"location":{"reference":"Location/l1","display":"Ward"}}],"x":{"reference":"Location/bad id"}}
"##;
        let got: Vec<String> = collect(ndjson, &types()).into_iter().collect();
        assert_eq!(
            got,
            [
                "Location/l1",
                "Medication/m1",
                "Organization/org.2",
                "Practitioner/pr-1",
                "Practitioner/pr-9"
            ]
        );
    }

    #[test]
    fn only_requested_types_are_collected() {
        let ndjson = br#"{"a":{"reference":"Practitioner/1"},"b":{"reference":"Organization/2"}}"#;
        let got: Vec<String> = collect(ndjson, &["Organization".to_string()])
            .into_iter()
            .collect();
        assert_eq!(got, ["Organization/2"]);
    }
}
