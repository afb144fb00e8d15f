//! Whether the module may start threads of its own: not when the
//! application said so at `C_Initialize` (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`).
//! Threads are only ever a speed-up (the change listener, the background
//! health check, calls under a time-out); without them the module polls,
//! or runs the work on the calling thread, instead.

use std::sync::atomic::{AtomicBool, Ordering};

static ALLOWED: AtomicBool = AtomicBool::new(true);

/// Set at each `C_Initialize`, before the module starts.
pub fn set_allowed(allowed: bool) {
    ALLOWED.store(allowed, Ordering::Release);
}

pub fn allowed() -> bool {
    ALLOWED.load(Ordering::Acquire)
}

/// Join `thread` if it ends within `wait`; else leave it to end alone
/// (a thread stuck in a blocking call must not hold up `C_Finalize`).
/// Whether it was joined.
pub fn join_within(thread: std::thread::JoinHandle<()>, wait: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    while !thread.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if thread.is_finished() {
        let _ = thread.join();
        return true;
    }
    false
}
