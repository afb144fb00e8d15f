//! Shims forwarded to the backend unchanged but for the session and key
//! handles: digests, sign-recover, verify-recover (signing and verifying,
//! which run CMAC on DEKs here, are in `mac`).

use cryptoki_sys::*;

use super::args::*;
use crate::backend::bcall;
use crate::token::digest_key::digest_key;
use crate::token::forward::{again_after_reconnect, forward_objects, forward_session};
use crate::token::object::manage::backend_key;
use crate::token::session::lookup;

/// A call that takes a session and passes everything else through.
macro_rules! forward_session {
    ($($name:ident ( $($arg:ident : $ty:ty),* );)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(h: CK_SESSION_HANDLE, $($arg: $ty),*) -> CK_RV {
            guard(stringify!($name), || {
                forward_session(h, |b, bs| {
                    // SAFETY: the caller's pointers, passed on unchanged to
                    // a function of the backend's own list.
                    unsafe { bcall!(b, $name(bs, $($arg),*)) }
                })
            })
        }
    )*};
}

/// An init call that takes a mechanism and one key handle to translate.
macro_rules! forward_key_init {
    ($($name:ident;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(h: CK_SESSION_HANDLE, p_m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
            guard(stringify!($name), || again_after_reconnect(|| {
                let mut params = ParamBuf::new();
                // SAFETY: null is checked; otherwise the caller's mechanism.
                let mc = unsafe { mechanism_copy(p_m, &mut params)? };
                let (m, s) = lookup(h)?;
                let bkey = backend_key(&m, &s, key)?;
                Ok(forward_objects(&m, &s, |bs| {
                    // SAFETY: the caller's mechanism (copied once), passed on
                    // to a function of the backend's own list.
                    unsafe { bcall!(m.backend, $name(bs, mc.ptr(), bkey)) }
                }))
            }))
        }
    )*};
}

forward_key_init! {
    C_SignRecoverInit;
    C_VerifyRecoverInit;
}

forward_session! {
    C_DigestInit(p_m: *mut CK_MECHANISM);
    C_Digest(p_in: *mut CK_BYTE, n: CK_ULONG, p_out: *mut CK_BYTE, pul: *mut CK_ULONG);
    C_DigestUpdate(p_in: *mut CK_BYTE, n: CK_ULONG);
    C_DigestFinal(p_out: *mut CK_BYTE, pul: *mut CK_ULONG);
    C_SignRecover(p_in: *mut CK_BYTE, n: CK_ULONG, p_out: *mut CK_BYTE, pul: *mut CK_ULONG);
    C_VerifyRecover(p_sig: *mut CK_BYTE, sig_len: CK_ULONG, p_out: *mut CK_BYTE, pul: *mut CK_ULONG);
}

#[no_mangle]
pub unsafe extern "C" fn C_DigestKey(h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
    guard("C_DigestKey", || {
        again_after_reconnect(|| {
            digest_key(h, key, |b, bs, bkey| {
                // SAFETY: no pointers; a function of the backend's own list.
                unsafe { bcall!(b, C_DigestKey(bs, bkey)) }
            })
        })
    })
}
