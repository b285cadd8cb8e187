//! The `watchdog` Lambda function: on a schedule, delivers failed steps again
//! and restarts stalled chains.

use bulk_export_core::compose::aws::{failed_step_queue_from_env, services_from_env};
use bulk_export_core::lambda::{init_logging, tick};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    let failed = failed_step_queue_from_env().await;
    let failed = failed.as_ref();
    run(service_fn(
        move |_event: LambdaEvent<serde_json::Value>| async move {
            Ok::<_, Error>(tick(services, failed).await?)
        },
    ))
    .await
}
