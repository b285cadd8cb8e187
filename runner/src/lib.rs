//! The `bulk-export` local runner: the Lambda functions' shared code behind
//! one HTTP server, with embedded DynamoDB and S3, plus a Bulk Data client.
//! The dataset generator lives in `bulk-export-testkit`.

pub mod auth;
pub mod aws_clients;
pub mod client;
pub mod embedded;
pub mod http_server;
pub mod stack;
