//! The one path every forwarded call takes (p11-kit's proxy model): map
//! the application's session to the backend's, call, and if the backend
//! lost the session (an HSM reconnect closes them all), open a new one, log
//! it in again and call once more. The application keeps its session
//! handle and notices nothing.

use cryptoki_sys::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::token::module::Module;
use crate::token::session::{lookup, Session};

/// Internal, never returned to a caller: a call's backend session was lost
/// and re-opened before it ran, and it named backend objects whose handles
/// must be found again; `token::forward::again_after_reconnect` runs the
/// whole call once more (see `forward_objects`).
pub const CKR_HSME_INTERNAL_RECONNECTED: CK_RV = CKR_VENDOR_DEFINED | 0x4845_FFFF;

/// What a forwarded call returned, and whether it says the backend no
/// longer knows the session.
pub trait Outcome {
    fn session_lost(&self) -> bool;
    /// The outcome that asks for the whole call to run again (see
    /// `forward_objects`).
    fn reconnected() -> Self;
}

impl Outcome for CK_RV {
    fn session_lost(&self) -> bool {
        matches!(*self, CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED)
    }
    fn reconnected() -> Self {
        CKR_HSME_INTERNAL_RECONNECTED
    }
}

impl<T> Outcome for Result<T> {
    fn session_lost(&self) -> bool {
        matches!(self, Err(e) if e.backend_rv().is_some_and(|rv| rv.session_lost()))
    }
    fn reconnected() -> Self {
        Err(Error::Rv(CKR_HSME_INTERNAL_RECONNECTED))
    }
}

/// Run `call` on `s`'s backend session, re-opening it once if it was lost.
pub fn forward<T: Outcome>(
    m: &Module,
    s: &Session,
    mut call: impl FnMut(CK_SESSION_HANDLE) -> T,
) -> T {
    let out = call(s.backend());
    if !out.session_lost() {
        return out;
    }
    match reopen(m, s) {
        Ok(bh) => call(bh),
        Err(_) => out,
    }
}

/// `forward` for a call that names backend objects by handles looked up
/// before it: after a reconnect those handles may name other objects (a
/// restarted HSM renumbers them), so the call is not retried here with
/// them; it answers `reconnected`, and `again_after_reconnect` runs the
/// whole call again, its handles found again and its checks (the KEK
/// guard) run on what they name now.
pub fn forward_objects<T: Outcome>(
    m: &Module,
    s: &Session,
    mut call: impl FnMut(CK_SESSION_HANDLE) -> T,
) -> T {
    let out = call(s.backend());
    if !out.session_lost() {
        return out;
    }
    match reopen(m, s) {
        Ok(_) => T::reconnected(),
        Err(_) => out,
    }
}

fn reopen(m: &Module, s: &Session) -> Result<CK_SESSION_HANDLE> {
    let entry = m.slots.get(s.slot).ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
    let flags = s.flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
    let bh = m.backend.open_session(entry.backend_id, flags)?;
    if m.is_user(s.slot) {
        if let Ok(env) = m.envelope_for(s.slot) {
            env.login_again(bh);
        }
    }
    s.set_backend(bh);
    // Backend object handles may have changed with the reconnect.
    m.objects.note_reconnect();
    crate::log_info!(
        "session {}: backend session re-opened after the HSM lost it",
        s.handle
    );
    Ok(bh)
}

/// `forward_objects` for the ffi pass-through of calls that name backend
/// objects (the handles `call` is given were looked up before it).
pub fn forward_session_objects(
    h: CK_SESSION_HANDLE,
    mut call: impl FnMut(&Backend, CK_SESSION_HANDLE) -> CK_RV,
) -> Result<CK_RV> {
    let (m, s) = lookup(h)?;
    Ok(forward_objects(&m, &s, |bs| call(&m.backend, bs)))
}

/// `forward` for the ffi pass-through, which calls the backend's raw
/// function list with the application's own pointers.
pub fn forward_session(
    h: CK_SESSION_HANDLE,
    mut call: impl FnMut(&Backend, CK_SESSION_HANDLE) -> CK_RV,
) -> Result<CK_RV> {
    let (m, s) = lookup(h)?;
    Ok(forward(&m, &s, |bs| call(&m.backend, bs)))
}

/// Codes a call gets for a backend object handle that names nothing.
fn stale_handle(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_OBJECT_HANDLE_INVALID
            | CKR_KEY_HANDLE_INVALID
            | CKR_WRAPPING_KEY_HANDLE_INVALID
            | CKR_UNWRAPPING_KEY_HANDLE_INVALID
    )
}

/// Run a call that names backend objects by our handles. If a backend
/// session was lost and re-opened during it (`forward_objects`), or it
/// failed for a stale handle while one was, run it again (at most twice
/// more): its handles are then found again (see `object::rebind`) and every
/// check in it, the KEK guard included, runs again on them.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn again_after_reconnect(mut body: impl FnMut() -> Result<CK_RV>) -> Result<CK_RV> {
    let reconnects = || {
        crate::token::module::get()
            .map(|m| m.objects.reconnects())
            .ok()
    };
    for _ in 0..3 {
        let before = reconnects();
        let out = body();
        let rv = match &out {
            Ok(rv) => *rv,
            Err(e) => e.rv(),
        };
        let again = rv == CKR_HSME_INTERNAL_RECONNECTED
            || (stale_handle(rv) && before.is_some() && reconnects() != before);
        if !again {
            return out;
        }
        crate::log_info!("a call met a re-opened backend session; running it again");
    }
    Err(Error::Rv(CKR_DEVICE_ERROR))
}
