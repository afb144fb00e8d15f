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
    if !crate::runtime::threads::join_within(r.join, STOP_WAIT) {
        crate::log_warn!("the background health check is still running; not waited for");
    }
}
