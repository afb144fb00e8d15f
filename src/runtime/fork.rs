//! Telling a fork child from the process that initialised the module.
//!
//! A pthread_atfork handler bumps a counter in the child. Comparing it is a
//! load, where comparing pids would be a system call on every PKCS#11 call.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many fork()s this process descends from since the module was loaded.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The fork generation of this process, for state that must not be carried
/// into a child (the module itself, which pages are locked).
pub fn generation() -> u64 {
    FORKS.load(Ordering::Acquire)
}

extern "C" fn forked_child() {
    FORKS.fetch_add(1, Ordering::AcqRel);
    super::inflight::reset_after_fork();
}

/// Install the handler (once per process). Returns false if the system
/// refused it; a fork child may then reuse its parent's module.
pub fn watch() -> bool {
    static WATCHING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WATCHING.get_or_init(|| {
        // SAFETY: registers a handler that only touches atomics, which is
        // what a pthread_atfork child handler may do.
        unsafe { libc::pthread_atfork(None, None, Some(forked_child)) == 0 }
    })
}

/// Keep this library mapped until the process exits. Libraries inside it
/// (AWS-LC's per-thread error state, for one) register thread-exit
/// destructors; if the host dlclose()d us, a thread exiting later would
/// jump into unmapped code. Returns false if it could not be pinned.
pub fn pin_library_in_memory() -> bool {
    static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| {
        // SAFETY: dladdr/dlopen on an address inside this library; the
        // handle is kept forever on purpose (RTLD_NODELETE), nothing is
        // freed, and `info` is only read after dladdr filled it.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            let here = pin_library_in_memory as *const libc::c_void;
            if libc::dladdr(here, &mut info) == 0 || info.dli_fname.is_null() {
                return false;
            }
            let flags = libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE;
            !libc::dlopen(info.dli_fname, flags).is_null()
        }
    })
}
