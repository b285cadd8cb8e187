//! AWS SDK clients for the local runner and tests: the same adapters as on
//! Lambda, pointed at an endpoint (embedded, moto, or real AWS).

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region};

/// Where the AWS-compatible services are.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// DynamoDB endpoint; `None` means the SDK default (real AWS or `AWS_ENDPOINT_URL_DYNAMODB`).
    pub dynamodb: Option<String>,
    /// S3 endpoint; `None` means the SDK default.
    pub s3: Option<String>,
    /// Static credentials for local endpoints.
    pub static_credentials: Option<(String, String)>,
}

async fn base_config(endpoints: &Endpoints) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some((ak, sk)) = &endpoints.static_credentials {
        loader = loader
            .credentials_provider(Credentials::new(ak, sk, None, None, "bulk-export-local"))
            .region(Region::new("us-east-1"));
    } else if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        loader = loader.region(Region::new("us-east-1"));
    }
    loader.load().await
}

/// A DynamoDB client for `endpoints`.
pub async fn dynamodb_client(endpoints: &Endpoints) -> aws_sdk_dynamodb::Client {
    let cfg = base_config(endpoints).await;
    let mut b = aws_sdk_dynamodb::config::Builder::from(&cfg);
    if let Some(url) = &endpoints.dynamodb {
        b = b.endpoint_url(url);
    }
    aws_sdk_dynamodb::Client::from_conf(b.build())
}

/// An S3 client (path-style) for `endpoints`.
pub async fn s3_client(endpoints: &Endpoints) -> aws_sdk_s3::Client {
    let cfg = base_config(endpoints).await;
    let mut b = aws_sdk_s3::config::Builder::from(&cfg).force_path_style(true);
    if let Some(url) = &endpoints.s3 {
        b = b.endpoint_url(url);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}
