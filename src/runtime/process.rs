//! Facts about this process that std does not offer.

/// The real user id of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Run `handler` when the process exits normally (`exit`, or returning
/// from `main`), before the handlers registered earlier (the libraries
/// loaded before it, whose state it may still need). Whether the system
/// took it.
pub fn at_exit(handler: extern "C" fn()) -> bool {
    // SAFETY: atexit stores a plain function pointer; the handler is an
    // `extern "C" fn()` that lives as long as the process (this library is
    // pinned in memory: `fork::pin_library_in_memory`).
    unsafe { libc::atexit(handler) == 0 }
}
