//! [`JobStore`](crate::ports::job_store::JobStore) in memory, with the
//! DynamoDB adapter's semantics item by item.

use super::lock;
use crate::model::{Chain, FileRecord, Job, JobStatus};
use crate::ports::job_store::{
    ChainWrites, FileRecords, JobReads, JobWrites, PollCounter, ScheduleLog, StoreError,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The job item: the document plus the attributes DynamoDB keeps beside it
/// (the authoritative status, version and chain counter, the poll window).
#[derive(Debug, Clone)]
struct JobItem {
    doc: Job,
    status: JobStatus,
    version: u64,
    remaining: i64,
    /// Start of the current poll window and the polls counted in it.
    polls: Option<(i64, u64)>,
}

impl JobItem {
    fn decode(&self) -> Job {
        let mut job = self.doc.clone();
        job.status = self.status;
        job.version = self.version;
        job.chains_remaining = self.remaining;
        job
    }
}

/// Every item of one job (one DynamoDB partition, `pk = JOB#<id>`). Chains
/// may exist without the job item, as in DynamoDB, where `create_job`
/// writes them first.
#[derive(Debug, Default)]
struct Partition {
    job: Option<JobItem>,
    /// By chain id (the order of `sk = CHAIN#<id>`).
    chains: BTreeMap<String, Chain>,
    /// By `<type>#<number:08>` (the order of `sk = FILE#...`).
    files: BTreeMap<String, FileRecord>,
    /// Last file number allocated per resource type.
    sequences: BTreeMap<String, u32>,
}

#[derive(Debug, Default)]
struct State {
    jobs: BTreeMap<String, Partition>,
    /// Last successful transaction time per schedule.
    schedules: BTreeMap<String, String>,
}

/// In-memory job store; clones share the same state.
///
/// Differences from DynamoDB that no caller can observe through a successful
/// operation: `finish_chain` and `split_chain` on a chain whose job item is
/// gone leave no job item behind (DynamoDB's `ADD` creates a bare one that
/// later reads as corrupt), and `delete_job` removes a job's items at once
/// (DynamoDB deletes them one by one).
#[derive(Debug, Clone, Default)]
pub struct MemoryJobStore {
    state: Arc<Mutex<State>>,
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of jobs with a job item (for test assertions).
    pub fn job_count(&self) -> usize {
        lock(&self.state)
            .jobs
            .values()
            .filter(|p| p.job.is_some())
            .count()
    }
}

/// DynamoDB's limit on the items of one transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;

fn file_sort_key(file: &FileRecord) -> String {
    format!("{}#{:08}", file.resource_type, file.number)
}

/// The conditional update of a chain (`version = :v`): the stored chain
/// must exist with the caller's version.
fn check_chain_version(partition: Option<&Partition>, chain: &Chain) -> Result<(), StoreError> {
    match partition.and_then(|p| p.chains.get(&chain.chain_id)) {
        Some(stored) if stored.version == chain.version => Ok(()),
        _ => Err(StoreError::Conflict),
    }
}

/// Writes `chain` with the next version (its condition already checked).
fn commit_chain(partition: &mut Partition, chain: &mut Chain) {
    chain.version += 1;
    partition
        .chains
        .insert(chain.chain_id.clone(), chain.clone());
}

/// `ADD remaining :delta` on the job item, if there is one.
fn add_remaining(partition: &mut Partition, delta: i64) {
    if let Some(item) = partition.job.as_mut() {
        item.remaining += delta;
    }
}

#[async_trait]
impl JobReads for MemoryJobStore {
    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .jobs
            .get(job_id)
            .and_then(|p| p.job.as_ref())
            .map(JobItem::decode))
    }

    async fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .jobs
            .values()
            .filter_map(|p| p.job.as_ref())
            .filter(|item| match item.status {
                JobStatus::Queued | JobStatus::Running => true,
                JobStatus::Cancelled => item.remaining > 0,
                _ => false,
            })
            .map(JobItem::decode)
            .collect())
    }

    async fn get_chain(&self, job_id: &str, chain_id: &str) -> Result<Option<Chain>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .jobs
            .get(job_id)
            .and_then(|p| p.chains.get(chain_id))
            .cloned())
    }

    async fn list_chains(&self, job_id: &str) -> Result<Vec<Chain>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .jobs
            .get(job_id)
            .map(|p| p.chains.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl JobWrites for MemoryJobStore {
    async fn create_job(&self, job: &Job, chains: &[Chain]) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let partition = state.jobs.entry(job.id.clone()).or_default();
        // As in DynamoDB: the chains are put (unconditionally, at version 0)
        // before the job item, which is put only if it does not exist.
        for chain in chains {
            let mut stored = chain.clone();
            stored.version = 0;
            partition.chains.insert(stored.chain_id.clone(), stored);
        }
        if partition.job.is_some() {
            return Err(StoreError::Conflict);
        }
        partition.job = Some(JobItem {
            doc: job.clone(),
            status: job.status,
            version: 0,
            remaining: chains.len() as i64,
            polls: None,
        });
        Ok(())
    }

    async fn set_job_status(
        &self,
        job: &Job,
        status: JobStatus,
        failure: Option<String>,
    ) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let item = state
            .jobs
            .get_mut(&job.id)
            .and_then(|p| p.job.as_mut())
            .filter(|item| item.version == job.version)
            .ok_or(StoreError::Conflict)?;
        let mut doc = job.clone();
        doc.failure = failure;
        item.doc = doc;
        item.status = status;
        item.version = job.version + 1;
        Ok(())
    }

    async fn cancel_job(&self, job_id: &str) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        match state.jobs.get_mut(job_id).and_then(|p| p.job.as_mut()) {
            Some(item) if item.status != JobStatus::Cancelled => {
                item.status = JobStatus::Cancelled;
                item.version += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), StoreError> {
        lock(&self.state).jobs.remove(job_id);
        Ok(())
    }
}

#[async_trait]
impl ChainWrites for MemoryJobStore {
    async fn save_chain(&self, chain: &mut Chain) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        check_chain_version(state.jobs.get(&chain.job_id), chain)?;
        let partition = state.jobs.entry(chain.job_id.clone()).or_default();
        commit_chain(partition, chain);
        Ok(())
    }

    async fn finish_chain(&self, chain: &mut Chain) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        check_chain_version(state.jobs.get(&chain.job_id), chain)?;
        let partition = state.jobs.entry(chain.job_id.clone()).or_default();
        commit_chain(partition, chain);
        add_remaining(partition, -1);
        Ok(())
    }

    async fn split_chain(
        &self,
        chain: &mut Chain,
        new: &[Chain],
        _expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        // DynamoDB refuses a transaction of more than 100 items or with two
        // operations on one item (a ValidationException, not a failed
        // condition).
        if new.len() + 2 > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::Backend(
                format!("a transaction holds at most {MAX_TRANSACTION_ITEMS} items").into(),
            ));
        }
        let mut items = BTreeSet::from([(chain.job_id.as_str(), chain.chain_id.as_str())]);
        for c in new {
            if !items.insert((c.job_id.as_str(), c.chain_id.as_str())) {
                return Err(StoreError::Backend(
                    format!(
                        "transaction names chain {} of job {} twice",
                        c.chain_id, c.job_id
                    )
                    .into(),
                ));
            }
        }
        check_chain_version(state.jobs.get(&chain.job_id), chain)?;
        let sibling_exists = new.iter().any(|c| {
            state
                .jobs
                .get(&c.job_id)
                .is_some_and(|p| p.chains.contains_key(&c.chain_id))
        });
        if sibling_exists {
            return Err(StoreError::Conflict);
        }
        for c in new {
            let mut stored = c.clone();
            stored.version = 0;
            state
                .jobs
                .entry(c.job_id.clone())
                .or_default()
                .chains
                .insert(stored.chain_id.clone(), stored);
        }
        let partition = state.jobs.entry(chain.job_id.clone()).or_default();
        commit_chain(partition, chain);
        add_remaining(partition, new.len() as i64);
        Ok(())
    }
}

#[async_trait]
impl FileRecords for MemoryJobStore {
    async fn put_file(&self, job_id: &str, file: &FileRecord) -> Result<(), StoreError> {
        lock(&self.state)
            .jobs
            .entry(job_id.to_string())
            .or_default()
            .files
            .insert(file_sort_key(file), file.clone());
        Ok(())
    }

    async fn get_file(
        &self,
        job_id: &str,
        resource_type: &str,
        number: u32,
    ) -> Result<Option<FileRecord>, StoreError> {
        let key = format!("{resource_type}#{number:08}");
        Ok(lock(&self.state)
            .jobs
            .get(job_id)
            .and_then(|p| p.files.get(&key).cloned()))
    }

    async fn list_files(&self, job_id: &str) -> Result<Vec<FileRecord>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .jobs
            .get(job_id)
            .map(|p| p.files.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn next_file_number(
        &self,
        job_id: &str,
        resource_type: &str,
        _expires_at: i64,
    ) -> Result<u32, StoreError> {
        let mut state = lock(&self.state);
        let last = state
            .jobs
            .entry(job_id.to_string())
            .or_default()
            .sequences
            .entry(resource_type.to_string())
            .or_insert(0);
        *last += 1;
        Ok(*last)
    }
}

#[async_trait]
impl PollCounter for MemoryJobStore {
    async fn record_poll(
        &self,
        job_id: &str,
        now: i64,
        window_secs: i64,
    ) -> Result<u64, StoreError> {
        let mut state = lock(&self.state);
        let Some(item) = state.jobs.get_mut(job_id).and_then(|p| p.job.as_mut()) else {
            return Ok(1);
        };
        match item.polls.as_mut() {
            Some((start, polls)) if *start > now - window_secs => {
                *polls += 1;
                Ok(*polls)
            }
            _ => {
                item.polls = Some((now, 1));
                Ok(1)
            }
        }
    }
}

#[async_trait]
impl ScheduleLog for MemoryJobStore {
    async fn record_schedule_success(
        &self,
        schedule: &str,
        transaction_time: &str,
    ) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let forward = state
            .schedules
            .get(schedule)
            .is_none_or(|last| last.as_str() < transaction_time);
        if forward {
            state
                .schedules
                .insert(schedule.to_string(), transaction_time.to_string());
        }
        Ok(())
    }

    async fn last_schedule_success(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        Ok(lock(&self.state).schedules.get(schedule).cloned())
    }
}
