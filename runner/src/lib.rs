//! The `bulk-export` local runner: the Lambda functions' shared code behind
//! one HTTP server, with embedded DynamoDB and S3, plus a dataset generator
//! and a Bulk Data client.

pub mod auth;
pub mod aws_clients;
pub mod client;
pub mod embedded;
pub mod fixture_server;
pub mod generate;
pub mod http_server;
pub mod stack;
