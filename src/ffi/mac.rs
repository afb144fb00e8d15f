//! Shims: signing and verifying. AES-CMAC on a DEK runs here; every other
//! key and mechanism is forwarded with the caller's own pointers.

use cryptoki_sys::*;

use super::args::*;
use super::mechanism::mac_len;
use crate::backend::bcall;
use crate::error::Result;
use crate::token::crypt::Part;
use crate::token::forward::{again_after_reconnect, forward_session, forward_session_objects};
use crate::token::mac::{self, MacDir, MacStep};

/// # Safety
/// `p_m` must be null or a valid CK_MECHANISM with readable parameters.
unsafe fn init(
    h: CK_SESSION_HANDLE,
    dir: MacDir,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<CK_RV> {
    let mut params = ParamBuf::new();
    // SAFETY: this function's contract.
    let mc = unsafe { mechanism_copy(p_m, &mut params)? };
    let m = mc.raw();
    // SAFETY: as above.
    let len = unsafe { mac_len(m) };
    match mac::init(h, dir, m.mechanism, len, key)? {
        None => Ok(CKR_OK),
        Some(bkey) => forward_session_objects(h, |b, bs| {
            // SAFETY: the caller's mechanism, passed on unchanged to a
            // function of the backend's own list.
            unsafe {
                match dir {
                    MacDir::Sign => bcall!(b, C_SignInit(bs, mc.ptr(), bkey)),
                    MacDir::Verify => bcall!(b, C_VerifyInit(bs, mc.ptr(), bkey)),
                }
            }
        }),
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_SignInit", || {
        // SAFETY: the caller's mechanism (PKCS#11 contract).
        again_after_reconnect(|| unsafe { init(h, MacDir::Sign, p_m, key) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_VerifyInit", || {
        // SAFETY: the caller's mechanism (PKCS#11 contract).
        again_after_reconnect(|| unsafe { init(h, MacDir::Verify, p_m, key) })
    })
}

/// # Safety
/// `p_in` must point to `n` readable bytes when non-null; `pul` be null or
/// valid; `p_out` point to `*pul` writable bytes when non-null.
unsafe fn sign(
    h: CK_SESSION_HANDLE,
    part: Part,
    p_in: *mut u8,
    n: CK_ULONG,
    p_out: *mut u8,
    pul: *mut CK_ULONG,
) -> Result<CK_RV> {
    // SAFETY: this function's contract.
    let data = unsafe { bytes(p_in, n)? };
    let out = if part == Part::Update {
        crate::token::crypt::Out::Query
    } else {
        // SAFETY: as above.
        unsafe { out_buf(p_out, pul)? }
    };
    match mac::sign(h, part, data, out) {
        Ok(MacStep::Done(_)) if part == Part::Update => Ok(CKR_OK),
        // SAFETY: `pul` checked non-null by `out_buf`.
        Ok(MacStep::Done(len)) => unsafe { report_len(Ok(len), pul) },
        Ok(MacStep::Forward) => forward_session(h, |b, bs| {
            // SAFETY: the caller's pointers, passed on unchanged to a
            // function of the backend's own list.
            unsafe {
                match part {
                    Part::Single => bcall!(b, C_Sign(bs, p_in, n, p_out, pul)),
                    Part::Update => bcall!(b, C_SignUpdate(bs, p_in, n)),
                    Part::Final => bcall!(b, C_SignFinal(bs, p_out, pul)),
                }
            }
        }),
        // SAFETY: `report_len` checks `pul` for null.
        Err(e) => unsafe { report_len(Err(e), pul) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers (PKCS#11 contract).
    guard("C_Sign", || unsafe {
        sign(h, Part::Single, p_in, n, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SignUpdate(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers (PKCS#11 contract).
    guard("C_SignUpdate", || unsafe {
        sign(
            h,
            Part::Update,
            p_in,
            n,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SignFinal(
    h: CK_SESSION_HANDLE,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers (PKCS#11 contract).
    guard("C_SignFinal", || unsafe {
        sign(h, Part::Final, std::ptr::null_mut(), 0, p_out, pul)
    })
}

/// # Safety
/// `p_in` must point to `n` readable bytes and `p_sig` to `sig_len` when
/// non-null.
unsafe fn verify(
    h: CK_SESSION_HANDLE,
    part: Part,
    p_in: *mut u8,
    n: CK_ULONG,
    p_sig: *mut u8,
    sig_len: CK_ULONG,
) -> Result<CK_RV> {
    // SAFETY: this function's contract.
    let (data, sig) = unsafe { (bytes(p_in, n)?, bytes(p_sig, sig_len)?) };
    match mac::verify(h, part, data, sig)? {
        MacStep::Done(_) => Ok(CKR_OK),
        MacStep::Forward => forward_session(h, |b, bs| {
            // SAFETY: the caller's pointers, passed on unchanged to a
            // function of the backend's own list.
            unsafe {
                match part {
                    Part::Single => bcall!(b, C_Verify(bs, p_in, n, p_sig, sig_len)),
                    Part::Update => bcall!(b, C_VerifyUpdate(bs, p_in, n)),
                    Part::Final => bcall!(b, C_VerifyFinal(bs, p_sig, sig_len)),
                }
            }
        }),
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_sig: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers (PKCS#11 contract).
    guard("C_Verify", || unsafe {
        verify(h, Part::Single, p_in, n, p_sig, sig_len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyUpdate(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers (PKCS#11 contract).
    guard("C_VerifyUpdate", || unsafe {
        verify(h, Part::Update, p_in, n, std::ptr::null_mut(), 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyFinal(
    h: CK_SESSION_HANDLE,
    p_sig: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers (PKCS#11 contract).
    guard("C_VerifyFinal", || unsafe {
        verify(h, Part::Final, std::ptr::null_mut(), 0, p_sig, sig_len)
    })
}
