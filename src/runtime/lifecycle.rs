//! One published instance (the module between C_Initialize and C_Finalize)
//! that every call reaches without a lock or a shared write, and that is
//! freed only once no call uses it.
//!
//! Why no call can still be using the instance when it is freed: a call
//! does (A) count itself in (`inflight::enter`), then (B) load the pointer;
//! `retire` does (S) swap the pointer to null, then (L) read every counter
//! until it reads zero (`inflight::wait_idle`). A and B, and S and L, are
//! kept in order by a fence on each side: on the shared counters A is a
//! SeqCst read-modify-write, and all four are SeqCst, so they fall in one
//! total order that agrees with each thread's program order; on a thread's
//! own counter A is a plain store followed by a compiler fence, and
//! `wait_idle` runs membarrier(2) between S and L, which puts a full fence
//! in every running thread (a thread not running has passed one at its
//! switch), so either B sees S, or L sees A. Either way: a call that got
//! the instance at (B) read the pointer before (S) replaced it (nothing
//! else writes it while the lifecycle lock is held), so (L) sees its
//! count, and reads zero only once its matching decrement has happened
//! (each call's decrement follows its own increment on the same counter, so
//! no other call can cancel it out). That decrement is a release and (L) an
//! acquire, so everything the call did with the instance happens before it
//! is dropped. A call whose count comes after (S) loads null at (B) and
//! never touches it.
//!
//! After fork() the child sees nothing published (until it publishes its
//! own): the parent's instance, with its sessions and connections, is not
//! the child's to use or free, so it is leaked in the child.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{fork, inflight, lock::unpoisoned};

struct Entry<T> {
    /// The fork generation that published it.
    forks: u64,
    value: T,
}

pub struct Published<T> {
    current: AtomicPtr<Entry<T>>,
    /// Serialises publish and retire, so a new instance never starts under
    /// one still shutting down.
    lifecycle: Mutex<()>,
}

/// Held while publishing or retiring.
pub struct LifecycleGuard<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

/// What `retire` did.
pub enum Retired<T> {
    /// Nothing was published (in this process).
    NotPublished,
    /// Calls were still using it at the deadline: it is leaked, not freed.
    Leaked,
    /// Unpublished, and no call uses it any more.
    Done(T),
}

/// The instance, for the length of one call: `retire` waits for every
/// `Ref` to be dropped before it hands the instance back.
pub struct Ref<T: 'static> {
    entry: NonNull<Entry<T>>,
    counted: inflight::Counted,
}

// Not Send (NonNull keeps it so): it must be dropped on the thread that
// made it, which counted the call on its own counter (`inflight`), one only
// that thread writes.
// SAFETY: a shared `&Ref` only gives out `&T`, so it may be shared between
// threads exactly when `&T` may, i.e. when T is Sync; dropping needs the
// `Ref` itself, which stays on its thread.
unsafe impl<T: Sync> Sync for Ref<T> {}

impl<T> std::ops::Deref for Ref<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: counted in by `get`, so `retire` has not freed it (see the
        // module comment).
        unsafe { &self.entry.as_ref().value }
    }
}

impl<T> Drop for Ref<T> {
    fn drop(&mut self) {
        inflight::leave(self.counted);
    }
}

impl<T: Send + Sync + 'static> Default for Published<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Sync + 'static> Published<T> {
    pub const fn new() -> Self {
        Published {
            current: AtomicPtr::new(std::ptr::null_mut()),
            lifecycle: Mutex::new(()),
        }
    }

    pub fn lock(&self) -> LifecycleGuard<'_> {
        LifecycleGuard(unpoisoned(self.lifecycle.lock()))
    }

    /// The live instance, if this process published one.
    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn get(&'static self) -> Option<Ref<T>> {
        let counted = inflight::enter();
        let p = self.current.load(Ordering::SeqCst);
        // SAFETY: a non-null pointer is a leaked Box that `retire` frees
        // only after taking it out of `current` and seeing this call counted
        // out; a fork child's copy of the parent's instance is never freed.
        match unsafe { p.as_ref() } {
            Some(e) if e.forks == fork::generation() => Some(Ref {
                entry: NonNull::from(e),
                counted,
            }),
            _ => {
                inflight::leave(counted);
                None
            }
        }
    }

    /// Whether this process has a live instance (under the lifecycle lock).
    pub fn is_live(&self, _g: &LifecycleGuard<'_>) -> bool {
        let p = self.current.load(Ordering::SeqCst);
        // SAFETY: as in `get`; under the lifecycle lock nobody frees it.
        unsafe { p.as_ref() }.is_some_and(|e| e.forks == fork::generation())
    }

    /// Publish `value`; a fork parent's instance is replaced (and leaked).
    /// Check `is_live` first: a live instance is replaced too.
    pub fn publish(&self, _g: &LifecycleGuard<'_>, value: T) {
        inflight::prepare();
        let entry = Box::new(Entry {
            forks: fork::generation(),
            value,
        });
        self.current.store(Box::into_raw(entry), Ordering::SeqCst);
    }

    /// Unpublish, then wait until no call uses the instance or `deadline`
    /// passes.
    pub fn retire(&self, g: &LifecycleGuard<'_>, deadline: Instant) -> Retired<T> {
        if !self.is_live(g) {
            return Retired::NotPublished;
        }
        let p = self.current.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !inflight::wait_idle(deadline) {
            return Retired::Leaked;
        }
        // SAFETY: `p` came from Box::into_raw in `publish`, is no longer
        // reachable through `current`, and no call holds it (module comment).
        let entry = unsafe { Box::from_raw(p) };
        Retired::Done(entry.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    /// Marks itself dead when dropped; the flag outlives it.
    struct Probe(Arc<AtomicBool>);

    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }

    static P: Published<Probe> = Published::new();

    /// Readers hold the instance while it is retired and published again,
    /// over and over: none may ever hold one that was dropped.
    #[test]
    fn no_call_holds_an_instance_that_was_freed() {
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut held = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(r) = P.get() {
                            for _ in 0..50 {
                                assert!(
                                    r.0.load(Ordering::SeqCst),
                                    "an instance freed under a call"
                                );
                                std::hint::spin_loop();
                            }
                            held += 1;
                        }
                    }
                    held
                })
            })
            .collect();
        for _ in 0..300 {
            let g = P.lock();
            P.publish(&g, Probe(Arc::new(AtomicBool::new(true))));
            drop(g);
            std::thread::yield_now();
            let g = P.lock();
            match P.retire(&g, Instant::now() + Duration::from_secs(10)) {
                Retired::Done(p) => drop(p),
                Retired::Leaked => panic!("calls never finished"),
                Retired::NotPublished => panic!("it was published"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let held: u64 = readers.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(held > 0, "the readers got the instance");
    }
}
