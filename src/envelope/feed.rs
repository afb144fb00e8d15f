//! Reading the store's change feed (see `store::changes`): where this
//! process has read up to, when to read again, and what to do when the
//! store cannot be read. What the token layer holds is brought up to date
//! by the token layer (`token::store_sync`), with what this hands it.
//!
//! When: at each search, whenever a held DEK is used after
//! `cache_soft_ttl_secs` since the last read, and on PostgreSQL at once
//! after another process commits a change (`LISTEN`, on a thread of its
//! own): the thread only marks the feed due, and the next call that uses a
//! held DEK reads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::service::Envelope;
use crate::error::{Error, Result};
use crate::runtime::lock::unpoisoned;
use crate::store::changes::Listener;
use crate::store::Changes;
use crate::vendor::CKR_HSME_STORE_ERROR;

/// Changes read per store query.
const PAGE: u32 = 1000;
/// How soon a failed read is tried again while held DEKs are served.
const RETRY_MS: u64 = 1_000;

/// What the token layer must look at again.
pub enum News {
    /// These rows changed (each once, in the order first named).
    Rows(Vec<[u8; 16]>),
    /// Every DEK held: this is the first read, or the feed no longer
    /// reaches back to where this process had read.
    Everything,
}

pub struct Feed {
    /// The position read up to; `None` before the first read.
    cursor: Mutex<Option<i64>>,
    /// When (`clock::mono_ms`) the feed was last read (at first: when the
    /// module started, having opened the store).
    last_ok: AtomicU64,
    /// A read failed and was reported; reported again once it works.
    failing: AtomicBool,
    /// The PostgreSQL listener, made at a read (again after a failed try).
    listener: Mutex<Option<Listener>>,
    /// The engine cannot listen (SQLite), or threads are not allowed.
    no_listener: AtomicBool,
}

/// Held while what this process holds is brought in step with the store:
/// a read of the feed, and whatever turns store rows into held DEKs (a
/// search's rows, a reload of a DEK that was let go, a new DEK), happen
/// under it one at a time, so that no change the feed names can fall
/// between a row being read and the DEK being held.
pub struct FeedLock<'a> {
    env: &'a Envelope,
    cursor: MutexGuard<'a, Option<i64>>,
}

impl Feed {
    pub fn new() -> Self {
        Feed {
            cursor: Mutex::new(None),
            last_ok: AtomicU64::new(crate::clock::mono_ms()),
            failing: AtomicBool::new(false),
            listener: Mutex::new(None),
            no_listener: AtomicBool::new(false),
        }
    }
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Envelope {
    /// Whether the feed should be read before a held DEK is used.
    pub fn feed_due(&self) -> bool {
        !self.cache.feed_fresh()
    }

    /// Nothing is held that the feed could change: the next read starts
    /// afresh (`News::Everything`), and none is due until the soft TTL.
    pub fn feed_idle(&self) {
        *unpoisoned(self.feed.cursor.lock()) = None;
        self.feed_read_at(crate::clock::mono_ms());
    }

    /// See [`FeedLock`].
    pub fn feed_lock(&self) -> FeedLock<'_> {
        FeedLock {
            env: self,
            cursor: unpoisoned(self.feed.cursor.lock()),
        }
    }

    /// Stops the change listener (at `C_Finalize`).
    pub fn stop_listening(&self) {
        let l = unpoisoned(self.feed.listener.lock()).take();
        drop(l);
    }
}

impl FeedLock<'_> {
    /// Reads what changed since the last read, when `must` or when due,
    /// and hands it to `apply` (which brings what is held up to date,
    /// reading rows from the store as it needs); the position moves on
    /// only when `apply` succeeds.
    ///
    /// When the store cannot be read, held DEKs go on being served for
    /// `cache_hard_ttl_secs` after the last good read, as in an HSM
    /// outage; after that, and for a search (`must`), the error is
    /// `CKR_HSME_STORE_ERROR`.
    pub fn read(&mut self, must: bool, apply: impl FnOnce(News) -> Result<()>) -> Result<()> {
        let env = self.env;
        if !must && !env.feed_due() {
            return Ok(());
        }
        env.listen_if_needed();
        let now = crate::clock::mono_ms();
        // A change announced while this read runs may be after what it
        // reads: then the feed stays due.
        let wakes = env.cache.feed_wakes();
        let cursor = &mut self.cursor;
        match env.read_changes(**cursor).and_then(|(news, upto)| {
            apply(news)?;
            Ok(upto)
        }) {
            Ok(upto) => {
                let prune = cursor.and_then(|from| crate::store::changes::prune_point(from, upto));
                if let Some(through) = prune {
                    if let Err(e) = env.with_store(|s| Ok(s.prune_changes(through)?)) {
                        crate::log_debug!("change feed not pruned: {e}");
                    }
                }
                **cursor = Some(upto);
                if env.feed.failing.swap(false, Ordering::AcqRel) {
                    crate::log_info!("DEK store readable again: changes are followed");
                }
                env.feed.last_ok.store(now, Ordering::Release);
                if env.cache.feed_wakes() == wakes {
                    env.feed_read_at(now);
                }
                Ok(())
            }
            Err(e) => {
                if !env.feed.failing.swap(true, Ordering::AcqRel) {
                    crate::log_warn!(
                        "cannot read the DEK store's changes ({e}): held DEKs are served \
                         for at most cache_hard_ttl_secs"
                    );
                }
                let hard = env.settings.hard_ttl.as_millis() as u64;
                let last_ok = env.feed.last_ok.load(Ordering::Acquire);
                if !must && hard > 0 && now < last_ok.saturating_add(hard) {
                    env.cache
                        .feed_until((now + RETRY_MS).min(last_ok.saturating_add(hard)));
                    Ok(())
                } else {
                    Err(Error::Rv(CKR_HSME_STORE_ERROR))
                }
            }
        }
    }
}

impl Envelope {
    /// The feed holds for the soft TTL from `now`.
    fn feed_read_at(&self, now: u64) {
        let soft = self.settings.soft_ttl.as_millis() as u64;
        self.cache.feed_until(now.saturating_add(soft));
    }

    /// Everything after `cursor`, page by page, and where it ends.
    fn read_changes(&self, cursor: Option<i64>) -> Result<(News, i64)> {
        let Some(mut at) = cursor else {
            let upto = self.with_store(|s| Ok(s.change_position()?))?;
            return Ok((News::Everything, upto));
        };
        let mut rows = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            match self.with_store(|s| Ok(s.changes_since(at, PAGE)?))? {
                Changes::Gap { upto } => return Ok((News::Everything, upto)),
                Changes::Since { ids, upto } => {
                    let last_page = ids.len() < PAGE as usize;
                    rows.extend(ids.into_iter().filter(|id| seen.insert(*id)));
                    at = upto;
                    if last_page {
                        return Ok((News::Rows(rows), at));
                    }
                }
            }
        }
    }

    /// On PostgreSQL, a thread that marks the feed due as soon as another
    /// process commits a change: made at a read, tried again at the next
    /// if the store could not be reached.
    fn listen_if_needed(&self) {
        if self.feed.no_listener.load(Ordering::Acquire) {
            return;
        }
        if !crate::runtime::threads::allowed() {
            self.feed.no_listener.store(true, Ordering::Release);
            return;
        }
        let mut listener = unpoisoned(self.feed.listener.lock());
        if listener.is_some() {
            return;
        }
        let waker = self.cache.feed_waker();
        match self.with_store(|s| Ok(s.listen(Box::new(waker)))) {
            Ok(Some(l)) => *listener = Some(l),
            Ok(None) => self.feed.no_listener.store(true, Ordering::Release),
            Err(_) => {}
        }
    }
}
