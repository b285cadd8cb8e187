//! Each function reaches AWS through a proxy of its own
//! (`AWS_ENDPOINT_URL`), which names the IAM action and resource of every
//! call as AWS authorizes it, asks the policy evaluator, enforces the
//! request limits DynamoDB and Lambda enforce, and forwards the call
//! unchanged (Host included, so SigV4 signatures still verify) to the
//! lane's DynamoDB, S3, SQS/SSM/KMS (moto) or Lambda Invoke API.

use super::iam::Iam;
use super::invoke::LambdaService;
use super::stack::{ACCOUNT, FunctionSpec, REGION};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;

/// Where the lane's services listen.
pub struct Backends {
    pub dynamodb: String,
    pub s3: String,
    /// SQS, SSM and KMS.
    pub moto: String,
}

pub struct Proxy {
    pub function: FunctionSpec,
    pub iam: Arc<Iam>,
    pub backends: Arc<Backends>,
    pub lambda: Arc<LambdaService>,
    pub kms_key: Option<String>,
    pub client: reqwest::Client,
}

type Body = Full<Bytes>;

pub fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) {
    super::serve_http(listener, move |req| {
        let proxy = proxy.clone();
        async move { proxy.handle(req).await }
    });
}

/// A call as AWS authorizes it.
struct Call {
    service: Service,
    /// (IAM action, resource ARN) pairs, all of which must be allowed.
    checks: Vec<(String, String)>,
    /// A limit the request breaks, answered as the service answers it.
    limit: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Service {
    DynamoDb,
    S3,
    Moto,
    Lambda,
}

fn table_arn(table: &str) -> String {
    format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}")
}

fn dynamodb_call(op: &str, body: &Value) -> Call {
    let mut checks = Vec::new();
    let mut limit = None;
    let table = body["TableName"].as_str().unwrap_or("");
    match op {
        "BatchWriteItem" | "BatchGetItem" => {
            let items = body["RequestItems"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let n: usize = items
                .values()
                .map(|v| {
                    v.as_array()
                        .map_or_else(|| v["Keys"].as_array().map_or(0, Vec::len), Vec::len)
                })
                .sum();
            let max = if op == "BatchWriteItem" { 25 } else { 100 };
            if n > max {
                limit = Some(format!(
                    "Too many items requested for the {op} call (at most {max}, got {n})"
                ));
            }
            for t in items.keys() {
                checks.push((format!("dynamodb:{op}"), table_arn(t)));
            }
        }
        "TransactWriteItems" | "TransactGetItems" => {
            // Transactions have no IAM action of their own: each item is
            // authorized as the single-item action it performs.
            let items = body["TransactItems"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if items.len() > 100 {
                limit = Some(format!(
                    "Member must have length less than or equal to 100 (got {})",
                    items.len()
                ));
            }
            for item in &items {
                for (kind, action) in [
                    ("Put", "PutItem"),
                    ("Update", "UpdateItem"),
                    ("Delete", "DeleteItem"),
                    ("ConditionCheck", "ConditionCheckItem"),
                    ("Get", "GetItem"),
                ] {
                    if let Some(t) = item[kind]["TableName"].as_str() {
                        checks.push((format!("dynamodb:{action}"), table_arn(t)));
                    }
                }
            }
        }
        _ => {
            let mut arn = table_arn(table);
            if let Some(index) = body["IndexName"].as_str() {
                arn = format!("{arn}/index/{index}");
            }
            checks.push((format!("dynamodb:{op}"), arn));
        }
    }
    Call {
        service: Service::DynamoDb,
        checks,
        limit,
    }
}

fn queue_arn(url: &str) -> String {
    let name = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
}

fn json_service_call(target: &str, body: &Value) -> Option<Call> {
    let (prefix, op) = target.split_once('.')?;
    let (service, resource) = match prefix {
        "DynamoDB_20120810" => return Some(dynamodb_call(op, body)),
        "AmazonSQS" => ("sqs", queue_arn(body["QueueUrl"].as_str().unwrap_or(""))),
        "AmazonSSM" => {
            let name = body["Name"].as_str().unwrap_or("");
            let name = name.strip_prefix('/').unwrap_or(name);
            (
                "ssm",
                format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{name}"),
            )
        }
        "TrentService" => ("kms", body["KeyId"].as_str().unwrap_or("*").to_string()),
        _ => return None,
    };
    Some(Call {
        service: Service::Moto,
        checks: vec![(format!("{service}:{op}"), resource)],
        limit: None,
    })
}

fn has(query: &str, key: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv == key || kv.starts_with(&format!("{key}=")))
}

/// S3 REST calls (path style) as the actions S3 authorizes, plus the KMS
/// permissions SSE-KMS adds to the caller: a data key for every write, and
/// decryption for reads and for multipart uploads.
fn s3_call(method: &Method, path: &str, query: &str, body: &[u8], kms: Option<&str>) -> Call {
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let object_arn = format!("{bucket_arn}/{key}");
    let multipart = has(query, "uploads") || has(query, "uploadId");
    let mut checks: Vec<(String, String)> = Vec::new();
    let mut push = |a: &str, r: &str| checks.push((format!("s3:{a}"), r.to_string()));
    let (write, read) = if key.is_empty() {
        match *method {
            Method::GET if has(query, "uploads") => push("ListBucketMultipartUploads", &bucket_arn),
            Method::GET if has(query, "location") => push("GetBucketLocation", &bucket_arn),
            Method::GET | Method::HEAD => push("ListBucket", &bucket_arn),
            Method::PUT => push("CreateBucket", &bucket_arn),
            Method::POST if has(query, "delete") => {
                let text = String::from_utf8_lossy(body);
                for part in text.split("<Key>").skip(1) {
                    let k = part.split("</Key>").next().unwrap_or("");
                    push("DeleteObject", &format!("{bucket_arn}/{k}"));
                }
            }
            _ => push("UnknownBucketOperation", &bucket_arn),
        }
        (false, false)
    } else {
        match *method {
            Method::GET if has(query, "uploadId") => {
                push("ListMultipartUploadParts", &object_arn);
                (false, false)
            }
            Method::GET => {
                push("GetObject", &object_arn);
                (false, true)
            }
            Method::HEAD => {
                push("GetObject", &object_arn);
                (false, false)
            }
            Method::PUT | Method::POST => {
                push("PutObject", &object_arn);
                (true, multipart)
            }
            Method::DELETE if has(query, "uploadId") => {
                push("AbortMultipartUpload", &object_arn);
                (false, false)
            }
            Method::DELETE => {
                push("DeleteObject", &object_arn);
                (false, false)
            }
            _ => {
                push("UnknownObjectOperation", &object_arn);
                (false, false)
            }
        }
    };
    if let Some(key_arn) = kms {
        if write {
            checks.push(("kms:GenerateDataKey".into(), key_arn.to_string()));
        }
        if read {
            checks.push(("kms:Decrypt".into(), key_arn.to_string()));
        }
    }
    Call {
        service: Service::S3,
        checks,
        limit: None,
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn denied(service: Service, role: &str, action: &str, resource: &str) -> Response<Body> {
    let message =
        format!("User: {role} is not authorized to perform: {action} on resource: {resource}");
    match service {
        Service::S3 => respond(
            StatusCode::FORBIDDEN,
            "application/xml",
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>{message}</Message></Error>"),
        ),
        Service::Lambda => respond(
            StatusCode::FORBIDDEN,
            "application/json",
            serde_json::json!({"Type": "User", "message": message}).to_string(),
        ),
        _ => respond(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.0",
            serde_json::json!({"__type": "com.amazon.coral.service#AccessDeniedException", "message": message}).to_string(),
        ),
    }
}

impl Proxy {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Ok(body) = Limited::new(body, 128 * 1024 * 1024).collect().await else {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "too large".into(),
            );
        };
        let body = body.to_bytes();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        if let Some(rest) = path.strip_prefix("/2015-03-31/functions/") {
            return self.lambda_invoke(rest, &parts.headers, body).await;
        }
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let call = match &target {
            Some(t) => {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match json_service_call(t, &json) {
                    Some(c) => c,
                    None => {
                        return respond(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            format!("lane: unknown target {t}"),
                        );
                    }
                }
            }
            None => s3_call(&parts.method, &path, &query, &body, self.kms_key.as_deref()),
        };
        let role = self.function.role_arn();
        for (action, resource) in &call.checks {
            if !self.iam.allows(&role, action, resource).await {
                return denied(call.service, &role, action, resource);
            }
        }
        if let Some(limit) = call.limit {
            return respond(
                StatusCode::BAD_REQUEST,
                "application/x-amz-json-1.0",
                serde_json::json!({"__type": "com.amazon.coral.validate#ValidationException", "message": limit}).to_string(),
            );
        }
        let backend = match call.service {
            Service::DynamoDb => &self.backends.dynamodb,
            Service::S3 => &self.backends.s3,
            _ => &self.backends.moto,
        };
        self.forward(backend, parts.method, &parts.uri, &parts.headers, body)
            .await
    }

    async fn lambda_invoke(&self, rest: &str, headers: &HeaderMap, body: Bytes) -> Response<Body> {
        let name = rest.split('/').next().unwrap_or("");
        let name = percent_decode(name);
        let Some(target) = self.lambda.function(&name) else {
            return respond(
                StatusCode::NOT_FOUND,
                "application/json",
                serde_json::json!({"Type": "User", "message": format!("Function not found: {name}")}).to_string(),
            );
        };
        let role = self.function.role_arn();
        if !self
            .iam
            .allows(&role, "lambda:InvokeFunction", &target.arn)
            .await
        {
            return denied(Service::Lambda, &role, "lambda:InvokeFunction", &target.arn);
        }
        let kind = headers
            .get("x-amz-invocation-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("RequestResponse");
        self.lambda.invoke_api(&target.name, kind, body).await
    }

    async fn forward(
        &self,
        backend: &str,
        method: Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response<Body> {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = self.client.request(method, format!("{backend}{path}"));
        for (k, v) in headers {
            if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                req = req.header(k, v);
            }
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return respond(
                    StatusCode::BAD_GATEWAY,
                    "text/plain",
                    format!("lane proxy: {e}"),
                );
            }
        };
        let mut out = Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                out = out.header(k, v);
            }
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        out.body(Full::new(bytes)).unwrap()
    }
}

pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
