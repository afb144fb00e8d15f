//! Object handles. Our handles are stable across sessions and never reused
//! in a process: DEKs and backend objects share one counter.

use crate::runtime::lock::unpoisoned;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use cryptoki_sys::*;

use crate::envelope::DekRef;
use crate::error::{Error, Result};
use crate::runtime::handle_hash::HandleMap;
use crate::runtime::stamped::Stamped;
use crate::token::object::template::Attrs;

/// A DEK owned by this module.
pub struct Dek {
    pub id: [u8; 16],
    pub slot: usize,
    /// The session that owns a session DEK; None for token DEKs.
    pub owner: Option<CK_SESSION_HANDLE>,
    /// Its stamp changes with every write and when this object loses its
    /// handle (see `Objects::forget`, `intern_dek`): sessions that remember
    /// this DEK (see `remembered`) check it.
    pub state: Stamped<DekState>,
    /// When it was last looked up (`Objects`' tick): the least recently
    /// used token DEKs let go of their state first.
    used: AtomicU64,
}

#[derive(Clone)]
pub struct DekState {
    pub attrs: Attrs,
    /// The encoded wrapped record (in the store too, for token DEKs).
    pub record: Vec<u8>,
    /// The store row's generation this state was read at.
    pub generation: i64,
    /// Record and bound attributes together: what a cached value must have
    /// been unwrapped from to be served for this state.
    pub binding: Arc<[u8]>,
}

impl DekState {
    pub fn new(attrs: Attrs, record: Vec<u8>, generation: i64) -> Self {
        let mut binding = record.clone();
        binding.extend_from_slice(&attrs.bound_encoding());
        DekState {
            attrs,
            record,
            generation,
            binding: binding.into(),
        }
    }
}

impl Dek {
    pub fn new(
        id: [u8; 16],
        slot: usize,
        owner: Option<CK_SESSION_HANDLE>,
        state: DekState,
    ) -> Self {
        Dek {
            id,
            slot,
            owner,
            state: Stamped::new(state),
            used: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Result<DekState> {
        Ok(self.state.read().clone())
    }
    /// The DEK as the envelope service takes it, in state `st`.
    pub fn key_ref<'a>(&'a self, st: &'a DekState) -> DekRef<'a> {
        DekRef {
            id: &self.id,
            attrs: &st.attrs,
            record: &st.record,
            binding: &st.binding,
            row_generation: self.is_token().then_some(st.generation),
        }
    }

    pub fn is_token(&self) -> bool {
        self.owner.is_none()
    }
}

/// What a backend token object is (class, label, id, as the backend
/// reported them when we first saw it), to find it again after an HSM
/// reconnect, when its old handle may name nothing or another object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub class: Vec<u8>,
    pub label: Vec<u8>,
    pub id: Vec<u8>,
}

#[derive(Clone)]
pub enum Object {
    Backend {
        slot: usize,
        handle: CK_OBJECT_HANDLE,
        /// The session a backend session object was made through; its
        /// handle dies with that session.
        owner: Option<CK_SESSION_HANDLE>,
        /// For token objects; `None` for session objects and objects whose
        /// attributes could not be read.
        identity: Option<Arc<Identity>>,
        /// The reconnect count (`Objects::reconnects`) when `handle` was
        /// last known good.
        checked: u64,
    },
    Dek(Arc<Dek>),
    /// A token DEK whose state (attributes, record) was let go to bound
    /// memory: read from the store again at its next use
    /// (`store_sync::object`), under the same handle.
    Stored {
        id: [u8; 16],
        slot: usize,
        /// CKA_PRIVATE, so that a logout forgets it as it would the DEK.
        private: bool,
    },
}

#[derive(Default)]
struct Maps {
    by_handle: HandleMap<CK_OBJECT_HANDLE, Object>,
    backend: HandleMap<(usize, CK_OBJECT_HANDLE), CK_OBJECT_HANDLE>,
    deks: HandleMap<[u8; 16], CK_OBJECT_HANDLE>,
    /// The handles of session DEKs (a search walks these; token DEKs are
    /// searched in the store).
    session_deks: HandleMap<CK_OBJECT_HANDLE, ()>,
    /// The handles of token DEKs held with their state (`Object::Dek`):
    /// what `let_go` chooses from, without walking every handle.
    loaded: HandleMap<CK_OBJECT_HANDLE, ()>,
}

pub struct Objects {
    maps: RwLock<Maps>,
    next: AtomicU64,
    /// How many times a backend session was found lost and re-opened (an
    /// HSM reconnect): backend handles checked before then may be stale.
    reconnects: AtomicU64,
    /// Most token DEKs held with their state (`cache_max_keys`); past it
    /// the least recently used that no session holds keep only their
    /// handle (`Object::Stored`).
    max_loaded: AtomicUsize,
    /// Counts DEKs interned: the clock of `Dek::used`.
    tick: AtomicU64,
}

impl Default for Objects {
    fn default() -> Self {
        Objects {
            maps: RwLock::new(Maps::default()),
            next: AtomicU64::new(1),
            reconnects: AtomicU64::new(0),
            max_loaded: AtomicUsize::new(usize::MAX),
            tick: AtomicU64::new(0),
        }
    }
}

impl Objects {
    /// At most `n` (at least 16) token DEKs are held with their state.
    pub fn set_max_loaded(&self, n: usize) {
        self.max_loaded.store(n.max(16), Ordering::Relaxed);
    }

    /// Marks `d` used now (for choosing which states to let go).
    pub fn touch(&self, d: &Dek) {
        let now = self.tick.load(Ordering::Relaxed);
        if d.used.load(Ordering::Relaxed) != now {
            d.used.store(now, Ordering::Relaxed);
        }
    }

    /// Past `max_loaded`: the least recently used sixteenth of the token
    /// DEKs that nothing but the table holds become `Object::Stored`.
    fn let_go(&self, m: &mut Maps) {
        let max = self.max_loaded.load(Ordering::Relaxed);
        if m.loaded.len() <= max {
            return;
        }
        let mut idle: Vec<(u64, CK_OBJECT_HANDLE)> = m
            .loaded
            .keys()
            .filter_map(|h| match m.by_handle.get(h) {
                Some(Object::Dek(d)) if Arc::strong_count(d) == 1 => {
                    Some((d.used.load(Ordering::Relaxed), *h))
                }
                _ => None,
            })
            .collect();
        let n = (max / 16).max(1).min(idle.len());
        if n == 0 {
            return;
        }
        idle.select_nth_unstable(n - 1);
        for (_, h) in idle.into_iter().take(n) {
            let Some(Object::Dek(d)) = m.by_handle.get(&h) else {
                continue;
            };
            let stored = Object::Stored {
                id: d.id,
                slot: d.slot,
                private: d.state.read().attrs.flag(CKA_PRIVATE),
            };
            m.by_handle.insert(h, stored);
            m.loaded.remove(&h);
        }
    }

    /// Handle `h`, which named a let-go DEK, holds `dek` (read from the
    /// store again) from now on; if another thread did so first, its
    /// object. `CKR_OBJECT_HANDLE_INVALID` if `h` went meanwhile.
    pub fn load_stored(&self, h: CK_OBJECT_HANDLE, dek: Arc<Dek>) -> Result<Object> {
        let mut m = unpoisoned(self.maps.write());
        match m.by_handle.get(&h) {
            Some(Object::Stored { id, .. }) if *id == dek.id => {}
            Some(Object::Dek(d)) if d.id == dek.id => return Ok(Object::Dek(d.clone())),
            _ => return Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID)),
        }
        dek.used.store(
            self.tick.fetch_add(1, Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        m.by_handle.insert(h, Object::Dek(dek.clone()));
        m.loaded.insert(h, ());
        self.let_go(&mut m);
        Ok(Object::Dek(dek))
    }

    fn fresh(&self) -> CK_OBJECT_HANDLE {
        self.next.fetch_add(1, Ordering::Relaxed) as CK_OBJECT_HANDLE
    }

    pub fn get(&self, h: CK_OBJECT_HANDLE) -> Result<Object> {
        let m = unpoisoned(self.maps.read());
        m.by_handle
            .get(&h)
            .cloned()
            .ok_or(Error::Rv(CKR_OBJECT_HANDLE_INVALID))
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Acquire)
    }

    /// A backend session was lost and re-opened: every backend handle must
    /// be checked again before its next use.
    pub fn note_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::AcqRel);
    }

    /// Our handle for a backend object, made on first sight. `owner` is the
    /// session a session object was just created through; `identify` reads
    /// what the object is, only for one not seen before (and outside the
    /// table's lock: it calls the backend).
    pub fn intern_backend(
        &self,
        slot: usize,
        bh: CK_OBJECT_HANDLE,
        owner: Option<CK_SESSION_HANDLE>,
        identify: impl FnOnce() -> Option<Identity>,
    ) -> CK_OBJECT_HANDLE {
        if let Some(h) = unpoisoned(self.maps.read()).backend.get(&(slot, bh)) {
            return *h;
        }
        let checked = self.reconnects();
        let identity = identify().map(Arc::new);
        let mut m = unpoisoned(self.maps.write());
        if let Some(h) = m.backend.get(&(slot, bh)) {
            return *h;
        }
        let h = self.fresh();
        m.backend.insert((slot, bh), h);
        m.by_handle.insert(
            h,
            Object::Backend {
                slot,
                handle: bh,
                owner,
                identity,
                checked,
            },
        );
        h
    }

    /// What backend object `h` is now (after it was renamed).
    pub fn set_identity(&self, h: CK_OBJECT_HANDLE, who: Option<Identity>) {
        let mut m = unpoisoned(self.maps.write());
        if let Some(Object::Backend { identity, .. }) = m.by_handle.get_mut(&h) {
            *identity = who.map(Arc::new);
        }
    }

    /// After a reconnect: our handle `h` now names backend object `bh`
    /// (found again by its identity), checked at reconnect count `checked`.
    pub fn rebind(&self, h: CK_OBJECT_HANDLE, bh: CK_OBJECT_HANDLE, checked: u64) {
        let mut m = unpoisoned(self.maps.write());
        let Some(Object::Backend {
            slot,
            handle,
            checked: c,
            ..
        }) = m.by_handle.get_mut(&h)
        else {
            return;
        };
        let (slot, old) = (*slot, *handle);
        *handle = bh;
        *c = checked;
        if old != bh {
            m.backend.remove(&(slot, old));
            m.backend.insert((slot, bh), h);
        }
    }

    /// Our handle for a DEK; an id seen before keeps its handle, and its
    /// state is replaced by the newer one.
    pub fn intern_dek(&self, dek: Arc<Dek>) -> CK_OBJECT_HANDLE {
        let Ok(mut m) = self.maps.write() else {
            return CK_INVALID_HANDLE;
        };
        let h = match m.deks.get(&dek.id) {
            Some(h) => *h,
            None => {
                let h = self.fresh();
                m.deks.insert(dek.id, h);
                if !dek.is_token() {
                    m.session_deks.insert(h, ());
                }
                h
            }
        };
        let token = dek.is_token();
        dek.used.store(
            self.tick.fetch_add(1, Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        if let Some(Object::Dek(old)) = m.by_handle.insert(h, Object::Dek(dek)) {
            // The handle now names a newer state: the old one is stale.
            old.state.invalidate();
        }
        if token {
            m.loaded.insert(h, ());
        }
        if token {
            self.let_go(&mut m);
        }
        h
    }

    pub fn remove(&self, h: CK_OBJECT_HANDLE) {
        self.forget(|handle, _| handle == h);
    }

    /// Forget the handles `drop` selects and return their objects. A
    /// forgotten handle is never given out again: the object gets a new one
    /// when it is found again. A forgotten DEK's stamp changes, so no session
    /// goes on using what it remembered of it.
    pub fn forget(&self, drop: impl Fn(CK_OBJECT_HANDLE, &Object) -> bool) -> Vec<Object> {
        let Ok(mut m) = self.maps.write() else {
            return Vec::new();
        };
        let gone: Vec<CK_OBJECT_HANDLE> = m
            .by_handle
            .iter()
            .filter(|(h, o)| drop(**h, o))
            .map(|(h, _)| *h)
            .collect();
        let mut out = Vec::with_capacity(gone.len());
        for h in gone {
            if let Some(o) = m.by_handle.remove(&h) {
                match &o {
                    Object::Dek(d) => {
                        m.deks.remove(&d.id);
                        m.session_deks.remove(&h);
                        m.loaded.remove(&h);
                        d.state.invalidate();
                    }
                    Object::Stored { id, .. } => {
                        m.deks.remove(id);
                    }
                    Object::Backend { slot, handle, .. } => {
                        m.backend.remove(&(*slot, *handle));
                    }
                }
                out.push(o);
            }
        }
        out
    }

    /// The session DEKs, by handle.
    pub fn session_deks(&self) -> Vec<(CK_OBJECT_HANDLE, Arc<Dek>)> {
        let m = unpoisoned(self.maps.read());
        let mut v: Vec<_> = m
            .session_deks
            .keys()
            .filter_map(|h| match m.by_handle.get(h) {
                Some(Object::Dek(d)) => Some((*h, d.clone())),
                _ => None,
            })
            .collect();
        v.sort_by_key(|(h, _)| *h);
        v
    }

    /// The token DEK with row id `id`, if one is held, and its handle.
    pub fn token_dek(&self, id: &[u8; 16]) -> Option<(CK_OBJECT_HANDLE, Arc<Dek>)> {
        let m = unpoisoned(self.maps.read());
        let h = *m.deks.get(id)?;
        match m.by_handle.get(&h) {
            Some(Object::Dek(d)) if d.is_token() => Some((h, d.clone())),
            _ => None,
        }
    }

    /// The ids of the token DEKs held with their state.
    pub fn token_dek_ids(&self) -> Vec<[u8; 16]> {
        let m = unpoisoned(self.maps.read());
        m.loaded
            .keys()
            .filter_map(|h| match m.by_handle.get(h) {
                Some(Object::Dek(d)) => Some(d.id),
                _ => None,
            })
            .collect()
    }

    /// Whether any token DEK is held with its state.
    pub fn holds_token_deks(&self) -> bool {
        !unpoisoned(self.maps.read()).loaded.is_empty()
    }

    /// How many token DEKs are held with their state, and how many handles
    /// name DEKs in all (for tests and the benchmark).
    pub fn dek_counts(&self) -> (usize, usize) {
        let m = unpoisoned(self.maps.read());
        (m.loaded.len(), m.deks.len())
    }

    /// Backend objects of `slot` with our handles.
    pub fn backend_on(&self, slot: usize) -> Vec<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let Ok(m) = self.maps.read() else {
            return Vec::new();
        };
        m.backend
            .iter()
            .filter(|((s, _), _)| *s == slot)
            .map(|((_, bh), h)| (*h, *bh))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_dek(n: u8, private: bool) -> Arc<Dek> {
        let mut attrs = Attrs::default();
        attrs.set_bool(CKA_PRIVATE, private);
        Arc::new(Dek::new([n; 16], 0, None, DekState::new(attrs, vec![n], 0)))
    }

    #[test]
    fn past_the_bound_idle_token_deks_keep_only_their_handles() {
        let o = Objects::default();
        o.set_max_loaded(16);
        // One a session holds (its Arc), and one used again and again.
        let busy = token_dek(0, false);
        let busy_h = o.intern_dek(busy.clone());
        let hot = token_dek(1, false);
        let hot_h = o.intern_dek(hot.clone());
        drop(hot);
        let handles: Vec<_> = (2..=40)
            .map(|n| {
                if let Ok(Object::Dek(d)) = o.get(hot_h) {
                    o.touch(&d);
                }
                o.intern_dek(token_dek(n, n % 2 == 0))
            })
            .collect();
        let (loaded, all) = o.dek_counts();
        assert!(loaded <= 16, "{loaded} held with their state");
        assert_eq!(all, 41, "every handle is kept");
        assert!(
            matches!(o.get(busy_h), Ok(Object::Dek(_))),
            "held by a session"
        );
        assert!(matches!(o.get(hot_h), Ok(Object::Dek(_))), "recently used");
        let stored: Vec<_> = handles
            .iter()
            .filter(|h| matches!(o.get(**h), Ok(Object::Stored { .. })))
            .collect();
        assert!(stored.len() >= 20, "{} let go", stored.len());
        // A let-go DEK comes back under its handle, with its state.
        let h = *stored[0];
        let Ok(Object::Stored { id, private, .. }) = o.get(h) else {
            unreachable!()
        };
        assert_eq!(private, id[0] % 2 == 0);
        assert_eq!(o.intern_dek(token_dek(id[0], private)), h);
        assert!(matches!(o.get(h), Ok(Object::Dek(_))));
        // A reload under a handle that went meanwhile is refused; one that
        // another thread made first is what the second gets.
        let gone = *stored[1];
        let Ok(Object::Stored { id: gone_id, .. }) = o.get(gone) else {
            unreachable!()
        };
        o.remove(gone);
        assert!(o.load_stored(gone, token_dek(gone_id[0], false)).is_err());
        let twice = *stored[2];
        let Ok(Object::Stored { id: twice_id, .. }) = o.get(twice) else {
            unreachable!()
        };
        let first = o.load_stored(twice, token_dek(twice_id[0], false)).unwrap();
        let second = o.load_stored(twice, token_dek(twice_id[0], false)).unwrap();
        match (first, second) {
            (Object::Dek(a), Object::Dek(b)) => assert!(Arc::ptr_eq(&a, &b)),
            _ => panic!("not DEKs"),
        }
        // Forgetting removes both kinds, and the counts follow.
        o.forget(|_, _| true);
        assert_eq!(o.dek_counts(), (0, 0));
        drop(busy);
    }
}
