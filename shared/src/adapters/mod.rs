//! One folder per backend behind a port: DynamoDB, S3, a FHIR server, NDJSON
//! files, Lambda's Invoke API, and the SQS and SSM clients the Lambda
//! functions use; with the `test-util` feature, in-memory job and object
//! stores for tests.

pub mod dynamo;
pub mod fhir_server;
pub mod lambda_invoke;
#[cfg(feature = "test-util")]
pub mod memory;
pub mod ndjson;
pub mod s3;
#[cfg(feature = "lambda")]
pub mod sqs;
#[cfg(feature = "lambda")]
pub mod ssm;
