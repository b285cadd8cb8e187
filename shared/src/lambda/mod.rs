//! Lambda entry adapters: each function's typed event into a library call.
//! Services are built once per process by the composition root.

mod http;
mod kickoff;
mod logging;
mod watchdog;
mod worker;

pub use http::{api_gateway_handler, caller_from_context, http_handler};
pub use kickoff::{KickoffEvent, KickoffReply, ScheduleEvent, kickoff_handler};
pub use logging::init_logging;
pub use watchdog::{TickReport, tick, watchdog_handler};
pub use worker::{StepFailure, worker_handler};

use crate::compose::aws::services_from_env;

/// Runs the kick-off function: HTTP API requests and scheduler events.
pub async fn run_kickoff_function() -> Result<(), lambda_runtime::Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<KickoffEvent>| async move {
            Ok::<_, lambda_runtime::Error>(kickoff_handler(services, event.payload).await)
        },
    ))
    .await
}

/// Runs an HTTP-only API function (status, cancel) with `lambda_http`.
pub async fn run_http_function() -> Result<(), lambda_runtime::Error> {
    init_logging();
    let services = services_from_env().await?;
    let services = &services;
    lambda_http::run(lambda_http::service_fn(
        move |request: lambda_http::Request| async move {
            Ok::<_, lambda_runtime::Error>(http_handler(services, request).await)
        },
    ))
    .await
}
