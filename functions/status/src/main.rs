//! The `status` Lambda function: API Gateway HTTP API events into the shared API.

use bulk_export_core::lambda::{api_event_handler, init_logging, services_from_env};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            Ok::<_, Error>(api_event_handler(services, event.payload).await)
        },
    ))
    .await
}
