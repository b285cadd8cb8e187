//! Fault-injecting wrappers around the ports: each delegates every call to
//! the real store and lets a test act before or after the calls it cares
//! about (fail them, hold them at a gate, lose the reply of one that applied).

use async_trait::async_trait;
use bulk_export_core::model::{Chain, FileRecord, Job, JobStatus, UploadedPart};
use bulk_export_core::ports::job_store::{
    ChainWrites, FileRecords, JobReads, JobStore, JobWrites, PollCounter, ScheduleLog, StoreError,
};
use bulk_export_core::ports::object_store::{ObjectError, ObjectStore};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Object store calls a hook may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectCall {
    UploadPart,
    Complete,
    PutObject,
}

/// What a test does around object store calls.
#[async_trait]
pub trait ObjectHooks: Send + Sync + 'static {
    /// Before the call reaches the store; an error is the call's answer.
    async fn before(&self, _call: ObjectCall) -> Result<(), ObjectError> {
        Ok(())
    }
    /// After a completion answered `result`; may turn it into another answer.
    fn after_complete(&self, result: Result<(), ObjectError>) -> Result<(), ObjectError> {
        result
    }
}

/// An object store with hooks around the real one.
pub struct HookedObjects<H> {
    pub inner: Arc<dyn ObjectStore>,
    pub hooks: H,
}

#[async_trait]
impl<H: ObjectHooks> ObjectStore for HookedObjects<H> {
    async fn create_upload(&self, key: &str) -> Result<String, ObjectError> {
        self.inner.create_upload(key).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        self.hooks.before(ObjectCall::UploadPart).await?;
        self.inner.upload_part(key, upload_id, n, body).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<(), ObjectError> {
        self.hooks.before(ObjectCall::Complete).await?;
        let result = self.inner.complete_upload(key, upload_id, parts).await;
        self.hooks.after_complete(result)
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        self.inner.abort_upload(key, upload_id).await
    }
    async fn put_object(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.hooks.before(ObjectCall::PutObject).await?;
        self.inner.put_object(key, body).await
    }
    async fn object_size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        self.inner.object_size(key).await
    }
    fn shows_partial_objects(&self) -> bool {
        self.inner.shows_partial_objects()
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, ObjectError> {
        self.inner.presign_get(key, ttl).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), ObjectError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn get_object(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        self.inner.get_object(key).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        self.inner.list_keys(prefix).await
    }
}

/// Job store calls a hook may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCall {
    GetChain,
    SaveChain,
    FinishChain,
    SplitChain,
    PutFile,
}

/// What a test does around job store calls.
pub trait StoreHooks: Send + Sync + 'static {
    /// Before the call reaches the store; an error is the call's answer.
    fn before(&self, _call: StoreCall) -> Result<(), StoreError> {
        Ok(())
    }
    /// After a write applied; an error is a reply lost after the write
    /// landed (the chain's version is then left as the caller sent it, as
    /// the DynamoDB adapter leaves it on an error).
    fn after(&self, _call: StoreCall) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A job store with hooks around the real one.
pub struct HookedStore<H> {
    pub inner: Arc<dyn JobStore>,
    pub hooks: H,
}

#[async_trait]
impl<H: StoreHooks> JobReads for HookedStore<H> {
    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.inner.get_job(id).await
    }
    async fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.inner.active_jobs().await
    }
    async fn get_chain(&self, j: &str, c: &str) -> Result<Option<Chain>, StoreError> {
        self.hooks.before(StoreCall::GetChain)?;
        self.inner.get_chain(j, c).await
    }
    async fn list_chains(&self, j: &str) -> Result<Vec<Chain>, StoreError> {
        self.inner.list_chains(j).await
    }
}

#[async_trait]
impl<H: StoreHooks> JobWrites for HookedStore<H> {
    async fn create_job(&self, job: &Job, chains: &[Chain]) -> Result<(), StoreError> {
        self.inner.create_job(job, chains).await
    }
    async fn set_job_status(
        &self,
        job: &Job,
        status: JobStatus,
        failure: Option<String>,
    ) -> Result<(), StoreError> {
        self.inner.set_job_status(job, status, failure).await
    }
    async fn cancel_job(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.cancel_job(id).await
    }
    async fn delete_job(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete_job(id).await
    }
}

#[async_trait]
impl<H: StoreHooks> ChainWrites for HookedStore<H> {
    async fn save_chain(&self, chain: &mut Chain) -> Result<(), StoreError> {
        self.hooks.before(StoreCall::SaveChain)?;
        let version = chain.version;
        self.inner.save_chain(chain).await?;
        self.hooks
            .after(StoreCall::SaveChain)
            .inspect_err(|_| chain.version = version)
    }
    async fn finish_chain(&self, chain: &mut Chain) -> Result<(), StoreError> {
        self.hooks.before(StoreCall::FinishChain)?;
        let version = chain.version;
        self.inner.finish_chain(chain).await?;
        self.hooks
            .after(StoreCall::FinishChain)
            .inspect_err(|_| chain.version = version)
    }
    async fn split_chain(
        &self,
        chain: &mut Chain,
        new: &[Chain],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.hooks.before(StoreCall::SplitChain)?;
        let version = chain.version;
        self.inner.split_chain(chain, new, expires_at).await?;
        self.hooks
            .after(StoreCall::SplitChain)
            .inspect_err(|_| chain.version = version)
    }
}

#[async_trait]
impl<H: StoreHooks> FileRecords for HookedStore<H> {
    async fn put_file(&self, job_id: &str, file: &FileRecord) -> Result<(), StoreError> {
        self.hooks.before(StoreCall::PutFile)?;
        self.inner.put_file(job_id, file).await?;
        self.hooks.after(StoreCall::PutFile)
    }
    async fn list_files(&self, job_id: &str) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.list_files(job_id).await
    }
    async fn get_file(&self, j: &str, t: &str, n: u32) -> Result<Option<FileRecord>, StoreError> {
        self.inner.get_file(j, t, n).await
    }
    async fn next_file_number(&self, j: &str, t: &str, e: i64) -> Result<u32, StoreError> {
        self.inner.next_file_number(j, t, e).await
    }
}

#[async_trait]
impl<H: StoreHooks> PollCounter for HookedStore<H> {
    async fn record_poll(&self, j: &str, now: i64, w: i64) -> Result<u64, StoreError> {
        self.inner.record_poll(j, now, w).await
    }
}

#[async_trait]
impl<H: StoreHooks> ScheduleLog for HookedStore<H> {
    async fn record_schedule_success(&self, s: &str, t: &str) -> Result<(), StoreError> {
        self.inner.record_schedule_success(s, t).await
    }
    async fn last_schedule_success(&self, s: &str) -> Result<Option<String>, StoreError> {
        self.inner.last_schedule_success(s).await
    }
}
