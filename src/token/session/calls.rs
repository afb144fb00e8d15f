//! Session management and login. Each of our sessions opens one backend
//! session; login is forwarded to the backend and applies to the whole
//! token, as the spec says.

use std::sync::Arc;

use cryptoki_sys::*;

use crate::error::{Error, Result};
use crate::runtime::lock::unpoisoned;
use crate::token::forward::forward;
use crate::token::module::{self, Module, ModuleRef};
use crate::token::object::table::Object;
use crate::token::session::table::Session;
use crate::token::session::thread_cache;

pub fn open(slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
    let m = module::get()?;
    let entry = m.slot(slot)?;
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(Error::Rv(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
    }
    // Opening and closing are serialised, so "was this the last session?"
    // has one answer.
    let _life = unpoisoned(m.session_life.lock());
    let bh = m.backend.open_session(
        entry.backend_id,
        flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION),
    )?;
    m.sessions.add(slot as usize, flags, bh).inspect_err(|_| {
        let _ = m.backend.close_session(bh);
    })
}

/// The session and the module, for every call that takes a session handle.
/// Neither takes a lock or writes memory another thread's session uses.
pub fn lookup(h: CK_SESSION_HANDLE) -> Result<(ModuleRef, Arc<Session>)> {
    let m = module::get()?;
    let s = thread_cache::get(&m, h)?;
    Ok((m, s))
}

/// `lookup` for the encrypt/decrypt hot path: runs `f` on the session
/// without taking a reference to it (see `thread_cache::with`).
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn with_session<R>(
    h: CK_SESSION_HANDLE,
    f: impl FnOnce(ModuleRef, &Session) -> Result<R>,
) -> Result<R> {
    thread_cache::with(module::get()?, h, f)
}

pub fn close(h: CK_SESSION_HANDLE) -> Result<()> {
    let m = module::get()?;
    let _life = unpoisoned(m.session_life.lock());
    hand_over_uses(&m, h);
    let s = m.sessions.remove(h)?;
    close_one(&m, &s);
    if m.sessions.on_slot(s.slot).is_empty() {
        // The application's last session on the token: it is logged out.
        m.logged_out(s.slot, None);
    }
    Ok(())
}

/// The uses that session `h`'s message operations counted go to the audit
/// log before the session's close ends them.
fn hand_over_uses(m: &Module, h: CK_SESSION_HANDLE) {
    if let Ok(s) = m.sessions.get(h) {
        if let Ok(mut ops) = s.ops() {
            crate::token::message::hand_over_uses(m, &s, &mut ops);
        }
    }
}

/// Close one session: its backend session, and the objects that die with
/// it (session DEKs, and backend session objects made through it).
fn close_one(m: &Module, s: &Session) {
    if let Err(e) = m.backend.close_session(s.backend()) {
        crate::log_debug!("{e}");
    }
    let gone = m.objects.forget(|_, o| match o {
        Object::Dek(d) => d.owner == Some(s.handle),
        Object::Backend { owner, .. } => *owner == Some(s.handle),
        Object::Stored { .. } => false,
    });
    if let Some(env) = &m.envelope {
        for o in gone {
            if let Object::Dek(d) = o {
                env.cache.remove(&d.id);
            }
        }
    }
}

pub fn close_all(slot: CK_SLOT_ID) -> Result<()> {
    let m = module::get()?;
    m.slot(slot)?;
    let _life = unpoisoned(m.session_life.lock());
    for s in m.sessions.on_slot(slot as usize) {
        hand_over_uses(&m, s.handle);
        if m.sessions.remove(s.handle).is_ok() {
            close_one(&m, &s);
        }
    }
    m.logged_out(slot as usize, None);
    Ok(())
}

pub fn info(h: CK_SESSION_HANDLE) -> Result<CK_SESSION_INFO> {
    let (m, s) = lookup(h)?;
    let mut info = forward(&m, &s, |bs| m.backend.session_info(bs))?;
    info.slotID = s.slot as CK_SLOT_ID;
    Ok(info)
}

/// The backend's code in an error from a backend call (CKR_OK for success).
fn rv_of(r: &Result<()>) -> CK_RV {
    match r {
        Ok(()) => CKR_OK,
        Err(e) => e.rv(),
    }
}

/// C_Login. `pin` is None for a NULL pointer, which only a token with a
/// protected authentication path takes; to any other it would be a wrong
/// PIN, costing a try against the PIN's lockout, so it never reaches it.
pub fn login(h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: Option<&[u8]>) -> Result<()> {
    let (m, s) = lookup(h)?;
    let entry = m.slots.get(s.slot).ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
    if pin.is_none()
        && m.backend.token_info(entry.backend_id)?.flags & CKF_PROTECTED_AUTHENTICATION_PATH == 0
    {
        return Err(Error::Rv(CKR_ARGUMENTS_BAD));
    }
    // The PIN goes straight from the caller's buffer to the backend.
    let result = forward(&m, &s, |bs| m.backend.login(bs, user, pin));
    let rv = rv_of(&result);
    let who = match user {
        CKU_SO => "the Security Officer",
        CKU_USER => "the user",
        _ => "context-specific",
    };
    crate::log_info!(
        "login on slot {} as {who}: {}",
        s.slot,
        crate::rv_name::rv_name(rv)
    );
    // Already logged in (the host may drive the backend itself): the token
    // is logged in all the same, so record it, and still report the code.
    if rv != CKR_USER_ALREADY_LOGGED_IN {
        if let Err(e) = &result {
            return Err(Error::backend("C_Login", e.rv()));
        }
    }
    if rv == CKR_OK && user == CKU_USER {
        if let Ok(env) = m.envelope_for(s.slot) {
            // Fail closed: the KEK is private, so only now can the module
            // see that the configured one is not on the token.
            if let Err(e) = kek_is_there(&m, env) {
                let _ = forward(&m, &s, |bs| m.backend.logout(bs));
                return Err(e);
            }
        }
    }
    if user != CKU_CONTEXT_SPECIFIC {
        m.logged_in(s.slot, user);
    }
    // Kept to log in again by itself after an HSM outage (see backend::pool).
    if let (CKR_OK, CKU_USER, Some(pin)) = (rv, user, pin) {
        if let Ok(env) = m.envelope_for(s.slot) {
            env.remember_pin(pin);
        }
    }
    if let Ok(env) = m.envelope_for(s.slot) {
        env.log(
            crate::audit::Entry::new(crate::audit::Op::Login, rv).detail(if user == CKU_SO {
                "so"
            } else {
                "user"
            }),
        );
    }
    result
}

/// After the user's login on the DEK slot: the configured KEK must be on
/// the token (or recorded in the store). If it is not, the configuration
/// names the wrong KEK, and the user is told on stderr and in the log.
fn kek_is_there(m: &Module, env: &crate::envelope::Envelope) -> Result<()> {
    match env.kek_present() {
        Ok(true) => Ok(()),
        Ok(false) => {
            crate::logging::error_to_user(format_args!(
                "C_Login: no KEK labelled '{}' on token '{}' (and none recorded in the store {}); \
                 set kek_label {} to the KEK's label, or make one with `hsm-envelope kek create` ({})",
                m.config.kek_label,
                m.config.token_label,
                m.config.store_location(),
                m.config.where_to_set(),
                crate::rv_name::rv_name(crate::vendor::CKR_HSME_KEK_UNAVAILABLE)
            ));
            Err(Error::Rv(crate::vendor::CKR_HSME_KEK_UNAVAILABLE))
        }
        // The HSM or the store failed: that call's own error, as it would
        // have been at the first DEK.
        Err(e) => {
            crate::log_warn!("C_Login: cannot check for the KEK: {e}");
            Ok(())
        }
    }
}

pub fn logout(h: CK_SESSION_HANDLE) -> Result<()> {
    let (m, s) = lookup(h)?;
    // Signed while the HMAC key can still be seen; the logout line itself
    // follows the checkpoint.
    m.sign_audit_checkpoint(s.slot);
    // Logged out before the HSM hears of it: a DEK call racing this one
    // then fails as not logged in, not with whatever the HSM says mid-way.
    m.mark_logged_out(s.slot);
    let result = forward(&m, &s, |bs| m.backend.logout(bs));
    // Whatever the backend says, our cached DEK values go.
    m.logged_out(s.slot, Some(s.backend()));
    if let Ok(env) = m.envelope_for(s.slot) {
        env.log(crate::audit::Entry::new(
            crate::audit::Op::Logout,
            rv_of(&result),
        ));
    }
    result?;
    crate::log_info!("logout on slot {}", s.slot);
    Ok(())
}

pub fn init_pin(h: CK_SESSION_HANDLE, pin: &[u8]) -> Result<()> {
    let (m, s) = lookup(h)?;
    forward(&m, &s, |bs| m.backend.init_pin(bs, pin))
}

pub fn set_pin(h: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<()> {
    let (m, s) = lookup(h)?;
    forward(&m, &s, |bs| m.backend.set_pin(bs, old, new))
}

pub fn generate_random(h: CK_SESSION_HANDLE, out: &mut [u8]) -> Result<()> {
    let (m, s) = lookup(h)?;
    forward(&m, &s, |bs| m.backend.generate_random(bs, out))
}

pub fn seed_random(h: CK_SESSION_HANDLE, seed: &[u8]) -> Result<()> {
    let (m, s) = lookup(h)?;
    forward(&m, &s, |bs| m.backend.seed_random(bs, seed))
}
