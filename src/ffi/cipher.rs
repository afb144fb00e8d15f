//! Shims: encryption and decryption. DEKs run in software; backend keys are
//! forwarded with the caller's own pointers.

use cryptoki_sys::*;

use super::args::*;
use super::mechanism::soft_mode;
use crate::backend::bcall;
use crate::crypto::Direction::{self, Decrypt, Encrypt};
use crate::error::Result;
use crate::token::crypt::{self, Input, Out, Part, Step};
use zeroize::Zeroizing;

unsafe fn init(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<CK_RV> {
    let m = mechanism(p_m)?;
    match crypt::init(h, dir, m.mechanism, soft_mode(m), key)? {
        Step::ForwardInit(md, bs, bkey) => {
            let rv = match dir {
                Encrypt => bcall!(md.backend, C_EncryptInit(bs, p_m, bkey)),
                Decrypt => bcall!(md.backend, C_DecryptInit(bs, p_m, bkey)),
            };
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
unsafe fn caller_buffers<'a>(
    p_in: *mut u8,
    in_len: CK_ULONG,
    p_out: *mut u8,
    pul: *mut CK_ULONG,
) -> Result<(Input<'a>, Out<'a>)> {
    let out_len = if p_out.is_null() || pul.is_null() {
        0
    } else {
        *pul as usize
    };
    let (a, b) = (p_in as usize, p_out as usize);
    let overlap = in_len > 0
        && out_len > 0
        && a < b.saturating_add(out_len)
        && b < a.saturating_add(in_len as usize);
    let input = if overlap {
        Input::Copied(Zeroizing::new(bytes(p_in, in_len)?.to_vec()))
    } else {
        Input::Borrowed(bytes(p_in, in_len)?)
    };
    Ok((input, out_buf(p_out, pul)?))
}

/// One data-carrying call: software, or forwarded with the caller's pointers.
unsafe fn step(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    part: Part,
    p_in: *mut u8,
    in_len: CK_ULONG,
    p_out: *mut u8,
    pul: *mut CK_ULONG,
) -> Result<CK_RV> {
    let args = || caller_buffers(p_in, in_len, p_out, pul);
    match crypt::step(h, dir, part, args) {
        Ok(Step::Done(n)) => report_len(Ok(n), pul),
        Ok(Step::Forward(md, bs) | Step::ForwardInit(md, bs, _)) => {
            let rv = match (dir, part) {
                (Encrypt, Part::Single) => {
                    bcall!(md.backend, C_Encrypt(bs, p_in, in_len, p_out, pul))
                }
                (Encrypt, Part::Update) => {
                    bcall!(md.backend, C_EncryptUpdate(bs, p_in, in_len, p_out, pul))
                }
                (Encrypt, Part::Final) => bcall!(md.backend, C_EncryptFinal(bs, p_out, pul)),
                (Decrypt, Part::Single) => {
                    bcall!(md.backend, C_Decrypt(bs, p_in, in_len, p_out, pul))
                }
                (Decrypt, Part::Update) => {
                    bcall!(md.backend, C_DecryptUpdate(bs, p_in, in_len, p_out, pul))
                }
                (Decrypt, Part::Final) => bcall!(md.backend, C_DecryptFinal(bs, p_out, pul)),
            };
            crypt::forwarded(h, dir, part, rv, p_out.is_null());
            Ok(rv)
        }
        Err(e) => report_len(Err(e), pul),
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_EncryptInit", || init(h, Encrypt, p_m, key))
}

#[no_mangle]
pub unsafe extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    guard("C_Encrypt", || {
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
    guard("C_EncryptUpdate", || {
        step(h, Encrypt, Part::Update, p_in, n, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    guard("C_EncryptFinal", || {
        step(h, Encrypt, Part::Final, std::ptr::null_mut(), 0, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_DecryptInit", || init(h, Decrypt, p_m, key))
}

#[no_mangle]
pub unsafe extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    p_in: *mut CK_BYTE,
    n: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    guard("C_Decrypt", || {
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
    guard("C_DecryptUpdate", || {
        step(h, Decrypt, Part::Update, p_in, n, p_out, pul)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    guard("C_DecryptFinal", || {
        step(h, Decrypt, Part::Final, std::ptr::null_mut(), 0, p_out, pul)
    })
}
