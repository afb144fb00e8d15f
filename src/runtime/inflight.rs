//! Counting the calls that are using the module, without a shared write.
//!
//! Every PKCS#11 call that reaches the module counts itself in, and out when
//! it is done; C_Finalize waits until nobody is counted before it frees the
//! module. One shared counter (or the reference count of an `Arc`, or a
//! read lock) would be written by every call on every thread, and that cache
//! line bouncing between cores is what kept two threads from doing twice the
//! work of one. So the count is split into stripes, each on its own cache
//! line: a thread always uses the same stripe, and threads are spread over
//! the stripes round robin, so two threads share a line only when there are
//! more threads than stripes. The total is only ever needed by C_Finalize.
//!
//! The memory-ordering argument is in `lifecycle`, which is the one
//! place that relies on it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const STRIPES: usize = 64;

/// One counter per cache line. 128 bytes, not 64: x86 cores fetch lines in
/// adjacent pairs, so neighbours 64 bytes apart still interfere.
#[repr(align(128))]
struct Stripe(AtomicUsize);

static COUNTS: [Stripe; STRIPES] = [const { Stripe(AtomicUsize::new(0)) }; STRIPES];
/// Hands out stripes to threads, round robin.
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, picked on its first call (`usize::MAX` until
    /// then). A const initialiser and no destructor: always accessible, even
    /// while the thread is exiting.
    static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_stripe() -> usize {
    MINE.with(|mine| match mine.get() {
        usize::MAX => {
            let s = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            mine.set(s);
            s
        }
        s => s,
    })
}

/// Count this call in; returns the stripe to pass to `leave`.
pub fn enter() -> usize {
    let s = my_stripe();
    // SeqCst: see `lifecycle`.
    COUNTS[s].0.fetch_add(1, Ordering::SeqCst);
    s
}

/// Count a call out; `stripe` is what `enter` returned.
pub fn leave(stripe: usize) {
    if let Some(c) = COUNTS.get(stripe) {
        // SeqCst (at least Release): everything the call did with the module
        // happens before C_Finalize, which reads this, frees it.
        c.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait until every stripe has been seen at zero, or `deadline` passes.
/// Returns whether all were seen at zero.
pub fn wait_idle(deadline: Instant) -> bool {
    for c in &COUNTS {
        while c.0.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    true
}

/// In a fork child: the counts copied from the parent belong to its other
/// threads, which do not exist here (the one thread that forked is not in a
/// call: the module never forks). Only atomic stores: this runs in the
/// pthread_atfork child handler.
pub fn reset_after_fork() {
    for c in &COUNTS {
        c.0.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_and_out() {
        let s = enter();
        assert!(COUNTS[s].0.load(Ordering::SeqCst) >= 1);
        let t = enter();
        assert_eq!(s, t, "a thread keeps its stripe");
        leave(s);
        leave(t);
        let other = std::thread::spawn(|| {
            let s = enter();
            leave(s);
            s
        })
        .join()
        .unwrap();
        assert_ne!(other, s, "threads are spread over the stripes");
    }
}
