//! In-memory [`JobStore`](crate::ports::job_store::JobStore) and
//! [`ObjectStore`](crate::ports::object_store::ObjectStore), for unit tests of
//! chain behaviour without loopback servers (cargo feature `test-util`).
//!
//! Both follow the production adapters' semantics, as pinned by the port
//! conformance suite (`tests/tests/suite/conformance.rs`) that runs the same
//! cases against them, dynoxide + s3s-fs and moto: optimistic versions and
//! `StoreError::Conflict`, all-or-nothing transactions, multipart uploads
//! whose parts are replaced on re-upload and checked by ETag on completion.
//! Every operation holds one `std::sync::Mutex` for its whole duration and
//! never awaits while holding it, so each is atomic, as a DynamoDB
//! transaction or a single S3 request is.

mod job_store;
mod object_store;

pub use job_store::MemoryJobStore;
pub use object_store::{MIN_PART_SIZE, MemoryObjectStore};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the state from a poisoned lock (a test that panicked
/// while holding it cannot have left a half-applied operation: every
/// operation checks all its conditions before it changes anything).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
