//! The `kickoff` Lambda function: HTTP API kick-off requests and EventBridge
//! Scheduler events (scheduled exports). Routes are set in template.yaml.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bulk_export_core::lambda::run_kickoff_function().await
}
