//! [`JobStore`] over DynamoDB: one table, `pk = JOB#<id>`, `sk` distinguishes
//! the job item, its chains, its files and its file-number counters.

use crate::model::{Chain, FileRecord, Job, JobStatus};
use crate::ports::job_store::{
    ChainWrites, FileRecords, JobReads, JobWrites, PollCounter, ScheduleLog, StoreError,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};
use std::collections::HashMap;
use std::sync::Arc;

mod active;
mod members;

const JOB_SK: &str = "JOB";

/// Most items in one BatchWriteItem (DynamoDB's limit).
const BATCH_WRITE_ITEMS: usize = 25;
/// BatchWriteItem requests in flight at once when a job is created.
const BATCH_WRITES_AT_ONCE: usize = 8;
/// Job reads in flight at once when the active-job registry is read.
const REGISTRY_READS_AT_ONCE: usize = 16;
/// Sends of one batch before its unprocessed items are an error.
const BATCH_WRITE_ATTEMPTS: u32 = 8;

/// DynamoDB-backed job store.
#[derive(Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    members: Arc<members::MemberCache>,
}

fn pk(job_id: &str) -> AttributeValue {
    AttributeValue::S(format!("JOB#{job_id}"))
}

/// Sort keys of chain items: `CHAIN#<chain id>`.
const CHAIN_PREFIX: &str = "CHAIN#";

fn chain_sk(chain_id: &str) -> AttributeValue {
    AttributeValue::S(format!("{CHAIN_PREFIX}{chain_id}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// Every item of a paginated Query or Scan: `page` reads one page from an
/// exclusive start key and returns its items and the next start key.
async fn all_pages<F, Fut>(mut page: F) -> Result<Vec<Item>, StoreError>
where
    F: FnMut(Option<Item>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<Item>, Option<Item>), StoreError>>,
{
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let (found, next) = page(start.take()).await?;
        items.extend(found);
        match next {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return Ok(items),
        }
    }
}

/// A conditional write's result: a failed condition is a lost race.
fn conditional<T, E, R>(resp: Result<T, SdkError<E, R>>) -> Result<(), StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match resp {
        Ok(_) => Ok(()),
        Err(e) if is_conditional_failure(&e) => Err(StoreError::Conflict),
        Err(e) => Err(backend(e)),
    }
}

/// A version-conditioned chain write's result: the version moves on when it
/// applied; a failed condition is a lost race.
fn versioned<T, E, R>(resp: Result<T, SdkError<E, R>>, chain: &mut Chain) -> Result<(), StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    conditional(resp)?;
    chain.version += 1;
    Ok(())
}

/// A random name for one write, stored with the item (`writer`): the SDK
/// retries a write whose reply was lost, and the retry's failed condition
/// then shows our own write (`ReturnValuesOnConditionCheckFailure=ALL_OLD`),
/// not a lost race. Transactions need no name: the SDK gives each a
/// `ClientRequestToken`, so DynamoDB applies a retried one once.
fn write_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether the item a failed condition returned is the one this write
/// (named `token`) stored.
fn wrote_it(old: Option<&Item>, token: &str) -> bool {
    old.and_then(|i| i.get("writer"))
        .and_then(|v| v.as_s().ok())
        .is_some_and(|w| w == token)
}

fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(se) => matches!(
            se.err().code(),
            Some("ConditionalCheckFailedException") | Some("TransactionCanceledException")
        ),
        _ => false,
    }
}

type Item = HashMap<String, AttributeValue>;

/// The item an UpdateItem's failed condition returned (with ALL_OLD).
fn update_old_item(e: &SdkError<UpdateItemError, HttpResponse>) -> Option<&Item> {
    match e.as_service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item(),
        _ => None,
    }
}

fn attr_str<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| StoreError::Corrupt(format!("missing {name}")))
}

fn attr_num(item: &Item, name: &str) -> Result<i64, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("missing {name}")))
}

fn decode_job(item: &Item) -> Result<Job, StoreError> {
    let mut job: Job = serde_json::from_str(attr_str(item, "doc")?)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    job.status = JobStatus::parse(attr_str(item, "status")?)
        .ok_or_else(|| StoreError::Corrupt("status".into()))?;
    job.version = attr_num(item, "version")? as u64;
    job.chains_remaining = attr_num(item, "remaining")?;
    Ok(job)
}

fn decode_chain(item: &Item) -> Result<Chain, StoreError> {
    let mut chain: Chain = serde_json::from_str(attr_str(item, "doc")?)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    chain.version = attr_num(item, "version")? as u64;
    Ok(chain)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl DynamoJobStore {
    /// Wraps a client and table name.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            members: Arc::default(),
        }
    }

    /// Creates the table (with TTL on `ttl`) if it does not exist; for local runs and tests.
    pub async fn ensure_table(&self) -> Result<(), StoreError> {
        if self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        let key = |name: &str, kt: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kt)
                .build()
        };
        let def = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash).map_err(backend)?)
            .key_schema(key("sk", KeyType::Range).map_err(backend)?)
            .attribute_definitions(def("pk").map_err(backend)?)
            .attribute_definitions(def("sk").map_err(backend)?)
            .send()
            .await;
        if let Err(e) = created {
            // Another process may have created it concurrently.
            let exists =
                matches!(&e, SdkError::ServiceError(se) if se.err().is_resource_in_use_exception());
            if !exists {
                return Err(backend(e));
            }
        }
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
            .map_err(backend)?;
        // TTL is a backstop for expiry; an emulator without it is still usable.
        if let Err(e) = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
        {
            tracing::warn!(error = ?e, "could not enable TTL on the job table");
        }
        Ok(())
    }

    /// An UpdateItem on a job's own item.
    fn update_job_item(
        &self,
        job_id: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(job_id))
            .key("sk", s(JOB_SK))
    }

    /// One item by key, read consistently (a step must see the last commit).
    async fn get_item(
        &self,
        pk: AttributeValue,
        sk: AttributeValue,
    ) -> Result<Option<Item>, StoreError> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        Ok(resp.item)
    }

    async fn query_prefix(&self, job_id: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        all_pages(|start| async move {
            // DynamoDB refuses an empty string in a key condition, so "every
            // item of the job" is a condition on the partition key alone.
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", pk(job_id));
            let query = if prefix.is_empty() {
                query.key_condition_expression("pk = :pk")
            } else {
                query
                    .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                    .expression_attribute_values(":p", s(prefix))
            };
            let resp = query
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            Ok((resp.items.unwrap_or_default(), resp.last_evaluated_key))
        })
        .await
    }

    /// Writes a new job's chain items, 25 to a BatchWriteItem (DynamoDB's
    /// limit) and several batches at once, so a Group of many batches is
    /// stored within an API Gateway request.
    async fn put_chains(&self, job: &Job, chains: &[Chain]) -> Result<(), StoreError> {
        let items = chains
            .iter()
            .map(|chain| {
                Ok(HashMap::from([
                    ("pk".to_string(), pk(&job.id)),
                    ("sk".to_string(), chain_sk(&chain.chain_id)),
                    ("doc".to_string(), s(encode(chain)?)),
                    ("version".to_string(), n(0)),
                    ("ttl".to_string(), n(job.expires_at)),
                ]))
            })
            .collect::<Result<Vec<Item>, StoreError>>()?;
        self.put_items(items).await
    }

    /// Puts items with BatchWriteItem, 25 to a request and several requests
    /// at once; items DynamoDB leaves unprocessed (throttling) are sent
    /// again with a growing pause.
    async fn put_items(&self, items: Vec<Item>) -> Result<(), StoreError> {
        use futures::{StreamExt, TryStreamExt};
        let requests = items
            .into_iter()
            .map(|item| {
                let put = aws_sdk_dynamodb::types::PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map_err(backend)?;
                Ok(aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(put)
                    .build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        futures::stream::iter(requests.chunks(BATCH_WRITE_ITEMS).map(<[_]>::to_vec))
            .map(|batch| self.batch_write(batch))
            .buffer_unordered(BATCH_WRITES_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Lists a job in the active-job registry (before its item exists).
    async fn register(&self, job: &Job) -> Result<(), StoreError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(active::REGISTRY_PK))
            .key("sk", s(active::REGISTRY_SK))
            .update_expression("ADD #ids :e")
            .expression_attribute_names("#ids", active::IDS_ATTR)
            .expression_attribute_values(":e", AttributeValue::Ss(vec![active::entry(job, now)]))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn unregister(&self, entries: Vec<String>) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(active::REGISTRY_PK))
            .key("sk", s(active::REGISTRY_SK))
            .update_expression("DELETE #ids :e")
            .expression_attribute_names("#ids", active::IDS_ATTR)
            .expression_attribute_values(":e", AttributeValue::Ss(entries))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// A job from its item, with members stored beside it joined back in.
    async fn job_from_item(&self, item: &Item) -> Result<Job, StoreError> {
        let mut job = decode_job(item)?;
        let count = members::item_count(item);
        if count == 0 {
            return Ok(job);
        }
        let ids = match self.members.get(&job.id) {
            Some(ids) => ids,
            None => {
                let items = self.query_prefix(&job.id, members::MEMBERS_PREFIX).await?;
                let ids = Arc::new(members::join(&items, count)?);
                self.members.put(&job.id, ids.clone());
                ids
            }
        };
        job.scope = crate::model::PatientScope::Members(ids.to_vec());
        Ok(job)
    }

    /// One BatchWriteItem, sent again for what DynamoDB left unprocessed.
    async fn batch_write(
        &self,
        mut batch: Vec<aws_sdk_dynamodb::types::WriteRequest>,
    ) -> Result<(), StoreError> {
        for attempt in 0..BATCH_WRITE_ATTEMPTS {
            if attempt > 0 {
                let pause = std::time::Duration::from_millis(50 << attempt.min(6));
                tokio::time::sleep(pause).await;
            }
            let resp = self
                .client
                .batch_write_item()
                .request_items(&self.table, batch)
                .send()
                .await
                .map_err(backend)?;
            batch = resp
                .unprocessed_items
                .and_then(|mut left| left.remove(&self.table))
                .unwrap_or_default();
            if batch.is_empty() {
                return Ok(());
            }
        }
        Err(StoreError::Backend(
            format!(
                "{} chain items still unprocessed after {BATCH_WRITE_ATTEMPTS} batch writes",
                batch.len()
            )
            .into(),
        ))
    }

    fn chain_update(&self, chain: &Chain, token: &str) -> Result<Update, StoreError> {
        Update::builder()
            .table_name(&self.table)
            .key("pk", pk(&chain.job_id))
            .key("sk", chain_sk(&chain.chain_id))
            .update_expression("SET doc = :doc, version = :next, writer = :w")
            .condition_expression("version = :v")
            .expression_attribute_values(":doc", s(encode(chain)?))
            .expression_attribute_values(":w", s(token))
            .expression_attribute_values(":next", n(chain.version + 1))
            .expression_attribute_values(":v", n(chain.version))
            .build()
            .map_err(backend)
    }
}

#[async_trait]
impl JobReads for DynamoJobStore {
    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        match self.get_item(pk(job_id), s(JOB_SK)).await? {
            Some(item) => Ok(Some(self.job_from_item(&item).await?)),
            None => Ok(None),
        }
    }

    async fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        let registry = self
            .get_item(s(active::REGISTRY_PK), s(active::REGISTRY_SK))
            .await?;
        let entries = active::entries(registry.as_ref());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let read: Vec<(String, Option<Job>)> = futures::stream::iter(entries)
            .map(|entry| async move {
                let Some((_, id)) = active::parse(&entry) else {
                    return Ok((entry, None));
                };
                let job = self.get_job(id).await?;
                Ok::<_, StoreError>((entry, job))
            })
            .buffer_unordered(REGISTRY_READS_AT_ONCE)
            .try_collect()
            .await?;
        let mut jobs = Vec::new();
        let mut finished = Vec::new();
        for (entry, job) in read {
            match job {
                Some(job) if active::is_active(&job) => jobs.push(job),
                Some(_) => finished.push(entry),
                None => {
                    let old = active::parse(&entry)
                        .is_none_or(|(t, _)| t < now - active::MISSING_GRACE_SECS);
                    if old {
                        finished.push(entry);
                    }
                }
            }
        }
        if !finished.is_empty() {
            // Best effort: a later reader drops them otherwise.
            if let Err(e) = self.unregister(finished).await {
                tracing::warn!(error = %e, "could not prune the active-job registry");
            }
        }
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(jobs)
    }

    async fn get_chain(&self, job_id: &str, chain_id: &str) -> Result<Option<Chain>, StoreError> {
        self.get_item(pk(job_id), chain_sk(chain_id))
            .await?
            .as_ref()
            .map(decode_chain)
            .transpose()
    }

    async fn list_chains(&self, job_id: &str) -> Result<Vec<Chain>, StoreError> {
        self.query_prefix(job_id, CHAIN_PREFIX)
            .await?
            .iter()
            .map(decode_chain)
            .collect()
    }
}

#[async_trait]
impl JobWrites for DynamoJobStore {
    async fn create_job(&self, job: &Job, chains: &[Chain]) -> Result<(), StoreError> {
        // Registry, chains and members first: a job item only exists once
        // they do. A job that starts complete (no chains) is never active.
        if active::is_active_when_created(job, chains.len()) {
            self.register(job).await?;
        }
        self.put_chains(job, chains).await?;
        let (stored, spilled) = members::split(job);
        let member_items = match spilled {
            Some(ids) => members::items(job, ids)?,
            None => Vec::new(),
        };
        let member_count = member_items.len();
        self.put_items(member_items).await?;
        let token = write_token();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", pk(&job.id))
            .item("sk", s(JOB_SK))
            .item("doc", s(encode(&stored)?))
            .item("status", s(job.status.as_str()))
            .item("version", n(0))
            .item("remaining", n(chains.len()))
            .item("owner", s(&job.owner))
            .item("ttl", n(job.expires_at))
            .item("writer", s(&token));
        let put = if member_count > 0 {
            put.item(members::MEMBER_ITEMS_ATTR, n(member_count))
        } else {
            put
        };
        let put = put
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let own = |e: &SdkError<PutItemError, HttpResponse>| match e.as_service_error() {
            Some(PutItemError::ConditionalCheckFailedException(c)) => wrote_it(c.item(), &token),
            _ => false,
        };
        match put {
            Ok(_) => Ok(()),
            Err(e) if own(&e) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(StoreError::Conflict),
            Err(e) => Err(backend(e)),
        }
    }

    async fn set_job_status(
        &self,
        job: &Job,
        status: JobStatus,
        failure: Option<String>,
    ) -> Result<(), StoreError> {
        // Members stored beside the job item are never written again.
        let (mut doc, _) = members::split(job);
        doc.failure = failure;
        let token = write_token();
        let resp = self
            .update_job_item(&job.id)
            .update_expression("SET #st = :s, doc = :doc, version = :next, writer = :w")
            .condition_expression("version = :v")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":s", s(status.as_str()))
            .expression_attribute_values(":doc", s(encode(&doc)?))
            .expression_attribute_values(":next", n(job.version + 1))
            .expression_attribute_values(":v", n(job.version))
            .expression_attribute_values(":w", s(&token))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        if let Err(e) = &resp
            && wrote_it(update_old_item(e), &token)
        {
            return Ok(());
        }
        conditional(resp)
    }

    async fn cancel_job(&self, job_id: &str) -> Result<bool, StoreError> {
        let token = write_token();
        let resp = self
            .update_job_item(job_id)
            .update_expression("SET #st = :c, writer = :w ADD version :one")
            .condition_expression("attribute_exists(pk) AND #st <> :c")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":c", s(JobStatus::Cancelled.as_str()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":w", s(&token))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(e) if wrote_it(update_old_item(&e), &token) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), StoreError> {
        for item in self.query_prefix(job_id, "").await? {
            let sk = attr_str(&item, "sk")?.to_string();
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", pk(job_id))
                .key("sk", s(sk))
                .send()
                .await
                .map_err(backend)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ChainWrites for DynamoJobStore {
    async fn save_chain(&self, chain: &mut Chain) -> Result<(), StoreError> {
        let token = write_token();
        let u = self.chain_update(chain, &token)?;
        let resp = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(&chain.job_id))
            .key("sk", chain_sk(&chain.chain_id))
            .update_expression(u.update_expression())
            .condition_expression(u.condition_expression().unwrap_or_default())
            .set_expression_attribute_values(u.expression_attribute_values().cloned())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        if let Err(e) = &resp
            && wrote_it(update_old_item(e), &token)
        {
            chain.version += 1;
            return Ok(());
        }
        versioned(resp, chain)
    }

    async fn finish_chain(&self, chain: &mut Chain) -> Result<(), StoreError> {
        let job_update = Update::builder()
            .table_name(&self.table)
            .key("pk", pk(&chain.job_id))
            .key("sk", s(JOB_SK))
            .update_expression("ADD remaining :minus")
            .expression_attribute_values(":minus", n(-1))
            .build()
            .map_err(backend)?;
        let resp = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .update(self.chain_update(chain, &write_token())?)
                    .build(),
            )
            .transact_items(TransactWriteItem::builder().update(job_update).build())
            .send()
            .await;
        versioned(resp, chain)
    }

    async fn split_chain(
        &self,
        chain: &mut Chain,
        new: &[Chain],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let job_update = Update::builder()
            .table_name(&self.table)
            .key("pk", pk(&chain.job_id))
            .key("sk", s(JOB_SK))
            .update_expression("ADD remaining :more")
            .expression_attribute_values(":more", n(new.len()))
            .build()
            .map_err(backend)?;
        let mut tx = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .update(self.chain_update(chain, &write_token())?)
                    .build(),
            )
            .transact_items(TransactWriteItem::builder().update(job_update).build());
        for c in new {
            let put = Put::builder()
                .table_name(&self.table)
                .item("pk", pk(&c.job_id))
                .item("sk", chain_sk(&c.chain_id))
                .item("doc", s(encode(c)?))
                .item("version", n(0))
                .item("ttl", n(expires_at))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(backend)?;
            tx = tx.transact_items(TransactWriteItem::builder().put(put).build());
        }
        match tx.send().await {
            Ok(_) => {
                chain.version += 1;
                Ok(())
            }
            Err(e) if is_conditional_failure(&e) => Err(StoreError::Conflict),
            Err(e) => Err(backend(e)),
        }
    }
}

#[async_trait]
impl FileRecords for DynamoJobStore {
    async fn put_file(&self, job_id: &str, file: &FileRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", pk(job_id))
            .item(
                "sk",
                s(format!("FILE#{}#{:08}", file.resource_type, file.number)),
            )
            .item("doc", s(encode(file)?))
            // Expires with its job (the files themselves expire by the
            // bucket's lifecycle rule).
            .item("ttl", n(file.expires_at))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_file(
        &self,
        job_id: &str,
        resource_type: &str,
        number: u32,
    ) -> Result<Option<FileRecord>, StoreError> {
        let sk = s(format!("FILE#{resource_type}#{number:08}"));
        match self.get_item(pk(job_id), sk).await? {
            Some(item) => serde_json::from_str(attr_str(&item, "doc")?)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    async fn list_files(&self, job_id: &str) -> Result<Vec<FileRecord>, StoreError> {
        self.query_prefix(job_id, "FILE#")
            .await?
            .iter()
            .map(|item| {
                serde_json::from_str(attr_str(item, "doc")?)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn next_file_number(
        &self,
        job_id: &str,
        resource_type: &str,
        expires_at: i64,
    ) -> Result<u32, StoreError> {
        let resp = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(job_id))
            .key("sk", s(format!("SEQ#{resource_type}")))
            .update_expression("ADD next_number :one SET #ttl = :ttl")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(expires_at))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(backend)?;
        let attrs = resp.attributes.unwrap_or_default();
        Ok(attr_num(&attrs, "next_number")? as u32)
    }
}

#[async_trait]
impl PollCounter for DynamoJobStore {
    async fn record_poll(
        &self,
        job_id: &str,
        now: i64,
        window_secs: i64,
    ) -> Result<u64, StoreError> {
        let polls_of = |attrs: Option<Item>| {
            attrs.and_then(|a| attr_num(&a, "polls").ok()).unwrap_or(1) as u64
        };
        let within = self
            .update_job_item(job_id)
            .update_expression("ADD polls :one")
            .condition_expression("attribute_exists(pk) AND poll_window > :cutoff")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":cutoff", n(now - window_secs))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await;
        match within {
            Ok(r) => return Ok(polls_of(r.attributes)),
            Err(e) if is_conditional_failure(&e) => {}
            Err(e) => return Err(backend(e)),
        }
        let fresh = self
            .update_job_item(job_id)
            .update_expression("SET poll_window = :now, polls = :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match fresh {
            Ok(_) => Ok(1),
            Err(e) if is_conditional_failure(&e) => Ok(1),
            Err(e) => Err(backend(e)),
        }
    }
}

#[async_trait]
impl ScheduleLog for DynamoJobStore {
    async fn record_schedule_success(
        &self,
        schedule: &str,
        transaction_time: &str,
    ) -> Result<(), StoreError> {
        // Instants are stored in one UTC millisecond format, so string order is time order.
        let resp = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("SCHEDULE#{schedule}")))
            .item("sk", s("LAST"))
            .item("tx", s(transaction_time))
            .condition_expression("attribute_not_exists(tx) OR tx < :t")
            .expression_attribute_values(":t", s(transaction_time))
            .send()
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn last_schedule_success(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        let item = self
            .get_item(s(format!("SCHEDULE#{schedule}")), s("LAST"))
            .await?;
        Ok(item
            .as_ref()
            .and_then(|i| i.get("tx"))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }
}
