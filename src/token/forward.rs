//! The one path every forwarded call takes (p11-kit's proxy model): map
//! the application's session to the backend's, call, and if the backend
//! lost the session (an HSM reconnect closes them all), open a new one, log
//! it in again and call once more.

use cryptoki_sys::*;

use crate::backend::{bcall, check};
use crate::error::{Error, Result};
use crate::token::module::Module;
use crate::token::session::Session;

/// Run a forwarded call on `s`'s backend session. If the backend lost that
/// session (an HSM reconnect closes them all), open a new one, log it in
/// again if the user was logged in, and run the call once more: the
/// application keeps its session handle and notices nothing.
pub fn forward(m: &Module, s: &Session, call: impl Fn(CK_SESSION_HANDLE) -> CK_RV) -> CK_RV {
    let rv = call(s.backend());
    if !matches!(rv, CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED) {
        return rv;
    }
    match reopen(m, s) {
        Ok(bh) => call(bh),
        Err(_) => rv,
    }
}

fn reopen(m: &Module, s: &Session) -> Result<CK_SESSION_HANDLE> {
    let entry = m.slots.get(s.slot).ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
    let mut bh: CK_SESSION_HANDLE = 0;
    let flags = s.flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
    check(
        "C_OpenSession",
        bcall!(
            m.backend,
            C_OpenSession(entry.backend_id, flags, std::ptr::null_mut(), None, &mut bh)
        ),
    )?;
    if m.is_user(s.slot) {
        if let Ok(env) = m.envelope_for(s.slot) {
            env.login_again(&m.backend, bh);
        }
    }
    s.set_backend(bh);
    crate::log_info!(
        "session {}: backend session re-opened after the HSM lost it",
        s.handle
    );
    Ok(bh)
}
