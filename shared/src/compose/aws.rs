//! Services from a Lambda function's environment: `BULK_EXPORT_*` variables
//! and the SDK's default configuration (endpoints honour `AWS_ENDPOINT_URL_*`).

use crate::adapters::dynamo::DynamoJobStore;
use crate::adapters::lambda_invoke::LambdaContinuation;
use crate::adapters::s3::S3ObjectStore;
use crate::adapters::sqs::FailedStepQueue;
use crate::compose::{ComposeError, SourceSpec};
use crate::model::config::ExportConfig;
use crate::ports::services::ExportServices;
use std::sync::Arc;

/// Builds services once at cold start.
pub async fn services_from_env() -> Result<ExportServices, ComposeError> {
    crate::compose::heap::return_freed_blocks();
    let mut config = ExportConfig::from_env()?;
    if let Ok(public) = std::env::var("BULK_EXPORT_PUBLIC_BASE_URL")
        && !public.is_empty()
    {
        config.base_url = public;
    }
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3_conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(std::env::var("BULK_EXPORT_S3_PATH_STYLE").is_ok_and(|v| v == "true"))
        .build();
    let store = DynamoJobStore::new(aws_sdk_dynamodb::Client::new(&sdk), &config.table);
    let s3 = aws_sdk_s3::Client::from_conf(s3_conf);
    let objects = S3ObjectStore::new(s3.clone(), &config.bucket);
    let spec = SourceSpec::parse(&std::env::var("BULK_EXPORT_SOURCE").unwrap_or_default())?;
    let auth = match spec {
        SourceSpec::Fhir { .. } => {
            let ssm = aws_sdk_ssm::Client::new(&sdk);
            crate::adapters::ssm::upstream_auth(&ssm, &|k| std::env::var(k).ok())
                .await
                .map_err(ComposeError::Credentials)?
        }
        _ => crate::adapters::fhir_server::upstream_auth::UpstreamAuth::None,
    };
    let source = spec.build(&s3, auth)?;
    let worker = std::env::var("BULK_EXPORT_WORKER_FUNCTION")
        .map_err(|_| ComposeError::Missing("BULK_EXPORT_WORKER_FUNCTION"))?;
    let continuation = LambdaContinuation::new(aws_sdk_lambda::Client::new(&sdk), worker);
    Ok(ExportServices {
        config: Arc::new(config),
        store: Arc::new(store),
        objects: Arc::new(objects),
        source,
        continuation: Arc::new(continuation),
    })
}

/// The worker's on-failure destination queue named by
/// `BULK_EXPORT_FAILED_STEPS_QUEUE_URL`, if set.
pub async fn failed_step_queue_from_env() -> Option<FailedStepQueue> {
    let url = std::env::var("BULK_EXPORT_FAILED_STEPS_QUEUE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Some(FailedStepQueue::new(aws_sdk_sqs::Client::new(&sdk), url))
}
