//! The `watchdog` Lambda function: on a schedule, delivers failed steps again
//! and restarts stalled chains.

use bulk_export_core::lambda::{
    failed_step_queue_from_env, init_logging, services_from_env, watchdog_handler,
};
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
            let (report, drained) = watchdog_handler(services, failed).await?;
            Ok::<_, Error>(serde_json::json!({
                "jobs": report.jobs,
                "restarted": report.restarted,
                "redelivered": drained.redelivered,
                "staleFailedSteps": drained.stale,
            }))
        },
    ))
    .await
}
