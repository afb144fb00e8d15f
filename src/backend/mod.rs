//! The HSM behind us. `cryptoki` loads and initialises it and drives the KEK
//! operations; the raw function list of the same loaded library serves the
//! calls we forward unchanged, so mechanism parameters pass through untouched.

pub mod calls;
pub mod import;
pub mod kek;
pub mod oneshot;
pub mod pool;
pub mod rsa;
pub mod wrap_alg;

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki_sys::*;

use crate::error::{Error, Result};
pub use calls::{AttrIn, Mechanism};

/// Call a function of the backend's raw function list; a missing entry is
/// `CKR_FUNCTION_NOT_SUPPORTED`. The call is unsafe and the macro does not
/// hide it: every use sits in an `unsafe` block with its `SAFETY` comment
/// (the function pointer itself is valid while `Backend` lives).
macro_rules! bcall {
    ($backend:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $backend.raw().$f {
            Some(f) => f($($arg),*),
            None => cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}
pub(crate) use bcall;

/// `bcall!` on the backend's PKCS#11 3.0 function list (the message-based
/// functions); `CKR_FUNCTION_NOT_SUPPORTED` when the backend has none (a
/// 2.40 module such as SoftHSM2 2.6) or lacks the entry.
macro_rules! bcall3 {
    ($backend:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $backend.raw3().and_then(|l| l.$f) {
            Some(f) => f($($arg),*),
            None => cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}
pub(crate) use bcall3;

pub struct Backend {
    pkcs11: Pkcs11,
    raw: RawList,
    /// The backend's 3.0 function list, if it offers one (`C_GetInterface`).
    raw3: Option<RawList3>,
    /// Keeps the library mapped for `raw`; cryptoki holds its own handle too.
    _lib: libloading::Library,
    /// False when the host had already initialised the backend itself: then
    /// our C_Finalize must leave it initialised.
    we_initialized: bool,
}

/// The backend's function list; immutable and owned by the loaded library.
struct RawList(*const CK_FUNCTION_LIST);
// SAFETY: the list is a table of function pointers the backend never mutates.
unsafe impl Send for RawList {}
// SAFETY: as for `Send`: shared reads of an immutable table.
unsafe impl Sync for RawList {}

/// The backend's 3.0 function list; immutable and owned by the library.
struct RawList3(*const CK_FUNCTION_LIST_3_0);
// SAFETY: as for `RawList`.
unsafe impl Send for RawList3 {}
// SAFETY: as for `RawList`.
unsafe impl Sync for RawList3 {}

/// The 3.0 function list of `lib`, if it exports `C_GetInterface` and has
/// the "PKCS 11" interface in version 3.x.
///
/// # Safety
/// `lib` must be a loaded PKCS#11 module.
unsafe fn interface_3_0(lib: &libloading::Library) -> Option<RawList3> {
    type GetInterface = unsafe extern "C" fn(
        *mut CK_UTF8CHAR,
        *mut CK_VERSION,
        *mut *mut CK_INTERFACE,
        CK_FLAGS,
    ) -> CK_RV;
    // SAFETY: C_GetInterface has this signature in every 3.0 module; it
    // writes one pointer, to an interface the module owns.
    unsafe {
        let get: libloading::Symbol<GetInterface> = lib.get(b"C_GetInterface\0").ok()?;
        let mut version = CK_VERSION { major: 3, minor: 0 };
        let mut iface: *mut CK_INTERFACE = std::ptr::null_mut();
        let name = b"PKCS 11\0";
        let rv = get(name.as_ptr() as *mut _, &mut version, &mut iface, 0);
        if rv != CKR_OK || iface.is_null() || (*iface).pFunctionList.is_null() {
            return None;
        }
        let list = (*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0;
        ((*list).version.major == 3).then_some(RawList3(list))
    }
}

impl Backend {
    pub fn load(path: &Path) -> Result<Backend> {
        let pkcs11 = Pkcs11::new(path)
            .map_err(|e| Error::backend_load(format!("cannot load {}: {e}", path.display())))?;
        // SAFETY: loading the same library cryptoki just loaded; dlopen
        // returns the same mapping, so both see one backend state.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| Error::backend_load(format!("cannot load {}: {e}", path.display())))?;
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11
        // module, and writes one pointer into `list`.
        let raw = unsafe {
            let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
                lib.get(b"C_GetFunctionList\0").map_err(|e| {
                    Error::backend_load(format!("{}: no C_GetFunctionList: {e}", path.display()))
                })?;
            let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
            let rv = get(&mut list);
            if rv != CKR_OK || list.is_null() {
                return Err(Error::backend("C_GetFunctionList", rv));
            }
            RawList(list)
        };
        // SAFETY: the library just loaded as a PKCS#11 module.
        let raw3 = unsafe { interface_3_0(&lib) };
        // OS locking: without it SoftHSM2 does no locking at all.
        let we_initialized = match pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) => true,
            Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(e) => return Err(Error::from_cryptoki("C_Initialize", e)),
        };
        Ok(Backend {
            pkcs11,
            raw,
            raw3,
            _lib: lib,
            we_initialized,
        })
    }

    pub fn raw(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: non-null (checked in load) and valid while the library is loaded.
        unsafe { &*self.raw.0 }
    }

    /// The 3.0 function list, if the backend has one.
    pub fn raw3(&self) -> Option<&CK_FUNCTION_LIST_3_0> {
        // SAFETY: non-null (checked in `interface_3_0`) and valid while the
        // library is loaded.
        self.raw3.as_ref().map(|l| unsafe { &*l.0 })
    }

    pub fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
    }

    /// Backend slots whose token is initialised, in the backend's order.
    pub fn token_slots(&self) -> Result<Vec<CK_SLOT_ID>> {
        let slots = self
            .pkcs11
            .get_slots_with_initialized_token()
            .map_err(|e| Error::from_cryptoki("C_GetSlotList", e))?;
        Ok(slots.iter().map(|s| s.id()).collect())
    }

    pub fn token_info(&self, slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO> {
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        let rv = unsafe { bcall!(self, C_GetTokenInfo(slot, &mut info)) };
        check("C_GetTokenInfo", rv)?;
        Ok(info)
    }

    pub fn slot_info(&self, slot: CK_SLOT_ID) -> Result<CK_SLOT_INFO> {
        let mut info = CK_SLOT_INFO::default();
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        let rv = unsafe { bcall!(self, C_GetSlotInfo(slot, &mut info)) };
        check("C_GetSlotInfo", rv)?;
        Ok(info)
    }

    pub fn mechanisms(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let mut n: CK_ULONG = 0;
        check(
            "C_GetMechanismList",
            // SAFETY: a function of the backend's own list; every pointer is to a
            // local or buffer that outlives the call.
            unsafe { bcall!(self, C_GetMechanismList(slot, std::ptr::null_mut(), &mut n)) },
        )?;
        let mut v = vec![0 as CK_MECHANISM_TYPE; n as usize];
        check(
            "C_GetMechanismList",
            // SAFETY: a function of the backend's own list; every pointer is to a
            // local or buffer that outlives the call.
            unsafe { bcall!(self, C_GetMechanismList(slot, v.as_mut_ptr(), &mut n)) },
        )?;
        v.truncate(n as usize);
        Ok(v)
    }

    pub fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        m: CK_MECHANISM_TYPE,
    ) -> Result<CK_MECHANISM_INFO> {
        let mut info = CK_MECHANISM_INFO::default();
        check(
            "C_GetMechanismInfo",
            // SAFETY: a function of the backend's own list; every pointer is to a
            // local or buffer that outlives the call.
            unsafe { bcall!(self, C_GetMechanismInfo(slot, m, &mut info)) },
        )?;
        Ok(info)
    }

    /// Release the backend, unless the host program initialised it first.
    pub fn finalize(self) {
        if self.we_initialized {
            if let Err(e) = self.pkcs11.finalize() {
                crate::log_warn!("backend C_Finalize: {e}");
            }
        }
    }
}

/// `CKR_OK` or a backend error naming the function.
pub fn check(func: &'static str, rv: CK_RV) -> Result<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(Error::backend(func, rv))
    }
}

/// A blank-padded 32-byte PKCS#11 label as a string.
pub fn label_of(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches([' ', '\0'])
        .to_string()
}
