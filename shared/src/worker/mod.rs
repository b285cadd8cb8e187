//! The chunk-worker: one step of a chain reads source pages through the page
//! pipeline, the part writer uploads and commits parts, and the lifecycle
//! decides when chains and jobs finish. The watchdog and redelivery restart
//! what stalled or failed.

pub(crate) mod deadline;
pub mod file_closing;
pub mod in_process;
pub mod lifecycle;
pub mod outcome;
pub mod page_pipeline;
pub(crate) mod page_skip;
pub mod part_writer;
pub mod partition;
pub mod redelivery;
pub mod referenced;
pub mod step;
pub mod watchdog;
