//! A Group's member list outside the job item. DynamoDB caps an item at
//! 400 KB and a 20,000-member list is ~780 KB, so beyond
//! [`INLINE_MEMBERS`] the ids move to `MEMBERS#nnnn` items of the job's
//! partition, written (like chains) before the job item exists. A job's
//! members never change, so each process reads them once per job.

use super::{Item, StoreError, attr_num, attr_str, n, pk, s};
use crate::model::{Job, PatientScope};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Members kept in the job item itself.
pub const INLINE_MEMBERS: usize = 1_000;
/// Ids per member item: FHIR ids are at most 64 characters, so an item
/// stays under ~270 KB.
pub const MEMBERS_PER_ITEM: usize = 4_000;
/// Jobs whose member lists one process keeps.
const CACHED_JOBS: usize = 16;

pub const MEMBERS_PREFIX: &str = "MEMBERS#";
/// Job item attribute: how many member items hold the job's members.
pub const MEMBER_ITEMS_ATTR: &str = "member_items";

/// The job as stored in its item, and the member ids stored beside it.
pub fn split(job: &Job) -> (Job, Option<&[String]>) {
    match &job.scope {
        PatientScope::Members(ids) if ids.len() > INLINE_MEMBERS => {
            let mut stored = job.clone();
            stored.scope = PatientScope::Members(Vec::new());
            (stored, Some(ids))
        }
        _ => (job.clone(), None),
    }
}

/// The member items of a job, in order.
pub fn items(job: &Job, ids: &[String]) -> Result<Vec<Item>, StoreError> {
    ids.chunks(MEMBERS_PER_ITEM)
        .enumerate()
        .map(|(i, chunk)| {
            let json =
                serde_json::to_string(chunk).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(HashMap::from([
                ("pk".to_string(), pk(&job.id)),
                ("sk".to_string(), s(format!("{MEMBERS_PREFIX}{i:04}"))),
                ("ids".to_string(), s(json)),
                ("ttl".to_string(), n(job.expires_at)),
            ]))
        })
        .collect()
}

/// How many member items a job item says there are (0: members inline).
pub fn item_count(job_item: &Item) -> usize {
    job_item
        .get(MEMBER_ITEMS_ATTR)
        .map(|_| attr_num(job_item, MEMBER_ITEMS_ATTR).unwrap_or(0))
        .unwrap_or(0)
        .max(0) as usize
}

/// Joins member items (any order) back into the sorted id list.
pub fn join(items: &[Item], expected: usize) -> Result<Vec<String>, StoreError> {
    if items.len() != expected {
        return Err(StoreError::Corrupt(format!(
            "{} of {expected} member items",
            items.len()
        )));
    }
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_by_key(|i| attr_str(i, "sk").unwrap_or("").to_string());
    let mut ids = Vec::new();
    for item in sorted {
        let chunk: Vec<String> = serde_json::from_str(attr_str(item, "ids")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        ids.extend(chunk);
    }
    Ok(ids)
}

/// Member lists by job id, for this process.
#[derive(Default)]
pub struct MemberCache(Mutex<HashMap<String, Arc<Vec<String>>>>);

impl MemberCache {
    pub fn get(&self, job_id: &str) -> Option<Arc<Vec<String>>> {
        self.0.lock().ok()?.get(job_id).cloned()
    }

    pub fn put(&self, job_id: &str, ids: Arc<Vec<String>>) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= CACHED_JOBS {
                m.clear();
            }
            m.insert(job_id.to_string(), ids);
        }
    }
}
