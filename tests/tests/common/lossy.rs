//! A reverse proxy in front of a DynamoDB endpoint that loses replies: the
//! request reaches the server and is applied, then the connection is closed
//! without an answer, as when a reply is lost on the network. The AWS SDK
//! retries such a request, so the retry meets the state its own first try
//! left behind.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Decides, from the operation (`X-Amz-Target` without its prefix) and the
/// request body, whether the reply is lost.
pub type LoseRule = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

/// A running proxy.
pub struct LossyProxy {
    /// Its endpoint URL.
    pub endpoint: String,
    lost: Arc<AtomicU64>,
}

impl LossyProxy {
    /// Replies lost so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }

    pub async fn start(upstream: String, rule: LoseRule) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let lost = Arc::new(AtomicU64::new(0));
        let client = reqwest::Client::new();
        let (counter, upstream) = (lost.clone(), Arc::new(upstream));
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (client, upstream, rule, counter) = (
                    client.clone(),
                    upstream.clone(),
                    rule.clone(),
                    counter.clone(),
                );
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (client, upstream, rule, counter) = (
                        client.clone(),
                        upstream.clone(),
                        rule.clone(),
                        counter.clone(),
                    );
                    async move { forward(&client, &upstream, &rule, &counter, req).await }
                });
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        LossyProxy { endpoint, lost }
    }
}

/// The error that makes hyper drop the connection instead of answering.
#[derive(Debug)]
struct ReplyLost;

impl std::fmt::Display for ReplyLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reply lost on purpose")
    }
}

impl std::error::Error for ReplyLost {}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    rule: &LoseRule,
    lost: &AtomicU64,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, ReplyLost> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| ReplyLost)?.to_bytes();
    let op = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_string();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut rb = client.request(parts.method.clone(), format!("{upstream}{pq}"));
    for (k, v) in &parts.headers {
        if k != http::header::TRANSFER_ENCODING && k != http::header::CONNECTION {
            rb = rb.header(k, v);
        }
    }
    let lose = rule(&op, &body);
    let resp = rb.body(body).send().await.map_err(|_| ReplyLost)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(|_| ReplyLost)?;
    if lose {
        // Applied upstream; the caller never hears of it.
        lost.fetch_add(1, Ordering::SeqCst);
        return Err(ReplyLost);
    }
    let mut out = http::Response::new(Full::new(bytes));
    *out.status_mut() = status;
    for (k, v) in &headers {
        if k != http::header::TRANSFER_ENCODING && k != http::header::CONNECTION {
            out.headers_mut().append(k, v.clone());
        }
    }
    Ok(out)
}
