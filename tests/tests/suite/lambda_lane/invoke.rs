//! The Lambda Invoke API and asynchronous invocation as Lambda runs it:
//! `Event` answers 202 and is queued; each event is delivered at least once
//! (now and then twice); a failed delivery (error, crash, timeout) is retried
//! per the function's EventInvokeConfig, then sent to its on-failure
//! destination (a Lambda destination record) and its dead-letter queue (the
//! payload), both with the function's own role. `RequestResponse` answers
//! with the result. Retry delays are Lambda's (1 min, then 2 min) scaled by
//! `LaneTiming::retry_unit`.

use super::iam::Iam;
use super::runtime::{FunctionPool, InvokeError};
use super::stack::FunctionSpec;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Lambda's asynchronous payload limit (the conservative documented 256 KB).
pub const MAX_ASYNC_PAYLOAD: usize = 256 * 1024;
/// Lambda's synchronous request limit.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;

/// The lane's clock for Lambda's minute-scale behaviour.
#[derive(Clone, Copy)]
pub struct LaneTiming {
    /// Stands in for one minute of Lambda's retry back-off.
    pub retry_unit: Duration,
    /// One in this many async events is delivered twice (0: never).
    pub duplicate_one_in: u32,
}

#[derive(Default)]
pub struct AsyncStats {
    pub events: AtomicUsize,
    pub duplicated: AtomicUsize,
    pub retried: AtomicUsize,
    pub sent_to_destination: AtomicUsize,
    pub rejected_too_large: AtomicUsize,
}

pub struct LambdaService {
    pools: BTreeMap<String, Arc<FunctionPool>>,
    iam: Arc<Iam>,
    sqs: aws_sdk_sqs::Client,
    /// Queue ARN → URL of the stack's queues.
    queues: BTreeMap<String, String>,
    timing: LaneTiming,
    pub stats: AsyncStats,
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, headers: &[(&str, &str)], body: Bytes) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(body)).unwrap()
}

fn too_large(limit: usize, kind: &str) -> Response<Body> {
    let msg = serde_json::json!({
        "Type": "User",
        "message": format!("Request must be smaller than {limit} bytes for the {kind} operation"),
    });
    respond(
        StatusCode::PAYLOAD_TOO_LARGE,
        &[("x-amzn-errortype", "RequestEntityTooLargeException")],
        Bytes::from(msg.to_string()),
    )
}

impl LambdaService {
    pub fn new(
        pools: BTreeMap<String, Arc<FunctionPool>>,
        iam: Arc<Iam>,
        sqs: aws_sdk_sqs::Client,
        queues: BTreeMap<String, String>,
        timing: LaneTiming,
    ) -> Self {
        Self {
            pools,
            iam,
            sqs,
            queues,
            timing,
            stats: AsyncStats::default(),
        }
    }

    pub fn function(&self, name_or_arn: &str) -> Option<&FunctionSpec> {
        let name = name_or_arn.rsplit(':').next().unwrap_or(name_or_arn);
        self.pools
            .values()
            .map(|p| &p.spec)
            .find(|s| s.name == name || s.arn == name_or_arn)
    }

    pub fn pool(&self, binary: &str) -> &Arc<FunctionPool> {
        self.pools
            .values()
            .find(|p| p.spec.binary == binary)
            .unwrap_or_else(|| panic!("no pool for {binary}"))
    }

    /// The Invoke API, after the caller's `lambda:InvokeFunction` was allowed.
    pub async fn invoke_api(
        self: &Arc<Self>,
        name: &str,
        kind: &str,
        payload: Bytes,
    ) -> Response<Body> {
        let pool = self.pools[name].clone();
        match kind {
            "Event" => {
                if payload.len() > MAX_ASYNC_PAYLOAD {
                    self.stats.rejected_too_large.fetch_add(1, Ordering::SeqCst);
                    return too_large(MAX_ASYNC_PAYLOAD, "InvokeAsync");
                }
                self.enqueue(pool, payload);
                respond(StatusCode::ACCEPTED, &[], Bytes::new())
            }
            "DryRun" => respond(StatusCode::NO_CONTENT, &[], Bytes::new()),
            _ => {
                if payload.len() > MAX_SYNC_PAYLOAD {
                    return too_large(MAX_SYNC_PAYLOAD, "Invoke");
                }
                match pool.invoke(payload).await {
                    Ok(body) => respond(
                        StatusCode::OK,
                        &[("x-amz-executed-version", "$LATEST")],
                        body,
                    ),
                    Err(e) => respond(
                        StatusCode::OK,
                        &[
                            ("x-amz-function-error", "Unhandled"),
                            ("x-amz-executed-version", "$LATEST"),
                        ],
                        error_payload(&e),
                    ),
                }
            }
        }
    }

    /// Queues one asynchronous event (also what the scheduler does).
    pub fn enqueue(self: &Arc<Self>, pool: Arc<FunctionPool>, payload: Bytes) {
        self.stats.events.fetch_add(1, Ordering::SeqCst);
        let twice = self.timing.duplicate_one_in > 0
            && rand::rng().random_range(0..self.timing.duplicate_one_in) == 0;
        let copies = if twice { 2 } else { 1 };
        if twice {
            self.stats.duplicated.fetch_add(1, Ordering::SeqCst);
        }
        for _ in 0..copies {
            let lambda = self.clone();
            let pool = pool.clone();
            let payload = payload.clone();
            tokio::spawn(async move { lambda.deliver(pool, payload).await });
        }
    }

    async fn deliver(&self, pool: Arc<FunctionPool>, payload: Bytes) {
        let queued = Instant::now();
        let max_retries = pool.spec.max_retries();
        let max_age = Duration::from_secs(pool.spec.max_event_age_secs());
        let mut attempt = 0u32;
        loop {
            let error = match pool.invoke(payload.clone()).await {
                Ok(_) => return,
                Err(e) => e,
            };
            let aged = queued.elapsed() > max_age;
            if attempt >= max_retries || aged {
                self.to_destinations(&pool.spec, &payload, &error, attempt + 1)
                    .await;
                return;
            }
            attempt += 1;
            self.stats.retried.fetch_add(1, Ordering::SeqCst);
            // Lambda waits about one minute, then two, between attempts.
            tokio::time::sleep(self.timing.retry_unit * attempt).await;
        }
    }

    async fn to_destinations(
        &self,
        spec: &FunctionSpec,
        payload: &Bytes,
        error: &InvokeError,
        attempts: u32,
    ) {
        self.stats
            .sent_to_destination
            .fetch_add(1, Ordering::SeqCst);
        let request: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        let response: serde_json::Value =
            serde_json::from_slice(&error_payload(error)).unwrap_or_default();
        let record = serde_json::json!({
            "version": "1.0",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "requestContext": {
                "requestId": "lane",
                "functionArn": format!("{}:$LATEST", spec.arn),
                "condition": "RetriesExhausted",
                "approximateInvokeCount": attempts,
            },
            "requestPayload": request,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": response,
        });
        let mut sends = Vec::new();
        if let Some(dest) = spec.on_failure_destination() {
            sends.push((dest, record.to_string()));
        }
        if let Some(dlq) = &spec.dead_letter_target {
            sends.push((dlq.clone(), String::from_utf8_lossy(payload).into_owned()));
        }
        for (arn, body) in sends {
            // Lambda sends with the function's execution role.
            if !self
                .iam
                .allows(&spec.role_arn(), "sqs:SendMessage", &arn)
                .await
            {
                continue;
            }
            let Some(url) = self.queues.get(&arn) else {
                panic!("destination {arn} is not a queue of the stack");
            };
            self.sqs
                .send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .expect("the lane's SQS accepts the destination record");
        }
    }
}

fn error_payload(e: &InvokeError) -> Bytes {
    let (kind, message) = match e {
        InvokeError::Function(body) => return body.clone(),
        InvokeError::Runtime(m) => ("Runtime.ExitError", m.clone()),
        InvokeError::Timeout => ("Sandbox.Timedout", "Task timed out".to_string()),
        InvokeError::ResponseTooLarge(n) => (
            "Function.ResponseSizeTooLarge",
            format!(
                "Response payload size ({n} bytes) exceeded maximum allowed payload size (6291556 bytes)."
            ),
        ),
    };
    Bytes::from(serde_json::json!({"errorType": kind, "errorMessage": message}).to_string())
}
