//! A counting reverse proxy on 127.0.0.1 in front of the embedded DynamoDB or
//! S3 server: every request the exporter's AWS SDK clients send is classified
//! by API operation and counted, then forwarded unchanged (the original `Host`
//! header is kept, so SigV4 signatures still verify).

use crate::error::BenchError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use serde_json::Value;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

/// Which API the proxy fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// DynamoDB JSON protocol (`X-Amz-Target`).
    DynamoDb,
    /// S3 REST (method, path and query).
    S3,
}

/// Counted requests.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Requests per operation.
    pub ops: BTreeMap<String, u64>,
    /// Estimated DynamoDB read request units (strongly consistent: 1 per 4 KB returned).
    pub read_units: f64,
    /// Estimated DynamoDB write request units (1 per KB written; 2× in transactions).
    pub write_units: f64,
}

impl Counts {
    /// `self - earlier`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut ops = self.ops.clone();
        for (k, v) in &earlier.ops {
            if let Some(n) = ops.get_mut(k) {
                *n = n.saturating_sub(*v);
            }
        }
        ops.retain(|_, v| *v > 0);
        Counts {
            ops,
            read_units: self.read_units - earlier.read_units,
            write_units: self.write_units - earlier.write_units,
        }
    }

    /// Requests of one operation.
    pub fn get(&self, op: &str) -> u64 {
        self.ops.get(op).copied().unwrap_or(0)
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.ops.values().sum()
    }
}

/// Shared counters of one proxy.
#[derive(Debug, Default)]
pub struct Counter(Mutex<Counts>);

impl Counter {
    /// A snapshot.
    pub fn snapshot(&self) -> Counts {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, op: &str, read_units: f64, write_units: f64) {
        if let Ok(mut c) = self.0.lock() {
            *c.ops.entry(op.to_string()).or_default() += 1;
            c.read_units += read_units;
            c.write_units += write_units;
        }
    }
}

fn units(bytes: usize, unit: usize) -> f64 {
    bytes.div_ceil(unit).max(1) as f64
}

fn dynamo_op(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("Unknown")
        .to_string()
}

fn s3_op(parts: &http::request::Parts) -> String {
    let q = parts.uri.query().unwrap_or("");
    let has = |k: &str| {
        q.split('&')
            .any(|p| p == k || p.starts_with(&format!("{k}=")))
    };
    // Path-style: /bucket or /bucket/key...
    let path = parts.uri.path().trim_start_matches('/');
    let is_object = path.contains('/') && !path.ends_with('/');
    let m = parts.method.as_str();
    let op = match m {
        "PUT" if has("partNumber") && has("uploadId") => "UploadPart",
        "PUT" if is_object => "PutObject",
        "PUT" if has("lifecycle") => "PutBucketLifecycleConfiguration",
        "PUT" => "CreateBucket",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "POST" if has("delete") => "DeleteObjects",
        "GET" if has("list-type") => "ListObjectsV2",
        "GET" if has("uploadId") => "ListParts",
        "GET" if has("uploads") => "ListMultipartUploads",
        "GET" if is_object => "GetObject",
        "GET" if has("lifecycle") => "GetBucketLifecycleConfiguration",
        "GET" => "ListObjects",
        "HEAD" if is_object => "HeadObject",
        "HEAD" => "HeadBucket",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "DELETE" if is_object => "DeleteObject",
        _ => return format!("{m} other"),
    };
    op.to_string()
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    api: Api,
    counter: &Counter,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let bad_gateway = |msg: String| {
        let mut r = http::Response::new(Full::new(Bytes::from(msg)));
        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
        r
    };
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_gateway(format!("reading request: {e}")),
    };
    let op = match api {
        Api::DynamoDb => dynamo_op(&parts),
        Api::S3 => s3_op(&parts),
    };
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut rb = client.request(parts.method.clone(), format!("{upstream}{pq}"));
    for (k, v) in &parts.headers {
        // Content-Length is kept (it may be signed); the body is forwarded
        // whole, so it stays exact.
        if k == http::header::TRANSFER_ENCODING || k == http::header::CONNECTION {
            continue;
        }
        rb = rb.header(k, v);
    }
    let req_len = body.len();
    let write_units = match (api, op.as_str()) {
        (Api::DynamoDb, "PutItem" | "UpdateItem" | "DeleteItem") => units(req_len, 1024),
        (Api::DynamoDb, "TransactWriteItems") => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v["TransactItems"].as_array().map(|items| {
                    items
                        .iter()
                        .map(|i| 2.0 * units(i.to_string().len(), 1024))
                        .sum::<f64>()
                })
            })
            .unwrap_or(2.0),
        _ => 0.0,
    };
    let resp = match rb.body(body).send().await {
        Ok(r) => r,
        Err(e) => return bad_gateway(format!("forwarding: {e}")),
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return bad_gateway(format!("reading response: {e}")),
    };
    let read_units = match (api, op.as_str()) {
        (Api::DynamoDb, "GetItem" | "Query" | "Scan") => units(bytes.len(), 4096),
        _ => 0.0,
    };
    counter.record(&op, read_units, write_units);
    let mut out = http::Response::new(Full::new(bytes));
    *out.status_mut() = status;
    for (k, v) in &headers {
        if k == http::header::TRANSFER_ENCODING || k == http::header::CONNECTION {
            continue;
        }
        out.headers_mut().append(k, v.clone());
    }
    out
}

/// Starts a counting proxy to `upstream` (an `http://127.0.0.1:<port>` URL);
/// returns its own URL.
pub async fn start_proxy(
    upstream: String,
    api: Api,
    counter: Arc<Counter>,
) -> Result<String, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(BenchError::io("binding a counting proxy"))?;
    let addr = listener
        .local_addr()
        .map_err(BenchError::io("counting proxy address"))?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(BenchError::http("proxy client"))?;
    let upstream = Arc::new(upstream.trim_end_matches('/').to_string());
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let (client, upstream, counter) = (client.clone(), upstream.clone(), counter.clone());
            let service = hyper::service::service_fn(move |req| {
                let (client, upstream, counter) =
                    (client.clone(), upstream.clone(), counter.clone());
                async move { Ok::<_, Infallible>(forward(&client, &upstream, api, &counter, req).await) }
            });
            let conn = http
                .serve_connection(TokioIo::new(socket), service)
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}
