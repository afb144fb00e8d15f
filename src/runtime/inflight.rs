//! Counting the calls that are using the module, with the cost on
//! C_Finalize rather than on the calls.
//!
//! Every PKCS#11 call that reaches the module counts itself in, and out when
//! it is done; C_Finalize waits until nobody is counted before it frees the
//! module. Calls are many and C_Finalize is one, so:
//! - Each thread counts on a counter of its own, alone on its cache line:
//!   only that thread writes it, so counting is a plain load and store, not
//!   an atomic read-modify-write (a full fence on x86, and a line that
//!   bounces between cores when it is shared).
//! - The order between a call's count and its load of the instance
//!   (`lifecycle`) is kept by an asymmetric fence: the call only stops the
//!   compiler from reordering the two; `wait_idle` first runs
//!   `membarrier(2)` (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`, Linux 4.14), which
//!   makes every running thread of the process pass a full fence, so each
//!   call is either counted where `wait_idle` reads, or sees the instance
//!   gone. liburcu and folly's hazard pointers rely on the same system call.
//!
//! Where membarrier is not there (another OS, an old kernel) or might be
//! fatal (a seccomp filter is installed: one that kills on unlisted calls
//! would kill the application), and for a thread beyond the [`OWN`] own counters or one that is
//! exiting (its thread-local storage already gone), calls count with
//! SeqCst read-modify-writes on shared counters, striped so that threads
//! rarely share a line.
//!
//! The memory-ordering argument is in `lifecycle`, which is the one place
//! that relies on it.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Threads that get a counter of their own; later ones share stripes.
const OWN: usize = 256;
const STRIPES: usize = 64;

/// One counter per cache line. 128 bytes, not 64: x86 cores fetch lines in
/// adjacent pairs, so neighbours 64 bytes apart still interfere.
#[repr(align(128))]
struct Counter {
    count: AtomicUsize,
    /// For own counters: a live thread holds it.
    taken: AtomicBool,
}

impl Counter {
    const fn new() -> Counter {
        Counter {
            count: AtomicUsize::new(0),
            taken: AtomicBool::new(false),
        }
    }
}

static OWN_COUNTS: [Counter; OWN] = [const { Counter::new() }; OWN];
static SHARED: [Counter; STRIPES] = [const { Counter::new() }; STRIPES];
/// Hands out stripes to threads, round robin.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// membarrier is registered for this process: own counters may be used.
static FAST: AtomicBool = AtomicBool::new(false);

const NONE: usize = usize::MAX;

/// A thread's own counter, given back when the thread exits.
struct Claim(usize);

impl Claim {
    fn take() -> Claim {
        let free = OWN_COUNTS.iter().position(|c| {
            !c.taken.load(Ordering::Relaxed)
                && c.taken
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        });
        Claim(free.unwrap_or(NONE))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(c) = OWN_COUNTS.get(self.0) {
            // No call of this thread is counted any more: it is exiting.
            c.taken.store(false, Ordering::Release);
        }
    }
}

thread_local! {
    static OWN_COUNTER: Claim = Claim::take();
    /// This thread's stripe, picked on its first shared count (`NONE`
    /// until then). A const initialiser and no destructor: always there,
    /// even while the thread is exiting.
    static STRIPE: Cell<usize> = const { Cell::new(NONE) };
}

fn my_stripe() -> usize {
    STRIPE.with(|mine| match mine.get() {
        NONE => {
            let s = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            mine.set(s);
            s
        }
        s => s,
    })
}

/// A counted call, for [`leave`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted(usize);

/// Count this call in; pass what it returns to `leave`.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn enter() -> Counted {
    if FAST.load(Ordering::Relaxed) {
        if let Ok(i) = OWN_COUNTER.try_with(|c| c.0) {
            if let Some(c) = OWN_COUNTS.get(i) {
                // Only this thread writes its counter.
                c.count.store(
                    c.count.load(Ordering::Relaxed).wrapping_add(1),
                    Ordering::Relaxed,
                );
                // The light half of the asymmetric fence (module comment):
                // the caller's load of the instance stays after this store.
                compiler_fence(Ordering::SeqCst);
                return Counted(i);
            }
        }
    }
    let s = my_stripe();
    // SeqCst: see `lifecycle`.
    SHARED[s].count.fetch_add(1, Ordering::SeqCst);
    Counted(OWN + s)
}

/// Count a call out.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn leave(c: Counted) {
    if let Some(own) = OWN_COUNTS.get(c.0) {
        // Release: everything the call did with the module happens before
        // C_Finalize, which reads this, frees it.
        own.count.store(
            own.count.load(Ordering::Relaxed).wrapping_sub(1),
            Ordering::Release,
        );
    } else if let Some(s) = SHARED.get(c.0 - OWN) {
        s.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Let calls use their own counters from now on (when the system has
/// membarrier). Called before an instance is published.
pub fn prepare() {
    if !FAST.load(Ordering::SeqCst) && membarrier::register() {
        FAST.store(true, Ordering::SeqCst);
    }
}

/// Wait until every counter has been seen at zero, or `deadline` passes.
/// Returns whether all were seen at zero (false also when the heavy fence
/// failed: then nobody may be sure no call still uses the instance).
pub fn wait_idle(deadline: Instant) -> bool {
    if FAST.load(Ordering::SeqCst) && !membarrier::fence_every_thread() {
        return false;
    }
    for c in OWN_COUNTS.iter().chain(SHARED.iter()) {
        while c.count.load(Ordering::SeqCst) != 0 {
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
/// call: the module never forks). Their own counters stay taken (the child
/// cannot tell which one is the forking thread's, which keeps using its
/// own): the child has fewer of them, which costs only speed. The child
/// registers for membarrier again when it publishes. Only atomic stores:
/// this runs in the pthread_atfork child handler.
pub fn reset_after_fork() {
    FAST.store(false, Ordering::SeqCst);
    for c in OWN_COUNTS.iter().chain(SHARED.iter()) {
        c.count.store(0, Ordering::SeqCst);
    }
}

#[cfg(target_os = "linux")]
mod membarrier {
    // From <linux/membarrier.h>.
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> bool {
        // SAFETY: membarrier takes two integers and touches no memory of
        // ours; an unknown command or a refusal is an error return.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long) == 0 }
    }

    /// Registers the process for `fence_every_thread`. Not under a
    /// seccomp filter: one that kills on system calls it does not list
    /// (systemd's `SystemCallFilter=` does by default) would kill the host
    /// application here, so filtered processes count the slower way.
    pub fn register() -> bool {
        static UNFILTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *UNFILTERED.get_or_init(no_seccomp_filter) && call(CMD_REGISTER_PRIVATE_EXPEDITED)
    }

    /// The `Seccomp:` line of /proc/self/status says 0 (none); anything
    /// else, or no answer, counts as filtered.
    fn no_seccomp_filter() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .is_some_and(|v| v.trim() == "0")
        })
    }

    /// Every thread of this process that is running passes a full fence
    /// before this returns (threads not running pass one when they are
    /// switched out).
    pub fn fence_every_thread() -> bool {
        call(CMD_PRIVATE_EXPEDITED)
    }
}

#[cfg(not(target_os = "linux"))]
mod membarrier {
    pub fn register() -> bool {
        false
    }
    pub fn fence_every_thread() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_and_out() {
        prepare();
        let a = enter();
        let b = enter();
        assert_eq!(a, b, "a thread keeps its counter");
        let counter = |c: Counted| {
            OWN_COUNTS
                .iter()
                .chain(SHARED.iter())
                .nth(c.0)
                .map(|x| x.count.load(Ordering::SeqCst))
        };
        assert_eq!(counter(a), Some(2));
        leave(b);
        leave(a);
        assert_eq!(counter(a), Some(0));
        let other = std::thread::spawn(|| {
            let c = enter();
            leave(c);
            c
        })
        .join()
        .unwrap();
        assert_ne!(other, a, "threads count apart");
        if cfg!(target_os = "linux") && FAST.load(Ordering::SeqCst) {
            assert!(a.0 < OWN, "with membarrier, a thread has its own counter");
        }
        eprintln!(
            "inflight: membarrier {}",
            if FAST.load(Ordering::SeqCst) {
                "registered: own counters"
            } else {
                "not available: shared counters"
            }
        );
    }

    #[test]
    fn an_exited_thread_gives_its_counter_back() {
        prepare();
        if !FAST.load(Ordering::SeqCst) {
            return;
        }
        let first = std::thread::spawn(|| {
            let c = enter();
            leave(c);
            c
        })
        .join()
        .unwrap();
        assert!(first.0 < OWN);
        assert!(
            !OWN_COUNTS[first.0].taken.load(Ordering::SeqCst),
            "released at the thread's exit"
        );
    }
}
