//! Raw C-ABI tests of libhsm_envelope.so that `cryptoki` cannot express:
//! NULL pointers, exact return codes, the two-call length convention down
//! to the bytes past a caller's buffer, both CK_GCM_PARAMS layouts, the
//! interface lists, C_Initialize arguments and fork(). The module is loaded
//! with `libloading` and called through its `CK_FUNCTION_LIST`.
//!
//! Each test makes its own token first and runs in its own process:
//! `cargo nextest run --test c_abi`.

mod common;

use std::ffi::c_void;
use std::fmt::Debug;
use std::ptr::null_mut;

use common::*;
use cryptoki_sys::*;
use hsm_envelope::vendor::CKA_HSME_KEK_VERSION;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Asserts a CK_RV, printing both values in hex.
macro_rules! assert_rv {
    ($got:expr, $want:expr $(, $($ctx:tt)+)?) => {{
        let (got, want): (CK_RV, CK_RV) = ($got, $want);
        assert!(
            got == want,
            "{}: got CK_RV {got:#x}, expected {want:#x} ({}){}",
            stringify!($got),
            stringify!($want),
            String::new() $(+ ": " + &format!($($ctx)+))?
        );
    }};
}

/// Calls a function of the module's 2.40 list.
macro_rules! p11 {
    ($m:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        let f = $m.list().$f.expect(concat!(stringify!($f), " is NULL in the function list"));
        // SAFETY: the module follows the PKCS#11 ABI; the tests pass
        // pointers to live buffers of the stated sizes, or NULL on purpose.
        #[allow(unused_unsafe, clippy::macro_metavars_in_unsafe)]
        unsafe {
            f($($arg),*)
        }
    }};
}

/// The loaded module; the library stays mapped while this lives.
struct Module {
    lib: libloading::Library,
    list: *const CK_FUNCTION_LIST,
}

type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
type GetInterfaceList = unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV;
type GetInterface = unsafe extern "C" fn(
    *mut CK_UTF8CHAR,
    *mut CK_VERSION,
    *mut *mut CK_INTERFACE,
    CK_FLAGS,
) -> CK_RV;

impl Module {
    fn load() -> Module {
        let path = module_path();
        // SAFETY: loading our own PKCS#11 module, which has no unsafe initialisers.
        let lib = unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
        let mut list = null_mut();
        let rv = unsafe { (Self::symbol::<GetFunctionList>(&lib, "C_GetFunctionList"))(&mut list) };
        assert_rv!(rv, CKR_OK);
        assert!(!list.is_null(), "C_GetFunctionList gave NULL");
        Module { lib, list }
    }

    fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> T {
        let cname = format!("{name}\0");
        // SAFETY: T is the symbol's C function type as the spec declares it.
        unsafe {
            *lib.get::<T>(cname.as_bytes())
                .unwrap_or_else(|e| panic!("symbol {name}: {e}"))
        }
    }

    fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: non-null, points at the module's static list.
        unsafe { &*self.list }
    }

    fn get_function_list(&self) -> GetFunctionList {
        Self::symbol(&self.lib, "C_GetFunctionList")
    }
    fn get_interface_list(&self) -> GetInterfaceList {
        Self::symbol(&self.lib, "C_GetInterfaceList")
    }
    fn get_interface(&self) -> GetInterface {
        Self::symbol(&self.lib, "C_GetInterface")
    }

    fn initialize(&self) {
        assert_rv!(p11!(self, C_Initialize(null_mut())), CKR_OK);
    }

    /// The slot list (C_Initialize must have been called).
    fn slots(&self) -> Vec<CK_SLOT_ID> {
        let mut n = 0;
        assert_rv!(
            p11!(self, C_GetSlotList(CK_TRUE, null_mut(), &mut n)),
            CKR_OK
        );
        let mut v = vec![0; n as usize];
        assert_rv!(
            p11!(self, C_GetSlotList(CK_TRUE, v.as_mut_ptr(), &mut n)),
            CKR_OK
        );
        v.truncate(n as usize);
        v
    }

    fn open_session(&self, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
        let mut h = CK_INVALID_HANDLE;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        assert_rv!(
            p11!(self, C_OpenSession(slot, flags, null_mut(), None, &mut h)),
            CKR_OK
        );
        h
    }

    fn login(&self, s: CK_SESSION_HANDLE) {
        let mut pin = USER_PIN.as_bytes().to_vec();
        assert_rv!(
            p11!(
                self,
                C_Login(s, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
            ),
            CKR_OK
        );
    }

    /// A session DEK (AES-256, CKA_TOKEN false) labelled `label`.
    fn dek(&self, s: CK_SESSION_HANDLE, label: &str) -> CK_OBJECT_HANDLE {
        let mut len: CK_ULONG = 32;
        let mut no: CK_BBOOL = CK_FALSE;
        let mut label = label.as_bytes().to_vec();
        let mut t = [
            attr(CKA_VALUE_LEN, &mut len),
            attr(CKA_TOKEN, &mut no),
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_mut_ptr().cast(),
                ulValueLen: label.len() as CK_ULONG,
            },
        ];
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let mut h = CK_INVALID_HANDLE;
        assert_rv!(
            p11!(
                self,
                C_GenerateKey(s, &mut m, t.as_mut_ptr(), t.len() as CK_ULONG, &mut h)
            ),
            CKR_OK
        );
        assert_ne!(h, CK_INVALID_HANDLE);
        h
    }

    /// C_EncryptInit + C_Encrypt with the two-call convention.
    fn encrypt(
        &self,
        s: CK_SESSION_HANDLE,
        m: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Vec<u8> {
        let mut input = data.to_vec();
        assert_rv!(p11!(self, C_EncryptInit(s, m, key)), CKR_OK);
        let mut n = 0;
        assert_rv!(
            p11!(
                self,
                C_Encrypt(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    null_mut(),
                    &mut n
                )
            ),
            CKR_OK
        );
        let mut out = vec![0u8; n as usize];
        assert_rv!(
            p11!(
                self,
                C_Encrypt(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut n
                )
            ),
            CKR_OK
        );
        out.truncate(n as usize);
        out
    }

    /// C_DecryptInit + C_Decrypt with the two-call convention.
    fn decrypt(
        &self,
        s: CK_SESSION_HANDLE,
        m: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Vec<u8> {
        let mut input = data.to_vec();
        assert_rv!(p11!(self, C_DecryptInit(s, m, key)), CKR_OK);
        let mut n = 0;
        assert_rv!(
            p11!(
                self,
                C_Decrypt(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    null_mut(),
                    &mut n
                )
            ),
            CKR_OK
        );
        let mut out = vec![0u8; n as usize];
        assert_rv!(
            p11!(
                self,
                C_Decrypt(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut n
                )
            ),
            CKR_OK
        );
        out.truncate(n as usize);
        out
    }
}

/// A fresh token, the module initialised, a logged-in RW session on the DEK
/// slot (the first one listed).
struct Ready {
    _token: TestToken,
    m: Module,
    slot: CK_SLOT_ID,
    s: CK_SESSION_HANDLE,
}

fn ready() -> Ready {
    let token = TestToken::new();
    let m = Module::load();
    m.initialize();
    let slot = *m.slots().first().expect("the module lists no slot");
    let s = m.open_session(slot);
    m.login(s);
    Ready {
        _token: token,
        m,
        slot,
        s,
    }
}

/// A template entry pointing at `v`.
fn attr<T>(ty: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: (v as *mut T).cast(),
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

const IV: [u8; 12] = [
    0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB,
];
const AAD: &[u8] = b"c_abi additional data";
const PLAIN: [u8; 64] = {
    let mut p = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        p[i] = (i as u8).wrapping_mul(7).wrapping_add(3);
        i += 1;
    }
    p
};
const TAG_LEN: usize = 16;

/// CK_GCM_PARAMS as the 3.0 errata and some callers lay it out: no ulIvBits.
#[repr(C)]
#[derive(Clone, Copy)]
struct GcmParamsNoIvBits {
    p_iv: *mut CK_BYTE,
    ul_iv_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    ul_aad_len: CK_ULONG,
    ul_tag_bits: CK_ULONG,
}

/// IV and AAD storage that GCM parameters point into.
struct GcmData {
    iv: Vec<u8>,
    aad: Vec<u8>,
}

impl GcmData {
    fn new() -> GcmData {
        GcmData {
            iv: IV.to_vec(),
            aad: AAD.to_vec(),
        }
    }
    /// The 2.40-header layout (with ulIvBits).
    fn params(&mut self, tag_bits: CK_ULONG) -> CK_GCM_PARAMS {
        CK_GCM_PARAMS {
            pIv: self.iv.as_mut_ptr(),
            ulIvLen: self.iv.len() as CK_ULONG,
            ulIvBits: 8 * self.iv.len() as CK_ULONG,
            pAAD: self.aad.as_mut_ptr(),
            ulAADLen: self.aad.len() as CK_ULONG,
            ulTagBits: tag_bits,
        }
    }
    fn params_no_iv_bits(&mut self, tag_bits: CK_ULONG) -> GcmParamsNoIvBits {
        GcmParamsNoIvBits {
            p_iv: self.iv.as_mut_ptr(),
            ul_iv_len: self.iv.len() as CK_ULONG,
            p_aad: self.aad.as_mut_ptr(),
            ul_aad_len: self.aad.len() as CK_ULONG,
            ul_tag_bits: tag_bits,
        }
    }
}

fn mech<T>(mechanism: CK_MECHANISM_TYPE, p: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism,
        pParameter: (p as *mut T).cast(),
        ulParameterLen: size_of::<T>() as CK_ULONG,
    }
}

/// Function-pointer entries of a CK_FUNCTION_LIST* (everything after the
/// version), with the names of the NULL ones from the Debug output.
fn list_entries<T: Debug>(list: &T) -> (usize, Vec<String>) {
    let ptr_size = size_of::<usize>();
    let n = (size_of::<T>() - ptr_size) / ptr_size;
    // SAFETY: a function list is a CK_VERSION padded to pointer alignment,
    // then `n` nullable function pointers.
    let raw = unsafe { std::slice::from_raw_parts((list as *const T as *const usize).add(1), n) };
    let zero = raw.iter().filter(|p| **p == 0).count();
    let dbg = format!("{list:?}");
    let named: Vec<String> = dbg
        .split(", ")
        .filter(|f| f.ends_with(": None") || f.ends_with(": None }"))
        .map(|f| f.split(':').next().unwrap_or_default().trim().to_string())
        .collect();
    assert_eq!(
        zero,
        named.len(),
        "NULL entries by layout vs by name: {dbg}"
    );
    (n, named)
}

/// Bytes the tests fill buffers with, to see what the module wrote.
const CANARY: u8 = 0xA5;

// ---------------------------------------------------------------------------
// Function lists and interfaces
// ---------------------------------------------------------------------------

#[test]
fn get_function_list_null_and_every_240_entry_present() {
    let _token = TestToken::new();
    let m = Module::load();
    let get = m.get_function_list();
    assert_rv!(unsafe { get(null_mut()) }, CKR_ARGUMENTS_BAD);
    let mut list = null_mut();
    assert_rv!(unsafe { get(&mut list) }, CKR_OK);
    let list: &CK_FUNCTION_LIST = unsafe { &*list };
    assert_eq!((list.version.major, list.version.minor), (2, 40));
    let (n, missing) = list_entries(list);
    assert_eq!(n, 68, "a 2.40 list has 68 functions");
    assert!(
        missing.is_empty(),
        "NULL entries in the 2.40 list: {missing:?}"
    );
}

#[test]
fn get_interface_list_two_call_convention() {
    let _token = TestToken::new();
    let m = Module::load();
    let get = m.get_interface_list();
    assert_rv!(unsafe { get(null_mut(), null_mut()) }, CKR_ARGUMENTS_BAD);
    let mut n: CK_ULONG = 0;
    assert_rv!(unsafe { get(null_mut(), &mut n) }, CKR_OK);
    assert!(n >= 2, "expected the 3.0 and 2.40 interfaces, got {n}");
    let blank = CK_INTERFACE {
        pInterfaceName: null_mut(),
        pFunctionList: null_mut(),
        flags: 0xDEAD,
    };
    // One too few: CKR_BUFFER_TOO_SMALL, the count set, nothing written.
    let mut buf = vec![blank; n as usize + 1];
    let mut small = n - 1;
    assert_rv!(
        unsafe { get(buf.as_mut_ptr(), &mut small) },
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(small, n, "the needed count must be reported");
    assert!(buf[n as usize - 1..]
        .iter()
        .all(|i| i.flags == 0xDEAD && i.pFunctionList.is_null()));
    let mut got = n;
    assert_rv!(unsafe { get(buf.as_mut_ptr(), &mut got) }, CKR_OK);
    assert_eq!(got, n);
    assert_eq!(buf[n as usize].flags, 0xDEAD, "wrote past the interfaces");
    let mut versions = Vec::new();
    for i in &buf[..n as usize] {
        assert!(!i.pInterfaceName.is_null() && !i.pFunctionList.is_null());
        let name = unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName as *const _) };
        assert_eq!(name.to_bytes(), b"PKCS 11");
        let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
        versions.push((v.major, v.minor));
    }
    assert!(
        versions.contains(&(3, 0)) && versions.contains(&(2, 40)),
        "{versions:?}"
    );
}

#[test]
fn get_interface_default_named_and_unknown() {
    let _token = TestToken::new();
    let m = Module::load();
    let get = m.get_interface();
    let mut name = b"PKCS 11\0".to_vec();

    assert_rv!(
        unsafe { get(null_mut(), null_mut(), null_mut(), 0) },
        CKR_ARGUMENTS_BAD
    );

    // NULL name: the default, 3.0, with every entry present.
    let mut p: *mut CK_INTERFACE = null_mut();
    assert_rv!(unsafe { get(null_mut(), null_mut(), &mut p, 0) }, CKR_OK);
    assert!(!p.is_null());
    let iface = unsafe { &*p };
    let l30 = unsafe { &*(iface.pFunctionList as *const CK_FUNCTION_LIST_3_0) };
    assert_eq!((l30.version.major, l30.version.minor), (3, 0));
    let (n, missing) = list_entries(l30);
    assert_eq!(n, 92, "a 3.0 list has 92 functions");
    assert!(
        missing.is_empty(),
        "NULL entries in the 3.0 list: {missing:?}"
    );

    // "PKCS 11" version 2.40: the 2.40 list.
    let mut v240 = CK_VERSION {
        major: 2,
        minor: 40,
    };
    let mut p: *mut CK_INTERFACE = null_mut();
    assert_rv!(
        unsafe { get(name.as_mut_ptr(), &mut v240, &mut p, 0) },
        CKR_OK
    );
    let l240 = unsafe { &*((*p).pFunctionList as *const CK_FUNCTION_LIST) };
    assert_eq!((l240.version.major, l240.version.minor), (2, 40));
    let (n, missing) = list_entries(l240);
    assert_eq!((n, missing.len()), (68, 0), "{missing:?}");

    // "PKCS 11" version 3.0 by name.
    let mut v30 = CK_VERSION { major: 3, minor: 0 };
    let mut p: *mut CK_INTERFACE = null_mut();
    assert_rv!(
        unsafe { get(name.as_mut_ptr(), &mut v30, &mut p, 0) },
        CKR_OK
    );
    assert_eq!(
        unsafe { *((*p).pFunctionList as *const CK_VERSION) }.major,
        3
    );

    // Unknown name or version: an error, and the output left alone.
    let mut other = b"Vendor Thing\0".to_vec();
    let sentinel = 0x1000 as *mut CK_INTERFACE;
    let mut p = sentinel;
    assert_rv!(
        unsafe { get(other.as_mut_ptr(), null_mut(), &mut p, 0) },
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(p, sentinel);
    let mut v99 = CK_VERSION { major: 9, minor: 9 };
    assert_rv!(
        unsafe { get(name.as_mut_ptr(), &mut v99, &mut p, 0) },
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(p, sentinel);
}

// ---------------------------------------------------------------------------
// C_Initialize / C_Finalize
// ---------------------------------------------------------------------------

/// A non-NULL pointer the module must not dereference.
fn non_null() -> *mut c_void {
    std::ptr::NonNull::<u64>::dangling().as_ptr().cast()
}

unsafe extern "C" fn create_mutex(pp: *mut *mut c_void) -> CK_RV {
    if !pp.is_null() {
        *pp = non_null();
    }
    CKR_OK
}

unsafe extern "C" fn mutex_op(_m: *mut c_void) -> CK_RV {
    CKR_OK
}

fn init_args(flags: CK_FLAGS, callbacks: [bool; 4]) -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: if callbacks[0] {
            Some(create_mutex)
        } else {
            None
        },
        DestroyMutex: if callbacks[1] { Some(mutex_op) } else { None },
        LockMutex: if callbacks[2] { Some(mutex_op) } else { None },
        UnlockMutex: if callbacks[3] { Some(mutex_op) } else { None },
        flags,
        pReserved: null_mut(),
    }
}

/// C_GetSlotList's answer to a count query.
fn slot_count_rv(m: &Module) -> CK_RV {
    let mut n = 0;
    p11!(m, C_GetSlotList(CK_TRUE, null_mut(), &mut n))
}

#[test]
fn initialize_rejects_bad_arguments() {
    let _token = TestToken::new();
    let m = Module::load();
    let init = |a: &mut CK_C_INITIALIZE_ARGS| {
        p11!(m, C_Initialize((a as *mut CK_C_INITIALIZE_ARGS).cast()))
    };

    let mut a = init_args(CKF_OS_LOCKING_OK, [false; 4]);
    a.pReserved = non_null();
    assert_rv!(init(&mut a), CKR_ARGUMENTS_BAD, "pReserved != NULL");
    for some in [
        [true, false, false, false],
        [true, true, true, false],
        [false, true, true, true],
        [false, false, false, true],
    ] {
        for flags in [0, CKF_OS_LOCKING_OK] {
            let mut a = init_args(flags, some);
            assert_rv!(
                init(&mut a),
                CKR_ARGUMENTS_BAD,
                "callbacks {some:?}, flags {flags:#x}"
            );
        }
    }
    let mut a = init_args(0, [true; 4]);
    assert_rv!(
        init(&mut a),
        CKR_CANT_LOCK,
        "all callbacks without CKF_OS_LOCKING_OK"
    );
    // None of these initialised the module.
    assert_rv!(slot_count_rv(&m), CKR_CRYPTOKI_NOT_INITIALIZED);

    let mut a = init_args(CKF_OS_LOCKING_OK, [true; 4]);
    assert_rv!(init(&mut a), CKR_OK, "all callbacks with CKF_OS_LOCKING_OK");
    assert_rv!(slot_count_rv(&m), CKR_OK);
}

#[test]
fn initialize_finalize_cycle() {
    let _token = TestToken::new();
    let m = Module::load();
    assert_rv!(p11!(m, C_Initialize(null_mut())), CKR_OK);
    assert_rv!(
        p11!(m, C_Initialize(null_mut())),
        CKR_CRYPTOKI_ALREADY_INITIALIZED
    );
    let mut a = init_args(CKF_OS_LOCKING_OK, [false; 4]);
    assert_rv!(
        p11!(
            m,
            C_Initialize((&mut a as *mut CK_C_INITIALIZE_ARGS).cast())
        ),
        CKR_CRYPTOKI_ALREADY_INITIALIZED
    );
    let s = m.open_session(m.slots()[0]);

    assert_rv!(p11!(m, C_Finalize(non_null())), CKR_ARGUMENTS_BAD);
    // Still initialised after the refused C_Finalize.
    assert_rv!(slot_count_rv(&m), CKR_OK);
    assert_rv!(p11!(m, C_Finalize(null_mut())), CKR_OK);

    assert_rv!(slot_count_rv(&m), CKR_CRYPTOKI_NOT_INITIALIZED);
    let mut h = CK_INVALID_HANDLE;
    assert_rv!(
        p11!(
            m,
            C_OpenSession(0, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
        ),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    let mut info = CK_SESSION_INFO::default();
    assert_rv!(
        p11!(m, C_GetSessionInfo(s, &mut info)),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_rv!(
        p11!(m, C_Finalize(null_mut())),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );

    // And again, from scratch: the old session is gone.
    let mut a = init_args(CKF_OS_LOCKING_OK, [false; 4]);
    assert_rv!(
        p11!(
            m,
            C_Initialize((&mut a as *mut CK_C_INITIALIZE_ARGS).cast())
        ),
        CKR_OK
    );
    assert!(!m.slots().is_empty());
    assert_rv!(
        p11!(m, C_GetSessionInfo(s, &mut info)),
        CKR_SESSION_HANDLE_INVALID
    );
    let s2 = m.open_session(m.slots()[0]);
    m.login(s2);
    m.dek(s2, "after re-initialisation");
    assert_rv!(p11!(m, C_Finalize(null_mut())), CKR_OK);
}

#[test]
fn every_function_before_initialize_is_not_initialized() {
    let _token = TestToken::new();
    let m = Module::load();
    const NI: CK_RV = CKR_CRYPTOKI_NOT_INITIALIZED;
    // Valid pointers throughout, so that initialisation is the only problem.
    let mut n: CK_ULONG = 4;
    let mut slots = [0 as CK_SLOT_ID; 4];
    let mut info = CK_INFO::default();
    let mut slot_info = CK_SLOT_INFO::default();
    let mut token_info = CK_TOKEN_INFO::default();
    let mut mech_info = CK_MECHANISM_INFO::default();
    let mut mechs = [0 as CK_MECHANISM_TYPE; 4];
    let mut session_info = CK_SESSION_INFO::default();
    let mut h: CK_ULONG = 0;
    let mut buf = [0u8; 32];
    let mut pin = USER_PIN.as_bytes().to_vec();
    let mut data = GcmData::new();
    let mut gp = data.params(128);
    let mut gcm = mech(CKM_AES_GCM, &mut gp);
    let mut keygen = CK_MECHANISM {
        mechanism: CKM_AES_KEY_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let mut digest = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let mut len: CK_ULONG = 32;
    let mut t = [attr(CKA_VALUE_LEN, &mut len)];
    let tp = t.as_mut_ptr();
    let bp = buf.as_mut_ptr();

    let calls: Vec<(&str, CK_RV)> = vec![
        ("C_Finalize", p11!(m, C_Finalize(null_mut()))),
        ("C_GetInfo", p11!(m, C_GetInfo(&mut info))),
        (
            "C_GetSlotList",
            p11!(m, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n)),
        ),
        ("C_GetSlotInfo", p11!(m, C_GetSlotInfo(0, &mut slot_info))),
        (
            "C_GetTokenInfo",
            p11!(m, C_GetTokenInfo(0, &mut token_info)),
        ),
        (
            "C_GetMechanismList",
            p11!(m, C_GetMechanismList(0, mechs.as_mut_ptr(), &mut n)),
        ),
        (
            "C_GetMechanismInfo",
            p11!(m, C_GetMechanismInfo(0, CKM_AES_GCM, &mut mech_info)),
        ),
        (
            "C_OpenSession",
            p11!(
                m,
                C_OpenSession(0, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
            ),
        ),
        ("C_CloseSession", p11!(m, C_CloseSession(1))),
        ("C_CloseAllSessions", p11!(m, C_CloseAllSessions(0))),
        (
            "C_GetSessionInfo",
            p11!(m, C_GetSessionInfo(1, &mut session_info)),
        ),
        (
            "C_Login",
            p11!(
                m,
                C_Login(1, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
            ),
        ),
        ("C_Logout", p11!(m, C_Logout(1))),
        (
            "C_GenerateKey",
            p11!(m, C_GenerateKey(1, &mut keygen, tp, 1, &mut h)),
        ),
        (
            "C_GetAttributeValue",
            p11!(m, C_GetAttributeValue(1, 1, tp, 1)),
        ),
        ("C_FindObjectsInit", p11!(m, C_FindObjectsInit(1, tp, 1))),
        (
            "C_FindObjects",
            p11!(m, C_FindObjects(1, slots.as_mut_ptr(), 4, &mut n)),
        ),
        ("C_FindObjectsFinal", p11!(m, C_FindObjectsFinal(1))),
        ("C_DestroyObject", p11!(m, C_DestroyObject(1, 1))),
        ("C_EncryptInit", p11!(m, C_EncryptInit(1, &mut gcm, 1))),
        ("C_Encrypt", p11!(m, C_Encrypt(1, bp, 16, bp, &mut n))),
        ("C_DecryptInit", p11!(m, C_DecryptInit(1, &mut gcm, 1))),
        ("C_Decrypt", p11!(m, C_Decrypt(1, bp, 16, bp, &mut n))),
        ("C_DigestInit", p11!(m, C_DigestInit(1, &mut digest))),
        ("C_SignInit", p11!(m, C_SignInit(1, &mut digest, 1))),
        ("C_GenerateRandom", p11!(m, C_GenerateRandom(1, bp, 16))),
        (
            "C_GetOperationState",
            p11!(m, C_GetOperationState(1, bp, &mut n)),
        ),
        (
            "C_WaitForSlotEvent",
            p11!(m, C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut h, null_mut())),
        ),
    ];
    let wrong: Vec<String> = calls
        .iter()
        .filter(|(_, rv)| *rv != NI)
        .map(|(name, rv)| format!("{name} -> {rv:#x}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "expected CKR_CRYPTOKI_NOT_INITIALIZED (0x190) from: {wrong:?}"
    );
}

// ---------------------------------------------------------------------------
// NULL pointers and invalid handles
// ---------------------------------------------------------------------------

#[test]
fn null_pointers_are_arguments_bad() {
    let Ready {
        _token, m, slot, s, ..
    } = ready();
    const BAD: CK_RV = CKR_ARGUMENTS_BAD;
    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut n: CK_ULONG = 0;
    assert_rv!(p11!(m, C_GetSlotList(CK_TRUE, null_mut(), null_mut())), BAD);
    assert_rv!(
        p11!(m, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), null_mut())),
        BAD
    );
    assert_rv!(p11!(m, C_GetInfo(null_mut())), BAD);
    assert_rv!(p11!(m, C_GetSlotInfo(slot, null_mut())), BAD);
    assert_rv!(p11!(m, C_GetTokenInfo(slot, null_mut())), BAD);
    assert_rv!(
        p11!(m, C_GetMechanismList(slot, null_mut(), null_mut())),
        BAD
    );
    assert_rv!(
        p11!(m, C_GetMechanismInfo(slot, CKM_AES_GCM, null_mut())),
        BAD
    );
    assert_rv!(
        p11!(
            m,
            C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, null_mut())
        ),
        BAD
    );
    assert_rv!(p11!(m, C_GetSessionInfo(s, null_mut())), BAD);
    assert_rv!(p11!(m, C_Login(s, CKU_USER, null_mut(), 4)), BAD);

    // Key generation with a NULL mechanism, NULL template or NULL handle.
    let mut len: CK_ULONG = 32;
    let mut t = [attr(CKA_VALUE_LEN, &mut len)];
    let mut keygen = CK_MECHANISM {
        mechanism: CKM_AES_KEY_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let mut h = CK_INVALID_HANDLE;
    assert_rv!(
        p11!(m, C_GenerateKey(s, null_mut(), t.as_mut_ptr(), 1, &mut h)),
        BAD
    );
    assert_rv!(
        p11!(
            m,
            C_GenerateKey(s, &mut keygen, t.as_mut_ptr(), 1, null_mut())
        ),
        BAD
    );
    assert_rv!(
        p11!(m, C_GenerateKey(s, &mut keygen, null_mut(), 1, &mut h)),
        BAD
    );
    let key = m.dek(s, "null pointers");
    assert_rv!(p11!(m, C_GetAttributeValue(s, key, null_mut(), 1)), BAD);
    assert_rv!(p11!(m, C_GetObjectSize(s, key, null_mut())), BAD);

    // C_FindObjects with a NULL count, or NULL handles for a non-zero max.
    assert_rv!(p11!(m, C_FindObjectsInit(s, null_mut(), 0)), CKR_OK);
    let mut found = [0 as CK_OBJECT_HANDLE; 8];
    assert_rv!(
        p11!(m, C_FindObjects(s, found.as_mut_ptr(), 8, null_mut())),
        BAD
    );
    assert_rv!(p11!(m, C_FindObjects(s, null_mut(), 8, &mut n)), BAD);
    assert_rv!(
        p11!(m, C_FindObjects(s, found.as_mut_ptr(), 8, &mut n)),
        CKR_OK
    );
    assert!(
        found[..n as usize].contains(&key),
        "the session DEK is not found"
    );
    assert_rv!(p11!(m, C_FindObjectsFinal(s)), CKR_OK);

    // C_EncryptInit with a NULL mechanism; C_Encrypt with a NULL pulLen.
    assert_rv!(p11!(m, C_EncryptInit(s, null_mut(), key)), BAD);
    let mut data = GcmData::new();
    let mut gp = data.params(128);
    let mut gcm = mech(CKM_AES_GCM, &mut gp);
    let mut input = PLAIN.to_vec();
    let mut out = vec![0u8; 128];
    assert_rv!(p11!(m, C_EncryptInit(s, &mut gcm, key)), CKR_OK);
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, null_mut(), null_mut())
        ),
        BAD
    );
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, out.as_mut_ptr(), null_mut())
        ),
        BAD
    );
    // The session still works afterwards.
    let mut info = CK_SESSION_INFO::default();
    assert_rv!(p11!(m, C_GetSessionInfo(s, &mut info)), CKR_OK);
    assert_eq!(info.state, CKS_RW_USER_FUNCTIONS);
}

#[test]
fn find_objects_with_zero_max_and_null_array() {
    // ulMaxObjectCount 0 with phObject NULL asks for nothing: the module
    // must answer (CKR_OK with a count of 0, or CKR_ARGUMENTS_BAD), and must
    // neither crash nor write through the NULL pointer.
    let Ready { _token, m, s, .. } = ready();
    m.dek(s, "find");
    assert_rv!(p11!(m, C_FindObjectsInit(s, null_mut(), 0)), CKR_OK);
    let mut n: CK_ULONG = 0xFFFF;
    let rv = p11!(m, C_FindObjects(s, null_mut(), 0, &mut n));
    assert!(rv == CKR_OK || rv == CKR_ARGUMENTS_BAD, "got {rv:#x}");
    if rv == CKR_OK {
        assert_eq!(n, 0);
    }
    // The search is still usable.
    let mut found = [0 as CK_OBJECT_HANDLE; 8];
    assert_rv!(
        p11!(m, C_FindObjects(s, found.as_mut_ptr(), 8, &mut n)),
        CKR_OK
    );
    assert!(n >= 1, "the session DEK is not found");
    assert_rv!(p11!(m, C_FindObjectsFinal(s)), CKR_OK);
}

#[test]
fn failed_encrypt_call_ends_the_operation() {
    // PKCS#11 2.40 5.8 (C_Encrypt): "A call to C_Encrypt always terminates
    // the active encryption operation unless it returns CKR_BUFFER_TOO_SMALL
    // or is a successful call ... to determine the length of the buffer".
    // Same for C_Decrypt (5.9).
    let Ready { _token, m, s, .. } = ready();
    let key = m.dek(s, "ends on error");
    let mut data = GcmData::new();
    let mut gp = data.params(128);
    let mut gcm = mech(CKM_AES_GCM, &mut gp);
    let mut input = PLAIN.to_vec();
    let mut out = vec![0u8; 128];
    let mut n = out.len() as CK_ULONG;

    assert_rv!(p11!(m, C_EncryptInit(s, &mut gcm, key)), CKR_OK);
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, out.as_mut_ptr(), null_mut())
        ),
        CKR_ARGUMENTS_BAD
    );
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, out.as_mut_ptr(), &mut n)
        ),
        CKR_OPERATION_NOT_INITIALIZED,
        "C_Encrypt answered CKR_ARGUMENTS_BAD, so the operation must have ended"
    );
    assert_rv!(
        p11!(m, C_EncryptInit(s, &mut gcm, key)),
        CKR_OK,
        "a new C_EncryptInit after the failed call"
    );
    let mut n = out.len() as CK_ULONG;
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, out.as_mut_ptr(), &mut n)
        ),
        CKR_OK,
        "the new operation runs to completion"
    );

    // Decrypt: NULL input with a non-zero length.
    let ct = m.encrypt(s, &mut gcm, key, &PLAIN);
    assert_rv!(p11!(m, C_DecryptInit(s, &mut gcm, key)), CKR_OK);
    assert_rv!(
        p11!(m, C_Decrypt(s, null_mut(), 80, out.as_mut_ptr(), &mut n)),
        CKR_ARGUMENTS_BAD
    );
    let mut ct_in = ct.clone();
    let mut n = out.len() as CK_ULONG;
    assert_rv!(
        p11!(
            m,
            C_Decrypt(
                s,
                ct_in.as_mut_ptr(),
                ct_in.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        ),
        CKR_OPERATION_NOT_INITIALIZED,
        "C_Decrypt answered CKR_ARGUMENTS_BAD, so the operation must have ended"
    );
}

#[test]
fn invalid_session_object_and_slot_handles() {
    let Ready {
        _token, m, slot, s, ..
    } = ready();
    let bogus_s: CK_SESSION_HANDLE = 0xDEAD_BEEF;
    let mut info = CK_SESSION_INFO::default();
    let mut pin = USER_PIN.as_bytes().to_vec();
    let key = m.dek(s, "handles");
    let mut data = GcmData::new();
    let mut gp = data.params(128);
    let mut gcm = mech(CKM_AES_GCM, &mut gp);
    let mut label = [0u8; 16];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: label.as_mut_ptr().cast(),
        ulValueLen: 16,
    }];
    let mut n: CK_ULONG = 0;

    for bad in [bogus_s, CK_INVALID_HANDLE] {
        assert_rv!(
            p11!(m, C_GetSessionInfo(bad, &mut info)),
            CKR_SESSION_HANDLE_INVALID
        );
        assert_rv!(p11!(m, C_CloseSession(bad)), CKR_SESSION_HANDLE_INVALID);
        assert_rv!(
            p11!(
                m,
                C_Login(bad, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
            ),
            CKR_SESSION_HANDLE_INVALID
        );
        assert_rv!(
            p11!(m, C_EncryptInit(bad, &mut gcm, key)),
            CKR_SESSION_HANDLE_INVALID
        );
        assert_rv!(
            p11!(m, C_GetAttributeValue(bad, key, t.as_mut_ptr(), 1)),
            CKR_SESSION_HANDLE_INVALID
        );
        assert_rv!(
            p11!(m, C_FindObjectsInit(bad, null_mut(), 0)),
            CKR_SESSION_HANDLE_INVALID
        );
    }

    let bogus_o: CK_OBJECT_HANDLE = 0xBAD_0B1E;
    assert_rv!(
        p11!(m, C_GetAttributeValue(s, bogus_o, t.as_mut_ptr(), 1)),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_rv!(
        p11!(m, C_GetObjectSize(s, bogus_o, &mut n)),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_rv!(
        p11!(m, C_DestroyObject(s, bogus_o)),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_rv!(
        p11!(m, C_EncryptInit(s, &mut gcm, bogus_o)),
        CKR_KEY_HANDLE_INVALID
    );
    assert_rv!(
        p11!(m, C_DecryptInit(s, &mut gcm, bogus_o)),
        CKR_KEY_HANDLE_INVALID
    );
    assert_rv!(
        p11!(m, C_EncryptInit(s, &mut gcm, CK_INVALID_HANDLE)),
        CKR_KEY_HANDLE_INVALID
    );

    let bogus_slot: CK_SLOT_ID = 0x7777;
    let mut slot_info = CK_SLOT_INFO::default();
    let mut token_info = CK_TOKEN_INFO::default();
    let mut mech_info = CK_MECHANISM_INFO::default();
    let mut h = CK_INVALID_HANDLE;
    assert_rv!(
        p11!(m, C_GetSlotInfo(bogus_slot, &mut slot_info)),
        CKR_SLOT_ID_INVALID
    );
    assert_rv!(
        p11!(m, C_GetTokenInfo(bogus_slot, &mut token_info)),
        CKR_SLOT_ID_INVALID
    );
    assert_rv!(
        p11!(m, C_GetMechanismList(bogus_slot, null_mut(), &mut n)),
        CKR_SLOT_ID_INVALID
    );
    assert_rv!(
        p11!(
            m,
            C_GetMechanismInfo(bogus_slot, CKM_AES_GCM, &mut mech_info)
        ),
        CKR_SLOT_ID_INVALID
    );
    assert_rv!(
        p11!(
            m,
            C_OpenSession(bogus_slot, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
        ),
        CKR_SLOT_ID_INVALID
    );
    assert_rv!(p11!(m, C_CloseAllSessions(bogus_slot)), CKR_SLOT_ID_INVALID);

    // A closed session's handle, and its session DEK, are invalid after.
    let s2 = m.open_session(slot);
    let key2 = m.dek(s2, "dies with its session");
    assert_rv!(p11!(m, C_CloseSession(s2)), CKR_OK);
    assert_rv!(
        p11!(m, C_GetSessionInfo(s2, &mut info)),
        CKR_SESSION_HANDLE_INVALID
    );
    assert_rv!(
        p11!(m, C_GetAttributeValue(s, key2, t.as_mut_ptr(), 1)),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_rv!(
        p11!(m, C_EncryptInit(s, &mut gcm, key2)),
        CKR_KEY_HANDLE_INVALID
    );
    // The first session and its DEK are untouched.
    assert_rv!(p11!(m, C_GetSessionInfo(s, &mut info)), CKR_OK);
    m.encrypt(s, &mut gcm, key, &PLAIN);
}

// ---------------------------------------------------------------------------
// The two-call length convention
// ---------------------------------------------------------------------------

#[test]
fn encrypt_two_call_convention_and_buffer_too_small() {
    let Ready { _token, m, s, .. } = ready();
    let key = m.dek(s, "two-call");
    let mut data = GcmData::new();
    let mut gp = data.params(128);
    let mut gcm = mech(CKM_AES_GCM, &mut gp);
    let mut input = PLAIN.to_vec();
    let need = PLAIN.len() + TAG_LEN;

    assert_rv!(p11!(m, C_EncryptInit(s, &mut gcm, key)), CKR_OK);
    // Length queries do not consume the operation.
    for _ in 0..2 {
        let mut n: CK_ULONG = 0;
        assert_rv!(
            p11!(m, C_Encrypt(s, input.as_mut_ptr(), 64, null_mut(), &mut n)),
            CKR_OK
        );
        assert_eq!(n as usize, need);
    }
    // One byte too small, inside a larger canary-filled allocation.
    let mut buf = vec![CANARY; need + 32];
    let mut n = (need - 1) as CK_ULONG;
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, buf.as_mut_ptr(), &mut n)
        ),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(
        n as usize, need,
        "*pulEncryptedDataLen must hold the needed size"
    );
    assert!(
        buf[need - 1..].iter().all(|b| *b == CANARY),
        "bytes past the too-small buffer were written"
    );
    // The operation is still active: the retry succeeds.
    let mut n = need as CK_ULONG;
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, buf.as_mut_ptr(), &mut n)
        ),
        CKR_OK
    );
    assert_eq!(n as usize, need);
    assert!(
        buf[need..].iter().all(|b| *b == CANARY),
        "bytes past the buffer were written"
    );
    let ct = buf[..need].to_vec();
    // The operation is over now.
    let mut n = need as CK_ULONG;
    assert_rv!(
        p11!(
            m,
            C_Encrypt(s, input.as_mut_ptr(), 64, buf.as_mut_ptr(), &mut n)
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // A fresh run with the same IV gives the same ciphertext, and it decrypts.
    assert_eq!(m.encrypt(s, &mut gcm, key, &PLAIN), ct);
    assert_ne!(&ct[..64], &PLAIN[..]);

    // Decrypt: query, too small (canary intact), retry.
    let mut ct_in = ct.clone();
    assert_rv!(p11!(m, C_DecryptInit(s, &mut gcm, key)), CKR_OK);
    let mut n: CK_ULONG = 0;
    assert_rv!(
        p11!(
            m,
            C_Decrypt(s, ct_in.as_mut_ptr(), need as CK_ULONG, null_mut(), &mut n)
        ),
        CKR_OK
    );
    assert!(n as usize >= PLAIN.len(), "length query {n} < 64");
    let mut out = vec![CANARY; 128];
    let mut n = 63;
    assert_rv!(
        p11!(
            m,
            C_Decrypt(
                s,
                ct_in.as_mut_ptr(),
                need as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        ),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(n, 64);
    assert!(
        out[63..].iter().all(|b| *b == CANARY),
        "bytes past the too-small buffer were written"
    );
    let mut n = 64;
    assert_rv!(
        p11!(
            m,
            C_Decrypt(
                s,
                ct_in.as_mut_ptr(),
                need as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        ),
        CKR_OK
    );
    assert_eq!(n, 64);
    assert_eq!(&out[..64], &PLAIN[..]);
    assert!(out[64..].iter().all(|b| *b == CANARY));

    // Multi-part: C_EncryptFinal follows the same rules.
    assert_rv!(p11!(m, C_EncryptInit(s, &mut gcm, key)), CKR_OK);
    let mut n = buf.len() as CK_ULONG;
    assert_rv!(
        p11!(
            m,
            C_EncryptUpdate(s, input.as_mut_ptr(), 64, buf.as_mut_ptr(), &mut n)
        ),
        CKR_OK
    );
    let done = n as usize;
    let mut fin = vec![CANARY; need + 16];
    let mut n: CK_ULONG = 0;
    assert_rv!(p11!(m, C_EncryptFinal(s, null_mut(), &mut n)), CKR_OK);
    let rest = need - done;
    assert!(
        n as usize >= rest,
        "C_EncryptFinal length query {n} < {rest}"
    );
    let mut n = (rest - 1) as CK_ULONG;
    assert_rv!(
        p11!(m, C_EncryptFinal(s, fin.as_mut_ptr(), &mut n)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(n as usize, rest);
    assert!(fin[rest - 1..].iter().all(|b| *b == CANARY));
    let mut n = rest as CK_ULONG;
    assert_rv!(p11!(m, C_EncryptFinal(s, fin.as_mut_ptr(), &mut n)), CKR_OK);
    let mut multi = buf[..done].to_vec();
    multi.extend_from_slice(&fin[..n as usize]);
    assert_eq!(multi, ct, "multi-part and single-part GCM differ");
}

#[test]
fn get_attribute_value_two_call_convention() {
    let Ready { _token, m, s, .. } = ready();
    let label = "a label of some length";
    let key = m.dek(s, label);

    // Length query.
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: null_mut(),
        ulValueLen: 0,
    }];
    assert_rv!(
        p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
        CKR_OK
    );
    assert_eq!(t[0].ulValueLen as usize, label.len());

    // One byte too small: CK_UNAVAILABLE_INFORMATION, nothing written past.
    let mut buf = vec![CANARY; label.len() + 16];
    t[0].pValue = buf.as_mut_ptr().cast();
    t[0].ulValueLen = (label.len() - 1) as CK_ULONG;
    assert_rv!(
        p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert!(
        buf[label.len() - 1..].iter().all(|b| *b == CANARY),
        "bytes past the too-small buffer were written"
    );

    // Exact size.
    t[0].ulValueLen = label.len() as CK_ULONG;
    assert_rv!(
        p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
        CKR_OK
    );
    assert_eq!(t[0].ulValueLen as usize, label.len());
    assert_eq!(&buf[..label.len()], label.as_bytes());
    assert!(buf[label.len()..].iter().all(|b| *b == CANARY));

    // A CK_ULONG attribute: the vendor KEK version, too small then right.
    let mut v = [CANARY; 16];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_HSME_KEK_VERSION,
        pValue: v.as_mut_ptr().cast(),
        ulValueLen: 4,
    }];
    assert_rv!(
        p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert!(v[4..].iter().all(|b| *b == CANARY));
    t[0].ulValueLen = size_of::<CK_ULONG>() as CK_ULONG;
    assert_rv!(
        p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
        CKR_OK
    );
    assert_eq!(
        CK_ULONG::from_ne_bytes(v[..8].try_into().unwrap()),
        1,
        "CKA_HSME_KEK_VERSION"
    );
}

#[test]
fn slot_and_mechanism_lists_two_call_convention() {
    let Ready {
        _token, m, slot, ..
    } = ready();
    const SENTINEL: CK_ULONG = 0x5A5A_5A5A;

    let mut n: CK_ULONG = 0;
    assert_rv!(p11!(m, C_GetSlotList(CK_TRUE, null_mut(), &mut n)), CKR_OK);
    assert!(n >= 1);
    let mut list = vec![SENTINEL; n as usize + 4];
    let mut small = n - 1;
    assert_rv!(
        p11!(m, C_GetSlotList(CK_TRUE, list.as_mut_ptr(), &mut small)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(small, n, "*pulCount must hold the needed count");
    assert!(
        list[n as usize - 1..].iter().all(|v| *v == SENTINEL),
        "slot list written past a too-small buffer"
    );
    let mut got = n;
    assert_rv!(
        p11!(m, C_GetSlotList(CK_TRUE, list.as_mut_ptr(), &mut got)),
        CKR_OK
    );
    assert_eq!(got, n);
    assert!(list[n as usize..].iter().all(|v| *v == SENTINEL));
    assert!(list[..n as usize].contains(&slot));

    let mut n: CK_ULONG = 0;
    assert_rv!(
        p11!(m, C_GetMechanismList(slot, null_mut(), &mut n)),
        CKR_OK
    );
    assert!(n >= 4, "at least the four software mechanisms, got {n}");
    let mut list = vec![SENTINEL; n as usize + 4];
    let mut small = n - 1;
    assert_rv!(
        p11!(m, C_GetMechanismList(slot, list.as_mut_ptr(), &mut small)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(small, n);
    assert!(
        list[n as usize - 1..].iter().all(|v| *v == SENTINEL),
        "mechanism list written past a too-small buffer"
    );
    let mut got = n;
    assert_rv!(
        p11!(m, C_GetMechanismList(slot, list.as_mut_ptr(), &mut got)),
        CKR_OK
    );
    assert_eq!(got, n);
    assert!(list[n as usize..].iter().all(|v| *v == SENTINEL));
    for want in [CKM_AES_KEY_GEN, CKM_AES_GCM, CKM_AES_CBC_PAD, CKM_AES_CTR] {
        assert!(
            list[..n as usize].contains(&want),
            "mechanism {want:#x} not listed"
        );
    }
}

// ---------------------------------------------------------------------------
// C_GetAttributeValue processes every attribute
// ---------------------------------------------------------------------------

#[test]
fn get_attribute_value_mixed_template_processes_every_attribute() {
    // PKCS#11 2.40 5.7 (C_GetAttributeValue): CKR_ATTRIBUTE_SENSITIVE,
    // CKR_ATTRIBUTE_TYPE_INVALID and CKR_BUFFER_TOO_SMALL "do not denote true
    // errors"; the call "MUST nonetheless have processed every attribute in
    // the template", and "if more than one of these conditions applies, any
    // of them may be returned".
    let Ready { _token, m, s, .. } = ready();
    let label = "mixed";
    let key = m.dek(s, label);
    const UNKNOWN: CK_ATTRIBUTE_TYPE = 0x0FFF_FF01;

    let mut value = [CANARY; 32];
    let mut unknown = [CANARY; 16];
    let mut lbl = [CANARY; 32];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: value.as_mut_ptr().cast(),
            ulValueLen: 32,
        },
        CK_ATTRIBUTE {
            type_: UNKNOWN,
            pValue: unknown.as_mut_ptr().cast(),
            ulValueLen: 16,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: lbl.as_mut_ptr().cast(),
            ulValueLen: 32,
        },
    ];
    let rv = p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 3));
    assert!(
        rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID,
        "got {rv:#x}, expected CKR_ATTRIBUTE_SENSITIVE or CKR_ATTRIBUTE_TYPE_INVALID"
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION, "CKA_VALUE");
    assert_eq!(
        t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "unknown attribute"
    );
    assert_eq!(
        t[2].ulValueLen as usize,
        label.len(),
        "CKA_LABEL must still be filled in"
    );
    assert_eq!(&lbl[..label.len()], label.as_bytes());
    assert!(
        value.iter().all(|b| *b == CANARY),
        "CKA_VALUE buffer written"
    );
    assert!(
        unknown.iter().all(|b| *b == CANARY),
        "unknown attribute's buffer written"
    );

    // Order does not matter: the label first, then the two that fail.
    let mut lbl2 = [CANARY; 32];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: lbl2.as_mut_ptr().cast(),
            ulValueLen: 32,
        },
        CK_ATTRIBUTE {
            type_: UNKNOWN,
            pValue: null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: null_mut(),
            ulValueLen: 0,
        },
    ];
    let rv = p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 3));
    assert!(
        rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID,
        "got {rv:#x}"
    );
    assert_eq!(t[0].ulValueLen as usize, label.len());
    assert_eq!(&lbl2[..label.len()], label.as_bytes());
    assert_eq!(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(
        t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "a length query for a sensitive CKA_VALUE"
    );

    // An unknown type next to a too-small buffer: all processed as well.
    let mut small = [CANARY; 8];
    let mut cls = [CANARY; 8];
    let mut t = [
        CK_ATTRIBUTE {
            type_: UNKNOWN,
            pValue: null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: small.as_mut_ptr().cast(),
            ulValueLen: 2,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: cls.as_mut_ptr().cast(),
            ulValueLen: 8,
        },
    ];
    let rv = p11!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 3));
    assert!(
        rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_BUFFER_TOO_SMALL,
        "got {rv:#x}"
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert!(small[2..].iter().all(|b| *b == CANARY));
    assert_eq!(t[2].ulValueLen, 8);
    assert_eq!(CK_ULONG::from_ne_bytes(cls), CKO_SECRET_KEY);
}

// ---------------------------------------------------------------------------
// CK_GCM_PARAMS layouts
// ---------------------------------------------------------------------------

#[test]
fn gcm_params_both_layouts_and_malformed() {
    let Ready { _token, m, s, .. } = ready();
    let key = m.dek(s, "gcm layouts");
    let mut data = GcmData::new();

    let mut with = data.params(128);
    let mut without = data.params_no_iv_bits(128);
    assert_eq!(size_of::<CK_GCM_PARAMS>(), 48);
    assert_eq!(size_of::<GcmParamsNoIvBits>(), 40);
    let mut m_with = mech(CKM_AES_GCM, &mut with);
    let mut m_without = mech(CKM_AES_GCM, &mut without);
    let a = m.encrypt(s, &mut m_with, key, &PLAIN);
    let b = m.encrypt(s, &mut m_without, key, &PLAIN);
    assert_eq!(a.len(), PLAIN.len() + TAG_LEN);
    assert_eq!(
        a, b,
        "the two CK_GCM_PARAMS layouts must give the same ciphertext"
    );
    // Each decrypts what the other made.
    assert_eq!(m.decrypt(s, &mut m_without, key, &a), PLAIN);
    assert_eq!(m.decrypt(s, &mut m_with, key, &b), PLAIN);
    // A 96-bit tag in either layout. The FIPS build refuses it: the FIPS
    // module's API takes 128-bit tags only (README, FIPS mode).
    let mut with96 = data.params(96);
    let mut without96 = data.params_no_iv_bits(96);
    if cfg!(feature = "fips") {
        for mut mm in [
            mech(CKM_AES_GCM, &mut with96),
            mech(CKM_AES_GCM, &mut without96),
        ] {
            assert_rv!(
                p11!(m, C_EncryptInit(s, &mut mm, key)),
                CKR_MECHANISM_PARAM_INVALID
            );
            assert_rv!(
                p11!(m, C_DecryptInit(s, &mut mm, key)),
                CKR_MECHANISM_PARAM_INVALID
            );
        }
    }
    #[cfg(not(feature = "fips"))]
    {
        let a96 = m.encrypt(s, &mut mech(CKM_AES_GCM, &mut with96), key, &PLAIN);
        let b96 = m.encrypt(s, &mut mech(CKM_AES_GCM, &mut without96), key, &PLAIN);
        assert_eq!(a96.len(), PLAIN.len() + 12);
        assert_eq!(a96, b96);
        assert_eq!(
            a96[..],
            a[..PLAIN.len() + 12],
            "a truncated tag is a prefix of the full one"
        );
    }

    // Malformed parameters: CKR_MECHANISM_PARAM_INVALID at init, both ways.
    let mut cases: Vec<(String, CK_MECHANISM)> = Vec::new();
    let mut keep_alive: Vec<Box<CK_GCM_PARAMS>> = Vec::new();
    let mut keep_alive_short: Vec<Box<GcmParamsNoIvBits>> = Vec::new();
    for len in [0usize, 8, 39, 41, 47, 49, 56] {
        let mut p = Box::new(data.params(128));
        let mut mm = mech(CKM_AES_GCM, &mut *p);
        mm.ulParameterLen = len as CK_ULONG;
        cases.push((format!("ulParameterLen {len}"), mm));
        keep_alive.push(p);
    }
    {
        let mut p = Box::new(data.params(128));
        p.ulIvLen = 0;
        cases.push(("IV length 0".into(), mech(CKM_AES_GCM, &mut *p)));
        keep_alive.push(p);
        let mut p = Box::new(data.params_no_iv_bits(128));
        p.ul_iv_len = 0;
        cases.push((
            "IV length 0 (no ulIvBits)".into(),
            mech(CKM_AES_GCM, &mut *p),
        ));
        keep_alive_short.push(p);
        let mut p = Box::new(data.params(128));
        p.pIv = null_mut();
        cases.push(("pIv NULL".into(), mech(CKM_AES_GCM, &mut *p)));
        keep_alive.push(p);
    }
    for bits in [0, 24, 136, 100] {
        let mut p = Box::new(data.params(bits));
        cases.push((format!("tag bits {bits}"), mech(CKM_AES_GCM, &mut *p)));
        keep_alive.push(p);
        let mut p = Box::new(data.params_no_iv_bits(bits));
        cases.push((
            format!("tag bits {bits} (no ulIvBits)"),
            mech(CKM_AES_GCM, &mut *p),
        ));
        keep_alive_short.push(p);
    }
    for len in [48, 40] {
        cases.push((
            format!("pParameter NULL, ulParameterLen {len}"),
            CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: null_mut(),
                ulParameterLen: len,
            },
        ));
    }
    let mut wrong = Vec::new();
    for (what, mut mm) in cases {
        let e = p11!(m, C_EncryptInit(s, &mut mm, key));
        let d = p11!(m, C_DecryptInit(s, &mut mm, key));
        if e != CKR_MECHANISM_PARAM_INVALID || d != CKR_MECHANISM_PARAM_INVALID {
            wrong.push(format!("{what}: EncryptInit {e:#x}, DecryptInit {d:#x}"));
            // Leave no operation behind for the next case.
            if e == CKR_OK {
                let mut n = 0;
                p11!(m, C_Encrypt(s, null_mut(), 0, null_mut(), &mut n));
                let mut out = vec![0u8; n as usize];
                p11!(m, C_Encrypt(s, null_mut(), 0, out.as_mut_ptr(), &mut n));
            }
            if d == CKR_OK {
                let mut out = [0u8; 16];
                let mut n = 16;
                p11!(
                    m,
                    C_Decrypt(s, out.as_mut_ptr(), 16, out.as_mut_ptr(), &mut n)
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "expected CKR_MECHANISM_PARAM_INVALID (0x71): {wrong:#?}"
    );
    // A refused init leaves nothing active.
    assert_eq!(m.encrypt(s, &mut m_with, key, &PLAIN), a);
    drop((keep_alive, keep_alive_short));
}

// ---------------------------------------------------------------------------
// fork()
// ---------------------------------------------------------------------------

#[test]
fn fork_child_must_initialize_again() {
    let Ready {
        _token, m, slot, s, ..
    } = ready();
    let key = m.dek(s, "fork");
    let mut data = GcmData::new();
    let mut gp = data.params(128);
    let mut gcm = mech(CKM_AES_GCM, &mut gp);
    let before = m.encrypt(s, &mut gcm, key, &PLAIN);

    // SAFETY: the child only calls the module and then _exit()s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // A panic must not unwind into the test harness's copy in the child.
        let code =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fork_child(&m, slot, s)))
                .unwrap_or(99);
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status),
        "child did not exit normally (status {status:#x})"
    );
    let code = libc::WEXITSTATUS(status);
    let steps = [
        "ok",
        "C_GetSlotList before C_Initialize was not CKR_CRYPTOKI_NOT_INITIALIZED",
        "the parent's session handle was usable before C_Initialize",
        "C_Initialize failed",
        "C_GetSlotList failed after C_Initialize",
        "C_GetSlotList listed no slot",
        "the parent's session handle was valid after C_Initialize",
        "C_OpenSession failed",
    ];
    assert_eq!(
        code,
        0,
        "fork child: {} (see its stderr)",
        steps.get(code as usize).unwrap_or(&"unknown")
    );

    // The parent's session and DEK still work, and give the same result.
    let mut info = CK_SESSION_INFO::default();
    assert_rv!(p11!(m, C_GetSessionInfo(s, &mut info)), CKR_OK);
    assert_eq!(m.encrypt(s, &mut gcm, key, &PLAIN), before);
    assert_eq!(m.decrypt(s, &mut gcm, key, &before), PLAIN);
    assert!(!m.slots().is_empty());
}

/// The child's side of the fork test; returns the exit code (0 = ok).
fn fork_child(m: &Module, slot: CK_SLOT_ID, parent_session: CK_SESSION_HANDLE) -> i32 {
    let report = |code: i32, rv: CK_RV| {
        eprintln!("fork child: step {code} failed, CK_RV {rv:#x}");
        code
    };
    let rv = slot_count_rv(m);
    if rv != CKR_CRYPTOKI_NOT_INITIALIZED {
        return report(1, rv);
    }
    let mut info = CK_SESSION_INFO::default();
    let rv = p11!(m, C_GetSessionInfo(parent_session, &mut info));
    if rv != CKR_CRYPTOKI_NOT_INITIALIZED {
        return report(2, rv);
    }
    let rv = p11!(m, C_Initialize(null_mut()));
    if rv != CKR_OK {
        return report(3, rv);
    }
    let mut n: CK_ULONG = 0;
    let rv = p11!(m, C_GetSlotList(CK_TRUE, null_mut(), &mut n));
    if rv != CKR_OK {
        return report(4, rv);
    }
    if n == 0 {
        return report(5, rv);
    }
    let rv = p11!(m, C_GetSessionInfo(parent_session, &mut info));
    if rv != CKR_SESSION_HANDLE_INVALID {
        return report(6, rv);
    }
    let mut h = CK_INVALID_HANDLE;
    let rv = p11!(
        m,
        C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
    );
    if rv != CKR_OK {
        return report(7, rv);
    }
    0
}

/// OpenSC's pkcs11-spy writes its own function list into the interface
/// C_GetInterface returns; that memory must be writable, not crash the host.
#[test]
fn a_caller_may_write_into_the_interface_it_gets() {
    let m = Module::load();
    let get = m.get_interface();
    let mut iface: *mut CK_INTERFACE = null_mut();
    assert_eq!(
        unsafe { get(null_mut(), null_mut(), &mut iface, 0) },
        CKR_OK
    );
    let ours = unsafe { (*iface).pFunctionList };
    static OTHER: u8 = 0;
    unsafe { (*iface).pFunctionList = &OTHER as *const u8 as *mut _ };
    let mut again: *mut CK_INTERFACE = null_mut();
    assert_eq!(
        unsafe { get(null_mut(), null_mut(), &mut again, 0) },
        CKR_OK
    );
    assert_eq!(again, iface, "one copy, as a C module's static array");
    unsafe { (*iface).pFunctionList = ours };
}
