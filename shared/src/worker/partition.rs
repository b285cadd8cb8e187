//! Splitting one large resource type into `_lastUpdated` partitions, so it is
//! exported by several chains at once instead of one sequential chain.
//!
//! The first step of a type's chain, once the source reports its count,
//! bisects the type's time window with count probes until every range holds
//! at most the target (or the probe, partition or time-resolution limits are
//! reached). The ranges cover the window exactly, end to end, with shared
//! millisecond bounds (`(a, b]`, `(b, c]` …), so every resource falls in
//! exactly one partition whatever the probes' accuracy.

use crate::fhir::instant::format_instant;
use crate::fhir::instant::unix_now;
use crate::model::new_chain;
use crate::model::{Chain, Job, Partition};
use crate::ports::job_store::StoreError;
use crate::ports::services::{ReadJobs, ReadSource, ScheduleSteps, Settings, WriteChains};
use crate::ports::source::{PageRequest, SourceError};
use crate::worker::deadline::before_deadline;
use crate::worker::outcome::{StepError, StepOutcome};
use std::future::Future;
use time::{Duration, OffsetDateTime};
use tokio::time::Instant;

/// Most count probes one split may issue.
pub const MAX_PROBES: usize = 64;

/// One planned range `(after, upto]` and its resource count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Exclusive lower bound; `None` is the job's own lower bound.
    pub after: Option<OffsetDateTime>,
    /// Inclusive upper bound.
    pub upto: OffsetDateTime,
    /// Resources in the range when probed.
    pub count: u64,
}

impl Range {
    /// The chain partition for this range; `last` ranges keep the job's upper
    /// bound implicit.
    pub fn partition(&self, last: bool) -> Partition {
        Partition {
            after: self.after.map(format_instant),
            upto: (!last).then(|| format_instant(self.upto)),
        }
    }
}

struct Pending {
    range: Range,
    /// Known-empty below `floor` and above `ceil`: bisection works inside.
    floor: OffsetDateTime,
    ceil: OffsetDateTime,
    splittable: bool,
}

fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(t)
}

/// Plans the ranges of a window `(since, until]` holding `total` resources.
/// `count(after, upto)` counts the resources in `(after, upto]`.
pub async fn plan<F, Fut>(
    since: Option<OffsetDateTime>,
    until: OffsetDateTime,
    total: u64,
    target: u64,
    max_parts: usize,
    count: F,
) -> Result<Vec<Range>, SourceError>
where
    F: Fn(Option<OffsetDateTime>, OffsetDateTime) -> Fut,
    Fut: Future<Output = Result<u64, SourceError>>,
{
    let floor = since.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut parts = vec![Pending {
        range: Range {
            after: since,
            upto: until,
            count: total,
        },
        floor,
        ceil: until,
        splittable: true,
    }];
    let mut probes = 0usize;
    while parts.len() < max_parts && probes < MAX_PROBES {
        let Some(i) = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.splittable && p.range.count > target)
            .max_by_key(|(_, p)| p.range.count)
            .map(|(i, _)| i)
        else {
            break;
        };
        let p = &mut parts[i];
        let mid = truncate_ms(p.floor + (p.ceil - p.floor) / 2);
        if mid <= p.floor || mid >= p.ceil || p.ceil - p.floor < Duration::milliseconds(2) {
            // Many resources share one instant: no finer split exists.
            p.splittable = false;
            continue;
        }
        probes += 1;
        let left = count(p.range.after, mid).await?.min(p.range.count);
        if left == 0 {
            p.floor = mid;
        } else if left == p.range.count {
            p.ceil = mid;
        } else {
            let right = Pending {
                range: Range {
                    after: Some(mid),
                    upto: p.range.upto,
                    count: p.range.count - left,
                },
                floor: mid,
                ceil: p.ceil,
                splittable: true,
            };
            p.range.upto = mid;
            p.range.count = left;
            p.ceil = mid;
            parts.insert(i + 1, right);
        }
    }
    Ok(parts.into_iter().map(|p| p.range).collect())
}

/// Splits a large type's chain into `_lastUpdated` partitions: this chain
/// keeps the first, sibling chains take the rest, in one transaction (a
/// retried split finds the siblings and loses its version check).
pub async fn split_chain(
    svc: &(impl ReadJobs + ReadSource + ScheduleSteps + Settings + WriteChains),
    job: &Job,
    mut chain: Chain,
    window: (Option<OffsetDateTime>, OffsetDateTime),
    total: u64,
    deadline: Option<Instant>,
) -> Result<StepOutcome, StepError> {
    // Probes that run into the deadline plan nothing: one chain is slower,
    // never wrong, and the chain is marked so it is not probed again.
    let ranges = before_deadline(deadline, plan_partitions(svc, job, &chain, window, total))
        .await
        .unwrap_or_default();
    if let Some(first) = ranges.first().filter(|_| ranges.len() > 1) {
        chain.partition = Some(first.partition(false));
        chain.total = Some(first.count);
    } else {
        // Nothing to split: mark the chain so the next step does not probe again.
        chain.partition = Some(crate::model::Partition {
            after: None,
            upto: None,
        });
        chain.total = Some(total);
    }
    let siblings = sibling_chains(job, &chain, &ranges);
    chain.step += 1;
    chain.heartbeat = unix_now();
    let split = svc
        .chains()
        .split_chain(&mut chain, &siblings, job.expires_at)
        .await;
    if !split_applied(svc, &mut chain, split).await? {
        return Ok(StepOutcome::Stale);
    }
    tracing::info!(job_id = %job.id, chain = %chain.chain_id, partitions = siblings.len() + 1, "type split into partitions");
    for c in siblings.iter().chain(std::iter::once(&chain)) {
        svc.continuation().schedule(c.event()).await?;
    }
    Ok(StepOutcome::Continued)
}

/// Whether this delivery's split landed. A split whose reply was lost (the
/// transaction applied, the SDK gave up) is recognised by reading the chain
/// back: this delivery's claim (`attempt`) at the split's step can only be
/// there if its own transaction wrote it, and its siblings, created in that
/// same transaction, would otherwise never be scheduled.
async fn split_applied(
    svc: &impl ReadJobs,
    chain: &mut Chain,
    split: Result<(), StoreError>,
) -> Result<bool, StepError> {
    let err = match split {
        Ok(()) => return Ok(true),
        Err(StoreError::Conflict) => return Ok(false),
        Err(e) => e,
    };
    match svc.jobs().get_chain(&chain.job_id, &chain.chain_id).await {
        Ok(Some(stored))
            if stored.attempt == chain.attempt
                && stored.step == chain.step
                && stored.partition == chain.partition =>
        {
            tracing::warn!(job_id = %chain.job_id, chain = %chain.chain_id, error = %err, "split applied though its reply was lost");
            chain.version = stored.version;
            Ok(true)
        }
        _ => Err(err.into()),
    }
}

/// Plans the chain's partitions with count probes against the source; no
/// ranges when the probes fail, as exporting as one chain is slower, never
/// wrong.
async fn plan_partitions(
    svc: &(impl ReadSource + Settings),
    job: &Job,
    chain: &Chain,
    (since, until): (Option<OffsetDateTime>, OffsetDateTime),
    total: u64,
) -> Vec<Range> {
    let cfg = &svc.config();
    let ty = chain.resource_type.clone();
    let scope = job.scope.clone();
    let count = |after: Option<OffsetDateTime>, upto: OffsetDateTime| {
        let ty = ty.clone();
        let scope = scope.clone();
        async move {
            let req = PageRequest {
                resource_type: &ty,
                cursor: None,
                since: after,
                until: upto,
                type_filters: &[],
                page_size: 1,
                scope: &scope,
                batch: None,
                read_ahead_below: 0,
            };
            svc.source().estimate(&req).await?.ok_or_else(|| {
                SourceError::Permanent("the source gave no count for a partition probe".into())
            })
        }
    };
    match plan(
        since,
        until,
        total,
        cfg.partition_target,
        cfg.max_partitions,
        count,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            // Exporting as one chain is slower, never wrong.
            tracing::warn!(job_id = %job.id, chain = %chain.chain_id, error = %e, "partition probes failed; one chain");
            vec![]
        }
    }
}

/// The chains of every range but the first (which the splitting chain
/// keeps), named after it so a retried split creates the same ones.
fn sibling_chains(job: &Job, chain: &Chain, ranges: &[Range]) -> Vec<Chain> {
    let last = ranges.len().saturating_sub(1);
    ranges
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, r)| {
            let mut c = new_chain(
                &job.id,
                &format!("{}.p{i}", chain.chain_id),
                &chain.resource_type,
            );
            c.partition = Some(r.partition(i == last));
            c.total = Some(r.count);
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    /// Resources at these instants; ranges must cover them exactly once.
    async fn check(
        times: &[i64],
        since: Option<i64>,
        until: i64,
        target: u64,
        max: usize,
    ) -> Vec<Range> {
        let probes = Cell::new(0);
        let in_range = |after: Option<OffsetDateTime>, upto: OffsetDateTime, t: i64| {
            after.is_none_or(|a| at(t) > a) && at(t) <= upto
        };
        let ranges = plan(
            since.map(at),
            at(until),
            times.len() as u64,
            target,
            max,
            |after, upto| {
                probes.set(probes.get() + 1);
                let n = times.iter().filter(|t| in_range(after, upto, **t)).count() as u64;
                async move { Ok(n) }
            },
        )
        .await
        .unwrap();
        assert!(probes.get() <= MAX_PROBES);
        assert!(ranges.len() <= max);
        for t in times {
            let owners = ranges
                .iter()
                .filter(|r| in_range(r.after, r.upto, *t))
                .count();
            assert_eq!(owners, 1, "instant {t} in exactly one range: {ranges:?}");
        }
        for r in &ranges {
            let n = times
                .iter()
                .filter(|t| in_range(r.after, r.upto, **t))
                .count() as u64;
            assert_eq!(n, r.count);
        }
        for w in ranges.windows(2) {
            assert_eq!(w[0].upto, w[1].after.unwrap(), "contiguous");
        }
        ranges
    }

    #[tokio::test]
    async fn splits_until_each_range_is_under_target() {
        let times: Vec<i64> = (0..1000).map(|i| 1_600_000_000 + i * 3_600).collect();
        let ranges = check(&times, None, 1_700_000_000, 100, 64).await;
        assert!(ranges.len() >= 10, "{}", ranges.len());
        assert!(ranges.iter().all(|r| r.count <= 100), "{ranges:?}");
    }

    #[tokio::test]
    async fn skewed_and_identical_instants_stay_exact() {
        let mut times: Vec<i64> = vec![1_650_000_000; 500];
        times.extend((0..300).map(|i| 1_600_000_000 + i * 60));
        let ranges = check(&times, Some(1_500_000_000), 1_700_000_000, 50, 64).await;
        assert!(
            ranges.iter().any(|r| r.count == 500),
            "the shared instant cannot split"
        );
        check(&times, None, 1_700_000_000, 50, 4).await;
        check(&[], None, 1_700_000_000, 50, 8).await;
    }
}
