//! Handing free heap memory back to the system. glibc keeps freed memory for reuse, so
//! without this the resident size stays near its peak: after a burst of large
//! responses (once the pool has closed the idle upstream connections that held their
//! buffers), and after a policy is applied (parsing and compiling a large policy
//! allocates far more than the compiled result keeps).

/// Return the heap's free memory to the system now (on this thread).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
    // preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The same, on a short-lived thread of its own: walking a large heap takes a few
/// milliseconds that no runtime worker should spend.
pub fn release_free_memory_soon() {
    let _ = std::thread::Builder::new()
        .name("ssqd-trim".into())
        .stack_size(64 * 1024)
        .spawn(release_free_memory);
}
