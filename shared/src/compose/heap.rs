//! Part buffers of several MiB are allocated and freed all the time. glibc
//! raises its mmap threshold to the size of the first big block freed and
//! from then on serves such blocks from the heap, where they fragment: peak
//! RSS then creeps up with the size of the export. A fixed threshold keeps
//! every larger block in its own mapping, returned to the system when
//! freed, so memory stays flat however long a process exports. 4 MiB keeps
//! page-sized buffers (about 1 MB) in the heap, where reusing them costs no
//! page faults, and maps every part buffer.

/// Blocks at least this large get their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;

/// Makes freed large buffers go back to the system (glibc only; other
/// allocators are left alone). Called once at startup; idempotent.
#[allow(unsafe_code)]
pub fn return_freed_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters under glibc's own
        // lock (it is MT-safe) and takes no pointers; a fixed M_MMAP_THRESHOLD
        // also turns off the dynamic adjustment.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if ok != 1 {
            tracing::warn!("could not set the allocator's mmap threshold");
        }
    }
}
