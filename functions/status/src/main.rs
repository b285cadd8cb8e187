//! The `status` Lambda function: API Gateway HTTP API events into the shared API.

use bulk_export_core::lambda::{http_handler, init_logging, services_from_env};
use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    run(service_fn(move |event| async move {
        Ok::<_, Error>(http_handler(services, event).await)
    }))
    .await
}
