//! The `status` Lambda function: API Gateway HTTP API events into the shared API.
//! Its routes are set in template.yaml; the library dispatches by route.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bulk_export_core::lambda::run_http_function().await
}
