//! A read-write lock with a stamp that changes whenever the value may have:
//! on every write access, and when the owner calls `invalidate` (the object
//! was destroyed, forgotten or replaced). Whoever remembers something
//! derived from the value (a session's last DEK, see `remembered`) also
//! remembers the stamp, and can tell with one load, without the lock,
//! whether it still holds.
//!
//! The stamp is bumped by the write guard itself, so no code path that
//! changes the value can forget to.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::lock::unpoisoned;

pub struct Stamped<T> {
    lock: RwLock<T>,
    stamp: AtomicU64,
}

impl<T> Stamped<T> {
    pub fn new(value: T) -> Self {
        Stamped {
            lock: RwLock::new(value),
            stamp: AtomicU64::new(0),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        unpoisoned(self.lock.read())
    }

    /// Write access; the stamp changes when the guard is dropped, while the
    /// lock is still held, so a stamp read under the read lock always
    /// belongs to the value read with it.
    pub fn write(&self) -> StampedWriteGuard<'_, T> {
        StampedWriteGuard {
            guard: unpoisoned(self.lock.write()),
            stamp: &self.stamp,
        }
    }

    /// The current stamp. Read it under the read lock to pair it with the
    /// value; compare it later to learn whether the value may have changed.
    pub fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Acquire)
    }

    /// Make every remembered stamp stale (the object is going away).
    pub fn invalidate(&self) {
        self.stamp.fetch_add(1, Ordering::AcqRel);
    }
}

pub struct StampedWriteGuard<'a, T> {
    guard: RwLockWriteGuard<'a, T>,
    stamp: &'a AtomicU64,
}

impl<T> Deref for StampedWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for StampedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for StampedWriteGuard<'_, T> {
    fn drop(&mut self) {
        // Runs before `guard` is dropped, i.e. before the lock is released.
        self.stamp.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_invalidation_change_the_stamp() {
        let s = Stamped::new(1);
        let a = s.stamp();
        assert_eq!(*s.read(), 1);
        assert_eq!(s.stamp(), a, "reading changes nothing");
        *s.write() = 2;
        let b = s.stamp();
        assert_ne!(a, b);
        drop(s.write());
        let c = s.stamp();
        assert_ne!(
            b, c,
            "any write access counts, even one that changed nothing"
        );
        s.invalidate();
        assert_ne!(c, s.stamp());
        assert_eq!(*s.read(), 2);
    }
}
