//! A PKCS#11 module for outage tests: it forwards every call to a real
//! module (FAULTY_BACKEND_TARGET, e.g. SoftHSM2) except while the file named
//! by FAULTY_BACKEND_FLAG exists. Then the calls that reach the token answer
//! CKR_DEVICE_ERROR, as a network HSM does when its link is down. When the
//! flag goes away, the first call closes every session on the real module
//! first: like a reconnect, the sessions (and the login) are gone.
//!
//! Built with `cargo build --example faulty_backend` into
//! target/<profile>/examples/libfaulty_backend.so (tests/outage.rs builds it).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::sync::atomic::{AtomicBool, Ordering};
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
    C_FindObjects(a: CK_SESSION_HANDLE, b: *mut CK_OBJECT_HANDLE, c: CK_ULONG, d: *mut CK_ULONG);
    C_GetAttributeValue(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE, c: *mut CK_ATTRIBUTE, d: CK_ULONG);
    C_EncryptInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE);
    C_Encrypt(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG, d: *mut CK_BYTE, e: *mut CK_ULONG);
    C_DecryptInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE);
    C_Decrypt(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG, d: *mut CK_BYTE, e: *mut CK_ULONG);
    C_GenerateRandom(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG);
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
        ..*t.list
    });
    *pp = list as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
    CKR_OK
}
