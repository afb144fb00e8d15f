//! A session remembers the DEK it last encrypted with, and the one it last
//! decrypted with, so that the next C_EncryptInit / C_DecryptInit on the
//! same key skips the object table, the DEK's lock, its attribute checks
//! and the key cache: all shared between threads, and together most of the
//! cost of a small message.
//!
//! What is remembered is the outcome of those checks for one (handle,
//! mechanism), and it is used only while none of its inputs changed:
//! - the DEK's stamp (see `stamped`): it changes on any write to the DEK's
//!   state, and when its handle is forgotten or re-pointed (destroy, logout,
//!   the owning session's close, a newer row from the store);
//! - the key cache's epoch (`KeyCache::still_serves`): it changes on every
//!   removal from the cache (logout, destroy, clear);
//! - the login, for a private DEK.
//!
//! The key is held through a session-owned `Arc` around the cache's `Arc`:
//! each operation takes a reference to the outer one, whose count only this
//! session's operations touch, so threads that share a DEK never write the
//! same cache line. No second copy of the key is made.
//!
//! A remembered key that no longer holds is never used, but it is only let
//! go of at the session's next init in that direction, at its close, or at
//! a logout (which clears every session's): until then the key's memory
//! stays allocated, as it does for an operation left unfinished.

use std::sync::{Arc, OnceLock};

use cryptoki_sys::{CK_MECHANISM_TYPE, CK_OBJECT_HANDLE};

use crate::audit::{Audit, UseCounter};
use crate::crypto::{PreparedKey, SessionHold, SessionKey};
use crate::envelope::cache::KeyCache;
use crate::token::module::Module;
use crate::token::object::table::Dek;

pub struct RememberedKey {
    handle: CK_OBJECT_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    dek: Arc<Dek>,
    /// The DEK's stamp, read under its read lock with the state checked.
    stamp: u64,
    /// The key cache's epoch, read before the key was looked up.
    epoch: u64,
    /// CKA_PRIVATE: usable only while the normal user is logged in.
    private: bool,
    key: SessionKey,
    /// Label and KEK version for the audit log's use counts.
    tag: Option<(Vec<u8>, u32)>,
    /// The audit log's counter for this DEK, made at the first use counted.
    uses: OnceLock<UseCounter>,
}

/// What the checks of a full init established, to remember.
pub struct Checked {
    pub handle: CK_OBJECT_HANDLE,
    pub mechanism: CK_MECHANISM_TYPE,
    pub dek: Arc<Dek>,
    pub stamp: u64,
    pub epoch: u64,
    pub private: bool,
}

impl RememberedKey {
    pub fn new(c: Checked, key: Arc<PreparedKey>) -> Self {
        RememberedKey {
            handle: c.handle,
            mechanism: c.mechanism,
            dek: c.dek,
            stamp: c.stamp,
            epoch: c.epoch,
            private: c.private,
            key: SessionHold::new(key),
            tag: None,
            uses: OnceLock::new(),
        }
    }

    /// The DEK's label and KEK version, for counting uses in the audit log
    /// without reading the DEK's state again on the warm path.
    pub fn with_tag(mut self, label: Vec<u8>, kek_version: u32) -> Self {
        self.tag = Some((label, kek_version));
        self
    }

    /// The DEK, as the object table holds it.
    pub fn dek(&self) -> &Arc<Dek> {
        &self.dek
    }

    /// The handle this key was checked for.
    pub fn handle(&self) -> CK_OBJECT_HANDLE {
        self.handle
    }

    /// The DEK's label and KEK version, as remembered for the audit log.
    pub fn tag(&self) -> (&[u8], u32) {
        self.tag
            .as_ref()
            .map_or((&[][..], 0), |(l, v)| (l.as_slice(), *v))
    }

    /// Count `n` uses of the remembered DEK in the audit log at once
    /// (`audit` is the log of the DEK's token, always the same one), at
    /// `now_ms` (`clock::mono_ms`).
    pub fn count_uses(&self, audit: &Audit, n: u64, now_ms: u64) {
        let c = self.uses.get_or_init(|| {
            let (label, version) = self.tag();
            audit.use_counter(&self.dek.id, label, version)
        });
        audit.count_on(c, n, now_ms);
    }

    /// The key, if an init of `handle` with `mechanism` would pass the same
    /// checks and get the same key as when it was remembered.
    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn reuse(
        &self,
        handle: CK_OBJECT_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        m: &Module,
    ) -> Option<&SessionKey> {
        self.reuse_at(handle, mechanism, m, crate::clock::mono_ms())
    }

    /// `reuse` at `now_ms` (`clock::mono_ms`, read once by the caller).
    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn reuse_at(
        &self,
        handle: CK_OBJECT_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        m: &Module,
        now_ms: u64,
    ) -> Option<&SessionKey> {
        let cache = &m.envelope_for(self.dek.slot).ok()?.cache;
        self.still_holds(
            handle,
            mechanism,
            || m.is_user(self.dek.slot),
            cache,
            now_ms,
        )
        .then_some(&self.key)
    }

    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    fn still_holds(
        &self,
        handle: CK_OBJECT_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        user_logged_in: impl FnOnce() -> bool,
        cache: &KeyCache,
        now_ms: u64,
    ) -> bool {
        self.handle == handle
            && self.mechanism == mechanism
            && self.dek.state.stamp() == self.stamp
            && cache.still_serves_at(self.epoch, self.dek.is_token(), now_ms)
            && (!self.private || user_logged_in())
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretBytes;
    use crate::token::object::table::DekState;
    use crate::token::object::template::Attrs;

    const H: CK_OBJECT_HANDLE = 7;
    const MECH: CK_MECHANISM_TYPE = cryptoki_sys::CKM_AES_GCM;

    fn dek() -> Arc<Dek> {
        Arc::new(Dek::new(
            [1; 16],
            0,
            None,
            DekState::new(Attrs::default(), vec![1, 2, 3], 0),
        ))
    }

    fn remember(d: &Arc<Dek>, cache: &KeyCache, private: bool) -> RememberedKey {
        // As after a check of the KEK versions on the HSM and a read of
        // the store's change feed.
        cache.valid_until(u64::MAX);
        cache.feed_until(u64::MAX);
        let stamp = d.state.stamp();
        let epoch = cache.epoch();
        let key = PreparedKey::new(SecretBytes::from_slice(&[9; 32])).unwrap();
        let checked = Checked {
            handle: H,
            mechanism: MECH,
            dek: d.clone(),
            stamp,
            epoch,
            private,
        };
        RememberedKey::new(checked, Arc::new(key))
    }

    #[test]
    fn reused_only_while_nothing_changed() {
        let cache = KeyCache::default();
        let d = dek();
        let r = remember(&d, &cache, true);
        assert!(r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
        assert!(
            !r.still_holds(H + 1, MECH, || true, &cache, crate::clock::mono_ms()),
            "another handle"
        );
        assert!(
            !r.still_holds(
                H,
                cryptoki_sys::CKM_AES_CTR,
                || true,
                &cache,
                crate::clock::mono_ms()
            ),
            "another mechanism"
        );
        assert!(
            !r.still_holds(H, MECH, || false, &cache, crate::clock::mono_ms()),
            "logged out"
        );
        let public = remember(&d, &cache, false);
        assert!(public.still_holds(H, MECH, || false, &cache, crate::clock::mono_ms()));
    }

    #[test]
    fn the_soft_ttl_running_out_ends_it() {
        let cache = KeyCache::default();
        let d = dek();
        let r = remember(&d, &cache, false);
        assert!(r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
        cache.valid_until(0);
        assert!(
            !r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()),
            "the KEK must be checked again"
        );
    }

    #[test]
    fn a_session_deks_key_does_not_wait_for_the_change_feed() {
        let cache = KeyCache::default();
        let d = Arc::new(Dek::new(
            [2; 16],
            0,
            Some(9),
            DekState::new(Attrs::default(), vec![4, 5, 6], 0),
        ));
        let r = remember(&d, &cache, false);
        // The feed is never read for a process that holds only session DEKs.
        cache.feed_until(0);
        assert!(r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
        cache.valid_until(0);
        assert!(
            !r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()),
            "the KEK must still be checked"
        );
    }

    #[test]
    fn a_change_announced_by_the_store_ends_it_until_the_feed_is_read() {
        let cache = KeyCache::default();
        let d = dek();
        let r = remember(&d, &cache, false);
        let wake = cache.feed_waker();
        wake();
        assert!(
            !r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()),
            "the feed must be read first"
        );
        assert!(cache.health_fresh(), "the KEK check still holds");
        cache.feed_until(u64::MAX);
        assert!(r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
    }

    #[test]
    fn a_write_to_the_dek_ends_it() {
        let cache = KeyCache::default();
        let d = dek();
        let r = remember(&d, &cache, false);
        drop(d.state.write());
        assert!(!r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
    }

    #[test]
    fn losing_the_handle_ends_it() {
        let cache = KeyCache::default();
        let d = dek();
        let r = remember(&d, &cache, false);
        d.state.invalidate();
        assert!(!r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
    }

    #[test]
    fn any_removal_from_the_cache_ends_it() {
        let cache = KeyCache::default();
        let d = dek();
        let r = remember(&d, &cache, false);
        cache.remove(&[2; 16]);
        assert!(!r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
        let r = remember(&d, &cache, false);
        cache.clear();
        assert!(!r.still_holds(H, MECH, || true, &cache, crate::clock::mono_ms()));
    }
}
