//! Per-process cache of unwrapped DEK values and their key schedules, keyed
//! by record id. Values sit in zeroized, locked memory; dropping an entry
//! zeroizes it once the last in-flight operation using it has finished.
//!
//! Two rules keep the cache from undoing the record's protection:
//! - an entry is only returned for the exact record and bound attributes it
//!   was unwrapped from (its `binding`), so a row changed behind our back
//!   must go through the HSM again, where its tag check fails;
//! - an unwrap that raced with a logout, destroy or clear is not cached
//!   (an epoch counter, bumped by every removal).

use crate::runtime::lock::unpoisoned;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::crypto::{CryptoError, PreparedKey};
use crate::runtime::handle_hash::HandleMap;
use crate::secret::SecretBytes;

struct Entry {
    binding: Arc<[u8]>,
    key: Arc<PreparedKey>,
    /// The KEK version the value was unwrapped with (revocation is per version).
    kek_version: u32,
    /// The cache's use counter when this entry was last served or made:
    /// the least recently used go first when the cache is full.
    used: AtomicU64,
}

pub struct KeyCache {
    map: RwLock<HandleMap<[u8; 16], Entry>>,
    epoch: AtomicU64,
    /// Most keys held (`cache_max_keys`); an evicted DEK is unwrapped on the
    /// HSM again at its next use. Sessions that hold a key keep it.
    max: usize,
    /// Counts inserts (and marks uses with it): a clock for recency that
    /// costs a relaxed store on a hit only when the entry's mark is old.
    tick: AtomicU64,
    /// Until when (`now_ms`) cached keys may be served without checking
    /// their KEK versions on the HSM again (the soft TTL, or the outage
    /// grace), and without reading the store's change feed again.
    until: Arc<Freshness>,
}

/// Two deadlines and the earlier of them, shared with the thread that
/// hears the store's change notifications (`wake_feed`).
#[derive(Default)]
struct Freshness {
    /// Until when the KEK versions' last check holds (`health`).
    health: AtomicU64,
    /// Until when the last read of the change feed holds.
    feed: AtomicU64,
    /// The earlier of the two: the one load of the warm path.
    serve: AtomicU64,
    /// Counts change announcements (`feed_waker`), so that a read of the
    /// feed can tell one came while it ran.
    wakes: AtomicU64,
}

impl Freshness {
    /// `serve` made the earlier of the two again. A wake (`feed` to 0, then
    /// `serve` to 0) racing with this is never lost: `feed` is read again
    /// after the store, so a wake seen late still lowers `serve`.
    fn publish(&self) {
        let target = self
            .health
            .load(Ordering::SeqCst)
            .min(self.feed.load(Ordering::SeqCst));
        self.serve.store(target, Ordering::SeqCst);
        let feed = self.feed.load(Ordering::SeqCst);
        if feed < target {
            self.serve.fetch_min(feed, Ordering::SeqCst);
        }
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::with_max(crate::config::DEFAULT_CACHE_MAX_KEYS as usize)
    }
}

impl KeyCache {
    /// A cache holding at most `max` keys (at least one).
    pub fn with_max(max: usize) -> Self {
        KeyCache {
            map: RwLock::new(HandleMap::default()),
            epoch: AtomicU64::new(0),
            max: max.max(1),
            tick: AtomicU64::new(0),
            until: Arc::default(),
        }
    }

    /// The cached key for `id`, if it was unwrapped from `binding`. Hits take
    /// only a read lock (and write the entry's use mark only when it is old).
    pub fn get(&self, id: &[u8; 16], binding: &[u8]) -> Option<Arc<PreparedKey>> {
        let m = self.map.read().ok()?;
        let e = m.get(id)?;
        if *e.binding != *binding {
            return None;
        }
        let now = self.tick.load(Ordering::Relaxed);
        if e.used.load(Ordering::Relaxed) != now {
            e.used.store(now, Ordering::Relaxed);
        }
        Some(e.key.clone())
    }

    /// Make room for one more: when full, the least recently used sixteenth
    /// goes (one pass over the cache every `max / 16` inserts).
    fn make_room(&self, m: &mut HandleMap<[u8; 16], Entry>) {
        if m.len() < self.max {
            return;
        }
        let mut marks: Vec<u64> = m.values().map(|e| e.used.load(Ordering::Relaxed)).collect();
        let n = (self.max / 16).max(1).min(marks.len());
        let (_, cut, _) = marks.select_nth_unstable(n - 1);
        let cut = *cut;
        let mut left = n;
        m.retain(|_, e| {
            if left > 0 && e.used.load(Ordering::Relaxed) <= cut {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Read before an unwrap; pass to `insert`. Also read before a cache
    /// lookup by whoever keeps the key past the call (a session remembering
    /// its last DEK), to check later with `still_serves`.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a key obtained from this cache when `epoch` was read may
    /// still be served: nothing was removed since (no logout, destroy or
    /// clear), and the KEK check holds, and for a token DEK (`token`) the
    /// change feed was read recently too (a session DEK is in no store, so
    /// the feed cannot change it and is not read for it). One load, no
    /// lock: this is on every warm C_EncryptInit. Any rule that ends a
    /// cached key's service (a time to live, say) must be checked here
    /// too, or sessions that remember a key would outlive it.
    pub fn still_serves(&self, epoch: u64, token: bool) -> bool {
        self.still_serves_at(epoch, token, crate::clock::mono_ms())
    }

    /// `still_serves` at `now_ms` (`clock::mono_ms`, read by the caller
    /// once for the whole call).
    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn still_serves_at(&self, epoch: u64, token: bool, now_ms: u64) -> bool {
        let until = if token {
            &self.until.serve
        } else {
            &self.until.health
        };
        self.epoch.load(Ordering::Acquire) == epoch && now_ms < until.load(Ordering::Acquire)
    }

    /// Whether cached keys may be served as they are: the KEK versions
    /// were checked recently enough (soft TTL) and the change feed read.
    pub fn fresh(&self) -> bool {
        crate::clock::mono_ms() < self.until.serve.load(Ordering::Acquire)
    }

    /// Whether the KEK versions were checked recently enough (soft TTL).
    pub fn health_fresh(&self) -> bool {
        crate::clock::mono_ms() < self.until.health.load(Ordering::Acquire)
    }

    /// Whether the KEK versions' check still holds `ahead_ms` from now
    /// (the background health check runs before it lapses).
    pub fn health_fresh_for(&self, ahead_ms: u64) -> bool {
        crate::clock::mono_ms().saturating_add(ahead_ms) < self.until.health.load(Ordering::Acquire)
    }

    /// The KEK versions' check holds until `ms`.
    pub fn valid_until(&self, ms: u64) {
        self.until.health.store(ms, Ordering::SeqCst);
        self.until.publish();
    }

    /// Whether the change feed was read recently enough.
    pub fn feed_fresh(&self) -> bool {
        crate::clock::mono_ms() < self.until.feed.load(Ordering::Acquire)
    }

    /// The change feed's last read holds until `ms`.
    pub fn feed_until(&self, ms: u64) {
        self.until.feed.store(ms, Ordering::SeqCst);
        self.until.publish();
    }

    /// Both deadlines held, but the earlier one was published low by a
    /// race between them: publish it again (cheap; on the full path only).
    pub fn settle(&self) {
        if !self.fresh() && self.health_fresh() && self.feed_fresh() {
            self.until.publish();
        }
    }

    /// Something changed in the store: the feed is read before any cached
    /// key is served again. For the change listener's thread.
    pub fn feed_waker(&self) -> impl Fn() + Send + 'static {
        let until = Arc::clone(&self.until);
        move || {
            until.wakes.fetch_add(1, Ordering::SeqCst);
            until.feed.store(0, Ordering::SeqCst);
            until.serve.store(0, Ordering::SeqCst);
        }
    }

    /// How many change announcements came so far.
    pub fn feed_wakes(&self) -> u64 {
        self.until.wakes.load(Ordering::SeqCst)
    }

    /// The KEK versions cached values were unwrapped with.
    pub fn versions(&self) -> Vec<u32> {
        let Ok(m) = self.map.read() else {
            return Vec::new();
        };
        let mut v: Vec<u32> = m.values().map(|e| e.kek_version).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Drop (zeroize) every value unwrapped with `version`.
    pub fn remove_version(&self, version: u32) {
        {
            let mut m = unpoisoned(self.map.write());
            self.epoch.fetch_add(1, Ordering::AcqRel);
            m.retain(|_, e| e.kek_version != version);
        }
    }

    /// Prepare the key schedules once and cache them, unless something was
    /// removed since `epoch` was read (then the key is used once, uncached).
    pub fn insert(
        &self,
        id: [u8; 16],
        binding: Arc<[u8]>,
        kek_version: u32,
        value: SecretBytes,
        epoch: u64,
    ) -> Result<Arc<PreparedKey>, CryptoError> {
        let key = Arc::new(PreparedKey::new(value)?);
        {
            let mut m = unpoisoned(self.map.write());
            if self.epoch.load(Ordering::Acquire) == epoch {
                if !m.contains_key(&id) {
                    self.make_room(&mut m);
                }
                let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
                m.insert(
                    id,
                    Entry {
                        binding,
                        key: key.clone(),
                        kek_version,
                        used: AtomicU64::new(now),
                    },
                );
            }
        }
        Ok(key)
    }

    /// Whether a value of DEK `id` is cached.
    pub fn contains(&self, id: &[u8; 16]) -> bool {
        self.map.read().map(|m| m.contains_key(id)).unwrap_or(false)
    }

    pub fn remove(&self, id: &[u8; 16]) {
        {
            let mut m = unpoisoned(self.map.write());
            self.epoch.fetch_add(1, Ordering::AcqRel);
            m.remove(id);
        }
    }

    pub fn clear(&self) {
        {
            let mut m = unpoisoned(self.map.write());
            self.epoch.fetch_add(1, Ordering::AcqRel);
            m.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_lets_the_least_recently_used_go() {
        let c = KeyCache::with_max(32);
        let b: Arc<[u8]> = Arc::from(&b"r"[..]);
        for i in 0..32u8 {
            c.insert(
                [i; 16],
                b.clone(),
                1,
                SecretBytes::from_slice(&[i; 16]),
                c.epoch(),
            )
            .unwrap();
        }
        // Key 0 is used again: it is recent, 1 and 2 are the oldest.
        assert!(c.get(&[0; 16], &b).is_some());
        c.insert(
            [99; 16],
            b.clone(),
            1,
            SecretBytes::from_slice(&[9; 16]),
            c.epoch(),
        )
        .unwrap();
        assert_eq!(c.len(), 31, "a sixteenth (2) went, one came");
        assert!(c.get(&[0; 16], &b).is_some(), "used recently: kept");
        assert!(c.get(&[1; 16], &b).is_none() && c.get(&[2; 16], &b).is_none());
        assert!(c.get(&[99; 16], &b).is_some());
    }

    #[test]
    fn binding_and_epoch_rules() {
        let c = KeyCache::default();
        let b: Arc<[u8]> = Arc::from(&b"rec+attrs"[..]);
        let e = c.epoch();
        c.insert([1; 16], b.clone(), 1, SecretBytes::from_slice(&[7; 32]), e)
            .unwrap();
        assert!(c.get(&[1; 16], &b).is_some());
        assert!(c.get(&[1; 16], b"other").is_none(), "a changed row misses");
        // An unwrap that started before a removal is not cached.
        let e = c.epoch();
        c.remove(&[9; 16]);
        c.insert([2; 16], b.clone(), 1, SecretBytes::from_slice(&[7; 32]), e)
            .unwrap();
        assert!(c.get(&[2; 16], &b).is_none());
        c.insert(
            [3; 16],
            b.clone(),
            2,
            SecretBytes::from_slice(&[7; 32]),
            c.epoch(),
        )
        .unwrap();
        assert_eq!(c.versions(), vec![1, 2]);
        c.remove_version(1);
        assert_eq!(c.versions(), vec![2]);
        c.clear();
        assert!(c.is_empty());
    }
}
