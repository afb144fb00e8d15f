//! A PKCS#11 module for outage tests: it forwards every call to a real
//! module (FAULTY_BACKEND_TARGET, e.g. SoftHSM2) except while the file named
//! by FAULTY_BACKEND_FLAG exists. Then the calls that reach the token answer
//! CKR_DEVICE_ERROR, as a network HSM does when its link is down. When the
//! flag goes away, the first call closes every session on the real module
//! first: like a reconnect, the sessions (and the login) are gone.
//!
//! With FAULTY_BACKEND_RENUMBER set, the reconnect also renumbers every
//! object handle (a restarted or failed-over network HSM does): handles
//! handed out before it name nothing afterwards.
//!
//! Built with `cargo build --example faulty_backend` into
//! target/<profile>/examples/libfaulty_backend.so (tests/outage.rs builds it).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use cryptoki_sys::*;

struct Target {
    _lib: libloading::Library,
    list: &'static CK_FUNCTION_LIST,
}

fn target() -> Option<&'static Target> {
    static T: OnceLock<Option<Target>> = OnceLock::new();
    T.get_or_init(|| unsafe {
        let path = std::env::var_os("FAULTY_BACKEND_TARGET")?;
        let lib = libloading::Library::new(path).ok()?;
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0").ok()?;
        let mut p = std::ptr::null_mut();
        if get(&mut p) != CKR_OK || p.is_null() {
            return None;
        }
        Some(Target {
            list: &*p,
            _lib: lib,
        })
    })
    .as_ref()
}

static WAS_DOWN: AtomicBool = AtomicBool::new(false);
/// Added to every object handle handed out after a renumbering reconnect.
static OFFSET: AtomicU64 = AtomicU64::new(0);
const SHIFT: u64 = 0x4000_0000;

/// A handle as the application sees it, from the real module's.
fn out(h: CK_OBJECT_HANDLE) -> CK_OBJECT_HANDLE {
    h + OFFSET.load(Ordering::SeqCst) as CK_OBJECT_HANDLE
}

/// The real module's handle, from the application's: an old one (from
/// before the renumbering) names nothing.
fn inn(h: CK_OBJECT_HANDLE) -> CK_OBJECT_HANDLE {
    let off = OFFSET.load(Ordering::SeqCst) as CK_OBJECT_HANDLE;
    if h >= off {
        h - off
    } else {
        CK_INVALID_HANDLE
    }
}

/// Down while the flag file exists; on the way back up, every session of
/// the real module is closed (a reconnect loses them).
fn down() -> bool {
    let is_down =
        std::env::var_os("FAULTY_BACKEND_FLAG").is_some_and(|f| std::path::Path::new(&f).exists());
    if is_down {
        WAS_DOWN.store(true, Ordering::SeqCst);
    } else if WAS_DOWN.swap(false, Ordering::SeqCst) {
        if let Some(t) = target() {
            unsafe { close_everything(t) };
        }
        if std::env::var_os("FAULTY_BACKEND_RENUMBER").is_some() {
            OFFSET.fetch_add(SHIFT, Ordering::SeqCst);
        }
    }
    is_down
}

unsafe fn close_everything(t: &Target) {
    let (Some(list), Some(close)) = (t.list.C_GetSlotList, t.list.C_CloseAllSessions) else {
        return;
    };
    let mut n: CK_ULONG = 0;
    if list(CK_TRUE as CK_BBOOL, std::ptr::null_mut(), &mut n) != CKR_OK {
        return;
    }
    let mut slots = vec![0; n as usize];
    if list(CK_TRUE as CK_BBOOL, slots.as_mut_ptr(), &mut n) == CKR_OK {
        for s in slots.iter().take(n as usize) {
            close(*s);
        }
    }
}

/// Forward `$f` unless the token is down.
macro_rules! faulty {
    ($($f:ident ( $($a:ident : $t:ty),* );)*) => {$(
        unsafe extern "C" fn $f($($a: $t),*) -> CK_RV {
            if down() {
                return CKR_DEVICE_ERROR;
            }
            match target().and_then(|t| t.list.$f) {
                Some(f) => f($($a),*),
                None => CKR_GENERAL_ERROR,
            }
        }
    )*};
}

faulty! {
    C_OpenSession(a: CK_SLOT_ID, b: CK_FLAGS, c: *mut std::ffi::c_void, d: CK_NOTIFY, e: *mut CK_SESSION_HANDLE);
    C_Login(a: CK_SESSION_HANDLE, b: CK_USER_TYPE, c: *mut CK_UTF8CHAR, d: CK_ULONG);
    C_GetSessionInfo(a: CK_SESSION_HANDLE, b: *mut CK_SESSION_INFO);
    C_FindObjectsInit(a: CK_SESSION_HANDLE, b: *mut CK_ATTRIBUTE, c: CK_ULONG);
    C_Encrypt(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG, d: *mut CK_BYTE, e: *mut CK_ULONG);
    C_Decrypt(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG, d: *mut CK_BYTE, e: *mut CK_ULONG);
    C_GenerateRandom(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG);
}

/// Forward `$f` unless the token is down, with the object handle arguments
/// named in `in` translated to the real module's.
macro_rules! faulty_objects {
    ($($f:ident ( $($a:ident : $t:ty),* ) in [$($h:ident),*];)*) => {$(
        unsafe extern "C" fn $f($($a: $t),*) -> CK_RV {
            if down() {
                return CKR_DEVICE_ERROR;
            }
            $(let $h = inn($h);)*
            match target().and_then(|t| t.list.$f) {
                Some(f) => f($($a),*),
                None => CKR_GENERAL_ERROR,
            }
        }
    )*};
}

faulty_objects! {
    C_GetAttributeValue(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE, c: *mut CK_ATTRIBUTE, d: CK_ULONG) in [b];
    C_SetAttributeValue(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE, c: *mut CK_ATTRIBUTE, d: CK_ULONG) in [b];
    C_DestroyObject(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE) in [b];
    C_EncryptInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE) in [c];
    C_DecryptInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE) in [c];
    C_SignInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE) in [c];
    C_VerifyInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE) in [c];
    C_WrapKey(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE, d: CK_OBJECT_HANDLE, e: *mut CK_BYTE, f: *mut CK_ULONG) in [c, d];
}

unsafe extern "C" fn C_FindObjects(
    a: CK_SESSION_HANDLE,
    b: *mut CK_OBJECT_HANDLE,
    c: CK_ULONG,
    d: *mut CK_ULONG,
) -> CK_RV {
    if down() {
        return CKR_DEVICE_ERROR;
    }
    let Some(f) = target().and_then(|t| t.list.C_FindObjects) else {
        return CKR_GENERAL_ERROR;
    };
    let rv = f(a, b, c, d);
    if rv == CKR_OK && !b.is_null() && !d.is_null() {
        for i in 0..(*d).min(c) as usize {
            *b.add(i) = out(*b.add(i));
        }
    }
    rv
}

/// A call that makes one object (`$h`: where its handle goes), with the
/// object handle arguments in `in` translated.
macro_rules! makes_object {
    ($($f:ident ( $($a:ident : $t:ty),* ) in [$($i:ident),*] out $h:ident;)*) => {$(
        unsafe extern "C" fn $f($($a: $t),*) -> CK_RV {
            if down() {
                return CKR_DEVICE_ERROR;
            }
            $(let $i = inn($i);)*
            let rv = match target().and_then(|t| t.list.$f) {
                Some(f) => f($($a),*),
                None => CKR_GENERAL_ERROR,
            };
            if rv == CKR_OK && !$h.is_null() {
                *$h = out(*$h);
            }
            rv
        }
    )*};
}

makes_object! {
    C_CreateObject(a: CK_SESSION_HANDLE, b: *mut CK_ATTRIBUTE, c: CK_ULONG, d: *mut CK_OBJECT_HANDLE) in [] out d;
    C_GenerateKey(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: *mut CK_ATTRIBUTE, d: CK_ULONG, e: *mut CK_OBJECT_HANDLE) in [] out e;
    C_CopyObject(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE, c: *mut CK_ATTRIBUTE, d: CK_ULONG, e: *mut CK_OBJECT_HANDLE) in [b] out e;
    C_UnwrapKey(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE, d: *mut CK_BYTE, e: CK_ULONG, f: *mut CK_ATTRIBUTE, g: CK_ULONG, h: *mut CK_OBJECT_HANDLE) in [c] out h;
}

#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(pp: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    static LIST: OnceLock<CK_FUNCTION_LIST> = OnceLock::new();
    let Some(t) = target() else {
        return CKR_GENERAL_ERROR;
    };
    if pp.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let list = LIST.get_or_init(|| CK_FUNCTION_LIST {
        C_OpenSession: Some(C_OpenSession),
        C_Login: Some(C_Login),
        C_GetSessionInfo: Some(C_GetSessionInfo),
        C_FindObjectsInit: Some(C_FindObjectsInit),
        C_FindObjects: Some(C_FindObjects),
        C_GetAttributeValue: Some(C_GetAttributeValue),
        C_EncryptInit: Some(C_EncryptInit),
        C_Encrypt: Some(C_Encrypt),
        C_DecryptInit: Some(C_DecryptInit),
        C_Decrypt: Some(C_Decrypt),
        C_GenerateRandom: Some(C_GenerateRandom),
        C_SetAttributeValue: Some(C_SetAttributeValue),
        C_DestroyObject: Some(C_DestroyObject),
        C_SignInit: Some(C_SignInit),
        C_VerifyInit: Some(C_VerifyInit),
        C_WrapKey: Some(C_WrapKey),
        C_CreateObject: Some(C_CreateObject),
        C_GenerateKey: Some(C_GenerateKey),
        C_CopyObject: Some(C_CopyObject),
        C_UnwrapKey: Some(C_UnwrapKey),
        ..*t.list
    });
    *pp = list as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
    CKR_OK
}
