//! The capabilities an export needs, built once per process. Every use case
//! asks only for the capabilities it uses (`svc: &impl ReadJobs + CountPolls`),
//! so its signature says what it may touch and each Lambda function's IAM
//! policy follows from the signatures of the use cases it runs.

use crate::model::config::ExportConfig;
use crate::ports::continuation::Continuation;
use crate::ports::job_store::{
    ChainWrites, FileRecords, JobReads, JobStore, JobWrites, PollCounter, ScheduleLog,
};
use crate::ports::object_store::ObjectStore;
use crate::ports::source::Source;
use std::sync::Arc;

/// Everything a handler or a chain step may talk to; the composition root
/// builds one per process.
#[derive(Clone)]
pub struct ExportServices {
    /// Settings.
    pub config: Arc<ExportConfig>,
    /// Job, chain and file records.
    pub store: Arc<dyn JobStore>,
    /// Output files.
    pub objects: Arc<dyn ObjectStore>,
    /// Where resources come from.
    pub source: Arc<dyn Source>,
    /// How the next step of a chain gets run.
    pub continuation: Arc<dyn Continuation>,
}

/// Reads the settings.
pub trait Settings {
    /// The process's settings.
    fn config(&self) -> &ExportConfig;
}

/// Reads jobs and chains (DynamoDB GetItem and Query).
pub trait ReadJobs {
    /// Job and chain reads.
    fn jobs(&self) -> &dyn JobReads;
}

/// Creates, transitions, cancels and deletes jobs.
pub trait WriteJobs {
    /// Job writes.
    fn job_writes(&self) -> &dyn JobWrites;
}

/// Commits chain progress.
pub trait WriteChains {
    /// Chain writes.
    fn chains(&self) -> &dyn ChainWrites;
}

/// Records and lists completed files.
pub trait RecordFiles {
    /// File records.
    fn files(&self) -> &dyn FileRecords;
}

/// Counts status polls (a write).
pub trait CountPolls {
    /// The poll counter.
    fn polls(&self) -> &dyn PollCounter;
}

/// Reads and records schedules' last successful exports.
pub trait LogSchedules {
    /// The schedule log.
    fn schedules(&self) -> &dyn ScheduleLog;
}

/// Writes, signs, lists and deletes output objects (S3).
pub trait StoreObjects {
    /// The object store (shared, so a task it spawns can hold it).
    fn objects(&self) -> &Arc<dyn ObjectStore>;
}

/// Reads the resource source.
pub trait ReadSource {
    /// The source (shared, so a prefetch task can hold it).
    fn source(&self) -> &Arc<dyn Source>;
}

/// Schedules chain steps (Lambda Invoke, or the in-process queue).
pub trait ScheduleSteps {
    /// The continuation.
    fn continuation(&self) -> &Arc<dyn Continuation>;
}

/// Each accessor hands out one field of [`ExportServices`] as its capability.
macro_rules! capability {
    ($trait:ident, $method:ident, $ty:ty, |$s:ident| $get:expr) => {
        impl $trait for ExportServices {
            fn $method(&self) -> $ty {
                let $s = self;
                $get
            }
        }
    };
}

capability!(Settings, config, &ExportConfig, |s| &s.config);
capability!(ReadJobs, jobs, &dyn JobReads, |s| &*s.store);
capability!(WriteJobs, job_writes, &dyn JobWrites, |s| &*s.store);
capability!(WriteChains, chains, &dyn ChainWrites, |s| &*s.store);
capability!(RecordFiles, files, &dyn FileRecords, |s| &*s.store);
capability!(CountPolls, polls, &dyn PollCounter, |s| &*s.store);
capability!(LogSchedules, schedules, &dyn ScheduleLog, |s| &*s.store);
capability!(StoreObjects, objects, &Arc<dyn ObjectStore>, |s| &s.objects);
capability!(ReadSource, source, &Arc<dyn Source>, |s| &s.source);
capability!(ScheduleSteps, continuation, &Arc<dyn Continuation>, |s| &s
    .continuation);

/// What ends chains and jobs (worker lifecycle): everything but the poll
/// counter and the source. Status and cancel reach it too, so their Lambda
/// functions write jobs, chains and files, delete objects and invoke the worker.
pub trait LifecycleServices:
    Settings
    + ReadJobs
    + WriteJobs
    + WriteChains
    + RecordFiles
    + LogSchedules
    + StoreObjects
    + ScheduleSteps
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> LifecycleServices for T where
    T: Settings
        + ReadJobs
        + WriteJobs
        + WriteChains
        + RecordFiles
        + LogSchedules
        + StoreObjects
        + ScheduleSteps
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// What a chain step uses: the lifecycle's capabilities plus the source.
pub trait StepServices: LifecycleServices + ReadSource {}

impl<T> StepServices for T where T: LifecycleServices + ReadSource {}
