//! Shims: encryption and decryption. DEKs run in software; backend keys are
//! forwarded with the caller's own pointers.

use cryptoki_sys::*;

use super::args::*;
use super::mechanism::soft_mode;
use crate::backend::bcall;
use crate::crypto::Direction::{self, Decrypt, Encrypt};
use crate::error::Result;
use crate::token::crypt::{self, Input, Out, Part, Step};
use crate::token::forward::{again_after_reconnect, forward_session, forward_session_objects};

/// # Safety
/// `p_m` must be null or a valid CK_MECHANISM whose parameters stay valid
/// for the call.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
unsafe fn init(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<CK_RV> {
    let mut params = ParamBuf::new();
    // SAFETY: this function's contract.
    let mc = unsafe { mechanism_copy(p_m, &mut params)? };
    let m = mc.raw();
    // SAFETY: the copy's parameters; the mode borrows them for this call.
    let soft = || unsafe { soft_mode(m) };
    match crypt::init(h, dir, m.mechanism, soft, key)? {
        Step::ForwardInit(bkey) => {
            let rv = forward_session_objects(h, |b, bs| match dir {
                // SAFETY: the caller's mechanism, passed on unchanged to a
                // function of the backend's own list.
                Encrypt => unsafe { bcall!(b, C_EncryptInit(bs, mc.ptr(), bkey)) },
                // SAFETY: as above.
                Decrypt => unsafe { bcall!(b, C_DecryptInit(bs, mc.ptr(), bkey)) },
            })?;
            if rv != CKR_OK {
                crypt::init_failed(h, dir);
            }
            Ok(rv)
        }
        _ => Ok(CKR_OK),
    }
}

/// The caller's input and output. Overlapping buffers (allowed by the spec,
/// used for in-place encryption) get the input copied out first, so that no
/// shared and mutable views of the same memory ever coexist.
///
/// # Safety
/// `p_in` must point to `in_len` readable bytes when non-null; `pul` be
/// null or valid, and `p_out` point to `*pul` writable bytes when non-null.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub(super) unsafe fn caller_buffers<'a>(
    p_in: *mut u8,
    in_len: CK_ULONG,
    p_out: *mut u8,
    pul: *mut CK_ULONG,
) -> Result<(Input<'a>, Out<'a>)> {
    let out_len = if p_out.is_null() || pul.is_null() {
        0
    } else {
        // SAFETY: non-null, and valid by this function's contract.
        unsafe { *pul as usize }
    };
    let (a, b) = (p_in as usize, p_out as usize);
    let overlap = in_len > 0
        && out_len > 0
        && a < b.saturating_add(out_len)
        && b < a.saturating_add(in_len as usize);
    // SAFETY: this function's contract; with overlapping buffers the input
    // is copied before the output slice is made.
    unsafe {
        let input = if overlap {
            Input::Copied(bytes_copy(p_in, in_len)?)
        } else {
            Input::Borrowed(bytes(p_in, in_len)?)
        };
        Ok((input, out_buf(p_out, pul)?))
    }
}

/// One data-carrying call: software, or forwarded with the caller's pointers.
///
/// # Safety
/// As `caller_buffers`.
unsafe fn step(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    part: Part,
    p_in: *mut u8,
    in_len: CK_ULONG,
    p_out: *mut u8,
    pul: *mut CK_ULONG,
) -> Result<CK_RV> {
    // SAFETY: this function's contract is `caller_buffers`'.
    let args = || unsafe { caller_buffers(p_in, in_len, p_out, pul) };
    match crypt::step(h, dir, part, args) {
        // SAFETY: `pul` was checked non-null by `out_buf` for a software step.
        Ok(Step::Done(n)) => unsafe { report_len(Ok(n), pul) },
        Ok(Step::Forward | Step::ForwardInit(_)) => {
            let rv = forward_session(h, |b, bs| {
                // SAFETY: the caller's pointers, passed on unchanged to a
                // function of the backend's own list.
                unsafe {
                    match (dir, part) {
                        (Encrypt, Part::Single) => {
                            bcall!(b, C_Encrypt(bs, p_in, in_len, p_out, pul))
                        }
                        (Encrypt, Part::Update) => {
                            bcall!(b, C_EncryptUpdate(bs, p_in, in_len, p_out, pul))
                        }
                        (Encrypt, Part::Final) => bcall!(b, C_EncryptFinal(bs, p_out, pul)),
                        (Decrypt, Part::Single) => {
                            bcall!(b, C_Decrypt(bs, p_in, in_len, p_out, pul))
                        }
                        (Decrypt, Part::Update) => {
                            bcall!(b, C_DecryptUpdate(bs, p_in, in_len, p_out, pul))
                        }
                        (Decrypt, Part::Final) => bcall!(b, C_DecryptFinal(bs, p_out, pul)),
                    }
                }
            })?;
            crypt::forwarded(h, dir, part, rv, p_out.is_null());
            Ok(rv)
        }
        // SAFETY: as for `Done`; `report_len` checks `pul` for null itself.
        Err(e) => unsafe { report_len(Err(e), pul) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        guard("C_EncryptInit", || {
            again_after_reconnect(|| init(h, Encrypt, p_m, key))
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_Encrypt", || unsafe {
        step(h, Encrypt, Part::Single, p_in, n, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_EncryptUpdate", || unsafe {
        step(h, Encrypt, Part::Update, p_in, n, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_EncryptFinal", || unsafe {
        step(h, Encrypt, Part::Final, std::ptr::null_mut(), 0, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        guard("C_DecryptInit", || {
            again_after_reconnect(|| init(h, Decrypt, p_m, key))
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_Decrypt", || unsafe {
        step(h, Decrypt, Part::Single, p_in, n, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_DecryptUpdate", || unsafe {
        step(h, Decrypt, Part::Update, p_in, n, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_DecryptFinal", || unsafe {
        step(h, Decrypt, Part::Final, std::ptr::null_mut(), 0, p_out, pul)
    })
}
