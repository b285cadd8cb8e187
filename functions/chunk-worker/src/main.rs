//! The `chunk-worker` Lambda function: runs one step of one chain per invocation.

use bulk_export_core::compose::aws::services_from_env;
use bulk_export_core::lambda::{init_logging, worker_handler};
use bulk_export_core::model::StepEvent;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    run(service_fn(
        move |event: LambdaEvent<StepEvent>| async move {
            let deadline = event.context.deadline;
            worker_handler(services, event.payload, deadline).await
        },
    ))
    .await
}
