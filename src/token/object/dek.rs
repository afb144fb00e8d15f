//! DEK objects: making one (generate, import, unwrap) and reading one.

use std::sync::{Arc, RwLockReadGuard};

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::secret::SecretBytes;
use crate::store::DekRow;
use crate::token::kek_guard::refuse_kek_label;
use crate::token::module::Module;
use crate::token::object::policy::{self, Origin};
use crate::token::object::table::{Dek, DekState};
use crate::token::object::template::Template;
use crate::token::session::table::Session;
use crate::vendor::CKA_HSME_KEK_VERSION;

/// The DEK's state, read-locked, if the session may see it: same slot, and
/// private DEKs only while the normal user is logged in.
pub fn visible<'a>(m: &Module, s: &Session, d: &'a Dek) -> Result<RwLockReadGuard<'a, DekState>> {
    let st = d.state.read();
    if d.slot != s.slot || (st.attrs.flag(CKA_PRIVATE) && !m.is_user(s.slot)) {
        return Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID));
    }
    Ok(st)
}

/// Make a DEK: seal its value under the KEK on the HSM, persist token DEKs,
/// cache the value, hand out a handle.
pub fn create(
    m: &Module,
    s: &Session,
    template: &Template,
    origin: Origin,
    given: Option<SecretBytes>,
) -> Result<CK_OBJECT_HANDLE> {
    let env = m.envelope_for(s.slot)?;
    // No DEK may pass for the KEK (or the audit key) in a search by label.
    refuse_kek_label(m, s, template)?;
    let (mut attrs, tvalue) = policy::new_dek(template, origin)?;
    let (origin_name, call) = match origin {
        Origin::Generated => ("generated", "C_GenerateKey"),
        Origin::Imported => ("imported", "C_CreateObject"),
        Origin::Unwrapped => ("unwrapped", "C_UnwrapKey"),
        Origin::Derived => ("derived", "C_DeriveKey"),
    };
    policy::check_export(&attrs, m.config.key_export, call)?;
    let token = attrs.flag(CKA_TOKEN);
    if token && !s.is_rw() {
        return Err(Error::Rv(CKR_SESSION_READ_ONLY));
    }
    // The KEK is private on the backend: every DEK needs the user's login.
    if !m.is_user(s.slot) {
        return Err(Error::Rv(CKR_USER_NOT_LOGGED_IN));
    }
    let value = match (tvalue, given) {
        (Some(v), _) => SecretBytes::from_slice(&v),
        (None, Some(v)) => v,
        (None, None) => {
            let len = attrs
                .ulong(CKA_VALUE_LEN)
                .ok_or(Error::Rv(CKR_TEMPLATE_INCOMPLETE))? as usize;
            // Checked before anything is allocated for it.
            if !policy::is_valid_aes_len(len) {
                return Err(Error::Rv(CKR_KEY_SIZE_RANGE));
            }
            let mut v = SecretBytes::new(len);
            env.random(v.as_mut_slice())
                .map_err(|e| lost_login(m, s, e))?;
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
    attrs.set(
        CKA_CHECK_VALUE,
        crate::crypto::check_value(value.as_slice()),
    );
    persist(m, s, attrs, value, origin_name)
}

/// A DEK with final attributes `attrs` and `value`: sealed under the KEK on
/// the HSM, stored if it is a token DEK, cached, logged, given a handle.
fn persist(
    m: &Module,
    s: &Session,
    mut attrs: crate::envelope::attrs::Attrs,
    value: SecretBytes,
    origin: &str,
) -> Result<CK_OBJECT_HANDLE> {
    let env = m.envelope_for(s.slot)?;
    let token = attrs.flag(CKA_TOKEN);
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
    attrs.set(CKA_UNIQUE_ID, hex(&id).into_bytes());
    // Read before sealing: a revocation while the value is wrapped (a
    // cache flush) keeps it out of the cache.
    let epoch = env.cache.epoch();
    let record = env
        .seal(&id, &attrs, value.as_slice())
        .map_err(|e| lost_login(m, s, e))?;
    // Where the store indexes the record: its KEK label and version (for
    // several HSMs, the set's).
    let (kek_label, kek_version) = if token {
        env.store_key(&record).map_err(|e| lost_login(m, s, e))?
    } else {
        (
            String::new(),
            Envelope::record_version(&record).unwrap_or(0),
        )
    };
    let cache_tag = Envelope::cache_tag(&record);
    // Which HSMs hold it, for the audit line (several HSMs only).
    let mut detail = String::from(if token { "token" } else { "session" });
    if let Some(hsms) = Envelope::record_hsms(&record) {
        detail.push_str(" hsms=");
        detail.push_str(&hsms);
    }
    // A token DEK is stored and held under the feed lock, so that a destroy
    // elsewhere in between is not read past before it is held.
    let _lock = token.then(|| env.feed_lock());
    if token {
        let now = crate::clock::unix_secs();
        let row = DekRow {
            id,
            label: attrs.label().to_vec(),
            ckaid: attrs.id().to_vec(),
            attrs: attrs.encode(),
            record: record.clone(),
            kek_label,
            kek_version,
            created: now,
            updated: now,
            generation: 0,
        };
        env.with_store(|st| Ok(st.insert(&row)?))?;
    }
    let label = attrs.label().to_vec();
    let state = DekState::new(attrs, record, 0);
    let binding = state.binding.clone();
    let dek = Dek::new(id, s.slot, if token { None } else { Some(s.handle) }, state);
    env.cache.insert(id, binding, cache_tag, value, epoch)?;
    env.log(
        crate::audit::Entry::new(crate::audit::Op::DekCreate, CKR_OK)
            .key(&id, &label)
            .kek_version(kek_version)
            .detail(&detail),
    );
    let h = m.objects.intern_dek(Arc::new(dek));
    crate::log_info!(
        "DEK created: id={} origin={origin} token={token} kek_version={kek_version}",
        hex(&id)
    );
    Ok(h)
}

/// An HSM call failed because another thread logged out meanwhile: the
/// caller's answer is that the user is not logged in.
fn lost_login(m: &Module, s: &Session, e: Error) -> Error {
    if m.is_user(s.slot) {
        e
    } else {
        Error::Rv(CKR_USER_NOT_LOGGED_IN)
    }
}

/// One attribute of a DEK as C_GetAttributeValue reports it.
pub enum Answer {
    Value(Zeroizing<Vec<u8>>),
    Sensitive,
    Invalid,
    /// The attribute could not be produced (e.g. the KEK is unavailable for
    /// CKA_VALUE of an extractable key); the rest are still processed.
    Failed(Error),
}

pub fn attribute(m: &Module, d: &Dek, st: &DekState, ty: CK_ATTRIBUTE_TYPE) -> Answer {
    if ty == CKA_VALUE {
        if st.attrs.flag(CKA_SENSITIVE) || !st.attrs.flag(CKA_EXTRACTABLE) {
            return Answer::Sensitive;
        }
        let value = m
            .envelope_for(d.slot)
            .and_then(|env| env.value(d.key_ref(st)));
        return match value {
            Ok(v) => Answer::Value(Zeroizing::new(v.value().to_vec())),
            Err(e) => Answer::Failed(e),
        };
    }
    if ty == CKA_HSME_KEK_VERSION {
        // Read from the record: a re-wrap changes it without touching
        // attributes, perhaps in another process (the store has the latest).
        let stored = d
            .is_token()
            .then(|| {
                m.envelope_for(d.slot)
                    .ok()?
                    .with_store(|st| Ok(st.get(&d.id)?))
                    .ok()
                    .flatten()
            })
            .flatten()
            .map(|row| row.kek_version);
        return match stored.or_else(|| Envelope::record_version(&st.record)) {
            Some(v) => Answer::Value(Zeroizing::new((v as CK_ULONG).to_ne_bytes().to_vec())),
            None => Answer::Invalid,
        };
    }
    match st.attrs.get(ty) {
        Some(v) => Answer::Value(Zeroizing::new(v.to_vec())),
        None => Answer::Invalid,
    }
}

/// C_CopyObject of a DEK: a new DEK (new id, new record) with the same
/// value and the attributes the template may change: any C_SetAttributeValue
/// may, plus CKA_TOKEN and CKA_PRIVATE, and CKA_MODIFIABLE only to false.
pub fn copy(m: &Module, s: &Session, d: &Dek, t: &Template) -> Result<CK_OBJECT_HANDLE> {
    refuse_kek_label(m, s, t)?;
    let st = visible(m, s, d)?;
    if !st.attrs.flag(CKA_COPYABLE) {
        return Err(Error::Rv(CKR_ACTION_PROHIBITED));
    }
    let (own, settable): (Template, Template) = t
        .iter()
        .map(|a| crate::token::object::template::TemplateAttr {
            ty: a.ty,
            value: a.value.clone(),
        })
        .partition(|a| matches!(a.ty, CKA_TOKEN | CKA_PRIVATE | CKA_MODIFIABLE));
    let mut attrs = if settable.is_empty() {
        st.attrs.clone()
    } else {
        policy::apply_set(&st.attrs, &settable)?
    };
    for a in &own {
        let v = crate::token::object::template::as_bool(&a.value)?;
        if a.ty == CKA_MODIFIABLE && v && !st.attrs.flag(CKA_MODIFIABLE) {
            return Err(Error::Rv(CKR_ATTRIBUTE_READ_ONLY));
        }
        attrs.set_bool(a.ty, v);
    }
    policy::check_export(&attrs, m.config.key_export, "C_CopyObject")?;
    if attrs.flag(CKA_TOKEN) && !s.is_rw() {
        return Err(Error::Rv(CKR_SESSION_READ_ONLY));
    }
    if !m.is_user(s.slot) {
        return Err(Error::Rv(CKR_USER_NOT_LOGGED_IN));
    }
    let env = m.envelope_for(d.slot)?;
    let key = env.value(d.key_ref(&st))?;
    let value = SecretBytes::from_slice(key.value());
    drop(st);
    persist(m, s, attrs, value, "copied")
}
