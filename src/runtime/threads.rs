//! Whether the module may start threads of its own: not when the
//! application said so at `C_Initialize` (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`).
//! Threads are only ever a speed-up (the change listener); without them
//! the module polls instead.

use std::sync::atomic::{AtomicBool, Ordering};

static ALLOWED: AtomicBool = AtomicBool::new(true);

/// Set at each `C_Initialize`, before the module starts.
pub fn set_allowed(allowed: bool) {
    ALLOWED.store(allowed, Ordering::Release);
}

pub fn allowed() -> bool {
    ALLOWED.load(Ordering::Acquire)
}
