//! With several HSMs, the health check runs on a thread of the module's
//! own (`Envelope::health_tick`): members that went down are looked for and
//! proven again, and the KEK versions checked, before the soft TTL lapses,
//! so application calls seldom pay for it and a member that comes back is
//! used without waiting for a call to find it. Started at `C_Initialize`
//! (not under `CKF_LIBRARY_CANT_CREATE_OS_THREADS`), stopped at
//! `C_Finalize`; it reaches the module as calls do, for the length of one
//! tick.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::runtime::lock::unpoisoned;

/// How long `C_Finalize` waits for a tick in progress. A tick's calls are
/// bounded by `hsm_timeout_ms` when it is set (each KEK call, and loading a
/// missing member's module); without it a hung HSM holds the tick, and
/// `C_Finalize` then leaves the backend as it is after its own wait.
const STOP_WAIT: Duration = Duration::from_secs(10);

struct Running {
    /// Set to stop; the thread waits on the condvar between ticks.
    stop: Arc<(Mutex<bool>, Condvar)>,
    join: JoinHandle<()>,
    /// The process that started it (a fork child has no such thread).
    pid: u32,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// How long the process's exit waits for a tick, or a call given up on,
/// still inside an HSM's library.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// At process exit without `C_Finalize` (many applications just exit):
/// the module's own threads must not be inside an HSM's library while the
/// libraries are torn down. Stop the thread, and wait a little for calls
/// given up on (`hsm_timeout_ms`).
extern "C" fn at_exit() {
    stop_within(EXIT_WAIT);
    if let Ok(m) = super::module::get() {
        if let Some(env) = &m.envelope {
            env.wait_given_up_within(EXIT_WAIT);
        }
    }
}

/// Register `at_exit` (once per process): when the module has threads of
/// its own (this one, or calls under `hsm_timeout_ms`).
pub fn guard_exit() {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        if !crate::runtime::process::at_exit(at_exit) {
            crate::log_warn!("could not register the exit handler of the module's threads");
        }
    });
}

/// Start the thread for the module of `generation`, ticking every
/// `interval`.
pub fn start(generation: u64, interval: Duration) {
    if !crate::runtime::threads::allowed() {
        return;
    }

    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("hsme-health".into())
        .spawn(move || run(generation, interval, &flag));
    match spawned {
        Ok(join) => {
            let pid = std::process::id();
            *unpoisoned(RUNNING.lock()) = Some(Running { stop, join, pid });
        }
        Err(e) => crate::log_warn!(
            "the background health check did not start ({e}); it runs on calls instead"
        ),
    }
}

fn run(generation: u64, interval: Duration, stop: &(Mutex<bool>, Condvar)) {
    let (lock, cv) = stop;
    loop {
        let stopped = unpoisoned(lock.lock());
        let (stopped, _) = cv
            .wait_timeout_while(stopped, interval, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        if *stopped {
            return;
        }
        drop(stopped);
        // The module as a call sees it, for this tick only; gone: done.
        let Ok(m) = super::module::get() else {
            return;
        };
        if m.generation != generation {
            return;
        }
        if let Some(env) = &m.envelope {
            env.health_tick();
        }
    }
}

/// Stop the thread (at `C_Finalize`, before the module is retired): waits
/// for a tick in progress up to `STOP_WAIT`, else leaves it to end alone.
pub fn stop() {
    stop_within(STOP_WAIT);
}

fn stop_within(wait: Duration) {
    let Some(r) = unpoisoned(RUNNING.lock()).take() else {
        return;
    };
    if r.pid != std::process::id() {
        // A fork child: the thread stayed with the parent.
        return;
    }
    {
        let (lock, cv) = &*r.stop;
        *unpoisoned(lock.lock()) = true;
        cv.notify_all();
    }
    if !crate::runtime::threads::join_within(r.join, wait) {
        crate::log_warn!("the background health check is still running; not waited for");
    }
}
