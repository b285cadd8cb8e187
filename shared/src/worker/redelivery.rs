//! Steps whose asynchronous invocation Lambda gave up on. The chunk-worker's
//! on-failure destination (an SQS queue) receives one record per such step;
//! the watchdog drains it and delivers each step again at once, instead of
//! waiting for the stall timeout. A record of a step the chain has moved past
//! is dropped: replaying it would be a harmless `Stale` anyway.

use crate::model::{ChainState, StepEvent};
use crate::ports::failed_steps::{FailedStepInbox, InboxError};
use crate::ports::services::{ReadJobs, ScheduleSteps};
use crate::worker::outcome::StepError;

/// Most receive calls one drain makes (10 records each).
const MAX_BATCHES: usize = 20;

/// Why the inbox could not be drained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// The inbox failed.
    #[error(transparent)]
    Inbox(#[from] InboxError),
    /// Redelivering a step failed; the record stays in the inbox.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// What draining the failed-step records did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Records read.
    pub received: usize,
    /// Steps scheduled again.
    pub redelivered: usize,
    /// Records of steps their chain had already moved past (or finished).
    pub stale: usize,
    /// Records that held no step event.
    pub unreadable: usize,
}

/// The step event in a Lambda destination record (`requestPayload`), or in a
/// bare step event.
pub fn step_of_record(body: &str) -> Option<StepEvent> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let payload = v.get("requestPayload").unwrap_or(&v);
    serde_json::from_value(payload.clone()).ok()
}

/// Schedules `ev` again if its chain is still waiting for exactly that step.
pub async fn redeliver(
    svc: &(impl ReadJobs + ScheduleSteps),
    ev: &StepEvent,
) -> Result<bool, StepError> {
    let Some(chain) = svc.jobs().get_chain(&ev.job_id, &ev.chain_id).await? else {
        return Ok(false);
    };
    if chain.state != ChainState::Running || chain.step != ev.step {
        return Ok(false);
    }
    svc.continuation().schedule(ev.clone()).await?;
    Ok(true)
}

/// Handles one record body, counting it in `report`.
pub async fn handle_record(
    svc: &(impl ReadJobs + ScheduleSteps),
    body: &str,
    report: &mut DrainReport,
) -> Result<(), StepError> {
    report.received += 1;
    match step_of_record(body) {
        None => report.unreadable += 1,
        Some(ev) => {
            if redeliver(svc, &ev).await? {
                tracing::info!(job_id = %ev.job_id, chain = %ev.chain_id, step = ev.step, "failed step delivered again");
                report.redelivered += 1;
            } else {
                report.stale += 1;
            }
        }
    }
    Ok(())
}

/// Delivers every failed step again (or drops its record if the chain has
/// moved on), deleting each record once handled.
pub async fn drain(
    svc: &(impl ReadJobs + ScheduleSteps),
    inbox: &dyn FailedStepInbox,
) -> Result<DrainReport, DrainError> {
    let mut report = DrainReport::default();
    for _ in 0..MAX_BATCHES {
        let records = inbox.receive(10).await?;
        if records.is_empty() {
            break;
        }
        for r in records {
            handle_record(svc, &r.body, &mut report).await?;
            if let Some(receipt) = &r.receipt {
                inbox.delete(receipt).await?;
            }
        }
    }
    if report.unreadable > 0 {
        tracing::warn!(
            unreadable = report.unreadable,
            "failed-step records without a step event were dropped"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_step_from_a_destination_record() {
        let record = r#"{"version":"1.0","timestamp":"2026-11-26T10:00:00.000Z",
            "requestContext":{"requestId":"r","functionArn":"arn:aws:lambda:us-east-1:1:function:w:$LATEST","condition":"RetriesExhausted","approximateInvokeCount":3},
            "requestPayload":{"job_id":"j1","chain_id":"Observation.p2","step":7},
            "responseContext":{"statusCode":200,"functionError":"Unhandled"},"responsePayload":{"errorMessage":"x"}}"#;
        let ev = step_of_record(record).unwrap();
        assert_eq!(
            (ev.job_id.as_str(), ev.chain_id.as_str(), ev.step),
            ("j1", "Observation.p2", 7)
        );
        assert!(step_of_record(r#"{"job_id":"j","chain_id":"c","step":0}"#).is_some());
        assert!(step_of_record("not json").is_none());
        assert!(step_of_record(r#"{"requestPayload":{"x":1}}"#).is_none());
    }
}
