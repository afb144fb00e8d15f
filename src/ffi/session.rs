//! Shims: sessions, login, PINs, random numbers.

use cryptoki_sys::*;

use super::args::*;
use crate::token::session::{calls, cancel};

#[no_mangle]
pub unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut std::ffi::c_void,
    _notify: CK_NOTIFY,
    ph: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_OpenSession", || unsafe {
        if ph.is_null() {
            return Err(bad());
        }
        ok(put(ph, calls::open(slot, flags)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CloseSession", || ok(calls::close(h)))
}

#[no_mangle]
pub unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    guard("C_CloseAllSessions", || ok(calls::close_all(slot)))
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSessionInfo(
    h: CK_SESSION_HANDLE,
    p_info: *mut CK_SESSION_INFO,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GetSessionInfo", || unsafe {
        if p_info.is_null() {
            return Err(bad());
        }
        ok(put(p_info, calls::info(h)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    guard("C_Login", || {
        // A NULL PIN is only for tokens with a protected authentication
        // path (a PIN pad); `login` checks that before the HSM sees it.
        let pin = if pin.is_null() {
            None
        } else {
            // SAFETY: the caller's PIN, `len` bytes (PKCS#11 contract).
            Some(unsafe { bytes(pin, len)? })
        };
        ok(calls::login(h, user, pin))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_Logout", || ok(calls::logout(h)))
}

#[no_mangle]
pub unsafe extern "C" fn C_InitPIN(
    h: CK_SESSION_HANDLE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe { guard("C_InitPIN", || ok(calls::init_pin(h, bytes(pin, len)?))) }
}

#[no_mangle]
pub unsafe extern "C" fn C_SetPIN(
    h: CK_SESSION_HANDLE,
    old: *mut CK_UTF8CHAR,
    old_len: CK_ULONG,
    new: *mut CK_UTF8CHAR,
    new_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_SetPIN", || unsafe {
        ok(calls::set_pin(
            h,
            bytes(old, old_len)?,
            bytes(new, new_len)?,
        ))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GenerateRandom(
    h: CK_SESSION_HANDLE,
    p: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GenerateRandom", || unsafe {
        ok(calls::generate_random(h, bytes_mut(p, len)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SeedRandom(
    h: CK_SESSION_HANDLE,
    p: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe { guard("C_SeedRandom", || ok(calls::seed_random(h, bytes(p, len)?))) }
}

#[no_mangle]
pub unsafe extern "C" fn C_SessionCancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    guard("C_SessionCancel", || ok(cancel::cancel(h, flags)))
}
