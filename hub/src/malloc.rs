//! The allocator's arenas.
//!
//! glibc gives threads that allocate at the same time arenas of their own, up to eight per core,
//! and memory freed in one arena is only reused by threads allocating from that arena. The hub
//! allocates and frees on different threads (tokio's workers, and the blocking threads that run
//! storage and serialise its batches), so free memory piled up in arenas that allocated little
//! afterwards: with 10,000 twins at 10,000 msg/s for a minute, RSS was 590 MB with glibc's default
//! and 486 MB with two arenas, in back-to-back runs of `compare --twins 10000`. Since the hub runs
//! its asynchronous work on one thread (`hub.worker_threads`), one arena is enough: for 4 minutes
//! of the same load RSS was 131–164 MiB against 145–168 with two, at the same CPU per message
//! (the threads that share the arena rarely allocate at the same moment).

/// Limits glibc to one malloc arena. Call it first thing in `main`, before any thread starts.
/// Other C libraries (musl) have no arenas; there it does nothing.
pub fn limit_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes two integers and changes only the allocator's settings; no memory
        // is passed or returned.
        #[allow(unsafe_code)]
        let accepted = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        accepted == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hands memory that is free inside the allocator back to the kernel (glibc's `malloc_trim`);
/// true when some was. glibc returns freed memory on its own only from the top of the main heap,
/// so a burst (a commit copying thousands of twins, a backlog the broker let through) otherwise
/// stays in the process's RSS for good. It walks every arena under its lock, so it runs on a
/// blocking thread and not often. Elsewhere it does nothing.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a size and only changes the allocator's own bookkeeping and
        // page mappings of free chunks; no memory in use is touched.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The default of [`release_free_memory`]'s period (`hub.release_memory_every_ms`).
pub const DEFAULT_RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_arena_limit() {
        assert!(super::limit_arenas());
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_memory_goes_back_to_the_kernel() {
        // Many small blocks (below glibc's mmap threshold, so they live in the heap), all freed
        // but the last, which pins the heap's top: only a trim can give the rest back.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 4000]).collect();
        let pin = vec![1u8; 4000];
        drop(blocks);
        assert!(
            super::release_free_memory(),
            "about 80 MB were free to release"
        );
        assert_eq!(pin[0], 1);
    }
}
