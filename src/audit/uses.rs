//! DEK use counters, drained into one `dek_use` line per DEK (and KEK
//! version) per interval. A caller that counts one DEK's uses often (a
//! session's remembered key) holds its counter ([`UseCounter`]): a use is
//! then one relaxed atomic add, with no lock and no hash on the way. Also the
//! openings of records of several HSMs (any-of, all-of), counted per
//! combination of HSMs that took part and drained into `dek_unwrap` lines
//! with the uses: an audited fact per first use without a synced line each.

use crate::runtime::lock::unpoisoned;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

type Key = ([u8; 16], u32);

struct Slot {
    /// The label of the latest counter made for it (a rename makes a new
    /// remembered key, so a new counter). Read only when draining.
    label: Mutex<Box<[u8]>>,
    count: AtomicU64,
}

/// One DEK's (and KEK version's) counter, for counting its uses without
/// the map. A counter that is held stays in the map, so what it counts is
/// drained with the rest (see [`UseCounts::take`]).
pub struct UseCounter(Arc<Slot>);

/// A drained counter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Used {
    pub key_id: [u8; 16],
    pub kek_version: u32,
    pub label: Box<[u8]>,
    pub count: u64,
}

/// What an interval counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Unix time the interval started.
    pub since: u64,
    pub used: Vec<Used>,
    /// (HSMs that took part, e.g. "main,b"; how many openings).
    pub unwraps: Vec<(Box<str>, u64)>,
}

impl Drained {
    pub(crate) fn is_empty(&self) -> bool {
        self.used.is_empty() && self.unwraps.is_empty()
    }
}

pub(crate) struct UseCounts {
    map: RwLock<HashMap<Key, Arc<Slot>>>,
    unwraps: Mutex<BTreeMap<Box<str>, u64>>,
    /// `clock::mono_ms` when the counters were made.
    epoch_ms: u64,
    interval_ms: u64,
    /// Milliseconds after `epoch_ms` when the current interval ends.
    deadline_ms: AtomicU64,
    /// Unix time the current interval started (the `since` of its lines).
    started_unix: AtomicU64,
}

impl UseCounts {
    pub(crate) fn new(interval: Duration, now_unix: u64) -> UseCounts {
        let interval_ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        UseCounts {
            map: RwLock::new(HashMap::new()),
            unwraps: Mutex::new(BTreeMap::new()),
            epoch_ms: crate::clock::mono_ms(),
            interval_ms,
            deadline_ms: AtomicU64::new(interval_ms),
            started_unix: AtomicU64::new(now_unix),
        }
    }

    /// Counts `n` uses. The label is that of the latest use (or counter).
    pub(crate) fn add(&self, key_id: &[u8; 16], label: &[u8], kek_version: u32, n: u64) {
        self.add_on(&self.counter(key_id, label, kek_version), n);
    }

    /// The counter of DEK `key_id` under KEK version `kek_version`, made if
    /// it is new; its label becomes `label`.
    pub(crate) fn counter(&self, key_id: &[u8; 16], label: &[u8], kek_version: u32) -> UseCounter {
        let key = (*key_id, kek_version);
        {
            let map = unpoisoned(self.map.read());
            if let Some(slot) = map.get(&key) {
                let mut l = unpoisoned(slot.label.lock());
                if **l != *label {
                    *l = label.into();
                }
                return UseCounter(Arc::clone(slot));
            }
        }
        let mut map = unpoisoned(self.map.write());
        let slot = map.entry(key).or_insert_with(|| {
            Arc::new(Slot {
                label: Mutex::new(label.into()),
                count: AtomicU64::new(0),
            })
        });
        *unpoisoned(slot.label.lock()) = label.into();
        UseCounter(Arc::clone(slot))
    }

    /// Counts `n` uses on a counter of these counts.
    pub(crate) fn add_on(&self, c: &UseCounter, n: u64) {
        c.0.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one opening of a record on the HSMs `hsms`.
    pub(crate) fn add_unwrap(&self, hsms: &str) {
        let mut m = unpoisoned(self.unwraps.lock());
        match m.get_mut(hsms) {
            Some(n) => *n += 1,
            None => {
                m.insert(hsms.into(), 1);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        crate::clock::mono_ms().saturating_sub(self.epoch_ms)
    }

    /// True (for exactly one caller) when the interval is over; that caller
    /// then drains with [`UseCounts::take`].
    pub(crate) fn due(&self) -> bool {
        self.due_at(crate::clock::mono_ms())
    }

    /// `due` at `now_ms` (`clock::mono_ms`, read by the caller).
    pub(crate) fn due_at(&self, now_ms: u64) -> bool {
        let now = now_ms.saturating_sub(self.epoch_ms);
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        now >= deadline
            && self
                .deadline_ms
                .compare_exchange(
                    deadline,
                    now.saturating_add(self.interval_ms),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Drains every counter (uses sorted by key id). Starts a new interval.
    /// A counter nobody holds any more is let go of once drained; a held
    /// one stays, at zero, and what its holder adds later is drained next
    /// time.
    pub(crate) fn take(&self, now_unix: u64) -> Drained {
        let mut used: Vec<Used> = Vec::new();
        {
            let mut map = unpoisoned(self.map.write());
            map.retain(|&(key_id, kek_version), slot| {
                // Who holds it is read before the count: new holders are
                // made only under the map's lock, which this holds, so a
                // slot held by the map alone stays so, and its last
                // holder's adds happened before it let go (the Acquire
                // fence pairs with the release of that drop). A slot still
                // held stays: what its holder adds after the swap is
                // drained next time.
                let held = Arc::strong_count(slot) > 1;
                if !held {
                    fence(Ordering::Acquire);
                }
                let count = slot.count.swap(0, Ordering::Relaxed);
                if count > 0 {
                    used.push(Used {
                        key_id,
                        kek_version,
                        label: unpoisoned(slot.label.lock()).clone(),
                        count,
                    });
                }
                held
            });
        }
        let unwraps = std::mem::take(&mut *unpoisoned(self.unwraps.lock()))
            .into_iter()
            .collect();
        self.deadline_ms.store(
            self.now_ms().saturating_add(self.interval_ms),
            Ordering::Relaxed,
        );
        let since = self.started_unix.swap(now_unix, Ordering::Relaxed);
        used.sort_by_key(|u| (u.key_id, u.kek_version));
        Drained {
            since,
            used,
            unwraps,
        }
    }

    /// Forget everything (after fork(): the counts are the parent's).
    pub(crate) fn discard(&self, now_unix: u64) {
        let _ = self.take(now_unix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_aggregate_per_dek_and_version() {
        let u = UseCounts::new(Duration::from_secs(60), 100);
        for _ in 0..1000 {
            u.add(&[1; 16], b"one", 1, 1);
        }
        u.add(&[2; 16], b"two", 1, 1);
        u.add(&[2; 16], b"renamed", 1, 1);
        u.add(&[2; 16], b"two", 2, 1);
        assert!(!u.due());
        u.add_unwrap("main,b");
        u.add_unwrap("b");
        u.add_unwrap("main,b");
        let Drained {
            since,
            used,
            unwraps,
        } = u.take(160);
        assert_eq!(since, 100);
        assert_eq!(unwraps, vec![("b".into(), 1), ("main,b".into(), 2)]);
        assert_eq!(used.len(), 3);
        assert_eq!((used[0].key_id, used[0].count), ([1; 16], 1000));
        assert_eq!(
            (&*used[1].label, used[1].count, used[1].kek_version),
            (&b"renamed"[..], 2, 1),
            "the label of the latest use"
        );
        assert_eq!((used[2].count, used[2].kek_version), (1, 2));
        let d = u.take(200);
        assert_eq!((d.since, d.used.len(), d.unwraps.len()), (160, 0, 0));
    }

    #[test]
    fn a_held_counter_is_drained_with_the_rest_and_kept() {
        let u = UseCounts::new(Duration::from_secs(60), 0);
        let held = u.counter(&[1; 16], b"held", 1);
        u.add_on(&held, 3);
        u.add(&[2; 16], b"once", 1, 1);
        let d = u.take(1);
        assert_eq!(d.used.len(), 2);
        assert_eq!((d.used[0].key_id, d.used[0].count), ([1; 16], 3));
        assert_eq!(unpoisoned(u.map.read()).len(), 1, "only the held one stays");
        // Counted after the drain: in the next interval, not lost.
        u.add_on(&held, 2);
        assert_eq!(
            u.counter(&[1; 16], b"held", 1)
                .0
                .count
                .load(Ordering::Relaxed),
            2
        );
        let d = u.take(2);
        assert_eq!((d.used.len(), d.used[0].count), (1, 2));
        drop(held);
        assert!(u.take(3).used.is_empty());
        assert!(
            unpoisoned(u.map.read()).is_empty(),
            "let go of once nobody holds it"
        );
    }

    #[test]
    fn due_once_per_interval_and_from_many_threads() {
        let u = UseCounts::new(Duration::from_millis(1), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(u.due());
        assert!(!u.due(), "only one caller sees the interval end");
        let u = std::sync::Arc::new(UseCounts::new(Duration::from_secs(3600), 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let u = u.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        u.add(&[7; 16], b"x", 1, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(u.take(1).used[0].count, 40_000);
    }
}
