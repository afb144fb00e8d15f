//! Objects: DEK creation (generate, import, unwrap), attributes, destroy,
//! search, and key wrapping with backend keys. Calls on backend objects are
//! forwarded with their handles translated.

use std::sync::{Arc, RwLock};

use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::attributes::Template;
use super::module::Module;
use super::objects::{Dek, DekState, Object};
use super::policy::{self, Origin};
use super::session::{Find, Session};
use super::sessions::lookup;
use crate::backend::bcall;
use crate::backend::check;
use crate::envelope::secret::SecretBytes;
use crate::envelope::service::{hex, KEK_VERSION};
use crate::error::{Error, Result};
use crate::store::DekRow;
use crate::vendor::{CKA_HSME_KEK_VERSION, CKA_HSME_ON_BACKEND};

/// A DEK's state, if the session may see it (private ones need a login).
pub fn visible_dek(m: &Module, s: &Session, d: &Dek) -> Result<DekState> {
    let st = d.snapshot()?;
    if d.slot != s.slot || (st.attrs.flag(CKA_PRIVATE) && !m.is_logged_in(s.slot)) {
        return Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID));
    }
    Ok(st)
}

/// An object handle resolved for a call on `s`.
pub enum Target {
    Dek(Arc<Dek>, DekState),
    Backend(CK_OBJECT_HANDLE),
}

pub fn resolve(m: &Module, s: &Session, h: CK_OBJECT_HANDLE) -> Result<Target> {
    match m.objects.get(h)? {
        Object::Dek(d) => {
            let st = visible_dek(m, s, &d)?;
            Ok(Target::Dek(d, st))
        }
        Object::Backend { slot, handle } if slot == s.slot => Ok(Target::Backend(handle)),
        Object::Backend { .. } => Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID)),
    }
}

/// The template as backend attributes (pointing into `t`), without our
/// vendor attributes.
pub fn raw_template(t: &Template) -> Vec<CK_ATTRIBUTE> {
    t.iter()
        .filter(|a| a.ty != CKA_HSME_ON_BACKEND)
        .map(|a| CK_ATTRIBUTE {
            type_: a.ty,
            pValue: if a.value.is_empty() {
                std::ptr::null_mut()
            } else {
                a.value.as_ptr() as *mut _
            },
            ulValueLen: a.value.len() as CK_ULONG,
        })
        .collect()
}

/// Whether `bh` is the KEK. Through this module the KEK only wraps and
/// unwraps: it is not copied (a copy could decrypt records), changed, or
/// destroyed (that would shred every DEK; the admin tool owns its lifecycle).
pub fn is_kek(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> bool {
    is_dek_slot(m, s) && m.envelope.as_ref().and_then(|e| e.kek_handle(&m.backend)) == Some(bh)
}

fn refuse_kek(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> Result<()> {
    if is_kek(m, s, bh) {
        crate::log_warn!("refused a change to the KEK through the PKCS#11 API");
        return Err(Error::Rv(CKR_ACTION_PROHIBITED));
    }
    Ok(())
}

fn is_dek_slot(m: &Module, s: &Session) -> bool {
    m.dek_slot == Some(s.slot)
}

/// Key check value: the first 3 bytes of AES-ECB(key, 0^128).
fn check_value(value: &[u8]) -> Vec<u8> {
    use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
    let mut block = Array::default();
    let ok = match value.len() {
        16 => aes::Aes128::new_from_slice(value)
            .map(|c| c.encrypt_block(&mut block))
            .is_ok(),
        24 => aes::Aes192::new_from_slice(value)
            .map(|c| c.encrypt_block(&mut block))
            .is_ok(),
        32 => aes::Aes256::new_from_slice(value)
            .map(|c| c.encrypt_block(&mut block))
            .is_ok(),
        _ => false,
    };
    if ok {
        block[..3].to_vec()
    } else {
        Vec::new()
    }
}

/// Make a DEK: wrap its value under the KEK on the HSM, persist token DEKs,
/// cache the value, hand out a handle.
fn create_dek(
    m: &Module,
    s: &Session,
    template: &Template,
    origin: Origin,
    given: Option<SecretBytes>,
) -> Result<CK_OBJECT_HANDLE> {
    let env = m.envelope_for(s.slot)?;
    let (mut attrs, tvalue) = policy::new_dek(template, origin)?;
    let token = attrs.flag(CKA_TOKEN);
    if token && !s.is_rw() {
        return Err(Error::Rv(CKR_SESSION_READ_ONLY));
    }
    // The KEK is private on the backend: every DEK needs the user's login.
    if !m.is_logged_in(s.slot) {
        return Err(Error::Rv(CKR_USER_NOT_LOGGED_IN));
    }
    let value = match (tvalue, given) {
        (Some(v), _) => SecretBytes::from_slice(&v),
        (None, Some(v)) => v,
        (None, None) => {
            let len = attrs
                .ulong(CKA_VALUE_LEN)
                .ok_or(Error::Rv(CKR_TEMPLATE_INCOMPLETE))? as usize;
            let mut v = SecretBytes::new(len);
            env.random(&m.backend, v.as_mut_slice())?;
            v
        }
    };
    if !policy::is_valid_aes_len(value.len()) {
        return Err(Error::Rv(CKR_KEY_SIZE_RANGE));
    }
    if let Some(n) = attrs.ulong(CKA_VALUE_LEN) {
        if n as usize != value.len() {
            return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
    }
    attrs.set_ulong(CKA_VALUE_LEN, value.len() as CK_ULONG);
    attrs.set(CKA_CHECK_VALUE, check_value(value.as_slice()));
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
    attrs.set(CKA_UNIQUE_ID, hex(&id).into_bytes());
    attrs.set_ulong(CKA_HSME_KEK_VERSION, KEK_VERSION as CK_ULONG);
    let record = env.seal(&m.backend, &id, &attrs, value.as_slice())?;
    if token {
        let now = now();
        let row = DekRow {
            id,
            label: attrs.label().to_vec(),
            ckaid: attrs.id().to_vec(),
            attrs: attrs.encode(),
            record: record.clone(),
            kek_label: m.config.kek_label.clone(),
            kek_version: KEK_VERSION,
            created: now,
            updated: now,
            generation: 0,
        };
        env.with_store(|st| Ok(st.insert(&row)?))?;
    }
    let dek = Dek {
        id,
        slot: s.slot,
        owner: if token { None } else { Some(s.handle) },
        state: RwLock::new(DekState {
            attrs,
            record,
            generation: 0,
        }),
    };
    env.cache.insert(id, value)?;
    let h = m.objects.intern_dek(Arc::new(dek));
    crate::log_info!(
        "DEK created: id={} origin={origin:?} token={token} kek_version={KEK_VERSION}",
        hex(&id)
    );
    Ok(h)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn forward_new_object(
    m: &Module,
    s: &Session,
    rv: CK_RV,
    func: &'static str,
    bh: CK_OBJECT_HANDLE,
) -> Result<CK_OBJECT_HANDLE> {
    check(func, rv)?;
    Ok(m.objects.intern_backend(s.slot, bh))
}

pub fn create_object(h: CK_SESSION_HANDLE, t: &Template) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    if is_dek_slot(&m, &s) && policy::wants_dek(t, false)? {
        return create_dek(&m, &s, t, Origin::Imported, None);
    }
    let mut raw = raw_template(t);
    let mut bh = 0;
    let rv = bcall!(
        m.backend,
        C_CreateObject(s.backend, raw.as_mut_ptr(), raw.len() as CK_ULONG, &mut bh)
    );
    forward_new_object(&m, &s, rv, "C_CreateObject", bh)
}

pub fn generate_key(
    h: CK_SESSION_HANDLE,
    mech: &CK_MECHANISM,
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    if mech.mechanism == CKM_AES_KEY_GEN && is_dek_slot(&m, &s) && policy::wants_dek(t, true)? {
        return create_dek(&m, &s, t, Origin::Generated, None);
    }
    let mut raw = raw_template(t);
    let mut bh = 0;
    let rv = bcall!(
        m.backend,
        C_GenerateKey(
            s.backend,
            mech_ptr(mech),
            raw.as_mut_ptr(),
            raw.len() as CK_ULONG,
            &mut bh
        )
    );
    forward_new_object(&m, &s, rv, "C_GenerateKey", bh)
}

pub fn generate_key_pair(
    h: CK_SESSION_HANDLE,
    mech: &CK_MECHANISM,
    public: &Template,
    private: &Template,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let (m, s) = lookup(h)?;
    let (mut pu, mut pr) = (raw_template(public), raw_template(private));
    let (mut bpu, mut bpr) = (0, 0);
    let rv = bcall!(
        m.backend,
        C_GenerateKeyPair(
            s.backend,
            mech_ptr(mech),
            pu.as_mut_ptr(),
            pu.len() as CK_ULONG,
            pr.as_mut_ptr(),
            pr.len() as CK_ULONG,
            &mut bpu,
            &mut bpr
        )
    );
    check("C_GenerateKeyPair", rv)?;
    Ok((
        m.objects.intern_backend(s.slot, bpu),
        m.objects.intern_backend(s.slot, bpr),
    ))
}

pub fn copy_object(
    h: CK_SESSION_HANDLE,
    oh: CK_OBJECT_HANDLE,
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        // Copying a DEK would need its own record and policy; not offered yet.
        Target::Dek(..) => Err(Error::Rv(CKR_FUNCTION_NOT_SUPPORTED)),
        Target::Backend(bh) => {
            refuse_kek(&m, &s, bh)?;
            let mut raw = raw_template(t);
            let mut out = 0;
            let rv = bcall!(
                m.backend,
                C_CopyObject(
                    s.backend,
                    bh,
                    raw.as_mut_ptr(),
                    raw.len() as CK_ULONG,
                    &mut out
                )
            );
            forward_new_object(&m, &s, rv, "C_CopyObject", out)
        }
    }
}

pub fn destroy_object(h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> Result<()> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Dek(d, st) => {
            if d.is_token() && !s.is_rw() {
                return Err(Error::Rv(CKR_SESSION_READ_ONLY));
            }
            if !st.attrs.flag(CKA_DESTROYABLE) {
                return Err(Error::Rv(CKR_ACTION_PROHIBITED));
            }
            let env = m.envelope_for(d.slot)?;
            if d.is_token() {
                env.with_store(|st| Ok(st.delete(&d.id)?))?;
            }
            m.objects.remove(oh);
            env.cache.remove(&d.id);
            crate::log_info!("DEK destroyed: id={}", hex(&d.id));
            Ok(())
        }
        Target::Backend(bh) => {
            refuse_kek(&m, &s, bh)?;
            check(
                "C_DestroyObject",
                bcall!(m.backend, C_DestroyObject(s.backend, bh)),
            )?;
            m.objects.remove(oh);
            Ok(())
        }
    }
}

pub fn object_size(h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> Result<CK_ULONG> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Dek(_, st) => Ok((st.record.len() + st.attrs.encode().len()) as CK_ULONG),
        Target::Backend(bh) => {
            let mut n = 0;
            check(
                "C_GetObjectSize",
                bcall!(m.backend, C_GetObjectSize(s.backend, bh, &mut n)),
            )?;
            Ok(n)
        }
    }
}

/// One attribute of a DEK as C_GetAttributeValue reports it.
pub enum Answer {
    Value(Zeroizing<Vec<u8>>),
    Sensitive,
    Invalid,
}

pub fn dek_attribute(m: &Module, d: &Dek, st: &DekState, ty: CK_ATTRIBUTE_TYPE) -> Result<Answer> {
    if ty == CKA_VALUE {
        if st.attrs.flag(CKA_SENSITIVE) || !st.attrs.flag(CKA_EXTRACTABLE) {
            return Ok(Answer::Sensitive);
        }
        let env = m.envelope_for(d.slot)?;
        let v = env.value(&m.backend, &d.id, &st.attrs, &st.record)?;
        return Ok(Answer::Value(Zeroizing::new(v.value().to_vec())));
    }
    Ok(match st.attrs.get(ty) {
        Some(v) => Answer::Value(Zeroizing::new(v.to_vec())),
        None => Answer::Invalid,
    })
}

pub fn set_attributes(h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE, t: &Template) -> Result<()> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Backend(bh) => {
            refuse_kek(&m, &s, bh)?;
            let mut raw = raw_template(t);
            check(
                "C_SetAttributeValue",
                bcall!(
                    m.backend,
                    C_SetAttributeValue(s.backend, bh, raw.as_mut_ptr(), raw.len() as CK_ULONG)
                ),
            )
        }
        Target::Dek(d, st) => {
            if d.is_token() && !s.is_rw() {
                return Err(Error::Rv(CKR_SESSION_READ_ONLY));
            }
            let new = policy::apply_set(&st.attrs, t)?;
            let env = m.envelope_for(d.slot)?;
            // Bound attributes changed: the record must be sealed again.
            let record = if new.bound_encoding() != st.attrs.bound_encoding() {
                let value = env.value(&m.backend, &d.id, &st.attrs, &st.record)?;
                env.seal(&m.backend, &d.id, &new, value.value())?
            } else {
                st.record.clone()
            };
            let mut generation = st.generation;
            if d.is_token() {
                let ok = env.with_store(|store| {
                    Ok(store.update(
                        &d.id,
                        new.label(),
                        new.id(),
                        &new.encode(),
                        &record,
                        &m.config.kek_label,
                        KEK_VERSION,
                        Some(st.generation),
                    )?)
                })?;
                if !ok {
                    // Another process changed the key meanwhile; the caller may retry.
                    return Err(Error::Rv(CKR_FUNCTION_FAILED));
                }
                generation += 1;
            }
            let mut w = d.state.write().map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
            *w = DekState {
                attrs: new,
                record,
                generation,
            };
            Ok(())
        }
    }
}

pub fn find_init(h: CK_SESSION_HANDLE, t: &Template) -> Result<()> {
    let (m, s) = lookup(h)?;
    if s.ops()?.find.is_some() {
        return Err(Error::Rv(CKR_OPERATION_ACTIVE));
    }
    let mut handles = Vec::new();
    if is_dek_slot(&m, &s) {
        super::sync::sync_token_deks(&m)?;
        let logged_in = m.is_logged_in(s.slot);
        for (oh, d) in m.objects.deks() {
            let Ok(st) = d.snapshot() else { continue };
            if d.slot == s.slot && (logged_in || !st.attrs.flag(CKA_PRIVATE)) && st.attrs.matches(t)
            {
                handles.push(oh);
            }
        }
    }
    // Our vendor attributes mean nothing to the backend: such a search is ours only.
    if !t
        .iter()
        .any(|a| a.ty == CKA_HSME_KEK_VERSION || a.ty == CKA_HSME_ON_BACKEND)
    {
        let mut raw = raw_template(t);
        check(
            "C_FindObjectsInit",
            bcall!(
                m.backend,
                C_FindObjectsInit(s.backend, raw.as_mut_ptr(), raw.len() as CK_ULONG)
            ),
        )?;
        let mut batch = [0 as CK_OBJECT_HANDLE; 64];
        loop {
            let mut n = 0;
            let rv = bcall!(
                m.backend,
                C_FindObjects(
                    s.backend,
                    batch.as_mut_ptr(),
                    batch.len() as CK_ULONG,
                    &mut n
                )
            );
            if rv != CKR_OK {
                let _ = bcall!(m.backend, C_FindObjectsFinal(s.backend));
                return Err(Error::Backend {
                    func: "C_FindObjects",
                    rv,
                });
            }
            if n == 0 {
                break;
            }
            for bh in batch.iter().take(n as usize) {
                handles.push(m.objects.intern_backend(s.slot, *bh));
            }
        }
        check(
            "C_FindObjectsFinal",
            bcall!(m.backend, C_FindObjectsFinal(s.backend)),
        )?;
    }
    s.ops()?.find = Some(Find { handles, pos: 0 });
    Ok(())
}

pub fn find_next(h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
    let (_, s) = lookup(h)?;
    let mut ops = s.ops()?;
    let f = ops
        .find
        .as_mut()
        .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))?;
    let end = (f.pos + max).min(f.handles.len());
    let out = f
        .handles
        .get(f.pos..end)
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    f.pos = end;
    Ok(out)
}

pub fn find_final(h: CK_SESSION_HANDLE) -> Result<()> {
    let (_, s) = lookup(h)?;
    let mut ops = s.ops()?;
    ops.find
        .take()
        .map(|_| ())
        .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))
}

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

/// What C_WrapKey must do.
pub enum WrapStep {
    Done(Vec<u8>),
    Forward(
        Arc<Module>,
        CK_SESSION_HANDLE,
        CK_OBJECT_HANDLE,
        CK_OBJECT_HANDLE,
    ),
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
            Ok(WrapStep::Forward(m.clone(), s.backend, w, k))
        }
        (Target::Backend(w), Target::Dek(d, st)) => {
            if !st.attrs.flag(CKA_EXTRACTABLE) {
                return Err(Error::Rv(CKR_KEY_UNEXTRACTABLE));
            }
            if has_params {
                return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
            }
            let bmech = backend_kw_mech(&m, &s, mech)?;
            let env = m.envelope_for(d.slot)?;
            let value = env.value(&m.backend, &d.id, &st.attrs, &st.record)?;
            Ok(WrapStep::Done(env.keywrap(
                &m.backend,
                w,
                bmech,
                value.value(),
            )?))
        }
        // DEKs do not wrap in software (yet).
        (Target::Dek(..), _) => Err(Error::Rv(CKR_MECHANISM_INVALID)),
    }
}

/// What C_UnwrapKey must do.
pub enum UnwrapStep {
    Done(CK_OBJECT_HANDLE),
    Forward(Arc<Module>, CK_SESSION_HANDLE, CK_OBJECT_HANDLE),
}

pub fn unwrap_key(
    h: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_TYPE,
    has_params: bool,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: &[u8],
    t: &Template,
) -> Result<UnwrapStep> {
    let (m, s) = lookup(h)?;
    let uw = match resolve(&m, &s, unwrapping)
        .map_err(|_| Error::Rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID))?
    {
        Target::Backend(b) => b,
        Target::Dek(..) => return Err(Error::Rv(CKR_MECHANISM_INVALID)),
    };
    kek_only_key_wraps(&m, &s, uw, mech)?;
    if !(is_key_wrap(mech) && is_dek_slot(&m, &s) && policy::wants_dek(t, false)?) {
        return Ok(UnwrapStep::Forward(m.clone(), s.backend, uw));
    }
    if has_params {
        return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
    }
    let bmech = backend_kw_mech(&m, &s, mech)?;
    let env = m.envelope_for(s.slot)?;
    let value = env.keyunwrap(&m.backend, uw, bmech, wrapped)?;
    if !policy::is_valid_aes_len(value.len()) {
        return Err(Error::Rv(CKR_WRAPPED_KEY_INVALID));
    }
    create_dek(&m, &s, t, Origin::Unwrapped, Some(value)).map(UnwrapStep::Done)
}

/// Translate a backend object handle the backend just returned to us.
pub fn intern_backend(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> CK_OBJECT_HANDLE {
    m.objects.intern_backend(s.slot, bh)
}

/// Backend handle for a key used by a forwarded operation (encrypt, sign,
/// verify, digest-key, derive). DEKs have no such backend operations, and
/// the KEK none at all: AES-ECB/CBC key derivation or CMAC with it would be
/// an AES oracle that recovers GCM keystream, i.e. opens stored records.
pub fn backend_key(m: &Module, s: &Session, h: CK_OBJECT_HANDLE) -> Result<CK_OBJECT_HANDLE> {
    match resolve(m, s, h).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))? {
        Target::Backend(b) if is_kek(m, s, b) => Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED)),
        Target::Backend(b) => Ok(b),
        Target::Dek(..) => Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED)),
    }
}

fn is_key_wrap(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(
        mech,
        CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP
    )
}

/// The KEK wraps and unwraps with AES key wrap only: another mechanism
/// (CBC, GCM) could turn a stored record into a key the caller controls.
fn kek_only_key_wraps(
    m: &Module,
    s: &Session,
    bh: CK_OBJECT_HANDLE,
    mech: CK_MECHANISM_TYPE,
) -> Result<()> {
    if !is_key_wrap(mech) && is_kek(m, s, bh) {
        return Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    }
    Ok(())
}

/// The caller's mechanism as the backend's (non-const) pointer; backends only read it.
fn mech_ptr(m: &CK_MECHANISM) -> *mut CK_MECHANISM {
    m as *const CK_MECHANISM as *mut CK_MECHANISM
}
