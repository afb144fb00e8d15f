//! Each thread remembers the few sessions it used last, so that the calls
//! of a busy thread find their session without the shared handle table,
//! whose read lock is a write to memory every thread shares.
//!
//! A remembered session is used only while it is the same module instance
//! (`Module::generation`: handles start again after C_Finalize +
//! C_Initialize) and the session is not closed (`Session::is_closed`;
//! handles are never reused within one instance). A closed session a thread
//! still holds keeps no key (`Session::close`) and is dropped when the
//! thread needs the room or exits.

use std::cell::RefCell;
use std::sync::Arc;

use cryptoki_sys::{CKR_GENERAL_ERROR, CK_SESSION_HANDLE};

use crate::error::{Error, Result};
use crate::token::module::{Module, ModuleRef};
use crate::token::session::table::Session;

/// Threads usually use one session each; a few cover pools and handovers.
const WAYS: usize = 4;

struct Entry {
    generation: u64,
    handle: CK_SESSION_HANDLE,
    session: Arc<Session>,
}

#[derive(Default)]
struct Recent {
    entries: [Option<Entry>; WAYS],
    /// The next entry to replace (round robin).
    victim: usize,
}

thread_local! {
    static RECENT: RefCell<Recent> = RefCell::new(Recent::default());
}

fn is_for(e: &Entry, generation: u64, h: CK_SESSION_HANDLE) -> bool {
    e.handle == h && e.generation == generation && !e.session.is_closed()
}

/// Session `h` of module `m`: remembered by this thread, else from the table.
pub fn get(m: &Module, h: CK_SESSION_HANDLE) -> Result<Arc<Session>> {
    // try_with: the thread may be exiting; then the table answers.
    let hit = RECENT
        .try_with(|r| {
            let r = r.try_borrow().ok()?;
            let e = r
                .entries
                .iter()
                .flatten()
                .find(|e| is_for(e, m.generation, h))?;
            Some(e.session.clone())
        })
        .ok()
        .flatten();
    match hit {
        Some(s) => Ok(s),
        None => load(m, h),
    }
}

/// Run `f` on session `h` of module `m`. When this thread remembers the
/// session, `f` borrows it from here: no reference count is written (the
/// entry cannot be replaced meanwhile: replacing needs the `RefCell`
/// exclusively, and fails, so is skipped, while `f` runs).
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn with<R>(
    m: ModuleRef,
    h: CK_SESSION_HANDLE,
    f: impl FnOnce(ModuleRef, &Session) -> Result<R>,
) -> Result<R> {
    let generation = m.generation;
    let mut todo = Some((m, f));
    let hit = RECENT
        .try_with(|r| {
            let r = r.try_borrow().ok()?;
            let e = r
                .entries
                .iter()
                .flatten()
                .find(|e| is_for(e, generation, h))?;
            let (m, f) = todo.take()?;
            Some(f(m, &e.session))
        })
        .ok()
        .flatten();
    if let Some(r) = hit {
        return r;
    }
    let (m, f) = todo.take().ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
    let s = load(&m, h)?;
    f(m, &s)
}

/// From the table, remembered for next time.
fn load(m: &Module, h: CK_SESSION_HANDLE) -> Result<Arc<Session>> {
    let s = m.sessions.get(h)?;
    let entry = Entry {
        generation: m.generation,
        handle: h,
        session: s.clone(),
    };
    // The replaced entry is dropped after the borrow ends: dropping the last
    // reference to a session runs its destructors, which must find this
    // cache usable.
    let _old = RECENT
        .try_with(|r| {
            let mut r = r.try_borrow_mut().ok()?;
            // A free or dead entry first, else round robin.
            let free = r.entries.iter().position(|e| {
                e.as_ref()
                    .is_none_or(|e| e.generation != m.generation || e.session.is_closed())
            });
            let i = match free {
                Some(i) => i,
                None => {
                    let i = r.victim;
                    r.victim = (i + 1) % WAYS;
                    i
                }
            };
            r.entries.get_mut(i)?.replace(entry)
        })
        .ok()
        .flatten();
    Ok(s)
}
