//! Generated stubs: their names are the C ABI names.
#![allow(non_snake_case)]

//! Functions present in the lists but not offered: each answers
//! CKR_FUNCTION_NOT_SUPPORTED (once the module is initialised).

use std::ffi::c_void;

use cryptoki_sys::*;

use super::args::guard;
use crate::token::module;

macro_rules! unsupported {
    ($($name:ident ( $($arg:ident : $ty:ty),* );)*) => {$(
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            $(let _ = $arg;)*
            guard(stringify!($name), || {
                module::get()?;
                Ok(CKR_FUNCTION_NOT_SUPPORTED)
            })
        }
    )*};
}

unsupported! {
    // State save/restore would have to carry software cipher state.
    C_GetOperationState(h: CK_SESSION_HANDLE, p: *mut CK_BYTE, pul: *mut CK_ULONG);
    C_SetOperationState(h: CK_SESSION_HANDLE, p: *mut CK_BYTE, n: CK_ULONG, k1: CK_OBJECT_HANDLE, k2: CK_OBJECT_HANDLE);
    // Dual-function calls would mix our cipher state with the backend's.
    C_DigestEncryptUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_DecryptDigestUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_SignEncryptUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_DecryptVerifyUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    // PKCS#11 3.0 additions not offered yet (message-based signing and
    // verifying; the message-based encryption functions are in `message`).
    C_LoginUser(h: CK_SESSION_HANDLE, u: CK_USER_TYPE, p: *mut CK_UTF8CHAR, n: CK_ULONG, user: *mut CK_UTF8CHAR, un: CK_ULONG);
    C_MessageSignInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_SignMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    C_SignMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    C_SignMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    C_MessageSignFinal(h: CK_SESSION_HANDLE);
    C_MessageVerifyInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_VerifyMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, i: *mut CK_BYTE, il: CK_ULONG, s: *mut CK_BYTE, sl: CK_ULONG);
    C_VerifyMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    C_VerifyMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, i: *mut CK_BYTE, il: CK_ULONG, s: *mut CK_BYTE, sl: CK_ULONG);
    C_MessageVerifyFinal(h: CK_SESSION_HANDLE);
}

/// Legacy parallel-function calls: the spec's answer is fixed.
pub unsafe extern "C" fn C_GetFunctionStatus(_h: CK_SESSION_HANDLE) -> CK_RV {
    CKR_FUNCTION_NOT_PARALLEL
}

pub unsafe extern "C" fn C_CancelFunction(_h: CK_SESSION_HANDLE) -> CK_RV {
    CKR_FUNCTION_NOT_PARALLEL
}
