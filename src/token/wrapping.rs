//! Key wrap, unwrap and derive. A DEK is wrapped or unwrapped with a backend
//! AES key (the KEK included) using AES key wrap on the HSM; everything else
//! is forwarded with handles translated.

use cryptoki_sys::*;

use crate::backend::Mechanism;
use crate::error::{Error, Result};
use crate::token::forward::forward;
use crate::token::kek_guard::{
    derive_mechanism_has_handles, is_dek_slot, is_kek, is_key_wrap, kek_only_key_wraps,
    refuse_kek_label,
};
use crate::token::module::Module;
use crate::token::object::dek;
use crate::token::object::manage::{adopt, backend_key, backend_template, resolve, Target};
use crate::token::object::policy::{self, Origin};
use crate::token::object::template::{as_bool, find_in, Template};
use crate::token::session::calls::lookup;
use crate::token::session::table::Session;
use crate::vendor::CKA_HSME_ON_BACKEND;

/// SoftHSM2 numbers RFC 5649 wrapping 0x210A; PKCS#11 3.0 calls it 0x210B.
/// Use whichever of the two the backend lists.
fn backend_kw_mech(m: &Module, s: &Session, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_TYPE> {
    match mech {
        CKM_AES_KEY_WRAP => Ok(mech),
        CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP => {
            let list = m
                .slots
                .get(s.slot)
                .map(|e| m.backend.mechanisms(e.backend_id))
                .transpose()?
                .unwrap_or_default();
            Ok(if list.contains(&mech) {
                mech
            } else if mech == CKM_AES_KEY_WRAP_KWP {
                CKM_AES_KEY_WRAP_PAD
            } else {
                CKM_AES_KEY_WRAP_KWP
            })
        }
        _ => Err(Error::Rv(CKR_MECHANISM_INVALID)),
    }
}

/// Whether the backend key has CKA_TRUSTED set.
fn is_trusted(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> bool {
    forward(m, s, |bs| m.backend.attribute_bool(bs, bh, CKA_TRUSTED)).unwrap_or(false)
}

/// What C_WrapKey must do.
pub enum WrapStep {
    Done(Vec<u8>),
    /// Forward with these backend handles (wrapping key, key).
    Forward(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
}

pub fn wrap_key(
    h: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_TYPE,
    has_params: bool,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
) -> Result<WrapStep> {
    let (m, s) = lookup(h)?;
    let wrapping =
        resolve(&m, &s, wrapping).map_err(|_| Error::Rv(CKR_WRAPPING_KEY_HANDLE_INVALID))?;
    let key = resolve(&m, &s, key).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))?;
    match (wrapping, key) {
        (Target::Backend(w), Target::Backend(k)) => {
            kek_only_key_wraps(&m, &s, w, mech)?;
            Ok(WrapStep::Forward(w, k))
        }
        (Target::Backend(w), Target::Dek(d)) => {
            let st = dek::visible(&m, &s, &d)?;
            if !st.attrs.flag(CKA_EXTRACTABLE) {
                return Err(Error::Rv(CKR_KEY_UNEXTRACTABLE));
            }
            if st.attrs.flag(CKA_WRAP_WITH_TRUSTED) && !is_trusted(&m, &s, w) {
                return Err(Error::Rv(CKR_KEY_NOT_WRAPPABLE));
            }
            if has_params {
                return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
            }
            let bmech = backend_kw_mech(&m, &s, mech)?;
            let env = m.envelope_for(d.slot)?;
            let value = env.value(d.key_ref(&st))?;
            drop(st);
            Ok(WrapStep::Done(env.keywrap(w, bmech, value.value())?))
        }
        // DEKs do not wrap in software (yet).
        (Target::Dek(..), _) => Err(Error::Rv(CKR_MECHANISM_INVALID)),
    }
}

/// C_UnwrapKey. With the KEK, the result is always a DEK whose value cannot
/// be read (sensitive, or not extractable): a key unwrapped into a backend
/// object or a readable DEK would let a wrap/unwrap round trip read a
/// sensitive key's value.
pub fn unwrap_key(
    h: CK_SESSION_HANDLE,
    mech: &Mechanism<'_>,
    has_params: bool,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: &[u8],
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    let uw = match resolve(&m, &s, unwrapping)
        .map_err(|_| Error::Rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID))?
    {
        Target::Backend(b) => b,
        Target::Dek(..) => return Err(Error::Rv(CKR_MECHANISM_INVALID)),
    };
    kek_only_key_wraps(&m, &s, uw, mech.kind())?;
    let to_dek = is_key_wrap(mech.kind()) && is_dek_slot(&m, &s) && policy::wants_dek(t, false)?;
    if is_kek(&m, &s, uw) {
        let flag = |ty| find_in(t, ty).map(as_bool).transpose();
        // Readable afterwards (not sensitive, extractable): refused.
        let readable = flag(CKA_SENSITIVE)? == Some(false) && flag(CKA_EXTRACTABLE)? == Some(true);
        if !to_dek || readable {
            return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
    }
    if !to_dek {
        refuse_kek_label(&m, &s, t)?;
        let raw = backend_template(t);
        let made = forward(&m, &s, |bs| {
            m.backend.unwrap_key(bs, mech, uw, wrapped, &raw)
        })
        .map_err(unwrap_error);
        return adopt(&m, &s, made);
    }
    if has_params {
        return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
    }
    let bmech = backend_kw_mech(&m, &s, mech.kind())?;
    let env = m.envelope_for(s.slot)?;
    let value = env.keyunwrap(uw, bmech, wrapped).map_err(unwrap_error)?;
    if !policy::is_valid_aes_len(value.len()) {
        return Err(Error::Rv(CKR_WRAPPED_KEY_INVALID));
    }
    dek::create(&m, &s, t, Origin::Unwrapped, Some(value))
}

/// C_DeriveKey, forwarded. `out` is false for mechanisms that return their
/// keys in their parameters (refused: see `guard`).
pub fn derive_key(
    h: CK_SESSION_HANDLE,
    mech: &Mechanism<'_>,
    base: CK_OBJECT_HANDLE,
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    if derive_mechanism_has_handles(mech.kind()) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    let b = backend_key(&m, &s, base)?;
    refuse_kek_label(&m, &s, t)?;
    if find_in(t, CKA_HSME_ON_BACKEND).is_some() {
        return Err(Error::Rv(CKR_ATTRIBUTE_TYPE_INVALID));
    }
    let raw = backend_template(t);
    let made = forward(&m, &s, |bs| m.backend.derive_key(bs, mech, b, &raw));
    adopt(&m, &s, made)
}

/// The specific code for a wrapped key the HSM could not unwrap: SoftHSM2,
/// for one, answers a failed integrity check of AES key wrap with
/// CKR_GENERAL_ERROR, which says nothing to the caller.
fn unwrap_error(e: Error) -> Error {
    match e {
        Error::Backend {
            func: "C_UnwrapKey",
            rv: CKR_GENERAL_ERROR | CKR_ENCRYPTED_DATA_INVALID | CKR_DATA_INVALID,
        } => Error::Rv(CKR_WRAPPED_KEY_INVALID),
        Error::Backend {
            func: "C_UnwrapKey",
            rv: CKR_ENCRYPTED_DATA_LEN_RANGE | CKR_DATA_LEN_RANGE,
        } => Error::Rv(CKR_WRAPPED_KEY_LEN_RANGE),
        other => other,
    }
}
