//! In-process continuation: a queue drained by a bounded pool of tokio tasks
//! that run exactly the same step function as the Lambda chunk-worker.

use super::{Continuation, ContinuationError};
use crate::chain::run_step;
use crate::job::StepEvent;
use crate::services::ExportServices;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};

/// The sending half: schedules steps onto the queue.
#[derive(Clone)]
pub struct InProcessContinuation {
    tx: mpsc::UnboundedSender<StepEvent>,
}

/// The receiving half: steps waiting to run.
pub struct StepQueue {
    rx: Mutex<mpsc::UnboundedReceiver<StepEvent>>,
}

/// A new queue and its continuation.
pub fn step_queue() -> (InProcessContinuation, Arc<StepQueue>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        InProcessContinuation { tx },
        Arc::new(StepQueue { rx: Mutex::new(rx) }),
    )
}

#[async_trait]
impl Continuation for InProcessContinuation {
    async fn schedule(&self, event: StepEvent) -> Result<(), ContinuationError> {
        self.tx
            .send(event)
            .map_err(|_| ContinuationError("step queue closed".into()))
    }
}

impl StepQueue {
    /// Takes the next waiting step without blocking.
    pub async fn try_next(&self) -> Option<StepEvent> {
        self.rx.lock().await.try_recv().ok()
    }

    /// Waits for the next step; `None` once every sender is gone.
    pub async fn next(&self) -> Option<StepEvent> {
        self.rx.lock().await.recv().await
    }

    /// Runs `workers` tasks that execute steps until the queue closes.
    pub fn spawn_workers(
        self: &Arc<Self>,
        services: ExportServices,
        workers: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..workers)
            .map(|_| {
                let queue = Arc::clone(self);
                let services = services.clone();
                tokio::spawn(async move {
                    while let Some(event) = queue.next().await {
                        if let Err(e) = run_step(&services, &event, None).await {
                            tracing::warn!(job_id = %event.job_id, chain = %event.chain_id, step = event.step, error = %e, "step failed; the watchdog will retry it");
                        }
                    }
                })
            })
            .collect()
    }
}
