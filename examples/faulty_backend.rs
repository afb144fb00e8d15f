//! A PKCS#11 module for outage tests: it forwards every call to a real
//! module (FAULTY_BACKEND_TARGET, e.g. SoftHSM2) except while the file named
//! by FAULTY_BACKEND_FLAG exists. Then the calls that reach the token answer
//! CKR_DEVICE_ERROR, as a network HSM does when its link is down. When the
//! flag goes away, the first call closes every session on the real module
//! first: like a reconnect, the sessions (and the login) are gone.
//!
//! A flag file whose content starts with `hang` makes those calls block
//! until it goes away (or says something else) instead.
//!
//! With FAULTY_BACKEND_RENUMBER set, the reconnect also renumbers every
//! object handle (a restarted or failed-over network HSM does): handles
//! handed out before it name nothing afterwards.
//!
//! With FAULTY_BACKEND_V3 set, it also offers a PKCS#11 3.0 interface
//! (`C_GetInterface`) whose single-part message functions run AES-GCM with
//! the caller's IV (`CKG_NO_GENERATE`) on the real module's legacy calls:
//! a stand-in for a 3.0 HSM, to test that the module forwards message
//! functions on backend keys with their parameters unchanged
//! (tests/message_api.rs).
//!
//! The reconnect closes sessions only on the slots this module opened
//! sessions on: when two tokens of one SoftHSM2 stand in for two HSMs
//! (tests/replicas.rs), the one reached directly keeps its sessions.
//!
//! Built with `cargo build --example faulty_backend` into
//! target/<profile>/examples/libfaulty_backend.so (tests/outage.rs builds it).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

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
/// the real module is closed (a reconnect loses them). A flag file that
/// says `hang` makes calls block instead, until it is removed or says
/// something else (an HSM whose link hangs rather than breaks).
fn down() -> bool {
    let flag = std::env::var_os("FAULTY_BACKEND_FLAG");
    let flag = flag.as_ref().map(std::path::Path::new);
    while flag.is_some_and(|f| std::fs::read(f).is_ok_and(|c| c.starts_with(b"hang"))) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let is_down = flag.is_some_and(|f| f.exists());
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

/// Slots this module has opened sessions on.
fn our_slots() -> &'static Mutex<Vec<CK_SLOT_ID>> {
    static S: OnceLock<Mutex<Vec<CK_SLOT_ID>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(Vec::new()))
}

unsafe fn close_everything(t: &Target) {
    let Some(close) = t.list.C_CloseAllSessions else {
        return;
    };
    let slots = our_slots().lock().map(|s| s.clone()).unwrap_or_default();
    for s in slots {
        close(s);
    }
}

unsafe extern "C" fn C_OpenSession(
    a: CK_SLOT_ID,
    b: CK_FLAGS,
    c: *mut std::ffi::c_void,
    d: CK_NOTIFY,
    e: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    if down() {
        return CKR_DEVICE_ERROR;
    }
    if let Ok(mut slots) = our_slots().lock() {
        if !slots.contains(&a) {
            slots.push(a);
        }
    }
    match target().and_then(|t| t.list.C_OpenSession) {
        Some(f) => f(a, b, c, d, e),
        None => CKR_GENERAL_ERROR,
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

// ---------------------------------------------------------------------------
// The 3.0 stand-in (FAULTY_BACKEND_V3): message-based AES-GCM emulated with
// the real module's C_EncryptInit/C_Encrypt (C_DecryptInit/C_Decrypt).
// ---------------------------------------------------------------------------

/// The key of each session's message operation, by (session, decrypt?).
fn message_keys() -> &'static Mutex<HashMap<(CK_SESSION_HANDLE, bool), CK_OBJECT_HANDLE>> {
    static K: OnceLock<Mutex<HashMap<(CK_SESSION_HANDLE, bool), CK_OBJECT_HANDLE>>> =
        OnceLock::new();
    K.get_or_init(|| Mutex::new(HashMap::new()))
}

unsafe fn message_init(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
    decrypt: bool,
) -> CK_RV {
    if down() {
        return CKR_DEVICE_ERROR;
    }
    if m.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    if (*m).mechanism != CKM_AES_GCM {
        return CKR_MECHANISM_INVALID;
    }
    let mut keys = message_keys().lock().unwrap();
    if keys.contains_key(&(h, decrypt)) {
        return CKR_OPERATION_ACTIVE;
    }
    keys.insert((h, decrypt), inn(key));
    CKR_OK
}

unsafe extern "C" fn C_MessageEncryptInit(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    message_init(h, m, key, false)
}

unsafe extern "C" fn C_MessageDecryptInit(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    message_init(h, m, key, true)
}

/// One whole message through the real module's legacy GCM.
#[allow(clippy::too_many_arguments)]
unsafe fn message(
    h: CK_SESSION_HANDLE,
    decrypt: bool,
    p: *mut std::ffi::c_void,
    plen: CK_ULONG,
    aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
    input: *mut CK_BYTE,
    in_len: CK_ULONG,
    out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    if down() {
        return CKR_DEVICE_ERROR;
    }
    let Some(key) = message_keys().lock().unwrap().get(&(h, decrypt)).copied() else {
        return CKR_OPERATION_NOT_INITIALIZED;
    };
    if p.is_null() || plen as usize != size_of::<CK_GCM_MESSAGE_PARAMS>() || pul.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let mp = &*(p as *const CK_GCM_MESSAGE_PARAMS);
    if mp.ivGenerator != CKG_NO_GENERATE && !decrypt {
        return CKR_MECHANISM_PARAM_INVALID;
    }
    if out.is_null() {
        *pul = in_len;
        return CKR_OK;
    }
    if *pul < in_len {
        *pul = in_len;
        return CKR_BUFFER_TOO_SMALL;
    }
    let Some(t) = target() else {
        return CKR_GENERAL_ERROR;
    };
    let tag_len = (mp.ulTagBits / 8) as usize;
    let mut gp = CK_GCM_PARAMS {
        pIv: mp.pIv,
        ulIvLen: mp.ulIvLen,
        ulIvBits: mp.ulIvLen * 8,
        pAAD: aad,
        ulAADLen: aad_len,
        ulTagBits: mp.ulTagBits,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: &mut gp as *mut _ as *mut std::ffi::c_void,
        ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    };
    let n = in_len as usize;
    let input = std::slice::from_raw_parts(input, n);
    if decrypt {
        let mut joined = [input, std::slice::from_raw_parts(mp.pTag, tag_len)].concat();
        let rv = (t.list.C_DecryptInit.unwrap())(h, &mut mech, key);
        if rv != CKR_OK {
            return rv;
        }
        // SoftHSM2 wants room for the ciphertext and tag: decrypt into a
        // buffer of our own.
        let mut plain = vec![0u8; joined.len()];
        let mut got = plain.len() as CK_ULONG;
        let rv = (t.list.C_Decrypt.unwrap())(
            h,
            joined.as_mut_ptr(),
            joined.len() as CK_ULONG,
            plain.as_mut_ptr(),
            &mut got,
        );
        if rv != CKR_OK {
            return rv;
        }
        std::ptr::copy_nonoverlapping(plain.as_ptr(), out, (got as usize).min(n));
        *pul = got;
        CKR_OK
    } else {
        let rv = (t.list.C_EncryptInit.unwrap())(h, &mut mech, key);
        if rv != CKR_OK {
            return rv;
        }
        // The real module's own idea of the length (SoftHSM2 asks for more
        // than it writes).
        let mut got: CK_ULONG = 0;
        let rv = (t.list.C_Encrypt.unwrap())(
            h,
            input.as_ptr() as *mut u8,
            in_len,
            std::ptr::null_mut(),
            &mut got,
        );
        if rv != CKR_OK {
            return rv;
        }
        let mut sealed = vec![0u8; (got as usize).max(n + tag_len)];
        let rv = (t.list.C_Encrypt.unwrap())(
            h,
            input.as_ptr() as *mut u8,
            in_len,
            sealed.as_mut_ptr(),
            &mut got,
        );
        if rv != CKR_OK {
            return rv;
        }
        std::ptr::copy_nonoverlapping(sealed.as_ptr(), out, n);
        std::ptr::copy_nonoverlapping(sealed[n..].as_ptr(), mp.pTag, tag_len);
        *pul = in_len;
        CKR_OK
    }
}

unsafe extern "C" fn C_EncryptMessage(
    h: CK_SESSION_HANDLE,
    p: *mut std::ffi::c_void,
    plen: CK_ULONG,
    aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
    input: *mut CK_BYTE,
    in_len: CK_ULONG,
    out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    message(h, false, p, plen, aad, aad_len, input, in_len, out, pul)
}

unsafe extern "C" fn C_DecryptMessage(
    h: CK_SESSION_HANDLE,
    p: *mut std::ffi::c_void,
    plen: CK_ULONG,
    aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
    input: *mut CK_BYTE,
    in_len: CK_ULONG,
    out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    message(h, true, p, plen, aad, aad_len, input, in_len, out, pul)
}

unsafe fn message_final(h: CK_SESSION_HANDLE, decrypt: bool) -> CK_RV {
    match message_keys().lock().unwrap().remove(&(h, decrypt)) {
        Some(_) => CKR_OK,
        None => CKR_OPERATION_NOT_INITIALIZED,
    }
}

unsafe extern "C" fn C_MessageEncryptFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    message_final(h, false)
}

unsafe extern "C" fn C_MessageDecryptFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    message_final(h, true)
}

unsafe extern "C" fn C_SessionCancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    let mut keys = message_keys().lock().unwrap();
    if flags & CKF_MESSAGE_ENCRYPT != 0 {
        keys.remove(&(h, false));
    }
    if flags & CKF_MESSAGE_DECRYPT != 0 {
        keys.remove(&(h, true));
    }
    CKR_OK
}

struct Interface(CK_INTERFACE);
// SAFETY: pointers to immutable statics.
unsafe impl Send for Interface {}
unsafe impl Sync for Interface {}

#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    _name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    pp: *mut *mut CK_INTERFACE,
    _flags: CK_FLAGS,
) -> CK_RV {
    static LIST3: OnceLock<CK_FUNCTION_LIST_3_0> = OnceLock::new();
    static IFACE: OnceLock<Interface> = OnceLock::new();
    static IFACE_240: OnceLock<Interface> = OnceLock::new();
    if pp.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let mut l240: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    let rv = C_GetFunctionList(&mut l240);
    if rv != CKR_OK {
        return rv;
    }
    if std::env::var_os("FAULTY_BACKEND_V3").is_none() {
        // A 2.40 module as far as anyone asking can tell.
        if !version.is_null() && (*version).major != 2 {
            return CKR_ARGUMENTS_BAD;
        }
        let iface = IFACE_240.get_or_init(|| {
            Interface(CK_INTERFACE {
                pInterfaceName: c"PKCS 11".as_ptr() as *mut _,
                pFunctionList: l240 as *mut _,
                flags: 0,
            })
        });
        *pp = &iface.0 as *const _ as *mut _;
        return CKR_OK;
    }
    if !version.is_null() && (*version).major != 3 {
        return CKR_ARGUMENTS_BAD;
    }
    let l = &*l240;
    let list = LIST3.get_or_init(|| {
        // The 2.40 entries, then the 3.0 ones this stand-in has.
        let mut v3: CK_FUNCTION_LIST_3_0 = std::mem::zeroed();
        v3.version = CK_VERSION { major: 3, minor: 0 };
        macro_rules! copy {
            ($($f:ident),*) => { $(v3.$f = l.$f;)* };
        }
        copy!(
            C_Initialize,
            C_Finalize,
            C_GetInfo,
            C_GetSlotList,
            C_GetSlotInfo,
            C_GetTokenInfo,
            C_GetMechanismList,
            C_GetMechanismInfo,
            C_InitToken,
            C_InitPIN,
            C_SetPIN,
            C_OpenSession,
            C_CloseSession,
            C_CloseAllSessions,
            C_GetSessionInfo,
            C_GetOperationState,
            C_SetOperationState,
            C_Login,
            C_Logout,
            C_CreateObject,
            C_CopyObject,
            C_DestroyObject,
            C_GetObjectSize,
            C_GetAttributeValue,
            C_SetAttributeValue,
            C_FindObjectsInit,
            C_FindObjects,
            C_FindObjectsFinal,
            C_EncryptInit,
            C_Encrypt,
            C_EncryptUpdate,
            C_EncryptFinal,
            C_DecryptInit,
            C_Decrypt,
            C_DecryptUpdate,
            C_DecryptFinal,
            C_DigestInit,
            C_Digest,
            C_DigestUpdate,
            C_DigestKey,
            C_DigestFinal,
            C_SignInit,
            C_Sign,
            C_SignUpdate,
            C_SignFinal,
            C_SignRecoverInit,
            C_SignRecover,
            C_VerifyInit,
            C_Verify,
            C_VerifyUpdate,
            C_VerifyFinal,
            C_VerifyRecoverInit,
            C_VerifyRecover,
            C_GenerateKey,
            C_GenerateKeyPair,
            C_WrapKey,
            C_UnwrapKey,
            C_DeriveKey,
            C_SeedRandom,
            C_GenerateRandom,
            C_WaitForSlotEvent
        );
        v3.C_GetFunctionList = Some(C_GetFunctionList);
        v3.C_GetInterface = Some(C_GetInterface);
        v3.C_SessionCancel = Some(C_SessionCancel);
        v3.C_MessageEncryptInit = Some(C_MessageEncryptInit);
        v3.C_EncryptMessage = Some(C_EncryptMessage);
        v3.C_MessageEncryptFinal = Some(C_MessageEncryptFinal);
        v3.C_MessageDecryptInit = Some(C_MessageDecryptInit);
        v3.C_DecryptMessage = Some(C_DecryptMessage);
        v3.C_MessageDecryptFinal = Some(C_MessageDecryptFinal);
        v3
    });
    let iface = IFACE.get_or_init(|| {
        Interface(CK_INTERFACE {
            pInterfaceName: c"PKCS 11".as_ptr() as *mut _,
            pFunctionList: list as *const _ as *mut _,
            flags: 0,
        })
    });
    *pp = &iface.0 as *const _ as *mut _;
    CKR_OK
}
