//! The Lambda lane: the five function binaries, built as they deploy, run as
//! separate processes under the Lambda Runtime API, invoked through the
//! Invoke API (asynchronous events with Lambda's retries and destinations),
//! behind API Gateway HTTP API events and a scheduled watchdog; each with the
//! environment and execution role CloudFormation would give it from
//! template.yaml, every AWS call checked by a policy evaluator.
//! Storage: dynoxide + s3s-fs (SQS/KMS from a moto of its own), or the moto
//! lane's server for everything.

mod aws_proxy;
mod exports;
mod gateway;
mod iam;
mod invoke;
mod runtime;
mod stack;

use crate::common::{Moto, TempDir, unique};
use aws_proxy::{Backends, Proxy};
use bulk_export::embedded::{LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, start_dynamodb, start_s3};
use bulk_export_core::adapters::dynamo::DynamoJobStore;
use bulk_export_core::adapters::s3::S3ObjectStore;
use gateway::Gateway;
use iam::Iam;
use invoke::{LambdaService, LaneTiming};
use runtime::FunctionPool;
use stack::{ACCOUNT, REGION, StackNames, TranslatedStack, repo_root};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct LaneOptions {
    /// The `UpstreamFhirBaseUrl` parameter.
    pub source: String,
    /// Run with `KmsKeyArn` set to a moto KMS key.
    pub kms: bool,
    pub timing: LaneTiming,
    pub worker_concurrency: usize,
    /// How often the watchdog's schedule fires (`rate(1 minute)`, scaled).
    pub watchdog_every: Duration,
}

impl LaneOptions {
    pub fn new(source: String) -> Self {
        Self {
            source,
            kms: false,
            timing: LaneTiming {
                retry_unit: Duration::from_secs(1),
                duplicate_one_in: 8,
            },
            worker_concurrency: 6,
            watchdog_every: Duration::from_secs(3),
        }
    }
}

pub struct Lane {
    pub url: String,
    pub stack: TranslatedStack,
    pub iam: Arc<Iam>,
    pub lambda: Arc<LambdaService>,
    pub kms_key: Option<String>,
    _moto: Option<Moto>,
    _dir: TempDir,
    pub log_dir: std::path::PathBuf,
}

fn binary_dir() -> std::path::PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"))
        .join("debug")
}

fn listener() -> (tokio::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (tokio::net::TcpListener::from_std(l).unwrap(), url)
}

fn sdk_config(endpoint: &str, key: &str, secret: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            aws_sdk_sqs::config::Credentials::new(key, secret, None, None, "lane"),
        ))
        .build()
}

async fn moto_call(endpoint: &str, target: &str, body: serde_json::Value) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("x-amz-target", target)
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{target}: {}", resp.status());
    resp.json().await.unwrap()
}

impl Lane {
    pub async fn start(opts: LaneOptions) -> Lane {
        let dir = TempDir::new("lambda-lane");
        let external = std::env::var("AWS_ENDPOINT_URL_S3").ok();
        // moto applies UpdateItem ADD without atomicity under concurrent
        // requests (see scripts/test.sh), so only the embedded lane
        // delivers events twice.
        let mut timing = opts.timing;
        if external.is_some() {
            timing.duplicate_one_in = 0;
        }
        let (backends, moto, (key, secret)) = match &external {
            Some(ep) => (
                Backends {
                    dynamodb: std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap_or(ep.clone()),
                    s3: ep.clone(),
                    moto: ep.clone(),
                },
                None,
                ("testing", "testing"),
            ),
            None => {
                let moto = Moto::start().await;
                (
                    Backends {
                        dynamodb: start_dynamodb(None).await.unwrap(),
                        s3: start_s3(&dir.0.join("s3")).await.unwrap(),
                        moto: moto.endpoint.clone(),
                    },
                    Some(moto),
                    (LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY),
                )
            }
        };
        let name = unique("lane");
        let (table, bucket) = (format!("{name}-jobs"), format!("{name}-exports"));
        // What CloudFormation creates before the functions exist.
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(&backends.moto, "testing", "testing"));
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("{name}-failed"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let kms_key = if opts.kms {
            let k = moto_call(
                &backends.moto,
                "TrentService.CreateKey",
                serde_json::json!({}),
            )
            .await;
            Some(k["KeyMetadata"]["Arn"].as_str().unwrap().to_string())
        } else {
            None
        };
        let store = DynamoJobStore::new(
            aws_sdk_dynamodb::Client::new(&sdk_config(&backends.dynamodb, key, secret)),
            &table,
        );
        store.ensure_table().await.unwrap();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk_config(&backends.s3, key, secret))
                .force_path_style(true)
                .build(),
        );
        S3ObjectStore::new(s3, &bucket)
            .ensure_bucket()
            .await
            .unwrap();

        let (gw_listener, url) = listener();
        let mut parameters = BTreeMap::from([
            ("UpstreamFhirBaseUrl".to_string(), opts.source.clone()),
            (
                "JwtIssuer".to_string(),
                "https://issuer.lane.example".to_string(),
            ),
            ("JwtAudience".to_string(), "bulk-export-lane".to_string()),
            // The lane's API has no TLS and no custom domain: its address is
            // the public base URL.
            ("PublicBaseUrl".to_string(), url.clone()),
        ]);
        if let Some(k) = &kms_key {
            parameters.insert("KmsKeyArn".into(), k.clone());
        }
        let names = StackNames {
            stack: name.clone(),
            region: REGION,
            account: ACCOUNT,
            table,
            bucket: bucket.clone(),
            queue_url: queue_url.clone(),
            parameters,
        };
        let stack = stack::translate(&names);
        let iam = Arc::new(Iam::start(&stack, &bucket, kms_key.as_deref()).await);
        let log_dir = repo_root().join("target/lambda-lane").join(&name);
        std::fs::create_dir_all(&log_dir).unwrap();

        let mut pools = BTreeMap::new();
        let mut proxies = Vec::new();
        for f in stack.functions.values() {
            let binary = binary_dir().join(&f.binary);
            assert!(
                binary.exists(),
                "{} is missing: build the functions as they deploy first (cargo build -p {}; scripts/test.sh does)",
                binary.display(),
                f.binary
            );
            let (proxy_listener, proxy_url) = listener();
            let mut env = f.env();
            env.extend(
                [
                    ("AWS_REGION", REGION),
                    ("AWS_DEFAULT_REGION", REGION),
                    ("AWS_LAMBDA_FUNCTION_NAME", &f.name),
                    ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
                    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", &f.memory_mb.to_string()),
                    ("_HANDLER", "bootstrap"),
                    ("AWS_ACCESS_KEY_ID", key),
                    ("AWS_SECRET_ACCESS_KEY", secret),
                    // The lane's named endpoint settings: every AWS call goes
                    // to the function's proxy, and S3 is addressed path-style.
                    ("AWS_ENDPOINT_URL", &proxy_url),
                    ("BULK_EXPORT_S3_PATH_STYLE", "true"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            let concurrency = match f.binary.as_str() {
                "chunk-worker" => opts.worker_concurrency,
                "watchdog" => 1,
                _ => 4,
            };
            let pool = FunctionPool::new(f.clone(), binary, env, log_dir.clone(), concurrency);
            pools.insert(f.name.clone(), pool);
            proxies.push((f.clone(), proxy_listener));
        }
        let queue_arn = format!(
            "arn:aws:sqs:{REGION}:{ACCOUNT}:{}",
            queue_url.rsplit('/').next().unwrap()
        );
        let lambda = Arc::new(LambdaService::new(
            pools.clone(),
            iam.clone(),
            sqs,
            BTreeMap::from([(queue_arn, queue_url)]),
            timing,
        ));
        let backends = Arc::new(backends);
        for (f, l) in proxies {
            let proxy = Proxy {
                function: f,
                iam: iam.clone(),
                backends: backends.clone(),
                lambda: lambda.clone(),
                kms_key: kms_key.clone(),
                client: reqwest::Client::new(),
            };
            aws_proxy::serve(l, Arc::new(proxy));
        }
        let routes = pools
            .values()
            .flat_map(|p| p.spec.routes.iter().map(move |r| (r.clone(), p.clone())))
            .collect();
        let gw = Arc::new(Gateway {
            routes,
            issuer: stack.parameter("JwtIssuer"),
            audience: stack.parameter("JwtAudience"),
        });
        gw.serve(gw_listener);
        start_schedules(&lambda, &pools, opts.watchdog_every);
        Lane {
            url,
            stack,
            iam,
            lambda,
            kms_key,
            _moto: moto,
            _dir: dir,
            log_dir,
        }
    }

    pub fn token(&self, scope: &str) -> String {
        gateway::token(
            &self.stack.parameter("JwtIssuer"),
            &self.stack.parameter("JwtAudience"),
            "lane-client",
            scope,
        )
    }

    /// The IAM report, printed; fails on any denied call.
    pub fn assert_iam_clean(&self) {
        let report = self.iam.report();
        println!("{report}");
        assert!(
            self.iam.denied.lock().unwrap().is_empty(),
            "calls the template's policies deny:\n{report}"
        );
    }

    pub fn log_tail(&self, binary: &str) -> String {
        let text =
            std::fs::read_to_string(self.log_dir.join(format!("{binary}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Serves HTTP/1 on `listener`: every request of every connection through
/// `handle` (the Runtime API, the AWS proxies and the gateway).
fn serve_http<F, Fut>(listener: tokio::net::TcpListener, handle: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), svc)
                    .await;
            });
        }
    })
}

/// EventBridge Scheduler: every enabled schedule of the template fires as an
/// asynchronous invocation (`rate(1 minute)` at the lane's pace).
fn start_schedules(
    lambda: &Arc<LambdaService>,
    pools: &BTreeMap<String, Arc<FunctionPool>>,
    every: Duration,
) {
    for pool in pools.values() {
        for s in &pool.spec.schedules {
            if s.state != "ENABLED" || !s.expression.starts_with("rate(") {
                continue;
            }
            let payload = bytes::Bytes::from(s.input.clone().unwrap_or_else(|| "{}".into()));
            let lambda = lambda.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    lambda.enqueue(pool.clone(), payload.clone());
                }
            });
        }
    }
}
