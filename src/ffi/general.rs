//! Shims: library, slot, token and mechanism functions.

use cryptoki_sys::*;

use super::args::*;
use crate::token::{general, module};

#[no_mangle]
pub unsafe extern "C" fn C_Initialize(p_init_args: *mut std::ffi::c_void) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_Initialize", || unsafe {
        let mut threads = true;
        if let Some(args) = (p_init_args as *const CK_C_INITIALIZE_ARGS).as_ref() {
            if !args.pReserved.is_null() {
                return Err(bad());
            }
            let given = [
                args.CreateMutex.is_some(),
                args.DestroyMutex.is_some(),
                args.LockMutex.is_some(),
                args.UnlockMutex.is_some(),
            ];
            let all = given.iter().all(|g| *g);
            if given.iter().any(|g| *g) && !all {
                return Err(bad());
            }
            // We lock with the OS's primitives and cannot use the caller's.
            if all && args.flags & CKF_OS_LOCKING_OK == 0 {
                return Ok(CKR_CANT_LOCK);
            }
            threads = args.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS == 0;
        }
        ok(module::initialize(threads))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Finalize(p_reserved: *mut std::ffi::c_void) -> CK_RV {
    guard("C_Finalize", || {
        if !p_reserved.is_null() {
            return Err(bad());
        }
        ok(module::finalize())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(p_info: *mut CK_INFO) -> CK_RV {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe { guard("C_GetInfo", || ok(put(p_info, general::info()?))) }
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSlotList(
    _token_present: CK_BBOOL,
    p_list: *mut CK_SLOT_ID,
    pul_count: *mut CK_ULONG,
) -> CK_RV {
    // Every slot of ours has its token present.
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GetSlotList", || unsafe {
        write_list(&general::slot_list()?, p_list, pul_count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, p_info: *mut CK_SLOT_INFO) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GetSlotInfo", || unsafe {
        ok(put(p_info, general::slot_info(slot)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, p_info: *mut CK_TOKEN_INFO) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GetTokenInfo", || unsafe {
        ok(put(p_info, general::token_info(slot)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    p_list: *mut CK_MECHANISM_TYPE,
    pul_count: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GetMechanismList", || unsafe {
        write_list(&general::mechanism_list(slot)?, p_list, pul_count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    mech: CK_MECHANISM_TYPE,
    p_info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GetMechanismInfo", || unsafe {
        ok(put(p_info, general::mechanism_info(slot, mech)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    _pin: *mut CK_UTF8CHAR,
    _len: CK_ULONG,
    _label: *mut CK_UTF8CHAR,
) -> CK_RV {
    guard("C_InitToken", || ok(general::init_token(slot)))
}

#[no_mangle]
pub unsafe extern "C" fn C_WaitForSlotEvent(
    _flags: CK_FLAGS,
    _slot: *mut CK_SLOT_ID,
    _reserved: *mut std::ffi::c_void,
) -> CK_RV {
    guard("C_WaitForSlotEvent", || {
        module::get()?;
        Ok(CKR_FUNCTION_NOT_SUPPORTED)
    })
}
