//! Assembles a running export stack: job store, object store, source,
//! in-process continuation with its worker pool, the watchdog, and the HTTP API.

use crate::aws_clients::{Endpoints, dynamodb_client, s3_client};
use crate::embedded::{LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, start_dynamodb, start_s3};
use crate::http_server::{Authenticator, serve};
use bulk_export_core::adapters::dynamo::DynamoJobStore;
use bulk_export_core::adapters::fhir_server::upstream_auth::UpstreamAuth;
use bulk_export_core::adapters::s3::{S3Flavor, S3ObjectStore};
use bulk_export_core::model::config::ExportConfig;
use bulk_export_core::ports::services::ExportServices;
use bulk_export_core::worker::in_process::{StepQueue, step_queue};
use bulk_export_core::worker::watchdog::sweep;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use bulk_export_core::compose::SourceSpec;

/// Upstream authentication for the runner: SMART client credentials from the
/// environment (they take precedence over a static token), else the spec's
/// own token.
fn runner_auth() -> Result<UpstreamAuth, StackError> {
    match UpstreamAuth::from_env().map_err(StackError)? {
        auth @ UpstreamAuth::ClientCredentials(_) => Ok(auth),
        _ => Ok(UpstreamAuth::None),
    }
}

/// How to start a stack.
#[derive(Clone)]
pub struct StackOptions {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Directory for embedded DynamoDB and S3 data.
    pub data_dir: PathBuf,
    /// Source of resources.
    pub source: SourceSpec,
    /// Public base URL; default `http://<listen addr>/fhir`.
    pub base_url: Option<String>,
    /// External endpoints; embedded servers are started for those left `None`
    /// when `use_embedded` is true.
    pub endpoints: Endpoints,
    /// Start embedded DynamoDB/S3 for endpoints not given.
    pub use_embedded: bool,
    /// Export settings (base URL is filled in from the listener).
    pub config: ExportConfig,
    /// Concurrent chain steps.
    pub workers: usize,
    /// Stall timeout of the watchdog.
    pub stall_timeout: Duration,
    /// Request authentication.
    pub auth: Authenticator,
}

/// A running stack.
pub struct Stack {
    /// The FHIR base URL clients use.
    pub base_url: String,
    /// Shared services.
    pub services: ExportServices,
    /// The step queue (tests may drain it themselves when no workers run).
    pub queue: Arc<StepQueue>,
    /// The S3 adapter (tests inspect objects with it).
    pub objects: S3ObjectStore,
    /// Endpoints actually used.
    pub endpoints: Endpoints,
}

/// Errors starting a stack.
#[derive(Debug, thiserror::Error)]
#[error("cannot start: {0}")]
pub struct StackError(pub String);

fn build_source(
    spec: &SourceSpec,
    s3: &aws_sdk_s3::Client,
) -> Result<Arc<dyn bulk_export_core::ports::source::Source>, StackError> {
    let auth = match spec {
        SourceSpec::Fhir { .. } => runner_auth()?,
        _ => UpstreamAuth::None,
    };
    spec.build(s3, auth).map_err(|e| StackError(e.to_string()))
}

/// Builds services against endpoints without starting the HTTP server or workers.
pub async fn build(opts: &StackOptions, base_url: String) -> Result<Stack, StackError> {
    let mut endpoints = opts.endpoints.clone();
    let mut flavor = S3Flavor::Aws;
    if opts.use_embedded {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| StackError(e.to_string()))?;
        if endpoints.dynamodb.is_none() {
            let path = opts.data_dir.join("jobs.sqlite");
            endpoints.dynamodb = Some(
                start_dynamodb(Some(&path))
                    .await
                    .map_err(|e| StackError(e.to_string()))?,
            );
        }
        if endpoints.s3.is_none() {
            flavor = S3Flavor::S3sFs;
            endpoints.s3 = Some(
                start_s3(&opts.data_dir.join("s3"))
                    .await
                    .map_err(|e| StackError(e.to_string()))?,
            );
        }
        if endpoints.static_credentials.is_none() {
            endpoints.static_credentials = Some((LOCAL_ACCESS_KEY.into(), LOCAL_SECRET_KEY.into()));
        }
    }
    let mut config = opts.config.clone();
    config.base_url = base_url.clone();
    config.validate().map_err(|e| StackError(e.to_string()))?;
    let store = DynamoJobStore::new(dynamodb_client(&endpoints).await, &config.table);
    store
        .ensure_table()
        .await
        .map_err(|e| StackError(e.to_string()))?;
    let objects =
        S3ObjectStore::new(s3_client(&endpoints).await, &config.bucket).with_flavor(flavor);
    objects
        .ensure_bucket()
        .await
        .map_err(|e| StackError(e.to_string()))?;
    let (continuation, queue) = step_queue();
    let services = ExportServices {
        config: Arc::new(config),
        store: Arc::new(store),
        objects: Arc::new(objects.clone()),
        source: build_source(&opts.source, objects.client())?,
        continuation: Arc::new(continuation),
    };
    Ok(Stack {
        base_url,
        services,
        queue,
        objects,
        endpoints,
    })
}

/// Starts everything: embedded servers, workers, watchdog, HTTP server.
/// Jobs left running by an earlier process on the same data directory resume.
pub async fn start(opts: StackOptions) -> Result<Stack, StackError> {
    bulk_export_core::compose::heap::return_freed_blocks();
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| StackError(format!("cannot listen on {}: {e}", opts.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StackError(e.to_string()))?;
    let base_url = opts
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}/fhir"));
    let stack = build(&opts, base_url).await?;
    stack
        .queue
        .spawn_workers(stack.services.clone(), opts.workers);
    // Resume chains of jobs an earlier process left running.
    sweep(&stack.services, Duration::ZERO)
        .await
        .map_err(|e| StackError(e.to_string()))?;
    let svc = stack.services.clone();
    let stall = opts.stall_timeout;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(stall.as_secs().clamp(1, 60)));
        loop {
            tick.tick().await;
            if let Err(e) = sweep(&svc, stall).await {
                tracing::warn!(error = %e, "watchdog sweep failed");
            }
        }
    });
    tokio::spawn(serve(listener, stack.services.clone(), opts.auth.clone()));
    Ok(stack)
}
