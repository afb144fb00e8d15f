//! Shims: object management, search and key management.

use cryptoki_sys::*;

use super::args::*;
use super::mechanism::encrypt_data;
use crate::backend::bcall;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::token::forward::{again_after_reconnect, forward_session_objects};
use crate::token::object::dek::Answer;
use crate::token::object::find;
use crate::token::object::manage::{self, AttrStep};
use crate::token::wrapping::{self, Wrapped};

#[no_mangle]
pub unsafe extern "C" fn C_CreateObject(
    h: CK_SESSION_HANDLE,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_CreateObject", || unsafe {
        if ph.is_null() {
            return Err(bad());
        }
        let t = template(p_t, n)?;
        ok(put(ph, manage::create_object(h, &t)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_CopyObject(
    h: CK_SESSION_HANDLE,
    oh: CK_OBJECT_HANDLE,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_CopyObject", || {
        // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
        // length rules are checked in `args` before any is used.
        again_after_reconnect(|| unsafe {
            if ph.is_null() {
                return Err(bad());
            }
            let t = template(p_t, n)?;
            ok(put(ph, manage::copy_object(h, oh, &t)?))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> CK_RV {
    guard("C_DestroyObject", || {
        again_after_reconnect(|| ok(manage::destroy_object(h, oh)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetObjectSize(
    h: CK_SESSION_HANDLE,
    oh: CK_OBJECT_HANDLE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    guard("C_GetObjectSize", || {
        // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
        // length rules are checked in `args` before any is used.
        again_after_reconnect(|| unsafe {
            if pul.is_null() {
                return Err(bad());
            }
            ok(put(pul, manage::object_size(h, oh)?))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    oh: CK_OBJECT_HANDLE,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    guard("C_GetAttributeValue", || {
        // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
        // length rules are checked in `args` before any is used.
        again_after_reconnect(|| unsafe {
            let attrs = attributes_mut(p_t, n)?;
            let types: Vec<CK_ATTRIBUTE_TYPE> = attrs.iter().map(|a| a.type_).collect();
            match manage::get_attributes(h, oh, &types)? {
                AttrStep::Forward(bh) => forward_session_objects(h, |b, bs| {
                    // SAFETY: the caller's template, passed on unchanged to a
                    // function of the backend's own list.
                    bcall!(b, C_GetAttributeValue(bs, bh, p_t, n))
                }),
                AttrStep::Answers(answers) => fill_attributes(attrs, answers),
            }
        })
    })
}

/// Write one answer per attribute (the spec requires every attribute to be
/// processed), then report the most important problem met.
unsafe fn fill_attributes(attrs: &mut [CK_ATTRIBUTE], answers: Vec<Answer>) -> Result<CK_RV> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        let (mut failed, mut sensitive, mut invalid, mut small) = (None, false, false, false);
        for (a, answer) in attrs.iter_mut().zip(answers) {
            match answer {
                Answer::Failed(e) => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    failed.get_or_insert(e);
                }
                Answer::Sensitive => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    sensitive = true;
                }
                Answer::Invalid => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    invalid = true;
                }
                Answer::Value(v) => {
                    if a.pValue.is_null() {
                        a.ulValueLen = v.len() as CK_ULONG;
                    } else if (a.ulValueLen as usize) < v.len() {
                        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        small = true;
                    } else {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len());
                        a.ulValueLen = v.len() as CK_ULONG;
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(if sensitive {
            CKR_ATTRIBUTE_SENSITIVE
        } else if invalid {
            CKR_ATTRIBUTE_TYPE_INVALID
        } else if small {
            CKR_BUFFER_TOO_SMALL
        } else {
            CKR_OK
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_SetAttributeValue(
    h: CK_SESSION_HANDLE,
    oh: CK_OBJECT_HANDLE,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    guard("C_SetAttributeValue", || {
        // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
        // length rules are checked in `args` before any is used.
        again_after_reconnect(|| unsafe {
            let t = template(p_t, n)?;
            ok(manage::set_attributes(h, oh, &t))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsInit(
    h: CK_SESSION_HANDLE,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_FindObjectsInit", || unsafe {
        let t = template(p_t, n)?;
        ok(find::init(h, &t))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    ph: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_FindObjects", || unsafe {
        if (ph.is_null() && max > 0) || pul.is_null() {
            return Err(bad());
        }
        let found = find::next(h, max as usize)?;
        if !found.is_empty() {
            std::ptr::copy_nonoverlapping(found.as_ptr(), ph, found.len());
        }
        ok(put(pul, found.len() as CK_ULONG))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_FindObjectsFinal", || ok(find::finish(h)))
}

#[no_mangle]
pub unsafe extern "C" fn C_GenerateKey(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GenerateKey", || unsafe {
        let mut params = ParamBuf::new();
        let mc = mechanism_copy(p_m, &mut params)?;
        let m = mc.typed();
        if ph.is_null() {
            return Err(bad());
        }
        let t = template(p_t, n)?;
        ok(put(ph, manage::generate_key(h, &m, &t)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    p_pub: *mut CK_ATTRIBUTE,
    n_pub: CK_ULONG,
    p_priv: *mut CK_ATTRIBUTE,
    n_priv: CK_ULONG,
    ph_pub: *mut CK_OBJECT_HANDLE,
    ph_priv: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_GenerateKeyPair", || unsafe {
        let mut params = ParamBuf::new();
        let mc = mechanism_copy(p_m, &mut params)?;
        let m = mc.typed();
        if ph_pub.is_null() || ph_priv.is_null() {
            return Err(bad());
        }
        let (pu, pr) = (template(p_pub, n_pub)?, template(p_priv, n_priv)?);
        let (a, b) = manage::generate_key_pair(h, &m, &pu, &pr)?;
        put(ph_pub, a)?;
        ok(put(ph_priv, b))
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_WrapKey(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    guard("C_WrapKey", || {
        // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
        // length rules are checked in `args` before any is used.
        again_after_reconnect(|| unsafe {
            let mut params = ParamBuf::new();
            let mc = mechanism_copy(p_m, &mut params)?;
            let m = mc.typed();
            if pul.is_null() {
                return Err(bad());
            }
            let call = |b: &Backend, bs, w, k| {
                // SAFETY: the caller's mechanism and buffers, passed on
                // unchanged to a function of the backend's own list.
                bcall!(b, C_WrapKey(bs, mc.ptr(), w, k, p_out, pul))
            };
            match wrapping::wrap_key(h, &m, wrapping, key, call)? {
                Wrapped::Done(data) => write_bytes(&data, p_out, pul),
                Wrapped::Forwarded(rv) => Ok(rv),
            }
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_UnwrapKey(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    unwrapping: CK_OBJECT_HANDLE,
    p_wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_UnwrapKey", || {
        // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
        // length rules are checked in `args` before any is used.
        again_after_reconnect(|| unsafe {
            let mut params = ParamBuf::new();
            let mc = mechanism_copy(p_m, &mut params)?;
            let m = mc.typed();
            if ph.is_null() {
                return Err(bad());
            }
            let wrapped = bytes(p_wrapped, wrapped_len)?;
            let t = template(p_t, n)?;
            ok(put(
                ph,
                wrapping::unwrap_key(h, &m, unwrapping, wrapped, &t)?,
            ))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DeriveKey(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    p_t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_DeriveKey", || {
        // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
        // length rules are checked in `args` before any is used.
        again_after_reconnect(|| unsafe {
            let mut params = ParamBuf::new();
            let mc = mechanism_copy(p_m, &mut params)?;
            let m = mc.typed();
            if ph.is_null() {
                // Mechanisms that return no key handle carry handles in their
                // parameters, which are not forwarded (see token::guard).
                return Err(Error::Rv(CKR_MECHANISM_INVALID));
            }
            let t = template(p_t, n)?;
            let ed = encrypt_data(m.raw())?;
            ok(put(ph, wrapping::derive_key(h, &m, ed, base, &t)?))
        })
    })
}
