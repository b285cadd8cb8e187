//! In-process continuation: a queue drained by a bounded pool of tokio tasks
//! that run exactly the same step function as the Lambda chunk-worker.

use crate::model::StepEvent;
use crate::ports::continuation::{Continuation, ContinuationError};
use crate::ports::services::ExportServices;
use crate::worker::step::run_step;
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};

/// Steps scheduled and not yet finished (waiting for a worker or running).
type Pending = Arc<std::sync::Mutex<HashSet<StepEvent>>>;

/// The sending half: schedules steps onto the queue.
#[derive(Clone)]
pub struct InProcessContinuation {
    tx: mpsc::UnboundedSender<StepEvent>,
    pending: Pending,
}

/// The receiving half: steps waiting to run.
pub struct StepQueue {
    rx: Mutex<mpsc::UnboundedReceiver<StepEvent>>,
    pending: Pending,
}

/// A new queue and its continuation.
pub fn step_queue() -> (InProcessContinuation, Arc<StepQueue>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Pending::default();
    (
        InProcessContinuation {
            tx,
            pending: pending.clone(),
        },
        Arc::new(StepQueue {
            rx: Mutex::new(rx),
            pending,
        }),
    )
}

fn set(p: &Pending) -> std::sync::MutexGuard<'_, HashSet<StepEvent>> {
    p.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Continuation for InProcessContinuation {
    async fn schedule(&self, event: StepEvent) -> Result<(), ContinuationError> {
        // A step already waiting or running is not queued twice.
        if !set(&self.pending).insert(event.clone()) {
            return Ok(());
        }
        self.tx
            .send(event)
            .map_err(|_| ContinuationError("step queue closed".into()))
    }

    async fn is_pending(&self, event: &StepEvent) -> bool {
        set(&self.pending).contains(event)
    }
}

impl StepQueue {
    /// Takes the next waiting step without blocking; the caller runs it.
    pub async fn try_next(&self) -> Option<StepEvent> {
        let ev = self.rx.lock().await.try_recv().ok()?;
        set(&self.pending).remove(&ev);
        Some(ev)
    }

    /// Waits for the next step; `None` once every sender is gone. The step
    /// stays pending until [`StepQueue::finished`].
    pub async fn next(&self) -> Option<StepEvent> {
        self.rx.lock().await.recv().await
    }

    /// Marks a step taken with [`StepQueue::next`] as finished.
    pub fn finished(&self, event: &StepEvent) {
        set(&self.pending).remove(event);
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
                        let result = run_step(&services, &event, None).await;
                        queue.finished(&event);
                        if let Err(e) = result {
                            tracing::warn!(job_id = %event.job_id, chain = %event.chain_id, step = event.step, error = %e, "step failed; the watchdog will retry it");
                        }
                    }
                })
            })
            .collect()
    }
}
