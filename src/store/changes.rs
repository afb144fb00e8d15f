//! The change feed (issue 14, item 3): every change to a DEK row (made,
//! changed, soft-deleted, recovered, deleted or purged) takes the next
//! position in one sequence, in commit order, so a process asks "what
//! changed since N" in time proportional to the changes and keeps the DEKs
//! it holds in step with every other process and host.
//!
//! The engines write the feed with triggers on the `dek` table, so no write
//! path can forget it; uses (`last_used`) and GCM prints are not changes.
//! Positions are in commit order: SQLite has one writer at a time, and on
//! PostgreSQL every transaction that changes DEK rows first takes one
//! advisory lock (so a reader that has seen position N has seen every
//! change before it).
//!
//! The feed keeps about [`KEEP`] changes: a reader further behind (a
//! process idle through a million changes) is told [`Changes::Gap`] and
//! checks what it holds one by one instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How many changes the feed keeps at least; readers prune the older ones
/// (see [`prune_point`]).
pub const KEEP: i64 = 100_000;

/// What changed after a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// The rows changed after the position asked for, in order (a row
    /// changed twice is named twice), and the position of the last of them
    /// (the position asked for when there are none). More may follow.
    Since { ids: Vec<[u8; 16]>, upto: i64 },
    /// The feed no longer reaches back that far (pruned), or the store is
    /// not the one the position came from (its feed is behind it): check
    /// everything held, then carry on from `upto`.
    Gap { upto: i64 },
}

/// After a reader moved from `from` to `to`: the position through which to
/// prune, when the reader just crossed a multiple of [`KEEP`] (so about one
/// reader in the fleet prunes, once per `KEEP` changes).
pub fn prune_point(from: i64, to: i64) -> Option<i64> {
    (to / KEEP > from / KEEP && to > KEEP).then_some(to - KEEP)
}

/// A thread that wakes its owner when another process commits a change
/// (see [`super::StoreEngine::listen`]). Dropping it stops the thread and
/// waits for it, for [`JOIN_WAIT`] at most: a thread stuck connecting to a
/// server that does not answer is left to end on its own (the module is
/// pinned in memory, so its code stays mapped; the thread touches nothing
/// of the module's but what it owns).
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Runs `body` on a thread of its own; `body` returns soon after the
    /// flag it is given turns true. `None` if no thread can be made.
    pub fn spawn(name: &str, body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Option<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(flag))
            .ok()?;
        Some(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

/// How long dropping a [`Listener`] waits for its thread.
pub const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let Some(t) = self.thread.take() else {
            return;
        };
        crate::runtime::threads::join_within(t, JOIN_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_prunes_once_per_keep_changes() {
        assert_eq!(prune_point(0, 10), None);
        assert_eq!(prune_point(0, KEEP), None, "nothing older than KEEP yet");
        assert_eq!(prune_point(KEEP - 1, KEEP + 5), Some(5));
        assert_eq!(prune_point(KEEP + 5, KEEP + 9), None);
        assert_eq!(prune_point(KEEP + 5, 3 * KEEP + 1), Some(2 * KEEP + 1));
    }
}
