//! The `watchdog` Lambda function: on a schedule, restarts stalled chains.

use bulk_export_core::lambda::{init_logging, services_from_env, watchdog_handler};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    run(service_fn(
        move |_event: LambdaEvent<serde_json::Value>| async move {
            let report = watchdog_handler(services).await?;
            Ok::<_, Error>(
                serde_json::json!({ "jobs": report.jobs, "restarted": report.restarted }),
            )
        },
    ))
    .await
}
