//! The capabilities an export needs, built once per process and shared by
//! every handler and step.

use crate::config::ExportConfig;
use crate::continuation::Continuation;
use crate::job_store::JobStore;
use crate::object_store::ObjectStore;
use crate::source::Source;
use std::sync::Arc;

/// Everything a handler or a chain step talks to.
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
