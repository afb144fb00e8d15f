//! Key wrap, unwrap and derive. A DEK is a full AES key here: it wraps and
//! unwraps with AES key wrap and derives with *_ENCRYPT_DATA in software,
//! is wrapped by backend keys (the KEK with AES key wrap only), and for any
//! other mechanism is made real on the HSM for the one call (`on_hsm`).
//! Calls on backend keys alone are forwarded with handles translated.

use cryptoki_sys::*;

use crate::backend::{AttrIn, Backend, Mechanism};
use crate::crypto::key_wrap::{self, KeyWrap};
use crate::crypto::{CryptoError, Direction, Mode};
use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use crate::token::forward::CKR_HSME_INTERNAL_RECONNECTED;
use crate::token::forward::{forward, forward_objects};
use crate::token::kek_guard::{
    dek_here, is_kek, kek_only_key_wraps, mechanism_has_handles, refuse_kek_label,
};
use crate::token::module::Module;
use crate::token::object::dek;
use crate::token::object::manage::{adopt, backend_key, backend_template, resolve, Target};
use crate::token::object::on_hsm::{materialize, session_aes_key, NO, YES};
use crate::token::object::policy::{self, Origin};
use crate::token::object::table::{Dek, DekState};
use crate::token::object::template::{as_bool, as_ulong, find_in, Template};
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
fn is_trusted(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> Result<bool> {
    match forward_objects(m, s, |bs| m.backend.attribute_bool(bs, bh, CKA_TRUSTED)) {
        Ok(trusted) => Ok(trusted),
        Err(e) if e.rv() == CKR_HSME_INTERNAL_RECONNECTED => Err(e),
        Err(_) => Ok(false),
    }
}

/// What C_WrapKey did.
pub enum Wrapped {
    /// Wrapped here: the bytes for the caller.
    Done(Vec<u8>),
    /// Forwarded to the backend; its answer.
    Forwarded(CK_RV),
}

/// The software key wrap for `mech`: without a parameter, or with the
/// standard's default IV as its parameter (which is what SunPKCS11 sends).
fn software_key_wrap(mech: &Mechanism<'_>) -> Option<KeyWrap> {
    const KW_IV: [u8; 8] = [0xA6; 8];
    const KWP_IV: [u8; 4] = [0xA6, 0x59, 0x59, 0xA6];
    match (mech.kind(), mech.params()) {
        (CKM_AES_KEY_WRAP, []) => Some(KeyWrap::Kw),
        (CKM_AES_KEY_WRAP, p) if p == KW_IV => Some(KeyWrap::Kw),
        (CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP, []) => Some(KeyWrap::Kwp),
        (CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP, p) if p == KWP_IV => Some(KeyWrap::Kwp),
        _ => None,
    }
}

/// A DEK's state (a copy: no lock is held while another DEK's is taken, or
/// the HSM is called), if it may serve as a key for `usage` with `mech`.
fn dek_for(
    m: &Module,
    s: &Session,
    d: &Dek,
    usage: CK_ATTRIBUTE_TYPE,
    mech: CK_MECHANISM_TYPE,
) -> Result<DekState> {
    let st = dek::visible(m, s, d)?.clone();
    if !st.attrs.flag(usage) {
        return Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    }
    if !st.attrs.mechanism_allowed(mech) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    Ok(st)
}

/// A DEK's state (a copy, as in `dek_for`), if it may leave the module
/// wrapped by `wrapping`.
fn wrappable(m: &Module, s: &Session, d: &Dek, wrapping_trusted: bool) -> Result<DekState> {
    let st = dek::visible(m, s, d)?.clone();
    if !st.attrs.flag(CKA_EXTRACTABLE) {
        return Err(Error::Rv(CKR_KEY_UNEXTRACTABLE));
    }
    if st.attrs.flag(CKA_WRAP_WITH_TRUSTED) && !wrapping_trusted {
        return Err(Error::Rv(CKR_KEY_NOT_WRAPPABLE));
    }
    Ok(st)
}

/// C_WrapKey. A DEK wraps or is wrapped with AES key wrap in software (or,
/// by a backend key, on the HSM); any other mechanism runs on the HSM, with
/// DEKs made real there for the one call (see `on_hsm`). `call` forwards
/// the caller's own mechanism and buffers with the backend handles to use.
pub fn wrap_key(
    h: CK_SESSION_HANDLE,
    mech: &Mechanism<'_>,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    mut call: impl FnMut(&Backend, CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) -> CK_RV,
) -> Result<Wrapped> {
    let (m, s) = lookup(h)?;
    if mechanism_has_handles(mech.kind()) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    let wrapping =
        resolve(&m, &s, wrapping).map_err(|_| Error::Rv(CKR_WRAPPING_KEY_HANDLE_INVALID))?;
    let key = resolve(&m, &s, key).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))?;
    let kind = mech.kind();
    let mut forward_with =
        |w, k| Wrapped::Forwarded(forward_objects(&m, &s, |bs| call(&m.backend, bs, w, k)));
    match (wrapping, key) {
        (Target::Backend(w), Target::Backend(k)) => {
            kek_only_key_wraps(&m, &s, w, kind)?;
            Ok(forward_with(w, k))
        }
        (Target::Backend(w), Target::Dek(d)) => {
            kek_only_key_wraps(&m, &s, w, kind)?;
            let st = wrappable(&m, &s, &d, is_trusted(&m, &s, w)?)?;
            if software_key_wrap(mech).is_some() {
                // AES key wrap by a backend key: on the HSM, from a short-lived copy.
                let bmech = backend_kw_mech(&m, &s, kind)?;
                let env = m.envelope_for(d.slot)?;
                let value = env.value(d.key_ref(&st))?;
                drop(st);
                return Ok(Wrapped::Done(env.keywrap(w, bmech, value.value())?));
            }
            let copy = materialize(&m, &s, &d, &st)?;
            drop(st);
            Ok(forward_with(w, copy.handle()))
        }
        (Target::Dek(wd), key) => {
            let wst = dek_for(&m, &s, &wd, CKA_WRAP, kind)?;
            let trusted = wst.attrs.flag(CKA_TRUSTED);
            match (software_key_wrap(mech), key) {
                (Some(kw), Target::Dek(kd)) => {
                    let kst = wrappable(&m, &s, &kd, trusted)?;
                    let env = m.envelope_for(wd.slot)?;
                    let wrapping = env.value(wd.key_ref(&wst))?;
                    let value = env.value(kd.key_ref(&kst))?;
                    let out =
                        key_wrap::wrap(wrapping.value(), kw, value.value()).map_err(
                            |e| match e {
                                // The FIPS build: no AES-192 key wrap in the module's API.
                                CryptoError::Unsupported => Error::Rv(CKR_WRAPPING_KEY_SIZE_RANGE),
                                _ => Error::Rv(CKR_KEY_SIZE_RANGE),
                            },
                        )?;
                    Ok(Wrapped::Done(out))
                }
                // AES key wrap of a backend key by a DEK: on the HSM, from a
                // short-lived copy of the DEK.
                (Some(_), Target::Backend(k)) => {
                    let wcopy = materialize(&m, &s, &wd, &wst)?;
                    Ok(forward_with(wcopy.handle(), k))
                }
                // Any other mechanism (CBC, ECB) would make the DEK an
                // encryption oracle for whoever may wrap with it.
                (None, _) => Err(Error::Rv(CKR_MECHANISM_INVALID)),
            }
        }
    }
}

/// The HSM unwraps (or derives) into a short-lived readable object, whose
/// value is returned to become a DEK (made by the caller once every copy on
/// the HSM is gone): for mechanisms the software engines do not run.
fn value_from_hsm(
    m: &Module,
    s: &Session,
    t: &Template,
    make: impl Fn(CK_SESSION_HANDLE, &[AttrIn<'_>]) -> Result<CK_OBJECT_HANDLE>,
) -> Result<SecretBytes> {
    let len = find_in(t, CKA_VALUE_LEN).map(<[u8]>::to_vec);
    // Readable for the moment it lives: its value becomes the DEK's.
    let mut temp = session_aes_key();
    temp.extend([
        AttrIn {
            ty: CKA_SENSITIVE,
            value: &NO,
        },
        AttrIn {
            ty: CKA_EXTRACTABLE,
            value: &YES,
        },
    ]);
    if let Some(len) = &len {
        temp.push(AttrIn {
            ty: CKA_VALUE_LEN,
            value: len,
        });
    }
    let env = m.envelope_for(s.slot)?;
    let value = {
        let _gate = env.temp_gate.hold();
        let made = forward_objects(m, s, |bs| make(bs, &temp))?;
        let value = forward(m, s, |bs| m.backend.secret_value(bs, made));
        let _ = forward(m, s, |bs| m.backend.destroy_object(bs, made));
        value?
    };
    if !policy::is_valid_aes_len(value.len()) {
        return Err(Error::Rv(CKR_KEY_SIZE_RANGE));
    }
    Ok(value)
}

/// C_UnwrapKey. With the KEK, the result is always a DEK whose value cannot
/// be read (sensitive, or not extractable): a key unwrapped into a backend
/// object or a readable DEK would let a wrap/unwrap round trip read a
/// sensitive key's value.
pub fn unwrap_key(
    h: CK_SESSION_HANDLE,
    mech: &Mechanism<'_>,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: &[u8],
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    let kind = mech.kind();
    if mechanism_has_handles(kind) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    let to_dek = dek_here(&m, &s, "C_UnwrapKey", || policy::wants_dek(t, false))?;
    if !to_dek {
        refuse_kek_label(&m, &s, t)?;
    }
    let uw = match resolve(&m, &s, unwrapping)
        .map_err(|_| Error::Rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID))?
    {
        Target::Backend(b) => b,
        Target::Dek(d) => {
            let st = dek_for(&m, &s, &d, CKA_UNWRAP, kind)?;
            return match (software_key_wrap(mech), to_dek) {
                (Some(kw), true) => {
                    let env = m.envelope_for(d.slot)?;
                    let uwv = env.value(d.key_ref(&st))?;
                    drop(st);
                    let value =
                        key_wrap::unwrap(uwv.value(), kw, wrapped).map_err(|e| match e {
                            CryptoError::DataLen => Error::Rv(CKR_WRAPPED_KEY_LEN_RANGE),
                            CryptoError::Unsupported => Error::Rv(CKR_UNWRAPPING_KEY_SIZE_RANGE),
                            _ => Error::Rv(CKR_WRAPPED_KEY_INVALID),
                        })?;
                    if !policy::is_valid_aes_len(value.len()) {
                        return Err(Error::Rv(CKR_WRAPPED_KEY_INVALID));
                    }
                    dek::create(&m, &s, t, Origin::Unwrapped, Some(value))
                }
                // Any other mechanism (CBC, ECB) would make the DEK a
                // decryption oracle for whoever may unwrap with it.
                (None, _) => Err(Error::Rv(CKR_MECHANISM_INVALID)),
                // AES key wrap into a backend key: on the HSM, from a copy.
                (Some(_), false) => {
                    let copy = materialize(&m, &s, &d, &st)?;
                    drop(st);
                    let raw = backend_template(t);
                    let made = forward_objects(&m, &s, |bs| {
                        m.backend.unwrap_key(bs, mech, copy.handle(), wrapped, &raw)
                    })
                    .map_err(unwrap_error);
                    adopt(&m, &s, made)
                }
            };
        }
    };
    kek_only_key_wraps(&m, &s, uw, kind)?;
    if is_kek(&m, &s, uw)? {
        let flag = |ty| find_in(t, ty).map(as_bool).transpose();
        // Readable afterwards (not sensitive, extractable): refused.
        let readable = flag(CKA_SENSITIVE)? == Some(false) && flag(CKA_EXTRACTABLE)? == Some(true);
        if !to_dek || readable {
            return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
    }
    if !to_dek {
        let raw = backend_template(t);
        let made = forward_objects(&m, &s, |bs| {
            m.backend.unwrap_key(bs, mech, uw, wrapped, &raw)
        })
        .map_err(unwrap_error);
        return adopt(&m, &s, made);
    }
    if software_key_wrap(mech).is_none() {
        // RSA-OAEP and the like: the HSM unwraps, the value becomes a DEK.
        let made = value_from_hsm(&m, &s, t, |bs, temp| {
            m.backend
                .unwrap_key(bs, mech, uw, wrapped, temp)
                .map_err(unwrap_error)
        });
        return match made {
            // The unwrapping key's CKA_UNWRAP_TEMPLATE keeps what it
            // unwraps on the HSM (not extractable, say): so does the module,
            // as a backend key. Only the HSM's own refusal: a DEK the module
            // refuses (key_export, a bad template) is no backend key either;
            // and never with the KEK.
            Err(e) if e.backend_rv() == Some(CKR_TEMPLATE_INCONSISTENT) && !is_kek(&m, &s, uw)? => {
                refuse_kek_label(&m, &s, t)?;
                let raw = backend_template(t);
                let made = forward_objects(&m, &s, |bs| {
                    m.backend.unwrap_key(bs, mech, uw, wrapped, &raw)
                })
                .map_err(unwrap_error);
                adopt(&m, &s, made)
            }
            Ok(value) => dek::create(&m, &s, t, Origin::Unwrapped, Some(value)),
            Err(e) => Err(e),
        };
    }
    let bmech = backend_kw_mech(&m, &s, kind)?;
    let env = m.envelope_for(s.slot)?;
    let value = env.keyunwrap(uw, bmech, wrapped).map_err(unwrap_error)?;
    if !policy::is_valid_aes_len(value.len()) {
        return Err(Error::Rv(CKR_WRAPPED_KEY_INVALID));
    }
    dek::create(&m, &s, t, Origin::Unwrapped, Some(value))
}

/// Data for the *_ENCRYPT_DATA derivations, parsed by ffi from the caller's
/// parameters: the derived value is that data encrypted with the base key.
pub struct EncryptData<'a> {
    /// CBC's IV; None for ECB.
    pub iv: Option<[u8; 16]>,
    pub data: &'a [u8],
}

/// C_DeriveKey. From a DEK: AES-ECB/CBC_ENCRYPT_DATA in software into a new
/// DEK, anything else on the HSM from a short-lived copy of the DEK; from a
/// backend key, forwarded. `out` is false for mechanisms that return their
/// keys in their parameters (refused: see `guard`).
pub fn derive_key(
    h: CK_SESSION_HANDLE,
    mech: &Mechanism<'_>,
    encrypt_data: Option<EncryptData<'_>>,
    base: CK_OBJECT_HANDLE,
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    let kind = mech.kind();
    if mechanism_has_handles(kind) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    let to_dek = dek_here(&m, &s, "C_DeriveKey", || policy::wants_dek(t, true))?;
    if !to_dek {
        refuse_kek_label(&m, &s, t)?;
        if find_in(t, CKA_HSME_ON_BACKEND).is_some_and(|v| v != [CK_TRUE]) {
            return Err(Error::Rv(CKR_ATTRIBUTE_TYPE_INVALID));
        }
    }
    let target = resolve(&m, &s, base).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))?;
    if let Target::Dek(d) = &target {
        crate::token::approved::derive(&m, kind)?;
        let st = dek_for(&m, &s, d, CKA_DERIVE, kind)?;
        if to_dek {
            no_less_protected(
                kind,
                st.attrs.flag(CKA_SENSITIVE),
                st.attrs.flag(CKA_EXTRACTABLE),
                t,
            )?;
        }
        return match (encrypt_data, to_dek) {
            (Some(ed), true) => {
                let env = m.envelope_for(d.slot)?;
                let key = env.value(d.key_ref(&st))?;
                drop(st);
                let value = derive_by_encryption(key.value(), &ed, t)?;
                dek::create(&m, &s, t, Origin::Derived, Some(value))
            }
            (_, true) => {
                let value = {
                    let copy = materialize(&m, &s, d, &st)?;
                    drop(st);
                    value_from_hsm(&m, &s, t, |bs, temp| {
                        m.backend.derive_key(bs, mech, copy.handle(), temp)
                    })?
                };
                dek::create(&m, &s, t, Origin::Derived, Some(value))
            }
            (_, false) => {
                let copy = materialize(&m, &s, d, &st)?;
                drop(st);
                let raw = backend_template(t);
                let made = forward_objects(&m, &s, |bs| {
                    m.backend.derive_key(bs, mech, copy.handle(), &raw)
                });
                adopt(&m, &s, made)
            }
        };
    }
    let b = backend_key(&m, &s, base)?;
    if to_dek {
        // A key derived from a sensitive or unextractable backend key is a
        // DEK at least as protected.
        let protect = |ty| forward_objects(&m, &s, |bs| m.backend.attribute_bool(bs, b, ty));
        no_less_protected(kind, protect(CKA_SENSITIVE)?, protect(CKA_EXTRACTABLE)?, t)?;
        let value = value_from_hsm(&m, &s, t, |bs, temp| {
            m.backend.derive_key(bs, mech, b, temp)
        })?;
        return dek::create(&m, &s, t, Origin::Derived, Some(value));
    }
    let raw = backend_template(t);
    let made = forward_objects(&m, &s, |bs| m.backend.derive_key(bs, mech, b, &raw));
    adopt(&m, &s, made)
}

/// A derived DEK is at least as protected as its base key: not readable
/// (CKA_SENSITIVE false) from a sensitive base, not extractable from an
/// unextractable one. Otherwise a derivation that keeps the base's value
/// (XOR or concatenation with data, on HSMs that offer them) would read it.
/// Key agreement is exempt: its secret is shared with the other party, and
/// reading it reveals nothing of the private key.
fn no_less_protected(
    mech: CK_MECHANISM_TYPE,
    base_sensitive: bool,
    base_extractable: bool,
    t: &Template,
) -> Result<()> {
    if matches!(
        mech,
        CKM_DH_PKCS_DERIVE
            | CKM_ECDH1_DERIVE
            | CKM_ECDH1_COFACTOR_DERIVE
            | CKM_X9_42_DH_DERIVE
            | CKM_ECDH_AES_KEY_WRAP
    ) {
        return Ok(());
    }
    let flag = |ty| find_in(t, ty).map(as_bool).transpose();
    if (base_sensitive && flag(CKA_SENSITIVE)? == Some(false))
        || (!base_extractable && flag(CKA_EXTRACTABLE)? == Some(true))
    {
        return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT));
    }
    Ok(())
}

/// The value of a key derived by encrypting `ed.data` (whole blocks) with
/// `base`: CKA_VALUE_LEN bytes of it if the template says, else all of it.
fn derive_by_encryption(base: &[u8], ed: &EncryptData<'_>, t: &Template) -> Result<SecretBytes> {
    if ed.data.is_empty() || !ed.data.len().is_multiple_of(16) {
        return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
    }
    let mode = match ed.iv {
        Some(iv) => Mode::Cbc { iv },
        None => Mode::Ecb,
    };
    let mut out = SecretBytes::new(ed.data.len());
    let mut op = crate::crypto::new_op(base, &mode, Direction::Encrypt)?;
    let n = op.oneshot(ed.data, out.as_mut_slice())?;
    let want = match find_in(t, CKA_VALUE_LEN) {
        Some(v) => as_ulong(v)? as usize,
        None => n,
    };
    // Data too short for the key asked for is a parameter the mechanism
    // cannot use (python-pkcs11's suite expects this code, as SoftHSM2 gives).
    if want > n {
        return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
    }
    if !policy::is_valid_aes_len(want) {
        return Err(Error::Rv(CKR_KEY_SIZE_RANGE));
    }
    out.truncate(want);
    Ok(out)
}

/// The specific code for a wrapped key the HSM could not unwrap: SoftHSM2,
/// for one, answers a failed integrity check of AES key wrap with
/// CKR_GENERAL_ERROR, which says nothing to the caller.
fn unwrap_error(e: Error) -> Error {
    let rv = match &e {
        Error::Backend(b) if b.func == "C_UnwrapKey" => b.rv,
        _ => return e,
    };
    match rv {
        CKR_GENERAL_ERROR | CKR_ENCRYPTED_DATA_INVALID | CKR_DATA_INVALID => {
            Error::Rv(CKR_WRAPPED_KEY_INVALID)
        }
        CKR_ENCRYPTED_DATA_LEN_RANGE | CKR_DATA_LEN_RANGE => Error::Rv(CKR_WRAPPED_KEY_LEN_RANGE),
        _ => e,
    }
}
